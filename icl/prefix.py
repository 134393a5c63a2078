"""Deprecated: every predictor now has ``p.prefix(prompts)`` (:mod:`icl.predictors`), in Garg's convention.

The new ``p.prefix(prompts)[:, k - 1]`` predicts ``y_k`` from ``x_k`` using the first ``k - 1`` pairs. The old
functions here predicted the *query* from the first ``k`` pairs; they keep that meaning for this release,
computed by the new predictors (their ``prefix_weights`` and ``weights``), and warn with a
``DeprecationWarning`` naming the replacement on attribute access.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp


def _after_each_pair(pred, x, y):
    """Weights after the first ``k`` pairs, ``k = 1..n``: ``[batch, n, d]`` (the old convention)."""
    return jnp.concatenate([pred.prefix_weights(x, y)[:, 1:], pred.weights(x, y)[:, None]], axis=1)


def _query_predictor(weights_fn):
    def predict(prompts):
        return jnp.einsum("bkd,bd->bk", weights_fn(prompts.x, prompts.y), prompts.x_query)

    return predict


def _gd(step_sizes, preconditioner=None):
    from icl.predictors import gradient_descent

    return gradient_descent(step_sizes, preconditioner)


def _prefix_gd_weights(x, y, step_sizes, preconditioner=None):
    return _after_each_pair(_gd(step_sizes, preconditioner), x, y)


def _prefix_gradient_descent(step_sizes, preconditioner=None):
    pred = _gd(step_sizes, preconditioner)
    return _query_predictor(lambda x, y: _after_each_pair(pred, x, y))


def _prefix_ridge_weights(x, y, lam):
    from icl.predictors import ridge

    return _after_each_pair(ridge(lam), x, y)


def _prefix_ridge(lam):
    from icl.predictors import ridge

    pred = ridge(lam)
    return _query_predictor(lambda x, y: _after_each_pair(pred, x, y))


def _prefix_least_squares_weights(x, y):
    from icl.predictors import least_squares

    return _after_each_pair(least_squares(), x, y)


def _prefix_least_squares():
    return _query_predictor(_prefix_least_squares_weights)


def _prefix_posterior_mean_weights(x, y, prior_cov, noise_std):
    from icl.predictors import BayesPosteriorMean

    return _after_each_pair(BayesPosteriorMean(prior_cov, noise_std), x, y)


def _prefix_bayes_posterior_mean(task):
    from icl.predictors import bayes_posterior_mean

    pred = bayes_posterior_mean(task)
    return _query_predictor(lambda x, y: _after_each_pair(pred, x, y))


def _prefix_linear_predictor(weights_fn):
    return _query_predictor(weights_fn)


def _prefix_lsa(model):
    """Old-convention prefix of a linear transformer (query from the first ``k`` pairs), as before."""
    from icl.models import prompt_tokens

    layers = list(model.layers)

    def predict(prompts):
        context, query = prompt_tokens(prompts)
        n = context.shape[-2]
        lengths = jnp.arange(1, n + 1, dtype=context.dtype)
        gram = jnp.cumsum(context[..., :, None] * context[..., None, :], axis=1) / lengths[:, None, None]
        q = jnp.broadcast_to(query[:, None, :], context.shape)
        eye = jnp.eye(context.shape[-1], dtype=context.dtype)
        for i, layer in enumerate(layers):
            w_pv, w_kq = layer.w_pv[...], layer.w_kq[...]
            q = q + jnp.einsum("bkij,bkj->bki", gram, q @ w_kq.T) @ w_pv.T
            if i < len(layers) - 1:
                p = eye + jnp.einsum("ij,bkjl,lm->bkim", w_pv, gram, w_kq)
                gram = jnp.einsum("bkij,bkjl,bkml->bkim", p, gram, p)
        return q[..., -1]

    return predict


_REPLACEMENTS = {
    "PrefixPredictor": (None, "icl.predictors.Predictor (p.prefix(prompts) -> [batch, n])"),
    "prefix_linear_predictor": (_prefix_linear_predictor, "a icl.predictors.Predictor subclass with prefix"),
    "prefix_gd_weights": (_prefix_gd_weights, "icl.predictors.gradient_descent(...).prefix_weights"),
    "prefix_gradient_descent": (_prefix_gradient_descent, "icl.predictors.gradient_descent(...).prefix"),
    "prefix_ridge_weights": (_prefix_ridge_weights, "icl.predictors.ridge(lam).prefix_weights"),
    "prefix_ridge": (_prefix_ridge, "icl.predictors.ridge(lam).prefix"),
    "prefix_least_squares_weights": (_prefix_least_squares_weights, "icl.predictors.least_squares().prefix_weights"),
    "prefix_least_squares": (_prefix_least_squares, "icl.predictors.least_squares().prefix"),
    "prefix_posterior_mean_weights": (_prefix_posterior_mean_weights,
                                      "icl.predictors.BayesPosteriorMean(prior_cov, noise_std).prefix_weights"),
    "prefix_bayes_posterior_mean": (_prefix_bayes_posterior_mean, "icl.predictors.bayes_posterior_mean(task).prefix"),
    "prefix_lsa": (_prefix_lsa, "model.prefix(prompts)"),
}


def __getattr__(name: str):
    if name in _REPLACEMENTS:
        obj, replacement = _REPLACEMENTS[name]
        warnings.warn(
            f"icl.prefix.{name} is deprecated; use {replacement} (note: the new prefix predicts y_k from the first "
            "k - 1 pairs, Garg's convention, where this one predicts the query from the first k)",
            DeprecationWarning,
            stacklevel=2,
        )
        if name == "PrefixPredictor":
            from icl.predictors import Predictor

            return Predictor
        return obj
    raise AttributeError(f"module 'icl.prefix' has no attribute {name!r}")
