"""The benchmark harness writes a report of the documented shape; its flags are checked before any work.

Checks the shape of the report, not its timing targets (those depend on the machine and its load).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

SCRIPT = "benchmarks/run.py"
RESULT_KEYS = {"name", "value", "unit", "target", "passed"}


def test_unknown_benchmark_name_exits_2_before_any_work(REPO_ROOT, tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--only", "throughputt", "--out", str(tmp_path / "b")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "throughputt" in proc.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_quick_benchmark_run_writes_json_and_markdown_of_the_documented_shape(REPO_ROOT, tmp_path):
    out = tmp_path / "bench"
    only = "throughput,evaluate,baselines"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--only", only, "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "benchmarks.json").read_text())
    assert set(doc) == {"results", "raw"}
    names = [r["name"] for r in doc["results"]]
    assert len(names) == len(set(names))
    for r in doc["results"]:
        assert set(r) == RESULT_KEYS, r
        assert isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0, r
        assert isinstance(r["passed"], bool) and isinstance(r["target"], str) and r["unit"] in {"x", "s"}
    for name in ("train_step_over_sampling.lsa1_d10_n10_b2048", "train_step_over_sampling.lt3_d5_n20_b20000",
                 "evaluate.second_over_first"):
        assert name in names
    raw = doc["raw"]
    assert raw["mode"] == "quick" and raw["errors"] == []
    for key in ("platform", "cpu_count", "jax", "device", "backend", "load_average"):
        assert raw["machine"][key], key
    for name, fig in raw["cases"]["baselines"].items():
        if isinstance(fig, dict):
            assert fig["us_per_prompt"] > 0 and fig["prefix_us_per_prompt"] > 0, name
    md = (out / "benchmarks.md").read_text()
    assert md.startswith("# icl benchmarks") and "| benchmark | value | unit | target | met |" in md
    for name in names:
        assert name in md
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def _bench_module(root, name):
    """A module of benchmarks/ (they import each other as top-level modules: the folder goes on sys.path)."""
    import importlib

    folder = str(root / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def test_garg_flags_are_checked_before_any_work(REPO_ROOT, tmp_path):
    for flags, word in ((["--garg-src", str(tmp_path)], "train.py"), (["--garg-threads", "0"], "garg-threads")):
        proc = subprocess.run([sys.executable, SCRIPT, "--only", "transformer", *flags, "--out", str(tmp_path / "b")],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and word in proc.stderr, proc.stderr
    assert not (tmp_path / "b").exists()


def test_hlo_reader_counts_the_flops_of_matrix_products(REPO_ROOT):
    import jax
    import jax.numpy as jnp

    harness = _bench_module(REPO_ROOT, "harness")
    a, b = jnp.ones((6, 5)), jnp.ones((5, 3))
    text = jax.jit(lambda x, y: jnp.tanh(x @ y).sum() + (x.T @ x).sum()).lower(a, b).compile().as_text()
    module = harness.parse_hlo(text)
    assert module.entry in module.computations and module.instructions
    assert harness.hlo_dot_flops(module) == 2 * 6 * 5 * 3 + 2 * 5 * 6 * 5


@pytest.mark.slow
def test_side_by_side_case_runs_at_a_tiny_configuration_without_their_code(REPO_ROOT):
    cases = _bench_module(REPO_ROOT, "cases")
    cfg = {"tiny": {"d": 2, "points": 3, "layers": 1, "width": 8, "heads": 2, "batch": 4}}
    fig = cases.side_by_side(cfg, rounds=3, windows={"tiny": (1, 2)}, garg=None)["tiny"]
    json.dumps(fig)
    assert fig["icl_n"] == 2 and fig["targets_per_prompt"] == 3 and fig["tokens_per_prompt"] == {"icl": 5, "garg": 6}
    icl = fig["icl"]
    assert len(icl["rounds_prompts_per_s"]) == 3 and min(icl["rounds_prompts_per_s"]) > 0
    assert icl["xla_flops_per_step"] > icl["dot_flops_per_step"] > 0 and icl["achieved_gflops"] > 0
    for kind in ("jax_icl_options", "jax_xla_defaults"):
        assert fig["gemm_ceiling_gflops"][kind]["max"] > 0
    assert "ratio_over_garg" not in fig and not [k for k in fig if k.startswith("garg_t")]
    assert fig["date"] and len(fig["load_average_start"]) == 3


@pytest.mark.skipif(not os.environ.get("ICL_BENCH_GARG_SRC"),
                    reason="set ICL_BENCH_GARG_SRC (their src/) and ICL_BENCH_GARG_PYTHON (torch + transformers)")
def test_side_by_side_case_runs_their_train_step_at_a_tiny_configuration(REPO_ROOT):
    cases = _bench_module(REPO_ROOT, "cases")
    garg = {"src": os.environ["ICL_BENCH_GARG_SRC"],
            "python": os.environ.get("ICL_BENCH_GARG_PYTHON", sys.executable)}
    cfg = {"tiny": {"d": 2, "points": 3, "layers": 1, "width": 8, "heads": 2, "batch": 4}}
    fig = cases.side_by_side(cfg, rounds=3, windows={"tiny": (1, 2)}, garg=garg, threads=(1,))["tiny"]
    json.dumps(fig)
    theirs = fig["garg_t1"]
    assert min(theirs["rounds_prompts_per_s"]) > 0 and theirs["matmul_flops_per_step"] > 0
    assert theirs["info"]["threads"] == 1 and theirs["info"]["torch"]
    assert fig["ratio_over_garg"] == fig["ratio_over_garg_t1"] > 0 and fig["garg_best_threads"] == 1
    assert fig["gemm_ceiling_gflops"]["torch_t1"]["max"] > 0


@pytest.mark.slow
def test_profile_script_writes_its_table_at_a_tiny_configuration(REPO_ROOT, tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/profile_transformer.py", "--tiny", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "profile_transformer.json").read_text())
    cats = report["categories"]
    assert abs(sum(c["share"] for c in cats.values()) - 1) < 1e-6
    for name in ("matmul: dense layers", "matmul: attention q.k, w.v", "layer norm", "optimiser (Adam)", "sampling"):
        assert cats[name]["ms_per_step"] > 0, name
    assert cats["matmul: dense layers"]["flops_per_step"] > 0
    assert report["summary"]["unattributed_ms_per_step"] == 0 and report["top_ops"]
    assert "matmul: dense layers" in proc.stdout


@pytest.mark.slow
def test_families_case_runs_at_a_tiny_configuration(REPO_ROOT, monkeypatch):
    cases = _bench_module(REPO_ROOT, "cases")
    monkeypatch.setattr(cases, "FAMILY_SETTINGS", dict(d=2, n=3, batch=4, noise_std=0.5, width=8, layers=1, heads=2,
                                                        state_size=4, loop_b=2, sparse_loops=2))
    out = cases.case_families(quick=True)
    json.dumps(out["figures"])
    (result,) = out["results"]
    assert result.name == "selective_ssm_over_attention.1block" and result.unit == "x"
    assert math.isfinite(result.value) and result.target.startswith("<= 1.0")
    figures = out["figures"]
    for name in ("linear_rnn", "diagonal_ssm", "selective_ssm", "transformer", "looped_transformer", "looped_sparse",
                 "selective_ssm_1block", "attention_1block", "attention_only_1block"):
        fig = figures[name]
        for key in ("train_ms_per_step", "train_prompts_per_s", "ratio", "xla_flops_per_step",
                    "xla_dot_flops_per_step", "xla_bytes_per_step", "xla_flops_over_sampling"):
            assert math.isfinite(fig[key]), (name, key)
        assert fig["params"] > 0 and fig["xla_flops_per_step"] > 0, name
    assert figures["sample_ms_per_step"] > 0 and figures["settings"]["rounds"] == 3
    assert figures["selective_ssm_over_attention"]["wall"] == result.value
