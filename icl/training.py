"""Training linear transformers on in-context tasks with Optax: one jitted program, vmapped over seeds.

Every step draws fresh prompts from ``task.sample(key(seed, run, step), batch, n)``: the data are a pure
function of (seed, run, step). The steps run inside ``lax.scan``; seeds run side by side under
``jax.vmap``. Steps are grouped into chunks only to report progress and to stop on divergence.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from icl.tasks import Prompts, Task, check_positive_int

__all__ = ["TrainConfig", "TrainResult", "TrainingDivergedError", "train", "make_optimizer", "mse_loss", "run_training_grid", "init_runs"]


class TrainingDivergedError(RuntimeError):
    """Raised when the training loss becomes NaN or inf; the message names the step and last finite loss."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
      steps: optimiser steps (>= 1); batch: prompts per step (>= 1); n: context length (>= 1).
      lr: peak learning rate (> 0). schedule: ``"cosine"`` (warm-up then cosine decay to 0) or
        ``"constant"``. warmup: linear warm-up steps (>= 0). optimizer: ``"adam"`` or ``"sgd"``.
      num_seeds: independent runs trained at once under vmap (>= 1). seed: base seed.
      progress_every: print progress to stderr every this many steps (0: silent).
    """

    steps: int = 2000
    batch: int = 1024
    n: int = 20
    lr: float = 1e-2
    schedule: str = "cosine"
    warmup: int = 0
    optimizer: str = "adam"
    num_seeds: int = 1
    seed: int = 0
    progress_every: int = 0

    def __post_init__(self):
        for name in ("steps", "batch", "n", "num_seeds"):
            check_positive_int(name, getattr(self, name))
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not (isinstance(self.warmup, (int, np.integer)) and 0 <= self.warmup < self.steps):
            raise ValueError(f"warmup must be an integer in [0, steps), got {self.warmup!r}")
        if not (isinstance(self.progress_every, (int, np.integer)) and self.progress_every >= 0):
            raise ValueError(f"progress_every must be an integer >= 0, got {self.progress_every!r}")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The Optax optimiser of a config: Adam (or SGD) on a cosine-with-warm-up or constant schedule.

    Written as ``chain(scale_by_adam, scale_by_schedule(shape), scale(-lr))`` where ``shape`` is the
    schedule normalised to peak 1, so the learning rate can also be a traced per-run value (sweeps).
    """
    return _transform(config.optimizer, config.schedule, config.warmup, config.steps, config.lr)


def _schedule_shape(schedule: str, warmup: int, steps: int):
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else 1.0, peak_value=1.0, warmup_steps=warmup, decay_steps=steps, end_value=0.0
        )
    return optax.constant_schedule(1.0)


def _transform(name: str, schedule: str, warmup: int, steps: int, lr) -> optax.GradientTransformation:
    parts = [optax.scale_by_adam()] if name == "adam" else []
    return optax.chain(*parts, optax.scale_by_schedule(_schedule_shape(schedule, warmup, steps)), optax.scale(-lr))


def mse_loss(model: Callable[[Prompts], jax.Array], prompts: Prompts) -> jax.Array:
    """Mean squared error ``mean_b (y_hat_b - y_query_b)^2`` (the loss of THEORY.md §1)."""
    return jnp.mean((model(prompts) - prompts.y_query) ** 2)


@dataclass
class TrainResult:
    """Trained parameters of every seed and the loss history.

    Attributes:
      graphdef: the NNX graph definition shared by all seeds.
      params: the parameter ``nnx.State`` with a leading seed axis ``[num_seeds, ...]``.
      losses: training loss per seed and step, ``[num_seeds, steps]`` (numpy).
      config: the :class:`TrainConfig` used. seconds: wall time of the run (compilation included).
    """

    graphdef: nnx.GraphDef
    params: nnx.State
    losses: np.ndarray
    config: TrainConfig
    seconds: float = field(default=0.0)

    @property
    def num_seeds(self) -> int:
        return self.losses.shape[0]

    def seed_params(self, i: int) -> nnx.State:
        """Parameters of seed ``i`` (no seed axis)."""
        return jax.tree.map(lambda a: a[i], self.params)

    def model(self, i: int = 0) -> nnx.Module:
        """The trained model of seed ``i`` as an NNX module (a predictor: call it on prompts)."""
        return nnx.merge(self.graphdef, self.seed_params(i))


def train(
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    task: Task,
    config: TrainConfig,
    loss_fn: Callable = mse_loss,
) -> TrainResult:
    """Train ``config.num_seeds`` models at once on fresh prompts from ``task``.

    Args:
      model_fn: builds a model from ``nnx.Rngs``, e.g. ``lambda r: LinearTransformer(d, 1, rngs=r)``.
      task: any :class:`~icl.tasks.Task`; sampled with ``config.batch`` prompts of length ``config.n``.
      config: :class:`TrainConfig`.
      loss_fn: ``loss_fn(model, prompts) -> scalar``; MSE by default.
    Returns:
      :class:`TrainResult` with per-seed parameters and losses ``[num_seeds, steps]``.
    Raises:
      TrainingDivergedError: the loss became NaN or inf (names the step and the last finite loss).
    """
    start = time.perf_counter()
    graphdef, run_keys, params = init_runs(model_fn, config)
    lrs = jnp.full((config.num_seeds,), config.lr)
    params, losses = run_training_grid(graphdef, params, lrs, run_keys, task, False, config, loss_fn, start=start)
    return TrainResult(graphdef, params, losses, config, time.perf_counter() - start)


def init_runs(model_fn: Callable[[nnx.Rngs], nnx.Module], config: TrainConfig):
    """Run keys and initial parameters of :func:`train`'s seeds: ``(graphdef, run_keys, params)``.

    Seed ``i`` has run key ``fold_in(key(config.seed), i)``; its parameters come from
    ``fold_in(run_key, 0)`` and its data from ``fold_in(run_key, 1)`` (see :func:`run_training_grid`).
    """
    graphdef, _ = nnx.split(model_fn(nnx.Rngs(0)))
    run_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), i))(jnp.arange(config.num_seeds))
    params = jax.vmap(lambda k: nnx.split(model_fn(nnx.Rngs(params=jax.random.fold_in(k, 0))))[1])(run_keys)
    return graphdef, run_keys, params


def run_training_grid(graphdef, params, lrs, run_keys, task, task_batched: bool, config: TrainConfig,
                      loss_fn: Callable = mse_loss, start: float | None = None, sharding=None,
                      chunk_steps: int = 0, on_chunk: Callable | None = None):
    """The engine behind :func:`train` and :func:`icl.sweeps.sweep`: train ``P`` runs side by side.

    Run ``p`` starts from ``params[p]`` with peak learning rate ``lrs[p]`` and trains on
    ``task.sample(split(fold_in(run_keys[p], 1), steps)[t], batch, n)`` at step ``t`` (a pure function
    of the run key and the step). ``task`` is shared, or batched along a leading axis when
    ``task_batched``. With ``sharding`` (a ``NamedSharding`` over the run axis) every per-run input is
    placed on it, so ``jit`` splits the runs across devices. Steps run in chunks of ``chunk_steps``
    (default ``config.progress_every``, else all at once); ``on_chunk(steps_done, params)`` is called
    after each chunk (e.g. to keep snapshots). Returns ``(params, losses [P, steps])``.
    """
    start = time.perf_counter() if start is None else start
    optimizer = make_optimizer(config)
    opt_state = jax.vmap(optimizer.init)(params)
    # The keys are split eagerly, outside the compiled loop (one PRNG call site less to compile).
    step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 1), config.steps))(run_keys)
    task_arg = task if _is_pytree(task) else _Opaque(task)
    if sharding is not None:
        params, opt_state, step_keys, lrs = jax.device_put((params, opt_state, step_keys, lrs), sharding)
        if task_batched:
            task_arg = jax.device_put(task_arg, sharding)
    static = dict(graphdef=graphdef, loss_fn=loss_fn, batch=config.batch, n=config.n, task_batched=task_batched,
                  transform=(config.optimizer, config.schedule, config.warmup, config.steps))
    chunk = chunk_steps or config.progress_every or config.steps
    history = []
    done = 0
    while done < config.steps:
        length = min(chunk, config.steps - done)
        params, opt_state, losses = _train_chunk(params, opt_state, step_keys[:, done : done + length], lrs, task_arg,
                                                 **static)
        losses = np.asarray(losses)
        history.append(losses)
        if not np.all(np.isfinite(losses)):
            _raise_divergence(np.concatenate(history, axis=1))
        done += length
        if on_chunk is not None:
            on_chunk(done, params)
        if config.progress_every:
            print(
                f"[train] step {done}/{config.steps}  loss {losses[:, -1].mean():.5g} (mean of {losses.shape[0]} runs)"
                f"  {time.perf_counter() - start:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    return params, np.concatenate(history, axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "transform", "loss_fn", "batch", "n", "task_batched"))
def _train_chunk(params, opt_state, keys, lrs, task, *, graphdef, transform, loss_fn, batch, n, task_batched):
    """``keys.shape[1]`` steps of every run: ``vmap`` over runs of a ``lax.scan`` over steps.

    Module-level and keyed on static structure only, so tasks that differ in their numbers (noise,
    covariances; a task is a pytree) and runs that differ in seed or learning rate share one program.
    """
    if isinstance(task, _Opaque):
        task = task.obj

    def per_run(p, o, k, lr, run_task):
        optimizer = _transform(*transform, lr)

        def one_step(carry, step_key):
            q, s = carry
            prompts = run_task.sample(step_key, batch, n)
            loss, grads = jax.value_and_grad(lambda v: loss_fn(nnx.merge(graphdef, v), prompts))(q)
            updates, s = optimizer.update(grads, s, q)
            return (optax.apply_updates(q, updates), s), loss

        (p, o), losses = jax.lax.scan(one_step, (p, o), k)
        return p, o, losses

    return jax.vmap(per_run, in_axes=(0, 0, 0, 0, 0 if task_batched else None))(params, opt_state, keys, lrs, task)


def _is_pytree(obj) -> bool:
    """True when ``obj`` flattens into array leaves (a registered pytree), not into itself."""
    leaves = jax.tree.leaves(obj)
    return not (len(leaves) == 1 and leaves[0] is obj)


@jax.tree_util.register_pytree_node_class
class _Opaque:
    """Carries a non-pytree task through ``jit`` as static data (hashed by identity)."""

    def __init__(self, obj):
        self.obj = obj

    def tree_flatten(self):
        return (), self.obj

    @classmethod
    def tree_unflatten(cls, obj, _):
        return cls(obj)


def _raise_divergence(losses: np.ndarray):
    bad = ~np.isfinite(losses)
    step = int(np.argmax(bad.any(axis=0)))
    seed = int(np.argmax(bad[:, step]))
    finite = losses[seed, :step]
    last = f"{finite[-1]:.6g} at step {step - 1}" if finite.size else "none (diverged at the first step)"
    raise TrainingDivergedError(
        f"training diverged at step {step} (seed index {seed}): loss became {losses[seed, step]}; "
        f"last finite loss {last}. Lower the learning rate (lr) or the init scale."
    )
