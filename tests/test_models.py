"""LSA layers and the linear transformer: forward pass, GD constructions, the implied preconditioner."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import icl


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def set_layer(layer, w_pv, w_kq):
    layer.w_pv[...] = jnp.asarray(w_pv)
    layer.w_kq[...] = jnp.asarray(w_kq)


def gd_construction(d: int, eta: float, prec=None) -> tuple[np.ndarray, np.ndarray]:
    """W^PV with last row [0, ..., 0, eta] and W^KQ = [[prec^T, 0], [0, 0]] (prec = I by default)."""
    w_pv = np.zeros((d + 1, d + 1))
    w_pv[d, d] = eta
    w_kq = np.zeros((d + 1, d + 1))
    w_kq[:d, :d] = np.eye(d) if prec is None else np.asarray(prec).T
    return w_pv, w_kq


def reference_forward(prompts: icl.Prompts, weights) -> tuple[np.ndarray, np.ndarray]:
    """THEORY.md §2 in plain numpy: E <- E + W^PV E M (E^T W^KQ E) / n per layer; returns final E per prompt."""
    x, y, xq = (np.asarray(a, np.float64) for a in (prompts.x, prompts.y, prompts.x_query))
    b, n, d = x.shape
    mask = np.diag(np.r_[np.ones(n), 0.0])
    out = []
    for i in range(b):
        e = np.zeros((d + 1, n + 1))
        e[:d, :n], e[d, :n], e[:d, n] = x[i].T, y[i], xq[i]
        for w_pv, w_kq in weights:
            e = e + w_pv @ e @ mask @ (e.T @ w_kq @ e) / n
        out.append(e)
    e = np.stack(out)
    return e, e[:, d, n]


def test_prompt_tokens_are_x_y_context_and_x_zero_query():
    task = icl.LinearRegressionTask.isotropic(3, 0.5)
    p = task.sample(jax.random.key(0), 4, 5)
    context, query = icl.prompt_tokens(p)
    assert context.shape == (4, 5, 4) and query.shape == (4, 4)
    np.testing.assert_array_equal(context[..., :3], p.x)
    np.testing.assert_array_equal(context[..., 3], p.y)
    np.testing.assert_array_equal(query[:, :3], p.x_query)
    np.testing.assert_array_equal(query[:, 3], 0.0)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_forward_pass_matches_matrix_form_of_theory_in_float64(num_layers):
    """Model output and all final tokens equal f(E) = E + W^PV E M (E^T W^KQ E)/n stacked, to 1e-10."""
    d, n = 3, 6
    with jax.enable_x64(True):
        model = icl.LinearTransformer(d, num_layers, init_scale=0.5, rngs=nnx.Rngs(1))
        task = icl.LinearRegressionTask.from_eigenvalues([1.0, 0.5, 2.0], noise_std=0.3)
        p = task.sample(jax.random.key(2), 5, n)
        weights = [(np.asarray(l.w_pv[...]), np.asarray(l.w_kq[...])) for l in model.layers]
        e_ref, y_ref = reference_forward(p, weights)
        y_hat = model(p)
        context, query = model.tokens(p)
        assert y_hat.dtype == jnp.float64
    assert rel(y_hat, y_ref) < 1e-10
    assert rel(np.swapaxes(context, 1, 2), e_ref[:, :, :n]) < 1e-10
    assert rel(query, e_ref[:, :, n]) < 1e-10


def test_one_layer_gd_construction_equals_one_gd_step_in_float64():
    """von Oswald Prop. 1: W^KQ = [[I,0],[0,0]], last row of W^PV = [0, eta] gives exactly P(eta I)."""
    d, n, eta = 4, 7, 0.37
    with jax.enable_x64(True):
        model = icl.LinearTransformer(d, 1, rngs=nnx.Rngs(0))
        set_layer(model.layers[0], *gd_construction(d, eta))
        task = icl.LinearRegressionTask.from_eigenvalues([1.0, 0.3, 2.0, 0.8], noise_std=0.5)
        p = task.sample(jax.random.key(3), 64, n)
        y_model, y_gd = model(p), icl.gradient_descent(eta)(p)
        gamma = icl.implied_preconditioner(model.layers[0])
    assert y_model.dtype == jnp.float64
    assert rel(y_model, y_gd) < 1e-10
    np.testing.assert_allclose(gamma, eta * np.eye(d), rtol=0, atol=1e-15)


@pytest.mark.parametrize("num_layers", [2, 3])
def test_multi_layer_construction_runs_preconditioned_gd_with_residual_context(num_layers):
    """L layers with W^KQ_l top-left P_l^T and W^PV_l last row [0, -eta_l] (Ahn et al. 2023, THEORY.md §6).

    Context y-coordinates become the residuals y_j - x_j^T w_l and the query coordinate becomes
    -x_q^T w_l, so the model (plus-sign convention) predicts -x_q^T w_L, w_L being L steps of
    w <- w - eta_l P_l grad L(w) from 0. Exact to 1e-10 in float64.
    """
    d, n = 3, 8
    rng = np.random.default_rng(0)
    etas = rng.uniform(0.2, 0.9, num_layers)
    precs = rng.standard_normal((num_layers, d, d)) * 0.3 + np.eye(d)  # non-symmetric on purpose
    with jax.enable_x64(True):
        model = icl.LinearTransformer(d, num_layers, rngs=nnx.Rngs(0))
        for layer, eta, prec in zip(model.layers, etas, precs):
            set_layer(layer, *gd_construction(d, -eta, prec))
        task = icl.LinearRegressionTask.from_eigenvalues([1.0, 0.5, 1.5], noise_std=0.2)
        p = task.sample(jax.random.key(4), 32, n)
        y_model = model(p)
        w_l = icl.gd_weights(p.x, p.y, etas, precs)
        y_gd = icl.gradient_descent(etas, precs)(p)
        context, _ = model.tokens(p)
    assert rel(-y_model, y_gd) < 1e-10
    residuals = np.asarray(p.y) - np.einsum("bnd,bd->bn", p.x, w_l)
    assert rel(context[..., d], residuals) < 1e-10
    np.testing.assert_array_equal(context[..., :d], p.x)  # inputs are untouched


def test_one_layer_output_is_gamma_eff_term_plus_even_residual_terms_for_random_weights():
    """y_hat = x_q^T Gamma_eff h + (1/n) sum b^T x_i x_i^T A x_q + (c/n) sum y_i^2 a^T x_q (THEORY.md §2)."""
    d, n = 3, 5
    with jax.enable_x64(True):
        model = icl.LinearTransformer(d, 1, init_scale=1.0, rngs=nnx.Rngs(7))
        layer = model.layers[0]
        p = icl.LinearRegressionTask.isotropic(d, 0.4).sample(jax.random.key(5), 16, n)
        b, c, a_mat, a = (np.asarray(t) for t in icl.lsa_blocks(layer))
        gamma = np.asarray(icl.implied_preconditioner(layer))
        y_hat = np.asarray(model(p))
        y_odd = 0.5 * (y_hat - np.asarray(model(p._replace(y=-p.y))))
    x, y, xq = (np.asarray(t) for t in (p.x, p.y, p.x_query))
    h = np.einsum("bnd,bn->bd", x, y) / n
    linear = np.einsum("bi,ij,bj->b", xq, gamma, h)
    xx = np.einsum("bni,i,bnj,jk,bk->b", x, b, x, a_mat, xq) / n
    yy = c * np.sum(y**2, axis=1) * (xq @ a) / n
    np.testing.assert_allclose(gamma, c * a_mat.T + np.outer(a, b), rtol=1e-14, atol=0)
    assert rel(y_hat, linear + xx + yy) < 1e-10
    assert rel(y_odd, linear) < 1e-10


def test_one_layer_output_equals_x_q_gamma_eff_h_when_b_and_a_are_zero():
    d, n = 3, 6
    with jax.enable_x64(True):
        model = icl.LinearTransformer(d, 1, init_scale=1.0, rngs=nnx.Rngs(3))
        layer = model.layers[0]
        layer.w_pv[...] = layer.w_pv[...].at[d, :d].set(0.0)  # b = 0
        layer.w_kq[...] = layer.w_kq[...].at[d, :d].set(0.0)  # a = 0
        p = icl.LinearRegressionTask.isotropic(d, 0.4).sample(jax.random.key(6), 16, n)
        gamma = icl.implied_preconditioner(layer)
        y_hat = model(p)
        res = icl.residual_terms(layer)
    h = np.einsum("bnd,bn->bd", p.x, p.y) / n
    assert rel(y_hat, np.einsum("bi,ij,bj->b", p.x_query, gamma, h)) < 1e-10
    assert float(res["xx"]) == 0.0 and float(res["yy"]) == 0.0


def test_implied_preconditioner_and_output_are_gauge_invariant():
    """(W^PV, W^KQ) -> (s W^PV, W^KQ / s) changes neither Gamma_eff, the residual terms nor the prediction."""
    d, n, s = 3, 6, -2.5
    with jax.enable_x64(True):
        model = icl.LinearTransformer(d, 1, init_scale=1.0, rngs=nnx.Rngs(11))
        layer = model.layers[0]
        p = icl.LinearRegressionTask.isotropic(d, 0.3).sample(jax.random.key(7), 16, n)
        gamma, res, y_hat = icl.implied_preconditioner(layer), icl.residual_terms(layer), model(p)
        set_layer(layer, s * layer.w_pv[...], layer.w_kq[...] / s)
        gamma2, res2, y_hat2 = icl.implied_preconditioner(layer), icl.residual_terms(layer), model(p)
    assert rel(gamma2, gamma) < 1e-12
    assert rel(y_hat2, y_hat) < 1e-12
    for key in res:
        np.testing.assert_allclose(res2[key], res[key], rtol=1e-12)


def test_implied_preconditioner_accepts_matrices_with_leading_seed_axis():
    rng = np.random.default_rng(0)
    w_pv, w_kq = rng.standard_normal((2, 4, 5, 5))
    gammas = np.asarray(icl.implied_preconditioner(w_pv, w_kq))
    assert gammas.shape == (4, 4, 4)
    for i in range(4):
        np.testing.assert_allclose(gammas[i], icl.implied_preconditioner(w_pv[i], w_kq[i]), rtol=1e-6)


def test_model_rejects_prompts_of_the_wrong_dimension():
    model = icl.LinearTransformer(3, 1, rngs=nnx.Rngs(0))
    p = icl.LinearRegressionTask.isotropic(4).sample(jax.random.key(0), 2, 5)
    with pytest.raises(ValueError, match=r"\bd="):
        model(p)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"d": 0}, "d"), ({"d": 2.5}, "d"), ({"d": 2, "num_layers": 0}, "num_layers"),
     ({"d": 2, "init_scale": -1.0}, "init_scale"), ({"d": 2, "init_diag": float("nan")}, "init_diag")],
)
def test_model_constructor_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        icl.LinearTransformer(rngs=nnx.Rngs(0), **kwargs)
