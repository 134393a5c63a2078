"""The model protocol (docs/models.md): a user's model written from that page alone works with everything.

The model is the code block of docs/models.md, executed as written; it trains with ``icl.train`` (query and
every-prefix losses), saves and loads with ``icl.save_checkpoint`` / ``icl.load_checkpoint`` (rebuilt from its
``spec()``, no ``model_fn``), resumes through ``icl.CheckpointDir``, and goes through ``compare_predictors``,
``error_curve``, ``fingerprint`` and ``probe``. The built-in models meet the same protocol.
"""

from __future__ import annotations

import re
import shutil
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import icl
import icl.protocol

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
D, N = 3, 8
TASK = icl.LinearRegressionTask.isotropic(D, noise_std=0.1)


def _user_model_class():
    """The first code block of docs/models.md, run as a user's module ``user_models`` (importable by name, as a
    user's own module is, so a checkpoint can rebuild the class)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    module = types.ModuleType("user_models")
    exec(compile(blocks[0], str(DOC), "exec"), module.__dict__)
    sys.modules["user_models"] = module
    return module.LearnedPreconditioner


UserModel = _user_model_class()


@pytest.fixture(scope="module")
def trained():
    config = icl.TrainConfig(steps=150, batch=256, n=N, lr=0.05, num_seeds=2)
    return icl.train(lambda rngs: UserModel(D, rngs=rngs), TASK, config)


def test_the_documented_model_meets_the_protocol_and_trains_toward_one_gd_step(trained):
    model = trained.model(0)
    assert isinstance(model, icl.Model) and not icl.protocol.returns_variance(model)
    assert icl.protocol.has_prefix(model)
    assert trained.losses[:, -10:].mean() < 0.8 * trained.losses[:, :10].mean()
    eta = float(np.trace(np.asarray(model.w[...])) / D)
    assert 0.3 < eta < 1.2, eta  # the optimum is eta* I; 150 steps bring it most of the way


def test_the_documented_model_trains_on_every_prefix():
    config = icl.TrainConfig(steps=20, batch=128, n=N, lr=0.05, loss="every_prefix")
    result = icl.train(lambda rngs: UserModel(D, rngs=rngs), TASK, config)
    assert np.all(np.isfinite(result.losses))


def test_the_documented_model_round_trips_a_checkpoint_without_model_fn(trained, tmp_path):
    path = icl.save_checkpoint(tmp_path / "user", trained)
    loaded = icl.load_checkpoint(path)
    assert type(loaded.model(0)).__name__ == "LearnedPreconditioner"
    for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(loaded.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    prompts = TASK.sample(jax.random.key(3), 16, N)
    assert np.array_equal(np.asarray(trained.model(1)(prompts)), np.asarray(loaded.model(1)(prompts)))


def test_the_documented_model_resumes_bit_for_bit(tmp_path):
    """A run interrupted after its step-6 checkpoint (the step-12 one removed) resumes to the same losses."""
    config = icl.TrainConfig(steps=12, batch=64, n=N, lr=0.05, checkpoint_every=6)
    make = lambda rngs: UserModel(D, rngs=rngs)  # noqa: E731
    folder = tmp_path / "ck"
    whole = icl.train(make, TASK, config, checkpoint=icl.CheckpointDir(folder))
    last = icl.latest_checkpoint(folder)
    shutil.rmtree(last)
    assert icl.latest_checkpoint(folder) != last
    resumed = icl.train(make, TASK, config, checkpoint=icl.CheckpointDir(folder, resume=True))
    assert np.array_equal(whole.losses, resumed.losses)


def test_the_documented_model_goes_through_every_analysis(trained):
    model = trained.model(0)
    eta = icl.optimal_step_size(TASK, N)
    cmp = icl.compare_predictors({"mine": model, "gd": icl.gradient_descent(eta)}, TASK, jax.random.key(1), N,
                                 num_prompts=4000, chunk_size=2000)
    assert np.isfinite(cmp.losses["mine"][0]) and cmp.losses["mine"][0] < 2 * cmp.losses["gd"][0]
    curve = icl.error_curve(model, TASK, jax.random.key(2), N, num_prompts=2000, chunk_size=1000)
    assert np.asarray(curve.mean).shape == (N,) and np.all(np.isfinite(curve.mean))
    fp = icl.fingerprint(model, TASK, jax.random.key(4), N, candidates=["gd", "ridge", "least_squares"],
                         num_prompts=512)
    assert fp is not None and set(fp.spd) >= {"gd", "ridge", "least_squares"}
    probed = icl.probe(model, TASK, jax.random.key(5), N, num_prompts=256)
    assert all(len(v) == 2 for v in probed.r2.values())  # input tokens and after the one layer


@pytest.mark.parametrize("make", [
    lambda rngs: icl.LinearTransformer(D, 2, rngs=rngs),
    lambda rngs: icl.SparseLinearTransformer(D, 2, rngs=rngs),
    lambda rngs: icl.Transformer(D, num_layers=1, width=16, num_heads=2, max_pairs=N + 1, rngs=rngs),
    lambda rngs: icl.SparseLinearTransformer(D, 1, loops=3, rngs=rngs),
    lambda rngs: icl.Transformer(D, num_layers=1, width=16, num_heads=2, max_pairs=N + 1, loops=2,
                                 input_injection=True, rngs=rngs),
    lambda rngs: icl.LinearRNN(D, rngs=rngs),
    lambda rngs: icl.DiagonalSSM(D, num_layers=1, width=8, state_size=4, rngs=rngs),
    lambda rngs: icl.SelectiveSSM(D, num_layers=1, width=8, state_size=4, rngs=rngs),
], ids=["LinearTransformer", "SparseLinearTransformer", "Transformer", "LoopedSparseLinearTransformer",
        "LoopedTransformer", "LinearRNN", "DiagonalSSM", "SelectiveSSM"])
def test_every_built_in_model_meets_the_protocol_and_rebuilds_from_its_spec(make):
    model = make(nnx.Rngs(0))
    assert isinstance(model, icl.Model)
    spec = icl.protocol.model_spec(model)
    rebuilt = icl.protocol.build_model(spec, nnx.Rngs(0))
    assert type(rebuilt) is type(model) and rebuilt.spec() == model.spec()
    prompts = TASK.sample(jax.random.key(0), 4, N)
    icl.protocol.check_output("model", model(prompts), prompts)
    icl.protocol.check_output("model", model.prefix(prompts), prompts, prefix=True)
    states = model.hidden_states(prompts)
    assert len(states) >= 2 and all(s.ndim == 3 and s.shape[0] == 4 for s in states)
