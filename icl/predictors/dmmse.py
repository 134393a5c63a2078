"""dMMSE: the Bayes predictor for a finite pool of tasks (Raventós et al. 2023; docs/theory.md §12).

For a pool ``{w_1, ..., w_M}`` (uniform prior over members) and Gaussian label noise ``sigma``, the
posterior over members after a context ``D = {(x_i, y_i)}`` is

    p(m | D) = softmax_m( -sum_i (y_i - w_m^T x_i)^2 / (2 sigma^2) ),

computed with a log-sum-exp. The predictive distribution of ``y_q`` is the Gaussian mixture
``sum_m p(m | D) N(w_m^T x_q, sigma^2)``: its mean is the dMMSE prediction
``sum_m p(m | D) w_m^T x_q`` and its variance ``sigma^2 + Var_{p(m | D)}(w_m^T x_q)``.

Cost: ``O(batch * n * M * d)`` time and ``O(batch * n * M)`` memory (the residual of every pair under
every member); evaluate large pools in chunks of prompts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import pytree_dataclass
from icl.predictors.base import Predictor

__all__ = ["DiscreteMMSE", "DiscreteMMSEPredictive", "dmmse"]


@pytree_dataclass
class DiscreteMMSE(Predictor):
    """Posterior mean over a finite pool of task vectors; build it with :func:`dmmse`.

    Attributes (leaves):
      weights: the pool ``[M, d]``.
      noise_std: the sigma of the Gaussian likelihood (> 0).
    """

    weights: jax.Array
    noise_std: jax.Array

    def _log_lik_terms(self, prompts):
        dtype = prompts.x.dtype
        w = jnp.asarray(self.weights, dtype)
        resid = prompts.y[..., None] - jnp.einsum("bnd,md->bnm", prompts.x, w)  # [b, n, M]
        return -0.5 * resid**2 / jnp.asarray(self.noise_std, dtype) ** 2, w

    def log_posterior(self, prompts) -> jax.Array:
        """``log p(m | D)`` from the whole context, ``[batch, M]`` (normalised)."""
        terms, _ = self._log_lik_terms(prompts)
        return jax.nn.log_softmax(terms.sum(axis=1), axis=-1)

    def prefix_log_posterior(self, prompts) -> jax.Array:
        """``log p(m | first k-1 pairs)`` for ``k = 1..n``, ``[batch, n, M]`` (row 0: uniform)."""
        terms, _ = self._log_lik_terms(prompts)
        before = jnp.cumsum(terms, axis=1) - terms  # exclusive: pairs 1..k-1
        return jax.nn.log_softmax(before, axis=-1)

    def mixture(self, prompts):
        """The predictive mixture at the query: ``(log_weights [b, M], means [b, M], component variance)``.

        ``p(y_q | D) = sum_m exp(log_weights[:, m]) N(y_q; means[:, m], sigma^2)``.
        """
        terms, w = self._log_lik_terms(prompts)
        log_p = jax.nn.log_softmax(terms.sum(axis=1), axis=-1)
        means = jnp.einsum("bd,md->bm", prompts.x_query, w)
        return log_p, means, jnp.asarray(self.noise_std, prompts.x.dtype) ** 2

    def prefix_mixture(self, prompts):
        """The predictive mixture of ``y_k`` from the first ``k-1`` pairs: ``([b, n, M], [b, n, M], sigma^2)``."""
        terms, w = self._log_lik_terms(prompts)
        log_p = jax.nn.log_softmax(jnp.cumsum(terms, axis=1) - terms, axis=-1)
        means = jnp.einsum("bnd,md->bnm", prompts.x, w)
        return log_p, means, jnp.asarray(self.noise_std, prompts.x.dtype) ** 2

    @staticmethod
    def _moments(log_p, means, var):
        p = jnp.exp(log_p)
        mean = jnp.sum(p * means, axis=-1)
        return mean, var + jnp.sum(p * (means - mean[..., None]) ** 2, axis=-1)

    def __call__(self, prompts) -> jax.Array:
        """dMMSE prediction of ``y_q`` from the whole context, ``[batch]``."""
        return self._moments(*self.mixture(prompts))[0]

    def prefix(self, prompts) -> jax.Array:
        """Prediction of ``y_k`` from ``x_k`` and the first ``k-1`` pairs, ``[batch, n]``.

        Entry 0 (no context) is the pool's mean prediction ``(1/M) sum_m w_m^T x_1``.
        """
        return self._moments(*self.prefix_mixture(prompts))[0]


@pytree_dataclass
class DiscreteMMSEPredictive(DiscreteMMSE):
    """dMMSE mean and predictive variance ``sigma^2 + Var_{p(m|D)}(w_m^T x)``: ``dmmse(pool, variance=True)``.

    A mean-and-variance predictor (``returns_variance = True``): ``p(prompts) -> (mean [b], var [b])``,
    ``p.prefix(prompts) -> (mean [b, n], var [b, n])``. The exact predictive is the Gaussian mixture of
    :meth:`mixture`; :mod:`icl.uncertainty` scores it with that density, not a Gaussian of this variance.
    """

    returns_variance = True

    def __call__(self, prompts):
        return self._moments(*self.mixture(prompts))

    def prefix(self, prompts):
        return self._moments(*self.prefix_mixture(prompts))


def dmmse(pool, noise_std: float | None = None, variance: bool = False) -> DiscreteMMSE:
    """The discrete-MMSE (Bayes) predictor of a :class:`~icl.tasks.FiniteTaskPool` (docs/theory.md §12).

    ``y_hat = sum_m p(m | D) w_m^T x_q`` with ``p(m | D)`` the softmax of the Gaussian log-likelihoods
    ``-sum_i (y_i - w_m^T x_i)^2 / (2 sigma^2)`` of the context under each pool member.

    Args:
      pool: a ``FiniteTaskPool`` (anything with ``weights [M, d]`` and ``noise_std``).
      noise_std: the likelihood's sigma; default ``pool.noise_std`` (then dMMSE is Bayes-optimal for the
        pool). It must be > 0: with noiseless labels the posterior is a point mass on the members that fit
        the context exactly and 0/0 elsewhere; pass a small positive value to use a tempered likelihood
        (as it tends to 0, dMMSE picks the member with the smallest residual).
      variance: if True return a mean-and-variance predictor (:class:`DiscreteMMSEPredictive`).

    Returns:
      :class:`DiscreteMMSE` (or :class:`DiscreteMMSEPredictive`): ``p(prompts) -> [batch]`` and
      ``p.prefix(prompts) -> [batch, n]`` (Garg's convention: entry ``k-1`` predicts ``y_k`` from
      ``k-1`` pairs; entry 0 is the pool's mean prediction).
    """
    weights = getattr(pool, "weights", None)
    if weights is None:
        raise ValueError(f"pool must be a FiniteTaskPool (with weights [M, d]), got {type(pool).__name__}")
    weights = jnp.asarray(weights)
    if weights.ndim != 2 or weights.shape[0] < 1:
        raise ValueError(f"pool.weights must have shape [M >= 1, d], got {weights.shape}")
    sigma = pool.noise_std if noise_std is None else noise_std
    try:
        sigma_value = float(sigma)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError("noise_std must be a concrete number > 0 when building dmmse") from err
    if not np.isfinite(sigma_value) or sigma_value <= 0:
        source = "pool.noise_std" if noise_std is None else "noise_std"
        raise ValueError(
            f"{source} must be a finite number > 0 for dmmse, got {sigma_value!r}: with noiseless labels the "
            "posterior over the pool is degenerate (a point mass on the members that fit the context exactly); "
            "pass dmmse(pool, noise_std=s) with a small s > 0 for a tempered likelihood"
        )
    cls = DiscreteMMSEPredictive if variance else DiscreteMMSE
    return cls(weights=weights, noise_std=jnp.asarray(sigma_value, weights.dtype))
