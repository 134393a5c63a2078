"""NoiseMixtureTask (a noise level per prompt, Bai et al. 2023) and its exact Bayes predictor.

The predictor is checked against a brute-force float64 numpy posterior (enumerate the levels, Gaussian
marginal likelihoods ``N(y; 0, psi^2 X X^T + sigma_k^2 I)``, ridge posterior means), against the Gaussian
Bayes predictor when there is one level, against every single ridge by Monte Carlo, and by a property test
over wide domains. Shapes are shared between tests (the predictor is a pytree argument of one compiled
program per shape and dtype), because compilation dominates the cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import icl
from icl.predictors.mixture import (
    NoiseMixturePosteriorMean,
    NoiseMixturePredictive,
    noise_mixture_posterior_mean,
    noise_mixture_predictive,
)
from icl.tasks import Prompts
from icl.tasks.mixture import NoiseMixtureTask
from tests.helpers import EXACT_F64, assert_close, mean_se, x64

D, N, B = 4, 7, 6  # the float64 shape of the exact checks
MC_D, MC_N, MC_B = 4, 8, 4000  # the float32 shape of the Monte Carlo checks


@pytest.fixture
def float64():
    """64-bit JAX arrays for one test; the previous setting is restored afterwards."""
    before = jax.config.jax_enable_x64
    with x64():
        yield
    assert jax.config.jax_enable_x64 == before


# ----------------------------------------------------------------------------------------------------------
# Brute force in float64 numpy
# ----------------------------------------------------------------------------------------------------------


def brute_force(x, y, xq, levels, pis, psi):
    """Posterior over levels, predictive mean and variance at ``xq`` for each prompt, by dense linear algebra.

    ``p_k ~ pi_k N(y; 0, psi^2 X X^T + sigma_k^2 I)``; ``m_k = xq^T (X^T X + sigma_k^2/psi^2 I)^{-1} X^T y``;
    ``v_k = sigma_k^2 + sigma_k^2 xq^T (X^T X + sigma_k^2/psi^2 I)^{-1} xq``. Empty contexts give the prior.
    """
    x, y, xq = (np.asarray(a, np.float64) for a in (x, y, xq))
    b, n, d = x.shape
    probs, means, variances = np.zeros((b, len(levels))), np.zeros((b, len(levels))), np.zeros((b, len(levels)))
    for i in range(b):
        logp = np.log(pis).astype(np.float64)
        for k, s in enumerate(levels):
            cov = psi**2 * x[i] @ x[i].T + s**2 * np.eye(n)
            if n:
                logdet = np.linalg.slogdet(cov)[1]
                logp[k] -= 0.5 * (y[i] @ np.linalg.solve(cov, y[i]) + logdet + n * np.log(2 * np.pi))
            a = x[i].T @ x[i] + s**2 / psi**2 * np.eye(d)
            means[i, k] = xq[i] @ np.linalg.solve(a, x[i].T @ y[i])
            variances[i, k] = s**2 + s**2 * xq[i] @ np.linalg.solve(a, xq[i])
        probs[i] = np.exp(logp - logp.max())
        probs[i] /= probs[i].sum()
    mean = np.sum(probs * means, axis=1)
    return probs, means, variances, mean, np.sum(probs * (variances + means**2), axis=1) - mean**2


def closed_form_posterior(x, y, levels, pis, psi):
    """``p(k | D)`` through the full SVD ``X = U S V^T``: ``C_k = U diag(psi^2 s_j^2 + sigma_k^2) U^T`` (``s_j = 0``
    past ``min(n, d)``), so ``log N(y; 0, C_k) = -1/2 sum_j [z_j^2 / (psi^2 s_j^2 + sigma_k^2) + log(psi^2 s_j^2
    + sigma_k^2)]`` with ``z = U^T y``: a route independent of the library's QR and chain rule, and one that never
    squares ``X``'s condition number (``eigh(X X^T)`` loses 1e-7 of the weights at ``sigma^2 / psi^2 = 1e-8``).
    ``[b, K]``."""
    out = []
    for xi, yi in zip(np.asarray(x, np.float64), np.asarray(y, np.float64)):
        n = xi.shape[0]
        u, sv, _ = np.linalg.svd(xi, full_matrices=True)
        s2 = np.zeros(n)
        s2[: sv.size] = sv**2
        z2 = (u.T @ yi) ** 2
        c = psi**2 * s2[None, :] + np.asarray(levels)[:, None] ** 2  # [K, n]
        logp = np.log(pis) - 0.5 * np.sum(z2[None] / c + np.log(c), axis=1)
        p = np.exp(logp - logp.max())
        out.append(p / p.sum())
    return np.array(out)


# ----------------------------------------------------------------------------------------------------------
# Exact identities (float64)
# ----------------------------------------------------------------------------------------------------------


def test_predictor_matches_the_brute_force_posterior_at_the_query_and_every_prefix(float64):
    x_cov = np.diag([2.0, 1.0, 0.5, 0.25]) + 0.1  # the input law does not enter the posterior
    task = NoiseMixtureTask(d=D, levels=[0.05, 0.4, 1.5], weights=[0.2, 0.5, 0.3], psi=0.7, x_cov=x_cov)
    prompts = task.sample(jax.random.key(0), B, N)
    assert prompts.x.dtype == jnp.float64
    levels, pis, psi = task.levels, task.weights, task.psi
    probs, means, variances, mean, var = brute_force(prompts.x, prompts.y, prompts.x_query, levels, pis, psi)

    pred = icl.bayes_predictive(task)
    log_w, m_k, v_k = pred.mixture(prompts)
    assert_close(np.exp(log_w), probs, what="posterior weights")
    assert_close(m_k, means, what="per-level means")
    assert_close(v_k, variances, what="per-level variances")
    got_mean, got_var = pred(prompts)
    assert_close(got_mean, mean, what="predictive mean")
    assert_close(got_var, var, what="predictive variance")
    assert_close(icl.bayes_posterior_mean(task)(prompts), mean, what="posterior mean")

    pre_mean, pre_var = pred.prefix(prompts)
    pre_probs = np.exp(np.asarray(pred.prefix_log_posterior(prompts)))
    for k in range(1, N + 1):  # entry k - 1: y_k from x_k and the first k - 1 pairs
        p, _, _, m, v = brute_force(prompts.x[:, : k - 1], prompts.y[:, : k - 1], prompts.x[:, k - 1], levels, pis,
                                    psi)
        assert_close(pre_probs[:, k - 1], p, what=f"prefix weights k={k}")
        assert_close(pre_mean[:, k - 1], m, what=f"prefix mean k={k}")
        assert_close(pre_var[:, k - 1], v, what=f"prefix variance k={k}")
    np.testing.assert_array_equal(pre_mean[:, 0], 0.0)  # no context: the prior mean
    np.testing.assert_allclose(pre_probs[:, 0], np.broadcast_to(pis, (B, 3)), rtol=EXACT_F64)


def test_one_level_is_the_gaussian_bayes_predictor(float64):
    mixture = NoiseMixtureTask(d=D, levels=[0.3], psi=0.8)
    gaussian = icl.LinearRegressionTask.isotropic(D, noise_std=0.3, tau=0.8)
    prompts = mixture.sample(jax.random.key(1), B, N)
    for name in ("bayes_posterior_mean", "bayes_predictive"):
        mix, ref = getattr(icl, name)(mixture), getattr(icl, name)(gaussian)
        assert isinstance(mix, NoiseMixturePosteriorMean)
        for method in ("__call__", "prefix"):
            got, want = getattr(mix, method)(prompts), getattr(ref, method)(prompts)
            for g, w in zip(*(jax.tree.leaves(t) for t in (got, want))):
                assert_close(g, w, what=f"{name}.{method}")


def test_bayes_dispatches_on_the_task_and_the_task_describes_its_second_moments():
    task = NoiseMixtureTask(d=3, levels=[0.0, 0.5, 1.0], weights=[0.5, 0.25, 0.25], psi=2.0)
    assert type(icl.bayes_posterior_mean(task)) is NoiseMixturePosteriorMean
    assert type(icl.bayes_predictive(task)) is NoiseMixturePredictive
    assert icl.bayes_predictive(task).returns_variance and not icl.bayes_posterior_mean(task).returns_variance
    assert type(noise_mixture_posterior_mean(task)) is NoiseMixturePosteriorMean
    assert type(noise_mixture_predictive(task)) is NoiseMixturePredictive
    # noise_std is the root mean noise variance; the law carries the second moments
    assert task.noise_std == pytest.approx(np.sqrt(0.25 * 0.25 + 0.25 * 1.0))
    law = icl.law_of(task)
    np.testing.assert_allclose(law.w_cov, 4.0 * np.eye(3))
    assert law.noise_std == pytest.approx(task.noise_std) and not law.w_gaussian
    assert task.signal_variance() == pytest.approx(12.0)


# ----------------------------------------------------------------------------------------------------------
# Sampling, Monte Carlo and tiny noise (float32, one shape)
# ----------------------------------------------------------------------------------------------------------


def test_sampling_draws_each_level_with_its_weight_and_labels_follow_it():
    task = NoiseMixtureTask(d=MC_D, levels=[0.0, 0.5, 2.0], weights=[0.2, 0.3, 0.5])
    prompts, comp = task.sample_with_levels(jax.random.key(2), MC_B, MC_N)
    again = task.sample(jax.random.key(2), MC_B, MC_N)
    for a, b in zip(prompts, again):
        np.testing.assert_array_equal(a, b)  # the same prompts as sample()
    comp = np.asarray(comp)
    for k, pi in enumerate(task.weights):
        freq, se = mean_se((comp == k).astype(float))
        assert abs(freq - pi) <= 4 * se, f"level {k}: frequency {freq:.4f} vs {pi}"
    resid = np.asarray(prompts.y) - np.einsum("bnd,bd->bn", prompts.x, prompts.w)
    assert np.abs(resid[comp == 0]).max() < 1e-5  # noiseless prompts
    for k in (1, 2):  # residual standard deviation = the prompt's level
        assert abs(resid[comp == k].std() / task.levels[k] - 1) < 0.05


@pytest.mark.slow  # Monte Carlo over 3 x 20k prompts; the exactness tests above stay in the default suite
def test_bayes_error_is_below_every_single_ridge_on_mixture_prompts():
    psi = 1.0 / np.sqrt(MC_D)  # Bai et al.'s normalisation
    task = NoiseMixtureTask(d=MC_D, levels=[0.1, 1.0], psi=psi)
    prompts = task.sample(jax.random.key(3), MC_B, MC_N)
    y = np.asarray(prompts.y_query, np.float64)
    bayes = (np.asarray(icl.bayes_posterior_mean(task)(prompts), np.float64) - y) ** 2
    for sigma in task.levels:
        ridge = (np.asarray(icl.ridge(sigma**2 / psi**2)(prompts), np.float64) - y) ** 2
        gap, se = mean_se(ridge - bayes)  # paired: the same prompts
        assert gap > 4 * se, f"ridge at sigma={sigma}: excess {gap:.4g} is not 4 SE ({se:.3g}) above Bayes"


def test_zero_and_tiny_levels_are_the_noiseless_component_without_nan():
    task = NoiseMixtureTask(d=MC_D, levels=[0.0, 0.5], psi=1.0)
    prompts, comp = task.sample_with_levels(jax.random.key(4), MC_B, MC_N)  # n = 8 > d = 4: the span fills
    comp = np.asarray(comp)
    pred = icl.bayes_predictive(task)
    post = np.exp(np.asarray(pred.log_posterior(prompts)))
    assert post[comp == 0, 0].min() > 0.999 and post[comp == 1, 0].max() < 1e-3
    mean, var = pred(prompts)
    err = (np.asarray(mean) - np.asarray(prompts.y_query)) ** 2
    assert err[comp == 0].mean() < 1e-6 * float(np.mean(np.asarray(prompts.y_query)[comp == 0] ** 2))
    # levels far below the float32 resolution (1e-30 squares to 0) behave as 0 and share its mass by their prior
    tiny = NoiseMixtureTask(d=MC_D, levels=[1e-30, 0.5], psi=1.0)
    tiny_post = np.exp(np.asarray(icl.bayes_predictive(tiny).log_posterior(prompts)))
    np.testing.assert_allclose(tiny_post, post, atol=1e-6)
    tiny_mean, tiny_var = icl.bayes_predictive(tiny)(prompts)
    pre_mean, pre_var = icl.bayes_predictive(tiny).prefix(prompts)
    for out in (tiny_mean, tiny_var, pre_mean, pre_var, var):
        assert np.all(np.isfinite(np.asarray(out)))
    assert np.all(np.asarray(tiny_var) > 0) and np.all(np.asarray(pre_var) > 0)


# ----------------------------------------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"levels": [0.1, 0.5], "weights": [0.5, 0.6]}, "weights must sum to 1"),
    ({"levels": [0.1, -0.5]}, "levels must all be finite and >= 0"),
    ({"levels": [0.1, np.nan]}, "levels must all be finite and >= 0"),
    ({"levels": [0.1, np.inf]}, "levels must all be finite and >= 0"),
    ({"levels": [0.1, 0.5], "weights": [1.0]}, "weights must have the same length as levels"),
    ({"levels": [0.1, 0.5], "weights": [1.0, 0.0]}, "weights must all be finite and > 0"),
    ({"levels": [0.1, 0.5], "weights": [1.5, -0.5]}, "weights must all be finite and > 0"),
    ({"levels": []}, "levels must be a non-empty 1-D sequence"),
    ({"levels": [[0.1, 0.2]]}, "levels must be a non-empty 1-D sequence"),
    ({"levels": "0.1"}, "levels must be a sequence of numbers"),
    ({"levels": [0.1], "psi": 0.0}, "psi must be a finite number > 0"),
    ({"levels": [0.1], "psi": -1.0}, "psi must be a finite number > 0"),
    ({"levels": [0.1], "d": 0}, "d must be an integer >= 1"),
    ({"levels": [0.1], "d": 2.5}, "d must be an integer >= 1"),
    ({"levels": [0.1], "x_cov": np.eye(2)}, "x_cov must have shape"),
])
def test_bad_arguments_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseMixtureTask(**{"d": 3, **kwargs})


def test_weights_within_tolerance_are_renormalised_and_the_predictor_refuses_other_tasks():
    task = NoiseMixtureTask(d=2, levels=[0.1, 0.2], weights=[0.5, 0.5 + 5e-7])
    assert np.sum(task.weights) == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(ValueError, match="needs a NoiseMixtureTask"):
        noise_mixture_posterior_mean(icl.LinearRegressionTask(d=2, noise_std=0.1))
    with pytest.raises(ValueError, match="prior_cov must be"):
        NoiseMixturePosteriorMean([0.1], [1.0], -np.eye(2))
    with pytest.raises(ValueError, match="y_scale must be a finite number > 0"):
        NoiseMixturePosteriorMean([0.1], [1.0], np.eye(2), 0.0)
    pred = noise_mixture_posterior_mean(task)
    bad = Prompts(x=jnp.zeros((2, 3, 5)), y=jnp.zeros((2, 3)), x_query=jnp.zeros((2, 5)), y_query=jnp.zeros(2))
    with pytest.raises(ValueError, match="d=5"):
        pred(bad)


# ----------------------------------------------------------------------------------------------------------
# Property over wide domains (float64; one compiled shape, effective d and n varied inside it)
# ----------------------------------------------------------------------------------------------------------

_log_uniform = st.floats(-3.0, 2.0).map(lambda e: 10.0**e)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(levels=st.lists(_log_uniform, min_size=3, max_size=3),
       raw_weights=st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3),
       psi=st.floats(-1.0, 1.0).map(lambda e: 10.0**e),
       d_eff=st.integers(1, D),
       y_scale=st.floats(-2.0, 2.0).map(lambda e: 10.0**e),
       seed=st.integers(0, 2**31 - 1))
def test_posterior_over_levels_is_the_svd_closed_form_at_every_prefix_and_ignores_the_query(
        float64, levels, raw_weights, psi, d_eff, y_scale, seed):
    """``p(k | D)`` sums to 1 and equals the closed form of :func:`closed_form_posterior` (SVD of ``X``, not the
    library's QR chain rule) at every context length ``0..N`` and every effective
    dimension ``1..D`` (inputs zero beyond ``d_eff``: with an isotropic prior they add nothing to ``X X^T``),
    for levels and ``psi`` over five and two decades and labels of any scale (any ``y`` has a posterior).
    The whole-context posterior must not change with ``x_query``.

    Broken variants it catches: weights without the log-determinant term (the likelihood's ``-1/2 log det C_k``
    is what favours small levels on data that fit); ``sigma_k`` in place of ``sigma_k^2``; a prior-free
    softmax; and the exclusive sum written as ``cumsum(l) - l``, which cancels against the huge
    log-likelihood of the label-free query point and makes the weights depend on ``x_query`` (it did).
    """
    weights = np.asarray(raw_weights) / np.sum(raw_weights)
    task = NoiseMixtureTask(d=D, levels=levels, weights=weights, psi=psi)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, N, D)) * (np.arange(D) < d_eff)
    y = y_scale * rng.normal(size=(B, N))
    xq = rng.normal(size=(B, D))
    prompts = Prompts(x=jnp.asarray(x), y=jnp.asarray(y), x_query=jnp.asarray(xq), y_query=jnp.zeros(B))
    pred = icl.bayes_posterior_mean(task)

    pre = np.exp(np.asarray(pred.prefix_log_posterior(prompts)))  # [B, N, K]
    np.testing.assert_allclose(pre.sum(-1), 1.0, rtol=0, atol=1e-12)
    for k in range(N + 1):
        want = closed_form_posterior(x[:, :k], y[:, :k], task.levels, task.weights, psi)
        got = pre[:, k] if k < N else np.exp(np.asarray(pred.log_posterior(prompts)))
        np.testing.assert_allclose(got, want, rtol=0, atol=EXACT_F64, err_msg=f"context length {k}")
    moved = prompts._replace(x_query=jnp.asarray(1e3 * rng.normal(size=(B, D))))
    np.testing.assert_array_equal(pred.log_posterior(moved), pred.log_posterior(prompts))
