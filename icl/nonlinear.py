"""Nonlinear in-context targets and the optimal one-step GD for them (Mahankali et al. 2023, Thm 3; THEORY.md §4).

Each prompt draws a function ``f`` from a rotation-invariant law (``f o O`` has the law of ``f`` for every
orthogonal ``O``), then ``x_i ~ N(0, I_d)`` and ``y_i = f(x_i) + N(0, sigma^2)``. Mahankali, Hashimoto &
Ma (2023), Theorem 3: the best one-layer linear self-attention, like the best ``y_hat = x_q^T Gamma h``
(``h = X^T y / n``), is one GD step ``Gamma* = eta I`` with

    eta = n B / ((n - 1) B + C),   B = E_f ||E_x[x y]||^2,   C = E[y^2 ||x||^2],

and its MSE is ``R(eta) = A - 2 eta B + eta^2 ((n - 1) B + C) / n`` with ``A = E[y^2]``, so
``R* = A - eta B``. (Proof sketch: ``E[x_q^T Gamma h y_q] = tr(Gamma) B / d`` and
``E[h h^T] = ((n - 1) B + C) / (n d) I`` by rotation invariance; the terms of the LSA that are even in
``y`` decorrelate from the target because ``-I`` is orthogonal.) For a linear ``f(x) = w^T x`` with
``w ~ N(0, I)``, ``B = d`` and ``C = d (d + 2 + sigma^2)``, which gives back ``n / (n + d + 1 + sigma^2)``.

Families here (both rotation invariant, both return ``Prompts.w = E_x[x f(x)]``, the population
least-squares weights of the prompt's ``f``, computed exactly by Stein's lemma):

- :class:`ReluNetworkTask`: ``f(x) = v^T relu(W x) / sqrt(m)``, ``W_kj ~ N(0, 1/d)``, ``v ~ N(0, I_m)``.
- :class:`SingleIndexTask`: ``f(x) = g(u^T x)`` with ``u ~ N(0, index_std^2 I_d)`` and a fixed link ``g``.

:func:`estimate_moments` estimates ``A``, ``B`` and ``C`` for any task by Monte Carlo (unbiased, with
standard errors); :meth:`ReluNetworkTask.exact_moments` and :meth:`SingleIndexTask.exact_moments` give
the closed forms where they exist.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from icl.tasks import Prompts, Task, check_positive_int

__all__ = [
    "LINKS",
    "ReluNetworkTask",
    "SingleIndexTask",
    "TargetMoments",
    "estimate_moments",
    "linear_part_norm2",
    "nonlinear_optimal_step_size",
    "nonlinear_one_step_risk",
    "nonlinear_optimal_risk",
]

LINKS = ("tanh", "relu", "cubic")
"""Links of :class:`SingleIndexTask`: ``tanh(t)``, ``max(t, 0)`` and ``t^3``."""

# E_{z ~ N(0,1)}[phi(z)] by the trapezoid rule on [-9, 9] (2001 nodes, step 0.009). For phi analytic in a
# strip |Im z| < a its error is ~exp(-2 pi a / step); tanh'(r z) = sech^2(r z) has a = pi / (2r), so the rule
# stays at round-off for r up to ~50, where Gauss-Hermite loses digits already at r ~ 2.
_QUAD_NODES = np.linspace(-9.0, 9.0, 2001)
_QUAD_WEIGHTS = (_QUAD_NODES[1] - _QUAD_NODES[0]) * np.exp(-0.5 * _QUAD_NODES**2) / np.sqrt(2 * np.pi)


def _check_noise(noise_std) -> float:
    noise = float(noise_std)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    return noise


def _unflatten(cls, aux, names, leaves):
    # Rebuilt inside transformations (leaves may be tracers): validation ran at construction.
    task = object.__new__(cls)
    for name, value in zip(aux[0], aux[1]):
        object.__setattr__(task, name, value)
    for name, value in zip(names, leaves):
        object.__setattr__(task, name, value)
    return task


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True, eq=False)
class ReluNetworkTask:
    """Random one-hidden-layer ReLU network targets: ``f(x) = v^T relu(W x) / sqrt(m)`` (THEORY.md §4).

    Per prompt: ``W in R^{m x d}`` with i.i.d. ``N(0, 1/d)`` entries (rows of norm ~1), ``v ~ N(0, I_m)``,
    ``x ~ N(0, I_d)``, ``y = f(x) + N(0, sigma^2)``. The law of ``f`` is rotation invariant because
    ``W O`` has the law of ``W``. ``Prompts.w`` holds ``E_x[x f(x)] = W^T v / (2 sqrt(m))`` (Stein's
    lemma: ``E[x relu(w^T x)] = w P(w^T x > 0) = w / 2``).

    Args:
      d: input dimension, >= 1. width: hidden units ``m``, >= 1. noise_std: sigma >= 0.
    """

    d: int
    width: int = 32
    noise_std: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "d", check_positive_int("d", self.d))
        object.__setattr__(self, "width", check_positive_int("width", self.width))
        object.__setattr__(self, "noise_std", _check_noise(self.noise_std))

    def tree_flatten(self):
        return (self.noise_std,), (("d", "width"), (self.d, self.width))

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return _unflatten(cls, aux, ("noise_std",), leaves)

    def exact_moments(self) -> tuple[float, float, float]:
        """Closed forms ``(A, B, C) = (1/2 + sigma^2, 1/4, (d + 2)/2 + sigma^2 d)``, for every width ``m``.

        ``B = E||W^T v||^2 / (4m) = E tr(W W^T) / (4m) = 1/4``. Given a row ``w`` of norm ``r``, write
        ``x = t w/r + x_perp``: ``E[relu(w^T x)^2 ||x||^2] = r^2 E[relu(t)^2 (t^2 + chi^2_{d-1})]
        = r^2 (3/2 + (d - 1)/2)`` and ``E r^2 = 1``; averaging over ``v`` keeps only the diagonal terms.
        """
        d, s2 = self.d, float(self.noise_std) ** 2
        return 0.5 + s2, 0.25, (d + 2) / 2 + s2 * d

    def sample(self, key: jax.Array, batch: int, n: int) -> Prompts:
        """Draw ``batch`` prompts (one network each) of ``n`` context pairs; a pure function of ``key``."""
        batch, n = check_positive_int("batch", batch), check_positive_int("n", n)
        d, m = self.d, self.width
        dtype = jnp.asarray(0.0).dtype
        # One Gaussian draw split into x, W, v and noise (one PRNG call site compiles fastest on CPU).
        sizes = np.cumsum([(n + 1) * d, m * d, m])
        z = jax.random.normal(key, (batch, int(sizes[-1]) + n + 1), dtype)
        x = z[:, : sizes[0]].reshape(batch, n + 1, d)
        w = z[:, sizes[0] : sizes[1]].reshape(batch, m, d) / np.sqrt(d)
        v = z[:, sizes[1] : sizes[2]]
        noise = z[:, sizes[2] :]
        f = jnp.einsum("bnm,bm->bn", jax.nn.relu(jnp.einsum("bnd,bmd->bnm", x, w)), v) / np.sqrt(m)
        y = f + self.noise_std * noise
        linear_part = jnp.einsum("bmd,bm->bd", w, v) / (2.0 * np.sqrt(m))
        return Prompts(x=x[:, :n], y=y[:, :n], x_query=x[:, n], y_query=y[:, n], w=linear_part)


def _link(name: str):
    return {"tanh": jnp.tanh, "relu": jax.nn.relu, "cubic": lambda t: t**3}[name]


def _mean_link_slope(name: str, r: jax.Array) -> jax.Array:
    """``E_{z ~ N(0,1)}[g'(r z)]`` for the link ``g``; ``r: [...]`` (a fine trapezoid rule for tanh)."""
    if name == "relu":
        return jnp.full_like(r, 0.5)
    if name == "cubic":
        return 3.0 * r**2
    e = jnp.exp(-2.0 * jnp.abs(r[..., None] * jnp.asarray(_QUAD_NODES, r.dtype)))
    sech2 = 4.0 * e / (1.0 + e) ** 2  # = 1 - tanh(t)^2, without cancellation for large |t|
    return jnp.sum(jnp.asarray(_QUAD_WEIGHTS, r.dtype) * sech2, axis=-1)


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True, eq=False)
class SingleIndexTask:
    """Single-index targets ``f(x) = g(u^T x)``, ``u ~ N(0, index_std^2 I_d)``, fixed link ``g`` (THEORY.md §4).

    ``index_std = 1`` is THEORY.md's ``u ~ N(0, I)``: ``u^T x`` has variance ``~d``, so ``tanh`` acts
    almost like a sign function; ``index_std = 1/sqrt(d)`` keeps ``u^T x ~ N(0, ~1)`` in its curved part.
    Rotation invariant because ``u`` is isotropic. ``Prompts.w`` holds ``E_x[x f(x)] = E_z[g'(||u|| z)] u``
    (Stein's lemma), by a trapezoid rule for ``tanh`` and exactly for ``relu`` (1/2) and ``cubic``
    (``3 ||u||^2``).

    Args:
      d: input dimension, >= 1. link: one of :data:`LINKS`. index_std: > 0. noise_std: sigma >= 0.
    """

    d: int
    link: str = "tanh"
    index_std: float = 1.0
    noise_std: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "d", check_positive_int("d", self.d))
        if self.link not in LINKS:
            raise ValueError(f"link must be one of {LINKS}, got {self.link!r}")
        index_std = float(self.index_std)
        if not (np.isfinite(index_std) and index_std > 0):
            raise ValueError(f"index_std must be a finite number > 0, got {self.index_std!r}")
        object.__setattr__(self, "index_std", index_std)
        object.__setattr__(self, "noise_std", _check_noise(self.noise_std))

    def tree_flatten(self):
        return (self.index_std, self.noise_std), (("d", "link"), (self.d, self.link))

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return _unflatten(cls, aux, ("index_std", "noise_std"), leaves)

    def exact_moments(self) -> tuple[float, float, float]:
        """Closed forms ``(A, B, C)`` for the ``relu`` and ``cubic`` links (``tanh`` has none: use MC).

        With ``r = ||u||`` (``r^2 ~ s^2 chi^2_d``, ``s = index_std``) and ``t ~ N(0, 1)``:
        ``A = E g(r t)^2 + sigma^2``, ``B = E[r^2 (E_t g'(r t))^2]``, ``C = E[g(r t)^2 (t^2 + d - 1)] + sigma^2 d``.
        relu: ``s^2 d (1/2, 1/4, (d + 2)/2)``; cubic: ``E r^6 (15, 9, 105 + 15 (d - 1))`` with
        ``E r^6 = s^6 d (d + 2)(d + 4)`` (plus the noise terms).
        """
        d, s2, noise2 = self.d, self.index_std**2, self.noise_std**2
        if self.link == "relu":
            a, b, c = s2 * d / 2, s2 * d / 4, s2 * d * (d + 2) / 2
        elif self.link == "cubic":
            r6 = s2**3 * d * (d + 2) * (d + 4)
            a, b, c = 15 * r6, 9 * r6, r6 * (105 + 15 * (d - 1))
        else:
            raise NotImplementedError(f"no closed form for link {self.link!r}; use estimate_moments")
        return a + noise2, b, c + noise2 * d

    def sample(self, key: jax.Array, batch: int, n: int) -> Prompts:
        """Draw ``batch`` prompts (one index vector each) of ``n`` context pairs; a pure function of ``key``."""
        batch, n = check_positive_int("batch", batch), check_positive_int("n", n)
        d = self.d
        dtype = jnp.asarray(0.0).dtype
        z = jax.random.normal(key, (batch, (n + 2) * d + n + 1), dtype)  # one draw: x, u, noise
        x = z[:, : (n + 1) * d].reshape(batch, n + 1, d)
        u = self.index_std * z[:, (n + 1) * d : (n + 2) * d]
        noise = z[:, (n + 2) * d :]
        y = _link(self.link)(jnp.einsum("bnd,bd->bn", x, u)) + self.noise_std * noise
        # Only evaluated when Prompts.w is used (XLA drops it from training steps, which ignore w).
        linear_part = _mean_link_slope(self.link, jnp.linalg.norm(u, axis=-1))[:, None] * u
        return Prompts(x=x[:, :n], y=y[:, :n], x_query=x[:, n], y_query=y[:, n], w=linear_part)


def nonlinear_optimal_step_size(b: float, c: float, n: int) -> float:
    """``eta = n B / ((n - 1) B + C)`` (Mahankali et al. 2023, Thm 3; THEORY.md §4)."""
    n = check_positive_int("n", n)
    return n * b / ((n - 1) * b + c)


def nonlinear_one_step_risk(eta, a: float, b: float, c: float, n: int):
    """MSE of ``y_hat = eta x_q^T h`` for ``x ~ N(0, I)``: ``A - 2 eta B + eta^2 ((n - 1) B + C) / n``.

    From ``E[(x_q^T h) y_q] = B`` and ``E[(x_q^T h)^2] = E||h||^2 = ((n - 1) B + C) / n`` (THEORY.md §4).
    ``eta`` may be an array.
    """
    n = check_positive_int("n", n)
    eta = np.asarray(eta, dtype=np.float64)
    return a - 2 * eta * b + eta**2 * ((n - 1) * b + c) / n


def nonlinear_optimal_risk(a: float, b: float, c: float, n: int) -> float:
    """``R* = A - eta B`` at ``eta = n B / ((n - 1) B + C)`` (Mahankali et al. 2023, Thm 3)."""
    return a - nonlinear_optimal_step_size(b, c, n) * b


@dataclass(frozen=True)
class TargetMoments:
    """Monte Carlo estimates of ``A = E y^2``, ``B = E_f ||E_x[x y]||^2``, ``C = E[y^2 ||x||^2]``.

    Attributes:
      a, b, c: the estimates; a_se, b_se, c_se: their standard errors.
      cov: ``[3, 3]`` covariance of the estimates ``(a, b, c)`` (they share the sampled functions).
      num_functions: functions ``f`` drawn; points_per_function: ``x`` draws per function (two halves).
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

    def _delta(self, value_fn) -> tuple[float, float]:
        theta = np.array([self.a, self.b, self.c])
        value = float(value_fn(*theta))
        steps = 1e-6 * np.maximum(np.abs(theta), 1e-12)
        grad = np.array([(value_fn(*(theta + s * e)) - value_fn(*(theta - s * e))) / (2 * s)
                         for s, e in zip(steps, np.eye(3))])
        return value, float(np.sqrt(max(grad @ self.cov @ grad, 0.0)))

    def eta(self, n: int) -> tuple[float, float]:
        """``(eta, SE)`` with ``eta = n B / ((n - 1) B + C)``; the SE by the delta method."""
        return self._delta(lambda a, b, c: nonlinear_optimal_step_size(b, c, n))

    def optimal_risk(self, n: int) -> tuple[float, float]:
        """``(R*, SE)`` with ``R* = A - eta B``; the SE by the delta method."""
        return self._delta(lambda a, b, c: nonlinear_optimal_risk(a, b, c, n))


def estimate_moments(
    task: Task,
    key: jax.Array,
    num_functions: int = 50_000,
    points_per_function: int = 256,
    chunk_size: int = 1000,
) -> TargetMoments:
    """Unbiased Monte Carlo estimates of ``A``, ``B``, ``C`` for any task (THEORY.md §4), with SEs.

    Each function ``f`` is one prompt of ``2K = points_per_function`` context pairs (``task.sample``
    draws one ``f`` per prompt). With the halves' means ``m_1 = mean_{i <= K} y_i x_i`` and
    ``m_2 = mean_{i > K} y_i x_i`` (independent given ``f``, each with mean ``E_x[x y]``):

        B_f = m_1 . m_2   (unbiased for ||E_x[x y]||^2; the plug-in ||mean||^2 would add tr Cov / 2K),
        C_f = mean_i y_i^2 ||x_i||^2,   A_f = mean_i y_i^2,

    averaged over ``num_functions`` i.i.d. functions (rounded up to whole chunks); SEs and the
    covariance come from the spread of ``(A_f, B_f, C_f)`` across functions. Label noise is included
    (it adds ``sigma^2`` to ``A`` and ``sigma^2 d`` to ``C`` for ``x ~ N(0, I)``), as the formulas need.
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
    return TargetMoments(float(mean[0]), float(mean[1]), float(mean[2]), float(se[0]), float(se[1]), float(se[2]),
                         cov, count, points)


def _task_args(task):
    """``(traced, static)``: a pytree task is traced (one compilation per kind of task), any other is static."""
    leaves = jax.tree.leaves(task)
    return (None, task) if len(leaves) == 1 and leaves[0] is task else (task, None)


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


def linear_part_norm2(task: Task, key: jax.Array, num_functions: int = 50_000, chunk_size: int = 5000):
    """``B`` by Stein's lemma: mean and SE of ``||Prompts.w||^2`` over ``num_functions`` draws of ``f``.

    For :class:`ReluNetworkTask` and :class:`SingleIndexTask`, ``Prompts.w = E_x[x f(x)]`` exactly, so
    this estimates ``B = E_f ||E_x[x f(x)]||^2`` without the inner Monte Carlo over ``x`` (lower variance
    than :func:`estimate_moments`; a cross-check of it). Returns ``(mean, se)``.
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
