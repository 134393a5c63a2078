"""dMMSE (Bayes for a finite pool), the Bayes predictive distribution and calibration metrics (docs/theory.md §12)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import EXACT_F64, assert_close, assert_within_se, mean_se, x64
from hypothesis import example, given, settings
from hypothesis import strategies as st

import icl

# One compiled sampler per shape (tasks and pools are pytrees): far cheaper than eager sampling op by op.
_sample = jax.jit(lambda task, key, batch, n: task.sample(key, batch, n), static_argnums=(2, 3))


def _brute_force_dmmse(weights, sigma, x, y, xq):
    """Posterior over the pool by direct products of Gaussian likelihoods (float64 numpy, loops)."""
    weights, x, y, xq = (np.asarray(a, np.float64) for a in (weights, x, y, xq))
    b, m = x.shape[0], weights.shape[0]
    mean, var = np.zeros(b), np.zeros(b)
    for i in range(b):
        loglik = np.array([-np.sum((y[i] - x[i] @ weights[j]) ** 2) / (2 * sigma**2) for j in range(m)])
        p = np.exp(loglik - loglik.max())
        p /= p.sum()
        preds = weights @ xq[i]
        mean[i] = p @ preds
        var[i] = sigma**2 + p @ (preds - mean[i]) ** 2
    return mean, var


@jax.jit
def _dmmse_all(predictor, prompts):  # one compiled program for every pool and sigma of these shapes
    mean_only = icl.DiscreteMMSE(weights=predictor.weights, noise_std=predictor.noise_std)
    return predictor(prompts), predictor.prefix(prompts), mean_only(prompts)


@settings(max_examples=8, deadline=None)
@given(sigma=st.sampled_from([0.1, 0.5, 2.0]), seed=st.integers(0, 10_000))
def test_dmmse_mean_and_variance_equal_a_brute_force_posterior_over_the_pool(sigma, seed):
    m, n, d = 5, 4, 3
    with x64():
        pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=d, noise_std=sigma), num_tasks=m, seed=seed)
        prompts = _sample(pool, jax.random.PRNGKey(seed + 1), 4, n)
        (mean, var), (pm, pv), plain = _dmmse_all(icl.dmmse(pool, variance=True), prompts)
        want_mean, want_var = _brute_force_dmmse(pool.weights, sigma, prompts.x, prompts.y, prompts.x_query)
        assert_close(mean, want_mean, EXACT_F64, "dMMSE mean")
        assert_close(var, want_var, EXACT_F64, "dMMSE variance")
        assert_close(plain, want_mean, EXACT_F64, "dMMSE (mean-only)")
        # every prefix: entry k-1 uses the first k-1 pairs to predict y_k at x_k (entry 0: no context)
        for k in range(1, n + 1):
            wm, wv = _brute_force_dmmse(pool.weights, sigma, prompts.x[:, : k - 1], prompts.y[:, : k - 1],
                                        prompts.x[:, k - 1])
            assert_close(pm[:, k - 1], wm, EXACT_F64, f"prefix mean k={k}")
            assert_close(pv[:, k - 1], wv, EXACT_F64, f"prefix variance k={k}")


def test_dmmse_with_one_task_predicts_that_task_exactly_with_noise_variance():
    with x64():
        pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=3, noise_std=0.3), num_tasks=1, seed=4)
        prompts = _sample(pool, jax.random.PRNGKey(0), 16, 6)
        w = np.asarray(pool.weights[0])
        (mean, var), (prefix_mean, _), _ = _dmmse_all(icl.dmmse(pool, variance=True), prompts)
        assert_close(mean, np.asarray(prompts.x_query) @ w, EXACT_F64, "M=1 query")
        assert_close(var, np.full(16, 0.09), EXACT_F64, "M=1 variance")
        assert_close(prefix_mean, np.asarray(prompts.x) @ w, EXACT_F64, "M=1 prefix")


def test_dmmse_approaches_the_gaussian_bayes_mean_as_the_pool_grows():
    # d = 1, short contexts: the pool is a self-normalised importance sample of the Gaussian prior, so
    # the squared gap to the posterior mean shrinks like 1/M on fresh tasks.
    with x64():
        task = icl.LinearRegressionTask(d=1, noise_std=0.5)
        prompts = _sample(task, jax.random.PRNGKey(0), 1000, 2)
        bayes = np.asarray(icl.bayes_posterior_mean(task)(prompts))
        gaps = []
        for m in (16, 2048):
            pool = icl.FiniteTaskPool(task, num_tasks=m, seed=1)
            gaps.append(float(np.mean((np.asarray(jax.jit(icl.dmmse(pool))(prompts)) - bayes) ** 2)))
        assert gaps[0] > 16 * gaps[1], gaps  # ~1/M: 128x more tasks
        assert gaps[1] < 1e-3, gaps  # SPD below 0.1% of E[y^2] = 1


def test_bayes_predictive_variance_matches_the_monte_carlo_squared_error_at_every_prefix():
    # E[(y - mean)^2 - var] = 0 given each context, hence over prompts: check within 4 SE at every k.
    with x64():
        task = icl.LinearRegressionTask(d=2, noise_std=0.5, x_cov=np.diag([1.0, 0.5]), w_cov=np.diag([2.0, 1.0]))
        prompts = _sample(task, jax.random.PRNGKey(3), 20000, 4)
        bayes = icl.bayes_predictive(task)
        (mean, var), (pm, pv) = jax.jit(lambda b, p: (b(p), b.prefix(p)))(bayes, prompts)
        m, se = mean_se((prompts.y_query - mean) ** 2 - var)
        assert_within_se(m, se, 0.0, what="query: E[(y - mean)^2] - E[var]")
        m, se = mean_se((prompts.y - pm) ** 2 - pv)
        for k in range(4):
            assert_within_se(m[k], se[k], 0.0, what=f"prefix k={k + 1}")
        # k = 1 (no context): prior predictive y ~ N(0, tr(Omega Sigma) + sigma^2)
        np.testing.assert_array_equal(pm[:, 0], 0.0)
        prior_var = 0.25 + np.einsum("bi,ij,bj->b", prompts.x[:, 0], task.w_cov, prompts.x[:, 0])
        assert_close(pv[:, 0], prior_var, EXACT_F64, "k=1 variance: sigma^2 + x_1^T Omega x_1")


def test_exact_bayes_predictive_is_calibrated_and_an_overdispersed_one_is_detected():
    task = icl.LinearRegressionTask(d=2, noise_std=0.5)
    bayes = icl.bayes_predictive(task)

    class Overdispersed(icl.Predictor):  # the Bayes mean with 4x the variance: known miscalibration
        returns_variance = True

        def __call__(self, prompts):
            mean, var = bayes(prompts)
            return mean, 4.0 * var

    result = icl.compare_calibration({"bayes": bayes, "wide": Overdispersed()}, task, jax.random.PRNGKey(0), n=5,
                                     num_prompts=20000, pairs=[("wide", "bayes")])
    cal = result.metrics["bayes"]
    for level, (cov, se) in cal.coverage.items():
        assert_within_se(cov, se, level, what=f"Bayes coverage at {level}")
    hist, hist_se = cal.pit_histogram
    for b in range(10):
        assert_within_se(hist[b], hist_se[b], 0.1, what=f"PIT bin {b}")
    # N(mu, 4v) covers |z| <= 2 q: P(|Z| <= 2 * 0.6745) = 0.8227 for the central 50% interval
    cov, se = result.metrics["wide"].coverage[0.5]
    assert_within_se(cov, se, 0.822740, what="overdispersed 50% coverage")
    # paired NLL gap: 0.5 log 4 + 0.5 (1/4 - 1) E[z^2] = log 2 - 3/8
    pair = result.pairs[("wide", "bayes")]
    assert_within_se(pair["nll_diff"], pair["nll_diff_se"], np.log(2.0) - 0.375, what="NLL(4v) - NLL(v)")
    assert_close(result.metrics["wide"].sharpness[0] / cal.sharpness[0], 2.0, 1e-5, "sharpness ratio")


def test_pool_bayes_is_scored_with_the_exact_mixture_density_and_cdf():
    # p(y | D) = sum_m p(m | D) N(y; w_m^T x_q, sigma^2): NLL and PIT against a float64 brute force
    with x64():
        pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=2, noise_std=0.5), num_tasks=3, seed=0)
        pred = icl.dmmse(pool, variance=True)
        prompts = _sample(pool, jax.random.PRNGKey(5), 6, 2)
        stats = jax.jit(icl.predictive_stats)(pred, prompts)
        want_mean, _ = _brute_force_dmmse(pool.weights, 0.5, prompts.x, prompts.y, prompts.x_query)
        w, x, y = (np.asarray(a) for a in (pool.weights, prompts.x, prompts.y))
        loglik = -((y[:, None, :] - np.einsum("bnd,md->bmn", x, w)) ** 2).sum(-1) / (2 * 0.25)
        post = np.exp(loglik - loglik.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        z = (np.asarray(prompts.y_query)[:, None] - np.asarray(prompts.x_query) @ w.T) / 0.5
        dens = np.sum(post * np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi * 0.25), axis=1)
        cdf = np.sum(post * 0.5 * (1 + np.vectorize(math.erf)(z / np.sqrt(2))), axis=1)
        assert_close(stats["nll"], -np.log(dens), EXACT_F64, "mixture NLL")
        assert_close(stats["pit"], cdf, EXACT_F64, "mixture PIT")
        assert_close(stats["mse"], (np.asarray(prompts.y_query) - want_mean) ** 2, EXACT_F64, "mixture mean")


def test_under_task_shift_bayes_with_the_training_prior_loses_nll_to_the_true_law():
    task = icl.LinearRegressionTask(d=2, noise_std=0.5)
    shifted = icl.shifted_task(task, w_scale=3.0)
    np.testing.assert_allclose(shifted.w_cov, 9.0 * np.eye(2))
    result = icl.shift_evaluation(icl.bayes_predictive(task), task, shifted, jax.random.PRNGKey(0), n=4,
                                  num_prompts=20000)
    assert set(result.metrics) == {"model", "bayes_train_prior", "bayes_true_law"}
    gap = result.pairs[("model", "bayes_true_law")]
    assert gap["nll_diff"] > 4 * gap["nll_diff_se"], gap
    np.testing.assert_allclose(icl.shifted_task(task, x_scale=2.0).x_cov, 4.0 * np.eye(2))


def test_bad_inputs_raise_value_errors_naming_the_argument():
    noiseless = icl.FiniteTaskPool(icl.LinearRegressionTask(d=2, noise_std=0.0), num_tasks=3, seed=0)
    with pytest.raises(ValueError, match="noise_std"):
        icl.dmmse(noiseless)
    with pytest.raises(ValueError, match="noise_std"):
        icl.dmmse(noiseless, noise_std=-1.0)
    assert icl.dmmse(noiseless, noise_std=0.1)(noiseless.sample(jax.random.PRNGKey(0), 2, 3)).shape == (2,)
    with pytest.raises(ValueError, match="pool"):
        icl.dmmse(icl.LinearRegressionTask(d=2))
    task = icl.LinearRegressionTask(d=2, noise_std=0.5)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="mean_only"):
        icl.compare_calibration({"mean_only": icl.ridge(1.0)}, task, key, 3, 100)
    with pytest.raises(ValueError, match="levels"):
        icl.calibration(icl.bayes_predictive(task), task, key, 3, 100, levels=(0.5, 1.0))
    with pytest.raises(ValueError, match="bins"):
        icl.calibration(icl.bayes_predictive(task), task, key, 3, 100, bins=0)
    with pytest.raises(ValueError, match="num_prompts"):
        icl.calibration(icl.bayes_predictive(task), task, key, 3, 0)
    with pytest.raises(ValueError, match="pairs"):
        icl.compare_calibration({"b": icl.bayes_predictive(task)}, task, key, 3, 100, pairs=[("b", "c")])
    with pytest.raises(ValueError, match="w_scale"):
        icl.shifted_task(task, w_scale=-2.0)
    with pytest.raises(ValueError, match="x_scale"):
        icl.shifted_task(task, x_scale=float("nan"))


# ------------------------------------------------------------------------------------------ invalid variances


@icl.pytree_dataclass
class _BadVariance:
    """The Bayes predictive of a fixed task, its variance replaced by ``value`` where ``x_query[:, 0] < cut``
    (leaves, so every example shares one compiled program)."""

    cut: float
    value: float
    returns_variance = True

    def __call__(self, prompts):
        mean, var = icl.bayes_predictive(icl.LinearRegressionTask.isotropic(2, 0.5))(prompts)
        return mean, jnp.where(prompts.x_query[:, 0] < self.cut, jnp.asarray(self.value, var.dtype), var)


@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(["negative", "zero", "nan", "inf"]), fraction=st.floats(0.05, 1.0))
@example(kind="negative", fraction=0.05)
@example(kind="zero", fraction=0.05)
@example(kind="nan", fraction=0.05)
@example(kind="inf", fraction=0.05)
def test_calibration_refuses_invalid_variances_naming_how_many(kind, fraction):
    """Any share of prompts with a negative, zero or non-finite variance is refused, with the count (zero as a
    degenerate point mass).
    (A calibration that skipped the check reports NLL NaN beside a coverage number and fails this test.)"""
    bad_value = {"negative": -1.0, "zero": 0.0, "nan": float("nan"), "inf": float("inf")}[kind]
    cut = float(jax.scipy.stats.norm.ppf(fraction))  # x_query[:, 0] ~ N(0, 1): about `fraction` of prompts
    predictor = _BadVariance(np.float32(cut), np.float32(bad_value))
    what = "is degenerate:" if kind == "zero" else "invalid predictive distribution"
    with pytest.raises(ValueError, match=rf"{what} .* on \d+ of 4000 prompts"):
        icl.calibration(predictor, icl.LinearRegressionTask.isotropic(2, 0.5), jax.random.key(0), 6,
                        num_prompts=4000, chunk_size=2000)


def test_calibration_accepts_valid_variances_and_reports_no_invalid_share():
    predictor = _BadVariance(np.float32(-np.inf), np.float32(0.0))
    cal = icl.calibration(predictor, icl.LinearRegressionTask.isotropic(2, 0.5), jax.random.key(0), 6,
                          num_prompts=4000, chunk_size=2000)
    assert np.isfinite(cal.nll[0]) and 0.85 < cal.coverage[0.9][0] < 0.95


def test_a_noiseless_bayes_predictive_is_called_degenerate_not_scored():
    task = icl.LinearRegressionTask.isotropic(2, 0.0)
    with pytest.raises(ValueError, match="degenerate"):
        icl.calibration(icl.bayes_predictive(task), task, jax.random.key(1), 6, num_prompts=2000, chunk_size=1000)
