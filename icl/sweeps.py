"""Sweeps: a grid over config fields trained as one compiled, vmapped program, sharded across devices.

A grid maps names to lists of values; its points are their Cartesian product. Names that are
[`TrainConfig`][icl.training.TrainConfig] fields override the config (``lr`` and ``seed`` vary inside one
program; ``n``, ``batch``, ``steps``, ``schedule``, ``warmup``, ``optimizer`` change shapes or the
compiled loop, so points that differ in them form separate groups). Every point's values are also
passed, by keyword, to ``task_fn`` and ``model_fn`` (each receives the names it accepts), so a task field
such as ``noise`` or a model field such as ``init_scale`` can be swept too. Within a group all runs (points
x seeds) train side by side under ``vmap``; with several devices the run axis is sharded over a 1-d
``jax.sharding.Mesh``, so the same code runs on one CPU, a multi-GPU machine or several hosts.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.protocol import mark_trained_length, model_spec
from icl.training import TrainConfig, TrainResult, run_engine, run_keys
from icl.training.engine import stack_trees

__all__ = ["sweep", "SweepResult", "grid_points", "run_sharding", "check_grid_keys"]

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
# Fields that change shapes or the compiled loop: points that differ in them train in separate groups.
_STATIC_FIELDS = tuple(sorted(_CONFIG_FIELDS - {"lr", "seed"}))


def grid_points(grid: Mapping[str, Sequence]) -> list[dict]:
    """The Cartesian product of a grid ``{name: [values]}`` as a list of point dicts (first name slowest)."""
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
            raise ValueError(f"grid[{name!r}] must be a non-empty list of values, got {values!r}")
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def run_sharding(num_runs: int, devices: Sequence | None = None):
    """A ``NamedSharding`` that splits a leading run axis over ``devices`` (all by default); ``None`` for one.

    The mesh is 1-d with axis ``"runs"``; ``num_runs`` must be a multiple of the device count (the
    sweep pads its runs to make it so). Under ``jax.distributed`` the global device list spans hosts.
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) <= 1:
        return None
    if num_runs % len(devices):
        raise ValueError(f"num_runs={num_runs} must be a multiple of the {len(devices)} devices")
    mesh = jax.sharding.Mesh(np.array(devices), ("runs",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs"))


@dataclass
class SweepResult:
    """One [`TrainResult`][icl.training.TrainResult] per grid point (``config.num_seeds`` seeds each).

    Attributes: points (the grid points, in order), results (their training results), seconds.
    """

    points: list[dict]
    results: list[TrainResult]
    seconds: float

    def __iter__(self):
        return iter(zip(self.points, self.results))

    def __len__(self) -> int:
        return len(self.points)


def _accepted_names(fn: Callable, skip: int = 0) -> set[str] | None:
    """Keyword names ``fn`` accepts (None: any, it takes ``**kwargs``); the first ``skip`` positionals excluded."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params[skip:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_grid_keys(grid: Mapping[str, Sequence], model_fn: Callable, task_fn: Callable) -> None:
    """Raise ValueError naming a grid key that is neither a TrainConfig field nor a parameter of the functions.

    A key that matches nothing would otherwise be ignored silently (two identical runs labelled
    differently).
    """
    model_names, task_names = _accepted_names(model_fn, skip=1), _accepted_names(task_fn)
    if model_names is None or task_names is None:  # a function taking **kwargs accepts every key
        return
    for key in grid:
        if key not in _CONFIG_FIELDS | model_names | task_names:
            raise ValueError(f"grid key {key!r} is neither a TrainConfig field nor a parameter of task_fn or model_fn "
                             f"(TrainConfig fields: {sorted(_CONFIG_FIELDS)}; task_fn takes {sorted(task_names)}; "
                             f"model_fn takes {sorted(model_names)} after rngs)")


def _call_with(fn: Callable, point: dict, *args):
    names = _accepted_names(fn, skip=len(args))
    return fn(*args, **{k: v for k, v in point.items() if names is None or k in names})


def sweep(model_fn: Callable[..., nnx.Module], task_fn: Callable[..., object], config: TrainConfig,
          grid: Mapping[str, Sequence], devices: Sequence | None = None,
          loss_fn: Callable | None = None, *, progress: bool = False,
          callback: Callable[[int, np.ndarray], object] | None = None) -> SweepResult:
    """Train every point of ``grid`` (x ``config.num_seeds`` seeds), one compiled program per group.

    Args:
      model_fn: ``model_fn(rngs, **point)`` builds a model (it receives the point names it accepts).
      task_fn: ``task_fn(**point)`` builds the task; all tasks of a group must share a pytree structure.
      config: base [`TrainConfig`][icl.training.TrainConfig]; grid names that are its fields override it.
      grid: ``{name: [values]}``, e.g. ``{"noise": [0, 0.5, 1], "lr": [1e-3, 1e-2]}``.
      devices: devices to shard the run axis over (default: all of ``jax.devices()``).
      loss_fn: optional custom loss (as in [`train`][icl.training.train]); default ``config.loss``.
      progress: a progress bar per group (see [`run_engine`][icl.training.run_engine]).
      callback: ``callback(step, losses)`` after every chunk of every group, ``losses [runs, chunk]`` with the
        group's runs in grid order, ``config.num_seeds`` seeds per point (as in [`train`][icl.training.train]).
    Returns:
      [`SweepResult`][icl.sweeps.SweepResult]. Point ``p`` with seed index ``i`` uses the run key
      ``fold_in(key(seed_p), i)``, exactly as [`train`][icl.training.train] does for ``config.seed = seed_p``,
      so a sweep point equals the matching single ``train`` call (up to float rounding: a program over more runs
      may vectorise differently).
    """
    start = time.perf_counter()
    points = grid_points(grid)
    check_grid_keys(grid, model_fn, task_fn)
    configs = [dataclasses.replace(config, **{k: v for k, v in p.items() if k in _CONFIG_FIELDS}) for p in points]
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(tuple(getattr(c, f) for f in _STATIC_FIELDS), []).append(i)
    results: dict[int, TrainResult] = {}
    for members in groups.values():
        results.update(zip(members, _train_group([points[i] for i in members], [configs[i] for i in members],
                                                 model_fn, task_fn, devices, loss_fn, progress, callback)))
    return SweepResult(points, [results[i] for i in range(len(points))], time.perf_counter() - start)


def _train_group(points, configs, model_fn, task_fn, devices, loss_fn, progress=False, callback=None):
    t0 = time.perf_counter()
    seeds = configs[0].num_seeds
    tasks = [_call_with(task_fn, p) for p in points]
    keys = jnp.concatenate([run_keys(c.seed, seeds) for c in configs])
    params, specs = [], []
    for k, p in enumerate(points):
        models = [_call_with(model_fn, p, nnx.Rngs(params=jax.random.fold_in(key, 0)))
                  for key in keys[k * seeds:(k + 1) * seeds]]
        graphdef = nnx.graphdef(mark_trained_length(models[0], configs[0].n))
        params += [nnx.state(m) for m in models]
        specs.append(model_spec(models[0]))
    num_runs = len(points) * seeds
    num_devices = len(jax.devices() if devices is None else devices)
    padded = -(-num_runs // num_devices) * num_devices
    order = list(range(num_runs)) + [num_runs - 1] * (padded - num_runs)  # fill every device; dropped below
    task = tasks[0] if len(points) == 1 else [tasks[j // seeds] for j in order]
    start = TrainResult(graphdef, stack_trees([params[j] for j in order]), np.zeros((padded, 0)), configs[0], step=0,
                        seconds=time.perf_counter() - t0)
    lrs = jnp.asarray([configs[j // seeds].lr for j in order])
    report = None if callback is None else (lambda step, losses: callback(step, np.asarray(losses)[:num_runs]))
    out = run_engine(start, task, keys[np.asarray(order)], lrs, loss_fn=loss_fn, sharding=run_sharding(padded, devices),
                     progress=progress, callback=report)
    take = lambda tree, k: jax.tree.map(lambda a: np.asarray(a)[k * seeds:(k + 1) * seeds], tree)  # noqa: E731
    return [TrainResult(graphdef, take(out.params, k), take(out.losses, k), c, out.seconds,
                        opt_state=take(out.opt_state, k), step=c.steps, final_losses=take(out.final_losses, k),
                        model_spec=specs[k]) for k, c in enumerate(configs)]
