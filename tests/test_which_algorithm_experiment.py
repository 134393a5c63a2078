"""End-to-end check of experiments/which_algorithm.py --quick: summary, phase diagram, figure, claims."""

from __future__ import annotations

import pytest

SCRIPT = "experiments/which_algorithm.py"


@pytest.mark.slow
def test_which_algorithm_quick_passes_every_claim_and_writes_the_phase_diagram(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, ["--quick"], tmp_path, timeout=1800)
    assert summary["experiment"] == "which_algorithm"
    names = [c["name"] for c in summary["claims"]]
    assert any("gives back lambda" in name for name in names)
    assert any("one-layer LSA" in name for name in names)
    phase = summary["phase_diagram"]
    assert any(key.startswith("LSA L=1") for key in phase)
    assert all(value in {"averaging", "bayes", "least_squares", "gd", "ridge", "preconditioned_gd", "gd_plus_plus",
                         "knn"} for value in phase.values())
    assert "which_algorithm.png" in summary["figures"]
