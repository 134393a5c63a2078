"""Linear regression with uniform covariates (von Oswald et al. 2023's data) and its closed forms (THEORY.md §5).

Covariates have i.i.d. coordinates ``x_j ~ U(-a, a)`` (variance ``s^2 = a^2/3``, fourth moment
``m4 = a^4/5``); ``w ~ N(0, I)`` and ``y = w^T x + N(0, sigma^2)``. von Oswald et al.'s code uses
``a = 1/2`` (``s^2 = 1/12``, ``m4 = 1/80``) and sigma = 0. For i.i.d. coordinates the second moment of
``h = X^T y / n`` is a multiple of the identity, so the best one-step GD (and the optimal one-layer LSA)
is ``Gamma* = eta* I`` with

    eta* = n s^2 / ((n + d - 2) s^4 + m4 + sigma^2 s^2),     R* = d s^2 (1 - eta* s^2) + sigma^2

(THEORY.md §5 at sigma = 0; Gaussian coordinates, ``m4 = 3 s^4``, give back Mahankali et al.'s
``eta* = n/(n + d + 1 + sigma^2)`` at ``s = 1``). Conventions: ``R`` is the MSE; von Oswald et al.
report ``0.5 * MSE`` (0.2062 at d = n = 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from icl.tasks import Prompts, check_positive_int

__all__ = [
    "UniformLinearTask",
    "uniform_moments",
    "iid_one_step_risk",
    "iid_optimal_step_size",
    "iid_optimal_risk",
]


def uniform_moments(half_width: float) -> tuple[float, float]:
    """Variance and fourth moment of ``U(-a, a)``: ``(s^2, m4) = (a^2 / 3, a^4 / 5)``."""
    a = float(half_width)
    return a**2 / 3.0, a**4 / 5.0


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True, eq=False)
class UniformLinearTask:
    """``x ~ U(-a, a)^d`` (i.i.d. coordinates), ``w ~ N(0, I_d)``, ``y = w^T x + N(0, sigma^2)``.

    The setting of von Oswald et al. 2023 (their code: ``a = 0.5``, sigma = 0; THEORY.md §5). One ``w``
    per prompt, shared by its context and query. Scaling the inputs by ``alpha`` (their
    out-of-distribution test) is the task with ``half_width = alpha * a``.

    Args:
      d: input dimension, >= 1.
      half_width: ``a > 0``; coordinates are uniform on ``[-a, a]``.
      noise_std: label-noise standard deviation sigma >= 0.

    A pytree (``half_width`` and ``noise_std`` are leaves, ``d`` is static), so tasks at different
    scales or noise levels share one compiled training or evaluation loop.
    """

    d: int
    half_width: float = 0.5
    noise_std: float = 0.0

    def __post_init__(self):
        d = check_positive_int("d", self.d)
        a, noise = float(self.half_width), float(self.noise_std)
        if not (np.isfinite(a) and a > 0):
            raise ValueError(f"half_width must be a finite number > 0, got {self.half_width!r}")
        if not (np.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}")
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "half_width", a)
        object.__setattr__(self, "noise_std", noise)

    def tree_flatten(self):
        return (self.half_width, self.noise_std), self.d

    @classmethod
    def tree_unflatten(cls, d, leaves):
        # Rebuilt inside transformations (leaves may be tracers): validation ran at construction.
        task = object.__new__(cls)
        object.__setattr__(task, "d", d)
        object.__setattr__(task, "half_width", leaves[0])
        object.__setattr__(task, "noise_std", leaves[1])
        return task

    @property
    def moments(self) -> tuple[float, float]:
        """``(s^2, m4)`` of one coordinate (concrete tasks only)."""
        return uniform_moments(self.half_width)

    def sample(self, key: jax.Array, batch: int, n: int) -> Prompts:
        """Draw ``batch`` prompts of ``n`` context pairs; a pure function of ``key``.

        One Gaussian draw is split into x, w and noise; uniform coordinates come from the probability
        integral transform ``x = a * erf(z / sqrt 2)``, which is exactly ``U(-a, a)`` for ``z ~ N(0, 1)``.
        """
        batch = check_positive_int("batch", batch)
        n = check_positive_int("n", n)
        d = self.d
        dtype = jnp.asarray(0.0).dtype
        z = jax.random.normal(key, (batch, (n + 1) * (d + 1) + d), dtype)
        xs = self.half_width * jax.scipy.special.erf(z[:, : (n + 1) * d].reshape(batch, n + 1, d) / np.sqrt(2.0))
        w = z[:, (n + 1) * d : (n + 2) * d]
        noise = z[:, (n + 2) * d :]
        ys = jnp.einsum("bnd,bd->bn", xs, w) + self.noise_std * noise
        return Prompts(x=xs[:, :n], y=ys[:, :n], x_query=xs[:, n], y_query=ys[:, n], w=w)


def _check_law(d, n, s2, m4, noise_std):
    d, n = check_positive_int("d", d), check_positive_int("n", n)
    s2, m4, noise_std = float(s2), float(m4), float(noise_std)
    if not (np.isfinite(s2) and s2 > 0):
        raise ValueError(f"s2 (coordinate variance) must be a finite number > 0, got {s2!r}")
    if not (np.isfinite(m4) and m4 >= s2**2):
        raise ValueError(f"m4 (fourth moment) must be finite and >= s2^2 = {s2**2:.6g} (Jensen), got {m4!r}")
    if not (np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    return d, n, s2, m4, noise_std


def iid_one_step_risk(eta, d: int, n: int, s2: float, m4: float, noise_std: float = 0.0):
    """MSE of one GD step ``y_hat = eta x_q^T h`` for i.i.d. coordinates, ``w ~ N(0, I)`` (THEORY.md §5).

    With ``E[h w^T] = s^2 I`` and ``E[h h^T] = ((n + d - 2) s^4 + m4 + sigma^2 s^2)/n I``:

        R(eta) = d s^2 [1 - 2 eta s^2 + eta^2 ((n + d - 2) s^4 + m4 + sigma^2 s^2) / n] + sigma^2.

    ``eta`` may be an array (evaluated elementwise).
    """
    d, n, s2, m4, noise_std = _check_law(d, n, s2, m4, noise_std)
    q = ((n + d - 2) * s2**2 + m4 + noise_std**2 * s2) / n
    eta = np.asarray(eta, dtype=np.float64)
    return d * s2 * (1.0 - 2.0 * eta * s2 + eta**2 * q) + noise_std**2


def iid_optimal_step_size(d: int, n: int, s2: float, m4: float, noise_std: float = 0.0) -> float:
    """``eta* = n s^2 / ((n + d - 2) s^4 + m4 + sigma^2 s^2)``, the minimiser of :func:`iid_one_step_risk`.

    THEORY.md §5 ("eta*(on h)", von Oswald et al. 2023's setting at sigma = 0). The step multiplies
    ``h = X^T y / n``; the LSA's ``Gamma_eff`` equals ``eta* I`` at the optimum. For ``U(-1/2, 1/2)``
    and d = n = 10: ``eta* = 6.0606``, ``eta*/n = 0.606``.
    """
    d, n, s2, m4, noise_std = _check_law(d, n, s2, m4, noise_std)
    return n * s2 / ((n + d - 2) * s2**2 + m4 + noise_std**2 * s2)


def iid_optimal_risk(d: int, n: int, s2: float, m4: float, noise_std: float = 0.0) -> float:
    """Minimum MSE of one GD step: ``R* = d s^2 (1 - eta* s^2) + sigma^2`` (THEORY.md §5).

    von Oswald et al. 2023 report ``0.5 * R*``: 0.2062 for ``U(-1/2, 1/2)``, d = n = 10, sigma = 0.
    """
    eta = iid_optimal_step_size(d, n, s2, m4, noise_std)
    return d * s2 * (1.0 - eta * s2) + float(noise_std) ** 2
