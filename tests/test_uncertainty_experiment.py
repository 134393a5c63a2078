"""End-to-end check of experiments/uncertainty.py (Liu et al. 2024) with --quick, and its flag validation."""

from __future__ import annotations

import pytest

from tests.helpers import load_script

SCRIPT = "experiments/uncertainty.py"


@pytest.mark.slow
def test_quick_run_passes_its_claims_and_reports_every_shift(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, ["--quick"], tmp_path)
    assert summary["experiment"] == "uncertainty"
    seeds = summary["config"]["seeds"]
    names = [c["name"] for c in summary["claims"]]
    for part in ("in distribution: NLL", "cover >= 88%", "cover <= 92%", "w x 3", "covariate shift x x 2", "converged",
                 "seeds agree"):
        assert sum(part in n for n in names) == 1, part
    for c in summary["claims"]:  # every claim is judged on each seed; measured is the worst seed's value
        assert len(c["seeds"]["per_seed"]) == seeds
        if not c["name"].startswith("uncertainty:"):  # the convergence claims measure icl.convergence_report's excess
            assert c["measured"] in c["seeds"]["per_seed"]
    shifts = [r["shift"] for r in summary["runs"]]
    assert shifts[0] == "none" and "w x 3" in shifts and any(s.startswith("length") for s in shifts)
    assert any(s.startswith("finite pool") for s in shifts)
    for label in set(shifts):  # every shift scored for every seed
        assert sorted(r["seed"] for r in summary["runs"] if r["shift"] == label) == list(range(seeds)), label
    for ind in (r for r in summary["runs"] if r["shift"] == "none"):
        assert abs(ind["model"]["coverage"]["0.9"][0] - 0.9) <= 0.02
    for row in (r for r in summary["runs"] if r["shift"] == "x x 2"):  # the blow-up's diagnostic, per seed
        growth = row["extrapolation"]["growth_exponent"]
        assert 3 ** summary["config"]["layers"] - 3 <= growth <= 3 ** summary["config"]["layers"] + 3
        assert "float64" in row["extrapolation"]["finding"]
    assert "uncertainty.png" in summary["figures"]


@pytest.mark.parametrize("flags, word", [(["--noise", "0"], "noise"), (["--w-scales", "2"], "w-scales"),
                                         (["--model", "mlp"], "model")])
def test_bad_flags_exit_2_before_any_work(REPO_ROOT, flags, word, capsys):
    module = load_script(REPO_ROOT / SCRIPT)
    with pytest.raises(SystemExit) as info:
        module.SPEC.parse(flags)
    assert info.value.code == 2 and word in capsys.readouterr().err
