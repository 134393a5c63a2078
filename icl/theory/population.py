"""Exact population training of one LSA layer: no sampling (Zhang, Frei & Bartlett 2023; docs/theory.md §2, §3).

ZFB (arXiv:2306.09927, Theorem 4.1) train one LSA layer by gradient flow on the population loss. In their
parametrisation only ``c = W^PV_22`` (last row of ``W^PV`` is ``[b^T, c]``) and ``A = W^KQ_11`` (first d columns of
``W^KQ`` are ``[A; a^T]``) move: ``b = a = 0`` at their initialisation and the flow keeps them there (their
gradients at ``b = a = 0`` are odd under ``w -> -w`` and vanish in expectation). The prediction is then
``y_hat = x_q^T (c A^T) h`` (docs/theory.md §2, ``Gamma_eff = c A^T``), whose population MSE is the closed form
[`icl.theory.risk`][icl.theory.risk]: the flow is an ODE in ``d^2 + 1`` numbers.

**The conserved quantity.** With ``L(c, A) = R(c A^T)`` and ``G = dR/dGamma``: ``dL/dc = <G, A^T>`` and
``dL/dA = c G^T``, so ``d(c^2)/dt = -2c <G, A^T> = d(||A||_F^2)/dt``: **``Q = c^2 - ||A||_F^2`` is conserved**
(balancedness of a two-layer linear network). The flow converges to a global minimum ``c A^T = Gamma*`` (ZFB
Thm 4.1), and ``Q`` picks the point on that curve: ``c*^2 = (Q + sqrt(Q^2 + 4 ||Gamma*||_F^2)) / 2``,
``A* = Gamma*^T / c*``. ZFB's initialisation ``W^PV(0) = s [[0, 0], [0, 1]]``, ``W^KQ(0) = s [[Theta Theta^T, 0],
[0, 0]]`` with ``||Theta Theta^T||_F = 1`` is balanced (``Q = 0``): ``c* = ||Gamma*||_F^{1/2}``,
``A* = Gamma* / ||Gamma*||_F^{1/2}``, ``Gamma* = [(1 + 1/n) Lambda + tr(Lambda)/n I]^{-1}`` (w ~ N(0, I), noiseless).

Conventions: the loss is the MSE (ZFB use 0.5 MSE: their time is twice ours; the limit is the same). Every law
with a closed form works (Gaussian, i.i.d. coordinates, nonlinear targets with known moments).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from icl.tasks.base import check_positive, check_positive_int
from icl.theory.api import differentiable_risk, expected_hh, law_of, moments, optimal_gamma

__all__ = [
    "PopulationFlow",
    "conserved_quantity",
    "flow_time_scales",
    "gradient_flow_limit",
    "population_loss",
    "train_population",
    "zfb_initialization",
]


def population_loss(c, a_mat, task, n: int) -> jax.Array:
    """Population MSE of one LSA layer with ``b = a = 0``: ``R(c A^T)`` (docs/theory.md §3; ZFB eq. (5) times 2).

    ``c``: ``W^PV_22`` (scalar or ``[...]``), ``a_mat``: ``W^KQ_11`` (``[..., d, d]``). ``jax.numpy``,
    differentiable, in the parameters' dtype (float32 carries ~1e-7 of the sum of the loss's term magnitudes;
    see [`icl.theory.differentiable_risk`][icl.theory.differentiable_risk]).
    """
    c = jnp.asarray(c)
    a_mat = jnp.asarray(a_mat)
    return differentiable_risk(c[..., None, None] * jnp.swapaxes(a_mat, -1, -2), task, n)


def conserved_quantity(c, a_mat) -> jax.Array:
    """``Q = c^2 - ||A||_F^2``, constant along the gradient flow of [`population_loss`][icl.theory.population_loss] (module docstring)."""
    a_mat = jnp.asarray(a_mat)
    return jnp.asarray(c) ** 2 - jnp.sum(a_mat**2, axis=(-2, -1))


def zfb_initialization(d: int, scale: float, seed: int = 0, theta=None) -> tuple[float, np.ndarray]:
    """ZFB Assumption 3.3: ``c(0) = s``, ``A(0) = s Theta Theta^T / ||Theta Theta^T||_F`` (balanced, ``Q = 0``).

    ``Theta`` is a ``[d, d]`` matrix (default: standard Gaussian from ``seed``); dividing by ``||Theta Theta^T||_F``
    enforces ZFB's normalisation, which makes ``c(0)^2 = ||A(0)||_F^2``. Returns ``(c0, A0)``.
    """
    d = check_positive_int("d", d)
    scale = check_positive("scale", scale)
    th = np.random.default_rng(seed).standard_normal((d, d)) if theta is None else np.asarray(theta, np.float64)
    if th.ndim != 2 or th.shape[0] != d:
        raise ValueError(f"theta must be a matrix with {d} rows, got shape {th.shape}")
    tt = th @ th.T
    norm = np.linalg.norm(tt)
    if not (np.isfinite(norm) and norm > 0):
        raise ValueError("theta must be finite and nonzero")
    return float(scale), scale * tt / norm


def gradient_flow_limit(task, n: int, conserved: float = 0.0, sign: float = 1.0) -> tuple[float, np.ndarray]:
    """The limit ``(c*, A*)`` of the flow from an initialisation with ``Q = c(0)^2 - ||A(0)||_F^2 = conserved``.

    ``c*^2 = (Q + sqrt(Q^2 + 4 ||Gamma*||_F^2)) / 2``, ``A* = Gamma*^T / c*``, ``c*`` with the sign of ``c(0)``.
    ``Q = 0`` is ZFB Theorem 4.1: ``W^PV_22 = ||Gamma*||_F^{1/2}``, ``W^KQ_11 = ||Gamma*||_F^{-1/2} Gamma*``.
    Float64 numpy.
    """
    gamma = optimal_gamma(task, n)
    norm2 = float(np.sum(gamma**2))
    conserved = float(conserved)
    c2 = (conserved + np.sqrt(conserved**2 + 4 * norm2)) / 2
    c = float(np.copysign(np.sqrt(c2), sign))
    return c, gamma.T / c


def flow_time_scales(task, n: int, c_star: float, a_star) -> tuple[float, float]:
    """``(fastest, slowest)`` rates of the linearised flow near ``(c*, A*)``, for choosing step and horizon.

    ``R`` is quadratic in ``Gamma`` with Hessian ``2 S (x) E[hh^T]``; through ``Gamma = c A^T`` the curvature is
    scaled by between ``min(c*^2, ||A*||_F^2)`` and ``c*^2 + ||A*||_F^2``:
    ``fastest = 2 l_max(S) l_max(E hh^T) (c*^2 + ||A*||^2)``, ``slowest = 2 l_min l_min min(c*^2, ||A*||^2)``.
    """
    m = moments(task, n)
    ls, le = np.linalg.eigvalsh(m.s), np.linalg.eigvalsh(expected_hh(task, n))
    a2 = float(np.sum(np.asarray(a_star) ** 2))
    return 2 * ls[-1] * le[-1] * (c_star**2 + a2), 2 * ls[0] * le[0] * min(c_star**2, a2)


@dataclass(frozen=True)
class PopulationFlow:
    """Result of [`train_population`][icl.theory.train_population] (numpy, float64).

    Attributes:
      c: final ``W^PV_22`` (``[]`` or ``[runs]``); a_mat: final ``W^KQ_11`` (``[d, d]`` or ``[runs, d, d]``).
      gamma: final ``Gamma_eff = c A^T``. times: ``[records + 1]`` flow times of the records (``t = 0`` first).
      losses, conserved: ``[records + 1]`` (or ``[runs, records + 1]``) population loss and ``Q = c^2 - ||A||_F^2``.
      c_path, a_path: the recorded trajectory, initial point included. dt: step; steps: integration steps;
      method: integrator.
    """

    c: np.ndarray
    a_mat: np.ndarray
    gamma: np.ndarray
    times: np.ndarray
    losses: np.ndarray
    conserved: np.ndarray
    c_path: np.ndarray
    a_path: np.ndarray
    dt: float
    steps: int
    method: str


def train_population(task, n: int, c0, a0, flow_time: float | None = None, dt: float | None = None,
                     method: str = "rk4", records: int = 200) -> PopulationFlow:
    """Gradient flow ``d(c, A)/dt = -grad L`` on the exact population loss [`population_loss`][icl.theory.population_loss].

    No prompts are sampled; the flow is integrated in float64 under ``jit`` + ``lax.scan`` (classical RK4 by
    default, or ``"euler"``, i.e. plain gradient descent with learning rate ``dt``). RK4 keeps the conserved
    ``Q`` to ``O(dt^4)``; Euler/GD lets it drift by ``dt * int ||grad||^2 dt``, which moves the limit.

    Args:
      task: a task (or law) with a closed form; n: prompt length.
      c0: initial ``W^PV_22``, scalar or ``[runs]``; a0: initial ``W^KQ_11``, ``[d, d]`` or ``[runs, d, d]``
        (runs are integrated side by side under ``vmap``).
      flow_time: total flow time (default: 40 over the slowest rate of [`flow_time_scales`][icl.theory.flow_time_scales] plus the escape
        time from a small start, ``2 log(1 + 1/|c0|)`` over the same rate).
      dt: step (default: 0.5 over the fastest rate, well inside RK4's stability region).
      method: ``"rk4"`` or ``"euler"``. records: trajectory points kept after ``t = 0`` (evenly spaced in steps).
    Returns:
      [`PopulationFlow`][icl.theory.PopulationFlow].
    """
    n = check_positive_int("n", n)
    records = check_positive_int("records", records)
    if method not in ("rk4", "euler"):
        raise ValueError(f"method must be 'rk4' or 'euler', got {method!r}")
    law = law_of(task)
    c0 = np.asarray(c0, np.float64)
    a0 = np.asarray(a0, np.float64)
    d = law.d
    if c0.ndim > 1:
        raise ValueError(f"c0 must be a scalar or [runs], got shape {c0.shape}")
    batched = c0.ndim == 1
    if a0.shape != c0.shape + (d, d):
        raise ValueError(f"a0 must have shape {c0.shape + (d, d)} to match c0 {c0.shape} and d={d}, got {a0.shape}")
    if not (np.all(np.isfinite(c0)) and np.all(np.isfinite(a0))):
        raise ValueError("c0 and a0 must be finite")
    q0 = np.atleast_1d(c0**2 - np.sum(a0**2, axis=(-2, -1)))
    sign0 = np.atleast_1d(np.sign(c0))
    limits = [gradient_flow_limit(law, n, float(q), float(s) or 1.0) for q, s in zip(q0, sign0)]
    scales = [flow_time_scales(law, n, c, a) for c, a in limits]
    fastest, slowest = max(s[0] for s in scales), min(s[1] for s in scales)
    if dt is None:
        dt = 0.5 / fastest
    if flow_time is None:
        escape = 2 * np.log1p(1 / max(np.abs(c0).min(), 1e-300))
        flow_time = (40 + escape) / slowest
    if not (np.isfinite(dt) and dt > 0 and np.isfinite(flow_time) and flow_time > 0):
        raise ValueError(f"dt and flow_time must be finite and > 0, got dt={dt!r}, flow_time={flow_time!r}")
    per_record = max(1, int(np.ceil(flow_time / dt / records)))
    steps = per_record * records

    with jax.enable_x64(True):
        def loss(params):
            return population_loss(params[0], params[1], law, n)

        grad = jax.grad(loss)

        def field(params):
            return jax.tree.map(lambda g: -g, grad(params))

        def step(params, _):
            if method == "euler":
                return jax.tree.map(lambda p, k: p + dt * k, params, field(params)), None
            k1 = field(params)
            k2 = field(jax.tree.map(lambda p, k: p + 0.5 * dt * k, params, k1))
            k3 = field(jax.tree.map(lambda p, k: p + 0.5 * dt * k, params, k2))
            k4 = field(jax.tree.map(lambda p, k: p + dt * k, params, k3))
            new = jax.tree.map(lambda p, a, b, cc, e: p + dt / 6 * (a + 2 * b + 2 * cc + e), params, k1, k2, k3, k4)
            return new, None

        def record(params, _):
            params, _ = jax.lax.scan(step, params, None, length=per_record)
            c, a = params
            return params, (c, a, loss(params), conserved_quantity(c, a))

        @jax.jit
        def integrate(c, a):
            first = (c, a, loss((c, a)), conserved_quantity(c, a))
            (c, a), path = jax.lax.scan(record, (c, a), None, length=records)
            return c, a, jax.tree.map(lambda f, rest: jnp.concatenate([f[None], rest]), first, path)

        run = jax.vmap(integrate) if batched else integrate
        c, a, (c_path, a_path, losses, conserved) = run(jnp.asarray(c0), jnp.asarray(a0))
        c, a = np.asarray(c), np.asarray(a)
        losses, conserved = np.asarray(losses), np.asarray(conserved)
        c_path, a_path = np.asarray(c_path), np.asarray(a_path)
    gamma = c[..., None, None] * np.swapaxes(a, -1, -2)
    return PopulationFlow(c=c, a_mat=a, gamma=gamma, times=dt * per_record * np.arange(records + 1),
                          losses=losses, conserved=conserved, c_path=c_path, a_path=a_path, dt=float(dt),
                          steps=int(steps), method=method)
