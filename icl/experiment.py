"""The small runner every experiment script shares: flags, output folder, claims, atomic writes.

An experiment writes ``summary.json`` with ``experiment``, ``config``, ``claims`` (each ``name``,
``theory``, ``measured``, ``tolerance``, ``passed``) and ``runs``, plus its figures, into one folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icl.sweeps import grid_points

__all__ = [
    "Claim",
    "relative_claim",
    "upper_bound_claim",
    "to_jsonable",
    "write_json_atomic",
    "save_figure_atomic",
    "run_directory",
    "write_summary",
    "base_parser",
    "print_claims",
    "train_lsa_grid",
    "seed_mean_losses",
    "start_run",
    "finish_run",
]


@dataclass(frozen=True)
class Claim:
    """One theory-versus-measurement check.

    ``tolerance`` is relative for :func:`relative_claim` and an absolute bound for
    :func:`upper_bound_claim`; ``detail`` says what was compared (paper, equation, units).
    """

    name: str
    theory: float | None
    measured: float
    tolerance: float
    passed: bool
    detail: str = ""


def relative_claim(name: str, theory: float, measured: float, tolerance: float, detail: str = "") -> Claim:
    """Passes when ``|measured - theory| <= tolerance * |theory|``."""
    theory, measured = float(theory), float(measured)
    passed = bool(np.isfinite(measured) and abs(measured - theory) <= tolerance * abs(theory))
    return Claim(name, theory, measured, float(tolerance), passed, detail or f"relative tolerance {tolerance:g}")


def upper_bound_claim(name: str, measured: float, bound: float, theory: float | None = 0.0, detail: str = "") -> Claim:
    """Passes when ``measured <= bound`` (e.g. a distance that theory says is 0)."""
    measured = float(measured)
    passed = bool(np.isfinite(measured) and measured <= bound)
    return Claim(name, theory, measured, float(bound), passed, detail or f"must be <= {bound:g}")


def to_jsonable(obj):
    """Convert numpy/JAX arrays and scalars, dataclasses, tuples and paths to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        if arr.dtype == bool:
            return arr.tolist()
        return arr.astype(np.float64).tolist() if arr.dtype.kind == "f" else arr.tolist()
    if isinstance(obj, (np.floating, float)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` (made JSON-ready) to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False)
    _atomic_write_bytes(path, lambda h: h.write(text.encode()))
    return path


def save_figure_atomic(fig, path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (temporary file, then ``os.replace``) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    _atomic_write_bytes(path, lambda h: fig.savefig(h, format=fmt, dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return path


def run_directory(out: str | None, experiment: str, config: dict, root: str = "results") -> Path:
    """The run's output folder: ``out`` if given, else ``results/<experiment>-<hash of config>``."""
    if out:
        path = Path(out)
    else:
        digest = hashlib.sha256(json.dumps(to_jsonable(config), sort_keys=True).encode()).hexdigest()[:10]
        path = Path(root) / f"{experiment}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_summary(out_dir: Path, experiment: str, config: dict, claims: list[Claim], runs: list, **extra) -> Path:
    """Write ``summary.json`` (``experiment``, ``config``, ``claims``, ``runs`` and any extra keys)."""
    summary = {
        "experiment": experiment,
        "config": config,
        "all_passed": all(c.passed for c in claims),
        "claims": claims,
        "runs": runs,
        **extra,
    }
    return write_json_atomic(Path(out_dir) / "summary.json", summary)


def base_parser(description: str, **defaults) -> argparse.ArgumentParser:
    """Flags every experiment shares; ``defaults`` override the built-in defaults by flag name."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = {"d": 5, "n": 10, "noise": [0.0], "steps": 500, "batch": 512, "seeds": 4, "lr": 1e-2, "seed": 0,
         "init_scale": 0.01, "init_diag": 0.0, "eval_prompts": 200_000}
    d.update(defaults)
    p.add_argument("--d", type=int, default=d["d"], help="input dimension")
    p.add_argument("--n", type=int, default=d["n"], help="context length (examples per prompt)")
    p.add_argument("--noise", type=float, nargs="+", default=d["noise"], help="label-noise standard deviation(s) sigma")
    p.add_argument("--steps", type=int, default=d["steps"], help="training steps")
    p.add_argument("--batch", type=int, default=d["batch"], help="prompts per training step")
    p.add_argument("--seeds", type=int, default=d["seeds"], help="independent training runs (vmapped)")
    p.add_argument("--lr", type=float, default=d["lr"], help="peak Adam learning rate (cosine decay)")
    p.add_argument("--seed", type=int, default=d["seed"], help="base random seed")
    p.add_argument("--init-scale", type=float, default=d["init_scale"], help="std of the initial weights")
    p.add_argument("--init-diag", type=float, default=d["init_diag"],
                   help="added to the diagonal of W^PV and W^KQ at start (starts on the c A^T path)")
    p.add_argument("--eval-prompts", type=int, default=d["eval_prompts"], help="fresh prompts for the loss comparison")
    p.add_argument("--out", default=None, help="output folder (default: results/<experiment>-<config hash>)")
    p.add_argument("--progress", action="store_true", help="print training progress")
    return p


def print_claims(claims: list[Claim]) -> None:
    """Print a one-line-per-claim table to stdout."""
    width = max(len(c.name) for c in claims) if claims else 10
    for c in claims:
        theory = "-" if c.theory is None else f"{c.theory:.5g}"
        print(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name:<{width}}  theory {theory:>10}  measured {c.measured:.5g}  tol {c.tolerance:g}")


def train_lsa_grid(task_fn, grid: dict, args, num_layers: int = 1) -> list:
    """Train ``args.seeds`` linear transformers per grid point with the shared flags, as one sweep.

    ``task_fn(**point)`` builds each point's task (see :func:`icl.sweeps.sweep`). Returns a list of
    ``(point, result, gammas)`` with ``gammas: [seeds, d, d]`` each seed's first-layer ``Gamma_eff``
    (numpy). Flags used: ``steps, batch, n, lr, seeds, seed, init_scale, init_diag, progress``.
    """
    import icl
    from icl.sweeps import sweep

    config = icl.TrainConfig(steps=args.steps, batch=args.batch, n=args.n, lr=args.lr, num_seeds=args.seeds,
                             seed=args.seed, progress_every=max(args.steps // 5, 1) if args.progress else 0)
    d = task_fn(**grid_points(grid)[0]).d

    def model_fn(rngs):
        return icl.LinearTransformer(d, num_layers, init_scale=args.init_scale, init_diag=args.init_diag, rngs=rngs)

    out = []
    for point, result in sweep(model_fn, task_fn, config, grid):
        layer = result.params["layers"][0]
        out.append((point, result, np.asarray(icl.implied_preconditioner(layer["w_pv"][...], layer["w_kq"][...]))))
    return out


def seed_mean_losses(comparison, prefix: str = "lsa_") -> tuple[float, float, list[float]]:
    """Mean over seeds of the losses named ``prefix*`` in a comparison: ``(mean, largest SE, per seed)``."""
    names = [k for k in comparison.losses if k.startswith(prefix)]
    losses = [comparison.losses[k][0] for k in names]
    return float(np.mean(losses)), float(max(comparison.losses[k][1] for k in names)), losses


def start_run(args, experiment: str) -> tuple[dict, Path, float]:
    """Common start of a script: ``(config dict of the flags, output folder, start time)``."""
    import time

    config = {k: v for k, v in vars(args).items() if k not in ("out", "progress")}
    return config, run_directory(args.out, experiment, config), time.perf_counter()


def finish_run(out_dir: Path, experiment: str, config: dict, claims: list, runs: list, figures: dict, start: float,
               **extra) -> dict:
    """Common end of a script: save ``figures`` (``{file name: matplotlib figure}``), write ``summary.json``,
    print the claims. Returns ``{"claims", "runs", "out_dir", "seconds"}`` (what ``reproduce_all`` reads)."""
    import time

    import jax

    paths = [save_figure_atomic(fig, Path(out_dir) / name) for name, fig in figures.items()]
    seconds = time.perf_counter() - start
    path = write_summary(out_dir, experiment, config, claims, runs, figures=[p.name for p in paths], seconds=seconds,
                         jax_backend=jax.default_backend(), **extra)
    print_claims(claims)
    print(f"wrote {path} and {', '.join(str(p) for p in paths)} in {seconds:.1f}s")
    return {"claims": claims, "runs": runs, "out_dir": out_dir, "seconds": seconds}
