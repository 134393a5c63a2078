"""Closed forms of THEORY.md §3 against Monte Carlo (4 SE) and against each other (1e-10, float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl

N_MC = 200_000
EIGS = [2.0, 1.0, 0.3]


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


def assert_within_4_se(values, expected):
    mean, se = mean_se(values)
    assert abs(mean - float(expected)) <= 4 * se, f"MC {mean:.6g} ± {se:.3g} vs closed form {float(expected):.6g}"


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def task_for(prior: str, noise: float = 0.5):
    return icl.LinearRegressionTask.from_eigenvalues(EIGS, noise_std=noise, w_prior=prior, rotation_seed=1)


def mc_sample(task, n, seed):
    """Float64 numpy (x, y, x_query, y_query, h) for N_MC prompts."""
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(seed), N_MC, n)
        x, y, xq, yq = (np.asarray(t) for t in (p.x, p.y, p.x_query, p.y_query))
    return x, y, xq, yq, np.einsum("bnd,bn->bd", x, y) / n


@pytest.mark.parametrize("prior", ["isotropic", "inverse"])
def test_risk_of_random_gamma_matches_monte_carlo_within_4_se(prior):
    n = 6
    task = task_for(prior)
    gamma = np.random.default_rng(0).standard_normal((3, 3)) * 0.3 + 0.5 * np.eye(3)
    x, y, xq, yq, h = mc_sample(task, n, seed=10)
    errors = (np.einsum("bi,ij,bj->b", xq, gamma, h) - yq) ** 2
    with jax.enable_x64(True):
        closed = icl.risk(gamma, task, n)
    assert_within_4_se(errors, closed)


@pytest.mark.parametrize("prior", ["isotropic", "inverse"])
def test_expected_hh_entries_match_monte_carlo_within_4_se(prior):
    n = 5
    task = task_for(prior)
    *_, h = mc_sample(task, n, seed=11)
    with jax.enable_x64(True):
        e_hh = np.asarray(icl.expected_hh(task, n))
    np.testing.assert_allclose(e_hh, e_hh.T, rtol=1e-14)
    for i in range(3):
        for j in range(i, 3):
            assert_within_4_se(h[:, i] * h[:, j], e_hh[i, j])
    assert_within_4_se(np.sum(h**2, axis=1), np.trace(e_hh))


@pytest.mark.parametrize("prior", ["isotropic", "inverse"])
def test_optimal_risk_matches_monte_carlo_loss_of_optimal_gamma_within_4_se(prior):
    n = 8
    task = task_for(prior)
    with jax.enable_x64(True):
        gamma_star = np.asarray(icl.optimal_gamma(task, n))
        r_star = icl.optimal_risk(task, n)
    _, _, xq, yq, h = mc_sample(task, n, seed=12)
    assert_within_4_se((np.einsum("bi,ij,bj->b", xq, gamma_star, h) - yq) ** 2, r_star)


@pytest.mark.parametrize("prior", ["isotropic", "inverse"])
def test_one_step_gd_risk_matches_monte_carlo_loss_of_gd_predictor_within_4_se(prior):
    n, eta = 8, 0.4
    task = task_for(prior)
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(13), N_MC, n)
        errors = (icl.gradient_descent(eta)(p) - p.y_query) ** 2
        closed = icl.one_step_gd_risk(eta, task, n)
    assert_within_4_se(errors, closed)


def test_isotropic_closed_forms_match_monte_carlo_within_4_se():
    d, n, sigma, tau = 3, 10, 0.5, 1.5
    task = icl.LinearRegressionTask.isotropic(d, sigma, tau=tau)
    eta = icl.isotropic_optimal_step_size(d, n, sigma, tau)
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(14), N_MC, n)
        errors = (icl.gradient_descent(eta)(p) - p.y_query) ** 2
    assert_within_4_se(errors, icl.isotropic_optimal_risk(d, n, sigma, tau))


def test_optimal_gamma_for_identity_prior_equals_ahn_formula():
    n, sigma = 7, 0.6
    with jax.enable_x64(True):
        task = task_for("isotropic", sigma)
        s = task.x_cov
        expected = np.linalg.inv((1 + 1 / n) * s + (np.trace(s) + sigma**2) / n * np.eye(3))
        assert rel(icl.optimal_gamma(task, n), expected) < 1e-10


def test_optimal_gamma_for_inverse_prior_equals_mahankali_thm2():
    n, sigma, d = 7, 0.6, 3
    with jax.enable_x64(True):
        task = task_for("inverse", sigma)
        expected = n / (n + d + 1 + sigma**2) * np.linalg.inv(task.x_cov)
        assert rel(icl.optimal_gamma(task, n), expected) < 1e-10


def test_expected_hh_formula_with_general_prior_equals_theory():
    n, sigma = 4, 0.3
    omega = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, -0.2], [0.0, -0.2, 0.5]])
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask.from_eigenvalues(EIGS, noise_std=sigma, w_prior=omega, rotation_seed=2)
        s, o = task.x_cov, task.w_cov
        expected = (1 + 1 / n) * s @ o @ s + (np.trace(o @ s) + sigma**2) / n * s
        assert rel(icl.expected_hh(task, n), expected) < 1e-10


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_isotropic_helpers_equal_general_closed_forms_and_theory_formulas(tau):
    d, n, sigma = 4, 9, 0.8
    r = sigma**2 / tau**2
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask.isotropic(d, sigma, tau=tau)
        eta_star = icl.isotropic_optimal_step_size(d, n, sigma, tau)
        r_star = icl.isotropic_optimal_risk(d, n, sigma, tau)
        assert eta_star == pytest.approx(n / (n + d + 1 + r), rel=1e-14)
        assert r_star == pytest.approx(d * tau**2 * (d + 1 + r) / (n + d + 1 + r) + sigma**2, rel=1e-14)
        assert float(icl.optimal_step_size(task, n)) == pytest.approx(eta_star, rel=1e-10)
        assert float(icl.optimal_risk(task, n)) == pytest.approx(r_star, rel=1e-10)
        assert float(icl.one_step_gd_risk(eta_star, task, n)) == pytest.approx(r_star, rel=1e-10)
        assert rel(icl.optimal_gamma(task, n), eta_star * np.eye(d)) < 1e-10
        for eta in (0.0, 0.3, 1.2):
            formula = d * tau**2 * (1 - 2 * eta + eta**2 * (n + d + 1 + r) / n) + sigma**2
            assert float(icl.one_step_gd_risk(eta, task, n)) == pytest.approx(formula, rel=1e-10)


@pytest.mark.parametrize("prior", ["isotropic", "inverse"])
def test_risk_gradient_vanishes_at_optimal_gamma_and_optimum_is_a_minimum(prior):
    n = 6
    with jax.enable_x64(True):
        task = task_for(prior)
        gamma_star = icl.optimal_gamma(task, n)
        grad = jax.grad(lambda g: icl.risk(g, task, n))(gamma_star)
        scale = np.linalg.norm(jax.grad(lambda g: icl.risk(g, task, n))(jnp.zeros((3, 3))))
        assert float(np.linalg.norm(grad)) <= 1e-10 * scale
        r_star = float(icl.optimal_risk(task, n))
        assert float(icl.risk(gamma_star, task, n)) == pytest.approx(r_star, rel=1e-10)
        rng = np.random.default_rng(1)
        for _ in range(5):
            assert float(icl.risk(gamma_star + 0.05 * rng.standard_normal((3, 3)), task, n)) > r_star


@pytest.mark.parametrize("prior", ["isotropic", "inverse"])
def test_optimal_step_size_minimises_one_step_gd_risk(prior):
    n = 6
    with jax.enable_x64(True):
        task = task_for(prior)
        eta_star = icl.optimal_step_size(task, n)
        slope = jax.grad(lambda e: icl.one_step_gd_risk(e, task, n))(eta_star)
        assert abs(float(slope)) <= 1e-10 * float(icl.one_step_gd_risk(eta_star, task, n))
        r = float(icl.one_step_gd_risk(eta_star, task, n))
        for delta in (-1e-3, 1e-3, -0.1, 0.1):
            assert float(icl.one_step_gd_risk(eta_star + delta, task, n)) > r
        # the plain step is never better than the best preconditioner
        assert r >= float(icl.optimal_risk(task, n))


def test_theory_rejects_non_positive_n():
    task = icl.LinearRegressionTask.isotropic(2)
    for fn in (icl.expected_hh, icl.optimal_gamma, icl.optimal_risk):
        with pytest.raises(ValueError, match=r"\bn\b"):
            fn(task, 0)
