"""Tied (looped) K-step GD: exact risk and the optimal shared step size (docs/theory.md §16).

A looped linear transformer applies one layer ``K`` times (Yang et al. 2023; Gatmiry et al. 2024). Applied to
Ahn et al.'s sparse layer ([`icl.models.SparseLinearTransformer`][icl.models.SparseLinearTransformer] with ``loops=K``) it runs ``K`` steps of
GD with one shared step, ``w_{k+1} = w_k - eta Sigma^{-1} grad L(w_k)`` from ``w_0 = 0``, with
``grad L(w) = X^T (X w - y) / n``. In the whitened problem (``S = Z^T Z / n``) the residual polynomial is
``p(lam) = (1 - eta lam)^K``, and the exact K-step risk of docs/theory.md §6,

    R = a E tr p(S)^2 + b E tr(q(S)^2 S) + sigma^2,   q = (1 - p)/lam,   a = tr(Sigma Omega)/d,   b = sigma^2/n,

is a polynomial of degree ``2K`` in ``eta`` (Vandermonde's identity gives its coefficients in closed form):

    R(eta) = sum_{s=0}^{2K} r_s eta^s,
    r_0 = a d + sigma^2,   r_s = (-1)^s [a C(2K, s) m_s + b (C(2K, s) - 2 C(K, s)) m_{s-1}]   (s >= 1),

with ``m_j = E tr(S^j)`` the exact Wishart trace moments (integers over ``n^j``). The coefficients alternate in
sign and grow like ``C(2K, K)``, so float64 evaluation loses digits for ``K >~ 10``; the library evaluates the
polynomial in exact rational arithmetic (the moments are exact, and a float64 ``eta`` is a rational) and rounds
once. The optimum lies in ``(0, 2 d / m_2] = (0, 2n/(n + d + 1)]`` (Jensen: beyond it ``R > R(0)``); it is found
by locating the sign changes of the exact ``R'`` on a grid of that interval, together with the real roots of
``R'`` from ``numpy.roots``, bisecting each bracket in exact arithmetic to float64 resolution, and keeping the
candidate of least exact risk.

Cost: the moments ``m_j`` up to ``j = 2K`` come from Stein's recursion ([`icl.wishart_trace_moments`][icl.theory.wishart_trace_moments]),
which grows quickly with ``K`` (``K = 15``: ~0.5 s; ``K = 20``: ~5 s, cached afterwards).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from icl.tasks.base import check_positive_int
from icl.theory.multistep import gaussian_law, wishart_mixed_trace_moment

__all__ = ["optimal_tied_step_size", "tied_gd_risk", "tied_gd_risk_polynomial"]

_GRID = 512  # sign-change grid for R' on (0, 2 d / m_2]


def _exact_coefficients(law, n: int, k: int) -> list[Fraction]:
    """The coefficients ``r_0..r_{2K}`` of ``R(eta)`` (module docstring) as exact rationals.

    ``a = tr(Sigma Omega)/d`` enters as the rational value of its float64, ``sigma^2`` as the square of the float64
    ``noise_std``: the polynomial is exact for those numbers.
    """
    d = law.d
    a = Fraction(float(np.trace(law.x_cov @ law.w_cov))) / d
    sigma2 = Fraction(float(law.noise_std)) ** 2
    b = sigma2 / n
    m = [Fraction(d)] + [Fraction(wishart_mixed_trace_moment((j,), n, d), n**j) for j in range(1, 2 * k + 1)]
    coeffs = [a * d + sigma2]
    for s in range(1, 2 * k + 1):
        c2k, ck = math.comb(2 * k, s), math.comb(k, s)
        coeffs.append((-1) ** s * (a * c2k * m[s] + b * (c2k - 2 * ck) * m[s - 1]))
    return coeffs


def _horner(coeffs: list[Fraction], x: Fraction) -> Fraction:
    value = Fraction(0)
    for c in reversed(coeffs):
        value = value * x + c
    return value


def _derivative(coeffs: list[Fraction]) -> list[Fraction]:
    return [s * c for s, c in enumerate(coeffs)][1:]


def _check_step_sizes(step_size) -> np.ndarray:
    arr = np.asarray(step_size, np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"step_size must be finite, got {step_size!r}")
    return arr


def _setup(task, n, num_steps, what):
    n, k = check_positive_int("n", n), check_positive_int("num_steps", num_steps)
    return gaussian_law(task, what, "the exact tied K-step risk of docs/theory.md §16"), n, k


def tied_gd_risk_polynomial(task, n: int, num_steps: int) -> np.ndarray:
    """Coefficients ``r_0..r_{2K}`` (lowest degree first, float64) of the tied K-step GD risk ``R(eta)``.

    ``R(eta) = sum_s r_s eta^s`` (docs/theory.md §16): ``r_0 = a d + sigma^2`` and
    ``r_s = (-1)^s [a C(2K, s) m_s + b (C(2K, s) - 2 C(K, s)) m_{s-1}]`` with ``a = tr(Sigma Omega)/d``,
    ``b = sigma^2/n`` and the Wishart moments ``m_j`` ([`icl.wishart_trace_moments`][icl.theory.wishart_trace_moments]). Each coefficient is
    exact before rounding; evaluating them in float64 is accurate for small ``K`` only (use [`tied_gd_risk`][icl.theory.tied_gd_risk]).
    """
    law, n, k = _setup(task, n, num_steps, "tied_gd_risk_polynomial")
    return np.array([float(c) for c in _exact_coefficients(law, n, k)], np.float64)


def tied_gd_risk(step_size, task, n: int, num_steps: int):
    """Exact population MSE of ``K`` tied GD steps from ``w_0 = 0`` (docs/theory.md §16; Gatmiry et al. 2024).

    ``w_{k+1} = w_k - eta Sigma^{-1} X^T (X w_k - y)/n`` for ``k < K`` with one step size ``eta`` (plain GD,
    ``Gamma = eta I``, when ``Sigma = I``; for general Sigma the ``Sigma^{-1}`` preconditioner whitens the problem
    to the isotropic one). Equals [`icl.multistep_gd_risk`][icl.theory.multistep_gd_risk] at ``[eta] * K``; here the degree-``2K``
    polynomial is evaluated in exact rational arithmetic, so it keeps float64 accuracy at large ``K``.
    Needs Gaussian inputs; depends on ``w`` only through ``Omega = E[w w^T]``.

    Args:
      step_size: the shared step ``eta`` (a float or an array of them).
      task: a task, or its law (a [`GaussianLaw`][icl.tasks.GaussianLaw]).
      n: context length. num_steps: ``K`` (loops), >= 1.

    Returns:
      A float for a scalar ``step_size``, else a float64 array of its shape.
    """
    law, n, k = _setup(task, n, num_steps, "tied_gd_risk")
    etas = _check_step_sizes(step_size)
    coeffs = _exact_coefficients(law, n, k)
    out = np.array([float(_horner(coeffs, Fraction(float(e)))) for e in etas.ravel()], np.float64).reshape(etas.shape)
    return float(out) if out.ndim == 0 else out


def _bisect(deriv: list[Fraction], lo: float, hi: float) -> float:
    """A root of ``deriv`` in ``[lo, hi]`` where it goes from ``< 0`` to ``>= 0``, to float64 resolution."""
    while True:
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            return hi
        if _horner(deriv, Fraction(mid)) < 0:
            lo = mid
        else:
            hi = mid


def optimal_tied_step_size(task, n: int, num_steps: int) -> tuple[float, float]:
    """The risk-optimal shared step ``eta*`` of K tied GD steps and its exact risk (docs/theory.md §16).

    Minimises [`tied_gd_risk`][icl.theory.tied_gd_risk] over ``eta`` exactly: every local minimum of the degree-``2K`` polynomial in
    ``(0, 2n/(n + d + 1)]`` (where the global one lies) is bracketed by a sign change of the exact ``R'`` and
    bisected to float64 resolution; the one of least risk wins. ``K = 1`` gives Mahankali et al.'s
    ``eta* = n / (n + d + 1 + sigma^2 d / tr(Sigma Omega))`` (``n/(n + d + 1 + sigma^2/tau^2)`` for
    ``Omega = tau^2 I``, ``Sigma = I``). The tied optimum is never better than the untied
    [`icl.optimal_multistep_step_sizes`][icl.theory.optimal_multistep_step_sizes] (equal at ``K = 1``). Yang et al. 2023 and Gatmiry et al. 2024
    study looped transformers, whose trained shared layer this predicts (the sparse model with ``loops=K``).

    Returns:
      ``(eta*, R(eta*))`` as floats.
    """
    law, n, k = _setup(task, n, num_steps, "optimal_tied_step_size")
    coeffs = _exact_coefficients(law, n, k)
    deriv = _derivative(coeffs)
    m2 = Fraction(wishart_mixed_trace_moment((2,), n, law.d), n**2)
    upper = float(2 * law.d / m2)  # beyond it R(eta) > R(0) (Jensen), so the minimiser lies in (0, upper]
    grid = list(np.linspace(0.0, upper, _GRID + 1)[1:])
    candidates = [upper]
    # R'(0) = -2 K a d < 0 unless the signal vanishes; brackets: a sign change from - to + of R' on the grid
    lo_val = _horner(deriv, Fraction(0))
    lo = 0.0
    for x in grid:
        val = _horner(deriv, Fraction(x))
        if lo_val < 0 <= val:
            candidates.append(_bisect(deriv, lo, x))
        lo, lo_val = x, val
    # roots of R' in float64, refined by bisection on an exact bracket around them (catches close root pairs)
    for root in np.roots(np.array([float(c) for c in deriv])[::-1]):
        if abs(root.imag) <= 1e-6 * max(abs(root), 1.0) and 0.0 < root.real < upper:
            x = float(root.real)
            width = max(1e-9, 1e-6 * x)
            left, right = max(x - width, 0.0), min(x + width, upper)
            if _horner(deriv, Fraction(left)) < 0 <= _horner(deriv, Fraction(right)):
                candidates.append(_bisect(deriv, left, right))
    risks = [float(_horner(coeffs, Fraction(c))) for c in candidates]
    best = int(np.argmin(risks))
    return float(candidates[best]), risks[best]
