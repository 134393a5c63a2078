"""experiments/algorithm_selection.py (Bai et al. 2023, in-context algorithm selection): the --quick run end to end,
and, cheaply, its flag checks and the closed forms its claims rest on.

The end-to-end run uses the script's ``--quick`` preset (its docstring gives the settings, the measured values and
the wall time) and fails when any claim fails. Every claim about a trained model is judged per training seed.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest

from tests.helpers import load_script

SCRIPT = "experiments/algorithm_selection.py"


@pytest.fixture(scope="module")
def script(REPO_ROOT):
    return load_script(REPO_ROOT / SCRIPT)


@pytest.fixture(scope="module")
def quick_run(script, tmp_path_factory):
    """``main(["--quick", "--out", tmp])`` once for the slow tests: ``(result, summary)``."""
    out = tmp_path_factory.mktemp("algorithm_selection") / "run"
    result = script.main(["--quick", "--out", str(out)])
    return result, json.loads((out / "summary.json").read_text())


def _lowest_level_claim(summary) -> str:
    config = summary["config"]
    return f"transformer (L={config['layers']}), sigma={min(config['noise']):g}:"


@pytest.mark.slow
def test_quick_run_passes_its_claims_and_records_curves_and_fingerprints_per_level(quick_run):
    result, summary = quick_run
    lowest = _lowest_level_claim(summary)
    failed = [(c.name, c.measured, c.tolerance, c.detail) for c in result["claims"]
              if not c.passed and not c.name.startswith(lowest)]
    assert not failed, failed  # every claim but the lowest level's (test below)
    assert summary["experiment"] == "algorithm_selection" and summary["figures"] == ["algorithm_selection.png"]
    config = summary["config"]
    levels, seeds, n, d = config["noise"], config["seeds"], config["n"], config["d"]
    names = [c["name"] for c in summary["claims"]]
    for sigma in levels:  # one per-level claim, judged on every seed
        claim = next(c for c in summary["claims"] if c["name"].startswith(f"transformer (L={config['layers']}), "
                                                                          f"sigma={sigma:g}:"))
        assert claim["tolerance"] == 0.05 and len(claim["seeds"]["per_seed"]) == seeds
        assert claim["measured"] == max(claim["seeds"]["per_seed"])
        assert claim["se"] is not None and claim["se"] < 0.05 / 4  # the prompts resolve the bar
    for part in ("fitted ridge lambda increases", "mixture Bayes", "no fixed ridge penalty", "linear transformer"):
        assert sum(part in name for name in names) == 1, part
    assert [r["noise"] for r in summary["runs"]] == sorted(levels)
    assert summary["window_ks"] == list(range(2 * d, n + 1))
    for run in summary["runs"]:
        assert run["bayes_lambda"] == pytest.approx(run["noise"] ** 2 / summary["psi"] ** 2)
        for name, curve in run["curves"].items():  # every prefix k = 1..n (trained positions only)
            assert len(curve["mean"]) == n and np.all(np.isfinite(curve["mean"])), name
        assert np.max(np.abs(run["gap_to_level_bayes"]["bayes_level"]["mean"])) == 0.0
        for model in ("transformer", "lsa"):
            fps = run["fingerprints"][model]
            assert len(fps) == seeds and all(f["lam"] > 0 and f["ks"][-1] == n for f in fps)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: at --quick (3000 steps) the transformer is 0.118 above the Bayes "
                   "error of the lowest level (sigma = 0.1) at k = 2d = 6 against the bar 0.05 (0.077 and 0.084 at "
                   "the 10,000-step defaults): it keeps a penalty near the middle level's (fitted lambda about 1 "
                   "against 0.03) up to k = 7 and selects the low one late; see the script's docstring")
def test_quick_run_meets_the_bar_at_the_lowest_noise_level(quick_run):
    result, summary = quick_run
    claim = next(c for c in result["claims"] if c.name.startswith(_lowest_level_claim(summary)))
    assert claim.passed, (claim.measured, claim.detail)
    assert result["all_passed"]


def test_bad_flags_exit_2_before_any_work(script, tmp_path, capsys):
    out = tmp_path / "out"
    for argv, word in ((["--noise", "0.5"], "noise"), (["--noise", "0.5", "0.5"], "noise"), (["--n", "5"], "--n"),
                       (["--width", "10", "--heads", "4"], "width"), (["--fingerprint-prompts", "1"], "fingerprint"),
                       (["--noise", "-1", "0.5"], "noise"), (["--lsa-steps", "0"], "lsa-steps")):
        with pytest.raises(SystemExit) as info:
            script.SPEC.parse([*argv, "--out", str(out)])
        assert info.value.code == 2 and word in capsys.readouterr().err, argv
    assert not out.exists()
    args = script.SPEC.parse(["--d", "4", "--n", "8", "--noise", "1", "0.1", "--out", str(out)])
    assert args.noise == [0.1, 1.0] and args.psi is None  # levels sorted
    assert args.prior_std == pytest.approx(0.5)  # derived: Bai et al.'s psi = 1/sqrt(d)


def test_closed_form_ridge_matches_the_library_and_curves_use_error_curves_normalisation(script):
    import icl

    args = argparse.Namespace(d=3, n=7, prior_std=0.6, noise=[0.2, 1.0], eval_prompts=2000)
    task = script.level_task(args, 1.0)
    prompts = task.sample(jax.random.key(0), 64, args.n)
    lams = [0.0, 0.3, 2.0]
    sq = script.ridge_prefix_sq_errors(prompts, lams)
    for i, lam in enumerate(lams):
        p = icl.least_squares() if lam == 0 else icl.ridge(lam)
        want = (np.asarray(p.prefix(prompts), np.float64) - np.asarray(prompts.y, np.float64)) ** 2
        np.testing.assert_allclose(sq[..., i], want, rtol=2e-3, atol=2e-5)
    # the fixed-ridge grid contains the levels' own Bayes penalties (so "no fixed ridge" includes each of them)
    assert all(np.any(np.isclose(script.fixed_ridge_lambdas(args), script.bayes_lambda(args, s))) for s in args.noise)
    # the curves are icl.error_curve's numbers (same prompts, same normaliser) and the gaps are paired on them
    mixture = script.mixture_task(args)
    predictors = {"bayes_level": icl.bayes_posterior_mean(task), "bayes_mixture": icl.bayes_posterior_mean(mixture)}
    key = jax.random.key(1)
    curves = script.level_curves(args, task, predictors, key)
    want = icl.error_curve(predictors["bayes_mixture"], task, key, args.n, num_prompts=args.eval_prompts)
    np.testing.assert_allclose(curves["err"]["bayes_mixture"]["mean"], want.mean, rtol=1e-6)
    np.testing.assert_allclose(curves["gap"]["bayes_mixture"]["mean"],
                               curves["err"]["bayes_mixture"]["mean"] - curves["err"]["bayes_level"]["mean"],
                               atol=1e-6)
    assert np.all(curves["gap"]["bayes_mixture"]["mean"][1:] > -3 * curves["gap"]["bayes_mixture"]["se"][1:])
