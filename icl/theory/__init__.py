"""Closed forms of in-context learning theory: one API over every task law that has one (docs/theory.md).

- One layer / one GD step (§3-§5): :func:`optimal_gamma`, :func:`optimal_step_size`, :func:`optimal_risk`,
  :func:`risk`, :func:`one_step_risk`, :func:`expected_hh` take ``(task, n)`` for any task whose ``law()`` is a
  :class:`~icl.tasks.GaussianLaw` (Gaussian, sparse), :class:`~icl.tasks.IIDLaw` (uniform inputs) or a
  :class:`~icl.tasks.TargetLaw` with known moments (nonlinear targets), a law itself, or the
  :class:`TargetMoments` of :func:`estimate_moments`. Results are float64 numpy whatever the JAX precision;
  :func:`differentiable_risk` and :func:`population_loss` are the ``jax.numpy`` versions.
- Several steps (§6): :func:`multistep_gd_risk`, :func:`optimal_multistep_step_sizes`,
  :func:`gd_plus_plus_risk`, :func:`optimal_gd_plus_plus`, :func:`wishart_trace_moments`.
- Asymptotics of linear attention (§15, Lu et al. 2025): :func:`asymptotic_icl_error` and the finite-d
  reduced model (:func:`fit_reduced_gamma`, :func:`reduced_test_error`, :func:`simulate_icl_error`, ...).
- Population training (§2-§3): :func:`population_loss`, :func:`train_population`, :func:`gradient_flow_limit`,
  :func:`zfb_initialization`, ...
"""

from __future__ import annotations

from icl.theory.api import (
    differentiable_risk, expected_hh, law_of, one_step_risk, optimal_gamma, optimal_risk, optimal_step_size, risk)
from icl.theory.asymptotic import (
    asymptotic_icl_error, fit_reduced_gamma, pretraining_features, pretraining_sizes, reduced_features,
    reduced_test_error, reduced_test_error_mc, simulate_icl_error, solve_reduced_gamma, wishart_stieltjes)
from icl.theory.multistep import (
    gd_plus_plus_polynomial, gd_plus_plus_risk, gd_polynomial, multistep_gd_risk, optimal_gd_plus_plus,
    optimal_multistep_step_sizes, polynomial_risk, wishart_trace_moments)
from icl.theory.nonlinear import TargetMoments, estimate_moments, linear_part_norm2
from icl.theory.population import (
    PopulationFlow, conserved_quantity, flow_time_scales, gradient_flow_limit, population_loss, train_population,
    zfb_initialization)

__all__ = [
    "asymptotic_icl_error", "fit_reduced_gamma", "pretraining_features", "pretraining_sizes", "reduced_features",
    "reduced_test_error", "reduced_test_error_mc", "simulate_icl_error", "solve_reduced_gamma", "wishart_stieltjes",
    "PopulationFlow", "TargetMoments", "conserved_quantity", "differentiable_risk", "estimate_moments", "expected_hh",
    "flow_time_scales", "gd_plus_plus_polynomial", "gd_plus_plus_risk", "gd_polynomial", "gradient_flow_limit",
    "law_of", "linear_part_norm2", "multistep_gd_risk", "one_step_risk", "optimal_gamma", "optimal_gd_plus_plus",
    "optimal_multistep_step_sizes", "optimal_risk", "optimal_step_size", "polynomial_risk", "population_loss", "risk",
    "train_population", "wishart_trace_moments", "zfb_initialization",
]
