"""End-to-end checks of experiments/multilayer_gd.py: summary.json schema, claims, figure, flags."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_script

SCRIPT = "experiments/multilayer_gd.py"
# Small but converged on the 2-core CPU (~12 s): d = 2, n = 8, depths 1 and 2, one seed. At these settings the
# learned steps land within ~1.5% of the optimal ones and the loss within 0.3% of optimal 2-step GD.
FLAGS = ["--x-cov-eigs", "1", "0.5", "--n", "8", "--layers", "1", "2", "--steps", "1500", "--batch", "256",
         "--seeds", "1", "--eval-prompts", "50000"]


@pytest.mark.slow
def test_experiment_end_to_end_writes_summary_and_figure_and_claims_pass(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, FLAGS, tmp_path)
    assert summary["experiment"] == "multilayer_gd"
    assert summary["config"]["layers"] == [1, 2] and summary["config"]["d"] == 2 and summary["config"]["n"] == 8
    # per depth: Dist, one per step size, loss, exact-vs-MC, convergence; then the ordering across depths
    assert len(summary["claims"]) == 5 + 6 + 1
    assert [run["layers"] for run in summary["runs"]] == [1, 2]
    for run in summary["runs"]:
        num_layers = run["layers"]
        assert np.asarray(run["whitened_preconditioners"]).shape == (1, num_layers, 2, 2)
        assert np.asarray(run["a_sorted"]).shape == (1, num_layers) and len(run["a_optimal"]) == num_layers
        assert np.asarray(run["x_cov"]).shape == (2, 2)
        assert run["gd_plus_plus"]["risk_theory"] <= run["risk_theory"] + 1e-12
        assert set(run["loss"]) >= {"model", "gd_optimal", "gd_plus_plus"}
    assert summary["runs"][0]["a_optimal"][0] == pytest.approx(8 / (8 + 2 + 1), rel=1e-10)  # Mahankali Thm 2
    assert summary["depth_curve"]["depths"] == [1, 2]
    assert summary["figures"] == ["multilayer_gd.png"]


def test_experiment_help_lists_the_flags(REPO_ROOT, capsys):
    # in-process (the script as a module; a subprocess would pay jax's start-up): --help exits 0
    with pytest.raises(SystemExit) as info:
        load_script(REPO_ROOT / SCRIPT).SPEC.parse(["--help"])
    assert info.value.code == 0
    stdout = capsys.readouterr().out
    for flag in ("--x-cov-eigs", "--w-prior", "--layers", "--n", "--steps", "--batch", "--seeds", "--lr",
                 "--eval-prompts", "--out", "--full-model", "--quick", "--checkpoint-every", "--resume"):
        assert flag in stdout


def test_parse_args_sets_d_from_the_eigenvalues_and_rejects_bad_depths(REPO_ROOT):
    module = load_script(REPO_ROOT / SCRIPT)
    args = module.parse_args(["--x-cov-eigs", "2", "1", "0.5"])
    assert args.d == 3 and args.layers == [1, 2, 3] and args.w_prior == "inverse"
    assert module.parse_args([]).x_cov_eigs == [1.0, 1.0, 0.25, 0.0625, 1.0]
    for bad in (["--layers", "2", "1"], ["--noise", "0", "0.5"], ["--layers", "0"], ["--d", "3"]):
        with pytest.raises(SystemExit) as info:
            module.parse_args(bad)
        assert info.value.code == 2
