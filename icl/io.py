"""Claims, run folders and JSON: how an experiment's results reach the disk (one writer).

An experiment's result is ONE folder holding ``summary.json`` and its figures. [`write_run`][icl.io.write_run] builds the
folder under a temporary name next to its destination and renames it into place, so a results folder never
holds a figure without its summary (nor a summary beside figures of another run), whatever kills the process.
Writers of the same folder may run at once (processes or threads): an existing folder is renamed aside before
the new one is renamed in, retried when another writer got in between, so no writer fails and the folder
ends holding one writer's complete output.
Temporary files and folders left by killed runs are removed by the next write into the same parent.
Files are written with mode 0644 and folders 0755, whatever the umask.

``summary.json`` keeps the schema ``experiment``, ``config``, ``claims`` (each ``name``, ``theory``,
``measured``, ``tolerance``, ``passed``, plus ``detail`` and optional ``seeds`` / ``se``), ``runs``,
``all_passed``, ``figures``; new fields: ``provenance`` (JAX precision, library versions, device kind,
git commit), ``nonfinite_values`` (paths of NaN/inf values, written as ``null``), ``seconds``.
NaN and inf are written as JSON ``null`` and a claim whose measured value is not finite fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

__all__ = ["Claim", "seed_spread", "relative_claim", "per_seed_claim", "upper_bound_claim", "lower_bound_claim", "ratio_se",
           "to_jsonable", "nonfinite_paths", "provenance", "config_hash", "atomic_write", "write_run",
           "remove_stale_temporaries"]

_TMP_MARK = ".icl-tmp-"  # every temporary name carries this, then the writer's pid
FILE_MODE = 0o644
DIR_MODE = 0o755


# ----------------------------------------------------------------------------------------------------
# Claims


@dataclass(frozen=True)
class Claim:
    """One theory-versus-measurement check.

    ``tolerance`` is relative for [`relative_claim`][icl.io.relative_claim] and a bound for [`upper_bound_claim`][icl.io.upper_bound_claim] /
    [`lower_bound_claim`][icl.io.lower_bound_claim]; ``detail`` says what was compared (paper, equation, units). Claims about
    trained models carry ``seeds`` (``{"mean", "std", "per_seed"}``: the spread over training seeds) and
    ``se`` (the standard error over evaluation prompts) when they apply. A claim whose measured value is
    NaN or inf never passes.
    """

    name: str
    theory: float | None
    measured: float | None
    tolerance: float
    passed: bool
    detail: str = ""
    seeds: dict | None = None
    se: float | None = None

    def __post_init__(self):
        finite = self.measured is not None and math.isfinite(float(self.measured))
        object.__setattr__(self, "passed", finite and bool(self.passed))


def seed_spread(per_seed) -> dict | None:
    """``{mean, std (ddof 1; 0 for one seed), per_seed}`` of per-seed values (None stays None)."""
    if per_seed is None:
        return None
    v = np.asarray(per_seed, np.float64).ravel()
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "per_seed": v.tolist()}


def _claim(name, theory, measured, tolerance, passed, detail, per_seed, se) -> Claim:
    """A [`Claim`][icl.io.Claim] with float numbers and the seeds' spread (it fails when ``measured`` is not finite)."""
    return Claim(name, theory, float(measured), float(tolerance), passed, detail, seed_spread(per_seed),
                 None if se is None else float(se))


def relative_claim(name: str, theory: float, measured: float, tolerance: float, detail: str = "", *,
                   per_seed=None, se: float | None = None) -> Claim:
    """Passes when ``|measured - theory| <= tolerance * |theory|`` (and ``measured`` is finite)."""
    theory, measured = float(theory), float(measured)
    passed = math.isfinite(theory) and abs(measured - theory) <= tolerance * abs(theory)
    detail = detail or f"relative tolerance {tolerance:g}"
    return _claim(name, theory, measured, tolerance, passed, detail, per_seed, se)


def upper_bound_claim(name: str, measured: float, bound: float, theory: float | None = 0.0, detail: str = "", *,
                      per_seed=None, se: float | None = None) -> Claim:
    """Passes when ``measured <= bound`` (e.g. a distance that theory says is 0)."""
    return _claim(name, theory, measured, bound, float(measured) <= bound, detail or f"must be <= {bound:g}",
                  per_seed, se)


def per_seed_claim(name: str, per_seed, tolerance: float, theory: float | None = None, detail: str = "", *,
                   kind: str = "relative", se: float | None = None) -> Claim:
    """A claim judged on every training seed: it passes only when each seed passes.

    ``kind`` says how one seed's value ``v`` is judged: ``"relative"`` (``|v - theory| <= tolerance |theory|``),
    ``"upper"`` (``v <= tolerance``) or ``"lower"`` (``v >= tolerance``). ``measured`` is the worst seed's
    value (farthest from ``theory``, largest, or smallest), so the number shown is the one that decides, and it
    sits on the stated side of the tolerance exactly when the claim passes. The detail lists every seed and
    their spread; with two or more seeds all on one side of ``theory`` and a mean offset larger than twice the
    seeds' standard deviation, it says the offset is systematic (a finding to explain, not noise).
    """
    if kind not in ("relative", "upper", "lower"):
        raise ValueError(f"kind must be 'relative', 'upper' or 'lower', got {kind!r}")
    if kind == "relative" and theory is None:
        raise ValueError("theory is required for kind='relative'")
    v = np.asarray(per_seed, np.float64).ravel()
    if v.size == 0:
        raise ValueError("per_seed must hold at least one value")
    if np.isnan(v).any():  # a NaN seed decides the claim: it fails, and the NaN is what it shows
        worst = float("nan")
    elif kind == "relative":
        worst = float(v[np.argmax(np.abs(v - theory))])
    else:
        worst = float(v.max() if kind == "upper" else v.min())
    passed = math.isfinite(worst) and (
        abs(worst - theory) <= tolerance * abs(theory) if kind == "relative"
        else worst <= tolerance if kind == "upper" else worst >= tolerance)
    spread = seed_spread(v)
    text = f"every seed must pass ({v.size} seed{'s' if v.size > 1 else ''}: {', '.join(f'{x:.4g}' for x in v)}"
    text += f"; std {spread['std']:.2g})" if v.size > 1 else ")"
    if theory is not None and v.size > 1 and np.all(np.isfinite(v)):
        offset = spread["mean"] - theory
        if (np.all(v > theory) or np.all(v < theory)) and abs(offset) > 2 * spread["std"]:
            rel = f" ({100 * offset / abs(theory):+.2f}%)" if theory else ""
            text += (f"; systematic offset: all {v.size} seeds {'above' if offset > 0 else 'below'} theory, mean "
                     f"offset {offset:+.3g}{rel}, more than twice the seeds' spread")
            spread["systematic_offset"] = float(offset)
    claim = Claim(name, None if theory is None else float(theory), worst, float(tolerance), passed,
                  f"{detail}; {text}" if detail else text, spread, None if se is None else float(se))
    return claim


def ratio_se(num: float, num_se: float, den: float, den_se: float) -> float:
    """Delta-method SE of ``num / den`` from the two SEs (independent errors; an upper bound for positively
    correlated ones, e.g. two predictors scored on the same prompts)."""
    return float(num / den * np.hypot(num_se / num, den_se / den))


def lower_bound_claim(name: str, measured: float, bound: float, theory: float | None = None, detail: str = "", *,
                      per_seed=None, se: float | None = None) -> Claim:
    """Passes when ``measured >= bound``."""
    return _claim(name, theory, measured, bound, float(measured) >= bound, detail or f"must be >= {bound:g}",
                  per_seed, se)


# ----------------------------------------------------------------------------------------------------
# JSON


def to_jsonable(obj):
    """Plain JSON types from numpy/JAX arrays and scalars, dataclasses, tuples, paths; NaN and inf -> ``None``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, Mapping):
        return {_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, int):  # bool included; numpy scalars are arrays (below)
        return bool(obj) if isinstance(obj, bool) else int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):  # numpy.str_ has __array__
        return to_jsonable(np.asarray(obj).tolist())
    return obj


def _key(k) -> str:
    return " vs ".join(map(str, k)) if isinstance(k, tuple) else str(k)


def nonfinite_paths(obj, path: str = "") -> list[str]:
    """Paths (``runs[0].loss.lsa``) of every NaN or inf number inside ``obj`` (before [`to_jsonable`][icl.io.to_jsonable])."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return [p for k, v in obj.items() for p in nonfinite_paths(v, f"{path}.{_key(k)}" if path else _key(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in nonfinite_paths(v, f"{path}[{i}]")]
    if isinstance(obj, float) or hasattr(obj, "__array__"):  # numpy and JAX scalars and arrays have __array__
        arr = np.asarray(obj)
        return [path] if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)) else []
    return []


# ----------------------------------------------------------------------------------------------------
# Provenance


def _git_commit(start: Path) -> str | None:
    run = {"cwd": start, "capture_output": True, "text": True, "timeout": 10}
    try:  # check=True: a failing git (not a repository) raises CalledProcessError, a SubprocessError
        commit = subprocess.run(["git", "rev-parse", "HEAD"], check=True, **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run)
        return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Where a result came from: JAX precision, library versions, device kind, git commit (when available)."""
    import importlib.metadata as md
    import platform

    import jax

    versions = dict.fromkeys(("jax", "jaxlib", "flax", "optax", "numpy"))  # None when not installed
    for pkg in versions:
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return {
        "precision": precision(),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "versions": versions,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "git_commit": _git_commit(Path(__file__).resolve().parent),
    }


def precision() -> str:
    """``"x64"`` when JAX runs with 64-bit floats (``JAX_ENABLE_X64``), else ``"float32"``."""
    import jax

    return "x64" if jax.config.jax_enable_x64 else "float32"


def config_hash(config: Mapping, length: int = 10) -> str:
    """Hex digest of a config together with the JAX precision (an x64 run and a float32 run differ)."""
    text = json.dumps({"config": to_jsonable(config), "precision": precision()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------------------------------
# The writer


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete temporary files/folders in ``folder`` left by writers that are no longer running.

    Temporaries are named ``.<name>.icl-tmp-<pid>-<random>``; also removes the ``.<name>.<random>.tmp``
    files that earlier versions of this module wrote. Returns what was removed.
    """
    folder, removed = Path(folder), []
    for entry in folder.iterdir() if folder.is_dir() else []:
        name = entry.name
        if _TMP_MARK in name:
            pid = name.split(_TMP_MARK, 1)[1].split("-", 1)[0]
            stale = not (pid.isdigit() and _pid_alive(int(pid)))  # this process too is alive
        else:
            stale = name.startswith(".") and name.endswith(".tmp")
        if stale:
            _remove(entry)
            removed.append(entry)
    return removed


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}{_TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}"


def atomic_write(path, data: bytes | str) -> Path:
    """Write one file atomically (a temporary file in the same folder, then ``os.replace``), mode 0644."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = _temp_name(path)
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_OCCUPIED = {errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR}
_RENAME_TRIES = 1000


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _rename_into_place(tmp: Path, dest: Path) -> None:
    """Rename the complete folder ``tmp`` to ``dest``, replacing whatever is there.

    A folder cannot be renamed onto a non-empty one, so what occupies ``dest`` is first renamed aside to a
    temporary name of this writer, then ``tmp`` is renamed in. Another writer of the same ``dest`` can put its
    own folder there in between; then the rename in fails, and this writer moves that folder aside too and
    tries again. Every writer's rename in is atomic, so ``dest`` always ends holding one writer's complete
    output; the folders moved aside are deleted afterwards. If the rename in fails for another reason, the
    last folder moved aside is put back when ``dest`` is still free, and the error is raised.
    """
    aside: list[Path] = []
    try:
        for attempt in range(_RENAME_TRIES):
            try:
                os.rename(tmp, dest)
                return
            except OSError as err:
                if err.errno not in _OCCUPIED:
                    if aside and not os.path.lexists(dest):
                        with contextlib.suppress(OSError):
                            os.rename(aside.pop(), dest)
                    raise
            old = _temp_name(dest)
            try:
                os.rename(dest, old)
            except FileNotFoundError:  # another writer moved it aside first: try again
                continue
            aside.append(old)
            if attempt >= 10:  # writers keep replacing each other's folders: let the others finish
                time.sleep(0.001 * random.random() * min(attempt, 100))
        raise OSError(errno.EBUSY, f"could not rename {str(tmp)!r} into place: {str(dest)!r} was replaced by "
                                   f"other writers {_RENAME_TRIES} times in a row")
    finally:
        for old in aside:
            _remove(old)


def _render_figure(fig) -> bytes:
    import io as _io

    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_run(out_dir, summary: dict, figures: Mapping[str, object] | None = None,
              render: Callable[[object], bytes] = _render_figure, files: Mapping[str, object] | None = None) -> dict:
    """Write a run folder atomically: ``summary.json`` plus figures, renamed into place together.

    Args:
      out_dir: the destination folder (replaced as a whole if it exists; concurrent writers of it are safe:
        it ends holding one writer's complete output).
      summary: the summary dict (made JSON-ready here; NaN/inf become ``null`` and are listed in
        ``nonfinite_values``; a claim with a non-finite measured value fails).
      figures: ``{file name: matplotlib Figure or bytes or a callable returning either}``. A figure that fails
        to render is left out and its error recorded under ``figure_errors`` (the summary is still written).
      files: other JSON files of the run, ``{file name: JSON-able object}`` (the experiment runner writes
        ``config.json``, the resolved settings that ``--config`` reads back).
    Returns:
      The summary as written (with ``figures`` listing the files written).
    """
    out_dir, summary = Path(out_dir), dict(summary)
    blobs, errors = {}, {}
    for name, fig in (figures or {}).items():
        try:
            if callable(fig) and not hasattr(fig, "savefig"):
                fig = fig()
            blobs[name] = fig if isinstance(fig, bytes) else render(fig)
        except Exception as err:  # a figure never costs the summary
            errors[name] = f"{type(err).__name__}: {err}"
    if bad := nonfinite_paths(summary):
        summary["nonfinite_values"] = bad
    claims = summary.get("claims", [])
    summary["all_passed"] = all(c.passed if isinstance(c, Claim) else c.get("passed") for c in claims)
    summary["figures"] = list(blobs)
    if errors:
        summary["figure_errors"] = errors
    data = (json.dumps(to_jsonable(summary), indent=2, allow_nan=False) + "\n").encode()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir.parent)
    tmp = _temp_name(out_dir)
    try:
        tmp.mkdir()
        os.chmod(tmp, DIR_MODE)
        extra = [(name, (json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n").encode())
                 for name, obj in (files or {}).items()]
        for name, blob in [("summary.json", data), *extra, *blobs.items()]:
            (tmp / name).write_bytes(blob)
            os.chmod(tmp / name, FILE_MODE)
        _rename_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only if something failed
    return json.loads(data)

