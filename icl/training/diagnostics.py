"""Diagnostics of a finished training run: :func:`convergence_report`."""

from __future__ import annotations

import numpy as np

__all__ = ["convergence_report"]


def convergence_report(result, *, window: float = 0.1, z: float = 3.0, rtol: float = 0.02) -> dict:
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
        slopes, slope_se, noise_sd = np.zeros(seeds), np.full(seeds, np.inf), np.full(seeds, np.inf)
    rel_drop = -slopes * (w - 1) / np.maximum(np.abs(means), 1e-300)
    falling = (slopes < -z * slope_se) & (rel_drop > rtol)
    window_se = noise_sd / np.sqrt(w)
    reasons = [f"seed {s}: the loss is still falling over the last {w} steps (slope {slopes[s]:.3g} per step, "
               f"{slopes[s] / slope_se[s]:.1f} SE; a drop of {100 * rel_drop[s]:.1f}% over the window)"
               for s in np.flatnonzero(falling)]
    disagree = False
    for i in range(seeds):
        for j in range(i + 1, seeds):
            gap, se = abs(means[i] - means[j]), np.hypot(window_se[i], window_se[j])
            if gap > z * se and gap > rtol * 0.5 * (abs(means[i]) + abs(means[j])):
                disagree = True
                reasons.append(f"seeds {i} and {j} disagree: mean loss {means[i]:.4g} vs {means[j]:.4g} over the last "
                               f"{w} steps ({gap / se:.1f} SE apart, spread {100 * gap / np.mean(np.abs(means)):.1f}%)")
    per_seed = dict(slope=slopes, slope_se=slope_se, relative_drop=rel_drop, window_mean=means, window_se=window_se)
    report = {"converged": not (bool(falling.any()) or disagree), "still_falling": bool(falling.any()),
              "seeds_disagree": disagree, "window": int(w), **{k: v.tolist() for k, v in per_seed.items()},
              "reasons": reasons}
    if result.final_losses is not None:
        report["final_losses"] = np.asarray(result.final_losses, np.float64).tolist()
    return report
