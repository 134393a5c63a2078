"""Nonparametric baselines: k-nearest neighbours (Garg et al. 2022) and Nadaraya-Watson kernel regression.

Both predict from the context's ``(x_i, y_i)`` directly, without a weight vector. Nadaraya-Watson with the
Gaussian kernel, ``y_hat = sum_i softmax_i(-||x - x_i||^2 / (2 h^2)) y_i``, is what one softmax attention head
can express (query ``x``, keys ``x_i`` with a per-key bias ``-||x_i||^2 / (2h^2)``, values ``y_i``); as the
bandwidth ``h -> 0`` it becomes 1-nearest neighbour. ``prefix`` masks the pairs ``i >= k`` of an
``[n, n]`` distance matrix (``O(n^2 d)`` per prompt); ``k = 1`` has no pair and predicts 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icl.pytree import pytree_dataclass, static_field
from icl.tasks.base import check_int
from icl.predictors.base import JittedPredictor, as_leaf, check_prompts, check_scalar

__all__ = ["KNearestNeighbours", "NadarayaWatson", "knn", "nadaraya_watson"]


def _sq_dists(points, x):
    """``||points_q - x_i||^2``: points ``[b, m, d]``, x ``[b, n, d]`` -> ``[b, m, n]``."""
    diff = points[:, :, None, :] - x[:, None, :, :]
    return jnp.sum(diff * diff, axis=-1)


def _earlier(n: int) -> jax.Array:
    """``[k, i] = i < k``: the pairs available when predicting point ``k`` (0-based rows)."""
    return jnp.arange(n)[None, :] < jnp.arange(n)[:, None]


def _knn_mean(dist, y, valid, k: int):
    """Mean ``y`` of the ``k`` nearest valid pairs (fewer if fewer are valid; 0 if none).

    dist ``[b, m, n]``, y ``[b, n]``, valid ``[m, n]`` or ``[b, m, n]``.
    """
    neg = jnp.where(valid, -dist, -jnp.inf)
    kk = min(k, dist.shape[-1])
    top, idx = jax.lax.top_k(neg, kk)  # [b, m, kk]
    ok = jnp.isfinite(top)
    ys = jnp.take_along_axis(jnp.broadcast_to(y[:, None, :], dist.shape), idx, axis=-1)
    count = jnp.sum(ok, axis=-1)
    return jnp.sum(jnp.where(ok, ys, 0.0), axis=-1) / jnp.maximum(count, 1).astype(y.dtype)


@pytree_dataclass
class KNearestNeighbours(JittedPredictor):
    """Mean ``y`` of the ``k`` context points nearest to the input (Euclidean; ``k`` static).

    With fewer than ``k`` pairs it averages those available; with none (prefix ``k = 1``) it predicts 0.
    """

    k: int = static_field(default=3)

    def __post_init__(self):
        object.__setattr__(self, "k", check_int("k", self.k))

    def _call(self, prompts):
        x, y = check_prompts("knn", prompts)
        dist = _sq_dists(prompts.x_query[:, None, :], x)
        return _knn_mean(dist, y, jnp.ones(dist.shape[1:], bool), self.k)[:, 0]

    def _prefix(self, prompts):
        x, y = check_prompts("knn", prompts, query=False)
        if x.shape[1] == 1:
            return jnp.zeros_like(y)
        return _knn_mean(_sq_dists(x, x), y, _earlier(x.shape[1]), self.k)


def knn(k: int = 3) -> KNearestNeighbours:
    """Garg et al.'s k-nearest-neighbour baseline (``k`` an integer >= 1); see [`KNearestNeighbours`][icl.predictors.KNearestNeighbours]."""
    return KNearestNeighbours(k)


def _nw_mean(dist, y, valid, bandwidth):
    logits = jnp.where(valid, -dist / (2.0 * bandwidth**2), -jnp.inf)
    top = jnp.max(logits, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w = jnp.where(valid, jnp.exp(logits - top), 0.0)
    total = jnp.sum(w, axis=-1)
    return jnp.sum(w * y[:, None, :], axis=-1) / jnp.where(total > 0, total, 1.0)


@pytree_dataclass
class NadarayaWatson(JittedPredictor):
    """Gaussian-kernel regression ``sum_i softmax_i(-||x - x_i||^2 / (2 h^2)) y_i``; ``bandwidth`` h is a leaf."""

    bandwidth: jax.Array

    def __post_init__(self):
        object.__setattr__(self, "bandwidth", as_leaf(check_scalar("bandwidth", self.bandwidth, positive=True)))

    def _call(self, prompts):
        x, y = check_prompts("nadaraya_watson", prompts)
        dist = _sq_dists(prompts.x_query[:, None, :], x)
        h = jnp.asarray(self.bandwidth, x.dtype)
        return _nw_mean(dist, y, jnp.ones(dist.shape[1:], bool), h)[:, 0]

    def _prefix(self, prompts):
        x, y = check_prompts("nadaraya_watson", prompts, query=False)
        h = jnp.asarray(self.bandwidth, x.dtype)
        return _nw_mean(_sq_dists(x, x), y, _earlier(x.shape[1]), h)


def nadaraya_watson(bandwidth) -> NadarayaWatson:
    """Nadaraya-Watson kernel regression with Gaussian bandwidth ``h > 0`` finite; see [`NadarayaWatson`][icl.predictors.NadarayaWatson]."""
    return NadarayaWatson(bandwidth)
