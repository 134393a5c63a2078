"""Figures with one consistent style (matplotlib, Agg backend; figures are saved, never only shown)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["gamma_heatmap", "plot_one_step_gd"]


def gamma_heatmap(ax, gamma, title: str, vmax: float | None = None, ylabel: bool = True):
    """Draw a ``d x d`` preconditioner as a diverging heat map (symmetric colour scale) on ``ax``."""
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
    ``eta_learned_std``, ``eta_theory``); ``eta_curve`` is ``(sigma grid, eta*(sigma))``.
    """
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
