#!/usr/bin/env python
"""Where the time of icl's Transformer training step goes, at Garg et al.'s standard configuration.

    python benchmarks/profile_transformer.py [--config standard|small|tiny] [--chunk-steps 2] [--chunks 4]
        [--out DIR] [--keep-trace]

Profiles the program that ``icl.train`` runs (the training engine's compiled chunk: sampling, the every-prefix
loss's forward and backward pass, Adam), at d=20, 41 trained points per prompt (``n = 40`` context pairs and the
query as the last pair, as the side-by-side benchmark compares it), 12 layers, width 256, 8 heads, batch 64.

How. The script sets ``XLA_FLAGS`` before JAX starts so that XLA writes the optimised HLO of the engine's chunk
(``--xla_dump_to``, a temporary folder), trains one chunk to compile, then trains ``chunks`` chunks of
``chunk-steps`` steps under ``jax.profiler.trace`` (Python tracing off). On CPU (jaxlib 0.10) the trace holds one
event per executed XLA thunk (a fusion, a matrix product, a copy) with its HLO instruction name (``hlo_op``), and
an ``end: <op>`` marker when it completes: a matrix product is handed to the intra-op thread pool and completes
after its event ends, so an execution lasts from its event's start to its end marker. Per instruction, the median
duration over its executions times its executions per step (robust to a thunk preempted by another process; the
plain sums are kept too), over every chunk but the last (which also measures a final loss). Loops and
conditionals are not counted themselves; the time in a chunk when no thunk runs is reported as the idle share
(the thunk executor's overhead and waits). Each instruction of the dumped HLO carries its JAX source frame
(``stack_frame_id``) and ``op_name`` (``transpose(`` marks the backward pass), which sort it into a category:

- matrix products: the dense layers (``nnx.Linear``) and attention's ``q.k`` and ``weights.v`` (in ``_attend``);
- attention softmax and masking (the rest of ``_attend``); layer norms (Flax's ``LayerNorm``); GELU, biases and
  residual adds; the embedding and read-out; the loss (``icl.training.losses``); the optimiser (Optax);
  sampling (``icl.tasks``); the engine's checks (finiteness);
- data movement: a thunk that only moves data (copies, transposes, slices, concatenations, pads), from any source.

An instruction XLA made itself has no source (the tree reductions that sum a bias's gradient over the batch
rows, for one): it takes the category of the instruction that consumes it.

Per category: milliseconds per step, share of the thunk time, thunks per step, the flops of its matrix products
(exact, from the HLO shapes) and the bytes its thunks read and write (operands plus outputs, from the shapes: an
upper bound for in-place updates), hence GFLOP/s and GB/s. Thunks that run at the same time (independent
products of the backward pass) both count, so the shares are of thunk time, not of wall time; the summary gives
thunk time over busy time. The same run measures two ceilings: jitted matmuls of the model's shapes (icl's
compiler options and XLA's defaults) and the bandwidth of a large jitted elementwise op. Matrix products near
the GEMM ceiling and a small remainder mean the step is bound by the machine's GEMM rate as XLA achieves it;
a category far below both ceilings is bound by per-thunk overhead or poor kernels.

Prints a table and writes ``DIR/profile_transformer.json`` (``--keep-trace`` also keeps the trace and the HLO).
``--config small`` profiles the benchmark's small configuration (d=5, 20 points, 4 layers, width 64, 2 heads);
``--config tiny`` (or ``--tiny``) a toy one in seconds, for checking the script, not for figures.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import glob
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STANDARD = {"d": 20, "points": 41, "layers": 12, "width": 256, "heads": 8, "batch": 64}
SMALL = {"d": 5, "points": 20, "layers": 4, "width": 64, "heads": 2, "batch": 64}
TINY = {"d": 3, "points": 5, "layers": 2, "width": 16, "heads": 2, "batch": 8}
CONFIGS = {"standard": STANDARD, "small": SMALL, "tiny": TINY}
MODULE = "_train_chunk"  # the training engine's compiled program (jit__train_chunk)

MATMUL_DENSE = "matmul: dense layers"
MATMUL_ATTENTION = "matmul: attention q.k, w.v"
SOFTMAX = "attention softmax & masking"
LAYER_NORM = "layer norm"
ELEMENTWISE = "GELU, biases, residual adds"
EMBED = "embedding & read-out"
LOSS = "loss"
OPTIMISER = "optimiser (Adam)"
SAMPLING = "sampling"
MOVEMENT = "data movement"
ENGINE = "engine checks"
LOOPS = "loop control, gaps in loops"
OTHER = "other"
CATEGORIES = (MATMUL_DENSE, MATMUL_ATTENTION, SOFTMAX, LAYER_NORM, ELEMENTWISE, EMBED, LOSS, OPTIMISER, SAMPLING,
              MOVEMENT, ENGINE, LOOPS, OTHER)

_TRIVIAL = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element", "iota", "broadcast"}
_MOVES = {"copy", "transpose", "slice", "dynamic-slice", "dynamic-update-slice", "concatenate", "pad", "reshape",
          "reverse", "bitcast", "broadcast", "gather", "copy-start", "copy-done"}


def source_category(module, ins) -> str | None:
    """The category of an instruction's JAX source (its innermost frame), or None if it names none."""
    fn, file, _ = module.source(ins.frame)
    file = file.replace("\\", "/")
    if "/icl/tasks/" in file:
        return SAMPLING
    if "/optax/" in file:
        return OPTIMISER
    if file.endswith("normalization.py"):
        return LAYER_NORM
    if "/icl/training/losses.py" in file:
        return LOSS
    if "/icl/training/engine.py" in file:
        return ENGINE
    if fn == "_attend":
        return SOFTMAX
    if fn in ("_Block.mlp", "_Block.attend_out") or file.endswith("/flax/nnx/nn/linear.py"):
        return ELEMENTWISE
    if fn in ("Transformer._embed", "Transformer._read", "Transformer._run"):
        return EMBED
    if fn.startswith(("Transformer.", "_Block.")) or "/icl/models/" in file:
        return ELEMENTWISE
    if "threefry" in ins.op_name or "random" in ins.op_name:
        return SAMPLING
    return None


def categorise(module, ins, depth: int = 0) -> str:
    """The category of a thunk-level instruction (a fusion is judged by what it fuses)."""
    if ins.opcode == "fusion":
        inner = [module.instructions[n] for c in ins.called("calls") for n in module.computations.get(c, [])]
    else:
        inner = [ins]
    dots = [i for i in inner if i.opcode == "dot"]
    if dots:
        fn, file, _ = module.source(dots[0].frame)
        if "/icl/tasks/" in file:
            return SAMPLING
        return MATMUL_ATTENTION if fn == "_attend" else MATMUL_DENSE
    if ins.opcode in ("while", "conditional", "call"):
        return LOOPS  # its own (exclusive) time: loop control and the gaps between the thunks of its body
    work = [i for i in inner if i.opcode not in _TRIVIAL]
    if all(i.opcode in _MOVES for i in work):
        return MOVEMENT
    votes = collections.Counter(c for c in (source_category(module, i) for i in work) if c is not None)
    if votes:
        return votes.most_common(1)[0][0]
    own = source_category(module, ins)
    if own is not None or depth >= 3:
        return own or OTHER
    # No source: instructions XLA made itself, such as the tree reductions (reduce-window, then reduce) that
    # sum a bias's or a scale's gradient over the batch rows; they take the category of what consumes them.
    users = [i for i in module.instructions.values() if ins.name in i.operands and i.computation == ins.computation]
    for other in users + [module.instructions[o] for o in ins.operands if o in module.instructions]:
        if other.opcode not in _TRIVIAL:
            cat = categorise(module, other, depth + 1)
            if cat != OTHER:
                return cat
    return OTHER


def thunk_flops(module, ins) -> float:
    from harness import dot_flops

    if ins.opcode == "fusion":
        return sum(dot_flops(module, module.instructions[n]) for c in ins.called("calls")
                   for n in module.computations.get(c, []))
    return dot_flops(module, ins)


def thunk_bytes(module, ins) -> float:
    """Operands plus output bytes of a thunk-level instruction (0 for loops, whose bodies are counted)."""
    if ins.opcode in ("while", "conditional", "call", "tuple", "get-tuple-element", "parameter", "constant"):
        return 0.0
    operands = [module.instructions[o] for o in ins.operands if o in module.instructions]
    return float(ins.bytes + sum(o.bytes for o in operands))


def read_trace(trace_dir: str) -> tuple[list[dict], dict]:
    """The trace's thunk events of the training chunk (``ph == "X"`` with ``args.hlo_module``), and for every
    op name the sorted timestamps of its ``end: <op>`` markers."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True) or glob.glob(
        os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise RuntimeError(f"no trace written under {trace_dir}")
    with gzip.open(max(paths)) as handle:
        doc = json.load(handle)
    events = [e for e in (doc["traceEvents"] if isinstance(doc, dict) else doc) if e.get("ph") == "X"]
    starts = [e for e in events if MODULE in str((e.get("args") or {}).get("hlo_module", ""))]
    ends = collections.defaultdict(list)
    for e in events:
        if e.get("name", "").startswith("end: "):
            ends[e["name"][5:]].append(e["ts"])
    for v in ends.values():
        v.sort()
    return starts, ends


def thunk_intervals(starts: list[dict], ends: dict) -> list[tuple[str, str, float, float]]:
    """``(op, run_id, start, end)`` in microseconds for every thunk execution. A thunk's event covers its launch;
    one that completes asynchronously (a matrix product handed to the intra-op thread pool) is done at its
    ``end: <op>`` marker, so an execution ends at the first such marker after it starts (or where its event ends,
    if later or if there is none)."""
    by_op = collections.defaultdict(list)
    for e in starts:
        by_op[e["args"]["hlo_op"]].append(e)
    out = []
    for op, evs in by_op.items():
        evs.sort(key=lambda e: e["ts"])
        marks, j = ends.get(op, []), 0
        for e in evs:
            while j < len(marks) and marks[j] < e["ts"]:
                j += 1
            end = e["ts"] + e["dur"]
            if j < len(marks):
                end = max(end, marks[j])
                j += 1
            out.append((op, str(e["args"].get("run_id")), e["ts"], end))
    return out


def union_length(intervals) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for t0, t1 in sorted(intervals):
        if cur_end is None or t0 > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = t0, t1
        else:
            cur_end = max(cur_end, t1)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


def bandwidth_gbps(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of a jitted elementwise op reading one float32 array and writing another of ``megabytes`` each."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0001 + 1.0)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * x.nbytes / best / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="standard", help="default: standard")
    parser.add_argument("--tiny", action="store_true", help="same as --config tiny (to check the script)")
    parser.add_argument("--chunk-steps", type=int, default=2, help="training steps per chunk (default 2)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks traced; all but the last are counted (>= 2)")
    parser.add_argument("--out", default=".", help="folder for profile_transformer.json (default: here)")
    parser.add_argument("--keep-trace", action="store_true", help="keep the trace and the HLO dump in --out")
    args = parser.parse_args(argv)
    if args.chunks < 2 or args.chunk_steps < 1:
        parser.error("--chunks must be >= 2 and --chunk-steps >= 1")
    if "jax" in sys.modules:
        raise RuntimeError("run this script as a program: XLA's dump flags must be set before JAX starts")
    name = "tiny" if args.tiny else args.config
    cfg = CONFIGS[name]
    out = Path(args.out)
    work = tempfile.mkdtemp(prefix="icl-profile-")
    dump, trace_dir = os.path.join(work, "hlo"), os.path.join(work, "trace")
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), f"--xla_dump_to={dump}",
                                                     "--xla_dump_hlo_as_text",
                                                     f"--xla_dump_hlo_module_re=.*{MODULE}.*"]))
    try:
        report = profile(cfg, args.chunk_steps, args.chunks, dump, trace_dir)
        report["configuration"] = name
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile_transformer.json").write_text(json.dumps(report, indent=2))
        print(table(report))
        print(f"\nwrote {out / 'profile_transformer.json'}")
        if args.keep_trace:
            shutil.copytree(trace_dir, out / "profile_trace", dirs_exist_ok=True)
            for f in glob.glob(os.path.join(dump, f"*{MODULE}*after_optimizations.txt")):
                shutil.copy(f, out / "profile_hlo.txt")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


class _Stop(Exception):
    pass


def profile(cfg: dict, chunk: int, chunks: int, dump: str, trace_dir: str) -> dict:
    import jax
    from cases import gemm_shapes
    from harness import gemm_ceiling, parse_hlo

    import icl
    from icl.compiler import compiler_options

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = list(os.getloadavg())
    d = cfg["d"]
    task = icl.LinearRegressionTask.isotropic(d)
    config = icl.TrainConfig(steps=chunks * chunk, batch=cfg["batch"], n=cfg["points"] - 1, lr=1e-4,
                             schedule="constant", loss="every_prefix", progress_every=chunk)

    def model_fn(rngs):
        return icl.Transformer(d, num_layers=cfg["layers"], width=cfg["width"], num_heads=cfg["heads"], rngs=rngs)

    def stop_after_first(step, losses):
        raise _Stop

    t0 = time.perf_counter()
    try:  # compile (and run one chunk) outside the trace
        icl.train(model_fn, task, config, callback=stop_after_first)
    except _Stop:
        pass
    compile_s = time.perf_counter() - t0
    marks = []
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    with jax.profiler.trace(trace_dir, profiler_options=options):
        icl.train(model_fn, task, config, callback=lambda step, losses: marks.append(time.perf_counter()))
    starts, ends = read_trace(trace_dir)
    intervals = thunk_intervals(starts, ends)
    runs = collections.defaultdict(list)
    for iv in intervals:
        runs[iv[1]].append(iv)
    ordered = sorted(runs.values(), key=lambda ivs: min(iv[2] for iv in ivs))
    if len(ordered) < 2:
        raise RuntimeError(f"expected {chunks} executions of the training chunk in the trace, found {len(ordered)}")
    counted = ordered[:-1]  # the last chunk also measures the final loss
    steps = chunk * len(counted)
    hlo_files = sorted(glob.glob(os.path.join(dump, f"*{MODULE}*after_optimizations.txt")))
    if not hlo_files:
        raise RuntimeError(f"XLA wrote no optimised HLO of {MODULE} under {dump}")
    module = parse_hlo(Path(hlo_files[-1]).read_text())
    control = {n for n, i in module.instructions.items() if i.opcode in ("while", "conditional", "call")}
    durations = collections.defaultdict(list)
    span_us = busy_us = matmul_busy_us = 0.0

    @functools.cache
    def is_matmul(op: str) -> bool:
        ins = module.instructions.get(op)
        return ins is not None and categorise(module, ins) in (MATMUL_DENSE, MATMUL_ATTENTION)

    for ivs in counted:
        span_us += max(iv[3] for iv in ivs) - min(iv[2] for iv in ivs)
        leaves = [(iv[2], iv[3]) for iv in ivs if iv[0] not in control]
        busy_us += union_length(leaves)
        matmul_busy_us += union_length([(iv[2], iv[3]) for iv in ivs if iv[0] not in control and is_matmul(iv[0])])
        for op, _, t0, t1 in ivs:
            if op not in control:
                durations[op].append(t1 - t0)
    per_cat = {c: {"ms_per_step": 0.0, "ms_per_step_summed": 0.0, "thunks_per_step": 0.0, "flops_per_step": 0.0,
                   "bytes_per_step": 0.0, "backward_ms_per_step": 0.0} for c in CATEGORIES}
    ops, unknown = [], 0.0
    for name, durs in durations.items():
        ins = module.instructions.get(name)
        if ins is None:
            unknown += sum(durs)
            continue
        cat = categorise(module, ins)
        per_step = len(durs) / steps
        ms = statistics.median(durs) * per_step / 1e3  # robust to a thunk preempted by another process
        row = per_cat[cat]
        row["ms_per_step"] += ms
        row["ms_per_step_summed"] += sum(durs) / steps / 1e3
        row["thunks_per_step"] += per_step
        row["flops_per_step"] += thunk_flops(module, ins) * per_step
        row["bytes_per_step"] += thunk_bytes(module, ins) * per_step
        if "transpose(" in ins.op_name:
            row["backward_ms_per_step"] += ms
        fn, file, line = module.source(ins.frame)
        ops.append({"op": name, "category": cat, "ms_per_step": ms, "ms_per_step_summed": sum(durs) / steps / 1e3,
                    "executions_per_step": per_step, "opcode": ins.opcode,
                    "gflops": thunk_flops(module, ins) * per_step / (ms / 1e3) / 1e9 if ms else 0.0,
                    "shape": [f"{t}{dims}" for t, dims in ins.shape][:3], "source": f"{fn} ({Path(file).name}:{line})",
                    "backward": "transpose(" in ins.op_name})
    total_ms = sum(r["ms_per_step"] for r in per_cat.values())
    for row in per_cat.values():
        row["share"] = row["ms_per_step"] / total_ms if total_ms else 0.0
        secs = row["ms_per_step"] / 1e3
        row["gflops"] = row["flops_per_step"] / secs / 1e9 if secs else 0.0
        row["gbytes_per_s"] = row["bytes_per_step"] / secs / 1e9 if secs else 0.0
    shapes = gemm_shapes(cfg)
    ceilings = {"gemm_gflops_icl_options": gemm_ceiling(shapes, 5, compiler_options()),
                "gemm_gflops_xla_defaults": gemm_ceiling(shapes, 5, None),
                "bandwidth_gbytes_per_s": bandwidth_gbps(16 if cfg is TINY else 256)}
    wall_step_ms = (marks[-2] - marks[0]) / (len(marks) - 2) / chunk * 1e3 if len(marks) > 2 else None
    matmul = [per_cat[MATMUL_DENSE], per_cat[MATMUL_ATTENTION]]
    mm_ms = sum(r["ms_per_step"] for r in matmul)
    mm_gflops = sum(r["flops_per_step"] for r in matmul) / (mm_ms / 1e3) / 1e9 if mm_ms else 0.0
    rest_ms = total_ms - mm_ms
    rest_bytes = sum(r["bytes_per_step"] for c, r in per_cat.items() if c not in (MATMUL_DENSE, MATMUL_ATTENTION))
    summary = {
        "thunk_ms_per_step": total_ms,
        "thunk_ms_per_step_summed": sum(r["ms_per_step_summed"] for r in per_cat.values()),
        "trace_span_ms_per_step": span_us / 1e3 / steps,
        "busy_ms_per_step": busy_us / 1e3 / steps,
        "idle_share_of_span": 1 - busy_us / span_us if span_us else None,
        "wall_ms_per_step_callbacks": wall_step_ms,
        "thunk_time_over_busy": sum(r["ms_per_step_summed"] for r in per_cat.values()) / (busy_us / 1e3 / steps)
        if busy_us else None,
        "matmul_share": mm_ms / total_ms if total_ms else 0.0,
        "matmul_gflops": mm_gflops,
        "matmul_fraction_of_gemm_ceiling": mm_gflops / ceilings["gemm_gflops_icl_options"]["max"],
        # wall-clock view: the time at least one matrix product runs, and the busy time when none does
        "matmul_busy_ms_per_step": matmul_busy_us / 1e3 / steps,
        "matmul_wall_gflops": (sum(r["flops_per_step"] for r in matmul) / (matmul_busy_us / 1e6 / steps) / 1e9
                               if matmul_busy_us else 0.0),
        "matmul_wall_fraction_of_gemm_ceiling": (sum(r["flops_per_step"] for r in matmul)
                                                 / (matmul_busy_us / 1e6 / steps) / 1e9
                                                 / ceilings["gemm_gflops_icl_options"]["max"]
                                                 if matmul_busy_us else 0.0),
        "busy_without_matmul_ms_per_step": (busy_us - matmul_busy_us) / 1e3 / steps,
        "rest_gbytes_per_s": rest_bytes / (rest_ms / 1e3) / 1e9 if rest_ms else 0.0,
        "rest_fraction_of_bandwidth": (rest_bytes / (rest_ms / 1e3) / 1e9 / ceilings["bandwidth_gbytes_per_s"]
                                       if rest_ms else 0.0),
        "backward_share": sum(r["backward_ms_per_step"] for r in per_cat.values()) / total_ms if total_ms else 0.0,
        "unattributed_ms_per_step": unknown / 1e3 / steps,
    }
    return {"date": started, "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
            "config": dict(cfg, n=cfg["points"] - 1, loss="every_prefix", optimizer="adam", lr=1e-4),
            "steps_profiled": steps, "chunk_steps": chunk, "compile_and_first_chunk_s": compile_s,
            "jax": jax.__version__, "compiler_options": compiler_options(),
            "hlo_instructions": len(module.instructions),
            "summary": summary, "categories": per_cat, "ceilings": ceilings,
            "top_ops": sorted(ops, key=lambda o: -o["ms_per_step"])[:30]}


def table(report: dict) -> str:
    s, c = report["summary"], report["ceilings"]
    lines = [f"icl.Transformer training step, {report['config']} ({report['steps_profiled']} steps profiled, "
             f"{report['date']}, load {report['load_average_start'][0]:.2f} -> {report['load_average_end'][0]:.2f})",
             "",
             f"{'category':30s} {'ms/step':>9s} {'share':>7s} {'bwd ms':>8s} {'thunks':>7s} {'GFLOP/s':>8s} "
             f"{'GB/s':>7s}"]
    for name, r in sorted(report["categories"].items(), key=lambda kv: -kv[1]["ms_per_step"]):
        if r["ms_per_step"] == 0 and r["thunks_per_step"] == 0:
            continue
        lines.append(f"{name:30s} {r['ms_per_step']:9.2f} {100 * r['share']:6.1f}% {r['backward_ms_per_step']:8.2f} "
                     f"{r['thunks_per_step']:7.0f} {r['gflops']:8.1f} {r['gbytes_per_s']:7.1f}")
    wall = s["wall_ms_per_step_callbacks"]
    lines += [
        "",
        f"thunk time {s['thunk_ms_per_step']:.1f} ms/step (medians; summed {s['thunk_ms_per_step_summed']:.1f}); "
        f"chunk span {s['trace_span_ms_per_step']:.1f} ms/step, of which {100 * s['idle_share_of_span']:.0f}% with "
        f"no thunk running" + (f"; wall {wall:.1f} ms/step" if wall else "")
        + f"; summed thunk time / busy time {s['thunk_time_over_busy']:.2f} (>1 where thunks overlap)",
        f"matrix products: {100 * s['matmul_share']:.0f}% of thunk time at {s['matmul_gflops']:.1f} GFLOP/s, "
        f"{100 * s['matmul_fraction_of_gemm_ceiling']:.0f}% of the GEMM ceiling on the model's shapes "
        f"({c['gemm_gflops_icl_options']['max']:.1f} GFLOP/s with icl's compiler options, "
        f"{c['gemm_gflops_xla_defaults']['max']:.1f} with XLA's defaults)",
        f"wall clock: a matrix product runs during {s['matmul_busy_ms_per_step']:.1f} ms/step "
        f"({s['matmul_wall_gflops']:.1f} GFLOP/s over that time, {100 * s['matmul_wall_fraction_of_gemm_ceiling']:.0f}% "
        f"of the ceiling); no matrix product runs during {s['busy_without_matmul_ms_per_step']:.1f} ms/step",
        f"everything else: {s['rest_gbytes_per_s']:.1f} GB/s of operand+output traffic, "
        f"{100 * s['rest_fraction_of_bandwidth']:.0f}% of the measured {c['bandwidth_gbytes_per_s']:.1f} GB/s",
        f"backward pass: {100 * s['backward_share']:.0f}% of thunk time",
        "",
        "top ops:",
    ]
    for o in report["top_ops"][:15]:
        rate = f"{o['gflops']:6.1f} GFLOP/s" if o["gflops"] else " " * 14
        lines.append(f"  {o['ms_per_step']:8.2f} ms {rate} {o['category']:28s} {o['opcode']:8s} {o['op']:28s} "
                     f"{'bwd ' if o['backward'] else ''}{o['source']} {o['shape'][0] if o['shape'] else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
