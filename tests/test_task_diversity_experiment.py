"""End-to-end check of experiments/task_diversity.py (Raventós et al. 2023) with --quick, and its flag validation."""

from __future__ import annotations

import importlib.util

import pytest

SCRIPT = "experiments/task_diversity.py"


def load_script(repo_root):
    spec = importlib.util.spec_from_file_location("task_diversity_script", repo_root / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_passes_its_claims_and_reports_the_transition(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, ["--quick"], tmp_path)
    assert summary["experiment"] == "task_diversity"
    sizes = [r["num_tasks"] for r in summary["runs"]]
    assert sizes[0] == 2 and sizes[-1] == "inf"
    assert summary["m_star"] in sizes
    assert len(summary["transition_table"]) == len(sizes)
    assert "task_diversity.png" in summary["figures"]


@pytest.mark.parametrize("flags, word", [(["--noise", "0"], "noise"), (["--d", "8", "--n", "4"], "n")])
def test_bad_flags_exit_2_before_any_work(REPO_ROOT, flags, word, capsys):
    module = load_script(REPO_ROOT)
    with pytest.raises(SystemExit) as info:
        module.SPEC.parse(flags)
    assert info.value.code == 2 and word in capsys.readouterr().err
