"""Shared fixtures for the icl test suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Compilation dominates the default suite's cost (each distinct jitted program costs ~1-4 s of CPU); XLA's backend
# at optimisation level 0 compiles the small test programs 1.5-2.5x faster, which keeps `pytest -m "not slow"`
# within its 3-minute budget on a 2-core CPU. It changes no floating-point semantics (no fast math), so the 1e-10
# float64 identities hold. Only that selection lowers it: the slow suite (`-m slow`) and any other selection run
# at the optimisation level users get. Set for this process only (read once, when the CPU backend starts) and
# only if the caller has not chosen a level; subprocesses (the experiment scripts run as a user would) get the
# caller's environment unchanged.
_FAST_COMPILE = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    if config.getoption("markexpr", "").replace(" ", "") != "notslow":
        return
    if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return
    saved = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = f"{saved or ''} {_FAST_COMPILE}".strip()
    import jax

    jax.devices()  # start the backend now, while the flag is set
    if saved is None:
        del os.environ["XLA_FLAGS"]
    else:
        os.environ["XLA_FLAGS"] = saved


@pytest.fixture(scope="session")
def REPO_ROOT() -> Path:  # noqa: N802 - the name the brief asks for
    """The repository root (the folder holding pyproject.toml and experiments/)."""
    return ROOT


def _run_experiment(script: str, flags: list[str], out: Path, timeout: int = 1200) -> dict:
    """Run ``script`` with ``flags`` into ``out`` as a user would (a subprocess).

    Asserts exit code 0 (1 means a failed claim and fails the test), that every claim has the documented keys
    and passed, that the summary records its provenance, and that every figure it lists is a PNG in ``out``.
    Returns the parsed ``summary.json``.
    """
    proc = subprocess.run([sys.executable, script, *flags, "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["claims"], "an experiment must check at least one claim"
    for claim in summary["claims"]:
        assert {"name", "theory", "measured", "tolerance", "passed"} <= set(claim)
        assert claim["passed"] is True, claim
    assert summary["all_passed"] is True
    assert {"precision", "versions", "device_kind", "git_commit"} <= set(summary["provenance"])
    for name in summary["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return summary


@pytest.fixture(scope="session")
def run_experiment():
    """``run_experiment(script, flags, out) -> summary``: an experiment end to end; exit 0 and every claim passing."""
    return _run_experiment
