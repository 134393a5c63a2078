"""Task diversity: with few pretraining tasks the transformer is dMMSE; past a threshold M* it is ridge.

Raventós et al. (2023), "Pretraining task diversity and the emergence of non-Bayesian in-context learning for
regression": pretrain on prompts whose task vector is one of M vectors drawn once from N(0, I)
(``icl.FiniteTaskPool``). The Bayes predictor for that training law is dMMSE, the posterior mean over the pool
(``icl.dmmse``); for the Gaussian prior it is ridge with lambda = sigma^2 (docs/theory.md §12). With small M the
model matches dMMSE (it memorises the pool and fails on new tasks); past a threshold it matches ridge and
solves new tasks. This script trains ``--seeds`` transformers (``icl.Transformer``) per M in {2, 4, ..., 2^k} and
on the Gaussian prior (M = infinity), all on every prefix (``loss="every_prefix"``) and all in one vmapped program
(``icl.sweep``: every M shares one task shape, :class:`PoolOrPrior`), and measures every seed's model on pool
tasks and on fresh tasks (all seeds on the same prompts): the squared prediction difference SPD (Akyürek et
al. 2023, docs/theory.md §11) to dMMSE and to ridge, averaged over every prefix k = 1..n, and the error on fresh
tasks averaged over k >= d + 1. Every average is taken per prompt first, so its standard error is exact, and
the model's error is paired with ridge's on the same prompts.

M* (per seed) is the smallest M whose fresh-task error (k >= d + 1) is within 10% of ridge's; its uncertainty
is the range of M for which that test is undecided at 2 standard errors. ``--max-log2-tasks k`` is the
starting grid M = 2..2^k: while some seed's M* lacks two octaves of grid above it (or was not found), the
grid grows by whole octaves (one more vmapped program per extension, its own checkpoint stage) up to
``--max-log2-tasks-limit`` (default 14); a grid stopped there says so in the M* claims, which then fail.
Claims, each judged on every seed (``icl.experiment.per_seed_claim``; ``measured`` is the worst seed):

1. smallest M = 2: SPD(model, dMMSE) / SPD(model, ridge) < 1 on pool tasks (the memorising regime);
2. M = infinity: SPD(model, ridge) / SPD(model, dMMSE of the smallest pool) < 1 on fresh tasks;
3. M = infinity: fresh-task error / ridge's <= 1.10 (the 10% that defines M*; the model's own gap);
4. M* found with >= 2 octaves of grid below it (log2 M* - 1 >= 2, i.e. M* >= 8);
5. M* found with >= 2 octaves of grid above it (log2(max M / M*) >= 2).

Paper setting (GPU): ``--attention softmax --d 8 --n 16 --noise 0.5 --max-log2-tasks 20
--max-log2-tasks-limit 20 --layers 8 --width 256 --heads 8 --steps 500000 --batch 256 --lr 1e-3`` (their
transition lies between M = 2^11 and 2^15).

Linear attention, 3 blocks of width 32, lr 3e-3 with 100 warm-up steps, all M in one program, on the 2-core CPU.

``--quick`` (d = 2, n = 8, sigma = 1, one seed, M = 2..128, 1500 steps at batch 192, 8000 prompts) passes
every claim: fresh-task error over ridge's (k >= 3; SE 0.002-0.016) and pool-task SPD to dMMSE / to ridge:

    M                  2      4      8      16     32     64     128    inf
    ratio              1.696  1.374  1.300  1.160  1.043  1.046  1.034  1.020
    SPD dMMSE/ridge    .008/  .053/  .036/  .031/  .041/  .041/  .032/
                       .262   .318   .200   .100   .052   .054   .038

M* = 32 (range 32..32), so the grid needs no extension; claims 1-5 measure 0.030, 0.034, 1.020, 4 and 2
octaves. 447 s wall on the shared, loaded 2-core CPU (the same training as the earlier fixed-grid
script, which took 226-270 s on a quiet one). At sigma = 0.5 the model's own gap to ridge at M = infinity
(1.10x at n = 8) eats the whole 10% budget; at sigma = 1 ridge's error carries the larger noise floor and the
gap is 2%.

``--quick --d 3 --seed 1``: M* = 64 (range 32..64; M = 32 at 1.108 ± 0.005, 64 at 1.072, infinity at
1.042), so the starting grid M = 2..128 reaches only one octave above it (the old fixed grid failed the M*
claim there, measuring 1 octave); the grid extends to M = 256 (1.061) and every claim passes (581 s loaded).

Defaults (d = 5, n = 10, sigma = 1.5, 2 seeds, starting grid M = 2..256, 1500 steps at batch 256, 10000
prompts). sigma = 1.5 keeps the signal-to-noise ratio d / sigma^2 = 2.2 near the quick setting's 2. Short
exploration runs (seed 0 only, 1500 steps, 2000 prompts; fresh-task error over ridge's):

    sigma   M = 8   16     32     64     128    256    512    2048   inf
    1.0     2.070   -      1.302  -      1.121  -      1.120  1.099  1.118
    1.5     -       1.189  -      1.084  -      1.052  -      -      1.042
    2.0     -       1.111  -      1.028  -      1.028  -      -      1.018

At sigma = 1 the 3-block model's own gap to ridge at M = infinity (12%, training loss flat over the last
tenth) exceeds the 10% budget and M* is not resolved; at sigma = 1.5 the gap is 4%, M* is 32 or 64 (two
octaves or more below 256) and M = 16 is clearly outside (1.19); at sigma = 2 the contrast is weaker (M = 16
already at 1.11). The defaults
themselves have not been run. Estimated run time alone on the 2-core CPU: ~16-18 min (~20 with one grid
extension). The exploration runs took 59-60 CPU-ms per run-step (one seed at one M, batch 256, n = 10;
compilation and evaluation included) on the shared, loaded machine, where the quick preset took 36 CPU-ms per
run-step against 22-27 on a quiet one (1.35-1.6x); quiet, that is 37-44 CPU-ms, or 31-37 ms wall (1.18 CPU-s
per wall-s on this machine). The defaults train 9 grid points x 2 seeds x 1500 steps = 27,000 run-steps
(14-17 min), plus ~1.5 min for evaluation (17 measurements of 10000 prompts); one more octave (a seed with
M* = 128) adds 3,000 run-steps (~2 min).

    python experiments/task_diversity.py [--quick] [--d 5 --n 10 --noise 1.5 --max-log2-tasks 8 ...]
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import icl
from icl.experiment import (
    Experiment,
    Outcome,
    final_train_loss,
    nonneg_int,
    per_seed_claim,
    positive_int,
    script_main,
    train_config,
    train_grid,
)

# --- configuration -------------------------------------------------------------------------------------------
FLAGS = dict(d=5, n=10, noise=[1.5], steps=1500, batch=256, seeds=2, lr=3e-3, seed=0, eval_prompts=10_000)
QUICK = dict(d=2, n=8, noise=[1.0], steps=1500, batch=192, seeds=1, max_log2_tasks=7, eval_prompts=8_000)
RIDGE_TOL = 0.10  # fresh-task error within 10% of ridge's (k >= d + 1)
OCTAVES = 2  # the grid spans this many octaves on each side of M*


def add_arguments(p) -> None:
    p.add_argument("--max-log2-tasks", type=positive_int, default=8,
                   help="starting grid of pool sizes M = 2, 4, ..., 2^k; the grid is extended (in steps of "
                        "whole octaves) until it reaches two octaves above every seed's M*, up to "
                        "--max-log2-tasks-limit")
    p.add_argument("--max-log2-tasks-limit", type=positive_int, default=14,
                   help="the grid is never extended past M = 2^limit (the M* claim then fails and says so)")
    p.add_argument("--layers", type=positive_int, default=3, help="transformer blocks")
    p.add_argument("--attention", choices=("linear", "softmax"), default="linear",
                   help="linear: stacked [x, y] tokens, linear attention, no positions (~3%% above ridge at M = "
                        "infinity after 1.5k steps at d = 2, sigma = 1); softmax: GPT-2 style interleaved tokens "
                        "(the paper's; needs far more steps)")
    p.add_argument("--width", type=positive_int, default=32, help="transformer width")
    p.add_argument("--heads", type=positive_int, default=2, help="attention heads")
    p.add_argument("--warmup", type=nonneg_int, default=100, help="linear learning-rate warm-up steps (then cosine)")


def validate(args, p) -> None:
    if len(args.noise) != 1 or args.noise[0] <= 0:
        p.error("--noise takes one value sigma > 0 (dMMSE needs label noise)")
    if args.n < args.d + 1:
        p.error("--n must be >= d + 1 (the fresh-task error averages k >= d + 1)")
    if args.width % args.heads:
        p.error("--width must be divisible by --heads")
    if args.warmup >= args.steps:
        p.error(f"--warmup must be < --steps ({args.steps})")
    if args.max_log2_tasks_limit < args.max_log2_tasks:
        p.error(f"--max-log2-tasks-limit must be >= --max-log2-tasks ({args.max_log2_tasks})")


@icl.pytree_dataclass
class PoolOrPrior(icl.Task):
    """One grid point's training law in a shape every M shares, so that all M train in one vmapped program.

    ``weights`` is a pool of M task vectors tiled to ``max M`` rows (M divides max M, so a uniform draw over
    the rows is a uniform draw over the pool, and ``icl.dmmse`` of the rows is the pool's dMMSE); with
    ``prior`` True each prompt draws a fresh task vector from ``task``'s prior instead (M = infinity).
    """

    task: object
    weights: jax.Array
    prior: jax.Array

    @classmethod
    def build(cls, task, num_tasks: int | None, max_tasks: int, seed: int) -> "PoolOrPrior":
        """The pool ``icl.FiniteTaskPool(task, num_tasks, seed)`` tiled to ``max_tasks`` rows (None: the prior)."""
        base = icl.FiniteTaskPool(task, num_tasks=num_tasks or 1, seed=seed).weights
        return cls(task, jnp.tile(base, (max_tasks // base.shape[0], 1)), jnp.asarray(num_tasks is None))

    @property
    def d(self) -> int:
        return self.task.d

    @property
    def noise_std(self):
        return self.task.noise_std

    def _draw(self, key, batch: int, m: int):  # the pool's own sampler, with the prior switched in for M = inf
        return icl.FiniteTaskPool.draw_points(self.task, self.weights, key, batch, m, use_prior=self.prior)


@dataclass(frozen=True)
class _PrefixStats:
    """Per prompt: squared errors and SPDs at every prefix, and their averages over the prefixes ``k > first``.

    The predictors are ``model_0 .. model_{S-1}`` (one per training seed, all on the same prompts), ``dmmse``
    and ``ridge``; the model statistics carry a seed axis after the prompt axis.
    """

    first: int

    def __call__(self, predictors, prompts):
        preds = {name: p.prefix(prompts) for name, p in predictors.items()}
        models = jnp.stack([preds[f"model_{i}"] for i in range(len(preds) - 2)], axis=1)  # [prompts, seeds, n]
        y = prompts.y
        err = {"model": (models - y[:, None]) ** 2, "ridge": (preds["ridge"] - y) ** 2,
               "dmmse": (preds["dmmse"] - y) ** 2}
        out = {f"err_{name}": v for name, v in err.items()}
        out["spd_dmmse"] = (models - preds["dmmse"][:, None]) ** 2
        out["spd_ridge"] = (models - preds["ridge"][:, None]) ** 2
        for name in ("spd_dmmse", "spd_ridge"):
            out[f"{name}_all"] = out[name].mean(axis=-1)  # k = 1..n
        for name, v in err.items():
            out[f"err_{name}_late"] = v[..., self.first:].mean(axis=-1)  # k = first + 1 .. n
        out["err_excess_late"] = out["err_model_late"] - out["err_ridge_late"][:, None]  # paired with ridge
        return out


def _measure(models, dmmse, ridge, task, key, n, d, num_prompts) -> dict:
    """Means and SEs (float64) of :class:`_PrefixStats` on prompts of ``task``: ``{name: (mean, se)}``; the
    model statistics have a leading seed axis."""
    predictors = {f"model_{i}": m for i, m in enumerate(models)} | {"dmmse": dmmse, "ridge": ridge}
    mc = icl.monte_carlo(_PrefixStats(d), predictors, task, key, n, num_prompts, chunk_size=min(num_prompts, 2000))
    return {k: (np.asarray(mc.mean[k]), np.asarray(mc.se[k])) for k in mc.mean}


def _seeds(stat) -> dict:
    """Per-seed means and SEs of a model statistic, and their mean over seeds (for the report)."""
    mean, se = np.atleast_1d(stat[0]), np.atleast_1d(stat[1])
    return {"per_seed": mean.tolist(), "se_per_seed": se.tolist(), "mean": float(mean.mean())}


def _scalar(stat) -> tuple[float, float]:
    return float(stat[0]), float(stat[1])


def _listed(row, name) -> str:
    return ", ".join(f"{v:.4f}" for v in row[name]["per_seed"])


def _grid_laws(task, sizes, max_tasks, seed) -> dict:
    return {m: PoolOrPrior.build(task, m, max_tasks, seed) for m in sizes}


def _transition(rows, num_seeds) -> tuple[list, list]:
    """Per seed: M* (the smallest M within 10% of ridge, None if none is) and its 2-SE range ``[low, high]``."""
    stars, ranges = [], []
    for s in range(num_seeds):
        ratio = [(r["num_tasks"], r["fresh_error_ratio_to_ridge"]["per_seed"][s],
                  r["fresh_error_ratio_to_ridge"]["se_per_seed"][s]) for r in rows]
        star = next((m for m, v, _ in ratio if v <= 1 + RIDGE_TOL), None)
        undecided = [m for m, v, se in ratio if abs(v - 1 - RIDGE_TOL) <= 2 * se]  # "within 10%" undecided at 2 SE
        stars.append(star)
        ranges.append([min([star] + undecided), max([star] + undecided)] if star is not None else [None, None])
    return stars, ranges


def _wanted_log2(stars, log2_max) -> int:
    """The smallest grid end 2^k with two octaves above every seed's M* (M* not found yet: above 2^(k+1))."""
    return max(int(np.log2(m if m is not None else 2 ** (log2_max + 1))) + OCTAVES for m in stars)


def run(args) -> Outcome:
    d, n, sigma, seeds = args.d, args.n, args.noise[0], args.seeds
    task = icl.LinearRegressionTask(d=d, noise_std=sigma)
    ridge = icl.ridge(sigma**2)  # Bayes for w ~ N(0, I): lambda = sigma^2 / tau^2
    config = train_config(args, loss="every_prefix", warmup=args.warmup)
    arch = (dict(attention="linear", encoding="stacked", positional="none") if args.attention == "linear"
            else dict(attention="softmax", encoding="interleaved", positional="learned"))
    model_fn = lambda rngs: icl.Transformer(d, num_layers=args.layers, width=args.width,  # noqa: E731
                                            num_heads=args.heads, max_pairs=n + 1, rngs=rngs, **arch)
    key = jax.random.key(args.seed + 10_000)
    smallest_dmmse = None
    runs, train_seconds, grids = [], 0.0, []

    def train_and_measure(log2_lo, log2_hi, with_prior, stage):
        """Train M = 2^log2_lo .. 2^log2_hi (and M = infinity) in one program and measure every seed of each."""
        nonlocal key, smallest_dmmse, train_seconds
        sizes = [2**j for j in range(log2_lo, log2_hi + 1)] + ([None] if with_prior else [])  # None: infinity
        laws = _grid_laws(task, sizes, 2**log2_hi, args.seed)
        # every M in one vmapped program; the same seed gives every M the same initialisation and data keys
        trained = train_grid(args, model_fn, lambda num_tasks: laws[num_tasks or None], config,
                             {"num_tasks": [m or 0 for m in sizes]}, stage=stage)
        train_seconds += max(r.seconds for _, r in trained)
        grids.append([2**log2_lo, 2**log2_hi])
        if smallest_dmmse is None:
            smallest_dmmse = icl.dmmse(laws[sizes[0]])
        rows = []
        for m, (_, result) in zip(sizes, trained):
            models = [result.model(i) for i in range(result.num_seeds)]
            dmmse = smallest_dmmse if m is None else icl.dmmse(laws[m])  # M = inf: the smallest pool's dMMSE
            key, k_pool, k_fresh = jax.random.split(key, 3)
            fresh = _measure(models, dmmse, ridge, task, k_fresh, n, d, args.eval_prompts)
            pool = fresh if m is None else _measure(models, dmmse, ridge, laws[m], k_pool, n, d, args.eval_prompts)
            ridge_err = float(fresh["err_ridge_late"][0])
            excess, excess_se = fresh["err_excess_late"]
            # paired with ridge on the same prompts: the SE of the excess over ridge's error
            ratio = (1 + excess / ridge_err, excess_se / ridge_err)
            row = {
                "num_tasks": "inf" if m is None else m,
                "fresh_error_ratio_to_ridge": _seeds(ratio),
                "spd_dmmse_pool": _seeds(pool["spd_dmmse_all"]),
                "spd_ridge_pool": _seeds(pool["spd_ridge_all"]),
                "spd_dmmse_fresh": _seeds(fresh["spd_dmmse_all"]),
                "spd_ridge_fresh": _seeds(fresh["spd_ridge_all"]),
                "error_fresh_model": _seeds(fresh["err_model_late"]),
                "error_fresh_ridge": _scalar(fresh["err_ridge_late"]),
                "error_fresh_dmmse": _scalar(fresh["err_dmmse_late"]),
                "error_pool_model": _seeds(pool["err_model_late"]),
                "error_pool_dmmse": _scalar(pool["err_dmmse_late"]),
                "curves_fresh": {k: fresh[k][0] for k in ("err_model", "err_ridge", "err_dmmse", "spd_dmmse",
                                                           "spd_ridge")},
                "final_train_loss": final_train_loss(result),
            }
            rows.append(row)
            print(f"M={row['num_tasks']}: pool SPD to dMMSE [{_listed(row, 'spd_dmmse_pool')}] vs ridge "
                  f"[{_listed(row, 'spd_ridge_pool')}]; fresh error/ridge (k>={d + 1}) [" + ", ".join(
                      f"{v:.3f} ± {s:.3f}" for v, s in zip(ratio[0], ratio[1])) + "] per seed")
        return rows

    # the starting grid, then whole octaves until the grid reaches two octaves above every seed's M*
    log2_max, limit = args.max_log2_tasks, args.max_log2_tasks_limit
    rows = train_and_measure(1, log2_max, True, "M")
    finite, inf = rows[:-1], rows[-1]
    stars, ranges = _transition(finite, seeds)
    while _wanted_log2(stars, log2_max) > log2_max and log2_max < limit:
        target = min(_wanted_log2(stars, log2_max), limit)
        print(f"M* per seed {stars}: extending the grid to M = 2^{target}")
        finite += train_and_measure(log2_max + 1, target, False, f"M_{log2_max + 1}_to_{target}")
        log2_max = target
        stars, ranges = _transition(finite, seeds)
    capped = _wanted_log2(stars, log2_max) > log2_max
    runs = finite + [inf]
    first, max_m = finite[0], finite[-1]["num_tasks"]

    def ratios(row, num, den):
        return np.asarray(row[num]["per_seed"]) / np.asarray(row[den]["per_seed"])

    def seed_text(row, name):
        return ", ".join(f"{v:.4g} ± {s:.2g}" for v, s in zip(row[name]["per_seed"], row[name]["se_per_seed"]))

    star_text = ("; ".join(f"seed {s}: M* = {m} (within-10% test undecided at 2 SE for M in [{lo}, {hi}])"
                           if m is not None else f"seed {s}: no M <= {max_m} within 10% of ridge"
                           for s, (m, (lo, hi)) in enumerate(zip(stars, ranges)))
                 + f"; grid M = 2..{max_m} and infinity (started at 2^{args.max_log2_tasks}"
                 + (f", extended to 2^{log2_max}" if log2_max > args.max_log2_tasks else "") + ")"
                 + (f"; the grid reached --max-log2-tasks-limit {limit} before two octaves above every M*"
                    if capped else ""))
    below = [np.log2(m) - 1 if m is not None else float("nan") for m in stars]  # octaves from M = 2 to M*
    above = [np.log2(max_m / m) if m is not None else float("nan") for m in stars]
    claims = [
        per_seed_claim(
            f"smallest M={first['num_tasks']}: SPD(model, dMMSE) / SPD(model, ridge) < 1 on pool tasks",
            ratios(first, "spd_dmmse_pool", "spd_ridge_pool"), 1.0, None,
            f"Raventós et al. 2023: memorising regime; SPD to dMMSE {seed_text(first, 'spd_dmmse_pool')}, to "
            f"ridge {seed_text(first, 'spd_ridge_pool')} (averaged over k = 1..{n})", kind="upper"),
        per_seed_claim(
            "M=infinity: SPD(model, ridge) / SPD(model, dMMSE of the smallest pool) < 1 on fresh tasks",
            ratios(inf, "spd_ridge_fresh", "spd_dmmse_fresh"), 1.0, None,
            f"SPD to ridge {seed_text(inf, 'spd_ridge_fresh')}, to dMMSE(M={first['num_tasks']}) "
            f"{seed_text(inf, 'spd_dmmse_fresh')}", kind="upper"),
        per_seed_claim(
            f"M=infinity: fresh-task error (k >= {d + 1}) / ridge's <= 1.10",
            inf["fresh_error_ratio_to_ridge"]["per_seed"], 1 + RIDGE_TOL, 1.0,
            f"error ratio {seed_text(inf, 'fresh_error_ratio_to_ridge')} (paired with ridge on the same prompts)",
            kind="upper", se=max(inf["fresh_error_ratio_to_ridge"]["se_per_seed"])),
        per_seed_claim(
            f"M* found with >= {OCTAVES} octaves of grid below it (log2 M* - 1 >= {OCTAVES}, i.e. M* >= 8)",
            below, OCTAVES, None, star_text, kind="lower"),
        per_seed_claim(
            f"M* found with >= {OCTAVES} octaves of grid above it (log2(max M / M*) >= {OCTAVES})",
            above, OCTAVES, None, star_text, kind="lower"),
    ]
    table_keys = ("num_tasks", "fresh_error_ratio_to_ridge", "error_fresh_model", "error_fresh_ridge",
                  "error_pool_model", "error_pool_dmmse", "spd_dmmse_pool", "spd_ridge_pool", "spd_dmmse_fresh",
                  "spd_ridge_fresh")
    extra = {"m_star_per_seed": stars, "m_star_range_per_seed": ranges, "grids": grids, "grid_capped": capped,
             "train_seconds": train_seconds, "transition_table": [{k: r[k] for k in table_keys} for r in runs]}
    print(f"M* per seed = {stars} (ranges {ranges}); grid M = 2..{max_m}" + (" (capped)" if capped else ""))
    return Outcome(claims, runs, {"task_diversity.png": lambda: _figure(runs, stars, d)}, extra)


def _figure(runs, stars, d):
    import matplotlib.pyplot as plt

    finite = [r for r in runs if r["num_tasks"] != "inf"]
    ms = np.array([r["num_tasks"] for r in finite], float)
    num_seeds = len(stars)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, color in [("spd_dmmse_pool", "SPD to dMMSE (pool tasks)", "C0"),
                              ("spd_ridge_pool", "SPD to ridge (pool tasks)", "C1"),
                              ("spd_ridge_fresh", "SPD to ridge (fresh tasks)", "C2")]:
        for s in range(num_seeds):
            mean = np.array([r[key]["per_seed"][s] for r in finite])
            se = np.array([r[key]["se_per_seed"][s] for r in finite])
            ax1.errorbar(ms, mean, yerr=2 * se, marker="o", color=color, alpha=1 if s == 0 else 0.5,
                         label=label if s == 0 else None)
    ax1.axhline(runs[-1]["spd_ridge_fresh"]["mean"], color="k", ls=":", label="M = inf: SPD to ridge (fresh)")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("number of pretraining tasks M")
    ax1.set_ylabel(f"SPD (mean over prefixes; {num_seeds} seed{'s' if num_seeds > 1 else ''})")
    ax1.legend(fontsize=7)
    all_ms = [np.inf if r["num_tasks"] == "inf" else r["num_tasks"] for r in runs]
    ratios = {f"seed {s}: model / ridge (fresh)": (
        np.array([r["fresh_error_ratio_to_ridge"]["per_seed"][s] for r in runs]),
        np.array([r["fresh_error_ratio_to_ridge"]["se_per_seed"][s] for r in runs])) for s in range(num_seeds)}
    icl.plot_task_diversity(all_ms, ratios, ax=ax2, bands=2.0, logy=False, ylabel="", transition=stars[0])
    for s in range(1, num_seeds):
        if stars[s]:
            ax2.axvline(stars[s], color=f"C{s}", ls="-.", alpha=0.6, label=f"seed {s}: M* = {stars[s]}")
    ax2.axhline(1 + RIDGE_TOL, color="r", ls="--", label="ridge + 10%")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("number of pretraining tasks M (dotted: M = inf)")
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
