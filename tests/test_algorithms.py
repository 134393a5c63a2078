"""Baseline learners (THEORY.md §1, §7): exact identities in float64 and Monte Carlo risks."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import icl


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


def np_context(p):
    return np.asarray(p.x, np.float64), np.asarray(p.y, np.float64), np.asarray(p.x_query, np.float64)


def test_bayes_posterior_mean_with_isotropic_prior_equals_ridge_at_sigma2_over_tau2():
    d, n, sigma, tau = 4, 6, 0.7, 1.6
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask.isotropic(d, sigma, tau=tau)
        p = task.sample(jax.random.key(0), 64, n)
        bayes, ridge = icl.bayes_posterior_mean(task)(p), icl.ridge(sigma**2 / tau**2)(p)
    assert rel(bayes, ridge) < 1e-10


def test_bayes_posterior_mean_equals_generalised_ridge_for_non_isotropic_prior():
    d, n, sigma = 3, 5, 0.4
    omega = np.array([[2.0, 0.5, 0.1], [0.5, 1.0, -0.3], [0.1, -0.3, 0.6]])
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask(d=d, noise_std=sigma, x_cov=np.diag([1.0, 2.0, 0.5]), w_cov=omega)
        p = task.sample(jax.random.key(1), 16, n)
        mean, cov = icl.posterior(p.x, p.y, task.w_cov, sigma)
        pred = icl.bayes_posterior_mean(task)(p)
    x, y, xq = np_context(p)
    inv_omega = np.linalg.inv(omega)
    expected_w = np.stack([np.linalg.solve(xi.T @ xi + sigma**2 * inv_omega, xi.T @ yi) for xi, yi in zip(x, y)])
    expected_cov = np.stack([sigma**2 * np.linalg.inv(xi.T @ xi + sigma**2 * inv_omega) for xi in x])
    assert rel(mean, expected_w) < 1e-10
    assert rel(cov, expected_cov) < 1e-10
    assert rel(pred, np.einsum("bd,bd->b", xq, expected_w)) < 1e-10


def test_predictive_variance_equals_theory_formula():
    d, n, sigma = 3, 4, 0.5
    omega = np.diag([1.0, 0.5, 2.0])
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask(d=d, noise_std=sigma, w_cov=omega)
        p = task.sample(jax.random.key(2), 16, n)
        var = icl.predictive_variance(task, p)
    x, _, xq = np_context(p)
    inv_omega = np.linalg.inv(omega)
    expected = np.array(
        [sigma**2 + sigma**2 * q @ np.linalg.solve(xi.T @ xi + sigma**2 * inv_omega, q) for xi, q in zip(x, xq)]
    )
    assert rel(var, expected) < 1e-10


def test_predictive_variance_is_calibrated_by_monte_carlo_within_4_se():
    """Under the task's own prior, E[(y_q - posterior mean)^2 / predictive variance] = 1."""
    task = icl.LinearRegressionTask.from_eigenvalues([1.5, 1.0, 0.4], noise_std=0.6, w_prior="inverse")
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(3), 100_000, 4)
        z2 = np.asarray((p.y_query - icl.bayes_posterior_mean(task)(p)) ** 2 / icl.predictive_variance(task, p))
    mean, se = mean_se(z2)
    assert abs(mean - 1.0) <= 4 * se, (mean, se)


def test_noiseless_posterior_with_n_ge_d_is_least_squares_with_zero_variance():
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask.isotropic(3, 0.0)
        p = task.sample(jax.random.key(4), 8, 5)
        pred, var = icl.bayes_posterior_mean(task)(p), icl.predictive_variance(task, p)
    assert rel(pred, p.y_query) < 1e-10  # noiseless and n >= d: the context determines w
    np.testing.assert_array_equal(var, 0.0)


def test_noiseless_posterior_with_n_lt_d_is_gaussian_conditioning_on_the_context():
    """sigma = 0, n < d: mean = Omega X^T (X Omega X^T)^-1 y, Cov = Omega - Omega X^T (X Omega X^T)^-1 X Omega."""
    d, n = 4, 2
    omega = np.array([[2.0, 0.3, 0.0, 0.1], [0.3, 1.0, 0.2, 0.0], [0.0, 0.2, 0.5, 0.0], [0.1, 0.0, 0.0, 1.5]])
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask(d=d, noise_std=0.0, w_cov=omega)
        p = task.sample(jax.random.key(12), 8, n)
        mean, cov = icl.posterior(p.x, p.y, omega, 0.0)
        var = icl.predictive_variance(task, p)
    x, y, xq = np_context(p)
    for xi, yi, q, m, c, v in zip(x, y, xq, np.asarray(mean), np.asarray(cov), np.asarray(var)):
        k = omega @ xi.T @ np.linalg.inv(xi @ omega @ xi.T)
        assert rel(m, k @ yi) < 1e-10
        assert rel(c, omega - k @ xi @ omega) < 1e-10
        assert v == pytest.approx(q @ (omega - k @ xi @ omega) @ q, rel=1e-10)


def test_least_squares_with_n_lt_d_is_the_minimum_norm_interpolant():
    d, n = 6, 3
    with jax.enable_x64(True):
        p = icl.LinearRegressionTask.isotropic(d, 0.3).sample(jax.random.key(5), 16, n)
        w = np.asarray(icl.least_squares_weights(p.x, p.y))
        pred = icl.least_squares()(p)
    x, y, xq = np_context(p)
    for xi, yi, wi in zip(x, y, w):
        np.testing.assert_allclose(xi @ wi, yi, rtol=1e-10, atol=1e-12)  # interpolates
        coef, *_ = np.linalg.lstsq(xi.T, wi, rcond=None)  # w = X^T alpha: in the row space of X
        assert rel(xi.T @ coef, wi) < 1e-10
        assert rel(wi, np.linalg.lstsq(xi, yi, rcond=None)[0]) < 1e-10
        assert rel(wi, np.linalg.pinv(xi) @ yi) < 1e-10
    assert rel(pred, np.einsum("bd,bd->b", xq, w)) < 1e-10


@pytest.mark.parametrize("n", [4, 8, 30])
def test_least_squares_with_n_ge_d_equals_numpy_lstsq(n):
    d = 4
    with jax.enable_x64(True):
        p = icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0, 0.5, 1.0], noise_std=0.5).sample(
            jax.random.key(6), 16, n)
        w = np.asarray(icl.least_squares_weights(p.x, p.y))
    x, y, _ = np_context(p)
    for xi, yi, wi in zip(x, y, w):
        ref = np.linalg.lstsq(xi, yi, rcond=None)[0]
        assert rel(wi, ref) < 1e-10


def test_recursive_least_squares_equals_ridge_on_every_prefix():
    d, n, lam = 3, 12, 0.3
    with jax.enable_x64(True):
        p = icl.LinearRegressionTask.isotropic(d, 0.5).sample(jax.random.key(7), 16, n)
        ws = np.asarray(icl.recursive_least_squares_weights(p.x, p.y, lam))
        w_full = icl.ridge_weights(p.x, p.y, lam)
    assert ws.shape == (16, n, d)
    assert rel(ws[:, -1], w_full) < 1e-10
    x, y, _ = np_context(p)
    for k in range(1, n + 1):  # ridge on the first k pairs, (X_k^T X_k + lam I)^-1 X_k^T y_k
        xk, yk = x[:, :k], y[:, :k]
        ridge_k = np.linalg.solve(np.swapaxes(xk, 1, 2) @ xk + lam * np.eye(d), np.einsum("bnd,bn->bd", xk, yk)[..., None])[..., 0]
        assert rel(ws[:, k - 1], ridge_k) < 1e-10


def test_ridge_weights_equal_numpy_normal_equations():
    d, n, lam = 3, 5, 0.8
    with jax.enable_x64(True):
        p = icl.LinearRegressionTask.isotropic(d, 0.5).sample(jax.random.key(8), 8, n)
        w = icl.ridge_weights(p.x, p.y, lam)
    x, y, _ = np_context(p)
    expected = np.stack([np.linalg.solve(xi.T @ xi + lam * np.eye(d), xi.T @ yi) for xi, yi in zip(x, y)])
    assert rel(w, expected) < 1e-10


def numpy_gd(x, y, etas, precs):
    n = x.shape[0]
    w = np.zeros(x.shape[1])
    for eta, prec in zip(etas, precs):
        w = w - eta * prec @ (x.T @ (x @ w - y) / n)
    return w


@pytest.mark.parametrize("prec_kind", ["identity", "shared", "per_step"])
def test_gd_weights_equal_explicit_numpy_loop(prec_kind):
    d, n, k = 3, 7, 4
    rng = np.random.default_rng(0)
    etas = rng.uniform(0.1, 0.8, k)
    if prec_kind == "identity":
        prec, precs = None, np.broadcast_to(np.eye(d), (k, d, d))
    elif prec_kind == "shared":
        prec = np.eye(d) + 0.3 * rng.standard_normal((d, d))
        precs = np.broadcast_to(prec, (k, d, d))
    else:
        prec = precs = np.eye(d) + 0.3 * rng.standard_normal((k, d, d))
    with jax.enable_x64(True):
        p = icl.LinearRegressionTask.isotropic(d, 0.5).sample(jax.random.key(9), 8, n)
        w = icl.gd_weights(p.x, p.y, etas, prec)
        pred = icl.gradient_descent(etas, prec)(p)
    x, y, xq = np_context(p)
    expected = np.stack([numpy_gd(xi, yi, etas, precs) for xi, yi in zip(x, y)])
    assert rel(w, expected) < 1e-10
    assert rel(pred, np.einsum("bd,bd->b", xq, expected)) < 1e-10


def test_one_gd_step_is_eta_times_h_and_averaging_is_h():
    d, n, eta = 3, 6, 0.45
    with jax.enable_x64(True):
        p = icl.LinearRegressionTask.isotropic(d, 0.5).sample(jax.random.key(10), 8, n)
        h = np.einsum("bnd,bn->bd", p.x, p.y) / n
        assert rel(icl.gd_weights(p.x, p.y, eta), eta * h) < 1e-12
        assert rel(icl.averaging()(p), np.einsum("bd,bd->b", p.x_query, h)) < 1e-12


def test_noiseless_least_squares_error_per_dim_is_one_minus_n_over_d_by_monte_carlo():
    d, n = 8, 3
    with jax.enable_x64(True):
        p = icl.LinearRegressionTask.isotropic(d, 0.0).sample(jax.random.key(11), 50_000, n)
        errors = np.asarray((icl.least_squares()(p) - p.y_query) ** 2) / d
    mean, se = mean_se(errors)
    assert abs(mean - (1 - n / d)) <= 4 * se, (mean, se)


@pytest.mark.parametrize("lam", [0.0, -1.0, float("nan")])
def test_ridge_and_rls_reject_non_positive_lambda(lam):
    with pytest.raises(ValueError, match=r"\blam\b"):
        icl.ridge(lam)
    x, y = np.ones((1, 2, 2)), np.ones((1, 2))
    with pytest.raises(ValueError, match=r"\blam\b"):
        icl.recursive_least_squares_weights(x, y, lam)


@pytest.mark.parametrize("bad", [np.eye(4), np.ones((2, 3, 3)), np.ones(3)])
def test_gd_weights_rejects_preconditioner_of_wrong_shape(bad):
    x, y = np.ones((2, 5, 3), np.float32), np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match="preconditioner"):
        icl.gd_weights(x, y, [0.1, 0.2, 0.3], bad)


def test_gd_weights_rejects_two_dimensional_step_sizes():
    x, y = np.ones((2, 5, 3), np.float32), np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match="step_sizes"):
        icl.gd_weights(x, y, np.ones((2, 2)))
