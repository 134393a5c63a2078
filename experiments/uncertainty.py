"""In-context uncertainty: a mean-and-variance transformer against the Bayes predictive, in and out of distribution.

Liu et al. (2024), "Towards better understanding of in-context learning ability from in-context uncertainty
quantification": a transformer trained with the Gaussian negative log-likelihood to output a mean and a
variance reaches the Bayes predictive distribution in distribution, y_q | D ~ N(x_q^T mu_post,
sigma^2 + x_q^T Sigma_post x_q) (docs/theory.md §12), but under task shift (w from another law) it does not
behave like Bayesian inference with the true law. This script trains a mean-and-variance model (by default the
LSA stack ``icl.LinearTransformer(d, layers, variance_head=True)``; ``--model transformer`` for
``icl.Transformer(variance_head=True)``) with the Gaussian NLL of the query (``TrainConfig(loss="nll")``) and
scores it with
:mod:`icl.uncertainty` (NLL, coverage of central 50/90/95% intervals, PIT histogram, sharpness, each with
standard errors; differences paired on the same prompts):

- in distribution: NLL within 0.05 nats of the Bayes NLL, 90% intervals covering 88-92% of targets;
- task shift (w scaled by 2, 3, 4; w from an anisotropic prior): the model against Bayes under the training
  prior and Bayes under the true law; claim: at w x 3 its NLL exceeds the true-law Bayes NLL by > 4 SE;
- covariate shift (x scaled; another Sigma) and prompt-length shift (longer contexts than in training): one
  Bayes reference (the posterior does not depend on the law of x); reported, no claim;
- a finite pool: the Bayes NLL of pool prompts is that of the exact Gaussian-mixture predictive of dMMSE
  (reported next to the Gaussian-prior Bayes NLL on the same prompts).

In distribution means ``n`` context pairs, as in training. Paper setting (GPU): ``--model transformer --d 8
--n 40 --layers 12 --width 256 --heads 8 --steps 500000 --batch 64 --lr 1e-4``.

    python experiments/uncertainty.py [--quick] [--d 2 --n 20 --layers 3 --steps 3000 ...]
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
    lower_bound_claim,
    positive_float,
    positive_int,
    script_main,
    train_config,
    train_models,
    upper_bound_claim,
)

# --- configuration -------------------------------------------------------------------------------------------
FLAGS = dict(d=2, n=20, noise=[0.5], steps=3000, batch=256, seeds=1, lr=1e-2, seed=0, eval_prompts=40_000)
QUICK = dict(steps=1500, eval_prompts=20_000)
NLL_TOL = 0.05  # nats: model NLL - Bayes NLL in distribution
COVERAGE_RANGE = (0.88, 0.92)  # 90% intervals
SHIFT_SE = 4.0  # task shift: model NLL - true-law Bayes NLL > this many SE


def add_arguments(p) -> None:
    p.add_argument("--model", choices=("lsa", "transformer"), default="lsa",
                   help="icl.LinearTransformer (LSA stack) or icl.Transformer (GPT-2 style), both variance_head=True")
    p.add_argument("--layers", type=positive_int, default=3, help="LSA layers or transformer blocks")
    p.add_argument("--width", type=positive_int, default=32, help="transformer width (--model transformer)")
    p.add_argument("--heads", type=positive_int, default=2, help="attention heads (--model transformer)")
    p.add_argument("--w-scales", type=positive_float, nargs="+", default=[2.0, 3.0, 4.0],
                   help="task shift: w multiplied by these (the claim uses 3)")
    p.add_argument("--x-scale", type=positive_float, default=2.0, help="covariate shift: x multiplied by this")
    p.add_argument("--length-factor", type=positive_float, default=2.0,
                   help="prompt-length shift: contexts of this many times n pairs")
    p.add_argument("--pool-size", type=positive_int, default=16, help="finite pool for the exact-mixture reference")


def validate(args, p) -> None:
    if len(args.noise) != 1 or args.noise[0] <= 0:
        p.error("--noise takes one value sigma > 0 (the predictive density needs noise)")
    if 3.0 not in args.w_scales:
        p.error("--w-scales must include 3 (the task-shift claim)")
    if args.width % args.heads:
        p.error("--width must be divisible by --heads")


def _row(result, model="model") -> dict:
    """One table row: every predictor's NLL/MSE/coverage/sharpness and the model's paired gaps."""
    row = {name: {"nll": c.nll, "mse": c.mse, "coverage": {str(k): v for k, v in c.coverage.items()},
                  "sharpness": c.sharpness, "pit_histogram": c.pit_histogram}
           for name, c in result.metrics.items()}
    row["gaps"] = {f"{a}-{b}": p for (a, b), p in result.pairs.items()}
    return row


def run(args) -> Outcome:
    d, n, sigma = args.d, args.n, args.noise[0]
    task = icl.LinearRegressionTask(d=d, noise_std=sigma)
    n_long = max(int(round(args.length_factor * n)), n + 1)
    config = train_config(args, loss="nll")
    if args.model == "lsa":
        model_fn = lambda rngs: icl.LinearTransformer(d, args.layers, variance_head=True, rngs=rngs)  # noqa: E731
    else:
        model_fn = lambda rngs: icl.Transformer(d, num_layers=args.layers, width=args.width,  # noqa: E731
                                                num_heads=args.heads, variance_head=True, max_pairs=n_long + 1,
                                                rngs=rngs)
    result = train_models(args, model_fn, task, config)
    model = result.model(0)
    if hasattr(model, "trained_pairs"):
        model.trained_pairs = None  # the length shift below evaluates beyond the training length on purpose
    keys = iter(jax.random.split(jax.random.key(args.seed + 10_000), 16))
    evaluate = lambda test_task, length: icl.shift_evaluation(model, task, test_task, next(keys),  # noqa: E731
                                                               length, args.eval_prompts)
    runs, claims = [], []

    # in distribution
    ind = evaluate(task, n)
    gap = ind.pairs[("model", "bayes")]
    cov90, cov90_se = ind.metrics["model"].coverage[0.9]
    runs.append({"shift": "none", "n_eval": n, **_row(ind)})
    print(f"in distribution (n={n}): NLL model {ind.metrics['model'].nll[0]:.4f} vs Bayes "
          f"{ind.metrics['bayes'].nll[0]:.4f} (gap {gap['nll_diff']:.4f} ± {gap['nll_diff_se']:.4f}); 90% coverage "
          f"{cov90:.4f} ± {cov90_se:.4f}")
    claims += [
        upper_bound_claim("in distribution: NLL(model) - NLL(Bayes) <= 0.05 nats", gap["nll_diff"], NLL_TOL, 0.0,
                          f"Liu et al. 2024: the model reaches the Bayes predictive; paired on {ind.num_prompts} "
                          f"prompts with {n} pairs", se=gap["nll_diff_se"]),
        lower_bound_claim("in distribution: 90% intervals cover >= 88%", cov90, COVERAGE_RANGE[0], 0.9,
                          "central 90% interval of N(mean, var)", se=cov90_se),
        upper_bound_claim("in distribution: 90% intervals cover <= 92%", cov90, COVERAGE_RANGE[1], 0.9,
                          "central 90% interval of N(mean, var)", se=cov90_se),
    ]

    # task shift: w scaled, and w from an anisotropic prior with the same trace
    aniso = np.diag(np.linspace(0.2, 1.8, d)) if d > 1 else np.eye(1) * 4.0
    shifts = [(f"w x {s:g}", icl.shifted_task(task, w_scale=s)) for s in args.w_scales]
    shifts.append(("w ~ N(0, anisotropic)", icl.shifted_task(task, w_cov=aniso)))
    for label, shifted in shifts:
        res = evaluate(shifted, n)
        runs.append({"shift": label, "kind": "task", "n_eval": n, **_row(res)})
        true_gap, train_gap = res.pairs[("model", "bayes_true_law")], res.pairs[("model", "bayes_train_prior")]
        print(f"task shift {label}: NLL model - Bayes(true law) {true_gap['nll_diff']:.4f} ± "
              f"{true_gap['nll_diff_se']:.4f}; model - Bayes(training prior) {train_gap['nll_diff']:.4f} ± "
              f"{train_gap['nll_diff_se']:.4f}")
        if label == "w x 3":
            claims.append(lower_bound_claim(
                "task shift w x 3: NLL(model) - NLL(Bayes, true law) > 4 SE", true_gap["nll_diff"],
                SHIFT_SE * true_gap["nll_diff_se"], None,
                f"Liu et al. 2024: not Bayesian inference under task shift; the gap is {true_gap['nll_diff']:.4f} ± "
                f"{true_gap['nll_diff_se']:.4f} nats = {true_gap['nll_diff'] / true_gap['nll_diff_se']:.1f} SE "
                f"(vs the training-prior Bayes: {train_gap['nll_diff']:.4f} ± {train_gap['nll_diff_se']:.4f})",
                se=true_gap["nll_diff_se"]))

    # covariate shift and prompt-length shift: one Bayes reference, reported
    rng = np.random.default_rng(args.seed)
    other_sigma = icl.LinearRegressionTask.from_eigenvalues(np.linspace(0.3, 2.0, d), noise_std=sigma,
                                                            rotation_seed=int(rng.integers(1 << 30))).x_cov
    for label, shifted, length in [(f"x x {args.x_scale:g}", icl.shifted_task(task, x_scale=args.x_scale), n),
                                   ("x ~ N(0, Sigma')", icl.shifted_task(task, x_cov=other_sigma), n),
                                   (f"length {n_long} pairs", task, n_long)]:
        try:
            res = evaluate(shifted, length)
        except ValueError as err:  # an invalid predictive distribution under this shift: reported, not scored
            runs.append({"shift": label, "kind": "covariate/length", "n_eval": length, "refused": str(err)})
            print(f"{label}: {err}")
            continue
        runs.append({"shift": label, "kind": "covariate/length", "n_eval": length, **_row(res)})
        g = res.pairs[("model", "bayes")]
        print(f"{label}: MSE model {res.metrics['model'].mse[0]:.4f} vs Bayes {res.metrics['bayes'].mse[0]:.4f}; "
              f"NLL gap {g['nll_diff']:.4f} ± {g['nll_diff_se']:.4f}")

    # finite pool: the Bayes NLL is the exact mixture's (dMMSE), not the Gaussian-prior one
    pool = icl.FiniteTaskPool(task, num_tasks=args.pool_size, seed=args.seed)
    pool_res = icl.compare_calibration({"dmmse_mixture": icl.dmmse(pool, variance=True),
                                        "bayes_gaussian_prior": icl.bayes_predictive(task), "model": model},
                                       pool, next(keys), n, args.eval_prompts,
                                       pairs=[("bayes_gaussian_prior", "dmmse_mixture"), ("model", "dmmse_mixture")])
    runs.append({"shift": f"finite pool M={args.pool_size}", "kind": "pool", "n_eval": n, **_row(pool_res)})
    print(f"pool M={args.pool_size}: exact-mixture Bayes NLL {pool_res.metrics['dmmse_mixture'].nll[0]:.4f}, "
          f"Gaussian-prior Bayes {pool_res.metrics['bayes_gaussian_prior'].nll[0]:.4f}, model "
          f"{pool_res.metrics['model'].nll[0]:.4f}")

    conv, report = convergence_claim("uncertainty", result)
    claims.extend(conv)
    extra = {"final_train_loss": final_train_loss(result), "convergence": report, "train_seconds": result.seconds}
    return Outcome(claims, runs, {"uncertainty.png": lambda: _figure(runs)}, extra)


def _figure(runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels, gaps, ses, train_gaps = [], [], [], []
    for r in runs:
        key = "model-bayes_true_law" if "model-bayes_true_law" in r["gaps"] else "model-bayes" if "model-bayes" in \
            r["gaps"] else "model-dmmse_mixture"
        labels.append(r["shift"])
        gaps.append(r["gaps"][key]["nll_diff"])
        ses.append(r["gaps"][key]["nll_diff_se"])
        train_gaps.append(r["gaps"].get("model-bayes_train_prior", {}).get("nll_diff", np.nan))
    pos = np.arange(len(labels))
    ax1.bar(pos - 0.2, gaps, 0.4, yerr=np.asarray(ses) * 2, label="model - Bayes (true law)")
    ax1.bar(pos + 0.2, train_gaps, 0.4, label="model - Bayes (training prior)")
    ax1.set_xticks(pos, labels, rotation=45, ha="right", fontsize=8)
    ax1.set_yscale("symlog", linthresh=0.05)
    ax1.set_ylabel("NLL gap (nats, symlog)")
    ax1.axhline(0, color="k", lw=0.5)
    ax1.legend(fontsize=8)
    ax1.set_title("NLL against Bayes, in and out of distribution")
    hist, se = runs[0]["model"]["pit_histogram"]
    bins = len(hist)
    ax2.bar((np.arange(bins) + 0.5) / bins, hist, 1.0 / bins, yerr=2 * np.asarray(se), alpha=0.7, label="model")
    ax2.axhline(1.0 / bins, color="k", ls="--", label="calibrated")
    ax2.set_xlabel("PIT")
    ax2.set_ylabel("fraction")
    ax2.set_title("PIT histogram in distribution")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


SPEC = Experiment("uncertainty", __doc__.splitlines()[0], FLAGS, run, add_arguments=add_arguments,
                  validate=validate, quick=QUICK)


def main(argv=None) -> dict:
    from icl.experiment import run_experiment

    return run_experiment(SPEC, argv)


if __name__ == "__main__":
    script_main(SPEC)
