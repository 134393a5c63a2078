"""The linear transformers (icl.models): forward pass, every-prefix predictions, GD constructions, read-offs,
the variance head and input validation (docs/theory.md §2, §6, §10, §12)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import icl
from helpers import EXACT_F64, assert_close, rel_err, x64


def set_layer(layer, w_pv, w_kq):
    layer.w_pv[...] = jnp.asarray(w_pv)
    layer.w_kq[...] = jnp.asarray(w_kq)


def reference_forward(prompts, weights) -> tuple[np.ndarray, np.ndarray]:
    """docs/theory.md §2 in plain numpy: E <- E + W^PV E M (E^T W^KQ E) / n per layer; final E per prompt."""
    x, y, xq = (np.asarray(a, np.float64) for a in (prompts.x, prompts.y, prompts.x_query))
    b, n, d = x.shape
    mask = np.diag(np.r_[np.ones(n), 0.0])
    out = []
    for i in range(b):
        e = np.zeros((d + 1, n + 1))
        e[:d, :n], e[d, :n], e[:d, n] = x[i].T, y[i], xq[i]
        for w_pv, w_kq in weights:
            e = e + w_pv @ e @ mask @ (e.T @ w_kq @ e) / max(n, 1)
        out.append(e)
    e = np.stack(out)
    return e, e[:, d, n]


def numpy_gd(x, y, etas, precs) -> np.ndarray:
    """K steps of w <- w - eta_k P_k (X^T X w - X^T y)/n from w = 0, per prompt (numpy)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[1]
    w = np.zeros((x.shape[0], x.shape[2]))
    for eta, prec in zip(etas, precs):
        grad = (np.einsum("bni,bnj,bj->bi", x, x, w) - np.einsum("bni,bn->bi", x, y)) / n
        w = w - eta * grad @ np.asarray(prec).T
    return w


def truncated(prompts, k: int):
    """The prompt whose context is the first k - 1 pairs and whose query is x_k (Garg's k-th prediction)."""
    return prompts._replace(x=prompts.x[:, : k - 1], y=prompts.y[:, : k - 1], x_query=prompts.x[:, k - 1],
                            y_query=prompts.y[:, k - 1])


def test_prompt_tokens_are_x_y_context_and_x_zero_query():
    p = icl.LinearRegressionTask.isotropic(3, 0.5).sample(jax.random.key(0), 4, 5)
    context, query = icl.prompt_tokens(p)
    assert context.shape == (4, 5, 4) and query.shape == (4, 4)
    np.testing.assert_array_equal(context[..., :3], p.x)
    np.testing.assert_array_equal(context[..., 3], p.y)
    np.testing.assert_array_equal(query[:, :3], p.x_query)
    np.testing.assert_array_equal(query[:, 3], 0.0)


def test_gram_form_forward_equals_token_form_definition_in_float64_for_one_to_four_layers():
    """model(p) (Gram form: G <- M G M^T) equals f(E) = E + W^PV E M (E^T W^KQ E)/n stacked, to 1e-10; so do
    the token-form final tokens of ``model.tokens``."""
    d, n = 3, 6
    with x64():
        task = icl.LinearRegressionTask.from_eigenvalues([1.0, 0.5, 2.0], noise_std=0.3)
        p = task.sample(jax.random.key(2), 5, n)
        for num_layers in (1, 2, 3, 4):
            model = icl.LinearTransformer(d, num_layers, init_scale=0.5, rngs=nnx.Rngs(num_layers))
            weights = [(np.asarray(l.w_pv[...]), np.asarray(l.w_kq[...])) for l in model.layers]
            e_ref, y_ref = reference_forward(p, weights)
            y_hat = model(p)
            context, query = model.tokens(p)
            assert y_hat.dtype == jnp.float64 and y_hat.shape == (5,)
            assert_close(y_hat, y_ref, EXACT_F64, f"L={num_layers} prediction")
            assert_close(np.swapaxes(context, 1, 2), e_ref[:, :, :n], EXACT_F64, f"L={num_layers} context")
            assert_close(query, e_ref[:, :, n], EXACT_F64, f"L={num_layers} query")


def test_from_gd_is_exactly_one_preconditioned_gd_step_in_float64():
    """von Oswald Prop. 1: W^KQ = [[P^T,0],[0,0]], last row of W^PV = [0, eta] gives x_q^T (eta P) h exactly."""
    d, n, eta = 4, 7, 0.37
    prec = np.eye(d) + 0.2 * np.random.default_rng(0).standard_normal((d, d))
    with x64():
        model = icl.LinearTransformer.from_gd(d, eta, prec)
        p = icl.LinearRegressionTask.from_eigenvalues([1.0, 0.3, 2.0, 0.8], noise_std=0.5).sample(
            jax.random.key(3), 64, n)
        y_model = model(p)
        gamma = icl.implied_preconditioner(model)  # a one-layer model is accepted
    w = numpy_gd(p.x, p.y, [eta], [prec])
    assert y_model.dtype == jnp.float64
    assert_close(y_model, np.einsum("bd,bd->b", p.x_query, w), EXACT_F64, "from_gd vs one GD step")
    np.testing.assert_allclose(gamma, eta * prec, rtol=0, atol=1e-14)


def test_multi_layer_construction_runs_preconditioned_gd_with_residual_context():
    """L layers with W^KQ_l top-left P_l^T and W^PV_l last row [0, -eta_l] (Ahn et al. 2023, docs/theory.md §6):
    context y-coordinates become the residuals y_j - x_j^T w_l and the model predicts -x_q^T w_L; the sparse
    model's from_gd predicts +x_q^T w_L. Exact to 1e-10 in float64."""
    d, n, num_layers = 3, 8, 3
    rng = np.random.default_rng(0)
    etas = rng.uniform(0.2, 0.9, num_layers)
    precs = rng.standard_normal((num_layers, d, d)) * 0.3 + np.eye(d)  # non-symmetric on purpose
    with x64():
        model = icl.LinearTransformer(d, num_layers, rngs=nnx.Rngs(0))
        for layer, eta, prec in zip(model.layers, etas, precs):
            w_pv, w_kq = icl.gd_lsa_weights(d, -eta, prec)
            set_layer(layer, w_pv, w_kq)
        sparse = icl.SparseLinearTransformer.from_gd(d, etas, precs)
        p = icl.LinearRegressionTask.from_eigenvalues([1.0, 0.5, 1.5], noise_std=0.2).sample(jax.random.key(4), 32, n)
        y_model, y_sparse = model(p), sparse(p)
        context, _ = model.tokens(p)
        a_t = icl.layer_preconditioners(sparse)
    w_l = numpy_gd(p.x, p.y, etas, precs)
    y_gd = np.einsum("bd,bd->b", p.x_query, w_l)
    assert_close(-y_model, y_gd, EXACT_F64, "full LSA construction")
    assert_close(y_sparse, y_gd, EXACT_F64, "sparse from_gd")
    assert_close(context[..., d], np.asarray(p.y) - np.einsum("bnd,bd->bn", p.x, w_l), EXACT_F64, "residuals")
    np.testing.assert_array_equal(context[..., :d], p.x)  # inputs are untouched
    np.testing.assert_allclose(a_t, etas[:, None, None] * precs, rtol=1e-14)


@pytest.mark.parametrize("kind", ["lsa", "sparse", "variance"])
def test_prefix_equals_the_model_on_truncated_prompts_in_float64(kind):
    """prefix[:, k-1] = model(first k-1 pairs, query x_k) at k in {d, n}; k = 1 (no context) gives 0 (the
    query token unchanged) and, with a variance head, exp(var_bias) + ||var_read [x_1; 0]||^2."""
    d, n, b = 3, 7, 6
    with x64():
        if kind == "sparse":
            model = icl.SparseLinearTransformer(d, 3, init_scale=0.5, rngs=nnx.Rngs(1))
        else:
            model = icl.LinearTransformer(d, 2, init_scale=0.5, variance_head=kind == "variance", rngs=nnx.Rngs(1))
        if kind == "variance":
            model.var_bias[...] = jnp.asarray(-0.3)
            model.var_read[...] = 0.5 * jax.random.normal(jax.random.key(9), (d + 1, d + 1))
        p = icl.LinearRegressionTask.isotropic(d, 0.3).sample(jax.random.key(5), b, n)
        out = model.prefix(p)
        means, variances = out if kind == "variance" else (out, None)
        assert means.shape == (b, n)
        for k in (d, n):
            full = model(truncated(p, k))
            m_k, v_k = full if kind == "variance" else (full, None)
            assert_close(means[:, k - 1], m_k, EXACT_F64, f"mean at k={k}")
            if kind == "variance":
                assert_close(variances[:, k - 1], v_k, EXACT_F64, f"variance at k={k}")
        np.testing.assert_array_equal(means[:, 0], 0.0)
        if kind == "variance":
            q = jnp.concatenate([p.x[:, 0], jnp.zeros((b, 1))], axis=-1)
            v0 = np.exp(-0.3) + jnp.sum((q @ model.var_read[...].T) ** 2, axis=-1)
            assert_close(variances[:, 0], v0, EXACT_F64, "variance at k=1")


def test_one_layer_output_is_gamma_eff_term_plus_even_residual_terms_for_random_weights():
    """y_hat = x_q^T Gamma_eff h + (1/n) sum b^T x_i x_i^T A x_q + (c/n) sum y_i^2 a^T x_q (docs/theory.md §2)."""
    d, n = 3, 5
    with x64():
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
    assert_close(y_hat, linear + xx + yy, EXACT_F64, "decomposition")
    assert_close(y_odd, linear, EXACT_F64, "odd part")


def test_read_offs_and_prediction_are_gauge_invariant_and_align_gauge_undoes_a_rescaling():
    """(W^PV, W^KQ) -> (s W^PV, W^KQ / s) changes neither Gamma_eff, the residual terms nor the prediction;
    align_gauge against the original W^KQ recovers the original weights and 1/s, and aligned against any other
    reference it leaves the prediction unchanged."""
    d, n, s = 3, 6, -2.5
    with x64():
        model = icl.LinearTransformer(d, 1, init_scale=1.0, rngs=nnx.Rngs(11))
        layer = model.layers[0]
        w_pv, w_kq = np.asarray(layer.w_pv[...]), np.asarray(layer.w_kq[...])
        p = icl.LinearRegressionTask.isotropic(d, 0.3).sample(jax.random.key(7), 16, n)
        gamma, res, y_hat = icl.implied_preconditioner(layer), icl.residual_terms(layer), model(p)
        set_layer(layer, s * w_pv, w_kq / s)
        gamma2, res2, y_hat2 = icl.implied_preconditioner(layer), icl.residual_terms(layer), model(p)
        pv_back, kq_back, scale = icl.align_gauge(s * w_pv, w_kq / s, w_kq)
        other_pv, other_kq, _ = icl.align_gauge(w_pv, w_kq, icl.gd_lsa_weights(d, 0.7)[1])
        set_layer(layer, other_pv, other_kq)
        y_hat3 = model(p)
    assert rel_err(y_hat3, y_hat) < 1e-12
    assert rel_err(gamma2, gamma) < 1e-12 and rel_err(y_hat2, y_hat) < 1e-12
    for key in res:
        np.testing.assert_allclose(res2[key], res[key], rtol=1e-12)
    assert rel_err(pv_back, w_pv) < 1e-12 and rel_err(kq_back, w_kq) < 1e-12
    np.testing.assert_allclose(scale, 1 / s, rtol=1e-12)


def test_read_offs_accept_matrices_with_a_leading_seed_axis():
    rng = np.random.default_rng(0)
    w_pv, w_kq = rng.standard_normal((2, 4, 5, 5))
    gammas = np.asarray(icl.implied_preconditioner(w_pv, w_kq))
    assert gammas.shape == (4, 4, 4)
    for i in range(4):
        np.testing.assert_allclose(gammas[i], icl.implied_preconditioner(w_pv[i], w_kq[i]), rtol=1e-6)
    m = np.stack([2.0 * np.eye(3), np.diag([1.0, 2.0, 3.0])])
    dist = np.asarray(icl.dist_to_identity(m))
    assert dist[0] < 1e-7 and dist[1] > 0.1
    np.testing.assert_allclose(icl.relative_error(m, m), 0.0, atol=1e-7)


def test_whitened_sparse_preconditioner_of_a_sigma_inverse_construction_is_a_multiple_of_identity():
    sigma = icl.LinearRegressionTask.from_eigenvalues([1.0, 0.25, 4.0]).x_cov
    model = icl.SparseLinearTransformer.from_gd(3, [0.4, 0.7], np.linalg.inv(sigma))
    white = icl.whiten_preconditioner(icl.layer_preconditioners(model), sigma)
    np.testing.assert_allclose(white, np.array([0.4, 0.7])[:, None, None] * np.eye(3), atol=1e-5)
    np.testing.assert_allclose(icl.dist_to_identity(white), 0.0, atol=1e-5)


def test_variance_head_returns_positive_variances_and_leaves_the_default_model_unchanged():
    d, n, b = 3, 5, 4
    p = icl.LinearRegressionTask.isotropic(d, 0.5).sample(jax.random.key(0), b, n)
    plain = icl.LinearTransformer(d, 2, init_scale=0.3, rngs=nnx.Rngs(3))
    head = icl.LinearTransformer(d, 2, init_scale=0.3, variance_head=True, rngs=nnx.Rngs(3))
    assert not plain.returns_variance and head.returns_variance and not icl.LinearTransformer.returns_variance
    plain_params = nnx.state(plain, nnx.Param)
    head_params = nnx.state(head, nnx.Param)
    assert len(jax.tree.leaves(head_params)) == len(jax.tree.leaves(plain_params)) + 2
    mean, var = head(p)
    np.testing.assert_array_equal(mean, plain(p))  # same layers, same initialisation
    assert mean.shape == var.shape == (b,)
    np.testing.assert_allclose(var, 1.0, rtol=1e-2)  # var_bias = 0, var_read ~ 0.01 at start
    head.var_read[...] = 3.0 * jax.random.normal(jax.random.key(1), (d + 1, d + 1))
    mean_k, var_k = head.prefix(p)
    assert mean_k.shape == var_k.shape == (b, n)
    assert bool(jnp.all(head(p)[1] >= 1.0)) and bool(jnp.all(var_k >= 1.0))  # floor exp(var_bias) = 1
    assert bool(jnp.all(jnp.isfinite(var_k)))
    grads = nnx.jit(nnx.grad(lambda m, p: jnp.mean(m(p)[1])))(head, p)
    assert float(jnp.abs(grads.var_read[...]).sum()) > 0 and float(grads.var_bias[...]) > 0


@settings(max_examples=4, deadline=None)
@given(d=st.sampled_from([1, 3]), n=st.sampled_from([1, 4]), b=st.just(2), num_layers=st.integers(1, 3),
       sparse=st.booleans())
def test_models_output_batch_and_batch_by_n_for_any_shape(d, n, b, num_layers, sparse):
    p = icl.LinearRegressionTask.isotropic(d, 0.1).sample(jax.random.key(d + n), b, n)
    cls = icl.SparseLinearTransformer if sparse else icl.LinearTransformer
    model = cls(d, num_layers, init_scale=0.3, rngs=nnx.Rngs(0))
    y, y_k = model(p), model.prefix(p)
    assert y.shape == (b,) and y_k.shape == (b, n)
    assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(y_k[:, 0] == 0))


def test_models_reject_prompts_of_the_wrong_dimension_or_with_several_queries():
    p = icl.LinearRegressionTask.isotropic(4).sample(jax.random.key(0), 2, 5)
    for model in (icl.LinearTransformer(3, 1, rngs=nnx.Rngs(0)), icl.SparseLinearTransformer(3, 2, rngs=nnx.Rngs(0))):
        for method in (model, model.prefix):
            with pytest.raises(ValueError, match=r"\bd="):
                method(p)
    model = icl.LinearTransformer(4, 1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x_query"):
        model(p._replace(x_query=p.x_query[:, None, :]))


def test_read_offs_of_a_multi_layer_model_say_to_pass_one_layer():
    model = icl.LinearTransformer(3, 2, rngs=nnx.Rngs(0))
    for fn in (icl.implied_preconditioner, icl.lsa_blocks, icl.residual_terms):
        with pytest.raises(ValueError, match=r"model\.layers\[i\]"):
            fn(model)
    with pytest.raises(ValueError, match="layer_or_w_pv"):
        icl.implied_preconditioner("not a layer")


@pytest.mark.parametrize(
    "kwargs, field",
    [({"d": 0}, "d"), ({"d": 2.5}, "d"), ({"d": 2, "num_layers": 0}, "num_layers"),
     ({"d": 2, "init_scale": -1.0}, "init_scale"), ({"d": 2, "init_diag": float("nan")}, "init_diag"),
     ({"d": 2, "variance_head": "yes"}, "variance_head")],
)
def test_model_constructor_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        icl.LinearTransformer(rngs=nnx.Rngs(0), **kwargs)


def test_constructions_reject_bad_arguments_naming_them():
    with pytest.raises(ValueError, match=r"\beta\b"):
        icl.LinearTransformer.from_gd(3, [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\beta\b"):
        icl.gd_lsa_weights(3, float("nan"))
    with pytest.raises(ValueError, match="preconditioner"):
        icl.gd_lsa_weights(3, 0.1, np.eye(2))
    with pytest.raises(ValueError, match="preconditioner"):
        icl.SparseLinearTransformer.from_gd(3, [0.1, 0.2], np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="step_sizes"):
        icl.SparseLinearTransformer.from_gd(3, [[0.1]])
    with pytest.raises(ValueError, match="x_cov"):
        icl.whiten_preconditioner(np.eye(3), np.eye(2))
