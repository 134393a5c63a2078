"""End-to-end check of experiments/error_curves.py --quick: summary, figure, and every claim of issue 10 passes."""

from __future__ import annotations

import pytest

SCRIPT = "experiments/error_curves.py"


@pytest.mark.slow
def test_quick_run_passes_every_claim_and_reports_the_curves(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, ["--quick"], tmp_path)
    assert summary["experiment"] == "error_curves"
    names = [c["name"] for c in summary["claims"]]
    assert any(n.startswith("dense:") for n in names)
    assert any(n.startswith("noisy:") for n in names)
    assert any(n.startswith("sparse:") for n in names)
    d, n = summary["config"]["d"], summary["config"]["n"]
    for run in summary["runs"]:
        curves = run["curves"]
        assert {"transformer", "lsa_1layer", "least_squares", "averaging", "3-NN"} <= set(curves)
        assert all(len(c["mean"]) == n and len(c["se"]) == n for c in curves.values())
        # k = 1 is a tie: with no context every predictor says 0 (normalised error ~1 for noiseless tasks)
        assert abs(curves["least_squares"]["mean"][0] - curves["averaging"]["mean"][0]) < 1e-9
    assert 2 * d <= n


@pytest.mark.slow
def test_bad_flags_exit_2_before_any_work(tmp_path, REPO_ROOT):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, SCRIPT, "--width", "10", "--heads", "4", "--out", str(tmp_path / "x")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--width" in proc.stderr
    assert not (tmp_path / "x").exists()
