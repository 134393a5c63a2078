"""The sweep API: grids run as one vmapped program, equal single runs, and shard across devices."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import icl
from icl.sweeps import grid_points, run_sharding, sweep


def _model(rngs, init_scale=0.01):
    return icl.LinearTransformer(3, 1, init_scale=init_scale, rngs=rngs)


def test_grid_points_is_the_cartesian_product_in_order():
    assert grid_points({"a": [1, 2], "b": ["x", "y", "z"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"},
    ]


def test_grid_with_an_empty_value_list_is_rejected_naming_the_field():
    with pytest.raises(ValueError, match="noise"):
        grid_points({"noise": []})


def test_grid_key_that_matches_nothing_is_a_value_error_naming_it():
    config = icl.TrainConfig(steps=2, batch=8, n=4)
    task_fn = lambda noise=0.5: icl.LinearRegressionTask.isotropic(3, noise)  # noqa: E731
    with pytest.raises(ValueError, match="noize"):
        sweep(_model, task_fn, config, {"noize": [0.1, 2.0]})
    with pytest.raises(ValueError, match="rngs"):
        sweep(_model, task_fn, config, {"rngs": [1, 2]})


def test_sweep_point_equals_the_matching_single_train_call():
    config = icl.TrainConfig(steps=30, batch=32, n=6, lr=1e-2, num_seeds=2, seed=3)
    result = sweep(_model, lambda noise: icl.LinearRegressionTask.isotropic(3, noise), config,
                   {"noise": [0.0, 0.7], "lr": [1e-2, 2e-2], "init_scale": [0.01, 0.05]})
    assert len(result) == 8
    # Four of the eight points (each ~1 s to train alone): every axis takes both values among them and no two
    # axes move together, so a point trained with another point's noise, lr or init_scale would show.
    chosen = [list(result)[i] for i in (1, 2, 4, 7)]
    assert all(len({p[axis] for p, _ in chosen}) == 2 for axis in ("noise", "lr", "init_scale"))
    for point, res in chosen:
        single = icl.train(lambda r: _model(r, point["init_scale"]), icl.LinearRegressionTask.isotropic(3, point["noise"]),
                           icl.TrainConfig(steps=30, batch=32, n=6, lr=point["lr"], num_seeds=2, seed=3))
        # Same data, init and optimiser; a program over 16 runs may round differently from one over 2.
        np.testing.assert_allclose(res.losses, single.losses, rtol=1e-5)
        assert res.losses.shape == (2, 30)
        assert res.model_spec["kwargs"]["init_scale"] == point["init_scale"]  # each point records its own model


def test_sweep_over_context_length_groups_points_by_shape():
    config = icl.TrainConfig(steps=20, batch=16, n=4, num_seeds=1)
    result = sweep(_model, lambda: icl.LinearRegressionTask.isotropic(3, 0.0), config, {"n": [4, 8], "seed": [0, 1]})
    assert [r.config.n for r in result.results] == [4, 4, 8, 8]
    assert not np.array_equal(result.results[0].losses, result.results[1].losses)  # different seeds


def test_run_sharding_is_none_on_one_device_and_rejects_uneven_runs():
    import jax

    assert run_sharding(5, jax.devices()[:1]) is None
    with pytest.raises(ValueError, match="multiple"):
        run_sharding(5, [jax.devices()[0]] * 2)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np, icl
    from icl.sweeps import sweep, run_sharding
    assert len(jax.devices()) == 4, jax.devices()
    assert run_sharding(4) is not None
    def model(rngs):
        return icl.LinearTransformer(3, 1, rngs=rngs)
    with jax.enable_x64(True):
        config = icl.TrainConfig(steps=25, batch=32, n=6, lr=1e-2, num_seeds=2)
        grid = {"noise": [0.0, 0.5, 1.0]}   # 6 runs, padded to 8 over 4 devices
        task_fn = lambda noise: icl.LinearRegressionTask.isotropic(3, noise)
        sharded = sweep(model, task_fn, config, grid)
        single = sweep(model, task_fn, config, grid, devices=jax.devices()[:1])
        for a, b in zip(sharded.results, single.results):
            assert a.losses.dtype == np.float64
            np.testing.assert_allclose(a.losses, b.losses, rtol=1e-10, atol=0)
            for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
                np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-14)
    print("SHARDED_OK")
    """
)


@pytest.mark.slow
def test_sharded_sweep_over_four_cpu_devices_equals_unsharded_in_float64():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    import os

    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED_OK" in out.stdout
