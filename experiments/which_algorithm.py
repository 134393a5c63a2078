"""Which algorithm does a trained model run? Fingerprints across depth and noise (Akyürek et al. 2023).

Known algorithms first (ridge and K-step GD must fingerprint as themselves), then full-parametrisation linear
transformers (L = 1..4 LSA layers, query loss) and standard causal transformers (``icl.Transformer``, every-
prefix loss, several depths at small width), trained on a noiseless and a noisy isotropic task, are
fingerprinted with :func:`icl.fingerprint` (SPD and ILWD at every prefix length, docs/theory.md §11). The phase
diagram (depth x noise -> best-matching family by the parsimony rule) and the best-fit ridge lambda against the
Bayes value sigma^2 / tau^2 are written with the claims.

    python experiments/which_algorithm.py [--quick] [--d 5 --n 10 --noise 0 0.5 --lsa-layers 1 2 3 4 ...]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import icl
from icl.experiment import Experiment, Outcome, positive_int, script_main
from icl.io import Claim, relative_claim, upper_bound_claim

FLAGS = dict(d=5, n=10, noise=[0.0, 0.5], steps=600, batch=512, seeds=1, lr=1e-2, seed=0, eval_prompts=4096)
QUICK = dict(steps=300, eval_prompts=1024, lsa_layers=[1, 2], tf_layers=[2], tf_steps=400)
SELF_TOL = 0.02  # ridge lambda and GD eta given back (issue 11)
ETA_TOL = 0.03  # one-layer LSA: fitted eta vs eta* (docs/theory.md §3, §9)
SPD_RATIO = 0.1  # SPD(LSA, GD) <= a tenth of SPD(LSA, ridge / least squares) for 2 <= k <= d
ILWD_TOL = 0.1  # noiseless: ILWD/d to least squares for k >= d + 1
FAMILIES = ("averaging", "bayes", "least_squares", "gd", "ridge", "preconditioned_gd", "gd_plus_plus")


def add_arguments(p):
    p.add_argument("--lsa-layers", type=positive_int, nargs="+", default=[1, 2, 3, 4], help="LSA depths")
    p.add_argument("--tf-layers", type=positive_int, nargs="+", default=[1, 2, 4], help="standard transformer depths")
    p.add_argument("--tf-width", type=positive_int, default=32, help="standard transformer width")
    p.add_argument("--tf-steps", type=positive_int, default=3000, help="standard transformer training steps")
    p.add_argument("--tf-lr", type=float, default=1e-3, help="standard transformer learning rate")


def validate(args, parser):
    if 1 not in args.lsa_layers:
        parser.error("--lsa-layers must include 1 (the one-layer claims)")
    if not any(s > 0 for s in args.noise) or 0.0 not in args.noise:
        parser.error("--noise must include 0 and a positive level (noiseless and noisy claims)")


class GargLSA:
    """Every-prefix predictions (Garg's convention, docs/theory.md §10) of an LSA stack without ``.prefix``.

    Entry ``j`` uses the first ``j`` pairs (Gram matrix ``G_j``, normalised by ``j``) and the query token
    ``[x_{j+1}, 0]``: a layer maps a token ``z`` to ``z + W^PV G W^KQ z`` and the context Gram matrix to
    ``P G P^T`` with ``P = I + W^PV G W^KQ`` (exact; used until the model has its own ``.prefix``).
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, prompts):
        return self.model(prompts)

    def prefix(self, prompts):
        x, y = prompts.x, prompts.y
        b, n, d = x.shape
        z = jnp.concatenate([x, y[..., None]], axis=-1)
        outer = jnp.cumsum(z[..., :, None] * z[..., None, :], axis=1)
        gram = jnp.concatenate([jnp.zeros_like(outer[:, :1]), outer[:, :-1]], axis=1)  # first j pairs
        gram = gram / jnp.maximum(jnp.arange(n), 1)[None, :, None, None]
        q = jnp.concatenate([x, jnp.zeros_like(y[..., None])], axis=-1)  # [b, n, D]
        eye = jnp.eye(d + 1, dtype=x.dtype)
        layers = list(self.model.layers)
        for i, layer in enumerate(layers):
            w_pv, w_kq = layer.w_pv[...], layer.w_kq[...]
            q = q + jnp.einsum("bkij,bkj->bki", gram, q @ w_kq.T) @ w_pv.T
            if i < len(layers) - 1:
                p = eye + jnp.einsum("ij,bkjl,lm->bkim", w_pv, gram, w_kq)
                gram = jnp.einsum("bkij,bkjl,bkml->bkim", p, gram, p)
        return q[..., -1]


def as_predictor(model):
    return model if callable(getattr(model, "prefix", None)) else GargLSA(model)


def fingerprint(args, predictor, task, key):
    n, d = args.n, args.d
    return icl.fingerprint(predictor, task, key, n, candidates=FAMILIES, num_prompts=args.eval_prompts,
                           num_ilwd_prompts=min(64, args.eval_prompts), ilwd_ks=list(range(d + 1, n + 2)),
                           max_steps=3, lbfgs_iters=40)


def summarise(res, label: str) -> dict:
    i_d1 = res.index(res.d + 1)
    return {
        "model": label,
        "best": res.best,
        "best_by_k": res.best_by_k,
        "fitted": res.fitted,
        "spd_per_d_full": {f: float(res.spd[f][-1] / res.d) for f in res.families},
        "spd_per_d_se_full": {f: float(res.spd_se[f][-1] / res.d) for f in res.families},
        "spd_per_d_k_d_plus_1": {f: float(res.spd[f][i_d1] / res.d) for f in res.families},
        "spd_per_d_se_k_d_plus_1": {f: float(res.spd_se[f][i_d1] / res.d) for f in res.families},
        "ilwd_per_d": {f: np.asarray(res.ilwd[f]) / res.d for f in res.families},
        "ilwd_ks": res.ilwd_ks,
        "lam_by_k": res.fitted_by_k["ridge"]["lam"],
        "linearity_residual": res.linearity_residual,
    }


def run(args) -> Outcome:
    d, n = args.d, args.n
    key = jax.random.key(args.seed)
    noisy = max(args.noise)
    claims, runs, fps = [], [], {}

    # 1. known algorithms fingerprint as themselves
    task = icl.LinearRegressionTask.isotropic(d, noisy)
    lam, eta, k_steps = 0.5, 0.3, 2
    r_ridge = fingerprint(args, icl.ridge(lam), task, jax.random.fold_in(key, 1))
    r_gd = fingerprint(args, icl.gradient_descent([eta] * k_steps), task, jax.random.fold_in(key, 2))
    claims += [
        relative_claim("ridge(lambda) gives back lambda", lam, r_ridge.fitted["ridge"]["lam"], SELF_TOL,
                       f"fitted at k = n + 1; best match {r_ridge.best}"),
        relative_claim("GD(eta, K) gives back eta", eta, r_gd.fitted["gd"]["eta"], SELF_TOL,
                       f"fitted K = {r_gd.fitted['gd']['steps']} (true {k_steps}); best match {r_gd.best}"),
        Claim("GD(eta, K) gives back K and fingerprints as gd", k_steps, float(r_gd.fitted["gd"]["steps"]), 0.0,
              bool(r_gd.fitted["gd"]["steps"] == k_steps and r_gd.best == "gd"), f"best match {r_gd.best}"),
        Claim("ridge(lambda) fingerprints as ridge", None, float(r_ridge.best == "ridge"), 0.0, r_ridge.best == "ridge",
              f"best match {r_ridge.best}"),
    ]
    runs += [summarise(r_ridge, f"ridge({lam})"), summarise(r_gd, f"gd({eta}, K={k_steps})")]

    # 2. linear transformers, L = 1..4, each noise level
    phase = {}
    for noise in args.noise:
        task = icl.LinearRegressionTask.isotropic(d, noise)
        for layers in args.lsa_layers:
            config = icl.TrainConfig(steps=args.steps, batch=args.batch, n=n, lr=args.lr, num_seeds=1, seed=args.seed)
            result = icl.train(lambda rngs, L=layers: icl.LinearTransformer(d, L, rngs=rngs), task, config)
            res = fingerprint(args, as_predictor(result.model(0)), task, jax.random.fold_in(key, 100 + layers))
            fps[("lsa", layers, noise)] = res
            phase[(f"LSA L={layers}", noise)] = res.best
            run_ = summarise(res, f"LSA L={layers}")
            run_.update(noise=noise, train_seconds=result.seconds, final_loss=float(np.mean(result.losses[-10:])))
            runs.append(run_)
            print(f"LSA L={layers} sigma={noise:g}: best {res.best}; fitted gd "
                  f"{res.fitted['gd']}, ridge {res.fitted['ridge']}")

    for noise in args.noise:
        res = fps[("lsa", 1, noise)]
        task = icl.LinearRegressionTask.isotropic(d, noise)
        eta_star = float(icl.optimal_step_size(task, n))
        claims.append(Claim(f"one-layer LSA fingerprints as one-step GD (sigma={noise:g})", None,
                            float(res.fitted["gd"]["steps"]), 0.0,
                            bool(res.best == "gd" and res.fitted["gd"]["steps"] == 1),
                            f"best match {res.best}, fitted K = {res.fitted['gd']['steps']}"))
        claims.append(relative_claim(f"one-layer LSA: fitted eta within 3% of eta* (sigma={noise:g})", eta_star,
                                     res.fitted["gd"]["eta"], ETA_TOL, "eta* = n/(n+d+1+sigma^2), docs/theory.md §3"))
        ks = range(2, d + 1)
        ratio = max(res.spd["gd"][res.index(k)] / min(res.spd["ridge"][res.index(k)], res.spd["least_squares"][res.index(k)])
                    for k in ks)
        claims.append(upper_bound_claim(f"one-layer LSA: SPD to GD <= SPD to ridge/LS / 10 at 2 <= k <= d (sigma={noise:g})",
                                        ratio, SPD_RATIO, None, "largest ratio over k"))

    # 3. standard transformers
    tf_results = {}
    for noise in args.noise:
        task = icl.LinearRegressionTask.isotropic(d, noise)
        for layers in args.tf_layers:
            config = icl.TrainConfig(steps=args.tf_steps, batch=args.batch // 2, n=n, lr=args.tf_lr, num_seeds=1,
                                     seed=args.seed, loss="every_prefix")
            model_fn = lambda rngs, L=layers: icl.Transformer(d, num_layers=L, width=args.tf_width, num_heads=2,  # noqa: E731
                                                              max_pairs=n + 1, rngs=rngs)
            result = icl.train(model_fn, task, config)
            res = fingerprint(args, result.model(0), task, jax.random.fold_in(key, 200 + layers))
            tf_results[(layers, noise)] = res
            phase[(f"Transformer L={layers}", noise)] = res.best
            run_ = summarise(res, f"Transformer L={layers}")
            run_.update(noise=noise, train_seconds=result.seconds, final_loss=float(np.mean(result.losses[-10:])))
            runs.append(run_)
            print(f"Transformer L={layers} sigma={noise:g}: best {res.best}; ridge {res.fitted['ridge']}")
    deepest = max(args.tf_layers)
    res = tf_results[(deepest, noisy)]
    i = res.index(d + 1)
    near = min(res.spd["bayes"][i], res.spd["ridge"][i])
    far = min(res.spd["least_squares"][i], res.spd["gd"][i])
    claims.append(upper_bound_claim(f"deepest transformer (L={deepest}), sigma={noisy:g}: SPD to Bayes/ridge below "
                                    "SPD to least squares and GD at k = d + 1", near / far, 1.0, None,
                                    f"ratio min(bayes, ridge) / min(least_squares, gd); fitted lambda at k=d+1 "
                                    f"{res.fitted_by_k['ridge']['lam'][i]:.3g} vs sigma^2/tau^2 = {noisy**2:g}"))
    res0 = tf_results[(deepest, 0.0)]
    worst = float(np.max(res0.ilwd["least_squares"]) / d)
    claims.append(upper_bound_claim(f"deepest transformer (L={deepest}), noiseless: ILWD/d to least squares <= 0.1 "
                                    "for k >= d + 1", worst, ILWD_TOL, 0.0, "largest over k = d+1..n+1"))
    table = {f"{model} sigma={noise:g}": best for (model, noise), best in phase.items()}
    print("phase diagram (model, noise -> best match):")
    for k, v in table.items():
        print(f"  {k}: {v}")
    figures = {"which_algorithm.png": lambda: _figure(fps, tf_results, args)}
    return Outcome(claims, runs, figures, extra={"phase_diagram": table})


def _figure(fps, tf_results, args):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    icl.plot_fingerprint(fps[("lsa", 1, max(args.noise))], ax=axes[0])
    axes[0].set_title("one-layer LSA")
    icl.plot_fingerprint(tf_results[(max(args.tf_layers), max(args.noise))], ax=axes[1])
    axes[1].set_title(f"transformer L={max(args.tf_layers)}, sigma={max(args.noise):g}")
    fig.tight_layout()
    return fig


SPEC = Experiment("which_algorithm", __doc__.splitlines()[0], FLAGS, run, add_arguments=add_arguments,
                  validate=validate, quick=QUICK)


def main(argv=None) -> dict:
    from icl.experiment import run_experiment

    return run_experiment(SPEC, argv)


if __name__ == "__main__":
    script_main(SPEC)
