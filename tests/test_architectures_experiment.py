"""experiments/architectures.py: the model families at one budget (looped models, SSMs), end to end and its parts."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from tests.helpers import load_script

SCRIPT = "experiments/architectures.py"


LOOPED = "looped Transformer (b="  # the claim about more loops at test time
LOOPED_SEEDS = "looped Transformer: seeds agree"  # fails at --quick: its two seeds end 13% apart


@pytest.fixture(scope="module")
def quick(REPO_ROOT, tmp_path_factory):
    """The --quick run (claims' models only; measured values and wall times in the script's docstring)."""
    module = load_script(REPO_ROOT / SCRIPT)
    return module.main(["--quick", "--out", str(tmp_path_factory.mktemp("architectures") / "run")])["summary"]


@pytest.mark.slow
def test_quick_run_passes_every_claim_but_the_looped_transformers_seeds_agree_check(quick):
    summary = quick
    assert summary["experiment"] == "architectures"
    names = [c["name"] for c in summary["claims"]]
    seeds = summary["config"]["seeds"]
    failed = [c["name"] for c in summary["claims"] if not c["passed"] and not c["name"].startswith(LOOPED_SEEDS)]
    assert not failed, failed
    for prefix in ("tied GD K=2: learned step", "tied GD K=2: trained loss", "tied GD K=3: learned step",
                   "tied GD K=3: trained loss", LOOPED, "selective SSM, dense noiseless",
                   "selective SSM: at k=d+1", "LinearRNN.from_linear_transformer"):
        claim = next(c for c in summary["claims"] if c["name"].startswith(prefix))
        assert "every seed must pass" in claim["detail"], prefix
        if not prefix.startswith("LinearRNN"):
            assert len(claim["seeds"]["per_seed"]) == seeds, prefix
    assert claim["tolerance"] <= 1e-10  # the exact construction: float64, 1e-10
    for c in summary["claims"]:
        if c["name"].startswith("tied GD") and "trained loss" in c["name"]:
            assert c["se"] < 0.2 * c["tolerance"] * c["theory"]  # Monte Carlo SE well below the 2% band
    assert any(n.startswith("selective SSM (dense noiseless): training converged") for n in names)
    runs = {r["claim"]: r for r in summary["runs"]}
    assert set(runs) >= {"tied_gd", "looped_transformer", "selective_ssm", "linear_rnn_exact"}
    b = runs["looped_transformer"]["b"]
    assert np.asarray(runs["looped_transformer"]["error_by_loops"]).shape == (seeds, 4 * b)
    assert summary["figures"] == ["architectures.png"]


@pytest.mark.slow
def test_looped_transformer_error_at_2b_and_4b_loops_is_at_most_10_percent_above_b(quick):
    claim = next(c for c in quick["claims"] if c["name"].startswith(LOOPED))
    assert claim["passed"] and claim["measured"] <= 0.1


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured at --quick (1500 steps, b = 12): the looped Transformer's two seeds "
                   "end with training losses 1.321 and 1.162, 12.8% +- 1.2% apart; query error / d at b "
                   "0.438 and 0.370: training is unfinished; its loop claim holds on both seeds")
def test_looped_transformer_seeds_agree_at_quick(quick):
    assert next(c for c in quick["claims"] if c["name"].startswith(LOOPED_SEEDS))["passed"]


def test_flags_parse_and_bad_flags_exit_2(REPO_ROOT):
    module = load_script(REPO_ROOT / SCRIPT)
    args = module.SPEC.parse(["--quick"])
    assert args.no_table and args.loop_steps == args.steps and args.tied_loops == [2, 3]
    full = module.SPEC.parse([])
    assert not full.no_table and set(full.families) == set(module.FAMILIES)
    for bad in (["--width", "30", "--heads", "4"], ["--ssm-d", "5", "--ssm-n", "8"], ["--families", "mlp"],
                ["--sparsity", "9"]):
        with pytest.raises(SystemExit) as info:
            module.SPEC.parse(bad)
        assert info.value.code == 2, bad


def test_rnn_claim_holds_for_a_random_lsa(REPO_ROOT):
    # claim 4 on an untrained LSA with non-trivial weights (the claim's code path, without training)
    import icl

    module = load_script(REPO_ROOT / SCRIPT)
    lsa = icl.LinearTransformer(3, 1, init_scale=0.5, rngs=nnx.Rngs(1))
    claims, record = module.claim_rnn(lsa, 3, 6)
    assert claims[0].passed and record["max_relative_difference"] <= 1e-10 and record["dtype"] == "float64"
