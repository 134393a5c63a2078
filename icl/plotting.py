"""Figures of the library's analyses, in one style: pure functions of an analysis' result (or of arrays).

Every function takes the result as ``icl`` returns it and an optional matplotlib ``ax`` (a new figure when it
is None), draws with matplotlib's object API and returns the Axes it drew on (its figure is ``ax.figure``;
[`plot_attention_maps`][icl.models.plot_attention_maps] and [`plot_one_step_gd`][icl.plotting.plot_one_step_gd], which draw several panels, return the Figure). Nothing
here chooses, switches or reads matplotlib's backend, nor shows or saves a figure: in a notebook the figures
appear inline; a script saves them (``fig.savefig`` or [`icl.write_run`][icl.io.write_run]). matplotlib is imported when a
function runs, not when ``icl`` is imported.

| function | draws |
|---|---|
| [`plot_error_curves`][icl.plotting.plot_error_curves] | [`icl.error_curves`][icl.evaluate.error_curves] / [`icl.error_curve`][icl.evaluate.error_curve]: error at every prefix ``k`` with standard-error bands |
| [`plot_fingerprint_heatmap`][icl.plotting.plot_fingerprint_heatmap] | [`icl.fingerprint`][icl.fingerprint.fingerprint]: SPD/d (or ILWD/d) per family and prefix length, the verdict at each length outlined ([`icl.plot_fingerprint`][icl.fingerprint.plot_fingerprint] draws the same numbers as curves) |
| [`plot_coverage`][icl.plotting.plot_coverage] | [`icl.calibration`][icl.uncertainty.calibration] / [`icl.compare_calibration`][icl.uncertainty.compare_calibration]: coverage of the central intervals against their nominal level |
| [`plot_pit_histogram`][icl.plotting.plot_pit_histogram] | the same results: histogram of the probability integral transform |
| [`plot_task_diversity`][icl.plotting.plot_task_diversity] | error against the number of pretraining tasks (model, dMMSE, ridge, ...) |
| [`plot_learning_curves`][icl.plotting.plot_learning_curves] | [`icl.train`][icl.training.train]'s losses: training loss against step, every seed |
| [`plot_attention_maps`][icl.models.plot_attention_maps] | a Transformer's attention maps, every layer and head |
| [`gamma_heatmap`][icl.plotting.gamma_heatmap] | a ``d x d`` preconditioner as a diverging heat map |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["gamma_heatmap", "plot_attention_maps", "plot_coverage", "plot_error_curves", "plot_fingerprint_heatmap",
           "plot_learning_curves", "plot_one_step_gd", "plot_pit_histogram", "plot_task_diversity"]


def _axes(ax, figsize=(5.5, 3.8)):
    """``ax`` as given, or the single Axes of a new figure."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def _named(results, what: str, single_name: str = "predictor") -> dict:
    """``{name: result}`` from one result, a mapping of results, or an object holding them in ``.metrics``."""
    if hasattr(results, "metrics") and isinstance(results.metrics, Mapping):  # icl.CalibrationComparison
        results = results.metrics
    out = dict(results) if isinstance(results, Mapping) and not _has(results, "mean") else {single_name: results}
    if not out:
        raise ValueError(f"nothing to plot: {what} is empty")
    return out


def _has(obj, name: str) -> bool:
    return hasattr(obj, name) or isinstance(obj, Mapping) and name in obj


def _get(obj, name: str):
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def _at_k(value, k: int | None, what: str):
    """Entry ``k - 1`` of a per-prefix array ``[n, ...]`` (default the last, ``k = n``); scalars pass through."""
    value = np.asarray(value, np.float64)
    if k is None:
        return value if value.ndim == 0 or what == "pit" and value.ndim == 1 else value[-1]
    if value.ndim == 0 or what == "pit" and value.ndim == 1:
        raise ValueError(f"k={k!r} was given but the {what} result has no prefix axis (computed with prefix=False)")
    if not 1 <= k <= value.shape[0]:
        raise ValueError(f"k must be in [1, {value.shape[0]}], got {k!r}")
    return value[k - 1]


def gamma_heatmap(ax, gamma, title: str, vmax: float | None = None, ylabel: bool = True):
    """Draw a ``d x d`` preconditioner as a diverging heat map (symmetric colour scale) on ``ax``; returns the image."""
    gamma = np.asarray(gamma)
    vmax = float(np.abs(gamma).max()) if vmax is None else vmax
    image = ax.imshow(gamma, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("column j")
    ax.set_ylabel("row i" if ylabel else "")
    ax.set_xticks(range(gamma.shape[1]))
    ax.set_yticks(range(gamma.shape[0]))
    return image


def plot_one_step_gd(runs: list[dict], eta_curve: tuple[np.ndarray, np.ndarray], d: int, n: int):
    """Figure of the one-step-GD experiment: ``Gamma_eff`` per noise level, and learned eta vs theory.

    ``runs`` are the experiment's run records (``noise``, ``gamma_learned``, ``eta_learned_mean``,
    ``eta_learned_std``, ``eta_theory``); ``eta_curve`` is ``(sigma grid, eta*(sigma))``. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    k = len(runs)
    fig, axes = plt.subplots(1, k + 1, figsize=(3.2 * k + 4.5, 3.4), gridspec_kw={"width_ratios": [1] * k + [1.4]})
    vmax = max(float(np.abs(np.asarray(r["gamma_learned"])).max()) for r in runs)
    image = None
    for i, (ax, r) in enumerate(zip(axes[:k], runs)):
        image = gamma_heatmap(ax, r["gamma_learned"], f"learned $\\Gamma_{{eff}}$, $\\sigma$={r['noise']:g}", vmax,
                              ylabel=i == 0)
    fig.colorbar(image, ax=list(axes[:k]), shrink=0.8, label="entry value")
    ax = axes[-1]
    ax.plot(eta_curve[0], eta_curve[1], "k-", label=r"theory $\eta^*=n/(n+d+1+\sigma^2)$")
    sig = [r["noise"] for r in runs]
    ax.errorbar(sig, [r["eta_learned_mean"] for r in runs], yerr=[r["eta_learned_std"] for r in runs],
                fmt="o", color="C3", capsize=3, label="trained LSA (mean ± std over seeds)")
    ax.set_xlabel(r"label noise $\sigma$")
    ax.set_ylabel(r"step size $\eta$ (mean diagonal of $\Gamma_{eff}$)")
    ax.set_title(f"learned vs optimal step, d={d}, n={n}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def plot_error_curves(curves, ax=None, *, normalise: bool = True, bands: float = 1.0, d: int | None = None,
                      logy: bool = False, title: str | None = None):
    """Error at every prefix length ``k = 1..n`` of one or several predictors, with standard-error bands.

    Args:
      curves: what [`icl.error_curves`][icl.evaluate.error_curves] returns (``{name: ErrorCurve}``), one [`icl.ErrorCurve`][icl.evaluate.ErrorCurve], or
        ``{name: {"mean": [n], "se": [n]}}``.
      ax: the Axes to draw on (default: a new figure).
      normalise: plot the error divided by the task's noiseless ``E[y^2]`` (Garg et al.'s normalised error, as
        ``ErrorCurve.mean`` holds it); False plots the raw squared error (``mean * normaliser``; needs
        ErrorCurves).
      bands: half-width of the shaded bands in standard errors (0: no bands).
      d: draw a dotted line at ``k = d + 1`` (where least squares interpolates).
      logy: log scale on the error axis.
    Returns:
      The Axes (one line per curve).
    """
    curves = _named(curves, "curves")
    ax = _axes(ax)
    for i, (name, c) in enumerate(curves.items()):
        mean, se = np.asarray(_get(c, "mean"), np.float64), np.asarray(_get(c, "se"), np.float64)
        if not normalise:
            if not _has(c, "normaliser"):
                raise ValueError(f"normalise=False needs ErrorCurves (with .normaliser); {name!r} has none")
            scale = float(_get(c, "normaliser"))
            mean, se = mean * scale, se * scale
        ks = np.arange(1, mean.shape[0] + 1)
        line, = ax.plot(ks, mean, lw=1.5, color=f"C{i}", label=str(name))
        if bands:
            lower = mean - bands * se
            ax.fill_between(ks, np.maximum(lower, np.finfo(np.float64).tiny) if logy else lower, mean + bands * se,
                            color=line.get_color(), alpha=0.2, lw=0)
    if d is not None:
        ax.axvline(d + 1, color="grey", ls=":", lw=1, label=f"k = d + 1 = {d + 1}")
    ax.set_xlabel("k (prediction of y_k from the first k - 1 pairs)")
    ax.set_ylabel("squared error / E[y^2] (noiseless)" if normalise else "squared error")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def plot_fingerprint_heatmap(result, ax=None, *, metric: str = "spd", ks: Sequence[int] | None = None,
                             annotate: bool | None = None, colorbar: bool = True):
    """A table of [`icl.fingerprint`][icl.fingerprint.fingerprint]'s result as a heat map: ``log10`` of SPD/d (or ILWD/d), one row per
    family, one column per prefix length, the verdict at each length (``best_by_k``) outlined in red.

    Args:
      result: an [`icl.Fingerprint`][icl.fingerprint.Fingerprint].
      ax: the Axes to draw on (default: a new figure).
      metric: ``"spd"`` (at ``result.ks``) or ``"ilwd"`` (at ``result.ilwd_ks``).
      ks: the prefix lengths to show (default all measured ones).
      annotate: write each value in its cell (default: when the table has at most 120 cells).
      colorbar: add a colour bar.
    Returns:
      The Axes; the verdict outlines are its patches (none at a length without a verdict).
    """
    if metric not in ("spd", "ilwd"):
        raise ValueError(f"metric must be 'spd' or 'ilwd', got {metric!r}")
    from matplotlib.patches import Rectangle

    measured = np.asarray(result.ks if metric == "spd" else result.ilwd_ks)
    ks = measured if ks is None else np.asarray([int(k) for k in ks])
    missing = [int(k) for k in ks if k not in measured]
    if missing or ks.size == 0:
        raise ValueError(f"ks must be a non-empty subset of the {metric.upper()} prefix lengths {measured.tolist()}, "
                         f"got {np.asarray(ks).tolist()}")
    cols = [int(np.argmax(measured == k)) for k in ks]
    families = list(result.families)
    values = np.array([np.asarray(getattr(result, metric)[f], np.float64)[cols] for f in families]) / result.d
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.where(values > 0, values, np.nan))
    ax = _axes(ax, figsize=(0.6 * len(ks) + 3.0, 0.4 * len(families) + 1.6))
    image = ax.imshow(np.ma.masked_invalid(logs), cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks], fontsize=7)
    ax.set_yticks(range(len(families)), families, fontsize=8)
    ax.set_xlabel("prefix length k (k - 1 in-context examples)")
    ax.set_title(f"{metric.upper()} / d per family (outlined: verdict at each k; full context: "
                 f"{result.best or 'none'})", fontsize=9)
    if annotate is None:
        annotate = values.size <= 120
    if annotate:
        for i in range(len(families)):
            for j in range(len(ks)):
                text = "nan" if not np.isfinite(values[i, j]) else f"{values[i, j]:.1e}"
                ax.text(j, i, text, ha="center", va="center", fontsize=5.5, color="k")
    for j, k in enumerate(ks):
        best = result.best_by_k[result.index(int(k))]
        if best is not None and best in families:
            ax.add_patch(Rectangle((j - 0.5, families.index(best) - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label=f"log10 {metric.upper()} / d")
    return ax


def plot_coverage(calibration, ax=None, *, k: int | None = None, bands: float = 1.0):
    """Coverage of the central predictive intervals against their nominal level (calibrated: the diagonal).

    Args:
      calibration: an [`icl.Calibration`][icl.uncertainty.Calibration] ([`icl.calibration`][icl.uncertainty.calibration]), an [`icl.CalibrationComparison`][icl.uncertainty.CalibrationComparison]
        ([`icl.compare_calibration`][icl.uncertainty.compare_calibration], [`icl.shift_evaluation`][icl.uncertainty.shift_evaluation]) or ``{name: Calibration}``.
      ax: the Axes to draw on (default: a new figure).
      k: for results computed with ``prefix=True``, the prefix length to show (default the last, ``k = n``).
      bands: error bars of this many standard errors.
    Returns:
      The Axes: the diagonal, then one line (with error bars) per predictor.
    """
    cals = _named(calibration, "calibration")
    ax = _axes(ax, figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="calibrated")
    for i, (name, cal) in enumerate(cals.items()):
        levels = sorted(cal.coverage)
        mean = np.array([_at_k(cal.coverage[lv][0], k, "coverage") for lv in levels], np.float64)
        se = np.array([_at_k(cal.coverage[lv][1], k, "coverage") for lv in levels], np.float64)
        ax.errorbar(np.asarray(levels, np.float64), mean, yerr=bands * se, marker="o", ms=4, capsize=3,
                    color=f"C{i}", label=str(name))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal level of the central interval", ylabel="coverage")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def plot_pit_histogram(calibration, ax=None, *, k: int | None = None, bands: float = 1.0):
    """Histogram of the probability integral transform ``F(y)`` (calibrated: flat at ``1 / bins``).

    Args:
      calibration: as for [`plot_coverage`][icl.plotting.plot_coverage]; several predictors get side-by-side bars.
      ax: the Axes to draw on (default: a new figure).
      k: for results computed with ``prefix=True``, the prefix length to show (default the last).
      bands: error bars of this many standard errors (0: none).
    Returns:
      The Axes: one bar container per predictor and a dashed line at ``1 / bins``.
    """
    cals = _named(calibration, "calibration")
    ax = _axes(ax)
    bins = None
    width_all = 0.9
    for i, (name, cal) in enumerate(cals.items()):
        hist, se = (_at_k(v, k, "pit") for v in cal.pit_histogram)
        bins = hist.shape[0]
        width = width_all / (bins * len(cals))
        left = np.arange(bins) / bins + (1 - width_all) / (2 * bins) + i * width
        ax.bar(left, hist, width, align="edge", yerr=bands * se if bands else None, color=f"C{i}", alpha=0.7,
               error_kw={"lw": 0.8}, label=str(name))
    ax.axhline(1.0 / bins, color="k", ls="--", lw=1, label="calibrated (uniform)")
    ax.set(xlim=(0, 1), xlabel="PIT = F(y)", ylabel="fraction of targets")
    ax.legend(fontsize=7)
    return ax


def plot_task_diversity(num_tasks, errors: Mapping[str, object], ax=None, *, bands: float = 1.0,
                        transition: float | None = None, ylabel: str = "mean squared error", logy: bool = True):
    """Error against the number of pretraining tasks ``M`` (Raventós et al. 2023's task-diversity transition).

    Args:
      num_tasks: ``[T]`` the numbers of tasks; ``np.inf`` entries (infinitely many tasks: a fresh task per
        prompt) are drawn as dotted horizontal lines in the series' colour.
      errors: ``{name: values}``, e.g. ``{"model": ..., "dMMSE": ..., "ridge": ...}``; values are ``[T]``
        means, a tuple ``(means [T], ses [T])``, or one number (an M-independent reference such as ridge's
        error: a horizontal line).
      ax: the Axes to draw on (default: a new figure).
      bands: half-width of the shaded bands in standard errors (where ses are given; 0: none).
      transition: draw a vertical line at this ``M`` (e.g. the estimated transition ``M*``).
      logy: log scale on the error axis (the M axis is always log base 2).
    Returns:
      The Axes: one line per series (plus the dotted ``M = inf`` and transition lines).
    """
    m = np.asarray(num_tasks, np.float64)
    if m.ndim != 1 or m.size == 0:
        raise ValueError(f"num_tasks must be a non-empty 1-d array, got shape {m.shape}")
    finite = np.isfinite(m)
    ax = _axes(ax, figsize=(5.5, 3.8))
    for i, (name, value) in enumerate(errors.items()):
        color = f"C{i}"
        if np.ndim(value) == 0:
            ax.axhline(float(value), color=color, ls="--", lw=1.2, label=str(name))
            continue
        pair = isinstance(value, tuple) and len(value) == 2 and np.ndim(value[0]) == 1
        mean, se = value if pair else (value, None)
        mean = np.asarray(mean, np.float64)
        if mean.shape != m.shape:
            raise ValueError(f"errors[{name!r}] must have one value per entry of num_tasks ({m.size}), got "
                             f"shape {mean.shape}")
        ax.plot(m[finite], mean[finite], marker="o", ms=4, color=color, label=str(name))
        if se is not None and bands:
            se = np.asarray(se, np.float64)
            ax.fill_between(m[finite], mean[finite] - bands * se[finite], mean[finite] + bands * se[finite],
                            color=color, alpha=0.2, lw=0)
        for v in mean[~finite]:
            ax.axhline(v, color=color, ls=":", lw=1)
    if transition is not None:
        ax.axvline(transition, color="grey", ls="-.", lw=1, label=f"transition M* = {transition:g}")
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("number of pretraining tasks M" + (" (dotted: M = inf)" if (~finite).any() else ""))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.shape[-1] < window:
        return values
    kernel = np.ones(window) / window
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), -1, values)


def plot_learning_curves(losses, ax=None, *, smooth: int = 1, logy: bool = True, title: str | None = None):
    """Training loss against step, one line per seed (log scale by default).

    Args:
      losses: [`icl.train`][icl.training.train]'s result (a [`icl.TrainResult`][icl.training.TrainResult]), its ``losses`` ``[num_seeds, steps]``
        (or ``[steps]``), or ``{label: either}`` for several runs (one colour per run, its seeds in that colour).
      ax: the Axes to draw on (default: a new figure).
      smooth: moving-average window in steps (1: the raw losses).
      logy: log scale on the loss axis.
    Returns:
      The Axes: one line per seed of every run.
    """
    runs = dict(losses) if isinstance(losses, Mapping) else {None: losses}
    if not runs:
        raise ValueError("nothing to plot: losses is empty")
    window = int(smooth)
    if window < 1:
        raise ValueError(f"smooth must be an integer >= 1, got {smooth!r}")
    ax = _axes(ax)
    for i, (label, run) in enumerate(runs.items()):
        values = np.asarray(getattr(run, "losses", run), np.float64)
        values = values[None] if values.ndim == 1 else values
        if values.ndim != 2:
            raise ValueError(f"losses must be [num_seeds, steps] or [steps], got shape {values.shape}")
        curves = _smooth(values, window)
        steps = np.arange(curves.shape[1]) + (window + 1) // 2  # a window is drawn at its centre step
        for s, curve in enumerate(curves):
            if label is None:  # one run: a colour per seed
                ax.plot(steps, curve, lw=1, color=f"C{s % 10}", label=f"seed {s}")
            else:  # several runs: a colour per run, its seeds alike
                ax.plot(steps, curve, lw=1, color=f"C{i % 10}", alpha=0.7 if len(curves) > 1 else 1.0,
                        label=str(label) if s == 0 else None)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss" + (f" (moving average of {window})" if window > 1 else ""))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def plot_attention_maps(model_or_maps, prompts=None, *, index: int = 0, encoding: str | None = None):
    """Figure of every layer's (rows) and head's (columns) attention map for prompt ``index``.

    Pass a [`icl.Transformer`][icl.models.Transformer] and ``prompts`` (the maps of ``model.attention_maps(prompts)`` are drawn, with
    token labels), or an array ``[num_layers, batch, num_heads, T, T]`` of maps. Returns the matplotlib figure
    (shown inline in a notebook; a script saves it).
    """
    import matplotlib.pyplot as plt

    if callable(getattr(model_or_maps, "attention_maps", None)):
        if prompts is None:
            raise ValueError("prompts is required when a model is given")
        encoding = getattr(model_or_maps, "encoding", encoding)
        maps = model_or_maps.attention_maps(prompts)
    else:
        maps = model_or_maps
    maps = np.asarray(maps)
    if maps.ndim != 5:
        raise ValueError(f"maps must have shape [num_layers, batch, num_heads, T, T], got {maps.shape}")
    if not 0 <= index < maps.shape[1]:
        raise ValueError(f"index must be in [0, {maps.shape[1]}), got {index}")
    layers, _, heads, t, _ = maps.shape
    if encoding == "interleaved":
        labels = [f"{'xy'[i % 2]}{i // 2 + 1}" for i in range(t - 1)] + ["xq"]
    elif encoding == "stacked":
        labels = [f"z{i + 1}" for i in range(t - 1)] + ["q"]
    else:
        labels = [str(i) for i in range(t)]
    fig, axes = plt.subplots(layers, heads, figsize=(2.6 * heads + 0.8, 2.4 * layers), squeeze=False)
    step = max(1, t // 12)
    for li in range(layers):
        for hi in range(heads):
            ax = axes[li, hi]
            image = ax.imshow(maps[li, index, hi], cmap="viridis", aspect="auto")
            ax.set_title(f"layer {li + 1}, head {hi + 1}", fontsize=8)
            ax.set_xticks(range(0, t, step), labels[::step], fontsize=6, rotation=90)
            ax.set_yticks(range(0, t, step), labels[::step], fontsize=6)
            fig.colorbar(image, ax=ax, fraction=0.046)
    axes[-1, 0].set_xlabel("attended token (key)")
    axes[-1, 0].set_ylabel("attending token (query)")
    fig.tight_layout()
    return fig
