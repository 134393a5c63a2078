"""The one API of one-layer theory: dispatch on a task's law to its moments (docs/theory.md §3-§5).

Every law here reduces the class ``P(Gamma)`` (``y_hat = x_q^T Gamma h``, ``h = X^T y / n``) to four float64
moments: ``S = E[x x^T]``, ``G = E[h (y_q x_q)^T]``, ``H = E[h h^T]`` and ``A = E[y_q^2]``. Then

    R(Gamma) = A - 2 tr(Gamma G) + tr(S Gamma H Gamma^T),   Gamma* = S^{-1} G^T H^{-1},   R* = A - tr(Gamma* G),
    R(eta I) = A - 2 eta tr G + eta^2 tr(S H),               eta* = tr G / tr(S H)

(docs/theory.md §3; Gaussian: ``G = Sigma Omega Sigma``; §5 i.i.d. coordinates; §4 rotation-invariant targets).
Everything reported is computed in float64 numpy whatever the JAX precision; [`differentiable_risk`][icl.theory.differentiable_risk] is the
``jax.numpy`` version for gradient flow and training on the exact loss.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from icl.tasks.base import GaussianLaw, IIDLaw, TargetLaw, check_positive_int
from icl.theory.gaussian import gaussian_moments, gaussian_optimum
from icl.theory.iid import iid_moments
from icl.theory.moments import Moments
from icl.theory.nonlinear import TargetMoments, target_moments

__all__ = [
    "differentiable_risk",
    "expected_hh",
    "law_of",
    "one_step_risk",
    "optimal_gamma",
    "optimal_risk",
    "optimal_step_size",
    "risk",
]

LAWS = (GaussianLaw, IIDLaw, TargetLaw)


def law_of(task):
    """The law theory uses for ``task``: a task's ``law()``, a law itself, or [`TargetMoments`][icl.theory.TargetMoments] estimates.

    Raises ValueError naming the family when it has no closed form here.
    """
    if isinstance(task, LAWS):
        law = task
    elif isinstance(task, TargetMoments) or callable(getattr(task, "law", None)):
        law = task.law()
    elif all(hasattr(task, k) for k in ("x_cov", "w_cov", "noise_std")):  # a duck-typed Gaussian task
        law = GaussianLaw(task.x_cov, task.w_cov, float(task.noise_std), family=type(task).__name__)
    else:
        law = None
    if law is None:
        raise ValueError(f"{type(task).__name__} has no closed form in icl.theory (its law() is not a GaussianLaw, "
                         "IIDLaw or TargetLaw); estimate its risks by Monte Carlo (icl.compare_predictors)")
    if isinstance(law, TargetLaw) and not law.known:
        raise ValueError(f"{law.family} has no closed-form target moments A, B, C: estimate them with "
                         "moments = icl.estimate_moments(task, key) and pass them to the moment-level API, e.g. "
                         "icl.optimal_step_size(moments, n) or moments.optimal_step_size(n) (with its SE)")
    return law


def moments(task, n: int) -> Moments:
    """The four float64 moments of the module docstring for ``task``'s law and prompt length ``n``."""
    n = check_positive_int("n", n)
    law = law_of(task)
    if isinstance(law, GaussianLaw):
        return gaussian_moments(law, n)
    if isinstance(law, IIDLaw):
        return iid_moments(law, n)
    return target_moments(law, n)


def expected_hh(task, n: int) -> np.ndarray:
    """``E[h h^T]`` of ``h = X^T y / n``, float64 ``[d, d]`` (docs/theory.md §3, §4, §5).

    Gaussian: ``(1 + 1/n) Sigma Omega Sigma + (tr(Omega Sigma) + sigma^2)/n Sigma`` (the Wishart identity
    ``E[W A W] = n(n+1) Sigma A Sigma + n tr(A Sigma) Sigma`` for ``W = X^T X``).
    """
    return moments(task, n).h.copy()


def _as_gamma(gamma, d: int) -> np.ndarray:
    g = np.asarray(gamma, np.float64)
    if g.ndim < 2 or g.shape[-2:] != (d, d):
        raise ValueError(f"gamma must have shape [..., {d}, {d}] to match the task's d={d}, got {g.shape}")
    return g


def _scalar(x):
    x = np.asarray(x, np.float64)
    return float(x) if x.ndim == 0 else x


def risk(gamma, task, n: int):
    """Population MSE of ``y_hat = x_q^T Gamma h``: ``A - 2 tr(Gamma G) + tr(S Gamma H Gamma^T)`` (docs/theory.md §3).

    Gaussian: ``tr(Sigma Omega) - 2 tr(Sigma Gamma Sigma Omega) + tr(Sigma Gamma E[hh^T] Gamma^T) + sigma^2``
    (Mahankali et al. 2023, proof of Thm 1). ``gamma``: ``[..., d, d]``; float64 (a float for one matrix).
    """
    m = moments(task, n)
    g = _as_gamma(gamma, m.s.shape[0])
    quad = np.einsum("ij,...jk,kl,...il->...", m.s, g, m.h, g)
    return _scalar(m.a - 2 * np.einsum("...ij,ji->...", g, m.g) + quad)


def differentiable_risk(gamma, task, n: int):
    """[`risk`][icl.theory.risk] in ``jax.numpy`` (differentiable in ``gamma``, in ``gamma``'s dtype), for gradient flow.

    The moments are float64 constants cast to ``gamma``'s dtype; in float32 the result carries the round-off of
    the sum of the magnitudes of its three terms (about ``1e-7 (A + 2|tr(Gamma G)| + tr(S Gamma H Gamma^T))``).
    """
    m = moments(task, n)
    gamma = jnp.asarray(gamma)
    dtype = gamma.dtype if jnp.issubdtype(gamma.dtype, jnp.floating) else jnp.asarray(0.0).dtype
    gamma = gamma.astype(dtype)
    s, g, h = (jnp.asarray(v, dtype) for v in (m.s, m.g, m.h))
    quad = jnp.einsum("ij,...jk,kl,...il->...", s, gamma, h, gamma)
    return m.a - 2 * jnp.einsum("...ij,ji->...", gamma, g) + quad


def optimal_gamma(task, n: int) -> np.ndarray:
    """Risk minimiser over ``P(Gamma)``: ``Gamma* = S^{-1} G^T H^{-1}``, float64 ``[d, d]`` (docs/theory.md §3).

    Gaussian: ``Gamma* = Omega Sigma E[hh^T]^{-1}``, computed in the whitened form
    ``Omega Sigma^{1/2} K^{-1} Sigma^{-1/2}`` with the well-conditioned ``K = (1 + 1/n) Sigma^{1/2} Omega
    Sigma^{1/2} + (tr(Omega Sigma) + sigma^2)/n I``. Special cases: ``Omega = I`` gives
    ``[(1 + 1/n) Sigma + (tr Sigma + sigma^2)/n I]^{-1}`` (Ahn et al. 2023, Thm 1; Zhang, Frei & Bartlett 2023,
    Thm 4.1 at sigma = 0); ``Omega = Sigma^{-1}`` gives ``n/(n + d + 1 + sigma^2) Sigma^{-1}`` (Mahankali et al.
    2023, Thm 2). i.i.d. coordinates and rotation-invariant targets: ``eta* I`` (§4, §5).
    """
    law = law_of(task)
    n = check_positive_int("n", n)
    if isinstance(law, GaussianLaw):
        return gaussian_optimum(law, n)[0]
    m = moments(law, n)
    return np.linalg.solve(m.s, np.linalg.solve(m.h, m.g).T)  # S^{-1} G^T H^{-1} (H symmetric)


def optimal_risk(task, n: int) -> float:
    """Minimum risk over ``P(Gamma)``: ``R* = A - tr(Gamma* G)`` (Gaussian: ``tr(Sigma Omega) + sigma^2 -
    tr(Gamma* Sigma Omega Sigma)``; docs/theory.md §3), float64."""
    law = law_of(task)
    n = check_positive_int("n", n)
    if isinstance(law, GaussianLaw):
        return gaussian_optimum(law, n)[1]
    m = moments(law, n)
    return float(m.a - np.trace(optimal_gamma(law, n) @ m.g))


def optimal_step_size(task, n: int) -> float:
    """Best step of one plain GD step from zero: ``eta* = tr G / tr(S H)`` (float64; docs/theory.md §3-§5).

    Gaussian: ``tr(Sigma^2 Omega) / tr(Sigma E[hh^T])``, which is ``n / (n + d + 1 + sigma^2/tau^2)`` for
    ``Sigma = I``, ``Omega = tau^2 I`` (Mahankali et al. 2023, Thm 1). i.i.d. coordinates:
    ``n s^2 tau^2 / (tau^2 ((n + d - 2) s^4 + m4) + sigma^2 s^2)`` (§5, von Oswald et al. 2023). Rotation-invariant
    targets: ``n B / ((n - 1) B + C)`` (§4, Mahankali et al. 2023, Thm 3).
    """
    m = moments(task, n)
    return float(np.trace(m.g) / np.trace(m.s @ m.h))


def one_step_risk(eta, task, n: int):
    """Risk of one plain GD step from zero with step ``eta``: ``R(eta I) = A - 2 eta tr G + eta^2 tr(S H)``.

    For ``Sigma = I``, ``Omega = tau^2 I``: ``d tau^2 [1 - 2 eta + eta^2 (n + d + 1 + sigma^2/tau^2)/n] + sigma^2``
    (docs/theory.md §3). ``eta`` may be an array (elementwise); float64.
    """
    m = moments(task, n)
    eta = np.asarray(eta, np.float64)
    if not np.all(np.isfinite(eta)):
        raise ValueError(f"eta must be finite, got {eta!r}")
    return _scalar(m.a - 2 * eta * np.trace(m.g) + eta**2 * np.trace(m.s @ m.h))
