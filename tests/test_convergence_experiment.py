"""A deliberately short training run is reported as not converged, with exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_a_deliberately_short_run_is_reported_as_not_converged(REPO_ROOT, tmp_path):
    # Constant learning rate, 160 steps from W = 0.3 I: cut off mid-descent (at batch 8192 one seed's drop over the
    # last 16 steps was 3.3%, 3.2 SE; a batch twice as large halves the noise, not the drop).
    flags = ["--d", "3", "--n", "5", "--steps", "160", "--batch", "16384", "--seeds", "2", "--lr", "1e-3",
             "--init-diag", "0.3", "--snapshots", "2", "--eval-prompts", "2000", "--metric-prompts", "500",
             "--curve-prompts", "2000", "--out", str(tmp_path)]
    proc = subprocess.run([sys.executable, "experiments/von_oswald.py", *flags], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    (claim,) = [c for c in summary["claims"] if "training converged" in c["name"]]
    assert claim["passed"] is False and "still falling" in claim["detail"]
    assert summary["runs"][0]["convergence"]["still_falling"] is True
