"""Ahn et al. (2023)'s sparse L-layer linear transformer: L steps of preconditioned GD with learned ``A_l``.

docs/theory.md §6 (Ahn, Cheng, Daneshmand & Sra 2023, arXiv:2306.00297, Theorem 3 and their 3-layer
experiment). **Sign convention**: [`icl.models.LinearTransformer`][icl.models.LinearTransformer] predicts ``+`` (last coordinate of
the query). Ahn's L-layer GD construction (``W^PV_l`` last row ``[0, 1]``, ``W^KQ_l`` top-left ``-A_l``)
carries the residuals ``y_i - x_i^T w_l`` in the context and ``-x_q^T w_l`` in the query, so it predicts
``-(last coordinate)``; for L >= 2 no gauge flips that sign (the context and query coordinates are moved
by the same map), which is why [`SparseLinearTransformer`][icl.models.SparseLinearTransformer] reads out with Ahn's minus sign.

**Looped (weight-tied) models** (Yang et al. 2023; Gatmiry et al. 2024; docs/theory.md §16):
``SparseLinearTransformer(d, num_layers, loops=K)`` applies its block of ``num_layers`` layers ``K`` times with the
same weights, i.e. ``K * num_layers`` steps of preconditioned GD with the block's step matrices repeated. With
``num_layers=1`` it runs tied K-step GD ``w_{k+1} = w_k - A^T grad L(w_k)``; at ``A^T = eta Sigma^{-1}`` its risk is
[`icl.tied_gd_risk`][icl.theory.tied_gd_risk] and the best ``eta`` is [`icl.optimal_tied_step_size`][icl.theory.optimal_tied_step_size]. The loop count is a plain
attribute (``model.loops = K`` or ``model.with_loops(K)``): changing it at prediction time changes no parameter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.models.lsa import check_model_prompts, gram_stack, prefix_grams, prefix_queries, prompt_tokens
from icl.predictors.base import prefix_counts, shifted_cumsum
from icl.tasks.base import Prompts, check_positive_int

__all__ = ["SparseLSALayer", "SparseLinearTransformer", "layer_preconditioners", "layer_step_sizes",
           "whiten_preconditioner"]


def _sparse_step(a: jax.Array, x: jax.Array, r: jax.Array, x_query: jax.Array, q: jax.Array):
    """One sparse layer with ``A = a`` on context residuals ``r [batch, n]`` and the query's ``q [batch]``."""
    g = jnp.einsum("bn,bnd->bd", r, x) / x.shape[-2]
    ga = g @ a  # g^T A
    return r - jnp.einsum("bd,bnd->bn", ga, x), q - jnp.einsum("bd,bd->b", ga, x_query)


class SparseLSALayer(nnx.Module):
    """One layer of Ahn et al. 2023's sparse parametrisation (their Theorem 3 and 3-layer experiment).

    ``W^PV = [[0, 0], [0, 1]]`` (fixed) and ``W^KQ = [[-A, 0], [0, 0]]`` with ``A`` (``d x d``) trainable, so a
    token ``[x; r]`` becomes ``[x; r - g^T A x]`` with ``g = (1/n) sum_j r_j x_j`` over the context: with
    context residuals ``r_j = y_j - x_j^T w`` this is the step ``w <- w + A^T g = w - A^T grad L(w)``.
    ``w_pv`` / ``w_kq`` give the full matrices, so [`icl.models.implied_preconditioner`][icl.models.implied_preconditioner] applies:
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
        return _sparse_step(self.a_mat[...], x, r, x_query, q)


class SparseLinearTransformer(nnx.Module):
    """L sparse LSA layers (Ahn et al. 2023, Theorem 3): L steps of preconditioned GD with learned ``A_l``.

    Prediction ``y_hat = -(last coordinate of the query token)``, Ahn's sign (module docstring): then
    ``y_hat = x_q^T w_L`` with ``w_{l+1} = w_l - A_l^T grad L(w_l)``, ``w_0 = 0``, exactly. Ahn et al. prove the
    critical points ``A_l = a_l Sigma^{-1}`` and find them by training (their code, chengxiang/LinearTransformer,
    trains these ``A_l`` with Adam from small i.i.d. Gaussian entries). ``model(prompts) -> [batch]``;
    ``model.prefix(prompts) -> [batch, n]`` in Garg's convention (docs/theory.md §10; see
    [`icl.models.LinearTransformer.prefix`][icl.models.LinearTransformer.prefix]).

    ``loops`` (default 1) applies the block of ``num_layers`` layers that many times with shared weights (module
    docstring): ``SparseLinearTransformer(d, 1, loops=K)`` is the looped transformer that runs tied K-step GD. The
    loop count may be changed at prediction time (``model.loops = K``, or the copy ``model.with_loops(K)``); it is
    static (each value compiles its own program) and the loops run as one ``jax.lax.fori_loop``. ``spec()`` records
    ``loops`` when it is not 1.
    """

    returns_variance = False

    def __init__(self, d: int, num_layers: int = 1, *, loops: int = 1, init_scale: float = 0.01, rngs: nnx.Rngs):
        check_positive_int("num_layers", num_layers)
        self.d = check_positive_int("d", d)
        self.loops = check_positive_int("loops", loops)
        self.layers = nnx.List([SparseLSALayer(d, init_scale=init_scale, rngs=rngs) for _ in range(num_layers)])
        self._spec = tuple(dict(d=int(d), num_layers=int(num_layers), init_scale=float(init_scale)).items())

    def spec(self) -> dict:
        """Constructor keyword arguments that rebuild this model's structure (the model protocol)."""
        spec = dict(self._spec)
        if self._loops() != 1:  # absent at the default, so specs of unlooped models are unchanged
            spec["loops"] = self._loops()
        return spec

    def _loops(self) -> int:
        """The loop count, validated (it is a plain attribute that may be reassigned)."""
        return check_positive_int("loops", self.loops)

    def with_loops(self, loops: int) -> SparseLinearTransformer:
        """A copy of this model (same parameter values) that applies its block ``loops`` times."""
        loops = check_positive_int("loops", loops)
        model = nnx.clone(self)
        model.loops = loops
        return model

    def step_matrices(self) -> jax.Array:
        """The step matrices ``A^T`` the model runs, in order: ``[loops * num_layers, d, d]``
        ([`layer_preconditioners`][icl.models.layer_preconditioners] repeated ``loops`` times; ``w_{k+1} = w_k - M_k grad L(w_k)``)."""
        return jnp.tile(layer_preconditioners(self), (self._loops(), 1, 1))

    @classmethod
    def from_gd(cls, d: int, step_sizes, preconditioner=None, *, loops: int = 1) -> "SparseLinearTransformer":
        """``K`` layers running ``K`` steps of preconditioned GD from 0 exactly: ``A_l^T = eta_l P_l``.

        ``step_sizes``: scalar or ``[K]``; ``preconditioner``: ``None`` (identity), ``[d, d]`` or ``[K, d, d]``.
        The model then equals ``icl.gradient_descent(step_sizes, preconditioner)`` (docs/theory.md §6). With
        ``loops``, the ``K`` layers are applied ``loops`` times: ``from_gd(d, eta, P, loops=K)`` is the looped
        one-layer model of tied K-step GD, ``icl.gradient_descent([eta] * K, P)`` (docs/theory.md §16).
        """
        d = check_positive_int("d", d)
        etas = np.atleast_1d(np.asarray(step_sizes, np.float64))
        if etas.ndim != 1 or not np.all(np.isfinite(etas)):
            raise ValueError(f"step_sizes must be a finite scalar or 1-d array [K], got {step_sizes!r}")
        k = etas.shape[0]
        if preconditioner is None:
            precs = np.broadcast_to(np.eye(d), (k, d, d))
        else:
            precs = np.asarray(preconditioner, np.float64)
            if precs.shape == (d, d):
                precs = np.broadcast_to(precs, (k, d, d))
            if precs.shape != (k, d, d):
                raise ValueError(f"preconditioner must be [{d}, {d}] or [{k}, {d}, {d}], got shape {np.shape(preconditioner)}")
        model = cls(d, k, loops=loops, init_scale=0.0, rngs=nnx.Rngs(0))
        for layer, eta, prec in zip(model.layers, etas, precs):
            layer.a_mat[...] = jnp.asarray(eta * prec.T, layer.a_mat[...].dtype)
        return model

    def _check(self, prompts: Prompts) -> int:
        check_model_prompts(prompts, self.d, "model")
        return self._loops()

    def __call__(self, prompts: Prompts) -> jax.Array:
        loops = self._check(prompts)
        r, q = prompts.y, jnp.zeros_like(prompts.y_query)
        if loops == 1:
            for layer in self.layers:
                r, q = layer(prompts.x, r, prompts.x_query, q)
            return -q
        a_mats = [layer.a_mat[...] for layer in self.layers]

        def block(_, carry):
            r, q = carry
            for a in a_mats:
                r, q = _sparse_step(a, prompts.x, r, prompts.x_query, q)
            return r, q

        return -jax.lax.fori_loop(0, loops, block, (r, q))[1]

    def hidden_states(self, prompts: Prompts) -> list[jax.Array]:
        """Tokens ``[x_i; r_i]`` and ``[x_q; q]`` as ``[batch, n + 1, d + 1]`` before the first layer and after each
        layer application (``1 + loops * num_layers`` arrays)."""
        loops = self._check(prompts)
        r, q = prompts.y, jnp.zeros_like(prompts.y_query)
        x = jnp.concatenate([prompts.x, prompts.x_query[:, None]], axis=1)

        def tokens():
            return jnp.concatenate([x, jnp.concatenate([r, q[:, None]], axis=1)[..., None]], axis=-1)

        states = [tokens()]
        for _ in range(loops):
            for layer in self.layers:
                r, q = layer(prompts.x, r, prompts.x_query, q)
                states.append(tokens())
        return states

    def prefix(self, prompts: Prompts) -> jax.Array:
        """Every-prefix predictions ``[batch, n]`` (Garg's convention; entry 0 is 0): the Gram form of the stack.

        Looped (``loops > 1``): the GD form of the same map, ``w <- w + A^T (h_k - S_k w)`` on every prefix's
        moments ``S_k = (1/(k-1)) sum_{i<k} x_i x_i^T`` and ``h_k = (1/(k-1)) sum_{i<k} y_i x_i`` (0 at ``k = 1``),
        then ``x_k^T w``: ``O(n d^2)`` per prompt and loop, one ``fori_loop`` over the loops.
        """
        loops = self._check(prompts)
        if loops == 1:
            context, _ = prompt_tokens(prompts)
            w_pvs = [layer.w_pv for layer in self.layers]
            w_kqs = [layer.w_kq for layer in self.layers]
            return -gram_stack(w_pvs, w_kqs, prefix_grams(context), prefix_queries(context))[..., -1]
        return _looped_prefix([layer.a_mat[...] for layer in self.layers], prompts.x, prompts.y, loops)


@functools.partial(jax.jit, static_argnames="loops")
def _looped_prefix(a_mats, x: jax.Array, y: jax.Array, loops: int) -> jax.Array:
    """Every-prefix predictions of the looped sparse stack ([`SparseLinearTransformer.prefix`][icl.models.SparseLinearTransformer.prefix])."""
    counts = prefix_counts(x.shape[-2], x.dtype)[:, None]
    s = shifted_cumsum(x[..., :, :, None] * x[..., :, None, :], axis=-3) / counts[..., None]  # [b, n, d, d]
    h = shifted_cumsum(y[..., None] * x, axis=-2) / counts  # [b, n, d]

    def block(_, w):
        for a in a_mats:
            w = w + (h - jnp.sum(s * w[..., None, :], axis=-1)) @ a  # (h - S w)^T A = (A^T (h - S w))^T
        return w

    w = jax.lax.fori_loop(0, loops, block, jnp.zeros_like(h))
    return jnp.sum(x * w, axis=-1)


def layer_preconditioners(model_or_params) -> jax.Array:
    """The per-layer step matrices ``A_l^T`` of a [`SparseLinearTransformer`][icl.models.SparseLinearTransformer]: ``[..., L, d, d]``.

    Accepts the model or its parameter state (``result.params`` of [`icl.train`][icl.training.train], with a leading seed
    axis). Equal to ``-implied_preconditioner(layer)`` for each layer (Ahn's read-out sign).
    """
    if isinstance(model_or_params, nnx.Module):
        if not hasattr(model_or_params, "layers") or not all(hasattr(l, "a_mat") for l in model_or_params.layers):
            raise ValueError(f"model_or_params must be a SparseLinearTransformer, got {type(model_or_params).__name__}")
        mats = [layer.a_mat[...] for layer in model_or_params.layers]
    else:  # an nnx.State / mapping keyed by layer index
        try:
            layers = model_or_params["layers"]
            mats = [layers[i]["a_mat"][...] for i in sorted(layers.keys())]
        except (KeyError, TypeError) as err:
            raise ValueError("model_or_params must be a SparseLinearTransformer or its parameter state "
                             "(with layers/<i>/a_mat)") from err
    mats = [jnp.asarray(m) for m in mats]
    return jnp.swapaxes(jnp.stack(mats, axis=-3), -1, -2)


def layer_step_sizes(model_or_params, x_cov=None) -> np.ndarray:
    """The scalar step each layer runs, ``a_l = tr(Sigma^{1/2} A_l^T Sigma^{1/2}) / d``: float64 ``[..., L]``.

    ``A_l^T = a_l Sigma^{-1}`` (Ahn et al.'s critical points) gives exactly ``a_l``; ``x_cov=None`` reads
    ``Sigma = I`` (``tr(A_l)/d``). For a looped one-layer model this is the shared step ``eta`` of tied GD, to
    compare with [`icl.optimal_tied_step_size`][icl.theory.optimal_tied_step_size]; [`icl.models.dist_to_identity`][icl.models.dist_to_identity] of
    [`whiten_preconditioner`][icl.models.whiten_preconditioner] says how far ``A_l`` is from that form. Accepts what
    [`layer_preconditioners`][icl.models.layer_preconditioners] accepts.
    """
    mats = np.asarray(layer_preconditioners(model_or_params), np.float64)
    if x_cov is not None:
        mats = whiten_preconditioner(mats, x_cov)
    return np.trace(mats, axis1=-2, axis2=-1) / mats.shape[-1]


def whiten_preconditioner(matrices, x_cov) -> np.ndarray:
    """``Sigma^{1/2} A Sigma^{1/2}`` for ``A: [..., d, d]`` (numpy, symmetric square root by ``eigh``).

    Ahn et al.'s read-out of a learned preconditioner: ``A = a Sigma^{-1}`` exactly when this is ``a I``;
    measure with [`icl.models.dist_to_identity`][icl.models.dist_to_identity] and read ``a = tr(.)/d``.
    """
    x_cov = np.asarray(x_cov, np.float64)
    matrices = np.asarray(matrices, np.float64)
    if x_cov.ndim != 2 or x_cov.shape[0] != x_cov.shape[1] or matrices.shape[-2:] != x_cov.shape:
        raise ValueError(f"x_cov must be [d, d] matching matrices [..., d, d], got {x_cov.shape} and {matrices.shape}")
    evals, evecs = np.linalg.eigh(x_cov)
    root = (evecs * np.sqrt(np.maximum(evals, 0.0))) @ evecs.T
    return root @ matrices @ root
