"""Closed forms of in-context learning theory: one API over every task law that has one (docs/theory.md).

- One layer / one GD step (§3-§5): [`optimal_gamma`][icl.theory.optimal_gamma], [`optimal_step_size`][icl.theory.optimal_step_size], [`optimal_risk`][icl.theory.optimal_risk],
  [`risk`][icl.theory.risk], [`one_step_risk`][icl.theory.one_step_risk], [`expected_hh`][icl.theory.expected_hh] take ``(task, n)`` for any task whose ``law()`` is a
  [`GaussianLaw`][icl.tasks.GaussianLaw] (Gaussian, sparse), [`IIDLaw`][icl.tasks.IIDLaw] (uniform inputs) or a
  [`TargetLaw`][icl.tasks.TargetLaw] with known moments (nonlinear targets), a law itself, or the
  [`TargetMoments`][icl.theory.TargetMoments] of [`estimate_moments`][icl.theory.estimate_moments]. Results are float64 numpy whatever the JAX precision;
  [`differentiable_risk`][icl.theory.differentiable_risk] and [`population_loss`][icl.theory.population_loss] are the ``jax.numpy`` versions.
- Several steps (§6): [`multistep_gd_risk`][icl.theory.multistep_gd_risk], [`optimal_multistep_step_sizes`][icl.theory.optimal_multistep_step_sizes],
  [`gd_plus_plus_risk`][icl.theory.gd_plus_plus_risk], [`optimal_gd_plus_plus`][icl.theory.optimal_gd_plus_plus], [`wishart_trace_moments`][icl.theory.wishart_trace_moments].
- Tied (looped) K-step GD (§16): [`tied_gd_risk`][icl.theory.tied_gd_risk], [`optimal_tied_step_size`][icl.theory.optimal_tied_step_size],
  [`tied_gd_risk_polynomial`][icl.theory.tied_gd_risk_polynomial].
- Asymptotics of linear attention (§15, Lu et al. 2025): [`asymptotic_icl_error`][icl.theory.asymptotic_icl_error] and the finite-d
  reduced model ([`fit_reduced_gamma`][icl.theory.fit_reduced_gamma], [`reduced_test_error`][icl.theory.reduced_test_error], [`simulate_icl_error`][icl.theory.simulate_icl_error], ...).
- Population training (§2-§3): [`population_loss`][icl.theory.population_loss], [`train_population`][icl.theory.train_population], [`gradient_flow_limit`][icl.theory.gradient_flow_limit],
  [`zfb_initialization`][icl.theory.zfb_initialization], ...
"""

from __future__ import annotations

from icl.theory.api import (
    differentiable_risk, expected_hh, law_of, one_step_risk, optimal_gamma, optimal_risk, optimal_step_size, risk)
from icl.theory.asymptotic import (
    asymptotic_icl_error, fit_reduced_gamma, pretraining_features, pretraining_sizes, reduced_features,
    reduced_test_error, reduced_test_error_mc, simulate_icl_error, solve_reduced_gamma, wishart_stieltjes)
from icl.theory.looped import optimal_tied_step_size, tied_gd_risk, tied_gd_risk_polynomial
from icl.theory.multistep import (
    gd_plus_plus_polynomial, gd_plus_plus_risk, gd_polynomial, multistep_gd_risk, optimal_gd_plus_plus,
    optimal_multistep_step_sizes, polynomial_risk, wishart_mixed_trace_moment, wishart_trace_moments)
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
    "train_population", "wishart_mixed_trace_moment", "wishart_trace_moments", "zfb_initialization", "optimal_tied_step_size", "tied_gd_risk",
    "tied_gd_risk_polynomial",
]
