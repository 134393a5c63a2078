"""Gaussian linear regression, the task of most of the papers (docs/theory.md §1, §3)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import pytree_dataclass, static_field
from icl.tasks.base import (
    GaussianLaw,
    Task,
    default_dtype,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_spd,
    covariance_factor,
    random_rotation,
)

__all__ = ["LinearRegressionTask", "weight_prior"]


@pytree_dataclass
class LinearRegressionTask(Task):
    """Gaussian linear regression: ``x ~ N(0, Sigma)``, ``w ~ N(0, Omega)``, ``y = w^T x + eps``.

    ``eps ~ N(0, noise_std^2)``, one ``w`` per prompt, shared by its context and queries (docs/theory.md §1).

    Attributes:
      d: input dimension, >= 1.
      noise_std: standard deviation sigma of the label noise, >= 0.
      x_cov: covariate covariance Sigma, ``[d, d]`` symmetric positive definite (default identity).
      w_cov: weight prior covariance Omega, ``[d, d]`` SPD (default identity).

    Prefer the constructors ``isotropic`` and ``from_eigenvalues``. A pytree (its arrays and
    ``noise_std`` are leaves, ``d`` is static): tasks pass through ``jit`` without recompiling per noise level.
    A covariance whose condition number the active float type cannot resolve warns with
    [`IllConditionedWarning`][icl.tasks.IllConditionedWarning] naming it.
    """

    d: int = static_field()
    noise_std: float = 0.0
    x_cov: np.ndarray | None = None
    w_cov: np.ndarray | None = None
    _x_chol: np.ndarray = dataclasses.field(init=False, repr=False, default=None)
    _w_chol: np.ndarray = dataclasses.field(init=False, repr=False, default=None)

    def _check(self):
        d = check_positive_int("d", self.d)
        noise = check_non_negative("noise_std", self.noise_std)
        x_cov = np.eye(d) if self.x_cov is None else check_spd("x_cov", self.x_cov, d)
        w_cov = np.eye(d) if self.w_cov is None else check_spd("w_cov", self.w_cov, d)
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "noise_std", noise)
        object.__setattr__(self, "x_cov", x_cov)
        object.__setattr__(self, "w_cov", w_cov)
        object.__setattr__(self, "_x_chol", covariance_factor(x_cov))
        object.__setattr__(self, "_w_chol", covariance_factor(w_cov))

    @classmethod
    def isotropic(cls, d: int, noise_std: float = 0.0, tau: float = 1.0) -> LinearRegressionTask:
        """``Sigma = I``, ``Omega = tau^2 I`` (Mahankali et al. 2023, Theorem 1 setting)."""
        tau = check_positive("tau", tau)
        d = check_positive_int("d", d)
        return cls(d=d, noise_std=noise_std, w_cov=tau**2 * np.eye(d))

    @classmethod
    def from_eigenvalues(
        cls,
        eigenvalues,
        noise_std: float = 0.0,
        w_prior="isotropic",
        rotation_seed: int | None = 0,
    ) -> LinearRegressionTask:
        """Sigma = U diag(eigenvalues) U^T with U Haar-random from ``rotation_seed`` (None: U = I).

        ``w_prior`` is ``"isotropic"`` (Omega = I), ``"inverse"`` (Omega = Sigma^-1 = U diag(1/eigenvalues) U^T,
        Mahankali Thm 2), a positive float tau^2 (Omega = tau^2 I) or a ``[d, d]`` SPD matrix.
        """
        try:
            eig = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"eigenvalues must be a sequence of numbers, got {eigenvalues!r}") from None
        if eig.size < 1:
            raise ValueError("eigenvalues must hold at least one value (their count sets d)")
        if not np.all(np.isfinite(eig)) or np.any(eig <= 0):
            raise ValueError(f"eigenvalues must all be finite and > 0, got {eig.tolist()}")
        if rotation_seed is not None and (isinstance(rotation_seed, bool)
                                          or not isinstance(rotation_seed, (int, np.integer)) or rotation_seed < 0):
            raise ValueError(f"rotation_seed must be None or an integer >= 0, got {rotation_seed!r}")
        d = eig.size
        u = np.eye(d) if rotation_seed is None else random_rotation(rotation_seed, d)
        x_cov = (u * eig) @ u.T
        x_cov = 0.5 * (x_cov + x_cov.T)
        if isinstance(w_prior, str) and w_prior == "inverse":
            w_cov = (u / eig) @ u.T
            w_cov = 0.5 * (w_cov + w_cov.T)
        else:
            w_cov = weight_prior(w_prior, x_cov)
        return cls(d=d, noise_std=noise_std, x_cov=x_cov, w_cov=w_cov)

    def _draw(self, key, batch: int, m: int):
        d = self.d
        dtype = default_dtype()
        # One Gaussian draw split into x, w and noise: one PRNG call site compiles ~3x faster on CPU.
        z = jax.random.normal(key, (batch, m * (d + 1) + d), dtype)
        x_white = z[:, : m * d].reshape(batch, m, d)
        w_white = z[:, m * d : (m + 1) * d]
        noise = z[:, (m + 1) * d :]
        xs = x_white @ jnp.asarray(self._x_chol, dtype).T
        w = w_white @ jnp.asarray(self._w_chol, dtype).T
        ys = jnp.einsum("bnd,bd->bn", xs, w) + self.noise_std * noise
        return xs, ys, w

    def signal_variance(self) -> float:
        """``E[(w^T x)^2] = tr(Omega Sigma)``."""
        return float(np.trace(np.asarray(self.w_cov) @ np.asarray(self.x_cov)))

    def law(self) -> GaussianLaw:
        return GaussianLaw(self.x_cov, self.w_cov, float(self.noise_std), family=type(self).__name__)


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
    if isinstance(w_prior, bool):
        raise ValueError(f"w_prior must be 'isotropic', 'inverse', a positive float or a matrix, got {w_prior!r}")
    try:
        arr = np.asarray(w_prior, dtype=np.float64)
    except (TypeError, ValueError):
        msg = f"w_prior must be 'isotropic', 'inverse', a positive float or a matrix, got {w_prior!r}"
        raise ValueError(msg) from None
    if arr.ndim == 0:
        if not np.isfinite(arr) or arr <= 0:
            raise ValueError(f"w_prior as a scalar tau^2 must be finite and > 0, got {w_prior!r}")
        return float(arr) * np.eye(d)
    return check_spd("w_prior", arr, d)
