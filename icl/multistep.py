"""Several layers, several steps: optimal K-step preconditioned GD, GD++ and Ahn et al.'s sparse transformer.

THEORY.md §6 (Ahn, Cheng, Daneshmand & Sra 2023, arXiv:2306.00297; von Oswald et al. 2023, arXiv:2212.07677).

**Exact risk of K-step GD.** Preconditioning by ``Sigma^{-1}`` whitens the problem: with ``x = Sigma^{1/2} z``
and ``S = Z^T Z / n`` (``Z`` an ``n x d`` standard Gaussian matrix), K steps
``w_{k+1} = w_k - eta_k Sigma^{-1} grad L(w_k)`` from ``w_0 = 0`` leave the whitened error
``-p(S) Sigma^{1/2} w + q(S) Z^T eps / n`` with the *residual polynomial*
``p(lam) = prod_k (1 - eta_k lam)`` and ``q(lam) = (1 - p(lam)) / lam``. ``S`` is rotation invariant, so
``E[p(S)^2] = (E tr p(S)^2 / d) I`` and the population MSE is

    R = tr(Sigma Omega)/d * E tr p(S)^2 + sigma^2/n * E tr(q(S)^2 S) + sigma^2,

a linear function of the Wishart trace moments ``m_j = E tr(S^j)`` (:func:`wishart_trace_moments`, exact
integers from Stein's identity). For ``Sigma = I`` it is plain GD. ``R`` is quadratic in the coefficients of
``p`` (with ``p(0) = 1``), so the optimal K-step GD is one ``K x K`` linear solve; its step sizes are the
reciprocal roots of the optimal ``p`` (:func:`optimal_multistep_step_sizes`). For Ahn et al.'s setting (d = 5,
n = 20, noiseless, Omega = Sigma^{-1}) this gives {0.4224, 0.6891, 1.7142} and R/d = 0.02672 for K = 3
(the paper's trained values: {0.420, 0.686, 1.709}, loss/d ~ 0.0270).

**GD++** (von Oswald et al. 2023, section 4) also transforms the inputs, ``x <- (I - gamma S P) x``, before each
step; with ``P = Sigma^{-1}`` every quantity is again a polynomial in ``S``, so its risk has the same exact
form (:func:`gd_plus_plus_risk`) and its step sizes are tuned on it (:func:`optimal_gd_plus_plus`).

**Sign convention.** ``icl.models`` predicts ``+`` (last coordinate of the query). Ahn's L-layer GD
construction (``W^PV_l`` last row ``[0, 1]``, ``W^KQ_l`` top-left ``-A_l``) carries the residuals
``y_i - x_i^T w_l`` in the context and ``-x_q^T w_l`` in the query, so it predicts ``-(last coordinate)``; for
L >= 2 no gauge flips that sign (the context and query coordinates are moved by the same map), which is why
:class:`SparseLinearTransformer` reads out with Ahn's minus sign.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from icl.algorithms import Predictor, linear_predictor
from icl.tasks import check_positive_int

__all__ = [
    "wishart_trace_moments",
    "gd_polynomial",
    "gd_plus_plus_polynomial",
    "polynomial_risk",
    "multistep_gd_risk",
    "gd_plus_plus_risk",
    "optimal_multistep_step_sizes",
    "optimal_gd_plus_plus",
    "gd_plus_plus_weights",
    "gd_plus_plus",
    "SparseLSALayer",
    "SparseLinearTransformer",
    "layer_preconditioners",
    "whiten_preconditioner",
]


# ----------------------------------------------------------------------------------------------------------
# Exact Wishart trace moments
# ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _mixed_trace_moment(powers: tuple[int, ...], n: int, d: int) -> int:
    """``E prod_j tr(W^{k_j})`` for ``W = Z^T Z``, ``Z`` an ``n x d`` standard Gaussian matrix (exact integer).

    Stein's identity ``E[Z_ai g(Z)] = E[dg/dZ_ai]`` applied to ``tr(W^k) = sum_ai Z_ai (Z W^{k-1})_ai`` gives
    ``E[tr W^k P] = (n + k - 1) E[tr W^{k-1} P] + sum_{j=1}^{k-1} E[tr W^j tr W^{k-1-j} P]
    + 2 sum_i k_i E[tr W^{k+k_i-1} P / tr W^{k_i}]`` for ``P = prod_i tr W^{k_i}``, with ``tr W^0 = d``;
    every term has total degree one less, so the recursion terminates.
    """
    if not powers:
        return 1
    *rest, k = powers  # sorted ascending: k is the largest power

    def moment(extra: list[int], others: list[int]) -> int:
        ps = others + extra
        zeros = sum(1 for p in ps if p == 0)
        return d**zeros * _mixed_trace_moment(tuple(sorted(p for p in ps if p > 0)), n, d)

    total = (n + k - 1) * moment([k - 1], rest)
    for j in range(1, k):
        total += moment([j, k - 1 - j], rest)
    for i, ki in enumerate(rest):
        total += 2 * ki * moment([k + ki - 1], rest[:i] + rest[i + 1 :])
    return total


def wishart_trace_moments(n: int, d: int, max_power: int) -> np.ndarray:
    """Exact ``m_j = E tr(S^j)``, ``j = 0..max_power``, for ``S = Z^T Z / n``, ``Z`` ``n x d`` i.i.d. N(0, 1).

    Computed in integer arithmetic from Stein's identity (see :func:`_mixed_trace_moment`), then divided by
    ``n^j``. Examples: ``m_0 = d``, ``m_1 = d``, ``m_2 = d (n + d + 1) / n`` (the Wishart identity of THEORY.md §3).
    Returns a float64 array ``[max_power + 1]``.
    """
    n, d = check_positive_int("n", n), check_positive_int("d", d)
    if not (isinstance(max_power, (int, np.integer)) and max_power >= 0):
        raise ValueError(f"max_power must be an integer >= 0, got {max_power!r}")
    return np.array([d] + [_mixed_trace_moment((j,), n, d) / n**j for j in range(1, max_power + 1)], np.float64)


# ----------------------------------------------------------------------------------------------------------
# Residual polynomials and their exact risk
# ----------------------------------------------------------------------------------------------------------


def gd_polynomial(step_sizes) -> jax.Array:
    """Coefficients (lowest degree first) of the GD residual polynomial ``p(lam) = prod_k (1 - eta_k lam)``."""
    etas = jnp.atleast_1d(jnp.asarray(step_sizes))
    p = jnp.ones(1, etas.dtype)
    for k in range(etas.shape[0]):  # K is a handful of layers; the polynomial grows by one degree per step
        p = jnp.convolve(p, jnp.stack([jnp.ones((), etas.dtype), -etas[k]]))
    return p


def gd_plus_plus_polynomial(step_sizes, gammas) -> jax.Array:
    """Residual polynomial of K steps of GD++ in the whitened problem (von Oswald et al. 2023, section 4).

    Layer ``l`` maps inputs by ``M_{l+1} = (I - gamma_l S_l) M_l`` with ``S_l = M_l S M_l`` (``M_1 = I``) and
    takes a GD step with step ``eta_l`` on the transformed inputs, so the residual polynomial is
    ``p(lam) = prod_l (1 - eta_l M_l(lam)^2 lam)`` with ``M_{l+1}(lam) = (1 - gamma_l M_l(lam)^2 lam) M_l(lam)``.
    ``gammas`` has ``K - 1`` entries (the last layer's input map cannot reach the prediction); all zero is GD.
    """
    etas = jnp.atleast_1d(jnp.asarray(step_sizes))
    k = etas.shape[0]
    gammas = jnp.atleast_1d(jnp.asarray(gammas, etas.dtype)) if k > 1 else jnp.zeros(0, etas.dtype)
    if gammas.shape != (k - 1,):
        raise ValueError(f"gammas must hold K - 1 = {k - 1} values for K = {k} steps, got shape {gammas.shape}")
    one = jnp.ones(1, etas.dtype)
    m, p = one, one
    for layer in range(k):
        lam_m2 = jnp.concatenate([jnp.zeros(1, etas.dtype), jnp.convolve(m, m)])  # lam * M_l(lam)^2
        p = jnp.convolve(p, _poly_add(one, -etas[layer] * lam_m2))
        if layer < k - 1:
            m = jnp.convolve(_poly_add(one, -gammas[layer] * lam_m2), m)
    return p


def _poly_add(a: jax.Array, b: jax.Array) -> jax.Array:
    size = max(a.shape[0], b.shape[0])
    return jnp.pad(a, (0, size - a.shape[0])) + jnp.pad(b, (0, size - b.shape[0]))


def polynomial_risk(coeffs, task, n: int) -> jax.Array:
    """Exact population MSE of a GD-type predictor with residual polynomial ``p`` (``p(0) = 1``).

    ``R = tr(Sigma Omega)/d * sum_j (p^2)_j m_j + sigma^2/n * sum_j (q^2 lam)_j m_j + sigma^2`` with
    ``q = (1 - p)/lam`` and ``m_j = E tr(S^j)`` (module docstring). Holds for predictors preconditioned by
    ``Sigma^{-1}`` (identity when Sigma = I): K-step GD and GD++. ``coeffs``: ``[D + 1]``, lowest degree first,
    ``coeffs[0] = 1``. Differentiable in ``coeffs``.
    """
    coeffs = jnp.asarray(coeffs)
    n = check_positive_int("n", n)
    d = task.d
    degree = coeffs.shape[0] - 1
    m = jnp.asarray(wishart_trace_moments(n, d, 2 * degree), coeffs.dtype)
    signal = jnp.dot(jnp.convolve(coeffs, coeffs), m)
    q = -coeffs[1:]  # (1 - p(lam)) / lam
    noise_part = jnp.dot(jnp.convolve(q, q), m[1 : 2 * degree]) if degree else 0.0
    s, o = jnp.asarray(task.x_cov, coeffs.dtype), jnp.asarray(task.w_cov, coeffs.dtype)
    noise2 = jnp.asarray(task.noise_std, coeffs.dtype) ** 2
    return jnp.trace(s @ o) / d * signal + noise2 / n * noise_part + noise2


def multistep_gd_risk(step_sizes, task, n: int) -> jax.Array:
    """Exact population MSE of K steps of GD preconditioned by ``Sigma^{-1}`` from ``w_0 = 0`` (THEORY.md §6).

    ``w_{k+1} = w_k - eta_k Sigma^{-1} X^T (X w_k - y)/n`` (Ahn et al. 2023, eq. (8) with ``A_k = eta_k
    Sigma^{-1}``); for ``Sigma = I`` plain GD. K = 1 reproduces :func:`icl.theory.risk` at
    ``Gamma = eta Sigma^{-1}``. See :func:`polynomial_risk`.
    """
    return polynomial_risk(gd_polynomial(step_sizes), task, n)


def gd_plus_plus_risk(step_sizes, gammas, task, n: int) -> jax.Array:
    """Exact population MSE of K steps of GD++ preconditioned by ``Sigma^{-1}`` (see :func:`gd_plus_plus`)."""
    return polynomial_risk(gd_plus_plus_polynomial(step_sizes, gammas), task, n)


def optimal_multistep_step_sizes(task, n: int, num_steps: int) -> tuple[np.ndarray, float]:
    """Step sizes of the risk-optimal K-step ``Sigma^{-1}``-preconditioned GD and its risk (THEORY.md §6).

    With ``p(lam) = 1 + sum_{j=1}^K c_j lam^j`` the risk of :func:`polynomial_risk` is quadratic in ``c``;
    setting its gradient to zero gives ``(a H + b H') c = -a (m_1, ..., m_K)`` with ``H_jl = m_{j+l}``,
    ``H'_jl = m_{j+l-1}``, ``a = tr(Sigma Omega)/d``, ``b = sigma^2/n``. The optimal ``p`` is a kernel polynomial of
    the spectral law of ``S`` (real, positive roots), and the step sizes are its reciprocal roots; the order
    of the steps does not change ``p``. Ahn et al. 2023 (their 3-layer experiment): d = 5, n = 20, K = 3 gives
    {0.4224, 0.6891, 1.7142}.

    Returns:
      ``(step_sizes [K] ascending, float64; risk)``. Raises ValueError if the roots are not real and positive.
    """
    n, k = check_positive_int("n", n), check_positive_int("num_steps", num_steps)
    d = task.d
    m = wishart_trace_moments(n, d, 2 * k)
    a = float(np.trace(np.asarray(task.x_cov) @ np.asarray(task.w_cov))) / d
    b = float(task.noise_std) ** 2 / n
    idx = np.arange(1, k + 1)
    hankel = m[idx[:, None] + idx[None, :]]
    hankel_shift = m[idx[:, None] + idx[None, :] - 1]
    c = np.linalg.solve(a * hankel + b * hankel_shift, -a * m[idx])
    roots = np.roots(np.concatenate([[1.0], c])[::-1])
    if np.any(np.abs(roots.imag) > 1e-8 * np.abs(roots)) or np.any(roots.real <= 0):
        raise ValueError(f"optimal residual polynomial has roots {roots} that are not real and positive")
    steps = np.sort(1.0 / roots.real)
    with jax.enable_x64(True):
        r = float(multistep_gd_risk(jnp.asarray(steps, jnp.float64), task, n))
    return steps, r


def optimal_gd_plus_plus(task, n: int, num_steps: int, iterations: int = 300,
                         gamma_starts=(0.0, 0.2, 0.5)) -> tuple[np.ndarray, np.ndarray, float]:
    """Tune GD++'s K step sizes and K - 1 input-map rates on its exact risk (:func:`gd_plus_plus_risk`).

    Deterministic: L-BFGS (Optax, zoom line search) in float64 from the optimal GD step sizes with every
    ``gamma_l`` set to each value of ``gamma_starts`` (``0`` starts at GD, so the result is never worse than
    optimal K-step GD); the best end point wins. The problem is non-convex; this is a local search.

    Returns:
      ``(step_sizes [K], gammas [K - 1], risk)`` as float64 numpy / float.
    """
    n, k = check_positive_int("n", n), check_positive_int("num_steps", num_steps)
    gd_steps, gd_risk = optimal_multistep_step_sizes(task, n, k)
    if k == 1:
        return gd_steps, np.zeros(0), gd_risk
    best = (gd_steps, np.zeros(k - 1), gd_risk)
    with jax.enable_x64(True):
        def objective(theta):
            return gd_plus_plus_risk(theta[:k], theta[k:], task, n)

        solver = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(objective)

        @jax.jit
        def run(theta0):
            def body(carry, _):
                theta, state = carry
                value, grad = value_and_grad(theta, state=state)
                updates, state = solver.update(grad, state, theta, value=value, grad=grad, value_fn=objective)
                return (optax.apply_updates(theta, updates), state), None

            (theta, _), _ = jax.lax.scan(body, (theta0, solver.init(theta0)), None, length=iterations)
            return theta, objective(theta)

        for gamma0 in gamma_starts:
            theta0 = jnp.concatenate([jnp.asarray(gd_steps), jnp.full(k - 1, float(gamma0))])
            theta, value = run(theta0)
            value = float(value)
            if np.isfinite(value) and value < best[2]:
                theta = np.asarray(theta)
                best = (theta[:k], theta[k:], value)
    return best


# ----------------------------------------------------------------------------------------------------------
# GD++ as a predictor
# ----------------------------------------------------------------------------------------------------------


def gd_plus_plus_weights(x: jax.Array, y: jax.Array, step_sizes, gammas, preconditioner=None) -> jax.Array:
    """Effective weights of K steps of GD++ (von Oswald et al. 2023, section 4): ``y_hat = x_q^T w``.

    Each step ``l``, from the current inputs ``x^(l)`` and residuals ``r = y - X w``: ``g = X^(l)T r / n``,
    ``S_l = X^(l)T X^(l) / n``; the residuals take a preconditioned GD step, ``r_i <- r_i - eta_l x_i^(l)T P g``,
    and every input (context and query) moves, ``x <- (I - gamma_l S_l P) x``. The query's prediction
    accumulates ``eta_l x_q^(l)T P g``, i.e. ``w = sum_l eta_l N_l^T P g_l`` with ``N_l`` the product of the
    earlier input maps. All ``gamma = 0`` is :func:`icl.algorithms.gd_weights`.

    Args:
      x: ``[batch, n, d]``; y: ``[batch, n]``; step_sizes: ``[K]``; gammas: ``[K - 1]`` (or ``[K]``, the
      last one unused); preconditioner: ``P``, ``None`` (identity) or ``[d, d]``.
    Returns:
      ``[batch, d]``.
    """
    etas = jnp.atleast_1d(jnp.asarray(step_sizes, x.dtype))
    k, n, d = etas.shape[0], x.shape[-2], x.shape[-1]
    gammas = jnp.atleast_1d(jnp.asarray(gammas, x.dtype)) if k > 1 else jnp.zeros(0, x.dtype)
    if gammas.shape[0] not in (k - 1, k):
        raise ValueError(f"gammas must hold K - 1 = {k - 1} (or K) values, got shape {gammas.shape}")
    gammas = jnp.pad(gammas[: k - 1], (0, 1))
    p = jnp.eye(d, dtype=x.dtype) if preconditioner is None else jnp.asarray(preconditioner, x.dtype)
    if p.shape != (d, d):
        raise ValueError(f"preconditioner must have shape ({d}, {d}), got {p.shape}")
    eye = jnp.eye(d, dtype=x.dtype)

    def step(carry, eta_gamma):
        xs, r, maps, w = carry
        eta, gamma = eta_gamma
        g = jnp.einsum("bnd,bn->bd", xs, r) / n
        pg = g @ p.T
        s = jnp.einsum("bni,bnj->bij", xs, xs) / n
        r = r - eta * jnp.einsum("bnd,bd->bn", xs, pg)
        w = w + eta * jnp.einsum("bij,bi->bj", maps, pg)  # N_l^T P g
        transform = eye - gamma * s @ p  # [batch, d, d]
        xs = jnp.einsum("bij,bnj->bni", transform, xs)
        maps = transform @ maps
        return (xs, r, maps, w), None

    maps0 = jnp.broadcast_to(eye, x.shape[:-2] + (d, d))
    (_, _, _, w), _ = jax.lax.scan(step, (x, y, maps0, jnp.zeros(x.shape[:-2] + (d,), x.dtype)), (etas, gammas))
    return w


def gd_plus_plus(step_sizes, gammas, preconditioner=None) -> Predictor:
    """Predictor of K steps of GD++; see :func:`gd_plus_plus_weights`."""
    return linear_predictor(lambda x, y: gd_plus_plus_weights(x, y, step_sizes, gammas, preconditioner))


# ----------------------------------------------------------------------------------------------------------
# Ahn et al.'s sparse L-layer transformer
# ----------------------------------------------------------------------------------------------------------


class SparseLSALayer(nnx.Module):
    """One layer of Ahn et al. 2023's sparse parametrisation (their Theorem 3 and 3-layer experiment).

    ``W^PV = [[0, 0], [0, 1]]`` (fixed) and ``W^KQ = [[-A, 0], [0, 0]]`` with ``A`` (``d x d``) trainable, so a
    token ``[x; r]`` becomes ``[x; r - g^T A x]`` with ``g = (1/n) sum_j r_j x_j`` over the context: with
    context residuals ``r_j = y_j - x_j^T w`` this is the step ``w <- w + A^T g = w - A^T grad L(w)``.
    ``w_pv`` / ``w_kq`` give the full matrices, so :func:`icl.analysis.implied_preconditioner` applies:
    ``Gamma_eff = -A^T``, and with Ahn's read-out sign the layer's preconditioner is ``-Gamma_eff = A^T``.
    """

    def __init__(self, d: int, *, init_scale: float = 0.01, rngs: nnx.Rngs):
        self.d = check_positive_int("d", d)
        if not init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
        self.a_mat = nnx.Param(init_scale * jax.random.normal(rngs.params(), (d, d)))

    @property
    def w_pv(self) -> jax.Array:
        d = self.d
        return jnp.zeros((d + 1, d + 1), self.a_mat.dtype).at[d, d].set(1.0)

    @property
    def w_kq(self) -> jax.Array:
        d = self.d
        return jnp.zeros((d + 1, d + 1), self.a_mat.dtype).at[:d, :d].set(-self.a_mat[...])

    def __call__(self, x: jax.Array, r: jax.Array, x_query: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Update the last coordinates: context ``r: [batch, n]``, query ``q: [batch]`` (``x`` is unchanged)."""
        a = self.a_mat[...]
        g = jnp.einsum("bn,bnd->bd", r, x) / x.shape[-2]
        ga = g @ a  # g^T A
        return r - jnp.einsum("bd,bnd->bn", ga, x), q - jnp.einsum("bd,bd->b", ga, x_query)


class SparseLinearTransformer(nnx.Module):
    """L sparse LSA layers (Ahn et al. 2023, Theorem 3): L steps of preconditioned GD with learned ``A_l``.

    Prediction ``y_hat = -(last coordinate of the query token)``, Ahn's sign (module docstring): then
    ``y_hat = x_q^T w_L`` with ``w_{l+1} = w_l - A_l^T grad L(w_l)``, ``w_0 = 0``, exactly. Ahn et al. prove the
    critical points ``A_l = a_l Sigma^{-1}`` and find them by training (their code, chengxiang/LinearTransformer,
    trains these ``A_l`` with Adam from small i.i.d. Gaussian entries). Call it on prompts for ``[batch]``.
    """

    def __init__(self, d: int, num_layers: int = 1, *, init_scale: float = 0.01, rngs: nnx.Rngs):
        check_positive_int("num_layers", num_layers)
        self.d = check_positive_int("d", d)
        self.layers = nnx.List([SparseLSALayer(d, init_scale=init_scale, rngs=rngs) for _ in range(num_layers)])

    def __call__(self, prompts) -> jax.Array:
        if prompts.d != self.d:
            raise ValueError(f"prompts have d={prompts.d} but the model was built with d={self.d}")
        r, q = prompts.y, jnp.zeros_like(prompts.y_query)
        for layer in self.layers:
            r, q = layer(prompts.x, r, prompts.x_query, q)
        return -q


def layer_preconditioners(model_or_params) -> jax.Array:
    """The per-layer step matrices ``A_l^T`` of a :class:`SparseLinearTransformer`: ``[..., L, d, d]``.

    Accepts the model or its parameter state (``result.params`` of :func:`icl.train`, with a leading seed
    axis). Equal to ``-implied_preconditioner(layer)`` for each layer (Ahn's read-out sign).
    """
    if isinstance(model_or_params, nnx.Module):
        mats = [layer.a_mat[...] for layer in model_or_params.layers]
    else:  # an nnx.State / mapping keyed by layer index
        layers = model_or_params["layers"]
        mats = [layers[i]["a_mat"][...] for i in sorted(layers.keys())]
    mats = [jnp.asarray(m) for m in mats]
    return jnp.swapaxes(jnp.stack(mats, axis=-3), -1, -2)


def whiten_preconditioner(matrices, x_cov) -> np.ndarray:
    """``Sigma^{1/2} A Sigma^{1/2}`` for ``A: [..., d, d]`` (numpy, symmetric square root by ``eigh``).

    Ahn et al.'s read-out of a learned preconditioner: ``A = a Sigma^{-1}`` exactly when this is ``a I``;
    measure with :func:`icl.analysis.dist_to_identity` and read ``a = tr(.)/d``.
    """
    evals, evecs = np.linalg.eigh(np.asarray(x_cov, np.float64))
    root = (evecs * np.sqrt(evals)) @ evecs.T
    return root @ np.asarray(matrices, np.float64) @ root
