"""Training models on in-context tasks with Optax: one engine (jit + scan over steps + vmap over runs).

- :mod:`icl.training.config`: :class:`TrainConfig`, :class:`Curriculum`, :func:`make_optimizer`;
- :mod:`icl.training.losses`: the losses of ``TrainConfig.loss`` (:func:`training_loss`, :func:`gaussian_nll`);
- :mod:`icl.training.engine`: :func:`run_engine` (the engine), :func:`train`, :class:`TrainResult`;
- :mod:`icl.training.diagnostics`: :func:`convergence_report` (is the loss still falling? do the seeds agree?).

Grids over the same engine: :func:`icl.sweeps.sweep`; checkpoints: :mod:`icl.checkpoint`.
"""

from icl.training.config import LOSSES, Curriculum, TrainConfig, make_optimizer
from icl.training.diagnostics import convergence_report
from icl.training.engine import (
                                 Snapshots,
                                 TrainingDivergedError,
                                 TrainResult,
                                 run_engine,
                                 run_keys,
                                 train,
                                 train_with_snapshots,
)
from icl.training.losses import gaussian_nll, mse_loss, training_loss, with_query_as_last_pair

__all__ = ["TrainConfig", "Curriculum", "TrainResult", "Snapshots", "TrainingDivergedError", "train",
           "train_with_snapshots", "run_engine", "run_keys", "convergence_report", "training_loss", "gaussian_nll",
           "make_optimizer", "mse_loss", "LOSSES", "with_query_as_last_pair"]
