"""The benchmark harness writes a report of the documented shape; its flags are checked before any work.

Checks the shape of the report, not its timing targets (those depend on the machine and its load).
"""

from __future__ import annotations

import json
import math
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
