"""Baseline in-context learners: gradient descent, ridge, least squares, Bayes, RLS (THEORY.md §1, §7).

Each ``*_weights`` function maps a context ``x: [batch, n, d]``, ``y: [batch, n]`` to weights
``[batch, d]``; each factory (``gradient_descent``, ``ridge``, ...) returns a **predictor**, a function
from :class:`~icl.tasks.Prompts` to predictions ``[batch]`` (``y_hat = x_q^T w_hat``). All are
batched, ``jit``-compatible and exact in float64.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from icl.linalg import spd_solve
from icl.tasks import Prompts

__all__ = [
    "Predictor",
    "linear_predictor",
    "gd_weights",
    "gradient_descent",
    "ridge_weights",
    "ridge",
    "posterior",
    "bayes_posterior_mean",
    "predictive_variance",
    "least_squares_weights",
    "least_squares",
    "averaging",
    "recursive_least_squares_weights",
]

Predictor = Callable[[Prompts], jax.Array]
"""A predictor maps prompts to predictions ``[batch]``: models, baselines and optima alike."""


def linear_predictor(weights_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Predictor:
    """Turn ``weights_fn(x, y) -> w_hat [batch, d]`` into the predictor ``y_hat = x_q^T w_hat``."""

    def predict(prompts: Prompts) -> jax.Array:
        w_hat = weights_fn(prompts.x, prompts.y)
        return jnp.einsum("bd,bd->b", prompts.x_query, w_hat)

    return predict


def gd_weights(x: jax.Array, y: jax.Array, step_sizes, preconditioner=None) -> jax.Array:
    """K steps of (preconditioned) gradient descent from ``w_0 = 0`` on ``L(w) = (1/2n) ||X w - y||^2``.

    ``w_{k+1} = w_k - eta_k A_k grad L(w_k)`` with ``grad L(w) = X^T (X w - y) / n`` (THEORY.md §1;
    von Oswald et al. 2023 eq. 1; Ahn et al. 2023 eq. 8 up to their ``A^T``). One step gives
    ``w_1 = eta A h`` with ``h = X^T y / n``.

    Args:
      x: ``[batch, n, d]``; y: ``[batch, n]``.
      step_sizes: ``[K]`` (or a scalar for one step).
      preconditioner: ``None`` (identity), ``[d, d]`` shared by all steps, or ``[K, d, d]`` one per step.
    Returns:
      ``w_K: [batch, d]``.
    """
    etas = jnp.atleast_1d(jnp.asarray(step_sizes, dtype=x.dtype))
    if etas.ndim != 1:
        raise ValueError(f"step_sizes must be a scalar or a 1-d array [K], got shape {etas.shape}")
    k, d, n = etas.shape[0], x.shape[-1], x.shape[-2]
    if preconditioner is None:
        precs = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), (k, d, d))
    else:
        p = jnp.asarray(preconditioner, dtype=x.dtype)
        if p.shape == (d, d):
            precs = jnp.broadcast_to(p, (k, d, d))
        elif p.shape == (k, d, d):
            precs = p
        else:
            raise ValueError(f"preconditioner must have shape ({d}, {d}) or ({k}, {d}, {d}), got {p.shape}")

    def step(w, eta_and_prec):
        eta, prec = eta_and_prec
        residual = jnp.einsum("bnd,bd->bn", x, w) - y
        grad = jnp.einsum("bnd,bn->bd", x, residual) / n
        return w - eta * grad @ prec.T, None

    w0 = jnp.zeros(x.shape[:-2] + (d,), x.dtype)
    w, _ = jax.lax.scan(step, w0, (etas, precs))
    return w


def gradient_descent(step_sizes, preconditioner=None) -> Predictor:
    """Predictor of K-step (preconditioned) GD from zero; see :func:`gd_weights`."""
    return linear_predictor(lambda x, y: gd_weights(x, y, step_sizes, preconditioner))


def ridge_weights(x: jax.Array, y: jax.Array, lam: float) -> jax.Array:
    """Ridge regression ``w_hat = (X^T X + lam I)^{-1} X^T y`` (THEORY.md §7), ``lam > 0``."""
    d = x.shape[-1]
    gram = jnp.einsum("bni,bnj->bij", x, x) + lam * jnp.eye(d, dtype=x.dtype)
    rhs = jnp.einsum("bnd,bn->bd", x, y)
    return spd_solve(gram, rhs)


def ridge(lam: float) -> Predictor:
    """Predictor of ridge regression with penalty ``lam > 0``; see :func:`ridge_weights`."""
    if not lam > 0:
        raise ValueError(f"lam must be > 0 (use least_squares() for lam = 0), got {lam!r}")
    return linear_predictor(lambda x, y: ridge_weights(x, y, lam))


def posterior(x: jax.Array, y: jax.Array, prior_cov, noise_std: float) -> tuple[jax.Array, jax.Array]:
    """Bayes posterior of ``w`` under ``w ~ N(0, Omega)``, ``y = X w + N(0, sigma^2 I)`` (THEORY.md §7).

    For ``sigma > 0``: ``Cov = (X^T X / sigma^2 + Omega^{-1})^{-1}``, ``mean = Cov X^T y / sigma^2``,
    i.e. the generalised ridge ``(X^T X + sigma^2 Omega^{-1})^{-1} X^T y``. For ``sigma = 0`` (the limit):
    with ``B = X Omega^{1/2}``, ``mean = Omega^{1/2} B^+ y`` and ``Cov = Omega^{1/2}(I - B^+ B)Omega^{1/2}``
    (for ``n >= d`` that is least squares with zero covariance).

    Returns:
      ``(mean [batch, d], cov [batch, d, d])``.
    """
    omega = np.asarray(prior_cov, dtype=np.float64)
    d = x.shape[-1]
    if noise_std > 0:
        prec = jnp.einsum("bni,bnj->bij", x, x) / noise_std**2 + jnp.asarray(np.linalg.inv(omega), x.dtype)
        eye = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), prec.shape)
        cov = spd_solve(prec, eye)
        mean = jnp.einsum("bij,bj->bi", cov, jnp.einsum("bnd,bn->bd", x, y)) / noise_std**2
        return mean, cov
    if x.shape[-2] >= d:  # noiseless with n >= d: the context determines w, the posterior is a point mass
        return least_squares_weights(x, y), jnp.zeros(x.shape[:-2] + (d, d), x.dtype)
    evals, evecs = np.linalg.eigh(omega)
    root = jnp.asarray((evecs * np.sqrt(evals)) @ evecs.T, x.dtype)  # Omega^{1/2}
    b = x @ root  # [batch, n, d], full row rank n < d almost surely
    b_pinv = _right_pinv(b)  # B^T (B B^T)^{-1}: [batch, d, n]
    mean = jnp.einsum("ij,bjn,bn->bi", root, b_pinv, y)
    proj = jnp.eye(d, dtype=x.dtype) - b_pinv @ b
    cov = root @ proj @ root
    return mean, cov


def _right_pinv(x: jax.Array) -> jax.Array:
    """``X^+ = X^T (X X^T)^{-1}`` for ``x: [batch, n, d]`` of full row rank ``n <= d``; ``[batch, d, n]``."""
    n = x.shape[-2]
    gram = jnp.einsum("bid,bjd->bij", x, x)
    eye = jnp.broadcast_to(jnp.eye(n, dtype=x.dtype), gram.shape)
    return jnp.swapaxes(x, -1, -2) @ spd_solve(gram, eye)


def bayes_posterior_mean(task) -> Predictor:
    """Bayes-optimal predictor for a Gaussian linear task: ``x_q^T E[w | context]`` (ridge with the prior).

    ``task`` supplies ``w_cov`` (Omega) and ``noise_std`` (sigma). With ``Omega = tau^2 I`` this is ridge
    at ``lam = sigma^2 / tau^2`` (THEORY.md §7).
    """
    return linear_predictor(lambda x, y: posterior(x, y, task.w_cov, task.noise_std)[0])


def predictive_variance(task, prompts: Prompts) -> jax.Array:
    """Posterior predictive variance ``sigma^2 + x_q^T Cov_post x_q`` at the query, ``[batch]``."""
    _, cov = posterior(prompts.x, prompts.y, task.w_cov, task.noise_std)
    return task.noise_std**2 + jnp.einsum("bi,bij,bj->b", prompts.x_query, cov, prompts.x_query)



def least_squares_weights(x: jax.Array, y: jax.Array) -> jax.Array:
    """Least squares ``w_hat = X^+ y``: the minimum-norm interpolant when ``n < d`` (THEORY.md §7).

    ``n >= d``: the normal equations ``X^T X w = X^T y``; ``n < d``: ``w = X^T (X X^T)^{-1} y``, the
    minimum-norm solution of ``X w = y``. Both assume full rank, which holds almost surely for
    continuous covariates.
    """
    n, d = x.shape[-2], x.shape[-1]
    if n < d:
        return jnp.einsum("bdn,bn->bd", _right_pinv(x), y)
    gram = jnp.einsum("bni,bnj->bij", x, x)
    return spd_solve(gram, jnp.einsum("bnd,bn->bd", x, y))


def least_squares() -> Predictor:
    """Predictor of (minimum-norm) least squares; see :func:`least_squares_weights`."""
    return linear_predictor(least_squares_weights)


def averaging() -> Predictor:
    """Garg et al. 2022's averaging baseline ``w_hat = h = X^T y / n``."""
    return linear_predictor(lambda x, y: jnp.einsum("bnd,bn->bd", x, y) / x.shape[-2])


def recursive_least_squares_weights(x: jax.Array, y: jax.Array, lam: float) -> jax.Array:
    """Recursive least squares (Akyürek et al. 2023, Thm 2): ridge weights after every prefix.

    ``A_0 = I / lam``, ``w_0 = 0``; for each pair: ``w <- w + (y - x^T w)/(1 + x^T A x) A x``,
    ``A <- A - A x x^T A / (1 + x^T A x)``. After ``k`` pairs ``w_k`` equals ridge on the first ``k``.

    Returns:
      ``[batch, n, d]``: entry ``k - 1`` holds the weights after the first ``k`` pairs.
    """
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    b, n, d = x.shape

    def step(carry, xy):
        w, a = carry
        xi, yi = xy  # [batch, d], [batch]
        ax = jnp.einsum("bij,bj->bi", a, xi)
        denom = 1.0 + jnp.einsum("bi,bi->b", xi, ax)
        w = w + ((yi - jnp.einsum("bi,bi->b", xi, w)) / denom)[:, None] * ax
        a = a - jnp.einsum("bi,bj->bij", ax, ax) / denom[:, None, None]
        return (w, a), w

    a0 = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype) / lam, (b, d, d))
    w0 = jnp.zeros((b, d), x.dtype)
    _, ws = jax.lax.scan(step, (w0, a0), (jnp.swapaxes(x, 0, 1), jnp.swapaxes(y, 0, 1)))
    return jnp.swapaxes(ws, 0, 1)
