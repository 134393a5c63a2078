"""dMMSE: the Bayes predictor for a finite pool of tasks (Raventós et al. 2023; docs/theory.md §12).

For a pool ``{w_1, ..., w_M}`` (uniform prior over members) and Gaussian label noise ``sigma``, the
posterior over members after a context ``D = {(x_i, y_i)}`` is

    p(m | D) = softmax_m( -S_m / (2 sigma^2) ),   S_m = sum_i (y_i - w_m^T x_i)^2,

computed stably: the smallest ``S_m`` is subtracted before scaling, so the best-fitting member always has
log-weight 0 and, as ``sigma -> 0`` (even below float resolution, where ``sigma^2`` underflows), the
posterior tends to a point mass on the members with the smallest residual (shared equally by exact ties).
The predictive distribution of ``y_q`` is the Gaussian mixture ``sum_m p(m | D) N(w_m^T x_q, sigma^2)``:
its mean is the dMMSE prediction ``sum_m p(m | D) w_m^T x_q`` and its variance
``sigma^2 + Var_{p(m | D)}(w_m^T x_q)``.

Cost: ``O(batch * n * M * d)`` time. ``p(prompts)`` and ``p.prefix(prompts)`` run over the pool in chunks
of ``chunk_size`` members (a ``lax.scan`` with a running, shifted log-sum-exp and weighted mean and
variance: an online softmax), so their memory is ``O(batch * n * chunk_size)`` whatever ``M``; by default
the chunk holds about 4M residuals (``batch * n * chunk_size``). [`mixture`][icl.predictors.DiscreteMMSE.mixture] returns
``[batch, M]`` arrays (its residuals are chunked the same way); [`prefix_mixture`][icl.predictors.DiscreteMMSE.prefix_mixture] and
[`prefix_log_posterior`][icl.predictors.DiscreteMMSE.prefix_log_posterior] return ``[batch, n, M]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icl.predictors.base import Predictor
from icl.pytree import pytree_dataclass, static_field
from icl.tasks.base import check_int

__all__ = ["DiscreteMMSE", "DiscreteMMSEPredictive", "dmmse"]

_CHUNK_ELEMENTS = 1 << 22  # residuals per chunk by default (16 MB in float32)


def _log_weight(excess, inv_two_var):
    """``-excess / (2 sigma^2)`` for ``excess = S_m - min S >= 0``, exactly 0 where ``excess == 0``: with
    ``sigma^2`` underflowed to 0 (``inv_two_var = inf``) the best fit keeps weight 1 and the rest get 0."""
    return jnp.where(excess == 0, jnp.zeros((), excess.dtype), -excess * inv_two_var)


def _chunk_stats(s, means, inv_two_var):
    """Over the last axis (members of one chunk): ``(min S, sum of weights, weighted mean, weighted sum of
    squared deviations)`` with weights ``exp(-(S - min S) / (2 sigma^2))``."""
    low = jnp.min(s, axis=-1)
    e = jnp.exp(_log_weight(s - low[..., None], inv_two_var))
    total = jnp.sum(e, axis=-1)
    mean = jnp.sum(e * means, axis=-1) / total
    return low, total, mean, jnp.sum(e * (means - mean[..., None]) ** 2, axis=-1)


def _combine(a, b, inv_two_var):
    """Merge the statistics of two disjoint sets of members (Chan et al.'s parallel variance, weighted)."""
    low = jnp.minimum(a[0], b[0])
    fa, fb = (jnp.exp(_log_weight(x[0] - low, inv_two_var)) for x in (a, b))
    wa, wb = a[1] * fa, b[1] * fb
    total = wa + wb  # >= 1: the set holding the minimum has weight 1 on it
    share = wb / total
    delta = b[2] - a[2]
    return low, total, a[2] + delta * share, a[3] * fa + b[3] * fb + delta**2 * wa * share


class _Chunks:
    """The pool split into ``k`` chunks of ``size`` members (scanned) and a remainder (done once)."""

    def __init__(self, w, size: int):
        m = w.shape[0]
        self.size = max(1, min(int(size), m))
        k = m // self.size
        self.body = w[: k * self.size].reshape(k, self.size, w.shape[1])
        self.rest = w[k * self.size:]

    def reduce(self, stats_of, inv_two_var):
        """Combined statistics of every member; ``stats_of(w_chunk)`` gives one chunk's."""
        carry = stats_of(self.body[0])
        if self.body.shape[0] > 1:
            carry, _ = jax.lax.scan(lambda c, wc: (_combine(c, stats_of(wc), inv_two_var), None), carry,
                                    self.body[1:])
        if self.rest.shape[0]:
            carry = _combine(carry, stats_of(self.rest), inv_two_var)
        return carry

    def map(self, fn):
        """``fn(w_chunk) -> [b, chunk]`` over every chunk, concatenated to ``[b, M]``."""
        out = fn(self.body[0])[None] if self.body.shape[0] == 1 else jax.lax.map(fn, self.body)  # [k, b, C]
        out = jnp.moveaxis(out, 0, -2).reshape(*out.shape[1:-1], -1)
        return jnp.concatenate([out, fn(self.rest)], axis=-1) if self.rest.shape[0] else out


@pytree_dataclass
class DiscreteMMSE(Predictor):
    """Posterior mean over a finite pool of task vectors; build it with [`dmmse`][icl.predictors.dmmse.dmmse].

    Attributes:
      weights: the pool ``[M, d]`` (a leaf).
      noise_std: the sigma of the Gaussian likelihood (> 0; a leaf).
      chunk_size: pool members per chunk of the online softmax (static; None: about ``2**22 / (batch * n)``).
    """

    weights: jax.Array
    noise_std: jax.Array
    chunk_size: int | None = static_field(default=None)

    def _setup(self, prompts):
        dtype = prompts.x.dtype
        w = jnp.asarray(self.weights, dtype)
        var = jnp.asarray(self.noise_std, dtype) ** 2
        b, n = prompts.x.shape[0], prompts.x.shape[1]
        size = self.chunk_size if self.chunk_size is not None else _CHUNK_ELEMENTS // max(1, b * n)
        return w, var, 0.5 / var, _Chunks(w, size)

    @staticmethod
    def _sq_resid(prompts, w):
        """``(y_i - w_m^T x_i)^2``, ``[b, n, C]``."""
        return (prompts.y[..., None] - jnp.einsum("bnd,md->bnm", prompts.x, w)) ** 2

    @classmethod
    def _prefix_sums(cls, prompts, w):
        """``S_m`` over the first ``k-1`` pairs for ``k = 1..n`` (exclusive sums; row 0 is 0), ``[b, n, C]``."""
        r2 = cls._sq_resid(prompts, w)
        return jnp.concatenate([jnp.zeros_like(r2[:, :1]), jnp.cumsum(r2[:, :-1], axis=1)], axis=1)

    @staticmethod
    def _log_softmax(s, inv_two_var):
        return jax.nn.log_softmax(_log_weight(s - jnp.min(s, axis=-1, keepdims=True), inv_two_var), axis=-1)

    def log_posterior(self, prompts) -> jax.Array:
        """``log p(m | D)`` from the whole context, ``[batch, M]`` (normalised)."""
        _, _, inv, chunks = self._setup(prompts)
        return self._log_softmax(chunks.map(lambda wc: self._sq_resid(prompts, wc).sum(axis=1)), inv)

    def prefix_log_posterior(self, prompts) -> jax.Array:
        """``log p(m | first k-1 pairs)`` for ``k = 1..n``, ``[batch, n, M]`` (row 0: uniform)."""
        w, _, inv, _ = self._setup(prompts)
        return self._log_softmax(self._prefix_sums(prompts, w), inv)

    def mixture(self, prompts):
        """The predictive mixture at the query: ``(log_weights [b, M], means [b, M], component variance)``.

        ``p(y_q | D) = sum_m exp(log_weights[:, m]) N(y_q; means[:, m], sigma^2)``.
        """
        w, var, _, _ = self._setup(prompts)
        return self.log_posterior(prompts), jnp.einsum("bd,md->bm", prompts.x_query, w), var

    def prefix_mixture(self, prompts):
        """The predictive mixture of ``y_k`` from the first ``k-1`` pairs: ``([b, n, M], [b, n, M], sigma^2)``."""
        w, var, inv, _ = self._setup(prompts)
        return (self._log_softmax(self._prefix_sums(prompts, w), inv), jnp.einsum("bnd,md->bnm", prompts.x, w),
                var)

    def _query_moments(self, prompts):
        _, var, inv, chunks = self._setup(prompts)

        def stats(wc):
            s = self._sq_resid(prompts, wc).sum(axis=1)
            return _chunk_stats(s, jnp.einsum("bd,md->bm", prompts.x_query, wc), inv)

        _, total, mean, spread = chunks.reduce(stats, inv)
        return mean, var + spread / total

    def _prefix_moments(self, prompts):
        _, var, inv, chunks = self._setup(prompts)

        def stats(wc):
            return _chunk_stats(self._prefix_sums(prompts, wc), jnp.einsum("bnd,md->bnm", prompts.x, wc), inv)

        _, total, mean, spread = chunks.reduce(stats, inv)
        return mean, var + spread / total

    def __call__(self, prompts) -> jax.Array:
        """dMMSE prediction of ``y_q`` from the whole context, ``[batch]``."""
        return self._query_moments(prompts)[0]

    def prefix(self, prompts) -> jax.Array:
        """Prediction of ``y_k`` from ``x_k`` and the first ``k-1`` pairs, ``[batch, n]``.

        Entry 0 (no context) is the pool's mean prediction ``(1/M) sum_m w_m^T x_1``.
        """
        return self._prefix_moments(prompts)[0]


@pytree_dataclass
class DiscreteMMSEPredictive(DiscreteMMSE):
    """dMMSE mean and predictive variance ``sigma^2 + Var_{p(m|D)}(w_m^T x)``: ``dmmse(pool, variance=True)``.

    A mean-and-variance predictor (``returns_variance = True``): ``p(prompts) -> (mean [b], var [b])``,
    ``p.prefix(prompts) -> (mean [b, n], var [b, n])``. The exact predictive is the Gaussian mixture of
    ``mixture``; [`icl.uncertainty`][icl.uncertainty] scores it with that density, not a Gaussian of this variance.
    """

    returns_variance = True

    def __call__(self, prompts):
        return self._query_moments(prompts)

    def prefix(self, prompts):
        return self._prefix_moments(prompts)


def dmmse(pool, noise_std: float | None = None, variance: bool = False, *, chunk_size: int | None = None
          ) -> DiscreteMMSE:
    """The discrete-MMSE (Bayes) predictor of a [`FiniteTaskPool`][icl.tasks.FiniteTaskPool] (docs/theory.md §12).

    ``y_hat = sum_m p(m | D) w_m^T x_q`` with ``p(m | D)`` the softmax of the Gaussian log-likelihoods
    ``-sum_i (y_i - w_m^T x_i)^2 / (2 sigma^2)`` of the context under each pool member.

    Args:
      pool: a ``FiniteTaskPool`` (anything with ``weights [M, d]`` and ``noise_std``).
      noise_std: the likelihood's sigma; default ``pool.noise_std`` (then dMMSE is Bayes-optimal for the
        pool). It must be > 0: with noiseless labels the posterior is a point mass on the members that fit
        the context exactly and 0/0 elsewhere; pass a small positive value to use a tempered likelihood
        (as it tends to 0, dMMSE picks the member with the smallest residual; any tiny value, 1e-30
        included, gives that member's prediction).
      variance: if True return a mean-and-variance predictor ([`DiscreteMMSEPredictive`][icl.predictors.DiscreteMMSEPredictive]).
      chunk_size: pool members per chunk (an integer >= 1); default: about ``2**22 / (batch * n)``, so
        memory stays bounded for pools of any size. Results do not depend on it beyond float rounding.

    Returns:
      [`DiscreteMMSE`][icl.predictors.DiscreteMMSE] (or [`DiscreteMMSEPredictive`][icl.predictors.DiscreteMMSEPredictive]): ``p(prompts) -> [batch]`` and
      ``p.prefix(prompts) -> [batch, n]`` (Garg's convention: entry ``k-1`` predicts ``y_k`` from
      ``k-1`` pairs; entry 0 is the pool's mean prediction).
    """
    weights = getattr(pool, "weights", None)
    if weights is None:
        raise ValueError(f"pool must be a FiniteTaskPool (with weights [M, d]), got {type(pool).__name__}")
    weights = jnp.asarray(weights)
    if weights.ndim != 2 or weights.shape[0] < 1:
        raise ValueError(f"pool.weights must have shape [M >= 1, d], got {weights.shape}")
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, 1)
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
    return cls(weights=weights, noise_std=jnp.asarray(sigma_value, weights.dtype), chunk_size=chunk_size)
