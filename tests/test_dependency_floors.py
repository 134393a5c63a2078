"""The lower bounds in pyproject.toml are versions the code has run on.

The slow test installs exactly the floor of every ``>=`` dependency (jax and jaxlib, flax, optax,
orbax-checkpoint, numpy, matplotlib) into a fresh virtual environment, installs the project there without
dependencies, and runs a smoke subset: one training of each model family, one evaluation, and one checkpoint
round trip. A floor that fails here must be raised, not claimed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = r"""
import tempfile

import jax
import numpy as np
from flax import nnx

import icl

task = icl.LinearRegressionTask.isotropic(3, noise_std=0.1)
config = icl.TrainConfig(steps=30, batch=64, n=8, lr=1e-2, num_seeds=2)
result = icl.train(lambda rngs: icl.LinearTransformer(3, 1, rngs=rngs), task, config)
assert np.all(np.isfinite(result.losses)) and result.losses[:, -1].mean() < result.losses[:, 0].mean()
small = dict(num_layers=1, width=16, num_heads=2)
gpt = icl.train(lambda rngs: icl.Transformer(3, max_pairs=9, **small, rngs=rngs), task,
                icl.TrainConfig(steps=3, batch=16, n=8, lr=1e-3, loss="every_prefix"))
assert np.all(np.isfinite(gpt.losses))
comparison = icl.compare_predictors({"lsa": result.model(0), "gd": icl.gradient_descent(0.5)}, task,
                                    jax.random.key(0), 8, num_prompts=1000, chunk_size=500)
assert np.isfinite(comparison.losses["lsa"][0]) and np.isfinite(comparison.losses["gd"][0])
with tempfile.TemporaryDirectory() as folder:
    saved = icl.save_checkpoint(folder + "/run", result)
    loaded = icl.load_checkpoint(saved)
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(loaded.params))]
    assert all(same) and type(loaded.model(0)) is icl.LinearTransformer
print("floor smoke passed on jax", jax.__version__, "flax", nnx.__name__)
"""


def floors() -> dict[str, str]:
    """``{distribution: floor}`` of every ``name>=version`` runtime dependency in pyproject.toml."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", dep)
        assert m, f"every runtime dependency needs a tested floor 'name>=version', got {dep!r}"
        out[m.group(1)] = m.group(2)
    return out


def test_every_runtime_dependency_states_a_floor_and_jaxlib_is_pinned_with_jax():
    found = floors()
    assert {"jax", "flax", "optax", "orbax-checkpoint", "numpy", "matplotlib"} <= set(found)
    assert found.get("jaxlib") == found["jax"], "jaxlib's floor must be jax's (they are released together)"


@pytest.mark.slow
def test_the_floor_versions_train_evaluate_and_round_trip_a_checkpoint(tmp_path):
    env_dir = tmp_path / "floors"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    pins = [f"{name}=={version}" for name, version in floors().items()]
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], capture_output=True, text=True,
                         timeout=1200)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    proj = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)], capture_output=True,
                          text=True, timeout=600)
    assert proj.returncode == 0, proj.stdout[-3000:] + proj.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    run = subprocess.run([str(python), "-c", SMOKE], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "floor smoke passed" in run.stdout
