"""Several steps: exact risk of K-step preconditioned GD and GD++, optimal step sizes (docs/theory.md §6).

Ahn, Cheng, Daneshmand & Sra 2023 (arXiv:2306.00297); von Oswald et al. 2023 (arXiv:2212.07677).

**Exact risk of K-step GD.** Preconditioning by ``Sigma^{-1}`` whitens the problem: with ``x = Sigma^{1/2} z``
and ``S = Z^T Z / n`` (``Z`` an ``n x d`` standard Gaussian matrix), K steps
``w_{k+1} = w_k - eta_k Sigma^{-1} grad L(w_k)`` from ``w_0 = 0`` leave the whitened error
``-p(S) Sigma^{1/2} w + q(S) Z^T eps / n`` with the *residual polynomial* ``p(lam) = prod_k (1 - eta_k lam)`` and
``q(lam) = (1 - p(lam)) / lam``. ``S`` is rotation invariant, so ``E[p(S)^2] = (E tr p(S)^2 / d) I`` and

    R = tr(Sigma Omega)/d * E tr p(S)^2 + sigma^2/n * E tr(q(S)^2 S) + sigma^2,

linear in the Wishart trace moments ``m_j = E tr(S^j)`` ([`wishart_trace_moments`][icl.theory.wishart_trace_moments], exact integers from
Stein's identity). It needs Gaussian inputs and depends on ``w`` only through ``Omega = E[w w^T]``. ``R`` is
quadratic in the coefficients of ``p`` (``p(0) = 1``), so the optimal K-step GD is one ``K x K`` solve; its steps
are the reciprocal roots of the optimal ``p``. Ahn et al.'s setting (d = 5, n = 20, noiseless,
Omega = Sigma^{-1}, K = 3): {0.4224, 0.6891, 1.7142}, R/d = 0.02672 (trained: {0.420, 0.686, 1.709}, ~0.0270).

**GD++** (von Oswald et al. 2023, section 4) also maps the inputs, ``x <- (I - gamma S P) x``, before each step;
with ``P = Sigma^{-1}`` everything is again a polynomial in ``S`` ([`gd_plus_plus_polynomial`][icl.theory.gd_plus_plus_polynomial]).

Reported numbers ([`multistep_gd_risk`][icl.theory.multistep_gd_risk], [`gd_plus_plus_risk`][icl.theory.gd_plus_plus_risk], the optima) are float64 numpy;
[`polynomial_risk`][icl.theory.polynomial_risk] is the differentiable ``jax.numpy`` version used to tune GD++.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from icl.tasks.base import GaussianLaw, check_positive_int
from icl.theory.api import law_of

__all__ = [
    "gd_plus_plus_polynomial",
    "gd_plus_plus_risk",
    "gaussian_law",
    "gd_polynomial",
    "multistep_gd_risk",
    "optimal_gd_plus_plus",
    "optimal_multistep_step_sizes",
    "polynomial_risk",
    "wishart_mixed_trace_moment",
    "wishart_trace_moments",
]


@functools.cache
def wishart_mixed_trace_moment(powers: tuple[int, ...], n: int, d: int) -> int:
    """``E prod_j tr(W^{k_j})`` for ``W = Z^T Z``, ``Z`` an ``n x d`` standard Gaussian matrix (exact integer).

    Stein's identity ``E[Z_ai g(Z)] = E[dg/dZ_ai]`` applied to ``tr(W^k) = sum_ai Z_ai (Z W^{k-1})_ai`` gives
    ``E[tr W^k P] = (n + k - 1) E[tr W^{k-1} P] + sum_{j=1}^{k-1} E[tr W^j tr W^{k-1-j} P]
    + 2 sum_i k_i E[tr W^{k+k_i-1} P / tr W^{k_i}]`` for ``P = prod_i tr W^{k_i}``, with ``tr W^0 = d``;
    every term has total degree one less, so the recursion terminates.
    """
    if not powers:
        return 1
    *rest, k = powers  # sorted ascending: k is the largest power

    def moment(extra: list[int], others: list[int]) -> int:
        ps = others + extra
        zeros = sum(1 for p in ps if p == 0)
        return d**zeros * wishart_mixed_trace_moment(tuple(sorted(p for p in ps if p > 0)), n, d)

    total = (n + k - 1) * moment([k - 1], rest)
    for j in range(1, k):
        total += moment([j, k - 1 - j], rest)
    for i, ki in enumerate(rest):
        total += 2 * ki * moment([k + ki - 1], rest[:i] + rest[i + 1 :])
    return total


def wishart_trace_moments(n: int, d: int, max_power: int) -> np.ndarray:
    """Exact ``m_j = E tr(S^j)``, ``j = 0..max_power``, for ``S = Z^T Z / n``, ``Z`` ``n x d`` i.i.d. N(0, 1).

    Integer arithmetic from Stein's identity, then divided by ``n^j``. ``m_0 = d``, ``m_1 = d``,
    ``m_2 = d (n + d + 1) / n`` (the Wishart identity of docs/theory.md §3). Float64 ``[max_power + 1]``.
    """
    n, d = check_positive_int("n", n), check_positive_int("d", d)
    if isinstance(max_power, bool) or not (isinstance(max_power, (int, np.integer)) and max_power >= 0):
        raise ValueError(f"max_power must be an integer >= 0, got {max_power!r}")
    return np.array([d] + [wishart_mixed_trace_moment((j,), n, d) / n**j for j in range(1, max_power + 1)], np.float64)


def _gd_poly(etas, xp):
    p = xp.ones(1, etas.dtype)
    for k in range(etas.shape[0]):  # K is a handful of layers; one degree per step
        p = xp.convolve(p, xp.stack([xp.ones((), etas.dtype), -etas[k]]))
    return p


def _poly_add(a, b, xp):
    size = max(a.shape[0], b.shape[0])
    return xp.pad(a, (0, size - a.shape[0])) + xp.pad(b, (0, size - b.shape[0]))


def _gdpp_poly(etas, gammas, xp):
    k = etas.shape[0]
    if gammas.shape != (k - 1,):
        raise ValueError(f"gammas must hold K - 1 = {k - 1} values for K = {k} steps, got shape {gammas.shape}")
    one = xp.ones(1, etas.dtype)
    m, p = one, one
    for layer in range(k):
        lam_m2 = xp.concatenate([xp.zeros(1, etas.dtype), xp.convolve(m, m)])  # lam * M_l(lam)^2
        p = xp.convolve(p, _poly_add(one, -etas[layer] * lam_m2, xp))
        if layer < k - 1:
            m = xp.convolve(_poly_add(one, -gammas[layer] * lam_m2, xp), m)
    return p


def gd_polynomial(step_sizes) -> jax.Array:
    """Coefficients (lowest degree first) of the GD residual polynomial ``p(lam) = prod_k (1 - eta_k lam)``."""
    return _gd_poly(jnp.atleast_1d(jnp.asarray(step_sizes)), jnp)


def gd_plus_plus_polynomial(step_sizes, gammas) -> jax.Array:
    """Residual polynomial of K steps of GD++ in the whitened problem (von Oswald et al. 2023, section 4).

    Layer ``l`` maps inputs by ``M_{l+1} = (I - gamma_l S_l) M_l`` with ``S_l = M_l S M_l`` (``M_1 = I``) and
    takes a GD step ``eta_l`` on the transformed inputs: ``p(lam) = prod_l (1 - eta_l M_l(lam)^2 lam)`` with
    ``M_{l+1}(lam) = (1 - gamma_l M_l(lam)^2 lam) M_l(lam)``. ``gammas`` has ``K - 1`` entries (the last
    layer's input map cannot reach the prediction); all zero is GD.
    """
    etas = jnp.atleast_1d(jnp.asarray(step_sizes))
    k = etas.shape[0]
    gammas = jnp.atleast_1d(jnp.asarray(gammas, etas.dtype)) if k > 1 else jnp.zeros(0, etas.dtype)
    return _gdpp_poly(etas, gammas, jnp)


def gaussian_law(task, what: str, formula: str = "the exact K-step risk of docs/theory.md §6") -> GaussianLaw:
    """``task``'s law, which the Wishart-moment formulas need Gaussian; else a ValueError naming ``what`` and the
    ``formula`` that needs it."""
    law = law_of(task)
    if not isinstance(law, GaussianLaw):
        raise ValueError(f"{what} needs Gaussian inputs (a GaussianLaw); {law.family} has none: {formula} uses the "
                         "Wishart moments of Gaussian inputs")
    return law


def _constants(law: GaussianLaw, n: int) -> tuple[float, float, float]:
    """``(tr(Sigma Omega)/d, sigma^2/n, sigma^2)``."""
    return float(np.trace(law.x_cov @ law.w_cov)) / law.d, law.noise_std**2 / n, law.noise_std**2


def polynomial_risk(coeffs, task, n: int) -> jax.Array:
    """Exact population MSE of a GD-type predictor with residual polynomial ``p`` (``p(0) = 1``), in ``jax.numpy``.

    ``R = tr(Sigma Omega)/d * sum_j (p^2)_j m_j + sigma^2/n * sum_j (q^2 lam)_j m_j + sigma^2`` with
    ``q = (1 - p)/lam`` and ``m_j = E tr(S^j)`` (docs/theory.md §6). Holds for predictors preconditioned by
    ``Sigma^{-1}`` (identity when Sigma = I): K-step GD and GD++. ``coeffs``: ``[D + 1]``, lowest degree first,
    ``coeffs[0] = 1``. Differentiable in ``coeffs``, in their dtype (reported numbers: [`multistep_gd_risk`][icl.theory.multistep_gd_risk]).
    """
    coeffs = jnp.asarray(coeffs)
    n = check_positive_int("n", n)
    law = gaussian_law(task, "polynomial_risk")
    a, b, noise2 = _constants(law, n)
    degree = coeffs.shape[0] - 1
    m = jnp.asarray(wishart_trace_moments(n, law.d, 2 * degree), coeffs.dtype)
    signal = jnp.dot(jnp.convolve(coeffs, coeffs), m)
    q = -coeffs[1:]  # (1 - p(lam)) / lam
    noise_part = jnp.dot(jnp.convolve(q, q), m[1 : 2 * degree]) if degree else 0.0
    return a * signal + b * noise_part + noise2


def _risk_np(coeffs: np.ndarray, law: GaussianLaw, n: int) -> np.ndarray:
    """[`polynomial_risk`][icl.theory.polynomial_risk] in float64 numpy for ``coeffs: [..., D + 1]`` (a Hankel quadratic form)."""
    a, b, noise2 = _constants(law, n)
    degree = coeffs.shape[-1] - 1
    m = wishart_trace_moments(n, law.d, 2 * degree)
    idx = np.arange(degree + 1)
    hankel = m[idx[:, None] + idx[None, :]]
    signal = np.einsum("...i,ij,...j->...", coeffs, hankel, coeffs)
    q = -coeffs[..., 1:]
    noise_part = np.einsum("...i,ij,...j->...", q, m[idx[:-1, None] + idx[None, :-1] + 1], q) if degree else 0.0
    return a * signal + b * noise_part + noise2


def _finite(name, value) -> np.ndarray:
    arr = np.asarray(value, np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return arr


def multistep_gd_risk(step_sizes, task, n: int):
    """Exact population MSE of K steps of GD preconditioned by ``Sigma^{-1}`` from ``w_0 = 0`` (docs/theory.md §6).

    ``w_{k+1} = w_k - eta_k Sigma^{-1} X^T (X w_k - y)/n`` (Ahn et al. 2023, eq. (8) with ``A_k = eta_k
    Sigma^{-1}``); for ``Sigma = I`` plain GD. K = 1 is [`icl.theory.risk`][icl.theory.risk] at ``Gamma = eta Sigma^{-1}``.
    ``step_sizes``: ``[..., K]`` (leading axes evaluated together). Float64 (a float for one schedule).
    """
    n = check_positive_int("n", n)
    law = gaussian_law(task, "multistep_gd_risk")
    etas = np.atleast_1d(_finite("step_sizes", step_sizes))
    lead = etas.shape[:-1]
    flat = etas.reshape(-1, etas.shape[-1])
    coeffs = np.stack([_gd_poly(e, np) for e in flat])
    out = _risk_np(coeffs, law, n).reshape(lead)
    return float(out) if out.ndim == 0 else out


def gd_plus_plus_risk(step_sizes, gammas, task, n: int) -> float:
    """Exact population MSE of K steps of GD++ preconditioned by ``Sigma^{-1}`` (docs/theory.md §6), float64.

    ``step_sizes``: ``[K]``; ``gammas``: ``[K - 1]`` input-map rates (see [`gd_plus_plus_polynomial`][icl.theory.gd_plus_plus_polynomial]).
    """
    n = check_positive_int("n", n)
    law = gaussian_law(task, "gd_plus_plus_risk")
    etas = np.atleast_1d(_finite("step_sizes", step_sizes))
    gammas = np.atleast_1d(_finite("gammas", gammas)) if etas.shape[0] > 1 else np.zeros(0)
    return float(_risk_np(_gdpp_poly(etas, gammas, np), law, n))


def optimal_multistep_step_sizes(task, n: int, num_steps: int) -> tuple[np.ndarray, float]:
    """Step sizes of the risk-optimal K-step ``Sigma^{-1}``-preconditioned GD and its risk (docs/theory.md §6).

    With ``p(lam) = 1 + sum_{j=1}^K c_j lam^j`` the risk is quadratic in ``c``; its gradient vanishes at
    ``(a H + b H') c = -a (m_1, ..., m_K)`` with ``H_jl = m_{j+l}``, ``H'_jl = m_{j+l-1}``,
    ``a = tr(Sigma Omega)/d``, ``b = sigma^2/n``. The optimal ``p`` is a kernel polynomial of the spectral law
    of ``S`` (real positive roots); the steps are its reciprocal roots (their order does not change ``p``).
    Ahn et al. 2023's 3-layer setting (d = 5, n = 20, K = 3) gives {0.4224, 0.6891, 1.7142}.

    Returns:
      ``(step_sizes [K] ascending, float64; risk)``. Raises ValueError if the roots are not real and positive.
    """
    n, k = check_positive_int("n", n), check_positive_int("num_steps", num_steps)
    law = gaussian_law(task, "optimal_multistep_step_sizes")
    m = wishart_trace_moments(n, law.d, 2 * k)
    a, b, _ = _constants(law, n)
    idx = np.arange(1, k + 1)
    hankel = m[idx[:, None] + idx[None, :]]
    hankel_shift = m[idx[:, None] + idx[None, :] - 1]
    c = np.linalg.solve(a * hankel + b * hankel_shift, -a * m[idx])
    roots = np.roots(np.concatenate([[1.0], c])[::-1])
    if np.any(np.abs(roots.imag) > 1e-8 * np.abs(roots)) or np.any(roots.real <= 0):
        raise ValueError(f"optimal residual polynomial has roots {roots} that are not real and positive")
    steps = np.sort(1.0 / roots.real)
    return steps, multistep_gd_risk(steps, law, n)


def optimal_gd_plus_plus(task, n: int, num_steps: int, iterations: int = 300,
                         gamma_starts=(0.0, 0.2, 0.5)) -> tuple[np.ndarray, np.ndarray, float]:
    """Tune GD++'s K step sizes and K - 1 input-map rates on its exact risk ([`gd_plus_plus_risk`][icl.theory.gd_plus_plus_risk]).

    Deterministic: L-BFGS (Optax, zoom line search) in float64 from the optimal GD step sizes with every
    ``gamma_l`` set to each value of ``gamma_starts`` (``0`` starts at GD, so the result is never worse than
    optimal K-step GD); the best end point wins. The problem is non-convex; this is a local search.

    Returns:
      ``(step_sizes [K], gammas [K - 1], risk)`` as float64 numpy / float.
    """
    import optax

    n, k = check_positive_int("n", n), check_positive_int("num_steps", num_steps)
    iterations = check_positive_int("iterations", iterations)
    law = gaussian_law(task, "optimal_gd_plus_plus")
    gd_steps, gd_risk = optimal_multistep_step_sizes(law, n, k)
    if k == 1:
        return gd_steps, np.zeros(0), gd_risk
    best = (gd_steps, np.zeros(k - 1), gd_risk)
    with jax.enable_x64(True):
        def objective(theta):
            return polynomial_risk(gd_plus_plus_polynomial(theta[:k], theta[k:]), law, n)

        solver = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(objective)

        @jax.jit
        def run(theta0):
            def body(carry, _):
                theta, state = carry
                value, grad = value_and_grad(theta, state=state)
                updates, state = solver.update(grad, state, theta, value=value, grad=grad, value_fn=objective)
                return (optax.apply_updates(theta, updates), state), None

            (theta, _), _ = jax.lax.scan(body, (theta0, solver.init(theta0)), None, length=iterations)
            return theta

        for gamma0 in gamma_starts:
            theta0 = jnp.concatenate([jnp.asarray(gd_steps), jnp.full(k - 1, float(gamma0))])
            theta = np.asarray(run(theta0), np.float64)
            if not np.all(np.isfinite(theta)):
                continue
            value = gd_plus_plus_risk(theta[:k], theta[k:], law, n)
            if np.isfinite(value) and value < best[2]:
                best = (theta[:k], theta[k:], value)
    return best
