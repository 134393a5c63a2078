"""Which algorithm does a predictor run? Fingerprints against GD, ridge, least squares, Bayes (Akyürek et al. 2023).

:func:`fingerprint` fits, for each candidate family of learning algorithms, the family's hyper-parameters to a
predictor (a trained model or another algorithm) by minimising the squared prediction difference (SPD) on one
set of prompts, then reports SPD and the implicit linear weight difference (ILWD) with standard errors on a
fresh set, at every prefix length (docs/theory.md §10, §11). :func:`probe` fits Akyürek's linear probes from
each layer's hidden states to ``w``, ``X^T y`` and ``X^T X`` (their §5).

Prefix convention (Garg's, docs/theory.md §10): at prefix length ``k = 1..n`` the prediction of ``y_k`` from
``x_k`` and the first ``k - 1`` pairs (``predictor.prefix(prompts)[:, k-1]``); ``k = n + 1`` is the full
context, the prediction at the query (``predictor(prompts)``). Arrays over prefix lengths run over
``ks = 1..n+1`` (``ks = [n+1]`` only for a predictor without ``.prefix``).

The families, as maps from the context statistics of the first ``m = k - 1`` pairs,
``S = sum x_i x_i^T`` and ``r = sum y_i x_i``, to a weight vector ``w`` (prediction ``x^T w``):

==================  ================================================  ===================================
family              weights                                           fitted hyper-parameters
==================  ================================================  ===================================
averaging           ``r / m`` (Garg)                                  none
bayes               ``(S + sigma^2 Omega^{-1})^{-1} r`` (§7)          none (the task's prior and noise)
least_squares       ``S^+ r`` (minimum norm)                          none
gd                  ``K`` steps ``w <- w + eta (r - S w)/m`` from 0   ``eta`` (log-space), ``steps`` K
ridge               ``(S + lam I)^{-1} r``                            ``lam`` (log-space)
preconditioned_gd   ``K`` steps ``w <- w + A_t (r - S w)/m``           ``A`` ``[K, d, d]`` (step folded in)
gd_plus_plus        preconditioned GD whose inputs (context and        ``A`` ``[K, d, d]``, ``gamma`` ``[K]``
                    query) also move, ``x <- (I - gamma_t S/m) x``
                    after each step (von Oswald et al. 2023, GD++)
knn                 mean label of the ``neighbors`` nearest inputs     ``neighbors``
==================  ================================================  ===================================

The families nest (averaging is GD at ``eta = 1``, ``K = 1``; Bayes is ridge at ``lam = sigma^2/tau^2``; least
squares is ridge as ``lam -> 0``; GD lies inside preconditioned GD, inside GD++), so the best match follows a
parsimony rule: the first family, in the order of :data:`FAMILIES`, whose SPD is within one standard error of
the smallest (docs/theory.md §11). The standard error is that of the difference ``SPD_f - SPD_min``, paired on
the same prompts (``spd_gap_se``): the question is whether the two means differ, and the squared differences of
nested families on one prompt are strongly correlated, so neither family's own SE measures the noise in the gap.
With many prompts the paired SE detects any nonzero difference, so ``atol`` (SPD/d) lets the caller say how small
a difference still counts as a tie: ``SPD_f - SPD_min <= max(SE, atol d)``.

Hyper-parameters are fitted separately at every prefix length, all lengths in one compiled program: the
families are written on the cumulative statistics ``(S, r)`` of every prefix, so each length can carry its own
hyper-parameters at the cost of one evaluation. Scalars (``eta``, ``lam``) are fitted by a grid in log space
evaluated inside one ``jit`` (``lax.map`` over grid points) and refined by golden-section search per prefix
length; matrices (preconditioned GD, GD++) by L-BFGS (optax) started at the fitted GD, keeping the start where
L-BFGS does not improve on it (so the nesting holds for the fits too). Fitted predictors can be turned into the
library's own (shared-hyper-parameter) predictors with :meth:`Fingerprint.predictor`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl.evaluate import _ById  # one identity-hashed static wrapper for jit arguments
from icl.linalg import spd_solve
from icl.tasks import Prompts, check_non_negative

__all__ = [
    "FAMILIES",
    "Fingerprint",
    "fingerprint",
    "implicit_weights",
    "ProbeResult",
    "probe",
    "hidden_states",
    "plot_fingerprint",
]

FAMILIES = (
    "averaging",
    "bayes",
    "least_squares",
    "gd",
    "ridge",
    "preconditioned_gd",
    "gd_plus_plus",
    "knn",
)
"""Candidate families, simplest first: the order of the parsimony rule (docs/theory.md §11)."""

_NEIGHBORS = (1, 2, 3, 5, 8)


# ----------------------------------------------------------------------------------------------------------
# validation helpers


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _predictor_name(predictor) -> str:
    return getattr(predictor, "__name__", type(predictor).__name__)


def _mean_of(out):
    """The mean of a mean-and-variance predictor's output, the output itself otherwise."""
    if isinstance(out, tuple):
        return out[0]
    return out


# ----------------------------------------------------------------------------------------------------------
# the predictor under test: predictions at every prefix length and its implicit weights


def _has_prefix(predictor) -> bool:
    return callable(getattr(predictor, "prefix", None))


def _predictions(predictor, prompts: Prompts, with_prefix: bool) -> jax.Array:
    """``[batch, nk]``: the prefix predictions (Garg) then the full-context prediction."""
    full = _mean_of(predictor(prompts))[:, None]
    if not with_prefix:
        return full
    return jnp.concatenate([_mean_of(predictor.prefix(prompts)), full], axis=1)


def _fit_linear(probes: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Least-squares fit ``values ~ probes @ w + b`` per context and prefix length.

    probes ``[b, Q, d]``, values ``[b, nk, Q]``; returns ``w [b, nk, d]``, ``b [b, nk]`` and the mean squared
    residual ``[b, nk]``.
    """
    design = jnp.concatenate([probes, jnp.ones_like(probes[..., :1])], axis=-1)  # [b, Q, d+1], full column rank
    gram = jnp.einsum("bqi,bqj->bij", design, design)
    rhs = jnp.einsum("bqp,bkq->bpk", design, values)  # [b, d+1, nk]
    coef = jnp.swapaxes(spd_solve(gram, rhs), -1, -2)  # normal equations, pure JAX (no batched LAPACK)
    fitted = jnp.einsum("bqp,bkp->bkq", design, coef)
    resid = jnp.mean((values - fitted) ** 2, axis=-1)
    return coef[..., :-1], coef[..., -1], resid


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
    probes = jnp.asarray(probes)
    if probes.ndim != 3 or probes.shape[0] != prompts.batch or probes.shape[2] != prompts.d:
        raise ValueError(f"probes must have shape [batch, Q, d] = [{prompts.batch}, Q, {prompts.d}], got {probes.shape}")
    if probes.shape[1] < prompts.d + 1:
        raise ValueError(f"probes must hold Q >= d + 1 = {prompts.d + 1} points per context, got Q = {probes.shape[1]}")
    if prefix and not _has_prefix(predictor):
        raise ValueError(f"predictor {_predictor_name(predictor)} has no .prefix; pass prefix=False")
    idx = np.arange(prompts.n + 1) if prefix else np.array([prompts.n])
    values = _probe_values(predictor, prompts, probes, prefix, idx)
    w, b, resid = _fit_linear(probes, values)
    return {"w": w, "bias": b, "residual": resid, "values": values}


# ----------------------------------------------------------------------------------------------------------
# the candidate families on cumulative statistics (every prefix length at once, per-length hyper-parameters)


def _stats(x: jax.Array, y: jax.Array, x_query: jax.Array):
    """Cumulative statistics of the first ``m = 0..n`` pairs and the matching query inputs.

    Returns ``S [b, n+1, d, d]``, ``r [b, n+1, d]``, ``m [n+1]`` and ``xq [b, n+1, d]`` (``x_{m+1}``, then ``x_q``).
    """
    b, n, d = x.shape
    zero_s = jnp.zeros((b, 1, d, d), x.dtype)
    s = jnp.concatenate([zero_s, jnp.cumsum(x[..., :, None] * x[..., None, :], axis=1)], axis=1)
    r = jnp.concatenate([jnp.zeros((b, 1, d), x.dtype), jnp.cumsum(y[..., None] * x, axis=1)], axis=1)
    m = jnp.arange(n + 1, dtype=x.dtype)
    xq = jnp.concatenate([x, x_query[:, None, :]], axis=1)
    return s, r, m, xq


def _per_m(m):
    return jnp.maximum(m, 1.0)


def _w_averaging(s, r, m):
    return r / _per_m(m)[:, None]


def _psd_min_norm_solve(s, r, refinements: int = 4):
    """Minimum-norm solution ``S^+ r`` of ``S w = r`` for PSD ``S [..., d, d]`` and ``r`` in its range.

    Iterative refinement on ``S + eps I`` (``eps`` = 1e-6 of the mean eigenvalue): each step multiplies the
    error along an eigenvalue ``lambda`` by ``eps / (lambda + eps)`` and never leaves the range of ``S``, so the
    null-space part stays 0 (the minimum-norm answer). Pure JAX: jaxlib's batched LAPACK (``pinv``/``eigh``)
    deadlocked on this 2-core CPU (see icl/linalg.py).
    """
    d = s.shape[-1]
    eye = jnp.eye(d, dtype=s.dtype)
    scale = jnp.trace(s, axis1=-2, axis2=-1) / d
    eps = jnp.where(scale > 0, 1e-6 * scale, 1.0)  # S = 0 (no context): r = 0 and w = 0
    reg = s + eps[..., None, None] * eye
    w = jnp.zeros_like(r)
    for _ in range(refinements):
        w = w + spd_solve(reg, r - jnp.einsum("...ij,...j->...i", s, w))
    return w


def _w_least_squares(s, r, m):
    return _psd_min_norm_solve(s, r)


def _w_ridge(s, r, m, lam):
    d = s.shape[-1]
    eye = jnp.eye(d, dtype=s.dtype)
    return spd_solve(s + lam[:, None, None] * eye, r)


def _w_bayes(s, r, m, omega, sigma):
    omega = np.asarray(omega, np.float64)
    if sigma > 0:
        reg = jnp.asarray(sigma**2 * np.linalg.inv(omega), s.dtype)
        return spd_solve(s + reg, r)
    evals, evecs = np.linalg.eigh(omega)
    root = jnp.asarray((evecs * np.sqrt(evals)) @ evecs.T, s.dtype)  # Omega^{1/2}
    v = _psd_min_norm_solve(root @ s @ root, jnp.einsum("ij,bkj->bki", root, r))
    return jnp.einsum("ij,bkj->bki", root, v)


def _w_gd(s, r, m, eta, steps: int):
    sb, rb = s / _per_m(m)[:, None, None], r / _per_m(m)[:, None]
    w = jnp.zeros_like(r)
    for _ in range(steps):  # K is a small static number of steps
        w = w + eta[:, None] * (rb - jnp.einsum("bkij,bkj->bki", sb, w))
    return w


def _w_gd_plus_plus(s, r, m, a, gamma=None):
    """GD++ (preconditioned): ``a [nk, K, d, d]``, ``gamma [nk, K]`` (None: preconditioned GD).

    Each step ``dw = A_t r_bar`` (``r_bar`` = mean of residual * x, i.e. ``-grad``), then inputs move by
    ``T = I - gamma_t S_bar``: ``S_bar <- T S_bar T^T``, ``r_bar <- T (r_bar - S_bar dw)``; the query moves by
    ``T`` too, so the implicit weight on the original query accumulates ``C^T dw`` with ``C = T_{t-1}...T_1``.
    """
    d = s.shape[-1]
    sb, rb = s / _per_m(m)[:, None, None], r / _per_m(m)[:, None]
    w = jnp.zeros_like(r)
    eye = jnp.eye(d, dtype=s.dtype)
    c = None
    for t in range(a.shape[1]):
        dw = jnp.einsum("kij,bkj->bki", a[:, t], rb)
        w = w + (dw if c is None else jnp.einsum("bkji,bkj->bki", c, dw))
        rb = rb - jnp.einsum("bkij,bkj->bki", sb, dw)
        if gamma is not None:
            tr = eye - gamma[:, t, None, None] * sb  # [b, nk, d, d]
            rb = jnp.einsum("bkij,bkj->bki", tr, rb)
            sb = jnp.einsum("bkij,bkjl,bkml->bkim", tr, sb, tr)
            c = tr if c is None else jnp.einsum("bkij,bkjl->bkil", tr, c)
    return w


def _knn_all(x, y, queries, m_max, options):
    """k-NN at ``queries [b, J, Q, d]`` from the first ``m_max[j]`` pairs, for every number of neighbours in
    ``options``: ``[len(options), b, J, Q]`` (mean label of the nearest available pairs; 0 with no pairs)."""
    n = x.shape[1]
    dist = jnp.sum((queries[..., None, :] - x[:, None, None, :, :]) ** 2, axis=-1)  # [b, J, Q, n]
    valid = jnp.arange(n)[None, :] < m_max[:, None]  # [J, n]
    dist = jnp.where(valid[None, :, None, :], dist, jnp.inf)
    kk = min(max(options), n)
    neg, idx = jax.lax.top_k(-dist, kk)  # nearest first
    ys = jnp.take_along_axis(jnp.broadcast_to(y[:, None, None, :], dist.shape), idx, axis=-1)
    ok = jnp.isfinite(neg)
    ys = jnp.where(ok, ys, 0.0)
    out = []
    for v in options:
        v = min(v, kk)
        count = jnp.sum(ok[..., :v], axis=-1)
        out.append(jnp.sum(ys[..., :v], axis=-1) / jnp.maximum(count, 1))
    return jnp.stack(out)


def _pred(w, xq):
    return jnp.einsum("bkd,bkd->bk", w, xq)


# ----------------------------------------------------------------------------------------------------------
# fitting


def _spd(target, pred):
    """Mean squared difference over prompts per prefix length: ``[nk]``."""
    return jnp.mean((target - pred) ** 2, axis=0)


def _golden(loss_fn, lo, hi, iters: int):
    """Golden-section search per prefix length in log space: ``lo, hi [nk]`` (logs); returns log-argmin."""
    g = (math.sqrt(5.0) - 1.0) / 2.0

    def body(_, carry):
        a, b, c, fc, e, fe = carry  # a < c < e < b; c, e interior points
        left = fc <= fe
        a2 = jnp.where(left, a, c)
        b2 = jnp.where(left, e, b)
        c_new = b2 - g * (b2 - a2)
        e_new = a2 + g * (b2 - a2)
        # reuse one of the old interior points: left -> new e = old c, right -> new c = old e
        probe = jnp.where(left, c_new, e_new)
        fp = loss_fn(jnp.exp(probe))
        c2 = jnp.where(left, c_new, e)
        fc2 = jnp.where(left, fp, fe)
        e2 = jnp.where(left, c, e_new)
        fe2 = jnp.where(left, fc, fp)
        return a2, b2, c2, fc2, e2, fe2

    c = hi - g * (hi - lo)
    e = lo + g * (hi - lo)
    carry = (lo, hi, c, loss_fn(jnp.exp(c)), e, loss_fn(jnp.exp(e)))
    a, b, c, fc, e, fe = jax.lax.fori_loop(0, iters, body, carry)
    return jnp.where(fc <= fe, c, e), jnp.minimum(fc, fe)


def _fit_scalar(loss_fn, lo, hi, nk: int, dtype, grid: int = 48, iters: int = 40):
    """Per-prefix-length minimiser of ``loss_fn(theta [nk]) -> [nk]`` over ``[lo, hi]`` in log space.

    A grid of ``grid`` log-spaced values (``lax.map``, shared by all lengths), then golden-section search per
    length between the grid neighbours of its best point (``iters`` steps shrink the bracket by 0.618 each).
    """
    logs = jnp.linspace(jnp.log(lo), jnp.log(hi), grid).astype(dtype)
    losses = jax.lax.map(lambda t: loss_fn(jnp.full((nk,), jnp.exp(t), dtype)), logs)  # [G, nk]
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    i = jnp.argmin(losses, axis=0)
    left = logs[jnp.maximum(i - 1, 0)]
    right = logs[jnp.minimum(i + 1, grid - 1)]
    best_log, best_loss = _golden(loss_fn, left, right, iters)
    grid_loss = losses[i, jnp.arange(nk)]
    use_grid = ~(best_loss <= grid_loss)
    best_log = jnp.where(use_grid, logs[i], best_log)
    best_loss = jnp.where(use_grid, grid_loss, best_loss)
    return jnp.exp(best_log), best_loss


def _lbfgs(loss_fn, params, iters: int):
    """Minimise a scalar ``loss_fn(params)`` with optax L-BFGS inside one ``lax.scan``."""
    import optax

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_fn)

    def step(carry, _):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss_fn)
        return (optax.apply_updates(p, updates), state), value

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=iters)
    return params


# ----------------------------------------------------------------------------------------------------------
# the result


@dataclasses.dataclass
class Fingerprint:
    """What :func:`fingerprint` returns. Arrays over prefix lengths follow ``ks`` (docs/theory.md §10, §11).

    Attributes:
      ks: prefix lengths ``[nk]`` (Garg: ``k - 1`` pairs predict ``y_k``; ``k = n + 1`` is the full context).
      d, n: input dimension and context length.
      families: the candidate families, in parsimony order.
      spd, spd_se: ``{family: [nk]}`` SPD (mean squared prediction difference) at the hyper-parameters
        fitted at each prefix length, on prompts not used for fitting, and its standard error.
      ilwd, ilwd_se: ``{family: [len(ilwd_ks)]}`` implicit linear weight difference ``E ||w_A - w_f||^2``.
      ilwd_ks: the prefix lengths at which ILWD was measured.
      linearity_residual, linearity_residual_se: ``[len(ilwd_ks)]`` mean squared residual of the predictor's
        implicit linear fit divided by the mean squared prediction (0 for a predictor linear in ``x_q``).
      fitted: ``{family: {name: value}}`` hyper-parameters fitted at the full context.
      fitted_by_k: ``{family: {name: array [nk, ...]}}`` hyper-parameters fitted at every prefix length.
      best: the parsimony choice at the full context; best_by_k: the same at every prefix length.
      spd_gap_se: ``{family: [nk]}`` standard error of ``SPD_f - SPD_min`` (paired on the same prompts; the
        SE the parsimony rule uses; 0 for the family with the smallest SPD at that length).
      atol: the practical-equivalence margin (SPD/d) the parsimony rule used (0: one paired SE only).
      fit_spd: ``{family: [nk]}`` SPD on the fitting prompts (what the fit minimised).
      num_prompts, num_fit_prompts, num_ilwd_prompts, num_queries: sample sizes used.
      task_noise_std: the task's noise level (for the Bayes ``lam = sigma^2 / tau^2`` comparison).
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
    best: str
    best_by_k: list
    fit_spd: dict
    num_prompts: int
    num_fit_prompts: int
    num_ilwd_prompts: int
    num_queries: int
    task_noise_std: float | None = None
    spd_gap_se: dict | None = None
    atol: float = 0.0

    @property
    def spd_per_d(self) -> dict:
        """SPD divided by ``d`` (Akyürek's normalisation, docs/theory.md §7)."""
        return {f: v / self.d for f, v in self.spd.items()}

    @property
    def spd_per_d_se(self) -> dict:
        return {f: v / self.d for f, v in self.spd_se.items()}

    @property
    def ilwd_per_d(self) -> dict:
        """ILWD divided by ``d``."""
        return {f: v / self.d for f, v in self.ilwd.items()}

    @property
    def ilwd_per_d_se(self) -> dict:
        return {f: v / self.d for f, v in self.ilwd_se.items()}

    def index(self, k: int) -> int:
        """Position of prefix length ``k`` in ``ks`` (ValueError naming ``k`` if it was not measured)."""
        hits = np.flatnonzero(self.ks == k)
        if hits.size == 0:
            raise ValueError(f"k must be one of the measured prefix lengths {self.ks.tolist()}, got {k!r}")
        return int(hits[0])

    def ilwd_index(self, k: int) -> int:
        """Position of prefix length ``k`` in ``ilwd_ks``."""
        hits = np.flatnonzero(self.ilwd_ks == k)
        if hits.size == 0:
            raise ValueError(f"k must be one of the ILWD prefix lengths {self.ilwd_ks.tolist()}, got {k!r}")
        return int(hits[0])

    def predictor(self, family: str, k: int | None = None):
        """The library predictor of ``family`` at the hyper-parameters fitted at ``k`` (default: full context).

        Returns ``icl`` predictors (``gradient_descent``, ``ridge``, ...). ``knn`` and ``gd_plus_plus`` need
        ``icl.predictors`` (knn, gd_plus_plus); ``bayes`` needs the task, so use ``icl.bayes_posterior_mean(task)``.
        """
        import icl

        if family not in self.families:
            raise ValueError(f"family must be one of {self.families}, got {family!r}")
        i = -1 if k is None else self.index(k)
        p = {name: np.asarray(v)[i] for name, v in self.fitted_by_k[family].items()}
        if family == "averaging":
            return icl.averaging()
        if family == "least_squares":
            return icl.least_squares()
        if family == "ridge":
            return icl.ridge(float(p["lam"]))
        if family == "gd":
            return icl.gradient_descent(np.full(int(p["steps"]), float(p["eta"])))
        if family == "preconditioned_gd":
            return icl.gradient_descent(np.ones(p["A"].shape[0]), preconditioner=np.asarray(p["A"]))
        if family == "knn":
            return icl.knn(int(p["neighbors"]))
        if family == "gd_plus_plus" and hasattr(icl, "gd_plus_plus"):
            raise ValueError("gd_plus_plus with matrix steps has no library predictor; read fitted_by_k instead")
        raise ValueError(f"family {family!r} has no library predictor here (bayes: use icl.bayes_posterior_mean(task))")

    def table(self, ks: Sequence[int] | None = None) -> str:
        """A plain-text table: per family, SPD/d +- SE at chosen prefix lengths and the fitted values."""
        if ks is None:
            ks = sorted({int(k) for k in (2, self.d, self.d + 1, self.ks[-1]) if k in set(self.ks.tolist())})
        cols = [self.index(k) for k in ks]
        head = f"{'family':<18}" + "".join(f"{'SPD/d k=' + str(k):>22}" for k in ks) + f"{'ILWD/d full':>20}  fitted (full context)"
        lines = [head, "-" * len(head)]
        for f in self.families:
            row = f"{f + (' *' if f == self.best else ''):<18}"
            for i in cols:
                row += f"{self.spd[f][i] / self.d:>13.3e} ±{self.spd_se[f][i] / self.d:8.1e}"
            if self.ilwd_ks.size and self.ilwd_ks[-1] == self.ks[-1]:
                row += f"{self.ilwd[f][-1] / self.d:>11.3e} ±{self.ilwd_se[f][-1] / self.d:7.1e}"
            else:
                row += f"{'-':>20}"
            row += "  " + _format_params(self.fitted[f])
            lines.append(row)
        margin = f", ties within max(SE, {self.atol:g} d)" if self.atol else ""
        lines.append(f"best (parsimony{margin}, full context): {self.best}")
        return "\n".join(lines)

    def plot(self, metric: str = "spd", ax=None, families: Sequence[str] | None = None):
        """Akyürek-style curve: ``metric`` ("spd" or "ilwd") divided by d against the number of examples."""
        return plot_fingerprint(self, metric=metric, ax=ax, families=families)

    def to_dict(self) -> dict:
        """JSON-ready summary (numpy arrays as lists)."""

        def conv(v):
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, (np.ndarray, jax.Array)):
                return np.asarray(v).tolist()
            if isinstance(v, (np.floating, np.integer)):
                return v.item()
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            return v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _format_params(params: dict) -> str:
    parts = []
    for name, v in params.items():
        a = np.asarray(v)
        if a.ndim == 0:
            parts.append(f"{name}={a.item():.4g}" if a.dtype.kind == "f" else f"{name}={a.item()}")
        else:
            parts.append(f"{name}[{'x'.join(map(str, a.shape))}]")
    return ", ".join(parts) if parts else "-"


def plot_fingerprint(result: Fingerprint, metric: str = "spd", ax=None, families: Sequence[str] | None = None):
    """SPD/d (or ILWD/d) against the number of in-context examples, one line per family, SE bands, log scale.

    The style of Akyürek et al. 2023 (Fig. 3-4): x is the number of examples ``k - 1`` used by the
    prediction. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if metric not in ("spd", "ilwd"):
        raise ValueError(f"metric must be 'spd' or 'ilwd', got {metric!r}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
    else:
        fig = ax.figure
    values, ses, ks = (result.spd, result.spd_se, result.ks) if metric == "spd" else (result.ilwd, result.ilwd_se, result.ilwd_ks)
    for f in families or result.families:
        v, s = np.asarray(values[f]) / result.d, np.asarray(ses[f]) / result.d
        xs = np.asarray(ks) - 1
        line, = ax.plot(xs, v, marker="o", ms=3, label=f + (" (best)" if f == result.best else ""))
        ax.fill_between(xs, np.maximum(v - s, 1e-12), v + s, color=line.get_color(), alpha=0.2)
    ax.set_yscale("log")
    ax.axvline(result.d, color="grey", lw=0.7, ls=":")
    ax.set_xlabel("number of in-context examples")
    ax.set_ylabel(f"{metric.upper()} / d")
    ax.legend(fontsize=7)
    return fig


# ----------------------------------------------------------------------------------------------------------
# fingerprint


def _sample(task, key, batch: int, n: int, num_queries: int | None):
    """Prompts and, with ``num_queries``, probe points ``[batch, Q, d]`` from the task's covariate law.

    Uses ``task.sample(..., num_queries=Q)`` when the task supports it; otherwise the inputs of a second,
    independent batch of ``Q``-pair prompts (the same covariate law) serve as probes.
    """
    k1, k2 = jax.random.split(key)
    if num_queries is None:
        return task.sample(k1, batch, n), None
    try:
        multi = task.sample(k1, batch, n, num_queries=num_queries)
    except TypeError:
        multi = None
    if multi is not None and multi.x_query.ndim == 3:
        single = multi._replace(x_query=multi.x_query[:, 0], y_query=multi.y_query[:, 0])
        return single, multi.x_query
    return task.sample(k1, batch, n), task.sample(k2, batch, num_queries).x


def _mean_se(values) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over axis 0 in float64 (two-pass; small samples only)."""
    v = np.asarray(values, np.float64)
    m = v.shape[0]
    return v.mean(0), v.std(0, ddof=1) / np.sqrt(m)


def _check_task(task, d: int | None = None):
    if not hasattr(task, "sample") or not hasattr(task, "d"):
        raise ValueError(f"task must have .d and .sample(key, batch, n), got {type(task).__name__}")


def _bayes_prior(task):
    omega = getattr(task, "w_cov", None)
    sigma = getattr(task, "noise_std", None)
    if omega is None or sigma is None:
        return None
    return np.asarray(omega, np.float64), float(sigma)


def fingerprint(
    predictor,
    task,
    key: jax.Array,
    n: int,
    candidates: Sequence[str] | None = None,
    num_prompts: int = 2048,
    num_queries: int | None = None,
    *,
    num_fit_prompts: int | None = None,
    num_ilwd_prompts: int = 128,
    ilwd_ks: Sequence[int] | None = None,
    max_steps: int = 3,
    lbfgs_iters: int = 60,
    atol: float = 0.0,
) -> Fingerprint:
    """Fit every candidate family to ``predictor`` and report SPD and ILWD at every prefix length.

    Akyürek et al. 2023 (docs/theory.md §11): SPD ``E (A(D)(x) - B(D)(x))^2`` and ILWD ``E ||w_A - w_B||^2``
    between the predictor and each family, raw and per ``d``, with standard errors over prompts.
    Hyper-parameters are fitted on ``num_fit_prompts`` prompts and the SPD reported on ``num_prompts``
    fresh ones (so richer families are not favoured by over-fitting); ILWD on the first
    ``num_ilwd_prompts`` of those, with ``num_queries`` probe points per context. Two compiled programs
    (fit, evaluate) per call.

    Args:
      predictor: a model or algorithm, ``predictor(prompts) -> [batch]`` (or ``(mean, var)``). With a causal
        ``.prefix`` (Garg's convention) every prefix length ``k = 1..n+1`` is measured, else only ``k = n+1``.
      task: the task whose prompts are used (``.d``, ``.sample``; ``w_cov`` and ``noise_std`` for ``bayes``).
      key: PRNG key. n: context length (>= 1).
      candidates: families to fit (subset of :data:`FAMILIES`); default all that apply to the task
        (``bayes`` needs a Gaussian prior ``w_cov`` and ``noise_std``).
      num_prompts: evaluation prompts (>= 2). num_queries: probe points per context for ILWD (>= d + 1;
        default ``2 (d + 1)``).
      num_fit_prompts: fitting prompts (default ``min(num_prompts, 1024)``).
      num_ilwd_prompts: contexts for ILWD (0, or 2 to ``num_prompts``; 0 skips ILWD).
      ilwd_ks: prefix lengths for ILWD (default every measured one); each costs ``num_queries`` calls of
        ``predictor.prefix`` per context.
      max_steps: largest ``K`` for GD (fitted over ``1..max_steps``) and the number of steps of
        preconditioned GD and GD++ (which nest: a zero last step is one step fewer).
      lbfgs_iters: L-BFGS iterations for preconditioned GD and GD++ (0: keep the GD start).
      atol: practical-equivalence margin of the parsimony rule, in SPD/d (>= 0, finite; default 0). A family
        ties the best when ``SPD_f - SPD_min <= max(paired SE, atol * d)``. With enough prompts any nonzero
        difference is detected (the paired SE shrinks like ``1/sqrt(N)``), so a caller who asks "which
        algorithm, up to differences of size atol" says how small a difference still counts as the same.
    Returns:
      A :class:`Fingerprint`.
    """
    if not callable(predictor):
        raise ValueError(f"predictor must be callable (prompts -> [batch]), got {type(predictor).__name__}")
    _check_task(task)
    d = int(task.d)
    n = _check_int("n", n, 1)
    num_prompts = _check_int("num_prompts", num_prompts, 2)
    num_fit_prompts = _check_int("num_fit_prompts", min(num_prompts, 1024) if num_fit_prompts is None else num_fit_prompts, 2)
    num_ilwd_prompts = _check_int("num_ilwd_prompts", num_ilwd_prompts, 0)
    if num_ilwd_prompts == 1 or num_ilwd_prompts > num_prompts:
        raise ValueError(f"num_ilwd_prompts must be 0 or in [2, num_prompts={num_prompts}], got {num_ilwd_prompts}")
    q = _check_int("num_queries", 2 * (d + 1) if num_queries is None else num_queries, d + 1)
    max_steps = _check_int("max_steps", max_steps, 1)
    lbfgs_iters = _check_int("lbfgs_iters", lbfgs_iters, 0)
    atol = check_non_negative("atol", atol)  # SPD/d
    prior = _bayes_prior(task)
    if candidates is None:
        families = tuple(f for f in FAMILIES if f != "bayes" or prior is not None)
    else:
        if isinstance(candidates, str):
            candidates = (candidates,)
        bad = [c for c in candidates if c not in FAMILIES]
        if bad or len(candidates) == 0:
            raise ValueError(f"candidates must be a non-empty subset of {FAMILIES}, got {list(candidates)!r}")
        if "bayes" in candidates and prior is None:
            raise ValueError("candidates: 'bayes' needs a task with a Gaussian prior (w_cov) and noise_std")
        families = tuple(f for f in FAMILIES if f in candidates)
    with_prefix = _has_prefix(predictor)
    ks = np.arange(1, n + 2) if with_prefix else np.array([n + 1])
    nk = ks.size
    if ilwd_ks is None:
        ilwd_ks_arr = ks.copy()
    else:
        ilwd_ks_arr = np.asarray(sorted({int(k) for k in ilwd_ks}), dtype=int)
        if ilwd_ks_arr.size == 0 or not np.all(np.isin(ilwd_ks_arr, ks)):
            raise ValueError(f"ilwd_ks must be a non-empty subset of the measured prefix lengths {ks.tolist()}, got {list(ilwd_ks)!r}")
    if num_ilwd_prompts == 0:
        ilwd_ks_arr = np.zeros(0, int)
    ilwd_idx = np.searchsorted(ks, ilwd_ks_arr)

    prior_static = None if prior is None else (tuple(map(tuple, prior[0].tolist())), prior[1])
    plan = _Plan(families, with_prefix, max_steps, lbfgs_iters, tuple(v for v in _NEIGHBORS if v <= n), prior_static)
    sizes = _Sizes(num_fit_prompts, num_prompts, n, q, num_ilwd_prompts, tuple(int(i) for i in ilwd_idx))
    pstatic, pdyn = _split(predictor)
    tstatic, tdyn = _split(task)
    name = _predictor_name(predictor)
    k_fit, k_eval = jax.random.split(key)
    try:
        fit_shapes = jax.eval_shape(lambda k: _sample(task, k, num_fit_prompts, n, None)[0], k_fit)
        target_shape = jax.eval_shape(lambda p: _predictions(predictor, p, with_prefix), fit_shapes).shape
    except Exception as err:  # noqa: BLE001 - say which predictor failed
        raise ValueError(f"predictor {name} failed on prompts of n={n}, d={d} from the task: {err}") from err
    if fit_shapes.x.shape[-1] != d:
        raise ValueError(f"task.sample returned d={fit_shapes.x.shape[-1]} but task.d={d}")
    if target_shape != (num_fit_prompts, nk):
        raise ValueError(f"predictor {name} returned predictions of shape {target_shape}, expected ({num_fit_prompts}, {nk})")
    dtype = fit_shapes.x.dtype

    common = dict(pstatic=pstatic, tstatic=tstatic, with_prefix=with_prefix, sizes=sizes)
    fit_prompts, target_fit, eval_prompts, probes, target_eval, values = _predict_program(pdyn, tdyn, k_fit, k_eval, **common)
    params, fit_loss = _fit_program(fit_prompts, target_fit, plan=plan)
    out = _eval_program(eval_prompts, probes, target_eval, values, params, plan=plan, sizes=sizes)
    sq, ilwd_sq, lin_ratio, target_ms = jax.device_get(out)

    spd, spd_se, ilwd, ilwd_se = {}, {}, {}, {}
    for f in families:
        spd[f], spd_se[f] = _mean_se(sq[f])
        if ilwd_idx.size:
            ilwd[f], ilwd_se[f] = _mean_se(ilwd_sq[f])
        else:
            ilwd[f], ilwd_se[f] = np.zeros(0), np.zeros(0)
    lin_mean, lin_se = _mean_se(lin_ratio) if ilwd_idx.size else (np.zeros(0), np.zeros(0))
    tol = 10.0 * float(jnp.finfo(dtype).eps) * np.asarray(target_ms, np.float64)  # [nk]
    best_by_k, spd_gap_se = _parsimony(families, sq, tol, atol * d)
    fitted_by_k = {f: {k: np.asarray(v) for k, v in params[f].items()} for f in families}
    fitted = {f: {k: _scalar(v[-1]) for k, v in fitted_by_k[f].items()} for f in families}
    return Fingerprint(
        ks=ks,
        d=d,
        n=n,
        families=families,
        spd=spd,
        spd_se=spd_se,
        ilwd=ilwd,
        ilwd_se=ilwd_se,
        ilwd_ks=ilwd_ks_arr,
        linearity_residual=np.asarray(lin_mean),
        linearity_residual_se=np.asarray(lin_se),
        fitted=fitted,
        fitted_by_k=fitted_by_k,
        best=best_by_k[-1],
        best_by_k=best_by_k,
        fit_spd={f: np.asarray(v, np.float64) for f, v in fit_loss.items()},
        num_prompts=num_prompts,
        num_fit_prompts=num_fit_prompts,
        num_ilwd_prompts=num_ilwd_prompts,
        num_queries=q,
        task_noise_std=None if prior is None else prior[1],
        spd_gap_se=spd_gap_se,
        atol=atol,
    )


_ARRAYS = (jax.Array, np.ndarray, np.generic, float, int)


def _split(obj):
    """``(static, dynamic)`` parts: nnx graphdef + state, pytree treedef + array leaves, or the object itself."""
    try:
        from flax import nnx

        if isinstance(obj, nnx.Module):
            graphdef, state = nnx.split(obj)
            return ("nnx", graphdef), state
    except ImportError:  # pragma: no cover
        pass
    leaves, treedef = jax.tree_util.tree_flatten(obj)
    if leaves and not (len(leaves) == 1 and leaves[0] is obj) and all(isinstance(v, _ARRAYS) for v in leaves):
        return ("tree", treedef), leaves
    return ("static", _ById(obj)), None


def _merge(static, dynamic):
    kind, value = static
    if kind == "nnx":
        from flax import nnx

        return nnx.merge(value, dynamic)
    if kind == "tree":
        return jax.tree_util.tree_unflatten(value, dynamic)
    return value.obj


@dataclasses.dataclass(frozen=True)
class _Sizes:
    num_fit: int
    num_eval: int
    n: int
    q: int
    m_ctx: int
    ilwd_idx: tuple


@functools.partial(jax.jit, static_argnames=("pstatic", "tstatic", "with_prefix", "sizes"))
def _predict_program(pdyn, tdyn, k_fit, k_eval, *, pstatic, tstatic, with_prefix, sizes):
    """The predictor-dependent part, one program: draw the fitting and evaluation prompts and the probes, and
    the predictor's outputs on them (and at the probes)."""
    predictor, task = _merge(pstatic, pdyn), _merge(tstatic, tdyn)
    fit_prompts, _ = _sample(task, k_fit, sizes.num_fit, sizes.n, None)
    prompts, probes = _sample(task, k_eval, sizes.num_eval, sizes.n, sizes.q)
    target = _predictions(predictor, prompts, with_prefix)
    values = None
    if sizes.ilwd_idx:
        sub = jax.tree_util.tree_map(lambda a: a[: sizes.m_ctx], prompts)
        values = _probe_values_raw(predictor, sub, probes[: sizes.m_ctx], with_prefix, np.asarray(sizes.ilwd_idx, int))
    return fit_prompts, _predictions(predictor, fit_prompts, with_prefix), prompts, probes, target, values


@functools.partial(jax.jit, static_argnames=("plan",))
def _fit_program(prompts, target, *, plan):
    """The family fits (one compiled program per plan and shapes, whatever the predictor)."""
    return _fit_all(target, plan, prompts)


@functools.partial(jax.jit, static_argnames=("plan", "sizes"))
def _eval_program(prompts, probes, target, values, params, *, plan, sizes):
    """SPD and ILWD terms at the fitted hyper-parameters (one compiled program per plan and shapes)."""
    return _evaluate_all(target, values, plan, np.asarray(sizes.ilwd_idx, int), sizes.m_ctx, prompts, probes, params)


@dataclasses.dataclass(frozen=True)
class _Plan:
    families: tuple
    with_prefix: bool
    max_steps: int
    lbfgs_iters: int
    neighbors: tuple
    prior: Any


def _cut(stats, with_prefix: bool):
    """Keep the measured prefix lengths (all, or the full context only)."""
    if with_prefix:
        return stats
    s, r, m, xq = stats
    return s[:, -1:], r[:, -1:], m[-1:], xq[:, -1:]


def _fixed_weights(family, st, prior):
    s, r, m, _ = st
    if family == "averaging":
        return _w_averaging(s, r, m)
    if family == "least_squares":
        return _w_least_squares(s, r, m)
    omega, sigma = prior
    return _w_bayes(s, r, m, np.asarray(omega, np.float64), sigma)


def _gd_weights_by_k(st, eta, steps, max_steps):
    """GD weights with per-length ``eta`` and number of steps: one run of ``max(steps)`` steps, read per length."""
    s, r, m, _ = st
    sb, rb = s / _per_m(m)[:, None, None], r / _per_m(m)[:, None]
    w = jnp.zeros_like(r)
    out = jnp.zeros_like(r)
    for t in range(1, max_steps + 1):
        w = w + eta[:, None] * (rb - jnp.einsum("bkij,bkj->bki", sb, w))
        out = jnp.where((steps == t)[None, :, None], w, out)
    return out


def _family_weights(family, params, st, plan):
    if family in ("averaging", "least_squares", "bayes"):
        return _fixed_weights(family, st, plan.prior)
    s, r, m, _ = st
    if family == "gd":
        return _gd_weights_by_k(st, params["eta"], params["steps"], plan.max_steps)
    if family == "ridge":
        return _w_ridge(s, r, m, params["lam"])
    if family == "preconditioned_gd":
        return _w_gd_plus_plus(s, r, m, params["A"])
    if family == "gd_plus_plus":
        return _w_gd_plus_plus(s, r, m, params["A"], params["gamma"])
    raise AssertionError(family)


def _fit_all(target, plan: _Plan, prompts: Prompts):
    """Fit every family to the predictions ``target [b, nk]`` at every prefix length: ``(params, fit SPD)``."""
    st = _cut(_stats(prompts.x, prompts.y, prompts.x_query), plan.with_prefix)
    s, r, m, xq = st
    nk, d, dtype = m.shape[0], s.shape[-1], s.dtype
    scale = jnp.maximum(jnp.mean(prompts.x**2), jnp.finfo(dtype).tiny)  # mean eigenvalue of E[x x^T]
    params, losses = {}, {}
    fams = plan.families
    for f in fams:
        if f in ("averaging", "least_squares", "bayes"):
            params[f] = {}
            losses[f] = _spd(target, _pred(_fixed_weights(f, st, plan.prior), xq))
    if any(f in fams for f in ("gd", "preconditioned_gd", "gd_plus_plus")):
        etas, ls = [], []
        for kk in range(1, plan.max_steps + 1):
            e, l = _fit_scalar(lambda eta, kk=kk: _spd(target, _pred(_w_gd(s, r, m, eta, kk), xq)), 1e-3 / scale, 3.0 / scale, nk, dtype)
            etas.append(e)
            ls.append(jnp.where(jnp.isfinite(l), l, jnp.inf))
        etas, ls = jnp.stack(etas), jnp.stack(ls)  # [K, nk]
        best = jnp.argmin(ls, axis=0)  # the first (fewest steps) among ties
        eta = etas[best, jnp.arange(nk)]
        steps = best + 1
        gd_loss = ls[best, jnp.arange(nk)]
        if "gd" in fams:
            params["gd"], losses["gd"] = {"eta": eta, "steps": steps}, gd_loss
        active = (jnp.arange(plan.max_steps)[None, :] < steps[:, None]).astype(dtype)  # [nk, K]
        a0 = active[..., None, None] * eta[:, None, None, None] * jnp.eye(d, dtype=dtype)
        if "preconditioned_gd" in fams or "gd_plus_plus" in fams:
            a, _, l_pgd = _fit_matrices(st, target, a0, None, plan.lbfgs_iters)
            if "preconditioned_gd" in fams:
                params["preconditioned_gd"], losses["preconditioned_gd"] = {"A": a}, l_pgd
            if "gd_plus_plus" in fams:
                a2, g2, l_pp = _fit_matrices(st, target, a, jnp.zeros((nk, plan.max_steps), dtype), plan.lbfgs_iters)
                params["gd_plus_plus"], losses["gd_plus_plus"] = {"A": a2, "gamma": g2}, l_pp
    if "ridge" in fams:
        lam, l = _fit_scalar(lambda lam: _spd(target, _pred(_w_ridge(s, r, m, lam), xq)), 1e-6 * scale, 1e4 * scale, nk, dtype)
        params["ridge"], losses["ridge"] = {"lam": lam}, l
    if "knn" in fams:
        preds = _knn_all(prompts.x, prompts.y, xq[:, :, None, :], m.astype(jnp.int32), plan.neighbors)[..., 0]  # [O, b, nk]
        l_all = jnp.mean((preds - target[None]) ** 2, axis=1)  # [O, nk]
        choice = jnp.argmin(l_all, axis=0)
        params["knn"] = {"neighbors": jnp.asarray(plan.neighbors)[choice]}
        losses["knn"] = l_all[choice, jnp.arange(nk)]
    return params, losses


def _knn_choice(params, plan):
    return jnp.argmax(jnp.asarray(plan.neighbors)[:, None] == params["neighbors"][None, :], axis=0)  # [nk]


def _evaluate_all(target, values, plan: _Plan, ilwd_idx, m_ctx: int, prompts: Prompts, probes, params):
    """Per-prompt squared differences, ILWD terms and linearity residuals at the fitted hyper-parameters.

    ``target [b, nk]``: the predictor's outputs; ``values [m_ctx, len(ilwd_idx), Q]``: at the probes."""
    st = _cut(_stats(prompts.x, prompts.y, prompts.x_query), plan.with_prefix)
    s, r, m, xq = st
    nk = m.shape[0]
    sq, weights = {}, {}
    for f in plan.families:
        if f == "knn":
            preds = _knn_all(prompts.x, prompts.y, xq[:, :, None, :], m.astype(jnp.int32), plan.neighbors)[..., 0]
            pred = jnp.take_along_axis(preds, _knn_choice(params[f], plan)[None, None, :], axis=0)[0]
        else:
            weights[f] = _family_weights(f, params[f], st, plan)
            pred = _pred(weights[f], xq)
        sq[f] = (target - pred) ** 2
    ilwd_sq, lin_ratio = {}, None
    if len(ilwd_idx):
        sub = jax.tree_util.tree_map(lambda a: a[:m_ctx], prompts)
        z = probes[:m_ctx]
        w_a, _, resid = _fit_linear(z, values)
        denom = jnp.mean(values**2, axis=(0, 2))
        lin_ratio = resid / jnp.maximum(denom, jnp.finfo(values.dtype).tiny)
        idx = jnp.asarray(ilwd_idx)
        for f in plan.families:
            if f == "knn":
                zz = jnp.broadcast_to(z[:, None], (m_ctx, idx.shape[0]) + z.shape[1:])
                vals = _knn_all(sub.x, sub.y, zz, m.astype(jnp.int32)[idx], plan.neighbors)  # [O, m, nki, Q]
                choice = _knn_choice(params[f], plan)[idx]
                vals = jnp.take_along_axis(vals, choice[None, None, :, None], axis=0)[0]
                w_f = _fit_linear(z, vals)[0]
            else:
                w_f = weights[f][:m_ctx][:, idx]
            ilwd_sq[f] = jnp.sum((w_a - w_f) ** 2, axis=-1)
    return sq, ilwd_sq, lin_ratio, jnp.mean(target**2, axis=0)


def _scalar(v):
    a = np.asarray(v)
    if a.ndim == 0:
        return int(a) if a.dtype.kind in "iu" else float(a)
    return a


def _parsimony(families, sq: dict, tol, margin: float = 0.0) -> tuple[list, dict]:
    """Per prefix length, the first family (simplest) whose SPD is within one SE of the smallest (docs/theory.md §11).

    ``sq``: ``{family: [batch, nk]}`` squared differences on the same prompts. The SE is that of the paired
    difference ``mean(sq_f - sq_min)``; ``tol [nk]`` (a few rounding errors of the squared predictions) makes
    families that are exact up to floating point tie, so an exact match is not lost to rounding noise of a richer
    family. ``margin`` (raw SPD, ``atol * d``) is the caller's practical-equivalence margin: a gap up to
    ``max(SE, margin)`` ties. Returns ``(best_by_k, {family: gap SE [nk]})``.
    """
    nk = next(iter(sq.values())).shape[1]
    gap_se = {f: np.full(nk, np.nan) for f in families}
    best_by_k = []
    for i in range(nk):
        cols = {f: np.asarray(sq[f][:, i], np.float64) for f in families}
        spd = {f: float(np.mean(c)) for f, c in cols.items() if np.all(np.isfinite(c))}
        if not spd:
            best_by_k.append(families[0])
            continue
        smallest = min(spd, key=spd.get)
        within = []
        for f in (f for f in families if f in spd):  # the smallest itself has gap 0: the list is never empty
            gap, gap_se[f][i] = _mean_se(cols[f] - cols[smallest])
            if gap <= max(gap_se[f][i], margin) + tol[i]:
                within.append(f)
        best_by_k.append(within[0])
    return best_by_k, gap_se


def _fit_matrices(st, target, a0, g0, iters: int):
    """L-BFGS on per-prefix-length matrices (and GD++ gammas), traced inside the caller's ``jit``.

    Each length's SPD is divided by its value at the start so every length weighs alike; where L-BFGS does
    not improve on the start the start is kept (so the fitted families stay nested). Returns ``(A, gamma, SPD)``.
    """
    s, r, m, xq = st

    def losses(params):
        a, g = params
        return _spd(target, _pred(_w_gd_plus_plus(s, r, m, a, g), xq))

    start = losses((a0, g0))
    norm = jnp.where(start > 0, start, 1.0)
    total = lambda params: jnp.sum(losses(params) / norm)  # noqa: E731
    a, g = _lbfgs(total, (a0, g0), iters) if iters else (a0, g0)
    end = losses((a, g))
    keep = ~(end < start)
    a = jnp.where(keep[:, None, None, None], a0, a)
    if g0 is not None:
        g = jnp.where(keep[:, None], g0, g)
    return a, g, jnp.where(keep, start, end)


def _probe_values_raw(predictor, prompts, probes, with_prefix, idx):
    """Predictor outputs at the probes for the prefix-length positions ``idx``: ``[m, len(idx), Q]``.

    Full context (position ``n``): the query replaced by each probe. Position ``j < n`` (prefix length
    ``k = j + 1``): ``x_k`` replaced by the probe and entry ``j`` of ``predictor.prefix`` read, valid because
    that entry depends only on the first ``k - 1`` pairs and ``x_k`` (the causal convention of
    docs/theory.md §10). ``lax.map`` over positions, ``vmap`` over probes.
    """
    n = prompts.x.shape[1]
    idx = np.asarray(idx)
    prefix_pos = idx[idx < n] if with_prefix else np.zeros(0, int)
    want_full = bool((idx == n).any()) if with_prefix else True
    out = []
    if prefix_pos.size:

        def at_prefix(j):
            def one(probe):
                x = prompts.x.at[:, j].set(probe)
                return _mean_of(predictor.prefix(prompts._replace(x=x)))[:, j]

            return jax.vmap(one, in_axes=1, out_axes=1)(probes)

        out.append(jnp.moveaxis(jax.lax.map(at_prefix, jnp.asarray(prefix_pos)), 0, 1))
    if want_full:
        full = jax.vmap(lambda probe: _mean_of(predictor(prompts._replace(x_query=probe))), in_axes=1, out_axes=1)(probes)
        out.append(full[:, None, :])
    return jnp.concatenate(out, axis=1)


def _probe_values(predictor, prompts, probes, with_prefix, idx):
    return jax.jit(lambda p, z: _probe_values_raw(predictor, p, z, with_prefix, idx))(prompts, probes)


# ----------------------------------------------------------------------------------------------------------
# probes (Akyürek et al. 2023, §5)


def hidden_states(model, prompts: Prompts) -> list:
    """Per-layer hidden states ``[batch, T, width]`` (entry 0: the input tokens; entry l: after layer l).

    Uses ``model.hidden_states(prompts)`` when the model has it; for :class:`icl.LinearTransformer` (layers
    with ``w_pv``/``w_kq``) the tokens ``[z_1 ... z_n, z_q]`` after each layer (the query last).
    """
    if callable(getattr(model, "hidden_states", None)):
        return list(model.hidden_states(prompts))
    layers = getattr(model, "layers", None)
    if layers is not None and all(hasattr(l, "w_pv") and hasattr(l, "w_kq") for l in layers):
        context = jnp.concatenate([prompts.x, prompts.y[..., None]], axis=-1)
        query = jnp.concatenate([prompts.x_query, jnp.zeros_like(prompts.x_query[..., :1])], axis=-1)
        states = [jnp.concatenate([context, query[:, None]], axis=1)]
        for layer in layers:
            context, query = layer(context, query)
            states.append(jnp.concatenate([context, query[:, None]], axis=1))
        return states
    raise ValueError(f"model {_predictor_name(model)} exposes no hidden states (needs .hidden_states(prompts) or LSA layers)")


def _check_hidden_states(model, name: str) -> None:
    layers = getattr(model, "layers", None)
    lsa = layers is not None and all(hasattr(l, "w_pv") and hasattr(l, "w_kq") for l in layers)
    if not (callable(getattr(model, "hidden_states", None)) or lsa):
        raise ValueError(f"{name} {_predictor_name(model)} exposes no hidden states (needs .hidden_states(prompts) or LSA layers)")


_TARGETS = ("w", "xty", "xtx")


def _probe_targets(prompts: Prompts, targets) -> dict:
    out = {}
    x, y = prompts.x, prompts.y
    n, d = prompts.n, prompts.d
    for t in targets:
        if t == "w":
            if prompts.w is None:
                raise ValueError("targets: 'w' needs prompts that carry w (task.sample returned w=None)")
            out[t] = prompts.w
        elif t == "xty":
            out[t] = jnp.einsum("bnd,bn->bd", x, y) / n
        elif t == "xtx":
            iu = np.triu_indices(d)
            out[t] = (jnp.einsum("bni,bnj->bij", x, x) / n)[:, iu[0], iu[1]]
    return out


def _features(states, readout: str):
    if readout == "query":
        return [h[:, -1] for h in states]
    if readout == "mean":
        return [jnp.mean(h, axis=1) for h in states]
    return [jnp.concatenate([h[:, -1], jnp.mean(h, axis=1)], axis=-1) for h in states]


def _ridge_probe_r2(f_train, t_train, f_test, t_test, lam):
    """Ridge probe fitted on (f_train, t_train), pooled R^2 on the test set (1 - SSE / SST)."""
    f_train, t_train = np.asarray(f_train, np.float64), np.asarray(t_train, np.float64)
    f_test, t_test = np.asarray(f_test, np.float64), np.asarray(t_test, np.float64)
    mu_f, sd_f = f_train.mean(0), f_train.std(0)
    sd_f = np.where(sd_f > 1e-12, sd_f, 1.0)
    mu_t = t_train.mean(0)
    a = (f_train - mu_f) / sd_f
    b = (f_test - mu_f) / sd_f
    gram = a.T @ a + lam * a.shape[0] * np.eye(a.shape[1])
    coef = np.linalg.solve(gram, a.T @ (t_train - mu_t))
    pred = b @ coef + mu_t
    sse = np.sum((t_test - pred) ** 2)
    sst = np.sum((t_test - t_test.mean(0)) ** 2)
    return float(1.0 - sse / sst) if sst > 0 else float("nan")


@dataclasses.dataclass
class ProbeResult:
    """Per-layer probe R^2 (docs/theory.md §11; Akyürek et al. 2023, §5).

    Attributes:
      r2: ``{target: [L+1]}`` held-out R^2 of the ridge probe from layer ``l``'s hidden state (entry 0: input).
      control_r2: the same probe on the control model (e.g. untrained), or None.
      targets, readout, lam, num_prompts.
    """

    r2: dict
    control_r2: dict | None
    targets: tuple
    readout: str
    lam: float
    num_prompts: int

    def table(self) -> str:
        lines = [f"{'layer':<7}" + "".join(f"{t + ' R2':>12}{'control':>10}" for t in self.targets)]
        for l in range(len(next(iter(self.r2.values())))):
            row = f"{l:<7}"
            for t in self.targets:
                c = self.control_r2[t][l] if self.control_r2 is not None and l < len(self.control_r2[t]) else float("nan")
                row += f"{self.r2[t][l]:>12.3f}{c:>10.3f}"
            lines.append(row)
        return "\n".join(lines)


def probe(
    model,
    task,
    key: jax.Array,
    n: int,
    *,
    control=None,
    targets: Sequence[str] = _TARGETS,
    readout: str = "both",
    num_prompts: int = 2048,
    lam: float = 1e-3,
) -> ProbeResult:
    """Linear probes from each layer's hidden states to ``w``, ``X^T y / n`` and ``X^T X / n`` (Akyürek §5).

    A ridge probe (penalty ``lam`` times the number of prompts, on standardised features) is fitted on
    ``num_prompts`` prompts and scored (pooled R^2) on ``num_prompts`` fresh ones, for every layer; the same
    for ``control`` (e.g. the untrained model) when given.

    Args:
      model: a model with ``hidden_states(prompts)`` or LSA layers (see :func:`hidden_states`).
      readout: ``"query"`` (the last position), ``"mean"`` (mean over positions) or ``"both"`` (concatenated).
    """
    _check_task(task)
    n = _check_int("n", n, 1)
    num_prompts = _check_int("num_prompts", num_prompts, 4)
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets or any(t not in _TARGETS for t in targets):
        raise ValueError(f"targets must be a non-empty subset of {_TARGETS}, got {targets!r}")
    if readout not in ("query", "mean", "both"):
        raise ValueError(f"readout must be 'query', 'mean' or 'both', got {readout!r}")
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    _check_hidden_states(model, "model")
    if control is not None:
        _check_hidden_states(control, "control")
    k1, k2 = jax.random.split(key)
    train, test = task.sample(k1, num_prompts, n), task.sample(k2, num_prompts, n)
    t_train, t_test = _probe_targets(train, targets), _probe_targets(test, targets)

    def scores(m):
        run = jax.jit(lambda p: _features(hidden_states(m, p), readout))
        f_train, f_test = run(train), run(test)
        return {t: np.array([_ridge_probe_r2(a, t_train[t], b, t_test[t], lam) for a, b in zip(f_train, f_test)]) for t in targets}

    r2 = scores(model)
    control_r2 = None if control is None else scores(control)
    return ProbeResult(r2=r2, control_r2=control_r2, targets=targets, readout=readout, lam=float(lam), num_prompts=num_prompts)
