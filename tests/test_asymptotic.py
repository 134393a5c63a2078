"""Lu et al. 2025 asymptotic ICL theory (docs/theory.md §15): Result 1, exact reduced-model test error, finite d."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from helpers import assert_close, assert_within_se, x64

from icl.theory.asymptotic import (
    asymptotic_icl_error,
    fit_reduced_gamma,
    pretraining_features,
    pretraining_sizes,
    reduced_features,
    reduced_test_error,
    reduced_test_error_mc,
    simulate_icl_error,
    solve_reduced_gamma,
    wishart_stieltjes,
)

ALPHA, RHO = 1.0, 0.01


@pytest.fixture
def f64():
    """Float64 JAX for the block; the previous setting is restored afterwards (``jax.enable_x64``)."""
    with x64():
        yield


# ----------------------------------------------------------------------------------------------------------
# Result 1
# ----------------------------------------------------------------------------------------------------------


def test_reference_values():
    """The two values the paper's setting gives (alpha = 1, rho = 0.01, tau = 4), to the 4 digits shown."""
    assert round(asymptotic_icl_error(1.0, math.inf, 4.0, 0.01), 4) == 0.6833
    assert round(asymptotic_icl_error(1.0, 0.5, 4.0, 0.01), 4) == 0.9476


def test_limits_branches_and_broadcasting():
    x = (1 + RHO) / ALPHA
    # tau -> inf: the best reduced model as d -> inf, 1 + rho - 1/c_h -> x/(1 + x) + rho
    assert_close(asymptotic_icl_error(ALPHA, math.inf, 1e9, RHO), x / (1 + x) + RHO, 1e-7)
    # tau -> 0: no pretraining data, Gamma = 0 and e = E[y^2] = 1 + rho
    assert_close(asymptotic_icl_error(ALPHA, math.inf, 1e-9, RHO), 1 + RHO, 1e-7)
    # kappa -> inf continuously on both branches
    for tau in (0.5, 4.0):
        assert_close(asymptotic_icl_error(ALPHA, 1e9, tau, RHO), asymptotic_icl_error(ALPHA, math.inf, tau, RHO), 1e-7)
    # the interpolation peak: divergence from both sides of tau = 1
    assert asymptotic_icl_error(ALPHA, math.inf, 1 - 1e-7, RHO) > 1e6
    assert asymptotic_icl_error(ALPHA, math.inf, 1 + 1e-7, RHO) > 1e6
    # past the peak in kappa (~0.13 here) more pretraining tasks help: memorisation gives way to ICL
    assert asymptotic_icl_error(ALPHA, 0.5, 4.0, RHO) > asymptotic_icl_error(ALPHA, 2.0, 4.0, RHO) > \
        asymptotic_icl_error(ALPHA, math.inf, 4.0, RHO)
    taus = np.array([0.2, 0.7, 1.5, 4.0])
    kappas = np.array([[0.5], [math.inf]])
    grid = asymptotic_icl_error(ALPHA, kappas, taus, RHO)
    assert grid.shape == (2, 4) and grid.dtype == np.float64
    for i, kappa in enumerate(kappas[:, 0]):
        for j, tau in enumerate(taus):
            assert grid[i, j] == asymptotic_icl_error(ALPHA, float(kappa), float(tau), RHO)


def test_wishart_stieltjes_is_the_resolvent_trace():
    """``M_kappa(x) = (1/d) tr (W + x I)^{-1}`` for the task-pool Wishart ``W``; both roots' forms (kappa < or > 1)."""
    rng = np.random.default_rng(0)
    d, x = 400, 1.01
    for kappa in (0.25, 4.0):
        k = int(kappa * d)
        w = rng.standard_normal((k, d))
        eig = np.linalg.eigvalsh(w.T @ w / k)
        assert_close(wishart_stieltjes(x, kappa), np.mean(1 / (eig + x)), 0.01, f"kappa={kappa}")
    assert wishart_stieltjes(x, math.inf) == 1 / (1 + x)
    naive = 2 / ((x + 1 - 4) + math.sqrt((x + 1 - 4) ** 2 + 4 * x * 4))  # kappa = 0.25, no cancellation here
    assert_close(wishart_stieltjes(x, 0.25), naive, 1e-12)


@pytest.mark.parametrize("name, kwargs, pattern", [
    ("alpha", {"alpha": 0.0}, "alpha must be a finite number > 0"),
    ("alpha", {"alpha": -1.0}, "alpha must be"),
    ("alpha", {"alpha": math.inf}, "alpha must be"),
    ("alpha", {"alpha": math.nan}, "alpha must be"),
    ("alpha", {"alpha": "1"}, "alpha must be"),
    ("kappa", {"kappa": 0.0}, r"kappa must be a number > 0 \(math.inf allowed"),
    ("kappa", {"kappa": -2.0}, "kappa must be"),
    ("kappa", {"kappa": math.nan}, "kappa must be"),
    ("tau", {"tau": 0.0}, "tau must be a finite number > 0"),
    ("tau", {"tau": -1.0}, "tau must be"),
    ("tau", {"tau": math.inf}, "tau must be"),
    ("tau", {"tau": math.nan}, "tau must be"),
    ("tau", {"tau": 1.0}, "tau must not be exactly 1: the ridgeless error diverges"),
    ("tau", {"tau": np.array([0.5, 1.0])}, "tau must not be exactly 1"),
    ("rho", {"rho": -0.1}, "rho must be a finite number >= 0"),
    ("rho", {"rho": math.inf}, "rho must be"),
    ("rho", {"rho": math.nan}, "rho must be"),
])
def test_asymptotic_error_rejects_bad_arguments(name, kwargs, pattern):
    args = {"alpha": ALPHA, "kappa": math.inf, "tau": 4.0, "rho": RHO, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        asymptotic_icl_error(**args)


def test_finite_d_functions_reject_bad_arguments():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="d must be an integer >= 1"):
        fit_reduced_gamma(key, 0, ALPHA, math.inf, 4.0, RHO)
    with pytest.raises(ValueError, match=r"alpha is too small for d = 10: l = round\(alpha d\) = 0"):
        pretraining_sizes(10, 0.01, math.inf, 4.0)
    with pytest.raises(ValueError, match=r"kappa is too small for d = 10: k = round\(kappa d\) = 0"):
        pretraining_sizes(10, ALPHA, 0.01, 4.0)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        fit_reduced_gamma(key, 4, ALPHA, math.inf, 4.0, RHO, lam=-1.0)
    with pytest.raises(ValueError, match="rho must be a finite number >= 0"):
        fit_reduced_gamma(key, 4, ALPHA, math.inf, 4.0, -RHO)
    with pytest.raises(ValueError, match=r"gamma must have shape \[..., d, d \+ 1\]"):
        reduced_test_error(np.zeros((4, 4)), 4, ALPHA, RHO)
    with pytest.raises(ValueError, match="task must be one of"):
        reduced_test_error(np.zeros((4, 5)), 4, ALPHA, RHO, task="pool")
    with pytest.raises(ValueError, match="solve_reduced_gamma needs features"):
        solve_reduced_gamma(np.zeros((3, 19)), np.zeros(3), 4)
    assert pretraining_sizes(10, 1.0, math.inf, 4.0) == (10, None, 400)
    assert pretraining_sizes(10, 2.0, 0.5, 0.5) == (20, 5, 50)


# ----------------------------------------------------------------------------------------------------------
# The reduced model at finite d
# ----------------------------------------------------------------------------------------------------------


def test_reduced_features_give_the_reduced_prediction():
    rng = np.random.default_rng(1)
    batch, l, d = 3, 5, 4
    x, y, xq = rng.standard_normal((batch, l, d)), rng.standard_normal((batch, l)), rng.standard_normal((batch, d))
    gamma = rng.standard_normal((d, d + 1))
    feats = np.asarray(reduced_features(x, y, xq), np.float64)
    assert feats.shape == (batch, d * (d + 1))
    for b in range(batch):
        v = np.concatenate([(d / l) * x[b].T @ y[b], [np.sum(y[b] ** 2) / l]])
        assert_close(feats[b] @ gamma.reshape(-1), xq[b] @ gamma @ v, 1e-5)


def test_exact_test_error_minimum():
    d, alpha, rho = 6, 1.5, 0.25
    l = 9
    c_h = 1 + (1 + d * (1 + rho)) / l
    best = np.concatenate([np.eye(d) / c_h, np.zeros((d, 1))], axis=1)
    assert_close(reduced_test_error(best, d, alpha, rho), 1 + rho - 1 / c_h, 1e-14)
    rng = np.random.default_rng(2)
    others = best + 0.1 * rng.standard_normal((5, d, d + 1))
    assert np.all(reduced_test_error(others, d, alpha, rho) > reduced_test_error(best, d, alpha, rho))
    assert reduced_test_error(np.zeros((d, d + 1)), d, alpha, rho) == 1 + rho


def test_exact_test_error_matches_monte_carlo(f64):
    """The closed-form quadratic in Gamma against fresh prompts, both test-task laws, a Gamma with a last column."""
    d, alpha, rho = 6, 1.5, 0.25
    rng = np.random.default_rng(3)
    c_h = 1 + (1 + d * (1 + rho)) / 9
    gamma = np.concatenate([np.eye(d) / c_h + 0.2 * rng.standard_normal((d, d)), 0.5 * rng.standard_normal((d, 1))],
                           axis=1)
    for i, task in enumerate(("gaussian", "sphere")):
        mean, se = reduced_test_error_mc(jax.random.PRNGKey(10 + i), gamma, d, alpha, rho, num_prompts=2**15,
                                         task=task)
        assert_within_se(mean, se, reduced_test_error(gamma, d, alpha, rho, task=task), what=task)
    # the two laws differ only through E|w|^4, in the s column: (1 + 2/l) (2/d) ||g||^2 / d
    gap = reduced_test_error(gamma, d, alpha, rho) - reduced_test_error(gamma, d, alpha, rho, task="sphere")
    assert_close(gap, (1 + 2 / 9) * (2 / d) * np.sum(gamma[:, d] ** 2) / d, 1e-12)


@pytest.mark.parametrize("kappa, tau, chunk", [(1.0, 0.5, 5),
                                               pytest.param(math.inf, 3.0, 16, marks=pytest.mark.slow)])
def test_fit_is_the_exact_least_squares_solution(f64, kappa, tau, chunk):
    """Minimum-norm (n < p) and normal-equation (n >= p, chunked) fits equal numpy's on the same pretraining set."""
    d = 4
    key = jax.random.PRNGKey(4)
    feats, target = pretraining_features(key, d, ALPHA, kappa, tau, RHO, chunk=chunk)
    h, y = np.asarray(feats), np.asarray(target)
    n = pretraining_sizes(d, ALPHA, kappa, tau)[2]
    assert h.dtype == np.float64 and h.shape == (n, d * (d + 1)) and np.all(np.any(h != 0, axis=1))
    expected = np.linalg.lstsq(h, y, rcond=None)[0].reshape(d, d + 1)  # minimum norm when n < p
    assert_close(fit_reduced_gamma(key, d, ALPHA, kappa, tau, RHO, chunk=chunk), expected, 1e-8)
    lam = 0.3
    ridge = np.linalg.solve(h.T @ h + (n / d) * lam * np.eye(d * (d + 1)), h.T @ y).reshape(d, d + 1)
    assert_close(fit_reduced_gamma(key, d, ALPHA, kappa, tau, RHO, lam, chunk=chunk), ridge, 1e-10)
    assert_close(solve_reduced_gamma(feats, target, d, lam), ridge, 1e-10)
    if n < d * (d + 1):
        assert_close(h @ expected.reshape(-1), y, 1e-10)  # ridgeless below the threshold interpolates


def test_finite_d_simulation_near_theory(f64):
    """d = 20, alpha = 1, rho = 0.01, tau = 4, kappa = inf: simulation / theory = 1.087 +- 0.006 (16 draws).

    The finite-size excess shrinks like ~1/d (1.18, 1.09, 1.04 at d = 10, 20, 40; docs/theory.md §15). Tolerance:
    the ratio of 3 draws lies in [1.0, 1.2] (its draw-to-draw SE is ~0.015).
    """
    theory = asymptotic_icl_error(1.0, math.inf, 4.0, 0.01)
    mean, se, errors = simulate_icl_error(jax.random.PRNGKey(5), 20, 1.0, math.inf, 4.0, 0.01, num_draws=3,
                                          vmap_size=3)
    assert errors.shape == (3,) and se < 0.05
    assert 1.0 <= mean / theory <= 1.2, (mean, se, theory)
