"""Reading algorithms off trained weights and comparing predictors (THEORY.md §2, §5, §9).

Every predictor (trained model, baseline, closed-form optimum) is a function from
:class:`~icl.tasks.Prompts` to predictions ``[batch]``, so one comparison serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl.algorithms import Predictor
from icl.tasks import Prompts, Task, check_positive_int, check_prompts

__all__ = [
    "lsa_blocks",
    "implied_preconditioner",
    "residual_terms",
    "relative_error",
    "dist_to_identity",
    "prediction_gap",
    "sensitivities",
    "sensitivity_cosine",
    "Comparison",
    "compare_predictors",
]


def _layer_weights(layer_or_w_pv, w_kq=None):
    if w_kq is None:
        return jnp.asarray(layer_or_w_pv.w_pv[...]), jnp.asarray(layer_or_w_pv.w_kq[...])
    return jnp.asarray(layer_or_w_pv), jnp.asarray(w_kq)


def lsa_blocks(layer_or_w_pv, w_kq=None):
    """Split an LSA layer into the blocks that reach the prediction (THEORY.md §2).

    The last row of ``W^PV`` is ``[b^T, c]``; the first ``d`` columns of ``W^KQ`` are ``[A; a^T]``.
    Accepts a :class:`~icl.models.LinearSelfAttention` or the two matrices (leading batch axes allowed).
    Returns ``(b [..., d], c [...], A [..., d, d], a [..., d])``.
    """
    w_pv, w_kq = _layer_weights(layer_or_w_pv, w_kq)
    d = w_pv.shape[-1] - 1
    return w_pv[..., d, :d], w_pv[..., d, d], w_kq[..., :d, :d], w_kq[..., d, :d]


def implied_preconditioner(layer_or_w_pv, w_kq=None) -> jax.Array:
    """``Gamma_eff = c A^T + a b^T``: the part of the LSA prediction linear in ``y`` is ``x_q^T Gamma_eff h``.

    Gauge invariant under ``(W^PV, W^KQ) -> (s W^PV, W^KQ / s)`` (THEORY.md §2). Shape ``[..., d, d]``.
    """
    b, c, a_mat, a = lsa_blocks(layer_or_w_pv, w_kq)
    return c[..., None, None] * jnp.swapaxes(a_mat, -1, -2) + a[..., :, None] * b[..., None, :]


def residual_terms(layer_or_w_pv, w_kq=None, x_cov=None) -> dict[str, jax.Array]:
    """Sizes of the LSA terms that are even in ``y`` and vanish at the optimum (THEORY.md §2).

    ``(1/n) sum_i b^T x_i x_i^T A x_q`` has mean ``(A^T Sigma b)^T x_q`` and ``(c/n) sum_i y_i^2 a^T x_q``
    has coefficient ``c a``. Returns ``xx = ||A^T Sigma b||``, ``yy = ||c a||`` and both divided by
    ``||Gamma_eff||_F`` (``xx_rel``, ``yy_rel``); all gauge invariant.
    """
    b, c, a_mat, a = lsa_blocks(layer_or_w_pv, w_kq)
    d = b.shape[-1]
    sigma = jnp.eye(d) if x_cov is None else jnp.asarray(x_cov)
    xx = jnp.linalg.norm(jnp.einsum("...ji,jk,...k->...i", a_mat, sigma, b), axis=-1)
    yy = jnp.linalg.norm(c[..., None] * a, axis=-1)
    scale = jnp.linalg.norm(implied_preconditioner(layer_or_w_pv, w_kq), axis=(-2, -1))
    return {"xx": xx, "yy": yy, "xx_rel": xx / scale, "yy_rel": yy / scale}


def relative_error(estimate, reference) -> jax.Array:
    """Relative Frobenius error ``||estimate - reference||_F / ||reference||_F`` (over the last two axes)."""
    estimate, reference = jnp.asarray(estimate), jnp.asarray(reference)
    return jnp.linalg.norm(estimate - reference, axis=(-2, -1)) / jnp.linalg.norm(reference, axis=(-2, -1))


def dist_to_identity(m) -> jax.Array:
    """``Dist(M, I) = min_alpha ||M - alpha I||_F / ||M||_F`` (Ahn et al. 2023); ``alpha = tr(M)/d``."""
    m = jnp.asarray(m)
    d = m.shape[-1]
    alpha = jnp.trace(m, axis1=-2, axis2=-1) / d
    return jnp.linalg.norm(m - alpha[..., None, None] * jnp.eye(d), axis=(-2, -1)) / jnp.linalg.norm(m, axis=(-2, -1))


def prediction_gap(predictor_a: Predictor, predictor_b: Predictor, prompts: Prompts) -> jax.Array:
    """Per-prompt ``|y_hat_a - y_hat_b|``, ``[batch]`` (von Oswald et al. 2023's prediction difference)."""
    return jnp.abs(predictor_a(prompts) - predictor_b(prompts))


def sensitivities(predictor: Predictor, prompts: Prompts) -> jax.Array:
    """Per-prompt ``d y_hat / d x_query``, ``[batch, d]``.

    Each prompt's prediction depends on its own query only, so the gradient of the batch sum with
    respect to ``x_query`` holds every prompt's sensitivity at the cost of one backward pass.
    """
    return jax.grad(lambda xq: jnp.sum(predictor(prompts._replace(x_query=xq))))(prompts.x_query)


def sensitivity_cosine(predictor_a: Predictor, predictor_b: Predictor, prompts: Prompts) -> jax.Array:
    """Per-prompt cosine between ``d y_hat_a / d x_q`` and ``d y_hat_b / d x_q`` (von Oswald's "model cos")."""
    ga, gb = sensitivities(predictor_a, prompts), sensitivities(predictor_b, prompts)
    num = jnp.sum(ga * gb, axis=-1)
    den = jnp.linalg.norm(ga, axis=-1) * jnp.linalg.norm(gb, axis=-1)
    return num / jnp.maximum(den, jnp.finfo(ga.dtype).tiny)


def _mean_se(sums: np.ndarray, m2s: np.ndarray, chunk: int) -> tuple[float, float]:
    """Mean and standard error from per-chunk sums and sums of squared deviations from the chunk mean.

    Chunks are combined in float64 with Chan et al.'s parallel-variance formula, so the SE of a
    quantity whose values barely vary (a cosine near 1) does not cancel to 0 in float32.
    """
    sums, m2s = np.asarray(sums, np.float64), np.asarray(m2s, np.float64)
    count = sums.size * chunk
    mean = float(sums.sum() / count)
    m2 = float(m2s.sum() + chunk * np.sum((sums / chunk - mean) ** 2))
    return mean, float(np.sqrt(max(m2, 0.0) / max(count - 1, 1) / count))


def _sum_m2(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    return v.sum(), jnp.sum((v - v.mean()) ** 2)


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_predictors`; every number comes with its standard error.

    Attributes:
      num_prompts: prompts evaluated (all predictors saw the same ones).
      losses: ``{name: (mean squared error, standard error)}``.
      pairs: ``{(a, b): {"loss_diff", "loss_diff_se", "gap", "gap_se", "cosine", "cosine_se"}}`` (the
        cosine only for ``cosine_pairs``)
        where ``loss_diff`` is the paired mean of ``(err_a^2 - err_b^2)``, ``gap`` the mean
        ``|y_hat_a - y_hat_b|`` and ``cosine`` the mean sensitivity cosine.
    """

    num_prompts: int
    losses: dict[str, tuple[float, float]]
    pairs: dict[tuple[str, str], dict[str, float]]

    def to_dict(self) -> dict:
        """JSON-ready form: ``{"num_prompts", "losses": {name: {"mean", "se"}}, "pairs": {"a|b": {...}}}``."""
        return {
            "num_prompts": self.num_prompts,
            "losses": {k: {"mean": m, "se": s} for k, (m, s) in self.losses.items()},
            "pairs": {f"{a}|{b}": v for (a, b), v in self.pairs.items()},
        }


def compare_predictors(
    predictors: Mapping[str, Predictor],
    task: Task,
    key: jax.Array,
    n: int,
    num_prompts: int = 100_000,
    pairs: Sequence[tuple[str, str]] = (),
    chunk_size: int = 10_000,
    cosine_pairs: Sequence[tuple[str, str]] | None = None,
) -> Comparison:
    """Evaluate predictors on the same fresh prompts, in chunks under one ``jit`` + ``lax.scan``.

    Args:
      predictors: ``{name: predictor}``; each a function ``Prompts -> [batch]`` (jit-compatible).
      task: the task to draw prompts from; key: PRNG key; n: context length.
      num_prompts: total prompts, rounded up to a whole number of chunks.
      pairs: ``(a, b)`` names for which to also report paired loss difference, prediction gap and
        sensitivity cosine.
      chunk_size: prompts per chunk (bounds memory).
      cosine_pairs: the pairs (a subset of ``pairs``) that also get the sensitivity cosine, which costs
        a backward pass per predictor; default all of ``pairs``.
    Returns:
      :class:`Comparison`.
    """
    n = check_positive_int("n", n)
    check_positive_int("num_prompts", num_prompts)
    chunk_size = min(check_positive_int("chunk_size", chunk_size), num_prompts)
    names = list(predictors)
    for a, b in pairs:
        for name in (a, b):
            if name not in predictors:
                raise ValueError(f"pairs names {name!r}, which is not among the predictors {names}")
    num_chunks = -(-num_prompts // chunk_size)
    check_prompts(task.sample(key, 1, n))
    pairs = [tuple(p) for p in pairs]
    cosine_pairs = pairs if cosine_pairs is None else [tuple(p) for p in cosine_pairs]
    for pair in cosine_pairs:
        if pair not in pairs:
            raise ValueError(f"cosine_pairs entry {pair} must also be in pairs")
    sums = _comparison_sums(tuple(predictors.items()), task, n, chunk_size, tuple(pairs), tuple(cosine_pairs), key,
                            num_chunks)
    count = num_chunks * chunk_size
    losses = {name: _mean_se(*sums["loss"][name], chunk_size) for name in names}
    pair_stats = {}
    for a, b in pairs:
        stats = {}
        for metric in ("loss_diff", "gap", "cosine"):
            if (a, b) in sums[metric]:
                stats[metric], stats[f"{metric}_se"] = _mean_se(*sums[metric][(a, b)], chunk_size)
        pair_stats[(a, b)] = stats
    return Comparison(count, losses, pair_stats)


def _comparison_sums(items, task, n, chunk_size, pairs, cosine_pairs, key, num_chunks):
    predictors = dict(items)

    def one_chunk(_, chunk_key):
        prompts = task.sample(chunk_key, chunk_size, n)
        preds = {name: f(prompts) for name, f in predictors.items()}
        sq = {name: (p - prompts.y_query) ** 2 for name, p in preds.items()}
        out = {"loss": {k: _sum_m2(v) for k, v in sq.items()}}
        per_pair = {
            "loss_diff": {(a, b): sq[a] - sq[b] for a, b in pairs},
            "gap": {(a, b): jnp.abs(preds[a] - preds[b]) for a, b in pairs},
            "cosine": {(a, b): sensitivity_cosine(predictors[a], predictors[b], prompts) for a, b in cosine_pairs},
        }
        for metric, values in per_pair.items():
            out[metric] = {k: _sum_m2(v) for k, v in values.items()}
        return None, out

    @jax.jit
    def run(chunk_keys):
        return jax.lax.scan(one_chunk, None, chunk_keys)[1]

    return jax.tree.map(np.asarray, run(jax.random.split(key, num_chunks)))
