"""experiments/task_diversity.py (Raventós et al. 2023): claims pass end to end; flags are checked first (exit 2)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import icl
from tests.helpers import load_script

SCRIPT = "experiments/task_diversity.py"
# The script's --quick preset (d = 2, n = 8, sigma = 1, one seed, M = 2..128 and infinity, 1500 steps at batch 192):
# every claim passes, M* = 32 (range 32..32; M = 16 at 1.16x ridge, 32 at 1.04x, infinity at 1.02x), no grid
# extension; 447 s wall on a loaded 2-core CPU (226-270 s quiet). With --d 3 --seed 1, M* = 64 and the grid extends
# to M = 256. The defaults (d = 5, sigma = 1.5, 2 seeds) are not run here.
FLAGS = ["--quick"]


@pytest.mark.slow
def test_quick_run_passes_its_claims_and_reports_the_transition(run_experiment, tmp_path):
    summary = run_experiment(SCRIPT, FLAGS, tmp_path)  # fails unless every claim passes
    assert summary["experiment"] == "task_diversity"
    seeds = summary["config"]["seeds"]
    sizes = [r["num_tasks"] for r in summary["runs"]]
    assert sizes[-1] == "inf" and sizes[:-1] == [2**j for j in range(1, len(sizes))]
    stars, ranges = summary["m_star_per_seed"], summary["m_star_range_per_seed"]
    assert len(stars) == len(ranges) == seeds and not summary["grid_capped"]
    for m_star, (low, high) in zip(stars, ranges):  # every seed: two octaves of grid on each side of M*
        assert 8 <= m_star and 4 * m_star <= sizes[-2] and low <= m_star <= high
    first, inf = summary["runs"][0], summary["runs"][-1]
    for row in summary["runs"]:  # every seed's model was measured
        assert len(row["fresh_error_ratio_to_ridge"]["per_seed"]) == seeds
    assert all(a < b for a, b in zip(first["spd_dmmse_pool"]["per_seed"], first["spd_ridge_pool"]["per_seed"]))
    assert max(inf["fresh_error_ratio_to_ridge"]["per_seed"]) <= 1.10
    assert "task_diversity.png" in summary["figures"]


def _row(m, ratios, se=0.01):
    return {"num_tasks": m, "fresh_error_ratio_to_ridge": {"per_seed": list(ratios), "se_per_seed": [se] * len(ratios)}}


def test_m_star_is_found_per_seed_and_the_grid_end_it_needs(REPO_ROOT):
    module = load_script(REPO_ROOT / SCRIPT)
    rows = [_row(2, [1.5, 1.6]), _row(4, [1.3, 1.35]), _row(8, [1.09, 1.2]), _row(16, [1.05, 1.105])]
    stars, ranges = module._transition(rows, 2)
    assert stars == [8, None] and ranges == [[8, 8], [None, None]]  # seed 1 at 1.105: not within 10%
    # seed 0 needs the grid to reach 4 * 8 = 2^5; seed 1 (M* not found, so >= 2^5) needs 2^7
    assert module._wanted_log2([8, 16], 4) == 6 and module._wanted_log2([8, None], 4) == 7
    assert module._wanted_log2([4, 8], 5) == 5  # already two octaves above both: no extension
    stars, ranges = module._transition([_row(2, [1.3], 0.2), _row(4, [1.08], 0.02), _row(8, [1.12], 0.02)], 1)
    assert stars == [4] and ranges == [[2, 8]]  # M = 2 and 8 are within 2 SE of the 1.10 line


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


@pytest.mark.slow
def test_every_seed_is_measured_on_the_same_prompts(REPO_ROOT):
    module = load_script(REPO_ROOT / SCRIPT)
    task = icl.LinearRegressionTask(d=2, noise_std=1.0)
    models = [icl.Transformer(2, num_layers=1, width=8, num_heads=1, max_pairs=5, rngs=nnx.Rngs(params=i),
                              attention="linear", encoding="stacked", positional="none") for i in range(2)]
    pool = module.PoolOrPrior.build(task, 4, 4, seed=0)
    args = (icl.dmmse(pool), icl.ridge(1.0), pool, jax.random.key(0), 4, 2, 64)
    both = module._measure(models, *args)
    assert both["err_model_late"][0].shape == both["spd_ridge_all"][1].shape == (2,)
    assert both["err_ridge_late"][0].shape == ()
    for i, model in enumerate(models):  # seed i's statistics are those of measuring its model alone
        alone = module._measure([model], *args)
        for name in ("err_model_late", "err_excess_late", "spd_dmmse_all", "spd_ridge_all"):
            np.testing.assert_allclose(both[name][0][i], alone[name][0][0], rtol=1e-5)
            np.testing.assert_allclose(both[name][1][i], alone[name][1][0], rtol=1e-4)


@pytest.mark.parametrize("flags, word", [(["--noise", "0"], "noise"), (["--d", "8", "--n", "4"], "n"),
                                         (["--warmup", "2000", "--steps", "1000"], "warmup"),
                                         (["--max-log2-tasks", "9", "--max-log2-tasks-limit", "8"], "limit")])
def test_bad_flags_exit_2_before_any_work(REPO_ROOT, flags, word, capsys):
    module = load_script(REPO_ROOT / SCRIPT)
    with pytest.raises(SystemExit) as info:
        module.SPEC.parse(flags)
    assert info.value.code == 2 and word in capsys.readouterr().err
