"""End-to-end check of experiments/preconditioned_gd.py at its --quick settings (what reproduce_all --quick runs)."""

from __future__ import annotations

import numpy as np
import pytest

SCRIPT = "experiments/preconditioned_gd.py"


@pytest.mark.slow
def test_experiment_end_to_end_passes_every_claim_for_both_priors(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, ["--quick"], tmp_path)
    assert summary["experiment"] == "preconditioned_gd" and summary["config"]["d"] == 3
    assert [(r["w_prior"], r["noise"]) for r in summary["runs"]] == [("isotropic", 0.0), ("inverse", 0.0)]
    for run in summary["runs"]:
        n, sigma = 20, run["noise"]
        if run["w_prior"] == "inverse":  # Gamma* = n/(n + d + 1 + sigma^2) Sigma^-1 (Mahankali Thm 2)
            expected = n / (n + 3 + 1 + sigma**2) * np.linalg.inv(np.asarray(run["x_cov"]))
            np.testing.assert_allclose(run["gamma_theory"], expected, rtol=1e-8)
        assert len(run["gamma_rel_error_per_seed"]) == 2 and run["convergence"]["converged"]
    # per prior: Gamma, loss, GD Monte Carlo, loss flat, seeds agree; the inverse prior adds the two Dist claims
    assert len(summary["claims"]) == 5 + 7
