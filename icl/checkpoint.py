"""Checkpoints of training runs, written with orbax-checkpoint.

A checkpoint is one folder (written by ``orbax.checkpoint`` atomically: a temporary folder renamed
into place) with two items:

- ``arrays``: every seed's parameters and optimiser state (their leaves, in ``jax.tree`` order), the
  loss history ``[num_seeds, step]`` and the final losses;
- ``meta`` (JSON): the format version, the step, the :class:`~icl.training.TrainConfig`, the model's
  class and constructor arguments (library models record them in ``_init_args``), the leaf paths,
  shapes and dtypes.

``load_checkpoint(path)`` rebuilds the model from its class and constructor arguments, so ``model_fn``
is needed only for a user's own model class; the parameters are restored bit for bit, so
``load_checkpoint(path).model(i)`` predicts exactly as the saved ``result.model(i)``.

``train(..., checkpoint_dir=folder)`` writes ``folder/step_XXXXXXXX`` every
``config.checkpoint_every`` steps and at the end (keeping the newest two); ``train(..., resume=True)``
continues from the newest, and the data are a pure function of seed and step, so the resumed run
equals the uninterrupted one bit for bit (same machine, same precision).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.training import Curriculum, TrainConfig, TrainResult, make_optimizer

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint"]

_FORMAT = "icl-train-checkpoint"
_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_KEEP = 2


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
    if path.exists():
        if not overwrite:
            raise ValueError(f"path {str(path)!r} already exists; pass overwrite=True to replace it")
        shutil.rmtree(path)
    _write(path, result.step, result.params, result.opt_state, result.losses, result.final_losses, result.config,
           result.model_spec, result.seconds)
    return path


def load_checkpoint(path: str | os.PathLike, model_fn: Callable[[nnx.Rngs], nnx.Module] | None = None) -> TrainResult:
    """Read a checkpoint written by :func:`save_checkpoint` or by ``train(..., checkpoint_dir=...)``.

    Args:
      path: a checkpoint folder, or a ``checkpoint_dir`` of :func:`icl.train` (its newest checkpoint).
      model_fn: builds the model (``model_fn(nnx.Rngs(0))``); needed only when the model class did not
        record its constructor arguments (a user's own class).
    Returns:
      A :class:`~icl.training.TrainResult` (``opt_state`` and ``step`` included; ``step < config.steps``
      for a checkpoint taken during training).
    Raises:
      ValueError: not a checkpoint, a model that does not match it, a float64 checkpoint loaded without
        float64 enabled, or a missing ``model_fn`` for a user class.
    """
    folder = _resolve(Path(path))
    meta, arrays = _read(folder)
    config = _config_from_json(meta["config"])
    model = _build_model(meta, model_fn)
    graphdef, template = nnx.split(model)
    params = _unflatten("params", template, arrays.get("params", {}), meta, seeded=True)
    opt_state = None
    if meta.get("has_opt_state"):
        abstract = jax.eval_shape(jax.vmap(make_optimizer(config).init), params)
        opt_state = _unflatten("opt_state", abstract, arrays["opt_state"], meta, seeded=False)
    final = arrays.get("final_losses")
    spec = None if meta.get("model") is None else (meta["model"]["class"],
                                                   tuple((k, _tuplify(v)) for k, v in meta["model"]["init_args"]))
    return TrainResult(graphdef, params, np.asarray(arrays["losses"]), config, float(meta.get("seconds", 0.0)),
                       opt_state=opt_state, step=int(meta["step"]),
                       final_losses=None if final is None else np.asarray(final), model_spec=spec)


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``step_XXXXXXXX`` checkpoint in a :func:`icl.train` ``checkpoint_dir`` (or None)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    steps = sorted(int(m[1]) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and _complete(p))
    return folder / f"step_{steps[-1]:08d}" if steps else None


# ----------------------------------------------------------------------------------------------------


def _complete(folder: Path) -> bool:
    return (folder / "meta").is_dir() and (folder / "arrays").is_dir()


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"path {str(path)!r} does not exist")
    if _complete(path):
        return path.absolute()
    latest = latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"path {str(path)!r} is neither a checkpoint nor a folder of step_XXXXXXXX checkpoints")
    return latest.absolute()


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _leaf_to_numpy(leaf, keys: dict, name: str):
    if jnp.issubdtype(jnp.asarray(leaf).dtype, jax.dtypes.prng_key):
        keys[name] = str(jax.random.key_impl(leaf))
        return np.asarray(jax.random.key_data(leaf))
    return np.asarray(leaf)


def _write(path: Path, step, params, opt_state, losses, final_losses, config, model_spec, seconds):
    import orbax.checkpoint as ocp

    path.parent.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    arrays: dict = {"losses": np.asarray(losses)}
    leaves_with_paths = jax.tree_util.tree_leaves_with_path(params)
    arrays["params"] = {f"{i:05d}": _leaf_to_numpy(a, keys, f"params/{i:05d}") for i, (_, a) in
                        enumerate(leaves_with_paths)}
    if opt_state is not None:
        arrays["opt_state"] = {f"{i:05d}": _leaf_to_numpy(a, keys, f"opt_state/{i:05d}") for i, a in
                               enumerate(jax.tree.leaves(opt_state))}
    if final_losses is not None:
        arrays["final_losses"] = np.asarray(final_losses)
    model = None
    if model_spec is not None:
        cls, args = model_spec
        model = {"class": cls, "init_args": [[k, v] for k, v in args]}
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "step": int(step),
        "config": _config_to_json(config),
        "model": model,
        "seconds": float(seconds),
        "has_opt_state": opt_state is not None,
        "params_paths": [jax.tree_util.keystr(p) for p, _ in leaves_with_paths],
        "params_shapes": [list(np.shape(a)) for _, a in leaves_with_paths],
        "key_leaves": keys,
        "x64": bool(jax.config.jax_enable_x64),
    }
    _checkpointer().save(path, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))


def _read(folder: Path) -> tuple[dict, dict]:
    import orbax.checkpoint as ocp

    out = _checkpointer().restore(folder, ocp.args.Composite(arrays=ocp.args.StandardRestore(),
                                                             meta=ocp.args.JsonRestore()))
    meta, arrays = out["meta"], out["arrays"]
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{str(folder)!r} is not an icl training checkpoint")
    if meta.get("version", 0) > _VERSION:
        raise ValueError(f"{str(folder)!r} has checkpoint format version {meta['version']}; this icl reads "
                         f"versions <= {_VERSION}")
    return meta, arrays


def _config_to_json(config: TrainConfig) -> dict:
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, Curriculum):
            value = dataclasses.asdict(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[f.name] = value
    return out


def _config_from_json(data: dict) -> TrainConfig:
    data = dict(data)
    if data.get("curriculum") is not None:
        data["curriculum"] = Curriculum(**data["curriculum"])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in data.items() if k in names})


def _tuplify(value):
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _build_model(meta: dict, model_fn):
    if model_fn is not None:
        return model_fn(nnx.Rngs(0))
    spec = meta.get("model")
    if spec is None:
        raise ValueError("this checkpoint's model did not record its constructor arguments (a user's own model "
                         "class); pass model_fn, the function that built it, to load_checkpoint")
    module_name, _, qualname = spec["class"].partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    kwargs = {k: _tuplify(v) for k, v in spec["init_args"]}
    return obj(**kwargs, rngs=nnx.Rngs(0))


def _unflatten(what: str, template, stored: dict, meta: dict, seeded: bool):
    """Rebuild a tree of ``template``'s structure from stored leaves (with a leading seed axis when ``seeded``)."""
    leaves, treedef = jax.tree.flatten(template)
    names = sorted(stored)
    if len(names) != len(leaves):
        raise ValueError(f"the checkpoint's {what} has {len(names)} arrays but the model built here has "
                         f"{len(leaves)}: pass the model_fn that trained it")
    x64 = bool(jax.config.jax_enable_x64)
    out = []
    for name, ref in zip(names, leaves):
        value = np.asarray(stored[name])
        impl = meta.get("key_leaves", {}).get(f"{what}/{name}")
        ref_shape = tuple(np.shape(ref))
        if seeded and value.shape[1:] != ref_shape and impl is None:
            raise ValueError(f"the checkpoint's {what} array {name} has shape {value.shape[1:]} per seed but the "
                             f"model built here has {ref_shape}: pass the model_fn that trained it")
        if value.dtype == np.float64 and not x64:
            raise ValueError("this checkpoint holds float64 arrays; load it with float64 enabled "
                             "(jax.experimental.enable_x64() or JAX_ENABLE_X64=1) to keep it bit for bit")
        out.append(jax.random.wrap_key_data(jnp.asarray(value), impl=impl) if impl else jnp.asarray(value))
    return jax.tree.unflatten(treedef, out)


class _Writer:
    """The checkpoints of one :func:`icl.train` run: ``folder/step_XXXXXXXX`` (private)."""

    def __init__(self, folder, graphdef, model_spec, config: TrainConfig):
        self.folder = Path(folder).absolute()
        self.graphdef = graphdef
        self.model_spec = model_spec
        self.config = config

    def existing(self) -> bool:
        return latest_checkpoint(self.folder) is not None

    def latest(self, params, config: TrainConfig):
        """The newest checkpoint as the engine's restart state, or None when there is none."""
        folder = latest_checkpoint(self.folder)
        if folder is None:
            return None
        meta, arrays = _read(folder)
        saved = _config_from_json(meta["config"])
        mismatched = [f.name for f in dataclasses.fields(TrainConfig)
                      if f.name != "progress_every" and getattr(saved, f.name) != getattr(config, f.name)]
        if mismatched:
            raise ValueError(f"cannot resume from {str(folder)!r}: its config differs in {mismatched} "
                             f"(saved {[getattr(saved, k) for k in mismatched]}, "
                             f"given {[getattr(config, k) for k in mismatched]})")
        if not meta.get("has_opt_state"):
            raise ValueError(f"cannot resume from {str(folder)!r}: it holds no optimiser state")
        template = jax.tree.map(lambda a: a[0], params)
        restored = _unflatten("params", template, arrays["params"], meta, seeded=True)
        abstract = jax.eval_shape(jax.vmap(make_optimizer(config).init), params)
        opt_state = _unflatten("opt_state", abstract, arrays["opt_state"], meta, seeded=False)
        final = arrays.get("final_losses")
        return {"params": restored, "opt_state": opt_state, "step": int(meta["step"]),
                "losses": np.asarray(arrays["losses"]), "final_losses": None if final is None else np.asarray(final)}

    def save(self, step, params, opt_state, losses, final, seconds):
        path = self.folder / f"step_{step:08d}"
        if path.exists():
            shutil.rmtree(path)
        _write(path, step, params, opt_state, losses, final, self.config, self.model_spec, seconds)
        steps = sorted(int(m[1]) for p in self.folder.iterdir() if (m := _STEP_DIR.match(p.name)))
        for old in steps[:-_KEEP]:
            shutil.rmtree(self.folder / f"step_{old:08d}", ignore_errors=True)
