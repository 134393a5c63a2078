"""Linear regression with i.i.d. uniform covariates: von Oswald et al. 2023's data (docs/theory.md §5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import pytree_dataclass, static_field
from icl.tasks.base import IIDLaw, Task, default_dtype, check_non_negative, check_positive, check_positive_int

__all__ = ["UniformLinearTask", "uniform_moments"]


def uniform_moments(half_width: float) -> tuple[float, float]:
    """Variance and fourth moment of ``U(-a, a)``: ``(s^2, m4) = (a^2 / 3, a^4 / 5)``."""
    a = check_positive("half_width", half_width)
    return a**2 / 3.0, a**4 / 5.0


@pytree_dataclass
class UniformLinearTask(Task):
    """``x ~ U(-a, a)^d`` (i.i.d. coordinates), ``w ~ N(0, I_d)``, ``y = w^T x + N(0, sigma^2)``.

    The setting of von Oswald et al. 2023 (their code: ``a = 0.5``, sigma = 0; docs/theory.md §5). One ``w``
    per prompt, shared by its context and queries. Scaling the inputs by ``alpha`` (their out-of-distribution
    test) is the task with ``half_width = alpha * a``. Theory: [`icl.theory.optimal_step_size`][icl.theory.optimal_step_size] and the
    rest dispatch on its [`IIDLaw`][icl.tasks.IIDLaw] (``s^2 = a^2/3``, ``m4 = a^4/5``).

    Attributes:
      d: input dimension, >= 1.
      half_width: ``a > 0``; coordinates are uniform on ``[-a, a]``.
      noise_std: label-noise standard deviation sigma >= 0.

    A pytree (``half_width`` and ``noise_std`` are leaves, ``d`` is static).
    """

    d: int = static_field()
    half_width: float = 0.5
    noise_std: float = 0.0

    def _check(self):
        object.__setattr__(self, "d", check_positive_int("d", self.d))
        object.__setattr__(self, "half_width", check_positive("half_width", self.half_width))
        object.__setattr__(self, "noise_std", check_non_negative("noise_std", self.noise_std))

    @property
    def moments(self) -> tuple[float, float]:
        """``(s^2, m4)`` of one coordinate (concrete tasks only)."""
        return uniform_moments(self.half_width)

    def _draw(self, key, batch: int, m: int):
        # One Gaussian draw split into x, w and noise; uniform coordinates by the probability integral
        # transform x = a erf(z / sqrt 2), exactly U(-a, a) for z ~ N(0, 1).
        d = self.d
        z = jax.random.normal(key, (batch, m * (d + 1) + d), default_dtype())
        xs = self.half_width * jax.scipy.special.erf(z[:, : m * d].reshape(batch, m, d) / np.sqrt(2.0))
        w = z[:, m * d : (m + 1) * d]
        noise = z[:, (m + 1) * d :]
        ys = jnp.einsum("bnd,bd->bn", xs, w) + self.noise_std * noise
        return xs, ys, w

    def signal_variance(self) -> float:
        """``E[(w^T x)^2] = d s^2``."""
        return self.d * self.moments[0]

    def law(self) -> IIDLaw:
        s2, m4 = self.moments
        return IIDLaw(self.d, s2, m4, float(self.noise_std), 1.0, family=type(self).__name__)
