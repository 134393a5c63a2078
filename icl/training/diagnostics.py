"""Diagnostics of a finished training run: [`convergence_report`][icl.training.convergence_report]."""

from __future__ import annotations

import numpy as np

__all__ = ["convergence_report"]


def convergence_report(result, *, window: float = 0.1, z: float = 3.0, rtol: float = 0.02) -> dict:
    """Did training converge? Two checks on the loss history ``result.losses [seeds, steps]``, one number each.

    - **still falling**: over the last ``window`` (a tenth) of the steps (at least 8 steps), a least-squares
      line through each seed's losses gives the relative drop over the window (the line's fall over the
      window over the window's mean loss) and its standard error (the per-step minibatch noise sets it). The
      loss is still falling when a seed's drop exceeds both ``rtol`` and ``z`` standard errors; the one number
      is ``excess_drop``, the largest over seeds of ``min(drop - rtol, drop - z SE)``, positive exactly then.
    - **seeds disagree**: for each pair of seeds, the relative gap between their mean losses over the window
      against ``rtol`` and ``z`` of its standard errors, in the same form; ``excess_gap`` is the largest over
      pairs of ``min(gap - rtol, gap - z SE)`` (``None`` for one seed), positive when two seeds disagree (one
      stuck at a saddle, say).

    Returns a JSON-ready dict: ``converged`` (bool), ``still_falling`` and ``seeds_disagree`` (bools),
    ``excess_drop``, ``excess_gap``, ``window`` (steps), per seed ``slope``, ``slope_se``,
    ``relative_drop``, ``relative_drop_se``, ``window_mean``, ``window_se``, ``final_losses`` (when recorded),
    and ``reasons`` (sentences; empty when converged).
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
        slopes, slope_se, noise_sd = np.zeros(seeds), np.full(seeds, np.inf), np.full(seeds, np.inf)
    scale = np.maximum(np.abs(means), 1e-300)
    rel_drop = -slopes * (w - 1) / scale
    rel_drop_se = slope_se * (w - 1) / scale
    drop_excess = np.minimum(rel_drop - rtol, rel_drop - z * rel_drop_se)  # > 0: above rtol AND above z SE
    falling = drop_excess > 0
    window_se = noise_sd / np.sqrt(w)
    reasons = [f"seed {s}: the loss is still falling over the last {w} steps (a drop of {100 * rel_drop[s]:.1f}% "
               f"± {100 * rel_drop_se[s]:.1f}% over the window: more than {100 * rtol:g}% and more than {z:g} SE)"
               for s in np.flatnonzero(falling)]
    gaps = []
    for i in range(seeds):
        for j in range(i + 1, seeds):
            mid = 0.5 * (abs(means[i]) + abs(means[j]))
            gap, se = abs(means[i] - means[j]) / mid, np.hypot(window_se[i], window_se[j]) / mid
            gaps.append(min(gap - rtol, gap - z * se))  # > 0: above rtol AND above z SE
            if gaps[-1] > 0:
                reasons.append(f"seeds {i} and {j} disagree: mean loss {means[i]:.4g} vs {means[j]:.4g} over the "
                               f"last {w} steps (a gap of {100 * gap:.1f}% ± {100 * se:.1f}%)")
    excess_gap = max(gaps) if gaps else None
    disagree = excess_gap is not None and excess_gap > 0
    per_seed = dict(slope=slopes, slope_se=slope_se, relative_drop=rel_drop, relative_drop_se=rel_drop_se,
                    window_mean=means, window_se=window_se)
    report = {"converged": not (bool(falling.any()) or disagree), "still_falling": bool(falling.any()),
              "seeds_disagree": bool(disagree), "excess_drop": float(drop_excess.max()),
              "excess_gap": None if excess_gap is None else float(excess_gap), "z": z, "rtol": rtol,
              "window": int(w), **{k: v.tolist() for k, v in per_seed.items()}, "reasons": reasons}
    if result.final_losses is not None:
        report["final_losses"] = np.asarray(result.final_losses, np.float64).tolist()
    return report
