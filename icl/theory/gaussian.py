"""Gaussian linear tasks: the moments of ``h`` and the optimal one-layer LSA (docs/theory.md §3)."""

from __future__ import annotations

import numpy as np

from icl.tasks.base import GaussianLaw
from icl.theory.moments import Moments

__all__: list[str] = []


def gaussian_moments(law: GaussianLaw, n: int):
    """``S = Sigma``, ``G = Sigma Omega Sigma``, ``H = (1 + 1/n) Sigma Omega Sigma + (tr(Omega Sigma) + sigma^2)/n
    Sigma``, ``A = tr(Sigma Omega) + sigma^2`` (docs/theory.md §3)."""
    s, o, sigma2 = law.x_cov, law.w_cov, law.noise_std**2
    sos = s @ o @ s
    sos = 0.5 * (sos + sos.T)
    tr = float(np.trace(o @ s))
    h = (1 + 1 / n) * sos + (tr + sigma2) / n * s
    return Moments(s=s, g=sos, h=0.5 * (h + h.T), a=tr + sigma2)


def gaussian_optimum(law: GaussianLaw, n: int) -> tuple[np.ndarray, float]:
    """``(Gamma*, R*)`` in the whitened form (docs/theory.md §3), accurate for ill-conditioned Sigma.

    ``M = Sigma^{1/2} Omega Sigma^{1/2}``, ``K = (1 + 1/n) M + (tr M + sigma^2)/n I`` (condition number at most
    ``n + 2``): ``Gamma* = Omega Sigma^{1/2} K^{-1} Sigma^{-1/2}`` and ``R* = tr M + sigma^2 - tr(M K^{-1} M)``.
    """
    lam, u = np.linalg.eigh(law.x_cov)
    root = (u * np.sqrt(lam)) @ u.T
    inv_root = (u / np.sqrt(lam)) @ u.T
    m = root @ law.w_cov @ root
    m = 0.5 * (m + m.T)
    sigma2 = law.noise_std**2
    k = (1 + 1 / n) * m + (np.trace(m) + sigma2) / n * np.eye(m.shape[0])
    k_inv_m = np.linalg.solve(k, m)  # K^{-1} M
    gamma = law.w_cov @ root @ np.linalg.solve(k, inv_root)
    r = float(np.trace(m) + sigma2 - np.trace(m @ k_inv_m))
    return gamma, r
