"""Predictive uncertainty: calibration metrics for mean-and-variance predictors, and distribution shift.

A *mean-and-variance predictor* (``returns_variance = True``) maps prompts to ``(mean [b], var [b])``
and, through ``.prefix``, to ``(mean [b, n], var [b, n])``: the trained models built with
``variance_head=True``, the Gaussian Bayes predictive ``icl.bayes_predictive(task)`` and the pool's
``icl.dmmse(pool, variance=True)``. Each is scored as the Gaussian ``N(mean, var)``; a predictor that
also exposes its exact predictive mixture (``mixture(prompts)``/``prefix_mixture(prompts)``, as dMMSE
does: ``sum_m p(m|D) N(w_m^T x_q, sigma^2)``) is scored with that exact density and CDF
(docs/theory.md §12).

Metrics, each a Monte-Carlo mean over fresh prompts with its standard error:

- ``nll``: ``-log p(y_q | D)``; for a Gaussian ``0.5 log(2 pi v) + (y - mu)^2 / (2 v)`` (nats).
- ``mse``: ``(y_q - mean)^2``.
- ``coverage``: the fraction of targets inside the central ``level`` interval, i.e. with PIT in
  ``[(1 - level)/2, (1 + level)/2]``; a calibrated predictor covers ``level``.
- ``pit_histogram``: the fraction of PIT values ``F(y_q)`` in ``bins`` equal bins of ``[0, 1]``
  (each ``1/bins`` when calibrated).
- ``sharpness``: the mean predictive standard deviation (and ``mean_variance``, the mean variance).

Shifts (Liu et al. 2024): [`shifted_task`][icl.uncertainty.shifted_task] scales or replaces the weight prior (task shift) or the
input law (covariate shift); [`shift_evaluation`][icl.uncertainty.shift_evaluation] compares a model with the Bayes predictive under the
training prior and under the true test law (one reference when they coincide: covariate and
prompt-length shift leave the posterior unchanged, since it does not depend on the law of ``x``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl.evaluate import check_pairs, monte_carlo
from icl.predictors import bayes_predictive
from icl.protocol import has_prefix, predictor_name, returns_variance
from icl.tasks.base import check_positive_int
from icl.training import gaussian_nll

__all__ = [
    "Calibration",
    "CalibrationComparison",
    "calibration",
    "compare_calibration",
    "predictive_stats",
    "shifted_task",
    "shift_evaluation",
]

DEFAULT_LEVELS = (0.5, 0.9, 0.95)


def _std_normal_cdf(z):
    return 0.5 * jax.scipy.special.erfc(-z / jnp.sqrt(2.0).astype(z.dtype))


DEGENERATE_EPS = 1e-6  # a predictive variance below this times 1 + y^2 is a point mass at float32 resolution


def _check_levels(levels) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in levels)
    except TypeError as err:
        raise ValueError(f"levels must be a sequence of numbers in (0, 1), got {levels!r}") from err
    if not out or any(not (0.0 < v < 1.0) for v in out):
        raise ValueError(f"levels must be a non-empty sequence of numbers in (0, 1), got {levels!r}")
    return out


def _distribution(predictor, prompts, prefix: bool, name: str):
    """``(mean, var, log_prob_fn, cdf_fn)`` of a predictor's predictive distribution."""
    if prefix and hasattr(predictor, "prefix_mixture") or not prefix and hasattr(predictor, "mixture"):
        log_w, means, comp_var = (predictor.prefix_mixture if prefix else predictor.mixture)(prompts)
        p = jnp.exp(log_w)
        mean = jnp.sum(p * means, axis=-1)
        var = comp_var + jnp.sum(p * (means - mean[..., None]) ** 2, axis=-1)
        comp_sd = jnp.sqrt(comp_var)

        def log_prob(y):
            comp = -0.5 * jnp.log(2.0 * jnp.pi * comp_var) - 0.5 * (y[..., None] - means) ** 2 / comp_var
            return jax.nn.logsumexp(log_w + comp, axis=-1)

        def cdf(y):
            return jnp.sum(p * _std_normal_cdf((y[..., None] - means) / comp_sd), axis=-1)

        return mean, var, log_prob, cdf
    if not returns_variance(predictor):
        raise ValueError(
            f"predictor {name!r} is not a mean-and-variance predictor (returns_variance is not True); "
            "calibration needs (mean, var): build models with variance_head=True or use bayes_predictive"
        )
    if prefix and not has_prefix(predictor):
        raise ValueError(f"predictor {name!r} has no .prefix, needed for prefix=True")
    out = predictor.prefix(prompts) if prefix else predictor(prompts)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(f"predictor {name!r} must return a pair (mean, var), got {type(out).__name__}")
    mean, var = out
    want = prompts.y.shape if prefix else prompts.y_query.shape
    if mean.shape != want or var.shape != want:
        raise ValueError(f"predictor {name!r} must return mean and var of shape {want}, got {mean.shape}, {var.shape}")
    return (mean, var, lambda y: -gaussian_nll(mean, var, y),
            lambda y: _std_normal_cdf((y - mean) / jnp.sqrt(var)))


def predictive_stats(predictor, prompts, *, prefix: bool = False, levels=DEFAULT_LEVELS, bins: int = 10,
                     name: str | None = None) -> dict:
    """Per-prompt calibration statistics of one predictor on ``prompts`` (``[batch]``, or ``[batch, n]`` with prefix).

    Returns ``{"nll", "mse", "sd", "variance", "pit", "coverage": {level: 0/1}, "pit_histogram": one-hot
    [..., bins], "invalid": 0/1, "degenerate": 0/1}``; [`calibration`][icl.uncertainty.calibration] averages them. Jit-compatible.
    ``invalid`` marks a variance that is negative or not finite, or a mean that is not finite (the other entries
    are then meaningless, and [`calibration`][icl.uncertainty.calibration] refuses them); ``degenerate`` marks a variance within
    ``DEGENERATE_EPS (1 + target^2)`` of zero, zero included (a point mass, e.g. a noiseless task's Bayes
    predictive, whose coverage and PIT measure only rounding; [`calibration`][icl.uncertainty.calibration] refuses it too).
    """
    levels = _check_levels(levels)
    bins = check_positive_int("bins", bins)
    name = name or predictor_name(predictor)
    target = prompts.y if prefix else prompts.y_query
    mean, var, log_prob, cdf = _distribution(predictor, prompts, prefix, name)
    pit = cdf(target)
    floor = DEGENERATE_EPS * (1 + target**2)
    invalid = ~(jnp.isfinite(var) & (var >= -floor) & jnp.isfinite(mean))
    degenerate = ~invalid & (var <= floor)
    idx = jnp.clip(jnp.floor(pit * bins).astype(jnp.int32), 0, bins - 1)
    return {
        "nll": -log_prob(target),
        "mse": (target - mean) ** 2,
        "sd": jnp.sqrt(var),
        "variance": var,
        "pit": pit,
        "coverage": {lv: ((pit >= (1 - lv) / 2) & (pit <= (1 + lv) / 2)).astype(target.dtype) for lv in levels},
        "pit_histogram": jax.nn.one_hot(idx, bins, dtype=target.dtype),
        "invalid": invalid.astype(target.dtype),
        "degenerate": degenerate.astype(target.dtype),
    }


@dataclass(frozen=True)
class Calibration:
    """Calibration of one mean-and-variance predictor; every entry is ``(mean, standard error)`` (float64).

    With ``prefix=True`` every mean and SE is an array ``[n]`` (entry ``k-1``: the prediction of ``y_k``
    from ``k-1`` pairs).

    Attributes:
      num_prompts: prompts evaluated.
      nll: negative log-likelihood (nats). mse: squared error of the mean.
      coverage: ``{level: (fraction covered, se)}`` for the central intervals.
      pit_histogram: ``(fractions [bins], se [bins])``.
      sharpness: mean predictive standard deviation; mean_variance: mean predictive variance.
    """

    num_prompts: int
    nll: tuple
    mse: tuple
    coverage: dict
    pit_histogram: tuple
    sharpness: tuple
    mean_variance: tuple

    def to_dict(self) -> dict:
        """JSON-ready form (lists for arrays)."""

        def pair(t):
            m, s = t
            return {"mean": np.asarray(m).tolist(), "se": np.asarray(s).tolist()}

        return {
            "num_prompts": self.num_prompts,
            "nll": pair(self.nll),
            "mse": pair(self.mse),
            "coverage": {str(k): pair(v) for k, v in self.coverage.items()},
            "pit_histogram": pair(self.pit_histogram),
            "sharpness": pair(self.sharpness),
            "mean_variance": pair(self.mean_variance),
        }


@dataclass(frozen=True)
class CalibrationComparison:
    """[`compare_calibration`][icl.uncertainty.compare_calibration] result: per-predictor [`Calibration`][icl.uncertainty.Calibration] and paired differences.

    Attributes:
      num_prompts: prompts evaluated (every predictor saw the same ones).
      metrics: ``{name: Calibration}``.
      pairs: ``{(a, b): {"nll_diff", "nll_diff_se", "mse_diff", "mse_diff_se"}}``: paired means of
        ``nll_a - nll_b`` and ``err_a^2 - err_b^2`` (their SEs are much smaller than unpaired ones).
    """

    num_prompts: int
    metrics: dict
    pairs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready form: ``{"num_prompts", "metrics": {name: ...}, "pairs": {"a|b": ...}}``."""
        return {
            "num_prompts": self.num_prompts,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "pairs": {f"{a}|{b}": {k: np.asarray(v).tolist() for k, v in s.items()}
                      for (a, b), s in self.pairs.items()},
        }


@dataclass(frozen=True)
class _CalibrationStats:
    """The per-prompt statistics of [`compare_calibration`][icl.uncertainty.compare_calibration]: a hashable ``stat_fn`` for the engine
    (one compiled program per configuration and predictor structure)."""

    levels: tuple
    bins: int
    prefix: bool
    pairs: tuple

    def __call__(self, predictors, prompts):
        per = {nm: predictive_stats(p, prompts, prefix=self.prefix, levels=self.levels, bins=self.bins, name=nm)
               for nm, p in predictors.items()}
        out = {nm: {k: v for k, v in s.items() if k != "pit"} for nm, s in per.items()}
        diffs = {f"{a}|{b}": {"nll_diff": per[a]["nll"] - per[b]["nll"], "mse_diff": per[a]["mse"] - per[b]["mse"]}
                 for a, b in self.pairs}
        return {"per": out, "pairs": diffs}


def _entry(mean, se):
    mean, se = np.asarray(mean, np.float64), np.asarray(se, np.float64)
    return (float(mean), float(se)) if mean.ndim == 0 else (mean, se)


def compare_calibration(
    predictors: Mapping[str, object],
    task,
    key: jax.Array,
    n: int,
    num_prompts: int = 100_000,
    *,
    chunk_size: int = 5_000,
    levels: Sequence[float] = DEFAULT_LEVELS,
    bins: int = 10,
    pairs: Sequence[tuple[str, str]] = (),
    prefix: bool = False,
    progress: bool = False,
) -> CalibrationComparison:
    """Calibration metrics of several mean-and-variance predictors on the same fresh prompts of ``task``.

    Args:
      predictors: ``{name: predictor}``, each with ``returns_variance = True`` (or an exact ``mixture``).
      task: the law to draw prompts from (e.g. a shifted task); key: PRNG key; n: context length.
      num_prompts: prompts in all (>= 2), rounded up to whole chunks of ``chunk_size``; the Monte-Carlo
        engine is [`icl.evaluate.monte_carlo`][icl.evaluate.monte_carlo] (common random numbers: the same key gives the same prompts).
      levels: central-interval levels for coverage, each in (0, 1). bins: PIT histogram bins.
      pairs: ``(a, b)`` names whose paired NLL and squared-error differences to report.
      prefix: score ``.prefix`` (every ``k = 1..n``; results are arrays ``[n]``) instead of the query.
      progress: show a progress bar on stderr, one step per chunk.

    Returns:
      [`CalibrationComparison`][icl.uncertainty.CalibrationComparison].
    """
    if not isinstance(predictors, Mapping) or not predictors:
        raise ValueError("predictors must be a non-empty mapping {name: predictor}")
    n = check_positive_int("n", n)
    num_prompts = check_positive_int("num_prompts", num_prompts)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    levels = _check_levels(levels)
    bins = check_positive_int("bins", bins)
    pairs = check_pairs(pairs, predictors)
    probe = jax.eval_shape(lambda k: task.sample(k, 1, n), jax.random.PRNGKey(0))  # shapes only: no compile
    for nm, p in predictors.items():  # validate outside jit, so errors name the predictor plainly
        jax.eval_shape(lambda pr, p=p, nm=nm: predictive_stats(p, pr, prefix=prefix, levels=levels, bins=bins,
                                                               name=nm), probe)

    result = monte_carlo(_CalibrationStats(levels, bins, bool(prefix), tuple(pairs)), dict(predictors), task, key, n,
                         num_prompts, chunk_size, progress="calibration" if progress is True else progress)
    count = result.num_prompts
    mean, se = result.mean, result.se
    metrics = {}
    for nm in predictors:
        m, e = mean["per"][nm], se["per"][nm]
        bad = int(round(float(np.max(m["invalid"])) * count))
        if bad:
            raise ValueError(f"predictor {nm!r} returned an invalid predictive distribution (variance negative or not "
                             f"finite, or mean not finite) on {bad} of {count} prompts"
                             f"{' at some prefix' if prefix else ''}; NLL, coverage and PIT are undefined there")
        flat = int(round(float(np.max(m["degenerate"])) * count))
        if flat:
            raise ValueError(f"predictor {nm!r} is degenerate: its predictive variance is zero up to {DEGENERATE_EPS:g} "
                             f"x (1 + y^2) on {flat} of {count} prompts{' at some prefix' if prefix else ''} (a point "
                             "mass, e.g. the Bayes predictive of a noiseless task), so NLL, coverage and PIT are undefined")
        metrics[nm] = Calibration(
            num_prompts=count,
            nll=_entry(m["nll"], e["nll"]),
            mse=_entry(m["mse"], e["mse"]),
            coverage={lv: _entry(m["coverage"][lv], e["coverage"][lv]) for lv in levels},
            pit_histogram=_entry(m["pit_histogram"], e["pit_histogram"]),
            sharpness=_entry(m["sd"], e["sd"]),
            mean_variance=_entry(m["variance"], e["variance"]),
        )
    pair_stats = {}
    for a, b in pairs:
        m, e = mean["pairs"][f"{a}|{b}"], se["pairs"][f"{a}|{b}"]
        nll, mse = _entry(m["nll_diff"], e["nll_diff"]), _entry(m["mse_diff"], e["mse_diff"])
        pair_stats[(a, b)] = {"nll_diff": nll[0], "nll_diff_se": nll[1], "mse_diff": mse[0], "mse_diff_se": mse[1]}
    return CalibrationComparison(count, metrics, pair_stats)


def calibration(predictor, task, key: jax.Array, n: int, num_prompts: int = 100_000, **kwargs) -> Calibration:
    """Calibration metrics of one mean-and-variance predictor (see [`compare_calibration`][icl.uncertainty.compare_calibration] for the options)."""
    return compare_calibration({"predictor": predictor}, task, key, n, num_prompts, **kwargs).metrics["predictor"]


def shifted_task(task, *, w_scale: float = 1.0, w_cov=None, x_scale: float = 1.0, x_cov=None, noise_std=None):
    """A Gaussian linear task with a shifted law (Liu et al. 2024's shifts).

    Task shift: ``w_scale`` multiplies ``w`` (``Omega -> w_scale^2 Omega``) or ``w_cov`` replaces Omega.
    Covariate shift: ``x_scale`` multiplies ``x`` (``Sigma -> x_scale^2 Sigma``) or ``x_cov`` replaces Sigma.
    ``noise_std`` replaces sigma. Everything else is kept. ``task`` must describe its law with ``x_cov``,
    ``w_cov`` and ``noise_std`` (a ``LinearRegressionTask``).
    """
    for attr in ("x_cov", "w_cov", "noise_std", "d"):
        if not hasattr(task, attr):
            raise ValueError(f"task must be a Gaussian linear task (with x_cov, w_cov, noise_std); it has no {attr!r}")
    for name, value in (("w_scale", w_scale), ("x_scale", x_scale)):
        if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if w_cov is not None and w_scale != 1.0:
        raise ValueError("pass either w_scale or w_cov, not both")
    if x_cov is not None and x_scale != 1.0:
        raise ValueError("pass either x_scale or x_cov, not both")
    new_w = np.asarray(task.w_cov, np.float64) * w_scale**2 if w_cov is None else w_cov
    new_x = np.asarray(task.x_cov, np.float64) * x_scale**2 if x_cov is None else x_cov
    sigma = task.noise_std if noise_std is None else noise_std
    return type(task)(d=task.d, noise_std=sigma, x_cov=new_x, w_cov=new_w)


def _same_posterior(a, b) -> bool:
    return (float(a.noise_std) == float(b.noise_std)
            and np.array_equal(np.asarray(a.w_cov), np.asarray(b.w_cov)))


def shift_evaluation(
    model,
    train_task,
    test_task,
    key: jax.Array,
    n: int,
    num_prompts: int = 100_000,
    **kwargs,
) -> CalibrationComparison:
    """Score ``model`` on ``test_task`` against the Bayes predictive under the training and the true law.

    Predictors: ``"model"``, ``"bayes_train_prior"`` (``bayes_predictive(train_task)``: what a model that
    performs Bayesian inference with the prior it was trained on would predict) and ``"bayes_true_law"``
    (``bayes_predictive(test_task)``: the best possible). When the posterior is the same under both laws
    (covariate shift, prompt-length shift: the posterior does not depend on the law of ``x``), there is
    one reference, ``"bayes"``. Pairs: model minus each reference (and train prior minus true law).

    Args:
      model: a mean-and-variance predictor.
      train_task: the Gaussian linear task the model was trained on.
      test_task: the Gaussian linear task it is evaluated on.
      key: as in [`compare_calibration`][icl.uncertainty.compare_calibration].
      n: as there (``n`` may exceed the training length).
      num_prompts: as there.
      **kwargs: as there.
    """
    if _same_posterior(train_task, test_task):
        predictors = {"model": model, "bayes": bayes_predictive(test_task)}
        pairs = [("model", "bayes")]
    else:
        predictors = {"model": model, "bayes_train_prior": bayes_predictive(train_task),
                      "bayes_true_law": bayes_predictive(test_task)}
        pairs = [("model", "bayes_true_law"), ("model", "bayes_train_prior"), ("bayes_train_prior", "bayes_true_law")]
    return compare_calibration(predictors, test_task, key, n, num_prompts, pairs=pairs, **kwargs)
