"""Several steps (docs/theory.md §6): exact Wishart moments, exact K-step GD and GD++ risks, optimal step sizes."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from helpers import assert_close, assert_within_se, mean_se

import icl

OMEGA = np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 1.5]])


def general_task(noise=0.4, prior=OMEGA):
    """Non-isotropic Sigma, noise, and (by default) an Omega that is neither I nor Sigma^-1."""
    return icl.LinearRegressionTask.from_eigenvalues([2.0, 1.0, 0.3], noise_std=noise, w_prior=prior, rotation_seed=3)


def gaussian_prompts(task, n, count, seed):
    rng = np.random.default_rng(seed)
    lx, lw = np.linalg.cholesky(task.x_cov), np.linalg.cholesky(task.w_cov)
    x = rng.standard_normal((count, n + 1, task.d)) @ lx.T
    w = rng.standard_normal((count, task.d)) @ lw.T
    y = np.einsum("bnd,bd->bn", x, w) + task.noise_std * rng.standard_normal((count, n + 1))
    return x[:, :n], y[:, :n], x[:, n], y[:, n]


def gd_plus_plus_numpy(x, y, xq, etas, gammas, prec):
    """K steps of Sigma^-1-preconditioned GD++ by their definition (von Oswald §4; GD when gammas are 0)."""
    n = x.shape[1]
    r, pred = y.copy(), np.zeros(len(y))
    for layer, eta in enumerate(etas):
        g = np.einsum("bnd,bn->bd", x, r) / n @ prec.T  # P X^T r / n
        r = r - eta * np.einsum("bnd,bd->bn", x, g)
        pred = pred + eta * np.einsum("bd,bd->b", xq, g)
        if layer < len(etas) - 1:
            s = np.einsum("bni,bnj->bij", x, x) / n
            transform = np.eye(x.shape[2]) - gammas[layer] * s @ prec  # x <- (I - gamma S P) x
            x = np.einsum("bij,bnj->bni", transform, x)
            xq = np.einsum("bij,bj->bi", transform, xq)
    return pred


def test_wishart_trace_moments_match_closed_forms_and_monte_carlo():
    for n, d in [(20, 5), (3, 7), (1, 1)]:
        m = icl.wishart_trace_moments(n, d, 3)
        assert m[0] == d and m[1] == pytest.approx(d, rel=1e-15)
        assert m[2] == pytest.approx(d * (n + d + 1) / n, rel=1e-15)
        # E tr W^3 = n d (n^2 + d^2 + 3 n d + 3 n + 3 d + 4) for a real Wishart W_d(n, I)
        assert m[3] == pytest.approx(d * (n**2 + d**2 + 3 * n * d + 3 * n + 3 * d + 4) / n**2, rel=1e-15)
    n, d = 6, 3
    z = np.random.default_rng(0).standard_normal((100_000, n, d))
    s = np.einsum("bni,bnj->bij", z, z) / n
    m = icl.wishart_trace_moments(n, d, 5)
    power = np.broadcast_to(np.eye(d), s.shape)
    for j in range(1, 6):
        power = power @ s
        assert_within_se(*mean_se(np.trace(power, axis1=1, axis2=2)), m[j], what=f"m_{j}")


def test_one_step_risk_of_the_multistep_formula_equals_the_one_layer_closed_form():
    task = general_task()
    sigma_inv = np.linalg.inv(task.x_cov)
    etas = np.array([[0.3], [0.77], [1.4]])
    risks = icl.multistep_gd_risk(etas, task, 7)  # [..., K] -> [...]
    assert risks.shape == (3,) and risks.dtype == np.float64
    assert_close(risks, icl.risk(etas[:, :, None] * sigma_inv, task, 7))
    assert_close(icl.gd_plus_plus_risk([0.5, 0.9], [0.0], task, 7), icl.multistep_gd_risk([0.5, 0.9], task, 7))


@pytest.mark.parametrize("gammas", [[0.0, 0.0], [0.25, 0.1]], ids=["gd", "gd_plus_plus"])
def test_multistep_gd_and_gd_plus_plus_risks_match_monte_carlo_within_4_se(gammas):
    """General Sigma, Omega and noise; Sigma^-1-preconditioned GD / GD++ (the exact formula's class)."""
    task, n, etas = general_task(), 8, [0.5, 1.1, 0.8]
    x, y, xq, yq = gaussian_prompts(task, n, 60_000, seed=1)
    pred = gd_plus_plus_numpy(x, y, xq, etas, gammas, np.linalg.inv(task.x_cov))
    assert_within_se(*mean_se((pred - yq) ** 2), icl.gd_plus_plus_risk(etas, gammas, task, n))


@pytest.mark.parametrize("k", [1, 2])
def test_optimal_step_sizes_match_a_coarse_then_fine_brute_force_grid(k):
    task, n = general_task(), 10
    steps, r = icl.optimal_multistep_step_sizes(task, n, k)
    grid = np.stack(np.meshgrid(*[np.linspace(0.05, 3.0, 60 if k == 1 else 30)] * k, indexing="ij"), -1).reshape(-1, k)
    coarse = np.sort(grid[np.argmin(icl.multistep_gd_risk(grid, task, n))])
    width = 3.0 / 30
    mesh = np.stack(np.meshgrid(*[np.linspace(c - width, c + width, 41) for c in coarse], indexing="ij"), -1)
    mesh = mesh.reshape(-1, k)
    risks = icl.multistep_gd_risk(mesh, task, n)
    np.testing.assert_allclose(steps, np.sort(mesh[np.argmin(risks)]), atol=2 * width / 40)
    assert r <= risks.min() + 1e-12  # the closed-form optimum is at least as good as every grid point


def test_optimal_step_sizes_reproduce_mahankali_thm_2_and_ahn_et_al():
    task = icl.LinearRegressionTask.from_eigenvalues([3.0, 1.0, 0.2, 0.5], noise_std=0.7, w_prior="inverse")
    steps, r = icl.optimal_multistep_step_sizes(task, 12, 1)
    assert steps[0] == pytest.approx(12 / (12 + 4 + 1 + 0.49), rel=1e-10)
    assert r == pytest.approx(icl.optimal_risk(task, 12), rel=1e-10)
    ahn = icl.LinearRegressionTask.from_eigenvalues([1, 1, 0.25, 0.0625, 1], w_prior="inverse", rotation_seed=0)
    steps, r = icl.optimal_multistep_step_sizes(ahn, 20, 3)
    np.testing.assert_allclose(steps, [0.42240853, 0.68912609, 1.71421738], rtol=1e-7)
    assert r / 5 == pytest.approx(0.0267217, rel=1e-5)
    # the paper's trained values {0.420, 0.686, 1.709} and loss/d ~ 0.0270 agree to ~1%
    np.testing.assert_allclose(steps, [0.420, 0.686, 1.709], rtol=0.01)
    risks = [icl.optimal_multistep_step_sizes(ahn, 20, k)[1] for k in (1, 2, 3, 4)]
    assert all(a > b for a, b in itertools.pairwise(risks))  # more steps never hurt


@pytest.mark.slow
def test_optimal_gd_plus_plus_beats_optimal_gd_and_reports_its_own_risk():
    task = icl.LinearRegressionTask.from_eigenvalues([1, 0.5, 0.25], w_prior="inverse", rotation_seed=0)
    steps, gammas, r = icl.optimal_gd_plus_plus(task, 10, 2, iterations=60, gamma_starts=(0.0,))
    assert steps.shape == (2,) and gammas.shape == (1,) and isinstance(r, float)
    assert r < icl.optimal_multistep_step_sizes(task, 10, 2)[1]
    assert r == pytest.approx(icl.gd_plus_plus_risk(steps, gammas, task, 10), rel=1e-12)
    with jax.enable_x64(True):  # the differentiable risk it was tuned on equals the float64 number
        coeffs = icl.gd_plus_plus_polynomial(np.array([0.6, 1.2]), np.array([0.25]))
        assert_close(float(icl.polynomial_risk(coeffs, task, 8)), icl.gd_plus_plus_risk([0.6, 1.2], [0.25], task, 8))


def test_residual_polynomial_coefficients():
    np.testing.assert_allclose(np.asarray(icl.gd_polynomial([2.0, 3.0])), [1.0, -5.0, 6.0])
    np.testing.assert_allclose(np.asarray(icl.gd_plus_plus_polynomial([2.0], [])), [1.0, -2.0])


def test_invalid_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="gammas must hold"):
        icl.gd_plus_plus_risk([1.0, 2.0, 3.0], [0.1], general_task(), 5)
    with pytest.raises(ValueError, match="num_steps"):
        icl.optimal_multistep_step_sizes(general_task(), 5, 0)
    with pytest.raises(ValueError, match="max_power"):
        icl.wishart_trace_moments(5, 2, -1)
    with pytest.raises(ValueError, match="step_sizes"):
        icl.multistep_gd_risk([float("nan")], general_task(), 5)
    with pytest.raises(ValueError, match=r"\bn\b"):
        icl.multistep_gd_risk([0.5], general_task(), 0)
