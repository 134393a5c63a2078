"""Gradient flow on the exact population loss takes one LSA layer to Zhang, Frei & Bartlett's global minimum.

Zhang, Frei & Bartlett (2023), Theorem 4.1: for x ~ N(0, Lambda), w ~ N(0, I), y = w^T x, gradient flow on the
population loss of one linear self-attention layer, started from W^PV(0) = s [[0, 0], [0, 1]] and
W^KQ(0) = s [[Theta Theta^T, 0], [0, 0]] with ||Theta Theta^T||_F = 1, converges to W^PV_22 = ||Gamma*||_F^{1/2},
W^KQ_11 = ||Gamma*||_F^{-1/2} Gamma* with Gamma* = [(1 + 1/n) Lambda + tr(Lambda)/n I]^{-1}, and predicts on
prompts of any length M with the closed-form error R_M(Gamma*) (docs/theory.md §3 with n -> M).

Here the flow is integrated exactly (icl.train_population: RK4 in float64 on the closed-form loss
R(c A^T); no prompts are sampled). Why those individual limits: Q = c^2 - ||A||_F^2 is conserved by the flow and
is 0 at their initialisation; an unbalanced start (c(0) = --unbalanced-c0) lands where the conserved Q says.
Only the test-error check samples prompts, so there are no --steps/--batch/--lr flags.

    python experiments/gradient_flow.py [--quick] [--x-cov-eigs 1 1 0.25 0.0625 1 --n 20 --test-lengths 5 20 80 ...]
"""

from __future__ import annotations

import jax
import numpy as np

import icl
from icl.experiment import (
    Experiment,
    Outcome,
    positive_float,
    positive_int,
    relative_claim,
    script_main,
    upper_bound_claim,
)
from icl.models import lsa_from_parameters
from icl.theory import gradient_flow_limit, train_population, zfb_initialization

# --- configuration -------------------------------------------------------------------------------------------
FLAGS = dict(n=20, noise=[0.0], seeds=2, seed=0, init_scale=0.01, eval_prompts=200_000)
QUICK = dict(eval_prompts=100_000)

EXPERIMENT = "gradient_flow"
LIMIT_TOL = 1e-4  # relative, the limit of the flow vs the closed form
CONSERVED_TOL = 1e-6  # absolute drift of Q = c^2 - ||A||_F^2 over the whole flow


def add_arguments(p):
    p.add_argument("--x-cov-eigs", type=positive_float, nargs="+", default=[1.0, 1.0, 0.25, 0.0625, 1.0],
                   help="eigenvalues of Lambda (their count sets d), rotated by a Haar matrix from --seed")
    p.add_argument("--w-prior", choices=["isotropic", "inverse"], default="isotropic",
                   help="Omega = I (ZFB) or Sigma^-1")
    p.add_argument("--test-lengths", type=positive_int, nargs="+", default=[5, 20, 80], help="prompt lengths M at test")
    p.add_argument("--unbalanced-c0", type=lambda t: _nonzero(t), default=1.0,
                   help="W^PV_22(0) of the extra unbalanced run (W^KQ_11(0) = init-scale * Gaussian)")
    p.add_argument("--flow-time", type=positive_float, default=None,
                   help="flow time (default: automatic, see icl.train_population)")
    p.add_argument("--dt", type=positive_float, default=None, help="RK4 step (default: automatic)")


def _nonzero(text):
    import argparse

    from icl.experiment import finite_float

    value = finite_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be a finite nonzero number")
    return value


def validate(args, parser):
    args.d = len(args.x_cov_eigs)
    if len(args.noise) != 1:
        parser.error("--noise takes one value here")
    if args.dt is not None and args.flow_time is not None and args.dt > args.flow_time:
        parser.error("--dt must be <= --flow-time")


def parse_args(argv):
    """The parsed and validated flags (exit code 2 on a bad one)."""
    return SPEC.parse(argv)


def zfb_closed_form(task, n: int) -> tuple[float, np.ndarray, np.ndarray]:
    """ZFB Thm 4.1 written out with numpy, independent of icl.theory (Omega = I, sigma = 0).

    Returns ``(W^PV_22*, W^KQ_11*, Gamma*)``.
    """
    lam = np.asarray(task.x_cov, np.float64)
    d = lam.shape[0]
    gamma = np.linalg.inv((1 + 1 / n) * lam + np.trace(lam) / n * np.eye(d))
    root = np.sqrt(np.linalg.norm(gamma))
    return float(root), gamma / root, gamma


def rel_frobenius(estimate, reference) -> np.ndarray:
    """``||estimate - reference||_F / ||reference||_F`` over the last two axes, float64 numpy."""
    estimate, reference = np.asarray(estimate, np.float64), np.asarray(reference, np.float64)
    return np.linalg.norm(estimate - reference, axis=(-2, -1)) / np.linalg.norm(reference, axis=(-2, -1))


def q_value(c, a_mat) -> np.ndarray:
    """``Q = c^2 - ||A||_F^2`` in float64 numpy."""
    return np.asarray(c, np.float64) ** 2 - np.sum(np.asarray(a_mat, np.float64) ** 2, axis=(-2, -1))


def limit_errors(flow, c_star: float, a_star: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative errors of the final ``c`` and ``A`` (per run) against a limit."""
    c_err = np.abs(np.atleast_1d(flow.c) - c_star) / abs(c_star)
    a = np.asarray(flow.a_mat).reshape(-1, *a_star.shape)
    a_err = np.linalg.norm(a - a_star, axis=(-2, -1)) / np.linalg.norm(a_star)
    return c_err, a_err


def path_errors(flow, c_star: float, a_star: np.ndarray) -> np.ndarray:
    """``max(|c(t) - c*|/|c*|, ||A(t) - A*||/||A*||)`` along the recorded path, ``[runs, records]``."""
    c = np.asarray(flow.c_path).reshape(-1, flow.times.size)
    a = np.asarray(flow.a_path).reshape(c.shape + a_star.shape)
    a_err = np.linalg.norm(a - a_star, axis=(-2, -1)) / np.linalg.norm(a_star)
    return np.maximum(np.abs(c - c_star) / abs(c_star), a_err)


def test_errors(args, task, c: float, a_mat: np.ndarray, gamma_star: np.ndarray, key) -> tuple[list, list]:
    """Monte Carlo test error of the trained layer at each prompt length M vs the closed form R_M(Gamma*)."""
    model = lsa_from_parameters(c, a_mat)
    rows, claims = [], []
    for m, k in zip(args.test_lengths, jax.random.split(key, len(args.test_lengths))):
        comparison = icl.compare_predictors({"lsa": model}, task, k, m, num_prompts=args.eval_prompts)
        loss, se = comparison.losses["lsa"]
        with jax.enable_x64(True):
            theory = float(icl.risk(gamma_star, task, m))
            best = float(icl.optimal_risk(task, m))
        rows.append({"M": m, "loss": loss, "loss_se": se, "risk_theory": theory, "best_risk_at_M": best,
                     "z": (loss - theory) / se, "eval_prompts": comparison.num_prompts})
        claims.append(relative_claim(
            f"test error at M={m} = ZFB closed form (4 SE)", theory, loss, 4 * se / theory,
            f"ZFB Thm 4.1: error of the trained layer on prompts of length M (n={args.n} in training) = "
            f"R_M(Gamma*); MSE on {comparison.num_prompts} fresh prompts, SE {se:.2g}"))
    return rows, claims


def plot(balanced, unbalanced, euler, limits: dict, tests: list, task, n: int):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    r_star = limits["risk_star"]
    ax = axes[0]
    for i, losses in enumerate(np.atleast_2d(balanced.losses)):
        ax.plot(balanced.times, np.maximum(losses - r_star, 1e-18), color="C0",
                label="balanced (ZFB init)" if i == 0 else None)
    ax.plot(unbalanced.times, np.maximum(np.ravel(unbalanced.losses) - r_star, 1e-18), color="C1",
            label="unbalanced init")
    ax.plot(euler.times, np.maximum(np.ravel(euler.losses) - r_star, 1e-18), "k:", label="Euler (= GD), balanced")
    ax.set_yscale("log")
    ax.set_xlabel("flow time t (MSE loss)")
    ax.set_ylabel(r"$L(c, A) - R^*$")
    ax.set_title("population loss along the flow", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    for i, err in enumerate(path_errors(balanced, limits["c_zfb"], limits["a_zfb"])):
        ax.plot(balanced.times, err, color="C0", label="balanced vs ZFB limit" if i == 0 else None)
    ax.plot(unbalanced.times, path_errors(unbalanced, limits["c_unbalanced"], limits["a_unbalanced"])[0], color="C1",
            label="unbalanced vs Q-limit")
    ax.plot(euler.times, path_errors(euler, limits["c_zfb"], limits["a_zfb"])[0], "k:", label="Euler vs ZFB limit")
    ax.axhline(LIMIT_TOL, color="gray", ls="--", lw=0.8, label="claim tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("flow time t")
    ax.set_ylabel("relative error of (c, A)")
    ax.set_title("distance to the closed-form limit", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    for flow, color, label in ((balanced, "C0", "balanced"), (unbalanced, "C1", "unbalanced"), (euler, "k", "Euler")):
        q = np.atleast_2d(flow.conserved)
        for i, row in enumerate(q):
            ax.plot(flow.times, np.maximum(np.abs(row - row[0]), 1e-18), color=color,
                    ls=":" if label == "Euler" else "-", label=label if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("flow time t")
    ax.set_ylabel(r"$|Q(t) - Q(t_0)|$, $Q = c^2 - \|A\|_F^2$")
    ax.set_title("the conserved quantity (RK4 vs Euler)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[3]
    grid = np.unique(np.geomspace(1, max(max(t["M"] for t in tests) * 2, 2 * n), 60).astype(int))
    with jax.enable_x64(True):
        closed = [float(icl.risk(limits["gamma_zfb"], task, int(m))) for m in grid]
        best = [float(icl.optimal_risk(task, int(m))) for m in grid]
    ax.plot(grid, closed, "k-", label=r"closed form $R_M(\Gamma^*_n)$")
    ax.plot(grid, best, "C2--", label=r"best in class at M: $R_M(\Gamma^*_M)$")
    ax.errorbar([t["M"] for t in tests], [t["loss"] for t in tests], yerr=[2 * t["loss_se"] for t in tests], fmt="o",
                color="C3", capsize=3, label="trained layer, Monte Carlo (±2 SE)")
    ax.axvline(n, color="gray", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("test prompt length M")
    ax.set_ylabel("test MSE")
    ax.set_title(f"test error vs prompt length (trained at n={n})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run(args) -> Outcome:
    n, d = args.n, args.d
    task = icl.LinearRegressionTask.from_eigenvalues(args.x_cov_eigs, noise_std=args.noise[0], w_prior=args.w_prior,
                                                     rotation_seed=args.seed)
    zfb_setting = args.w_prior == "isotropic" and args.noise[0] == 0.0
    c_zfb, a_zfb = gradient_flow_limit(task, n, 0.0)
    gamma_zfb = c_zfb * a_zfb.T
    with jax.enable_x64(True):
        risk_star = float(icl.optimal_risk(task, n))

    # Run 1: ZFB's balanced initialisation, one random Theta per seed, integrated side by side.
    inits = [zfb_initialization(d, args.init_scale, seed=args.seed + i) for i in range(args.seeds)]
    c0 = np.array([c for c, _ in inits])
    a0 = np.stack([a for _, a in inits])
    balanced = train_population(task, n, c0, a0, flow_time=args.flow_time, dt=args.dt)
    # Run 2: an unbalanced start; the conserved Q = c^2 - ||A||^2 != 0 predicts a different (c*, A*).
    a0_unbalanced = args.init_scale * np.random.default_rng(args.seed + 1000).standard_normal((d, d))
    q_unbalanced = float(q_value(args.unbalanced_c0, a0_unbalanced))
    unbalanced = train_population(task, n, args.unbalanced_c0, a0_unbalanced, flow_time=args.flow_time, dt=args.dt)
    c_unb, a_unb = gradient_flow_limit(task, n, q_unbalanced, np.sign(args.unbalanced_c0) or 1.0)
    # Observation: forward Euler (= gradient descent with learning rate dt) from the first balanced start.
    euler = train_population(task, n, c0[0], a0[0], flow_time=args.flow_time, dt=balanced.dt, method="euler")

    claims = []
    c_err, a_err = limit_errors(balanced, c_zfb, a_zfb)
    worst = int(np.argmax(np.maximum(c_err, a_err)))
    q_drift = np.abs(balanced.conserved - q_value(c0, a0)[:, None]).max()
    gamma_err = float(np.max(rel_frobenius(balanced.gamma, gamma_zfb)))
    detail_c = "ZFB Thm 4.1: W^PV_22* = ||Gamma*||_F^{1/2}" if zfb_setting else "Q = 0 limit: c* = ||Gamma*||_F^{1/2}"
    claims.append(relative_claim("balanced init: W^PV_22 limit", c_zfb, float(np.atleast_1d(balanced.c)[worst]),
                                 LIMIT_TOL, f"{detail_c}; worst of {args.seeds} random Theta"))
    claims.append(upper_bound_claim("balanced init: W^KQ_11 limit, relative Frobenius error", float(a_err.max()),
                                    LIMIT_TOL, 0.0, "ZFB Thm 4.1: W^KQ_11* = ||Gamma*||_F^{-1/2} Gamma*; worst seed"))
    if zfb_setting:
        _, _, gamma_formula = zfb_closed_form(task, n)
        formula_err = float(np.max(rel_frobenius(balanced.gamma, gamma_formula)))
        claims.append(upper_bound_claim(
            "balanced init: c A^T vs [(1 + 1/n) Lambda + tr(Lambda)/n I]^-1", formula_err, LIMIT_TOL, 0.0,
            "ZFB Thm 4.1 / Ahn et al. Thm 1 formula, written out with numpy; relative Frobenius, worst seed"))
    claims.append(relative_claim("balanced init: final population loss = R*", risk_star,
                                 float(np.max(np.atleast_2d(balanced.losses)[:, -1])), 1e-8,
                                 "R* = tr(Sigma Omega) + sigma^2 - tr(Gamma* Sigma Omega Sigma) (docs/theory.md §3)"))
    claims.append(upper_bound_claim("balanced init: conserved Q = c^2 - ||A||_F^2 drift", float(q_drift),
                                    CONSERVED_TOL, 0.0, "exact invariant of the flow (icl.population); RK4 error"))
    c_err_u, a_err_u = limit_errors(unbalanced, c_unb, a_unb)
    claims.append(relative_claim(f"unbalanced init (Q={q_unbalanced:.3g}): W^PV_22 limit", c_unb,
                                 float(np.ravel(unbalanced.c)[0]), LIMIT_TOL,
                                 "c*^2 = (Q + sqrt(Q^2 + 4 ||Gamma*||_F^2))/2 from the conserved Q"))
    claims.append(upper_bound_claim(f"unbalanced init (Q={q_unbalanced:.3g}): W^KQ_11 limit, relative error",
                                    float(a_err_u.max()), LIMIT_TOL, 0.0, "A* = Gamma*^T / c*"))
    tests, test_claims = test_errors(args, task, float(np.atleast_1d(balanced.c)[0]),
                                     np.asarray(balanced.a_mat).reshape(-1, d, d)[0], gamma_zfb,
                                     jax.random.key(args.seed + 10_000))
    claims.extend(test_claims)
    c_err_e, a_err_e = limit_errors(euler, c_zfb, a_zfb)

    runs = [
        {"run": "balanced", "init": "ZFB Assumption 3.3", "init_scale": args.init_scale, "c0": c0, "a0": a0,
         "conserved_initial": q_value(c0, a0), "c_final": balanced.c, "a_final": balanced.a_mat,
         "gamma_final": balanced.gamma, "c_theory": c_zfb, "a_theory": a_zfb, "gamma_theory": gamma_zfb,
         "c_rel_error": c_err, "a_rel_error": a_err, "gamma_rel_error": gamma_err, "conserved_drift": float(q_drift),
         "final_loss": np.atleast_2d(balanced.losses)[:, -1], "risk_theory": risk_star, "x_cov": np.asarray(task.x_cov),
         "dt": balanced.dt, "integration_steps": balanced.steps, "flow_time": float(balanced.times[-1]),
         "method": balanced.method, "test_errors": tests},
        {"run": "unbalanced", "c0": args.unbalanced_c0, "a0": a0_unbalanced, "conserved_initial": q_unbalanced,
         "c_final": unbalanced.c, "a_final": unbalanced.a_mat, "c_theory": c_unb, "a_theory": a_unb,
         "c_rel_error": c_err_u, "a_rel_error": a_err_u,
         "conserved_drift": float(np.abs(np.ravel(unbalanced.conserved) - q_unbalanced).max()),
         "final_loss": float(np.ravel(unbalanced.losses)[-1]), "dt": unbalanced.dt,
         "integration_steps": unbalanced.steps, "method": unbalanced.method},
        {"run": "euler_observation", "note": "forward Euler = GD with learning rate dt from the first balanced start; "
                                             "no claim: its Q drifts by O(dt), which moves the individual limits",
         "c_rel_error": c_err_e, "a_rel_error": a_err_e,
         "conserved_drift": float(np.abs(np.ravel(euler.conserved) - float(q_value(c0[0], a0[0]))).max()),
         "product_rel_error": float(np.max(rel_frobenius(euler.gamma, gamma_zfb))), "dt": euler.dt,
         "integration_steps": euler.steps},
    ]
    print(f"balanced: c {np.round(np.atleast_1d(balanced.c), 8).tolist()} vs ZFB {c_zfb:.8f} (max rel err "
          f"{c_err.max():.2e}, A {a_err.max():.2e}, Q drift {q_drift:.1e}); unbalanced Q={q_unbalanced:.3f}: rel err c "
          f"{c_err_u.max():.2e}, A {a_err_u.max():.2e}; Euler: c {c_err_e.max():.2e}, A {a_err_e.max():.2e}")
    for t in tests:
        print(f"M={t['M']}: test MSE {t['loss']:.5f} ± {t['loss_se']:.5f} vs closed form {t['risk_theory']:.5f} "
              f"(z = {t['z']:+.2f}; best in class at M {t['best_risk_at_M']:.5f})")
    limits = {"c_zfb": c_zfb, "a_zfb": a_zfb, "gamma_zfb": gamma_zfb, "c_unbalanced": c_unb, "a_unbalanced": a_unb,
              "risk_star": risk_star}
    figure = lambda: plot(balanced, unbalanced, euler, limits, tests, task, n)  # noqa: E731
    return Outcome(claims, runs, {f"{EXPERIMENT}.png": figure})



SPEC = Experiment(EXPERIMENT, __doc__.splitlines()[0], FLAGS, run, add_arguments=add_arguments, validate=validate,
                  quick=QUICK, trains=False)


def main(argv=None) -> dict:
    from icl.experiment import run_experiment

    return run_experiment(SPEC, argv)


if __name__ == "__main__":
    script_main(SPEC)
