"""Inputs with i.i.d. coordinates (von Oswald et al. 2023's uniform data): one-step GD (docs/theory.md §5).

For i.i.d. coordinates with variance ``s2`` and fourth moment ``m4``, ``E[w w^T] = tau^2 I`` and label noise
sigma, ``E[x x^T] = s2 I``, ``E[h (y_q x_q)^T] = s2^2 tau^2 I`` and

    E[h h^T] = (tau^2 ((n + d - 2) s2^2 + m4) + sigma^2 s2) / n  I,

so ``Gamma* = eta* I`` with ``eta* = n s2 tau^2 / (tau^2 ((n + d - 2) s2^2 + m4) + sigma^2 s2)`` and
``R* = d s2 tau^2 (1 - eta* s2) + sigma^2``. Gaussian coordinates (``m4 = 3 s2^2``) give back Mahankali et
al.'s ``n / (n + d + 1 + sigma^2)`` at ``s2 = tau = 1``. von Oswald et al. report ``0.5 * MSE``: 0.2062 for
``U(-1/2, 1/2)`` at d = n = 10 (``eta* = 6.0606``, ``eta*/n = 0.606``).
"""

from __future__ import annotations

import numpy as np

from icl.tasks.base import IIDLaw
from icl.theory.moments import Moments

__all__: list[str] = []


def iid_moments(law: IIDLaw, n: int):
    """``S, G, H, A`` of the module docstring (float64)."""
    d, s2, m4, tau2, sigma2 = law.d, law.s2, law.m4, law.w_var, law.noise_std**2
    q = (tau2 * ((n + d - 2) * s2**2 + m4) + sigma2 * s2) / n
    eye = np.eye(d)
    return Moments(s=s2 * eye, g=s2**2 * tau2 * eye, h=q * eye, a=d * s2 * tau2 + sigma2)
