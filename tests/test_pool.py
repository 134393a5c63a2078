"""FiniteTaskPool: a fixed pool of task vectors drawn once from the prior, one member per prompt."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_within_se, mean_se, x64

import icl

# One compiled sampler per shape (tasks and pools are pytrees): far cheaper than eager sampling op by op.
_sample = jax.jit(lambda task, key, batch, n, q=None: task.sample(key, batch, n, num_queries=q),
                  static_argnums=(2, 3, 4))


def test_pool_weights_are_fixed_by_seed_and_drawn_from_the_task_prior():
    task = icl.LinearRegressionTask(d=3, noise_std=0.5)
    pool = icl.FiniteTaskPool(task, num_tasks=5, seed=7)
    assert pool.weights.shape == (5, 3) and pool.num_tasks == 5 and pool.d == 3 and pool.noise_std == 0.5
    np.testing.assert_array_equal(pool.weights, icl.FiniteTaskPool(task, 5, 7).weights)
    assert not np.allclose(pool.weights, icl.FiniteTaskPool(task, 5, 8).weights)
    np.testing.assert_array_equal(pool.weights, task.sample(jax.random.PRNGKey(7), 5, 1).w)


def test_every_prompt_uses_one_pool_member_uniformly_and_labels_follow_it():
    with x64():
        task = icl.LinearRegressionTask(d=2, noise_std=0.0)
        pool = icl.FiniteTaskPool(task, num_tasks=4, seed=0)
        prompts = _sample(pool, jax.random.PRNGKey(1), 4000, 5)
        w = np.asarray(prompts.w)
        member = np.argmin(((w[:, None, :] - np.asarray(pool.weights)[None]) ** 2).sum(-1), axis=1)
        np.testing.assert_array_equal(w, np.asarray(pool.weights)[member])  # w is exactly a pool member
        np.testing.assert_allclose(prompts.y, np.einsum("bnd,bd->bn", prompts.x, w), atol=1e-12)
        np.testing.assert_allclose(prompts.y_query, np.einsum("bd,bd->b", prompts.x_query, w), atol=1e-12)
        for m in range(4):  # each member is drawn with probability 1/4
            freq, se = mean_se((member == m).astype(float))
            assert_within_se(freq, se, 0.25, what=f"frequency of member {m}")


def test_pool_noise_has_the_task_noise_std_and_queries_share_the_member():
    pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=2, noise_std=0.5), num_tasks=3, seed=0)
    prompts = _sample(pool, jax.random.PRNGKey(2), 2000, 4, 3)
    assert prompts.x_query.shape == (2000, 3, 2) and prompts.y_query.shape == (2000, 3)
    resid = np.asarray(prompts.y_query - jnp.einsum("bqd,bd->bq", prompts.x_query, prompts.w)).ravel()
    var, se = mean_se(resid**2)
    assert_within_se(var, se, 0.25, what="noise variance")


def test_pool_is_a_pytree_and_jit_samples_without_recompiling_per_pool():
    task = icl.LinearRegressionTask(d=2, noise_std=0.1)
    sample = jax.jit(lambda pool, key: pool.sample(key, 8, 3))
    a, b = icl.FiniteTaskPool(task, 4, 0), icl.FiniteTaskPool(task, 4, 1)
    out_a, out_b = sample(a, jax.random.PRNGKey(0)), sample(b, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(out_a.y, sample(a, jax.random.PRNGKey(0)).y)  # a pure function of the key
    assert sample._cache_size() == 1 and not np.allclose(out_a.w, out_b.w)
    leaves = jax.tree_util.tree_leaves(a)
    assert any(leaf is a.weights for leaf in leaves)


def test_signal_variance_is_the_pool_mean_of_w_sigma_w_and_matches_monte_carlo():
    with x64():
        task = icl.LinearRegressionTask(d=3, noise_std=0.0, x_cov=np.diag([1.0, 2.0, 0.5]))
        pool = icl.FiniteTaskPool(task, num_tasks=6, seed=3)
        w = np.asarray(pool.weights)
        assert abs(pool.signal_variance() - np.mean(np.einsum("mi,ij,mj->m", w, task.x_cov, w))) < 1e-12
        prompts = _sample(pool, jax.random.PRNGKey(0), 20000, 1)
        m, se = mean_se(np.asarray(prompts.y_query) ** 2)
        assert_within_se(m, se, pool.signal_variance(), what="E[y^2] on the pool")


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_tasks": 0}, "num_tasks"), ({"num_tasks": 2.5}, "num_tasks"), ({"num_tasks": 3, "seed": -1}, "seed")],
)
def test_bad_pool_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        icl.FiniteTaskPool(icl.LinearRegressionTask(d=2), **kwargs)


def test_pool_rejects_tasks_without_weights():
    with pytest.raises(ValueError, match="task"):
        icl.FiniteTaskPool(object(), num_tasks=3, seed=0)


def test_pool_sample_validates_shapes():
    pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=2), 3, 0)
    with pytest.raises(ValueError, match="batch"):
        pool.sample(jax.random.PRNGKey(0), 0, 3)
    with pytest.raises(ValueError, match="num_queries"):
        pool.sample(jax.random.PRNGKey(0), 2, 3, num_queries=0)

