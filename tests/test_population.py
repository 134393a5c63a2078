"""Exact population training of one LSA layer (ZFB Thm 4.1; docs/theory.md §2): the loss, the conserved
quantity and the gradient flow, without sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import icl

EIGS = [2.0, 0.7, 0.3]


def task_for(prior="isotropic", noise=0.0):
    return icl.LinearRegressionTask.from_eigenvalues(EIGS, noise_std=noise, w_prior=prior, rotation_seed=2)


def test_population_loss_is_the_closed_form_risk_of_c_a_transpose_in_float64_and_float32():
    task, n = task_for("inverse", 0.5), 7
    rng = np.random.default_rng(1)
    c, a = np.array([0.8, -1.3]), 0.4 * rng.standard_normal((2, 3, 3)) + 0.5 * np.eye(3)
    exact = icl.risk(c[:, None, None] * np.swapaxes(a, -1, -2), task, n)
    with jax.enable_x64(True):
        assert_close(np.asarray(icl.population_loss(c, a, task, n)), exact)
    f32 = icl.population_loss(jnp.asarray(c, jnp.float32), jnp.asarray(a, jnp.float32), task, n)
    assert f32.dtype == jnp.float32
    assert_close(np.asarray(f32), exact, rtol=1e-5)


def test_zfb_initialization_is_balanced_so_the_conserved_quantity_is_zero():
    c0, a0 = icl.zfb_initialization(4, 0.05, seed=3)
    assert c0 == 0.05
    np.testing.assert_allclose(a0, a0.T)
    assert np.linalg.norm(a0) == pytest.approx(0.05, rel=1e-12)
    assert abs(c0**2 - np.sum(a0**2)) < 1e-15
    assert float(icl.conserved_quantity(c0, a0)) == pytest.approx(0.0, abs=1e-9)  # the jnp version, float32
    with pytest.raises(ValueError, match="scale"):
        icl.zfb_initialization(4, 0.0)


def test_gradient_flow_from_zfb_init_reaches_their_closed_form_limit():
    """ZFB Thm 4.1: W^PV_22 -> ||Gamma*||^{1/2}, W^KQ_11 -> Gamma*/||Gamma*||^{1/2}, Gamma* from their formula."""
    task, n = task_for(), 10
    c0, a0 = icl.zfb_initialization(3, 0.01, seed=0)
    flow = icl.train_population(task, n, c0, a0, records=20)
    lam = task.x_cov
    gamma = np.linalg.inv((1 + 1 / n) * lam + np.trace(lam) / n * np.eye(3))
    root = np.sqrt(np.linalg.norm(gamma))
    assert float(flow.c) == pytest.approx(root, rel=1e-7)
    np.testing.assert_allclose(flow.a_mat, gamma / root, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(flow.gamma, gamma, rtol=1e-6, atol=1e-9)
    assert np.abs(flow.conserved).max() < 1e-8  # Q = 0 throughout
    assert flow.losses[-1] == pytest.approx(icl.optimal_risk(task, n), rel=1e-10)
    assert np.all(np.diff(flow.losses) <= 1e-12)  # gradient flow never increases the loss


def test_gradient_flow_limit_is_set_by_the_conserved_quantity_for_unbalanced_starts():
    task, n = task_for("inverse", 0.3), 8
    a0 = 0.05 * np.random.default_rng(4).standard_normal((2, 3, 3))
    c0 = np.array([1.5, -0.7])  # two unbalanced starts side by side (vmapped), one with c < 0
    flow = icl.train_population(task, n, c0, a0, records=10)
    q0 = c0**2 - np.sum(a0**2, axis=(1, 2))
    np.testing.assert_allclose(flow.conserved[:, -1], q0, atol=2e-5)  # RK4 keeps Q to O(dt^4), not exactly
    gamma_star = icl.optimal_gamma(task, n)
    for i in range(2):
        c_star, a_star = icl.gradient_flow_limit(task, n, q0[i], np.sign(c0[i]))
        assert flow.c[i] == pytest.approx(c_star, rel=1e-6)
        np.testing.assert_allclose(flow.a_mat[i], a_star, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(flow.gamma[i], gamma_star, rtol=1e-5, atol=1e-8)


def test_gradient_flow_works_on_every_law_with_a_closed_form():
    task, n = icl.UniformLinearTask(2, noise_std=0.2), 6
    flow = icl.train_population(task, n, 0.5, 0.5 * np.eye(2), records=5)
    np.testing.assert_allclose(flow.gamma, icl.optimal_gamma(task, n), rtol=1e-6)


def test_euler_method_is_plain_gradient_descent_on_the_population_loss():
    task, n, dt = task_for(), 5, 0.01
    c0, a0 = icl.zfb_initialization(3, 0.3, seed=5)
    flow = icl.train_population(task, n, c0, a0, flow_time=5 * dt, dt=dt, method="euler", records=1)
    assert flow.steps == 5
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(lambda ca: icl.population_loss(ca[0], ca[1], task, n)))
        params = (jnp.asarray(c0), jnp.asarray(a0))
        for _ in range(5):
            params = jax.tree.map(lambda p, g: p - dt * g, params, grad(params))
        np.testing.assert_allclose(flow.c, np.asarray(params[0]), rtol=1e-12)
        np.testing.assert_allclose(flow.a_mat, np.asarray(params[1]), rtol=1e-12, atol=1e-15)


def test_train_population_rejects_bad_arguments_naming_them():
    task = task_for()
    c0, a0 = icl.zfb_initialization(3, 0.1)
    with pytest.raises(ValueError, match="method"):
        icl.train_population(task, 5, c0, a0, method="leapfrog")
    with pytest.raises(ValueError, match="a0 must have shape"):
        icl.train_population(task, 5, c0, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="dt and flow_time"):
        icl.train_population(task, 5, c0, a0, dt=-1.0)
    with pytest.raises(ValueError, match="records"):
        icl.train_population(task, 5, c0, a0, records=0)


def test_lsa_from_parameters_predicts_x_q_transpose_c_a_transpose_h_in_float64():
    rng = np.random.default_rng(0)
    c, a = 1.7, rng.standard_normal((3, 3))
    x = rng.standard_normal((32, 7, 3))
    y = x @ rng.standard_normal(3) + 0.3 * rng.standard_normal((32, 7))
    with jax.enable_x64(True):
        p = icl.Prompts(x=jnp.asarray(x[:, :6]), y=jnp.asarray(y[:, :6]), x_query=jnp.asarray(x[:, 6]),
                        y_query=jnp.asarray(y[:, 6]))
        model = icl.lsa_from_parameters(c, a)
        h = np.einsum("bnd,bn->bd", np.asarray(p.x), np.asarray(p.y)) / 6
        expected = np.einsum("bi,ij,bj->b", np.asarray(p.x_query), c * a.T, h)
        np.testing.assert_allclose(np.asarray(model(p)), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_full_lsa_gradient_vanishes_at_the_flow_limit_so_b_and_a_stay_zero():
    """At (c*, A*) with every other entry 0, the Monte Carlo gradient of the full one-layer LSA loss (all of W^PV
    and W^KQ) is zero within 5 SE per entry: the reduction to (c, A) loses nothing."""
    from flax import nnx

    task, n = task_for(), 6
    c_star, a_star = icl.gradient_flow_limit(task, n)
    with jax.enable_x64(True):
        graphdef, params = nnx.split(icl.lsa_from_parameters(c_star, a_star))
        p = task.sample(jax.random.key(9), 40_000, n)

        def per_prompt_loss(q, prompt):
            one = jax.tree.map(lambda t: t[None], prompt)
            return jnp.sum((nnx.merge(graphdef, q)(one) - one.y_query) ** 2)

        grads = jax.vmap(jax.grad(per_prompt_loss), in_axes=(None, 0))(params, p)
        for g in jax.tree.leaves(grads):
            g = np.asarray(g).reshape(40_000, -1)
            mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(g.shape[0])
            assert np.all(mean[se == 0] == 0)
            assert np.all(np.abs(mean[se > 0]) <= 5 * se[se > 0])
