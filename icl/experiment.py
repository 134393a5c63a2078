"""The runner every experiment script shares: flags, ``--quick``, training, claims, the run folder, the exit code.

A script declares an [`Experiment`][icl.experiment.Experiment] (its name, the shared flags it uses with their defaults, its own
flags, its ``--quick`` overrides and a ``run(args) -> Outcome`` function) and ends with
``if __name__ == "__main__": script_main(SPEC)``. The runner then

1. parses and range-checks every flag before any work (an argparse error: exit code 2, nothing written);
   ``--quick`` (and named presets such as ``--fast``) set new defaults that explicit flags still override;
   ``--config FILE`` (a run folder's ``config.json`` or ``summary.json``) sets every setting of that run, and
   flags given beside it override them;
2. turns on JAX's persistent compilation cache (``--compilation-cache`` or the ``ICL_COMPILATION_CACHE``
   environment variable: a folder, or ``off``; default ``~/.cache/icl/jax``, under ``$XDG_CACHE_HOME`` when set);
3. runs the experiment; a training run that diverges becomes a failed claim, not a traceback;
4. writes ``summary.json``, ``config.json`` (the resolved settings, what ``--config`` reads) and the figures with [`icl.io.write_run`][icl.io.write_run] (one atomic folder, provenance
   included) into ``--out`` or ``results/<experiment>-<hash of config and precision>``;
5. prints the claims and exits 0 only when every claim passed.

The helpers below are the steps every script repeats: [`train_models`][icl.experiment.train_models] / [`train_grid`][icl.experiment.train_grid] (with
``--checkpoint-every`` / ``--resume``), [`gamma_eff`][icl.experiment.gamma_eff] and [`step_sizes`][icl.experiment.step_sizes] (reading ``Gamma_eff`` off
the weights), [`final_train_loss`][icl.experiment.final_train_loss], [`convergence_claim`][icl.experiment.convergence_claim] (is training finished?) and
[`seed_losses`][icl.experiment.seed_losses] (per-seed losses with their spread).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from icl.checkpoint import CheckpointCorruptError, CheckpointDir, ResumeMismatchError
from icl.runlog import LOGGERS, make_logger
from icl.io import (
    Claim,
    config_hash,
    lower_bound_claim,
    per_seed_claim,
    provenance,
    relative_claim,
    seed_spread,
    upper_bound_claim,
    write_run,
)
from icl.sweeps import grid_points, sweep
from icl.training import TrainConfig, TrainingDivergedError, convergence_report, train

__all__ = [
    "Experiment",
    "Outcome",
    "run_experiment",
    "script_main",
    "enable_compilation_cache",
    "train_models",
    "train_grid",
    "gamma_eff",
    "step_sizes",
    "final_train_loss",
    "convergence_claim",
    "seed_losses",
    "print_claims",
    "Claim",
    "per_seed_claim",
    "relative_claim",
    "upper_bound_claim",
    "lower_bound_claim",
]

RESULTS_ROOT = Path("results")
NOT_CONFIG = ("out", "progress", "quick", "checkpoint_every", "resume", "compilation_cache", "fast", "config_file",
              "log")


# ----------------------------------------------------------------------------------------------------
# Flag types: every value is range-checked by argparse itself (exit code 2 before any work)


def _number(text: str, convert, what: str, low=None, strict: bool = False):
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if convert is int else 'a number'}, got {text!r}") \
            from None
    if convert is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if low is not None and (value <= low if strict else value < low):
        raise argparse.ArgumentTypeError(f"must be {what} {'>' if strict else '>='} {low}, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number."""
    return _number(text, float, "a finite number")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, "an integer", 1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, "an integer", 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, "a finite number", 0, strict=True)


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, "a finite number", 0)


def at_least(text: str, low: int) -> int:
    """argparse helper: an integer >= ``low`` (use as ``type=lambda t: at_least(t, 2)``)."""
    return _number(text, int, "an integer", low)


# The shared flags: (type, nargs, help). A script lists the ones it uses; the others do not exist for it.
COMMON_FLAGS: dict[str, tuple] = {
    "d": (positive_int, None, "input dimension"),
    "n": (positive_int, None, "context length (examples per prompt)"),
    "noise": (nonneg_float, "+", "label-noise standard deviation(s) sigma"),
    "steps": (positive_int, None, "training steps"),
    "batch": (positive_int, None, "prompts per training step"),
    "seeds": (positive_int, None, "independent training runs (vmapped)"),
    "lr": (positive_float, None, "peak Adam learning rate"),
    "seed": (nonneg_int, None, "base random seed"),
    "init_scale": (nonneg_float, None, "std of the initial weights"),
    "init_diag": (finite_float, None, "added to the diagonal of W^PV and W^KQ at start (starts on the c A^T path)"),
    "eval_prompts": (lambda t: at_least(t, 2), None, "fresh prompts for the loss comparison (>= 2)"),
}




# ----------------------------------------------------------------------------------------------------
# The experiment description


@dataclass
class Outcome:
    """What ``Experiment.run`` returns: claims, per-run records, figures (``{file: Figure or callable}``)."""

    claims: list
    runs: list
    figures: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """One experiment script.

    Attributes:
      name: the experiment's name (``summary.json["experiment"]``, the default folder name).
      description: the first line of ``--help``.
      flags: ``{shared flag: default}`` for the ``COMMON_FLAGS`` this script uses (others are absent).
      run: ``run(args) -> Outcome``.
      add_arguments: ``add_arguments(parser)`` adds the script's own flags (with range-checked types).
      validate: ``validate(args, parser)`` checks combinations (``parser.error`` -> exit 2) and may set
        derived values (e.g. ``args.d`` from the covariance eigenvalues).
      quick: ``{flag: value}`` used by ``--quick`` (what ``reproduce_all.py --quick`` runs).
      presets: other named presets, ``{name: ({flag: value}, help)}`` (e.g. von Oswald's ``--fast``).
      trains: the script trains models (adds ``--checkpoint-every`` and ``--resume``).
    """

    name: str
    description: str
    flags: Mapping[str, object]
    run: Callable[[argparse.Namespace], Outcome]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    validate: Callable[[argparse.Namespace, argparse.ArgumentParser], None] | None = None
    quick: Mapping[str, object] = field(default_factory=dict)
    presets: Mapping[str, tuple] = field(default_factory=dict)
    trains: bool = True

    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(description=self.description, allow_abbrev=False,
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        for name, default in self.flags.items():
            kind, nargs, text = COMMON_FLAGS[name]
            p.add_argument("--" + name.replace("_", "-"), type=kind, nargs=nargs, default=default, help=text)
        if self.add_arguments is not None:
            self.add_arguments(p)
        p.add_argument("--quick", action="store_true",
                       help="small settings that still pass every claim: " + _describe(self.quick))
        for preset, (_, text) in self.presets.items():
            p.add_argument("--" + preset, action="store_true", help=text)
        if self.trains:
            p.add_argument("--checkpoint-every", type=nonneg_int, default=0,
                           help="write a training checkpoint every K steps (0: off) under "
                                "<out parent>/.checkpoints/<out name>/")
            p.add_argument("--resume", action="store_true",
                           help="continue training from the newest checkpoint of this configuration")
        p.add_argument("--out", default=None, help="output folder (default: results/<experiment>-<config hash>)")
        p.add_argument("--compilation-cache", default=None,
                       help="JAX persistent compilation cache folder, or 'off' (default: $ICL_COMPILATION_CACHE, "
                            "else ~/.cache/icl/jax)")
        p.add_argument("--progress", action="store_true", help="show progress bars (training, evaluation)")
        if self.trains:
            p.add_argument("--log", choices=LOGGERS, default=None,
                           help="log the training losses, the claims and the figures to TensorBoard or (offline) "
                                "W&B, under <out parent>/logs/<out name>/ (needs the extra of that name)")
        p.add_argument("--config", dest="config_file", default=None, metavar="FILE",
                       help="rerun a run: its config.json or summary.json sets every setting; flags given beside "
                            "it override them")
        return p

    def _config_argv(self, p: argparse.ArgumentParser, path: str) -> tuple[list[str], dict]:
        """The flags that reproduce the settings stored in ``path``, and those settings. Exit 2 on a file that
        is not this experiment's configuration."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            p.error(f"--config {path!r}: cannot read a JSON configuration ({err})")
        if not isinstance(data, dict):
            p.error(f"--config {path!r}: expected a JSON object")
        if data.get("experiment", self.name) != self.name:
            p.error(f"--config {path!r}: a configuration of {data['experiment']!r}, not {self.name!r}")
        settings = data.get("config", {k: v for k, v in data.items() if k != "experiment"})
        if not isinstance(settings, dict):
            p.error(f"--config {path!r}: 'config' must be a JSON object")
        actions = {a.dest: a for a in p._actions if a.option_strings}
        tokens: list[str] = []
        for key, value in settings.items():
            action = actions.get(key)
            if key in NOT_CONFIG:
                p.error(f"--config {path!r}: {key!r} is not a setting of {self.name}")
            if action is None:  # a setting derived from others (checked once they are parsed)
                continue
            flag = action.option_strings[0]
            if action.nargs == 0:  # store_true / store_false
                if value not in (True, False):
                    p.error(f"--config {path!r}: {key!r} must be true or false, got {value!r}")
                tokens += [flag] if value == action.const else []
            elif value is None:
                if action.default is not None:
                    p.error(f"--config {path!r}: {key!r} is null, which no flag value sets")
            elif isinstance(value, list):
                tokens += [flag, *map(str, value)]
            else:
                tokens += [flag, str(value)]
        return tokens, settings

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse and validate ``argv``: exit code 2 with a message on any bad flag; nothing is written."""
        p = self.parser()
        argv = list(sys.argv[1:] if argv is None else argv)
        probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        probe.add_argument("--quick", action="store_true")
        probe.add_argument("--config", dest="config_file", default=None)
        for preset in self.presets:
            probe.add_argument("--" + preset, action="store_true")
        known, _ = probe.parse_known_args(argv)
        stored = None
        if known.config_file is not None:
            given = _given(p, argv)
            tokens, stored = self._config_argv(p, known.config_file)
            argv = tokens + argv  # later flags win: the ones given beside --config override the file
        if known.quick:
            p.set_defaults(**self.quick)
        for preset, (values, _) in self.presets.items():
            if getattr(known, preset):
                p.set_defaults(**values)
        args = p.parse_args(argv)
        if self.trains and args.resume and not args.checkpoint_every:
            p.error("--resume needs --checkpoint-every K (the checkpoints to resume from)")
        if self.validate is not None:
            self.validate(args, p)
        if "steps" in self.flags and getattr(args, "checkpoint_every", 0) > args.steps:
            p.error(f"--checkpoint-every must be <= --steps ({args.steps})")
        args.config = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
        if stored is not None:
            flags = {a.dest for a in p._actions if a.option_strings}
            for key, value in stored.items():
                if key not in args.config:
                    p.error(f"--config {known.config_file!r}: {key!r} is not a setting of {self.name}")
                derived = key not in flags  # follows from the others: checked when none was overridden
                if key not in given and not (derived and given - set(NOT_CONFIG)) \
                        and json.loads(json.dumps(args.config[key])) != value:
                    p.error(f"--config {known.config_file!r}: {key!r} = {value!r} resolves to "
                            f"{args.config.get(key)!r} in this version of {self.name}")
            missing = sorted(set(args.config) - set(stored) - given)
            if missing:
                print(f"note: --config {known.config_file}: {', '.join(missing)} not in the file; the defaults "
                      "apply", file=sys.stderr)
        out = Path(args.out) if args.out else RESULTS_ROOT / f"{self.name}-{config_hash(args.config)}"
        problem = _unwritable(out)
        if problem:
            p.error(f"--out {str(out)!r}: {problem}")
        args.out_dir = out
        args.checkpoint_root = out.parent / ".checkpoints" / out.name
        return args


def _given(p: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The settings named on the command line itself (not by a default, a preset or ``--config``)."""
    q = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for a in p._actions:
        if not a.option_strings or a.dest == "help":
            continue
        if a.nargs == 0:
            q.add_argument(*a.option_strings, dest=a.dest, action="store_const", const=a.const,
                           default=argparse.SUPPRESS)
        else:
            q.add_argument(*a.option_strings, dest=a.dest, nargs=a.nargs, default=argparse.SUPPRESS)
    return set(vars(q.parse_known_args(argv)[0]))


def _describe(values: Mapping) -> str:
    return " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                    for k, v in values.items()) or "(the defaults)"


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot become an output folder (``None`` when it can), without creating anything."""
    if path.exists() and not path.is_dir():
        return "exists and is not a folder"
    probe = path if path.exists() else path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{str(probe)!r} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"folder {str(probe)!r} is not writable"
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        return f"folder {str(path.parent)!r} is not writable (the run folder is replaced as a whole)"
    return None


# ----------------------------------------------------------------------------------------------------
# Compilation cache


def enable_compilation_cache(setting: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache; returns the folder (``None`` when off).

    ``setting`` (``--compilation-cache``) wins over ``$ICL_COMPILATION_CACHE``; either may be a folder or
    ``off``. The default is ``~/.cache/icl/jax`` (``$XDG_CACHE_HOME/icl/jax`` when that is set).
    """
    import jax

    value = setting if setting is not None else os.environ.get("ICL_COMPILATION_CACHE")
    if value is not None and value.strip().lower() in ("off", "0", "false", "none", ""):
        return None
    if value is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        value = os.path.join(base, "icl", "jax")
    try:
        os.makedirs(value, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return value


# ----------------------------------------------------------------------------------------------------
# Running


def print_claims(claims: list[Claim]) -> None:
    """Print a one-line-per-claim table to stdout."""
    width = max((len(c.name) for c in claims), default=10)
    for c in claims:
        theory = "-" if c.theory is None else f"{c.theory:.5g}"
        measured = "nan" if c.measured is None else f"{c.measured:.5g}"
        print(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name:<{width}}  theory {theory:>10}  measured {measured}  "
              f"tol {c.tolerance:g}")


def run_experiment(spec: Experiment, argv: Sequence[str] | None = None) -> dict:
    """Parse, run, write and report one experiment. Returns ``{"claims", "runs", "out_dir", "seconds",
    "all_passed", "summary"}`` (what ``reproduce_all.py`` reads). Bad flags: ``SystemExit(2)``."""
    args = spec.parse(argv)
    start = time.perf_counter()
    cache = enable_compilation_cache(args.compilation_cache)
    log_dir = args.out_dir.parent / "logs" / args.out_dir.name if getattr(args, "log", None) else None
    try:
        args.logger = make_logger(getattr(args, "log", None), log_dir, args.config, name=args.out_dir.name)
    except ImportError as err:
        print(f"{Path(sys.argv[0]).name}: error: --log {args.log}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        outcome = spec.run(args)
    except (ResumeMismatchError, CheckpointCorruptError) as err:  # a flag-level error, as argparse reports one
        print(f"{Path(sys.argv[0]).name}: error: --resume: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDivergedError as err:
        outcome = Outcome([Claim("training finished without diverging", None, float("nan"), 0.0, False, str(err))],
                          [{"error": str(err)}])
    if args.logger is not None:
        _log_outcome(args.logger, outcome)
        print(f"logged to {log_dir} ({args.log})")
    seconds = time.perf_counter() - start
    summary = {
        "experiment": spec.name,
        "config": args.config,
        "claims": outcome.claims,
        "runs": outcome.runs,
        "seconds": seconds,
        "provenance": {**provenance(), "compilation_cache": cache, **({"log_dir": str(log_dir)} if log_dir else {})},
        **outcome.extra,
    }
    config = {"experiment": spec.name, "config": args.config}
    written = write_run(args.out_dir, summary, outcome.figures, files={"config.json": config})
    print_claims(outcome.claims)
    print(f"wrote {args.out_dir}/summary.json and {', '.join(written['figures']) or 'no figures'} in {seconds:.1f}s")
    return {"claims": outcome.claims, "runs": outcome.runs, "out_dir": args.out_dir, "seconds": seconds,
            "all_passed": written["all_passed"], "summary": written}


def _log_outcome(logger, outcome: Outcome) -> None:
    """Log a run's figures (rendering a figure callable once, for the run folder too) and claims, then close."""
    try:
        for name, fig in list(outcome.figures.items()):
            try:
                if callable(fig) and not hasattr(fig, "savefig"):
                    fig = outcome.figures[name] = fig()
            except Exception:  # the run folder records the figure's error (icl.io.write_run)
                continue
            if hasattr(fig, "savefig"):
                logger.log_figure(Path(name).stem, fig)
        logger.log_claims(outcome.claims)
    finally:
        logger.close()


def script_main(spec: Experiment, argv: Sequence[str] | None = None) -> None:
    """The ending of every script: run it and exit 0 when every claim passed, else 1 (2: bad flags)."""
    sys.exit(0 if run_experiment(spec, argv)["all_passed"] else 1)


# ----------------------------------------------------------------------------------------------------
# Training helpers


def _checkpointing(args, stage: str) -> dict:
    if not getattr(args, "checkpoint_every", 0):
        return {}
    folder = Path(args.checkpoint_root) / stage
    if not args.resume and folder.exists():
        shutil.rmtree(folder)  # a fresh run of this configuration replaces its old checkpoints
    folder.mkdir(parents=True, exist_ok=True)
    return {"checkpoint": CheckpointDir(folder, resume=bool(args.resume))}


def train_config(args, **overrides):
    """The [`icl.TrainConfig`][icl.training.TrainConfig] of the shared flags (``steps, batch, n, lr, seeds, seed``) and ``overrides``."""
    values = dict(steps=args.steps, batch=args.batch, n=args.n, lr=args.lr, num_seeds=args.seeds, seed=args.seed,
                  progress_every=max(args.steps // 5, 1) if args.progress else 0,
                  checkpoint_every=getattr(args, "checkpoint_every", 0))
    values.update(overrides)
    return TrainConfig(**values)


def _monitoring(args, stage: str) -> dict:
    """``progress`` and the run logger's ``callback`` for one training stage, from ``--progress`` and ``--log``."""
    logger = getattr(args, "logger", None)
    return {"progress": bool(getattr(args, "progress", False)),
            "callback": None if logger is None else logger.training(stage)}


def train_models(args, model_fn, task, config, stage: str = "train", **kwargs):
    """[`icl.train`][icl.training.train] with the script's checkpoint flags (a folder per ``stage`` under the checkpoint root), its
    progress bar (``--progress``) and run logger (``--log``)."""
    return train(model_fn, task, config, **_checkpointing(args, stage), **_monitoring(args, stage), **kwargs)


def train_grid(args, model_fn, task_fn, config, grid: Mapping[str, Sequence], stage: str = "grid") -> list:
    """Train every point of ``grid``: one compiled sweep, or one checkpointed ``train`` per point.

    Returns ``[(point, TrainResult)]``. A sweep point equals the single ``train`` call with the same config,
    so both paths give the same models.
    """
    points = grid_points(grid)
    if not getattr(args, "checkpoint_every", 0):
        return list(sweep(model_fn, task_fn, config, grid, **_monitoring(args, stage)))
    out = []
    for i, point in enumerate(points):
        out.append((point, train(model_fn, task_fn(**point), config, **_checkpointing(args, f"{stage}_{i}"),
                                 **_monitoring(args, f"{stage}_{i}"))))
    return out


def gamma_eff(result, layer: int = 0) -> np.ndarray:
    """``Gamma_eff = c A^T + a b^T`` of one layer of every seed: ``[seeds, d, d]`` float64 (docs/theory.md §2)."""
    return np.stack([np.asarray(result.model(i).preconditioner(layer), np.float64) for i in range(result.num_seeds)])


def step_sizes(gammas: np.ndarray) -> np.ndarray:
    """The step size each ``Gamma_eff`` implements: its mean diagonal, ``[...]``."""
    g = np.asarray(gammas)
    return np.trace(g, axis1=-2, axis2=-1) / g.shape[-1]


def final_train_loss(result, fraction: float = 0.05) -> list[float]:
    """Mean training loss of each seed over the last ``fraction`` of the steps."""
    losses = np.asarray(result.losses, np.float64)
    tail = max(1, int(round(losses.shape[1] * fraction)))
    return losses[:, -tail:].mean(axis=1).tolist()


def convergence(result) -> dict:
    """``icl.training.convergence_report(result)``: is the loss still falling over the last tenth; do seeds agree."""
    return convergence_report(result)


def convergence_claim(label: str, result) -> tuple[list[Claim], dict]:
    """Claims that training finished, one number each: the loss no longer falls, and (two or more seeds) the
    seeds agree.

    Returns ``(claims, report)``. The first claim's measured value is [`icl.convergence_report`][icl.training.convergence_report]'s
    ``excess_drop``: the largest over seeds of ``min(drop - 2%, drop - 3 SE)`` for the relative drop of a
    seed's loss over the last tenth of training (a fitted line), positive only when the drop is both above 2%
    and above noise. The second's is ``excess_gap``, the same for the relative gap between two seeds' window
    losses. Each must be at most 0.
    """
    report = convergence(result)
    drops = ", ".join(f"{100 * m:.2f}% ± {100 * s:.2f}%" for m, s in zip(report["relative_drop"],
                                                                     report["relative_drop_se"]))
    reasons = "; ".join(report["reasons"])
    claims = [Claim(f"{label}: training converged (loss drop over the last tenth: min(drop - 2%, drop - 3 SE) <= 0)",
                    None, report["excess_drop"], 0.0, not report["still_falling"],
                    f"icl.convergence_report over the last {report['window']} steps; relative drop per seed "
                    f"{drops}" + (f"; {reasons}" if report["still_falling"] else ""),
                    seeds=seed_spread(report["relative_drop"]))]
    if report["excess_gap"] is not None:
        claims.append(Claim(f"{label}: seeds agree (window losses: min(gap - 2%, gap - 3 SE) <= 0)", None,
                            report["excess_gap"], 0.0, not report["seeds_disagree"],
                            f"window mean loss per seed {', '.join(f'{m:.4g}' for m in report['window_mean'])}"
                            + (f"; {reasons}" if report["seeds_disagree"] else ""),
                            seeds=seed_spread(report["window_mean"])))
    return claims, report


def seed_losses(comparison, names: Sequence[str]) -> dict:
    """Per-seed losses of ``names`` in a comparison with their spread: ``{mean, std, per_seed, se, se_per_seed}``.

    ``std`` is the spread over training seeds (ddof 1); ``se`` the largest standard error over prompts.
    """
    ses = np.array([comparison.losses[k][1] for k in names], np.float64)
    return {**seed_spread([comparison.losses[k][0] for k in names]), "se": float(ses.max()), "se_per_seed": ses.tolist()}
