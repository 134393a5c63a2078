"""The training losses (``TrainConfig.loss``, docs/theory.md §1) and the curriculum applied before them.

- ``"query"``: ``mean_b (y_hat_b - y_query_b)^2`` (a model returning ``[batch]``).
- ``"every_prefix"``: ``mean_{b,k} (prefix_{b,k} - y_{b,k})^2`` over ``k = 1..n + 1`` (Garg et al. 2022: entry
  ``k`` predicts ``y_k`` from the first ``k - 1`` pairs). The query is the ``(n + 1)``-th point: the loss is
  ``model.prefix`` of the prompt extended by the pair ``(x_query, y_query)``, ``[batch, n + 1]``, so the
  position ``model(prompts)`` reads is trained too (with learned positions it would otherwise never be).
- ``"nll"``: Gaussian negative log-likelihood ``0.5 log(2 pi v) + (y - mu)^2 / (2 v)`` of a
  mean-and-variance model's ``(mu, v)`` at the query; ``"beta_nll"`` weights each term by
  ``stop_gradient(v)^beta`` (Seitzer et al. 2022; ``beta = TrainConfig.nll_beta``).
- ``"every_prefix_nll"`` / ``"every_prefix_beta_nll"``: the same on every prefix (``model.prefix``).
"""

from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from icl.protocol import check_output, has_prefix, predictor_name, returns_variance
from icl.tasks import Prompts
from icl.tasks.base import check_int
from icl.training.config import NLL_LOSSES, PREFIX_LOSSES, TrainConfig

__all__ = ["mse_loss", "gaussian_nll", "training_loss", "objective", "check_task", "with_query_as_last_pair",
           "takes_step"]


def mse_loss(model: Callable[[Prompts], jax.Array], prompts: Prompts) -> jax.Array:
    """Mean squared error ``mean_b (y_hat_b - y_query_b)^2`` (the loss of docs/theory.md §1)."""
    return jnp.mean((model(prompts) - prompts.y_query) ** 2)


def gaussian_nll(mean, var, y, beta: float = 0.0) -> jax.Array:
    """Elementwise Gaussian negative log-likelihood ``0.5 log(2 pi var) + (y - mean)^2 / (2 var)``, each
    term weighted by ``stop_gradient(var)^beta`` when ``beta`` (Seitzer et al. 2022's beta-NLL)."""
    var = jnp.asarray(var)
    terms = 0.5 * jnp.log(2 * jnp.pi * var) + (y - mean) ** 2 / (2 * var)
    return terms * jax.lax.stop_gradient(var) ** beta if beta else terms


def _builtin_loss(config: TrainConfig, model, prompts: Prompts, points):
    """``config.loss`` (module docstring); checks the output shape at trace time."""
    kind, name, variance = config.loss, predictor_name(model), returns_variance(model)
    nll = kind in NLL_LOSSES
    if nll and not variance:
        raise ValueError(f"loss={kind!r} needs a mean-and-variance model (returns_variance=True, e.g. built with "
                         f"variance_head=True); {name} returns a mean only")
    if not nll and variance:
        raise ValueError(f"{name} returns a mean and a variance; train it with loss='nll' or 'beta_nll' "
                         f"(or the every-prefix versions), not loss={kind!r}")
    beta = float(config.nll_beta) if "beta" in kind else 0.0
    prefix = kind in PREFIX_LOSSES
    if prefix and not has_prefix(model):
        raise ValueError(f"loss={kind!r} needs model.prefix(prompts) -> [batch, n]; {name} has no prefix method")
    n = prompts.y.shape[1]
    if prefix:
        prompts = with_query_as_last_pair(prompts)
    out = check_output(name, model.prefix(prompts) if prefix else model(prompts), prompts, prefix=prefix,
                       variance=variance)
    y = prompts.y if prefix else prompts.y_query
    terms = gaussian_nll(out[0], out[1], y, beta) if nll else (out - y) ** 2
    if not prefix or (isinstance(points, int) and points == n):
        return jnp.mean(terms)
    # a curriculum length points < n counts the first `points` prefixes; the query joins at the full length
    count = points + (points >= n)
    mask = (jnp.arange(n + 1) < count).astype(terms.dtype)
    return jnp.sum(terms * mask) / (terms.shape[0] * jnp.asarray(count, terms.dtype))


def with_query_as_last_pair(prompts: Prompts) -> Prompts:
    """The prompt with ``(x_query, y_query)`` appended as pair ``n + 1``: ``x [b, n + 1, d]``, ``y [b, n + 1]``."""
    return prompts._replace(x=jnp.concatenate([prompts.x, prompts.x_query[:, None]], axis=1),
                            y=jnp.concatenate([prompts.y, prompts.y_query[:, None]], axis=1))


def _mask_dims(prompts: Prompts, active) -> Prompts:
    """Zero the inactive input coordinates and remove their contribution ``x_j w_j`` from the targets."""
    keep = (jnp.arange(prompts.x.shape[-1]) < active).astype(prompts.x.dtype)
    drop = 1.0 - keep
    y = prompts.y - jnp.einsum("bnd,bd->bn", prompts.x * drop, prompts.w)
    y_query = prompts.y_query - jnp.einsum("bd,bd->b", prompts.x_query * drop, prompts.w)
    return Prompts(x=prompts.x * keep, y=y, x_query=prompts.x_query * keep, y_query=y_query, w=prompts.w * keep)


def objective(config: TrainConfig, loss_fn, model, prompts: Prompts, step) -> jax.Array:
    """[`training_loss`][icl.training.training_loss] without checks: ``step`` may be traced (the training engine's loss)."""
    points = prompts.y.shape[1]
    curriculum = config.curriculum
    if curriculum is not None:
        if curriculum.dims_start is not None:
            prompts = _mask_dims(prompts, curriculum.dims(step, prompts.x.shape[-1]))
        points = curriculum.points(step, points)
    if loss_fn is not None and loss_fn is not mse_loss:
        return loss_fn(model, prompts, step=step) if takes_step(loss_fn) else loss_fn(model, prompts)
    return _builtin_loss(config, model, prompts, points)


def takes_step(loss_fn: Callable) -> bool:
    """Whether a custom loss is called with the training step: ``loss_fn(model, prompts, step=step)`` when it has a
    parameter named ``step`` (a traced integer inside [`icl.train`][icl.training.train]: a schedule over training,
    such as [`loop_window_loss`][icl.models.loop_window_loss]'s loop curriculum), else ``loss_fn(model, prompts)``."""
    try:
        return "step" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # a callable without a signature (a builtin): the two-argument protocol
        return False


def training_loss(model, prompts: Prompts, config: TrainConfig, loss_fn: Callable | None = None,
                  step: int | None = None) -> jax.Array:
    """The loss [`icl.train`][icl.training.train] minimises, on given prompts: ``config.loss`` (or ``loss_fn``) after the curriculum.

    Args:
      model: a model (or any predictor with the outputs ``config.loss`` needs).
      prompts: the prompts (``[batch, n, d]``).
      config: the [`TrainConfig`][icl.training.TrainConfig] (its ``loss``, ``nll_beta`` and ``curriculum`` are used).
      loss_fn: a custom ``loss_fn(model, prompts)`` (or ``loss_fn(model, prompts, step)``, see
        [`takes_step`][icl.training.takes_step]) instead of ``config.loss``.
      step: the training step whose curriculum applies (default: the end of training, ``config.steps``).
    Returns:
      The scalar loss (jit-able; the output shape is checked, a ValueError names the model).
    """
    step = config.steps if step is None else check_int("step", step, 0)
    return objective(config, loss_fn, model, prompts, step)


def check_task(task, config: TrainConfig, loss_fn=None) -> None:
    """Raise ValueError unless ``config``'s curriculum (and ``loss_fn``) can train on ``task``."""
    curriculum = config.curriculum
    if loss_fn not in (None, mse_loss) and curriculum is not None and curriculum.points_start is not None:
        raise ValueError("a curriculum on prompt length masks the config's every-prefix loss; it cannot be "
                         "combined with a custom loss_fn")
    if curriculum is None or curriculum.dims_start is None:
        return
    if curriculum.dims_start > task.d:
        raise ValueError(f"curriculum.dims_start must be <= the task's d={task.d}, got {curriculum.dims_start}")
    p = task.sample(jax.random.key(0), 64, 4)
    if p.w is None or tuple(p.w.shape) != tuple(p.x_query.shape):
        raise ValueError(f"a curriculum over dimensions needs a task whose prompts carry the weights w "
                         f"([batch, d]) of y = w^T x + noise; {type(task).__name__} has none")
    resid = np.asarray(p.y) - np.einsum("bnd,bd->bn", np.asarray(p.x), np.asarray(p.w))
    noise = float(getattr(task, "noise_std", 0.0) or 0.0)
    if float(np.std(resid)) > 3 * noise + 1e-3 * (float(np.std(np.asarray(p.y))) + 1e-12):
        raise ValueError(f"a curriculum over dimensions needs a linear task (y = w^T x + noise); "
                         f"{type(task).__name__}'s targets are not linear in x")
