"""Training models on in-context tasks with Optax: ONE engine (jit + scan over steps + vmap over runs).

Every step draws fresh prompts from ``task.sample(split(fold_in(run_key, 1), steps)[t], batch, n)``: the
data are a pure function of (seed, run, step), so a run resumed from a checkpoint equals an uninterrupted
one bit for bit. The steps run inside ``lax.scan``; runs (seeds, sweep points) run side by side under
``jax.vmap`` with their learning rates traced, so one compiled program serves every seed, learning rate
and noise level (tasks are pytrees). Steps are grouped into chunks only to report progress, keep
snapshots, write checkpoints and stop on divergence.

Public entry points: :func:`train` (with ``snapshot_every=``, ``checkpoint_dir=`` and ``resume=``
options), :func:`train_with_snapshots` (a thin wrapper), :func:`icl.sweeps.sweep` (grids over the same
engine), and :func:`convergence_report` (is the loss still falling? do the seeds agree?).

Losses (``TrainConfig.loss``, docs/theory.md §1):

- ``"query"``: ``mean_b (y_hat_b - y_query_b)^2`` (a model returning ``[batch]``).
- ``"every_prefix"``: ``mean_{b,k} (prefix_{b,k} - y_{b,k})^2`` over ``model.prefix(prompts) [batch, n]``
  (Garg et al. 2022: entry ``k`` predicts ``y_k`` from the first ``k - 1`` pairs).
- ``"nll"``: Gaussian negative log-likelihood ``0.5 log(2 pi v) + (y - mu)^2 / (2 v)`` of a
  mean-and-variance model's ``(mu, v)`` at the query; ``"beta_nll"`` weights each term by
  ``stop_gradient(v)^beta`` (Seitzer et al. 2022; ``beta = TrainConfig.nll_beta``).
- ``"every_prefix_nll"`` / ``"every_prefix_beta_nll"``: the same on every prefix (``model.prefix``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from icl import _compile
from icl._pytree import is_pytree
from icl.tasks import Prompts, Task, check_positive_int

__all__ = [
    "TrainConfig",
    "Curriculum",
    "TrainResult",
    "Snapshots",
    "TrainingDivergedError",
    "train",
    "train_with_snapshots",
    "convergence_report",
    "training_loss",
    "make_optimizer",
    "mse_loss",
    "LOSSES",
]

LOSSES = ("query", "every_prefix", "nll", "beta_nll", "every_prefix_nll", "every_prefix_beta_nll")
_PREFIX_LOSSES = ("every_prefix", "every_prefix_nll", "every_prefix_beta_nll")
_NLL_LOSSES = ("nll", "beta_nll", "every_prefix_nll", "every_prefix_beta_nll")


class TrainingDivergedError(RuntimeError):
    """Raised when the training loss or the parameters become NaN or inf; the message names the step."""


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Curriculum:
    """Garg et al. (2022)'s curriculum: active dimensions and prompt length grow on a schedule.

    At step ``t`` the first ``min(d, dims_start + dims_step * (t // dims_every))`` input coordinates are
    active (the others are zero in ``x`` and ``x_query``, and ``y`` is the target of the active
    coordinates: ``y - sum_{j inactive} x_j w_j``, so it needs a task with ``y = w^T x + noise`` and
    ``prompts.w``), and the loss counts the first ``min(n, points_start + points_step * (t // points_every))``
    prefixes (the every-prefix losses only: masking the loss over ``k <= n_t`` is what a shorter prompt
    means for a causal model). ``None`` for a start leaves that axis fixed at its full size.
    """

    dims_start: int | None = None
    dims_step: int = 1
    dims_every: int = 1
    points_start: int | None = None
    points_step: int = 1
    points_every: int = 1

    def __post_init__(self):
        for name in ("dims_start", "points_start"):
            if getattr(self, name) is not None:
                _check_int(f"curriculum.{name}", getattr(self, name), 1)
        for name in ("dims_step", "points_step"):
            _check_int(f"curriculum.{name}", getattr(self, name), 0)
        for name in ("dims_every", "points_every"):
            _check_int(f"curriculum.{name}", getattr(self, name), 1)

    def dims(self, step, d: int):
        """Active dimensions at ``step`` (an int or a traced integer)."""
        if self.dims_start is None:
            return d
        return jnp.minimum(d, self.dims_start + self.dims_step * (step // self.dims_every))

    def points(self, step, n: int):
        """Prompt length (number of prefixes in the loss) at ``step``."""
        if self.points_start is None:
            return n
        return jnp.minimum(n, self.points_start + self.points_step * (step // self.points_every))


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
      steps: optimiser steps (>= 1); batch: prompts per step (>= 1); n: context length (>= 1).
      lr: peak learning rate (a finite number > 0). schedule: ``"cosine"`` (warm-up then cosine decay to
        0) or ``"constant"``. warmup: linear warm-up steps (>= 0, < steps). optimizer: ``"adam"`` or ``"sgd"``.
      num_seeds: independent runs trained at once under vmap (>= 1). seed: base seed (an integer).
      progress_every: print progress to stderr every this many steps (0: silent).
      loss: one of :data:`LOSSES` (module docstring); ``"query"`` by default.
      nll_beta: the beta of ``"beta_nll"`` (>= 0; 0 is the plain NLL, 1 weights like the MSE).
      grad_clip: ``None`` or the global-norm bound (> 0) of ``optax.clip_by_global_norm``.
      curriculum: ``None`` or a :class:`Curriculum`.
      checkpoint_every: with ``train(..., checkpoint_dir=...)``, write a checkpoint every this many
        steps (0: only at the end).
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
    loss: str = "query"
    nll_beta: float = 0.5
    grad_clip: float | None = None
    curriculum: Curriculum | None = None
    checkpoint_every: int = 0

    def __post_init__(self):
        for name in ("steps", "batch", "n", "num_seeds"):
            check_positive_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not _is_real(self.lr) or not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not (isinstance(self.warmup, (int, np.integer)) and not isinstance(self.warmup, bool)
                and 0 <= self.warmup < self.steps):
            raise ValueError(f"warmup must be an integer in [0, steps), got {self.warmup!r}")
        _check_int("progress_every", self.progress_every, 0)
        _check_int("checkpoint_every", self.checkpoint_every, 0)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not _is_real(self.nll_beta) or not (np.isfinite(self.nll_beta) and self.nll_beta >= 0):
            raise ValueError(f"nll_beta must be a finite number >= 0, got {self.nll_beta!r}")
        if self.grad_clip is not None and (not _is_real(self.grad_clip)
                                           or not (np.isfinite(self.grad_clip) and self.grad_clip > 0)):
            raise ValueError(f"grad_clip must be None or a finite number > 0, got {self.grad_clip!r}")
        if self.curriculum is not None:
            if not isinstance(self.curriculum, Curriculum):
                raise ValueError(f"curriculum must be None or an icl.Curriculum, got {self.curriculum!r}")
            if self.curriculum.points_start is not None:
                if self.loss not in _PREFIX_LOSSES:
                    raise ValueError(f"a curriculum on prompt length (curriculum.points_start) needs an every-prefix "
                                     f"loss ({_PREFIX_LOSSES}), got loss={self.loss!r}")
                if self.curriculum.points_start > self.n:
                    raise ValueError(f"curriculum.points_start must be <= n={self.n}, "
                                     f"got {self.curriculum.points_start}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The Optax optimiser of a config: [clip] + Adam (or SGD) on a cosine-with-warm-up or constant schedule.

    Written as ``chain([clip_by_global_norm], scale_by_adam, scale_by_schedule(shape), scale(-lr))`` where
    ``shape`` is the schedule normalised to peak 1, so the learning rate can be a traced per-run value.
    """
    return _transform(_transform_key(config), config.lr)


def _transform_key(config: TrainConfig) -> tuple:
    return (config.optimizer, config.schedule, config.warmup, config.steps, config.grad_clip)


def _schedule_shape(schedule: str, warmup: int, steps: int):
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else 1.0, peak_value=1.0, warmup_steps=warmup, decay_steps=steps, end_value=0.0
        )
    return optax.constant_schedule(1.0)


def _transform(key: tuple, lr) -> optax.GradientTransformation:
    name, schedule, warmup, steps, clip = key
    parts = [optax.clip_by_global_norm(clip)] if clip is not None else []
    parts += [optax.scale_by_adam()] if name == "adam" else []
    return optax.chain(*parts, optax.scale_by_schedule(_schedule_shape(schedule, warmup, steps)), optax.scale(-lr))


def mse_loss(model: Callable[[Prompts], jax.Array], prompts: Prompts) -> jax.Array:
    """Mean squared error ``mean_b (y_hat_b - y_query_b)^2`` (the loss of docs/theory.md §1)."""
    return jnp.mean((model(prompts) - prompts.y_query) ** 2)


# ----------------------------------------------------------------------------------------------------
# Output checks (icl.predictors.check_output when available)


def _check_output(name, out, prompts, prefix: bool, variance: bool):
    """Raise ValueError naming ``name`` unless ``out`` has the shape its kind promises (works on tracers).

    ``[batch]`` (``[batch, n]`` for ``prefix``) for a mean, a pair of those for a mean-and-variance
    predictor (``variance``). Delegates the shape test to :func:`icl.predictors.check_output`.
    """
    b, n = prompts.x.shape[0], prompts.x.shape[1]
    want = [b, n] if prefix else [b]
    what = "prefix output" if prefix else "output"
    pair = isinstance(out, (tuple, list))
    if variance and not pair:
        raise ValueError(f"{name} returns a mean and a variance (returns_variance=True), so its {what} must be a pair "
                         f"(mean {want}, variance {want}), got one array of shape {list(jnp.shape(out))}")
    if pair and not variance:
        raise ValueError(f"{name}'s {what} must be one array of shape {want}, got a {type(out).__name__} of "
                         f"{len(out)} (a mean-and-variance predictor sets returns_variance = True)")
    try:
        from icl.predictors import check_output
    except ImportError:  # pragma: no cover - the predictors package is being rebuilt
        check_output = None
    if check_output is not None:
        check_output(name, out, prompts, prefix=prefix)
        return
    for arr in (out if pair else [out]):  # pragma: no cover - fallback
        if list(jnp.shape(arr)) != want:
            raise ValueError(f"predictor {name}: {what} must have shape {want}, got {list(jnp.shape(arr))}")


def _returns_variance(model) -> bool:
    return bool(getattr(model, "returns_variance", False))


def _model_name(model) -> str:
    return type(model).__name__


def _gaussian_nll(mean, var, y, beta):
    var = jnp.asarray(var)
    terms = 0.5 * jnp.log(2 * jnp.pi * var) + (y - mean) ** 2 / (2 * var)
    if beta:
        terms = terms * jax.lax.stop_gradient(var) ** beta
    return terms


def _builtin_loss(kind: str, beta: float, model, prompts: Prompts, points):
    """The config losses of the module docstring; checks the output shape at trace time."""
    name = _model_name(model)
    variance = _returns_variance(model)
    nll = kind in _NLL_LOSSES
    if nll and not variance:
        raise ValueError(f"loss={kind!r} needs a mean-and-variance model (returns_variance=True, e.g. built with "
                         f"variance_head=True); {name} returns a mean only")
    if not nll and variance:
        raise ValueError(f"{name} returns a mean and a variance; train it with loss='nll' or 'beta_nll' "
                         f"(or the every-prefix versions), not loss={kind!r}")
    use_beta = beta if "beta" in kind else 0.0
    if kind in _PREFIX_LOSSES:
        if not callable(getattr(model, "prefix", None)):
            raise ValueError(f"loss={kind!r} needs model.prefix(prompts) -> [batch, n]; {name} has no prefix method")
        out = model.prefix(prompts)
        _check_output(name, out, prompts, prefix=True, variance=variance)
        if nll:
            terms = _gaussian_nll(out[0], out[1], prompts.y, use_beta)
        else:
            terms = (out - prompts.y) ** 2
        n = prompts.y.shape[1]
        if isinstance(points, int) and points == n:
            return jnp.mean(terms)
        mask = (jnp.arange(n) < points).astype(terms.dtype)
        return jnp.sum(terms * mask) / (terms.shape[0] * jnp.asarray(points, terms.dtype))
    out = model(prompts)
    _check_output(name, out, prompts, prefix=False, variance=variance)
    if nll:
        return jnp.mean(_gaussian_nll(out[0], out[1], prompts.y_query, use_beta))
    return jnp.mean((out - prompts.y_query) ** 2)


def _mask_dims(prompts: Prompts, active) -> Prompts:
    """Zero the inactive input coordinates and remove their contribution ``x_j w_j`` from the targets."""
    d = prompts.x.shape[-1]
    keep = (jnp.arange(d) < active).astype(prompts.x.dtype)
    drop = 1.0 - keep
    y = prompts.y - jnp.einsum("bnd,bd->bn", prompts.x * drop, prompts.w)
    y_query = prompts.y_query - jnp.einsum("bd,bd->b", prompts.x_query * drop, prompts.w)
    return Prompts(x=prompts.x * keep, y=y, x_query=prompts.x_query * keep, y_query=y_query, w=prompts.w * keep)


def _objective(spec, loss_fn, model, prompts: Prompts, step):
    """The training loss at ``step``: curriculum applied to the prompts, then the config's or a custom loss."""
    kind, beta, curriculum = spec
    points = prompts.y.shape[1]
    if curriculum is not None:
        if curriculum.dims_start is not None:
            prompts = _mask_dims(prompts, curriculum.dims(step, prompts.x.shape[-1]))
        points = curriculum.points(step, points)
    if loss_fn is not None:
        return loss_fn(model, prompts)
    return _builtin_loss(kind, beta, model, prompts, points)


def training_loss(model, prompts: Prompts, config: TrainConfig, loss_fn: Callable | None = None,
                  step: int | None = None) -> jax.Array:
    """The loss :func:`train` minimises, on given prompts: ``config.loss`` (or ``loss_fn``) after the curriculum.

    Args:
      model: a model (or any predictor with the outputs ``config.loss`` needs).
      prompts: the prompts (``[batch, n, d]``).
      config: the :class:`TrainConfig` (its ``loss``, ``nll_beta`` and ``curriculum`` are used).
      loss_fn: a custom ``loss_fn(model, prompts)`` instead of ``config.loss``.
      step: the training step whose curriculum applies (default: the end of training, ``config.steps``).
    Returns:
      The scalar loss (jit-able; the output shape is checked, a ValueError names the model).
    """
    step = config.steps if step is None else _check_int("step", step, 0)
    if loss_fn is mse_loss:
        loss_fn = None
    return _objective((config.loss, float(config.nll_beta), config.curriculum), loss_fn, model, prompts, step)


# ----------------------------------------------------------------------------------------------------
# Results


@dataclass
class Snapshots:
    """Parameters saved during training (``train(..., snapshot_every=K)``).

    Attributes:
      steps: ``[K + 1]`` optimiser steps taken at each snapshot (``steps[0] = 0``, the initialisation).
      params: ``nnx.State`` with leading axes ``[K + 1, num_seeds, ...]``.
      graphdef: the shared NNX graph definition.
    """

    steps: np.ndarray
    params: nnx.State
    graphdef: nnx.GraphDef

    def model(self, k: int, seed: int = 0) -> nnx.Module:
        """The model of snapshot ``k`` and seed ``seed`` (a predictor)."""
        return nnx.merge(self.graphdef, jax.tree.map(lambda a: a[k, seed], self.params))


@dataclass
class TrainResult:
    """Trained parameters of every seed and the loss history.

    Attributes:
      graphdef: the NNX graph definition shared by all seeds.
      params: the parameter ``nnx.State`` with a leading seed axis ``[num_seeds, ...]``.
      losses: training loss per seed and step, ``[num_seeds, step]`` (numpy).
      config: the :class:`TrainConfig` used. seconds: wall time of the run (compilation included).
      opt_state: the optimiser state (leading seed axis), for checkpoints and resuming.
      step: optimiser steps taken (``config.steps`` for a finished run; less for a mid-run checkpoint).
      final_losses: ``[num_seeds]`` loss of the final parameters on a fresh batch (after the last step).
      snapshots: :class:`Snapshots` when trained with ``snapshot_every``.
      model_spec: ``(class path, constructor kwargs)`` of a library model (used by checkpoints), or None.
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
    model_spec: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.step is None:
            self.step = int(np.shape(self.losses)[1]) if np.ndim(self.losses) == 2 else self.config.steps

    @property
    def num_seeds(self) -> int:
        return self.losses.shape[0]

    def seed_params(self, i: int) -> nnx.State:
        """Parameters of seed ``i`` (no seed axis)."""
        return jax.tree.map(lambda a: a[i], self.params)

    def model(self, i: int = 0) -> nnx.Module:
        """The trained model of seed ``i`` as an NNX module (a predictor: call it on prompts)."""
        return nnx.merge(self.graphdef, self.seed_params(i))


# ----------------------------------------------------------------------------------------------------
# The public entry points


def train(
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    task: Task,
    config: TrainConfig,
    loss_fn: Callable | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    snapshot_every: int = 0,
) -> TrainResult:
    """Train ``config.num_seeds`` models at once on fresh prompts from ``task``.

    Args:
      model_fn: builds a model from ``nnx.Rngs``, e.g. ``lambda r: icl.LinearTransformer(d, 1, rngs=r)``.
      task: any task (a pytree, so noise levels share one compiled program); sampled with
        ``config.batch`` prompts of length ``config.n`` at every step.
      config: :class:`TrainConfig` (its ``loss`` chooses the objective; module docstring).
      loss_fn: optional custom ``loss_fn(model, prompts) -> scalar`` that replaces ``config.loss``.
      checkpoint_dir: write a checkpoint (:mod:`icl.checkpoint`) every ``config.checkpoint_every`` steps
        and at the end into ``checkpoint_dir/step_XXXXXXXX`` (the newest two are kept). The folder must be
        empty unless ``resume``.
      resume: continue from the newest checkpoint in ``checkpoint_dir`` (from scratch if there is none).
        The config must equal the checkpoint's (``progress_every`` may differ); the resumed run equals
        the uninterrupted one bit for bit on the same machine and precision.
      snapshot_every: keep the parameters every this many steps (and at step 0 and the end) in
        ``result.snapshots``.
    Returns:
      :class:`TrainResult` with per-seed parameters, losses ``[num_seeds, steps]`` and ``final_losses``.
    Raises:
      ValueError: a model output of the wrong shape (named), a loss the model cannot serve, a curriculum
        on a task without ``w``.
      TrainingDivergedError: a loss or the parameters became NaN or inf (names the step), including at
        the last step (the loss of the final parameters on a fresh batch is checked too).
    """
    start = time.perf_counter()
    if loss_fn is mse_loss:
        loss_fn = None  # the default objective, spelled out
    if loss_fn is not None and config.curriculum is not None and config.curriculum.points_start is not None:
        raise ValueError("a curriculum on prompt length masks the config's every-prefix loss; it cannot be "
                         "combined with a custom loss_fn")
    snapshot_every = _check_int("snapshot_every", snapshot_every, 0)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    _check_task(task, config)
    model = nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))  # structure only: nothing is computed or compiled
    graphdef, abstract_state = nnx.split(model)
    model_spec = _model_spec(model)
    lrs = jnp.full((config.num_seeds,), config.lr)
    if not resume:  # compile while the runs initialise
        _compile_chunk_ahead(graphdef, abstract_state, lrs, _abstract_keys(config.num_seeds), _task_arg(task), False,
                             config, loss_fn, None, _first_chunk(config, snapshot_every, checkpoint_dir is not None))
    run_keys, params = _init_runs(model_fn, config.num_seeds, config.seed)
    state = None
    writer = None
    if checkpoint_dir is not None:
        from icl import checkpoint as _ckpt

        writer = _ckpt._Writer(checkpoint_dir, graphdef, model_spec, config)
        if resume:
            state = writer.latest(params, config)
        elif writer.existing():
            raise ValueError(f"checkpoint_dir {os.fspath(checkpoint_dir)!r} already holds checkpoints; pass "
                             f"resume=True to continue from them or use an empty folder")
    out = _run(graphdef, params, lrs, run_keys, task, False, config, loss_fn, start=start, state=state,
               writer=writer, snapshot_every=snapshot_every)
    return TrainResult(graphdef, out["params"], out["losses"], config, time.perf_counter() - start,
                       opt_state=out["opt_state"], step=config.steps, final_losses=out["final_losses"],
                       snapshots=out["snapshots"], model_spec=model_spec)


def train_with_snapshots(
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    task: Task,
    config: TrainConfig,
    every: int,
    loss_fn: Callable | None = None,
) -> tuple[TrainResult, Snapshots]:
    """``train(..., snapshot_every=every)`` returning ``(result, result.snapshots)``.

    The run is the same as :func:`train`'s (same initialisation, data keys and optimiser); the
    parameters are kept every ``every`` steps, at step 0 and at the end.
    """
    every = check_positive_int("every", every)
    result = train(model_fn, task, config, loss_fn, snapshot_every=every)
    return result, result.snapshots


def _check_task(task, config: TrainConfig):
    curriculum = config.curriculum
    if curriculum is None or curriculum.dims_start is None:
        return
    if curriculum.dims_start > task.d:
        raise ValueError(f"curriculum.dims_start must be <= the task's d={task.d}, got {curriculum.dims_start}")
    p = task.sample(jax.random.key(0), 64, 4)
    if p.w is None or tuple(p.w.shape) != tuple(p.x_query.shape):
        raise ValueError(f"a curriculum over dimensions needs a task whose prompts carry the weights w "
                         f"([batch, d]) of y = w^T x + noise; {type(task).__name__} has none")
    resid = np.asarray(p.y) - np.einsum("bnd,bd->bn", np.asarray(p.x), np.asarray(p.w))
    noise = float(getattr(task, "noise_std", 0.0) or 0.0)
    scale = float(np.std(np.asarray(p.y))) + 1e-12
    if float(np.std(resid)) > 3 * noise + 1e-3 * scale:
        raise ValueError(f"a curriculum over dimensions needs a linear task (y = w^T x + noise); "
                         f"{type(task).__name__}'s targets are not linear in x")


def _init_runs(model_fn, num_seeds: int, seed: int):
    """Run ``i``'s key ``fold_in(key(seed), i)`` and its initial parameters (``model_fn`` with the params
    stream ``fold_in(key_i, 0)``). Op by op, not one jitted program: with a jitted initialiser (0.7 s less
    compilation in experiments/von_oswald.py --fast) a checkpointed and resumed run differed from an
    uninterrupted one by about 1e-9 (tests/test_one_step_gd_experiment.py); the cause was not found."""
    run_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(num_seeds))
    params = jax.vmap(lambda k: nnx.split(model_fn(nnx.Rngs(params=jax.random.fold_in(k, 0))))[1])(run_keys)
    return run_keys, params


def _model_spec(model) -> tuple | None:
    """``(module:qualname, kwargs)`` of a model that records its constructor arguments in ``_init_args``."""
    args = getattr(model, "_init_args", None)
    if args is None:
        return None
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}", tuple(dict(args).items())


# ----------------------------------------------------------------------------------------------------
# The engine (private): used by train, train_with_snapshots and icl.sweeps.sweep


def _chunk_length(config: TrainConfig, snapshot_every: int, checkpointing: bool) -> int:
    """Steps per compiled chunk: the gcd of every reporting interval (boundaries never move on resume)."""
    intervals = [config.progress_every, snapshot_every, config.checkpoint_every if checkpointing else 0]
    chunk = 0
    for k in intervals:
        if k:
            chunk = math.gcd(chunk, k)
    return chunk or config.steps


def _run(graphdef, params, lrs, run_keys, task, task_batched: bool, config: TrainConfig, loss_fn=None, *,
         start: float | None = None, sharding=None, state=None, writer=None, snapshot_every: int = 0):
    """Train ``P`` runs side by side (``vmap``) in chunks of ``lax.scan``; return a dict of results.

    Run ``p`` starts from ``params[p]`` with peak learning rate ``lrs[p]`` and trains at step ``t`` on
    ``task.sample(split(fold_in(run_keys[p], 1), steps)[t], batch, n)``. ``task`` is shared or batched
    along a leading axis (``task_batched``). ``state`` (from a checkpoint) restarts at its step.
    """
    start = time.perf_counter() if start is None else start
    done = 0
    history = []
    fresh_state, step_keys, end_keys = _prepare(params, lrs, run_keys, transform=_transform_key(config))
    if state is not None:
        params, opt_state, done = state["params"], state["opt_state"], state["step"]
        history.append(np.asarray(state["losses"]))
    else:
        opt_state = fresh_state
    task_arg = _task_arg(task)
    if sharding is not None:
        params, opt_state, step_keys, lrs, end_keys = jax.device_put((params, opt_state, step_keys, lrs, end_keys),
                                                                     sharding)
        if task_batched:
            task_arg = jax.device_put(task_arg, sharding)
    static = _chunk_static(graphdef, config, loss_fn, task_batched)
    chunk = _chunk_length(config, snapshot_every, writer is not None)
    snaps, snap_steps = ([params], [done]) if snapshot_every else (None, None)
    final = None
    while done < config.steps:
        end = min(done + chunk - done % chunk, config.steps)
        last = end == config.steps
        save = writer is not None and (last or (bool(config.checkpoint_every) and end % config.checkpoint_every == 0))
        measure = last or save  # a checkpoint stores the final loss of its parameters
        steps = np.arange(done, end, dtype=_step_dtype())  # numpy: no eager compiles
        params, opt_state, losses, ok, chunk_final = _train_chunk(
            params, opt_state, step_keys[:, done:end], steps, lrs, end_keys, task_arg,
            np.bool_(measure), **static)
        losses = np.asarray(losses)
        history.append(losses)
        done = end
        if measure:
            final = chunk_final
        _check_finite(np.concatenate(history, axis=1), np.asarray(ok), np.asarray(chunk_final), done)
        if snapshot_every and (done % snapshot_every == 0 or done == config.steps):
            snaps.append(params)
            snap_steps.append(done)
        if save:
            writer.save(done, params, opt_state, np.concatenate(history, axis=1), np.asarray(final),
                        time.perf_counter() - start)
        if config.progress_every and (done % config.progress_every == 0 or done == config.steps):
            print(f"[train] step {done}/{config.steps}  loss {losses[:, -1].mean():.5g} (mean of {losses.shape[0]} "
                  f"runs)  {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    losses = np.concatenate(history, axis=1)
    if final is None:  # resumed from the final checkpoint: nothing left to run
        final = state.get("final_losses")
    snapshots = None
    if snapshot_every:
        snapshots = Snapshots(np.asarray(snap_steps), _stack(snaps), graphdef)
    return {"params": params, "opt_state": opt_state, "losses": losses,
            "final_losses": None if final is None else np.asarray(final), "snapshots": snapshots}


def _stack(trees: list):
    """Stack pytrees leaf by leaf along a new leading axis, through numpy: eagerly, ``jnp.stack`` compiles a
    program for every leaf shape and count (about 1 s of the headline's start-up for 12 runs' parameters).
    PRNG key leaves, which numpy cannot hold, use ``jnp.stack``."""

    def stack(*xs):
        if jax.dtypes.issubdtype(jnp.result_type(xs[0]), jax.dtypes.prng_key):
            return jnp.stack(xs)
        return jnp.asarray(np.stack([np.asarray(x) for x in xs]))

    return jax.tree.map(stack, *trees)


def _task_arg(task):
    return task if is_pytree(task) else _Opaque(task)


def _chunk_static(graphdef, config: TrainConfig, loss_fn, task_batched: bool) -> dict:
    """The static arguments of :func:`_train_chunk` (the compiled program's key besides shapes)."""
    return dict(graphdef=graphdef, loss_fn=loss_fn, batch=config.batch, n=config.n, task_batched=task_batched,
                transform=_transform_key(config), spec=(config.loss, float(config.nll_beta), config.curriculum))


def _compile_chunk_ahead(graphdef, state, lrs, run_keys, task_arg, task_batched: bool, config: TrainConfig, loss_fn,
                         sharding, chunk: int):
    """Compile the optimiser set-up and the first training chunk in the background from shapes alone
    (:func:`icl.compile_ahead`) while the caller initialises its runs op by op, so that :func:`_run` finds
    both compiled. ``state``: one run's parameters; ``lrs``, ``run_keys``: ``[P]``; ``task_arg``: as
    :func:`_run` passes it to the chunk (stacked along the run axis when ``task_batched``); all may be abstract.
    """
    num_runs = lrs.shape[0]

    def placed(tree, lead=(), where=sharding):  # abstract values as _run places them (sharded: after _prepare)
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct((*lead, *a.shape), a.dtype, sharding=where,
                                                           weak_type=getattr(a, "weak_type", False)), tree)

    inputs = placed(state, (num_runs,), None), placed(lrs, (), None), placed(run_keys, (), None)
    params, lrs, run_keys = placed(inputs)
    if sharding is not None and task_batched:
        task_arg = placed(task_arg)
    transform = _transform_key(config)

    def first_chunk():
        opt_state, step_keys, end_keys = jax.eval_shape(lambda *a: _prepare(*a, transform=transform), *inputs)
        keys = jax.ShapeDtypeStruct((chunk,), step_keys.dtype)
        _train_chunk(params, placed(opt_state), placed(keys, (num_runs,)), np.zeros(chunk, _step_dtype()), lrs,
                     placed(end_keys), task_arg, np.bool_(False), **_chunk_static(graphdef, config, loss_fn,
                                                                                   task_batched))

    _compile._compile_ahead(_prepare, inputs, dict(transform=transform), _compile.URGENT, target=_prepare)
    _compile._compile_ahead(first_chunk, (), {}, _compile.URGENT, target=_train_chunk)


def _abstract_keys(num: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((num,), jax.eval_shape(lambda: jax.random.key(0)).dtype)


def _first_chunk(config: TrainConfig, snapshot_every: int, checkpointing: bool) -> int:
    return min(_chunk_length(config, snapshot_every, checkpointing), config.steps)


def _step_dtype():
    return jax.dtypes.canonicalize_dtype(np.int64)


@_compile.jit(static_argnames=("transform",))
def _prepare(params, lrs, run_keys, *, transform):
    """Every run's initial optimiser state and its step and end-of-chunk keys, as one compiled program
    (op-by-op, the key splits and the optimiser's init compiled ~15 tiny programs at ~40 ms each)."""
    opt_state = jax.vmap(lambda p, lr: _transform(transform, lr).init(p))(params, lrs)
    steps = transform[3]
    step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 1), steps))(run_keys)
    end_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(run_keys)
    return opt_state, step_keys, end_keys


@_compile.jit(static_argnames=("graphdef", "transform", "loss_fn", "spec", "batch", "n",
                                             "task_batched"))
def _train_chunk(params, opt_state, keys, steps, lrs, end_keys, task, measure_final, *, graphdef, transform,
                 loss_fn, spec, batch, n, task_batched):
    """``keys.shape[1]`` steps of every run: ``vmap`` over runs of a ``lax.scan`` over steps.

    Module-level and keyed on static structure only, so tasks that differ in their numbers (noise,
    covariances; a task is a pytree) and runs that differ in seed or learning rate share one program.
    After the scan, when ``measure_final`` (a traced flag: the last chunk, or one that ends at a checkpoint),
    the same program measures the loss of the new parameters on a fresh batch (drawn from
    ``fold_in(end_key, end_step)``; a forward pass, no gradient), so divergence at the last step is caught
    without a second compiled program; other chunks skip it (``lax.cond``) and return 0. Measured every
    chunk, it cost one more sample and forward pass per chunk (+10% of a step at 10 steps per chunk).
    Returns the new parameters and optimiser state, the losses ``[P, length]``, whether every parameter
    is finite ``[P]``, and that final loss ``[P]``.
    """
    if isinstance(task, _Opaque):
        task = task.obj
    end_step = steps[-1] + 1

    def per_run(p, o, k, lr, end_key, run_task):
        optimizer = _transform(transform, lr)

        def loss_at(v, step_key, step):
            prompts = run_task.sample(step_key, batch, n)
            return _objective(spec, loss_fn, nnx.merge(graphdef, v), prompts, step)

        def one_step(carry, xs):
            q, s = carry
            loss, grads = jax.value_and_grad(loss_at)(q, *xs)
            updates, s = optimizer.update(grads, s, q)
            return (optax.apply_updates(q, updates), s), loss

        (p, o), losses = jax.lax.scan(one_step, (p, o), (k, steps))
        final = jax.lax.cond(measure_final, lambda: loss_at(p, jax.random.fold_in(end_key, end_step), end_step),
                             lambda: jnp.zeros((), losses.dtype))
        finite = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(p) if jnp.issubdtype(a.dtype, jnp.inexact)]
        ok = jnp.all(jnp.stack(finite)) if finite else jnp.asarray(True)
        return p, o, losses, ok, final

    args = (params, opt_state, keys, lrs, end_keys, task)
    in_axes = (0, 0, 0, 0, 0, 0 if task_batched else None)
    if keys.shape[0] == 1:
        # One run: call it directly on the squeezed arguments. XLA:CPU runs a vmap over an axis of size 1
        # several times slower than the unbatched program (measured 5.5x for the 3-layer model at
        # d=5, n=20, batch 20000; a vmap over 2 runs costs 1.8x one unbatched run, not 11x).
        squeezed = [x if axis is None else jax.tree.map(lambda a: a[0], x) for x, axis in zip(args, in_axes)]
        return jax.tree.map(lambda a: a[None], per_run(*squeezed))
    return jax.vmap(per_run, in_axes=in_axes)(*args)


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


def _check_finite(losses: np.ndarray, params_ok: np.ndarray, final: np.ndarray, done: int):
    """Raise :class:`TrainingDivergedError` naming the step where a loss, a parameter or the final loss broke."""
    bad = ~np.isfinite(losses)
    if bad.any():
        step = int(np.argmax(bad.any(axis=0)))
        seed = int(np.argmax(bad[:, step]))
        finite = losses[seed, :step]
        last = f"{finite[-1]:.6g} at step {step - 1}" if finite.size else "none (diverged at the first step)"
        raise TrainingDivergedError(
            f"training diverged at step {step} (seed index {seed}): loss became {losses[seed, step]}; "
            f"last finite loss {last}. Lower the learning rate (lr), set grad_clip, or lower the init scale."
        )
    last = done - 1
    if not params_ok.all():
        seed = int(np.argmin(params_ok))
        raise TrainingDivergedError(
            f"training diverged at step {last} (seed index {seed}): the parameters after that step are NaN or inf "
            f"(last finite loss {losses[seed, last]:.6g} at step {last}). Lower the learning rate (lr) or set "
            f"grad_clip."
        )
    if not np.isfinite(final).all():
        seed = int(np.argmax(~np.isfinite(final)))
        raise TrainingDivergedError(
            f"training diverged at step {last} (seed index {seed}): the loss of the parameters after that step is "
            f"{final[seed]} on a fresh batch (last finite loss {losses[seed, last]:.6g} at step {last}). Lower the "
            f"learning rate (lr) or set grad_clip."
        )


# ----------------------------------------------------------------------------------------------------
# Convergence


def convergence_report(result: TrainResult, *, window: float = 0.1, z: float = 3.0, rtol: float = 0.02) -> dict:
    """Did training converge? Two checks on the loss history ``result.losses [seeds, steps]``.

    - **still falling**: over the last ``window`` (a tenth) of the steps (at least 8 steps), a least-squares
      line through each seed's losses has a negative slope more than ``z`` standard errors from 0 (the
      per-step minibatch noise sets the SE) and predicts a drop over the window of more than ``rtol``
      times the window's mean loss.
    - **seeds disagree**: two seeds' mean losses over the window differ by more than ``z`` times the SE of
      their difference and by more than ``rtol`` times their mean (one seed stuck at a saddle, say).

    Returns a JSON-ready dict: ``converged`` (bool), ``still_falling`` and ``seeds_disagree`` (bools),
    ``window`` (steps), per seed ``slope``, ``slope_se``, ``relative_drop``, ``window_mean``,
    ``window_se``, ``final_losses`` (when recorded), and ``reasons`` (sentences; empty when converged).
    """
    losses = np.asarray(result.losses, np.float64)
    seeds, steps = losses.shape
    w = min(steps, max(int(np.ceil(window * steps)), 8))
    tail = losses[:, steps - w:]
    t = np.arange(w, dtype=np.float64) - (w - 1) / 2
    means = tail.mean(axis=1)
    if w >= 3:
        slopes = (tail * t).sum(axis=1) / (t**2).sum()
        resid = tail - means[:, None] - slopes[:, None] * t
        slope_se = np.sqrt((resid**2).sum(axis=1) / (w - 2) / (t**2).sum())
        noise_sd = np.sqrt((resid**2).sum(axis=1) / (w - 2))
    else:
        slopes = np.zeros(seeds)
        slope_se = np.full(seeds, np.inf)
        noise_sd = np.full(seeds, np.inf)
    drop = -slopes * (w - 1)
    rel_drop = drop / np.maximum(np.abs(means), 1e-300)
    falling = (slopes < -z * slope_se) & (rel_drop > rtol)
    window_se = noise_sd / np.sqrt(w)
    reasons = []
    for s in np.flatnonzero(falling):
        reasons.append(f"seed {s}: the loss is still falling over the last {w} steps (slope {slopes[s]:.3g} per step, "
                       f"{slopes[s] / slope_se[s]:.1f} SE; a drop of {100 * rel_drop[s]:.1f}% over the window)")
    disagree = False
    for i in range(seeds):
        for j in range(i + 1, seeds):
            gap = abs(means[i] - means[j])
            se = np.hypot(window_se[i], window_se[j])
            if gap > z * se and gap > rtol * 0.5 * (abs(means[i]) + abs(means[j])):
                disagree = True
                reasons.append(f"seeds {i} and {j} disagree: mean loss {means[i]:.4g} vs {means[j]:.4g} over the last "
                               f"{w} steps ({gap / se:.1f} SE apart, spread {100 * gap / np.mean(np.abs(means)):.1f}%)")
    report = {
        "converged": not (bool(falling.any()) or disagree),
        "still_falling": bool(falling.any()),
        "seeds_disagree": disagree,
        "window": int(w),
        "slope": slopes.tolist(),
        "slope_se": slope_se.tolist(),
        "relative_drop": rel_drop.tolist(),
        "window_mean": means.tolist(),
        "window_se": window_se.tolist(),
        "reasons": reasons,
    }
    if result.final_losses is not None:
        report["final_losses"] = np.asarray(result.final_losses, np.float64).tolist()
    return report
