"""Task distributions: sampling, moments, purity, and validation errors that name the field."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl


def test_sample_shapes_and_targets_are_linear_in_x_plus_noise():
    task = icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0, 0.5], noise_std=0.0)
    p = task.sample(jax.random.key(0), 7, 5)
    assert (p.batch, p.n, p.d) == (7, 5, 3)
    assert p.x.shape == (7, 5, 3) and p.y.shape == (7, 5) and p.x_query.shape == (7, 3)
    assert p.y_query.shape == (7,) and p.w.shape == (7, 3)
    np.testing.assert_allclose(p.y, np.einsum("bnd,bd->bn", p.x, p.w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.y_query, np.einsum("bd,bd->b", p.x_query, p.w), rtol=1e-5, atol=1e-5)
    assert icl.check_prompts(p) is p


def test_sample_is_a_pure_function_of_the_key():
    task = icl.LinearRegressionTask.isotropic(3, 0.5)
    a, b = task.sample(jax.random.key(1), 4, 6), task.sample(jax.random.key(1), 4, 6)
    c = task.sample(jax.random.key(2), 4, 6)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.x, c.x)


def test_task_is_a_pytree_that_samples_identically_under_jit():
    task = icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0, 0.5], noise_std=0.3, w_prior="inverse")
    leaves, treedef = jax.tree.flatten(task)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.d == task.d and rebuilt.noise_std == task.noise_std
    eager = task.sample(jax.random.key(0), 4, 6)
    jitted = jax.jit(lambda t, k: t.sample(k, 4, 6))(task, jax.random.key(0))
    for u, v in zip(eager, jitted):
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6)


def test_sample_under_x64_is_float64_and_default_is_float32():
    task = icl.LinearRegressionTask.isotropic(2, 0.1)
    assert task.sample(jax.random.key(0), 2, 3).x.dtype == jnp.float32
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(0), 2, 3)
        assert all(t.dtype == jnp.float64 for t in p)


def test_sample_moments_match_sigma_omega_and_noise_within_4_se():
    """Empirical Cov(x), Cov(w) and Var(y - w^T x) match Sigma, Omega, sigma^2 entrywise within 4 SE."""
    sigma = 0.7
    with jax.enable_x64(True):
        task = icl.LinearRegressionTask.from_eigenvalues([2.0, 1.0, 0.25], noise_std=sigma, w_prior="inverse")
        p = task.sample(jax.random.key(3), 100_000, 1)
        x, w, y = np.asarray(p.x[:, 0]), np.asarray(p.w), np.asarray(p.y[:, 0])
    for samples, target in ((x, task.x_cov), (w, task.w_cov)):
        prods = samples[:, :, None] * samples[:, None, :]
        mean, se = prods.mean(0), prods.std(0, ddof=1) / np.sqrt(len(prods))
        assert np.all(np.abs(mean - target) <= 4 * se), (mean, target, se)
    eps2 = (y - np.einsum("bd,bd->b", x, w)) ** 2
    assert abs(eps2.mean() - sigma**2) <= 4 * eps2.std(ddof=1) / np.sqrt(len(eps2))


def test_from_eigenvalues_builds_rotated_sigma_and_resolves_the_prior():
    eig = np.array([3.0, 1.0, 0.5])
    t = icl.LinearRegressionTask.from_eigenvalues(eig, w_prior="inverse", rotation_seed=4)
    np.testing.assert_allclose(np.linalg.eigvalsh(t.x_cov), np.sort(eig), rtol=1e-12)
    np.testing.assert_allclose(t.w_cov @ t.x_cov, np.eye(3), atol=1e-12)
    assert not np.allclose(t.x_cov, np.diag(np.diag(t.x_cov)))  # really rotated
    np.testing.assert_array_equal(icl.LinearRegressionTask.from_eigenvalues(eig, rotation_seed=None).x_cov, np.diag(eig))
    np.testing.assert_array_equal(icl.LinearRegressionTask.from_eigenvalues(eig, w_prior=2.0).w_cov, 2.0 * np.eye(3))
    np.testing.assert_array_equal(icl.LinearRegressionTask.from_eigenvalues(eig).w_cov, np.eye(3))
    np.testing.assert_array_equal(icl.LinearRegressionTask.isotropic(3, 0.5, tau=2.0).w_cov, 4.0 * np.eye(3))


def test_random_rotation_is_orthogonal_and_seeded():
    q = icl.random_rotation(5, 4)
    np.testing.assert_allclose(q @ q.T, np.eye(4), atol=1e-12)
    np.testing.assert_array_equal(q, icl.random_rotation(5, 4))
    assert not np.allclose(q, icl.random_rotation(6, 4))


NOT_SYMMETRIC = np.array([[1.0, 0.5], [0.0, 1.0]])
NOT_PD = np.array([[1.0, 2.0], [2.0, 1.0]])


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: icl.LinearRegressionTask(d=0), "d"),
        (lambda: icl.LinearRegressionTask(d=-3), "d"),
        (lambda: icl.LinearRegressionTask(d=2.5), "d"),
        (lambda: icl.LinearRegressionTask(d=True), "d"),
        (lambda: icl.LinearRegressionTask.isotropic(0), "d"),
        (lambda: icl.LinearRegressionTask.isotropic(2.0), "d"),
        (lambda: icl.LinearRegressionTask(d=2, noise_std=-0.1), "noise_std"),
        (lambda: icl.LinearRegressionTask(d=2, noise_std=float("nan")), "noise_std"),
        (lambda: icl.LinearRegressionTask(d=2, noise_std=float("inf")), "noise_std"),
        (lambda: icl.LinearRegressionTask(d=2, x_cov=NOT_SYMMETRIC), "x_cov"),
        (lambda: icl.LinearRegressionTask(d=2, x_cov=NOT_PD), "x_cov"),
        (lambda: icl.LinearRegressionTask(d=2, x_cov=np.eye(3)), "x_cov"),
        (lambda: icl.LinearRegressionTask(d=2, x_cov=np.ones(2)), "x_cov"),
        (lambda: icl.LinearRegressionTask(d=2, x_cov=np.array([[1.0, np.nan], [np.nan, 1.0]])), "x_cov"),
        (lambda: icl.LinearRegressionTask(d=2, w_cov=NOT_PD), "w_cov"),
        (lambda: icl.LinearRegressionTask(d=2, w_cov=NOT_SYMMETRIC), "w_cov"),
        (lambda: icl.LinearRegressionTask(d=2, w_cov=np.eye(3)), "w_cov"),
        (lambda: icl.LinearRegressionTask.isotropic(2, tau=0.0), "tau"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 0.0]), "eigenvalues"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, -2.0]), "eigenvalues"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([]), "eigenvalues"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, float("nan")]), "eigenvalues"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0], w_prior="isotropc"), "w_prior"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0], w_prior=-1.0), "w_prior"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0], w_prior=NOT_PD), "w_prior"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0], noise_std=-1.0), "noise_std"),
    ],
)
def test_task_validation_raises_value_error_naming_the_field(build, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        build()


@pytest.mark.parametrize("batch, n, field", [(0, 3, "batch"), (2, 0, "n"), (-1, 3, "batch"), (2, 1.5, "n")])
def test_sample_rejects_non_positive_batch_and_n(batch, n, field):
    task = icl.LinearRegressionTask.isotropic(2)
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        task.sample(jax.random.key(0), batch, n)


def _prompts():
    return icl.LinearRegressionTask.isotropic(3, 0.1).sample(jax.random.key(0), 4, 5)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda p: p._replace(x=p.x[0]), r"prompts\.x must"),
        (lambda p: p._replace(y=p.y[:, :-1]), r"prompts\.y must"),
        (lambda p: p._replace(x_query=p.x_query[:, :2]), r"prompts\.x_query must"),
        (lambda p: p._replace(y_query=p.y_query[:2]), r"prompts\.y_query must"),
        (lambda p: p._replace(x=p.x.at[0, 1, 2].set(jnp.nan)), r"prompts\.x contains NaN"),
        (lambda p: p._replace(y=p.y.at[1, 0].set(jnp.inf)), r"prompts\.y contains NaN"),
        (lambda p: p._replace(x_query=p.x_query.at[2, 0].set(jnp.nan)), r"prompts\.x_query contains NaN"),
        (lambda p: p._replace(y_query=p.y_query.at[3].set(jnp.nan)), r"prompts\.y_query contains NaN"),
    ],
)
def test_check_prompts_names_the_bad_field(mutate, pattern):
    with pytest.raises(ValueError, match=pattern):
        icl.check_prompts(mutate(_prompts()))
