"""The training configuration: [`TrainConfig`][icl.training.TrainConfig], [`Curriculum`][icl.training.Curriculum] and the optimiser they describe."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import optax

from icl.tasks.base import check_int, check_non_negative, check_positive

__all__ = ["TrainConfig", "Curriculum", "make_optimizer", "check_int", "LOSSES", "PREFIX_LOSSES", "NLL_LOSSES"]

LOSSES = ("query", "every_prefix", "nll", "beta_nll", "every_prefix_nll", "every_prefix_beta_nll")
"""The training losses ``TrainConfig.loss`` accepts: the query's squared error, Garg et al.'s every-prefix squared
error, and the Gaussian (beta-)NLL of mean-and-variance models at the query or at every prefix."""
PREFIX_LOSSES = ("every_prefix", "every_prefix_nll", "every_prefix_beta_nll")
NLL_LOSSES = ("nll", "beta_nll", "every_prefix_nll", "every_prefix_beta_nll")


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
        for name, minimum in (("dims_start", 1), ("points_start", 1), ("dims_step", 0), ("points_step", 0),
                              ("dims_every", 1), ("points_every", 1)):
            if getattr(self, name) is not None or not name.endswith("start"):
                check_int(f"curriculum.{name}", getattr(self, name), minimum)

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
    """Hyper-parameters of [`icl.train`][icl.training.train].

    Attributes:
      steps: optimiser steps (>= 1); batch: prompts per step (>= 1); n: context length (>= 1).
      lr: peak learning rate (a finite number > 0). schedule: ``"cosine"`` (warm-up then cosine decay to
        0) or ``"constant"``. warmup: linear warm-up steps (>= 0, < steps). optimizer: ``"adam"`` or ``"sgd"``.
      num_seeds: independent runs trained at once under vmap (>= 1). seed: base seed (an integer).
      progress_every: print progress to stderr every this many steps (0: silent).
      loss: one of ``LOSSES`` (see ``icl.training.losses``); ``"query"`` by default.
      nll_beta: the beta of ``"beta_nll"`` (>= 0; 0 is the plain NLL, 1 weights like the MSE).
      grad_clip: ``None`` or the global-norm bound (> 0) of ``optax.clip_by_global_norm``.
      curriculum: ``None`` or a [`Curriculum`][icl.training.Curriculum].
      checkpoint_every: with a checkpoint writer (``train(..., checkpoint=...)``), write a checkpoint every
        this many steps (0: only at the end).
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
        for name, minimum in (("steps", 1), ("batch", 1), ("n", 1), ("num_seeds", 1), ("seed", None),
                              ("progress_every", 0), ("checkpoint_every", 0)):
            check_int(name, getattr(self, name), minimum)
        check_positive("lr", self.lr)
        for name, allowed in (("schedule", ("cosine", "constant")), ("optimizer", ("adam", "sgd")), ("loss", LOSSES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if check_int("warmup", self.warmup, 0) >= self.steps:
            raise ValueError(f"warmup must be an integer in [0, steps), got {self.warmup!r}")
        check_non_negative("nll_beta", self.nll_beta)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        if self.curriculum is not None and not isinstance(self.curriculum, Curriculum):
            raise ValueError(f"curriculum must be None or an icl.Curriculum, got {self.curriculum!r}")
        start = None if self.curriculum is None else self.curriculum.points_start
        if start is not None and self.loss not in PREFIX_LOSSES:
            raise ValueError(f"a curriculum on prompt length (curriculum.points_start) needs an every-prefix "
                             f"loss ({PREFIX_LOSSES}), got loss={self.loss!r}")
        if start is not None and start > self.n:
            raise ValueError(f"curriculum.points_start must be <= n={self.n}, got {start}")


def make_optimizer(config: TrainConfig, lr=None) -> optax.GradientTransformation:
    """The Optax optimiser of a config: [clip] + Adam (or SGD) on a cosine-with-warm-up or constant schedule.

    Written as ``chain([clip_by_global_norm], scale_by_adam, scale_by_schedule(shape), scale(-lr))`` where
    ``shape`` is the schedule normalised to peak 1, so the learning rate ``lr`` (default ``config.lr``) may
    be a traced per-run value.
    """
    if config.schedule == "cosine":
        shape = optax.warmup_cosine_decay_schedule(init_value=0.0 if config.warmup else 1.0, peak_value=1.0,
                                                   warmup_steps=config.warmup, decay_steps=config.steps,
                                                   end_value=0.0)
    else:
        shape = optax.constant_schedule(1.0)
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip is not None else []
    parts += [optax.scale_by_adam()] if config.optimizer == "adam" else []
    return optax.chain(*parts, optax.scale_by_schedule(shape), optax.scale(-(config.lr if lr is None else lr)))
