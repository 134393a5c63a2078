"""End-to-end checks of experiments/which_algorithm.py: summary.json schema, phase diagram, lambda CI, claims, --help.

The end-to-end run uses the script's ``--quick`` preset (d = 2, n = 6; the one-layer LSA and one 4-layer
standard transformer of width 32, one seed; the smallest configuration measured to pass, see the script's
docstring) and fails when any claim fails (the shared ``run_experiment`` fixture asserts exit code 0 and every
claim passed).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_script

SCRIPT = "experiments/which_algorithm.py"
FLAGS = ["--quick"]


@pytest.mark.slow
def test_experiment_end_to_end_claims_pass_and_it_writes_phase_diagram_and_lambda_ci(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, FLAGS, tmp_path, timeout=3600)
    assert summary["experiment"] == "which_algorithm"
    config = summary["config"]
    d, n = config["d"], config["n"]
    names = [c["name"] for c in summary["claims"]]
    assert sum("one-layer LSA" in name for name in names) == 3 * len(config["noise"])
    assert any("deepest transformer" in name and "ILWD" in name for name in names)
    phase = summary["phase_diagram"]
    families = {"averaging", "bayes", "least_squares", "gd", "ridge", "preconditioned_gd", "gd_plus_plus"}
    assert len(phase) == (len(config["lsa_layers"]) + len(config["tf_layers"])) * len(config["noise"])
    assert set(phase.values()) <= families | {None}  # None: no family fits (the run gives the reason)
    for k in (d + 1, n + 1):
        ci = summary["ridge_lambda"][f"k={k}"]
        assert ci["num_seeds"] == config["seeds"] and ci["num_bootstrap"] == config["bootstrap"]
        assert 0 < ci["ci95"][0] <= ci["ci95"][1] and np.isfinite(ci["lam"])
    assert summary["bayes_lambda"] == pytest.approx(max(config["noise"]) ** 2)
    for run in summary["runs"]:
        assert (run["best"] in families or run["reason"]) and set(run["fitted"]) == families
    assert summary["figures"] == ["which_algorithm.png"]


def test_ridge_lambda_bootstrap_gives_back_lambda_and_a_ci_spanning_the_seeds(REPO_ROOT):
    import jax

    import icl

    module = load_script(REPO_ROOT / SCRIPT)
    task = icl.LinearRegressionTask.isotropic(3, 0.5)
    out = module.ridge_lambda_bootstrap([icl.ridge(0.25), icl.ridge(0.3)], task, jax.random.key(0), 8, 4, 512, 200, 0)
    assert out["per_seed"] == pytest.approx([0.25, 0.3], rel=1e-3)  # each seed's exact ridge is found
    assert 0.25 * 0.999 <= out["ci95"][0] <= out["lam"] <= out["ci95"][1] <= 0.3 * 1.001
    assert not out["at_grid_edge"]


def test_experiment_help_lists_the_flags_and_bad_flags_exit_2(REPO_ROOT, capsys):
    module = load_script(REPO_ROOT / SCRIPT)
    with pytest.raises(SystemExit) as info:
        module.SPEC.parse(["--help"])
    assert info.value.code == 0
    stdout = capsys.readouterr().out
    for flag in ("--lsa-layers", "--tf-layers", "--tf-steps", "--bootstrap", "--noise", "--eval-prompts"):
        assert flag in stdout
    for bad in (["--lsa-layers", "2"], ["--noise", "0.5"], ["--noise", "0"], ["--d", "5", "--n", "5"]):
        with pytest.raises(SystemExit) as info:
            module.SPEC.parse(bad)
        assert info.value.code == 2, bad
