"""Sweeps: a grid over config fields trained as one compiled, vmapped program, sharded across devices.

A grid maps names to lists of values; its points are their Cartesian product. Names that are
:class:`~icl.training.TrainConfig` fields override the config (``lr`` and ``seed`` vary inside one
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

from icl.training import TrainConfig, TrainResult, mse_loss, run_training_grid

__all__ = ["sweep", "SweepResult", "grid_points", "run_sharding"]

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_STATIC_FIELDS = ("n", "batch", "steps", "schedule", "warmup", "optimizer", "progress_every")


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
    """One :class:`~icl.training.TrainResult` per grid point (``config.num_seeds`` seeds each).

    Attributes: points (the grid points, in order), results (their training results), seconds.
    """

    points: list[dict]
    results: list[TrainResult]
    seconds: float

    def __iter__(self):
        return iter(zip(self.points, self.results))

    def __len__(self) -> int:
        return len(self.points)


def _call_with(fn: Callable, point: dict, *args):
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **point)
    return fn(*args, **{k: v for k, v in point.items() if k in params})


def sweep(
    model_fn: Callable[..., nnx.Module],
    task_fn: Callable[..., object],
    config: TrainConfig,
    grid: Mapping[str, Sequence],
    devices: Sequence | None = None,
    loss_fn: Callable = mse_loss,
) -> SweepResult:
    """Train every point of ``grid`` (x ``config.num_seeds`` seeds), one compiled program per group.

    Args:
      model_fn: ``model_fn(rngs, **point)`` builds a model (it receives the point names it accepts).
      task_fn: ``task_fn(**point)`` builds the task; all tasks of a group must share a pytree structure.
      config: base :class:`~icl.training.TrainConfig`; grid names that are its fields override it.
      grid: ``{name: [values]}``, e.g. ``{"noise": [0, 0.5, 1], "lr": [1e-3, 1e-2]}``.
      devices: devices to shard the run axis over (default: all of ``jax.devices()``).
    Returns:
      :class:`SweepResult`. Point ``p`` with seed index ``i`` uses the run key
      ``fold_in(key(seed_p), i)``, exactly as :func:`~icl.training.train` does for ``config.seed = seed_p``,
      so a sweep point equals the matching single ``train`` call.
    """
    start = time.perf_counter()
    points = grid_points(grid)
    configs = [dataclasses.replace(config, **{k: v for k, v in p.items() if k in _CONFIG_FIELDS}) for p in points]
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(tuple(getattr(c, f) for f in _STATIC_FIELDS), []).append(i)
    results: list[TrainResult | None] = [None] * len(points)
    for members in groups.values():
        for i, result in zip(members, _train_group([points[i] for i in members], [configs[i] for i in members],
                                                  model_fn, task_fn, devices, loss_fn)):
            results[i] = result
    return SweepResult(points, results, time.perf_counter() - start)


def _train_group(points, configs, model_fn, task_fn, devices, loss_fn):
    t0 = time.perf_counter()
    seeds = configs[0].num_seeds
    tasks = [_call_with(task_fn, p) for p in points]
    structures = {jax.tree.structure(t) for t in tasks}
    if len(structures) != 1:
        raise ValueError("task_fn must return tasks with one pytree structure for points that share n/batch/steps")
    graphdef = None
    params, keys, lrs, run_tasks = [], [], [], []
    for p, c, task in zip(points, configs, tasks):
        for i in range(seeds):
            key = jax.random.fold_in(jax.random.key(c.seed), i)
            graphdef, state = nnx.split(_call_with(model_fn, p, nnx.Rngs(params=jax.random.fold_in(key, 0))))
            params.append(state)
            keys.append(key)
            lrs.append(c.lr)
            run_tasks.append(task)
    num_runs = len(params)
    num_devices = len(jax.devices() if devices is None else devices)
    padded = -(-num_runs // num_devices) * num_devices
    pad = [num_runs - 1] * (padded - num_runs)  # repeat the last run to fill every device; dropped below
    order = list(range(num_runs)) + pad
    stack = lambda items: jax.tree.map(lambda *xs: jnp.stack(xs), *[items[j] for j in order])  # noqa: E731
    shared_task = len(points) == 1
    task_arg = tasks[0] if shared_task else stack(run_tasks)
    stacked_params, losses = run_training_grid(
        graphdef, stack(params), jnp.asarray([lrs[j] for j in order]), jnp.stack([keys[j] for j in order]),
        task_arg, not shared_task, configs[0], loss_fn, start=t0, sharding=run_sharding(padded, devices),
    )
    seconds = time.perf_counter() - t0
    out = []
    for k, c in enumerate(configs):
        rows = slice(k * seeds, (k + 1) * seeds)
        point_params = jax.tree.map(lambda a: np.asarray(a)[rows], stacked_params)
        out.append(TrainResult(graphdef, point_params, losses[rows], c, seconds))
    return out
