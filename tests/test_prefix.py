"""Prefix-wise predictors (icl.prefix): column k-1 equals the ordinary predictor on the first k pairs.

Every check runs in float64 and compares all n prefixes with the ordinary predictor applied to the
truncated prompt, to 1e-10. With d = 4 and n = 7 the prefixes cover k < d, k = d and k > d; the
predictors whose code branches on n versus d (least squares, noiseless Bayes) also run with n = 3 < d.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import icl
from icl import prefix

D = 4
N_LONG = 7  # n > d: its prefixes are the cases k < d, k = d and k > d
LENGTHS = [3, N_LONG]  # n < d and n > d, for the code that branches on n versus d


def truncated(prompts: icl.Prompts, k: int) -> icl.Prompts:
    return prompts._replace(x=prompts.x[:, :k], y=prompts.y[:, :k])


def assert_prefix_matches(prefix_predictor, ordinary, prompts, tol=1e-10):
    # One compiled program per call (eager dispatch would compile every scan and fori_loop separately).
    prefix_predictor, ordinary = jax.jit(prefix_predictor), jax.jit(ordinary)
    got = np.asarray(prefix_predictor(prompts))
    b, n = prompts.y.shape
    assert got.shape == (b, n)
    expected = np.stack([np.asarray(ordinary(truncated(prompts, k))) for k in range(1, n + 1)], axis=1)
    err = np.max(np.abs(got - expected)) / max(1.0, np.max(np.abs(expected)))
    assert err <= tol, err


def sample(task, n, seed=0, batch=32):
    return task.sample(jax.random.key(seed), batch, n)


@pytest.mark.parametrize("n", [N_LONG])
def test_one_step_gd_every_prefix(n):
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask.isotropic(D, 0.3)
        p = sample(task, n)
        assert_prefix_matches(prefix.prefix_gradient_descent(0.4), icl.gradient_descent(0.4), p)
        precond = np.diag([1.0, 0.5, 2.0, 0.7]) + 0.1
        assert_prefix_matches(prefix.prefix_gradient_descent(0.3, precond), icl.gradient_descent(0.3, precond), p)


@pytest.mark.parametrize("n", [N_LONG])
def test_multi_step_preconditioned_gd_every_prefix(n):
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask.from_eigenvalues([2.0, 1.0, 0.5, 0.25], noise_std=0.2)
        p = sample(task, n, seed=1)
        etas = np.array([0.3, 0.2, 0.1])
        precs = np.stack([np.eye(D), np.diag([0.5, 1.0, 1.5, 2.0]), np.eye(D) + 0.05])
        assert_prefix_matches(prefix.prefix_gradient_descent(etas, precs), icl.gradient_descent(etas, precs), p)


@pytest.mark.parametrize("n", [N_LONG])
def test_ridge_every_prefix(n):
    with jax.enable_x64(True):
        p = sample(icl.LinearRegressionTask.isotropic(D, 0.5), n, seed=2)
        assert_prefix_matches(prefix.prefix_ridge(0.3), icl.ridge(0.3), p)


@pytest.mark.parametrize("n", LENGTHS)
def test_least_squares_every_prefix_min_norm_then_normal_equations(n):
    with jax.enable_x64(True):
        p = sample(icl.LinearRegressionTask.isotropic(D, 0.5), n, seed=3)
        assert_prefix_matches(prefix.prefix_least_squares(), icl.least_squares(), p)


@pytest.mark.parametrize("n", LENGTHS)
def test_least_squares_prefix_weights_interpolate_while_k_le_d(n):
    with jax.enable_x64(True):
        p = sample(icl.LinearRegressionTask.isotropic(D, 0.5), n, seed=4)
        ws = np.asarray(prefix.prefix_least_squares_weights(p.x, p.y))
    x, y = np.asarray(p.x), np.asarray(p.y)
    for k in range(1, min(n, D) + 1):
        np.testing.assert_allclose(np.einsum("bkd,bd->bk", x[:, :k], ws[:, k - 1]), y[:, :k], atol=1e-10)
        expected = np.stack([np.linalg.pinv(xi[:k]) @ yi[:k] for xi, yi in zip(x, y)])
        np.testing.assert_allclose(ws[:, k - 1], expected, atol=1e-10)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("noise", [0.0, 0.6])
def test_bayes_posterior_mean_every_prefix_non_isotropic_prior(n, noise):
    omega = np.array([[2.0, 0.5, 0.1, 0.0], [0.5, 1.0, -0.3, 0.0], [0.1, -0.3, 0.6, 0.1], [0.0, 0.0, 0.1, 0.8]])
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask(d=D, noise_std=noise, x_cov=np.diag([1.0, 2.0, 0.5, 1.5]), w_cov=omega)
        p = sample(task, n, seed=5)
        assert_prefix_matches(prefix.prefix_bayes_posterior_mean(task), icl.bayes_posterior_mean(task), p)


@pytest.mark.parametrize("n", [N_LONG])
@pytest.mark.parametrize("layers", [1, 3])
def test_linear_transformer_every_prefix(n, layers):
    with jax.enable_x64(True):
        model = icl.LinearTransformer(D, layers, init_scale=0.3, init_diag=0.2, rngs=nnx.Rngs(layers))
        p = sample(icl.LinearRegressionTask.isotropic(D, 0.4), n, seed=6)
        assert_prefix_matches(prefix.prefix_lsa(model), model, p)


def test_prefix_predictors_are_jittable_and_validate():
    task = icl.LinearRegressionTask.isotropic(D, 0.1)
    p = sample(task, 6, seed=7)
    model = icl.LinearTransformer(D, 2, rngs=nnx.Rngs(0))
    for f in (prefix.prefix_least_squares(), prefix.prefix_lsa(model)):
        out = jax.jit(f)(p)
        assert out.shape == (32, 6) and bool(np.all(np.isfinite(np.asarray(out))))
    with pytest.raises(ValueError, match="lam"):
        prefix.prefix_ridge(0.0)
    with pytest.raises(ValueError, match="preconditioner"):
        prefix.prefix_gd_weights(p.x, p.y, [0.1, 0.2], np.eye(D + 1))
    with pytest.raises(ValueError, match="d="):
        prefix.prefix_lsa(icl.LinearTransformer(D + 1, 1, rngs=nnx.Rngs(0)))(p)
