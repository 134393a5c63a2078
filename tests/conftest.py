"""Shared fixtures for the icl test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def REPO_ROOT() -> Path:  # noqa: N802 - the name the brief asks for
    """The repository root (the folder holding pyproject.toml and experiments/)."""
    return ROOT


def _run_experiment(script: str, flags: list[str], out: Path) -> dict:
    """Run ``script`` with ``flags`` into ``out``; check it exited 0, every claim has the documented keys and
    passed, and every figure it lists is a PNG. Returns the parsed ``summary.json``."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, script, *flags, "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    for claim in summary["claims"]:
        assert {"name", "theory", "measured", "tolerance", "passed"} <= set(claim)
        assert claim["passed"] is True, claim
    assert summary["all_passed"] is True
    for name in summary["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return summary


@pytest.fixture(scope="session")
def run_experiment():
    """``run_experiment(script, flags, out) -> summary``: an experiment end to end, claims and figures checked."""
    return _run_experiment
