"""Analysis helpers: compare_predictors statistics, sensitivities, distances, LSA blocks and residuals."""

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


def test_gd_at_eta_star_loss_is_within_4_se_of_isotropic_optimal_risk():
    d, n, sigma = 3, 10, 0.5
    task = icl.LinearRegressionTask.isotropic(d, sigma)
    eta = icl.isotropic_optimal_step_size(d, n, sigma)
    with jax.enable_x64(True):
        comp = icl.compare_predictors({"gd": icl.gradient_descent(eta)}, task, jax.random.key(0), n,
                                      num_prompts=200_000, chunk_size=50_000)
    mean, se = comp.losses["gd"]
    assert comp.num_prompts == 200_000
    assert 0 < se < 0.01 * mean
    assert abs(mean - icl.isotropic_optimal_risk(d, n, sigma)) <= 4 * se


def test_compare_predictors_standard_error_matches_known_error_distribution():
    """A predictor whose error is x_q[0] ~ N(0, 1) has squared error ~ chi^2_1: mean 1, SE sqrt(2/N)."""
    task = icl.LinearRegressionTask.isotropic(2, 0.5)
    num = 100_000
    shifted = lambda p: p.y_query + p.x_query[:, 0]  # noqa: E731
    exact = lambda p: p.y_query + 0.25  # noqa: E731
    with jax.enable_x64(True):
        comp = icl.compare_predictors({"shifted": shifted, "exact": exact}, task, jax.random.key(1), 4,
                                      num_prompts=num, chunk_size=25_000)
    mean, se = comp.losses["shifted"]
    assert se == pytest.approx(np.sqrt(2 / num), rel=0.05)
    assert abs(mean - 1.0) <= 4 * se
    assert comp.losses["exact"][0] == pytest.approx(0.0625, rel=1e-10)
    assert comp.losses["exact"][1] < 1e-9


def test_paired_loss_difference_equals_difference_of_losses_and_is_tighter():
    d, n, sigma = 3, 10, 0.5
    task = icl.LinearRegressionTask.isotropic(d, sigma)
    eta = icl.isotropic_optimal_step_size(d, n, sigma)
    with jax.enable_x64(True):
        comp = icl.compare_predictors(
            {"gd": icl.gradient_descent(eta), "gd_small": icl.gradient_descent(0.8 * eta)},
            task, jax.random.key(2), n, num_prompts=20_000, chunk_size=10_000, pairs=[("gd", "gd_small")])
    stats = comp.pairs[("gd", "gd_small")]
    (la, sa), (lb, sb) = comp.losses["gd"], comp.losses["gd_small"]
    assert stats["loss_diff"] == pytest.approx(la - lb, rel=1e-10)
    assert stats["loss_diff_se"] < np.hypot(sa, sb)
    assert stats["cosine"] == pytest.approx(1.0, abs=1e-10)  # both sensitivities are positive multiples of h
    assert stats["gap"] > 0


@pytest.mark.parametrize("x64, tol", [(False, 1e-5), (True, 1e-10)])
def test_identical_predictors_give_zero_loss_diff_zero_gap_and_cosine_one(x64, tol):
    """Gap 0 and cosine 1 exactly; loss_diff 0 up to rounding (THEORY.md §9: 1e-5 float32, 1e-10 float64)."""
    task = icl.LinearRegressionTask.isotropic(3, 0.5)
    gd = icl.gradient_descent(0.6)
    with jax.enable_x64(x64):
        comp = icl.compare_predictors({"a": gd, "b": gd}, task, jax.random.key(3), 6, num_prompts=2_000,
                                      chunk_size=1_000, pairs=[("a", "b")])
    stats = comp.pairs[("a", "b")]
    loss = comp.losses["a"][0]
    assert comp.losses["a"] == comp.losses["b"]
    assert abs(stats["loss_diff"]) <= tol * loss and stats["loss_diff_se"] <= tol * loss
    assert stats["gap"] == 0.0 and stats["gap_se"] == 0.0
    assert stats["cosine"] == pytest.approx(1.0, abs=tol) and stats["cosine_se"] <= tol


def test_compare_predictors_rounds_up_to_whole_chunks_and_serialises():
    task = icl.LinearRegressionTask.isotropic(2, 0.1)
    comp = icl.compare_predictors({"avg": icl.averaging(), "ls": icl.least_squares()}, task, jax.random.key(4), 5,
                                  num_prompts=25, chunk_size=10, pairs=[("avg", "ls")])
    assert comp.num_prompts == 30
    out = comp.to_dict()
    assert out["num_prompts"] == 30
    assert set(out["losses"]) == {"avg", "ls"} and set(out["losses"]["avg"]) == {"mean", "se"}
    assert set(out["pairs"]["avg|ls"]) == {"loss_diff", "loss_diff_se", "gap", "gap_se", "cosine", "cosine_se"}


def test_compare_predictors_is_deterministic_in_the_key():
    task = icl.LinearRegressionTask.isotropic(2, 0.3)
    preds = {"gd": icl.gradient_descent(0.5)}
    a = icl.compare_predictors(preds, task, jax.random.key(5), 4, num_prompts=1_000)
    b = icl.compare_predictors(preds, task, jax.random.key(5), 4, num_prompts=1_000)
    assert a.losses == b.losses


@pytest.mark.parametrize(
    "kwargs, field",
    [({"pairs": [("gd", "nope")]}, "pairs"), ({"n": 0}, "n"), ({"num_prompts": 0}, "num_prompts"),
     ({"chunk_size": 0}, "chunk_size")],
)
def test_compare_predictors_validation_names_the_field(kwargs, field):
    task = icl.LinearRegressionTask.isotropic(2)
    args = {"n": 4, "num_prompts": 10, **kwargs}
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        icl.compare_predictors({"gd": icl.gradient_descent(0.5)}, task, jax.random.key(0), **args)


def test_unknown_pair_name_is_named_in_the_error():
    task = icl.LinearRegressionTask.isotropic(2)
    with pytest.raises(ValueError, match="nope"):
        icl.compare_predictors({"gd": icl.gradient_descent(0.5)}, task, jax.random.key(0), 4, num_prompts=10,
                               pairs=[("nope", "gd")])


def test_sensitivity_of_one_gd_step_is_eta_times_h():
    d, n, eta = 3, 7, 0.35
    with jax.enable_x64(True):
        p = icl.LinearRegressionTask.isotropic(d, 0.5).sample(jax.random.key(7), 16, n)
        sens = icl.sensitivities(icl.gradient_descent(eta), p)
        h = np.einsum("bnd,bn->bd", p.x, p.y) / n
    assert sens.shape == (16, d)
    assert rel(sens, eta * h) < 1e-10


def test_sensitivity_of_gd_construction_lsa_equals_gd_and_cosine_is_one():
    d, n, eta = 3, 7, 0.35
    with jax.enable_x64(True):
        model = icl.LinearTransformer(d, 1, rngs=nnx.Rngs(0))
        w_pv, w_kq = np.zeros((d + 1, d + 1)), np.zeros((d + 1, d + 1))
        w_pv[d, d], w_kq[:d, :d] = eta, np.eye(d)
        model.layers[0].w_pv[...], model.layers[0].w_kq[...] = jnp.asarray(w_pv), jnp.asarray(w_kq)
        p = icl.LinearRegressionTask.isotropic(d, 0.5).sample(jax.random.key(8), 16, n)
        gd = icl.gradient_descent(eta)
        assert rel(icl.sensitivities(model, p), icl.sensitivities(gd, p)) < 1e-10
        np.testing.assert_allclose(icl.sensitivity_cosine(model, gd, p), 1.0, atol=1e-12)
        np.testing.assert_allclose(icl.prediction_gap(model, gd, p), 0.0, atol=1e-12)
        cos = np.asarray(icl.sensitivity_cosine(gd, icl.ridge(0.5), p))
    assert np.all(cos <= 1 + 1e-12) and np.any(cos < 1 - 1e-6)


def test_prediction_gap_is_absolute_difference():
    p = icl.LinearRegressionTask.isotropic(2, 0.5).sample(jax.random.key(9), 8, 4)
    a, b = icl.gradient_descent(0.3), icl.averaging()
    np.testing.assert_allclose(icl.prediction_gap(a, b, p), np.abs(np.asarray(a(p)) - np.asarray(b(p))), rtol=1e-6)


@pytest.mark.parametrize("alpha", [2.0, -3.0, 1e-3])
def test_dist_to_identity_of_scaled_identity_is_zero(alpha):
    assert float(icl.dist_to_identity(alpha * np.eye(4))) == pytest.approx(0.0, abs=1e-12)


def test_dist_to_identity_known_values_scale_invariance_and_batching():
    m = np.diag([1.0, 2.0])
    assert float(icl.dist_to_identity(m)) == pytest.approx(np.sqrt(0.5) / np.sqrt(5.0), rel=1e-6)
    assert float(icl.dist_to_identity(np.diag([1.0, -1.0]))) == pytest.approx(1.0, rel=1e-6)
    assert float(icl.dist_to_identity(-7.0 * m)) == pytest.approx(float(icl.dist_to_identity(m)), rel=1e-6)
    batch = np.stack([np.eye(2), m])
    np.testing.assert_allclose(icl.dist_to_identity(batch), [0.0, np.sqrt(0.1)], rtol=1e-6, atol=1e-7)


def test_relative_error_basics():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    e = np.array([[0.1, 0.0], [0.0, -0.2]])
    assert float(icl.relative_error(a, a)) == 0.0
    assert float(icl.relative_error(2 * a, a)) == pytest.approx(1.0, rel=1e-6)
    assert float(icl.relative_error(a + e, a)) == pytest.approx(np.linalg.norm(e) / np.linalg.norm(a), rel=1e-6)
    np.testing.assert_allclose(icl.relative_error(np.stack([a, 3 * a]), np.stack([a, a])), [0.0, 2.0], rtol=1e-6)


def test_lsa_blocks_read_last_row_of_pv_and_first_d_columns_of_kq():
    d = 3
    w_pv = np.arange(16.0).reshape(4, 4)
    w_kq = -np.arange(16.0).reshape(4, 4)
    b, c, a_mat, a = (np.asarray(t) for t in icl.lsa_blocks(w_pv, w_kq))
    np.testing.assert_array_equal(b, w_pv[d, :d])
    assert float(c) == w_pv[d, d]
    np.testing.assert_array_equal(a_mat, w_kq[:d, :d])
    np.testing.assert_array_equal(a, w_kq[d, :d])
    np.testing.assert_allclose(icl.implied_preconditioner(w_pv, w_kq), c * a_mat.T + np.outer(a, b), rtol=1e-6)


def test_residual_terms_vanish_when_b_and_a_are_zero_and_match_formula_otherwise():
    d = 3
    rng = np.random.default_rng(0)
    w_pv, w_kq = rng.standard_normal((2, d + 1, d + 1))
    sigma = np.diag([1.0, 2.0, 0.5])
    with jax.enable_x64(True):
        clean_pv, clean_kq = w_pv.copy(), w_kq.copy()
        clean_pv[d, :d] = 0.0
        clean_kq[d, :d] = 0.0
        res0 = icl.residual_terms(clean_pv, clean_kq, x_cov=sigma)
        res = icl.residual_terms(w_pv, w_kq, x_cov=sigma)
        gamma = np.asarray(icl.implied_preconditioner(w_pv, w_kq))
    for key in ("xx", "yy", "xx_rel", "yy_rel"):
        assert float(res0[key]) == 0.0
    b, c, a_mat, a = w_pv[d, :d], w_pv[d, d], w_kq[:d, :d], w_kq[d, :d]
    assert float(res["xx"]) == pytest.approx(np.linalg.norm(a_mat.T @ sigma @ b), rel=1e-12)
    assert float(res["yy"]) == pytest.approx(np.linalg.norm(c * a), rel=1e-12)
    assert float(res["xx_rel"]) == pytest.approx(float(res["xx"]) / np.linalg.norm(gamma), rel=1e-12)
    assert float(res["yy_rel"]) == pytest.approx(float(res["yy"]) / np.linalg.norm(gamma), rel=1e-12)
