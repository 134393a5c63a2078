"""Run logging (optional extras): TensorBoard event files and offline W&B runs hold the training losses, the claims
and the figures; icl.train's callback sees every chunk; an experiment's --log writes them beside its run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

import icl
from icl.runlog import make_logger

TASK = icl.LinearRegressionTask.isotropic(2, 0.1)
CONFIG = icl.TrainConfig(steps=40, batch=32, n=6, lr=1e-2, num_seeds=2)


def lsa(rngs):
    return icl.LinearTransformer(2, 1, rngs=rngs)


def read_scalars(logdir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_calls_back_after_every_chunk_with_the_chunks_losses_and_changes_no_result():
    calls = []
    result = icl.train(lsa, TASK, CONFIG, callback=lambda step, losses: calls.append((step, np.array(losses))))
    plain = icl.train(lsa, TASK, CONFIG)
    assert [s for s, _ in calls] == sorted(s for s, _ in calls) and calls[-1][0] == CONFIG.steps
    np.testing.assert_array_equal(np.concatenate([l for _, l in calls], axis=1), result.losses)
    np.testing.assert_array_equal(result.losses, plain.losses)  # chunking changes nothing


def test_a_sweep_calls_back_with_every_run_of_its_group_and_no_padding():
    calls = []
    res = icl.sweep(lsa, lambda noise: icl.LinearRegressionTask.isotropic(2, noise), CONFIG, {"noise": [0.0, 0.5]},
                    callback=lambda step, losses: calls.append(np.array(losses)))
    assert all(c.shape[0] == 2 * CONFIG.num_seeds for c in calls)
    np.testing.assert_array_equal(np.concatenate(calls, axis=1)[:2], res.results[0].losses)


def test_tensorboard_logger_writes_the_loss_curve_claims_and_figures(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logger = make_logger("tensorboard", tmp_path / "tb", {"d": 2})
    result = icl.train(lsa, TASK, CONFIG, callback=logger.training("lsa"))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    logger.log_figure("curve", fig)
    logger.log_claims([icl.relative_claim("eta within 3%", 1.0, 1.01, 0.03)])
    logger.close()
    scalars = read_scalars(tmp_path / "tb")
    seed0 = scalars["lsa/loss/seed0"]
    assert seed0[-1][0] == CONFIG.steps and len(seed0) >= 10
    chunk = CONFIG.steps // len(seed0)
    assert seed0[-1][1] == pytest.approx(result.losses[0, -chunk:].mean(), rel=1e-6)
    assert any(tag.startswith("claims/") for tag in scalars)


def test_wandb_logger_writes_an_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = make_logger("wandb", tmp_path / "wb", {"d": 2}, name="test")
    callback = logger.training("lsa")
    callback(10, np.ones((2, 10)))
    logger.log_claims([icl.relative_claim("eta within 3%", 1.0, 1.01, 0.03)])
    logger.close()
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_an_unknown_logger_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        make_logger("mlflow", tmp_path)


@pytest.mark.slow
def test_an_experiment_with_log_tensorboard_leaves_event_files_with_its_loss_curve(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    from tests.helpers import load_script
    from tests.test_experiments_cli import ROOT

    spec = load_script(ROOT / "experiments" / "one_step_gd.py").SPEC
    out = tmp_path / "run"
    result = icl.experiment.run_experiment(spec, ["--d", "2", "--n", "6", "--steps", "40", "--batch", "64",
                                                  "--seeds", "1", "--noise", "0", "--eval-prompts", "512",
                                                  "--log", "tensorboard", "--out", str(out), "--compilation-cache",
                                                  "off"])
    summary = json.loads((out / "summary.json").read_text())
    logdir = tmp_path / "logs" / "run"
    assert summary["provenance"]["log_dir"] == str(logdir)
    scalars = read_scalars(logdir)
    assert any(tag.endswith("loss/seed0") for tag in scalars)
    assert sum(tag.startswith("claims/") for tag in scalars) == sum(c.measured is not None for c in result["claims"])
