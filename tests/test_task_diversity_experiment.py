"""experiments/task_diversity.py (Raventós et al. 2023): claims pass end to end; flags are checked first (exit 2)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import icl
from tests.helpers import load_script

SCRIPT = "experiments/task_diversity.py"
# The script's --quick preset (d = 2, n = 8, sigma = 1, M = 2..128 and infinity, 1500 steps at batch 192): every
# claim passes, M* = 32 (range 32..32; M = 16 at 1.19x ridge, 32 at 1.07x, infinity at 1.02x); 226 s wall cold on a
# quiet 2-core CPU. The defaults (M = 2..256, 3000 steps) pass too: M* = 32, infinity at 1.015x, ~810 CPU-seconds.
# At sigma = 0.5 the model's own ~10% gap to ridge at M = infinity pushed M* past the grid.
FLAGS = ["--quick"]


@pytest.mark.slow
def test_quick_run_passes_its_claims_and_reports_the_transition(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, FLAGS, tmp_path)  # fails unless every claim passes
    assert summary["experiment"] == "task_diversity"
    sizes = [r["num_tasks"] for r in summary["runs"]]
    assert sizes[-1] == "inf" and sizes[:-1] == [2**j for j in range(1, len(sizes))]
    m_star = summary["m_star"]
    low, high = summary["m_star_range"]
    assert 8 <= m_star and 4 * m_star <= sizes[-2] and low <= m_star <= high
    first, inf = summary["runs"][0], summary["runs"][-1]
    assert first["spd_dmmse_pool"][0] < first["spd_ridge_pool"][0]
    assert inf["fresh_error_ratio_to_ridge"][0] <= 1.10
    assert "task_diversity.png" in summary["figures"]


def test_pool_or_prior_tiles_the_pool_and_keeps_its_dmmse(REPO_ROOT):
    module = load_script(REPO_ROOT / SCRIPT)
    task = icl.LinearRegressionTask(d=2, noise_std=0.5)
    pool = icl.FiniteTaskPool(task, num_tasks=4, seed=3)
    tiled = module.PoolOrPrior.build(task, 4, 16, seed=3)
    assert tiled.weights.shape == (16, 2)
    prompts = tiled.sample(jax.random.key(0), 512, 6)
    members = np.asarray(pool.weights)
    # every prompt's task vector is a member of the pool, and the labels follow it with noise sigma
    assert np.min(np.abs(np.asarray(prompts.w)[:, None, :] - members[None]).sum(-1), axis=1).max() < 1e-6
    np.testing.assert_allclose(icl.dmmse(tiled).prefix(prompts), icl.dmmse(pool).prefix(prompts), atol=1e-5)
    prior = module.PoolOrPrior.build(task, None, 16, seed=3).sample(jax.random.key(1), 4096, 2)
    assert len(np.unique(np.asarray(prior.w), axis=0)) == 4096  # M = infinity: a fresh vector per prompt
    assert abs(float(np.var(np.asarray(prior.w))) - 1.0) < 0.1


@pytest.mark.parametrize("flags, word", [(["--noise", "0"], "noise"), (["--d", "8", "--n", "4"], "n"),
                                         (["--warmup", "2000", "--steps", "1000"], "warmup")])
def test_bad_flags_exit_2_before_any_work(REPO_ROOT, flags, word, capsys):
    module = load_script(REPO_ROOT / SCRIPT)
    with pytest.raises(SystemExit) as info:
        module.SPEC.parse(flags)
    assert info.value.code == 2 and word in capsys.readouterr().err
