"""Run logging to TensorBoard or Weights & Biases (optional extras), for training curves, claims and figures.

The codebases of this field that train log to W&B (Garg, Raventós, Yang, Bai, Park) or TensorBoard (von
Oswald). A logger here is an object with four methods; [`icl.train`][icl.training.train] calls the one it is given (its
``callback`` argument) between compiled chunks of steps, and the experiment runner (``--log tensorboard`` or
``--log wandb``) logs every training stage, the claims and the figures of a run:

- ``logger.training(stage)`` returns the callback for one training run: ``callback(step, losses)`` with
  ``losses [num_seeds, chunk]`` the per-step training losses of the chunk that ends at ``step``; it logs the
  chunk's mean loss per seed at ``step`` under ``<stage>/loss/seed<s>``;
- ``logger.log_claims(claims)``: each claim's measured value (``claims/<name>``) and a table of them;
- ``logger.log_figure(name, figure)``: a matplotlib figure;
- ``logger.close()``.

Neither backend is a dependency of the core: ``pip install "icl[tensorboard]"`` (tensorboardX writes the event
files; TensorBoard reads them) or ``pip install "icl[wandb]"``. Both write in the background (their own threads
or service process); the core library starts none. W&B runs offline unless ``mode="online"`` is asked for
(``WANDB_MODE`` also applies), so nothing leaves the machine by default.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["RunLogger", "TensorBoardLogger", "WandbLogger", "make_logger", "LOGGERS"]

LOGGERS = ("tensorboard", "wandb")
"""The run loggers [`make_logger`][icl.runlog.make_logger] and the scripts' ``--log`` accept."""


def _claim_fields(claim) -> tuple[str, float | None, bool]:
    get = (lambda k: claim.get(k)) if isinstance(claim, Mapping) else (lambda k: getattr(claim, k))
    measured = get("measured")
    measured = None if measured is None or not math.isfinite(float(measured)) else float(measured)
    return str(get("name")), measured, bool(get("passed"))


class RunLogger:
    """The interface (and the shared bookkeeping) of a run logger; see the module docstring."""

    def _scalar(self, tag: str, value: float, step: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def training(self, stage: str = "train") -> Callable[[int, np.ndarray], None]:
        """The callback for one training run: logs each seed's mean loss over a chunk at the chunk's last step."""

        def callback(step: int, losses) -> None:
            losses = np.asarray(losses, dtype=np.float64)
            losses = losses.reshape(1, -1) if losses.ndim == 1 else losses.reshape(losses.shape[0], -1)
            for seed, row in enumerate(losses):
                self._scalar(f"{stage}/loss/seed{seed}", float(np.mean(row)), int(step))

        return callback

    def log_claims(self, claims: Sequence) -> None:
        raise NotImplementedError  # pragma: no cover

    def log_figure(self, name: str, figure) -> None:
        raise NotImplementedError  # pragma: no cover

    def close(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _claims_markdown(claims: Sequence) -> str:
    rows = ["| claim | measured | passed |", "|---|---|---|"]
    for claim in claims:
        name, measured, passed = _claim_fields(claim)
        rows.append(f"| {name} | {'–' if measured is None else f'{measured:.6g}'} | {'PASS' if passed else 'FAIL'} |")
    return "\n".join(rows)


class TensorBoardLogger(RunLogger):
    """TensorBoard event files under ``logdir`` (tensorboardX's writer; ``tensorboard --logdir`` reads them).

    Args:
      logdir: the folder for the event files (created).
      config: the run's settings, written once as text (``config``).
    """

    def __init__(self, logdir: str | os.PathLike, config: Mapping | None = None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError("--log tensorboard needs tensorboardX: pip install 'icl[tensorboard]'") from err
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(logdir=str(self.logdir))
        if config:
            self._writer.add_text("config", "\n".join(f"- `{k}`: `{v}`" for k, v in config.items()), 0)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)

    def log_claims(self, claims: Sequence) -> None:
        for i, claim in enumerate(claims):
            name, measured, passed = _claim_fields(claim)
            if measured is not None:
                self._writer.add_scalar(f"claims/{i:03d} {name}", measured, 0)
            self._writer.add_scalar(f"claims_passed/{i:03d} {name}", float(passed), 0)
        self._writer.add_text("claims", _claims_markdown(claims), 0)

    def log_figure(self, name: str, figure) -> None:
        self._writer.add_figure(name, figure, 0, close=False)

    def close(self) -> None:
        self._writer.close()


class WandbLogger(RunLogger):
    """A Weights & Biases run (offline by default: written under ``directory``/wandb, synced later with
    ``wandb sync`` if wanted).

    Args:
      directory: where W&B writes its run folder.
      config: the run's settings (``wandb.config``).
      project: the W&B project (default ``"icl"``). name: the run's name.
      mode: ``"offline"`` (default), ``"online"`` or ``"disabled"``; ``WANDB_MODE`` wins when set.
    """

    def __init__(self, directory: str | os.PathLike, config: Mapping | None = None, *, project: str = "icl",
                 name: str | None = None, mode: str = "offline"):
        try:
            import wandb
        except ImportError as err:
            raise ImportError("--log wandb needs wandb: pip install 'icl[wandb]'") from err
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"mode must be 'offline', 'online' or 'disabled', got {mode!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(project=project, name=name, dir=str(self.directory), config=dict(config or {}),
                              mode=os.environ.get("WANDB_MODE", mode), reinit="create_new")

    def _scalar(self, tag: str, value: float, step: int) -> None:
        self.run.log({tag: value, "step": step})

    def log_claims(self, claims: Sequence) -> None:
        table = self._wandb.Table(columns=["claim", "measured", "passed"])
        for claim in claims:
            name, measured, passed = _claim_fields(claim)
            table.add_data(name, measured, passed)
            self.run.summary[f"claims/{name}"] = measured
        self.run.log({"claims": table})

    def log_figure(self, name: str, figure) -> None:
        self.run.log({name: self._wandb.Image(figure)})

    def close(self) -> None:
        self.run.finish()


def make_logger(kind: str | None, directory: str | os.PathLike, config: Mapping | None = None,
                name: str | None = None) -> RunLogger | None:
    """``None`` for ``kind=None``, else a [`TensorBoardLogger`][icl.runlog.TensorBoardLogger] or an offline [`WandbLogger`][icl.runlog.WandbLogger] writing
    under ``directory``. A ``ValueError`` names an unknown ``kind``."""
    if kind is None:
        return None
    if kind == "tensorboard":
        return TensorBoardLogger(directory, config)
    if kind == "wandb":
        return WandbLogger(directory, config, name=name)
    raise ValueError(f"kind must be one of {LOGGERS} or None, got {kind!r}")
