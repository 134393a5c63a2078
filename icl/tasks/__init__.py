"""Task distributions: synthetic in-context regression problems (docs/theory.md §1).

A task is a frozen pytree dataclass validated when it is built, whose ``sample(key, batch, n, num_queries=None)``
is a pure function of a PRNG key returning [`Prompts`][icl.tasks.Prompts]. Families: [`LinearRegressionTask`][icl.tasks.LinearRegressionTask]
(Gaussian), [`UniformLinearTask`][icl.tasks.UniformLinearTask] (i.i.d. uniform inputs), [`SparseLinearTask`][icl.tasks.SparseLinearTask] (s-sparse ``w``),
[`ReluNetworkTask`][icl.tasks.ReluNetworkTask] and [`SingleIndexTask`][icl.tasks.SingleIndexTask] (nonlinear targets). Each describes its law
([`GaussianLaw`][icl.tasks.GaussianLaw], [`IIDLaw`][icl.tasks.IIDLaw], [`TargetLaw`][icl.tasks.TargetLaw]) for [`icl.theory`][icl.theory].
"""

from icl.tasks.base import (
    GaussianLaw, IIDLaw, IllConditionedWarning, Prompts, TargetLaw, Task, check_int, check_non_negative,
    check_positive, check_positive_int, check_prompt_shapes, check_prompts, check_spd, each_query, random_rotation)
from icl.tasks.iid import UniformLinearTask, uniform_moments
from icl.tasks.linear import LinearRegressionTask, weight_prior
from icl.tasks.mixture import NoiseMixtureTask, check_noise_mixture
from icl.tasks.nonlinear import LINKS, ReluNetworkTask, SingleIndexTask
from icl.tasks.pool import FiniteTaskPool
from icl.tasks.sparse import SparseLinearTask

__all__ = [
    "LINKS", "FiniteTaskPool", "NoiseMixtureTask", "check_noise_mixture", "GaussianLaw", "IIDLaw", "IllConditionedWarning", "LinearRegressionTask", "Prompts",
    "ReluNetworkTask", "SingleIndexTask", "SparseLinearTask", "TargetLaw", "Task", "UniformLinearTask", "check_int",
    "check_non_negative", "check_positive", "check_positive_int", "check_prompt_shapes", "check_prompts", "check_spd",
    "each_query", "random_rotation", "uniform_moments", "weight_prior",
]
