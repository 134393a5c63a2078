"""Every predictor in one home: ``p(prompts) -> [batch]`` and ``p.prefix(prompts) -> [batch, n]``.

Protocol ([`icl.protocol`][icl.protocol]): ``p(prompts)`` predicts the query from the whole context;
``p.prefix(prompts)[:, k - 1]`` predicts ``y_k`` from ``x_k`` using the first ``k - 1`` pairs (Garg et al.
2022; 0 at ``k = 1``), docs/theory.md §10. Mean-and-variance predictors (``returns_variance = True``) return
``(mean, var)`` pairs. Library predictors are pytrees whose hyper-parameters are leaves.

- ``gd``: K-step (preconditioned) GD, GD++, averaging, ``linear_predictor``.
- ``regression``: least squares (minimum norm), ridge, Bayes posterior mean and predictive,
  all by QR updating (``qr``); recursive least squares.
- ``lasso``: LASSO by FISTA. ``nonparametric``: k-NN, Nadaraya-Watson.
"""

from icl.predictors.base import Predictor
from icl.predictors.gd import (
    Averaging, GDPlusPlus, GradientDescent, LinearPredictor, averaging, gd_plus_plus, gd_plus_plus_weights,
    gd_weights, gradient_descent, linear_predictor)
from icl.predictors.dmmse import DiscreteMMSE, DiscreteMMSEPredictive, dmmse
from icl.predictors.lasso import Lasso, lasso, lasso_weights
from icl.predictors.mixture import (
    NoiseMixturePosteriorMean, NoiseMixturePredictive, noise_mixture_posterior_mean, noise_mixture_predictive)
from icl.predictors.nonparametric import KNearestNeighbours, NadarayaWatson, knn, nadaraya_watson
from icl.predictors.regression import (
    BayesPosteriorMean, BayesPredictive, LeastSquares, Ridge, bayes_posterior_mean, bayes_predictive, least_squares,
    least_squares_weights, posterior, predictive_variance, recursive_least_squares_weights, ridge, ridge_weights)

__all__ = [
    "Predictor", "gradient_descent", "gd_plus_plus", "ridge", "least_squares", "bayes_posterior_mean",
    "bayes_predictive", "averaging", "knn", "lasso", "nadaraya_watson", "linear_predictor", "GradientDescent",
    "GDPlusPlus", "Ridge", "LeastSquares", "BayesPosteriorMean", "BayesPredictive", "Averaging", "KNearestNeighbours",
    "Lasso", "NadarayaWatson", "LinearPredictor", "gd_weights", "gd_plus_plus_weights", "ridge_weights",
    "least_squares_weights", "lasso_weights", "posterior", "predictive_variance", "recursive_least_squares_weights",
    "DiscreteMMSE", "DiscreteMMSEPredictive", "dmmse", "NoiseMixturePosteriorMean", "NoiseMixturePredictive",
    "noise_mixture_posterior_mean", "noise_mixture_predictive",
]
