"""FiniteTaskPool: a fixed pool of task vectors drawn once from the prior, one member per prompt."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import EXACT_F32, EXACT_F64, assert_close, assert_within_se, mean_se, x64

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



# dMMSE on a pool: a vanishing noise_std picks the best-fitting member; big pools run in chunks.

def _best_member(weights, x, y):
    """Index of the member with the smallest squared residual on ``(x, y)`` (float64 numpy), ``[b]``."""
    w, x, y = (np.asarray(a, np.float64) for a in (weights, x, y))
    return np.argmin(((y[:, None, :] - np.einsum("bnd,md->bmn", x, w)) ** 2).sum(-1), axis=1)


@pytest.mark.parametrize("sigma", [1e-19, 1e-20, 1e-30])
def test_dmmse_with_a_vanishing_noise_std_predicts_with_the_best_fitting_member(sigma):
    pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=3, noise_std=0.1), num_tasks=10, seed=0)
    prompts = _sample(pool, jax.random.PRNGKey(0), 64, 6)
    w = np.asarray(pool.weights)
    best = _best_member(w, prompts.x, prompts.y)
    for chunk in (None, 3):  # one chunk, and four chunks (the last one short)
        pred = icl.dmmse(pool, noise_std=sigma, variance=True, chunk_size=chunk)
        (mean, var), (pm, pv) = jax.jit(lambda p, q: (p(q), p.prefix(q)))(pred, prompts)
        assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(np.isfinite(pm))
        want = np.einsum("bd,bd->b", np.asarray(prompts.x_query, np.float64), w[best])
        assert_close(mean, want, EXACT_F32, f"sigma={sigma} chunk={chunk}")
        assert np.all(np.asarray(var) <= 1e-30) and np.all(np.asarray(pv) >= 0)
        assert_close(pm[:, 0], np.asarray(prompts.x[:, 0]) @ w.mean(0), EXACT_F32, "no context: the pool mean")
        for k in range(2, 7):  # the first k - 1 pairs pick the member that predicts y_k
            b = _best_member(w, prompts.x[:, : k - 1], prompts.y[:, : k - 1])
            assert_close(pm[:, k - 1], np.einsum("bd,bd->b", np.asarray(prompts.x[:, k - 1], np.float64), w[b]),
                         EXACT_F32, f"prefix k={k}")
    log_post = np.asarray(icl.dmmse(pool, noise_std=sigma).log_posterior(prompts))
    np.testing.assert_array_equal(log_post[np.arange(64), best], 0.0)  # a point mass on the best fit
    assert np.all(np.isneginf(np.delete(log_post.ravel(), np.arange(64) * 10 + best)))


def test_dmmse_in_float64_below_float64_resolution_still_picks_the_best_fit():
    with x64():
        pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=2, noise_std=0.2), num_tasks=7, seed=2)
        prompts = _sample(pool, jax.random.PRNGKey(4), 32, 5)
        best = _best_member(pool.weights, prompts.x, prompts.y)
        mean = icl.dmmse(pool, noise_std=1e-200)(prompts)  # sigma^2 underflows to 0
        assert_close(mean, np.einsum("bd,bd->b", prompts.x_query, np.asarray(pool.weights)[best]), EXACT_F64)


@pytest.mark.parametrize("chunk", [1, 3, 4, 7])
def test_dmmse_in_chunks_equals_one_pass_over_the_pool(chunk):
    with x64():
        pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=3, noise_std=0.5), num_tasks=7, seed=1)
        prompts = _sample(pool, jax.random.PRNGKey(2), 16, 5)
        run = jax.jit(lambda p, q: (p(q), p.prefix(q), p.mixture(q)[:2], p.log_posterior(q)))
        got = run(icl.dmmse(pool, variance=True, chunk_size=chunk), prompts)
        want = run(icl.dmmse(pool, variance=True, chunk_size=7), prompts)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert_close(a, b, EXACT_F64, f"chunk_size={chunk}")


def test_dmmse_on_a_pool_of_ten_thousand_tasks_runs_in_chunks_and_equals_one_pass():
    pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=3, noise_std=0.5), num_tasks=10_000, seed=0)
    prompts = _sample(pool, jax.random.PRNGKey(1), 256, 8)
    run = jax.jit(lambda p, q: (p(q), p.prefix(q)))
    (mean, var), (pm, pv) = run(icl.dmmse(pool, variance=True), prompts)  # default: chunks of 2048 members
    (mean1, var1), (pm1, pv1) = run(icl.dmmse(pool, variance=True, chunk_size=10_000), prompts)
    for a, b, what in [(mean, mean1, "mean"), (var, var1, "variance"), (pm, pm1, "prefix"), (pv, pv1, "prefix var")]:
        assert np.all(np.isfinite(a)), what
        assert_close(a, b, EXACT_F32, what)
    # memory: the compiled prefix at batch 2048, n = 100 needs O(batch * n * chunk), not O(batch * n * M)
    big = jax.ShapeDtypeStruct((2048, 100, 3), jnp.float32)
    shapes = icl.Prompts(x=big, y=jax.ShapeDtypeStruct((2048, 100), jnp.float32),
                         x_query=jax.ShapeDtypeStruct((2048, 3), jnp.float32),
                         y_query=jax.ShapeDtypeStruct((2048,), jnp.float32))
    analysis = jax.jit(lambda p, q: p.prefix(q)).lower(icl.dmmse(pool), shapes).compile().memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    assert analysis.temp_size_in_bytes < 4 * 2048 * 100 * 10_000 / 20, analysis.temp_size_in_bytes


def test_dmmse_chunk_size_must_be_a_positive_integer():
    pool = icl.FiniteTaskPool(icl.LinearRegressionTask(d=2, noise_std=0.5), num_tasks=3, seed=0)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            icl.dmmse(pool, chunk_size=bad)
