"""Garg et al. (2022)'s curves: a GPT-style transformer's error at every context length against every baseline.

A causal ``icl.Transformer`` (interleaved tokens, every-prefix loss, docs/theory.md §10; ``--seeds`` independent
runs) and, for reference, the one-layer linear self-attention (``icl.LinearTransformer``) are trained on three
tasks: dense noiseless Gaussian linear regression, the same with label noise sigma, and s-sparse linear
regression. Their normalised error curves (squared error of prediction k from the first m = k-1 pairs, divided by
the noiseless E[y^2]) are drawn against Bayes (the posterior mean; ridge with lambda = sigma^2 on the noisy task),
least squares (minimum norm), averaging, 3-nearest neighbours, Nadaraya-Watson, one GD step and LASSO (sparse
task), and against the exact least-squares and Bayes curves (dashed). Every claim about the transformer is judged
on each training seed: it passes only when every seed does, and ``measured`` is the worst seed. Gaps are paired
differences on the same prompts (their SE the paired SE, far below the two curves' SEs combined).

Claims (one number each; tolerances on the scale of the effect, not tuned to pass):
- dense: max over k <= d of |err_transformer / err_Bayes - 1| <= 0.1. Bayes's error there is (d - m)/d, not small,
  so the band is relative: 10% of the curve itself, well inside the gap to every baseline but least squares
  (= Bayes here; one GD step, the next, is 2.4-4x Bayes) and resolved by the evaluation (paired SE 0.15% of
  Bayes at --quick).
- dense: max over k > d of err_transformer <= 0.1 / d. Bayes's error is exactly 0 for k-1 >= d (noiseless), so
  a relative bound is meaningless there; the absolute bound carries the 10% band of the previous claim at k = d
  (where Bayes's error is 1/d) on to every k > d: it says the transformer reproduces the sharp drop at d+1.
- dense: err_transformer / err_averaging and / err_3-NN at k = 2d <= 1/3 (one claim each).
- noisy: max over 1 <= k <= n of |err_transformer / err_Bayes - 1| <= 0.1. Bayes's error never falls below
  sigma^2/d (0.05 at d = 5), so the relative form holds at every k. Least squares, the nearest baseline, is
  6.5% above Bayes at k = n = 11 (d = 5) but 16% or more at every 4 <= k <= 10 (infinite at k = 5..7), so a
  transformer that learned least squares fails; one 17% above Bayes anywhere fails too (the old absolute
  bound of 0.1 let it pass).
- sparse: min over 1 <= k-1 < d of 1 - err_transformer / err_least_squares >= 0.1. The Bayes predictor for the
  s = 1 prior (a mixture over supports; float64 Monte Carlo, not in the library) is 18% (d = 5) / 36% (d = 2)
  below least squares at k-1 = 1 and exact (error 0) for 2 <= k-1 < d, so 0.1 asks for more than half of the
  smallest available gain; a transformer that learned least squares scores about 0.
- per task, the baselines' Monte Carlo curves against their exact values, max over (baseline, k) of
  |MC - exact| / SE <= 4 (SE including the exact value's own float64 Monte Carlo SE): noiseless least squares =
  Bayes = (1 - m/d)_+ exactly (E||(I - P_m) w||^2, also on the sparse task); noisy least squares
  sigma^2 (1 + d/(m-d-1)) for m >= d+4 and (d - m) + sigma^2 (1 + m/(d-m-1)) for m <= d-4 (only there does the
  per-prompt error have a finite variance, so that an SE means something); noisy Bayes sigma^2 + E tr((X^T X /
  sigma^2 + I)^{-1}) in float64 from 200k draws of X. 4 SE: with up to 20 pairs a Gaussian max exceeds 4 with
  probability 0.1%; the sparse task's k = 1 error (w_j x_j)^2 is heavy-tailed (simulated 0.1% quantile of its z
  at 20000 prompts: -3.8).
- noiseless tasks: least squares' (and Bayes's) error at k > d <= 1e-5 (exactly 0 but for float32 rounding).
- per task: the transformer's training converged and, with two or more seeds, the seeds agree
  (:func:`icl.experiment.convergence_claim`).

--quick (d = 2, n = 4, 4 layers x width 32 x 4 heads at batch 128: 6500 steps on the dense and sparse tasks and 9750
on the noisy one (--noisy-steps), one seed, 20000 evaluation prompts), measured on the current core at seeds 0 / 1:
dense |rel gap| at k <= d 0.0038 ± 0.0015 (at k = 2) / 0.0002 ± 0.0014; dense error at k > d
0.033 ± 0.002 / 0.037 ± 0.002 (at k = 3) against 0.05; ratio to averaging 0.016 / 0.008, to 3-NN 0.012 / 0.006;
noisy |rel gap| 0.036 ± 0.004 / 0.023 ± 0.003 (both at k = 4, above Bayes); sparse margin
0.307 ± 0.014 / 0.290 ± 0.014; baselines' worst |z| 1.77 / 0.72 (dense), 0.97 / 2.19 (noisy), 3.15 / 0.99 (sparse;
seed 0's at k = 1, the heavy-tailed point); least squares at k > d 2.9e-11 / 3.6e-8 (dense), 1.9e-9 / 8.5e-11
(sparse); every task's training converged (excess drop at most -0.007). 638 s wall, 435 CPU-s (seed 0, load 6.6
falling to 3.8), 451 s, 445 CPU-s (seed 1, load 3.8 falling to 3.2) and 444 s, about 440 CPU-s (seed 0 inside its
slow test, load 1.7 rising to 3.3) on a 2-core CPU shared with other jobs. The noisy task's 3250 extra steps cost
about 55 CPU-s (380-397 CPU-s with 6500 steps on all three tasks, which this paragraph put at about 3 minutes
standalone), so about 3.5 minutes standalone (estimated; not timed on a quiet machine).

Why the noisy task trains longer: at 6500 steps it is still learning. Seed 0 measured 0.106 ± 0.0067 there (at
k = 4 = n, above Bayes; 0.0001, 0.005, 0.036 at k = 1..3), failing the 0.1 bar; seeds 1 and 2 measured 0.032 and
0.047. Seed 0's training loss over its last 5% was 1.211, seed 1's 1.161, against 1.165 for Bayes's every-prefix
loss (k = 1..n+1); its convergence claim passed only because the cosine schedule flattens the last tenth (drop
-1.5% ± 1.3%), not because the loss had reached its floor (9750 steps take it to 1.174). At 9750 steps the gap at
k = 4 falls at every seed: 0.036 / 0.023 / 0.028 (seeds 0 / 1 / 2; the tolerance is not changed). The 0.065 ± 0.0056
once written here for seed 0 is not reproduced by any commit tried: 9d9bda8, which wrote it, measures the 0.106 bit
for bit, as the current core does; 9d9bda8's script on the library before the core rewrite (8d49f32: every-prefix
loss over k = 1..n, the older Transformer layers) measures 0.0646 ± 0.0057 on the noisy task but not that
paragraph's other transformer numbers (dense 0.0064 ± 0.0021 at k = 2, 0.067 at k = 3, sparse 0.287, against its
0.0068, 0.038, 0.301), and on 31cf588's library (standard layers, loss over k = 1..n) 0.084. Its baselines' numbers
equal today's, so only the transformer's training differed: the paragraph was measured on a tree that is not in the
history.

Defaults (the scale setting: d = 5, n = 2d+1 = 11 so that k = 2d and least squares' finite-variance k = 10, 11 are
on the curve, 2 seeds, width 32, 7000 steps, 20000 evaluation prompts). Estimated run time 13-20 minutes
standalone: a short run of this model (d = 5, n = 11, width 32, batch 128, 2 seeds, 240 vs 40 steps) took
0.084-0.090 CPU-s per step; a standalone 2-core run takes 0.35-0.55 wall-s per CPU-s measured under load (the
old --quick: 158 s standalone, 450 CPU-s loaded; the old defaults: 460 s wall, 873 CPU-s), so 0.03-0.05 s per
step, 3 x 7000 steps = 11-18 min, plus about 2 minutes of compilation, LSA training and evaluation. Width 64
costs 0.18 CPU-s per step and learned less per second (below). The defaults have not been run in full; one seed
of the dense task at d = 5 (this width, shorter or longer) measured: 6000 steps: |rel gap| at k = d 0.118,
error at k = d+1 0.108 and at k = d+2 0.047; 10000 steps: 0.087, 0.094, 0.037; width 64 at 4500 steps: 0.306,
0.167, 0.094. The transformer smooths the drop at k = d+1 (Bayes's 0.2 -> 0 becomes 0.22 -> 0.09), so the
defaults are expected to FAIL "dense: max over k > d" (about 0.1 against 0.02) and to sit near the 10% bound
at k = d: a finding (a 20-CPU-minute transformer does not reproduce the sharp transition at d = 5), not a
tolerance to loosen. The defaults train the noisy task for --steps too (--noisy-steps unset): not measured.

    python experiments/error_curves.py [--quick | --paper] [--d 5 --n 11 --steps 7000 ...]

``--paper`` is Garg's configuration (d = 20, 41 points, 12 layers, width 256, 8 heads, batch 64, curriculum,
500k steps) for an accelerator; on this CPU it cannot finish, and a shortened run (``--paper --steps K``)
says how far it went in its summary.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

import icl
from icl.evaluate import predict_prefix
from icl.experiment import (
    Experiment,
    Outcome,
    convergence_claim,
    per_seed_claim,
    positive_float,
    positive_int,
    script_main,
    train_config,
    train_models,
    upper_bound_claim,
)
from icl.io import ratio_se

# --- configuration -------------------------------------------------------------------------------------------
FLAGS = dict(d=5, n=11, steps=7000, batch=128, seeds=2, lr=3e-3, seed=0, eval_prompts=20_000)
OWN = dict(layers=4, width=32, heads=4, noise_std=0.5, sparsity=1, noisy_steps=None, lsa_steps=500, curriculum=False)
QUICK = dict(d=2, n=4, steps=6500, noisy_steps=9750, seeds=1, eval_prompts=20_000, lsa_steps=300)
PAPER = dict(d=20, n=40, steps=500_000, batch=64, lr=1e-4, layers=12, width=256, heads=8, curriculum=True,
             eval_prompts=10_000)
REL_BAYES = 0.1  # |err_transformer / err_Bayes - 1| where Bayes's error is not 0
ZERO_FRACTION = 0.1  # noiseless, k-1 >= d: err_transformer <= ZERO_FRACTION x err_Bayes(k = d) = ZERO_FRACTION / d
RATIO_2D = 1 / 3  # transformer at k = 2d vs averaging and 3-NN
SPARSE_MARGIN = 0.1  # sparse, 1 <= k-1 < d: 1 - err_transformer / err_LS
MC_SE = 4.0  # baselines' Monte Carlo curves vs their exact values, in SE units
ROUNDING = 1e-5  # noiseless least squares / Bayes at k-1 >= d: exactly 0 but for float32 rounding
EXACT_DRAWS = 200_000  # float64 draws of X for the exact noisy Bayes curve


def add_arguments(p):
    p.add_argument("--layers", type=positive_int, default=OWN["layers"], help="transformer blocks")
    p.add_argument("--width", type=positive_int, default=OWN["width"], help="transformer width")
    p.add_argument("--heads", type=positive_int, default=OWN["heads"], help="attention heads")
    p.add_argument("--noise-std", type=positive_float, default=OWN["noise_std"], help="label noise of the noisy task")
    p.add_argument("--sparsity", type=positive_int, default=OWN["sparsity"], help="non-zero weights of the sparse task")
    p.add_argument("--noisy-steps", type=positive_int, default=OWN["noisy_steps"],
                   help="training steps of the noisy task's transformer (None: --steps)")
    p.add_argument("--lsa-steps", type=positive_int, default=OWN["lsa_steps"], help="training steps of the one-layer LSA")
    p.add_argument("--curriculum", action="store_true", help="Garg's curriculum (dimensions and points grow)")


def validate(args, p):
    if args.width % args.heads:
        p.error(f"--width must be divisible by --heads, got {args.width} and {args.heads}")
    if args.sparsity > args.d:
        p.error(f"--sparsity must be <= --d ({args.d}), got {args.sparsity}")
    if args.n < 2 * args.d:
        p.error(f"--n must be >= 2d = {2 * args.d} (the claim at k = 2d), got {args.n}")


def tasks(args) -> dict:
    return {
        "dense": icl.LinearRegressionTask.isotropic(args.d),
        "noisy": icl.LinearRegressionTask.isotropic(args.d, args.noise_std),
        "sparse": icl.SparseLinearTask(args.d, args.sparsity),
    }


def transformer_fn(args):
    def model_fn(rngs):
        return icl.Transformer(args.d, num_layers=args.layers, width=args.width, num_heads=args.heads,
                               max_pairs=args.n, rngs=rngs)

    return model_fn


def curriculum(args, steps: int):
    """Garg's schedule scaled to the run: dimensions from 5 and points from 11 up to (d, n) over 60% of the steps."""
    if not args.curriculum:
        return None
    dims_start, points_start = min(5, args.d), min(11, args.n)
    every = max(1, int(0.6 * steps) // max(args.d - dims_start, (args.n - points_start + 1) // 2, 1))
    return icl.Curriculum(dims_start=dims_start, dims_every=every, points_start=points_start, points_step=2,
                          points_every=every)


def baselines(name: str, task, args) -> dict:
    d, n = args.d, args.n
    out = {
        "bayes": icl.bayes_posterior_mean(task) if name != "sparse" else None,
        "least_squares": icl.least_squares(),
        "averaging": icl.averaging(),
        "3-NN": icl.knn(3),
        "nadaraya_watson": icl.nadaraya_watson(float(np.sqrt(d))),
        "gd_one_step": icl.gradient_descent(float(icl.optimal_step_size(task, n)) if name != "sparse" else 0.5),
    }
    if name == "sparse":
        out["lasso"] = icl.lasso(0.1)
    return {k: v for k, v in out.items() if v is not None}


def task_steps(args, name: str) -> int:
    """The transformer's training steps on task ``name``: ``--noisy-steps`` on the noisy task (when set), else
    ``--steps``."""
    return args.noisy_steps if name == "noisy" and args.noisy_steps is not None else args.steps


def train_task(args, name: str, task) -> tuple[dict, dict, object]:
    """Train the transformer (every-prefix loss, ``--seeds`` runs, ``task_steps`` steps) and the one-layer LSA
    on ``task``."""
    steps = task_steps(args, name)
    config = train_config(args, steps=steps, loss="every_prefix", schedule="cosine", warmup=min(200, steps // 10),
                          curriculum=curriculum(args, steps), grad_clip=1.0)
    result = train_models(args, transformer_fn(args), task, config, stage=f"transformer_{name}")
    lsa_config = train_config(args, steps=args.lsa_steps, batch=1024, lr=1e-2, loss="query", curriculum=None,
                              warmup=0, num_seeds=1)
    lsa = train_models(args, lambda r: icl.LinearTransformer(args.d, 1, rngs=r), task, lsa_config,
                       stage=f"lsa_{name}")
    models = {f"transformer_seed{i}": result.model(i) for i in range(args.seeds)}
    models["lsa_1layer"] = lsa.model(0)
    tail = max(1, steps // 20)
    record = {"transformer_train_seconds": result.seconds, "lsa_train_seconds": lsa.seconds,
              "transformer_final_loss": np.mean(result.losses[:, -tail:], axis=1).tolist(),
              "steps_done": int(result.losses.shape[1])}
    return models, record, result


# --- the curves -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _PrefixErrors:
    """Per prompt: every predictor's squared error at every prefix, and paired differences ``a - b``."""

    names: tuple
    pairs: tuple

    def __call__(self, preds, prompts):
        err = {name: (predict_prefix(name, preds[name], prompts) - prompts.y) ** 2 for name in self.names}
        return {"err": err, "diff": {f"{a}|{b}": err[a] - err[b] for a, b in self.pairs}}


def reference_of(name: str) -> str:
    """The baseline the transformer's curve is judged against: Bayes, or least squares on the sparse task."""
    return "least_squares" if name == "sparse" else "bayes"


def curves_for(args, name: str, task, models: dict, key) -> dict:
    """Every predictor's normalised curve on the same prompts (common random numbers).

    ``"transformer"`` holds the mean over the seeds (its SE the mean of the seeds' SEs, an upper bound on the SE
    of the seed mean since the seeds see the same prompts) and ``"per_seed"`` / ``"per_seed_se"``; ``"gaps"``
    holds, per seed, ``err_seed - err_reference`` with its paired SE (same prompts, so far smaller than the two
    curves' SEs combined).
    """
    predictors = {**models, **baselines(name, task, args)}
    seeds = [f"transformer_seed{i}" for i in range(args.seeds)]
    ref = reference_of(name)
    stat = _PrefixErrors(tuple(predictors), tuple((s, ref) for s in seeds))
    mc = icl.monte_carlo(stat, predictors, task, key, args.n, num_prompts=args.eval_prompts,
                         chunk_size=min(2000, args.eval_prompts))
    norm = float(task.signal_variance())
    out = {k: {"mean": np.asarray(mc.mean["err"][k]) / norm, "se": np.asarray(mc.se["err"][k]) / norm}
           for k in predictors}
    per = [out.pop(s) for s in seeds]
    out = {"transformer": {"mean": np.mean([c["mean"] for c in per], axis=0),
                           "se": np.mean([c["se"] for c in per], axis=0),
                           "per_seed": np.stack([c["mean"] for c in per]),
                           "per_seed_se": np.stack([c["se"] for c in per])}, **out}
    out["gaps"] = {"reference": ref,
                   "mean": np.stack([np.asarray(mc.mean["diff"][f"{s}|{ref}"]) / norm for s in seeds]),
                   "se": np.stack([np.asarray(mc.se["diff"][f"{s}|{ref}"]) / norm for s in seeds]),
                   "num_prompts": int(mc.num_prompts)}
    return out


def exact_curves(name: str, task, args, seed: int) -> dict:
    """Closed-form (or float64) normalised curves of least squares and Bayes: ``{name: {mean, se, valid}}``.

    m = k-1 context pairs, x ~ N(0, I), w ~ N(0, I) (dense, noisy) or s-sparse (E||w||^2 = s), noise sigma.
    - noiseless least squares (minimum norm) = Bayes (isotropic prior): the error is E||(I - P_m) w||^2 with
      P_m the projection onto the span of m Gaussian inputs, (1 - m/d)_+ after normalising (both tasks).
    - noisy least squares: sigma^2 + E||w_hat - w||^2 = (d - m) + sigma^2 (1 + m/(d - m - 1)) for m < d - 1
      (E[(X X^T)^{-1}] = I/(d - m - 1)) and sigma^2 (1 + d/(m - d - 1)) for m > d + 1; only where the
      per-prompt error has a finite variance (m = 0, m <= d - 4, m >= d + 4) does a Monte Carlo SE mean
      anything, so ``valid`` marks those k.
    - noisy Bayes: sigma^2 + E tr((X^T X / sigma^2 + I)^{-1}) (the posterior covariance does not depend on y),
      estimated in float64 from ``EXACT_DRAWS`` draws of X; ``se`` is that estimate's SE.
    """
    d, n = args.d, args.n
    m = np.arange(n, dtype=np.float64)
    zero = np.zeros(n)
    if name in ("dense", "sparse"):
        exact = np.clip(1 - m / d, 0.0, None)
        out = {"least_squares": {"mean": exact, "se": zero, "valid": np.ones(n, bool)}}
        if name == "dense":
            out["bayes"] = {"mean": exact.copy(), "se": zero, "valid": np.ones(n, bool)}
        return out
    s2 = float(task.noise_std) ** 2
    ls = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        under = (d - m) + s2 * (1 + m / (d - m - 1))
        over = s2 * (1 + d / (m - d - 1))
    ls = np.where(m < d - 1, under, np.where(m > d + 1, over, np.nan)) / d
    valid = (m == 0) | (m <= d - 4) | (m >= d + 4)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(EXACT_DRAWS, 4_000_000 // (d * d)))
    sums, sq = np.zeros(n), np.zeros(n)
    done = 0
    while done < EXACT_DRAWS:
        b = min(chunk, EXACT_DRAWS - done)
        gram = np.zeros((b, d, d))
        for i in range(n):  # prefix i holds m = i pairs
            tr = np.sum(1.0 / (np.linalg.eigvalsh(gram) / s2 + 1.0), axis=-1)
            sums[i] += tr.sum()
            sq[i] += (tr**2).sum()
            x = rng.standard_normal((b, d))
            gram += x[:, :, None] * x[:, None, :]
        done += b
    mean = sums / done
    se = np.sqrt(np.maximum(sq / done - mean**2, 0.0) / (done - 1))
    return {"least_squares": {"mean": ls, "se": zero, "valid": valid},
            "bayes": {"mean": (s2 + mean) / d, "se": se / d, "valid": np.ones(n, bool)}}


# --- the claims -----------------------------------------------------------------------------------------------


def _rounded(v) -> list:
    return np.round(np.asarray(v, np.float64), 4).tolist()


def _relative_gap_claim(name: str, curves: dict, window: np.ndarray, label: str) -> object:
    """Per seed: max over ``window`` of |err_seed / err_Bayes - 1| (paired gap over the Bayes curve)."""
    gaps, bayes = curves["gaps"], curves["bayes"]["mean"]
    ks = np.arange(1, bayes.shape[0] + 1)[window]
    rel = gaps["mean"][:, window] / bayes[window]
    rel_se = gaps["se"][:, window] / bayes[window]
    worst_k = np.argmax(np.abs(rel), axis=1)
    per_seed = np.abs(rel[np.arange(rel.shape[0]), worst_k])
    s = int(np.argmax(per_seed))
    idx = np.arange(rel.shape[0])
    signed, signed_se = rel[idx, worst_k], rel_se[idx, worst_k]
    if np.all(signed > 2 * signed_se):
        side = "every seed's worst gap is above Bayes by more than 2 SE (Bayes is optimal: an excess, not noise)"
    elif np.any(signed < -2 * signed_se):
        side = "a seed is below Bayes by more than 2 SE (impossible in expectation: look for a bug)"
    else:
        side = "the worst gaps are within 2 SE of 0"
    detail = (f"paired gaps (err_transformer - err_Bayes) / err_Bayes per seed over k={ks.tolist()}: "
              + "; ".join(f"seed {i}: {_rounded(r)}" for i, r in enumerate(rel))
              + "; worst per seed: " + ", ".join(f"seed {i} k={int(ks[w])}: {v:+.4f} ± {e:.2g}" for i, (w, v, e)
                                                  in enumerate(zip(worst_k, signed, signed_se)))
              + f"; {side}; Bayes at seed {s}'s worst k: {bayes[window][worst_k[s]]:.4f}")
    return per_seed_claim(f"{name}: max over {label} of |err_transformer / err_Bayes - 1| <= {REL_BAYES:g}",
                          per_seed, REL_BAYES, None, detail, kind="upper", se=float(rel_se[s, worst_k[s]]))


def claims_for(args, name: str, curves: dict, exact: dict) -> list:
    d, n = args.d, args.n
    ks = np.arange(1, n + 1)
    m = ks - 1
    tf = curves["transformer"]
    per_seed_tf, per_seed_se = tf["per_seed"], tf["per_seed_se"]
    claims = []
    if name == "dense":
        claims.append(_relative_gap_claim(name, curves, m < d, "k <= d"))
        window = m >= d
        worst = per_seed_tf[:, window].max(axis=1)
        where = per_seed_tf[:, window].argmax(axis=1)
        s = int(np.argmax(worst))
        tol = ZERO_FRACTION / d
        claims.append(per_seed_claim(
            f"dense: max over k > d of err_transformer <= {ZERO_FRACTION:g} x err_Bayes(k=d) = {tol:.3g}",
            worst, tol, 0.0,
            f"Bayes's error is exactly 0 for k-1 >= d (noiseless), so the bound is absolute: "
            f"{ZERO_FRACTION:g} of Bayes's last non-zero error (1/d at k=d), the k <= d claim's band carried on; "
            f"per seed over k={ks[window].tolist()}: "
            + "; ".join(f"seed {i}: {_rounded(c[window])}" for i, c in enumerate(per_seed_tf))
            + f"; worst seed {s} at k={int(ks[window][where[s]])}: {worst[s]:.4f} ± "
              f"{per_seed_se[s, window][where[s]]:.2g}",
            kind="upper", se=float(per_seed_se[s, window][where[s]])))
        k2 = 2 * d
        for other in ("averaging", "3-NN"):
            ref, ref_se = float(curves[other]["mean"][k2 - 1]), float(curves[other]["se"][k2 - 1])
            ratios = per_seed_tf[:, k2 - 1] / ref
            s = int(np.argmax(ratios))
            se = ratio_se(float(per_seed_tf[s, k2 - 1]), float(per_seed_se[s, k2 - 1]), ref, ref_se)
            claims.append(per_seed_claim(
                f"dense: err_transformer / err_{other} at k=2d={k2} <= {RATIO_2D:.3g}", ratios, RATIO_2D, None,
                f"transformer per seed {_rounded(per_seed_tf[:, k2 - 1])}, {other} {ref:.4f} ± {ref_se:.2g}",
                kind="upper", se=se))
    if name == "noisy":
        claims.append(_relative_gap_claim(name, curves, np.ones(n, bool), "1 <= k <= n"))
    if name == "sparse":
        window = (m >= 1) & (m < d)
        gaps, ls = curves["gaps"], curves["least_squares"]["mean"]
        margin = -gaps["mean"][:, window] / ls[window]  # 1 - err_seed / err_LS
        margin_se = gaps["se"][:, window] / ls[window]
        where = margin.argmin(axis=1)
        per_seed = margin[np.arange(margin.shape[0]), where]
        s = int(np.argmin(per_seed))
        claims.append(per_seed_claim(
            f"sparse: min over 1 <= k-1 < d of 1 - err_transformer / err_least_squares >= {SPARSE_MARGIN:g}",
            per_seed, SPARSE_MARGIN, None,
            f"paired margins per seed over k={ks[window].tolist()}: "
            + "; ".join(f"seed {i}: {_rounded(r)}" for i, r in enumerate(margin))
            + f"; worst seed {s} at k={int(ks[window][where[s]])}: {per_seed[s]:.4f} ± {margin_se[s, where[s]]:.2g}",
            kind="lower", se=float(margin_se[s, where[s]])))
    claims += baseline_claims(name, curves, exact, d)
    return claims


def baseline_claims(name: str, curves: dict, exact: dict, d: int) -> list:
    """The baselines' Monte Carlo curves against their exact values: in SE units where the exact error is not 0,
    and below float32 rounding where it is exactly 0 (noiseless, k-1 >= d)."""
    rows, zeros = [], []
    for base, ex in exact.items():
        mc = curves[base]
        for i in np.flatnonzero(ex["valid"]):
            if ex["mean"][i] == 0.0:
                zeros.append((base, i + 1, float(mc["mean"][i])))
            else:
                se = float(np.hypot(mc["se"][i], ex["se"][i]))
                rows.append((base, i + 1, (float(mc["mean"][i]) - float(ex["mean"][i])) / se, float(mc["mean"][i]),
                             float(ex["mean"][i]), se))
    claims = []
    z = np.array([abs(r[2]) for r in rows])
    w = rows[int(np.argmax(z))]
    claims.append(upper_bound_claim(
        f"{name}: baselines' Monte Carlo curves within {MC_SE:g} SE of their exact values (max |MC - exact| / SE)",
        float(z.max()), MC_SE, 0.0,
        f"{len(rows)} (baseline, k) pairs ({', '.join(sorted(exact))}); z per pair: "
        + ", ".join(f"{b} k={k}: {v:+.2f}" for b, k, v, *_ in rows)
        + f"; worst {w[0]} at k={w[1]}: MC {w[3]:.5f} vs exact {w[4]:.5f} (SE {w[5]:.2g}); largest SE over "
          f"pairs relative to the exact value {max(r[5] / abs(r[4]) for r in rows):.2%}", se=None))
    if zeros:
        worst = max(zeros, key=lambda r: abs(r[2]))
        claims.append(upper_bound_claim(
            f"{name}: noiseless least squares{' and Bayes' if 'bayes' in exact else ''} error at k > d "
            f"<= {ROUNDING:g} (exactly 0 but for float32 rounding)", abs(worst[2]), ROUNDING, 0.0,
            f"largest: {worst[0]} at k={worst[1]}: {worst[2]:.3g}; per (baseline, k): "
            + ", ".join(f"{b} k={k}: {v:.2g}" for b, k, v in zeros)))
    return claims


# --- the figure and the run -----------------------------------------------------------------------------------


def plot(results: dict, exact: dict, args):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    ks = np.arange(1, args.n + 1)
    for ax, (name, curves) in zip(axes[0], results.items()):
        shown = {(k + " (mean of seeds)" if k == "transformer" else k): v for k, v in curves.items() if k != "gaps"}
        icl.plot_error_curves(shown, ax, bands=2.0, d=args.d)
        for line in ax.get_lines():
            if line.get_label().startswith("transformer"):
                line.set(lw=2.2, color="k")
        for ex in exact[name].values():
            ax.plot(ks, np.where(np.isfinite(ex["mean"]), ex["mean"], np.nan), ls="--", lw=0.9, color="grey")
        ax.plot([], [], ls="--", lw=0.9, color="grey", label="exact LS / Bayes")
        ax.set_ylim(-0.05, 1.6)
        ax.set_xlabel("k (prediction from the first k-1 pairs)")
        ax.set_ylabel("squared error / E[y^2] (noiseless)")
        ax.set_title(f"{name} task, d={args.d}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run(args) -> Outcome:
    keys = jax.random.split(jax.random.key(args.seed + 10_000), 3)
    results, exacts, runs, claims = {}, {}, [], []
    last = None
    for i, (key, (name, task)) in enumerate(zip(keys, tasks(args).items())):
        models, record, result = train_task(args, name, task)
        last = result
        conv_claims, report = convergence_claim(f"transformer, {name} task", result)
        curves = curves_for(args, name, task, models, key)
        exact = exact_curves(name, task, args, args.seed + 20_000 + i)
        results[name], exacts[name] = curves, exact
        claims += claims_for(args, name, curves, exact)
        claims.extend(conv_claims)
        picks = sorted({1, max(1, args.d // 2), args.d, 2 * args.d})
        plain = {p: c for p, c in curves.items() if p != "gaps"}
        exact_record = {b: {"mean": [float(v) if ok else None for v, ok in zip(e["mean"], e["valid"])],
                            "se": e["se"]} for b, e in exact.items()}
        record.update(task=name, curves=plain, gaps=curves["gaps"], exact=exact_record, convergence=report,
                      at_k={k: {p: float(c["mean"][k - 1]) for p, c in plain.items()} for k in picks},
                      at_k_se={k: {p: float(c["se"][k - 1]) for p, c in plain.items()} for k in picks})
        runs.append(record)
        print(f"{name}: trained in {record['transformer_train_seconds']:.0f}s (+ LSA {record['lsa_train_seconds']:.0f}s);"
              + "".join(f" k={k}: tf {record['at_k'][k]['transformer']:.3f} LS {record['at_k'][k]['least_squares']:.3f};"
                        for k in picks), flush=True)
    extra = {}
    if args.steps < PAPER["steps"] and args.d == PAPER["d"] and args.layers == PAPER["layers"]:
        extra["paper_progress"] = f"{last.losses.shape[1]} of {PAPER['steps']} steps of Garg's schedule"
    return Outcome(claims, runs, {"error_curves.png": lambda: plot(results, exacts, args)}, extra)


SPEC = Experiment("error_curves", __doc__.splitlines()[0], FLAGS, run, add_arguments=add_arguments, validate=validate,
                  quick=QUICK, presets={"paper": (PAPER, "Garg et al.'s configuration (for an accelerator)")})


def main(argv=None) -> dict:
    from icl.experiment import run_experiment

    return run_experiment(SPEC, argv)


if __name__ == "__main__":
    script_main(SPEC)
