"""End-to-end checks of experiments/which_algorithm.py: summary.json schema, phase diagram, lambda CI, claims, --help.

The end-to-end run uses the script's ``--quick`` preset (d = 2, n = 6; the one-layer LSA and one 4-layer
standard transformer of width 32, one seed; the smallest configuration measured to pass, see the script's
docstring) and fails when any claim fails (the shared ``run_experiment`` fixture asserts exit code 0 and every
claim passed). Every claim about a trained model is judged per seed (it lists one value per training seed).
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
    n = config["n"]
    names = [c["name"] for c in summary["claims"]]
    assert sum("one-layer LSA" in name for name in names) == 4 * len(config["noise"])
    deepest = [c for c in summary["claims"] if "deepest transformer" in c["name"]]
    assert [any(word in c["name"] for c in deepest) for word in ("ILWD", "k = d + 1")] == [True] * 2
    for c in summary["claims"]:  # every claim about a trained model shows each seed's value; measured is the worst
        if "LSA" in c["name"] or "transformer" in c["name"]:
            assert len(c["seeds"]["per_seed"]) == config["seeds"] and c["measured"] in c["seeds"]["per_seed"]
    phase = summary["phase_diagram"]
    families = {"averaging", "bayes", "least_squares", "gd", "ridge", "preconditioned_gd"}  # GD++: von_oswald.py
    assert len(phase) == (len(config["lsa_layers"]) + len(config["tf_layers"])) * len(config["noise"])
    for label, verdicts in phase.items():  # one verdict per fingerprinted seed; None: no verdict (reason in runs)
        carries_claims = label.startswith(("LSA L=1 ", f"Transformer L={max(config['tf_layers'])} "))
        assert len(verdicts) == (config["seeds"] if carries_claims else 1)
        assert set(verdicts) <= families | {None}
    assert set(summary["ridge_lambda"]) == {f"k={k}" for k in range(2, n + 2)}  # every prefix length with context
    for k in range(2, n + 2):
        ci = summary["ridge_lambda"][f"k={k}"]
        assert ci["num_seeds"] == config["seeds"] and ci["num_bootstrap"] == config["bootstrap"]
        assert 0 < ci["ci95"][0] <= ci["ci95"][1] and np.isfinite(ci["lam"]) and len(ci["per_seed"]) == config["seeds"]
        assert ci["ratio_to_bayes"] == pytest.approx(ci["lam"] / summary["bayes_lambda"])
        # the Bayes lambda against the best-fit ridge, per seed, on the fingerprints' fresh prompts
        assert len(ci["bayes_ridge_excess_per_d"]) == len(ci["verdict_per_seed"]) == config["seeds"]
        assert all(np.isfinite(ci["bayes_ridge_excess_per_d"]))
    assert "margin" in summary["bayes_lambda_finding"]
    assert summary["bayes_lambda"] == pytest.approx(max(config["noise"]) ** 2)
    assert summary["atol"] == pytest.approx(1e-3)  # icl.fingerprint's default margin
    for run in summary["runs"]:
        assert (run["best"] in families or run["reason"]) and set(run["fitted"]) == families
        assert run.get("atol", 1e-3) == pytest.approx(1e-3)
    assert summary["figures"] == ["which_algorithm.png"]


def test_script_relies_on_fingerprint_defaults_for_the_margin(REPO_ROOT):
    import inspect

    from icl.fingerprint import ATOL

    module = load_script(REPO_ROOT / SCRIPT)
    assert module.ATOL == ATOL
    assert "atol" not in inspect.getsource(module.fingerprint).split('"""')[-1]  # no margin of its own


def test_ridge_lambda_bootstrap_gives_back_lambda_and_a_ci_spanning_the_seeds(REPO_ROOT):
    import jax

    import icl

    module = load_script(REPO_ROOT / SCRIPT)
    task = icl.LinearRegressionTask.isotropic(3, 0.5)
    out = module.ridge_lambda_bootstrap([icl.ridge(0.25), icl.ridge(0.3)], task, jax.random.key(0), 8, 4, 512, 200, 0)
    assert out["per_seed"] == pytest.approx([0.25, 0.3], rel=1e-3)  # each seed's exact ridge is found
    assert 0.25 * 0.999 <= out["ci95"][0] <= out["lam"] <= out["ci95"][1] <= 0.3 * 1.001
    assert not out["at_grid_edge"]
    by_k = module.ridge_lambda_by_k([icl.ridge(0.25)], task, jax.random.key(0), 8, range(2, 10), 256, 50, 0)
    assert set(by_k) == {f"k={k}" for k in range(2, 10)}
    for k in range(2, 10):  # the exact ridge is found at every prefix length with context and at the query (to the
        # float32 rounding of ridge's own predictions, which moves the fit more as lambda matters less at large k)
        assert by_k[f"k={k}"]["lam"] == pytest.approx(0.25, rel=5e-3), k


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
