"""Garg-lineage GPT-2 checkpoints load into icl.Transformer and predict as their PyTorch model does.

The fixture (tests/fixtures/garg_gpt2_tiny.npz, made once by tests/fixtures/make_garg_fixture.py with PyTorch and
Hugging Face transformers) holds a model of their architecture with random weights, fixed prompts and its
PyTorch predictions; these tests need neither library. Reading a real ``.pt`` file is tested when torch is
installed (the ``garg`` extra).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl
from icl.models.garg import load_garg_checkpoint, transformer_from_garg_state

FIXTURE = Path(__file__).parent / "fixtures" / "garg_gpt2_tiny.npz"


@pytest.fixture(scope="module")
def fixture():
    data = np.load(FIXTURE)
    state = {k[len("state/"):]: data[k] for k in data.files if k.startswith("state/")}
    return state, data


def prompts_of(data, pairs: int) -> icl.Prompts:
    xs, ys = jnp.asarray(data["xs"]), jnp.asarray(data["ys"])
    return icl.Prompts(x=xs[:, :pairs], y=ys[:, :pairs], x_query=xs[:, pairs], y_query=ys[:, pairs])


def test_a_garg_state_dict_predicts_as_their_pytorch_model_at_every_prefix(fixture):
    state, data = fixture
    model = transformer_from_garg_state(state, n_head=int(data["n_head"]))
    points = data["xs"].shape[1]
    ours = np.asarray(model.prefix(prompts_of(data, points)))
    theirs, exact = data["pred32"], data["pred64"]
    rms = np.sqrt(np.mean(exact**2))
    assert rms > 0.1  # the outputs are not trivially small
    assert np.max(np.abs(ours - theirs)) <= 1e-5 * rms
    assert np.max(np.abs(ours - exact)) <= 1e-5 * rms  # and both float32 results are near the float64 one
    query = np.asarray(model(prompts_of(data, points - 1)))  # the query call is their prediction at the last x
    assert np.max(np.abs(query - theirs[:, -1])) <= 1e-5 * rms


def test_a_loaded_model_goes_through_the_analyses(fixture):
    state, data = fixture
    model = transformer_from_garg_state(state, n_head=int(data["n_head"]), trained_points=6)
    assert model.trained_pairs == 5 and isinstance(model, icl.Model)
    task = icl.LinearRegressionTask.isotropic(5)
    key = jax.random.key(0)
    curve = icl.error_curve(model, task, key, 6, num_prompts=256, chunk_size=256)
    assert curve.mean.shape == (6,) and np.all(np.isfinite(curve.mean))
    result = icl.probe(model, task, key, 5, num_prompts=128)
    assert all(len(r2) == 3 for r2 in result.r2.values())  # embeddings and the two blocks
    with pytest.raises(ValueError, match="trained_pairs"):  # untrained positions are refused until opted in
        model(task.sample(key, 4, 8))


@pytest.mark.slow
def test_a_loaded_model_can_be_fingerprinted(fixture):
    state, data = fixture
    model = transformer_from_garg_state(state, n_head=int(data["n_head"]))
    fp = icl.fingerprint(model, icl.LinearRegressionTask.isotropic(5), jax.random.key(0), 5,
                         candidates=("averaging", "least_squares", "ridge"), num_prompts=256, num_ilwd_prompts=16)
    assert set(fp.fitted) == {"averaging", "least_squares", "ridge"} and len(fp.best_by_k) == 6


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("_backbone.ln_f.bias"), "_backbone.ln_f.bias"),
    (lambda s: s.update({"_backbone.h.0.attn.c_attn.weight": s["_backbone.h.0.attn.c_attn.weight"].T}),
     "c_attn.weight"),
    (lambda s: s.update({"_read_out2.weight": np.zeros((1, 32))}), "_read_out2.weight"),
    (lambda s: s.pop("_read_in.weight"), "_read_in.weight"),
])
def test_a_state_dict_of_another_shape_or_layout_is_refused_naming_the_key(fixture, edit, words):
    state, _ = fixture
    state = dict(state)
    edit(state)
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        transformer_from_garg_state(state, n_head=4)


@pytest.mark.parametrize("kwargs, words", [({"n_head": 3}, "n_head"), ({"n_head": 0}, "n_head"),
                                           ({"n_head": 4, "trained_points": 12}, "trained_points")])
def test_bad_arguments_are_refused_naming_them(fixture, kwargs, words):
    with pytest.raises(ValueError, match=words):
        transformer_from_garg_state(fixture[0], **kwargs)


def test_load_refuses_a_missing_path_and_a_bare_file_without_n_head(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_garg_checkpoint(tmp_path / "nope")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="n_head"):
        load_garg_checkpoint(tmp_path / "model.pt")


def test_a_run_folder_in_their_layout_loads_with_torch(fixture, tmp_path):
    torch = pytest.importorskip("torch")
    state, data = fixture
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model_state_dict": {k: torch.from_numpy(v) for k, v in state.items()}, "train_step": 7},
               run / "state.pt")
    (run / "config.yaml").write_text("model:\n  family: gpt2\n  n_dims: 5\n  n_embd: 32\n  n_head: 4\n  n_layer: 2\n"
                                     "  n_positions: 11\ntraining:\n  curriculum:\n    points:\n      end: 11\n")
    model = load_garg_checkpoint(run)
    assert model.trained_pairs == 10
    ours = np.asarray(model.prefix(prompts_of(data, data["xs"].shape[1])))
    assert np.max(np.abs(ours - data["pred32"])) <= 1e-5 * np.sqrt(np.mean(data["pred64"] ** 2))
