"""Learning curves of the reduced linear-attention model in tau, kappa and alpha against Lu et al.'s asymptotic theory.

Lu, Letey, Zavatone-Veth, Maiti & Pehlevan (PNAS 2025), "Asymptotic theory of in-context learning by linear
attention" (docs/theory.md §15; :mod:`icl.theory.asymptotic`): one linear-attention layer reduces to a ridgeless
regression of the query target on the ``d (d + 1)`` features ``x_q (x) [h; s]``, fitted on ``n = tau d^2``
pretraining prompts of context length ``l = alpha d`` whose tasks come from a pool of ``k = kappa d`` tasks
(``kappa = inf``: a fresh task for each prompt), noise variance ``rho``. As ``d -> inf`` its ICL test error tends to
the closed form :func:`icl.theory.asymptotic.asymptotic_icl_error`, which diverges at the interpolation threshold
``tau = 1`` (double descent), falls with the task diversity kappa and with alpha. This script simulates the
finite-``d`` model (each point: ``draws`` independent pretraining sets in float64, each fitted exactly and scored
by the exact test error :func:`icl.theory.asymptotic.reduced_test_error`, so the only noise is the pretraining draw;
mean and standard error over draws) beside the closed form, along

- tau curves (kappa = inf and each ``--tau-kappas``; alpha = ``--alpha``): the double descent;
- a kappa curve at tau = ``--tau`` (``--kappas`` and kappa = inf): task diversity;
- an alpha curve at tau = ``--tau``, kappa = inf (``--alphas``);

and a finite-``d`` table of simulation / theory at four reference points, all at alpha = ``--alpha``, rho =
``--rho``: A = (tau = ``--tau``, kappa = inf) and B = (tau = ``--tau``, kappa = 0.5) (the paper's two values at the
defaults), C = (tau = 2, kappa = inf) and D = (tau = 2, kappa = 0.5) (the compared points nearest the threshold,
|tau - 1| = 1), at every ``--table-d``. The curves run at ``--curve-d``, one of the table's ``d``. With
``r = simulation / theory``, the claims:

1. finite d: ``r -> 1``: for every reference point the least-squares slope ``a`` of ``-log|r - 1|`` against
   ``log d`` over the table is >= 0.5 (``EXPONENT_MIN``; O(1/d) corrections give 1, and 1.08-1.33 is measured);
   the table is ``summary.json["finite_d_table"]`` (exponents under ``"exponents"``);
2. at every point of the tau curves and of the alpha curve with ``|tau - 1| >= 1``, ``|r - 1| <= tol``, where
   ``tol = 1.25 x`` the largest ``|r - 1|`` of the reference points at ``--curve-d`` (``MARGIN``: it covers the
   draws' noise, an SE of r of 0.005-0.02, and small differences between points; the reference points
   themselves pass by construction, so the claim shows the worst of the other points);
3. the simulated peak of every tau curve (the grid point of largest mean error) lies at tau in [0.8, 1.3] (two
   claims: the lowest and the highest peak);
4. the kappa curve follows the formula from its smallest kappa to kappa = inf: ``|r - 1| <= tol`` at every point
   (the worst point besides the reference points B and A);
5. the formula itself: alpha = 1, rho = 0.01, tau = 4 gives 0.6833 at kappa = inf and 0.9476 at kappa = 0.5
   (relative tolerance 1e-4);
6. the nested fits (below) equal :func:`icl.theory.asymptotic.simulate_icl_error` on the same draws (relative
   1e-9), at the smallest table ``d`` with ``n >= 256``, tau = ``--tau``, kappa = inf.

Why the tolerance comes from a table. At these sizes the finite-``d`` excess is large and depends on the point: it
grows towards the threshold and towards small pools (d = 20: 7% at A, 28% at D). It falls like 1/d at each
reference point (claim 1), so a fixed tolerance would either fail at d = 20 or say nothing at d = 40; claims 2 and 4
instead check that no other curve point sits further from the theory than the worst reference point measured at
the same ``d`` (with the 25% margin), and claim 1 that those references converge.

Method. A tau curve fits every draw once per grid point on nested pretraining sets: the first ``n`` prompts of one
stream (:func:`icl.theory.asymptotic.pretraining_features` at the largest tau, float64), with the normal equations
accumulated in numpy as ``n`` grows (``n >= p = d(d + 1)``) or the minimum-norm dual solution (``n < p``), so a whole
curve costs one compilation and about one fit at its largest tau; above 512 MiB of features (d = 80) each point is
fitted on its own by ``simulate_icl_error``. The other points call ``simulate_icl_error`` (``--vmap-size`` draws at
once under ``jax.vmap``; 1 by default: on the 2-core CPU vmapping 4 draws at d = 40 was no faster, the Gram products
already use both cores). Each point compiles its own program: ``n``, ``k`` and ``l`` are static shapes in
:mod:`icl.theory.asymptotic`, so curve points cannot share one. Every point's draws come from a key of
``(--seed, d, alpha, kappa, rho)`` only, so the nested set of size ``n`` is the very pretraining set
``simulate_icl_error`` draws for that ``n`` (claim 6) and the table reuses the curves' draws at ``--curve-d``.
There are ``--draws`` draws at ``--curve-d`` and ``draws x (curve-d / d)^2`` at another ``d`` (at least 2, at most
256): the draw-to-draw spread falls like 1/d, so every ``d`` gets a similar standard error. Everything runs in
float64 (``jax.enable_x64`` around each fit; the provenance's ``precision`` is the process default, so the summary
records ``"simulation_precision": "float64"``).

Cost. A fit costs ``n p^2 ~ tau d^6`` flops for its Gram matrix, the dominant term: at tau = 4 that is 34 GFLOP at
d = 40 (1-3 s a draw on the loaded 2-core CPU; a point of 8 draws 12-29 s, compilation included) and 2.2 TFLOP at
d = 80 (99 and 132 s for one draw each, loaded), so d = 80 is only in ``--paper`` (for an accelerator).

Measured. Finite-d table at the defaults (128, 32 and 8 draws at d = 10, 20, 40; r ± SE):

    point                     d = 10          d = 20          d = 40          a (claim 1)
    A  tau = 4, kappa = inf   1.177 ± 0.007   1.070 ± 0.005   1.040 ± 0.003   1.08
    B  tau = 4, kappa = 0.5   1.408 ± 0.017   1.152 ± 0.008   1.075 ± 0.007   1.22
    C  tau = 2, kappa = inf   1.512 ± 0.019   1.195 ± 0.012   1.114 ± 0.005   1.08
    D  tau = 2, kappa = 0.5   1.758 ± 0.030   1.278 ± 0.017   1.120 ± 0.010   1.33

(A at d = 80, two single draws: 1.016 and 1.007.) The simulation lies above the theory at every compared point;
below the threshold it does too away from it (d = 40: r = 1.02-1.08 for tau <= 0.8), while near it the finite-d
threshold ``n = p``, i.e. tau = 1 + 1/d, moves the peak (r = 0.80 at tau = 0.95, 2.4 at tau = 1.05; not compared).

Defaults (``--curve-d 40``): every claim passes: 1. a = 1.076 (A) >= 0.5; 2. worst of 10 points tau = 3,
kappa = 0.5: r = 1.092 ± 0.010 against tol = 0.150 (1.25 x 0.120, point D); 3. both peaks at tau = 1.05 (n = 1680,
p = 1640); 4. worst of 5 points kappa = 0.25: r = 1.109 ± 0.010 (simulation 1.147 -> 0.711 from kappa = 0.25 to
inf, theory 1.034 -> 0.683); 5. 0.683317 and 0.947648; 6. 1e-15. 7.0 min wall with a cold compilation cache (4.4
CPU-min, load averages 5-7 on the 2 cores from other jobs), 6.2 min with a warm one (3.5 CPU-min, load 6-8); most of
it is the Gram products at d = 40: the two nested tau curves (2.4 min) and the 9 other points of the kappa and alpha
curves (3.4 min).

``--quick`` (``--curve-d 20 --draws 8``, fewer curve points; the table d = 10, 20, 40 with 32, 8 and 2 draws):
every claim passes: 1. a = 1.084 (B); 2. worst of 7 points tau = 3, kappa = 0.5: r = 1.166 ± 0.013 against
tol = 0.359 (1.25 x 0.287, D); 3. both peaks at tau = 1.05 (n = p = 420); 4. worst of 4 points kappa = 0.3:
r = 1.184 ± 0.019; 5. as above; 6. 8e-16. 109 s wall with a cold compilation cache (70 CPU-s, load averages
2-5); with a warm one 41 s (29 CPU-s, load 5) and 114 s (48 CPU-s, load 7.7): the other jobs on the 2 cores set the
wall time. The slow test (``--quick`` in-process) took 149 s at load 5-8.

Settings. Defaults: d = 40 for the curves, table at d = 10, 20, 40, 8 draws at d = 40, alpha = 1, tau = 4,
rho = 0.01 (the paper's setting), tau curves at kappa = inf and 0.5. ``--paper``: the table to d = 80 and the
curves at d = 80 (for an accelerator: at ~2 min a draw, hours on this CPU; not run here).

    python experiments/asymptotics.py [--quick | --paper] [--curve-d 40 --table-d 10 20 40 --draws 8 ...]
"""

from __future__ import annotations

import math
import time
import zlib

import jax
import numpy as np

from icl.experiment import (
    Experiment,
    Outcome,
    at_least,
    lower_bound_claim,
    nonneg_float,
    positive_float,
    positive_int,
    relative_claim,
    script_main,
    upper_bound_claim,
)
from icl.theory.asymptotic import (
    asymptotic_icl_error,
    pretraining_features,
    pretraining_sizes,
    reduced_test_error,
    simulate_icl_error,
)

# --- configuration -------------------------------------------------------------------------------------------
EXPERIMENT = "asymptotics"
FLAGS = dict(seed=0)
DEFAULTS = dict(
    curve_d=40, table_d=[10, 20, 40], draws=8, vmap_size=1, alpha=1.0, tau=4.0, rho=0.01,
    taus=[0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0],
    tau_kappas=[0.5], kappas=[0.25, 0.5, 1.0, 2.0, 4.0, 8.0], alphas=[0.25, 0.5, 1.0, 2.0, 4.0])
QUICK = dict(curve_d=20, draws=8, taus=[0.2, 0.5, 0.8, 0.9, 1.0, 1.05, 1.1, 1.2, 1.5, 2.0, 3.0, 4.0, 8.0],
             kappas=[0.3, 0.5, 1.0, 2.0, 4.0], alphas=[0.5, 1.0, 2.0, 4.0])
PAPER = dict(table_d=[10, 20, 40, 80], curve_d=80)
PAPER_HELP = "the finite-d table to d = 80 and the curves at d = 80 (for an accelerator)"

REF_KAPPA = 0.5  # reference point B
FAR = 1.0  # curve points with |tau - 1| >= FAR are compared; reference point C is tau = 1 + FAR
MARGIN = 1.25  # claims 2 and 4: tol = MARGIN x the largest |r - 1| of the reference points at --curve-d
EXPONENT_MIN = 0.5  # claim 1: the excess |r - 1| falls at least like d^-0.5 (O(1/d) gives 1)
PEAK_WINDOW = (0.8, 1.3)  # claim 3
FORMULA = ((math.inf, 0.6833), (0.5, 0.9476))  # claim 5: alpha = 1, rho = 0.01, tau = 4, (kappa, published value)
FORMULA_TOL = 1e-4  # relative
NESTED_TOL = 1e-9  # claim 6, relative
CHUNK = 256  # prompts per chunk of every fit (the nested and the single fits must use the same one)
NESTED_BYTES = 512 * 2**20  # largest feature matrix a nested tau curve materialises
MAX_DRAWS = 256
TAU_PLOT_TOP = 100.0  # the tau panel's top; larger simulated means (at n ~ p) are drawn as triangles there


def kappa_text(kappa: float):
    """kappa for JSON: ``"inf"`` (JSON has no infinity) or the number."""
    return "inf" if math.isinf(kappa) else float(kappa)


def add_arguments(p) -> None:
    p.add_argument("--curve-d", type=positive_int, default=DEFAULTS["curve_d"],
                   help="dimension d of the curves (one of --table-d: the claims' tolerance is read there)")
    p.add_argument("--table-d", type=positive_int, nargs="+", default=DEFAULTS["table_d"],
                   help="dimensions of the finite-d table at the reference points (at least two)")
    p.add_argument("--draws", type=lambda t: at_least(t, 2), default=DEFAULTS["draws"],
                   help="pretraining draws per point at --curve-d (draws x (curve-d / d)^2 at another d)")
    p.add_argument("--vmap-size", type=positive_int, default=DEFAULTS["vmap_size"],
                   help="draws fitted at once under jax.vmap (memory ~8 p^2 bytes a draw, p = d(d+1))")
    p.add_argument("--alpha", type=positive_float, default=DEFAULTS["alpha"],
                   help="context length over d for the tau and kappa curves and the reference points")
    p.add_argument("--tau", type=positive_float, default=DEFAULTS["tau"],
                   help="pretraining prompts over d^2 for the kappa and alpha curves and reference points A, B")
    p.add_argument("--rho", type=nonneg_float, default=DEFAULTS["rho"], help="noise variance")
    p.add_argument("--taus", type=positive_float, nargs="+", default=DEFAULTS["taus"],
                   help="the tau curves' grid (2 and --tau are always added)")
    p.add_argument("--tau-kappas", type=positive_float, nargs="*", default=DEFAULTS["tau_kappas"],
                   help="finite kappas of extra tau curves (the kappa = inf curve is always run)")
    p.add_argument("--kappas", type=positive_float, nargs="+", default=DEFAULTS["kappas"],
                   help="finite kappas of the kappa curve (kappa = inf is always added)")
    p.add_argument("--alphas", type=positive_float, nargs="+", default=DEFAULTS["alphas"],
                   help="the alpha curve's grid (kappa = inf, tau = --tau)")


def validate(args, p) -> None:
    args.table_d = sorted(set(args.table_d))
    if len(args.table_d) < 2:
        p.error("--table-d needs at least two distinct dimensions (claim 1 compares consecutive ones)")
    if args.curve_d not in args.table_d:
        p.error(f"--curve-d {args.curve_d} must be one of --table-d {args.table_d} (the tolerance is read there)")
    if abs(args.tau - 1.0) < FAR:
        p.error(f"--tau must satisfy |tau - 1| >= {FAR:g} (the kappa and alpha curves are compared there), "
                f"got {args.tau:g}")
    args.taus = sorted(set(args.taus) | {1.0 + FAR, args.tau})
    args.tau_kappas = sorted(set(args.tau_kappas))
    args.kappas = sorted(set(args.kappas))
    args.alphas = sorted(set(args.alphas))
    checks = [(d, args.alpha, k, t) for d in args.table_d for k in (math.inf, REF_KAPPA) for t in (args.tau, 1 + FAR)]
    checks += [(args.curve_d, args.alpha, k, t) for k in (math.inf, *args.tau_kappas) for t in args.taus]
    checks += [(args.curve_d, args.alpha, k, args.tau) for k in args.kappas]
    checks += [(args.curve_d, a, math.inf, args.tau) for a in args.alphas]
    for d, alpha, kappa, tau in checks:
        try:
            pretraining_sizes(d, alpha, kappa, tau)
        except ValueError as err:
            p.error(f"at d = {d}, alpha = {alpha:g}, kappa = {kappa:g}, tau = {tau:g}: {err}")


def draws_at(args, d: int) -> int:
    """Pretraining draws at dimension ``d``: ``--draws`` at ``--curve-d``, scaled by ``(curve-d / d)^2``."""
    return int(min(MAX_DRAWS, max(2, round(args.draws * (args.curve_d / d) ** 2))))


def theory(alpha: float, kappa: float, tau: float, rho: float) -> float | None:
    """The closed form (None at tau = 1, where it diverges)."""
    return None if tau == 1.0 else asymptotic_icl_error(alpha, kappa, tau, rho)


class Simulator:
    """Simulated errors per (d, alpha, kappa, tau), memoised; every draw's key depends on (seed, d, alpha, kappa)."""

    def __init__(self, args):
        self.args = args
        self.errors: dict[tuple, np.ndarray] = {}
        self.method: dict[tuple, str] = {}
        self.seconds: dict[tuple, float] = {}

    def key(self, d: int, alpha: float, kappa: float):
        tag = zlib.crc32(f"{d}/{alpha!r}/{kappa!r}/{self.args.rho!r}".encode())
        return jax.random.fold_in(jax.random.PRNGKey(self.args.seed), tag)

    def single(self, d: int, alpha: float, kappa: float, tau: float) -> np.ndarray:
        """``simulate_icl_error``'s per-draw errors (float64), not memoised."""
        with jax.enable_x64(True):
            _, _, errors = simulate_icl_error(self.key(d, alpha, kappa), d, alpha, kappa, tau, self.args.rho,
                                              num_draws=draws_at(self.args, d), vmap_size=self.args.vmap_size,
                                              chunk=CHUNK)
        return np.asarray(errors, np.float64)

    def nested(self, d: int, alpha: float, kappa: float, taus) -> np.ndarray:
        """Per-draw errors ``[draws, len(taus)]`` on nested pretraining sets (the first n prompts of one stream)."""
        args, p = self.args, d * (d + 1)
        sizes = [pretraining_sizes(d, alpha, kappa, t)[2] for t in taus]
        order = np.argsort(sizes, kind="stable")
        top = float(taus[order[-1]])
        keys = jax.random.split(self.key(d, alpha, kappa), draws_at(args, d))
        out = np.empty((len(keys), len(taus)))
        for i, key in enumerate(keys):
            with jax.enable_x64(True):
                feats, target = pretraining_features(key, d, alpha, kappa, top, args.rho, chunk=CHUNK)
            h, y = np.asarray(feats, np.float64), np.asarray(target, np.float64)
            gram, rhs, done = np.zeros((p, p)), np.zeros(p), 0
            below = max((n for n in sizes if n < p), default=0)
            kernel = h[:below] @ h[:below].T  # H H^T of the largest set below the threshold; smaller ones are corners
            for j in order:
                n = sizes[j]
                if n < p:  # minimum-norm interpolator H^T (H H^T)^-1 y
                    gamma = h[:n].T @ np.linalg.solve(kernel[:n, :n], y[:n])
                else:  # the normal equations of the first n prompts
                    gram += h[done:n].T @ h[done:n]
                    rhs += h[done:n].T @ y[done:n]
                    done = n
                    gamma = np.linalg.solve(gram, rhs)
                out[i, j] = reduced_test_error(gamma.reshape(d, d + 1), d, alpha, args.rho)
        return out

    def measure(self, d: int, alpha: float, kappa: float, taus) -> dict[float, np.ndarray]:
        """``{tau: per-draw errors}``; a curve of several new taus is fitted nested when its features fit in memory."""
        taus = [float(t) for t in taus]
        todo = [t for t in taus if (d, alpha, kappa, t) not in self.errors]
        start = time.perf_counter()
        n_max = max((pretraining_sizes(d, alpha, kappa, t)[2] for t in todo), default=0)
        if len(todo) > 1 and n_max * d * (d + 1) * 8 <= NESTED_BYTES:
            errors = self.nested(d, alpha, kappa, todo)
            for j, t in enumerate(todo):
                self.errors[(d, alpha, kappa, t)] = errors[:, j]
                self.method[(d, alpha, kappa, t)] = "nested"
        else:
            for t in todo:
                self.errors[(d, alpha, kappa, t)] = self.single(d, alpha, kappa, t)
                self.method[(d, alpha, kappa, t)] = "simulate_icl_error"
        if todo:
            per = (time.perf_counter() - start) / len(todo)
            for t in todo:
                self.seconds[(d, alpha, kappa, t)] = per
        return {t: self.errors[(d, alpha, kappa, t)] for t in taus}

    def row(self, curve: str, d: int, alpha: float, kappa: float, tau: float) -> dict:
        """One simulated point against the closed form."""
        rho = self.args.rho
        errors = self.measure(d, alpha, kappa, [tau])[float(tau)]
        mean, se = float(errors.mean()), float(errors.std(ddof=1) / math.sqrt(errors.size))
        th = theory(alpha, kappa, tau, rho)
        l, k, n = pretraining_sizes(d, alpha, kappa, tau)
        return {"curve": curve, "d": d, "alpha": alpha, "kappa": kappa_text(kappa), "tau": tau, "rho": rho,
                "l": l, "k": k, "n": n, "p": d * (d + 1), "draws": int(errors.size), "mean": mean, "se": se,
                "theory": th, "ratio": None if th is None else mean / th, "ratio_se": None if th is None else se / th,
                "compared": abs(tau - 1.0) >= FAR, "method": self.method[(d, alpha, kappa, float(tau))],
                "seconds_per_point": self.seconds.get((d, alpha, kappa, float(tau))), "errors": errors.tolist()}


def reference_points(args) -> dict[str, tuple[float, float, float]]:
    """``{name: (alpha, kappa, tau)}`` of the finite-d table: tau in {--tau, 1 + FAR} x kappa in {inf, REF_KAPPA}."""
    return {"A": (args.alpha, math.inf, args.tau), "B": (args.alpha, REF_KAPPA, args.tau),
            "C": (args.alpha, math.inf, 1.0 + FAR), "D": (args.alpha, REF_KAPPA, 1.0 + FAR)}


def worst(rows: list[dict]) -> dict:
    """The compared row farthest from theory (largest |ratio - 1|)."""
    return max((r for r in rows if r["compared"]), key=lambda r: abs(r["ratio"] - 1.0))


def point_text(r: dict) -> str:
    return (f"d={r['d']} alpha={r['alpha']:g} kappa={r['kappa']} tau={r['tau']:g}: simulation {r['mean']:.4f} ± "
            f"{r['se']:.4f} ({r['draws']} draws) vs theory {r['theory']:.4f}, ratio {r['ratio']:.4f} ± "
            f"{r['ratio_se']:.4f}")


def run(args) -> Outcome:
    sim = Simulator(args)
    d_c, rho = args.curve_d, args.rho
    refs = reference_points(args)
    timings = {}

    # --- the curves at --curve-d (first: the table reuses their draws there)
    start = time.perf_counter()
    tau_rows = []
    for kappa in (math.inf, *args.tau_kappas):
        sim.measure(d_c, args.alpha, kappa, args.taus)
        tau_rows += [sim.row("tau", d_c, args.alpha, kappa, t) for t in args.taus]
    timings["tau_curves"] = time.perf_counter() - start
    start = time.perf_counter()
    kappa_rows = [sim.row("kappa", d_c, args.alpha, k, args.tau) for k in (*args.kappas, math.inf)]
    timings["kappa_curve"] = time.perf_counter() - start
    start = time.perf_counter()
    alpha_rows = [sim.row("alpha", d_c, a, math.inf, args.tau) for a in args.alphas]
    timings["alpha_curve"] = time.perf_counter() - start
    for r in tau_rows + kappa_rows + alpha_rows:
        print(f"{r['curve']} curve, {point_text(r) if r['theory'] is not None else r['tau']} "
              f"[{r['method']}]", flush=True)

    # --- the finite-d table at the reference points
    start = time.perf_counter()
    table = []
    for d in args.table_d:
        for kappa in (math.inf, REF_KAPPA):
            sim.measure(d, args.alpha, kappa, sorted({t for a, k, t in refs.values() if k == kappa}))
        for name, (alpha, kappa, tau) in refs.items():
            row = sim.row("table", d, alpha, kappa, tau)
            row["point"] = name
            table.append(row)
            print(f"table {name}: {point_text(row)} [{row['method']}, {row['seconds_per_point']:.1f} s]", flush=True)
    timings["table"] = time.perf_counter() - start

    # --- claim 6 first: the nested fits are simulate_icl_error's fits (at the smallest d whose n >= CHUNK: cheap)
    start = time.perf_counter()
    d_check = next((d for d in args.table_d if pretraining_sizes(d, args.alpha, math.inf, args.tau)[2] >= CHUNK),
                   args.table_d[-1])
    nested = sim.measure(d_check, args.alpha, math.inf, [args.tau])[args.tau]
    if sim.method[(d_check, args.alpha, math.inf, args.tau)] != "nested":  # e.g. --tau 2: fit it nested here
        nested = sim.nested(d_check, args.alpha, math.inf, [args.tau])[:, 0]
    single = sim.single(d_check, args.alpha, math.inf, args.tau)
    nested_gap = float(np.max(np.abs(nested - single) / np.abs(single)))
    timings["nested_check"] = time.perf_counter() - start
    claims = []

    # --- claim 1: the excess falls with d (least-squares exponent of |r - 1| against d, per reference point)
    exponents = {}
    for name in refs:
        rows = [r for r in table if r["point"] == name]
        slope = np.polyfit(np.log([r["d"] for r in rows]), np.log([abs(r["ratio"] - 1.0) for r in rows]), 1)[0]
        exponents[name] = float(-slope)
    slowest = min(exponents, key=exponents.get)
    table_text = "; ".join(f"{name}: " + ", ".join(f"d={r['d']} {r['ratio']:.4f}±{r['ratio_se']:.4f}"
                                                    for r in table if r["point"] == name) for name in refs)
    claims.append(lower_bound_claim(
        f"finite d: simulation / theory -> 1, the excess |r - 1| falls like d^-a with a >= {EXPONENT_MIN:g}",
        exponents[slowest], EXPONENT_MIN, 1.0,
        "Lu et al. 2025 Result 1 is the d -> inf limit; a = least-squares slope of -log|r - 1| against log d over "
        f"d = {args.table_d} at reference points " + ", ".join(
            f"{k} (tau={t:g}, kappa={kappa_text(kap)}; a={exponents[k]:.3f})" for k, (_, kap, t) in refs.items())
        + f", alpha={args.alpha:g}, rho={rho:g}; ratios r {table_text}"))

    # --- the tolerance of claims 2 and 4, read off the table at --curve-d
    at_curve = [r for r in table if r["d"] == d_c]
    ref_dev = max(abs(r["ratio"] - 1.0) for r in at_curve)
    tol = MARGIN * ref_dev
    refs_text = ", ".join(f"{r['point']} ({r['ratio']:.4f})" for r in at_curve)
    tol_text = (f"tol = {MARGIN:g} x {ref_dev:.4f}, the largest |simulation/theory - 1| of the reference points "
                f"{refs_text} at d = {d_c}")

    # --- claim 2: the tau and alpha curves, away from the threshold
    ref_keys = {(a, kappa_text(k), t) for a, k, t in refs.values()}

    def judged(rows):
        """The compared points that are not reference points (those are within tol / MARGIN by construction)."""
        out = [r for r in rows if r["compared"] and (r["alpha"], r["kappa"], r["tau"]) not in ref_keys]
        return out or [r for r in rows if r["compared"]]

    compared = judged(tau_rows + alpha_rows)
    w = worst(compared)
    claims.append(relative_claim(
        f"tau and alpha curves at d={d_c}, every point with |tau - 1| >= {FAR:g}: simulation = theory within tol",
        w["theory"], w["mean"], tol,
        f"Lu et al. 2025 Result 1; {len(compared)} points besides the reference points; worst {point_text(w)}; "
        f"{tol_text}", se=w["se"]))

    # --- claim 3: the simulated peak in tau
    peaks = []
    for kappa in (math.inf, *args.tau_kappas):
        rows = [r for r in tau_rows if r["kappa"] == kappa_text(kappa)]
        top = max(rows, key=lambda r: r["mean"])
        peaks.append({"kappa": kappa_text(kappa), "tau": top["tau"], "mean": top["mean"], "n": top["n"],
                      "p": top["p"]})
    peak_text = "; ".join(f"kappa={q['kappa']}: peak at tau={q['tau']:g} (n={q['n']}, p=d(d+1)={q['p']}, error "
                          f"{q['mean']:.4g})" for q in peaks)
    detail = (f"Lu et al. 2025: the ridgeless error diverges at the interpolation threshold tau = 1 (n = p = d(d+1) "
              f"at finite d: tau = 1 + 1/d = {1 + 1 / d_c:.3f}); grid {args.taus}; {peak_text}")
    claims.append(lower_bound_claim(f"tau curves at d={d_c}: simulated peak at tau >= {PEAK_WINDOW[0]:g}",
                                    min(q["tau"] for q in peaks), PEAK_WINDOW[0], 1.0, detail))
    claims.append(upper_bound_claim(f"tau curves at d={d_c}: simulated peak at tau <= {PEAK_WINDOW[1]:g}",
                                    max(q["tau"] for q in peaks), PEAK_WINDOW[1], 1.0, detail))

    # --- claim 4: the kappa curve
    w = worst(judged(kappa_rows))
    ends = (kappa_rows[0], kappa_rows[-1])
    claims.append(relative_claim(
        f"kappa curve at d={d_c}, tau={args.tau:g}: simulation follows theory from kappa={ends[0]['kappa']:g} to "
        "kappa=inf within tol", w["theory"], w["mean"], tol,
        f"Lu et al. 2025 Result 1 (task diversity); simulation {ends[0]['mean']:.4f} -> {ends[1]['mean']:.4f}, "
        f"theory {ends[0]['theory']:.4f} -> {ends[1]['theory']:.4f}; {len(judged(kappa_rows))} points besides the "
        f"reference points; worst {point_text(w)}; {tol_text}", se=w["se"]))

    # --- claim 5: the formula's published values
    for kappa, value in FORMULA:
        claims.append(relative_claim(
            f"formula: alpha=1, rho=0.01, tau=4, kappa={kappa_text(kappa)} gives {value}",
            value, asymptotic_icl_error(1.0, kappa, 4.0, 0.01), FORMULA_TOL,
            "Lu et al. 2025 Result 1, the values quoted in docs/theory.md §15 (4 digits)"))

    # --- claim 6
    claims.append(upper_bound_claim(
        f"nested fits = icl.theory.asymptotic.simulate_icl_error (d={d_check}, tau={args.tau:g}, kappa=inf)",
        nested_gap, NESTED_TOL, 0.0,
        f"largest relative difference of the {nested.size} draws' test errors (the same keys and chunk size)"))

    for name, secs in timings.items():
        print(f"{name}: {secs:.1f} s")
    extra = {"finite_d_table": table, "exponents": exponents,
             "tolerance": {"value": tol, "margin": MARGIN, "reference_deviation": ref_dev, "d": d_c},
             "reference_points": {k: {"alpha": a, "kappa": kappa_text(kap), "tau": t} for k, (a, kap, t)
                                  in refs.items()},
             "peaks": peaks, "nested_check": {"max_relative_difference": nested_gap, "d": d_check, "tau": args.tau},
             "timings_seconds": timings, "simulation_precision": "float64"}
    runs = tau_rows + kappa_rows + alpha_rows
    return Outcome(claims, runs, {f"{EXPERIMENT}.png": lambda: plot(args, tau_rows, kappa_rows, alpha_rows, table,
                                                                    tol)}, extra)


def _ticks(ax, values, labels) -> None:
    """Major ticks at ``values`` with ``labels`` and no minor tick labels on a log x axis."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(values, labels)
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot(args, tau_rows, kappa_rows, alpha_rows, table, tol):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rho = args.rho
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    ax = axes[0]
    for i, kappa in enumerate((math.inf, *args.tau_kappas)):
        rows = [r for r in tau_rows if r["kappa"] == kappa_text(kappa)]
        color = f"C{i}"
        for part in (np.geomspace(min(args.taus) * 0.9, 0.985, 120), np.geomspace(1.015, max(args.taus) * 1.1, 120)):
            ax.plot(part, asymptotic_icl_error(args.alpha, kappa, part, rho), color=color,
                    label=f"theory, kappa={kappa_text(kappa)}" if part[0] < 1 else None)
        shown = [r for r in rows if r["mean"] <= TAU_PLOT_TOP]
        ax.errorbar([r["tau"] for r in shown], [r["mean"] for r in shown], yerr=[2 * r["se"] for r in shown],
                    fmt="o", color=color, ms=4, capsize=2, label=f"simulation d={args.curve_d} (±2 SE)")
        clipped = [r["tau"] for r in rows if r["mean"] > TAU_PLOT_TOP]
        ax.plot(clipped, [TAU_PLOT_TOP] * len(clipped), "^", color=color, ms=6,
                label=f"kappa={kappa_text(kappa)}: above {TAU_PLOT_TOP:g}" if clipped else None)
    ax.axvspan(*PEAK_WINDOW, color="gray", alpha=0.15, label="claimed peak window")
    ax.axvline(1 + 1 / args.curve_d, color="gray", ls=":", lw=0.8, label="n = p = d(d+1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=TAU_PLOT_TOP * 1.5)
    ax.set_xlabel(r"$\tau = n / d^2$")
    ax.set_ylabel("ICL test error")
    ax.set_title(f"double descent in tau (alpha={args.alpha:g}, rho={rho:g})", fontsize=9)
    ax.legend(fontsize=7)

    ax = axes[1]
    finite = np.geomspace(min(args.kappas) * 0.8, max(args.kappas) * 1.5, 150)
    ax.plot(finite, asymptotic_icl_error(args.alpha, finite, args.tau, rho), "k-", label="theory")
    inf_th = asymptotic_icl_error(args.alpha, math.inf, args.tau, rho)
    ax.axhline(inf_th, color="k", ls="--", lw=0.8, label="theory, kappa = inf")
    rows = kappa_rows[:-1]
    ax.errorbar([r["kappa"] for r in rows], [r["mean"] for r in rows], yerr=[2 * r["se"] for r in rows], fmt="o",
                color="C3", ms=4, capsize=2, label=f"simulation d={args.curve_d} (±2 SE)")
    last = kappa_rows[-1]
    ax.errorbar([max(args.kappas) * 1.5], [last["mean"]], yerr=[2 * last["se"]], fmt="s", color="C3", ms=4,
                capsize=2, label="simulation, kappa = inf (drawn at the right edge)")
    ax.set_xscale("log")
    _ticks(ax, [*args.kappas, max(args.kappas) * 1.5], [*(f"{k:g}" for k in args.kappas), "inf"])
    ax.set_xlabel(r"$\kappa = k / d$")
    ax.set_title(f"task diversity (tau={args.tau:g})", fontsize=9)
    ax.legend(fontsize=7)

    ax = axes[2]
    grid = np.geomspace(min(args.alphas) * 0.8, max(args.alphas) * 1.25, 150)
    ax.plot(grid, asymptotic_icl_error(grid, math.inf, args.tau, rho), "k-", label="theory")
    ax.errorbar([r["alpha"] for r in alpha_rows], [r["mean"] for r in alpha_rows],
                yerr=[2 * r["se"] for r in alpha_rows], fmt="o", color="C2", ms=4, capsize=2,
                label=f"simulation d={args.curve_d} (±2 SE)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _ticks(ax, args.alphas, [f"{a:g}" for a in args.alphas])
    ax.set_xlabel(r"$\alpha = l / d$")
    ax.set_title(f"context length (tau={args.tau:g}, kappa=inf)", fontsize=9)
    ax.legend(fontsize=7)

    ax = axes[3]
    for i, name in enumerate(sorted({r["point"] for r in table})):
        rows = [r for r in table if r["point"] == name]
        ax.errorbar([r["d"] for r in rows], [r["ratio"] - 1 for r in rows], yerr=[2 * r["ratio_se"] for r in rows],
                    fmt="o-", color=f"C{i}", ms=4, capsize=2,
                    label=f"{name}: tau={rows[0]['tau']:g}, kappa={rows[0]['kappa']}")
    ds = np.array(args.table_d, float)
    first = [r for r in table if r["d"] == args.table_d[0]]
    scale = max(abs(r["ratio"] - 1) for r in first) * args.table_d[0]
    ax.plot(ds, scale / ds, "k:", label="~ 1/d")
    ax.axhline(tol, color="gray", ls="--", lw=0.8, label=f"claims' tol at d={args.curve_d}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _ticks(ax, args.table_d, [str(d) for d in args.table_d])
    ax.set_xlabel("d")
    ax.set_ylabel("simulation / theory - 1")
    ax.set_title("finite-d table", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


SPEC = Experiment(EXPERIMENT, __doc__.splitlines()[0], FLAGS, run, add_arguments=add_arguments, validate=validate,
                  quick=QUICK, presets={"paper": (PAPER, PAPER_HELP)}, trains=False)


def main(argv=None) -> dict:
    from icl.experiment import run_experiment

    return run_experiment(SPEC, argv)


if __name__ == "__main__":
    script_main(SPEC)
