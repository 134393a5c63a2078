"""Checkpoints: a TrainResult round-trips bit for bit, and a resumed run equals the uninterrupted one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import icl

TASK = icl.LinearRegressionTask.isotropic(2, 0.3)
CONFIG = icl.TrainConfig(steps=12, batch=16, n=5, lr=1e-2, num_seeds=2, seed=1, checkpoint_every=4)


class Recorded(nnx.Module):
    """A user model with spec() (the model protocol), so checkpoints rebuild it without model_fn."""

    def __init__(self, d, width=3, *, rngs):
        self.d, self.width = d, width
        self.a = nnx.Param(0.1 * jax.random.normal(rngs.params(), (d, width)))
        self.b = nnx.Param(0.1 * jax.random.normal(rngs.params(), (width,)))

    def __call__(self, p):
        h = jnp.einsum("bnd,bn->bd", p.x, p.y) / p.x.shape[1]
        return jnp.einsum("bd,dw,w,bd->b", p.x_query, self.a[...], self.b[...], h)

    def spec(self):
        return {"d": self.d, "width": self.width}


def model_fn(rngs):
    return Recorded(2, 4, rngs=rngs)


class Anonymous(Recorded):
    spec = None  # no spec(): a checkpoint cannot rebuild it alone

    def __init__(self, d, *, rngs):
        super().__init__(d, 3, rngs=rngs)


def same_leaves(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    return folder, icl.train(model_fn, TASK, CONFIG, checkpoint=icl.checkpoint.CheckpointDir(folder))


def test_save_and_load_round_trip_predicts_bit_identically_without_model_fn(uninterrupted, tmp_path):
    _, result = uninterrupted
    icl.save_checkpoint(tmp_path / "ck", result)
    loaded = icl.load_checkpoint(tmp_path / "ck")
    p = TASK.sample(jax.random.key(9), 7, 5)
    for i in range(CONFIG.num_seeds):
        np.testing.assert_array_equal(loaded.model(i)(p), result.model(i)(p))
    assert same_leaves(loaded.params, result.params) and same_leaves(loaded.opt_state, result.opt_state)
    np.testing.assert_array_equal(loaded.losses, result.losses)
    np.testing.assert_array_equal(loaded.final_losses, result.final_losses)
    assert loaded.config == result.config and loaded.step == CONFIG.steps
    with pytest.raises(ValueError, match="overwrite"):
        icl.save_checkpoint(tmp_path / "ck", result)


def test_user_model_without_spec_needs_model_fn(tmp_path):
    config = icl.TrainConfig(steps=2, batch=8, n=4)
    result = icl.train(lambda r: Anonymous(2, rngs=r), TASK, config)
    icl.save_checkpoint(tmp_path / "ck", result)
    with pytest.raises(ValueError, match="model_fn"):
        icl.load_checkpoint(tmp_path / "ck")
    loaded = icl.load_checkpoint(tmp_path / "ck", model_fn=lambda r: Anonymous(2, rngs=r))
    assert same_leaves(loaded.params, result.params)
    with pytest.raises(ValueError, match="model_fn"):  # a model_fn of another shape does not fit
        icl.load_checkpoint(tmp_path / "ck", model_fn=lambda r: Recorded(2, 5, rngs=r))


def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(uninterrupted, tmp_path):
    folder, full = uninterrupted
    # Interrupted after step 8: keep only the step-8 checkpoint of the same run, then resume from it.
    import shutil

    shutil.copytree(folder / "step_00000008", tmp_path / "step_00000008")
    mid = icl.load_checkpoint(tmp_path)
    assert mid.step == 8 and mid.losses.shape == (2, 8)
    resumed = icl.train(model_fn, TASK, CONFIG, checkpoint=icl.checkpoint.CheckpointDir(tmp_path, resume=True))
    np.testing.assert_array_equal(resumed.losses, full.losses)
    assert same_leaves(resumed.params, full.params) and same_leaves(resumed.opt_state, full.opt_state)
    np.testing.assert_array_equal(resumed.final_losses, full.final_losses)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000008", "step_00000012"]


def test_checkpoint_folder_misuse_is_a_value_error(uninterrupted, tmp_path):
    folder, _ = uninterrupted
    resume = icl.checkpoint.CheckpointDir(folder, resume=True)
    with pytest.raises(ValueError, match="resume=True"):
        icl.train(model_fn, TASK, CONFIG, checkpoint=icl.checkpoint.CheckpointDir(folder))
    with pytest.raises(ValueError, match=r"config differs in \['lr'\]"):
        icl.train(model_fn, TASK, icl.TrainConfig(**{**CONFIG.__dict__, "lr": 2e-2}), checkpoint=resume)
    with pytest.raises(ValueError, match=r"model differs in \['kwargs.width'\] \(saved \[4\], given \[5\]\)"):
        icl.train(lambda r: Recorded(2, 5, rngs=r), TASK, CONFIG, checkpoint=resume)
    with pytest.raises(ValueError, match=r"task differs in \['noise_std'\]"):
        icl.train(model_fn, icl.LinearRegressionTask.isotropic(2, 0.5), CONFIG, checkpoint=resume)
    with pytest.raises(ValueError, match="does not exist"):
        icl.load_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither a checkpoint"):
        icl.load_checkpoint(tmp_path)


def test_library_model_loads_without_model_fn_and_predicts_bit_identically(tmp_path):
    result = icl.train(lambda r: icl.LinearTransformer(2, 2, rngs=r), TASK, icl.TrainConfig(steps=2, batch=8, n=5))
    icl.save_checkpoint(tmp_path / "lsa", result)
    loaded = icl.load_checkpoint(tmp_path / "lsa")
    p = TASK.sample(jax.random.key(3), 4, 5)
    assert type(loaded.model(0)) is icl.LinearTransformer and len(loaded.model(0).layers) == 2
    np.testing.assert_array_equal(loaded.model(0)(p), result.model(0)(p))
