"""The training engine: ONE compiled program (jit + scan over steps + vmap over runs), and [`train`][icl.training.train].

Every step draws fresh prompts from ``task.sample(split(fold_in(run_key, 1), steps)[t], batch, n)``: the
data are a pure function of (seed, run, step), so a run resumed from a checkpoint equals an uninterrupted
one bit for bit. The steps run inside ``lax.scan``; runs (seeds, sweep points) run side by side under
``jax.vmap`` with their learning rates traced, so one compiled program serves every seed, learning rate
and noise level (tasks are pytrees). Steps are grouped into chunks only to report progress, keep
snapshots, write checkpoints and stop on divergence.

[`run_engine`][icl.training.run_engine] is the engine (a [`TrainResult`][icl.training.TrainResult] in, the trained [`TrainResult`][icl.training.TrainResult] out);
[`train`][icl.training.train] and [`icl.sweeps.sweep`][icl.sweeps.sweep] build its starting runs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from icl import compiler
from icl.progress import progress_bar
from icl.protocol import mark_trained_length, model_spec
from icl.pytree import Static, is_pytree
from icl.tasks import Task
from icl.tasks.base import check_int
from icl.training.config import TrainConfig, make_optimizer
from icl.training.losses import check_task, objective

__all__ = ["TrainResult", "Snapshots", "TrainingDivergedError", "run_engine", "run_keys", "stack_trees", "train",
           "train_with_snapshots"]


class TrainingDivergedError(RuntimeError):
    """Raised when the training loss or the parameters become NaN or inf; the message names the step."""


def _index(name: str, i, size: int, what: str) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -size <= i < size:
        raise ValueError(f"{name}={i!r} is out of range: the result has {what}={size}")
    return int(i)


@dataclass
class Snapshots:
    """Parameters saved during training (``train(..., snapshot_every=K)``).

    Attributes:
      steps: ``[K + 1]`` optimiser steps taken at each snapshot (``steps[0]``: the start, 0 unless resumed).
      params: ``nnx.State`` with leading axes ``[K + 1, num_seeds, ...]``.
      graphdef: the shared NNX graph definition.
    """

    steps: np.ndarray
    params: nnx.State
    graphdef: nnx.GraphDef

    def model(self, k: int, seed: int = 0) -> nnx.Module:
        """The model of snapshot ``k`` and seed ``seed`` (a predictor)."""
        k = _index("k", k, len(self.steps), "snapshots")
        seed = _index("seed", seed, jax.tree.leaves(self.params)[0].shape[1], "num_seeds")
        return nnx.merge(self.graphdef, jax.tree.map(lambda a: a[k, seed], self.params))


@dataclass
class TrainResult:
    """Trained parameters of every seed and the loss history (also the state [`run_engine`][icl.training.run_engine] continues).

    Attributes:
      graphdef: the NNX graph definition shared by all seeds.
      params: the parameter ``nnx.State`` with a leading seed axis ``[num_seeds, ...]``.
      losses: training loss per seed and step, ``[num_seeds, step]`` (numpy).
      config: the [`TrainConfig`][icl.training.TrainConfig] used. seconds: wall time of the run (compilation included).
      opt_state: the optimiser state (leading seed axis), for checkpoints and resuming.
      step: optimiser steps taken (``config.steps`` for a finished run; less for a mid-run checkpoint).
      final_losses: ``[num_seeds]`` loss of the final parameters on a fresh batch (after the last step).
      snapshots: [`Snapshots`][icl.training.Snapshots] when trained with ``snapshot_every``.
      model_spec: [`icl.protocol.model_spec`][icl.protocol.model_spec] of the model (recorded by checkpoints), or None.
    """

    graphdef: nnx.GraphDef
    params: nnx.State
    losses: np.ndarray
    config: TrainConfig
    seconds: float = field(default=0.0)
    opt_state: object = field(default=None, repr=False)
    step: int | None = None
    final_losses: np.ndarray | None = None
    snapshots: Snapshots | None = field(default=None, repr=False)
    model_spec: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.step is None:
            self.step = int(np.shape(self.losses)[1]) if np.ndim(self.losses) == 2 else self.config.steps

    @property
    def num_seeds(self) -> int:
        return self.losses.shape[0]

    def seed_params(self, i: int) -> nnx.State:
        """Parameters of seed ``i`` (no seed axis); ValueError unless ``-num_seeds <= i < num_seeds``."""
        i = _index("i", i, self.num_seeds, "num_seeds")
        return jax.tree.map(lambda a: a[i], self.params)

    def model(self, i: int = 0) -> nnx.Module:
        """The trained model of seed ``i`` as an NNX module (a predictor: call it on prompts)."""
        return nnx.merge(self.graphdef, self.seed_params(i))


def run_keys(seed: int, num_runs: int) -> jax.Array:
    """Run ``i``'s key ``fold_in(key(seed), i)``: its parameters come from ``fold_in(key_i, 0)``, its
    prompts from ``fold_in(key_i, 1)`` and its final-loss batch from ``fold_in(key_i, 2)``."""
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(num_runs))


def stack_trees(trees: list):
    """Stack pytrees leaf by leaf along a new leading axis, through numpy: eagerly, ``jnp.stack`` compiles a
    program for every leaf shape and count. PRNG key leaves, which numpy cannot hold, use ``jnp.stack``."""

    def stack(*xs):
        if jax.dtypes.issubdtype(jnp.result_type(xs[0]), jax.dtypes.prng_key):
            return jnp.stack(xs)
        return jnp.asarray(np.stack([np.asarray(x) for x in xs]))

    return jax.tree.map(stack, *trees)


def train(
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    task: Task,
    config: TrainConfig,
    loss_fn: Callable | None = None,
    *,
    checkpoint=None,
    snapshot_every: int = 0,
    progress: bool = False,
    callback: Callable[[int, np.ndarray], object] | None = None,
) -> TrainResult:
    """Train ``config.num_seeds`` models at once on fresh prompts from ``task``.

    Args:
      model_fn: builds a model from ``nnx.Rngs``, e.g. ``lambda r: icl.LinearTransformer(d, 1, rngs=r)``;
        seed ``i``'s model is ``model_fn(nnx.Rngs(params=fold_in(run_keys(seed, num_seeds)[i], 0)))``.
      task: any task (a pytree, so noise levels share one compiled program); sampled with
        ``config.batch`` prompts of length ``config.n`` at every step.
      config: [`TrainConfig`][icl.training.TrainConfig] (its ``loss`` chooses the objective, ``icl.training.losses``).
      loss_fn: optional custom ``loss_fn(model, prompts) -> scalar`` that replaces ``config.loss``; a loss with a
        parameter named ``step`` is called as ``loss_fn(model, prompts, step=step)`` with the training step (a
        traced integer, ``0 .. config.steps - 1``), for losses that change over training.
      checkpoint: a checkpoint writer such as ``icl.CheckpointDir(folder, resume=True)``: an object with
        ``open(start, task) -> TrainResult`` (the runs to continue: ``start`` itself, or the state it
        restores) and ``save(result)``, called every ``config.checkpoint_every`` steps and at the end.
      snapshot_every: keep the parameters every this many steps (and at the start and the end) in
        ``result.snapshots``.
      progress: show a progress bar on stderr (tqdm; a widget in a notebook) with the mean loss of the runs,
        moved between chunks of steps (see [`run_engine`][icl.training.run_engine]).
      callback: ``callback(step, losses)`` after every chunk of steps, with ``losses [num_seeds, chunk]`` the
        training losses of the chunk that ends at ``step`` (e.g. a run logger's ``training(stage)``, see
        [`icl.runlog`][icl.runlog]); called from Python between compiled chunks.
    Returns:
      [`TrainResult`][icl.training.TrainResult] with per-seed parameters, losses ``[num_seeds, steps]`` and ``final_losses``.
    Raises:
      ValueError: a model output of the wrong shape (named), a loss the model cannot serve, a curriculum
        on a task without ``w``.
      TrainingDivergedError: a loss or the parameters became NaN or inf (names the step), including at
        the last step (the loss of the final parameters on a fresh batch is checked too).
    """
    t0 = time.perf_counter()
    model = mark_trained_length(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))), config.n)  # structure only
    keys = run_keys(config.seed, config.num_seeds)
    # Op by op, not one jitted program: with a jitted initialiser a checkpointed and resumed run differed from
    # an uninterrupted one by about 1e-9 (tests/test_one_step_gd_experiment.py); the cause was not found.
    params = jax.vmap(lambda k: nnx.split(model_fn(nnx.Rngs(params=jax.random.fold_in(k, 0))))[1])(keys)
    start = TrainResult(nnx.graphdef(model), params, np.zeros((config.num_seeds, 0)), config, step=0,
                        model_spec=model_spec(model))
    if checkpoint is not None:
        start = checkpoint.open(start, task)
    start = dataclasses.replace(start, seconds=time.perf_counter() - t0)
    return run_engine(start, task, keys, loss_fn=loss_fn, snapshot_every=snapshot_every,
                      save=None if checkpoint is None else checkpoint.save, progress=progress, callback=callback)


def train_with_snapshots(
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    task: Task,
    config: TrainConfig,
    every: int,
    loss_fn: Callable | None = None,
    *,
    progress: bool = False,
) -> tuple[TrainResult, Snapshots]:
    """``train(..., snapshot_every=every)`` returning ``(result, result.snapshots)``."""
    result = train(model_fn, task, config, loss_fn, snapshot_every=check_int("every", every, 1), progress=progress)
    return result, result.snapshots


def run_engine(start: TrainResult, task, keys: jax.Array, lrs=None, *, loss_fn: Callable | None = None,
               sharding=None, snapshot_every: int = 0, save: Callable[[TrainResult], object] | None = None,
               progress: bool = False, callback: Callable[[int, np.ndarray], object] | None = None
               ) -> TrainResult:
    """Train ``P`` runs side by side from ``start.step`` to ``start.config.steps``: the training engine.

    Run ``p`` continues from ``start.params[p]`` and ``start.opt_state[p]`` (``None``: a fresh optimiser
    state) with peak learning rate ``lrs[p]`` (default ``config.lr``), and trains at step ``t`` on
    ``task.sample(split(fold_in(keys[p], 1), steps)[t], batch, n)``; after the last step the loss of its
    parameters is measured on a fresh batch from ``fold_in(fold_in(keys[p], 2), steps)``.

    Args:
      start: the runs' state (``graphdef``, ``params [P, ...]``, ``opt_state``, ``step``, ``losses
        [P, step]``, ``config``; [`train`][icl.training.train] builds one, a checkpoint restores one).
      task: one task for every run, or a sequence of ``P`` tasks with one pytree structure.
      keys: ``[P]`` run keys ([`run_keys`][icl.training.run_keys]). lrs: ``[P]`` peak learning rates.
      loss_fn: a custom ``loss_fn(model, prompts)`` (or ``loss_fn(model, prompts, step)``) instead of ``config.loss``.
      sharding: a sharding of the leading run axis ([`icl.sweeps.run_sharding`][icl.sweeps.run_sharding]), or None.
      snapshot_every: keep the parameters every this many steps in ``result.snapshots``.
      save: called with the [`TrainResult`][icl.training.TrainResult] so far every ``config.checkpoint_every`` steps and at the end.
      progress: show a progress bar on stderr, moved from Python after each chunk of steps (never from inside
        the compiled program). The chunks are those of ``config.progress_every``, ``snapshot_every`` and
        checkpoints; with none of these, about 20 chunks. Chunking changes no result.
      callback: ``callback(step, losses)`` after every chunk (the same chunks as ``progress``), with
        ``losses [P, chunk]`` the chunk's training losses, ending at ``step``.
    Returns:
      The trained [`TrainResult`][icl.training.TrainResult] (``losses [P, steps]``, ``final_losses [P]``, ``seconds`` added to
      ``start.seconds``).
    """
    t0 = time.perf_counter()
    config, graphdef, done = start.config, start.graphdef, start.step
    snapshot_every = check_int("snapshot_every", snapshot_every, 0)
    lrs = jnp.full((keys.shape[0],), config.lr) if lrs is None else jnp.asarray(lrs)
    batched = isinstance(task, (list, tuple))
    for t in {id(t): t for t in (task if batched else [task])}.values():
        check_task(t, config, loss_fn)
    if batched:
        if len({jax.tree.structure(t) for t in task}) != 1:
            raise ValueError("the runs' tasks must share one pytree structure")
        task = jax.tree.map(lambda *xs: jnp.stack(xs), *task)  # leaves may be Python floats
    static_task = None if batched or is_pytree(task) else Static(task)
    task = None if static_task is not None else task
    program = dataclasses.replace(config, lr=1.0, seed=0, num_seeds=1, progress_every=0, checkpoint_every=0)
    fresh, step_keys, end_keys = _prepare(start.params, lrs, keys, config=program)
    params, opt_state = start.params, fresh if start.opt_state is None else start.opt_state
    if sharding is not None:
        params, opt_state, step_keys, lrs, end_keys = jax.device_put((params, opt_state, step_keys, lrs, end_keys),
                                                                     sharding)
        task = jax.device_put(task, sharding) if batched else task
    statics = dict(graphdef=graphdef, config=program, loss_fn=loss_fn, static_task=static_task, batched=batched)
    intervals = (config.progress_every, snapshot_every, config.checkpoint_every if save is not None else 0)
    chunking = progress or callback is not None
    chunk = math.gcd(*intervals) or (_progress_chunk(config.steps) if chunking else config.steps)  # fixed on resume
    history = [np.asarray(start.losses)] if done else []
    snaps, final = [(done, params)] if snapshot_every else [], start.final_losses
    result = start
    with progress_bar(progress, config.steps, "train", unit="step", initial=done) as bar:
        while done < config.steps:
            end = min(done + chunk - done % chunk, config.steps)
            saving = save is not None and (end == config.steps or bool(config.checkpoint_every)
                                           and end % config.checkpoint_every == 0)
            measure = end == config.steps or saving  # a checkpoint stores the final loss of its parameters
            params, opt_state, losses, ok, measured = _train_chunk(
                params, opt_state, step_keys[:, done:end], np.arange(done, end, dtype=_step_dtype()), lrs, end_keys,
                task, np.bool_(measure), **statics)
            history.append(np.asarray(losses))
            bar.set_postfix_str(f"loss {history[-1][:, -1].mean():.4g}", refresh=False)
            bar.update(end - done)
            if callback is not None:
                callback(end, history[-1])
            done, final = end, np.asarray(measured) if measure else final
            _check_finite(np.concatenate(history, axis=1), np.asarray(ok), np.asarray(measured), done)
            if snapshot_every and (done % snapshot_every == 0 or done == config.steps):
                snaps.append((done, params))
            result = dataclasses.replace(start, params=params, opt_state=opt_state, step=done, final_losses=final,
                                         losses=np.concatenate(history, axis=1),
                                         seconds=start.seconds + time.perf_counter() - t0)
            if saving:
                save(result)
            if config.progress_every and (done % config.progress_every == 0 or done == config.steps):
                bar.write(f"[train] step {done}/{config.steps}  loss {history[-1][:, -1].mean():.5g} (mean of "
                          f"{history[-1].shape[0]} runs)  {result.seconds:.1f}s", file=sys.stderr)
    snapshots = Snapshots(np.asarray([s for s, _ in snaps]), stack_trees([p for _, p in snaps]), graphdef) \
        if snapshot_every else None
    return dataclasses.replace(result, snapshots=snapshots, seconds=start.seconds + time.perf_counter() - t0)


def _progress_chunk(steps: int) -> int:
    """Steps per chunk of a progress bar that has no other chunking to follow: a divisor of ``steps`` giving 10
    to 100 chunks (20 or more where one exists), so that every chunk runs one compiled program; when ``steps``
    has no such divisor, ``ceil(steps / 20)`` (the last, shorter chunk compiles once more)."""
    for parts in (*range(20, 101), *range(19, 9, -1)):
        if steps % parts == 0:
            return steps // parts
    return max(1, -(-steps // 20))


def _step_dtype():
    return jax.dtypes.canonicalize_dtype(np.int64)


@compiler.jit(static_argnames=("config",))
def _prepare(params, lrs, keys, *, config):
    """Every run's initial optimiser state and its step and end-of-chunk keys, as one compiled program
    (op-by-op, the key splits and the optimiser's init compiled ~15 tiny programs at ~40 ms each)."""
    opt_state = jax.vmap(lambda p, lr: make_optimizer(config, lr).init(p))(params, lrs)
    step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 1), config.steps))(keys)
    end_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
    return opt_state, step_keys, end_keys


@compiler.jit(static_argnames=("graphdef", "config", "loss_fn", "static_task", "batched"))
def _train_chunk(params, opt_state, keys, steps, lrs, end_keys, task, measure_final, *, graphdef, config, loss_fn,
                 static_task, batched):
    """``keys.shape[1]`` steps of every run: ``vmap`` over runs of a ``lax.scan`` over steps.

    Keyed on static structure only (``config`` with its learning rate and seed normalised away), so tasks
    that differ in their numbers and runs that differ in seed or learning rate share one program. After the
    scan, when ``measure_final`` (a traced flag: the last chunk, or one that ends at a checkpoint), the same
    program measures the loss of the new parameters on a fresh batch (drawn from ``fold_in(end_key,
    end_step)``; a forward pass), so divergence at the last step is caught without a second compiled
    program; other chunks skip it (``lax.cond``) and return 0. Returns the new parameters and optimiser
    state, the losses ``[P, length]``, whether every parameter is finite ``[P]``, and that final loss ``[P]``.
    """
    end_step = steps[-1] + 1

    def per_run(p, o, k, lr, end_key, run_task):
        optimizer = make_optimizer(config, lr)
        run_task = static_task.value if static_task is not None else run_task

        def loss_at(v, step_key, step):
            prompts = run_task.sample(step_key, config.batch, config.n)
            return objective(config, loss_fn, nnx.merge(graphdef, v), prompts, step)

        def one_step(carry, xs):
            q, s = carry
            loss, grads = jax.value_and_grad(loss_at)(q, *xs)
            updates, s = optimizer.update(grads, s, q)
            return (optax.apply_updates(q, updates), s), loss

        (p, o), losses = jax.lax.scan(one_step, (p, o), (k, steps))
        final = jax.lax.cond(measure_final, lambda: loss_at(p, jax.random.fold_in(end_key, end_step), end_step),
                             lambda: jnp.zeros((), losses.dtype))
        finite = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(p) if jnp.issubdtype(a.dtype, jnp.inexact)]
        return p, o, losses, jnp.all(jnp.stack(finite)) if finite else jnp.asarray(True), final

    args = (params, opt_state, keys, lrs, end_keys, task)
    in_axes = (0, 0, 0, 0, 0, 0 if batched else None)
    if keys.shape[0] == 1:
        # One run: call it directly on the squeezed arguments. XLA:CPU runs a vmap over an axis of size 1
        # several times slower than the unbatched program (measured 5.5x for the 3-layer model at
        # d=5, n=20, batch 20000; a vmap over 2 runs costs 1.8x one unbatched run, not 11x).
        squeezed = [x if axis is None else jax.tree.map(lambda a: a[0], x) for x, axis in zip(args, in_axes)]
        return jax.tree.map(lambda a: a[None], per_run(*squeezed))
    return jax.vmap(per_run, in_axes=in_axes)(*args)


def _check_finite(losses: np.ndarray, params_ok: np.ndarray, final: np.ndarray, done: int):
    """Raise [`TrainingDivergedError`][icl.training.TrainingDivergedError] naming the step where a loss, a parameter or the final loss broke."""
    bad = ~np.isfinite(losses)
    if bad.any():
        step = int(np.argmax(bad.any(axis=0)))
        seed = int(np.argmax(bad[:, step]))
        finite = losses[seed, :step]
        last = f"{finite[-1]:.6g} at step {step - 1}" if finite.size else "none (diverged at the first step)"
        raise TrainingDivergedError(
            f"training diverged at step {step} (seed index {seed}): loss became {losses[seed, step]}; "
            f"last finite loss {last}. Lower the learning rate (lr), set grad_clip, or lower the init scale.")
    last, seed = done - 1, int(np.argmin(params_ok))
    if not params_ok.all():
        what = "the parameters after that step are NaN or inf ("
    elif not np.isfinite(final).all():
        seed = int(np.argmax(~np.isfinite(final)))
        what = f"the loss of the parameters after that step is {final[seed]} on a fresh batch ("
    else:
        return
    raise TrainingDivergedError(f"training diverged at step {last} (seed index {seed}): {what}last finite loss "
                                f"{losses[seed, last]:.6g} at step {last}). Lower the learning rate (lr) or set "
                                f"grad_clip.")
