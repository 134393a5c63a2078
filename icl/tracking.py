"""Following a trained LSA against its gradient-descent construction (von Oswald et al. 2023; THEORY.md §2, §5).

von Oswald et al. (2023, §3 and Fig. 2) compare a trained linear self-attention layer with one GD step
``y_hat_GD = eta x_q^T h`` three ways, which this module provides for any model and any task:

- **along training**: :func:`train_with_snapshots` trains exactly like :func:`icl.train` (same
  initialisation, data keys and optimiser) but keeps the parameters every ``every`` steps;
  :func:`snapshot_metrics` then measures each snapshot against GD.
- **the three comparison metrics** (:func:`reference_metrics`): the prediction gap
  ``|y_hat_TF - y_hat_GD|``, the "model cosine" between ``d y_hat / d x_q`` of both, and the norm of the
  difference of those sensitivities ``||d y_hat_TF / d x_q - d y_hat_GD / d x_q||``.
- **along the straight line in weight space** between trained weights and the GD construction of
  Proposition 1 (:func:`gd_lsa_weights`), after fixing the gauge ``(W^PV, W^KQ) -> (s W^PV, W^KQ / s)``
  (:func:`align_gauge`): :func:`interpolation_losses`.
- **across input distributions**, e.g. inputs scaled out of distribution: :func:`evaluate_across_tasks`.

Why snapshots rather than re-training with more and more steps: re-training costs a run per
checkpoint, and with a cosine schedule a 1000-step run is not the first half of a 2000-step run. A
snapshot run is one run whose final parameters equal :func:`icl.train`'s (to float round-off; tested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.algorithms import Predictor
from icl.analysis import sensitivities
from icl.tasks import Prompts, Task, check_positive_int
from icl.training import TrainConfig, TrainResult, init_runs, mse_loss, run_training_grid

__all__ = [
    "Snapshots",
    "train_with_snapshots",
    "gd_lsa_weights",
    "align_gauge",
    "interpolate",
    "reference_metrics",
    "snapshot_metrics",
    "compare_with_reference",
    "interpolation_losses",
    "evaluate_across_tasks",
]


@dataclass
class Snapshots:
    """Parameters saved during training.

    Attributes:
      steps: ``[K + 1]`` optimiser steps taken at each snapshot (``steps[0] = 0``, the initialisation).
      params: ``nnx.State`` with leading axes ``[K + 1, num_seeds, ...]``.
      graphdef: the shared NNX graph definition.
    """

    steps: np.ndarray
    params: nnx.State
    graphdef: nnx.GraphDef

    def model(self, k: int, seed: int = 0) -> nnx.Module:
        """The model of snapshot ``k`` and seed ``seed`` (a predictor)."""
        return nnx.merge(self.graphdef, jax.tree.map(lambda a: a[k, seed], self.params))


def train_with_snapshots(
    model_fn: Callable[[nnx.Rngs], nnx.Module],
    task: Task,
    config: TrainConfig,
    every: int,
    loss_fn: Callable = mse_loss,
) -> tuple[TrainResult, Snapshots]:
    """Train like :func:`icl.train`, keeping the parameters every ``every`` steps (and at step 0 and the end).

    The same recipe as :func:`icl.train`: seed ``s`` has run key ``fold_in(key(config.seed), s)``, its
    initial parameters come from ``fold_in(run_key, 0)``, step ``t`` trains on
    ``task.sample(split(fold_in(run_key, 1), steps)[t], batch, n)``, with the optimiser of
    :func:`icl.training.make_optimizer`; so the final parameters equal ``icl.train``'s (a test checks it).
    Chunks of ``every`` steps run as one jitted ``lax.scan`` (``vmap`` over seeds) that compiles once
    (a shorter last chunk compiles once more). Progress goes to stderr when ``config.progress_every > 0``.

    Returns:
      ``(TrainResult, Snapshots)``.
    Raises:
      TrainingDivergedError: the loss became NaN or inf.
    """
    every = check_positive_int("every", every)
    start = time.perf_counter()
    graphdef, run_keys, params = init_runs(model_fn, config)
    snapshots, steps = [params], [0]

    def keep(done, chunk_params):
        snapshots.append(chunk_params)
        steps.append(done)

    params, losses = run_training_grid(graphdef, params, jnp.full((config.num_seeds,), config.lr), run_keys, task,
                                       False, config, loss_fn, start=start, chunk_steps=every, on_chunk=keep)
    result = TrainResult(graphdef, params, losses, config, time.perf_counter() - start)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *snapshots)
    return result, Snapshots(np.asarray(steps), stacked, graphdef)


def gd_lsa_weights(d: int, eta: float, preconditioner=None) -> tuple[np.ndarray, np.ndarray]:
    """LSA weights that run one (preconditioned) GD step: von Oswald et al. 2023, Proposition 1.

    ``W^KQ = [[P^T, 0], [0, 0]]`` and the last row of ``W^PV`` is ``[0, ..., 0, eta]`` (all else 0), so
    ``Gamma_eff = c A^T = eta P`` and ``y_hat = x_q^T (eta P) h`` exactly (THEORY.md §2). Returns numpy
    ``(w_pv, w_kq)``, each ``[d + 1, d + 1]``.
    """
    d = check_positive_int("d", d)
    w_pv = np.zeros((d + 1, d + 1))
    w_pv[d, d] = float(eta)
    w_kq = np.zeros((d + 1, d + 1))
    w_kq[:d, :d] = np.eye(d) if preconditioner is None else np.asarray(preconditioner, np.float64).T
    return w_pv, w_kq


def align_gauge(w_pv, w_kq, reference_w_kq) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Move trained weights along the gauge ``(s W^PV, W^KQ / s)`` towards a reference (THEORY.md §2).

    The LSA output depends on ``W^PV`` and ``W^KQ`` only through products, so ``s != 0`` changes nothing
    but where the weights sit. ``1/s`` is the least-squares fit of the query-key block: it minimises
    ``||A / s - A_ref||_F`` with ``A``, ``A_ref`` the top-left ``d x d`` blocks, i.e.
    ``1/s = <A, A_ref>_F / ||A||_F^2``. Returns ``(s W^PV, W^KQ / s, s)``.
    """
    w_pv, w_kq, ref = jnp.asarray(w_pv), jnp.asarray(w_kq), jnp.asarray(reference_w_kq)
    d = w_kq.shape[-1] - 1
    a, a_ref = w_kq[..., :d, :d], ref[..., :d, :d]
    inv_s = jnp.sum(a * a_ref, axis=(-2, -1)) / jnp.sum(a * a, axis=(-2, -1))
    s = 1.0 / inv_s
    return s[..., None, None] * w_pv, w_kq * inv_s[..., None, None], s


def interpolate(params_a, params_b, t):
    """The point ``(1 - t) * params_a + t * params_b`` of the straight line between two parameter trees."""
    return jax.tree.map(lambda a, b: (1.0 - t) * a + t * b, params_a, params_b)


def reference_metrics(predictor: Predictor, reference: Predictor, prompts: Prompts) -> dict[str, jax.Array]:
    """von Oswald et al. 2023's comparison of a model with GD, per prompt (each ``[batch]``).

    ``gap = |y_hat - y_hat_ref|``; ``reference_abs = |y_hat_ref|`` (the scale of the gap);
    ``cosine`` = cosine of ``d y_hat / d x_q`` and ``d y_hat_ref / d x_q`` ("model cos");
    ``sensitivity_diff = ||d y_hat / d x_q - d y_hat_ref / d x_q||``; ``sq_error`` and
    ``reference_sq_error`` = squared errors against ``y_query``; ``loss_diff`` = their difference.
    """
    pred, ref = predictor(prompts), reference(prompts)
    ga, gb = sensitivities(predictor, prompts), sensitivities(reference, prompts)
    norm_a, norm_b = jnp.linalg.norm(ga, axis=-1), jnp.linalg.norm(gb, axis=-1)
    sq, sq_ref = (pred - prompts.y_query) ** 2, (ref - prompts.y_query) ** 2
    return {
        "gap": jnp.abs(pred - ref),
        "reference_abs": jnp.abs(ref),
        "cosine": jnp.sum(ga * gb, axis=-1) / jnp.maximum(norm_a * norm_b, jnp.finfo(ga.dtype).tiny),
        "sensitivity_diff": jnp.linalg.norm(ga - gb, axis=-1),
        "sq_error": sq,
        "reference_sq_error": sq_ref,
        "loss_diff": sq - sq_ref,
    }


def snapshot_metrics(snapshots: Snapshots, reference: Predictor, prompts: Prompts) -> dict[str, np.ndarray]:
    """Means over ``prompts`` of :func:`reference_metrics` for every snapshot and seed: ``{name: [K + 1, seeds]}``.

    All snapshots see the same prompts; one compiled program (``vmap`` over snapshots and seeds).
    """
    graphdef = snapshots.graphdef

    @jax.jit
    def run(params, prompts):
        def one(p):
            metrics = reference_metrics(nnx.merge(graphdef, p), reference, prompts)
            return {k: v.mean() for k, v in metrics.items()}

        return jax.vmap(jax.vmap(one))(params)

    return {k: np.asarray(v) for k, v in run(snapshots.params, prompts).items()}


def _mean_se(total, total_sq, count):
    mean = total / count
    return float(mean), float(np.sqrt(max(total_sq / count - mean**2, 0.0) / max(count - 1, 1)))


def compare_with_reference(
    predictor: Predictor,
    reference: Predictor,
    task: Task,
    key: jax.Array,
    n: int,
    num_prompts: int = 100_000,
    chunk_size: int = 10_000,
) -> dict[str, tuple[float, float]]:
    """Mean and standard error of every :func:`reference_metrics` entry on fresh prompts of ``task``.

    Both predictors see the same prompts (so ``loss_diff`` is a paired difference); chunks of
    ``chunk_size`` run under one ``jit`` + ``lax.scan``; ``num_prompts`` is rounded up to whole chunks.
    Returns ``{name: (mean, se)}``.
    """
    n = check_positive_int("n", n)
    check_positive_int("num_prompts", num_prompts)
    chunk = min(check_positive_int("chunk_size", chunk_size), num_prompts)
    num_chunks = -(-num_prompts // chunk)

    @jax.jit
    def run(keys, task):
        def one_chunk(_, k):
            metrics = reference_metrics(predictor, reference, task.sample(k, chunk, n))
            return None, {name: (v.sum(), (v**2).sum()) for name, v in metrics.items()}

        return jax.lax.scan(one_chunk, None, keys)[1]

    sums = run(jax.random.split(key, num_chunks), task)
    count = num_chunks * chunk
    return {name: _mean_se(np.asarray(s, np.float64).sum(), np.asarray(s2, np.float64).sum(), count)
            for name, (s, s2) in sums.items()}


def interpolation_losses(graphdef: nnx.GraphDef, params_a, params_b, ts, prompts: Prompts):
    """MSE (mean, SE over prompts) of the model at ``(1 - t) params_a + t params_b`` for each ``t`` in ``ts``.

    von Oswald et al. 2023, Fig. 2: the loss along the line from trained weights (``t = 0``) to the GD
    construction (``t = 1``). All points see the same ``prompts``; the points run one after another
    (``lax.map``) to bound memory. Returns numpy ``(means [T], ses [T])``.
    """
    ts = jnp.asarray(ts, dtype=jnp.asarray(0.0).dtype)

    @jax.jit
    def run(ts, params_a, params_b, prompts):
        def one(t):
            sq = (nnx.merge(graphdef, interpolate(params_a, params_b, t))(prompts) - prompts.y_query) ** 2
            return sq.mean(), sq.std() / jnp.sqrt(sq.shape[0] - 1.0)

        return jax.lax.map(one, ts)

    means, ses = run(ts, params_a, params_b, prompts)
    return np.asarray(means), np.asarray(ses)


def evaluate_across_tasks(
    predictors: Mapping[str, Predictor],
    tasks: Sequence[Task],
    key: jax.Array,
    n: int,
    num_prompts: int = 100_000,
    pairs: Sequence[tuple[str, str]] = (),
    chunk_size: int = 10_000,
) -> dict:
    """MSE of each predictor on each of several tasks of one kind (e.g. inputs scaled out of distribution).

    The tasks must be pytrees with equal static structure (same class and ``d``); they are stacked and
    evaluated under one compiled program. Every task uses the same chunk keys (common random numbers),
    and for each pair ``(a, b)`` the paired difference of squared errors is reported too.

    Returns:
      ``{"loss": {name: (means [T], ses [T])}, "loss_diff": {(a, b): (means [T], ses [T])}}`` (numpy).
    """
    n = check_positive_int("n", n)
    check_positive_int("num_prompts", num_prompts)
    chunk = min(check_positive_int("chunk_size", chunk_size), num_prompts)
    num_chunks = -(-num_prompts // chunk)
    names = list(predictors)
    for a, b in pairs:
        for name in (a, b):
            if name not in predictors:
                raise ValueError(f"pairs names {name!r}, which is not among the predictors {names}")
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *tasks)
    pairs = tuple(pairs)

    @jax.jit
    def run(stacked, keys):
        def per_task(task):
            def one_chunk(_, k):
                p = task.sample(k, chunk, n)
                sq = {name: (f(p) - p.y_query) ** 2 for name, f in predictors.items()}
                vals = {**{("loss", name): v for name, v in sq.items()},
                        **{("diff", a, b): sq[a] - sq[b] for a, b in pairs}}
                return None, {k_: (v.sum(), (v**2).sum()) for k_, v in vals.items()}

            return jax.lax.scan(one_chunk, None, keys)[1]

        return jax.lax.map(per_task, stacked)

    sums = run(stacked, jax.random.split(key, num_chunks))
    count = num_chunks * chunk

    def stats(name):
        s, s2 = (np.asarray(v, np.float64).sum(axis=1) for v in sums[name])
        mean = s / count
        return mean, np.sqrt(np.maximum(s2 / count - mean**2, 0.0) / max(count - 1, 1))

    return {"loss": {name: stats(("loss", name)) for name in names},
            "loss_diff": {(a, b): stats(("diff", a, b)) for a, b in pairs}}
