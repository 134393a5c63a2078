"""Gradient-descent predictors from moments: K-step (preconditioned) GD, GD++, averaging (docs/theory.md §1, §6).

Everything here depends on the context only through ``S = X^T X / n`` and ``h = X^T y / n``: GD on
``L(w) = (1/2n) ||X w - y||^2`` steps ``w <- w - eta A (S w - h)``. The prediction from every prefix uses
the running moments ``S_k, h_k`` of the first ``k - 1`` pairs (exclusive cumulative sums; ``S = h = 0`` at
``k = 1``, so the no-data answer is 0): ``O(n d)`` per prompt for one step and averaging (a cumulative sum
of scalars), ``O(n d^2)`` per step for K-step GD and ``O(n d^3)`` per step for GD++.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import pytree_dataclass, static_field
from icl.predictors.base import (
    JittedPredictor,
    as_leaf,
    check_context,
    check_prompts,
    context_moments,
    is_concrete,
    prefix_context_moments,
    predictor_name,
    prefix_counts,
    shifted_cumsum,
)

__all__ = [
    "GradientDescent",
    "GDPlusPlus",
    "Averaging",
    "LinearPredictor",
    "gradient_descent",
    "gd_weights",
    "gd_plus_plus",
    "gd_plus_plus_weights",
    "averaging",
    "linear_predictor",
]


# ----------------------------------------------------------------------------------------------------------
# Validation and moments
# ----------------------------------------------------------------------------------------------------------


def _check_step_sizes(step_sizes, name: str = "step_sizes"):
    if isinstance(step_sizes, bool):
        raise ValueError(f"{name} must be numbers, got {step_sizes!r}")
    if not is_concrete(step_sizes):
        return jnp.atleast_1d(step_sizes)
    try:
        etas = np.atleast_1d(np.asarray(step_sizes, np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a scalar or a 1-d array [K] of numbers, got {step_sizes!r}") from None
    if etas.ndim != 1 or etas.size == 0:
        raise ValueError(f"{name} must be a scalar or a non-empty 1-d array [K], got shape {etas.shape}")
    if not np.all(np.isfinite(etas)):
        raise ValueError(f"{name} must be finite, got {etas.tolist()}")
    return etas


def _check_preconditioner(preconditioner, k: int, allow_per_step: bool = True):
    if preconditioner is None or not is_concrete(preconditioner):
        return preconditioner
    p = np.asarray(preconditioner, np.float64)
    ok = (p.ndim == 2 and p.shape[0] == p.shape[1]) or (
        allow_per_step and p.ndim == 3 and p.shape[0] == k and p.shape[1] == p.shape[2]
    )
    if not ok:
        shapes = "[d, d]" + (f" or [K, d, d] with K = {k}" if allow_per_step else "")
        raise ValueError(f"preconditioner must have shape {shapes}, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("preconditioner must be finite, got NaN or inf entries")
    return p


def _preconditioners(preconditioner, k: int, d: int, dtype, name: str) -> jax.Array:
    """``[K, d, d]`` from ``None`` (identity), ``[d, d]`` or ``[K, d, d]``."""
    if preconditioner is None:
        return jnp.broadcast_to(jnp.eye(d, dtype=dtype), (k, d, d))
    p = jnp.asarray(preconditioner, dtype)
    if p.shape == (d, d):
        return jnp.broadcast_to(p, (k, d, d))
    if p.shape == (k, d, d):
        return p
    raise ValueError(f"predictor {name}: preconditioner has shape {p.shape}, prompts have d={d} (K={k} steps)")


@jax.jit
def _gd_from_moments(s, h, etas, precs):
    """K GD steps from zero given moments ``s [..., d, d]``, ``h [..., d]``; returns ``w [..., d]``."""

    def step(w, eta_prec):
        eta, prec = eta_prec
        grad = jnp.einsum("...ij,...j->...i", s, w) - h
        return w - eta * grad @ prec.T, None

    w, _ = jax.lax.scan(step, jnp.zeros_like(h), (etas, precs))
    return w


# ----------------------------------------------------------------------------------------------------------
# K-step (preconditioned) gradient descent
# ----------------------------------------------------------------------------------------------------------


def gd_weights(x: jax.Array, y: jax.Array, step_sizes, preconditioner=None) -> jax.Array:
    """K steps of (preconditioned) gradient descent from ``w_0 = 0`` on ``L(w) = (1/2n) ||X w - y||^2``.

    ``w_{k+1} = w_k - eta_k A_k grad L(w_k)`` with ``grad L(w) = X^T (X w - y) / n = S w - h``
    (docs/theory.md §1; von Oswald et al. 2023 eq. 1; Ahn et al. 2023 eq. 8 up to their ``A^T``). One step
    gives ``w_1 = eta A h`` with ``h = X^T y / n``.

    Args:
      x: ``[batch, n, d]``; y: ``[batch, n]``.
      step_sizes: ``[K]`` (or a scalar for one step).
      preconditioner: ``None`` (identity), ``[d, d]`` shared by all steps, or ``[K, d, d]`` one per step.
    Returns:
      ``w_K: [batch, d]``.
    """
    x, y = check_context("gd_weights", x, y)
    return GradientDescent(step_sizes, preconditioner).weights(x, y)


@pytree_dataclass
class GradientDescent(JittedPredictor):
    """K-step (preconditioned) GD from zero; ``step_sizes [K]`` and ``preconditioner`` are leaves.

    ``prefix``: entry ``k - 1`` runs the K steps on the first ``k - 1`` pairs (``L_k`` normalised by
    ``k - 1``) and predicts at ``x_k``: one step is ``(eta / (k-1)) sum_{i<k} y_i x_i^T A^T x_k``, a cumulative
    sum (``O(n d)``); K steps use the running Gram matrices (``O(K n d^2)``, memory ``[batch, n, d, d]``).
    """

    step_sizes: jax.Array
    preconditioner: jax.Array | None = None

    def __post_init__(self):
        etas = _check_step_sizes(self.step_sizes)
        object.__setattr__(self, "step_sizes", as_leaf(etas))
        object.__setattr__(self, "preconditioner", as_leaf(_check_preconditioner(self.preconditioner, etas.shape[0])))

    def _params(self, d: int, dtype):
        etas = jnp.asarray(self.step_sizes, dtype)
        return etas, _preconditioners(self.preconditioner, etas.shape[0], d, dtype, predictor_name(self))

    def weights(self, x, y):
        x, y = check_context("gradient_descent", x, y)
        etas, precs = self._params(x.shape[-1], x.dtype)
        return _gd_from_moments(*context_moments(x, y), etas, precs)

    def _call(self, prompts):
        x, y = check_prompts("gradient_descent", prompts)
        return jnp.einsum("bd,bd->b", prompts.x_query, self.weights(x, y))

    def prefix_weights(self, x, y):
        """Weights from the first ``k - 1`` pairs at entry ``k - 1``: ``[batch, n, d]``."""
        x, y = check_context("gradient_descent", x, y)
        etas, precs = self._params(x.shape[-1], x.dtype)
        if etas.shape[0] == 1:
            return etas[0] * prefix_context_moments(x, y, gram=False)[1] @ precs[0].T
        return _gd_from_moments(*prefix_context_moments(x, y), etas, precs)

    def _prefix(self, prompts):
        x, y = check_prompts("gradient_descent", prompts, query=False)
        etas, precs = self._params(x.shape[-1], x.dtype)
        if etas.shape[0] == 1:  # eta x_k^T A r_{k-1} / (k-1): cumulative sum of scalars
            u = jnp.einsum("bnd,de->bne", x, precs[0])  # A^T x_k
            terms = shifted_cumsum(y[..., None] * x, axis=1)  # r_{k-1}
            return etas[0] * jnp.einsum("bnd,bnd->bn", terms, u) / prefix_counts(x.shape[-2], x.dtype)
        return jnp.einsum("bnd,bnd->bn", x, self.prefix_weights(x, y))


def gradient_descent(step_sizes, preconditioner=None) -> GradientDescent:
    """Predictor of K-step (preconditioned) GD from zero; see [`gd_weights`][icl.predictors.gd_weights]."""
    return GradientDescent(step_sizes, preconditioner)


# ----------------------------------------------------------------------------------------------------------
# GD++ (von Oswald et al. 2023, section 4)
# ----------------------------------------------------------------------------------------------------------


def _check_gammas(gammas, k: int):
    if k == 1:
        return np.zeros(1)
    if not is_concrete(gammas):
        g = jnp.atleast_1d(gammas)
        return jnp.pad(g[: k - 1], (0, 1))
    g = _check_step_sizes(gammas, "gammas")
    if g.shape[0] not in (k - 1, k):
        raise ValueError(f"gammas must hold K - 1 = {k - 1} (or K) values for K = {k} steps, got shape {g.shape}")
    return np.pad(g[: k - 1], (0, 1))


@jax.jit
def _gdpp_from_moments(s, h, etas, gammas, p):
    """GD++ weights from moments (``s [..., d, d]``, ``h [..., d]``): see [`gd_plus_plus_weights`][icl.predictors.gd_plus_plus_weights]."""
    d = h.shape[-1]
    eye = jnp.eye(d, dtype=h.dtype)

    def step(carry, eta_gamma):
        maps, w = carry
        eta, gamma = eta_gamma
        g = jnp.einsum("...ij,...j->...i", maps, h - jnp.einsum("...ij,...j->...i", s, w))  # N (h - S w)
        pg = g @ p.T
        w = w + eta * jnp.einsum("...ij,...i->...j", maps, pg)  # N^T P g
        s_l = maps @ s @ jnp.swapaxes(maps, -1, -2)  # inputs' moment after the earlier maps
        maps = (eye - gamma * s_l @ p) @ maps
        return (maps, w), None

    maps0 = jnp.broadcast_to(eye, s.shape)
    (_, w), _ = jax.lax.scan(step, (maps0, jnp.zeros_like(h)), (etas, gammas))
    return w


def gd_plus_plus_weights(x: jax.Array, y: jax.Array, step_sizes, gammas, preconditioner=None) -> jax.Array:
    """Effective weights of K steps of GD++ (von Oswald et al. 2023, section 4): ``y_hat = x_q^T w``.

    Each step ``l``, from the current inputs ``x^(l)`` and residuals ``r = y - X w``: ``g = X^(l)T r / n``,
    ``S_l = X^(l)T X^(l) / n``; the residuals take a preconditioned GD step, ``r_i <- r_i - eta_l x_i^(l)T P g``,
    and every input (context and query) moves, ``x <- (I - gamma_l S_l P) x``. The query's prediction
    accumulates ``eta_l x_q^(l)T P g``, i.e. ``w = sum_l eta_l N_l^T P g_l`` with ``N_l`` the product of the
    earlier input maps; since ``g_l = N_l (h - S w_l)`` and ``S_l = N_l S N_l^T``, only the moments ``S, h``
    are needed. All ``gamma = 0`` is [`gd_weights`][icl.predictors.gd_weights].

    Args:
      x: ``[batch, n, d]``.
      y: ``[batch, n]``.
      step_sizes: ``[K]``.
      gammas: ``[K - 1]`` (or ``[K]``, the last one unused).
      preconditioner: ``P``, ``None`` (identity) or ``[d, d]``.
    Returns:
      ``[batch, d]``.
    """
    x, y = check_context("gd_plus_plus_weights", x, y)
    return GDPlusPlus(step_sizes, gammas, preconditioner).weights(x, y)


@pytree_dataclass
class GDPlusPlus(JittedPredictor):
    """K steps of GD++ (leaves: ``step_sizes [K]``, ``gammas [K]`` padded with a final 0, ``preconditioner``).

    ``prefix``: the same recursion on the running moments of the first ``k - 1`` pairs, ``O(K n d^3)``.
    """

    step_sizes: jax.Array
    gammas: jax.Array
    preconditioner: jax.Array | None = None

    def __post_init__(self):
        etas = _check_step_sizes(self.step_sizes)
        object.__setattr__(self, "step_sizes", as_leaf(etas))
        object.__setattr__(self, "gammas", as_leaf(_check_gammas(self.gammas, etas.shape[0])))
        p = _check_preconditioner(self.preconditioner, etas.shape[0], allow_per_step=False)
        object.__setattr__(self, "preconditioner", as_leaf(p))

    def _params(self, d, dtype):
        etas = jnp.asarray(self.step_sizes, dtype)
        gammas = jnp.asarray(self.gammas, dtype)
        p = jnp.eye(d, dtype=dtype) if self.preconditioner is None else jnp.asarray(self.preconditioner, dtype)
        if p.shape != (d, d):
            raise ValueError(f"predictor GDPlusPlus: preconditioner has shape {p.shape}, prompts have d={d}")
        return etas, gammas, p

    def weights(self, x, y):
        x, y = check_context("gd_plus_plus", x, y)
        return _gdpp_from_moments(*context_moments(x, y), *self._params(x.shape[-1], x.dtype))

    def _call(self, prompts):
        x, y = check_prompts("gd_plus_plus", prompts)
        return jnp.einsum("bd,bd->b", prompts.x_query, self.weights(x, y))

    def prefix_weights(self, x, y):
        x, y = check_context("gd_plus_plus", x, y)
        return _gdpp_from_moments(*prefix_context_moments(x, y), *self._params(x.shape[-1], x.dtype))

    def _prefix(self, prompts):
        x, y = check_prompts("gd_plus_plus", prompts, query=False)
        return jnp.einsum("bnd,bnd->bn", x, self.prefix_weights(x, y))


def gd_plus_plus(step_sizes, gammas, preconditioner=None) -> GDPlusPlus:
    """Predictor of K steps of GD++; see [`gd_plus_plus_weights`][icl.predictors.gd_plus_plus_weights]."""
    return GDPlusPlus(step_sizes, gammas, preconditioner)


# ----------------------------------------------------------------------------------------------------------
# Averaging and plain weight functions
# ----------------------------------------------------------------------------------------------------------


@pytree_dataclass
class Averaging(JittedPredictor):
    """Garg et al. 2022's averaging baseline ``w_hat = h = X^T y / n`` (docs/theory.md §7, §10).

    ``prefix``: ``x_k^T (1/(k-1)) sum_{i<k} y_i x_i`` (0 at ``k = 1``), ``O(n d)``.
    """

    def weights(self, x, y):
        x, y = check_context("averaging", x, y)
        return jnp.einsum("bnd,bn->bd", x, y) / x.shape[-2]

    def _call(self, prompts):
        x, y = check_prompts("averaging", prompts)
        return jnp.einsum("bd,bd->b", prompts.x_query, self.weights(x, y))

    def prefix_weights(self, x, y):
        x, y = check_context("averaging", x, y)
        return prefix_context_moments(x, y, gram=False)[1]

    def _prefix(self, prompts):
        x, y = check_prompts("averaging", prompts, query=False)
        return jnp.einsum("bnd,bnd->bn", x, self.prefix_weights(x, y))


def averaging() -> Averaging:
    """Predictor of Garg et al.'s averaging baseline; see [`Averaging`][icl.predictors.Averaging]."""
    return Averaging()


@pytree_dataclass
class LinearPredictor(JittedPredictor):
    """``y_hat = x_q^T weights_fn(x, y)`` for a plain function ``weights_fn(x, y) -> [batch, d]`` (static).

    It has no ``prefix``: running an arbitrary function on every prefix would need ``n`` separate calls (one
    per length), so ``prefix`` raises ValueError; write a ``Predictor`` subclass to provide one.
    """

    weights_fn: Callable = static_field()

    def weights(self, x, y):
        return self.weights_fn(x, y)

    def _call(self, prompts):
        x, y = check_prompts(predictor_name(self.weights_fn), prompts)
        w = self.weights_fn(x, y)
        if w.shape != prompts.x_query.shape:
            raise ValueError(
                f"predictor {predictor_name(self.weights_fn)}: weights_fn must return [batch, d] = "
                f"{tuple(prompts.x_query.shape)}, got {tuple(w.shape)}"
            )
        return jnp.einsum("bd,bd->b", prompts.x_query, w)


def linear_predictor(weights_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> LinearPredictor:
    """Turn ``weights_fn(x, y) -> w_hat [batch, d]`` into the predictor ``y_hat = x_q^T w_hat`` (no prefix)."""
    if not callable(weights_fn):
        raise ValueError(f"weights_fn must be callable, got {weights_fn!r}")
    return LinearPredictor(weights_fn)
