"""Checkpoints of training runs, written with orbax-checkpoint.

A checkpoint is one folder (written by ``orbax.checkpoint`` atomically: a temporary folder renamed
into place) with three items:

- ``arrays``: every seed's parameters and optimiser state (their leaves, in ``jax.tree`` order), the
  loss history ``[num_seeds, step]`` and the final losses;
- ``meta`` (JSON): the format version, the step, the [`TrainConfig`][icl.training.TrainConfig], the model's
  [`icl.protocol.model_spec`][icl.protocol.model_spec] (class and ``spec()`` keyword arguments), a description of the task
  (written by [`CheckpointDir`][icl.checkpoint.CheckpointDir]) and the parameters' leaf paths;
- ``checksums`` (JSON): the sha256 of every stored array (its dtype, shape and bytes) and of the metadata
  (as a whole and field by field).

Reading a checkpoint verifies it: an array or a metadata field that differs from its checksum (a flipped
byte, an edited step or learning rate, a truncated file), or a checkpoint orbax cannot read, raises
[`CheckpointCorruptError`][icl.checkpoint.CheckpointCorruptError] (a ``ValueError``) naming the checkpoint and what failed; nothing corrupt is
ever loaded. Checkpoints of format version 2 (written before checksums) load with a warning, unverified.

``load_checkpoint(path)`` rebuilds the model from its spec, so ``model_fn`` is needed only for a model
without ``spec()``; the parameters are restored bit for bit, so ``load_checkpoint(path).model(i)``
predicts exactly as the saved ``result.model(i)``.

``train(..., checkpoint=CheckpointDir(folder))`` writes ``folder/step_XXXXXXXX`` every
``config.checkpoint_every`` steps and at the end (keeping the newest two); with ``resume=True`` it
continues from the newest intact one (a corrupt newer one is skipped with a warning and renamed
``step_XXXXXXXX.corrupt``), and the data are a pure function of seed and step, so the resumed run equals
the uninterrupted one bit for bit (same machine, same precision).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.protocol import build_model
from icl.training import Curriculum, TrainConfig, TrainResult, make_optimizer

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "verify_checkpoint", "CheckpointDir",
           "CheckpointCorruptError", "ResumeMismatchError"]

_FORMAT = "icl-train-checkpoint"
_VERSION = 3
_UNVERIFIED_VERSION = 2  # written before checksums: read with a warning
_STEP_DIR = re.compile(r"^step_\d{8}$")


class CheckpointCorruptError(ValueError):
    """A checkpoint that cannot be trusted: an array or a metadata field differs from the checksum written
    with it, its checksums are missing, or orbax cannot read it. The message names the checkpoint and what
    failed; ``path`` is the checkpoint folder and ``reason`` what failed."""

    def __init__(self, path: str | os.PathLike, reason: str, message: str | None = None):
        self.path, self.reason = Path(path), reason
        super().__init__(message or f"checkpoint {str(path)!r} is corrupt: {reason}")


class ResumeMismatchError(ValueError):
    """A resume asked for something other than what was checkpointed (config, model or task); the message
    names the differing fields with their saved and given values."""


def save_checkpoint(path: str | os.PathLike, result: TrainResult, *, overwrite: bool = False) -> Path:
    """Write ``result`` (every seed's parameters, optimiser state, step, losses, config, model) to ``path``.

    Args:
      path: the checkpoint folder (created; its parent too). It must not exist unless ``overwrite``.
      result: a [`TrainResult`][icl.training.TrainResult] (from [`icl.train`][icl.training.train], a sweep or a checkpoint).
      overwrite: replace an existing checkpoint at ``path``.
    Returns:
      The checkpoint folder as a ``Path``.
    """
    if not isinstance(result, TrainResult):
        raise ValueError(f"result must be an icl.TrainResult, got {type(result).__name__}")
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise ValueError(f"path {str(path)!r} already exists; pass overwrite=True to replace it")
    return _write(path, result, None)


def load_checkpoint(path: str | os.PathLike, model_fn: Callable[[nnx.Rngs], nnx.Module] | None = None) -> TrainResult:
    """Read a checkpoint written by [`save_checkpoint`][icl.checkpoint.save_checkpoint] or by a [`CheckpointDir`][icl.checkpoint.CheckpointDir].

    Args:
      path: a checkpoint folder, or a folder of ``step_XXXXXXXX`` checkpoints (its newest one).
      model_fn: builds the model (``model_fn(nnx.Rngs(0))``); needed only for a model without ``spec()``.
    Returns:
      A [`TrainResult`][icl.training.TrainResult] (``opt_state`` and ``step`` included; ``step < config.steps``
      for a checkpoint taken during training).
    Raises:
      CheckpointCorruptError: (a ValueError) an array or metadata field that does not match its checksum,
        missing checksums, or a checkpoint orbax cannot read; the message names the checkpoint and what
        failed. For a folder of checkpoints only the newest is read: load an older one by its own path.
      ValueError: not a checkpoint, a model that does not match it, a float64 checkpoint loaded without
        float64 enabled, or a missing ``model_fn`` for a model without ``spec()``.
    """
    meta, arrays = _read(_resolve(Path(path)))
    if model_fn is None and meta.get("model") is None:
        raise ValueError("this checkpoint's model did not record its spec (a model without spec()); pass "
                         "model_fn, the function that built it, to load_checkpoint")
    model = model_fn(nnx.Rngs(0)) if model_fn is not None else build_model(meta["model"], nnx.Rngs(0))
    return _restore(meta, arrays, *nnx.split(model), _config_from_json(meta["config"]), meta.get("model"))


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``step_XXXXXXXX`` checkpoint in a [`CheckpointDir`][icl.checkpoint.CheckpointDir] folder (or None).

    Complete means every item is present; its contents are verified when it is read ([`load_checkpoint`][icl.checkpoint.load_checkpoint],
    resuming, [`verify_checkpoint`][icl.checkpoint.verify_checkpoint])."""
    return next(iter(_step_folders(Path(checkpoint_dir))), None)


def verify_checkpoint(path: str | os.PathLike) -> Path:
    """Check a checkpoint's arrays and metadata against its checksums, without building its model.

    Args:
      path: a checkpoint folder, or a folder of ``step_XXXXXXXX`` checkpoints (its newest one).
    Returns:
      The verified checkpoint folder.
    Raises:
      CheckpointCorruptError: (a ValueError) naming the checkpoint and the arrays or metadata fields that do
        not match their checksums, or saying that orbax cannot read it.
      ValueError: ``path`` is not a checkpoint.
    """
    folder = _resolve(Path(path))
    _read(folder)
    return folder


class CheckpointDir:
    """The checkpoints of one [`icl.train`][icl.training.train] run: ``train(..., checkpoint=CheckpointDir(folder))``.

    Writes ``folder/step_XXXXXXXX`` every ``config.checkpoint_every`` steps and at the end, keeping the
    newest ``keep``. The folder must hold no checkpoint unless ``resume``; with ``resume=True`` training
    continues from the newest intact one (from scratch if there is none), refused with a ValueError naming
    the field when the config (``progress_every`` aside), the model's spec or the task differs from it.
    A corrupt checkpoint ([`CheckpointCorruptError`][icl.checkpoint.CheckpointCorruptError]) newer than the one resumed from is skipped with a
    warning naming it and why, and renamed ``step_XXXXXXXX.corrupt``; when none is intact, resuming is
    refused with a [`CheckpointCorruptError`][icl.checkpoint.CheckpointCorruptError] listing them (and nothing is renamed).
    """

    def __init__(self, folder: str | os.PathLike, resume: bool = False, keep: int = 2):
        self.folder, self.resume, self.keep, self.task = Path(folder).absolute(), bool(resume), int(keep), None

    def open(self, start: TrainResult, task) -> TrainResult:
        """The runs to train: ``start`` itself, or the newest checkpoint's state when resuming."""
        self.task = _describe(task)
        if not (candidates := _step_folders(self.folder)):
            return start
        if not self.resume:
            raise ValueError(f"checkpoint folder {str(self.folder)!r} already holds checkpoints; pass resume=True "
                             f"to continue from them or use an empty folder")
        folder, meta, arrays = self._newest_intact(candidates)
        _check_same(folder, "config", {**meta["config"], "progress_every": None},
                    {**_config_to_json(start.config), "progress_every": None})
        _check_same(folder, "model", meta.get("model"), start.model_spec)
        if meta.get("task") is not None:
            _check_same(folder, "task", meta["task"], self.task)
        if not meta.get("has_opt_state"):
            raise ValueError(f"cannot resume from {str(folder)!r}: it holds no optimiser state")
        return _restore(meta, arrays, start.graphdef, jax.tree.map(lambda a: a[0], start.params), start.config,
                        start.model_spec)

    def _newest_intact(self, candidates: list[Path]) -> tuple[Path, dict, dict]:
        """The newest checkpoint that verifies; corrupt newer ones are renamed aside, with a warning."""
        skipped: list[CheckpointCorruptError] = []
        for folder in candidates:
            try:
                meta, arrays = _read(folder)
            except CheckpointCorruptError as err:
                skipped.append(err)
                continue
            for err in skipped:  # out of the way of latest_checkpoint and of pruning; kept for inspection
                aside = _free_name(err.path.with_name(f"{err.path.name}.corrupt"))
                try:
                    os.rename(err.path, aside)
                    moved = f"renamed {str(aside)!r}"
                except OSError as why:
                    moved = f"could not be renamed ({why})"
                warnings.warn(f"resuming from {str(folder)!r} (step {int(meta['step'])}): skipping checkpoint "
                              f"{str(err.path)!r}, which is corrupt ({err.reason}); {moved}", stacklevel=4)
            return folder, meta, arrays
        raise CheckpointCorruptError(
            self.folder, "no intact checkpoint",
            f"cannot resume from {str(self.folder)!r}: none of its {len(skipped)} checkpoints is intact ("
            + "; ".join(f"{e.path.name}: {e.reason}" for e in skipped) + "); remove them to start afresh")

    def save(self, result: TrainResult) -> Path:
        """Write ``folder/step_XXXXXXXX`` for ``result.step`` and delete all but the newest ``keep``."""
        path = _write(self.folder / f"step_{result.step:08d}", result, self.task)
        for old in _step_folders(self.folder, complete=False)[::-1][:-self.keep]:  # oldest first
            shutil.rmtree(old, ignore_errors=True)
        return path


# ----------------------------------------------------------------------------------------------------


def _complete(folder: Path) -> bool:
    return (folder / "meta").is_dir() and (folder / "arrays").is_dir()


def _step_folders(folder: Path, complete: bool = True) -> list[Path]:
    """The ``step_XXXXXXXX`` checkpoints in ``folder`` (only the complete ones if ``complete``), newest first."""
    steps = sorted((p for p in folder.iterdir() if _STEP_DIR.match(p.name)), reverse=True) if folder.is_dir() else []
    return [p for p in steps if not complete or _complete(p)]


def _free_name(path: Path) -> Path:
    """``path``, or the first of ``path.1``, ``path.2``, ... that does not exist."""
    candidates = itertools.chain([path], (path.with_name(f"{path.name}.{i}") for i in itertools.count(1)))
    return next(p for p in candidates if not os.path.lexists(p))


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"path {str(path)!r} does not exist")
    latest = path if _complete(path) else latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"path {str(path)!r} is neither a checkpoint nor a folder of step_XXXXXXXX checkpoints")
    return latest.absolute()


def _name(obj) -> str:
    kind = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{kind.__module__}:{kind.__qualname__}"


def _describe(task) -> dict:
    """A JSON description of a task: its class, pytree structure and leaves (arrays over 8 entries by digest)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(task)
    return {"class": _name(task), "structure": str(treedef),
            **{jax.tree_util.keystr(path).lstrip(".") or "leaf": _leaf(v) for path, v in leaves}}


def _leaf(v):
    if not hasattr(v, "dtype"):
        return v if v is None or isinstance(v, (bool, int, float, str)) else _name(v)
    a = np.asarray(jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else v)
    return a.tolist() if a.size <= 8 else f"{a.dtype}{list(a.shape)} sha256:{hashlib.sha256(a.tobytes()).hexdigest()}"


def _flat(tree, sep: str = ".", path: str = "") -> dict:
    """``{"config.lr": leaf}`` from nested dicts, their keys joined by ``sep``. An empty dict is a leaf with
    ``sep="."`` (metadata fields) and holds nothing with ``sep="/"`` (stored arrays: ``{"params/00003": array}``)."""
    if not isinstance(tree, dict) or not (tree or sep == "/"):
        return {path: tree}
    prefix = f"{path}{sep}" if path else ""
    return {k: v for key, value in tree.items() for k, v in _flat(value, sep, f"{prefix}{key}").items()}


def _check_same(folder: Path, what: str, saved, given):
    saved, given = _flat(saved), _flat(json.loads(json.dumps(given)))
    differ = [k for k in sorted(set(saved) | set(given)) if saved.get(k) != given.get(k)]
    if differ:
        raise ResumeMismatchError(f"cannot resume from {str(folder)!r}: its {what} differs in "
                                  f"{[k or what for k in differ]} (saved {[saved.get(k) for k in differ]}, given "
                                  f"{[given.get(k) for k in differ]})")


def _numpy_leaves(tree, what: str, keys: dict) -> dict:
    out = {}
    for i, leaf in enumerate(jax.tree.leaves(tree)):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jax.dtypes.prng_key):
            keys[f"{what}/{i:05d}"] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        out[f"{i:05d}"] = np.asarray(leaf)
    return out


def _write(path: Path, result: TrainResult, task) -> Path:
    """Write ``result`` (and the task's description) to ``path``, replacing what is there."""
    import orbax.checkpoint as ocp

    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    arrays: dict = {"losses": np.asarray(result.losses), "params": _numpy_leaves(result.params, "params", keys)}
    if result.opt_state is not None:
        arrays["opt_state"] = _numpy_leaves(result.opt_state, "opt_state", keys)
    if result.final_losses is not None:
        arrays["final_losses"] = np.asarray(result.final_losses)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(result.params)]
    meta = {"format": _FORMAT, "version": _VERSION, "step": int(result.step), "config": _config_to_json(result.config),
            "model": result.model_spec, "task": task, "seconds": float(result.seconds),
            "has_opt_state": result.opt_state is not None, "params_paths": paths, "key_leaves": keys}
    meta = json.loads(json.dumps(meta))  # exactly as it is read back
    checksums = {"algorithm": "sha256", "meta": _digest(meta),
                 "meta_fields": {k: _digest(v) for k, v in _flat(meta).items()},
                 "arrays": {k: _digest(v) for k, v in _flat(arrays, "/").items()}}
    items = ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta),
                               checksums=ocp.args.JsonSave(checksums))
    ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(path, items)
    return path


def _digest(value) -> str:
    """The sha256 of a stored array (its dtype, shape and bytes) or of a JSON value (its canonical text)."""
    if hasattr(value, "dtype"):
        a = np.ascontiguousarray(value)
        return hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode() + a.tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _mismatches(saved: dict, values: dict) -> tuple[list, list, list]:
    """The keys (sorted) whose value's digest differs from ``saved``, then those missing from ``values``, then
    those with no digest in ``saved``."""
    return (sorted(k for k in saved.keys() & values.keys() if _digest(values[k]) != saved[k]),
            sorted(saved.keys() - values.keys()), sorted(values.keys() - saved.keys()))


def _verify(folder: Path, checksums, meta, arrays):
    """Raise [`CheckpointCorruptError`][icl.checkpoint.CheckpointCorruptError] unless ``meta`` and ``arrays`` match ``checksums``."""
    if not (isinstance(checksums, dict) and checksums.get("algorithm") == "sha256"
            and isinstance(checksums.get("meta"), str) and isinstance(checksums.get("meta_fields"), dict)
            and isinstance(checksums.get("arrays"), dict)):
        raise CheckpointCorruptError(folder, "its checksums record (the 'checksums' item) is malformed")
    failed = []
    if not isinstance(meta, dict) or _digest(meta) != checksums["meta"]:
        fields = sorted(sum(_mismatches(checksums["meta_fields"], _flat(meta) if isinstance(meta, dict) else {}), []))
        failed.append(f"metadata (meta) fields {fields} do not match their checksums" if fields
                      else "its metadata (meta) does not match its checksum")
    differ, missing, unchecked = _mismatches(checksums["arrays"], _flat(arrays, "/"))
    paths = [] if failed else meta.get("params_paths", [])  # trusted only when the metadata verified
    names = {f"params/{i:05d}": f"params/{i:05d} (parameter {path})" for i, path in enumerate(paths)}
    for keys, problem in (([names.get(k, k) for k in differ], "do not match their checksums"),
                          (missing, "are missing"), (unchecked, "have no checksum")):
        if keys:
            failed.append(f"arrays {keys} {problem}")
    if failed:
        raise CheckpointCorruptError(folder, "; ".join(failed))


def _read(folder: Path) -> tuple[dict, dict]:
    """The verified ``(meta, arrays)`` of a checkpoint folder ([`CheckpointCorruptError`][icl.checkpoint.CheckpointCorruptError] when corrupt)."""
    import orbax.checkpoint as ocp

    has_checksums = (folder / "checksums").is_dir()
    items = {"arrays": ocp.args.StandardRestore(), "meta": ocp.args.JsonRestore()}
    if has_checksums:
        items["checksums"] = ocp.args.JsonRestore()
    try:
        out = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(folder, ocp.args.Composite(**items))
    except PermissionError:
        raise
    except Exception as err:  # a damaged file makes orbax, tensorstore or json raise almost anything
        detail = (str(err).strip().splitlines() or [""])[0][:300]
        raise CheckpointCorruptError(folder, f"orbax cannot read it ({type(err).__name__}: {detail})") from err
    meta, arrays = out["meta"], out["arrays"]
    if has_checksums:
        _verify(folder, out["checksums"], meta, arrays)
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{str(folder)!r} is not an icl training checkpoint")
    version = meta.get("version", 0)
    if version == _UNVERIFIED_VERSION and not has_checksums:
        warnings.warn(f"checkpoint {str(folder)!r} has format version {version}, written without checksums: it "
                      f"is read unverified (save it again to add them)", stacklevel=3)
    elif version != _VERSION:
        raise ValueError(f"{str(folder)!r} has checkpoint format version {version}; this icl reads version "
                         f"{_VERSION} (and {_UNVERIFIED_VERSION}, unverified)")
    elif not has_checksums:
        raise CheckpointCorruptError(folder, "its checksums (the 'checksums' item) are missing")
    return meta, arrays


def _config_to_json(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=lambda v: v.item()))  # numpy scalars too


def _config_from_json(data: dict) -> TrainConfig:
    return TrainConfig(**{**data, "curriculum": data["curriculum"] and Curriculum(**data["curriculum"])})


def _restore(meta: dict, arrays: dict, graphdef, template, config: TrainConfig, model_spec) -> TrainResult:
    """The stored runs as a TrainResult (``template``: one seed's parameters)."""
    params = _unflatten("params", template, arrays.get("params", {}), meta, seeded=True)
    opt_state = None
    if meta.get("has_opt_state"):
        abstract = jax.eval_shape(jax.vmap(make_optimizer(config).init), params)
        opt_state = _unflatten("opt_state", abstract, arrays["opt_state"], meta, seeded=False)
    final = arrays.get("final_losses")
    return TrainResult(graphdef, params, np.asarray(arrays["losses"]), config, float(meta.get("seconds", 0.0)),
                       opt_state=opt_state, step=int(meta["step"]),
                       final_losses=None if final is None else np.asarray(final), model_spec=model_spec)


def _unflatten(what: str, template, stored: dict, meta: dict, seeded: bool):
    """Rebuild a tree of ``template``'s structure from stored leaves (with a leading seed axis when ``seeded``)."""
    leaves, treedef = jax.tree.flatten(template)
    names = sorted(stored)
    if len(names) != len(leaves):
        raise ValueError(f"the checkpoint's {what} has {len(names)} arrays but the model built here has "
                         f"{len(leaves)}: pass the model_fn that trained it")
    out = []
    for name, ref in zip(names, leaves):
        value = np.asarray(stored[name])
        impl = meta.get("key_leaves", {}).get(f"{what}/{name}")
        if seeded and value.shape[1:] != tuple(np.shape(ref)) and impl is None:
            raise ValueError(f"the checkpoint's {what} array {name} has shape {value.shape[1:]} per seed but the "
                             f"model built here has {tuple(np.shape(ref))}: pass the model_fn that trained it")
        if value.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise ValueError("this checkpoint holds float64 arrays; load it with float64 enabled "
                             "(jax.experimental.enable_x64() or JAX_ENABLE_X64=1) to keep it bit for bit")
        out.append(jax.random.wrap_key_data(jnp.asarray(value), impl=impl) if impl else jnp.asarray(value))
    return jax.tree.unflatten(treedef, out)
