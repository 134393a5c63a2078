"""experiments/error_curves.py: flags are checked before any work (exit 2, no output folder)."""

from __future__ import annotations

import pytest

SCRIPT = "experiments/error_curves.py"


# The end-to-end test of this script's claims at --quick is not here yet: its claims do not pass at the CPU
# budgets (issue 10 stays open; see the README's experiments table).


@pytest.mark.slow
def test_bad_flags_exit_2_before_any_work(tmp_path, REPO_ROOT):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, SCRIPT, "--width", "10", "--heads", "4", "--out", str(tmp_path / "x")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--width" in proc.stderr
    assert not (tmp_path / "x").exists()
