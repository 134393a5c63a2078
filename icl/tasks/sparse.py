"""Sparse linear regression (Garg et al. 2022): ``w`` has ``s`` nonzero coordinates (docs/theory.md §8, §10)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import pytree_dataclass, static_field
from icl.tasks.base import GaussianLaw, Task, default_dtype, check_non_negative, check_positive_int

__all__ = ["SparseLinearTask"]


@pytree_dataclass
class SparseLinearTask(Task):
    """``x ~ N(0, I_d)``; ``w`` has ``s`` nonzero ``N(0, 1)`` entries at uniformly random positions.

    ``y = w^T x + N(0, sigma^2)``; one ``w`` per prompt (Garg et al. 2022's sparse task, ``s = 3``). Its
    noiseless ``E[y^2] = s`` (Garg normalise errors by it). ``E[w w^T] = (s/d) I``, so the closed forms for
    predictors linear in ``y`` (one-step GD, ``P(Gamma)``, K-step GD) are those of the Gaussian task with
    ``Omega = (s/d) I`` ([`GaussianLaw`][icl.tasks.GaussianLaw] with ``w_gaussian=False``); LASSO and the Bayes
    predictor for a sparse prior are not covered by them.

    Attributes:
      d: input dimension, >= 1. s: nonzero coordinates, ``1 <= s <= d`` (static). noise_std: sigma >= 0.
    """

    d: int = static_field()
    s: int = static_field(default=3)
    noise_std: float = 0.0

    def _check(self):
        d = check_positive_int("d", self.d)
        s = check_positive_int("s", self.s)
        if s > d:
            raise ValueError(f"s must be an integer in [1, d={d}], got {s}")
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "s", s)
        object.__setattr__(self, "noise_std", check_non_negative("noise_std", self.noise_std))

    def _draw(self, key, batch: int, m: int):
        # One Gaussian draw: x, w's values, scores whose top s pick the support (uniform over s-subsets), noise.
        d, s = self.d, self.s
        z = jax.random.normal(key, (batch, m * (d + 1) + 2 * d), default_dtype())
        xs = z[:, : m * d].reshape(batch, m, d)
        values = z[:, m * d : (m + 1) * d]
        scores = z[:, (m + 1) * d : (m + 2) * d]
        noise = z[:, (m + 2) * d :]
        threshold = jax.lax.top_k(scores, s)[0][:, -1:]
        w = jnp.where(scores >= threshold, values, 0.0)
        ys = jnp.einsum("bnd,bd->bn", xs, w) + self.noise_std * noise
        return xs, ys, w

    def signal_variance(self) -> float:
        """``E[(w^T x)^2] = E||w||^2 = s``."""
        return float(self.s)

    def law(self) -> GaussianLaw:
        d = self.d
        return GaussianLaw(np.eye(d), self.s / d * np.eye(d), float(self.noise_std), w_gaussian=False,
                           family=type(self).__name__)
