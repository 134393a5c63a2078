"""Small batched SPD linear algebra in plain ``jax.numpy`` (no LAPACK custom calls).

Why not ``jnp.linalg.solve``/``cholesky``: on CPU, jaxlib 0.10 runs batched LAPACK factorisations through
a parallel batch map on XLA's intra-op thread pool, which we saw deadlock on a 2-core machine inside a
``lax.scan`` (every pool thread waiting on the others). The matrices here are tiny (``d <= ~50``), so a
column-by-column Cholesky under ``lax.fori_loop``, vectorised over the batch, is fast, exact in float64
and never leaves XLA. (The predictors' least squares, ridge and Bayes do not solve normal equations at all:
they use QR updating, :mod:`icl.predictors.qr`, which stays accurate in float32.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cholesky", "solve_triangular_lower", "solve_triangular_upper", "spd_solve"]


def cholesky(a: jax.Array) -> jax.Array:
    """Lower Cholesky factor ``L`` with ``L L^T = A`` for SPD ``a: [..., d, d]`` (outer-product form).

    Step ``j``: ``l = A[:, j] / sqrt(A[j, j])`` on rows ``>= j``, then ``A <- A - l l^T``.
    """
    d = a.shape[-1]
    rows = jnp.arange(d)

    def step(j, carry):
        rem, low = carry
        col = jnp.take(rem, j, axis=-1)  # [..., d]
        pivot = jnp.sqrt(jnp.take(col, j, axis=-1))
        lcol = jnp.where(rows >= j, col / pivot[..., None], 0.0)
        low = jnp.where(rows == j, lcol[..., :, None], low)  # set column j
        rem = rem - lcol[..., :, None] * lcol[..., None, :]
        return rem, low

    _, low = jax.lax.fori_loop(0, d, step, (a, jnp.zeros_like(a)))
    return low


def solve_triangular_lower(low: jax.Array, b: jax.Array) -> jax.Array:
    """Solve ``L X = B`` by forward substitution; ``low: [..., d, d]``, ``b: [..., d, k]``."""
    d = low.shape[-1]

    def step(i, x):
        row = jnp.take(low, i, axis=-2)  # [..., d]
        xi = (jnp.take(b, i, axis=-2) - jnp.einsum("...j,...jk->...k", row, x)) / jnp.take(row, i, axis=-1)[..., None]
        return jnp.where((jnp.arange(d) == i)[:, None], xi[..., None, :], x)

    return jax.lax.fori_loop(0, d, step, jnp.zeros_like(b))


def solve_triangular_upper(up: jax.Array, b: jax.Array) -> jax.Array:
    """Solve ``U X = B`` by back substitution; ``up: [..., d, d]``, ``b: [..., d, k]``."""
    d = up.shape[-1]

    def step(t, x):
        i = d - 1 - t
        row = jnp.take(up, i, axis=-2)
        xi = (jnp.take(b, i, axis=-2) - jnp.einsum("...j,...jk->...k", row, x)) / jnp.take(row, i, axis=-1)[..., None]
        return jnp.where((jnp.arange(d) == i)[:, None], xi[..., None, :], x)

    return jax.lax.fori_loop(0, d, step, jnp.zeros_like(b))


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """Solve ``A x = b`` for SPD ``a: [..., d, d]``; ``b: [..., d]`` or ``[..., d, k]`` (Cholesky)."""
    vector = b.ndim == a.ndim - 1
    rhs = b[..., None] if vector else b
    low = cholesky(a)
    x = solve_triangular_upper(jnp.swapaxes(low, -1, -2), solve_triangular_lower(low, rhs))
    return x[..., 0] if vector else x
