"""Training: recovery of eta*, determinism, seeds, divergence detection and config validation."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

import icl


def lsa(d, init_scale=0.01):
    return lambda rngs: icl.LinearTransformer(d, 1, init_scale=init_scale, rngs=rngs)


def seed_gammas(result):
    layer = result.params["layers"][0]
    return np.asarray(icl.implied_preconditioner(layer["w_pv"][...], layer["w_kq"][...]))


def leaves(result):
    return [np.asarray(a) for a in jax.tree.leaves(result.params)]


def test_short_training_recovers_optimal_step_size_within_3_percent():
    """d=3, n=10, sigma=0.5: Adam 2e-2 (cosine), 400 steps x 1024 prompts, 2 seeds (Mahankali Thm 1)."""
    d, n, sigma = 3, 10, 0.5
    task = icl.LinearRegressionTask.isotropic(d, sigma)
    config = icl.TrainConfig(steps=400, batch=1024, n=n, lr=2e-2, num_seeds=2, seed=0)
    result = icl.train(lsa(d), task, config)
    eta_star = icl.isotropic_optimal_step_size(d, n, sigma)
    gammas = seed_gammas(result)
    for gamma in gammas:
        assert abs(np.trace(gamma) / d - eta_star) <= 0.03 * eta_star, (np.trace(gamma) / d, eta_star)
        assert float(icl.relative_error(gamma, np.asarray(icl.optimal_gamma(task, n)))) <= 0.03
    assert np.all(np.isfinite(result.losses))
    assert result.losses[:, -50:].mean() < result.losses[:, :10].mean()


SMALL = dict(steps=15, batch=32, n=5, lr=1e-2, num_seeds=2, seed=3)
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


def test_progress_chunks_do_not_change_the_result(small_run):
    chunked = icl.train(lsa(2), SMALL_TASK, icl.TrainConfig(**SMALL, progress_every=4))
    np.testing.assert_allclose(chunked.losses, small_run.losses, rtol=1e-6)
    for u, v in zip(leaves(chunked), leaves(small_run)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)


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


DIVERGING = dict(batch=64, n=10, lr=1.0, optimizer="sgd", schedule="constant")  # SGD on a quartic loss blows up


def test_divergence_raises_error_naming_step_and_last_finite_loss():
    task = icl.LinearRegressionTask.isotropic(3, 0.5)
    with pytest.raises(icl.TrainingDivergedError) as info:
        icl.train(lsa(3, 1.0), task, icl.TrainConfig(steps=40, **DIVERGING))
    message = str(info.value)
    match = re.search(r"diverged at step (\d+).*last finite loss (\S+) at step (\d+)", message)
    assert match, message
    step, last_loss, last_step = int(match[1]), float(match[2]), int(match[3])
    assert step >= 1 and last_step == step - 1
    # The steps before the named one really are finite, and the last of them has the reported loss.
    ok = icl.train(lsa(3, 1.0), task, icl.TrainConfig(steps=step, **DIVERGING))
    assert np.all(np.isfinite(ok.losses))
    assert ok.losses[0, -1] == pytest.approx(last_loss, rel=1e-5)
    # Progress chunks report the same global step.
    with pytest.raises(icl.TrainingDivergedError, match=rf"diverged at step {step} "):
        icl.train(lsa(3, 1.0), task, icl.TrainConfig(steps=40, progress_every=2, **DIVERGING))


def test_training_diverged_error_is_a_runtime_error():
    assert issubclass(icl.TrainingDivergedError, RuntimeError)


def test_mse_loss_is_mean_squared_error_of_predictor():
    task = icl.LinearRegressionTask.isotropic(2, 0.3)
    p = task.sample(jax.random.key(0), 50, 4)
    gd = icl.gradient_descent(0.5)
    np.testing.assert_allclose(icl.mse_loss(gd, p), np.mean((np.asarray(gd(p)) - np.asarray(p.y_query)) ** 2),
                               rtol=1e-6)


def test_cosine_schedule_warms_up_and_decays_to_zero():
    import optax

    config = icl.TrainConfig(steps=100, lr=0.1, warmup=10, optimizer="sgd")
    opt = icl.make_optimizer(config)
    params = {"w": np.ones(1, np.float32)}
    state = opt.init(params)
    grads = {"w": np.ones(1, np.float32)}
    steps = []
    for _ in range(100):
        updates, state = opt.update(grads, state, params)
        steps.append(-float(updates["w"][0]))
    assert steps[0] == pytest.approx(0.0, abs=1e-8) and max(steps) == pytest.approx(0.1, rel=1e-5)
    assert int(np.argmax(steps)) == 10 and steps[-1] < 1e-3
    assert isinstance(opt, optax.GradientTransformation)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"batch": 0}, "batch"),
        ({"n": 0}, "n"),
        ({"num_seeds": 0}, "num_seeds"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"schedule": "linear"}, "schedule"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"warmup": -1}, "warmup"),
        ({"warmup": 10, "steps": 10}, "warmup"),
        ({"warmup": 1.5}, "warmup"),
        ({"progress_every": -1}, "progress_every"),
    ],
)
def test_train_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        icl.TrainConfig(**kwargs)
