"""Least squares, ridge and the Bayes posterior (mean and predictive variance), docs/theory.md §7.

All by one stable recursion, QR updating with Givens rotations (``icl.predictors.qr``): no normal
equations, the minimum-norm answer for rank-deficient contexts (``n < d``, duplicated rows), finite in
float32, ``O(n d^2)`` per prompt for the whole context and for every prefix alike. The Gaussian posterior
under ``w ~ N(0, Omega)``, ``y = X w + N(0, sigma^2)`` is ridge with ``lam = sigma^2`` after the change of
variables ``w = F v``, ``F F^T = Omega`` (so ``sigma = 0`` is the minimum-``Omega^{-1}``-norm interpolant).

Recursive least squares (Akyürek et al. 2023, Thm 2: Sherman-Morrison) stays available as
[`recursive_least_squares_weights`][icl.predictors.recursive_least_squares_weights]; the library's ridge does not use it (it squares the condition
number).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import pytree_dataclass
from icl.predictors import qr
from icl.predictors.base import (
    Predictor,
    as_leaf,
    check_context,
    check_prompts,
    check_scalar,
    is_concrete,
)

__all__ = [
    "LeastSquares",
    "Ridge",
    "BayesPosteriorMean",
    "BayesPredictive",
    "least_squares",
    "least_squares_weights",
    "ridge",
    "ridge_weights",
    "bayes_posterior_mean",
    "bayes_predictive",
    "posterior",
    "predictive_variance",
    "recursive_least_squares_weights",
]

_RIDGE_HINT = (
    " (lam = 0 is least_squares(); the lam -> inf limit is the zero predictor w = 0, which ridge does not"
    " represent: use a large finite lam)"
)


def _check_lam(lam, name: str = "lam"):
    return check_scalar(name, lam, positive=True, hint=_RIDGE_HINT)


# ----------------------------------------------------------------------------------------------------------
# Batched drivers over the QR recursion
# ----------------------------------------------------------------------------------------------------------


# Jitted at module level: least squares, ridge and Bayes share one compiled program per shape.


@jax.jit
def _query(x, y, xq, lam):
    """``(mean, tt, ee)`` at the query, ``[batch]`` each: the context is factorised first (a scan that does not
    depend on ``x_q``, so a gradient with respect to the query never differentiates through it), then the query
    is solved against it."""
    return jax.vmap(qr.predict)(qr.fit(x, y, lam), xq)


@functools.partial(jax.jit, static_argnums=3)
def _prefix(x, y, lam, want_weights=False):
    """``(mean, tt, ee)`` at every prefix, ``[batch, n]`` each (plus weights ``[batch, n, d]``)."""
    return qr.every_prefix(x, y, lam, want_weights)


@jax.jit
def _weights(x, y, lam):
    """Weights from all ``n`` pairs, ``[batch, d]``."""
    return jax.vmap(qr.weights)(qr.fit(x, y, lam))


# ----------------------------------------------------------------------------------------------------------
# Least squares and ridge
# ----------------------------------------------------------------------------------------------------------


def least_squares_weights(x: jax.Array, y: jax.Array) -> jax.Array:
    """Minimum-norm least squares ``w = X^+ y``, ``[batch, d]`` (docs/theory.md §7).

    QR updating (module docstring): exact on full-rank contexts, the minimum-norm solution for ``n < d`` or
    rank-deficient ones (duplicated rows give no NaN); directions whose share of a new input is below
    ``16 d eps`` of its norm count as already spanned.
    """
    x, y = check_context("least_squares_weights", x, y)
    return _weights(x, y, jnp.zeros((), x.dtype))


def ridge_weights(x: jax.Array, y: jax.Array, lam) -> jax.Array:
    """Ridge ``w = (X^T X + lam I)^{-1} X^T y``, ``[batch, d]``, ``lam > 0`` finite (docs/theory.md §7).

    Computed as least squares on ``[X; sqrt(lam) I]`` by QR updating, never through ``X^T X``.
    """
    x, y = check_context("ridge_weights", x, y)
    lam = _check_lam(lam)
    return _weights(x, y, jnp.asarray(lam, x.dtype))


@pytree_dataclass
class LeastSquares(Predictor):
    """(Minimum-norm) least squares, ``y_hat = x_q^T X^+ y``; see [`least_squares_weights`][icl.predictors.least_squares_weights].

    ``prefix``: entry ``k - 1`` is ``x_k^T X_{k-1}^+ y_{k-1}`` (0 at ``k = 1``), one scan, ``O(n d^2)``.
    """

    def weights(self, x, y):
        return least_squares_weights(x, y)

    def __call__(self, prompts):
        x, y = check_prompts("least_squares", prompts)
        return _query(x, y, prompts.x_query, jnp.zeros((), x.dtype))[0]

    def prefix(self, prompts):
        x, y = check_prompts("least_squares", prompts, query=False)
        return _prefix(x, y, jnp.zeros((), x.dtype))[0]

    def prefix_weights(self, x, y):
        """Weights from the first ``k - 1`` pairs at entry ``k - 1``: ``[batch, n, d]``."""
        x, y = check_context("least_squares", x, y)
        return _prefix(x, y, jnp.zeros((), x.dtype), True)[3]


def least_squares() -> LeastSquares:
    """Predictor of minimum-norm least squares (a [`LeastSquares`][icl.predictors.LeastSquares])."""
    return LeastSquares()


@pytree_dataclass
class Ridge(Predictor):
    """Ridge regression with penalty ``lam`` (a leaf: one compiled program serves every lam)."""

    lam: jax.Array

    def __post_init__(self):
        object.__setattr__(self, "lam", _check_lam(self.lam))

    def weights(self, x, y):
        x, y = check_context("ridge", x, y)
        return _weights(x, y, jnp.asarray(self.lam, x.dtype))

    def __call__(self, prompts):
        x, y = check_prompts("ridge", prompts)
        return _query(x, y, prompts.x_query, jnp.asarray(self.lam, x.dtype))[0]

    def prefix(self, prompts):
        x, y = check_prompts("ridge", prompts, query=False)
        return _prefix(x, y, jnp.asarray(self.lam, x.dtype))[0]

    def prefix_weights(self, x, y):
        x, y = check_context("ridge", x, y)
        return _prefix(x, y, jnp.asarray(self.lam, x.dtype), True)[3]


def ridge(lam) -> Ridge:
    """Predictor of ridge regression, ``lam`` finite and ``> 0`` (ValueError naming lam otherwise).

    ``ridge(0)`` is refused (use [`least_squares`][icl.predictors.least_squares]), and so is ``ridge(inf)``: its limit is the zero
    predictor, not the minimum-norm solution.
    """
    return Ridge(lam)


# ----------------------------------------------------------------------------------------------------------
# Gaussian posterior
# ----------------------------------------------------------------------------------------------------------


def _check_prior(prior_cov, noise_std, d: int | None = None):
    noise = check_scalar("noise_std", noise_std, nonnegative=True)
    if not is_concrete(prior_cov):
        return prior_cov, noise
    omega = np.asarray(prior_cov, np.float64)
    if omega.ndim != 2 or omega.shape[0] != omega.shape[1] or (d is not None and omega.shape[0] != d):
        raise ValueError(f"prior_cov must be a square [d, d] matrix, got shape {omega.shape}")
    if not np.all(np.isfinite(omega)):
        raise ValueError("prior_cov must be finite, got NaN or inf entries")
    if not np.allclose(omega, omega.T, rtol=1e-8, atol=1e-12 * max(1.0, np.abs(omega).max())):
        raise ValueError("prior_cov must be symmetric")
    if np.linalg.eigvalsh(omega).min() <= 0:
        raise ValueError("prior_cov must be positive definite")
    return omega, noise


def _bayes_parts(x, y, xq, root, noise_std):
    """``(mean, var)`` at the query or (``xq is None``) at every prefix."""
    dtype = x.dtype
    root = jnp.asarray(root, dtype)
    s2 = jnp.asarray(noise_std, dtype) ** 2
    b = x @ root
    if xq is None:
        mean, tt, ee = _prefix(b, y, s2)
    else:
        mean, tt, ee = _query(b, y, xq @ root, s2)
    return mean, s2 * (1.0 + tt) + ee


def posterior(x: jax.Array, y: jax.Array, prior_cov, noise_std) -> tuple[jax.Array, jax.Array]:
    """Bayes posterior of ``w`` under ``w ~ N(0, Omega)``, ``y = X w + N(0, sigma^2 I)`` (docs/theory.md §7).

    ``sigma > 0``: ``Cov = (X^T X / sigma^2 + Omega^{-1})^{-1}``, ``mean = Cov X^T y / sigma^2``;
    ``sigma = 0`` (the limit): with ``B = X F``, ``F F^T = Omega``: ``mean = F B^+ y``,
    ``Cov = F (I - B^+ B) F^T``. Both by QR updating of ``B`` (stable; no ``Omega^{-1}`` is formed).

    Returns:
      ``(mean [batch, d], cov [batch, d, d])``.
    """
    x, y = check_context("posterior", x, y)
    omega, noise = _check_prior(prior_cov, noise_std, x.shape[-1])
    root = jnp.asarray(qr.prior_root(omega), x.dtype)
    return _posterior(x, y, root, jnp.asarray(noise, x.dtype) ** 2)


@jax.jit
def _posterior(x, y, root, s2):
    dtype, d = x.dtype, x.shape[-1]
    state = qr.fit(x @ root, y, s2)
    q, active, rz = state
    r = rz[..., :d]
    v = jax.vmap(qr.weights)(state)
    eye = jnp.eye(d, dtype=dtype)
    rinv = jax.vmap(jax.vmap(qr.back_solve, in_axes=(None, None, 1), out_axes=1), in_axes=(0, 0, None))(r, active, eye)
    qa = q * active[..., None].astype(dtype)
    m = jnp.einsum("bji,bjk->bik", q, rinv)  # Q^T R_a^{-1}
    cov_v = s2 * m @ jnp.swapaxes(m, -1, -2) + eye - jnp.swapaxes(qa, -1, -2) @ qa
    cov = root @ cov_v @ root.T
    return v @ root.T, 0.5 * (cov + jnp.swapaxes(cov, -1, -2))


def _task_prior(task, what: str):
    if not (hasattr(task, "w_cov") and hasattr(task, "noise_std")):
        raise ValueError(
            f"task must be a Gaussian linear task with w_cov and noise_std for {what}, got {type(task).__name__}"
        )
    return task.w_cov, task.noise_std


@pytree_dataclass
class BayesPosteriorMean(Predictor):
    """``x_q^T E[w | context]`` for ``w ~ N(0, prior_cov)`` and noise ``noise_std`` (leaves).

    The generalised ridge ``(X^T X + sigma^2 Omega^{-1})^{-1} X^T y`` (noiseless: the minimum-Omega^{-1}-norm
    interpolant), docs/theory.md §7. ``prefix``: one scan, ``O(n d^2)``.
    """

    prior_cov: jax.Array
    noise_std: jax.Array
    root: jax.Array = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        omega, noise = _check_prior(self.prior_cov, self.noise_std)
        object.__setattr__(self, "prior_cov", as_leaf(omega))
        object.__setattr__(self, "noise_std", as_leaf(noise))
        object.__setattr__(self, "root", as_leaf(qr.prior_root(omega)) if is_concrete(omega) else qr.prior_root(omega))

    def _name(self):
        return type(self).__name__

    def _check_d(self, x):
        if np.shape(self.root)[-1] != x.shape[-1]:
            raise ValueError(
                f"predictor {self._name()}: prompts.x has d={x.shape[-1]} but prior_cov is "
                f"{np.shape(self.root)[-1]}x{np.shape(self.root)[-1]}"
            )

    def weights(self, x, y):
        return posterior(x, y, self.prior_cov, self.noise_std)[0]

    def prefix_weights(self, x, y):
        """Posterior means from the first ``k - 1`` pairs at entry ``k - 1``: ``[batch, n, d]``."""
        x, y = check_context(self._name(), x, y)
        self._check_d(x)
        root = jnp.asarray(self.root, x.dtype)
        s2 = jnp.asarray(self.noise_std, x.dtype) ** 2
        return _prefix(x @ root, y, s2, True)[3] @ root.T

    def __call__(self, prompts):
        x, y = check_prompts(self._name(), prompts)
        self._check_d(x)
        return _bayes_parts(x, y, prompts.x_query, self.root, self.noise_std)[0]

    def prefix(self, prompts):
        x, y = check_prompts(self._name(), prompts, query=False)
        self._check_d(x)
        return _bayes_parts(x, y, None, self.root, self.noise_std)[0]


@pytree_dataclass
class BayesPredictive(BayesPosteriorMean):
    """Posterior predictive ``(mean, variance)``: variance ``sigma^2 + x^T Cov_post x`` (docs/theory.md §7).

    ``returns_variance = True``: ``p(prompts) -> (mean [batch], var [batch])`` at the query and
    ``p.prefix(prompts) -> (mean [batch, n], var [batch, n])`` (entry ``k - 1`` from the first ``k - 1``
    pairs; at ``k = 1`` the prior predictive ``(0, sigma^2 + x_1^T Omega x_1)``).
    """

    returns_variance = True

    def __call__(self, prompts):
        x, y = check_prompts(self._name(), prompts)
        self._check_d(x)
        return _bayes_parts(x, y, prompts.x_query, self.root, self.noise_std)

    def prefix(self, prompts):
        x, y = check_prompts(self._name(), prompts, query=False)
        self._check_d(x)
        return _bayes_parts(x, y, None, self.root, self.noise_std)


def bayes_posterior_mean(task) -> BayesPosteriorMean:
    """Bayes-optimal predictor for a Gaussian linear task (``task.w_cov``, ``task.noise_std``).

    With ``Omega = tau^2 I`` this is ridge at ``lam = sigma^2 / tau^2`` (docs/theory.md §7). For a
    [`NoiseMixtureTask`][icl.tasks.NoiseMixtureTask] (a noise level drawn per prompt) it is the posterior mixture of
    ridges, [`icl.predictors.mixture.noise_mixture_posterior_mean`][icl.predictors.noise_mixture_posterior_mean].
    """
    from icl.tasks.mixture import NoiseMixtureTask

    if isinstance(task, NoiseMixtureTask):
        from icl.predictors.mixture import noise_mixture_posterior_mean  # lazy: it imports this module

        return noise_mixture_posterior_mean(task)
    return BayesPosteriorMean(*_task_prior(task, "bayes_posterior_mean"))


def bayes_predictive(task) -> BayesPredictive:
    """Mean-and-variance Bayes predictor for a Gaussian linear task; see [`BayesPredictive`][icl.predictors.BayesPredictive]. For a
    [`NoiseMixtureTask`][icl.tasks.NoiseMixtureTask]: [`icl.predictors.mixture.noise_mixture_predictive`][icl.predictors.noise_mixture_predictive]."""
    from icl.tasks.mixture import NoiseMixtureTask

    if isinstance(task, NoiseMixtureTask):
        from icl.predictors.mixture import noise_mixture_predictive  # lazy: it imports this module

        return noise_mixture_predictive(task)
    return BayesPredictive(*_task_prior(task, "bayes_predictive"))


def predictive_variance(task, prompts) -> jax.Array:
    """Posterior predictive variance ``sigma^2 + x_q^T Cov_post x_q`` at the query, ``[batch]``."""
    return bayes_predictive(task)(prompts)[1]


# ----------------------------------------------------------------------------------------------------------
# Recursive least squares (Akyürek et al. 2023)
# ----------------------------------------------------------------------------------------------------------


def recursive_least_squares_weights(x: jax.Array, y: jax.Array, lam) -> jax.Array:
    """Recursive least squares (Akyürek et al. 2023, Thm 2): ridge weights after every prefix.

    ``A_0 = I / lam``, ``w_0 = 0``; for each pair: ``w <- w + (y - x^T w)/(1 + x^T A x) A x``,
    ``A <- A - A x x^T A / (1 + x^T A x)`` (docs/theory.md §7). After ``k`` pairs ``w_k`` equals ridge on the
    first ``k``. Kept as Akyürek's algorithm; [`ridge_weights`][icl.predictors.ridge_weights] uses the stabler QR route.

    Returns:
      ``[batch, n, d]``: entry ``k - 1`` holds the weights after the first ``k`` pairs (note: this is not the
      predictors' ``prefix`` convention, which uses ``k - 1`` pairs).
    """
    x, y = check_context("recursive_least_squares_weights", x, y)
    lam = _check_lam(lam)
    b, n, d = x.shape

    def step(carry, xy):
        w, a = carry
        xi, yi = xy
        ax = jnp.einsum("bij,bj->bi", a, xi)
        denom = 1.0 + jnp.einsum("bi,bi->b", xi, ax)
        w = w + ((yi - jnp.einsum("bi,bi->b", xi, w)) / denom)[:, None] * ax
        a = a - jnp.einsum("bi,bj->bij", ax, ax) / denom[:, None, None]
        return (w, a), w

    a0 = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype) / jnp.asarray(lam, x.dtype), (b, d, d))
    w0 = jnp.zeros((b, d), x.dtype)
    _, ws = jax.lax.scan(step, (w0, a0), (jnp.swapaxes(x, 0, 1), jnp.swapaxes(y, 0, 1)))
    return jnp.swapaxes(ws, 0, 1)
