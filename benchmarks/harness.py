"""The benchmark harness: interleaved timing, worker processes, the machine's description, the report.

Nothing here knows about icl; the cases (``benchmarks/cases.py``) use only the public ``icl`` API.

How it measures. Each case runs in its own interpreter (``launch``): its peak memory is that process's
``ru_maxrss`` read by the parent with ``os.wait4`` (XLA's buffers count). Inside a case, the things
compared are compiled first and then timed in interleaved rounds, the order rotating each round; a
figure is the median over rounds and a ratio the median of per-round ratios, so a ratio holds when other
jobs change the machine's speed. Absolute times are reported with the load average at start and end.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["Result", "interleaved", "median", "ratio", "launch", "machine", "write_report", "markdown"]


@dataclass(frozen=True)
class Result:
    """One figure with a target: ``value`` in ``unit`` ("x" or "s"), ``target`` text, ``passed``."""

    name: str
    value: float
    unit: str
    target: str
    passed: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "value": float(self.value), "unit": self.unit, "target": self.target,
                "passed": bool(self.passed)}


def interleaved(fns: dict, rounds: int) -> dict:
    """Run each zero-argument blocking callable once per round, rotating the order every round.

    Returns ``{name: {"wall": [s per round], "cpu": [s per round]}}`` (``cpu``: process CPU time).
    """
    names = list(fns)
    out = {k: {"wall": [], "cpu": []} for k in names}
    for r in range(rounds):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k]()
            out[k]["wall"].append(time.perf_counter() - t0)
            out[k]["cpu"].append(time.process_time() - c0)
    return out


def median(values) -> float:
    return float(statistics.median(values))


def ratio(timings: dict, a: str, b: str, kind: str = "wall") -> float:
    """Median over rounds of ``time(a) / time(b)`` measured in the same round."""
    return median([x / y for x, y in zip(timings[a][kind], timings[b][kind])])


def launch(argv: list[str], timeout: float = 1200.0, env: dict | None = None) -> dict:
    """Run ``python argv...`` in a fresh interpreter from the repository root.

    The child writes its JSON result to the path in the environment variable ``ICL_BENCH_RESULT``.
    Returns that result with ``wall_s`` (from just before the interpreter starts to its exit) and
    ``peak_rss_mb`` (the child's ``ru_maxrss``). Raises RuntimeError with the log's tail on failure.
    """
    with tempfile.TemporaryDirectory(prefix="icl-bench-") as tmp:
        result, log = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        child_env = dict(os.environ if env is None else env, ICL_BENCH_RESULT=str(result))
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), child_env.get("PYTHONPATH")]))
        with open(log, "w") as handle:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, *argv], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env=child_env)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"{' '.join(argv)} failed (exit {code}):\n{log.read_text()[-3000:]}")
        out = json.loads(result.read_text()) if result.exists() else {}
    return dict(out, wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024.0)


def write_child_result(obj: dict) -> None:
    """Called in a worker process: write ``obj`` (plus the process's peak RSS) where the parent reads it."""
    import resource

    obj = dict(obj, worker_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    Path(os.environ["ICL_BENCH_RESULT"]).write_text(json.dumps(obj))


def machine() -> dict:
    """Platform, CPUs, library versions, JAX backend and device, and the load average now."""
    import flax
    import jax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                python=platform.python_version(), cpu_count=os.cpu_count(),
                cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__, optax=optax.__version__,
                backend=jax.default_backend(), device=f"{dev.platform} ({dev.device_kind})",
                load_average=list(os.getloadavg()))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_report(out: Path, results: list[Result], raw: dict) -> dict:
    """Write ``out/benchmarks.json`` (``results`` and ``raw``) and ``out/benchmarks.md``; return the document."""
    doc = {"results": [r.to_dict() for r in results], "raw": raw}
    _atomic_write(Path(out) / "benchmarks.json", json.dumps(doc, indent=2))
    _atomic_write(Path(out) / "benchmarks.md", markdown(doc))
    return doc


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown(doc: dict) -> str:
    """The report as markdown: the targets table, then each case's raw figures as a small table."""
    raw = doc["raw"]
    m = raw["machine"]
    lines = [
        f"# icl benchmarks ({raw['mode']} run)",
        "",
        f"{raw['date']} · {m['processor']} · {m['cpu_count']} CPUs ({m['cpus_usable']} usable) · Python {m['python']} · "
        f"jax {m['jax']} / jaxlib {m['jaxlib']}, flax {m['flax']}, optax {m['optax']} · device {m['device']} · "
        f"load average at start {m['load_average'][0]:.2f}, at end {raw['load_average_end'][0]:.2f}",
        "",
        "## Targets",
        "",
        "| benchmark | value | unit | target | met |",
        "|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        lines.append(f"| {r['name']} | {_fmt(r['value'])} | {r['unit']} | {r['target']} | {'yes' if r['passed'] else 'no'} |")
    for case, figures in raw["cases"].items():
        lines += ["", f"## {case}", "", figures.get("about", ""), "", "| figure | value |", "|---|---|"]
        for key, value in figures.items():
            if key != "about":
                lines.append(f"| {key} | {_fmt(value) if not isinstance(value, (dict, list)) else json.dumps(value)} |")
    if raw.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in raw["errors"]]
    return "\n".join(lines) + "\n"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
