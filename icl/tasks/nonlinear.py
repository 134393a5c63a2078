"""Nonlinear in-context targets from rotation-invariant laws (Mahankali et al. 2023, Thm 3; docs/theory.md §4).

Each prompt draws a function ``f`` whose law is rotation invariant (``f o O`` has the law of ``f`` for every
orthogonal ``O``), then ``x_i ~ N(0, I_d)`` and ``y_i = f(x_i) + N(0, sigma^2)``. Both families return
``Prompts.w = E_x[x f(x)]``, the population least-squares weights of the prompt's ``f`` (Stein's lemma), and
know their target moments ``A = E y^2``, ``B = E_f ||E_x[x f(x)]||^2``, ``C = E[y^2 ||x||^2]``
(``exact_moments``), which [`icl.theory`][icl.theory] uses through ``law``.

- [`ReluNetworkTask`][icl.tasks.ReluNetworkTask]: ``f(x) = v^T relu(W x) / sqrt(m)``, ``W_kj ~ N(0, 1/d)``, ``v ~ N(0, I_m)``.
- [`SingleIndexTask`][icl.tasks.SingleIndexTask]: ``f(x) = g(u^T x)`` with ``u ~ N(0, index_std^2 I_d)`` and a fixed link ``g``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from icl.pytree import pytree_dataclass, static_field
from icl.tasks.base import TargetLaw, Task, default_dtype, check_non_negative, check_positive, check_positive_int

__all__ = ["LINKS", "ReluNetworkTask", "SingleIndexTask"]

LINKS = ("tanh", "relu", "cubic")
"""Links of [`SingleIndexTask`][icl.tasks.SingleIndexTask]: ``tanh(t)``, ``max(t, 0)`` and ``t^3``."""

# E_{z ~ N(0,1)}[phi(z)] by the trapezoid rule on [-9, 9] (2001 nodes, step 0.009). For phi analytic in a
# strip |Im z| < a its error is ~exp(-2 pi a / step); tanh'(r z) = sech^2(r z) has a = pi / (2r), so the rule
# stays at round-off for r up to ~50, where Gauss-Hermite loses digits already at r ~ 2.
_QUAD_NODES = np.linspace(-9.0, 9.0, 2001)
_QUAD_WEIGHTS = (_QUAD_NODES[1] - _QUAD_NODES[0]) * np.exp(-0.5 * _QUAD_NODES**2) / np.sqrt(2 * np.pi)


@pytree_dataclass
class ReluNetworkTask(Task):
    """Random one-hidden-layer ReLU network targets: ``f(x) = v^T relu(W x) / sqrt(m)`` (docs/theory.md §4).

    Per prompt: ``W in R^{m x d}`` with i.i.d. ``N(0, 1/d)`` entries (rows of norm ~1), ``v ~ N(0, I_m)``,
    ``x ~ N(0, I_d)``, ``y = f(x) + N(0, sigma^2)``. Rotation invariant because ``W O`` has the law of ``W``.
    ``Prompts.w`` holds ``E_x[x f(x)] = W^T v / (2 sqrt(m))`` (Stein: ``E[x relu(w^T x)] = w / 2``).

    Attributes:
      d: input dimension, >= 1. width: hidden units ``m``, >= 1 (static). noise_std: sigma >= 0.
    """

    d: int = static_field()
    width: int = static_field(default=32)
    noise_std: float = 0.0

    def _check(self):
        object.__setattr__(self, "d", check_positive_int("d", self.d))
        object.__setattr__(self, "width", check_positive_int("width", self.width))
        object.__setattr__(self, "noise_std", check_non_negative("noise_std", self.noise_std))

    def exact_moments(self) -> tuple[float, float, float]:
        """Closed forms ``(A, B, C) = (1/2 + sigma^2, 1/4, (d + 2)/2 + sigma^2 d)``, for every width ``m``.

        ``B = E||W^T v||^2 / (4m) = E tr(W W^T) / (4m) = 1/4``. Given a row ``w`` of norm ``r``, write
        ``x = t w/r + x_perp``: ``E[relu(w^T x)^2 ||x||^2] = r^2 E[relu(t)^2 (t^2 + chi^2_{d-1})]
        = r^2 (3/2 + (d - 1)/2)`` and ``E r^2 = 1``; averaging over ``v`` keeps only the diagonal terms.
        """
        d, s2 = self.d, float(self.noise_std) ** 2
        return 0.5 + s2, 0.25, (d + 2) / 2 + s2 * d

    def _draw(self, key, batch: int, pts: int):
        d, m = self.d, self.width
        # One Gaussian draw split into x, W, v and noise (one PRNG call site compiles fastest on CPU).
        sizes = np.cumsum([pts * d, m * d, m])
        z = jax.random.normal(key, (batch, int(sizes[-1]) + pts), default_dtype())
        x = z[:, : sizes[0]].reshape(batch, pts, d)
        w = z[:, sizes[0] : sizes[1]].reshape(batch, m, d) / np.sqrt(d)
        v = z[:, sizes[1] : sizes[2]]
        noise = z[:, sizes[2] :]
        f = jnp.einsum("bnm,bm->bn", jax.nn.relu(jnp.einsum("bnd,bmd->bnm", x, w)), v) / np.sqrt(m)
        linear_part = jnp.einsum("bmd,bm->bd", w, v) / (2.0 * np.sqrt(m))
        return x, f + self.noise_std * noise, linear_part

    def signal_variance(self) -> float:
        """Noiseless ``E[f(x)^2] = 1/2``."""
        return 0.5

    def law(self) -> TargetLaw:
        return TargetLaw(self.d, *self.exact_moments(), family=type(self).__name__)


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


def _link_np(name: str, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(g(t), g'(t))`` in float64 numpy."""
    if name == "relu":
        return np.maximum(t, 0.0), (t > 0).astype(np.float64)
    if name == "cubic":
        return t**3, 3 * t**2
    e = np.exp(-2.0 * np.abs(t))
    return np.tanh(t), 4.0 * e / (1.0 + e) ** 2


@functools.lru_cache(maxsize=64)
def _quadrature_moments(link: str, d: int, index_std: float) -> tuple[float, float, float]:
    """Noiseless ``(A, B, C)`` of ``g(u^T x)`` by a two-level trapezoid rule (float64, ~1e-10 relative).

    ``r = ||u||`` has the law of ``s chi_d``; with ``r = s e^v`` the density in ``v`` is smooth and decays
    doubly exponentially, so the trapezoid rule on ``v in [-40, 4]`` is spectrally accurate, and so is the inner
    rule over ``t ~ N(0, 1)`` (see ``_QUAD_NODES``). ``A = E g(rt)^2``, ``B = E[r^2 (E_t g'(rt))^2]``,
    ``C = E[g(rt)^2 (t^2 + d - 1)]`` (docs/theory.md §4).
    """
    v = np.linspace(-40.0 / d - 2.0, 4.0, 4001)
    dv = v[1] - v[0]
    log_density = d * v - 0.5 * np.exp(2 * v) + math.log(2.0) - (d / 2) * math.log(2.0) - math.lgamma(d / 2)
    wv = dv * np.exp(log_density)  # weights over r = s e^v (they sum to ~1)
    r = index_std * np.exp(v)
    g, dg = _link_np(link, r[:, None] * _QUAD_NODES[None, :])
    wt = _QUAD_WEIGHTS[None, :]
    g2 = np.sum(wt * g**2, axis=1)
    g2t2 = np.sum(wt * g**2 * _QUAD_NODES[None, :] ** 2, axis=1)
    slope = np.sum(wt * dg, axis=1)
    a = float(np.sum(wv * g2))
    b = float(np.sum(wv * r**2 * slope**2))
    c = float(np.sum(wv * (g2t2 + (d - 1) * g2)))
    return a, b, c


@pytree_dataclass
class SingleIndexTask(Task):
    """Single-index targets ``f(x) = g(u^T x)``, ``u ~ N(0, index_std^2 I_d)``, fixed link ``g`` (docs/theory.md §4).

    ``index_std = 1`` is the paper's ``u ~ N(0, I)``: ``u^T x`` has variance ``~d``, so ``tanh`` acts almost like
    a sign function; ``index_std = 1/sqrt(d)`` keeps ``u^T x ~ N(0, ~1)`` in its curved part. Rotation invariant
    because ``u`` is isotropic. ``Prompts.w`` holds ``E_x[x f(x)] = E_z[g'(||u|| z)] u`` (Stein's lemma).

    Attributes:
      d: input dimension, >= 1. link: one of ``LINKS`` (static). index_std: > 0. noise_std: sigma >= 0.
    """

    d: int = static_field()
    link: str = static_field(default="tanh")
    index_std: float = 1.0
    noise_std: float = 0.0

    def _check(self):
        object.__setattr__(self, "d", check_positive_int("d", self.d))
        if not isinstance(self.link, str) or self.link not in LINKS:
            raise ValueError(f"link must be one of {LINKS}, got {self.link!r}")
        object.__setattr__(self, "index_std", check_positive("index_std", self.index_std))
        object.__setattr__(self, "noise_std", check_non_negative("noise_std", self.noise_std))

    def exact_moments(self) -> tuple[float, float, float]:
        """``(A, B, C)``: closed forms for ``relu`` and ``cubic``, a float64 quadrature (~1e-10) for ``tanh``.

        With ``r = ||u||`` (``r^2 ~ s^2 chi^2_d``, ``s = index_std``) and ``t ~ N(0, 1)``:
        ``A = E g(r t)^2 + sigma^2``, ``B = E[r^2 (E_t g'(r t))^2]``, ``C = E[g(r t)^2 (t^2 + d - 1)] + sigma^2 d``.
        relu: ``s^2 d (1/2, 1/4, (d + 2)/2)``; cubic: ``E r^6 (15, 9, 105 + 15 (d - 1))`` with
        ``E r^6 = s^6 d (d + 2)(d + 4)`` (plus the noise terms).
        """
        d, s2, noise2 = self.d, float(self.index_std) ** 2, float(self.noise_std) ** 2
        if self.link == "relu":
            a, b, c = s2 * d / 2, s2 * d / 4, s2 * d * (d + 2) / 2
        elif self.link == "cubic":
            r6 = s2**3 * d * (d + 2) * (d + 4)
            a, b, c = 15 * r6, 9 * r6, r6 * (105 + 15 * (d - 1))
        else:
            a, b, c = _quadrature_moments(self.link, d, float(self.index_std))
        return a + noise2, b, c + noise2 * d

    def _draw(self, key, batch: int, pts: int):
        d = self.d
        z = jax.random.normal(key, (batch, (pts + 1) * d + pts), default_dtype())  # one draw: x, u, noise
        x = z[:, : pts * d].reshape(batch, pts, d)
        u = self.index_std * z[:, pts * d : (pts + 1) * d]
        noise = z[:, (pts + 1) * d :]
        y = _link(self.link)(jnp.einsum("bnd,bd->bn", x, u)) + self.noise_std * noise
        # Only evaluated when Prompts.w is used (XLA drops it from training steps, which ignore w).
        linear_part = _mean_link_slope(self.link, jnp.linalg.norm(u, axis=-1))[:, None] * u
        return x, y, linear_part

    def signal_variance(self) -> float:
        """Noiseless ``E[g(u^T x)^2]`` (``A`` without the noise)."""
        return self.exact_moments()[0] - float(self.noise_std) ** 2

    def law(self) -> TargetLaw:
        family = f"{type(self).__name__}(link={self.link!r})"
        return TargetLaw(self.d, *self.exact_moments(), family=family)
