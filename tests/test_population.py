"""icl.population: the exact population loss in (c, A), the conserved quantity and the exact gradient flow."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl
from icl.population import (
    conserved_quantity,
    gradient_flow_limit,
    lsa_from_parameters,
    population_loss,
    query_marginal_loss,
    train_population,
    zfb_initialization,
)

N_MC = 200_000
EIGS = [2.0, 0.7, 0.3]


def mean_se(values):
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


def task_for(prior="isotropic", noise=0.0):
    return icl.LinearRegressionTask.from_eigenvalues(EIGS, noise_std=noise, w_prior=prior, rotation_seed=2)


def zfb_gamma(task, n):
    lam = np.asarray(task.x_cov)
    return np.linalg.inv((1 + 1 / n) * lam + np.trace(lam) / n * np.eye(lam.shape[0]))


def test_lsa_from_parameters_predicts_x_q_transpose_c_A_transpose_h_in_float64():
    rng = np.random.default_rng(0)
    c, a = 1.7, rng.standard_normal((3, 3))
    with jax.enable_x64(True):
        p = task_for(noise=0.3).sample(jax.random.key(0), 32, 6)
        model = lsa_from_parameters(c, a)
        h = np.einsum("bnd,bn->bd", np.asarray(p.x), np.asarray(p.y)) / 6
        expected = np.einsum("bi,ij,bj->b", np.asarray(p.x_query), c * a.T, h)
        np.testing.assert_allclose(np.asarray(model(p)), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prior,noise", [("isotropic", 0.0), ("inverse", 0.5)])
def test_population_loss_matches_monte_carlo_of_the_lsa_layer_within_4_se(prior, noise):
    task, n = task_for(prior, noise), 7
    rng = np.random.default_rng(1)
    c, a = 0.8, 0.4 * rng.standard_normal((3, 3)) + 0.5 * np.eye(3)
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(1), N_MC, n)
        errors = np.asarray((lsa_from_parameters(c, a)(p) - p.y_query) ** 2)
        exact = float(population_loss(c, a, task, n))
    mean, se = mean_se(errors)
    assert abs(mean - exact) <= 4 * se, f"MC {mean:.6g} ± {se:.3g} vs closed form {exact:.6g}"


def test_query_marginal_loss_has_the_population_mean_and_a_smaller_variance():
    task, n = task_for("isotropic", 0.4), 6
    c, a = 1.1, np.diag([0.5, 0.8, 1.2])
    model = lsa_from_parameters(c, a)
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(2), 100_000, n)
        err = np.asarray(icl.sensitivities(model, p) - p.w)
        per_prompt = np.einsum("bi,ij,bj->b", err, task.x_cov, err) + 0.16  # E over the query and its noise
        batch_loss = float(query_marginal_loss(task)(model, p))
        sampled = np.asarray((model(p) - p.y_query) ** 2)
        exact = float(population_loss(c, a, task, n))
    assert batch_loss == pytest.approx(per_prompt.mean(), rel=1e-10)
    mean, se = mean_se(per_prompt)
    assert abs(mean - exact) <= 4 * se
    assert per_prompt.var() < 0.5 * sampled.var()


def test_zfb_initialization_is_balanced_so_the_conserved_quantity_is_zero():
    c0, a0 = zfb_initialization(4, 0.05, seed=3)
    assert c0 == 0.05
    np.testing.assert_allclose(a0, a0.T)
    assert np.linalg.norm(a0) == pytest.approx(0.05, rel=1e-12)
    assert abs(c0**2 - np.sum(a0**2)) < 1e-15
    with pytest.raises(ValueError, match="scale"):
        zfb_initialization(4, 0.0)


def test_gradient_flow_from_zfb_init_reaches_their_closed_form_limit():
    """ZFB Thm 4.1: W^PV_22 -> ||Gamma*||^{1/2}, W^KQ_11 -> Gamma*/||Gamma*||^{1/2}, Gamma* from their formula."""
    task, n = task_for(), 10
    c0, a0 = zfb_initialization(3, 0.01, seed=0)
    flow = train_population(task, n, c0, a0, records=20)
    gamma = zfb_gamma(task, n)
    root = np.sqrt(np.linalg.norm(gamma))
    assert float(flow.c) == pytest.approx(root, rel=1e-7)
    np.testing.assert_allclose(flow.a_mat, gamma / root, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(flow.gamma, gamma, rtol=1e-6, atol=1e-9)
    assert np.abs(flow.conserved).max() < 1e-8  # Q = 0 throughout
    with jax.enable_x64(True):
        assert flow.losses[-1] == pytest.approx(float(icl.optimal_risk(task, n)), rel=1e-10)
    assert np.all(np.diff(flow.losses) <= 1e-12)  # gradient flow never increases the loss


def test_gradient_flow_limit_is_set_by_the_conserved_quantity_for_unbalanced_starts():
    task, n = task_for("inverse", 0.3), 8
    a0 = 0.05 * np.random.default_rng(4).standard_normal((2, 3, 3))
    c0 = np.array([1.5, -0.7])  # two unbalanced starts side by side (vmapped), one with c < 0
    flow = train_population(task, n, c0, a0, records=10)
    q0 = c0**2 - np.sum(a0**2, axis=(1, 2))
    np.testing.assert_allclose(flow.conserved[:, -1], q0, atol=2e-5)  # RK4 keeps Q to O(dt^4), not exactly
    with jax.enable_x64(True):
        gamma_star = np.asarray(icl.optimal_gamma(task, n))
    for i in range(2):
        c_star, a_star = gradient_flow_limit(task, n, q0[i], np.sign(c0[i]))
        assert flow.c[i] == pytest.approx(c_star, rel=1e-6)
        np.testing.assert_allclose(flow.a_mat[i], a_star, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(flow.gamma[i], gamma_star, rtol=1e-5, atol=1e-8)
        assert float(conserved_quantity(c_star, a_star)) == pytest.approx(q0[i], abs=1e-5)


def test_euler_method_is_plain_gradient_descent_on_the_population_loss():
    task, n, dt = task_for(), 5, 0.01
    c0, a0 = zfb_initialization(3, 0.3, seed=5)
    flow = train_population(task, n, c0, a0, flow_time=5 * dt, dt=dt, method="euler", records=1)
    assert flow.steps == 5
    with jax.enable_x64(True):
        grad = jax.grad(lambda ca: population_loss(ca[0], ca[1], task, n))
        params = (jnp.asarray(c0), jnp.asarray(a0))
        for _ in range(5):
            params = jax.tree.map(lambda p, g: p - dt * g, params, grad(params))
        np.testing.assert_allclose(flow.c, np.asarray(params[0]), rtol=1e-12)
        np.testing.assert_allclose(flow.a_mat, np.asarray(params[1]), rtol=1e-12, atol=1e-15)


def test_train_population_rejects_bad_arguments():
    task = task_for()
    c0, a0 = zfb_initialization(3, 0.1)
    with pytest.raises(ValueError, match="method"):
        train_population(task, 5, c0, a0, method="leapfrog")
    with pytest.raises(ValueError, match="a0 must have shape"):
        train_population(task, 5, c0, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="dt and flow_time"):
        train_population(task, 5, c0, a0, dt=-1.0)


def test_full_lsa_gradient_vanishes_at_the_flow_limit_so_b_and_a_stay_zero():
    """At (c*, A*) with every other entry 0, the Monte Carlo gradient of the *full* one-layer LSA loss (all of
    W^PV and W^KQ) is zero within 5 SE per entry, and exactly zero for entries that cannot reach the prediction:
    the reduction to (c, A) loses nothing (b = a = 0 is invariant, the limit is a critical point)."""
    from flax import nnx

    task, n = task_for(), 6
    c_star, a_star = gradient_flow_limit(task, n)
    with jax.enable_x64(True):
        model = lsa_from_parameters(c_star, a_star)
        graphdef, params = nnx.split(model)
        p = task.sample(jax.random.key(9), 40_000, n)

        def per_prompt_loss(q, prompt):
            one = jax.tree.map(lambda t: t[None], prompt)
            return jnp.sum((nnx.merge(graphdef, q)(one) - one.y_query) ** 2)

        grads = jax.vmap(jax.grad(per_prompt_loss), in_axes=(None, 0))(params, p)
        layer = grads["layers"][0]
        for name in ("w_pv", "w_kq"):
            g = np.asarray(layer[name][...]).reshape(40_000, -1)
            mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(g.shape[0])
            silent = se == 0
            assert np.all(mean[silent] == 0)
            assert np.all(np.abs(mean[~silent]) <= 5 * se[~silent]), (name, np.max(np.abs(mean[~silent]) / se[~silent]))
    d = 3
    g_pv = np.asarray(layer["w_pv"][...])
    assert np.all(g_pv[:, :d] == 0)  # rows 1..d of W^PV never reach the last coordinate of the query
