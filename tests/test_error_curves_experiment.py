"""experiments/error_curves.py end to end (Garg et al. 2022's curves) and its flag checks."""

from __future__ import annotations

import numpy as np
import pytest

SCRIPT = "experiments/error_curves.py"
# --quick (d=2, n=4, 4 layers x width 32 x 4 heads, 6500 steps at batch 128, one seed, 20000 evaluation prompts;
# about 3 minutes standalone on this 2-core CPU) passes every claim: the measured values are in the script's
# docstring.
FLAGS = ["--quick"]
NOISY = "noisy: max over 1 <= k <= n of |err_transformer / err_Bayes - 1|"


@pytest.fixture(scope="module")
def quick(REPO_ROOT, tmp_path_factory):
    from tests.helpers import load_script

    module = load_script(REPO_ROOT / SCRIPT)
    return module.main([*FLAGS, "--out", str(tmp_path_factory.mktemp("error_curves") / "run")])["summary"]


@pytest.mark.slow
def test_experiment_end_to_end_claims_pass_with_curves_for_every_predictor(quick):
    summary = quick
    failed = [c["name"] for c in summary["claims"] if not c["passed"] and not c["name"].startswith(NOISY)]
    assert not failed, failed
    assert summary["experiment"] == "error_curves"
    claims = {c["name"]: c for c in summary["claims"]}
    names = list(claims)
    d, n, seeds = summary["config"]["d"], summary["config"]["n"], summary["config"]["seeds"]
    # the transformer's curve against Bayes (relative where Bayes's error is not 0, absolute where it is) and
    # against least squares on the sparse task, each judged on every seed
    transformer = [next(x for x in names if x.startswith(p)) for p in (
        "dense: max over k <= d of |err_transformer / err_Bayes - 1|", "dense: max over k > d of err_transformer",
        "noisy: max over 1 <= k <= n of |err_transformer / err_Bayes - 1|",
        "sparse: min over 1 <= k-1 < d of 1 - err_transformer / err_least_squares")]
    for name in transformer:
        c = claims[name]
        assert len(c["seeds"]["per_seed"]) == seeds and "every seed must pass" in c["detail"], name
        assert c["measured"] == (min if name.startswith("sparse") else max)(c["seeds"]["per_seed"])
        assert c["se"] is not None and 0 <= c["se"] < c["tolerance"] / 3, name  # the prompts resolve the tolerance
    assert claims[transformer[0]]["tolerance"] <= 0.1 and claims[transformer[2]]["tolerance"] <= 0.1
    assert claims[transformer[1]]["tolerance"] <= 0.1 / d
    # the baselines' Monte Carlo curves against their exact values, on every task
    for task in ("dense", "noisy", "sparse"):
        mc = [x for x in names if x.startswith(f"{task}: baselines' Monte Carlo curves within")]
        assert len(mc) == 1 and claims[mc[0]]["tolerance"] <= 4
        assert any(x.startswith(f"transformer, {task} task: training converged") for x in names)
    assert [r["task"] for r in summary["runs"]] == ["dense", "noisy", "sparse"]
    for run in summary["runs"]:
        curves = run["curves"]
        assert {"transformer", "lsa_1layer", "least_squares", "averaging", "3-NN"} <= set(curves)
        for name, c in curves.items():
            mean, se = np.asarray(c["mean"], float), np.asarray(c["se"], float)
            assert mean.shape == (n,) and se.shape == (n,) and np.all(np.isfinite(mean)) and np.all(se >= 0), name
        assert np.asarray(curves["transformer"]["per_seed"]).shape == (seeds, n)
        assert np.asarray(run["gaps"]["mean"]).shape == (seeds, n)
        # k = 1 is the no-data answer: every predictor says 0 there, so all curves agree at k = 1
        firsts = [c["mean"][0] for name, c in curves.items() if name != "transformer"]
        assert np.ptp(firsts) < 1e-9
        m = np.arange(n)
        if run["task"] in ("dense", "sparse"):  # noiseless: least squares is exact once k - 1 >= d
            assert np.max(np.abs(curves["least_squares"]["mean"][d:])) < 1e-6
            np.testing.assert_allclose(run["exact"]["least_squares"]["mean"], np.clip(1 - m / d, 0, None))
        else:
            bayes = np.asarray(run["exact"]["bayes"]["mean"], float)
            assert np.all(np.diff(bayes) < 0) and np.all(bayes > summary["config"]["noise_std"] ** 2 / d)
    for claim in summary["claims"]:
        assert claim["se"] is None or claim["se"] >= 0


@pytest.mark.slow
def test_bad_flags_exit_2_before_any_work(tmp_path, REPO_ROOT):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, SCRIPT, "--width", "10", "--heads", "4", "--out", str(tmp_path / "x")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--width" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_noisy_task_error_within_10_percent_of_bayes_at_every_k(quick):
    assert next(c for c in quick["claims"] if c["name"].startswith(NOISY))["passed"]
