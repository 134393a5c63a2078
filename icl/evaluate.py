"""Evaluation: ONE jitted, chunked Monte-Carlo engine behind every comparison, curve and metric.

The engine draws ``num_prompts`` fresh prompts from a task in chunks of ``chunk_size`` (``lax.scan`` over
chunk keys ``jax.random.split(key, num_chunks)``), applies a statistic to every prompt and returns, per
chunk, the sum and the sum of squared deviations from the chunk mean. Chunks are combined in float64
with Chan et al.'s parallel formula (``_mean_se``), so standard errors stay right in float32 even
when the values barely vary (a cosine near 1).

**Compiled once per shape.** The engine is a module-level ``jax.jit``; predictors are passed to it as
ARGUMENTS, not closed over: library predictors are pytrees whose hyper-parameters are leaves, NNX
modules are split into a static graph definition and their state, and plain functions are static
(hashed by identity, so a new lambda per call compiles again). A second call with the same shapes and a
different step size, penalty, noise level or trained model reuses the compiled program.

Public: [`monte_carlo`][icl.evaluate.monte_carlo] (mean and SE of any per-prompt statistics pytree; the building block),
[`compare_predictors`][icl.evaluate.compare_predictors] (losses, paired differences, gaps, sensitivity cosines), [`error_curve`][icl.evaluate.error_curve]
and [`error_curves`][icl.evaluate.error_curves] (normalised squared error at every prefix, Garg et al. 2022),
[`compare_with_reference`][icl.evaluate.compare_with_reference] and [`evaluate_across_tasks`][icl.evaluate.evaluate_across_tasks] (von Oswald et al. 2023's metrics), and
the per-prompt metrics [`prediction_gap`][icl.evaluate.prediction_gap], [`sensitivities`][icl.evaluate.sensitivities], [`sensitivity_cosine`][icl.evaluate.sensitivity_cosine],
[`reference_metrics`][icl.evaluate.reference_metrics], plus [`snapshot_metrics`][icl.evaluate.snapshot_metrics] and [`interpolation_losses`][icl.evaluate.interpolation_losses] along training
(with [`interpolate`][icl.evaluate.interpolate]; the gauge fix ``align_gauge`` lives in [`icl.models`][icl.models])
and in weight space (docs/theory.md §2, §5, §9).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl import compiler
from icl.progress import progress_bar
from icl.protocol import check_output, mean_of, returns_variance
from icl.pytree import Static, is_pytree
from icl.tasks import Prompts, check_positive_int

__all__ = [
    "MonteCarlo",
    "monte_carlo",
    "mean_se",
    "check_pairs",
    "predict",
    "predict_prefix",
    "Comparison",
    "compare_predictors",
    "ErrorCurve",
    "error_curve",
    "error_curves",
    "prediction_gap",
    "sensitivities",
    "query_marginal_loss",
    "sensitivity_cosine",
    "reference_metrics",
    "compare_with_reference",
    "evaluate_across_tasks",
    "snapshot_metrics",
    "interpolation_losses",
    "interpolate",
]


# ----------------------------------------------------------------------------------------------------
# Predictors as jit arguments


_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, float, int, complex, bool)


def _split(p) -> tuple[tuple, Any]:
    """``(static, dynamic)`` parts of a predictor: nnx graphdef + state, pytree treedef + leaves, or static."""
    if isinstance(p, nnx.Module):
        graphdef, state = nnx.split(p)
        return ("nnx", graphdef), state
    if is_pytree(p):
        leaves, treedef = jax.tree.flatten(p)
        if all(isinstance(leaf, _ARRAY_TYPES) for leaf in leaves):
            return ("tree", treedef), leaves
    if not callable(p):
        raise ValueError(f"a predictor must be callable (prompts -> [batch]), got {type(p).__name__}")
    return ("static", Static(p)), None


def _merge(static: tuple, dynamic):
    kind, value = static
    if kind == "nnx":
        return nnx.merge(value, dynamic)
    if kind == "tree":
        return jax.tree.unflatten(value, dynamic)
    return value.value


def predict(name: str, p, prompts: Prompts) -> jax.Array:
    """``p(prompts)`` shape-checked (ValueError naming ``name``); the mean of a mean-and-variance predictor."""
    out = p(prompts)
    check_output(repr(name), out, prompts, prefix=False, variance=returns_variance(p))
    return mean_of(out)


def predict_prefix(name: str, p, prompts: Prompts) -> jax.Array:
    """``p.prefix(prompts) [batch, n]`` shape-checked; ValueError naming ``name`` if ``p`` has no prefix."""
    method = getattr(p, "prefix", None)
    if not callable(method):
        raise ValueError(f"predictor {name!r} ({type(p).__name__}) has no prefix(prompts) -> [batch, n]; "
                         f"use a library predictor or a model with .prefix")
    out = method(prompts)
    check_output(repr(name), out, prompts, prefix=True, variance=returns_variance(p))
    return mean_of(out)


# ----------------------------------------------------------------------------------------------------
# The engine


def _sum_m2(v: jax.Array):
    """Sum over the prompt axis and sum of squared deviations from the chunk mean (per statistic entry)."""
    v = jnp.asarray(v)
    return v.sum(axis=0), jnp.sum((v - v.mean(axis=0)) ** 2, axis=0)


@compiler.jit(static_argnames=("stat_fn", "statics", "single", "chunk", "n"))
def _engine(dynamics, task, keys, *, stat_fn, statics, single, chunk, n):
    """Per chunk key: sample ``chunk`` prompts, apply ``stat_fn``, reduce to (sum, m2) per leaf."""
    preds = {name: _merge(static, dyn) for (name, static), dyn in zip(statics, dynamics)}
    if single:
        preds = preds[statics[0][0]]
    if isinstance(task, Static):
        task = task.value

    def one_chunk(_, key):
        values = stat_fn(preds, task.sample(key, chunk, n))
        return None, (jax.tree.map(lambda v: _sum_m2(v)[0], values), jax.tree.map(lambda v: _sum_m2(v)[1], values))

    return jax.lax.scan(one_chunk, None, keys)[1]


def _mean_se(sums, m2s, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error from per-chunk sums ``[C, ...]`` and within-chunk sums of squared deviations.

    The one SE helper of the library: chunks are combined in float64 with Chan et al. (1979)'s parallel
    formula ``M2 = sum_c M2_c + chunk * sum_c (mean_c - mean)^2``, then ``se = sqrt(M2 / (N - 1) / N)``.
    """
    sums, m2s = np.asarray(sums, np.float64), np.asarray(m2s, np.float64)
    count = sums.shape[0] * chunk
    mean = sums.sum(axis=0) / count
    m2 = m2s.sum(axis=0) + chunk * np.sum((sums / chunk - mean) ** 2, axis=0)
    se = np.sqrt(np.maximum(m2, 0.0) / max(count - 1, 1) / count)
    return mean, se


def mean_se(values, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error (float64) of per-prompt ``values`` along ``axis``: the SE helper for values
    already in hand (the same formula as [`monte_carlo`][icl.evaluate.monte_carlo]'s, with one chunk). Needs two values or more."""
    v = np.moveaxis(np.asarray(values, np.float64), axis, 0)
    if v.shape[0] < 2:
        raise ValueError(f"mean_se needs at least 2 values along axis {axis}, got {v.shape[0]}")
    return _mean_se(v.sum(axis=0)[None], np.sum((v - v.mean(axis=0)) ** 2, axis=0)[None], v.shape[0])


@dataclass(frozen=True)
class MonteCarlo:
    """Result of [`monte_carlo`][icl.evaluate.monte_carlo]: ``mean`` and ``se`` (pytrees shaped like the statistics, float64
    numpy, one entry per statistic with the prompt axis averaged out) over ``num_prompts`` prompts."""

    mean: Any
    se: Any
    num_prompts: int


def _check_sizes(n, num_prompts, chunk_size) -> tuple[int, int, int]:
    n = check_positive_int("n", n)
    num_prompts = check_positive_int("num_prompts", num_prompts)
    if num_prompts < 2:
        raise ValueError(f"num_prompts must be an integer >= 2 (a standard error needs two prompts), got {num_prompts}")
    chunk = min(check_positive_int("chunk_size", chunk_size), num_prompts)
    return n, -(-num_prompts // chunk), chunk


def monte_carlo(
    stat_fn: Callable,
    predictors,
    task,
    key: jax.Array,
    n: int,
    num_prompts: int = 100_000,
    chunk_size: int = 10_000,
    *,
    progress=False,
) -> MonteCarlo:
    """Mean and standard error over fresh prompts of any per-prompt statistics: the engine itself.

    Args:
      stat_fn: ``stat_fn(predictors, prompts) -> pytree`` of arrays whose leading axis is the prompt
        axis ``[chunk, ...]`` (e.g. ``{"sq": (p(prompts) - prompts.y_query) ** 2}``). It runs inside
        ``jit``; it is a static argument, so define it once (a module-level function or a frozen
        dataclass with ``__call__``): a new lambda per call compiles again.
      predictors: ``{name: predictor}`` (``stat_fn`` receives the dict rebuilt inside ``jit``), a single
        predictor (received as is), or ``None``/``{}``. Library predictors and NNX modules travel as
        pytree arguments, so new hyper-parameters or weights do not recompile.
      task: draws the prompts (``task.sample(chunk_key, chunk, n)``); a pytree task is an argument too.
      key: PRNG key; chunk ``c`` uses ``jax.random.split(key, num_chunks)[c]`` (the same prompts for the
        same key, chunk size and ``n``, whatever the predictors: common random numbers).
      n: context length. num_prompts: prompts (>= 2), rounded up to whole chunks.
      chunk_size: prompts per chunk (bounds memory).
      progress: show a progress bar on stderr (tqdm), one step per chunk: True (a bar named "monte_carlo"), a
        string (a bar of that name), or an open bar (anything with ``update(n)``, e.g. [`progress_bar`][icl.progress.progress_bar]'s)
        to advance, so that several calls share one bar. The chunks then run as one compiled call each (one
        more compiled program, for a single chunk) so that the bar moves between them, from Python; the
        prompts and statistics are the same.
    Returns:
      [`MonteCarlo`][icl.evaluate.MonteCarlo] (``mean`` and ``se`` trees of float64 numpy; ``num_prompts`` actually used).
    """
    n, num_chunks, chunk = _check_sizes(n, num_prompts, chunk_size)
    single = predictors is not None and not isinstance(predictors, Mapping)
    items = [("predictor", predictors)] if single else list(dict(predictors or {}).items())
    statics, dynamics = [], []
    for name, p in items:
        static, dynamic = _split(p)
        statics.append((name, static))
        dynamics.append(dynamic)
    task_arg = task if is_pytree(task) else Static(task)
    try:
        hash(stat_fn)
    except TypeError:
        raise ValueError("stat_fn must be hashable (a function or a frozen dataclass); it is a static jit argument") \
            from None
    run = functools.partial(_engine, dynamics, task_arg, stat_fn=stat_fn, statics=tuple(statics), single=single,
                            chunk=chunk, n=n)
    keys = jax.random.split(key, num_chunks)
    shared = hasattr(progress, "update")  # an open bar of the caller's (tested first: a bar's bool may raise)
    if not shared and not progress:
        sums, m2s = run(keys)
    else:
        bar = progress if shared else progress_bar(True, num_chunks,
                                                   progress if isinstance(progress, str) else "monte_carlo")
        try:
            parts = []
            for c in range(num_chunks):  # one compiled call per chunk; the bar moves between them, from Python
                parts.append(jax.block_until_ready(run(keys[c:c + 1])))
                bar.update(1)
        finally:
            if not shared:
                bar.close()
        sums, m2s = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *parts)
    flat_sums, treedef = jax.tree.flatten(sums)
    stats = [_mean_se(s, m2, chunk) for s, m2 in zip(flat_sums, jax.tree.leaves(m2s))]
    mean = jax.tree.unflatten(treedef, [m for m, _ in stats])
    se = jax.tree.unflatten(treedef, [s for _, s in stats])
    return MonteCarlo(mean, se, num_chunks * chunk)


# ----------------------------------------------------------------------------------------------------
# Per-prompt metrics


def check_pairs(pairs, predictors) -> list[tuple[str, str]]:
    """``pairs`` as a list of name tuples; a ValueError names any name that is not among ``predictors``."""
    pairs = [tuple(p) for p in pairs]
    for name in (name for pair in pairs for name in pair):
        if name not in predictors:
            raise ValueError(f"pairs names {name!r}, which is not among the predictors {list(predictors)}")
    return pairs


def prediction_gap(predictor_a, predictor_b, prompts: Prompts) -> jax.Array:
    """Per-prompt ``|y_hat_a - y_hat_b|``, ``[batch]`` (von Oswald et al. 2023's prediction difference)."""
    return jnp.abs(predict("a", predictor_a, prompts) - predict("b", predictor_b, prompts))


def sensitivities(predictor, prompts: Prompts) -> jax.Array:
    """Per-prompt ``d y_hat / d x_query``, ``[batch, d]``.

    Each prompt's prediction depends on its own query only, so the gradient of the batch sum with
    respect to ``x_query`` holds every prompt's sensitivity at the cost of one backward pass.
    """
    return jax.grad(lambda xq: jnp.sum(predict("predictor", predictor, prompts._replace(x_query=xq))))(
        prompts.x_query)


def query_marginal_loss(task):
    """A training loss for [`icl.train`][icl.training.train] with the query averaged out exactly (Rao-Blackwellised).

    For a predictor linear in the query, ``y_hat = x_q^T w_hat(context)`` (every LSA stack, GD and GD++),
    ``E[(y_hat - y_q)^2 | context, w] = (w_hat - w)^T Sigma (w_hat - w) + sigma^2`` for a linear task with
    Gaussian label noise: the same population loss as the query MSE with a smaller variance per prompt.
    ``w_hat = d y_hat / d x_q`` is read by ``sensitivities``; needs ``prompts.w``. Returns
    ``loss_fn(model, prompts) -> scalar``.
    """
    x_cov = np.asarray(task.x_second_moment() if hasattr(task, "x_second_moment") else task.x_cov, np.float64)
    noise2 = float(task.noise_std) ** 2

    def loss_fn(model, prompts):
        err = sensitivities(model, prompts) - prompts.w
        return jnp.mean(jnp.einsum("bi,ij,bj->b", err, jnp.asarray(x_cov, err.dtype), err)) + noise2

    return loss_fn


def _cosine(ga, gb):
    num = jnp.sum(ga * gb, axis=-1)
    den = jnp.linalg.norm(ga, axis=-1) * jnp.linalg.norm(gb, axis=-1)
    return num / jnp.maximum(den, jnp.finfo(ga.dtype).tiny)


def sensitivity_cosine(predictor_a, predictor_b, prompts: Prompts) -> jax.Array:
    """Per-prompt cosine between ``d y_hat_a / d x_q`` and ``d y_hat_b / d x_q`` (von Oswald's "model cos")."""
    return _cosine(sensitivities(predictor_a, prompts), sensitivities(predictor_b, prompts))


def reference_metrics(predictor, reference, prompts: Prompts) -> dict[str, jax.Array]:
    """von Oswald et al. 2023's comparison of a model with GD, per prompt (each ``[batch]``).

    ``gap = |y_hat - y_hat_ref|``; ``reference_abs = |y_hat_ref|`` (the scale of the gap);
    ``cosine`` = cosine of ``d y_hat / d x_q`` and ``d y_hat_ref / d x_q`` ("model cos");
    ``sensitivity_diff = ||d y_hat / d x_q - d y_hat_ref / d x_q||``; ``sq_error`` and
    ``reference_sq_error`` = squared errors against ``y_query``; ``loss_diff`` = their difference.
    """
    pred, ref = predict("predictor", predictor, prompts), predict("reference", reference, prompts)
    ga, gb = sensitivities(predictor, prompts), sensitivities(reference, prompts)
    sq, sq_ref = (pred - prompts.y_query) ** 2, (ref - prompts.y_query) ** 2
    return {
        "gap": jnp.abs(pred - ref),
        "reference_abs": jnp.abs(ref),
        "cosine": _cosine(ga, gb),
        "sensitivity_diff": jnp.linalg.norm(ga - gb, axis=-1),
        "sq_error": sq,
        "reference_sq_error": sq_ref,
        "loss_diff": sq - sq_ref,
    }


# ----------------------------------------------------------------------------------------------------
# compare_predictors


@dataclass(frozen=True)
class Comparison:
    """Result of [`compare_predictors`][icl.evaluate.compare_predictors]; every number comes with its standard error.

    Attributes:
      num_prompts: prompts evaluated (all predictors saw the same ones).
      losses: ``{name: (mean squared error, standard error)}``; ``(nan, nan)`` for a predictor that
        returned NaN or inf on some prompt (counted in ``nonfinite``).
      pairs: ``{(a, b): {"loss_diff", "loss_diff_se", "gap", "gap_se", "cosine", "cosine_se"}}`` (the
        cosine only for ``cosine_pairs``) where ``loss_diff`` is the paired mean of
        ``(err_a^2 - err_b^2)``, ``gap`` the mean ``|y_hat_a - y_hat_b|`` and ``cosine`` the mean
        sensitivity cosine.
      nonfinite: ``{name: number of prompts with a NaN or inf prediction}`` (0 when all were finite).
    """

    num_prompts: int
    losses: dict[str, tuple[float, float]]
    pairs: dict[tuple[str, str], dict[str, float]]
    nonfinite: dict[str, int] | None = None

    def to_dict(self) -> dict:
        """JSON-ready form: ``{"num_prompts", "losses": {name: {"mean", "se"}}, "pairs": {"a|b": {...}}}``."""
        out = {
            "num_prompts": self.num_prompts,
            "losses": {k: {"mean": m, "se": s} for k, (m, s) in self.losses.items()},
            "pairs": {f"{a}|{b}": v for (a, b), v in self.pairs.items()},
        }
        if self.nonfinite and any(self.nonfinite.values()):
            out["nonfinite"] = dict(self.nonfinite)
        return out


@dataclass(frozen=True)
class _CompareStats:
    names: tuple
    pairs: tuple
    cosine_pairs: tuple

    def __call__(self, preds, prompts):
        out = {name: predict(name, preds[name], prompts) for name in self.names}
        finite = {name: jnp.isfinite(v) for name, v in out.items()}
        sq = {name: jnp.where(finite[name], (v - prompts.y_query) ** 2, 0.0) for name, v in out.items()}
        stats = {
            "loss": [sq[name] for name in self.names],
            "bad": [(~finite[name]).astype(prompts.y.dtype) for name in self.names],
            "loss_diff": [sq[a] - sq[b] for a, b in self.pairs],
            "gap": [jnp.where(finite[a] & finite[b], jnp.abs(out[a] - out[b]), 0.0) for a, b in self.pairs],
            "cosine": [sensitivity_cosine(preds[a], preds[b], prompts) for a, b in self.cosine_pairs],
        }
        return stats


def compare_predictors(
    predictors: Mapping[str, Callable],
    task,
    key: jax.Array,
    n: int,
    num_prompts: int = 100_000,
    pairs: Sequence[tuple[str, str]] = (),
    chunk_size: int = 10_000,
    cosine_pairs: Sequence[tuple[str, str]] | None = None,
    *,
    progress: bool = False,
) -> Comparison:
    """Evaluate predictors on the same fresh prompts (one compiled program per shape; [`monte_carlo`][icl.evaluate.monte_carlo]).

    Args:
      predictors: ``{name: predictor}``; each ``Prompts -> [batch]`` (or ``(mean, var)``: the mean is
        scored). Library predictors and NNX models are pytree arguments: new step sizes, penalties or
        weights reuse the compiled program.
      task: the task to draw prompts from; key: PRNG key; n: context length.
      num_prompts: total prompts (>= 2), rounded up to a whole number of chunks.
      pairs: ``(a, b)`` names for which to also report paired loss difference, prediction gap and
        sensitivity cosine.
      chunk_size: prompts per chunk (bounds memory).
      cosine_pairs: the pairs (a subset of ``pairs``) that also get the sensitivity cosine, which costs
        a backward pass per predictor; default all of ``pairs``.
      progress: show a progress bar on stderr, one step per chunk ([`monte_carlo`][icl.evaluate.monte_carlo]).
    Returns:
      [`Comparison`][icl.evaluate.Comparison].
    Raises:
      ValueError: a predictor output of the wrong shape (named), an unknown pair name, bad sizes.
    A predictor that returns NaN or inf on some prompts gets loss ``(nan, nan)`` and a count in
    ``Comparison.nonfinite``, with a warning naming it.
    """
    names, pairs = list(predictors), check_pairs(pairs, predictors)
    cosine_pairs = pairs if cosine_pairs is None else [tuple(p) for p in cosine_pairs]
    for pair in cosine_pairs:
        if pair not in pairs:
            raise ValueError(f"cosine_pairs entry {pair} must also be in pairs")
    stat = _CompareStats(tuple(names), tuple(pairs), tuple(cosine_pairs))
    result = monte_carlo(stat, dict(predictors), task, key, n, num_prompts, chunk_size,
                         progress="compare_predictors" if progress is True else progress)
    mean, se, count = result.mean, result.se, result.num_prompts
    bad = {name: int(round(float(mean["bad"][i]) * count)) for i, name in enumerate(names)}
    losses = {}
    for i, name in enumerate(names):
        if bad[name]:
            warnings.warn(f"compare_predictors: predictor {name!r} returned NaN or inf on {bad[name]} of {count} "
                          f"prompts; its loss is reported as NaN", RuntimeWarning, stacklevel=2)
            losses[name] = (float("nan"), float("nan"))
        else:
            losses[name] = (float(mean["loss"][i]), float(se["loss"][i]))
    pair_stats = {}
    for j, (a, b) in enumerate(pairs):
        broken = bad[a] or bad[b]
        stats = {}
        for metric, index in (("loss_diff", j), ("gap", j)):
            stats[metric] = float("nan") if broken else float(mean[metric][index])
            stats[f"{metric}_se"] = float("nan") if broken else float(se[metric][index])
        if (a, b) in cosine_pairs:
            k = cosine_pairs.index((a, b))
            stats["cosine"] = float("nan") if broken else float(mean["cosine"][k])
            stats["cosine_se"] = float("nan") if broken else float(se["cosine"][k])
        pair_stats[(a, b)] = stats
    return Comparison(count, losses, pair_stats, bad)


# ----------------------------------------------------------------------------------------------------
# Error curves (Garg et al. 2022)


@dataclass(frozen=True)
class ErrorCurve:
    """Normalised squared error of a predictor at every prefix ``k = 1..n``.

    Attributes:
      mean, se: ``[n]`` float64: ``E[(prefix_k - y_k)^2] / normaliser`` and its standard error; entry
        ``k - 1`` predicts ``y_k`` from the first ``k - 1`` pairs (docs/theory.md §10).
      normaliser: the noiseless ``E[y^2]`` divided by (``task.signal_variance()``; d for dense isotropic
        tasks, s for s-sparse ones).
      num_prompts: prompts evaluated.
    """

    mean: np.ndarray
    se: np.ndarray
    normaliser: float
    num_prompts: int

    @property
    def k(self) -> np.ndarray:
        """Prefix lengths ``1..n`` (the x-axis)."""
        return np.arange(1, self.mean.shape[0] + 1)


@dataclass(frozen=True)
class _CurveStats:
    names: tuple

    def __call__(self, preds, prompts):
        out = {}
        for name in self.names:
            err = (predict_prefix(name, preds[name], prompts) - prompts.y) ** 2
            out[name] = err
        return out


def _signal_variance(task) -> float:
    try:
        return float(task.signal_variance())
    except (AttributeError, NotImplementedError):
        # A user task without signal_variance(): fall back to d, the noiseless E[(w^T x)^2] of unit isotropic
        # x and w (Garg's normalisation for dense tasks).
        return float(task.d)


def error_curves(predictors: Mapping[str, Callable], task, key: jax.Array, n: int, num_prompts: int = 10_000,
                 chunk_size: int = 2_000, *, progress: bool = False) -> dict[str, ErrorCurve]:
    """[`error_curve`][icl.evaluate.error_curve] of several predictors on the same prompts (one pass; common random numbers).

    ``progress``: show a progress bar on stderr, one step per chunk. Draw the result with
    [`icl.plotting.plot_error_curves`][icl.plotting.plot_error_curves]."""
    names = tuple(predictors)
    result = monte_carlo(_CurveStats(names), dict(predictors), task, key, n, num_prompts, chunk_size,
                         progress="error_curves" if progress is True else progress)
    norm = _signal_variance(task)
    return {name: ErrorCurve(result.mean[name] / norm, result.se[name] / norm, norm, result.num_prompts)
            for name in names}


def error_curve(predictor, task, key: jax.Array, n: int, num_prompts: int = 10_000,
                chunk_size: int = 2_000, *, progress: bool = False) -> ErrorCurve:
    """Squared error of ``predictor.prefix`` at every ``k = 1..n``, divided by the task's noiseless ``E[y^2]``.

    Garg et al. (2022)'s curve: ``mean[k - 1]`` estimates ``E[(prefix_k - y_k)^2] / task.signal_variance()``
    with its standard error ``se[k - 1]`` over ``num_prompts`` prompts (rounded up to whole chunks). The
    predictor needs ``.prefix`` (a ValueError names it otherwise). ``progress``: show a progress bar on stderr.
    Returns [`ErrorCurve`][icl.evaluate.ErrorCurve].
    """
    return error_curves({"predictor": predictor}, task, key, n, num_prompts, chunk_size,
                        progress=progress)["predictor"]


# ----------------------------------------------------------------------------------------------------
# von Oswald et al. 2023's comparisons


@dataclass(frozen=True)
class _ReferenceStats:
    def __call__(self, preds, prompts):
        return reference_metrics(preds["predictor"], preds["reference"], prompts)


def compare_with_reference(predictor, reference, task, key: jax.Array, n: int, num_prompts: int = 100_000,
                           chunk_size: int = 10_000, *, progress: bool = False) -> dict[str, tuple[float, float]]:
    """Mean and standard error of every [`reference_metrics`][icl.evaluate.reference_metrics] entry on fresh prompts of ``task``.

    Both predictors see the same prompts (so ``loss_diff`` is a paired difference). ``progress``: show a
    progress bar on stderr. Returns ``{name: (mean, se)}``.
    """
    out = monte_carlo(_ReferenceStats(), {"predictor": predictor, "reference": reference}, task, key, n,
                      num_prompts, chunk_size, progress="compare_with_reference" if progress is True else progress)
    return {k: (float(out.mean[k]), float(out.se[k])) for k in out.mean}


@dataclass(frozen=True)
class _LossStats:
    names: tuple
    pairs: tuple

    def __call__(self, preds, prompts):
        sq = {name: (predict(name, preds[name], prompts) - prompts.y_query) ** 2 for name in self.names}
        return {"loss": [sq[name] for name in self.names], "diff": [sq[a] - sq[b] for a, b in self.pairs]}


def evaluate_across_tasks(predictors: Mapping[str, Callable], tasks: Sequence, key: jax.Array, n: int,
                          num_prompts: int = 100_000, pairs: Sequence[tuple[str, str]] = (),
                          chunk_size: int = 10_000, *, progress: bool = False) -> dict:
    """MSE of each predictor on each of several tasks of one kind (e.g. inputs scaled out of distribution).

    Every task uses the same chunk keys (common random numbers) and, being a pytree with the same
    structure, the same compiled program. For each pair ``(a, b)`` the paired difference of squared
    errors is reported too. ``progress``: show a progress bar on stderr (one per task).

    Returns:
      ``{"loss": {name: (means [T], ses [T])}, "loss_diff": {(a, b): (means [T], ses [T])}}`` (numpy).
    """
    names, pairs = list(predictors), tuple(check_pairs(pairs, predictors))
    stat = _LossStats(tuple(names), pairs)
    runs = [monte_carlo(stat, dict(predictors), task, key, n, num_prompts, chunk_size,
                        progress=f"evaluate_across_tasks {i + 1}/{len(tasks)}" if progress is True else progress)
            for i, task in enumerate(tasks)]

    def collect(group, i):
        return (np.array([r.mean[group][i] for r in runs]), np.array([r.se[group][i] for r in runs]))

    return {"loss": {name: collect("loss", i) for i, name in enumerate(names)},
            "loss_diff": {pair: collect("diff", j) for j, pair in enumerate(pairs)}}


@compiler.jit(static_argnames=("graphdef", "ref_static"))
def _snapshot_run(params, prompts, ref_dynamic, *, graphdef, ref_static):
    reference = _merge(ref_static, ref_dynamic)

    def one(p):
        metrics = reference_metrics(nnx.merge(graphdef, p), reference, prompts)
        return {k: v.mean() for k, v in metrics.items()}

    return jax.vmap(jax.vmap(one))(params)


def snapshot_metrics(snapshots, reference, prompts: Prompts) -> dict[str, np.ndarray]:
    """Means over ``prompts`` of [`reference_metrics`][icl.evaluate.reference_metrics] for every snapshot and seed: ``{name: [K + 1, seeds]}``.

    ``snapshots`` is [`icl.training.Snapshots`][icl.training.Snapshots] (``train(..., snapshot_every=K)``). All snapshots
    see the same prompts; one compiled program (``vmap`` over snapshots and seeds).
    """
    ref_static, ref_dynamic = _split(reference)
    out = _snapshot_run(snapshots.params, prompts, ref_dynamic, graphdef=snapshots.graphdef, ref_static=ref_static)
    return {k: np.asarray(v) for k, v in out.items()}


def interpolate(params_a, params_b, t):
    """The point ``(1 - t) * params_a + t * params_b`` of the straight line between two parameter trees."""
    return jax.tree.map(lambda a, b: (1.0 - t) * a + t * b, params_a, params_b)


@compiler.jit(static_argnames=("graphdef",))
def _interpolation_run(ts, params_a, params_b, prompts, *, graphdef):
    def one(t):
        model = nnx.merge(graphdef, interpolate(params_a, params_b, t))
        return (predict("interpolated model", model, prompts) - prompts.y_query) ** 2

    return jax.lax.map(one, ts)  # [T, batch] squared errors


def interpolation_losses(graphdef: nnx.GraphDef, params_a, params_b, ts, prompts: Prompts):
    """MSE (mean, SE over prompts) of the model at ``(1 - t) params_a + t params_b`` for each ``t`` in ``ts``.

    von Oswald et al. 2023, Fig. 2: the loss along the line from trained weights (``t = 0``) to the GD
    construction (``t = 1``). All points see the same ``prompts``; the points run one after another
    (``lax.map``) to bound memory. Returns numpy ``(means [T], ses [T])``.
    """
    ts = jnp.asarray(ts, dtype=jnp.asarray(0.0).dtype)
    return mean_se(_interpolation_run(ts, params_a, params_b, prompts, graphdef=graphdef), axis=1)
