"""Least squares, ridge and the Gaussian posterior by one stable recursion: QR updating (Givens rotations).

Ridge with penalty ``lam >= 0`` is least squares on the augmented system ``[X; sqrt(lam) I] w = [y; 0]``.
We keep its triangular factor ``R`` (``R^T R = X^T X + lam I`` restricted to the row space) and ``z = Q^T y``
and add the context pairs one at a time with ``d`` Givens rotations each (``O(d^2)`` per pair, ``O(n d^2)``
per prompt); the normal equations, whose condition number is the square of ``X``'s, are never formed.
This is what makes float32 least squares finite and accurate where the Cholesky/Sherman-Morrison route gave
NaN.

Rank. For ``lam > 0`` the working basis is the identity. For ``lam = 0`` (least squares, noiseless Bayes) the
basis is grown with the context: a new pair ``x`` whose component ``e`` off the span of the earlier inputs
(Gram-Schmidt, applied twice) has ``||e|| > rtol ||x||`` opens a new orthonormal direction ``e / ||e||``;
a pair inside the span (for example a duplicated row) only updates ``R`` and ``z``. Solutions are taken on
the active directions only, which is the minimum-norm least-squares solution ``X^+ y`` (it lies in the row
space). ``rtol = 16 d eps`` of the dtype, the usual numerical-rank threshold scale.

Speed. The recursion is run column by column (a systolic array): for ``j = 0..d-1`` one scan over
the pairs carries row ``j`` of ``[R z]`` and rotates every pair's remaining row against it, time-major over
the whole batch, so each scan step is one fused elementwise rotation and nothing is copied or scattered
(the pair-by-pair order with a ``fori_loop`` over ``.at[j].set`` cost ~3x more per prompt; unrolling the
``d`` rotations in one scan body compiled for minutes at ``d = 20``). The prediction at each new input is
the forward solve ``t = R_a^{-T} u`` taken row by row in the same scans. The query of a full context is
solved against the fitted factor, so its gradient never runs through the scans.

``fit`` and ``every_prefix`` take a batch (``x: [batch, n, d]``; the rotations run time-major over
the whole batch); ``predict``, ``weights`` and ``back_solve`` work on one prompt and are
``vmap``-ed by the callers. ``prior_root`` (with ``cholesky``) gives the prior factor ``F``
(``F F^T = Omega``) that the Bayes predictors turn into ridge on ``X F``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icl.predictors.base import is_concrete


def cholesky(a: jax.Array) -> jax.Array:
    """Lower Cholesky factor ``L`` with ``L L^T = A`` for SPD ``a: [..., d, d]`` (outer-product form), in plain
    ``jax.numpy``: on CPU, jaxlib 0.10 runs batched LAPACK factorisations through a parallel batch map that we saw
    deadlock on a 2-core machine inside a ``lax.scan``; the matrices here are tiny. Step ``j``: ``l = A[:, j] / sqrt(A[j, j])`` on rows ``>= j``, then ``A <- A - l l^T``.
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


def prior_root(prior_cov):
    """A factor ``F`` with ``F F^T = Omega``: the symmetric root (float64 numpy eigh) when concrete, so that an
    isotropic prior keeps rotation equivariance; a Cholesky factor (pure JAX) when traced."""
    if is_concrete(prior_cov):
        omega = np.asarray(prior_cov, np.float64)
        evals, evecs = np.linalg.eigh(0.5 * (omega + omega.T))
        return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T
    return cholesky(prior_cov)


def _rtol(d: int, dtype) -> float:
    return 16.0 * d * float(jnp.finfo(dtype).eps)


def _safe_norm(v: jax.Array) -> jax.Array:
    """``||v||`` with a finite gradient at ``v = 0`` (where it is 0)."""
    sq = jnp.sum(v * v)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def _givens(p: jax.Array, q: jax.Array):
    """``(c, s)`` with ``c p + s q = hypot(p, q)`` and ``c q - s p = 0``; the identity when ``p = q = 0``
    (gradient-safe there)."""
    nonzero = (p != 0) | (q != 0)
    p = jnp.where(nonzero, p, 1.0)
    q = jnp.where(nonzero, q, 0.0)
    h = jnp.hypot(p, q)
    return p / h, q / h


def project(q: jax.Array, active: jax.Array, x: jax.Array):
    """Coordinates ``u`` of ``x`` on the active basis and the remainder ``e`` (classical Gram-Schmidt twice).

    Products as broadcast multiply-and-reduce (batched tiny ``dot_general``s are slow on XLA:CPU)."""
    qa = q * active[:, None].astype(q.dtype)
    u1 = jnp.sum(qa * x, axis=-1)
    e1 = x - jnp.sum(qa * u1[:, None], axis=0)
    u2 = jnp.sum(qa * e1, axis=-1)
    return u1 + u2, e1 - jnp.sum(qa * u2[:, None], axis=0)


def _basis(x: jax.Array, lam, keep_bases: bool = False):
    """The active bases grown pair by pair (module docstring, "Rank"): one scan over the pairs of a batch,
    time-major (``x: [n, batch, d]``).

    Returns ``q`` and ``active`` after all pairs and, per pair ``i``: ``u_i`` (coordinates of ``x_i`` on the
    basis before it), ``a_i`` (its row to add: ``u_i`` plus ``||e_i||`` in a newly opened direction), the
    active flags before it ``[n, batch, d]``, ``||e_i||^2`` and (``keep_bases``) the basis before it
    ``[n, batch, d, d]``, else ``None``.
    """
    n, b, d = x.shape
    dtype = x.dtype
    lam = jnp.asarray(lam, dtype)

    def step(carry, xi):
        q, active = carry
        u, e = project(q, active, xi)
        norm_e = _safe_norm(e)
        rank = jnp.sum(active)
        new = (norm_e > _rtol(d, dtype) * _safe_norm(xi)) & (rank < d)
        onehot = (jnp.arange(d) == rank) & new
        out = (u, u + jnp.where(onehot, norm_e, 0.0), active, jnp.sum(e * e), q if keep_bases else None)
        return (jnp.where(onehot[:, None], e / jnp.where(new, norm_e, 1.0), q), active | onehot), out

    def grown():
        start = (jnp.broadcast_to(jnp.eye(d, dtype=dtype), (b, d, d)), jnp.zeros((b, d), bool))
        return jax.lax.scan(jax.vmap(step), start, x)

    def identity():  # lam > 0: every direction is active from the start and the basis is the identity
        eye, ones = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (b, d, d)), jnp.ones((b, d), bool)
        out = (x, x, jnp.broadcast_to(ones, (n, b, d)), jnp.zeros((n, b), dtype),
               jnp.broadcast_to(eye, (n, b, d, d)) if keep_bases else None)
        return (eye, ones), out

    return jax.lax.cond(lam > 0, identity, grown)


def _columns(a, y, t, act, lam, predict: bool, keep_rows: bool = False):
    """Add the rows ``a_i`` (``[n, ..., d]``, time-major, labels ``y [n, ...]``) to ``[R z] = [sqrt(lam) I, 0]``,
    column by column.

    Column ``j`` is one scan over the pairs whose carry is row ``j`` of ``[R z]``; it rotates each pair's
    remaining row against it and, when ``predict``, takes step ``j`` of that pair's forward solve
    ``R_a^T t = u`` (row-oriented) against the row as it was before the pair (``t``: ``[n, ..., d]``, the
    coordinates ``u_i``; ``act``: ``[n, ..., d]`` active flags before each pair). This is the pair-by-pair
    recursion reordered (a systolic array): the same arithmetic, with a loop over ``j`` around a scan over
    the pairs whose body is one rotation over the whole batch (a body that rotated ``d`` times compiled
    slowly, or copied ``R``). Returns ``[R z]`` ``[..., d, d + 1]``, ``mean`` and ``tt`` ``[n, ...]`` and
    (``keep_rows``) ``[R z]`` before each pair, ``[n, ..., d, d + 1]``.
    """
    n, d = a.shape[0], a.shape[-1]
    dtype = a.dtype
    root = jnp.sqrt(jnp.maximum(jnp.asarray(lam, dtype), 0))
    a = jnp.concatenate([a, y[..., None].astype(dtype)], axis=-1)
    cols = jnp.arange(d + 1)

    def at(v, j):
        return jax.lax.dynamic_index_in_dim(v, j, axis=-1, keepdims=False)

    def column(carry, j):
        a, t, mean, tt = carry
        keep = (cols != j).astype(dtype)

        def step(row, inputs):
            a_i = inputs[0]
            out = ()
            if predict:  # the forward solve's step j for this pair, against row j before the pair
                t_i, act_ij = inputs[1:]
                tj = jnp.where(act_ij, at(t_i, j) / jnp.where(act_ij, at(row, j), 1.0), 0.0)
                out = (t_i - tj[..., None] * row[..., :-1], tj * row[..., -1], tj * tj)
            c, s = _givens(at(row, j), at(a_i, j))
            c, s = c[..., None], s[..., None]
            return c * row + s * a_i, ((c * a_i - s * row) * keep,) + out + ((row,) if keep_rows else ())

        inputs = (a, t, at(act, j)) if predict else (a,)
        row0 = jnp.broadcast_to(root * (cols == j).astype(dtype), a.shape[1:])
        row, outs = jax.lax.scan(step, row0, inputs)
        if predict:
            t, mean, tt = outs[1], mean + outs[2], tt + outs[3]
        return (outs[0], t, mean, tt), (row, outs[-1] if keep_rows else None)

    zeros = jnp.zeros(a.shape[:-1], dtype)
    (_, _, mean, tt), (rz, history) = jax.lax.scan(column, (a, t, zeros, zeros), jnp.arange(d))
    return jnp.moveaxis(rz, 0, -2), mean, tt, (None if history is None else jnp.moveaxis(history, 0, -2))


def predict(state, x: jax.Array):
    """``(mean, ||t||^2, ||e||^2)`` at input ``x``: ``mean = x^T w``, ``t = R_a^{-T} u`` (so ``||t||^2 =
    x^T (X^T X + lam I)^{-1} x`` on the active directions) and ``||e||^2``, the squared distance of ``x``
    from the span of the context (the variance term of the noiseless posterior)."""
    q, active, rz = state
    u, e = project(q, active, x)

    def body(j, carry):
        t, mean, tt = carry
        row = rz[j]
        tj = jnp.where(active[j], t[j] / jnp.where(active[j], row[j], 1.0), 0.0)
        return t - tj * row[:-1], mean + tj * row[-1], tt + tj * tj

    zero = jnp.zeros((), x.dtype)
    _, mean, tt = jax.lax.fori_loop(0, x.shape[-1], body, (u, zero, zero))
    return mean, tt, jnp.sum(e * e)


def back_solve(r: jax.Array, active: jax.Array, z: jax.Array) -> jax.Array:
    """``v`` with ``R_a v_a = z_a`` on the active directions, 0 elsewhere (column-oriented, no indexed writes)."""
    d = z.shape[-1]
    cols = jnp.arange(d)

    def body(i, carry):
        v, rhs = carry
        j = d - 1 - i
        vj = jnp.where(active[j], rhs[j] / jnp.where(active[j], r[j, j], 1.0), 0.0)
        return v + jnp.where(cols == j, vj, 0.0), rhs - vj * r[:, j]

    return jax.lax.fori_loop(0, d, body, (jnp.zeros_like(z), z))[0]


def _solution(q, active, rz) -> jax.Array:
    d = q.shape[-1]
    return jnp.sum(q * back_solve(rz[:, :d], active, rz[:, d])[:, None], axis=0)


def weights(state) -> jax.Array:
    """The solution ``w = Q_a^T R_a^{-1} z_a``, ``[d]``."""
    return _solution(*state)


def _time_major(v):
    return jnp.moveaxis(v, 1, 0)


def fit(x: jax.Array, y: jax.Array, lam) -> tuple:
    """The states ``(Q, active, [R z])`` after all pairs of a batch (``x: [batch, n, d]``, ``y: [batch, n]``)."""
    (q, active), (u, a, act, _, _) = _basis(_time_major(x), lam)
    return q, active, _columns(a, _time_major(y), u, act, lam, predict=False)[0]


def every_prefix(x: jax.Array, y: jax.Array, lam, want_weights: bool = False):
    """Garg-convention predictions of a batch (``x: [batch, n, d]``): entry ``k - 1`` predicts at ``x_k`` from
    the first ``k - 1`` pairs; returns ``(mean, tt, ee)``, ``[batch, n]`` each, and, if asked, those
    ``k - 1``-pair weights ``[batch, n, d]``."""
    _, (u, a, act, ee, qs) = _basis(_time_major(x), lam, keep_bases=want_weights)
    _, mean, tt, history = _columns(a, _time_major(y), u, act, lam, predict=True, keep_rows=want_weights)
    out = tuple(map(_time_major, (mean, tt, ee)))
    if not want_weights:
        return out
    return out + (_time_major(jax.vmap(jax.vmap(_solution))(qs, act, history)),)
