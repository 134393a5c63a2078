"""Deprecated: the baselines moved to :mod:`icl.predictors` (one home for every predictor).

Every old name still resolves, to the same object in :mod:`icl.predictors`, with a ``DeprecationWarning``
naming the replacement (on attribute access, not on import). ``Predictor`` is now a base class rather than a
``Callable`` alias; plain functions ``prompts -> [batch]`` are still accepted wherever a predictor is.
"""

from __future__ import annotations

from icl._deprecation import shim


_MOVED = {
    name: f"icl.predictors.{name}"
    for name in (
        "Predictor",
        "linear_predictor",
        "gd_weights",
        "gradient_descent",
        "ridge_weights",
        "ridge",
        "posterior",
        "bayes_posterior_mean",
        "predictive_variance",
        "least_squares_weights",
        "least_squares",
        "averaging",
        "recursive_least_squares_weights",
    )
}


__getattr__, __dir__ = shim("icl.algorithms", _MOVED)
