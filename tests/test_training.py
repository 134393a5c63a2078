"""Training engine: recovery of eta*, determinism, losses (query, every prefix, NLL), curriculum, clipping,
output-shape checks, divergence (also at the last step), config validation, convergence report."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import EXACT_F64, assert_close, x64

import icl


def lsa(d, init_scale=0.01):
    return lambda rngs: icl.LinearTransformer(d, 1, init_scale=init_scale, rngs=rngs)


def seed_gammas(result):
    """Gamma_eff = c A^T + a b^T of every seed's layer (docs/theory.md §2), from the raw weights."""
    layer = result.params["layers"][0]
    w_pv, w_kq = np.asarray(layer["w_pv"][...]), np.asarray(layer["w_kq"][...])
    d = w_pv.shape[-1] - 1
    b, c, a_mat, a = w_pv[:, d, :d], w_pv[:, d, d], w_kq[:, :d, :d], w_kq[:, d, :d]
    return c[:, None, None] * np.swapaxes(a_mat, -1, -2) + a[:, :, None] * b[:, None, :]


def leaves(result):
    return [np.asarray(a) for a in jax.tree.leaves(result.params)]


class PrefixGD(nnx.Module):
    """A tiny causal model: one GD step from zero with a learned step size, on every prefix (Garg's convention)."""

    def __init__(self, d, *, rngs):
        self.d = d
        self.eta = nnx.Param(jnp.asarray(0.1))

    def __call__(self, p):
        h = jnp.einsum("bnd,bn->bd", p.x, p.y) / p.x.shape[1]
        return self.eta[...] * jnp.einsum("bd,bd->b", p.x_query, h)

    def prefix(self, p):
        n = p.x.shape[1]
        sums = jnp.cumsum(p.x * p.y[..., None], axis=1) - p.x * p.y[..., None]  # pairs before k
        counts = jnp.maximum(jnp.arange(n), 1)[None, :, None]
        return self.eta[...] * jnp.einsum("bnd,bnd->bn", p.x, sums / counts)


class GaussianHead(nnx.Module):
    """A mean-and-variance model: mean eta * x_q^T h, variance exp(s) (returns_variance = True)."""

    returns_variance = True

    def __init__(self, d, *, rngs):
        self.gd = PrefixGD(d, rngs=rngs)
        self.log_var = nnx.Param(jnp.asarray(0.3))

    def __call__(self, p):
        mean = self.gd(p)
        return mean, jnp.exp(self.log_var[...]) * jnp.ones_like(mean)

    def prefix(self, p):
        mean = self.gd.prefix(p)
        return mean, jnp.exp(self.log_var[...]) * jnp.ones_like(mean)


@pytest.mark.slow
def test_short_training_recovers_optimal_step_size_within_3_percent_and_reports_converged():
    """d=3, n=10, sigma=0.5: Adam 2e-2 (cosine), 400 steps x 1024 prompts, 2 seeds (Mahankali Thm 1)."""
    d, n, sigma = 3, 10, 0.5
    task = icl.LinearRegressionTask.isotropic(d, sigma)
    config = icl.TrainConfig(steps=400, batch=1024, n=n, lr=2e-2, num_seeds=2, seed=0)
    result = icl.train(lsa(d), task, config)
    eta_star = float(icl.optimal_step_size(task, n))
    for gamma in seed_gammas(result):
        assert abs(np.trace(gamma) / d - eta_star) <= 0.03 * eta_star, (np.trace(gamma) / d, eta_star)
        assert float(icl.relative_error(gamma, np.asarray(icl.optimal_gamma(task, n)))) <= 0.03
    assert result.losses[:, -50:].mean() < result.losses[:, :10].mean()
    report = icl.convergence_report(result)
    assert report["converged"], report["reasons"]
    assert result.final_losses.shape == (2,) and np.all(np.isfinite(result.final_losses))


class Offset(nnx.Module):
    """Predicts x_q^T w + b: on a noiseless task its loss is exactly b^2 (no minibatch noise)."""

    def __init__(self, *, rngs):
        self.b = nnx.Param(jnp.asarray(3.0))

    def __call__(self, p):
        return jnp.einsum("bd,bd->b", p.x_query, p.w) + self.b[...]


def test_deliberately_short_run_is_reported_as_not_converged():
    config = icl.TrainConfig(steps=100, batch=8, n=4, lr=1e-2, schedule="constant", num_seeds=2)
    result = icl.train(lambda r: Offset(rngs=r), icl.LinearRegressionTask.isotropic(2, 0.0), config)
    report = icl.convergence_report(result)
    assert not report["converged"] and report["still_falling"] and report["window"] == 10
    assert "still falling" in report["reasons"][0]
    # The same program (lr is traced) with a larger step reaches b = 0 early and stays there.
    long = icl.train(lambda r: Offset(rngs=r), icl.LinearRegressionTask.isotropic(2, 0.0),
                     icl.TrainConfig(steps=100, batch=8, n=4, lr=0.2, schedule="constant", num_seeds=2))
    assert icl.convergence_report(long)["converged"], icl.convergence_report(long)["reasons"]


def test_seeds_that_settle_at_different_losses_are_reported_as_disagreeing():
    rng = np.random.default_rng(0)
    losses = np.stack([1.0 + 0.01 * rng.standard_normal(200), 1.5 + 0.01 * rng.standard_normal(200)])
    config = icl.TrainConfig(steps=200, num_seeds=2)
    report = icl.convergence_report(icl.TrainResult(None, None, losses, config))
    assert report["seeds_disagree"] and not report["still_falling"] and not report["converged"]
    agree = icl.convergence_report(icl.TrainResult(None, None, losses[[0, 0]], config))
    assert agree["converged"] and agree["reasons"] == []


SMALL = dict(steps=16, batch=32, n=5, lr=1e-2, num_seeds=2, seed=3)
SMALL_TASK = icl.LinearRegressionTask.isotropic(2, 0.3)


@pytest.fixture(scope="module")
def small_run():
    """One short 2-seed run shared by the determinism, seed and shape tests (saves compilations)."""
    return icl.train(lsa(2), SMALL_TASK, icl.TrainConfig(**SMALL))


def test_same_config_and_seed_give_bit_identical_losses_and_parameters(small_run):
    again = icl.train(lsa(2), SMALL_TASK, icl.TrainConfig(**SMALL))
    np.testing.assert_array_equal(again.losses, small_run.losses)
    for u, v in zip(leaves(again), leaves(small_run)):
        np.testing.assert_array_equal(u, v)


def test_progress_chunks_and_snapshots_do_not_change_the_result(small_run):
    chunked = icl.train(lsa(2), SMALL_TASK, icl.TrainConfig(**SMALL, progress_every=4), snapshot_every=4)
    np.testing.assert_allclose(chunked.losses, small_run.losses, rtol=1e-6)
    np.testing.assert_allclose(chunked.final_losses, small_run.final_losses, rtol=1e-5)  # measured after the last chunk
    for u, v in zip(leaves(chunked), leaves(small_run)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)
    snaps = chunked.snapshots
    assert snaps.steps.tolist() == [0, 4, 8, 12, 16]
    for u, v in zip(jax.tree.leaves(snaps.params), leaves(chunked)):
        np.testing.assert_array_equal(np.asarray(u)[-1], v)
    p = SMALL_TASK.sample(jax.random.key(0), 3, SMALL["n"])
    np.testing.assert_array_equal(snaps.model(4, 1)(p), chunked.model(1)(p))


def test_different_seeds_give_different_losses_and_parameters(small_run):
    other = icl.train(lsa(2), SMALL_TASK, icl.TrainConfig(**{**SMALL, "seed": 4}))
    assert not np.array_equal(other.losses, small_run.losses)
    assert all(not np.array_equal(u, v) for u, v in zip(leaves(other), leaves(small_run)))


def test_num_seeds_gives_per_seed_losses_and_parameters_with_leading_seed_axis(small_run):
    seeds, steps, d = SMALL["num_seeds"], SMALL["steps"], 2
    assert small_run.losses.shape == (seeds, steps) and small_run.num_seeds == seeds
    assert small_run.params["layers"][0]["w_pv"][...].shape == (seeds, d + 1, d + 1)
    assert not np.array_equal(small_run.losses[0], small_run.losses[1])  # own data and init per seed
    p = SMALL_TASK.sample(jax.random.key(0), 5, SMALL["n"])
    for i in range(seeds):
        model = small_run.model(i)
        assert model(p).shape == (5,)
        np.testing.assert_array_equal(model.layers[0].w_kq[...], small_run.params["layers"][0]["w_kq"][...][i])


def test_model_of_a_seed_index_out_of_range_is_a_value_error_naming_it(small_run):
    with pytest.raises(ValueError, match=r"i=2.*num_seeds=2"):
        small_run.model(2)
    np.testing.assert_array_equal(small_run.model(-1).layers[0].w_kq[...], small_run.model(1).layers[0].w_kq[...])


def test_run_engine_is_train_and_continues_a_state_it_saved_bit_for_bit(small_run):
    """train = the initial runs + run_engine; run_engine continues the state it saved at step 8 of 16 exactly."""
    config = icl.TrainConfig(**SMALL)
    keys = icl.training.run_keys(config.seed, config.num_seeds)
    params = jax.vmap(lambda k: nnx.split(lsa(2)(nnx.Rngs(params=jax.random.fold_in(k, 0))))[1])(keys)
    start = icl.TrainResult(nnx.graphdef(lsa(2)(nnx.Rngs(0))), params, np.zeros((2, 0)), config, step=0)
    same = icl.training.run_engine(start, SMALL_TASK, keys)
    saved = []
    halves = icl.training.run_engine(dataclasses.replace(start, config=icl.TrainConfig(**SMALL, checkpoint_every=8)),
                                     SMALL_TASK, keys, save=saved.append)
    assert [r.step for r in saved] == [8, 16] and saved[0].losses.shape == (2, 8)
    resumed = icl.training.run_engine(saved[0], SMALL_TASK, keys)
    for a, b in ((same, small_run), (resumed, halves)):
        np.testing.assert_array_equal(a.losses, b.losses)
        np.testing.assert_array_equal(a.final_losses, b.final_losses)
        for u, v in zip(leaves(a), leaves(b)):
            np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------------------------------------- losses


def truncated(p, k):
    """The prompt whose context is the first k - 1 pairs and whose query is point k."""
    return icl.Prompts(x=p.x[:, : k - 1], y=p.y[:, : k - 1], x_query=p.x[:, k - 1], y_query=p.y[:, k - 1], w=p.w)


def test_every_prefix_loss_is_the_mean_of_query_losses_on_truncated_prompts_and_the_query():
    """k = 1..n + 1: the query is the (n + 1)-th point, so the position model(prompts) reads is trained."""
    n = 4
    with x64():
        model = PrefixGD(3, rngs=nnx.Rngs(0))
        p = icl.LinearRegressionTask.isotropic(3, 0.4).sample(jax.random.key(1), 16, n)
        config = icl.TrainConfig(n=n, loss="every_prefix")
        loss = float(icl.training_loss(model, p, config))
        query = icl.TrainConfig(n=n)
        per_k = [float(jnp.mean(p.y[:, 0] ** 2))]  # k = 1: no context, the no-data answer 0
        per_k += [float(icl.training_loss(model, truncated(p, k), query)) for k in range(2, n + 1)]
        per_k += [float(icl.training_loss(model, p, query))]  # k = n + 1: the query from all n pairs
    assert len(per_k) == n + 1
    assert_close(loss, np.mean(per_k), EXACT_F64, "every-prefix loss")


def test_nll_and_beta_nll_losses_match_the_gaussian_formula():
    with x64():
        model = GaussianHead(2, rngs=nnx.Rngs(0))
        p = icl.LinearRegressionTask.isotropic(2, 0.5).sample(jax.random.key(2), 8, 5)
        mean, var = (np.asarray(a) for a in model(p))
        terms = 0.5 * np.log(2 * np.pi * var) + (np.asarray(p.y_query) - mean) ** 2 / (2 * var)
        nll = float(icl.training_loss(model, p, icl.TrainConfig(loss="nll")))
        beta = float(icl.training_loss(model, p, icl.TrainConfig(loss="beta_nll", nll_beta=0.5)))
        ext = icl.training.with_query_as_last_pair(p)
        pm, pv = (np.asarray(a) for a in model.prefix(ext))
        prefix_terms = 0.5 * np.log(2 * np.pi * pv) + (np.asarray(ext.y) - pm) ** 2 / (2 * pv)
        prefix_nll = float(icl.training_loss(model, p, icl.TrainConfig(loss="every_prefix_nll")))
        # beta-NLL: the weight stop_gradient(v)^beta scales the gradient, not only the value.
        g = nnx.grad(lambda m: icl.training_loss(m, p, icl.TrainConfig(loss="beta_nll", nll_beta=1.0)))(model)
        g0 = nnx.grad(lambda m: icl.training_loss(m, p, icl.TrainConfig(loss="nll")))(model)
        elementwise = np.asarray(icl.training.gaussian_nll(mean, var, p.y_query))
    assert_close(elementwise, terms, EXACT_F64, "gaussian_nll")
    assert_close(nll, terms.mean(), EXACT_F64, "nll")
    assert_close(beta, (terms * var**0.5).mean(), EXACT_F64, "beta_nll")
    assert_close(prefix_nll, prefix_terms.mean(), EXACT_F64, "every_prefix_nll")
    assert_close(g["gd"]["eta"][...], g0["gd"]["eta"][...] * var[0], 1e-6, "beta_nll gradient")


def test_training_a_variance_model_with_beta_nll_lowers_the_loss():
    config = icl.TrainConfig(steps=60, batch=64, n=6, lr=5e-2, loss="beta_nll")
    result = icl.train(lambda r: GaussianHead(2, rngs=r), icl.LinearRegressionTask.isotropic(2, 0.2), config)
    assert result.losses[0, -10:].mean() < result.losses[0, :10].mean()


def test_loss_the_model_cannot_serve_is_a_value_error_naming_the_model():
    task = icl.LinearRegressionTask.isotropic(2)
    with pytest.raises(ValueError, match="LinearTransformer"):
        icl.train(lsa(2), task, icl.TrainConfig(steps=2, batch=8, n=4, loss="nll"))
    with pytest.raises(ValueError, match="GaussianHead"):
        icl.train(lambda r: GaussianHead(2, rngs=r), task, icl.TrainConfig(steps=2, batch=8, n=4))


class WideOutput(nnx.Module):
    def __init__(self, d, *, rngs):
        self.w = nnx.Param(jnp.zeros((d,)))

    def __call__(self, p):
        return (p.x_query @ self.w)[:, None]  # [batch, 1]: the shape bug that broadcasts silently


def test_model_output_of_wrong_shape_is_a_value_error_naming_the_model():
    with pytest.raises(ValueError, match=r"WideOutput.*\(8,\)"):
        icl.train(lambda r: WideOutput(2, rngs=r), icl.LinearRegressionTask.isotropic(2),
                  icl.TrainConfig(steps=2, batch=8, n=4))


# ---------------------------------------------------------------------------------------------- curriculum


def test_curriculum_zeroes_inactive_dimensions_and_targets_use_only_active_ones():
    curriculum = icl.Curriculum(dims_start=2, dims_step=1, dims_every=10, points_start=3, points_step=2,
                                points_every=5)
    assert [int(curriculum.dims(t, 4)) for t in (0, 9, 10, 25, 1000)] == [2, 2, 3, 4, 4]
    assert [int(curriculum.points(t, 8)) for t in (0, 5, 10, 1000)] == [3, 5, 7, 8]
    with x64():
        task = icl.LinearRegressionTask.isotropic(4, 0.0)
        p = task.sample(jax.random.key(3), 16, 8)
        model = PrefixGD(4, rngs=nnx.Rngs(0))
        config = icl.TrainConfig(n=8, loss="every_prefix", curriculum=curriculum)
        loss0 = float(icl.training_loss(model, p, config, step=0))
        # By hand: inactive coordinates zero, y recomputed from the active part of w, loss over k <= 3.
        keep = np.array([1.0, 1.0, 0.0, 0.0])
        x, w = np.asarray(p.x) * keep, np.asarray(p.w) * keep
        masked = icl.Prompts(x=jnp.asarray(x), y=jnp.asarray(np.einsum("bnd,bd->bn", x, w)),
                             x_query=p.x_query * keep, y_query=p.y_query, w=jnp.asarray(w))
        pred = np.asarray(model.prefix(masked))
        expected = np.mean((pred[:, :3] - np.asarray(masked.y)[:, :3]) ** 2)  # the query joins at full length
        full = float(icl.training_loss(model, p, config))  # default step: the end, everything active
        plain = float(icl.training_loss(model, p, icl.TrainConfig(n=8, loss="every_prefix")))
    assert_close(loss0, expected, EXACT_F64, "curriculum loss at step 0")
    assert_close(full, plain, EXACT_F64, "curriculum at full length")


def test_training_with_a_curriculum_runs_and_bad_curricula_are_value_errors():
    curriculum = icl.Curriculum(dims_start=1, dims_every=5, points_start=2, points_every=5)
    config = icl.TrainConfig(steps=12, batch=16, n=5, loss="every_prefix", curriculum=curriculum)
    result = icl.train(lambda r: PrefixGD(3, rngs=r), icl.LinearRegressionTask.isotropic(3, 0.1), config)
    assert np.all(np.isfinite(result.losses))
    with pytest.raises(ValueError, match="every-prefix"):
        icl.TrainConfig(curriculum=icl.Curriculum(points_start=2))  # loss="query" cannot mask lengths
    with pytest.raises(ValueError, match="linear"):
        icl.train(lambda r: PrefixGD(3, rngs=r), icl.SingleIndexTask(3, link="cubic"),
                  icl.TrainConfig(steps=2, batch=8, n=4, curriculum=icl.Curriculum(dims_start=1)))
    with pytest.raises(ValueError, match="dims_start"):
        icl.Curriculum(dims_start=0)


# ---------------------------------------------------------------------------------------------- optimiser


def test_grad_clip_bounds_the_global_norm_of_the_update():
    config = icl.TrainConfig(steps=10, lr=1.0, optimizer="sgd", schedule="constant", grad_clip=0.5)
    opt = icl.make_optimizer(config)
    params = {"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}
    grads = {"a": np.full(3, 30.0, np.float32), "b": np.full(2, -40.0, np.float32)}
    updates, _ = opt.update(grads, opt.init(params), params)
    norm = np.sqrt(sum(float(np.sum(np.asarray(u) ** 2)) for u in jax.tree.leaves(updates)))
    assert norm == pytest.approx(0.5, rel=1e-5)


def test_cosine_schedule_warms_up_and_decays_to_zero():
    config = icl.TrainConfig(steps=100, lr=0.1, warmup=10, optimizer="sgd")
    opt = icl.make_optimizer(config)
    params = {"w": np.ones(1, np.float32)}
    state = opt.init(params)
    steps = []
    for _ in range(100):
        updates, state = opt.update({"w": np.ones(1, np.float32)}, state, params)
        steps.append(-float(updates["w"][0]))
    assert steps[0] == pytest.approx(0.0, abs=1e-8) and max(steps) == pytest.approx(0.1, rel=1e-5)
    assert int(np.argmax(steps)) == 10 and steps[-1] < 1e-3


# ---------------------------------------------------------------------------------------------- divergence

DIVERGING = dict(batch=64, n=10, lr=1.0, optimizer="sgd", schedule="constant")  # SGD on a quartic loss blows up


def test_divergence_raises_error_naming_step_and_last_finite_loss():
    task = icl.LinearRegressionTask.isotropic(3, 0.5)
    with pytest.raises(icl.TrainingDivergedError) as info:  # progress chunks of 2 steps: the global step is named
        icl.train(lsa(3, 1.0), task, icl.TrainConfig(steps=40, progress_every=2, **DIVERGING))
    message = str(info.value)
    match = re.search(r"diverged at step (\d+).*last finite loss (\S+) at step (\d+)", message)
    assert match, message
    step, last_step = int(match[1]), int(match[3])
    assert step >= 1 and last_step == step - 1 and np.isfinite(float(match[2]))
    assert isinstance(info.value, RuntimeError)


def test_divergence_at_the_last_step_is_caught():
    """``--steps 1 --lr 1e10``: the loss at step 0 is finite, the parameters after it are not usable."""
    with pytest.raises(icl.TrainingDivergedError, match=r"diverged at step 0\b"):
        icl.train(lsa(2), SMALL_TASK, icl.TrainConfig(steps=1, batch=32, n=5, lr=1e10))


def test_mse_loss_is_mean_squared_error_of_predictor():
    p = icl.LinearRegressionTask.isotropic(2, 0.3).sample(jax.random.key(0), 50, 4)
    gd = icl.gradient_descent(0.5)
    np.testing.assert_allclose(icl.mse_loss(gd, p), np.mean((np.asarray(gd(p)) - np.asarray(p.y_query)) ** 2),
                               rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"batch": 0}, "batch"),
        ({"n": 0}, "n"),
        ({"num_seeds": 0}, "num_seeds"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"lr": 0.0}, "lr"),
        ({"lr": True}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"schedule": "linear"}, "schedule"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"warmup": -1}, "warmup"),
        ({"warmup": 10, "steps": 10}, "warmup"),
        ({"progress_every": -1}, "progress_every"),
        ({"loss": "mae"}, "loss"),
        ({"nll_beta": -0.5}, "nll_beta"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"checkpoint_every": -2}, "checkpoint_every"),
        ({"curriculum": {"dims_start": 2}}, "curriculum"),
    ],
)
def test_train_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        icl.TrainConfig(**kwargs)
