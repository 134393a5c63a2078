"""End-to-end checks of experiments/one_step_gd.py: summary.json schema, figure, claims, determinism, --help."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import load_script

SCRIPT = "experiments/one_step_gd.py"
# Small and converged on the 2-core CPU: both seeds reach eta* within ~1%; each seed's own loss on 200k prompts
# has an SE of about 0.5% of R*, well inside the 2% loss tolerance.
FLAGS = ["--d", "3", "--n", "10", "--noise", "0", "0.5", "--steps", "300", "--lr", "0.03", "--batch", "256",
         "--seeds", "2", "--eval-prompts", "200000"]
TIMING_KEYS = {"train_seconds", "seconds", "provenance"}


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


@pytest.mark.slow
def test_experiment_end_to_end_writes_summary_and_figure_and_claims_pass(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, FLAGS, tmp_path)
    assert summary["experiment"] == "one_step_gd"
    assert summary["config"]["d"] == 3 and summary["config"]["n"] == 10 and summary["config"]["noise"] == [0.0, 0.5]
    assert len(summary["claims"]) == 10  # per noise level: eta, loss, GD Monte Carlo vs R*, loss flat, seeds agree
    for claim in summary["claims"][:2]:
        assert claim["seeds"]["std"] >= 0 and len(claim["seeds"]["per_seed"]) == 2
    assert [run["noise"] for run in summary["runs"]] == [0.0, 0.5]
    for run in summary["runs"]:
        sigma = run["noise"]
        assert run["eta_theory"] == pytest.approx(10 / (10 + 3 + 1 + sigma**2), rel=1e-12)
        assert run["risk_theory"] == pytest.approx(3 * (3 + 1 + sigma**2) / (10 + 3 + 1 + sigma**2) + sigma**2,
                                                   rel=1e-12)
        assert abs(run["eta_learned_mean"] - run["eta_theory"]) <= 0.03 * run["eta_theory"]
        assert run["eta_learned_std"] >= 0
        assert np.asarray(run["gamma_learned"]).shape == (3, 3)
        np.testing.assert_allclose(run["gamma_theory"], run["eta_theory"] * np.eye(3), rtol=1e-6, atol=1e-12)
        assert set(run["loss"]) >= {"lsa", "gd_optimal", "bayes", "ols"}
        assert all(np.isfinite(v) for v in run["loss"].values())
        # Bayes is the best predictor; GD at eta* is the best of the one-step class, near R*.
        assert run["loss"]["bayes"] <= run["loss"]["gd_optimal"]
        assert abs(run["loss"]["gd_optimal"] - run["risk_theory"]) <= 4 * run["loss_se"]["gd_optimal"]
        assert run["convergence"]["converged"] is True
    png = tmp_path / "one_step_gd.png"
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["figures"] == ["one_step_gd.png"]


@pytest.mark.slow  # two whole runs of the script (training + evaluation): end to end
def test_experiment_is_deterministic_for_the_same_flags(REPO_ROOT, tmp_path):
    module = load_script(REPO_ROOT / SCRIPT)
    flags = ["--d", "2", "--n", "4", "--noise", "0.5", "--steps", "20", "--batch", "32", "--seeds", "2",
             "--eval-prompts", "2000"]
    module.main([*flags, "--out", str(tmp_path / "a"), "--compilation-cache", "off"])
    module.main([*flags, "--out", str(tmp_path / "b"), "--compilation-cache", "off"])
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert strip_timing(a) == strip_timing(b)
    assert a["runs"][0]["eta_learned_per_seed"][0] != a["runs"][0]["eta_learned_per_seed"][1]


def test_experiment_help_lists_the_flags(REPO_ROOT, capsys):
    # in-process (the script as a module; a subprocess would pay jax's start-up): --help exits 0
    with pytest.raises(SystemExit) as info:
        load_script(REPO_ROOT / SCRIPT).SPEC.parse(["--help"])
    assert info.value.code == 0
    stdout = capsys.readouterr().out
    for flag in ("--d", "--n", "--noise", "--steps", "--batch", "--seeds", "--eval-prompts", "--out"):
        assert flag in stdout


@pytest.mark.slow
def test_checkpointed_and_resumed_runs_equal_an_uninterrupted_one(REPO_ROOT, tmp_path):
    module = load_script(REPO_ROOT / SCRIPT)
    flags = ["--d", "2", "--n", "4", "--noise", "0.5", "--steps", "40", "--batch", "32", "--seeds", "2",
             "--eval-prompts", "2000", "--compilation-cache", "off"]
    module.main([*flags, "--out", str(tmp_path / "plain")])
    module.main([*flags, "--checkpoint-every", "20", "--out", str(tmp_path / "ckpt")])
    assert any((tmp_path / ".checkpoints" / "ckpt").rglob("*"))
    module.main([*flags, "--checkpoint-every", "20", "--resume", "--out", str(tmp_path / "ckpt")])
    runs = [json.loads((tmp_path / name / "summary.json").read_text())["runs"] for name in ("plain", "ckpt")]
    assert strip_timing(runs[0]) == strip_timing(runs[1])


def test_resume_onto_another_noise_level_is_a_flag_level_error_not_a_silent_mix(REPO_ROOT, tmp_path, capsys):
    """A run checkpointed at sigma = 0 and resumed with --noise 2 into the same folder is refused (exit 2) with
    a message naming the task field; it used to give the sigma = 2 rows the sigma = 0 models."""
    module = load_script(REPO_ROOT / SCRIPT)
    flags = ["--d", "2", "--n", "4", "--steps", "20", "--batch", "32", "--seeds", "1", "--eval-prompts", "2000",
             "--compilation-cache", "off", "--checkpoint-every", "10", "--out", str(tmp_path / "run")]
    module.main([*flags, "--noise", "0"])
    with pytest.raises(SystemExit) as info:
        module.main([*flags, "--noise", "2", "--resume"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "noise_std" in err
