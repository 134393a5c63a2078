"""Nonlinear targets: optimal one-step GD from the target moments A, B, C (Mahankali et al. 2023, Thm 3).

docs/theory.md §4. For ``x ~ N(0, I_d)`` and ``f`` from a rotation-invariant law, with ``A = E[y^2]``,
``B = E_f ||E_x[x f(x)]||^2`` and ``C = E[y^2 ||x||^2]`` (noise included): ``E[x x^T] = I``,
``E[h (y_q x_q)^T] = (B/d) I`` and ``E[h h^T] = ((n - 1) B + C)/(n d) I``, so the best ``P(Gamma)`` predictor is
one GD step ``Gamma* = eta I`` with

    eta = n B / ((n - 1) B + C),    R(eta) = A - 2 eta B + eta^2 ((n - 1) B + C) / n,    R* = A - eta* B.

For ``f(x) = w^T x`` with ``w ~ N(0, I)``: ``B = d``, ``C = d (d + 2 + sigma^2)``, which gives back
``n / (n + d + 1 + sigma^2)``. Tasks give exact moments through ``law()``; any other task's moments are
estimated by [`estimate_moments`][icl.theory.estimate_moments] (unbiased, with standard errors), whose [`TargetMoments`][icl.theory.TargetMoments] the one
API accepts in place of a task: ``icl.optimal_step_size(moments, n)``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import is_pytree
from icl.tasks.base import TargetLaw, check_positive_int
from icl.theory.moments import Moments

__all__ = ["TargetMoments", "estimate_moments", "linear_part_norm2"]


def target_moments(law: TargetLaw, n: int):
    """``S = I``, ``G = (B/d) I``, ``H = ((n - 1) B + C)/(n d) I``, ``A`` (docs/theory.md §4), float64."""
    eye = np.eye(law.d)
    return Moments(s=eye, g=law.b / law.d * eye, h=((n - 1) * law.b + law.c) / (n * law.d) * eye, a=law.a)


@dataclasses.dataclass(frozen=True)
class TargetMoments:
    """Monte Carlo estimates of ``A = E y^2``, ``B = E_f ||E_x[x y]||^2``, ``C = E[y^2 ||x||^2]``.

    Accepted by the one API in place of a task (``icl.optimal_step_size(moments, n)``, [`icl.optimal_risk`][icl.theory.optimal_risk],
    [`icl.one_step_risk`][icl.theory.one_step_risk], [`icl.optimal_gamma`][icl.theory.optimal_gamma]), which uses the point estimates; ``optimal_step_size``
    and ``optimal_risk`` also give delta-method standard errors.

    Attributes:
      a, b, c: the estimates; a_se, b_se, c_se: their standard errors.
      cov: ``[3, 3]`` covariance of the estimates ``(a, b, c)`` (they share the sampled functions).
      num_functions: functions ``f`` drawn; points_per_function: ``x`` draws per function (two halves).
      d: input dimension of the task (``None`` if unknown: then ``optimal_gamma`` cannot size ``eta* I``).
    """

    a: float
    b: float
    c: float
    a_se: float
    b_se: float
    c_se: float
    cov: np.ndarray
    num_functions: int
    points_per_function: int
    d: int | None = None

    def law(self) -> TargetLaw:
        """The [`TargetLaw`][icl.tasks.TargetLaw] with these point estimates."""
        if self.d is None:
            raise ValueError("d is None: build TargetMoments with d (estimate_moments sets it) to use the one API")
        return TargetLaw(self.d, self.a, max(self.b, 0.0), self.c, family="TargetMoments")

    def _delta(self, value_fn) -> tuple[float, float]:
        theta = np.array([self.a, self.b, self.c])
        value = float(value_fn(*theta))
        steps = 1e-6 * np.maximum(np.abs(theta), 1e-12)
        grad = np.array([(value_fn(*(theta + s * e)) - value_fn(*(theta - s * e))) / (2 * s)
                         for s, e in zip(steps, np.eye(3))])
        return value, float(np.sqrt(max(grad @ self.cov @ grad, 0.0)))

    def optimal_step_size(self, n: int) -> tuple[float, float]:
        """``(eta, SE)`` with ``eta = n B / ((n - 1) B + C)``; the SE by the delta method (docs/theory.md §4)."""
        n = check_positive_int("n", n)
        return self._delta(lambda a, b, c: _eta(b, c, n))

    def optimal_risk(self, n: int) -> tuple[float, float]:
        """``(R*, SE)`` with ``R* = A - eta B``; the SE by the delta method."""
        n = check_positive_int("n", n)
        return self._delta(lambda a, b, c: a - _eta(b, c, n) * b)



def _eta(b, c, n):
    return n * b / ((n - 1) * b + c)


def estimate_moments(
    task,
    key: jax.Array,
    num_functions: int = 50_000,
    points_per_function: int = 256,
    chunk_size: int = 1000,
) -> TargetMoments:
    """Unbiased Monte Carlo estimates of ``A``, ``B``, ``C`` for any task (docs/theory.md §4), with SEs.

    Each function ``f`` is one prompt of ``2K = points_per_function`` context pairs (``task.sample`` draws one
    ``f`` per prompt). With the halves' means ``m_1 = mean_{i <= K} y_i x_i`` and ``m_2 = mean_{i > K} y_i x_i``
    (independent given ``f``, each with mean ``E_x[x y]``):

        B_f = m_1 . m_2   (unbiased for ||E_x[x y]||^2; the plug-in ||mean||^2 would add tr Cov / 2K),
        C_f = mean_i y_i^2 ||x_i||^2,   A_f = mean_i y_i^2,

    averaged over ``num_functions`` i.i.d. functions (rounded up to whole chunks); SEs and the covariance come
    from the spread of ``(A_f, B_f, C_f)`` across functions. Label noise is included (it adds ``sigma^2`` to
    ``A`` and ``sigma^2 d`` to ``C`` for ``x ~ N(0, I)``), as the formulas need.
    """
    check_positive_int("num_functions", num_functions)
    points = check_positive_int("points_per_function", points_per_function)
    if points < 2 or points % 2:
        raise ValueError(f"points_per_function must be an even integer >= 2, got {points_per_function!r}")
    chunk = min(check_positive_int("chunk_size", chunk_size), num_functions)
    num_chunks = -(-num_functions // chunk)
    sums, outer = _moment_sums(*_task_args(task), jax.random.split(key, num_chunks), chunk=chunk, points=points)
    count = num_chunks * chunk
    mean = np.asarray(sums, np.float64).sum(0) / count
    second = np.asarray(outer, np.float64).sum(0) / count
    per_function_cov = (second - np.outer(mean, mean)) * count / max(count - 1, 1)
    cov = per_function_cov / count  # covariance of the three means
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    d = getattr(task, "d", None)
    return TargetMoments(float(mean[0]), float(mean[1]), float(mean[2]), float(se[0]), float(se[1]), float(se[2]),
                         cov, count, points, None if d is None else int(d))


def _task_args(task):
    """``(traced, static)``: a pytree task is traced (one compilation per kind of task), any other is static."""
    return (task, None) if is_pytree(task) else (None, task)


@functools.partial(jax.jit, static_argnames=("static_task", "chunk", "points"))
def _moment_sums(task, static_task, keys, chunk, points):
    """Per chunk: sums of ``u_f = (A_f, B_f, C_f)`` and of ``u_f u_f^T``; a ``lax.scan`` over chunk keys."""
    task = task if static_task is None else static_task

    def one_chunk(_, key):
        p = task.sample(key, chunk, points)
        xy = p.x * p.y[..., None]  # [chunk, 2K, d]
        half = points // 2
        b = jnp.einsum("bd,bd->b", xy[:, :half].mean(1), xy[:, half:].mean(1))
        c = jnp.mean(p.y**2 * jnp.sum(p.x**2, axis=-1), axis=1)
        a = jnp.mean(p.y**2, axis=1)
        u = jnp.stack([a, b, c], axis=-1)  # [chunk, 3]
        return None, (u.sum(0), jnp.einsum("bi,bj->ij", u, u))

    return jax.lax.scan(one_chunk, None, keys)[1]


def linear_part_norm2(task, key: jax.Array, num_functions: int = 50_000, chunk_size: int = 5000):
    """``B`` by Stein's lemma: mean and SE of ``||Prompts.w||^2`` over ``num_functions`` draws of ``f``.

    For [`ReluNetworkTask`][icl.tasks.ReluNetworkTask] and [`SingleIndexTask`][icl.tasks.SingleIndexTask], ``Prompts.w = E_x[x f(x)]``
    exactly, so this estimates ``B = E_f ||E_x[x f(x)]||^2`` without the inner Monte Carlo over ``x`` (lower
    variance than [`estimate_moments`][icl.theory.estimate_moments]; a cross-check of it). Returns ``(mean, se)``.
    """
    check_positive_int("num_functions", num_functions)
    chunk = min(check_positive_int("chunk_size", chunk_size), num_functions)
    num_chunks = -(-num_functions // chunk)
    sums = _norm2_sums(*_task_args(task), jax.random.split(key, num_chunks), chunk=chunk)
    s, s2 = (np.asarray(v, np.float64).sum() for v in sums)
    count = num_chunks * chunk
    mean = s / count
    return float(mean), float(np.sqrt(max(s2 / count - mean**2, 0.0) / max(count - 1, 1)))


@functools.partial(jax.jit, static_argnames=("static_task", "chunk"))
def _norm2_sums(task, static_task, keys, chunk):
    task = task if static_task is None else static_task

    def one_chunk(_, key):
        norm2 = jnp.sum(task.sample(key, chunk, 1).w ** 2, axis=-1)
        return None, (norm2.sum(), (norm2**2).sum())

    return jax.lax.scan(one_chunk, None, keys)[1]
