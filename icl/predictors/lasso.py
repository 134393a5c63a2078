"""LASSO by (F)ISTA in JAX, the sparse-task baseline of Garg et al. 2022 (docs/theory.md §10).

Minimises ``(1/2n) ||X w - y||^2 + lam ||w||_1`` (scikit-learn's ``Lasso(alpha=lam)`` objective), i.e.
``(1/2) w^T S w - h^T w + lam ||w||_1`` with ``S = X^T X / n``, ``h = X^T y / n``: proximal gradient steps
``w <- soft(w - (S w - h)/L, lam/L)`` with ``L = ||S||_F >= lambda_max(S)`` (a safe step), Nesterov-accelerated
(FISTA, Beck & Teboulle 2009) by default, from ``w = 0``, for a fixed number of steps (static). ``prefix`` runs
the same iterations on the running moments of the first ``k - 1`` pairs, all prefixes at once
(``O(steps n d^2)`` per prompt, memory ``[batch, n, d, d]``); ``k = 1`` gives 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from icl.pytree import pytree_dataclass, static_field
from icl.tasks.base import check_int
from icl.predictors.base import (JittedPredictor, as_leaf, check_context, check_prompts, check_scalar,
                                 context_moments, prefix_context_moments)

__all__ = ["Lasso", "lasso", "lasso_weights"]


def _soft(v, t):
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _fista(s, h, lam, steps: int, accelerated: bool):
    lip = jnp.sqrt(jnp.sum(s * s, axis=(-2, -1)))[..., None]
    lip = jnp.where(lip > 0, lip, 1.0)

    def prox_grad(v):
        grad = jnp.einsum("...ij,...j->...i", s, v) - h
        return _soft(v - grad / lip, lam / lip)

    def step(carry, _):
        w, v, t = carry
        w_new = prox_grad(v)
        if accelerated:
            t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
            v = w_new + ((t - 1.0) / t_new) * (w_new - w)
        else:
            t_new, v = t, w_new
        return (w_new, v, t_new), None

    w0 = jnp.zeros_like(h)
    (w, _, _), _ = jax.lax.scan(step, (w0, w0, jnp.ones((), h.dtype)), None, length=steps)
    return w


@pytree_dataclass
class Lasso(JittedPredictor):
    """LASSO with penalty ``lam >= 0`` (a leaf), ``steps`` (F)ISTA iterations and ``accelerated`` (static)."""

    lam: jax.Array
    steps: int = static_field(default=200)
    accelerated: bool = static_field(default=True)

    def __post_init__(self):
        object.__setattr__(self, "lam", as_leaf(check_scalar("lam", self.lam, nonnegative=True)))
        object.__setattr__(self, "steps", check_int("steps", self.steps))
        if not isinstance(self.accelerated, bool):
            raise ValueError(f"accelerated must be True (FISTA) or False (ISTA), got {self.accelerated!r}")

    def weights(self, x, y):
        x, y = check_context("lasso", x, y)
        return _fista(*context_moments(x, y), jnp.asarray(self.lam, x.dtype), self.steps, self.accelerated)

    def _call(self, prompts):
        x, y = check_prompts("lasso", prompts)
        return jnp.einsum("bd,bd->b", prompts.x_query, self.weights(x, y))

    def prefix_weights(self, x, y):
        x, y = check_context("lasso", x, y)
        return _fista(*prefix_context_moments(x, y), jnp.asarray(self.lam, x.dtype), self.steps, self.accelerated)

    def _prefix(self, prompts):
        x, y = check_prompts("lasso", prompts, query=False)
        return jnp.einsum("bnd,bnd->bn", x, self.prefix_weights(x, y))


def lasso(lam, steps: int = 200, accelerated: bool = True) -> Lasso:
    """LASSO predictor (FISTA by default); see [`Lasso`][icl.predictors.Lasso]. ``lam`` finite ``>= 0``, ``steps >= 1``."""
    return Lasso(lam, steps, accelerated)


def lasso_weights(x, y, lam, steps: int = 200, accelerated: bool = True):
    """LASSO weights ``[batch, d]`` for a context ``x [batch, n, d]``, ``y [batch, n]``; see [`Lasso`][icl.predictors.Lasso]."""
    return Lasso(lam, steps, accelerated).weights(x, y)
