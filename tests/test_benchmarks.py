"""End to end: ``benchmarks/run.py --quick`` writes benchmarks.json and benchmarks.md of the documented shape.

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


@pytest.mark.slow
def test_quick_benchmark_run_writes_json_and_markdown_of_the_documented_shape(REPO_ROOT, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "benchmarks.json").read_text())
    assert set(doc) == {"results", "raw"}

    results = doc["results"]
    names = [r["name"] for r in results]
    assert len(names) == len(set(names))
    for r in results:
        assert set(r) == RESULT_KEYS, r
        assert isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0, r
        assert isinstance(r["passed"], bool) and isinstance(r["target"], str) and r["unit"] in {"x", "s"}
    for case in ("lsa1_d10_n10_b2048", "lsa1_d20_n40_b2048", "lt3_d5_n20_b20000"):
        assert f"train_step_over_sampling.{case}" in names
    assert "vmapped_speedup.S32" in names and "time_to_target.default" in names

    raw = doc["raw"]
    assert raw["mode"] == "quick" and raw["errors"] == []
    for key in ("platform", "cpu_count", "jax", "device", "backend"):
        assert raw["machine"][key], key
    assert raw["date"][:2] == "20"
    for case, r in raw["throughput"].items():
        assert r["train_prompts_per_s"] > 0 and r["sample_prompts_per_s"] > 0, case
    assert set(raw["seeds"]["speedup"]) == {"1", "8", "32"}
    for name, r in raw["baselines"]["predictors"].items():
        assert r["us_per_prompt"] > 0 and r["prefix_us_per_prompt"] > 0, name
    assert set(raw["baselines"]["predictors"]) >= {"ridge", "least_squares", "bayes", "gd_1step", "gd_10step"}
    ttt = raw["time_to_target"]["settings"]["default"]
    assert ttt["time_to_target_s"] > ttt["import_s"] > 0 and 0 <= ttt["rel_error_timed_run"] < 1
    assert all(v > 0 for v in raw["peak_rss_mb"].values()) and len(raw["peak_rss_mb"]) >= 7

    md = (out / "benchmarks.md").read_text()
    assert md.startswith("# icl benchmarks") and "| benchmark | value | unit | target | met |" in md
    for name in names:
        assert name in md
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
