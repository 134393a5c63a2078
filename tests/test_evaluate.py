"""The evaluation engine: compare_predictors statistics, compile-once, shape and finiteness checks, error curves,
the generic monte_carlo with stable standard errors, sensitivities and distances."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import icl
from helpers import assert_within_se, compiling_threads, rel_err, x64

rel = rel_err


def test_gd_at_eta_star_loss_is_within_4_se_of_isotropic_optimal_risk():
    d, n, sigma = 3, 10, 0.5
    task = icl.LinearRegressionTask.isotropic(d, sigma)
    eta = float(icl.optimal_step_size(task, n))
    with x64():
        comp = icl.compare_predictors({"gd": icl.gradient_descent(eta)}, task, jax.random.key(0), n,
                                      num_prompts=40_000, chunk_size=20_000)
    mean, se = comp.losses["gd"]
    assert comp.num_prompts == 40_000
    assert 0 < se < 0.02 * mean
    assert_within_se(mean, se, float(icl.optimal_risk(task, n)), what="GD at eta*")


def test_compare_predictors_standard_error_matches_known_error_distribution():
    """A predictor whose error is x_q[0] ~ N(0, 1) has squared error ~ chi^2_1: mean 1, SE sqrt(2/N)."""
    task = icl.LinearRegressionTask.isotropic(2, 0.5)
    num = 100_000
    shifted = lambda p: p.y_query + p.x_query[:, 0]  # noqa: E731
    exact = lambda p: p.y_query + 0.25  # noqa: E731
    with x64():
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
    eta = float(icl.optimal_step_size(task, n))
    with x64():
        comp = icl.compare_predictors(
            {"gd": icl.gradient_descent(eta), "gd_small": icl.gradient_descent(0.8 * eta)},
            task, jax.random.key(2), n, num_prompts=20_000, chunk_size=10_000, pairs=[("gd", "gd_small")])
    stats = comp.pairs[("gd", "gd_small")]
    (la, sa), (lb, sb) = comp.losses["gd"], comp.losses["gd_small"]
    assert stats["loss_diff"] == pytest.approx(la - lb, rel=1e-10)
    assert stats["loss_diff_se"] < np.hypot(sa, sb)
    assert stats["cosine"] == pytest.approx(1.0, abs=1e-10)  # both sensitivities are positive multiples of h
    assert stats["gap"] > 0


@pytest.mark.parametrize("use_x64, tol", [(False, 1e-5), (True, 1e-10)])
def test_identical_predictors_give_zero_loss_diff_zero_gap_and_cosine_one(use_x64, tol):
    """Gap 0 and cosine 1 exactly; loss_diff 0 up to rounding (THEORY.md §9: 1e-5 float32, 1e-10 float64)."""
    task = icl.LinearRegressionTask.isotropic(3, 0.5)
    gd = icl.gradient_descent(0.6)
    with jax.enable_x64(use_x64):
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
    comp = icl.compare_predictors({"avg": icl.averaging(), "ls": icl.gradient_descent(0.5)}, task, jax.random.key(4),
                                  5, num_prompts=25, chunk_size=10, pairs=[("avg", "ls")])
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
     ({"num_prompts": 1}, "num_prompts"), ({"chunk_size": 0}, "chunk_size"),
     ({"cosine_pairs": [("gd", "gd")]}, "cosine_pairs")],
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


def test_sensitivities_of_one_gd_step_and_of_its_lsa_construction_are_eta_times_h():
    """d y_hat / d x_q of one GD step is eta h; the LSA holding the GD construction has the same (cosine 1)."""
    d, n, eta = 3, 7, 0.35
    with x64():
        model = icl.LinearTransformer(d, 1, rngs=nnx.Rngs(0))
        w_pv, w_kq = np.zeros((d + 1, d + 1)), np.zeros((d + 1, d + 1))
        w_pv[d, d], w_kq[:d, :d] = eta, np.eye(d)
        model.layers[0].w_pv[...], model.layers[0].w_kq[...] = jnp.asarray(w_pv), jnp.asarray(w_kq)
        p = icl.LinearRegressionTask.isotropic(d, 0.5).sample(jax.random.key(8), 16, n)
        gd = icl.gradient_descent(eta)
        preconditioned = icl.gradient_descent(eta, preconditioner=np.diag([1.0, 2.0, 3.0]))  # sensitivity eta P h

        @jax.jit  # one compiled program instead of many eager ops
        def metrics(p):
            return (icl.sensitivities(gd, p), icl.sensitivities(model, p), icl.sensitivity_cosine(model, gd, p),
                    icl.prediction_gap(model, gd, p), icl.sensitivity_cosine(gd, preconditioned, p))

        sens_gd, sens_lsa, cos_lsa, gap, cos_ls = (np.asarray(a) for a in metrics(p))
        h = np.einsum("bnd,bn->bd", p.x, p.y) / n
    assert sens_gd.shape == (16, d)
    assert rel(sens_gd, eta * h) < 1e-10 and rel(sens_lsa, sens_gd) < 1e-10
    np.testing.assert_allclose(cos_lsa, 1.0, atol=1e-12)
    np.testing.assert_allclose(gap, 0.0, atol=1e-12)
    assert np.all(cos_ls <= 1 + 1e-12) and np.any(cos_ls < 1 - 1e-6)


def test_prediction_gap_is_absolute_difference():
    p = icl.LinearRegressionTask.isotropic(2, 0.5).sample(jax.random.key(9), 8, 4)
    a, b = icl.gradient_descent(0.3), icl.averaging()
    np.testing.assert_allclose(icl.prediction_gap(a, b, p), np.abs(np.asarray(a(p)) - np.asarray(b(p))), rtol=1e-6)


# ------------------------------------------------------------------------------------------ compile once

def test_second_compare_predictors_call_with_other_hyperparameters_does_not_compile_again():
    """predictors are pytree arguments of one module-level jit (counted, not timed)."""
    def run(eta, lam, noise, seed):
        model = icl.LinearTransformer(3, 1, rngs=nnx.Rngs(seed))
        predictors = {"gd": icl.gradient_descent(eta), "ridge": icl.ridge(lam), "lsa": model}
        return icl.compare_predictors(predictors, icl.LinearRegressionTask.isotropic(3, noise),
                                      jax.random.key(seed), 8, num_prompts=400, chunk_size=200,
                                      pairs=[("gd", "ridge")], cosine_pairs=[])

    first = run(0.3, 0.5, 0.1, 0)
    second, compiles = compiling_threads(lambda: run(0.7, 2.0, 0.6, 1))
    assert compiles == {}, f"the second call compiled {compiles}"
    assert first.losses["gd"] != second.losses["gd"]


# ------------------------------------------------------------------------------------------ honest outputs


def test_predictor_output_of_wrong_shape_is_a_value_error_naming_it():
    task = icl.LinearRegressionTask.isotropic(2, 0.5)
    wide = lambda p: p.x_query[:, :1]  # noqa: E731  [batch, 1]: would broadcast into a wrong MSE
    with pytest.raises(ValueError, match="'wide'"):
        icl.compare_predictors({"gd": icl.gradient_descent(0.5), "wide": wide}, task, jax.random.key(0), 4,
                               num_prompts=10)


def test_non_finite_predictions_are_reported_as_nan_with_a_count_and_a_warning():
    task = icl.LinearRegressionTask.isotropic(2, 0.5)
    broken = lambda p: jnp.where(p.x_query[:, 0] > 0, jnp.inf, 0.0)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="'broken'.*NaN or inf"):
        comp = icl.compare_predictors({"broken": broken, "gd": icl.gradient_descent(0.5)}, task, jax.random.key(1), 4,
                                      num_prompts=400, pairs=[("broken", "gd")])
    assert all(np.isnan(v) for v in comp.losses["broken"])
    assert 100 < comp.nonfinite["broken"] < 300 and comp.nonfinite["gd"] == 0
    assert np.isfinite(comp.losses["gd"][0]) and np.isnan(comp.pairs[("broken", "gd")]["loss_diff"])
    assert comp.to_dict()["nonfinite"]["broken"] == comp.nonfinite["broken"]


# ------------------------------------------------------------------------------------------ monte_carlo


def first_coordinate_squared(predictor, prompts):
    return {"sq": prompts.x_query[:, 0] ** 2, "pred": predictor(prompts)}


def nearly_constant(predictors, prompts):
    return 1.0 + 1e-4 * prompts.x_query[:, 0]


def test_monte_carlo_averages_any_statistics_tree_and_passes_a_single_predictor_as_is():
    task = icl.LinearRegressionTask.isotropic(2, 0.5)
    out = icl.monte_carlo(first_coordinate_squared, icl.gradient_descent(0.0), task, jax.random.key(4), 3,
                          num_prompts=1_000, chunk_size=500)
    assert out.num_prompts == 1_000 and set(out.mean) == set(out.se) == {"sq", "pred"}
    assert_within_se(out.mean["sq"], out.se["sq"], 1.0)  # x_q[0]^2 ~ chi^2_1
    assert out.mean["pred"] == 0.0 and out.se["pred"] == 0.0


def test_monte_carlo_standard_error_does_not_cancel_in_float32():
    """1 + 1e-4 z in float32: the SE is 1e-4 / sqrt(N) (a naive E[v^2] - E[v]^2 would lose it)."""
    out = icl.monte_carlo(nearly_constant, None, icl.LinearRegressionTask.isotropic(2), jax.random.key(5), 3,
                          num_prompts=20_000, chunk_size=5_000)
    assert out.se == pytest.approx(1e-4 / np.sqrt(20_000), rel=0.05)
    assert out.mean == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ error curves


class Zero(icl.Predictor):
    """Predicts 0 everywhere (a plain subclass, not a pytree: passed as a static argument)."""

    def __call__(self, p):
        return jnp.zeros_like(p.y_query)

    def prefix(self, p):
        return jnp.zeros_like(p.y)


def test_error_curve_of_the_zero_predictor_is_one_plus_noise_over_signal_and_least_squares_is_exact():
    d, n, sigma = 2, 6, 0.5
    task = icl.LinearRegressionTask.isotropic(d, sigma)
    with x64():
        predictors = {"zero": Zero(), "ls": icl.least_squares()}
        curves = icl.error_curves(predictors, task, jax.random.key(6), n, num_prompts=20_000, chunk_size=5_000)
        # A noiseless task is another pytree of the same structure: the same compiled program.
        noiseless = icl.error_curves(predictors, icl.LinearRegressionTask.isotropic(d), jax.random.key(7), n,
                                     num_prompts=5_000, chunk_size=5_000)["ls"]
    zero = curves["zero"]
    assert zero.mean.shape == zero.se.shape == (n,) and zero.k.tolist() == list(range(1, n + 1))
    assert zero.normaliser == pytest.approx(d)
    for k in (1, d, n):
        assert_within_se(zero.mean[k - 1], zero.se[k - 1], 1 + sigma**2 / d, what=f"zero predictor at k={k}")
    assert curves["ls"].mean[0] == zero.mean[0]  # k = 1: no context, both predict 0 on the same prompts
    assert np.all(noiseless.mean[d + 1:] < 1e-12)  # k - 1 >= d pairs determine w exactly


def test_error_curve_of_a_predictor_without_prefix_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="'predictor'.*prefix"):
        icl.error_curve(lambda p: p.y_query, icl.LinearRegressionTask.isotropic(2), jax.random.key(0), 4,
                        num_prompts=10)
