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

from icl.training import (TrainConfig, TrainResult, _abstract_keys, _check_task, _compile_chunk_ahead, _first_chunk,
                          _model_spec, _run, _stack, _task_arg)

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
    model_names = _accepted_names(model_fn, skip=1)
    task_names = _accepted_names(task_fn)
    for key in grid:
        if key in _CONFIG_FIELDS:
            continue
        if model_names is None or task_names is None or key in model_names or key in task_names:
            continue
        raise ValueError(
            f"grid key {key!r} is neither a TrainConfig field nor a parameter of task_fn or model_fn "
            f"(TrainConfig fields: {sorted(_CONFIG_FIELDS)}; task_fn takes {sorted(task_names)}; model_fn takes "
            f"{sorted(model_names)} after rngs)"
        )


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
    loss_fn: Callable | None = None,
) -> SweepResult:
    """Train every point of ``grid`` (x ``config.num_seeds`` seeds), one compiled program per group.

    Args:
      model_fn: ``model_fn(rngs, **point)`` builds a model (it receives the point names it accepts).
      task_fn: ``task_fn(**point)`` builds the task; all tasks of a group must share a pytree structure.
      config: base :class:`~icl.training.TrainConfig`; grid names that are its fields override it.
      grid: ``{name: [values]}``, e.g. ``{"noise": [0, 0.5, 1], "lr": [1e-3, 1e-2]}``.
      devices: devices to shard the run axis over (default: all of ``jax.devices()``).
      loss_fn: optional custom loss (as in :func:`~icl.training.train`); default ``config.loss``.
    Returns:
      :class:`SweepResult`. Point ``p`` with seed index ``i`` uses the run key
      ``fold_in(key(seed_p), i)``, exactly as :func:`~icl.training.train` does for ``config.seed = seed_p``,
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
    for task, c in zip(tasks, configs):
        _check_task(task, c)
    structures = {jax.tree.structure(t) for t in tasks}
    if len(structures) != 1:
        raise ValueError("task_fn must return tasks with one pytree structure for points that share n/batch/steps")
    num_runs = len(points) * seeds
    num_devices = len(jax.devices() if devices is None else devices)
    padded = -(-num_runs // num_devices) * num_devices
    pad = [num_runs - 1] * (padded - num_runs)  # repeat the last run to fill every device; dropped below
    order = list(range(num_runs)) + pad
    stack = lambda items: _stack([items[j] for j in order])  # noqa: E731
    stack_tasks = lambda items: jax.tree.map(lambda *xs: jnp.stack(xs), *[items[j] for j in order])  # noqa: E731
    shared_task = len(points) == 1
    sharding = run_sharding(padded, devices)
    run_lrs = [c.lr for c in configs for _ in range(seeds)]
    lrs = jnp.asarray([run_lrs[j] for j in order])
    # compile the first training chunk while the runs initialise op by op below
    template = nnx.eval_shape(lambda: _call_with(model_fn, points[0], nnx.Rngs(0)))
    run_tasks = [task for task in tasks for _ in range(seeds)]
    _compile_chunk_ahead(nnx.graphdef(template), nnx.state(template), lrs, _abstract_keys(padded),
                         _task_arg(tasks[0]) if shared_task else jax.eval_shape(lambda: stack_tasks(run_tasks)),
                         not shared_task, configs[0], loss_fn, sharding, _first_chunk(configs[0], 0, False))
    graphdef = model_spec = None
    params, keys = [], []
    for p, c, task in zip(points, configs, tasks):
        for i in range(seeds):
            key = jax.random.fold_in(jax.random.key(c.seed), i)
            model = _call_with(model_fn, p, nnx.Rngs(params=jax.random.fold_in(key, 0)))
            graphdef, state = nnx.split(model)
            model_spec = _model_spec(model)
            params.append(state)
            keys.append(key)
    task_arg = tasks[0] if shared_task else stack_tasks(run_tasks)  # leaves may be Python floats
    out = _run(graphdef, stack(params), lrs, stack(keys), task_arg, not shared_task, configs[0], loss_fn, start=t0,
               sharding=sharding)
    seconds = time.perf_counter() - t0
    results = []
    for k, c in enumerate(configs):
        rows = slice(k * seeds, (k + 1) * seeds)
        take = lambda tree: jax.tree.map(lambda a: np.asarray(a)[rows], tree)  # noqa: E731
        results.append(TrainResult(graphdef, take(out["params"]), out["losses"][rows], c, seconds,
                                   opt_state=take(out["opt_state"]), step=c.steps,
                                   final_losses=out["final_losses"][rows], model_spec=model_spec))
    return results
