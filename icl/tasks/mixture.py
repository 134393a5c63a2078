"""Linear regression with a mixture of noise levels (Bai et al. 2023, in-context algorithm selection).

Each prompt draws its own label-noise level ``sigma`` from a finite set: a model trained on these prompts can
only reach the Bayes risk by recognising, in context, how noisy the prompt is and choosing the ridge penalty
that suits it (Bai, Chen, Wang, Xiong and Mei, "Transformers as statisticians", NeurIPS 2023: "noisy linear
models with mixed noise levels"; their experiments mix ``sigma in {0, 0.1, 0.25, 0.5, 1}`` with
``w ~ N(0, I/d)``). Its exact Bayes predictor is [`icl.predictors.mixture.noise_mixture_posterior_mean`][icl.predictors.noise_mixture_posterior_mean].
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import pytree_dataclass, static_field
from icl.tasks.base import (
    GaussianLaw,
    Prompts,
    Task,
    check_int,
    check_positive,
    check_spd,
    covariance_factor,
    default_dtype,
)

__all__ = ["NoiseMixtureTask", "check_noise_mixture"]

_SUM_TOL = 1e-6  # |sum(weights) - 1| allowed


def _as_vector(name: str, value) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of numbers, got {value!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {value!r}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {arr.shape}")
    return arr


def check_noise_mixture(levels, weights) -> tuple[np.ndarray, np.ndarray]:
    """Validate a discrete prior over noise levels; return ``(levels, weights)`` as float64 ``[K]`` arrays.

    ``levels``: the noise standard deviations, finite and ``>= 0`` (``0`` is a noiseless component).
    ``weights``: their prior probabilities, finite, ``> 0`` and summing to 1 within ``1e-6`` (they are then
    renormalised to sum to 1 exactly); ``None`` means uniform. Both must have the same length ``K >= 1``.
    A ValueError names the argument and the allowed range.
    """
    lv = _as_vector("levels", levels)
    if not np.all(np.isfinite(lv)) or np.any(lv < 0):
        raise ValueError(f"levels must all be finite and >= 0 (noise standard deviations), got {lv.tolist()}")
    if weights is None:
        return lv, np.full(lv.size, 1.0 / lv.size)
    wt = _as_vector("weights", weights)
    if wt.size != lv.size:
        raise ValueError(f"weights must have the same length as levels ({lv.size}), got {wt.size}")
    if not np.all(np.isfinite(wt)) or np.any(wt <= 0):
        raise ValueError(f"weights must all be finite and > 0 (prior probabilities), got {wt.tolist()}")
    total = float(np.sum(wt))
    if abs(total - 1.0) > _SUM_TOL:
        raise ValueError(f"weights must sum to 1 (within {_SUM_TOL:g}), got sum {total!r}")
    return lv, wt / total


@pytree_dataclass
class NoiseMixtureTask(Task):
    """``x ~ N(0, Sigma)``, ``w ~ N(0, psi^2 I)``, ``sigma ~ sum_k weights_k delta(levels_k)``, ``y = w^T x + sigma eps``.

    One ``w`` and one noise level per prompt, shared by its context and queries; ``eps ~ N(0, 1)`` i.i.d.
    (Bai et al. 2023's noisy linear model with mixed noise levels; docs/theory.md, the noise-mixture section).

    Attributes:
      d: input dimension, an integer >= 1.
      levels: the noise standard deviations ``sigma_1..sigma_K``, finite and >= 0 (0: noiseless prompts).
      weights: their probabilities ``pi_1..pi_K``, > 0, summing to 1 within 1e-6 (default: uniform).
      psi: the prior standard deviation of each coordinate of ``w``, > 0 (``psi = 1/sqrt(d)`` is Bai et al.'s).
      x_cov: the input covariance Sigma, ``[d, d]`` SPD (default identity), as in ``LinearRegressionTask``.

    ``noise_std`` is the root mean noise variance ``sqrt(sum_k pi_k sigma_k^2)``: the label noise
    ``sigma eps`` is a scale mixture of Gaussians with that variance, so every second-moment closed form
    (one-step GD, the class ``P(Gamma)``, K-step GD, [`icl.query_marginal_loss`][icl.evaluate.query_marginal_loss]) holds with it exactly,
    and ``law()`` is the [`GaussianLaw`][icl.tasks.GaussianLaw] of those second moments. It is *not* the noise of a
    Gaussian model: the Bayes predictor is the posterior mixture of ridges
    ([`icl.predictors.mixture.noise_mixture_posterior_mean`][icl.predictors.noise_mixture_posterior_mean], which [`icl.bayes_posterior_mean`][icl.predictors.bayes_posterior_mean]
    returns for this task), not ridge at ``noise_std^2 / psi^2``. ``w_cov`` is ``psi^2 I``.

    ``sample_with_levels`` also returns the component each prompt drew. A pytree: ``levels``,
    ``weights``, ``psi`` and ``x_cov`` are leaves, ``d`` is static (``K`` is the leaves' shape).
    """

    d: int = static_field()
    levels: np.ndarray
    weights: np.ndarray | None = None
    psi: float = 1.0
    x_cov: np.ndarray | None = None
    _x_chol: np.ndarray = dataclasses.field(init=False, repr=False, default=None)

    def _check(self):
        d = check_int("d", self.d, 1)
        levels, weights = check_noise_mixture(self.levels, self.weights)
        psi = check_positive("psi", self.psi)
        x_cov = np.eye(d) if self.x_cov is None else check_spd("x_cov", self.x_cov, d)
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "psi", psi)
        object.__setattr__(self, "x_cov", x_cov)
        object.__setattr__(self, "_x_chol", covariance_factor(x_cov))

    @property
    def num_levels(self) -> int:
        """``K``, the number of noise levels."""
        return int(np.shape(self.levels)[0])

    @property
    def noise_std(self):
        """Root mean noise variance ``sqrt(sum_k pi_k sigma_k^2)`` (a float; traced under ``jit``)."""
        if isinstance(self.levels, np.ndarray) and isinstance(self.weights, np.ndarray):
            return float(np.sqrt(np.sum(self.weights * self.levels**2)))
        return jnp.sqrt(jnp.sum(jnp.asarray(self.weights) * jnp.asarray(self.levels) ** 2))

    @property
    def w_cov(self) -> np.ndarray:
        """The prior covariance of ``w``, ``psi^2 I`` (float64 ``[d, d]``; concrete tasks)."""
        return float(self.psi) ** 2 * np.eye(self.d)

    def _components(self, key, batch: int) -> jax.Array:
        """The component ``k`` of each prompt, int32 ``[batch]`` (a function of ``key`` alone)."""
        logits = jnp.log(jnp.asarray(self.weights, default_dtype()))
        return jax.random.categorical(jax.random.fold_in(key, 1), logits, shape=(batch,)).astype(jnp.int32)

    def _draw(self, key, batch: int, m: int):
        d = self.d
        dtype = default_dtype()
        z = jax.random.normal(jax.random.fold_in(key, 0), (batch, m * (d + 1) + d), dtype)
        xs = z[:, : m * d].reshape(batch, m, d) @ jnp.asarray(self._x_chol, dtype).T
        w = jnp.asarray(self.psi, dtype) * z[:, m * d : (m + 1) * d]
        noise = z[:, (m + 1) * d :]
        sigma = jnp.asarray(self.levels, dtype)[self._components(key, batch)]
        ys = jnp.einsum("bnd,bd->bn", xs, w) + sigma[:, None] * noise
        return xs, ys, w

    def sample_with_levels(self, key: jax.Array, batch: int, n: int, num_queries: int | None = None
                           ) -> tuple[Prompts, jax.Array]:
        """``(prompts, component)``: ``prompts`` is exactly ``self.sample(key, batch, n, num_queries)`` and
        ``component`` (int32 ``[batch]``) the index ``k`` of each prompt's noise level ``levels[k]``."""
        prompts = self.sample(key, batch, n, num_queries)
        return prompts, _components_compiled(self, key, batch=prompts.batch)

    def signal_variance(self) -> float:
        """Noiseless ``E[(w^T x)^2] = psi^2 tr(Sigma)``."""
        return float(self.psi) ** 2 * float(np.trace(np.asarray(self.x_cov)))

    def law(self) -> GaussianLaw:
        """The second moments: ``GaussianLaw(Sigma, psi^2 I, noise_std)`` with ``w_gaussian=False`` (the labels are
        not Gaussian given ``w``: closed forms for predictors linear in ``y`` hold, Gaussian posteriors do not)."""
        return GaussianLaw(np.asarray(self.x_cov), self.w_cov, self.noise_std, w_gaussian=False,
                           family=type(self).__name__)


@functools.partial(jax.jit, static_argnames=("batch",))
def _components_compiled(task, key, batch):
    return task._components(key, batch)
