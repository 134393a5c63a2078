"""The exact Bayes predictor of a mixture of noise levels: a posterior-weighted mixture of ridges.

For ``w ~ N(0, Omega)`` and a noise level ``sigma`` drawn per prompt from ``{sigma_1..sigma_K}`` with prior
probabilities ``pi_k`` ([`NoiseMixtureTask`][icl.tasks.NoiseMixtureTask], Bai et al. 2023), the posterior over
levels after a context ``D = (X, y)`` is

    p(k | D) = pi_k N(y; 0, X Omega X^T + sigma_k^2 I) / sum_j pi_j N(y; 0, X Omega X^T + sigma_j^2 I),

and the predictive law of ``y_q`` is the Gaussian mixture ``sum_k p(k | D) N(m_k, v_k)`` of the per-level
Bayes predictives (ridge at ``lam = sigma_k^2 / psi^2`` for ``Omega = psi^2 I``): mean ``sum_k p_k m_k``,
variance ``sum_k p_k v_k + sum_k p_k (m_k - mean)^2``. Nothing is approximated.

Numerics. Each level's marginal likelihood is accumulated by the chain rule,
``log N(y; 0, C_k) = sum_i log N(y_i; m_ki, v_ki)`` with ``(m_ki, v_ki)`` the level's predictive of ``y_i``
from the pairs before it: what [`BayesPredictive`][icl.predictors.BayesPredictive] ``.prefix`` gives, by the same QR
updating (``icl.predictors.qr.every_prefix`` on ``X F``, ``F F^T = Omega``, at ``lam = sigma_k^2``). So the log-determinant and the quadratic form come out together, with no ``n x n`` matrix, no
cancellation, and every prefix ``k = 1..n`` at the cost of one scan per level (``O(K n d^2)`` per prompt;
memory ``O(K batch n)``: the levels run one at a time under ``lax.map``). The weights are a log-softmax
shifted by the best level (log-sum-exp, as in ``dmmse``), so they never overflow and
never NaN, even where a level's likelihood underflows.

Tiny and zero levels. A level of 0 is allowed (Bai et al. mix noiseless prompts in). Its exact likelihood is
singular once the context spans ``R^d`` (``y`` must then lie in the column space of ``X``), which floating
point cannot test: rounding leaves residuals of about ``eps |y|``. So every level is raised to the
resolution floor ``1024 eps y_scale`` of the prompts' dtype (``eps`` its machine epsilon, ``y_scale`` the
RMS label scale): about ``2.3e-13 y_scale`` in float64 and ``1.2e-4 y_scale`` in float32. Levels above it
are untouched (exact); a level at or below it is the noiseless component as the dtype can resolve it: on
noiseless prompts it takes the posterior mass and predicts the interpolant, on noisy prompts it gets
weight 0. Predictive variances are also kept above the dtype's smallest normal number.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from icl.predictors import qr
from icl.predictors.base import Predictor, as_leaf, check_prompts, is_concrete
from icl.protocol import predictor_name
from icl.pytree import pytree_dataclass
from icl.tasks.base import check_positive, check_spd
from icl.tasks.mixture import NoiseMixtureTask, check_noise_mixture

__all__ = [
    "RESOLUTION",
    "NoiseMixturePosteriorMean",
    "NoiseMixturePredictive",
    "noise_mixture_posterior_mean",
    "noise_mixture_predictive",
]

RESOLUTION = 1024.0  # the level floor, in units of eps(dtype) * y_scale (module docstring)


def _shifted_log_softmax(score: jax.Array, axis: int = 0) -> jax.Array:
    """Normalised log-weights of ``score`` along ``axis``, shifted so that the best entry is exactly 0 first:
    ties at the top share the mass, entries at ``-inf`` get weight 0, and an all ``-inf`` column is uniform
    rather than NaN (the rule of ``dmmse``)."""
    top = jnp.max(score, axis=axis, keepdims=True)
    shifted = jnp.where(score == top, jnp.zeros((), score.dtype), score - top)
    return jax.nn.log_softmax(shifted, axis=axis)


def _gaussian_logpdf(y, mean, var):
    return -0.5 * ((y - mean) ** 2 / var + jnp.log(2.0 * jnp.pi * var))


@pytree_dataclass
class NoiseMixturePosteriorMean(Predictor):
    """Posterior mean of ``y_q`` under a discrete prior over noise levels; build it with
    [`noise_mixture_posterior_mean`][icl.predictors.noise_mixture_posterior_mean] (module docstring for the formulas and the numerics).

    Attributes (leaves; validated when concrete):
      levels: the noise standard deviations ``[K]``, finite and >= 0.
      level_weights: their prior probabilities ``[K]``, > 0, summing to 1 within 1e-6.
      prior_cov: the prior covariance Omega of ``w``, ``[d, d]`` SPD (``psi^2 I`` for the task).
      y_scale: the RMS label scale that sets the resolution floor of the levels (> 0; default
        ``sqrt(tr Omega + sum_k pi_k sigma_k^2)``, the value for ``x ~ N(0, I)``).

    ``p(prompts) -> [batch]``; ``p.prefix(prompts) -> [batch, n]`` (entry ``k - 1`` predicts ``y_k`` from the
    first ``k - 1`` pairs; entry 0 is 0). ``log_posterior``, ``prefix_log_posterior``,
    ``mixture`` and ``prefix_mixture`` expose the posterior over levels and the per-level predictives.
    """

    levels: jax.Array
    level_weights: jax.Array
    prior_cov: jax.Array
    y_scale: jax.Array | None = None
    root: jax.Array = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        leaves = (self.levels, self.level_weights, self.prior_cov, self.y_scale)
        if not all(is_concrete(v) for v in leaves):  # built inside a transformation: not validated
            object.__setattr__(self, "root", qr.prior_root(self.prior_cov))
            return
        levels, weights = check_noise_mixture(self.levels, self.level_weights)
        omega = np.asarray(self.prior_cov, np.float64)
        if omega.ndim != 2 or omega.shape[0] != omega.shape[1]:
            raise ValueError(f"prior_cov must be a square [d, d] matrix, got shape {omega.shape}")
        omega = check_spd("prior_cov", omega, omega.shape[0], warn=False)
        if self.y_scale is None:
            scale = float(np.sqrt(np.trace(omega) + np.sum(weights * levels**2)))
        else:
            scale = check_positive("y_scale", self.y_scale)
        object.__setattr__(self, "levels", as_leaf(levels))
        object.__setattr__(self, "level_weights", as_leaf(weights))
        object.__setattr__(self, "prior_cov", as_leaf(omega))
        object.__setattr__(self, "y_scale", as_leaf(scale))
        object.__setattr__(self, "root", as_leaf(qr.prior_root(omega)))  # F F^T = Omega, as BayesPosteriorMean's

    # ------------------------------------------------------------------------------------------------------
    # Evaluation: one compiled program per shape and dtype for the query, one for every prefix, shared by
    # every method and both classes (they pick their outputs from it)
    # ------------------------------------------------------------------------------------------------------

    def _evaluate(self, prompts, query: bool):
        x, y = check_prompts(predictor_name(self), prompts, query=query)
        d = np.shape(self.prior_cov)[-1]
        if x.shape[-1] != d:
            raise ValueError(f"predictor {predictor_name(self)}: prompts.x has d={x.shape[-1]} but prior_cov is "
                             f"{d}x{d}")
        leaves = (self.levels, self.level_weights, self.prior_cov, self.y_scale, self.root)
        return _evaluate(leaves, x, y, prompts.x_query if query else None)

    def effective_levels(self, dtype) -> jax.Array:
        """The levels as used in ``dtype``: ``max(sigma_k, RESOLUTION * eps(dtype) * y_scale)``, ``[K]``."""
        return _effective_levels(self.levels, self.level_weights, self.prior_cov, self.y_scale, dtype)

    def __call__(self, prompts) -> jax.Array:
        """The posterior mean of ``y_q`` given the whole context, ``[batch]``."""
        return self._evaluate(prompts, True)[3][:, 0]

    def prefix(self, prompts) -> jax.Array:
        """The posterior mean of ``y_k`` given ``x_k`` and the first ``k - 1`` pairs, ``[batch, n]`` (entry 0: 0)."""
        return self._evaluate(prompts, False)[3]

    def log_posterior(self, prompts) -> jax.Array:
        """``log p(k | D)`` from the whole context, ``[batch, K]`` (normalised; ``x_query`` does not enter)."""
        return jnp.moveaxis(self._evaluate(prompts, True)[0][..., 0], 0, -1)

    def prefix_log_posterior(self, prompts) -> jax.Array:
        """``log p(k | first i - 1 pairs)`` for ``i = 1..n``, ``[batch, n, K]`` (row 0: ``log pi``)."""
        return jnp.moveaxis(self._evaluate(prompts, False)[0], 0, -1)

    def mixture(self, prompts):
        """The predictive mixture at the query: ``(log_weights, means, variances)``, ``[batch, K]`` each:
        ``p(y_q | D) = sum_k exp(log_weights[:, k]) N(y_q; means[:, k], variances[:, k])``."""
        return tuple(jnp.moveaxis(a[..., 0], 0, -1) for a in self._evaluate(prompts, True)[:3])

    def prefix_mixture(self, prompts):
        """The predictive mixture of ``y_i`` from the first ``i - 1`` pairs, ``[batch, n, K]`` each."""
        return tuple(jnp.moveaxis(a, 0, -1) for a in self._evaluate(prompts, False)[:3])


@pytree_dataclass
class NoiseMixturePredictive(NoiseMixturePosteriorMean):
    """Mean and variance of the posterior predictive mixture: ``noise_mixture_predictive(task)``.

    ``returns_variance = True``: ``p(prompts) -> (mean [batch], var [batch])`` and ``p.prefix(prompts) ->
    (mean [batch, n], var [batch, n])``, ``var = sum_k p_k (v_k + m_k^2) - mean^2`` (computed centred). The
    exact predictive law is the Gaussian mixture of ``mixture``, not a Gaussian of this variance.
    """

    returns_variance = True

    def __call__(self, prompts):
        out = self._evaluate(prompts, True)
        return out[3][:, 0], out[4][:, 0]

    def prefix(self, prompts):
        return self._evaluate(prompts, False)[3:]


def _effective_levels(levels, level_weights, prior_cov, y_scale, dtype):
    levels = jnp.asarray(levels, dtype)
    if y_scale is None:  # built from traced leaves without a scale: the x ~ N(0, I) value
        weights = jnp.asarray(level_weights, dtype)
        y_scale = jnp.sqrt(jnp.trace(jnp.asarray(prior_cov, dtype)) + jnp.sum(weights * levels**2))
    return jnp.maximum(levels, RESOLUTION * float(jnp.finfo(dtype).eps) * jnp.asarray(y_scale, dtype))


def _levels_prefix(root, sigmas, x, y):
    """Every level's Bayes predictive ``(mean, var)`` of ``y_i`` from the pairs before it, ``[K, batch, m]`` each,
    one level at a time: with ``B = X F``, ridge at ``lam = sigma^2`` on ``B`` and ``var = sigma^2 (1 + tt) + ee``
    (``BayesPredictive``'s formula; ``ee`` is the noiseless term, 0 once the context spans ``x_i``)."""
    b = x @ jnp.asarray(root, x.dtype)

    def one(sigma):
        s2 = sigma**2
        mean, tt, ee = qr.every_prefix(b, y, s2)
        return mean, s2 * (1.0 + tt) + ee

    return jax.lax.map(one, sigmas)


@jax.jit
def _evaluate(leaves, x, y, xq):
    """``(log_weights, means, variances, mean, var)``: the first three ``[K, batch, m]``, the mixture's moments
    ``[batch, m]``, with ``m = 1`` at the query (``xq [batch, d]``) or ``m = n`` at every prefix (``xq = None``):
    the posterior over levels from the pairs before each point and the levels' predictives there."""
    levels, level_weights, prior_cov, y_scale, root = leaves
    dtype, n = x.dtype, x.shape[1]
    sigmas = _effective_levels(levels, level_weights, prior_cov, y_scale, dtype)
    if xq is not None:  # the query as an (n + 1)-th point: its prefix prediction uses all n pairs
        means, variances = _levels_prefix(root, sigmas, jnp.concatenate([x, xq[:, None]], axis=1),
                                          jnp.concatenate([y, jnp.zeros_like(y[:, :1])], axis=1))
    else:
        means, variances = _levels_prefix(root, sigmas, x, y)
    # log p(y_i | pairs < i, k) for the n context pairs only (the query has no label), [K, b, n]
    loglik = _gaussian_logpdf(y, means[..., :n], jnp.maximum(variances[..., :n], jnp.finfo(dtype).tiny))
    # log p(pairs < i | k) for i = 1..n + 1, a running sum (never "cumsum - term": that cancels)
    before = jnp.concatenate([jnp.zeros_like(loglik[..., :1]), jnp.cumsum(loglik, axis=-1)], axis=-1)
    prior = jnp.log(jnp.asarray(level_weights, dtype))[:, None, None]
    points = slice(n, n + 1) if xq is not None else slice(0, n)
    log_w = _shifted_log_softmax(prior + before[..., points], axis=0)
    means, variances = means[..., points], variances[..., points]
    p = jnp.exp(log_w)
    mean = jnp.sum(p * means, axis=0)
    var = jnp.sum(p * (variances + (means - mean) ** 2), axis=0)  # centred: no E[m^2] - mean^2 cancellation
    return log_w, means, variances, mean, var


def _from_task(task, cls, what: str):
    if not isinstance(task, NoiseMixtureTask):
        raise ValueError(f"{what} needs a NoiseMixtureTask (levels, weights, psi), got {type(task).__name__}")
    scale = float(np.sqrt(task.signal_variance() + task.noise_std**2))
    return cls(task.levels, task.weights, task.w_cov, scale)


def noise_mixture_posterior_mean(task) -> NoiseMixturePosteriorMean:
    """The Bayes-optimal (posterior mean) predictor of a [`NoiseMixtureTask`][icl.tasks.NoiseMixtureTask].

    ``y_hat = sum_k p(sigma_k | D) m_k`` with ``m_k`` the ridge prediction at ``lam = sigma_k^2 / psi^2`` and
    ``p(sigma_k | D) ~ pi_k N(y; 0, psi^2 X X^T + sigma_k^2 I)`` (module docstring). ``.prefix`` gives every
    prefix. ``icl.bayes_posterior_mean(task)`` returns it for such a task.
    """
    return _from_task(task, NoiseMixturePosteriorMean, "noise_mixture_posterior_mean")


def noise_mixture_predictive(task) -> NoiseMixturePredictive:
    """Mean-and-variance Bayes predictor of a ``NoiseMixtureTask`` ([`NoiseMixturePredictive`][icl.predictors.NoiseMixturePredictive]);
    ``icl.bayes_predictive(task)`` returns it for such a task."""
    return _from_task(task, NoiseMixturePredictive, "noise_mixture_predictive")
