"""Asymptotic theory of ICL by linear attention (Lu, Letey, Zavatone-Veth, Maiti & Pehlevan, PNAS 2025).

arXiv:2405.11751; docs/theory.md §15. Scaling: inputs ``x ~ N(0, I_d / d)``, pretraining tasks of norm ``sqrt(d)``
(``w ~ N(0, I_d)`` normalised), context length ``l = alpha d``, a pool of ``k = kappa d`` pretraining tasks
(``kappa = inf``: a fresh task for every prompt), ``n = tau d^2`` pretraining prompts, noise variance ``rho``.

**Reduced model.** One linear-attention layer reduces to ``y_hat = <Gamma, x_q (x) v>`` with the context summary
``v = [h; s]``, ``h = (d/l) sum_i y_i x_i`` and ``s = (1/l) sum_i y_i^2``; ``Gamma`` is ``d x (d + 1)``, so the
feature of a prompt is ``x_q v^T`` flattened row-major ([`reduced_features`][icl.theory.reduced_features]) and ``Gamma`` is a ridge(less)
regression on ``d (d + 1)`` features ([`fit_reduced_gamma`][icl.theory.fit_reduced_gamma]; the authors' penalty ``(n/d) lam ||Gamma||_F^2``).

**Result 1 (ridgeless).** With ``x* = (1 + rho)/alpha``, the Wishart Stieltjes transform
``M_kappa(x) = 2 / (x + 1 - 1/kappa + sqrt((x + 1 - 1/kappa)^2 + 4 x / kappa))`` ([`wishart_stieltjes`][icl.theory.wishart_stieltjes]),
``m* = M_kappa(x*)`` and ``mu* = x* M_{kappa/tau}(x*)``, the ICL test error (fresh test tasks ``w ~ N(0, I_d)``)
converges to [`asymptotic_icl_error`][icl.theory.asymptotic_icl_error], with one branch for ``tau < 1`` and one for ``tau > 1``; it diverges at
the interpolation threshold ``tau = 1`` (double descent). alpha = 1, rho = 0.01, tau = 4: 0.6833 at kappa = inf,
0.9476 at kappa = 0.5. The ridge-regularised (``lam > 0``) limit is not implemented: the stored copies of the paper
could be read only at their opening and the authors' public code implements only the ridgeless formula, so no
``lam > 0`` form could be taken from the paper and checked here; the finite-``d`` fit takes any ``lam``.

**Exact test error of a fixed Gamma** (derived in docs/theory.md §15; exact at finite ``d``, not asymptotic): with
``Gamma = [G | g]`` (``G`` ``d x d``, ``g`` the last column),

    e(Gamma) = 1 + rho - (2/d) tr G + (c_h/d) ||G||_F^2 + (c_s/d) ||g||^2,
    c_h = 1 + (1 + d (1 + rho))/l,    c_s = (1 + 2/l) ((1 + rho)^2 + 2/d)   (w ~ N(0, I_d); 2/d -> 0 for |w| = sqrt d)

([`reduced_test_error`][icl.theory.reduced_test_error]; Monte Carlo: [`reduced_test_error_mc`][icl.theory.reduced_test_error_mc]).

Reported closed forms are float64 numpy. The simulations run in JAX's active precision; the fit solves normal
equations (the condition number of the feature matrix squared). Away from the threshold that is benign (cond ~ 4 at
d = 20, tau = 4: float32 gives Gamma to 1e-6 relative), but it diverges at n = d(d+1): use float64 there
(``with jax.enable_x64(True):``) and for reported numbers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from icl.tasks.base import check_int, check_positive_int

__all__ = [
    "asymptotic_icl_error",
    "fit_reduced_gamma",
    "pretraining_features",
    "pretraining_sizes",
    "reduced_features",
    "reduced_test_error",
    "reduced_test_error_mc",
    "simulate_icl_error",
    "solve_reduced_gamma",
    "wishart_stieltjes",
]

_TASK_LAWS = ("gaussian", "sphere")


# ----------------------------------------------------------------------------------------------------------
# Closed forms (float64 numpy)
# ----------------------------------------------------------------------------------------------------------


def _real_array(name: str, value) -> np.ndarray:
    arr = None
    if not isinstance(value, (bool, np.bool_, str)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
    if arr is None or np.isnan(arr).any():
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return arr


def _check_range(name: str, value, allowed: str, ok) -> np.ndarray:
    arr = _real_array(name, value)
    if not np.all(ok(arr)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return arr


def _m_kappa(x: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """``M_kappa(x)`` for ``x > 0``, ``kappa in (0, inf]`` without cancellation (both roots of the same quadratic)."""
    inv = 1.0 / kappa  # 0 at kappa = inf
    a = x + 1.0 - inv
    root = np.sqrt(a * a + 4.0 * x * inv)
    with np.errstate(divide="ignore", invalid="ignore"):
        # M solves (x / kappa) M^2 + a M - 1 = 0; 2 / (a + root) is stable for a >= 0, (root - a) kappa / (2 x) else.
        alt = (root - a) / (2.0 * x * inv)
    return np.where(a >= 0, 2.0 / (a + root), alt)


def wishart_stieltjes(x, kappa):
    """``M_kappa(x) = lim (1/d) E tr (W + x I)^{-1}`` with ``W = (1/k) sum_{j<=k} w_j w_j^T``, ``w_j ~ N(0, I_d)``.

    ``k = kappa d``. The Marchenko-Pastur Stieltjes transform at ``-x`` (ratio ``d/k = 1/kappa``): the positive
    root of ``(x/kappa) M^2 + (x + 1 - 1/kappa) M - 1 = 0``, i.e.
    ``2 / (x + 1 - 1/kappa + sqrt((x + 1 - 1/kappa)^2 + 4x/kappa))`` (Lu et al. 2025, Result 1);
    ``M_inf(x) = 1/(1 + x)``. ``x > 0``, ``kappa in (0, inf]``; arrays broadcast. Float64 (a float for scalar
    arguments).
    """
    x = _check_range("x", x, "a finite number > 0", lambda a: np.isfinite(a) & (a > 0))
    kappa = _check_range("kappa", kappa, "a number > 0 (math.inf allowed)", lambda a: a > 0)
    out = _m_kappa(x, kappa)
    return float(out) if out.ndim == 0 else out


def asymptotic_icl_error(alpha, kappa, tau, rho):
    """Ridgeless ICL test error of the reduced linear-attention model as ``d -> inf`` (Lu et al. 2025, Result 1).

    ``x* = (1 + rho)/alpha``, ``m* = M_kappa(x*)``, ``mu* = x* M_{kappa/tau}(x*)`` ([`wishart_stieltjes`][icl.theory.wishart_stieltjes]):

    - ``tau < 1``: ``e = tau (1 + x*)/(1 - tau) [1 - tau (1 - mu*)^2 - (x* - rho)/x* mu*] - 2 tau (1 - mu*) + rho + 1``;
    - ``tau > 1``: with ``k* = 1 / (1 - kappa (m*/(kappa + m*))^2)`` (1 at kappa = inf),
      ``e = (k* - 1/(tau - 1)) (1 + x*) (x* m*)^2 + (3 - 2 tau)/(tau - 1) m* x*^2
      + ((1 + rho)/(tau - 1) m* + 1) x* + rho m*/(tau - 1) + rho``.

    The error is that of the ridgeless fit on fresh test tasks ``w ~ N(0, I_d)`` (docs/theory.md §15); it diverges
    like ``1/|tau - 1|`` at the interpolation threshold, so ``tau = 1`` is refused. As ``tau -> inf`` it tends to
    ``x*/(1 + x*) + rho`` (kappa = inf), the error of the best reduced model ``1 + rho - 1/c_h`` as ``d -> inf``.

    Args:
      alpha: context length over dimension, finite and > 0.
      kappa: task-pool size over dimension, > 0; ``math.inf`` for a fresh task per prompt.
      tau: pretraining prompts over ``d^2``, finite, > 0 and not exactly 1.
      rho: noise variance, finite and >= 0.
    Arrays broadcast. Returns float64 (a float for scalar arguments).
    """
    alpha = _check_range("alpha", alpha, "a finite number > 0", lambda a: np.isfinite(a) & (a > 0))
    kappa = _check_range("kappa", kappa, "a number > 0 (math.inf allowed for fresh tasks)", lambda a: a > 0)
    tau = _check_range("tau", tau, "a finite number > 0", lambda a: np.isfinite(a) & (a > 0))
    if np.any(tau == 1.0):
        raise ValueError("tau must not be exactly 1: the ridgeless error diverges at the interpolation threshold "
                         f"tau = 1 (allowed: 0 < tau < 1 or tau > 1), got {tau.tolist()!r}")
    rho = _check_range("rho", rho, "a finite number >= 0", lambda a: np.isfinite(a) & (a >= 0))
    alpha, kappa, tau, rho = np.broadcast_arrays(alpha, kappa, tau, rho)

    x = (1.0 + rho) / alpha
    m = _m_kappa(x, kappa)
    mu = x * _m_kappa(x, kappa / tau)
    with np.errstate(divide="ignore", invalid="ignore"):
        small = (tau * (1.0 + x) / (1.0 - tau) * (1.0 - tau * (1.0 - mu) ** 2 - (x - rho) / x * mu)
                 - 2.0 * tau * (1.0 - mu) + rho + 1.0)
        ratio = m / kappa  # kappa (m / (kappa + m))^2 = (m^2/kappa) / (1 + m/kappa)^2, 0 at kappa = inf
        k_star = 1.0 / (1.0 - m * ratio / (1.0 + ratio) ** 2)
        inv = 1.0 / (tau - 1.0)
        large = ((k_star - inv) * (1.0 + x) * (x * m) ** 2 + (3.0 - 2.0 * tau) * inv * m * x**2
                 + ((1.0 + rho) * inv * m + 1.0) * x + rho * m * inv + rho)
    out = np.where(tau < 1.0, small, large)
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------------------------------------
# The reduced model at finite d
# ----------------------------------------------------------------------------------------------------------


def pretraining_sizes(d: int, alpha, kappa, tau) -> tuple[int, int | None, int]:
    """``(l, k, n) = (round(alpha d), round(kappa d), round(tau d^2))``; ``k`` is None at ``kappa = inf``.

    Raises ValueError naming the argument unless ``d >= 1``, alpha, tau finite and > 0, kappa > 0, and each rounded
    size is >= 1.
    """
    d = check_positive_int("d", d)
    finite = "a finite number > 0"
    alpha = float(_check_range("alpha", alpha, finite, lambda a: (a.ndim == 0) & np.isfinite(a) & (a > 0)))
    kappa = float(_check_range("kappa", kappa, "a number > 0 (math.inf allowed)", lambda a: (a.ndim == 0) & (a > 0)))
    tau = float(_check_range("tau", tau, finite, lambda a: (a.ndim == 0) & np.isfinite(a) & (a > 0)))
    l, n = round(alpha * d), round(tau * d * d)
    k = None if math.isinf(kappa) else round(kappa * d)
    for name, value, what in (("alpha", l, "l = round(alpha d)"), ("tau", n, "n = round(tau d^2)"),
                              ("kappa", 1 if k is None else k, "k = round(kappa d)")):
        if value < 1:
            raise ValueError(f"{name} is too small for d = {d}: {what} = {value}, must be >= 1")
    return l, k, n


def reduced_features(x, y, x_query) -> jax.Array:
    """The ``d (d + 1)`` feature of each prompt: ``x_q v^T`` flattened row-major, ``v = [(d/l) X^T y; |y|^2 / l]``.

    ``<Gamma, feature>`` with ``Gamma`` ``[d, d + 1]`` (reshaped the same way) is the reduced model's prediction.
    Args: ``x`` ``[..., l, d]`` context inputs, ``y`` ``[..., l]`` context targets, ``x_query`` ``[..., d]``; leading
    axes broadcast. Returns ``[..., d (d + 1)]`` in the inputs' dtype.
    """
    x, y, x_query = jnp.asarray(x), jnp.asarray(y), jnp.asarray(x_query)
    if x.ndim < 2 or y.shape[-1:] != x.shape[-2:-1] or x_query.shape[-1:] != x.shape[-1:]:
        raise ValueError(f"reduced_features needs x [..., l, d], y [..., l], x_query [..., d]; got shapes "
                         f"{x.shape}, {y.shape}, {x_query.shape}")
    l, d = x.shape[-2:]
    h = (d / l) * jnp.einsum("...i,...ij->...j", y, x)
    s = jnp.sum(y * y, axis=-1, keepdims=True) / l
    v = jnp.concatenate([h, s], axis=-1)
    out = x_query[..., :, None] * v[..., None, :]
    return out.reshape(*out.shape[:-2], d * (d + 1))


def _unit_sphere(key, shape, d, dtype):
    w = jax.random.normal(key, (*shape, d), dtype)
    return w * (math.sqrt(d) / jnp.linalg.norm(w, axis=-1, keepdims=True))


def _sample_prompts(key, w, l: int, rho):
    """Prompts for tasks ``w`` ``[m, d]``: ``x ~ N(0, I/d)`` (l context rows + the query), ``y = x w + noise``."""
    m, d = w.shape
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (m, l + 1, d), w.dtype) / math.sqrt(d)
    y = jnp.einsum("mij,mj->mi", x, w) + jnp.sqrt(rho) * jax.random.normal(ke, (m, l + 1), w.dtype)
    return reduced_features(x[:, :l], y[:, :l], x[:, l]), y[:, l]


def _pretraining_chunks(key, rho, *, d: int, l: int, k: int | None, n: int, chunk: int):
    """``chunk_data(i) -> (features [chunk, p], targets [chunk])`` of one pretraining set (rows >= n are zero)."""
    dtype = jnp.asarray(0.0).dtype
    kpool, kdata = jax.random.split(key)
    pool = None if k is None else _unit_sphere(kpool, (k,), d, dtype)  # drawn once for the whole set

    def chunk_data(i):
        kw, kp = jax.random.split(jax.random.fold_in(kdata, i))
        if pool is None:
            w = _unit_sphere(kw, (chunk,), d, dtype)  # a fresh task per prompt
        else:
            w = pool[jax.random.randint(kw, (chunk,), 0, k)]  # a pool task, uniformly
        feats, target = _sample_prompts(kp, w, l, rho)
        keep = (i * chunk + jnp.arange(chunk)) < n  # the last chunk is padded
        return feats * keep[:, None].astype(dtype), target * keep.astype(dtype)

    return chunk_data, -(-n // chunk)


@functools.partial(jax.jit, static_argnames=("d", "l", "k", "n", "chunk"))
def _features(key, rho, *, d: int, l: int, k: int | None, n: int, chunk: int):
    chunk_data, num_chunks = _pretraining_chunks(key, rho, d=d, l=l, k=k, n=n, chunk=chunk)
    feats, target = jax.lax.map(chunk_data, jnp.arange(num_chunks))
    return feats.reshape(-1, d * (d + 1))[:n], target.reshape(-1)[:n]


def _solve(feats, target, lam, d: int):
    """Ridge(less) solution on all rows: primal ``p x p`` system when ``n >= p``, else the ``n x n`` dual one."""
    n, p = feats.shape
    ridge = (n / d) * lam
    if n >= p:
        sol = jnp.linalg.solve(feats.T @ feats + ridge * jnp.eye(p, dtype=feats.dtype), feats.T @ target)
    else:  # minimum norm at lam = 0: H^T (H H^T)^{-1} y
        sol = feats.T @ jnp.linalg.solve(feats @ feats.T + ridge * jnp.eye(n, dtype=feats.dtype), target)
    return sol.reshape(d, d + 1)


@functools.partial(jax.jit, static_argnames=("d", "l", "k", "n", "chunk"))
def _fit(key, rho, lam, *, d: int, l: int, k: int | None, n: int, chunk: int):
    p = d * (d + 1)
    if n < p:
        return _solve(*_features(key, rho, d=d, l=l, k=k, n=n, chunk=chunk), lam, d)
    chunk_data, num_chunks = _pretraining_chunks(key, rho, d=d, l=l, k=k, n=n, chunk=chunk)

    def body(carry, i):  # accumulate H^T H and H^T y chunk by chunk: memory O(p^2), not O(n p)
        gram, rhs = carry
        feats, target = chunk_data(i)
        return (gram + feats.T @ feats, rhs + feats.T @ target), None

    dtype = jnp.asarray(0.0).dtype
    (gram, rhs), _ = jax.lax.scan(body, (jnp.zeros((p, p), dtype), jnp.zeros(p, dtype)), jnp.arange(num_chunks))
    return jnp.linalg.solve(gram + (n / d) * lam * jnp.eye(p, dtype=dtype), rhs).reshape(d, d + 1)


def _check_rho(rho) -> float:
    return float(_check_range("rho", rho, "a finite number >= 0", lambda a: (a.ndim == 0) & np.isfinite(a) & (a >= 0)))


def _check_lam(lam) -> float:
    return float(_check_range("lam", lam, "a finite number >= 0", lambda a: (a.ndim == 0) & np.isfinite(a) & (a >= 0)))


def pretraining_features(key, d: int, alpha, kappa, tau, rho, *, chunk: int = 1024) -> tuple[jax.Array, jax.Array]:
    """The pretraining set [`fit_reduced_gamma`][icl.theory.fit_reduced_gamma] fits for the same ``key`` and ``chunk``, materialised.

    Returns ``(features [n, d (d + 1)], query targets [n])`` ([`reduced_features`][icl.theory.reduced_features] of each prompt) in JAX's
    active precision. Memory ``O(n d^2)``: for inspection and tests at small ``d``.
    """
    l, k, n = pretraining_sizes(d, alpha, kappa, tau)
    rho, chunk = _check_rho(rho), check_positive_int("chunk", chunk)
    return _features(key, rho, d=d, l=l, k=k, n=n, chunk=min(chunk, n))


def solve_reduced_gamma(features, targets, d: int, lam=0.0) -> jax.Array:
    """``Gamma`` ``[d, d + 1]`` minimising ``sum_mu (y_mu - <Gamma, H_mu>)^2 + (n/d) lam ||Gamma||_F^2`` exactly.

    ``features`` ``[n, d (d + 1)]``, ``targets`` ``[n]``. Solves the ``p x p`` normal equations when ``n >= p``
    (``p = d(d+1)``) and the ``n x n`` dual system ``H^T (H H^T + (n/d) lam I)^{-1} y`` otherwise, which at ``lam = 0``
    is the minimum-norm interpolator (the ridgeless limit). Both square the condition number of ``H``: use float64.
    """
    d, lam = check_positive_int("d", d), _check_lam(lam)
    feats, target = jnp.asarray(features), jnp.asarray(targets)
    if feats.ndim != 2 or feats.shape[1] != d * (d + 1) or target.shape != feats.shape[:1]:
        raise ValueError(f"solve_reduced_gamma needs features [n, d (d + 1)] = [n, {d * (d + 1)}] and targets [n]; "
                         f"got {feats.shape} and {target.shape}")
    return _solve(feats, target, lam, d)


def fit_reduced_gamma(key, d: int, alpha, kappa, tau, rho, lam=0.0, *, chunk: int = 1024) -> jax.Array:
    """Fit ``Gamma`` ``[d, d + 1]`` on one pretraining set drawn as in Lu et al. 2025 (docs/theory.md §15).

    A pool of ``k = round(kappa d)`` tasks ``w ~ N(0, I_d)`` normalised to ``|w| = sqrt(d)`` is drawn once (kappa =
    inf: a fresh task for every prompt); each of the ``n = round(tau d^2)`` prompts takes a pool task uniformly at
    random, ``l + 1 = round(alpha d) + 1`` inputs ``x ~ N(0, I_d/d)`` (the last is the query) and targets
    ``y = w^T x + N(0, rho)``. ``Gamma`` minimises ``sum_prompts (y_q - <Gamma, feature>)^2 + (n/d) lam ||Gamma||_F^2``
    (the authors' normalisation of the ridge), solved exactly as [`solve_reduced_gamma`][icl.theory.solve_reduced_gamma] does (minimum norm at
    ``lam = 0`` when ``n < p = d(d+1)``). The interpolation threshold is ``n = p`` (tau = 1 + 1/d); near it the
    systems are ill conditioned and ``lam > 0`` is advised.

    Runs in JAX's active precision (float64 near the threshold: see the module docstring). For ``n >= p`` the normal
    equations are accumulated over chunks of ``chunk`` prompts, so memory stays ``O(p^2 + chunk l d)``; the data are
    those of [`pretraining_features`][icl.theory.pretraining_features] for the same ``key`` and ``chunk``. Jitted per (d, l, k, n); ``jax.vmap`` over
    ``key`` fits several pretraining sets at once ([`simulate_icl_error`][icl.theory.simulate_icl_error]).
    """
    l, k, n = pretraining_sizes(d, alpha, kappa, tau)
    rho, lam = _check_rho(rho), _check_lam(lam)
    chunk = check_positive_int("chunk", chunk)
    return _fit(key, rho, lam, d=d, l=l, k=k, n=n, chunk=min(chunk, n))


def _test_constants(d: int, l: int, rho: float, task: str) -> tuple[float, float]:
    """``(c_h, c_s)``: ``E[v v^T] = diag(c_h I_d, c_s)`` for a fresh test task (docs/theory.md §15)."""
    if task not in _TASK_LAWS:
        raise ValueError(f"task must be one of {_TASK_LAWS}, got {task!r}")
    c_h = 1.0 + (1.0 + d * (1.0 + rho)) / l
    c_s = (1.0 + 2.0 / l) * ((1.0 + rho) ** 2 + (2.0 / d if task == "gaussian" else 0.0))
    return c_h, c_s


def _check_gamma(gamma, d: int) -> np.ndarray:
    g = np.asarray(gamma, np.float64)
    if g.ndim < 2 or g.shape[-2:] != (d, d + 1):
        raise ValueError(f"gamma must have shape [..., d, d + 1] = [..., {d}, {d + 1}], got {g.shape}")
    return g


def reduced_test_error(gamma, d: int, alpha, rho, *, task: str = "gaussian"):
    """Exact ICL test error ``E (y_q - <Gamma, x_q (x) v>)^2`` of a fixed ``Gamma`` on a fresh task (float64).

    ``e = 1 + rho - (2/d) tr G + (c_h/d) ||G||_F^2 + (c_s/d) ||g||^2`` for ``Gamma = [G | g]``, with
    ``c_h = 1 + (1 + d(1 + rho))/l`` and ``c_s = (1 + 2/l)((1 + rho)^2 + 2/d)`` for test tasks ``w ~ N(0, I_d)``
    (``task="gaussian"``, the paper's ICL test law) or ``c_s = (1 + 2/l)(1 + rho)^2`` for ``|w| = sqrt(d)`` uniform on
    the sphere (``task="sphere"``, the pretraining law with an unseen task). Exact at every finite ``d`` and
    ``l = round(alpha d)`` (derivation: docs/theory.md §15). ``gamma``: ``[..., d, d + 1]``; returns a float or an
    array over the leading axes. Its minimum over Gamma is ``1 + rho - 1/c_h`` at ``Gamma = [I/c_h | 0]``.
    """
    d = check_positive_int("d", d)
    l, _, _ = pretraining_sizes(d, alpha, math.inf, 1.0)
    rho = _check_rho(rho)
    c_h, c_s = _test_constants(d, l, rho, task)
    g = _check_gamma(gamma, d)
    big, last = g[..., :, :d], g[..., :, d]
    out = (1.0 + rho - 2.0 / d * np.trace(big, axis1=-2, axis2=-1) + c_h / d * np.sum(big**2, axis=(-2, -1))
           + c_s / d * np.sum(last**2, axis=-1))
    return float(out) if np.ndim(out) == 0 else out


@functools.partial(jax.jit, static_argnames=("d", "l", "batch", "num_batches"))
def _mc_sums(key, gamma, rho, sphere, *, d: int, l: int, batch: int, num_batches: int):
    dtype = gamma.dtype
    flat = gamma.reshape(-1)

    def body(carry, i):
        kw, kp = jax.random.split(jax.random.fold_in(key, i))
        w = jax.random.normal(kw, (batch, d), dtype)
        w = jnp.where(sphere, w * (math.sqrt(d) / jnp.linalg.norm(w, axis=-1, keepdims=True)), w)
        feats, target = _sample_prompts(kp, w, l, rho)
        err = (feats @ flat - target) ** 2
        return (carry[0] + err.sum(), carry[1] + (err * err).sum()), None

    zero = jnp.zeros((), dtype)
    (total, total_sq), _ = jax.lax.scan(body, (zero, zero), jnp.arange(num_batches))
    return total, total_sq


def reduced_test_error_mc(key, gamma, d: int, alpha, rho, *, num_prompts: int = 2**16, batch: int = 4096,
                          task: str = "gaussian") -> tuple[float, float]:
    """Monte Carlo of [`reduced_test_error`][icl.theory.reduced_test_error]: ``(mean, standard error)`` of the squared error on fresh prompts.

    Each prompt draws a task (``w ~ N(0, I_d)``, or ``|w| = sqrt(d)`` for ``task="sphere"``), ``l + 1`` inputs
    ``x ~ N(0, I_d/d)`` and noise ``N(0, rho)``; ``num_prompts`` is rounded up to a multiple of ``batch``. Runs in
    JAX's active precision; the sums are returned as floats.
    """
    d = check_positive_int("d", d)
    l, _, _ = pretraining_sizes(d, alpha, math.inf, 1.0)
    rho = _check_rho(rho)
    if task not in _TASK_LAWS:
        raise ValueError(f"task must be one of {_TASK_LAWS}, got {task!r}")
    num_prompts, batch = check_int("num_prompts", num_prompts, 2), check_positive_int("batch", batch)
    batch = min(batch, num_prompts)
    num_batches = -(-num_prompts // batch)
    g = jnp.asarray(_check_gamma(gamma, d), jnp.asarray(0.0).dtype)
    if g.ndim != 2:
        raise ValueError(f"reduced_test_error_mc takes one gamma [d, d + 1], got shape {g.shape}")
    total, total_sq = _mc_sums(key, g, rho, task == "sphere", d=d, l=l, batch=batch, num_batches=num_batches)
    count = batch * num_batches
    mean = float(total) / count
    var = max(float(total_sq) / count - mean * mean, 0.0) * count / (count - 1)
    return mean, math.sqrt(var / count)


def simulate_icl_error(key, d: int, alpha, kappa, tau, rho, lam=0.0, *, num_draws: int = 4, vmap_size: int = 1,
                       task: str = "gaussian", chunk: int = 1024) -> tuple[float, float, np.ndarray]:
    """Finite-``d`` counterpart of [`asymptotic_icl_error`][icl.theory.asymptotic_icl_error]: fit ``num_draws`` pretraining sets, score each.

    Each draw fits [`fit_reduced_gamma`][icl.theory.fit_reduced_gamma] on its own key and is scored exactly by [`reduced_test_error`][icl.theory.reduced_test_error]
    (no test-set noise). Draws run ``vmap_size`` at a time under ``jax.vmap`` (``jax.lax.map`` with that batch size;
    memory grows with it: ~``8 p^2`` bytes a draw in float64, p = d(d+1)). Returns ``(mean, standard error over
    draws, errors [num_draws])`` in float64 (SE is nan for one draw).
    """
    l, k, n = pretraining_sizes(d, alpha, kappa, tau)
    rho, lam = _check_rho(rho), _check_lam(lam)
    num_draws, vmap_size = check_positive_int("num_draws", num_draws), check_positive_int("vmap_size", vmap_size)
    chunk = check_positive_int("chunk", chunk)
    if task not in _TASK_LAWS:
        raise ValueError(f"task must be one of {_TASK_LAWS}, got {task!r}")

    def one(draw_key):
        return _fit(draw_key, rho, lam, d=d, l=l, k=k, n=n, chunk=min(chunk, n))

    gammas = jax.lax.map(one, jax.random.split(key, num_draws), batch_size=min(vmap_size, num_draws))
    errors = np.atleast_1d(reduced_test_error(np.asarray(gammas, np.float64), d, alpha, rho, task=task))
    se = float(errors.std(ddof=1) / math.sqrt(num_draws)) if num_draws > 1 else math.nan
    return float(errors.mean()), se, errors
