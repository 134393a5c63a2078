"""icl: an in-context learning theory sandbox (JAX + Flax NNX + Optax).

Tasks sample prompts; models, baselines and closed-form optima are all predictors (``Prompts -> [batch]``);
theory gives the closed forms they are measured against. See README.md and THEORY.md.
"""

from icl.algorithms import (
    Predictor,
    averaging,
    bayes_posterior_mean,
    gd_weights,
    gradient_descent,
    least_squares,
    least_squares_weights,
    linear_predictor,
    posterior,
    predictive_variance,
    recursive_least_squares_weights,
    ridge,
    ridge_weights,
)
from icl.analysis import (
    Comparison,
    compare_predictors,
    dist_to_identity,
    implied_preconditioner,
    lsa_blocks,
    prediction_gap,
    relative_error,
    residual_terms,
    sensitivities,
    sensitivity_cosine,
)
from icl.models import LinearSelfAttention, LinearTransformer, prompt_tokens
from icl.tasks import LinearRegressionTask, Prompts, Task, check_prompts, random_rotation
from icl.theory import (
    expected_hh,
    isotropic_optimal_risk,
    isotropic_optimal_step_size,
    one_step_gd_risk,
    optimal_gamma,
    optimal_risk,
    optimal_step_size,
    risk,
)
from icl.training import TrainConfig, TrainingDivergedError, TrainResult, make_optimizer, mse_loss, train
from icl.sweeps import SweepResult, grid_points, sweep
from icl.nonlinear import (
    ReluNetworkTask,
    SingleIndexTask,
    TargetMoments,
    estimate_moments,
    nonlinear_one_step_risk,
    nonlinear_optimal_risk,
    nonlinear_optimal_step_size,
)
from icl.uniform import UniformLinearTask, iid_one_step_risk, iid_optimal_risk, iid_optimal_step_size
from icl.multistep import (
    SparseLinearTransformer,
    gd_plus_plus,
    gd_plus_plus_risk,
    multistep_gd_risk,
    optimal_gd_plus_plus,
    optimal_multistep_step_sizes,
)
from icl.population import gradient_flow_limit, population_loss, train_population, zfb_initialization
from icl.tracking import (
    Snapshots,
    align_gauge,
    compare_with_reference,
    gd_lsa_weights,
    interpolation_losses,
    train_with_snapshots,
)

__version__ = "0.1.0"
