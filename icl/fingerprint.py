"""Which algorithm does a predictor run? Fingerprints against GD, ridge, least squares, Bayes (Akyürek et al. 2023).

[`fingerprint`][icl.fingerprint.fingerprint] fits, for each candidate family of learning algorithms, the family's hyper-parameters to a
predictor (a trained model or another algorithm) by minimising the squared prediction difference (SPD) on one
set of prompts, then reports SPD and the implicit linear weight difference (ILWD) with standard errors on fresh
prompts, at every prefix length, and names the simplest family that fits, or says why none does
(docs/theory.md §10, §11). Linear probes of hidden states live in [`icl.probes`][icl.probes].

Prefix convention (Garg's, docs/theory.md §10): at prefix length ``k = 1..n`` the prediction of ``y_k`` from
``x_k`` and the first ``k - 1`` pairs (``predictor.prefix(prompts)[:, k-1]``); ``k = n + 1`` is the full
context, the prediction at the query (``predictor(prompts)``). Arrays over prefix lengths run over
``ks = 1..n+1`` (``ks = [n+1]`` only for a predictor without ``.prefix``).

The families are the library's own predictors ([`icl.predictors`][icl.predictors]), their hyper-parameters traced leaves, so
one compiled program fits and evaluates every value:

==================  ==============================================  =========================================
family              predictor                                       fitted hyper-parameters (per length k)
==================  ==============================================  =========================================
averaging           ``averaging()`` (Garg)                          none
least_squares       ``least_squares()`` (minimum norm, QR)          none
bayes               ``bayes_posterior_mean(task)`` (§7)             none (the task's prior and noise)
gd                  ``gradient_descent([eta] * K)``                 ``eta`` (log grid), ``steps`` K
ridge               ``ridge(lam)``                                  ``lam`` (log grid)
preconditioned_gd   ``gradient_descent(step_sizes, P)``             ``step_sizes`` [K], ``preconditioner`` P
gd_plus_plus        ``gd_plus_plus(step_sizes, gammas, P)``         ``step_sizes``, ``gammas`` [K], P
                    (von Oswald et al. 2023)
knn                 ``knn(neighbors)``                              ``neighbors``
==================  ==============================================  =========================================

The families nest (averaging is GD at ``eta = 1``, ``K = 1``; Bayes is ridge at ``lam = sigma^2/tau^2`` and,
noiseless with an isotropic prior, least squares; least squares is ridge as ``lam -> 0``; GD lies inside
preconditioned GD (``P = I``), inside GD++ (``gammas = 0``)), so the verdict follows a parsimony rule
(docs/theory.md §11): the first family, in the order of ``FAMILIES``, whose SPD is within
``max(SE, atol d)`` of the smallest, where SE is that of the paired difference ``SPD_f - SPD_min`` on the same
prompts (``spd_gap_se``) and ``atol`` (SPD/d, default ``ATOL``) the practical-equivalence margin. Least
squares comes before Bayes: noiseless, with an isotropic prior, they are one predictor, named by the one that
needs no prior.

A verdict is only given when it means something; otherwise ``best`` is None and ``reason`` says why:

- no family fits: the smallest SPD exceeds ``fit_tol`` (default ``FIT_TOL``, 5%) of the predictor's own
  mean squared error against the labels (``relative_spd``, scale-free);
- a family at or before the parsimony choice cannot be judged: its fitted ``eta`` or ``lam`` sits at an edge of
  its grid (``at_edge``; the best value may lie outside it), or it returned NaN or inf on some evaluation
  prompts (``nonfinite``);
- ``k = 1``: there is no context and every family predicts 0.

A predictor that returns NaN or inf raises ValueError with the counts: it never changes a verdict silently.

Hyper-parameters are fitted on ``num_fit_prompts`` prompts, separately at every prefix length: scalars on a
log grid (``eta`` in ``[1e-4, 1e2] / s``, ``lam`` in ``[1e-6, 1e4] s``, ``s`` the mean squared input entry; every
length at once, one evaluation per grid point) refined by golden-section search per length; preconditioned GD
and GD++ by L-BFGS (``optax.lbfgs``) started at the fitted GD (and preconditioned GD). SPD, the verdict and
ILWD are measured on fresh prompts through [`icl.evaluate.monte_carlo`][icl.evaluate.monte_carlo]. There, where a richer family's
fit does no better than the simpler family it contains (GD in preconditioned GD in GD++), it is replaced by
that family's fit, so the nesting holds on the prompts that decide; this choice between two fixed candidates
changes no verdict, since a tie goes to the simpler family.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl.evaluate import MonteCarlo, monte_carlo, predict, predict_prefix
from icl.progress import progress_bar
from icl.predictors import averaging, bayes_posterior_mean, gd_plus_plus, gradient_descent, knn, least_squares, ridge
from icl.protocol import has_prefix, predictor_name
from icl.pytree import pytree_dataclass, static_field
from icl.tasks import Prompts, check_int, check_non_negative

__all__ = ["ATOL", "FAMILIES", "FIT_TOL", "Fingerprint", "fingerprint", "implicit_weights", "plot_fingerprint"]

FAMILIES = ("averaging", "least_squares", "bayes", "gd", "ridge", "preconditioned_gd", "gd_plus_plus", "knn")
"""Candidate families, simplest first: the order of the parsimony rule (docs/theory.md §11). The first three have
no hyper-parameters."""

ATOL = 1e-3
"""Default practical-equivalence margin of the parsimony rule, in SPD/d: about the SPD/d between Akyürek's
ridge(lam) and ridge(1.25 lam) (docs/theory.md §11). experiments/which_algorithm.py uses it too."""

FIT_TOL = 0.05
"""Default fit tolerance: a verdict needs the smallest SPD within 5% of the predictor's own mean squared error."""

_GRIDS = {"gd": ("eta", lambda s: (1e-4 / s, 1e2 / s)), "ridge": ("lam", lambda s: (1e-6 * s, 1e4 * s))}  # s: E[x^2]
_NEIGHBORS = (1, 2, 3, 5, 8)
_GOLD = (5.0**0.5 - 1.0) / 2.0


_MAKERS = {"averaging": averaging, "least_squares": least_squares, "ridge": ridge, "gd_plus_plus": gd_plus_plus,
           "preconditioned_gd": gradient_descent, "knn": lambda neighbors: knn(int(neighbors)),
           "gd": lambda eta, steps: gradient_descent(np.full(int(steps), float(eta)))}
"""Family -> its public predictor, called with the hyper-parameters fitted at one prefix length (``bayes`` needs the
task). ``_family`` builds gd and knn with traced hyper-parameters itself."""
_Plan = collections.namedtuple("_Plan", "families with_prefix max_steps lbfgs_iters neighbors")  # static, hashable


@pytree_dataclass
class _KNN:
    """k-NN whose number of neighbours (a leaf) is one of ``options``: each option runs, one is kept."""

    neighbors: jax.Array
    options: tuple = static_field()

    def __call__(self, prompts, method: str = "__call__"):
        outs = jnp.stack([getattr(knn(o), method)(prompts) for o in self.options])
        return outs[jnp.argmax(jnp.asarray(self.options) == self.neighbors)]

    def prefix(self, prompts):
        return self(prompts, "prefix")


def _family(f: str, t: dict, plan: _Plan):
    """The library predictor of family ``f`` at the hyper-parameters ``t`` of one prefix length."""
    if f == "gd":
        return gradient_descent(t["eta"] * (jnp.arange(plan.max_steps) < t["steps"]))  # zero steps change nothing
    if f == "knn":
        return _KNN(t["neighbors"], plan.neighbors)
    return _MAKERS[f](**t)  # ridge, preconditioned_gd, gd_plus_plus: their leaves may be traced


def _lift(t: dict, rich: str, max_steps: int, d: int) -> dict:
    """GD's (or preconditioned GD's) hyper-parameters per length as those of the richer family ``rich``."""
    if "eta" in t:
        t = {"step_sizes": t["eta"][:, None] * (jnp.arange(max_steps) < t["steps"][:, None]),
             "preconditioner": jnp.broadcast_to(jnp.eye(d, dtype=t["eta"].dtype), (t["eta"].shape[0], d, d))}
    return {**t, "gammas": jnp.zeros_like(t["step_sizes"])} if rich == "gd_plus_plus" else t


def _choose(mask, a: dict, b: dict) -> dict:
    """Per prefix length (the leading axis of every array): ``a`` where ``mask [nk]`` holds, else ``b``."""
    return jax.tree.map(lambda u, v: jnp.where(mask.reshape((-1,) + (1,) * (v.ndim - 1)), u, v), a, b)


def _all_k(p, prompts: Prompts, with_prefix: bool, name: str = "family") -> jax.Array:
    """``[batch, nk]``: the prefix predictions (Garg) then the full-context prediction."""
    full = predict(name, p, prompts)[:, None]
    return jnp.concatenate([predict_prefix(name, p, prompts), full], axis=1) if with_prefix else full


def _per_k(make, theta, prompts: Prompts, with_prefix: bool) -> jax.Array:
    """``[batch, nk]``: column ``i`` from ``make(theta[i])`` (hyper-parameters per prefix length)."""
    preds = jax.vmap(lambda t: _all_k(make(t), prompts, with_prefix))(theta)  # [nk, batch, nk]
    return jnp.diagonal(preds, axis1=0, axis2=2)


def _preds(f: str, theta: dict, prompts: Prompts, fixed: dict, plan: _Plan) -> jax.Array:
    if f in fixed:
        return _all_k(fixed[f], prompts, plan.with_prefix)
    return _per_k(lambda t: _family(f, t, plan), theta, prompts, plan.with_prefix)


def _spd(pred, target) -> jax.Array:
    """SPD per prefix length ``[nk]``; inf where it is not finite."""
    spd = jnp.mean((pred - target) ** 2, axis=0)
    return jnp.where(jnp.isfinite(spd), spd, jnp.inf)


# ----------------------------------------------------------------------------------------------------------
# fitting (one compiled program per plan and shapes)


def _fit_scalar(make, lo, hi, prompts, target, with_prefix, grid: int = 64, iters: int = 24):
    """Per-length minimiser of the SPD of ``make(theta)`` over ``[lo, hi]`` in log space: a grid shared by every
    length, then golden-section search between the grid neighbours of each length's best point.
    Returns ``(theta [nk], SPD [nk], at_edge [nk])``; at an edge the best value may lie outside the grid."""
    logs = jnp.linspace(jnp.log(lo), jnp.log(hi), grid)
    losses = jax.lax.map(lambda t: _spd(_all_k(make(jnp.exp(t)), prompts, with_prefix), target), logs)  # [G, nk]
    i = jnp.argmin(losses, axis=0)
    edge = ((i == 0) & (losses[0] < losses[1])) | ((i == grid - 1) & (losses[-1] < losses[-2]))
    per_k = jax.vmap(lambda t: _spd(_per_k(make, jnp.exp(t), prompts, with_prefix), target))

    def shrink(_, carry):  # the bracket [a, b] and the best point seen (t, its SPD)
        a, b, t, best = carry
        pts = jnp.stack([b - _GOLD * (b - a), a + _GOLD * (b - a)])
        lc, le = per_k(pts)
        left, low = lc <= le, jnp.minimum(lc, le)
        t, best = jnp.where(low < best, jnp.where(left, pts[0], pts[1]), t), jnp.minimum(low, best)
        return jnp.where(left, a, pts[0]), jnp.where(left, pts[1], b), t, best

    bracket = logs[jnp.maximum(i - 1, 0)], logs[jnp.minimum(i + 1, grid - 1)]
    _, _, t, best = jax.lax.fori_loop(0, iters, shrink, (*bracket, logs[i], losses[i, jnp.arange(i.shape[0])]))
    return jnp.exp(t), best, edge


def _fit_matrices(f, theta0, prompts, target, plan):
    """``optax.lbfgs`` from ``theta0`` (the fit of the simpler family it contains), each length's SPD divided by
    its value at the start so that every length weighs alike; per length the start is kept where it is better."""
    def loss(th):
        return _spd(_preds(f, th, prompts, {}, plan), target)

    def total(th):
        return jnp.sum(loss(th) / jnp.where((start > 0) & jnp.isfinite(start), start, 1.0))

    start, opt, value_and_grad = loss(theta0), optax.lbfgs(), optax.value_and_grad_from_state(total)

    def step(carry, _):
        th, state = carry
        value, grad = value_and_grad(th, state=state)
        updates, state = opt.update(grad, state, th, value=value, grad=grad, value_fn=total)
        return (optax.apply_updates(th, updates), state), None

    theta = jax.lax.scan(step, (theta0, opt.init(theta0)), None, length=plan.lbfgs_iters)[0][0]
    return _choose(~(loss(theta) < start), theta0, theta)


@functools.partial(jax.jit, static_argnames="plan")
def _fit(prompts, target, fixed, *, plan: _Plan):
    """Hyper-parameters of every family at every prefix length: ``(theta, at_edge, SPD on these prompts)``."""
    fams, nk, d, wp = set(plan.families), target.shape[1], prompts.x.shape[-1], plan.with_prefix
    scale = jnp.maximum(jnp.mean(prompts.x**2), jnp.finfo(prompts.x.dtype).tiny)  # mean eigenvalue of E[x x^T]
    theta, loss, edge = {f: {} for f in fams}, {}, {f: jnp.zeros(nk, bool) for f in fams}
    if {"gd", "preconditioned_gd", "gd_plus_plus"} & fams:
        steps = jnp.arange(plan.max_steps) + 1
        etas, losses, edges = jax.vmap(lambda k: _fit_scalar(  # [K, nk]
            lambda e: _family("gd", {"eta": e, "steps": k}, plan), *_GRIDS["gd"][1](scale), prompts, target, wp))(steps)
        i, cols = jnp.argmin(losses, axis=0), jnp.arange(nk)  # [nk]: the fewest steps among ties
        theta["gd"], loss["gd"], edge["gd"] = {"eta": etas[i, cols], "steps": steps[i]}, losses[i, cols], edges[i, cols]
    for simple, rich in (("gd", "preconditioned_gd"), ("preconditioned_gd", "gd_plus_plus")):
        if rich in fams or rich == "preconditioned_gd" and "gd_plus_plus" in fams:
            theta[rich] = _fit_matrices(rich, _lift(theta[simple], rich, plan.max_steps, d), prompts, target, plan)
    if "ridge" in fams:
        lam, loss["ridge"], edge["ridge"] = _fit_scalar(ridge, *_GRIDS["ridge"][1](scale), prompts, target, wp)
        theta["ridge"] = {"lam": lam}
    if "knn" in fams:
        losses = jnp.stack([_spd(_all_k(knn(o), prompts, wp), target) for o in plan.neighbors])
        theta["knn"], loss["knn"] = {"neighbors": jnp.asarray(plan.neighbors)[jnp.argmin(losses, 0)]}, losses.min(0)
    loss = {f: loss[f] if f in loss else _spd(_preds(f, theta[f], prompts, fixed, plan), target) for f in plan.families}
    return {f: theta[f] for f in plan.families}, {f: edge[f] for f in plan.families}, loss


# ----------------------------------------------------------------------------------------------------------
# judging on fresh prompts (statistics for icl.evaluate.monte_carlo)


@dataclasses.dataclass(frozen=True)
class _Judge:
    """Per prompt and prefix length: the predictor's squared error, every family's squared difference from it,
    and every paired difference of those (for the parsimony rule's SE); NaN and inf counted, not averaged (a
    family's are set to 0; the predictor's are only counted, since any of them makes [`fingerprint`][icl.fingerprint.fingerprint] raise)."""

    plan: _Plan

    def __call__(self, preds, prompts):
        target = _all_k(preds["predictor"], prompts, self.plan.with_prefix, predictor_name(preds["predictor"]))
        labels = jnp.concatenate([prompts.y, prompts.y_query[:, None]], axis=1)[:, -target.shape[1]:]
        sq = jnp.stack([(_preds(f, preds["theta"][f], prompts, preds["fixed"], self.plan) - target) ** 2
                        for f in self.plan.families], axis=1)  # [b, F, nk]
        bad = ~jnp.isfinite(sq)
        sq = jnp.where(bad, 0.0, sq)
        return {"bad": (~jnp.isfinite(target)).astype(sq.dtype), "sq_error": (target - labels) ** 2,
                "t2": target**2, "sq": sq, "bad_f": bad.astype(sq.dtype), "diff": sq[:, :, None] - sq[:, None]}


@pytree_dataclass
class _WithProbes:
    """The task's prompts and, per prompt, ``q`` probe inputs from its covariate law (its extra queries)."""

    task: object
    q: int = static_field()

    def sample(self, key, batch, n):
        p = self.task.sample(key, batch, n, num_queries=self.q)
        return p._replace(x_query=p.x_query[:, 0], y_query=p.y_query[:, 0]), p.x_query


def _probe(at, prompts: Prompts, probes, idx, with_prefix: bool, name: str = "family") -> jax.Array:
    """``[b, len(idx), Q]``: predictor ``at(i)`` (``i`` indexes ``ks``) queried at each probe point at the prefix
    lengths ``ks[idx]``. Full context: the query replaced by the probe. Prefix length ``k <= n``: ``x_k`` replaced
    and entry ``k - 1`` of ``prefix`` read, valid because it depends only on the first ``k - 1`` pairs and ``x_k``
    (docs/theory.md §10). ``lax.map`` over lengths, ``vmap`` over probes."""
    n, idx = prompts.x.shape[1], np.asarray(idx)
    pre, out = (idx[idx < n] if with_prefix else idx[:0]), []
    if pre.size:
        def at_prefix(j):
            return jax.vmap(lambda z: jnp.take(
                predict_prefix(name, at(j), prompts._replace(x=prompts.x.at[:, j].set(z))), j, axis=1), 1, 1)(probes)

        out.append(jnp.moveaxis(jax.lax.map(at_prefix, jnp.asarray(pre)), 0, 1))
    if pre.size < idx.size:
        out.append(jax.vmap(lambda z: predict(name, at(idx[-1]), prompts._replace(x_query=z)), 1, 1)(probes)[:, None])
    return jnp.concatenate(out, axis=1)


def _fit_linear(probes, values):
    """Least squares ``values ~ probes @ w + b`` per context and length (QR, [`icl.least_squares_weights`][icl.predictors.least_squares_weights]):
    probes ``[b, Q, d]``, values ``[b, P, Q]``; returns ``w [b, P, d]``, ``b [b, P]``, mean squared residual."""
    (b, q, d), p = probes.shape, values.shape[1]
    design = jnp.broadcast_to(jnp.concatenate([probes, jnp.ones_like(probes[..., :1])], -1)[:, None], (b, p, q, d + 1))
    coef = least_squares().weights(design.reshape(b * p, q, d + 1), values.reshape(b * p, q)).reshape(b, p, d + 1)
    resid = jnp.mean((values - jnp.einsum("bpqe,bpe->bpq", design, coef)) ** 2, axis=-1)
    return coef[..., :-1], coef[..., -1], resid


@dataclasses.dataclass(frozen=True)
class _Weights:
    """Per prompt: ``||w_A - w_f||^2`` of every family's implicit weights against the predictor's (at the
    positions ``idx`` of ``ks``), and the predictor's linearity residual with its mean squared prediction."""

    plan: _Plan
    idx: tuple

    def __call__(self, preds, sample):
        (prompts, probes), plan, fixed, theta = sample, self.plan, preds["fixed"], preds["theta"]
        probe_at = functools.partial(_probe, prompts=prompts, probes=probes, idx=self.idx, with_prefix=plan.with_prefix)
        values = probe_at(lambda i: preds["predictor"], name=predictor_name(preds["predictor"]))
        w_a, _, resid = _fit_linear(probes, values)

        def member(f, i):
            return fixed[f] if f in fixed else _family(f, jax.tree.map(lambda a: a[i], theta[f]), plan)

        ilwd = [jnp.sum((w_a - _fit_linear(probes, probe_at(functools.partial(member, f)))[0]) ** 2, axis=-1)
                for f in plan.families]
        return {"ilwd": jnp.stack(ilwd, axis=1), "resid": resid, "v2": jnp.mean(values**2, axis=-1)}


def implicit_weights(predictor, prompts: Prompts, probes, prefix: bool = True) -> dict[str, jax.Array]:
    """A predictor's implicit linear weights ``w_A(D)`` at every prefix length (docs/theory.md §11).

    With the context ``D`` (each prefix) held fixed, the predictor is queried at the probe points and
    ``x -> w^T x + b`` is fitted by least squares; the residual says how far from linear in ``x_q`` it is.

    Args:
      predictor: anything with ``predictor(prompts) -> [batch]`` (and a causal ``.prefix`` for ``prefix=True``).
      prompts: the contexts, ``[batch, n, d]``.
      probes: query points ``[batch, Q, d]`` with ``Q >= d + 1``.
      prefix: also every prefix length (needs ``predictor.prefix``); otherwise the full context only.
    Returns:
      ``{"w": [b, nk, d], "bias": [b, nk], "residual": [b, nk] (mean squared), "values": [b, nk, Q]}``.
    """
    probes, (b, n, d) = jnp.asarray(probes), prompts.x.shape
    if probes.ndim != 3 or probes.shape[0] != b or probes.shape[2] != d or probes.shape[1] < d + 1:
        raise ValueError(f"probes must have shape [batch, Q, d] = [{b}, Q, {d}] with Q >= d + 1 = {d + 1} points per "
                         f"context, got {probes.shape}")
    if prefix and not has_prefix(predictor):
        raise ValueError(f"predictor {predictor_name(predictor)} has no .prefix; pass prefix=False")
    idx = tuple(range(n + 1)) if prefix else (0,)
    values = jax.jit(lambda p, z: _probe(lambda i: predictor, p, z, idx, prefix))(prompts, probes)
    w, bias, resid = _fit_linear(probes, values)
    return {"w": w, "bias": bias, "residual": resid, "values": values}


# ----------------------------------------------------------------------------------------------------------
# the result


def _position(ks: np.ndarray, k: int, what: str) -> int:
    if k not in ks:
        raise ValueError(f"k must be one of the {what} {ks.tolist()}, got {k!r}")
    return int(np.argmax(ks == k))


def _per_d(name: str, doc: str) -> property:
    return property(lambda self: {f: v / self.d for f, v in getattr(self, name).items()}, doc=doc)


@dataclasses.dataclass
class Fingerprint:
    """What [`fingerprint`][icl.fingerprint.fingerprint] returns. Arrays over prefix lengths follow ``ks`` (docs/theory.md §10, §11).

    Attributes:
      ks: prefix lengths ``[nk]`` (Garg: ``k - 1`` pairs predict ``y_k``; ``k = n + 1`` is the full context).
      d, n: input dimension and context length.
      families: the candidate families, in parsimony order.
      spd, spd_se: ``{family: [nk]}`` SPD (mean squared prediction difference) at the hyper-parameters
        fitted at each prefix length, on prompts not used for fitting, and its standard error (NaN where the
        family returned NaN or inf, see ``nonfinite``).
      ilwd, ilwd_se: ``{family: [len(ilwd_ks)]}`` implicit linear weight difference ``E ||w_A - w_f||^2``.
      ilwd_ks: the prefix lengths at which ILWD was measured.
      linearity_residual, linearity_residual_se: ``[len(ilwd_ks)]`` mean squared residual of the predictor's
        implicit linear fit divided by the mean squared prediction (0 for a predictor linear in ``x_q``).
      fitted: ``{family: {name: value}}`` hyper-parameters fitted at the full context (the names of the
        family's predictor in [`icl.predictors`][icl.predictors]; ``gd``: ``eta`` and ``steps``).
      fitted_by_k: ``{family: {name: array [nk, ...]}}`` hyper-parameters fitted at every prefix length.
      best: the verdict at the full context (the parsimony choice), or None (see ``reason``);
      best_by_k: the same at every prefix length.
      fit_spd: ``{family: [nk]}`` SPD on the fitting prompts (what the fit minimised).
      num_prompts, num_fit_prompts, num_ilwd_prompts, num_queries: sample sizes used.
      task_noise_std: the task's noise level (for the Bayes ``lam = sigma^2 / tau^2`` comparison).
      spd_gap_se: ``{family: [nk]}`` standard error of ``SPD_f - SPD_min`` (paired on the same prompts; the
        SE the parsimony rule uses; 0 for the family with the smallest SPD at that length).
      atol: the practical-equivalence margin (SPD/d) the parsimony rule used.
      reason, reason_by_k: why there is no verdict (None where there is one).
      mse: ``[nk]`` the predictor's own mean squared error against the labels (``y_k``; ``y_q`` at ``n + 1``).
      relative_spd: ``[nk]`` the smallest SPD divided by ``mse``: the scale-free quality of the best fit.
      fit_tol: the largest ``relative_spd`` that allows a verdict.
      at_edge: ``{family: bool [nk]}`` fitted ``eta`` or ``lam`` at an edge of its grid (not a fit).
      nonfinite: ``{family: int [nk]}`` evaluation prompts on which the family returned NaN or inf.
    """

    ks: np.ndarray
    d: int
    n: int
    families: tuple
    spd: dict
    spd_se: dict
    ilwd: dict
    ilwd_se: dict
    ilwd_ks: np.ndarray
    linearity_residual: np.ndarray
    linearity_residual_se: np.ndarray
    fitted: dict
    fitted_by_k: dict
    best: str | None
    best_by_k: list
    fit_spd: dict
    num_prompts: int
    num_fit_prompts: int
    num_ilwd_prompts: int
    num_queries: int
    task_noise_std: float | None = None
    spd_gap_se: dict | None = None
    atol: float = ATOL
    reason: str | None = None
    reason_by_k: list | None = None
    mse: np.ndarray | None = None
    relative_spd: np.ndarray | None = None
    fit_tol: float = FIT_TOL
    at_edge: dict | None = None
    nonfinite: dict | None = None

    spd_per_d = _per_d("spd", "SPD divided by ``d`` (Akyürek's normalisation, docs/theory.md §7).")
    spd_per_d_se = _per_d("spd_se", "The standard error of ``spd_per_d``.")
    ilwd_per_d = _per_d("ilwd", "ILWD divided by ``d``.")
    ilwd_per_d_se = _per_d("ilwd_se", "The standard error of ``ilwd_per_d``.")

    def index(self, k: int) -> int:
        """Position of prefix length ``k`` in ``ks`` (ValueError naming ``k`` if it was not measured)."""
        return _position(self.ks, k, "measured prefix lengths")

    def ilwd_index(self, k: int) -> int:
        """Position of prefix length ``k`` in ``ilwd_ks``."""
        return _position(self.ilwd_ks, k, "ILWD prefix lengths")

    def predictor(self, family: str, k: int | None = None):
        """The library predictor of ``family`` at the hyper-parameters fitted at ``k`` (default: full context).

        ``bayes`` needs the task: use ``icl.bayes_posterior_mean(task)``.
        """
        if family not in self.families or family not in _MAKERS:
            raise ValueError(f"family must be one of {tuple(f for f in self.families if f in _MAKERS)} (bayes: use "
                             f"icl.bayes_posterior_mean(task)), got {family!r}")
        i = -1 if k is None else self.index(k)
        return _MAKERS[family](**{name: np.asarray(v)[i] for name, v in self.fitted_by_k[family].items()})

    def table(self, ks: Sequence[int] | None = None) -> str:
        """A plain-text table: per family, SPD/d +- SE at chosen prefix lengths and the fitted values."""
        ks = sorted({int(k) for k in (2, self.d, self.d + 1, self.ks[-1]) if k in self.ks}) if ks is None else ks
        cols = [self.index(k) for k in ks]
        head = f"{'family':<18}" + "".join(f"{'SPD/d k=' + str(k):>22}" for k in ks) + f"{'ILWD/d full':>20}  fitted"
        lines = [head, "-" * len(head)]
        full_ilwd = self.ilwd_ks.size and self.ilwd_ks[-1] == self.ks[-1]
        for f in self.families:
            row = f"{f + (' *' if f == self.best else ''):<18}"
            row += "".join(f"{self.spd[f][i] / self.d:>13.3e} ±{self.spd_se[f][i] / self.d:8.1e}" for i in cols)
            row += (f"{self.ilwd[f][-1] / self.d:>11.3e} ±{self.ilwd_se[f][-1] / self.d:7.1e}" if full_ilwd
                    else f"{'-':>20}")
            params = ", ".join(f"{p}={v:.4g}" if np.ndim(v) == 0 else f"{p}[{'x'.join(map(str, np.shape(v)))}]"
                               for p, v in self.fitted[f].items()) or "-"
            lines.append(f"{row}  {params}{' (at grid edge)' if self.at_edge and self.at_edge[f][-1] else ''}")
        margin = f", ties within max(SE, {self.atol:g} d)" if self.atol else ""
        verdict = self.best if self.best is not None else f"none ({self.reason})"
        return "\n".join(lines + [f"best (parsimony{margin}, full context): {verdict}"])

    def plot(self, metric: str = "spd", ax=None, families: Sequence[str] | None = None):
        """Akyürek-style curve: ``metric`` ("spd" or "ilwd") divided by d against the number of examples."""
        return plot_fingerprint(self, metric=metric, ax=ax, families=families)

    def to_dict(self) -> dict:
        """JSON-ready summary (numpy arrays as lists)."""

        def conv(v):
            if isinstance(v, (dict, list, tuple)):
                return {k: conv(x) for k, x in v.items()} if isinstance(v, dict) else [conv(x) for x in v]
            return np.asarray(v).tolist() if isinstance(v, (np.ndarray, jax.Array, np.generic)) else v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}


def plot_fingerprint(result: Fingerprint, metric: str = "spd", ax=None, families: Sequence[str] | None = None):
    """SPD/d (or ILWD/d) against the number of in-context examples, one line per family, SE bands, log scale.

    The style of Akyürek et al. 2023 (Fig. 3-4): x is the number of examples ``k - 1`` used by the
    prediction. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if metric not in ("spd", "ilwd"):
        raise ValueError(f"metric must be 'spd' or 'ilwd', got {metric!r}")
    fig, ax = plt.subplots(figsize=(5.5, 3.8)) if ax is None else (ax.figure, ax)
    values, ses, ks = (getattr(result, a) for a in (metric, metric + "_se", "ks" if metric == "spd" else "ilwd_ks"))
    for f in families or result.families:
        v, s, xs = np.asarray(values[f]) / result.d, np.asarray(ses[f]) / result.d, np.asarray(ks) - 1
        line, = ax.plot(xs, v, marker="o", ms=3, label=f + (" (best)" if f == result.best else ""))
        ax.fill_between(xs, np.maximum(v - s, 1e-12), v + s, color=line.get_color(), alpha=0.2)
    ax.set(yscale="log", xlabel="number of in-context examples", ylabel=f"{metric.upper()} / d")
    ax.axvline(result.d, color="grey", lw=0.7, ls=":")
    ax.legend(fontsize=7)
    return fig


# ----------------------------------------------------------------------------------------------------------
# fingerprint


def _check_finite(name: str, counts, total: int, where: str, ks) -> None:
    """ValueError with the counts per prefix length where the predictor returned NaN or inf on some prompts."""
    if np.any(counts):
        per_k = ", ".join(f"k={k}: {c}" for k, c in zip(ks, counts) if c)
        raise ValueError(f"predictor {name} returned NaN or inf on {int(np.max(counts))} of {total} {where} prompts "
                         f"({per_k}); a fingerprint needs finite predictions")


def _nest(families, mean, se, theta, fit_spd, max_steps: int, d: int) -> None:
    """On the evaluation prompts, replace (per length, in place) a richer family's fit that does no better than the
    simpler family it contains, or returns NaN or inf, by that family's fit (module docstring)."""
    chain = [f for f in ("gd", "preconditioned_gd", "gd_plus_plus") if f in families]
    for simple, rich in zip(chain, chain[1:]):
        i, j = families.index(simple), families.index(rich)
        worse = ~(mean["sq"][j] < mean["sq"][i]) | (mean["bad_f"][j] > 0)  # [nk]
        for stats in (mean, se):
            for name in ("sq", "bad_f", "diff"):
                stats[name][j] = np.where(worse, stats[name][i], stats[name][j])
            stats["diff"][:, j] = np.where(worse, stats["diff"][:, i], stats["diff"][:, j])
        theta[rich] = jax.device_get(_choose(worse, _lift(theta[simple], rich, max_steps, d), theta[rich]))
        fit_spd[rich] = np.where(worse, fit_spd[simple], fit_spd[rich])


def _verdict(k, spd, gap, low, mse, fp_tol, edge, nonfinite, families, margin, fit_tol, total):
    """``(best, reason)`` at one prefix length: the parsimony choice among finite, fitted families (``spd``, ``gap``,
    ``edge`` and ``nonfinite`` per family; ``low`` indexes the smallest finite SPD)."""
    if k == 1 or not np.isfinite(spd).any():
        return None, "k = 1: no context, every family predicts 0" if k == 1 else "every family returned NaN or inf"
    if spd[low] > max(fit_tol * mse, fp_tol):
        return None, (f"no family fits: the closest, {families[low]}, has SPD "
                      f"{spd[low] / mse if mse > 0 else np.inf:.3g} times the predictor's own MSE "
                      f"(fit_tol {fit_tol:g})")
    for f, s, g, e, c in zip(families, spd, gap, edge, nonfinite):
        if e or c:
            why = f"{_GRIDS[f][0]} at the edge of its grid" if e else f"NaN or inf on {c} of {total} prompts"
            return None, f"{f} cannot be judged: {why}"
        if s - spd[low] <= max(g, margin) + fp_tol:
            return f, None


def fingerprint(predictor, task, key: jax.Array, n: int, candidates: Sequence[str] | None = None,
                num_prompts: int = 2048, num_queries: int | None = None, *, num_fit_prompts: int | None = None,
                num_ilwd_prompts: int = 128, ilwd_ks: Sequence[int] | None = None, max_steps: int = 3,
                lbfgs_iters: int = 60, atol: float = ATOL, fit_tol: float = FIT_TOL,
                progress: bool = False) -> Fingerprint:
    """Fit every candidate family to ``predictor``, report SPD and ILWD at every prefix length, and a verdict.

    Akyürek et al. 2023 (docs/theory.md §11): SPD ``E (A(D)(x) - B(D)(x))^2`` and ILWD ``E ||w_A - w_B||^2``
    between the predictor and each family, raw and per ``d``, with standard errors over prompts.
    Hyper-parameters are fitted on ``num_fit_prompts`` prompts; SPD and the verdict come from ``num_prompts``
    fresh ones and ILWD from ``num_ilwd_prompts`` others, with ``num_queries`` probe points per context
    ([`icl.evaluate.monte_carlo`][icl.evaluate.monte_carlo]). The module docstring states the rules of the verdict.

    Args:
      predictor: a model or algorithm, ``predictor(prompts) -> [batch]`` (or ``(mean, var)``). With a causal
        ``.prefix`` (Garg's convention) every prefix length ``k = 1..n+1`` is measured, else only ``k = n+1``.
      task: the task whose prompts are used (``.d``, ``.sample``; ``w_cov`` and ``noise_std`` for ``bayes``).
      key: PRNG key. n: context length (>= 1).
      candidates: families to fit (subset of ``FAMILIES``); default all that apply to the task
        (``bayes`` needs a Gaussian prior ``w_cov`` and ``noise_std``).
      num_prompts: evaluation prompts (>= 2; rounded up to whole chunks of 256). num_queries: probe points per
        context for ILWD (>= d + 1; default ``2 (d + 1)``).
      num_fit_prompts: fitting prompts (>= 4; default ``min(num_prompts, 1024)``).
      num_ilwd_prompts: contexts for ILWD (0, or 2 to ``num_prompts``; 0 skips ILWD; rounded up to whole
        chunks of 128).
      ilwd_ks: prefix lengths for ILWD (default every measured one); each costs ``num_queries`` calls of
        ``predictor.prefix`` per context.
      max_steps: largest ``K`` for GD (fitted over ``1..max_steps``) and the number of steps of
        preconditioned GD and GD++ (which nest: a zero last step is one step fewer).
      lbfgs_iters: L-BFGS iterations for preconditioned GD and GD++ (0: keep the GD start).
      atol: practical-equivalence margin of the parsimony rule, in SPD/d (>= 0, finite; default ``ATOL``):
        a family ties the best when ``SPD_f - SPD_min <= max(paired SE, atol * d)``.
      fit_tol: the largest SPD of the best family, relative to the predictor's own mean squared error, that
        still gives a verdict (>= 0; default ``FIT_TOL``).
      progress: show a progress bar on stderr, moved from Python between compiled calls: one step for the fit
        (every family and prefix length in one compiled program), then one per chunk of evaluation prompts (256)
        and of ILWD contexts (128); the current stage is shown after the bar.
    Returns:
      A [`Fingerprint`][icl.fingerprint.Fingerprint].
    Raises:
      ValueError: bad arguments, a predictor output of the wrong shape, or NaN or inf in the predictor's output
        (with counts per prefix length).
    """
    if not callable(predictor):
        raise ValueError(f"predictor must be callable (prompts -> [batch]), got {type(predictor).__name__}")
    if not callable(getattr(task, "sample", None)) or not hasattr(task, "d"):
        raise ValueError(f"task must have .d and .sample(key, batch, n), got {type(task).__name__}")
    d, n, num_prompts = int(task.d), check_int("n", n, 1), check_int("num_prompts", num_prompts, 2)
    num_fit = check_int("num_fit_prompts", min(num_prompts, 1024) if num_fit_prompts is None else num_fit_prompts, 4)
    num_ilwd = check_int("num_ilwd_prompts", num_ilwd_prompts, 0)
    if num_ilwd == 1 or num_ilwd > num_prompts:
        raise ValueError(f"num_ilwd_prompts must be 0 or in [2, num_prompts={num_prompts}], got {num_ilwd}")
    q = check_int("num_queries", 2 * (d + 1) if num_queries is None else num_queries, d + 1)
    max_steps, lbfgs_iters = check_int("max_steps", max_steps, 1), check_int("lbfgs_iters", lbfgs_iters, 0)
    atol, fit_tol = check_non_negative("atol", atol), check_non_negative("fit_tol", fit_tol)
    prior = getattr(task, "w_cov", None) is not None and getattr(task, "noise_std", None) is not None
    candidates = [f for f in FAMILIES if f != "bayes" or prior] if candidates is None else \
        [candidates] if isinstance(candidates, str) else list(candidates)
    if not candidates or any(c not in FAMILIES for c in candidates):
        raise ValueError(f"candidates must be a non-empty subset of {FAMILIES}, got {candidates!r}")
    if "bayes" in candidates and not prior:
        raise ValueError("candidates: 'bayes' needs a task with a Gaussian prior (w_cov) and noise_std")
    families = tuple(f for f in FAMILIES if f in candidates)
    with_prefix, name = has_prefix(predictor), predictor_name(predictor)
    ks = np.arange(1, n + 2) if with_prefix else np.array([n + 1])
    ilwd_ks = ks if ilwd_ks is None else np.asarray(sorted({int(k) for k in ilwd_ks}), dtype=int)
    if ilwd_ks.size == 0 or not np.all(np.isin(ilwd_ks, ks)):
        raise ValueError(f"ilwd_ks must be a non-empty subset of the measured prefix lengths {ks.tolist()}, got "
                         f"{ilwd_ks.tolist()!r}")
    ilwd_ks = ilwd_ks if num_ilwd else np.zeros(0, int)
    plan = _Plan(families, with_prefix, max_steps, lbfgs_iters, tuple(v for v in _NEIGHBORS if v <= n))
    fixed = {f: bayes_posterior_mean(task) if f == "bayes" else _MAKERS[f]() for f in families if f in FAMILIES[:3]}
    k_fit, k_eval, k_ilwd = jax.random.split(key, 3)
    stages = 1 + -(-num_prompts // 256) + (-(-num_ilwd // 128) if ilwd_ks.size else 0)  # fit, then chunks
    with progress_bar(progress, stages, "fingerprint", unit="step") as bar:
        bar.set_postfix_str(f"fit {len(families)} families x {ks.size} prefix lengths")
        fit_prompts = task.sample(k_fit, num_fit, n)
        target = _all_k(predictor, fit_prompts, with_prefix, name)
        _check_finite(name, np.sum(~np.isfinite(np.asarray(target)), axis=0), num_fit, "fitting", ks)
        theta, at_edge, fit_spd = jax.device_get(_fit(fit_prompts, target, fixed, plan=plan))
        args = {"predictor": predictor, "theta": theta, "fixed": fixed}
        bar.set_postfix_str("SPD on fresh prompts", refresh=False)
        bar.update(1)
        shared = bar if progress else False  # the chunks of both evaluations advance this one bar
        res = monte_carlo(_Judge(plan), args, task, k_eval, n, num_prompts, chunk_size=256, progress=shared)
        mean, se, total = res.mean, res.se, res.num_prompts
        _check_finite(name, np.rint(mean["bad"] * total).astype(int), total, "evaluation", ks)
        _nest(families, mean, se, theta, fit_spd, max_steps, d)  # before ILWD: it changes theta, which args holds
        empty = {"ilwd": np.zeros((len(families), 0)), "resid": np.zeros(0), "v2": np.zeros(0)}
        if ilwd_ks.size:
            bar.set_postfix_str("ILWD", refresh=False)
        w = monte_carlo(_Weights(plan, tuple(int(i) for i in np.searchsorted(ks, ilwd_ks))), args,
                        _WithProbes(task, q), k_ilwd, n, num_ilwd, chunk_size=128, progress=shared) \
            if ilwd_ks.size else MonteCarlo(empty, empty, 0)
    nonfinite = np.rint(mean["bad_f"] * total).astype(int)  # [F, nk], like every array below
    spd, spd_se = (np.where(nonfinite > 0, np.nan, stats["sq"]) for stats in (mean, se))
    fp_tol = 10.0 * float(jnp.finfo(fit_prompts.x.dtype).eps) * mean["t2"]  # [nk]: exact up to rounding
    low, cols = np.argmin(np.where(np.isfinite(spd), spd, np.inf), axis=0), np.arange(ks.size)  # 0 if none finite
    gap_se, best_spd, edges = se["diff"][:, low, cols], spd[low, cols], np.stack([at_edge[f] for f in families])
    relative = np.where(mean["sq_error"] > 0, best_spd / np.maximum(mean["sq_error"], 1e-300),
                        np.where(best_spd > 0, np.inf, 0.0))
    columns = zip(ks, spd.T, gap_se.T, low, mean["sq_error"], fp_tol, edges.T, nonfinite.T)
    best_by_k, reason_by_k = map(list, zip(*(_verdict(*c, families, atol * d, fit_tol, total) for c in columns)))
    denom = np.maximum(w.mean["v2"], np.finfo(np.float64).tiny)
    fitted_by_k = {f: theta[f] for f in families}  # in family order (jit returns its dictionaries sorted by key)
    return Fingerprint(
        ks=ks, d=d, n=n, families=families, spd=dict(zip(families, spd)), spd_se=dict(zip(families, spd_se)),
        ilwd=dict(zip(families, w.mean["ilwd"])), ilwd_se=dict(zip(families, w.se["ilwd"])), ilwd_ks=ilwd_ks,
        linearity_residual=w.mean["resid"] / denom, linearity_residual_se=w.se["resid"] / denom,
        fitted={f: {p: v[-1].item() if v.ndim == 1 else v[-1] for p, v in fitted_by_k[f].items()} for f in families},
        fitted_by_k=fitted_by_k, best=best_by_k[-1], best_by_k=best_by_k, num_prompts=total, num_fit_prompts=num_fit,
        fit_spd={f: np.asarray(v, np.float64) for f, v in fit_spd.items()}, num_ilwd_prompts=w.num_prompts,
        num_queries=q, task_noise_std=float(task.noise_std) if prior else None, spd_gap_se=dict(zip(families, gap_se)),
        atol=atol, reason=reason_by_k[-1], reason_by_k=reason_by_k, mse=mean["sq_error"], relative_spd=relative,
        fit_tol=fit_tol, at_edge=at_edge, nonfinite=dict(zip(families, nonfinite)))
