"""experiments/asymptotics.py (Lu et al. 2025 learning curves in tau, kappa, alpha): flags, and --quick end to end."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_script

SCRIPT = "experiments/asymptotics.py"


@pytest.fixture(scope="module")
def module(REPO_ROOT):
    return load_script(REPO_ROOT / SCRIPT)


@pytest.mark.parametrize("flags, word", [
    (["--curve-d", "30"], "curve-d"),  # not one of --table-d: the tolerance is read off the table there
    (["--table-d", "20", "--curve-d", "20"], "table-d"),  # one dimension: no finite-d trend
    (["--tau", "1.5"], "tau"),  # the kappa and alpha curves must be compared (|tau - 1| >= 1)
    (["--draws", "1"], "draws"),  # a standard error needs two draws
    (["--kappas", "0"], "kappas"),
    (["--kappas", "inf"], "kappas"),  # kappa = inf is always on the curve; the flag takes finite values
    (["--rho", "-0.1"], "rho"),
    (["--alpha", "0.01"], "alpha"),  # l = round(alpha d) = 0 at d = 10
    (["--vmap-size", "0"], "vmap-size"),
    (["--steps", "10"], "unrecognized"),  # nothing is trained
    (["--checkpoint-every", "10"], "unrecognized"),
])
def test_bad_flags_exit_2_before_any_work(module, flags, word, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        module.SPEC.parse([*flags, "--out", str(out)])
    assert info.value.code == 2 and word in capsys.readouterr().err
    assert not out.exists()


def test_presets_and_grids(module):
    quick, default, paper = module.SPEC.parse(["--quick"]), module.SPEC.parse([]), module.SPEC.parse(["--paper"])
    assert (quick.curve_d, default.curve_d, paper.curve_d) == (20, 40, 80)
    assert quick.table_d == default.table_d == [10, 20, 40] and paper.table_d == [10, 20, 40, 80]
    for args in (quick, default, paper):  # the reference taus are always on the tau curves
        assert {2.0, args.tau} <= set(args.taus) and args.taus == sorted(args.taus)
    assert module.SPEC.parse(["--quick", "--curve-d", "10"]).curve_d == 10  # explicit flags win over the preset
    assert [module.draws_at(default, d) for d in (10, 20, 40)] == [128, 32, 8]
    assert [module.draws_at(quick, d) for d in (10, 20, 40)] == [32, 8, 2]


@pytest.mark.slow
def test_quick_run_passes_every_claim(module, tmp_path):
    out = tmp_path / "run"
    result = module.main(["--quick", "--out", str(out)])
    failed = [(c.name, c.measured, c.tolerance, c.detail) for c in result["claims"] if not c.passed]
    assert not failed, failed
    assert result["all_passed"] and result["out_dir"] == out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "asymptotics" and summary["all_passed"] is True
    assert summary["figures"] == ["asymptotics.png"] and (out / "asymptotics.png").read_bytes()[:4] == b"\x89PNG"
    names = [c["name"] for c in summary["claims"]]
    for part in ("finite d", "tau and alpha curves", "peak at tau >=", "peak at tau <=", "kappa curve",
                 "kappa=inf gives 0.6833", "kappa=0.5 gives 0.9476", "nested fits"):
        assert sum(part in n for n in names) == 1, part
    table = summary["finite_d_table"]
    assert sorted({(r["point"], r["d"]) for r in table}) == [(p, d) for p in "ABCD" for d in (10, 20, 40)]
    for point in "ABCD":  # the excess over the theory shrinks as d grows
        excess = [abs(r["ratio"] - 1) for r in sorted((r for r in table if r["point"] == point), key=lambda r: r["d"])]
        assert excess[-1] < excess[0], (point, excess)
    assert summary["tolerance"]["d"] == 20 and summary["simulation_precision"] == "float64"
    curves = {r["curve"] for r in summary["runs"]}
    assert curves == {"tau", "kappa", "alpha"}
    assert all(len(r["errors"]) == r["draws"] for r in summary["runs"])
