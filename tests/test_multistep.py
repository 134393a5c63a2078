"""icl.multistep: exact Wishart moments, exact K-step GD / GD++ risks, optimal step sizes, Ahn's sparse model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import icl
from icl.multistep import (
    SparseLinearTransformer,
    gd_plus_plus,
    gd_plus_plus_polynomial,
    gd_plus_plus_risk,
    gd_plus_plus_weights,
    gd_polynomial,
    layer_preconditioners,
    multistep_gd_risk,
    optimal_gd_plus_plus,
    optimal_multistep_step_sizes,
    whiten_preconditioner,
    wishart_trace_moments,
)

N_MC = 200_000


def assert_within_4_se(values, expected):
    v = np.asarray(values, np.float64)
    mean, se = v.mean(), v.std(ddof=1) / np.sqrt(v.size)
    assert abs(mean - float(expected)) <= 4 * se, f"MC {mean:.6g} ± {se:.3g} vs closed form {float(expected):.6g}"


def general_task(noise=0.4, prior=None):
    """Non-isotropic Sigma, noise, and (by default) an Omega that is neither I nor Sigma^-1."""
    omega = np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 1.5]]) if prior is None else prior
    return icl.LinearRegressionTask.from_eigenvalues([2.0, 1.0, 0.3], noise_std=noise, w_prior=omega, rotation_seed=3)


def mc_prompts(task, n, seed, count=N_MC):
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(seed), count, n)
    return p


def test_wishart_trace_moments_match_the_closed_forms_for_low_powers():
    for n, d in [(20, 5), (3, 7), (1, 1)]:
        m = wishart_trace_moments(n, d, 3)
        assert m[0] == d and m[1] == pytest.approx(d, rel=1e-15)
        assert m[2] == pytest.approx(d * (n + d + 1) / n, rel=1e-15)
        # E tr W^3 = n d (n^2 + d^2 + 3 n d + 3 n + 3 d + 4) for a real Wishart W_d(n, I)
        assert m[3] == pytest.approx(d * (n**2 + d**2 + 3 * n * d + 3 * n + 3 * d + 4) / n**2, rel=1e-15)


def test_wishart_trace_moments_match_monte_carlo_within_4_se():
    n, d = 6, 3
    z = np.random.default_rng(0).standard_normal((N_MC, n, d))
    s = np.einsum("bni,bnj->bij", z, z) / n
    m = wishart_trace_moments(n, d, 5)
    power = np.broadcast_to(np.eye(d), s.shape)
    for j in range(1, 6):
        power = power @ s
        assert_within_4_se(np.trace(power, axis1=1, axis2=2), m[j])


def test_one_step_gd_risk_equals_the_one_layer_closed_form_in_float64():
    task = general_task()
    with jax.enable_x64(True):
        sigma_inv = np.linalg.inv(task.x_cov)
        for eta in (0.3, 0.77, 1.4):
            exact = float(multistep_gd_risk(jnp.array([eta]), task, 7))
            assert exact == pytest.approx(float(icl.risk(eta * sigma_inv, task, 7)), rel=1e-10)
        iso = icl.LinearRegressionTask.isotropic(4, noise_std=0.5, tau=1.3)
        expected = 4 * 1.69 * (1 - 2 * 0.6 + 0.36 * (10 + 4 + 1 + 0.25 / 1.69) / 10) + 0.25  # THEORY.md §3
        assert float(multistep_gd_risk(jnp.array([0.6]), iso, 10)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("steps", [[0.5, 1.1], [0.3, 0.9, 1.6]])
def test_multistep_gd_risk_matches_monte_carlo_within_4_se(steps):
    """General Sigma, Omega and noise; GD preconditioned by Sigma^-1 (the exact formula's class)."""
    task, n = general_task(), 8
    p = mc_prompts(task, n, seed=1)
    with jax.enable_x64(True):
        pred = icl.gradient_descent(jnp.asarray(steps), np.linalg.inv(task.x_cov))(p)
        errors = np.asarray((pred - p.y_query) ** 2)
        exact = float(multistep_gd_risk(jnp.asarray(steps), task, n))
    assert_within_4_se(errors, exact)


def grid_minimum(task, n, k, lo, hi, points):
    """Brute force: exact risk on a k-dimensional grid; returns (best step sizes sorted, best risk)."""
    axes = [np.linspace(lo, hi, points)] * k
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, k)
    with jax.enable_x64(True):
        risks = np.asarray(jax.vmap(lambda e: multistep_gd_risk(e, task, n))(jnp.asarray(mesh)))
    best = int(np.argmin(risks))
    return np.sort(mesh[best]), float(risks[best])


@pytest.mark.parametrize("k", [1, 2])
def test_optimal_step_sizes_match_a_coarse_then_fine_brute_force_grid(k):
    task, n = general_task(), 10
    steps, r = optimal_multistep_step_sizes(task, n, k)
    coarse, _ = grid_minimum(task, n, k, 0.05, 3.0, 60 if k == 1 else 30)
    width = 3.0 / 30
    fine_axes = [np.linspace(c - width, c + width, 41) for c in coarse]
    mesh = np.stack(np.meshgrid(*fine_axes, indexing="ij"), -1).reshape(-1, k)
    with jax.enable_x64(True):
        risks = np.asarray(jax.vmap(lambda e: multistep_gd_risk(e, task, n))(jnp.asarray(mesh)))
    fine = np.sort(mesh[int(np.argmin(risks))])
    np.testing.assert_allclose(steps, fine, atol=2 * width / 40)
    assert r <= risks.min() + 1e-12  # the closed-form optimum is at least as good as every grid point


def test_optimal_one_step_size_is_mahankali_theorem_2_for_the_inverse_prior():
    task = icl.LinearRegressionTask.from_eigenvalues([3.0, 1.0, 0.2, 0.5], noise_std=0.7, w_prior="inverse")
    steps, r = optimal_multistep_step_sizes(task, 12, 1)
    assert steps[0] == pytest.approx(12 / (12 + 4 + 1 + 0.49), rel=1e-10)
    with jax.enable_x64(True):
        assert r == pytest.approx(float(icl.optimal_risk(task, 12)), rel=1e-10)


def test_optimal_three_step_sizes_reproduce_ahn_et_al_setting():
    task = icl.LinearRegressionTask.from_eigenvalues([1, 1, 0.25, 0.0625, 1], w_prior="inverse", rotation_seed=0)
    steps, r = optimal_multistep_step_sizes(task, 20, 3)
    np.testing.assert_allclose(steps, [0.42240853, 0.68912609, 1.71421738], rtol=1e-7)
    assert r / 5 == pytest.approx(0.0267217, rel=1e-5)
    # the paper's trained values {0.420, 0.686, 1.709} and loss/d ~ 0.0270 agree to ~1%
    np.testing.assert_allclose(steps, [0.420, 0.686, 1.709], rtol=0.01)
    assert r / 5 == pytest.approx(0.0270, rel=0.015)
    # more steps never hurt: the optimal risk falls with K
    risks = [optimal_multistep_step_sizes(task, 20, k)[1] for k in (1, 2, 3, 4)]
    assert all(b < a for a, b in zip(risks, risks[1:]))


def test_gd_plus_plus_with_zero_gammas_is_gd_in_float64():
    task, n = general_task(), 6
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(2), 64, n)
        prec = np.linalg.inv(task.x_cov)
        a = gd_plus_plus_weights(p.x, p.y, jnp.array([0.4, 0.9, 1.3]), jnp.zeros(2), prec)
        b = icl.gd_weights(p.x, p.y, jnp.array([0.4, 0.9, 1.3]), prec)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


def test_gd_plus_plus_weights_equal_the_residual_polynomial_q_of_S_times_h_in_float64():
    """Isotropic problem, P = I: w = q(S) h with q = (1 - p)/lam and p from gd_plus_plus_polynomial."""
    n, d = 7, 3
    with jax.enable_x64(True):
        etas, gammas = jnp.array([0.5, 0.8, 1.2]), jnp.array([0.3, 0.15])
        p = icl.LinearRegressionTask.isotropic(d, 0.3).sample(jax.random.key(4), 16, n)
        w = np.asarray(gd_plus_plus_weights(p.x, p.y, etas, gammas))
        coeffs = np.asarray(gd_plus_plus_polynomial(etas, gammas))
        x, y = np.asarray(p.x), np.asarray(p.y)
    s = np.einsum("bni,bnj->bij", x, x) / n
    h = np.einsum("bnd,bn->bd", x, y) / n
    q_of_s = np.zeros_like(s)
    power = np.broadcast_to(np.eye(d), s.shape)
    for c in -coeffs[1:]:
        q_of_s = q_of_s + c * power
        power = power @ s
    np.testing.assert_allclose(w, np.einsum("bij,bj->bi", q_of_s, h), rtol=1e-9, atol=1e-12)


def test_gd_plus_plus_risk_matches_monte_carlo_within_4_se():
    task, n = general_task(prior="inverse"), 8
    etas, gammas = jnp.array([0.6, 1.2]), jnp.array([0.25])
    p = mc_prompts(task, n, seed=5)
    with jax.enable_x64(True):
        pred = gd_plus_plus(etas, gammas, np.linalg.inv(task.x_cov))(p)
        errors = np.asarray((pred - p.y_query) ** 2)
        exact = float(gd_plus_plus_risk(etas, gammas, task, n))
    assert_within_4_se(errors, exact)


def test_optimal_gd_plus_plus_beats_optimal_gd_and_reports_its_own_risk():
    task = icl.LinearRegressionTask.from_eigenvalues([1, 0.5, 0.25], w_prior="inverse", rotation_seed=0)
    steps, gammas, r = optimal_gd_plus_plus(task, 10, 2, iterations=60, gamma_starts=(0.0,))
    _, r_gd = optimal_multistep_step_sizes(task, 10, 2)
    assert steps.shape == (2,) and gammas.shape == (1,)
    assert r < r_gd
    with jax.enable_x64(True):
        exact = float(gd_plus_plus_risk(jnp.asarray(steps), jnp.asarray(gammas), task, 10))
    assert exact == pytest.approx(r, rel=1e-10)


def test_gd_polynomial_coefficients():
    np.testing.assert_allclose(np.asarray(gd_polynomial([2.0, 3.0])), [1.0, -5.0, 6.0])
    np.testing.assert_allclose(np.asarray(gd_plus_plus_polynomial([2.0], [])), [1.0, -2.0])


def test_sparse_transformer_is_preconditioned_gd_with_its_layer_matrices_in_float64():
    task, n = general_task(), 9
    with jax.enable_x64(True):
        model = SparseLinearTransformer(3, 3, init_scale=0.4, rngs=nnx.Rngs(0))
        p = task.sample(jax.random.key(6), 32, n)
        precs = layer_preconditioners(model)  # A_l^T
        gd = icl.gradient_descent(jnp.ones(3), precs)(p)
        np.testing.assert_allclose(np.asarray(model(p)), np.asarray(gd), rtol=1e-10, atol=1e-12)


def test_sparse_layers_read_out_with_ahn_sign_and_their_full_matrices_run_the_same_tokens():
    """The same (W^PV, W^KQ) in icl.LinearTransformer (+ read-out) predict exactly the negative."""
    d, num_layers = 3, 2
    with jax.enable_x64(True):
        sparse = SparseLinearTransformer(d, num_layers, init_scale=0.5, rngs=nnx.Rngs(1))
        full = icl.LinearTransformer(d, num_layers, init_scale=0.0, rngs=nnx.Rngs(0))
        for dense_layer, sparse_layer in zip(full.layers, sparse.layers):
            dense_layer.w_pv[...] = sparse_layer.w_pv
            dense_layer.w_kq[...] = sparse_layer.w_kq
            np.testing.assert_allclose(np.asarray(icl.implied_preconditioner(sparse_layer)),
                                       -np.asarray(sparse_layer.a_mat[...]).T, atol=0)
        p = general_task().sample(jax.random.key(7), 16, 5)
        np.testing.assert_allclose(np.asarray(full(p)), -np.asarray(sparse(p)), rtol=1e-10, atol=1e-12)


def test_layer_preconditioners_reads_a_model_and_parameters_with_a_seed_axis():
    keys = jax.random.split(jax.random.key(0), 2)
    graphdef, _ = nnx.split(SparseLinearTransformer(3, 2, rngs=nnx.Rngs(0)))
    params = jax.vmap(lambda k: nnx.split(SparseLinearTransformer(3, 2, rngs=nnx.Rngs(params=k)))[1])(keys)
    stacked = np.asarray(layer_preconditioners(params))  # what icl.train's result.params look like
    assert stacked.shape == (2, 2, 3, 3)
    for i in range(2):
        model = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], params))
        np.testing.assert_allclose(stacked[i], np.asarray(layer_preconditioners(model)))
        np.testing.assert_allclose(stacked[i, 1], np.asarray(model.layers[1].a_mat[...]).T)


def test_whiten_preconditioner_maps_scaled_inverse_covariance_to_scaled_identity():
    task = general_task()
    a = np.stack([0.7 * np.linalg.inv(task.x_cov), 1.9 * np.linalg.inv(task.x_cov)])
    np.testing.assert_allclose(whiten_preconditioner(a, task.x_cov), np.array([0.7, 1.9])[:, None, None] * np.eye(3),
                               atol=1e-12)


def test_invalid_arguments_raise_with_clear_messages():
    with pytest.raises(ValueError, match="gammas must hold"):
        gd_plus_plus_polynomial([1.0, 2.0, 3.0], [0.1])
    with pytest.raises(ValueError, match="num_steps"):
        optimal_multistep_step_sizes(general_task(), 5, 0)
    with pytest.raises(ValueError, match="max_power"):
        wishart_trace_moments(5, 2, -1)
    with pytest.raises(ValueError, match="preconditioner"):
        gd_plus_plus_weights(jnp.zeros((1, 4, 3)), jnp.zeros((1, 4)), [1.0], [], np.eye(2))
