"""Closed forms for the one-layer LSA / one-step-GD class on Gaussian linear tasks (THEORY.md §3).

Notation: ``h = X^T y / n``; the class ``P(Gamma)`` predicts ``y_hat = x_q^T Gamma h``. ``task`` is any
object with ``x_cov`` (Sigma), ``w_cov`` (Omega) and ``noise_std`` (sigma), e.g.
:class:`~icl.tasks.LinearRegressionTask`. Everything is written with ``jax.numpy`` so it is
differentiable (used for exact population-loss training) and exact in float64.
"""

from __future__ import annotations

import jax.numpy as jnp

from icl.linalg import spd_solve
from icl.tasks import check_positive_int

__all__ = [
    "expected_hh",
    "risk",
    "optimal_gamma",
    "optimal_risk",
    "optimal_step_size",
    "one_step_gd_risk",
    "isotropic_optimal_step_size",
    "isotropic_optimal_risk",
]


def _moments(task):
    return jnp.asarray(task.x_cov), jnp.asarray(task.w_cov), float(task.noise_std)


def expected_hh(task, n: int) -> jnp.ndarray:
    """Second moment of ``h = X^T y / n`` for a Gaussian linear task (THEORY.md §3).

    ``E[h h^T] = (1 + 1/n) Sigma Omega Sigma + (tr(Omega Sigma) + sigma^2)/n * Sigma``, from the Wishart
    identity ``E[W A W] = n(n+1) Sigma A Sigma + n tr(A Sigma) Sigma`` for ``W = X^T X``.
    """
    n = check_positive_int("n", n)
    s, o, sigma = _moments(task)
    return (1 + 1 / n) * s @ o @ s + (jnp.trace(o @ s) + sigma**2) / n * s


def risk(gamma, task, n: int) -> jnp.ndarray:
    """Population MSE of ``y_hat = x_q^T Gamma h`` (Mahankali et al. 2023, proof of Thm 1; THEORY.md §3).

    ``R(Gamma) = tr(Sigma Omega) - 2 tr(Sigma Gamma Sigma Omega) + tr(Sigma Gamma E[hh^T] Gamma^T) + sigma^2``.
    """
    s, o, sigma = _moments(task)
    gamma = jnp.asarray(gamma)
    return (
        jnp.trace(s @ o)
        - 2 * jnp.trace(s @ gamma @ s @ o)
        + jnp.trace(s @ gamma @ expected_hh(task, n) @ gamma.T)
        + sigma**2
    )


def optimal_gamma(task, n: int) -> jnp.ndarray:
    """Risk minimiser over ``P(Gamma)``: ``Gamma* = Omega Sigma E[hh^T]^{-1}`` (THEORY.md §3).

    Special cases: ``Omega = I`` gives ``[(1 + 1/n) Sigma + (tr Sigma + sigma^2)/n I]^{-1}`` (Ahn et al.
    2023, Thm 1; Zhang, Frei & Bartlett 2023, Thm 4.1 at sigma = 0); ``Omega = Sigma^{-1}`` gives
    ``n/(n + d + 1 + sigma^2) Sigma^{-1}`` (Mahankali et al. 2023, Thm 2).
    """
    s, o, _ = _moments(task)
    e = expected_hh(task, n)
    # Gamma* = (O S) E^{-1}  <=>  E^T Gamma*^T = (O S)^T, and E is symmetric.
    return spd_solve(e, (o @ s).T).T


def optimal_risk(task, n: int) -> jnp.ndarray:
    """Minimum risk over ``P(Gamma)``: ``R* = tr(Sigma Omega) + sigma^2 - tr(Gamma* Sigma Omega Sigma)``."""
    s, o, sigma = _moments(task)
    return jnp.trace(s @ o) + sigma**2 - jnp.trace(optimal_gamma(task, n) @ s @ o @ s)


def one_step_gd_risk(eta, task, n: int) -> jnp.ndarray:
    """Risk of one plain GD step from zero with step ``eta``, i.e. ``R(eta I)``.

    For ``Sigma = I``, ``Omega = tau^2 I``: ``d tau^2 [1 - 2 eta + eta^2 (n + d + 1 + sigma^2/tau^2)/n] +
    sigma^2`` (THEORY.md §3).
    """
    d = jnp.asarray(task.x_cov).shape[0]
    return risk(eta * jnp.eye(d), task, n)


def optimal_step_size(task, n: int) -> jnp.ndarray:
    """Best step of one plain GD step: ``argmin_eta R(eta I) = tr(Sigma^2 Omega) / tr(Sigma E[hh^T])``.

    Equals ``eta* = n / (n + d + 1 + sigma^2/tau^2)`` when ``Sigma = I``, ``Omega = tau^2 I`` (Mahankali
    et al. 2023, Thm 1).
    """
    s, o, _ = _moments(task)
    return jnp.trace(s @ s @ o) / jnp.trace(s @ expected_hh(task, n))


def isotropic_optimal_step_size(d: int, n: int, noise_std: float = 0.0, tau: float = 1.0) -> float:
    """``eta* = n / (n + d + 1 + sigma^2/tau^2)`` (Mahankali, Hashimoto & Ma 2023, Thm 1)."""
    return n / (n + d + 1 + noise_std**2 / tau**2)


def isotropic_optimal_risk(d: int, n: int, noise_std: float = 0.0, tau: float = 1.0) -> float:
    """``R* = d tau^2 (d + 1 + sigma^2/tau^2) / (n + d + 1 + sigma^2/tau^2) + sigma^2`` (Mahankali Thm 1)."""
    r = noise_std**2 / tau**2
    return d * tau**2 * (d + 1 + r) / (n + d + 1 + r) + noise_std**2
