"""Task distributions: synthetic in-context regression problems.

A task is a frozen dataclass, validated when it is built, whose ``sample(key, batch, n)`` is a pure
function of a PRNG key returning a :class:`Prompts` pytree. Formulas: THEORY.md section 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Prompts",
    "Task",
    "LinearRegressionTask",
    "random_rotation",
    "check_positive_int",
    "check_spd",
]


class Prompts(NamedTuple):
    """A batch of in-context regression prompts (a pytree).

    Attributes:
      x: context inputs, ``[batch, n, d]``.
      y: context targets, ``[batch, n]``.
      x_query: query inputs, ``[batch, d]``.
      y_query: query targets, ``[batch]``.
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


class Task(Protocol):
    """Anything with a dimension ``d`` and a pure ``sample(key, batch, n) -> Prompts``."""

    d: int

    def sample(self, key: jax.Array, batch: int, n: int) -> Prompts: ...


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_spd(name: str, matrix, d: int) -> np.ndarray:
    """Validate a ``d x d`` symmetric positive definite matrix; return it as float64 numpy.

    Raises ValueError naming ``name`` on a wrong shape, NaN/inf, asymmetry or a non-positive eigenvalue.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (d, d):
        raise ValueError(f"{name} must have shape ({d}, {d}) to match d={d}, got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    scale = max(np.abs(m).max(), 1e-300)
    if np.abs(m - m.T).max() > 1e-8 * scale:
        raise ValueError(f"{name} must be symmetric, max |M - M^T| = {np.abs(m - m.T).max():.3g}")
    m = 0.5 * (m + m.T)
    min_eig = np.linalg.eigvalsh(m).min()
    if min_eig <= 0:
        raise ValueError(f"{name} must be positive definite, smallest eigenvalue is {min_eig:.3g} (allowed: > 0)")
    return m


def random_rotation(seed: int, d: int) -> np.ndarray:
    """A Haar-random ``d x d`` orthogonal matrix (QR of a Gaussian matrix with sign correction)."""
    g = np.random.default_rng(seed).standard_normal((d, d))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True, eq=False)
class LinearRegressionTask:
    """Gaussian linear regression: ``x ~ N(0, Sigma)``, ``w ~ N(0, Omega)``, ``y = w^T x + eps``.

    ``eps ~ N(0, noise_std^2)``, one ``w`` per prompt, shared by its context and query (THEORY.md §1).

    Args:
      d: input dimension, >= 1.
      noise_std: standard deviation sigma of the label noise, >= 0.
      x_cov: covariate covariance Sigma, ``[d, d]`` symmetric positive definite (default identity).
      w_cov: weight prior covariance Omega, ``[d, d]`` SPD (default identity).

    Prefer the constructors :meth:`isotropic` and :meth:`from_eigenvalues`. A task is a pytree (its
    arrays and ``noise_std`` are leaves, ``d`` is static), so tasks can be passed to ``jit`` without
    recompiling per noise level and stacked and ``vmap``-ed over for sweeps.
    """

    d: int
    noise_std: float = 0.0
    x_cov: np.ndarray | None = None
    w_cov: np.ndarray | None = None
    _x_chol: np.ndarray = field(init=False, repr=False)
    _w_chol: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        d = check_positive_int("d", self.d)
        noise = float(self.noise_std)
        if not np.isfinite(noise) or noise < 0:
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}")
        x_cov = np.eye(d) if self.x_cov is None else check_spd("x_cov", self.x_cov, d)
        w_cov = np.eye(d) if self.w_cov is None else check_spd("w_cov", self.w_cov, d)
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "noise_std", noise)
        object.__setattr__(self, "x_cov", x_cov)
        object.__setattr__(self, "w_cov", w_cov)
        object.__setattr__(self, "_x_chol", np.linalg.cholesky(x_cov))
        object.__setattr__(self, "_w_chol", np.linalg.cholesky(w_cov))

    def tree_flatten(self):
        return (self.noise_std, self.x_cov, self.w_cov, self._x_chol, self._w_chol), self.d

    @classmethod
    def tree_unflatten(cls, d, leaves):
        # Rebuilt inside transformations (leaves may be tracers): no validation, it ran at construction.
        task = object.__new__(cls)
        for name, value in zip(("noise_std", "x_cov", "w_cov", "_x_chol", "_w_chol"), leaves):
            object.__setattr__(task, name, value)
        object.__setattr__(task, "d", d)
        return task

    @classmethod
    def isotropic(cls, d: int, noise_std: float = 0.0, tau: float = 1.0) -> "LinearRegressionTask":
        """``Sigma = I``, ``Omega = tau^2 I`` (Mahankali et al. 2023, Theorem 1 setting)."""
        if not np.isfinite(tau) or tau <= 0:
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
        d = check_positive_int("d", d)
        return cls(d=d, noise_std=noise_std, w_cov=tau**2 * np.eye(d))

    @classmethod
    def from_eigenvalues(
        cls,
        eigenvalues,
        noise_std: float = 0.0,
        w_prior="isotropic",
        rotation_seed: int | None = 0,
    ) -> "LinearRegressionTask":
        """Sigma = U diag(eigenvalues) U^T with U Haar-random from ``rotation_seed`` (None: U = I).

        ``w_prior`` is ``"isotropic"`` (Omega = I), ``"inverse"`` (Omega = Sigma^-1, Mahankali Thm 2),
        a positive float tau^2 (Omega = tau^2 I) or a ``[d, d]`` SPD matrix.
        """
        eig = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
        if eig.size < 1:
            raise ValueError("eigenvalues must hold at least one value (their count sets d)")
        if not np.all(np.isfinite(eig)) or np.any(eig <= 0):
            raise ValueError(f"eigenvalues must all be finite and > 0, got {eig.tolist()}")
        d = eig.size
        u = np.eye(d) if rotation_seed is None else random_rotation(rotation_seed, d)
        x_cov = (u * eig) @ u.T
        x_cov = 0.5 * (x_cov + x_cov.T)
        return cls(d=d, noise_std=noise_std, x_cov=x_cov, w_cov=weight_prior(w_prior, x_cov))

    def sample(self, key: jax.Array, batch: int, n: int) -> Prompts:
        """Draw ``batch`` prompts with ``n`` context pairs each; a pure function of ``key``."""
        batch = check_positive_int("batch", batch)
        n = check_positive_int("n", n)
        d = self.d
        dtype = jnp.asarray(0.0).dtype
        # One Gaussian draw split into x, w and noise: one PRNG call site compiles ~3x faster on CPU.
        z = jax.random.normal(key, (batch, (n + 1) * (d + 1) + d), dtype)
        x_white = z[:, : (n + 1) * d].reshape(batch, n + 1, d)
        w_white = z[:, (n + 1) * d : (n + 2) * d]
        noise = z[:, (n + 2) * d :]
        xs = x_white @ jnp.asarray(self._x_chol, dtype).T
        w = w_white @ jnp.asarray(self._w_chol, dtype).T
        ys = jnp.einsum("bnd,bd->bn", xs, w) + self.noise_std * noise
        return Prompts(x=xs[:, :n], y=ys[:, :n], x_query=xs[:, n], y_query=ys[:, n], w=w)


def weight_prior(w_prior, x_cov: np.ndarray) -> np.ndarray:
    """Resolve a weight-prior spec (``"isotropic"``, ``"inverse"``, tau^2 or a matrix) to Omega."""
    d = x_cov.shape[0]
    if isinstance(w_prior, str):
        if w_prior == "isotropic":
            return np.eye(d)
        if w_prior == "inverse":
            inv = np.linalg.inv(x_cov)
            return 0.5 * (inv + inv.T)
        raise ValueError(f"w_prior must be 'isotropic', 'inverse', a positive float or a matrix, got {w_prior!r}")
    arr = np.asarray(w_prior, dtype=np.float64)
    if arr.ndim == 0:
        if not np.isfinite(arr) or arr <= 0:
            raise ValueError(f"w_prior as a scalar tau^2 must be finite and > 0, got {w_prior!r}")
        return float(arr) * np.eye(d)
    return check_spd("w_prior", arr, d)


def check_prompts(prompts: Prompts) -> Prompts:
    """Validate the shapes of a :class:`Prompts` and that its data are finite (outside ``jit``).

    Raises ValueError naming the field: ``x`` must be ``[batch, n, d]``, ``y`` ``[batch, n]``,
    ``x_query`` ``[batch, d]``, ``y_query`` ``[batch]``, and no entry may be NaN or inf.
    """
    x = prompts.x
    if x.ndim != 3:
        raise ValueError(f"prompts.x must have shape [batch, n, d], got {tuple(x.shape)}")
    b, n, d = x.shape
    expected = {"y": (b, n), "x_query": (b, d), "y_query": (b,)}
    for name, shape in expected.items():
        got = tuple(getattr(prompts, name).shape)
        if got != shape:
            raise ValueError(f"prompts.{name} must have shape {shape} to match x {tuple(x.shape)}, got {got}")
    for name in ("x", "y", "x_query", "y_query"):
        value = getattr(prompts, name)
        if not isinstance(value, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(f"prompts.{name} contains NaN or inf")
    return prompts
