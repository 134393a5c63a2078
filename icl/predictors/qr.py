"""Least squares, ridge and the Gaussian posterior by one stable recursion: QR updating (Givens rotations).

Ridge with penalty ``lam >= 0`` is least squares on the augmented system ``[X; sqrt(lam) I] w = [y; 0]``.
We keep its triangular factor ``R`` (``R^T R = X^T X + lam I`` restricted to the row space) and ``z = Q^T y``
and add the context pairs one at a time with ``d`` Givens rotations each (``O(d^2)`` per pair, ``O(n d^2)``
per prompt); the normal equations, whose condition number is the square of ``X``'s, are never formed.
This is what makes float32 least squares finite and accurate where the Cholesky/Sherman-Morrison route gave
NaN (issue 9, item 3).

Rank. For ``lam > 0`` the working basis is the identity. For ``lam = 0`` (least squares, noiseless Bayes) the
basis is grown with the context: a new pair ``x`` whose component ``e`` off the span of the earlier inputs
(Gram-Schmidt, applied twice) has ``||e|| > rtol ||x||`` opens a new orthonormal direction ``e / ||e||``;
a pair inside the span (for example a duplicated row) only updates ``R`` and ``z``. Solutions are taken on
the active directions only, which is the minimum-norm least-squares solution ``X^+ y`` (it lies in the row
space). ``rtol = 16 d eps`` of the dtype, the usual numerical-rank threshold scale.

Everything here works on one prompt (``x: [n, d]``) and is ``vmap``-ed over the batch by the callers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _rtol(d: int, dtype) -> float:
    return 16.0 * d * float(jnp.finfo(dtype).eps)


def init_state(lam: jax.Array, d: int, dtype):
    """``(Q, active, R, z)`` before any pair: ``R = sqrt(lam) I``; all directions active iff ``lam > 0``."""
    eye = jnp.eye(d, dtype=dtype)
    lam = jnp.asarray(lam, dtype)
    active = jnp.broadcast_to(lam > 0, (d,))
    return eye, active, jnp.sqrt(jnp.maximum(lam, 0)) * eye, jnp.zeros(d, dtype)


def project(q: jax.Array, active: jax.Array, x: jax.Array):
    """Coordinates ``u`` of ``x`` on the active basis and the remainder ``e`` (classical Gram-Schmidt twice)."""
    qa = q * active[:, None].astype(q.dtype)
    u1 = qa @ x
    e1 = x - qa.T @ u1
    u2 = qa @ e1
    return u1 + u2, e1 - qa.T @ u2


def add_pair(state, x: jax.Array, y: jax.Array, projection=None):
    """Add one pair ``(x [d], y [])`` to the factorisation (see the module docstring); ``projection`` is
    ``project(q, active, x)`` when the caller has it already."""
    q, active, r, z = state
    d = x.shape[-1]
    u, e = project(q, active, x) if projection is None else projection
    norm_e = jnp.sqrt(jnp.sum(e * e))
    norm_x = jnp.sqrt(jnp.sum(x * x))
    rank = jnp.sum(active)
    new = (norm_e > _rtol(d, x.dtype) * norm_x) & (rank < d)
    onehot = (jnp.arange(d) == rank) & new
    q = jnp.where(onehot[:, None], e / jnp.where(new, norm_e, 1.0), q)
    active = active | onehot
    a = u + jnp.where(onehot, norm_e, 0.0)

    def rotate(j, carry):
        r, z, a, b = carry
        rj, zj, aj = r[j], z[j], a[j]
        rjj = rj[j]
        h = jnp.hypot(rjj, aj)
        safe = jnp.where(h > 0, h, 1.0)
        c = jnp.where(h > 0, rjj / safe, 1.0)
        s = jnp.where(h > 0, aj / safe, 0.0)
        r = r.at[j].set(c * rj + s * a)
        a = (c * a - s * rj).at[j].set(0.0)
        z = z.at[j].set(c * zj + s * b)
        b = c * b - s * zj
        return r, z, a, b

    r, z, _, _ = jax.lax.fori_loop(0, d, rotate, (r, z, a, y))
    return q, active, r, z


def forward_solve(r: jax.Array, active: jax.Array, u: jax.Array) -> jax.Array:
    """``t`` with ``R_a^T t = u_a`` on the active directions, 0 elsewhere."""
    d = u.shape[-1]

    def body(j, t):
        rjj = r[j, j]
        tj = (u[j] - r[:, j] @ t) / jnp.where(active[j], rjj, 1.0)
        return t.at[j].set(jnp.where(active[j], tj, 0.0))

    return jax.lax.fori_loop(0, d, body, jnp.zeros_like(u))


def back_solve(r: jax.Array, active: jax.Array, z: jax.Array) -> jax.Array:
    """``v`` with ``R_a v_a = z_a`` on the active directions, 0 elsewhere."""
    d = z.shape[-1]

    def body(i, v):
        j = d - 1 - i
        vj = (z[j] - r[j] @ v) / jnp.where(active[j], r[j, j], 1.0)
        return v.at[j].set(jnp.where(active[j], vj, 0.0))

    return jax.lax.fori_loop(0, d, body, jnp.zeros_like(z))


def predict(state, x: jax.Array, projection=None):
    """``(mean, ||t||^2, ||e||^2)`` at input ``x``: ``mean = x^T w``, and the two variance terms.

    With ``t = R_a^{-T} u``: ``x^T (X^T X + lam I)^{-1} x = ||t||^2`` on the active directions, and
    ``||e||^2`` is the squared distance of ``x`` from the span of the context (the variance term of the
    noiseless posterior).
    """
    q, active, r, z = state
    u, e = project(q, active, x) if projection is None else projection
    t = forward_solve(r, active, u)
    return t @ z, t @ t, e @ e


def weights(state) -> jax.Array:
    """The solution ``w = Q_a^T R_a^{-1} z_a``, ``[d]``."""
    q, active, r, z = state
    v = back_solve(r, active, z)
    return q.T @ v


def fit(x: jax.Array, y: jax.Array, lam) -> tuple:
    """The state after all pairs of one prompt (``x: [n, d]``, ``y: [n]``)."""
    state = init_state(lam, x.shape[-1], x.dtype)

    def step(state, xy):
        return add_pair(state, *xy), None

    state, _ = jax.lax.scan(step, state, (x, y))
    return state


def every_prefix(x: jax.Array, y: jax.Array, lam, want_weights: bool = False):
    """Garg-convention predictions of one prompt: entry ``k - 1`` predicts at ``x_k`` from the first ``k - 1``
    pairs; returns ``(mean [n], tt [n], ee [n])`` and, if asked, those ``k - 1``-pair weights ``[n, d]``."""
    state = init_state(lam, x.shape[-1], x.dtype)

    def step(state, xy):
        xi, yi = xy
        proj = project(state[0], state[1], xi)
        out = predict(state, xi, proj)
        if want_weights:
            out = out + (weights(state),)
        return add_pair(state, xi, yi, proj), out

    _, outs = jax.lax.scan(step, state, (x, y))
    return outs
