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
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["Result", "Window", "Worker", "interleaved", "median", "ratio", "launch", "machine", "write_report",
           "markdown", "rates", "gemm_ceiling", "parse_hlo", "hlo_dot_flops", "dot_flops"]


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


@dataclass(frozen=True)
class Window:
    """What a self-timed callable measured: ``wall`` and ``cpu`` seconds over ``units`` units of work (steps)."""

    wall: float
    cpu: float
    units: float = 1.0


def interleaved(fns: dict, rounds: int) -> dict:
    """Run each zero-argument blocking callable once per round, rotating the order every round.

    Returns ``{name: {"wall": [s per round], "cpu": [s per round], "units": [per round]}}`` (``cpu``: process
    CPU time). A callable that returns a :class:`Window` has timed itself: its ``wall``, ``cpu`` and ``units``
    are recorded instead of the call's (``units`` is 1 otherwise).
    """
    names = list(fns)
    out = {k: {"wall": [], "cpu": [], "units": []} for k in names}
    for r in range(rounds):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            c0, t0 = time.process_time(), time.perf_counter()
            res = fns[k]()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if isinstance(res, Window):
                wall, cpu = res.wall, res.cpu
            out[k]["wall"].append(wall)
            out[k]["cpu"].append(cpu)
            out[k]["units"].append(res.units if isinstance(res, Window) else 1.0)
    return out


def median(values) -> float:
    return float(statistics.median(values))


def ratio(timings: dict, a: str, b: str, kind: str = "wall") -> float:
    """Median over rounds of ``time(a) / time(b)`` measured in the same round."""
    return median([x / y for x, y in zip(timings[a][kind], timings[b][kind])])


def rates(timing: dict, per_unit: float = 1.0, kind: str = "wall") -> list[float]:
    """Per-round rates of one :func:`interleaved` entry: ``per_unit * units / seconds`` (e.g. prompts/s)."""
    return [per_unit * u / t for u, t in zip(timing["units"], timing[kind])]


class Worker:
    """A long-lived child process that answers JSON commands, one line each way (for code that must run in
    another interpreter, such as an anchor's own code under its own Python; it takes its turn in the same
    :func:`interleaved` rounds as the code in this process).

    The child reads one JSON object per line on stdin and writes one JSON object per line on stdout; whatever
    else it prints must go to stderr (kept in a log file, whose tail is shown if the child fails). A reply
    with an ``"error"`` key raises RuntimeError here.
    """

    def __init__(self, argv: list[str], env: dict | None = None, cwd: Path = ROOT, timeout: float = 900.0):
        self.argv, self.timeout = list(argv), timeout
        self._log = tempfile.NamedTemporaryFile(prefix="icl-worker-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     cwd=cwd, env=env, text=True, bufsize=1)

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def call(self, **command) -> dict:
        """Send ``command`` (JSON) and wait for the reply (at most ``timeout`` seconds)."""
        timer = threading.Timer(self.timeout, self.proc.kill)
        timer.start()
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        finally:
            timer.cancel()
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"worker {' '.join(self.argv[:3])} ... exited ({self.proc.returncode}) during "
                               f"{command.get('cmd')}:\n{self.log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker failed on {command.get('cmd')}: {reply['error']}\n{self.log_tail()}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        os.unlink(self._log.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


def _flatten(figures: dict, prefix: str = ""):
    """``(dotted key, value)`` of nested figures, depth first (lists stay whole)."""
    for key, value in figures.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


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
        for key, value in _flatten({k: v for k, v in figures.items() if k != "about"}):
            lines.append(f"| {key} | {_fmt(value) if not isinstance(value, list) else json.dumps(value)} |")
    if raw.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in raw["errors"]]
    return "\n".join(lines) + "\n"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def gemm_ceiling(shapes, repeats: int = 5, compiler_options: dict | None = None) -> dict:
    """GFLOP/s of jitted float32 matmuls ``[m, k] @ [k, n]`` for each ``(m, k, n)`` in ``shapes``: the best of
    ``repeats`` timed calls after one warm-up (a ceiling: what this machine's XLA does on these shapes now).

    Returns ``{"m x k x n": GFLOP/s, ..., "max": the largest}``. ``compiler_options`` as for ``jax.jit``.
    """
    import jax
    import jax.numpy as jnp

    out = {}
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
        mm = jax.jit(lambda x, y: x @ y, compiler_options=compiler_options)
        mm(a, b).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            mm(a, b).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        out[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best / 1e9
    out["max"] = max(out.values())
    return out


# ---------------------------------------------------------------------------------------------------------------
# XLA's optimised HLO text (``compiled.as_text()`` or an ``--xla_dump_to`` file ``*after_optimizations.txt``)

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|[sufc]\d+|bf16)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY )?%([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")


@dataclass
class HloInstruction:
    """One instruction of an HLO module: ``shape`` a list of ``(dtype, dims)`` arrays (several for a tuple)."""

    name: str
    computation: str
    opcode: str
    shape: list
    operands: list
    attrs: str
    op_name: str = ""
    frame: int = 0

    @property
    def bytes(self) -> int:
        return sum(_DTYPE_BYTES.get(t, 4) * _prod(dims) for t, dims in self.shape)

    @property
    def elements(self) -> int:
        return sum(_prod(dims) for _, dims in self.shape)

    def called(self, key: str) -> list[str]:
        """The computations this instruction names with ``key=`` (``calls``, ``body``, ``to_apply``, ...)."""
        m = re.search(rf"\b{key}=(\{{[^}}]*\}}|%[\w.\-]+)", self.attrs)
        return re.findall(r"%([\w.\-]+)", m.group(1)) if m else []

    def dims_attr(self, key: str) -> list[int]:
        m = re.search(rf"\b{key}=\{{([\d,]*)\}}", self.attrs)
        return [int(x) for x in m.group(1).split(",") if x] if m else []


@dataclass
class HloModule:
    """An HLO module read by :func:`parse_hlo`: computations (name -> instruction names), instructions by name,
    the entry computation's name, and the source table: ``frames[id] = (function, file, line, parent id)``."""

    computations: dict
    instructions: dict
    entry: str
    frames: dict

    def source(self, frame: int) -> tuple[str, str, int]:
        """``(function, file, line)`` of a stack frame's own location (``("", "", 0)`` if unknown)."""
        f = self.frames.get(frame)
        return (f[0], f[1], f[2]) if f else ("", "", 0)

    def multiplicity(self) -> dict:
        """How many times each computation runs per execution of the module: while bodies and conditions
        times their known trip count (1 if unknown), conditional branches and called computations once
        (an upper bound for branches), fusions as often as their caller."""
        runs, todo = {self.entry: 1}, [self.entry]
        while todo:
            comp = todo.pop()
            for name in self.computations[comp]:
                ins = self.instructions[name]
                trips = 1
                if ins.opcode == "while":
                    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
                    trips = int(m.group(1)) if m else 1
                for key in ("calls", "body", "condition", "branch_computations", "true_computation",
                            "false_computation", "to_apply"):
                    for callee in ins.called(key):
                        if callee in self.computations and callee not in runs:
                            runs[callee] = runs[comp] * (trips if key in ("body", "condition") else 1)
                            todo.append(callee)
        return runs


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _split_shape(rest: str) -> tuple[str, str]:
    """``"shape opcode(...)..."`` -> (shape text, the rest from the opcode on); tuple shapes are parenthesised."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].lstrip()
    shape, _, tail = rest.partition(" ")
    return shape, tail


def _source_tables(text: str) -> dict:
    """The FileNames / FunctionNames / FileLocations / StackFrames tables printed before the computations."""
    tables = {}
    for title in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
        m = re.search(rf"^{title}\n(.*?)(?:\n\n|\Z)", text, re.DOTALL | re.MULTILINE)
        rows = {}
        for line in (m.group(1).splitlines() if m else []):
            key, _, value = line.partition(" ")
            if key.isdigit():
                rows[int(key)] = value.strip()
        tables[title] = rows
    files = {k: v.strip('"') for k, v in tables["FileNames"].items()}
    funcs = {k: v.strip('"') for k, v in tables["FunctionNames"].items()}

    def fields(value):
        return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", value)}

    locs = {k: fields(v) for k, v in tables["FileLocations"].items()}
    frames = {}
    for k, v in tables["StackFrames"].items():
        f = fields(v)
        loc = locs.get(f.get("file_location_id"), {})
        frames[k] = (funcs.get(loc.get("function_name_id"), ""), files.get(loc.get("file_name_id"), ""),
                     loc.get("line", 0), f.get("parent_frame_id", 0))
    return frames


def parse_hlo(text: str) -> HloModule:
    """Read XLA's optimised HLO text: every instruction with its shape, operands, attributes, ``op_name``
    (JAX's path, e.g. ``jit(step)/transpose(jvp(...))/dot_general``: ``transpose(`` marks the backward pass)
    and source frame (``stack_frame_id``; resolved by :meth:`HloModule.source`)."""
    computations, instructions, entry, current = {}, {}, "", None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(2)
            computations[current] = []
            if m.group(1):
                entry = current
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTRUCTION.match(line) if current is not None else None
        if not m:
            continue
        name, rest = m.groups()
        shape_text, tail = _split_shape(rest)
        om = re.match(r"([\w\-]+)\(", tail)
        if not om:
            continue
        opcode, depth, i = om.group(1), 0, om.end() - 1
        for i in range(om.end() - 1, len(tail)):  # the operand list: up to the matching parenthesis
            depth += tail[i] == "("
            depth -= tail[i] == ")"
            if depth == 0:
                break
        operands, attrs = re.findall(r"%([\w.\-]+)", tail[om.end():i]), tail[i + 1:]
        shape = [(t, [int(d) for d in dims.split(",") if d]) for t, dims in _ARRAY.findall(shape_text)]
        meta = re.search(r'metadata=\{[^}]*?op_name="((?:[^"\\]|\\.)*)"', attrs)
        frame = re.search(r"stack_frame_id=(\d+)", attrs)
        instructions[name] = HloInstruction(name, current, opcode, shape, operands, attrs,
                                            meta.group(1) if meta else "", int(frame.group(1)) if frame else 0)
        computations[current].append(name)
    return HloModule(computations, instructions, entry, _source_tables(text))


def dot_flops(module: HloModule, ins: HloInstruction) -> float:
    """``2 * output elements * contracted size`` of a ``dot`` instruction (0 for any other)."""
    if ins.opcode != "dot" or not ins.operands:
        return 0.0
    lhs = module.instructions.get(ins.operands[0])
    if lhs is None or not lhs.shape:
        return 0.0
    dims = lhs.shape[0][1]
    contracted = _prod(dims[i] for i in ins.dims_attr("lhs_contracting_dims"))
    return 2.0 * ins.elements * contracted


def hlo_dot_flops(text_or_module) -> float:
    """Flops of every matrix product (``dot``, fused or not) in one execution of an HLO module, each counted as
    often as its computation runs (:meth:`HloModule.multiplicity`)."""
    module = text_or_module if isinstance(text_or_module, HloModule) else parse_hlo(text_or_module)
    runs = module.multiplicity()
    return float(sum(dot_flops(module, module.instructions[name]) * count
                     for comp, count in runs.items() for name in module.computations[comp]))
