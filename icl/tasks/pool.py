"""A finite pool of pretraining tasks (Raventós et al. 2023): M weight vectors drawn once, reused forever.

Raventós et al. pretrain on prompts whose task vector is one of ``M`` vectors ``w_1, ..., w_M`` drawn once
from the prior; with few tasks the model memorises the pool (it behaves like the discrete MMSE estimator
[`icl.dmmse`][icl.predictors.dmmse.dmmse]), past a threshold of ``M`` it behaves like ridge and solves unseen tasks
(docs/theory.md §12). [`FiniteTaskPool`][icl.tasks.FiniteTaskPool] is that training distribution; the task it was drawn from
(``pool.task``) gives the fresh tasks.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import pytree_dataclass, static_field
from icl.tasks.base import Task, check_positive_int

__all__ = ["FiniteTaskPool"]


@pytree_dataclass
class FiniteTaskPool(Task):
    """Prompts whose task vector is one of ``M`` vectors drawn once from a linear task's prior.

    ``weights = task.sample(PRNGKey(seed), M, 1).w`` (``[M, d]``): ``M`` draws from the prior of ``task``.
    Each prompt picks ``m`` uniformly from ``{1..M}`` (independently per prompt), then draws its context
    and query inputs from ``task``'s input law and labels ``y = w_m^T x + noise_std * eps``, ``eps ~ N(0, 1)``
    (docs/theory.md §12); ``sample(key, batch, n, num_queries=None)`` as every task. ``Prompts.w`` holds
    the pool member used, so ``pool.weights`` tells which one it was.

    Attributes:
      task: a linear task ``y = w^T x + noise`` whose prompts carry ``w`` (``LinearRegressionTask``,
        ``SparseLinearTask``, ``UniformLinearTask``, ...). Its input law and ``noise_std`` are reused.
      num_tasks: the pool size ``M >= 1``.
      seed: the integer seed of the pool's draw (the same seed gives the same pool).

    A pool is a pytree: ``task``, ``weights`` and ``seed`` are leaves (one compiled sampler serves every
    pool of the same size), ``num_tasks`` is static.

    Example::

        pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=8, noise_std=0.5), num_tasks=64, seed=0)
        prompts = pool.sample(key, batch=256, n=16)      # pretraining prompts
        fresh = pool.task.sample(key, batch=256, n=16)   # unseen tasks from the prior
        icl.dmmse(pool)(prompts)                          # Bayes for the pool
    """

    task: object
    num_tasks: int = static_field()
    seed: int = 0
    weights: jax.Array = dataclasses.field(init=False, repr=False)

    def _check(self):  # called once by Task.__post_init__ (never on unflatten)
        num_tasks = check_positive_int("num_tasks", self.num_tasks)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        task = self.task
        for attr in ("d", "noise_std", "sample"):
            if not hasattr(task, attr):
                raise ValueError(f"task must be a linear task with .d, .noise_std and .sample; it has no {attr!r}")
        if isinstance(task, FiniteTaskPool):
            raise ValueError("task must be a task drawn from a prior, not another FiniteTaskPool")
        draw = task.sample(jax.random.PRNGKey(int(self.seed)), num_tasks, 1)
        if draw.w is None:
            raise ValueError(
                f"task must be a linear task whose prompts carry w (Prompts.w); {type(task).__name__} gives w=None"
            )
        weights = jnp.asarray(draw.w)
        if weights.shape != (num_tasks, task.d):
            raise ValueError(f"task must give w of shape [batch, d={task.d}], got {weights.shape} "
                             f"for batch {num_tasks}")
        object.__setattr__(self, "num_tasks", num_tasks)
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "weights", weights)

    @property
    def d(self) -> int:
        """Input dimension (that of ``task``)."""
        return self.task.d

    @property
    def noise_std(self):
        """Label-noise standard deviation sigma (that of ``task``)."""
        return self.task.noise_std

    def _draw(self, key, batch: int, m: int):
        """``m`` points per prompt from one pool member chosen uniformly: ``(x [b, m, d], y [b, m], w [b, d])``.

        [`Task.sample`][icl.tasks.Task.sample] splits them into the context and the queries (``num_queries`` supported).
        """
        return FiniteTaskPool.draw_points(self.task, self.weights, key, batch, m)

    @staticmethod
    def draw_points(task, weights, key, batch: int, m: int, use_prior=False):
        """The pool's sampler for any ``weights [M, d]``: ``(x [b, m, d], y [b, m], w [b, d])``.

        Inputs follow ``task``'s input law; each prompt's ``w`` is a row of ``weights`` chosen uniformly (so
        tiling a pool's rows keeps its law), or, where ``use_prior`` (a traced boolean is fine, e.g. under
        vmap over pools and the prior) is True, ``task``'s own draw from its prior; labels
        ``y = w^T x + task.noise_std * eps``. ``FiniteTaskPool._draw`` is this with the pool's weights.
        """
        k_inputs, k_index, k_noise = jax.random.split(key, 3)
        base = task.sample(k_inputs, batch, 1, num_queries=m - 1) if m > 1 else task.sample(k_inputs, batch, 1)
        x = jnp.concatenate([base.x, base.x_query.reshape(batch, -1, task.d)], axis=1)  # the task's input law
        dtype = x.dtype
        index = jax.random.randint(k_index, (batch,), 0, weights.shape[0])
        w = jnp.asarray(weights, dtype)[index]
        if use_prior is not False:
            w = jnp.where(jnp.asarray(use_prior), jnp.asarray(base.w, dtype), w)
        noise = jax.random.normal(k_noise, (batch, m), dtype)
        y = jnp.einsum("bmd,bd->bm", x, w) + jnp.asarray(task.noise_std, dtype) * noise
        return x, y, w

    def x_second_moment(self) -> np.ndarray:
        """``E[x x^T]`` of the task's input law (float64 ``[d, d]``)."""
        return self.task.x_second_moment()

    def signal_variance(self) -> float:
        """``E[(w^T x)^2] = (1/M) sum_m w_m^T E[x x^T] w_m`` for this pool (float64).

        Uses the task's input second moment ``task.x_second_moment()``. With ``M -> infinity`` it tends to the task's
        ``signal_variance()``; for small pools it differs from it by ``O(1/sqrt(M))``, so compare errors
        on pool and on fresh tasks with one normaliser (e.g. ``pool.task.signal_variance()``).
        """
        w = np.asarray(self.weights, np.float64)
        return float(np.mean(np.einsum("mi,ij,mj->m", w, np.asarray(self.x_second_moment(), np.float64), w)))
