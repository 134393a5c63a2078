"""Nonlinear targets: a trained one-layer LSA still runs one GD step, with eta = n B / ((n - 1) B + C).

Mahankali, Hashimoto & Ma (2023), Theorem 3: for x ~ N(0, I_d), y = f(x) (+ noise) with f drawn per prompt
from a rotation-invariant law, the pretraining-loss minimiser of one linear self-attention layer predicts
x_q^T (eta I) h with eta = n B / ((n - 1) B + C), B = E_f ||E_x[x f(x)]||^2, C = E[f(x)^2 ||x||^2]
(docs/theory.md §4). Families: a random ReLU network v^T relu(W x)/sqrt(m) (W_kj ~ N(0, 1/d), v ~ N(0, I_m))
and a single index g(u^T x) (u ~ N(0, I_d), g = tanh, relu or cubic). The theory uses the families' exact
moments; Monte Carlo estimates of B and C (with standard errors) check them. The LSA learns this GD step even
though least squares and ridge predict differently (and, here, better).

Training per family: heavy-tailed targets (the cubic link) make single minibatch gradients huge, and
Adam's second-moment estimate then freezes the step size for ~1000 steps (at d=4, n=14, sigma=0.3 the learned
eta stalled at 0.046 against 0.471). FAMILY_TRAINING gives such links a larger batch, a start on the c A^T path
(W = 0.3 I) and the global gradient norm clipped at clip * A (A = E[y^2]); --batch, --clip and --init-diag
override it for every family. Without the clip Adam stalls (-62% at d=8, n=5), and an SGD tail diverges (the
y^2 term c a^T x_q (1/n) sum y_i^2 has a heavy-tailed curvature).

A measured departure at the cubic corners (4 seeds each, batch 8192; the eta claim is judged per seed and names
the offset): at d=8, n=5, sigma=1 every seed is above the theorem's eta = 0.1829 by +3.52, +2.62, +2.97, +2.14%
(the claim fails on the first seed); at d=2, n=40, sigma=0 every seed is below 0.7643 by -0.80, -0.56, -1.28,
-1.55% (it passes). The offset is systematic (seed spread 0.6%) and is not the clip or the training length: the
clip at 4 A instead of A gives +3.51, +2.67, +2.97, +2.19%, and 6000 steps instead of 2000 give +4.11, +3.36,
+2.86, +2.31%. It sits where the loss cannot see it: at d=8 the learned LSA's loss is 1e-4 of R* above GD at the
theorem's eta (13412.95 against 13411.71 on 40,000 prompts), so along eta the population loss is flat to 1e-4 over
a 3% band, and any small bias of the optimiser (Adam's per-coordinate normalisation of heavy-tailed gradients is
the candidate) moves eta by percents. The Monte Carlo B and C agree with the exact moments (4 SE), so the theory
value itself is checked. The default families (ReLU network, tanh single index) pass per seed.

Convergence: a cosine schedule ends with a flat loss even when training stopped far from the optimum, so a
separate claim requires each seed's final training loss to reach Thm 3's minimum risk R* (the least population
loss of any one-layer LSA) within LOSS_TOL plus 3 standard errors. Every claim about a trained quantity is
judged per seed.

    python experiments/nonlinear_targets.py [--quick] [--d 5 --n 10 --families relu_net single_index ...]
"""

from __future__ import annotations

import jax
import numpy as np

import icl
from icl.experiment import (
    Experiment,
    Outcome,
    convergence_claim,
    final_train_loss,
    finite_float,
    gamma_eff,
    nonneg_float,
    per_seed_claim,
    positive_float,
    positive_int,
    relative_claim,
    script_main,
    seed_losses,
    step_sizes,
    train_config,
    train_models,
)

# --- configuration -------------------------------------------------------------------------------------------
FLAGS = dict(d=5, n=10, noise=[0.0], steps=2000, seeds=4, lr=3e-3, seed=0, init_scale=0.01, eval_prompts=40_000)
QUICK = dict(seeds=2, moment_functions=20_000)
FAMILIES = ("relu_net", "single_index")
DEFAULT_TRAINING = dict(batch=512, clip=0.0, init_diag=0.0)
FAMILY_TRAINING = {"cubic": dict(batch=8192, clip=1.0, init_diag=0.3)}  # by link (single index) or family
RIDGE_LAMS = tuple(2.0**k for k in range(-2, 9))  # 0.25 ... 256: from near least squares to heavy shrinkage
GAP_RATIO = 3.0  # OLS / ridge must sit at least this many times farther from the LSA than GD at eta does
ETA_TOL, DIST_TOL, LOSS_TOL, MOMENT_SE = 0.03, 0.03, 0.02, 4.0


def add_arguments(p):
    p.add_argument("--batch", type=positive_int, default=None,
                   help=f"prompts per training step (default {DEFAULT_TRAINING['batch']}, or FAMILY_TRAINING)")
    p.add_argument("--clip", type=nonneg_float, default=None,
                   help="clip the gradient's global norm at clip * E[y^2] (0: off; default off, or FAMILY_TRAINING)")
    p.add_argument("--init-diag", type=finite_float, default=None,
                   help="start from W^PV = W^KQ = init_diag I + noise (default 0, or FAMILY_TRAINING)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="target families")
    p.add_argument("--width", type=positive_int, default=32, help="hidden units m of the ReLU network")
    p.add_argument("--link", choices=("tanh", "relu", "cubic"), default="tanh", help="single-index link g")
    p.add_argument("--index-std", type=positive_float, default=1.0, help="single index u ~ N(0, index_std^2 I)")
    p.add_argument("--moment-functions", type=lambda t: _at_least_2(t), default=50_000,
                   help="functions f for the Monte Carlo B, C check")
    p.add_argument("--moment-points", type=lambda t: _even(t), default=256,
                   help="x draws per f (two halves; even) for the B, C check")


def _at_least_2(text):
    from icl.experiment import at_least

    return at_least(text, 2)


def _even(text):
    import argparse

    value = positive_int(text)
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"must be an even integer >= 2, got {text!r}")
    return value


def validate(args, parser):
    if len(args.noise) != 1:
        parser.error("--noise takes one value here (the label-noise std of every family)")
    if len(set(args.families)) != len(args.families):
        parser.error(f"--families values must be distinct, got {args.families}")


def make_task(args, family: str):
    noise = args.noise[0]
    if family == "relu_net":
        return icl.ReluNetworkTask(args.d, width=args.width, noise_std=noise)
    return icl.SingleIndexTask(args.d, link=args.link, index_std=args.index_std, noise_std=noise)


def family_training(args, family: str) -> dict:
    """Batch, clip and init_diag of one family: the flags when given, else FAMILY_TRAINING, else the defaults."""
    values = {**DEFAULT_TRAINING, **FAMILY_TRAINING.get(family if family == "relu_net" else args.link, {})}
    return {k: v if getattr(args, k) is None else getattr(args, k) for k, v in values.items()}


def run_family(args, family: str, key) -> tuple[dict, list]:
    """Train the LSA (all seeds), compare with GD at the theory's eta, OLS and ridge; check the moments; claims."""
    d, n = args.d, args.n
    task = make_task(args, family)
    a_exact, b_exact, c_exact = task.exact_moments()
    eta = float(icl.optimal_step_size(task, n))
    risk = float(icl.optimal_risk(task, n))
    moment_key, eval_key = jax.random.split(key)
    moments = icl.estimate_moments(task, moment_key, args.moment_functions, args.moment_points)

    setting = family_training(args, family)
    config = train_config(args, batch=setting["batch"], grad_clip=setting["clip"] * a_exact or None)
    model_fn = lambda r: icl.LinearTransformer(d, 1, init_scale=args.init_scale,  # noqa: E731
                                               init_diag=setting["init_diag"], rngs=r)
    result = train_models(args, model_fn, task, config, stage=family)
    gammas = gamma_eff(result)
    etas = step_sizes(gammas)
    dists = np.asarray(icl.dist_to_identity(gammas), np.float64)

    lsa = {f"lsa_{i}": result.model(i) for i in range(result.num_seeds)}
    ridges = {f"ridge_{lam:g}": icl.ridge(lam) for lam in RIDGE_LAMS}
    predictors = {**lsa, "gd_theory": icl.gradient_descent(eta), "ols": icl.least_squares(), **ridges}
    others = ["gd_theory", "ols", *ridges]
    pairs = [(k, "gd_theory") for k in lsa] + [(k, o) for k in lsa for o in others[1:]]
    comparison = icl.compare_predictors(predictors, task, eval_key, n, num_prompts=args.eval_prompts, pairs=pairs,
                                        cosine_pairs=[])
    loss = {k: comparison.losses[k][0] for k in predictors}
    loss_se = {k: comparison.losses[k][1] for k in predictors}
    direct = seed_losses(comparison, list(lsa))
    rel_diff = np.array([comparison.pairs[(k, "gd_theory")]["loss_diff"] for k in lsa]) / loss["gd_theory"]
    rel_diff_se = np.array([comparison.pairs[(k, "gd_theory")]["loss_diff_se"] for k in lsa]) / loss["gd_theory"]
    gaps = {k: comparison.pairs[("lsa_0", k)]["gap"] for k in others[1:]}
    gaps["gd_theory"] = comparison.pairs[("lsa_0", "gd_theory")]["gap"]
    best_ridge = min(ridges, key=lambda k: loss[k])
    nearest_other = min(["ols", *ridges], key=lambda k: gaps[k])
    gap_ratios = np.array([min(comparison.pairs[(k, o)]["gap"] for o in others[1:])
                           / comparison.pairs[(k, "gd_theory")]["gap"] for k in lsa])
    conv, report = convergence_claim(family, result)
    window = np.asarray(result.losses, np.float64)[:, -report["window"]:]
    excess = (window.mean(1) - 3 * window.std(1, ddof=1) / np.sqrt(window.shape[1])) / risk - 1
    report = {**report, "train_loss_over_minimum_risk_less_3se_per_seed": excess.tolist()}
    run = {
        "family": family,
        "task": {"class": type(task).__name__,
                 **{k: getattr(task, k) for k in ("d", "width", "link", "index_std", "noise_std") if hasattr(task, k)}},
        "noise": args.noise[0],
        "moments_exact": {"A": a_exact, "B": b_exact, "C": c_exact},
        "moments_monte_carlo": {"A": moments.a, "A_se": moments.a_se, "B": moments.b, "B_se": moments.b_se,
                                "C": moments.c, "C_se": moments.c_se, "functions": moments.num_functions,
                                "points_per_function": moments.points_per_function},
        "eta_theory": eta, "eta_linear_target": n / (n + d + 1 + args.noise[0] ** 2),
        "eta_learned_mean": float(etas.mean()), "eta_learned_std": float(etas.std(ddof=1)) if etas.size > 1 else 0.0,
        "eta_learned_per_seed": etas, "dist_to_identity_per_seed": dists, "gamma_learned": gammas.mean(0),
        "risk_theory": risk,
        "loss": {"lsa": direct["mean"], "gd_theory": loss["gd_theory"], "ols": loss["ols"], "ridge": loss[best_ridge]},
        "loss_se": {"lsa": direct["se"], "gd_theory": loss_se["gd_theory"], "ols": loss_se["ols"],
                    "ridge": loss_se[best_ridge]},
        "lsa_loss_per_seed": direct["per_seed"], "lsa_loss_seed_std": direct["std"],
        "lsa_minus_gd_relative_per_seed": rel_diff, "lsa_minus_gd_relative_se_per_seed": rel_diff_se,
        "ridge_lambda": float(best_ridge.split("_")[1]),
        "ridge_grid": [{"lambda": lam, "loss": loss[k], "loss_se": loss_se[k], "gap_to_lsa": gaps[k]}
                       for lam, k in zip(RIDGE_LAMS, ridges)],
        "gap_to_lsa": {"gd_theory": gaps["gd_theory"], "ols": gaps["ols"], "nearest_other": nearest_other},
        "gap_ratio": float(gap_ratios.min()), "gap_ratio_per_seed": gap_ratios,
        "training": {**setting, "grad_clip": config.grad_clip, "steps": config.steps, "lr": config.lr},
        "eval_prompts": comparison.num_prompts, "final_train_loss": final_train_loss(result), "convergence": report,
        "train_seconds": result.seconds,
    }
    claims = [
        per_seed_claim(f"{family}: eta_learned within 3% of n B/((n-1) B + C) (every seed)", etas, ETA_TOL, eta,
                       f"Mahankali et al. 2023 Thm 3 (docs/theory.md §4), exact moments B = {b_exact:.5g}, "
                       f"C = {c_exact:.5g}; measured: mean diagonal of Gamma_eff"),
        per_seed_claim(f"{family}: Gamma_eff is a multiple of I (Dist(Gamma_eff, I), every seed)", dists, DIST_TOL, 0.0,
                       "Dist(M, I) = min_a ||M - a I||_F / ||M||_F; theory: Gamma* = eta I exactly", kind="upper"),
        per_seed_claim(f"{family}: LSA loss within 2% of GD at that eta (paired, every seed)", np.abs(rel_diff),
                       LOSS_TOL, 0.0, f"|LSA - GD(eta)| / GD(eta) on {comparison.num_prompts} shared prompts; GD loss "
                       f"{loss['gd_theory']:.4g} ± {loss_se['gd_theory']:.2g}; theory R* = {risk:.4g}", kind="upper",
                       se=float(rel_diff_se.max())),
        per_seed_claim(f"{family}: LSA is not least squares or ridge (gap ratio, every seed)", gap_ratios, GAP_RATIO,
                       None, f"min over OLS and ridge (lambda {RIDGE_LAMS[0]:g}..{RIDGE_LAMS[-1]:g}) of mean "
                       f"|y_LSA - y_other| over mean |y_LSA - y_GD(eta)|; nearest to seed 0: {nearest_other}",
                       kind="lower"),
        per_seed_claim(f"{family}: training reached the minimum risk (final loss less 3 SE within 2% of R*, every "
                       "seed)", excess, LOSS_TOL, None,
                       f"a cosine schedule ends flat even far from the optimum, so the window mean of each seed's "
                       f"training loss over the last {report['window']} steps, less 3 SE, over Thm 3's minimum risk "
                       f"R* = {risk:.4g} (the least loss of any one-layer LSA), minus 1", kind="upper"),
        relative_claim(f"{family}: Monte Carlo B = exact B ({MOMENT_SE:g} SE)", b_exact, moments.b,
                       MOMENT_SE * moments.b_se / abs(b_exact), f"{moments.num_functions} functions", se=moments.b_se),
        relative_claim(f"{family}: Monte Carlo C = exact C ({MOMENT_SE:g} SE)", c_exact, moments.c,
                       MOMENT_SE * moments.c_se / abs(c_exact), f"{moments.num_functions} functions", se=moments.c_se),
        *conv,
    ]
    return run, claims


def run(args) -> Outcome:
    keys = jax.random.split(jax.random.key(args.seed + 10_000), len(args.families))
    runs, claims = [], []
    for family, key in zip(args.families, keys):
        r, c = run_family(args, family, key)
        runs.append(r)
        claims += c
        print(f"{family}: eta learned {r['eta_learned_mean']:.4f} ± {r['eta_learned_std']:.4f} vs theory "
              f"{r['eta_theory']:.4f} (linear target {r['eta_linear_target']:.4f}); loss LSA {r['loss']['lsa']:.4f}, "
              f"GD {r['loss']['gd_theory']:.4f}, OLS {r['loss']['ols']:.4f}, ridge {r['loss']['ridge']:.4f}; "
              f"gap ratio (worst seed) {r['gap_ratio']:.1f}")
    return Outcome(claims, runs, {"nonlinear_targets.png": lambda: plot_nonlinear_targets(runs, args.d, args.n)})


def plot_nonlinear_targets(runs: list[dict], d: int, n: int):
    """Gamma_eff heat map per family; learned vs theoretical eta; losses of LSA, GD at eta, OLS and ridge."""
    import matplotlib.pyplot as plt

    from icl.plotting import gamma_heatmap

    k = len(runs)
    fig, axes = plt.subplots(1, k + 2, figsize=(3.2 * k + 10, 3.6),
                             gridspec_kw={"width_ratios": [1] * k + [1.3, 1.5], "wspace": 0.55})
    vmax = max(float(np.abs(np.asarray(r["gamma_learned"])).max()) for r in runs)
    image = None
    for i, (ax, r) in enumerate(zip(axes[:k], runs)):
        image = gamma_heatmap(ax, r["gamma_learned"], f"learned $\\Gamma_{{eff}}$, {r['family']}", vmax)
        if i:
            ax.set_ylabel("")
    fig.colorbar(image, ax=list(axes[:k]), shrink=0.8)
    pos = np.arange(k)
    ax = axes[k]
    ax.plot(pos - 0.12, [r["eta_theory"] for r in runs], "ks", label=r"theory $nB/((n-1)B+C)$ (exact moments)")
    ax.errorbar(pos + 0.12, [r["eta_learned_mean"] for r in runs], yerr=[r["eta_learned_std"] for r in runs],
                fmt="o", color="C3", capsize=3, label="trained LSA (mean ± std)")
    ax.scatter(pos, [r["eta_linear_target"] for r in runs], marker="_", s=300, color="C0",
               label=r"linear-target $\eta^*=n/(n+d+1+\sigma^2)$")
    ax.set_xticks(pos, [r["family"] for r in runs], fontsize=8)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylabel(r"step size $\eta$ (mean diagonal of $\Gamma_{eff}$)")
    ax.set_title(f"learned vs Thm 3 step, d={d}, n={n}", fontsize=9)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.6 * (high - low))  # room for the legend above the points
    ax.legend(fontsize=6.5, loc="upper left")
    ax.grid(alpha=0.3)
    ax = axes[k + 1]
    names = [("lsa", "LSA"), ("gd_theory", r"GD at $\eta$"), ("ols", "OLS"), ("ridge", "best ridge")]
    width = 0.8 / len(names)
    for j, (key, label) in enumerate(names):
        ax.bar(pos + (j - 1.5) * width, [r["loss"][key] for r in runs], width,
               yerr=[r["loss_se"][key] for r in runs], label=label, color=f"C{j}")
    ax.scatter(pos, [r["risk_theory"] for r in runs], marker="_", s=400, color="k", zorder=3,
               label=r"theory $R^*=A-\eta B$")
    ax.set_xticks(pos, [r["family"] for r in runs], fontsize=8)
    ax.set_ylabel("test MSE")
    ax.set_title("LSA = GD at $\\eta$, not OLS / ridge", fontsize=9)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 1.35)
    ax.legend(fontsize=6.5, ncol=2, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    return fig


SPEC = Experiment("nonlinear_targets", __doc__.splitlines()[0], FLAGS, run, add_arguments=add_arguments,
                  validate=validate, quick=QUICK)


def main(argv=None) -> dict:
    from icl.experiment import run_experiment

    return run_experiment(SPEC, argv)


if __name__ == "__main__":
    script_main(SPEC)
