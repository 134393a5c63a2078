"""Prompts, the [`Task`][icl.tasks.Task] base class, the laws theory dispatches on, and the shared checks.

A task is a frozen dataclass registered as a JAX pytree (``@pytree_dataclass``): its numeric parameters are
leaves and its shapes (``d``, a sparsity, a width) static, so one compiled program serves every noise level.
Validation runs once, in ``__post_init__`` when a user builds the task; rebuilding inside ``jit`` (unflatten)
skips it. Every task has ``d``, ``noise_std``, ``sample(key, batch, n, num_queries=None)``,
``signal_variance()`` (noiseless ``E[y^2]``) and ``law()``, the description of its distribution that
[`icl.theory`][icl.theory] dispatches on (docs/theory.md §1).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import is_pytree, is_traced

__all__ = [
    "GaussianLaw",
    "IIDLaw",
    "IllConditionedWarning",
    "Prompts",
    "TargetLaw",
    "Task",
    "check_int",
    "check_non_negative",
    "covariance_factor",
    "check_positive",
    "check_positive_int",
    "check_prompt_shapes",
    "check_prompts",
    "check_spd",
    "each_query",
    "random_rotation",
]


class Prompts(NamedTuple):
    """A batch of in-context regression prompts (a pytree).

    Attributes:
      x: context inputs, ``[batch, n, d]``.
      y: context targets, ``[batch, n]``.
      x_query: query inputs, ``[batch, d]`` (``[batch, Q, d]`` when sampled with ``num_queries=Q``).
      y_query: query targets, ``[batch]`` (``[batch, Q]`` with ``num_queries=Q``).
      w: the task weight of each prompt, ``[batch, d]`` (``None`` for tasks without one).
    """

    x: jax.Array
    y: jax.Array
    x_query: jax.Array
    y_query: jax.Array
    w: jax.Array | None = None

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def n(self) -> int:
        return self.x.shape[1]

    @property
    def d(self) -> int:
        return self.x.shape[2]


class IllConditionedWarning(RuntimeWarning):
    """A covariance's condition number exceeds what the active JAX float type resolves (``1/sqrt(eps)``)."""


# ----------------------------------------------------------------------------------------------------------
# Checks shared by every constructor
# ----------------------------------------------------------------------------------------------------------


def check_int(name: str, value, minimum: int | None = 1) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` unless it is an integer >= ``minimum``
    (any integer for ``minimum=None``). The one integer check of the library."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or (
            minimum is not None and value < minimum):
        raise ValueError(f"{name} must be an integer{'' if minimum is None else f' >= {minimum}'}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` unless it is an integer >= 1."""
    return check_int(name, value, 1)


def _as_real(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_, str)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None


def check_non_negative(name: str, value) -> float:
    """Return ``value`` as a float, or raise ValueError naming ``name`` unless it is finite and >= 0."""
    v = _as_real(name, value)
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, or raise ValueError naming ``name`` unless it is finite and > 0."""
    v = _as_real(name, value)
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _resolvable_condition() -> float:
    """The largest condition number the active JAX float type resolves to half its digits: ``1/sqrt(eps)``."""
    return float(1.0 / np.sqrt(np.finfo(jnp.asarray(0.0).dtype).eps))


def covariance_factor(m: np.ndarray) -> np.ndarray:
    """A factor ``F`` with ``F F^T = M`` for a checked covariance ([`check_spd`][icl.tasks.check_spd]): Cholesky, or
    ``U sqrt(Lambda)`` where Cholesky fails numerically (a matrix semidefinite to rounding)."""
    try:
        return np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        lam, u = np.linalg.eigh(m)
        return u * np.sqrt(np.maximum(lam, 0.0))


def check_spd(name: str, matrix, d: int, warn: bool = True) -> np.ndarray:
    """Validate a ``d x d`` symmetric positive definite matrix; return it as symmetric float64 numpy.

    Raises ValueError naming ``name`` on a wrong shape, NaN/inf, asymmetry, a non-positive eigenvalue or a
    numerically singular matrix (smallest eigenvalue below ``d * eps64`` times the largest). Warns with
    [`IllConditionedWarning`][icl.tasks.IllConditionedWarning] (naming ``name``) when the condition number exceeds ``1/sqrt(eps)`` of the
    active JAX float type (about 2.9e3 in float32, 6.7e7 in float64): sampling and the library's solvers lose
    more than half their digits there. Closed forms in [`icl.theory`][icl.theory] are float64 and stay exact.
    """
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real ({d}, {d}) matrix, got {type(matrix).__name__}") from None
    if m.shape != (d, d):
        raise ValueError(f"{name} must have shape ({d}, {d}) to match d={d}, got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    scale = max(np.abs(m).max(), 1e-300)
    if np.abs(m - m.T).max() > 1e-8 * scale:
        raise ValueError(f"{name} must be symmetric, max |M - M^T| = {np.abs(m - m.T).max():.3g}")
    m = 0.5 * (m + m.T)
    eig = np.linalg.eigvalsh(m)
    if eig[0] <= 0:
        raise ValueError(f"{name} must be positive definite, smallest eigenvalue is {eig[0]:.3g} (allowed: > 0)")
    cond = eig[-1] / eig[0]
    if cond > 1.0 / (d * np.finfo(np.float64).eps):
        raise ValueError(f"{name} is numerically singular: condition number {cond:.3g} exceeds "
                         f"1/(d eps64) = {1.0 / (d * np.finfo(np.float64).eps):.3g} (allowed: below it)")
    limit = _resolvable_condition()
    if warn and cond > limit:
        dtype = jnp.asarray(0.0).dtype
        warnings.warn(f"{name} has condition number {cond:.3g} > {limit:.3g} = 1/sqrt(eps) of {dtype}: sampling and "
                      f"solvers in {dtype} lose more than half their digits (closed forms in icl.theory are float64; "
                      "for the rest enable float64 with jax.config.update('jax_enable_x64', True))",
                      IllConditionedWarning, stacklevel=_caller_stacklevel())
    return m


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside ``icl`` (and dataclass ``__init__``)."""
    import os
    import sys

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith(package)
                                 or (frame.f_code.co_filename == "<string>" and frame.f_code.co_name == "__init__")):
        frame, level = frame.f_back, level + 1
    return level


def random_rotation(seed: int, d: int) -> np.ndarray:
    """A Haar-random ``d x d`` orthogonal matrix (QR of a Gaussian matrix with sign correction)."""
    d = check_positive_int("d", d)
    g = np.random.default_rng(seed).standard_normal((d, d))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))


def check_prompt_shapes(prompts, *, who: str = "", d: int | None = None, query: bool = True):
    """The one shape check of prompts (static shapes, so it works under ``jit``); returns ``(x, y)``.

    ``x`` must be ``[batch, n, d]`` (``d`` the caller's, if given), ``y`` ``[batch, n]`` and, if ``query``,
    ``x_query`` ``[batch, d]`` (one query per prompt). A ValueError names ``who`` and the field.
    """
    prefix = f"{who}: " if who else ""
    if not all(hasattr(prompts, f) for f in ("x", "y", "x_query")):
        raise ValueError(f"{prefix}prompts must be icl.Prompts, got {type(prompts).__name__}")
    shape = lambda a: tuple(getattr(a, "shape", np.shape(a)))  # noqa: E731
    x, y = prompts.x, prompts.y
    if len(shape(x)) != 3:
        raise ValueError(f"{prefix}prompts.x must have shape [batch, n, d], got {shape(x)}")
    b, n, dx = shape(x)
    if shape(y) != (b, n):
        raise ValueError(f"{prefix}prompts.y must have shape [batch, n] = {(b, n)}, got {shape(y)}")
    if d is not None and dx != d:
        raise ValueError(f"{prefix}d mismatch: prompts have d={dx} but it was built with d={d}")
    if query and shape(prompts.x_query) != (b, dx):
        several = len(shape(prompts.x_query)) == 3
        extra = " (several queries per prompt: apply icl.tasks.each_query first)" if several else ""
        raise ValueError(f"{prefix}prompts.x_query must have shape [batch, d] = {(b, dx)}, "
                         f"got {shape(prompts.x_query)}{extra}")
    return x, y


def check_prompts(prompts: Prompts) -> Prompts:
    """Validate the shapes of a [`Prompts`][icl.tasks.Prompts] and that its data are finite (outside ``jit``).

    Raises ValueError naming the field: ``x`` must be ``[batch, n, d]``, ``y`` ``[batch, n]``,
    ``x_query`` ``[batch, d]`` (or ``[batch, Q, d]``), ``y_query`` ``[batch]`` (or ``[batch, Q]``), ``w``
    ``[batch, d]`` when present, and no entry may be NaN or inf.
    """
    x = prompts.x
    if x.ndim != 3:
        raise ValueError(f"prompts.x must have shape [batch, n, d], got {tuple(x.shape)}")
    b, n, d = x.shape
    multi = getattr(prompts.x_query, "ndim", 0) == 3
    q = prompts.x_query.shape[1] if multi else None
    expected = {"y": (b, n), "x_query": (b, q, d) if multi else (b, d), "y_query": (b, q) if multi else (b,)}
    if prompts.w is not None:
        expected["w"] = (b, d)
    for name, shape in expected.items():
        got = tuple(getattr(prompts, name).shape)
        if got != shape:
            raise ValueError(f"prompts.{name} must have shape {shape} to match x {tuple(x.shape)}, got {got}")
    for name in ("x", "y", "x_query", "y_query"):
        value = getattr(prompts, name)
        if not isinstance(value, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(f"prompts.{name} contains NaN or inf")
    return prompts


def each_query(prompts: Prompts) -> Prompts:
    """Flatten multi-query prompts (``x_query [b, Q, d]``) into ``b * Q`` single-query prompts.

    Prompt ``i`` with queries ``j = 0..Q-1`` becomes prompt ``i * Q + j``; its context (and ``w``) is repeated,
    so any predictor ``Prompts -> [batch]`` applies and its output reshapes to ``[b, Q]``. Single-query prompts
    are returned unchanged.
    """
    if prompts.x_query.ndim == 2:
        return prompts
    b, q, d = prompts.x_query.shape

    def repeat(a):
        return None if a is None else jnp.repeat(a, q, axis=0)

    return Prompts(x=repeat(prompts.x), y=repeat(prompts.y), x_query=prompts.x_query.reshape(b * q, d),
                   y_query=prompts.y_query.reshape(b * q), w=repeat(prompts.w))


# ----------------------------------------------------------------------------------------------------------
# Laws: what theory needs to know about a task (docs/theory.md §3-§5)
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianLaw:
    """``x ~ N(0, Sigma)``, ``w`` independent of ``x`` with ``E[w w^T] = Omega``, ``y = w^T x + N(0, sigma^2)``.

    The risk of every predictor linear in ``y`` (the class ``P(Gamma)``, K-step GD) depends on ``w`` only
    through ``Omega``, so the closed forms of docs/theory.md §3 and §6 hold whether or not ``w`` is Gaussian
    (``w_gaussian`` says which: Bayes posteriors need it). ``family`` names the task for error messages.
    """

    x_cov: np.ndarray
    w_cov: np.ndarray
    noise_std: float
    w_gaussian: bool = True
    family: str = "GaussianLaw"

    def __post_init__(self):
        x_cov = np.asarray(self.x_cov, np.float64)
        d = x_cov.shape[0] if x_cov.ndim == 2 else -1
        if d < 1:
            raise ValueError(f"x_cov must be a (d, d) matrix, got shape {x_cov.shape}")
        object.__setattr__(self, "x_cov", check_spd("x_cov", x_cov, d, warn=False))  # theory is float64
        object.__setattr__(self, "w_cov", check_spd("w_cov", self.w_cov, d, warn=False))
        object.__setattr__(self, "noise_std", check_non_negative("noise_std", self.noise_std))

    @property
    def d(self) -> int:
        return self.x_cov.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class IIDLaw:
    """Input coordinates i.i.d., mean 0, variance ``s2``, fourth moment ``m4``; ``E[w w^T] = w_var I``.

    ``y = w^T x + N(0, sigma^2)`` (von Oswald et al. 2023's setting: uniform coordinates, docs/theory.md §5).
    ``m4 >= s2^2`` (Jensen); Gaussian coordinates have ``m4 = 3 s2^2``.
    """

    d: int
    s2: float
    m4: float
    noise_std: float = 0.0
    w_var: float = 1.0
    family: str = "IIDLaw"

    def __post_init__(self):
        object.__setattr__(self, "d", check_positive_int("d", self.d))
        s2 = check_positive("s2", self.s2)
        m4 = _as_real("m4", self.m4)
        if not (np.isfinite(m4) and m4 >= s2**2 * (1 - 1e-12)):
            raise ValueError(f"m4 (fourth moment) must be finite and >= s2^2 = {s2**2:.6g} (Jensen), got {self.m4!r}")
        object.__setattr__(self, "s2", s2)
        object.__setattr__(self, "m4", m4)
        object.__setattr__(self, "noise_std", check_non_negative("noise_std", self.noise_std))
        object.__setattr__(self, "w_var", check_positive("w_var", self.w_var))


@dataclasses.dataclass(frozen=True, eq=False)
class TargetLaw:
    """``x ~ N(0, I_d)``, ``y = f(x) + noise`` with ``f`` from a rotation-invariant law (docs/theory.md §4).

    ``A = E[y^2]``, ``B = E_f ||E_x[x f(x)]||^2``, ``C = E[y^2 ||x||^2]`` (noise included in ``A`` and ``C``).
    ``moments`` is ``None`` when the family has no closed form: theory then raises a ValueError naming
    ``family`` and pointing to [`icl.theory.estimate_moments`][icl.theory.estimate_moments].
    """

    d: int
    a: float | None
    b: float | None
    c: float | None
    family: str = "TargetLaw"

    def __post_init__(self):
        object.__setattr__(self, "d", check_positive_int("d", self.d))
        values = (self.a, self.b, self.c)
        if all(v is None for v in values):
            return
        a = check_non_negative("a", self.a)
        b = check_non_negative("b", self.b)
        c = check_positive("c", self.c)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)

    @property
    def known(self) -> bool:
        return self.b is not None


# ----------------------------------------------------------------------------------------------------------
# The Task base class
# ----------------------------------------------------------------------------------------------------------


class Task:
    """Base class of every task family: a ``@pytree_dataclass`` with ``d`` and ``noise_std``.

    Subclasses implement ``_check()`` (validation, called once by ``__post_init__``), ``_draw(key, batch, m)``
    returning ``(x [batch, m, d], y [batch, m], w [batch, d] | None)`` for ``m`` points sharing one task
    draw (one PRNG call), ``signal_variance()`` and ``law()``. ``sample`` splits the ``m = n + Q``
    points into the context and the queries.
    """

    def __post_init__(self):
        self._check()

    def _check(self) -> None:  # pragma: no cover - every family overrides it
        pass

    def _draw(self, key, batch: int, m: int):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement _draw")

    def sample(self, key: jax.Array, batch: int, n: int, num_queries: int | None = None) -> Prompts:
        """Draw ``batch`` prompts of ``n`` context pairs; a pure function of ``key``.

        With ``num_queries = Q`` each prompt has ``Q`` queries from the same task (``x_query [batch, Q, d]``,
        ``y_query [batch, Q]``); with ``None`` one query (``[batch, d]``, ``[batch]``).
        """
        batch = check_positive_int("batch", batch)
        n = check_positive_int("n", n)
        if num_queries is not None:
            num_queries = check_positive_int("num_queries", num_queries)
        if is_traced(key, self) or not is_pytree(self):  # traced already, or not a pytree: inline
            return _split_points(self, key, batch, n, num_queries)
        return _sample_compiled(self, key, batch=batch, n=n, num_queries=num_queries)

    def signal_variance(self) -> float:
        """Noiseless ``E[y^2]``, the normaliser of error curves (the zero predictor scores 1 without noise)."""
        raise NotImplementedError(f"{type(self).__name__} does not define signal_variance()")

    def x_second_moment(self) -> np.ndarray:
        """``E[x x^T]`` as float64 numpy ``[d, d]`` (from ``law``)."""
        law = self.law()
        if isinstance(law, GaussianLaw):
            return np.array(law.x_cov)
        if isinstance(law, IIDLaw):
            return law.s2 * np.eye(law.d)
        if isinstance(law, TargetLaw):
            return np.eye(law.d)
        raise ValueError(f"{type(self).__name__} does not describe its input law (law() gave {law!r})")

    def law(self):
        """The task's law for [`icl.theory`][icl.theory] (``GaussianLaw``, ``IIDLaw``, ``TargetLaw``) or ``None``."""
        return


def _split_points(task: Task, key, batch: int, n: int, num_queries: int | None) -> Prompts:
    """``task._draw`` of ``n + Q`` points per prompt, split into the context and the queries."""
    x, y, w = task._draw(key, batch, n + (1 if num_queries is None else num_queries))
    if num_queries is None:
        return Prompts(x=x[:, :n], y=y[:, :n], x_query=x[:, n], y_query=y[:, n], w=w)
    return Prompts(x=x[:, :n], y=y[:, :n], x_query=x[:, n:], y_query=y[:, n:], w=w)


# An eager ``task.sample`` runs as one compiled program per (task structure, shapes) instead of op by op, where
# each operation compiled its own program: in experiments/von_oswald.py --fast two eager draws compiled 36
# programs (4 threefry ``_normal``s at 0.47 s each, 20 ``dynamic_slice``s ...); now one 0.7 s program.
_sample_compiled = jax.jit(_split_points, static_argnames=("batch", "n", "num_queries"))


def default_dtype():
    return jnp.asarray(0.0).dtype
