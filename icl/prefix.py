"""Prefix-wise predictors: the prediction from the first ``k`` context pairs, for every ``k = 1..n`` at once.

A *prefix predictor* maps :class:`~icl.tasks.Prompts` to predictions ``[batch, n]`` whose column
``k - 1`` is what the ordinary predictor (``icl.algorithms``, ``icl.models``) would output on the
prompt truncated to its first ``k`` pairs (same query). These are the learning curves of Garg et al.
(2022, Fig. 2) and Akyürek et al. (2023, §4), computed without a Python loop over prefixes: by
cumulative sums (one-step GD, one-layer LSA), cumulative Gram matrices (multi-layer LSA), a masked
``[n, n]`` product per step (K-step GD) or a ``lax.scan`` over the context that updates the
solution one pair at a time (ridge, Bayes, least squares; Akyürek et al. 2023, Thm 2). Each function
documents its cost and whether it is exact.

Every ``*_weights`` function returns weights ``[batch, n, d]`` (entry ``k - 1`` from the first ``k``
pairs); every factory returns a prefix predictor ``Prompts -> [batch, n]``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from icl.algorithms import recursive_least_squares_weights
from icl.linalg import spd_solve
from icl.models import prompt_tokens
from icl.tasks import Prompts

__all__ = [
    "PrefixPredictor",
    "prefix_linear_predictor",
    "prefix_gd_weights",
    "prefix_gradient_descent",
    "prefix_ridge_weights",
    "prefix_ridge",
    "prefix_least_squares_weights",
    "prefix_least_squares",
    "prefix_posterior_mean_weights",
    "prefix_bayes_posterior_mean",
    "prefix_lsa",
]

PrefixPredictor = Callable[[Prompts], jax.Array]
"""Maps prompts to predictions ``[batch, n]``; column ``k - 1`` uses the first ``k`` context pairs."""


def prefix_linear_predictor(weights_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> PrefixPredictor:
    """Turn ``weights_fn(x, y) -> [batch, n, d]`` (weights per prefix) into ``y_hat_k = x_q^T w_hat_k``."""

    def predict(prompts: Prompts) -> jax.Array:
        return jnp.einsum("bkd,bd->bk", weights_fn(prompts.x, prompts.y), prompts.x_query)

    return predict


def _prefix_lengths(n: int, dtype) -> jax.Array:
    return jnp.arange(1, n + 1, dtype=dtype)


def _step_sizes_and_preconditioners(step_sizes, preconditioner, d: int, dtype):
    etas = jnp.atleast_1d(jnp.asarray(step_sizes, dtype=dtype))
    if etas.ndim != 1:
        raise ValueError(f"step_sizes must be a scalar or a 1-d array [K], got shape {etas.shape}")
    k = etas.shape[0]
    if preconditioner is None:
        return etas, jnp.broadcast_to(jnp.eye(d, dtype=dtype), (k, d, d))
    p = jnp.asarray(preconditioner, dtype=dtype)
    if p.shape == (d, d):
        return etas, jnp.broadcast_to(p, (k, d, d))
    if p.shape == (k, d, d):
        return etas, p
    raise ValueError(f"preconditioner must have shape ({d}, {d}) or ({k}, {d}, {d}), got {p.shape}")


def prefix_gd_weights(x: jax.Array, y: jax.Array, step_sizes, preconditioner=None) -> jax.Array:
    """K steps of (preconditioned) GD from ``w = 0`` on every prefix: ``[batch, n, d]``.

    On the prefix of length ``k``, ``L_k(w) = (1/2k) sum_{i<=k} (x_i^T w - y_i)^2`` and
    ``w <- w - eta_t A_t (S_k w - r_k) / k`` with ``S_k = sum_{i<=k} x_i x_i^T``, ``r_k = sum_{i<=k} y_i x_i``
    (the update of :func:`icl.algorithms.gd_weights`; von Oswald et al. 2023 eq. 1). One step from zero
    is ``w_1 = eta A r_k / k``: a cumulative sum, ``O(n d)`` per prompt. For ``K > 1`` the products
    ``S_k w_k`` for all ``k`` come from the masked ``[n, n]`` matrix ``1[i <= k] x_i^T w_k``:
    ``O(K n^2 d)`` per prompt, no ``[n, d, d]`` Gram stack. Exact (same arithmetic as the ordinary one).

    Args:
      x: ``[batch, n, d]``; y: ``[batch, n]``.
      step_sizes: ``[K]`` or a scalar; preconditioner: ``None``, ``[d, d]`` or ``[K, d, d]``.
    """
    b, n, d = x.shape
    etas, precs = _step_sizes_and_preconditioners(step_sizes, preconditioner, d, x.dtype)
    lengths = _prefix_lengths(n, x.dtype)[:, None]  # [n, 1]
    r = jnp.cumsum(y[..., None] * x, axis=1) / lengths  # r_k / k: [batch, n, d]
    if etas.shape[0] == 1:
        return etas[0] * r @ precs[0].T
    mask = jnp.tril(jnp.ones((n, n), x.dtype)) / lengths  # [k, i] = 1[i <= k] / k

    def step(w, eta_and_prec):
        eta, prec = eta_and_prec
        proj = jnp.einsum("bid,bkd->bki", x, w) * mask  # x_i^T w_k / k on i <= k
        grad = jnp.einsum("bki,bid->bkd", proj, x) - r  # (S_k w_k - r_k) / k
        return w - eta * grad @ prec.T, None

    w, _ = jax.lax.scan(step, jnp.zeros((b, n, d), x.dtype), (etas, precs))
    return w


def prefix_gradient_descent(step_sizes, preconditioner=None) -> PrefixPredictor:
    """Prefix predictor of K-step (preconditioned) GD from zero; see :func:`prefix_gd_weights`.

    For one step the predictions are formed without weights: ``y_hat_k = (eta/k) sum_{i<=k} y_i x_i^T A^T x_q``,
    a cumulative sum of scalars, ``O(n d)`` per prompt.
    """
    if np.ndim(step_sizes) == 0 or np.size(step_sizes) == 1:
        def predict(prompts: Prompts) -> jax.Array:
            x = prompts.x
            etas, precs = _step_sizes_and_preconditioners(step_sizes, preconditioner, x.shape[-1], x.dtype)
            u = prompts.x_query if preconditioner is None else prompts.x_query @ precs[0]  # A^T x_q
            terms = prompts.y * jnp.einsum("bnd,bd->bn", x, u)
            return etas[0] * jnp.cumsum(terms, axis=1) / _prefix_lengths(x.shape[-2], x.dtype)

        return predict
    return prefix_linear_predictor(lambda x, y: prefix_gd_weights(x, y, step_sizes, preconditioner))


def _rls_scan(x: jax.Array, y: jax.Array, a0: jax.Array, w0: jax.Array) -> jax.Array:
    """Sherman-Morrison recursion from ``(w0, A0)`` over the pairs of ``x, y``; weights after each pair.

    ``w <- w + (y - x^T w) A x / (1 + x^T A x)``, ``A <- A - A x x^T A / (1 + x^T A x)``: after pair
    ``k``, ``A = (A0^{-1} + sum x_i x_i^T)^{-1}`` and ``w = A (A0^{-1} w0 + sum y_i x_i)``.
    """

    def step(carry, xy):
        w, a = carry
        xi, yi = xy
        ax = jnp.einsum("bij,bj->bi", a, xi)
        denom = 1.0 + jnp.einsum("bi,bi->b", xi, ax)
        w = w + ((yi - jnp.einsum("bi,bi->b", xi, w)) / denom)[:, None] * ax
        a = a - jnp.einsum("bi,bj->bij", ax, ax) / denom[:, None, None]
        return (w, a), w

    _, ws = jax.lax.scan(step, (w0, a0), (jnp.swapaxes(x, 0, 1), jnp.swapaxes(y, 0, 1)))
    return jnp.swapaxes(ws, 0, 1)


def prefix_ridge_weights(x: jax.Array, y: jax.Array, lam: float) -> jax.Array:
    """Ridge ``w_k = (X_k^T X_k + lam I)^{-1} X_k^T y_k`` for every prefix ``k``: ``[batch, n, d]``.

    Recursive least squares (Akyürek et al. 2023, Thm 2; :func:`icl.algorithms.recursive_least_squares_weights`):
    one ``lax.scan`` over the context, ``O(n d^2)`` per prompt against ``O(n d^3)`` for ``n`` separate
    solves. Exact in exact arithmetic; in float64 it matches :func:`icl.algorithms.ridge_weights` to ~1e-12.
    """
    return recursive_least_squares_weights(x, y, lam)


def prefix_ridge(lam: float) -> PrefixPredictor:
    """Prefix predictor of ridge with penalty ``lam > 0``; see :func:`prefix_ridge_weights`."""
    if not lam > 0:
        raise ValueError(f"lam must be > 0 (use prefix_least_squares() for lam = 0), got {lam!r}")
    return prefix_linear_predictor(lambda x, y: prefix_ridge_weights(x, y, lam))


def prefix_least_squares_weights(x: jax.Array, y: jax.Array) -> jax.Array:
    """Least squares ``w_k = X_k^+ y_k`` (min-norm for ``k < d``) for every prefix: ``[batch, n, d]``.

    Two ``lax.scan`` phases, no Python loop over prefixes, ``O(n d^2)`` per prompt plus one ``d x d``
    solve. Pairs ``1..min(n, d)`` (rank grows by one each): Greville's (1960) update of the min-norm
    solution, with ``P = I - X_k^+ X_k`` the projector onto the null space of ``X_k``,
    ``c = P x``, ``w <- w + (y - x^T w) c / (c^T x)``, ``P <- P - c c^T / (c^T c)``.
    Pairs ``d+1..n`` (full column rank): recursive least squares started exactly at ``k = d`` with
    ``A = (X_d^T X_d)^{-1}`` (one batched :func:`icl.linalg.spd_solve`), the Sherman-Morrison update
    of :func:`prefix_ridge_weights` without the ridge term.

    Exactness: equals :func:`icl.algorithms.least_squares_weights` on every prefix in exact arithmetic,
    assuming (as that function does) that every ``min(k, d)`` context inputs are linearly independent,
    which holds almost surely for continuous covariates. In float64 the two agree to ~1e-12 on
    well-conditioned prompts; both lose accuracy near ``k = d``, where ``X_k`` is square and its
    condition number is largest (the interpolation peak). Not a ridge limit: no ``lam`` is involved.
    """
    b, n, d = x.shape
    m = min(n, d)

    def greville(carry, xy):
        w, p = carry
        xi, yi = xy
        c = jnp.einsum("bij,bj->bi", p, xi)
        c = jnp.einsum("bij,bj->bi", p, c)  # project twice: keeps P a projector in floating point
        cc = jnp.einsum("bi,bi->b", c, c)
        w = w + ((yi - jnp.einsum("bi,bi->b", xi, w)) / jnp.einsum("bi,bi->b", c, xi))[:, None] * c
        p = p - jnp.einsum("bi,bj->bij", c, c) / cc[:, None, None]
        return (w, p), w

    p0 = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), (b, d, d))
    xs, ys = jnp.swapaxes(x, 0, 1), jnp.swapaxes(y, 0, 1)
    (w_m, _), ws = jax.lax.scan(greville, (jnp.zeros((b, d), x.dtype), p0), (xs[:m], ys[:m]))
    ws = jnp.swapaxes(ws, 0, 1)
    if n <= d:
        return ws
    gram = jnp.einsum("bni,bnj->bij", x[:, :d], x[:, :d])
    a_d = spd_solve(gram, jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), gram.shape))
    a_d = 0.5 * (a_d + jnp.swapaxes(a_d, -1, -2))
    rest = _rls_scan(x[:, d:], y[:, d:], a_d, w_m)
    return jnp.concatenate([ws, rest], axis=1)


def prefix_least_squares() -> PrefixPredictor:
    """Prefix predictor of (minimum-norm) least squares; see :func:`prefix_least_squares_weights`."""
    return prefix_linear_predictor(prefix_least_squares_weights)


def prefix_posterior_mean_weights(x: jax.Array, y: jax.Array, prior_cov, noise_std: float) -> jax.Array:
    """Bayes posterior mean ``E[w | first k pairs]`` for every prefix: ``[batch, n, d]`` (THEORY.md §7).

    ``sigma > 0``: the generalised ridge ``(X_k^T X_k + sigma^2 Omega^{-1})^{-1} X_k^T y_k``, i.e. the
    Sherman-Morrison recursion from ``A_0 = Omega / sigma^2``, ``w_0 = 0`` (one scan, ``O(n d^2)``).
    ``sigma = 0``: ``Omega^{1/2}`` times the least-squares weights of ``B = X Omega^{1/2}``
    (:func:`prefix_least_squares_weights`). Matches :func:`icl.algorithms.posterior` on every prefix.
    """
    omega = np.asarray(prior_cov, dtype=np.float64)
    b, n, d = x.shape
    if noise_std > 0:
        a0 = jnp.broadcast_to(jnp.asarray(omega / noise_std**2, x.dtype), (b, d, d))
        return _rls_scan(x, y, a0, jnp.zeros((b, d), x.dtype))
    evals, evecs = np.linalg.eigh(omega)
    root = jnp.asarray((evecs * np.sqrt(evals)) @ evecs.T, x.dtype)  # Omega^{1/2}, host-side d x d
    return prefix_least_squares_weights(x @ root, y) @ root.T


def prefix_bayes_posterior_mean(task) -> PrefixPredictor:
    """Prefix predictor of the Bayes posterior mean for a Gaussian linear task (``w_cov``, ``noise_std``)."""
    return prefix_linear_predictor(lambda x, y: prefix_posterior_mean_weights(x, y, task.w_cov, task.noise_std))


def prefix_lsa(model) -> PrefixPredictor:
    """Prefix predictor of a :class:`~icl.models.LinearTransformer` (THEORY.md §2): ``[batch, n]``.

    On the prefix of length ``k`` every layer uses ``G_k = (1/k) sum_{i<=k} z_i z_i^T`` (the model's
    ``1/n`` with ``n = k``). One layer: ``y_hat_k = v^T G_k u = (1/k) sum_{i<=k} (v.z_i)(z_i.u)`` with
    ``v`` the last row of ``W^PV`` and ``u = W^KQ z_q``, a cumulative sum of scalars, ``O(n d)`` per
    prompt. ``L`` layers: since a layer maps every context token by ``z -> P z`` with
    ``P = I + W^PV G W^KQ``, the next Gram matrix is ``P G P^T`` and the query becomes
    ``z_q + W^PV G W^KQ z_q``; starting from the cumulative Gram matrices this gives all prefixes in
    ``O(n d^2 + L n d^3)`` per prompt (memory ``[batch, n, d+1, d+1]``) without touching the tokens
    again. Exact (float64: ~1e-13).
    """
    layers = list(model.layers)

    def predict(prompts: Prompts) -> jax.Array:
        if prompts.d != model.d:
            raise ValueError(f"prompts have d={prompts.d} but the model was built with d={model.d}")
        context, query = prompt_tokens(prompts)  # [b, n, D], [b, D]
        n = context.shape[-2]
        lengths = _prefix_lengths(n, context.dtype)
        if len(layers) == 1:
            w_pv, w_kq = layers[0].w_pv[...], layers[0].w_kq[...]
            u = query @ w_kq.T  # [b, D]
            terms = (context @ w_pv[-1]) * jnp.einsum("bni,bi->bn", context, u)
            return query[:, None, -1] + jnp.cumsum(terms, axis=1) / lengths
        gram = jnp.cumsum(context[..., :, None] * context[..., None, :], axis=1) / lengths[:, None, None]
        q = jnp.broadcast_to(query[:, None, :], context.shape)  # one query copy per prefix: [b, n, D]
        eye = jnp.eye(context.shape[-1], dtype=context.dtype)
        for i, layer in enumerate(layers):
            w_pv, w_kq = layer.w_pv[...], layer.w_kq[...]
            q = q + jnp.einsum("bkij,bkj->bki", gram, q @ w_kq.T) @ w_pv.T
            if i < len(layers) - 1:
                p = eye + jnp.einsum("ij,bkjl,lm->bkim", w_pv, gram, w_kq)  # P = I + W^PV G W^KQ
                gram = jnp.einsum("bkij,bkjl,bkml->bkim", p, gram, p)  # P G P^T
        return q[..., -1]

    return predict
