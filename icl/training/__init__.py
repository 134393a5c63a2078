"""Training models on in-context tasks with Optax: one engine (jit + scan over steps + vmap over runs).

- ``icl.training.config``: [`TrainConfig`][icl.training.TrainConfig], [`Curriculum`][icl.training.Curriculum], [`make_optimizer`][icl.training.make_optimizer];
- ``icl.training.losses``: the losses of ``TrainConfig.loss`` ([`training_loss`][icl.training.training_loss], [`gaussian_nll`][icl.training.gaussian_nll]) and
  [`takes_step`][icl.training.takes_step] (custom losses that see the training step);
- ``icl.training.engine``: [`run_engine`][icl.training.run_engine] (the engine), [`train`][icl.training.train], [`TrainResult`][icl.training.TrainResult];
- ``icl.training.diagnostics``: [`convergence_report`][icl.training.convergence_report] (is the loss still falling? do the seeds agree?).

Grids over the same engine: [`icl.sweeps.sweep`][icl.sweeps.sweep]; checkpoints: [`icl.checkpoint`][icl.checkpoint].
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
from icl.training.losses import gaussian_nll, mse_loss, takes_step, training_loss, with_query_as_last_pair

__all__ = ["TrainConfig", "Curriculum", "TrainResult", "Snapshots", "TrainingDivergedError", "train",
           "train_with_snapshots", "run_engine", "run_keys", "convergence_report", "training_loss", "gaussian_nll",
           "make_optimizer", "mse_loss", "LOSSES", "with_query_as_last_pair",
           "takes_step"]
