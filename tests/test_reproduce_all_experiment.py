"""End-to-end check of experiments/reproduce_all.py: a --quick run of two experiments writes a partial report."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_reproduce_all_quick_subset_passes_and_writes_a_partial_report(REPO_ROOT, tmp_path):
    proc = subprocess.run([sys.executable, "experiments/reproduce_all.py", "--quick", "--only", "one_step_gd",
                           "gradient_flow", "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert not (tmp_path / "REPORT.md").exists()
    report = (tmp_path / "REPORT-partial.md").read_text()
    assert "--quick --only one_step_gd gradient_flow" in report and "**FAIL**" not in report
    assert "## Configurations" in report and "| one_step_gd | d=" in report  # each experiment's configuration
    for name in ("one_step_gd", "gradient_flow"):
        assert (tmp_path / f"{name}-quick" / "summary.json").is_file()
        assert f"({name}-quick/{name}.png)" in report
