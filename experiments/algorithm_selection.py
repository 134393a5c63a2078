"""In-context algorithm selection: one transformer, a mixture of noise levels, near-Bayes at every level (Bai et al.).

Bai, Chen, Wang, Xiong and Mei, "Transformers as statisticians" (NeurIPS 2023), noisy linear models with mixed
noise levels: a transformer trained on prompts whose label-noise level ``sigma`` is drawn per prompt from a
finite set is near-optimal at *each* level, so it must recognise in context how noisy the prompt is and choose
the ridge penalty that suits it (Bayes at level ``sigma_k`` is ridge with ``lambda_k = sigma_k^2 / psi^2``;
docs/theory.md §13). This script trains a causal ``icl.Transformer`` (every-prefix loss, ``--seeds`` runs) and, for
contrast, a one-layer linear transformer (``icl.LinearTransformer``, the same loss) on an ``icl.NoiseMixtureTask``
(levels ``--noise``, uniform weights, ``x ~ N(0, I)``, ``w ~ N(0, psi^2 I)`` with Bai et al.'s ``psi = 1/sqrt(d)``),
then evaluates them on prompts of each level alone (``icl.LinearRegressionTask`` with that noise and that prior):

- the normalised every-prefix error (squared error of the prediction of ``y_k`` from the first ``k - 1`` pairs
  divided by the noiseless ``E[y^2] = psi^2 d``: ``icl.error_curve``'s numbers, same prompts, same normaliser)
  against that level's Bayes error (ridge at ``lambda_k``) and against the mixture's Bayes predictor
  (``icl.bayes_posterior_mean(mixture)``, the posterior mixture of ridges: the best any model trained on the
  mixture can do); the gaps are paired differences on the same prompts;
- its fingerprint per level (``icl.fingerprint``, least squares / Bayes / one-step GD / ridge): the ridge ``lambda``
  fitted to the model's predictions at every prefix length, against ``lambda_k``.

Every-prefix trap. A transformer trained with the every-prefix loss on prompts of ``n`` pairs is trained at
positions ``k = 1..n`` (``model.prefix``), never at the query position ``n + 1`` with ``n`` pairs. The curves are
read through ``prefix`` at ``k = 1..n``, and the fingerprints use contexts of ``n - 1`` pairs, so that their full
context (``k = n``, ``model(prompts)``) is a trained position too.

Claims (tolerances fixed before any run, never loosened; a claim about a trained model is judged on each training
seed and ``measured`` is the worst seed):

- per level ``sigma_k``: the transformer's normalised error is within 0.05 (absolute) of that level's Bayes error
  at every ``2d <= k <= n`` (max over k of the paired |gap|, per seed);
- the bar needs selection: over 44 fixed ridge penalties (a log grid a decade beyond the levels' own, and those),
  the smallest worst excess over the level's Bayes error (over levels and ``2d <= k <= n``) is above 0.05 (float64
  closed form, paired); so a model that meets the bar at every level picks its penalty from the prompt;
- the bar can be met: the mixture's Bayes predictor is within 0.05 of each level's Bayes error at ``2d <= k <= n``
  (at d = 2 it is not: 0.053 at sigma = 1, k = 4, which is why d >= 3);
- the transformer's fitted ridge lambda at its full context (``k = n``) increases with the noise level, per seed
  (smallest ratio of consecutive levels' lambdas >= 1). Necessary, not sufficient: a transformer after 30 training
  steps passes it too (fitted 20, 29, 39 against 0.03, 0.75, 3), because the fit is weighted by each level's own
  prompts; the lambdas, their ratio to ``lambda_k`` and the lambda at every k are in the runs;
- the linear transformer misses the bar (its worst gap over the levels is above 0.05, per seed): one layer is one
  preconditioned GD step whatever the prompt's noise (its fingerprint is gd, fitted ridge lambda about 12.5 at
  k = n at every level: no selection).

--quick (d = 3, n = 12, levels 0.1, 0.5, 1; transformer: 4 layers, width 32, 4 heads, linear attention, stacked
tokens, no positions, 3000 steps of batch 128 at lr 3e-3 (warm-up 200, cosine, clip 1.0), one seed; linear
transformer 1000 steps of batch 512 at lr 1e-2; 20,000 evaluation prompts per level; fingerprints on 2048): 112 s
wall, 171 CPU-s nearly alone (load 0.2-1.3, warm compilation cache, run by the slow test in-process); 188 s wall,
187 CPU-s at load 2.2-3.1 from other jobs on the 2-core CPU (training 133 s, evaluation and fingerprints 50 s).
Measured (seed 0): gap to the level's Bayes at 2d <= k <= n: sigma = 0.1: 0.118 +- 0.003 at k = 6 (FAILS the bar
0.05); sigma = 0.5: 0.037 +- 0.003 (k = 6); sigma = 1: 0.036 +- 0.004 (k = 6); the mixture's Bayes 0.009, 0.028,
0.025 (all at k = 6); the transformer's gap to the mixture's Bayes 0.109 (k = 6), 0.023 (k = 9), 0.019 (k = 9).
Fitted lambda at k = n: 0.150, 1.23, 2.83 against 0.03, 0.75, 3 (ratio 2.3 and 8.2: increasing; the fingerprint's
verdict at sigma = 1 is bayes). Best fixed ridge: lambda = 0.95, 0.123 +- 0.007 above Bayes at sigma = 1, k = 6.
Linear transformer: worst gaps 0.46, 0.32, 0.18; fitted lambda 12.5, 13.2, 12.5 (gd verdict at every level).
Training loss 0.804 over the last 300 steps (converged: icl.convergence_report), against the mixture's Bayes
every-prefix risk 0.795.

Why the lowest level fails (--quick). The transformer selects, but late: at sigma = 0.1 its fitted ridge lambda is
0.91-1.07 at k = 2..6 (near the middle level's 0.75, against 0.03) and 0.78, 0.72, 0.59, 0.43, 0.35, 0.15 at
k = 7..12. Its gap at sigma = 0.1 peaks at k = d + 1 (0.196; 0.166 at k = 5, 0.118 at k = 6) and falls to 0.024 by
k = 12, while the mixture's Bayes, which must infer the level too, is 0.092, 0.033, 0.009 above the oracle at
k = 4, 5, 6: the model smooths the least-squares transition (as experiments/error_curves.py found noiselessly at
d = 5). The training loss barely sees it: the low level's errors are about 0.03 of an every-prefix risk of 0.8, and
the loss is within 0.01 of the mixture's Bayes risk. No cheap setting fixed it (one seed, d = 3 and levels 0.1, 0.5,
1 unless said; worst gap over 2d <= k <= n at sigma = 0.1 / at sigma = 1, on 8000 prompts, the first always at
k = 2d): GPT-2 softmax, interleaved, learned positions, n = 8: 3000 steps 0.128 / 0.072 (lr 5e-3), 6000 steps 0.091
/ 0.066, batch 256 x 3000 0.117 / 0.065; n = 12: 3000 steps 0.117 / 0.051, batch 512 x 3000 0.090 / 0.050 (811 s);
stacked softmax (n = 8) 0.149 / 0.071, with 2 layers x width 64 0.189 / 0.085; linear attention, n = 12 (the
default): lr 3e-3 0.116 / 0.038, lr 1e-2 0.113 / 0.042, 8 layers 0.093 / 0.041, weights 0.5, 0.25, 0.25 on the
levels 0.093 / 0.055; d = 4 (at k = 8) 0.098 / 0.049; levels 0.25, 0.5, 1 (softmax) 0.091 at sigma = 0.25. A 4x
larger batch cut it by a quarter only, so the bar at the lowest level needs far more training than a CPU budget (Bai
et al. train 300,000 steps).

Defaults (as --quick with 2 seeds and 10,000 steps: the scale at which the claims are meant): 1162 s wall, 959
CPU-s (load 0.3-5); every claim passes but the lowest level's, which FAILS on both seeds: gaps 0.077 +- 0.002 and
0.084 +- 0.003 at k = 6 (0.047 and 0.053 at k = 7, 0.030 and 0.034 at k = 8); sigma = 0.5: 0.026, 0.029; sigma = 1:
0.038, 0.037 (all at k = 6); gaps to the mixture's Bayes 0.068, 0.076 (k = 6), 0.013, 0.013 and 0.013, 0.014.
Fitted lambda at k = n: 1.2e-6 (at the grid's edge: with 11 pairs at sigma = 0.1 ridge barely depends on lambda),
1.15, 2.78 (seed 0) and 0.0062, 1.10, 2.61 (seed 1); at sigma = 1 the fingerprint's verdict is bayes for both seeds
and the lambda climbs from 1.4-1.5 (k = 2) to 2.6-2.8. At sigma = 0.1 seed 0's lambda is 1.04, 0.75, 0.65, 0.63,
0.60 at k = 2..6 and 0.50, 0.41, 0.31, 0.20, 0.11 at k = 7..11: three times the training moved the switch to the
low penalty earlier, not yet to k = 2d. Linear transformer: worst gaps 0.46, 0.32, 0.18 (both seeds). Training
loss 0.786 and 0.790 over the last 300 steps (converged), at the mixture's Bayes every-prefix risk (0.795, Monte
Carlo on 20,000 prompts).

    python experiments/algorithm_selection.py [--quick | --paper] [--d 3 --n 12 --noise 0.1 0.5 1 ...]

``--paper`` is Bai et al.'s GPT-2 setting from their code (d = 20, 40 pairs, levels 0, 0.1, 0.25, 0.5, 1, 12 layers,
width 256, 8 heads, softmax, interleaved, learned positions, batch 64, lr 1e-4, Garg's curriculum, 300,000 steps)
for an accelerator.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

import icl
from icl.evaluate import predict_prefix
from icl.experiment import (
    Claim,
    Experiment,
    Outcome,
    at_least,
    lower_bound_claim,
    per_seed_claim,
    positive_float,
    positive_int,
    script_main,
    train_config,
    train_models,
    upper_bound_claim,
)
from icl.training import convergence_report

# --- configuration -------------------------------------------------------------------------------------------
FLAGS = dict(d=3, n=12, noise=[0.1, 0.5, 1.0], steps=10_000, batch=128, seeds=2, lr=3e-3, seed=0, eval_prompts=20_000)
OWN = dict(layers=4, width=32, heads=4, attention="linear", encoding="stacked", positional="none", psi=None,
           lsa_layers=1, lsa_steps=1000, fingerprint_prompts=2048, curriculum=False)
QUICK = dict(steps=3000, seeds=1)
PAPER = dict(d=20, n=40, steps=300_000, batch=64, lr=1e-4, layers=12, width=256, heads=8, attention="softmax",
             encoding="interleaved", positional="learned", noise=[0.0, 0.1, 0.25, 0.5, 1.0], curriculum=True,
             eval_prompts=10_000)
BAR = 0.05  # |err_model - err_Bayes(level)| at 2d <= k <= n, normalised (icl.error_curve's units)
LAMBDA_GRID = 41  # fixed ridge penalties for the "bar needs selection" claim (log grid, see fixed_ridge_lambdas)
FINGERPRINT_FAMILIES = ("least_squares", "bayes", "gd", "ridge")  # cheap ones; gd with one step (the LSA's)


def add_arguments(p):
    p.add_argument("--layers", type=positive_int, default=OWN["layers"], help="transformer blocks")
    p.add_argument("--width", type=positive_int, default=OWN["width"], help="transformer width")
    p.add_argument("--heads", type=positive_int, default=OWN["heads"], help="attention heads")
    p.add_argument("--attention", choices=("softmax", "linear"), default=OWN["attention"],
                   help="icl.Transformer's attention: softmax (GPT-2) or linear (unnormalised, 1/#pairs)")
    p.add_argument("--encoding", choices=("interleaved", "stacked"), default=OWN["encoding"],
                   help="icl.Transformer's tokens: interleaved (Garg) or stacked ([x_i, y_i])")
    p.add_argument("--positional", choices=("learned", "none"), default=OWN["positional"],
                   help="icl.Transformer's positional embeddings")
    p.add_argument("--psi", type=positive_float, default=OWN["psi"],
                   help="prior standard deviation of each coordinate of w (default 1/sqrt(d), Bai et al.'s)")
    p.add_argument("--lsa-layers", type=positive_int, default=OWN["lsa_layers"], help="linear transformer layers")
    p.add_argument("--lsa-steps", type=positive_int, default=OWN["lsa_steps"], help="linear transformer training steps")
    p.add_argument("--curriculum", action="store_true", help="Garg's curriculum (dimensions and points grow)")
    p.add_argument("--fingerprint-prompts", type=lambda t: at_least(t, 2), default=OWN["fingerprint_prompts"],
                   help="evaluation prompts of each fingerprint (>= 2; fitted on min(this, 1024) others)")


def validate(args, p):
    if args.width % args.heads:
        p.error(f"--width must be divisible by --heads, got {args.width} and {args.heads}")
    levels = list(args.noise)
    if len(levels) < 2 or len(set(levels)) != len(levels):
        p.error(f"--noise takes at least two distinct noise levels (the mixture), got {levels}")
    if args.n < 2 * args.d:
        p.error(f"--n must be >= 2d = {2 * args.d} (the claims at 2d <= k <= n), got {args.n}")
    args.noise = sorted(levels)
    args.prior_std = float(args.psi) if args.psi is not None else float(1.0 / np.sqrt(args.d))  # derived setting


# --- tasks and models ----------------------------------------------------------------------------------------


def mixture_task(args) -> icl.NoiseMixtureTask:
    """The training task: the levels ``--noise`` with uniform weights, ``w ~ N(0, psi^2 I)``, ``x ~ N(0, I)``."""
    return icl.NoiseMixtureTask(args.d, args.noise, psi=args.prior_std)


def level_task(args, sigma: float) -> icl.LinearRegressionTask:
    """Prompts of one level alone: the mixture's law conditioned on ``sigma`` (same x, same prior on w)."""
    return icl.LinearRegressionTask.isotropic(args.d, sigma, tau=args.prior_std)


def bayes_lambda(args, sigma: float) -> float:
    """The Bayes ridge penalty of a level, ``sigma^2 / psi^2``."""
    return float(sigma) ** 2 / args.prior_std**2


def curriculum(args):
    """Garg's schedule (Bai et al.'s code uses it): dimensions from 5 and points from 11 up to (d, n) over 60% of the
    steps."""
    if not args.curriculum:
        return None
    dims_start, points_start = min(5, args.d), min(11, args.n)
    every = max(1, int(0.6 * args.steps) // max(args.d - dims_start, (args.n - points_start + 1) // 2, 1))
    return icl.Curriculum(dims_start=dims_start, dims_every=every, points_start=points_start, points_step=2,
                          points_every=every)


def train_transformer(args, task):
    """``icl.Transformer`` on every prefix of ``n`` pairs (positions ``k = 1..n`` are trained; the query at
    ``n + 1`` is not, see the module docstring), ``--seeds`` runs."""
    config = train_config(args, loss="every_prefix", schedule="cosine", warmup=min(200, args.steps // 10),
                          grad_clip=1.0, curriculum=curriculum(args))

    def model_fn(rngs):
        return icl.Transformer(args.d, num_layers=args.layers, width=args.width, num_heads=args.heads,
                               attention=args.attention, encoding=args.encoding, positional=args.positional,
                               max_pairs=args.n, rngs=rngs)

    return train_models(args, model_fn, task, config, stage="transformer")


def train_lsa(args, task):
    """``icl.LinearTransformer`` (``--lsa-layers``) on the same every-prefix loss, ``--seeds`` runs."""
    config = train_config(args, steps=args.lsa_steps, batch=512, lr=1e-2, loss="every_prefix", warmup=0,
                          grad_clip=None, curriculum=None,
                          checkpoint_every=min(getattr(args, "checkpoint_every", 0), args.lsa_steps))
    return train_models(args, lambda rngs: icl.LinearTransformer(args.d, args.lsa_layers, rngs=rngs), task, config,
                        stage="lsa")


# --- curves ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _PrefixErrors:
    """Per prompt: every predictor's squared error at every prefix ``k = 1..n`` and its paired differences with the
    level's Bayes predictor and with the mixture's (same prompts)."""

    names: tuple

    def __call__(self, preds, prompts):
        err = {name: (predict_prefix(name, preds[name], prompts) - prompts.y) ** 2 for name in self.names}
        return {"err": err,
                "gap": {name: err[name] - err["bayes_level"] for name in self.names},
                "gap_mixture": {name: err[name] - err["bayes_mixture"] for name in self.names}}


def level_curves(args, task, predictors: dict, key) -> dict:
    """Normalised every-prefix curves ``{name: {mean, se}}`` (``icl.error_curve``'s normalisation: divided by the
    level task's noiseless ``E[y^2]``, ``psi^2 d``) with the paired gaps ``{"gap"|"gap_mixture": {name: {mean, se}}}``
    to the level's Bayes and to the mixture's Bayes, all on the same ``--eval-prompts`` prompts of ``task``."""
    mc = icl.monte_carlo(_PrefixErrors(tuple(predictors)), predictors, task, key, args.n,
                         num_prompts=args.eval_prompts, chunk_size=min(2000, args.eval_prompts))
    norm = float(task.signal_variance())
    out = {group: {name: {"mean": np.asarray(mc.mean[group][name], np.float64) / norm,
                          "se": np.asarray(mc.se[group][name], np.float64) / norm} for name in predictors}
           for group in ("err", "gap", "gap_mixture")}
    out["num_prompts"] = int(mc.num_prompts)
    return out


def window(args) -> np.ndarray:
    """The claims' prefix lengths ``2d <= k <= n`` as a boolean mask over ``k = 1..n``."""
    return np.arange(1, args.n + 1) >= 2 * args.d


def worst_gap(gap: dict, mask: np.ndarray) -> tuple[float, float, int]:
    """``(max over the window of |gap|, its SE, the k where it is)`` for one predictor's paired gap curve."""
    ks = np.flatnonzero(mask)
    i = int(ks[np.argmax(np.abs(gap["mean"][mask]))])
    return float(abs(gap["mean"][i])), float(gap["se"][i]), i + 1


def fixed_ridge_lambdas(args) -> np.ndarray:
    """A log grid of fixed ridge penalties spanning the levels' Bayes penalties (a decade beyond each end), with
    those penalties themselves."""
    lams = np.array([bayes_lambda(args, s) for s in args.noise if s > 0])
    grid = np.logspace(np.log10(lams.min() / 10), np.log10(lams.max() * 10), LAMBDA_GRID)
    return np.unique(np.concatenate([grid, lams]))


def ridge_prefix_sq_errors(prompts, lams) -> np.ndarray:
    """Squared error of ``ridge(lam)`` at every prefix ``k = 1..n`` for every ``lam``, closed form in float64 from the
    eigen-decomposition of ``X^T X`` of the first ``k - 1`` pairs: ``[batch, n, len(lams)]``. A ``lam`` of 0 is least
    squares (minimum norm: eigenvalues below ``1e-10`` of the largest are left out)."""
    x, y = np.asarray(prompts.x, np.float64), np.asarray(prompts.y, np.float64)
    lams = np.asarray(lams, np.float64)
    batch, n, d = x.shape
    out = np.empty((batch, n, lams.size))
    gram, xty = np.zeros((batch, d, d)), np.zeros((batch, d))
    for i in range(n):
        evals, evecs = np.linalg.eigh(gram)
        coef = np.einsum("bji,bj->bi", evecs, xty) * np.einsum("bji,bj->bi", evecs, x[:, i])
        den = np.maximum(evals, 0.0)[:, :, None] + lams
        keep = (den > 1e-10 * np.maximum(evals.max(axis=1), 1e-300)[:, None, None]) & (den > 0)
        pred = np.einsum("bi,bil->bl", coef, np.where(keep, 1.0 / np.where(keep, den, 1.0), 0.0))
        out[:, i] = (pred - y[:, i, None]) ** 2
        gram += x[:, i, :, None] * x[:, i, None, :]
        xty += x[:, i] * y[:, i, None]
    return out


def fixed_ridge_excess(args, tasks: dict, key) -> dict:
    """Every fixed ridge penalty's excess over each level's Bayes error (ridge at that level's ``sigma^2/psi^2``),
    normalised as the curves, paired on ``--eval-prompts`` prompts of each level (float64 closed form).
    Returns ``{lams [L], excess [L, K, n], se [L, K, n]}``."""
    lams = fixed_ridge_lambdas(args)
    excess, se = np.zeros((lams.size, len(tasks), args.n)), np.zeros((lams.size, len(tasks), args.n))
    for j, (sigma, task) in enumerate(tasks.items()):
        prompts = task.sample(jax.random.fold_in(key, j), args.eval_prompts, args.n)
        sq = ridge_prefix_sq_errors(prompts, np.concatenate([[bayes_lambda(args, sigma)], lams]))
        diff = (sq[..., 1:] - sq[..., :1]) / float(task.signal_variance())  # [batch, n, L]
        excess[:, j] = diff.mean(axis=0).T
        se[:, j] = (diff.std(axis=0, ddof=1) / np.sqrt(diff.shape[0])).T
    return {"lams": lams, "excess": excess, "se": se}


# --- fingerprints ----------------------------------------------------------------------------------------------


def fingerprint(args, model, task, key) -> icl.Fingerprint:
    """``icl.fingerprint`` with contexts of ``n - 1`` pairs, so its full context (``k = n``, ``model(prompts)``) is a
    position the every-prefix loss trained; least squares, Bayes (the level's ridge), one-step GD and ridge; no
    ILWD."""
    return icl.fingerprint(model, task, key, args.n - 1, candidates=FINGERPRINT_FAMILIES,
                           num_prompts=args.fingerprint_prompts, num_ilwd_prompts=0, max_steps=1, lbfgs_iters=0)


def fingerprint_summary(res: icl.Fingerprint, lam_bayes: float) -> dict:
    lam = float(res.fitted["ridge"]["lam"])
    return {"lam": lam, "lam_over_bayes": lam / lam_bayes if lam_bayes > 0 else None,
            "lam_by_k": np.asarray(res.fitted_by_k["ridge"]["lam"], np.float64),
            "lam_at_edge_by_k": np.asarray(res.at_edge["ridge"]), "best": res.best, "reason": res.reason,
            "best_by_k": res.best_by_k, "ks": res.ks,
            "spd_per_d_full": {f: float(res.spd[f][-1] / res.d) for f in res.families},
            "relative_spd_full": float(res.relative_spd[-1]), "num_prompts": res.num_prompts}


# --- claims ----------------------------------------------------------------------------------------------------


def _fmt(values) -> str:
    return ", ".join(f"{v:.4g}" for v in np.ravel(values))


def level_claims(args, curves: dict, seeds: list[str], label: str) -> list:
    """Per level: every seed of the transformer within ``BAR`` of the level's Bayes error at ``2d <= k <= n``."""
    mask, claims = window(args), []
    for sigma, c in curves.items():
        worst = [worst_gap(c["gap"][s], mask) for s in seeds]
        mix = [worst_gap(c["gap_mixture"][s], mask) for s in seeds]
        values = [w[0] for w in worst]
        s = int(np.argmax(values))
        lam = bayes_lambda(args, sigma)
        claims.append(per_seed_claim(
            f"{label}, sigma={sigma:g}: max over 2d <= k <= n of |err - err_Bayes(sigma)| <= {BAR:g}", values, BAR, 0.0,
            f"normalised every-prefix error (icl.error_curve's units) on {c['num_prompts']} prompts of this level "
            "alone, "
            f"paired gap to the level's Bayes (ridge at lambda = sigma^2/psi^2 = {lam:.4g}) per seed: "
            + "; ".join(f"seed {i}: {w[0]:.4f} ± {w[1]:.2g} at k={w[2]}" for i, w in enumerate(worst))
            + f"; the mixture's Bayes is {worst_gap(c['gap']['bayes_mixture'], mask)[0]:.4f} above it there (the price "
              "of not knowing sigma); the transformer's gap to the mixture's Bayes per seed: "
            + "; ".join(f"{m[0]:.4f} ± {m[1]:.2g} at k={m[2]}" for m in mix),
            kind="upper", se=worst[s][1]))
    return claims


def reference_claims(args, curves: dict, fixed: dict) -> list:
    """The bar is attainable (mixture Bayes meets it) and needs selection (no fixed ridge meets it)."""
    mask = window(args)
    mix = {sigma: worst_gap(c["gap"]["bayes_mixture"], mask) for sigma, c in curves.items()}
    top = max(mix, key=lambda s: mix[s][0])
    excess = fixed["excess"][:, :, mask]  # [L, K, window]
    worst_per_lam = excess.reshape(excess.shape[0], -1).max(axis=1)
    i = int(np.argmin(worst_per_lam))
    j, kk = np.unravel_index(int(np.argmax(excess[i])), excess[i].shape)
    k_best = int(np.flatnonzero(mask)[kk]) + 1
    per_level = excess[i].max(axis=1)
    return [
        upper_bound_claim(
            f"mixture Bayes: max over levels and 2d <= k <= n of |err - err_Bayes(sigma)| <= {BAR:g} (the bar is "
            "attainable)",
            mix[top][0], BAR, 0.0,
            "icl.bayes_posterior_mean(mixture) (posterior mixture of ridges) on each level's prompts, paired: "
            + "; ".join(f"sigma={s:g}: {v[0]:.4f} ± {v[1]:.2g} at k={v[2]}" for s, v in mix.items()),
            se=mix[top][1]),
        lower_bound_claim(
            f"no fixed ridge penalty meets the bar: min over lambda of max over levels and 2d <= k <= n of "
            f"err_ridge(lambda) - err_Bayes(sigma) > {BAR:g}", float(worst_per_lam[i]), BAR, None,
            f"{fixed['lams'].size} penalties on a log grid {fixed['lams'][0]:.3g}..{fixed['lams'][-1]:.3g} (with the "
            f"levels' own); the best, lambda = {fixed['lams'][i]:.4g}, is {worst_per_lam[i]:.4f} ± "
            f"{fixed['se'][i, j, k_best - 1]:.2g} above the Bayes error at sigma={args.noise[j]:g}, k={k_best} (its "
            f"worst excess per level: {_fmt(per_level)}); so a model that meets the bar at every level selects its "
            "penalty from the prompt", se=float(fixed["se"][i, j, k_best - 1])),
    ]


def lambda_claim(args, fps: dict, label: str) -> Claim:
    """Per seed: the fitted ridge lambda at the full context increases with the noise level."""
    seeds = range(len(fps[args.noise[0]]))
    lams = np.array([[fps[sigma][s]["lam"] for sigma in args.noise] for s in seeds])
    edges = [[f"sigma={sigma:g}" for sigma in args.noise if fps[sigma][s]["lam_at_edge_by_k"][-1]] for s in seeds]
    ratios = (lams[:, 1:] / lams[:, :-1]).min(axis=1)
    bayes = [bayes_lambda(args, s) for s in args.noise]
    return per_seed_claim(
        f"{label}: fitted ridge lambda increases with the noise level (min ratio of consecutive levels >= 1)", ratios,
        1.0, None,
        f"icl.fingerprint's ridge lambda at the full context k = n (n - 1 pairs, a trained position), per level "
        f"sigma = {_fmt(args.noise)} against sigma^2/psi^2 = {_fmt(bayes)}: "
        + "; ".join(f"seed {i}: {_fmt(row)}" + (f" (at the edge of the fit's grid: {', '.join(e)})" if e else "")
                    for i, (row, e) in enumerate(zip(lams, edges)))
        + "; necessary, not sufficient for selection (the module docstring); lambda at every k in the runs",
        kind="lower")


def lsa_claim(args, curves: dict, seeds: list[str], label: str) -> Claim:
    """Per seed: the linear transformer misses the bar at some level."""
    mask = window(args)
    per_seed, texts = [], []
    for s in seeds:
        worst = {sigma: worst_gap(c["gap"][s], mask) for sigma, c in curves.items()}
        top = max(worst, key=lambda v: worst[v][0])
        per_seed.append(worst[top][0])
        texts.append(f"{s}: " + ", ".join(f"sigma={v:g}: {w[0]:.4f}" for v, w in worst.items()))
    return per_seed_claim(
        f"{label} misses the bar: max over levels and 2d <= k <= n of |err - err_Bayes(sigma)| > {BAR:g}", per_seed,
        BAR, None, "worst paired gap per level: " + "; ".join(texts), kind="lower")


# --- the run and the figure ------------------------------------------------------------------------------------


def _final_losses(result) -> list[float]:
    losses = np.asarray(result.losses, np.float64)
    tail = max(1, losses.shape[1] // 20)
    return losses[:, -tail:].mean(axis=1).tolist()


def run(args) -> Outcome:
    key = jax.random.key(args.seed + 30_000)
    k_curves, k_fixed, k_fp = jax.random.split(key, 3)
    mixture = mixture_task(args)
    tasks = {sigma: level_task(args, sigma) for sigma in args.noise}

    tf = train_transformer(args, mixture)
    lsa = train_lsa(args, mixture)
    tf_names = [f"transformer_seed{i}" for i in range(tf.num_seeds)]
    lsa_names = [f"lsa_seed{i}" for i in range(lsa.num_seeds)]
    models = {**{n: tf.model(i) for i, n in enumerate(tf_names)}, **{n: lsa.model(i) for i, n in enumerate(lsa_names)}}
    print(f"trained: transformer {tf.seconds:.0f}s (final loss {_fmt(_final_losses(tf))}), linear transformer "
          f"{lsa.seconds:.0f}s (final loss {_fmt(_final_losses(lsa))})", flush=True)

    curves, fps = {}, {"transformer": {}, "lsa": {}}
    mixture_bayes = icl.bayes_posterior_mean(mixture)
    for j, (sigma, task) in enumerate(tasks.items()):
        predictors = {"bayes_level": icl.bayes_posterior_mean(task), "bayes_mixture": mixture_bayes, **models}
        curves[sigma] = level_curves(args, task, predictors, jax.random.fold_in(k_curves, j))
        lam = bayes_lambda(args, sigma)
        fkey = jax.random.fold_in(k_fp, j)  # the same prompts for every model at this level
        fps["transformer"][sigma] = [fingerprint_summary(fingerprint(args, tf.model(i), task, fkey), lam)
                                     for i in range(tf.num_seeds)]
        fps["lsa"][sigma] = [fingerprint_summary(fingerprint(args, lsa.model(i), task, fkey), lam)
                             for i in range(lsa.num_seeds)]
        gaps = {n: worst_gap(curves[sigma]["gap"][n], window(args))[0] for n in predictors if n != "bayes_level"}
        print(f"sigma={sigma:g}: worst |gap| to Bayes(sigma) at 2d <= k <= n: "
              + ", ".join(f"{n} {g:.4f}" for n, g in gaps.items())
              + f"; fitted lambda (Bayes {lam:.4g}): transformer {_fmt([f['lam'] for f in fps['transformer'][sigma]])}"
              + f", linear transformer {_fmt([f['lam'] for f in fps['lsa'][sigma]])}", flush=True)
    fixed = fixed_ridge_excess(args, tasks, k_fixed)

    claims = level_claims(args, curves, tf_names, f"transformer (L={args.layers})")
    claims.append(lambda_claim(args, fps["transformer"], f"transformer (L={args.layers})"))
    claims += reference_claims(args, curves, fixed)
    claims.append(lsa_claim(args, curves, lsa_names, f"linear transformer (L={args.lsa_layers})"))

    runs = []
    for sigma, c in curves.items():
        runs.append({
            "noise": sigma, "bayes_lambda": bayes_lambda(args, sigma), "num_prompts": c["num_prompts"],
            "curves": c["err"], "gap_to_level_bayes": c["gap"], "gap_to_mixture_bayes": c["gap_mixture"],
            "worst_gap_in_window": {n: dict(zip(("value", "se", "k"), worst_gap(c["gap"][n], window(args))))
                                    for n in c["gap"]},
            "fingerprints": {"transformer": fps["transformer"][sigma], "lsa": fps["lsa"][sigma]},
        })
    extra = {
        "levels": list(args.noise), "psi": args.prior_std, "bayes_lambdas": [bayes_lambda(args, s) for s in args.noise],
        "window_ks": (np.flatnonzero(window(args)) + 1).tolist(),
        "fixed_ridge": {"lams": fixed["lams"], "worst_excess": fixed["excess"][:, :, window(args)].max(axis=(1, 2)),
                        "excess": fixed["excess"], "se": fixed["se"]},
        "training": {"transformer": {"seconds": tf.seconds, "final_loss": _final_losses(tf),
                                     "convergence": convergence_report(tf)},
                     "lsa": {"seconds": lsa.seconds, "final_loss": _final_losses(lsa)}},
    }
    return Outcome(claims, runs, {"algorithm_selection.png": lambda: plot(args, curves, fps, fixed)}, extra)


def plot(args, curves: dict, fps: dict, fixed: dict):
    import matplotlib.pyplot as plt

    levels = list(curves)
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(4.4 * (len(levels) + 1), 4.0))
    ks = np.arange(1, args.n + 1)
    worst = fixed["excess"][:, :, window(args)].max(axis=(1, 2))
    best = int(np.argmin(worst))
    for ax, sigma in zip(axes, levels):
        err = curves[sigma]["err"]
        bayes = err["bayes_level"]["mean"]
        ax.fill_between(ks, bayes - BAR, bayes + BAR, color="grey", alpha=0.15, label=f"Bayes(sigma) ± {BAR:g}")
        ax.plot(ks, bayes, color="k", lw=1.2, ls="--", label="Bayes(sigma): ridge sigma^2/psi^2")
        ax.plot(ks, err["bayes_mixture"]["mean"], color="grey", lw=1.2, label="mixture Bayes")
        ax.plot(ks, bayes + fixed["excess"][best, levels.index(sigma)], color="C3", lw=1.0, ls=":",
                label=f"best fixed ridge ({fixed['lams'][best]:.3g})")
        for name, c in err.items():
            if name.startswith("transformer"):
                ax.plot(ks, c["mean"], color="C0", lw=1.8, label=name.replace("_", " "))
            elif name.startswith("lsa"):
                ax.plot(ks, c["mean"], color="C1", lw=1.0, label=name.replace("_", " ").replace("lsa", "linear tf"))
        ax.axvline(2 * args.d, color="grey", ls=":", lw=1)
        ax.set(xlabel="k (prediction of y_k from k-1 pairs)", ylabel="squared error / noiseless E[y^2]",
               title=f"prompts of sigma = {sigma:g} alone")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    ax = axes[-1]
    bayes = np.array([bayes_lambda(args, s) for s in levels])
    for model, color in (("transformer", "C0"), ("lsa", "C1")):
        lams = np.array([[f["lam"] for f in fps[model][s]] for s in levels])  # [K, seeds]
        for i in range(lams.shape[1]):
            ax.plot(bayes, lams[:, i], marker="o", color=color,
                    label=(model.replace("lsa", "linear transformer") if i == 0 else None))
    lo, hi = bayes[bayes > 0].min() / 3, bayes.max() * 3
    ax.plot([lo, hi], [lo, hi], color="k", ls="--", lw=1, label="lambda = sigma^2/psi^2")
    ax.set(xscale="log", yscale="log", xlabel="Bayes lambda of the level, sigma^2/psi^2",
           ylabel="fitted ridge lambda (fingerprint, k = n)", title="which penalty the model uses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


SPEC = Experiment("algorithm_selection", __doc__.splitlines()[0], FLAGS, run, add_arguments=add_arguments,
                  validate=validate, quick=QUICK,
                  presets={"paper": (PAPER, "Bai et al.'s GPT-2 configuration (their code's; for an accelerator)")})


def main(argv=None) -> dict:
    from icl.experiment import run_experiment

    return run_experiment(SPEC, argv)


if __name__ == "__main__":
    script_main(SPEC)
