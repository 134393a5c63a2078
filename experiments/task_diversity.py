"""Task diversity: with few pretraining tasks the transformer is dMMSE; past a threshold M* it is ridge.

Raventós et al. (2023), "Pretraining task diversity and the emergence of non-Bayesian in-context learning for
regression": pretrain on prompts whose task vector is one of M vectors drawn once from N(0, I)
(``icl.FiniteTaskPool``). The Bayes predictor for that training law is dMMSE, the posterior mean over the pool
(``icl.dmmse``); for the Gaussian prior it is ridge with lambda = sigma^2 (docs/theory.md §12). With small M the
model matches dMMSE (it memorises the pool and fails on new tasks); past a threshold it matches ridge and
solves new tasks. This script trains one ``icl.Transformer`` per M in {2, 4, ..., 2^k} and one on the Gaussian
prior (M = infinity), all on every prefix (``loss="every_prefix"``), and measures on pool tasks and on fresh
tasks the squared prediction difference SPD (Akyürek et al. 2023, docs/theory.md §11) to dMMSE and to ridge,
averaged over every prefix k = 1..n, and the error on fresh tasks averaged over k >= d + 1.

M* is the smallest M whose fresh-task error (k >= d + 1) is within 10% of ridge's; its uncertainty is the
range of M for which that test is undecided at 2 standard errors. Claims: at the smallest M the model is
closer to dMMSE than to ridge on pool tasks; at M = infinity it is closer to ridge (than to the smallest pool's
dMMSE) and within 10% of ridge's error on fresh tasks; the grid spans two octaves on each side of M*.

Paper setting (GPU): ``--attention softmax --d 8 --n 16 --noise 0.5 --max-log2-tasks 20 --layers 8
--width 256 --heads 8 --steps 500000 --batch 256 --lr 1e-3`` (their transition lies between M = 2^11 and 2^15).

    python experiments/task_diversity.py [--quick] [--d 2 --n 8 --max-log2-tasks 8 ...]
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

import icl
from icl.experiment import (
    Experiment,
    Outcome,
    final_train_loss,
    lower_bound_claim,
    positive_int,
    script_main,
    train_config,
    train_models,
    upper_bound_claim,
)

# --- configuration -------------------------------------------------------------------------------------------
FLAGS = dict(d=2, n=8, noise=[0.5], steps=1500, batch=256, seeds=1, lr=3e-3, seed=0, eval_prompts=20_000)
QUICK = dict(steps=1000, max_log2_tasks=5, eval_prompts=8_000)
RIDGE_TOL = 0.10  # fresh-task error within 10% of ridge's (k >= d + 1)
OCTAVES = 2  # the grid spans this many octaves on each side of M*


def add_arguments(p) -> None:
    p.add_argument("--max-log2-tasks", type=positive_int, default=8, help="pool sizes M = 2, 4, ..., 2^k")
    p.add_argument("--layers", type=positive_int, default=3, help="transformer blocks")
    p.add_argument("--attention", choices=("linear", "softmax"), default="linear",
                   help="linear: stacked [x, y] tokens, linear attention, no positions (reaches ridge in ~1.5k steps "
                        "on CPU); softmax: GPT-2 style interleaved tokens (the paper's; needs far more steps)")
    p.add_argument("--width", type=positive_int, default=32, help="transformer width")
    p.add_argument("--heads", type=positive_int, default=2, help="attention heads")


def validate(args, p) -> None:
    if len(args.noise) != 1 or args.noise[0] <= 0:
        p.error("--noise takes one value sigma > 0 (dMMSE needs label noise)")
    if args.n < args.d + 1:
        p.error("--n must be >= d + 1 (the fresh-task error averages k >= d + 1)")
    if args.width % args.heads:
        p.error("--width must be divisible by --heads")


@dataclass(frozen=True)
class _PrefixStats:
    """Per-prompt, per-prefix squared errors and squared prediction differences (a hashable stat_fn)."""

    def __call__(self, predictors, prompts):
        preds = {name: p.prefix(prompts) for name, p in predictors.items()}
        out = {f"err_{name}": (v - prompts.y) ** 2 for name, v in preds.items()}
        out["spd_dmmse"] = (preds["model"] - preds["dmmse"]) ** 2
        out["spd_ridge"] = (preds["model"] - preds["ridge"]) ** 2
        return out


def _curves(model, dmmse, ridge, task, key, n, num_prompts) -> dict:
    """Every-prefix means and SEs ([n] float64) of the errors and SPDs on prompts of ``task``."""
    mc = icl.monte_carlo(_PrefixStats(), {"model": model, "dmmse": dmmse, "ridge": ridge}, task, key, n,
                         num_prompts, chunk_size=min(num_prompts, 2000))
    return {k: (np.asarray(mc.mean[k]), np.asarray(mc.se[k])) for k in mc.mean}


def _avg(curve, ks) -> tuple[float, float]:
    """Mean over prefixes ``ks`` (0-based) and its SE (correlated prefixes: SEs add linearly, an upper bound)."""
    mean, se = curve
    return float(mean[ks].mean()), float(se[ks].mean())


def _paired_ratio(model_curve, ridge_curve, ks):
    m, m_se = _avg(model_curve, ks)
    r, r_se = _avg(ridge_curve, ks)
    ratio = m / r
    return ratio, ratio * np.hypot(m_se / m, r_se / r)


def run(args) -> Outcome:
    d, n, sigma = args.d, args.n, args.noise[0]
    task = icl.LinearRegressionTask(d=d, noise_std=sigma)
    ridge = icl.ridge(sigma**2)  # Bayes for w ~ N(0, I): lambda = sigma^2 / tau^2
    config = train_config(args, loss="every_prefix")
    arch = (dict(attention="linear", encoding="stacked", positional="none") if args.attention == "linear"
            else dict(attention="softmax", encoding="interleaved", positional="learned"))
    model_fn = lambda rngs: icl.Transformer(d, num_layers=args.layers, width=args.width,  # noqa: E731
                                            num_heads=args.heads, max_pairs=n + 1, rngs=rngs, **arch)
    sizes = [2**j for j in range(1, args.max_log2_tasks + 1)] + [None]  # None: M = infinity (the prior)
    fresh_ks = np.arange(d, n)  # prefixes k = d + 1 .. n (0-based entries d .. n - 1)
    all_ks = np.arange(n)
    smallest_pool = icl.FiniteTaskPool(task, num_tasks=sizes[0], seed=args.seed)
    key = jax.random.key(args.seed + 10_000)
    runs = []
    for m in sizes:
        pool = task if m is None else icl.FiniteTaskPool(task, num_tasks=m, seed=args.seed)
        result = train_models(args, model_fn, pool, config, stage=f"M_{m or 'inf'}")
        model = result.model(0)
        dmmse = icl.dmmse(smallest_pool if m is None else pool)
        key, k_pool, k_fresh = jax.random.split(key, 3)
        fresh = _curves(model, dmmse, ridge, task, k_fresh, n, args.eval_prompts)
        trained_on = fresh if m is None else _curves(model, dmmse, ridge, pool, k_pool, n, args.eval_prompts)
        ratio, ratio_se = _paired_ratio(fresh["err_model"], fresh["err_ridge"], fresh_ks)
        row = {
            "num_tasks": "inf" if m is None else m,
            "spd_dmmse_pool": _avg(trained_on["spd_dmmse"], all_ks),
            "spd_ridge_pool": _avg(trained_on["spd_ridge"], all_ks),
            "spd_dmmse_fresh": _avg(fresh["spd_dmmse"], all_ks),
            "spd_ridge_fresh": _avg(fresh["spd_ridge"], all_ks),
            "error_fresh_model": _avg(fresh["err_model"], fresh_ks),
            "error_fresh_ridge": _avg(fresh["err_ridge"], fresh_ks),
            "error_fresh_dmmse": _avg(fresh["err_dmmse"], fresh_ks),
            "error_pool_model": _avg(trained_on["err_model"], fresh_ks),
            "fresh_error_ratio_to_ridge": (ratio, ratio_se),
            "curves_fresh": {k: v[0] for k, v in fresh.items()},
            "final_train_loss": final_train_loss(result),
            "train_seconds": result.seconds,
        }
        runs.append(row)
        print(f"M={row['num_tasks']}: pool SPD to dMMSE {row['spd_dmmse_pool'][0]:.4f} vs ridge "
              f"{row['spd_ridge_pool'][0]:.4f}; fresh error/ridge (k>={d + 1}) {ratio:.3f} ± {ratio_se:.3f}")

    finite = [r for r in runs if r["num_tasks"] != "inf"]
    within = [r["fresh_error_ratio_to_ridge"][0] <= 1 + RIDGE_TOL for r in finite]
    m_star = next((r["num_tasks"] for r, ok in zip(finite, within) if ok), None)
    # uncertainty: M for which "within 10%" is undecided at 2 SE
    undecided = [r["num_tasks"] for r in finite if abs(r["fresh_error_ratio_to_ridge"][0] - 1 - RIDGE_TOL)
                 <= 2 * r["fresh_error_ratio_to_ridge"][1]]
    low = min([m_star] + undecided) if m_star is not None else None
    high = max([m_star] + undecided) if m_star is not None else None
    first, inf = finite[0], runs[-1]
    max_m = finite[-1]["num_tasks"]
    claims = [
        upper_bound_claim(
            f"smallest M={first['num_tasks']}: SPD(model, dMMSE) < SPD(model, ridge) on pool tasks",
            first["spd_dmmse_pool"][0] - first["spd_ridge_pool"][0], 0.0, None,
            f"Raventós et al. 2023: memorising regime; SPD to dMMSE {first['spd_dmmse_pool'][0]:.4g} ± "
            f"{first['spd_dmmse_pool'][1]:.2g}, to ridge {first['spd_ridge_pool'][0]:.4g} ± "
            f"{first['spd_ridge_pool'][1]:.2g} (averaged over k = 1..{n})"),
        upper_bound_claim(
            "M=infinity: SPD(model, ridge) < SPD(model, dMMSE of the smallest pool) on fresh tasks",
            inf["spd_ridge_fresh"][0] - inf["spd_dmmse_fresh"][0], 0.0, None,
            f"SPD to ridge {inf['spd_ridge_fresh'][0]:.4g}, to dMMSE(M={first['num_tasks']}) "
            f"{inf['spd_dmmse_fresh'][0]:.4g}"),
        upper_bound_claim(
            f"M=infinity: fresh-task error (k >= {d + 1}) within 10% of ridge's",
            inf["fresh_error_ratio_to_ridge"][0], 1 + RIDGE_TOL, 1.0,
            f"error ratio {inf['fresh_error_ratio_to_ridge'][0]:.4f} ± {inf['fresh_error_ratio_to_ridge'][1]:.4f}",
            se=inf["fresh_error_ratio_to_ridge"][1]),
        lower_bound_claim(
            "M* found and the grid spans two octaves on each side of it (M*/4 >= 2 and 4 M* <= max M)",
            float(min(np.log2(m_star) - 1, np.log2(max_m) - np.log2(m_star))) if m_star else float("nan"), OCTAVES,
            None,
            f"M* = {m_star} (undecided at 2 SE for M in [{low}, {high}]); grid M = 2..{max_m} and infinity"),
    ]
    extra = {"m_star": m_star, "m_star_range": [low, high],
             "transition_table": [{k: r[k] for k in ("num_tasks", "spd_dmmse_pool", "spd_ridge_pool",
                                                     "fresh_error_ratio_to_ridge")} for r in runs]}
    print(f"M* = {m_star} (range {low}..{high})")
    return Outcome(claims, runs, {"task_diversity.png": lambda: _figure(runs, m_star, d)}, extra)


def _figure(runs, m_star, d):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r for r in runs if r["num_tasks"] != "inf"]
    ms = np.array([r["num_tasks"] for r in finite], float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in [("spd_dmmse_pool", "SPD to dMMSE (pool tasks)"), ("spd_ridge_pool", "SPD to ridge (pool tasks)"),
                       ("spd_ridge_fresh", "SPD to ridge (fresh tasks)")]:
        mean = np.array([r[key][0] for r in finite])
        se = np.array([r[key][1] for r in finite])
        ax1.errorbar(ms, mean, yerr=2 * se, marker="o", label=label)
    ax1.axhline(runs[-1]["spd_ridge_fresh"][0], color="k", ls=":", label="M = inf: SPD to ridge (fresh)")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("number of pretraining tasks M")
    ax1.set_ylabel("SPD (mean over prefixes)")
    ax1.legend(fontsize=7)
    ratio = np.array([r["fresh_error_ratio_to_ridge"][0] for r in finite])
    rse = np.array([r["fresh_error_ratio_to_ridge"][1] for r in finite])
    ax2.errorbar(ms, ratio, yerr=2 * rse, marker="o", label="model / ridge (fresh tasks)")
    ax2.axhline(1.1, color="r", ls="--", label="ridge + 10%")
    ax2.axhline(runs[-1]["fresh_error_ratio_to_ridge"][0], color="k", ls=":", label="M = inf")
    if m_star:
        ax2.axvline(m_star, color="g", ls=":", label=f"M* = {m_star}")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("number of pretraining tasks M")
    ax2.set_ylabel(f"error on fresh tasks / ridge (k >= {d + 1})")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


SPEC = Experiment("task_diversity", __doc__.splitlines()[0], FLAGS, run, add_arguments=add_arguments,
                  validate=validate, quick=QUICK)


def main(argv=None) -> dict:
    from icl.experiment import run_experiment

    return run_experiment(SPEC, argv)


if __name__ == "__main__":
    script_main(SPEC)
