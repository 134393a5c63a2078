"""Checkpoints of training runs, written with orbax-checkpoint.

A checkpoint is one folder (written by ``orbax.checkpoint`` atomically: a temporary folder renamed
into place) with two items:

- ``arrays``: every seed's parameters and optimiser state (their leaves, in ``jax.tree`` order), the
  loss history ``[num_seeds, step]`` and the final losses;
- ``meta`` (JSON): the format version, the step, the :class:`~icl.training.TrainConfig`, the model's
  :func:`icl.protocol.model_spec` (class and ``spec()`` keyword arguments), a description of the task
  (written by :class:`CheckpointDir`) and the parameters' leaf paths.

``load_checkpoint(path)`` rebuilds the model from its spec, so ``model_fn`` is needed only for a model
without ``spec()``; the parameters are restored bit for bit, so ``load_checkpoint(path).model(i)``
predicts exactly as the saved ``result.model(i)``.

``train(..., checkpoint=CheckpointDir(folder))`` writes ``folder/step_XXXXXXXX`` every
``config.checkpoint_every`` steps and at the end (keeping the newest two); with ``resume=True`` it
continues from the newest, and the data are a pure function of seed and step, so the resumed run equals
the uninterrupted one bit for bit (same machine, same precision).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.protocol import build_model
from icl.training import Curriculum, TrainConfig, TrainResult, make_optimizer

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "CheckpointDir"]

_FORMAT = "icl-train-checkpoint"
_VERSION = 2
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def save_checkpoint(path: str | os.PathLike, result: TrainResult, *, overwrite: bool = False) -> Path:
    """Write ``result`` (every seed's parameters, optimiser state, step, losses, config, model) to ``path``.

    Args:
      path: the checkpoint folder (created; its parent too). It must not exist unless ``overwrite``.
      result: a :class:`~icl.training.TrainResult` (from :func:`icl.train`, a sweep or a checkpoint).
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
    """Read a checkpoint written by :func:`save_checkpoint` or by a :class:`CheckpointDir`.

    Args:
      path: a checkpoint folder, or a folder of ``step_XXXXXXXX`` checkpoints (its newest one).
      model_fn: builds the model (``model_fn(nnx.Rngs(0))``); needed only for a model without ``spec()``.
    Returns:
      A :class:`~icl.training.TrainResult` (``opt_state`` and ``step`` included; ``step < config.steps``
      for a checkpoint taken during training).
    Raises:
      ValueError: not a checkpoint, a model that does not match it, a float64 checkpoint loaded without
        float64 enabled, or a missing ``model_fn`` for a model without ``spec()``.
    """
    meta, arrays = _read(_resolve(Path(path)))
    if model_fn is None and meta.get("model") is None:
        raise ValueError("this checkpoint's model did not record its spec (a model without spec()); pass "
                         "model_fn, the function that built it, to load_checkpoint")
    model = model_fn(nnx.Rngs(0)) if model_fn is not None else build_model(meta["model"], nnx.Rngs(0))
    graphdef, template = nnx.split(model)
    return _restore(meta, arrays, graphdef, template, _config_from_json(meta["config"]), meta.get("model"))


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``step_XXXXXXXX`` checkpoint in a :class:`CheckpointDir` folder (or None)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    steps = sorted(int(m[1]) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and _complete(p))
    return folder / f"step_{steps[-1]:08d}" if steps else None


class CheckpointDir:
    """The checkpoints of one :func:`icl.train` run: ``train(..., checkpoint=CheckpointDir(folder))``.

    Writes ``folder/step_XXXXXXXX`` every ``config.checkpoint_every`` steps and at the end, keeping the
    newest ``keep``. The folder must hold no checkpoint unless ``resume``; with ``resume=True`` training
    continues from the newest one (from scratch if there is none), refused with a ValueError naming the
    field when the config (``progress_every`` aside), the model's spec or the task differs from it.
    """

    def __init__(self, folder: str | os.PathLike, resume: bool = False, keep: int = 2):
        self.folder, self.resume, self.keep, self.task = Path(folder).absolute(), bool(resume), int(keep), None

    def open(self, start: TrainResult, task) -> TrainResult:
        """The runs to train: ``start`` itself, or the newest checkpoint's state when resuming."""
        self.task = _describe(task)
        folder = latest_checkpoint(self.folder)
        if folder is None:
            return start
        if not self.resume:
            raise ValueError(f"checkpoint folder {str(self.folder)!r} already holds checkpoints; pass resume=True "
                             f"to continue from them or use an empty folder")
        meta, arrays = _read(folder)
        _check_same(folder, "config", {**meta["config"], "progress_every": None},
                    {**_config_to_json(start.config), "progress_every": None})
        _check_same(folder, "model", meta.get("model"), start.model_spec)
        if meta.get("task") is not None:
            _check_same(folder, "task", meta["task"], self.task)
        if not meta.get("has_opt_state"):
            raise ValueError(f"cannot resume from {str(folder)!r}: it holds no optimiser state")
        return _restore(meta, arrays, start.graphdef, jax.tree.map(lambda a: a[0], start.params), start.config,
                        start.model_spec)

    def save(self, result: TrainResult) -> Path:
        """Write ``folder/step_XXXXXXXX`` for ``result.step`` and delete all but the newest ``keep``."""
        path = _write(self.folder / f"step_{result.step:08d}", result, self.task)
        steps = sorted(int(m[1]) for p in self.folder.iterdir() if (m := _STEP_DIR.match(p.name)))
        for old in steps[:-self.keep]:
            shutil.rmtree(self.folder / f"step_{old:08d}", ignore_errors=True)
        return path


# ----------------------------------------------------------------------------------------------------


def _complete(folder: Path) -> bool:
    return (folder / "meta").is_dir() and (folder / "arrays").is_dir()


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"path {str(path)!r} does not exist")
    latest = path if _complete(path) else latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"path {str(path)!r} is neither a checkpoint nor a folder of step_XXXXXXXX checkpoints")
    return latest.absolute()


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


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


def _flat(x, path: str = "") -> dict:
    if isinstance(x, dict) and x:
        return {k: v for key, value in x.items() for k, v in _flat(value, f"{path}.{key}" if path else key).items()}
    return {path: x}


def _check_same(folder: Path, what: str, saved, given):
    saved, given = _flat(saved), _flat(json.loads(json.dumps(given)))
    differ = [k for k in sorted(set(saved) | set(given)) if saved.get(k) != given.get(k)]
    if differ:
        raise ValueError(f"cannot resume from {str(folder)!r}: its {what} differs in {[k or what for k in differ]} "
                         f"(saved {[saved.get(k) for k in differ]}, given {[given.get(k) for k in differ]})")


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
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "step": int(result.step),
        "config": _config_to_json(result.config),
        "model": result.model_spec,
        "task": task,
        "seconds": float(result.seconds),
        "has_opt_state": result.opt_state is not None,
        "params_paths": [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(result.params)],
        "key_leaves": keys,
    }
    _checkpointer().save(path, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))
    return path


def _read(folder: Path) -> tuple[dict, dict]:
    import orbax.checkpoint as ocp

    out = _checkpointer().restore(folder, ocp.args.Composite(arrays=ocp.args.StandardRestore(),
                                                             meta=ocp.args.JsonRestore()))
    meta, arrays = out["meta"], out["arrays"]
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{str(folder)!r} is not an icl training checkpoint")
    if meta.get("version", 0) != _VERSION:
        raise ValueError(f"{str(folder)!r} has checkpoint format version {meta.get('version')}; this icl reads "
                         f"version {_VERSION}")
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
