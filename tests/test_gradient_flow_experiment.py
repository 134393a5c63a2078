"""End-to-end checks of experiments/gradient_flow.py: summary.json schema, claims, figure, flags."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_script

SCRIPT = "experiments/gradient_flow.py"
FLAGS = ["--x-cov-eigs", "1", "0.5", "--n", "8", "--test-lengths", "4", "16", "--seeds", "1",
         "--eval-prompts", "20000"]


@pytest.mark.slow
def test_experiment_end_to_end_writes_summary_and_figure_and_claims_pass(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, FLAGS, tmp_path)
    assert summary["experiment"] == "gradient_flow"
    assert summary["config"]["d"] == 2 and summary["config"]["test_lengths"] == [4, 16]
    names = [c["name"] for c in summary["claims"]]
    assert sum(name.startswith("test error at M=") for name in names) == 2
    assert any("W^PV_22" in name for name in names) and any("W^KQ_11" in name for name in names)
    balanced, unbalanced, euler = summary["runs"]
    assert [balanced["run"], unbalanced["run"], euler["run"]] == ["balanced", "unbalanced", "euler_observation"]
    lam = np.asarray(balanced["x_cov"])
    gamma = np.linalg.inv((1 + 1 / 8) * lam + np.trace(lam) / 8 * np.eye(2))  # ZFB Thm 4.1
    np.testing.assert_allclose(balanced["gamma_theory"], gamma, rtol=1e-10)
    assert balanced["c_theory"] == pytest.approx(np.sqrt(np.linalg.norm(gamma)), rel=1e-10)
    assert max(balanced["c_rel_error"]) <= 1e-4 and max(balanced["a_rel_error"]) <= 1e-4
    assert [t["M"] for t in balanced["test_errors"]] == [4, 16]
    for t in balanced["test_errors"]:
        assert abs(t["loss"] - t["risk_theory"]) <= 4 * t["loss_se"]
    assert summary["figures"] == ["gradient_flow.png"]


def test_experiment_help_lists_the_flags(REPO_ROOT, capsys):
    # in-process (the script as a module; a subprocess would pay jax's start-up): --help exits 0
    with pytest.raises(SystemExit) as info:
        load_script(REPO_ROOT / SCRIPT).SPEC.parse(["--help"])
    assert info.value.code == 0
    stdout = capsys.readouterr().out
    for flag in ("--x-cov-eigs", "--w-prior", "--n", "--test-lengths", "--init-scale", "--seeds", "--eval-prompts",
                 "--flow-time", "--dt", "--out", "--quick"):
        assert flag in stdout
    for unused in ("--lr", "--steps", "--batch", "--d ", "--init-diag", "--checkpoint-every"):
        assert unused not in stdout
