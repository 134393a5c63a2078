"""End-to-end check of experiments/uncertainty.py (Liu et al. 2024) with --quick, and its flag validation."""

from __future__ import annotations

import pytest

from tests.helpers import load_script

SCRIPT = "experiments/uncertainty.py"


@pytest.mark.slow
def test_quick_run_passes_its_claims_and_reports_every_shift(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, ["--quick"], tmp_path)
    assert summary["experiment"] == "uncertainty"
    names = [c["name"] for c in summary["claims"]]
    assert any("in distribution: NLL" in n for n in names) and any("w x 3" in n for n in names)
    shifts = [r["shift"] for r in summary["runs"]]
    assert shifts[0] == "none" and "w x 3" in shifts and any(s.startswith("length") for s in shifts)
    assert any(s.startswith("finite pool") for s in shifts)
    ind = summary["runs"][0]
    assert abs(ind["model"]["coverage"]["0.9"][0] - 0.9) <= 0.02
    assert "uncertainty.png" in summary["figures"]


@pytest.mark.parametrize("flags, word", [(["--noise", "0"], "noise"), (["--w-scales", "2"], "w-scales"),
                                         (["--model", "mlp"], "model")])
def test_bad_flags_exit_2_before_any_work(REPO_ROOT, flags, word, capsys):
    module = load_script(REPO_ROOT / SCRIPT)
    with pytest.raises(SystemExit) as info:
        module.SPEC.parse(flags)
    assert info.value.code == 2 and word in capsys.readouterr().err
