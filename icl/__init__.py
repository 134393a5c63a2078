"""icl: an in-context learning theory sandbox (JAX + Flax NNX + Optax).

Tasks sample prompts; models, baselines and closed-form optima are all predictors (``Prompts -> [batch]``
with ``.prefix(Prompts) -> [batch, n]``; the protocol is [`icl.protocol`][icl.protocol], docs/models.md); theory gives
the closed forms they are measured against. See README.md, docs/ and docs/theory.md.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from icl.pytree import (
    pytree_dataclass, static_field)
from icl.protocol import (
    Model, returns_variance, has_prefix, predictor_name, check_output)
from icl.tasks import (
    LINKS, FiniteTaskPool, NoiseMixtureTask, GaussianLaw, IIDLaw, IllConditionedWarning, LinearRegressionTask, Prompts, ReluNetworkTask,
    SingleIndexTask, SparseLinearTask, TargetLaw, Task, UniformLinearTask, check_non_negative, check_positive,
    check_positive_int, check_prompts, check_spd, each_query, random_rotation, uniform_moments, weight_prior)
from icl.theory import (
    PopulationFlow, TargetMoments, conserved_quantity, differentiable_risk, estimate_moments, expected_hh,
    flow_time_scales, gd_plus_plus_polynomial, gd_plus_plus_risk, gd_polynomial, gradient_flow_limit, law_of,
    linear_part_norm2, multistep_gd_risk, one_step_risk, optimal_gamma, optimal_gd_plus_plus,
    optimal_multistep_step_sizes, optimal_risk, optimal_step_size, polynomial_risk, population_loss, risk,
    train_population, wishart_trace_moments, zfb_initialization, asymptotic_icl_error, fit_reduced_gamma,
    pretraining_features, pretraining_sizes, reduced_features, reduced_test_error, reduced_test_error_mc,
    simulate_icl_error, solve_reduced_gamma, wishart_stieltjes, optimal_tied_step_size, tied_gd_risk,
    tied_gd_risk_polynomial)
from icl.predictors import (
    Predictor, gradient_descent, gd_plus_plus, ridge, least_squares, bayes_posterior_mean, bayes_predictive,
    averaging, knn, lasso, nadaraya_watson, linear_predictor, GradientDescent, GDPlusPlus, Ridge, LeastSquares,
    BayesPosteriorMean, BayesPredictive, Averaging, KNearestNeighbours, Lasso, NadarayaWatson, LinearPredictor,
    gd_weights, gd_plus_plus_weights, ridge_weights, least_squares_weights, lasso_weights, posterior,
    predictive_variance, recursive_least_squares_weights, DiscreteMMSE, DiscreteMMSEPredictive, dmmse,
    NoiseMixturePosteriorMean, NoiseMixturePredictive, noise_mixture_posterior_mean, noise_mixture_predictive)
from icl.models import (
    lsa_from_parameters, LinearSelfAttention, LinearTransformer, prompt_tokens, gd_lsa_weights, align_gauge,
    lsa_blocks, implied_preconditioner, residual_terms, relative_error, dist_to_identity, SparseLSALayer,
    SparseLinearTransformer, layer_preconditioners, whiten_preconditioner, Transformer, plot_attention_maps,
    set_gd_construction, layer_step_sizes, loop_window_loss, LinearRNN, DiagonalSSM, SelectiveSSM, linear_scan)
from icl.models.garg import load_garg_checkpoint, transformer_from_garg_state
from icl.training import (
    run_engine, run_keys, gaussian_nll, TrainConfig, Curriculum, TrainResult, Snapshots, TrainingDivergedError, train,
    train_with_snapshots, convergence_report, training_loss, make_optimizer, mse_loss, LOSSES)
from icl.sweeps import (
    sweep, SweepResult, grid_points, run_sharding, check_grid_keys)
from icl.evaluate import (
    MonteCarlo, monte_carlo, mean_se, predict, predict_prefix, Comparison, compare_predictors, ErrorCurve,
    error_curve, error_curves, prediction_gap, sensitivities, query_marginal_loss, sensitivity_cosine,
    reference_metrics, compare_with_reference, evaluate_across_tasks, snapshot_metrics, interpolation_losses,
    interpolate)
from icl.checkpoint import (
    CheckpointCorruptError, ResumeMismatchError, verify_checkpoint, CheckpointDir, save_checkpoint, load_checkpoint,
    latest_checkpoint)
from icl.io import (
    Claim, relative_claim, per_seed_claim, upper_bound_claim, lower_bound_claim, ratio_se, to_jsonable,
    nonfinite_paths, provenance, config_hash, atomic_write, write_run, remove_stale_temporaries)
from icl.fingerprint import (
    plot_fingerprint, FAMILIES, Fingerprint, fingerprint, implicit_weights)
from icl.probes import (
    PROBE_TARGETS, ProbeResult, probe, hidden_states)
from icl.uncertainty import (
    Calibration, CalibrationComparison, calibration, compare_calibration, predictive_stats, shifted_task,
    shift_evaluation)
from icl.plotting import (
    plot_error_curves, plot_fingerprint_heatmap, plot_coverage, plot_pit_histogram, plot_task_diversity,
    plot_learning_curves)

try:
    __version__ = version("icl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "pytree_dataclass", "static_field", "Model", "returns_variance", "has_prefix", "predictor_name", "check_output",
    "LINKS", "FiniteTaskPool", "GaussianLaw", "IIDLaw", "IllConditionedWarning", "LinearRegressionTask", "Prompts",
    "ReluNetworkTask", "SingleIndexTask", "SparseLinearTask", "TargetLaw", "Task", "UniformLinearTask",
    "check_non_negative", "check_positive", "check_positive_int", "check_prompts", "check_spd", "each_query",
    "random_rotation", "uniform_moments", "weight_prior", "PopulationFlow", "TargetMoments", "conserved_quantity",
    "differentiable_risk", "estimate_moments", "expected_hh", "flow_time_scales", "gd_plus_plus_polynomial",
    "gd_plus_plus_risk", "gd_polynomial", "gradient_flow_limit", "law_of", "linear_part_norm2", "multistep_gd_risk",
    "one_step_risk", "optimal_gamma", "optimal_gd_plus_plus", "optimal_multistep_step_sizes", "optimal_risk",
    "optimal_step_size", "polynomial_risk", "population_loss", "risk", "train_population", "wishart_trace_moments",
    "zfb_initialization", "asymptotic_icl_error", "fit_reduced_gamma", "pretraining_features", "pretraining_sizes",
    "reduced_features", "reduced_test_error", "reduced_test_error_mc", "simulate_icl_error", "solve_reduced_gamma",
    "wishart_stieltjes", "NoiseMixtureTask", "NoiseMixturePosteriorMean", "NoiseMixturePredictive",
    "noise_mixture_posterior_mean", "noise_mixture_predictive", "Predictor", "gradient_descent", "gd_plus_plus", "ridge", "least_squares",
    "bayes_posterior_mean", "bayes_predictive", "averaging", "knn", "lasso", "nadaraya_watson", "linear_predictor",
    "GradientDescent", "GDPlusPlus", "Ridge", "LeastSquares", "BayesPosteriorMean", "BayesPredictive", "Averaging",
    "KNearestNeighbours", "Lasso", "NadarayaWatson", "LinearPredictor", "gd_weights", "gd_plus_plus_weights",
    "ridge_weights", "least_squares_weights", "lasso_weights", "posterior", "predictive_variance",
    "recursive_least_squares_weights", "DiscreteMMSE", "DiscreteMMSEPredictive", "dmmse", "lsa_from_parameters",
    "LinearSelfAttention", "LinearTransformer", "prompt_tokens", "gd_lsa_weights", "align_gauge", "lsa_blocks",
    "implied_preconditioner", "residual_terms", "relative_error", "dist_to_identity", "SparseLSALayer",
    "SparseLinearTransformer", "layer_preconditioners", "whiten_preconditioner", "Transformer", "plot_attention_maps", "load_garg_checkpoint", "transformer_from_garg_state",
    "set_gd_construction", "run_engine", "run_keys", "gaussian_nll", "TrainConfig", "Curriculum", "TrainResult",
    "Snapshots", "TrainingDivergedError", "train", "train_with_snapshots", "convergence_report", "training_loss",
    "make_optimizer", "mse_loss", "LOSSES", "sweep", "SweepResult", "grid_points", "run_sharding", "check_grid_keys",
    "MonteCarlo", "monte_carlo", "mean_se", "predict", "predict_prefix", "Comparison", "compare_predictors",
    "ErrorCurve", "error_curve", "error_curves", "prediction_gap", "sensitivities", "query_marginal_loss",
    "sensitivity_cosine", "reference_metrics", "compare_with_reference", "evaluate_across_tasks", "snapshot_metrics",
    "interpolation_losses", "interpolate", "CheckpointCorruptError", "ResumeMismatchError", "verify_checkpoint",
    "CheckpointDir", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "Claim", "relative_claim",
    "per_seed_claim", "upper_bound_claim", "lower_bound_claim", "ratio_se", "to_jsonable", "nonfinite_paths",
    "provenance", "config_hash", "atomic_write", "write_run", "remove_stale_temporaries", "plot_fingerprint",
    "FAMILIES", "Fingerprint", "fingerprint", "implicit_weights", "PROBE_TARGETS", "ProbeResult", "probe", "hidden_states",
    "Calibration", "CalibrationComparison", "calibration", "compare_calibration", "predictive_stats", "shifted_task",
    "shift_evaluation", "plot_error_curves", "plot_fingerprint_heatmap", "plot_coverage", "plot_pit_histogram",
    "plot_task_diversity", "plot_learning_curves", "optimal_tied_step_size", "tied_gd_risk", "tied_gd_risk_polynomial",
    "layer_step_sizes", "loop_window_loss", "LinearRNN", "DiagonalSSM", "SelectiveSSM", "linear_scan",
]
