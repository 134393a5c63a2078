"""Linear self-attention (LSA) and the L-layer linear transformer, in Flax NNX (docs/theory.md §2, §6, §10).

Token layout: context tokens ``z_i = [x_i; y_i]`` and the query token ``z_q = [x_q; 0]`` form the
columns of ``E in R^{(d+1) x (n+1)}``. One layer maps

    f(E) = E + W^PV E M (E^T W^KQ E) / n,    M = diag(1, ..., 1, 0),

so keys and values come from the context only. **Prediction convention**: ``y_hat`` is the last
coordinate of the query column after the last layer, with a plus sign (von Oswald's code and Ahn et
al. negate it). For one layer the sign is absorbed by the gauge ``W^PV -> -W^PV``; for two or more
layers it is not (the context y-tokens carry residuals into later layers), so Ahn et al.'s multi-layer
GD construction lives in [`icl.models.SparseLinearTransformer`][icl.models.SparseLinearTransformer], which reads out ``-y``.

**Gram form** (how the forward pass is computed). With ``G = (1/n) sum_i z_i z_i^T`` over the context,
a layer maps *every* token, context or query, by the same matrix ``M_l = I + W^PV_l G_l W^KQ_l``; so the
next layer's Gram matrix is ``G_{l+1} = M_l G_l M_l^T`` and after one ``O(n d^2)`` pass that forms
``G_0`` the whole stack costs ``O(L d^3)`` per prompt, independent of ``n``; the weights never touch
the ``n`` tokens, so the backward pass never does either. Exact (the token form of the definition is
kept as [`LinearTransformer.tokens`][icl.models.LinearTransformer.tokens], and the two agree to ~1e-14 in float64).

Read-offs of trained weights (``Gamma_eff``, Ahn's ``Dist(M, I)``) and the GD constructions of von
Oswald et al. (2023, Prop. 1) live here too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.predictors.base import prefix_counts, shifted_cumsum
from icl.tasks.base import Prompts, check_positive_int, check_prompt_shapes

__all__ = [
    "lsa_from_parameters",
    "LinearSelfAttention",
    "LinearTransformer",
    "prompt_tokens",
    "gd_lsa_weights",
    "align_gauge",
    "lsa_blocks",
    "implied_preconditioner",
    "residual_terms",
    "relative_error",
    "dist_to_identity",
]


def prompt_tokens(prompts: Prompts) -> tuple[jax.Array, jax.Array]:
    """Tokens of a prompt: context ``[batch, n, d+1]`` rows ``[x_i, y_i]`` and query ``[batch, d+1]`` = ``[x_q, 0]``."""
    context = jnp.concatenate([prompts.x, prompts.y[..., None]], axis=-1)
    query = jnp.concatenate([prompts.x_query, jnp.zeros_like(prompts.x_query[..., :1])], axis=-1)
    return context, query


def check_model_prompts(prompts, d: int, who: str) -> None:
    """[`icl.tasks.check_prompt_shapes`][icl.tasks.check_prompt_shapes] for a model built with input dimension ``d``."""
    check_prompt_shapes(prompts, who=who, d=d)


@jax.jit
def _gram(context: jax.Array) -> jax.Array:
    """``(1/n) sum_i z_i z_i^T``: ``[..., n, D] -> [..., D, D]``.

    A broadcast multiply-and-reduce: on XLA:CPU this is ~3x faster than the batched ``dot_general``
    of an ``einsum`` over many tiny matrices.
    """
    return jnp.sum(context[..., :, :, None] * context[..., :, None, :], axis=-3) / context.shape[-2]


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for stacks of tiny matrices ``[..., i, j] @ [..., j, k]``: a broadcast multiply-and-reduce.

    On XLA:CPU this runs several times faster than the batched ``dot_general`` an ``einsum`` or ``@`` of
    many ``6 x 6`` matrices lowers to (measured on 2 CPU cores, d = 5, batch 20000: the 3-layer Gram
    stack's forward ~4x faster than with ``einsum``). Exact up to floating-point association.
    """
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _mv(m: jax.Array, v: jax.Array) -> jax.Array:
    """``m @ v`` for stacks: ``[..., i, j] @ [..., j] -> [..., i]`` (broadcast multiply-and-reduce)."""
    return jnp.sum(m * v[..., None, :], axis=-1)


@jax.jit
def gram_stack(w_pvs, w_kqs, gram: jax.Array, query: jax.Array) -> jax.Array:
    """Final query token(s) of the stack from the context Gram matrix (module docstring, "Gram form").

    ``w_pvs, w_kqs``: sequences of ``[D, D]``; ``gram: [..., D, D]``; ``query: [..., D]``; returns ``[..., D]``.
    Layer ``l``: ``M = I + W^PV G W^KQ``, ``q <- M q``, ``G <- M G M^T``. The first ``L - 2`` layers form
    ``M`` and ``G``; the last two apply them to vectors only: with ``G`` the Gram matrix entering layer
    ``L - 2`` (symmetric), ``M v = v + W^PV G W^KQ v``, ``M^T v = v + W^KQ^T G W^PV^T v``, the last layer's
    Gram matrix acts as ``v -> M G M^T v`` and ``q_L = q + W^PV_L (M G M^T) W^KQ_L q``: five per-prompt
    matrix-vector products instead of three per-prompt ``D x D`` matrix products (the 3-layer training step
    at d=5, n=20, batch 20000, alternating runs: 1.70-1.90x the cost of sampling its prompts -> 1.34-1.37x).
    Jitted so that eager calls compile once per shape.
    """
    eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)
    layers = len(w_pvs)
    for w_pv, w_kq in zip(w_pvs[:-2], w_kqs[:-2]):
        m = eye + (w_pv @ gram) @ w_kq  # shared weights: plain matmuls
        query = _mv(m, query)
        gram = _mm(_mm(m, gram), jnp.swapaxes(m, -1, -2))
    if layers == 1:
        def last_gram(v):
            return _mv(gram, v)
    else:
        w_pv, w_kq = w_pvs[-2], w_kqs[-2]

        def m_apply(v):
            return v + _mv(gram, v @ w_kq.T) @ w_pv.T

        def last_gram(v):
            return m_apply(_mv(gram, v + _mv(gram, v @ w_pv) @ w_kq))  # M G M^T v

        query = m_apply(query)
    return query + last_gram(query @ w_kqs[-1].T) @ w_pvs[-1].T


class LinearSelfAttention(nnx.Module):
    """One LSA layer with full ``(d+1) x (d+1)`` matrices ``W^PV`` and ``W^KQ`` (docs/theory.md §2).

    With ``G = (1/n) sum_i z_i z_i^T`` over the context, every token ``z`` (context or query) becomes
    ``z + W^PV G W^KQ z``, which is ``f(E) = E + W^PV E M (E^T W^KQ E)/n`` column by column.

    Args:
      d: input dimension (tokens have ``d + 1`` coordinates).
      init_scale: entries start i.i.d. ``N(0, init_scale^2)``; 0 starts at zero.
      init_diag: added to the diagonal of both matrices at start (``W = init_diag I + noise``). A
        positive value starts on the ``c A^T`` path (``b = a = 0``, as in Zhang, Frei & Bartlett's
        initialisation), which avoids the rank-one ``a b^T`` stationary points that small random
        starts can fall into when Sigma is far from isotropic.
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(self, d: int, *, init_scale: float = 0.01, init_diag: float = 0.0, rngs: nnx.Rngs):
        d = check_positive_int("d", d)
        if not init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
        if not np.isfinite(init_diag):
            raise ValueError(f"init_diag must be finite, got {init_diag!r}")
        self.d = d
        shape = (d + 1, d + 1)
        diag = jnp.asarray(init_diag * np.eye(d + 1))  # numpy: eagerly, jnp.eye compiled five programs
        self.w_pv = nnx.Param(diag + init_scale * jax.random.normal(rngs.params(), shape))
        self.w_kq = nnx.Param(diag + init_scale * jax.random.normal(rngs.params(), shape))

    def __call__(
        self, context: jax.Array, query: jax.Array, update_context: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """Apply the layer in token form. ``context: [batch, n, d+1]``, ``query: [batch, d+1]``; returns both updated.

        The query update is computed as ``W^PV (1/n) sum_i z_i (z_i . W^KQ z_q)`` in ``O(n d)`` per prompt.
        With ``update_context=False`` (the last layer of a stack) the context is returned unchanged.
        """
        n = context.shape[-2]
        w_pv, w_kq = self.w_pv[...], self.w_kq[...]
        scores = jnp.einsum("bni,bi->bn", context, query @ w_kq.T)  # z_i . W^KQ z_q
        new_query = query + (jnp.einsum("bni,bn->bi", context, scores) / n) @ w_pv.T
        if not update_context:
            return context, new_query
        gram = jnp.einsum("bni,bnj->bij", context, context) / n  # G = (1/n) sum_i z_i z_i^T
        new_context = context + jnp.einsum("bnk,bjk->bnj", context @ w_kq.T, gram) @ w_pv.T
        return new_context, new_query


class LinearTransformer(nnx.Module):
    """``num_layers`` LSA layers with residual connections; ``y_hat`` = last coordinate of the query.

    One layer at the optimum implements one step of (preconditioned) gradient descent (Mahankali et al.
    2023, Thm 1-2); L layers implement L steps of preconditioned GD (Ahn et al. 2023, Thm 3).
    ``model(prompts) -> [batch]`` predicts each query from its whole context (one layer: in ``O(n d)`` per
    prompt, as the layer's query update; deeper stacks: in the Gram form
    of the module docstring); ``model.prefix(prompts) -> [batch, n]`` predicts every context point from
    the pairs before it (Garg's convention, docs/theory.md §10).

    Args:
      d: input dimension; num_layers: LSA layers (>= 1); init_scale, init_diag: see
        [`LinearSelfAttention`][icl.models.LinearSelfAttention].
      variance_head: also predict a variance (Liu et al. 2024; docs/theory.md §12) from the final query
        token ``q_L`` (``d + 1`` numbers): ``var = exp(var_bias) + ||var_read q_L||^2``, i.e. the log-variance
        ``log(exp(var_bias) + ||var_read q_L||^2)``, with trainable ``var_bias`` (scalar, starts at 0) and
        ``var_read`` (``[d+1, d+1]``, starts ``N(0, 0.01^2)`` so its gradient is not 0). A noise floor plus a
        PSD quadratic form of the query token: the Bayes predictive variance ``sigma^2 + x_q^T Sigma_post x_q``
        has this form (a linear read-out of ``q_L``, itself linear in ``x_q``, cannot express it), and unlike
        ``exp`` of a quadratic it cannot overflow or reach 0. Then ``model(prompts)`` returns
        ``(mean [batch], var [batch])``, ``prefix`` returns ``(mean [batch, n], var [batch, n])`` and
        ``model.returns_variance`` is True. With ``variance_head=False`` (default) the model, its parameters
        and its outputs are exactly the plain LSA stack.
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    returns_variance = False

    def __init__(
        self,
        d: int,
        num_layers: int = 1,
        *,
        init_scale: float = 0.01,
        init_diag: float = 0.0,
        variance_head: bool = False,
        rngs: nnx.Rngs,
    ):
        check_positive_int("num_layers", num_layers)
        self.d = check_positive_int("d", d)
        if not isinstance(variance_head, (bool, np.bool_)):
            raise ValueError(f"variance_head must be True or False, got {variance_head!r}")
        self.layers = nnx.List(
            [LinearSelfAttention(d, init_scale=init_scale, init_diag=init_diag, rngs=rngs) for _ in range(num_layers)]
        )
        self._spec = tuple(dict(d=int(d), num_layers=int(num_layers), init_scale=float(init_scale),
                                init_diag=float(init_diag), variance_head=bool(variance_head)).items())
        if variance_head:
            self.returns_variance = True
            dtype = self.layers[0].w_pv[...].dtype
            self.var_bias = nnx.Param(jnp.zeros((), dtype))
            self.var_read = nnx.Param(0.01 * jax.random.normal(rngs.params(), (d + 1, d + 1), dtype))

    def spec(self) -> dict:
        """Constructor keyword arguments that rebuild this model's structure (the model protocol)."""
        return dict(self._spec)

    def preconditioner(self, layer: int = 0) -> jax.Array:
        """``Gamma_eff = c A^T + a b^T`` of layer ``layer`` ([`implied_preconditioner`][icl.models.implied_preconditioner]), ``[d, d]``."""
        return implied_preconditioner(self.layers[layer])

    @classmethod
    def from_gd(cls, d: int, eta: float, preconditioner=None, *, variance_head: bool = False) -> "LinearTransformer":
        """One layer that runs one step of (preconditioned) GD from ``w = 0`` exactly (von Oswald et al. 2023, Prop. 1).

        Weights of [`gd_lsa_weights`][icl.models.gd_lsa_weights]: ``y_hat = x_q^T (eta P) h`` with ``h = (1/n) sum_i y_i x_i``, i.e.
        ``icl.gradient_descent(eta, P)``; ``implied_preconditioner(model) = eta P``. ``preconditioner``:
        ``None`` (identity) or ``[d, d]``. For L steps of GD use
        [`icl.models.SparseLinearTransformer.from_gd`][icl.models.SparseLinearTransformer.from_gd] (the plus-sign read-out of this class cannot
        carry the residual sign through several layers; module docstring).
        """
        if np.ndim(eta) != 0:
            raise ValueError(f"eta must be a scalar step size (one layer), got shape {np.shape(eta)}; "
                             "for several steps use SparseLinearTransformer.from_gd")
        w_pv, w_kq = gd_lsa_weights(d, eta, preconditioner)
        model = cls(d, 1, init_scale=0.0, variance_head=variance_head, rngs=nnx.Rngs(0))
        dtype = model.layers[0].w_pv[...].dtype
        model.layers[0].w_pv[...] = jnp.asarray(w_pv, dtype)
        model.layers[0].w_kq[...] = jnp.asarray(w_kq, dtype)
        return model

    def _weights(self):
        return [layer.w_pv[...] for layer in self.layers], [layer.w_kq[...] for layer in self.layers]

    def tokens(self, prompts: Prompts, query_only: bool = False) -> tuple[jax.Array, jax.Array]:
        """Token form of the definition: all layers applied to all ``n + 1`` tokens.

        Returns the final context ``[batch, n, d+1]`` and query ``[batch, d+1]`` tokens (the reference the
        Gram form of ``__call__`` is tested against). ``query_only=True`` skips the last layer's context
        update (it cannot reach the prediction).
        """
        check_model_prompts(prompts, self.d, "model")
        context, query = prompt_tokens(prompts)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            context, query = layer(context, query, update_context=(i < last) or not query_only)
        return context, query

    def hidden_states(self, prompts: Prompts) -> list[jax.Array]:
        """Tokens ``[batch, n + 1, d + 1]`` (context rows, then the query) before the first layer and after each."""
        check_model_prompts(prompts, self.d, "model")
        context, query = prompt_tokens(prompts)
        states = [jnp.concatenate([context, query[:, None]], axis=1)]
        for layer in self.layers:
            context, query = layer(context, query)
            states.append(jnp.concatenate([context, query[:, None]], axis=1))
        return states

    def _output(self, query: jax.Array):
        mean = query[..., -1]
        if not self.returns_variance:
            return mean
        proj = _mv(self.var_read[...], query)
        return mean, jnp.exp(self.var_bias[...]) + jnp.sum(proj * proj, axis=-1)

    def __call__(self, prompts: Prompts):
        """Predictions ``y_hat: [batch]`` (last coordinate of the final query token, plus sign).

        With ``variance_head=True``: ``(mean [batch], var [batch])``.
        """
        check_model_prompts(prompts, self.d, "model")
        context, query = prompt_tokens(prompts)
        if len(self.layers) == 1:  # O(n d) per prompt: W^PV (1/n) sum_i z_i (z_i . W^KQ q), no Gram matrix
            return self._output(self.layers[0](context, query, update_context=False)[1])
        return self._output(gram_stack(*self._weights(), _gram(context), query))

    def prefix(self, prompts: Prompts):
        """Every-prefix predictions ``[batch, n]`` in Garg's convention (docs/theory.md §10).

        Entry ``k - 1`` predicts ``y_k`` from the query token ``[x_k; 0]`` and the first ``k - 1`` pairs,
        with the model's ``1/n`` read as ``1/(k - 1)``: the model applied to the prompt truncated to
        ``k - 1`` pairs with query ``x_k``. At ``k = 1`` the context is empty, the Gram matrix is 0
        (defined so, no ``0/0``), every layer leaves the query token unchanged, and the prediction is
        its last coordinate, 0. Computed from exclusive cumulative Gram matrices and the Gram form of
        the stack: ``O(n d^2 + L n d^3)`` per prompt, memory ``[batch, n, d+1, d+1]``, no loop over
        prefixes. So ``model(prompts)`` is the ``k = n + 1`` prediction, not ``prefix[:, n - 1]``.
        With ``variance_head=True``: ``(mean [batch, n], var [batch, n])``.
        """
        check_model_prompts(prompts, self.d, "model")
        context, _ = prompt_tokens(prompts)
        if len(self.layers) == 1 and not self.returns_variance:
            return _one_layer_prefix(self.layers[0].w_pv[...], self.layers[0].w_kq[...], context)
        return self._output(gram_stack(*self._weights(), prefix_grams(context), prefix_queries(context)))


@jax.jit
def _one_layer_prefix(w_pv: jax.Array, w_kq: jax.Array, context: jax.Array) -> jax.Array:
    """One layer's every-prefix predictions by cumulative sums, ``O(n d)`` per prompt: the prediction at
    ``k`` is ``p^T G_{k-1} W^KQ q_k`` with ``p^T`` the last row of ``W^PV`` and ``q_k = [x_k; 0]``, and
    ``G_{k-1} W^KQ q_k = (1/(k-1)) sum_{i<k} z_i (z_i . W^KQ q_k)``, so with ``h_k = (1/(k-1)) sum_{i<k}
    (p . z_i) z_i`` (an exclusive cumulative sum) it is ``h_k . W^KQ q_k``. Equals the Gram form's entry."""
    n = context.shape[-2]
    keys = prefix_queries(context) @ w_kq.T  # W^KQ q_k, [batch, n, D]
    weighted = context * (context @ w_pv[-1])[..., None]  # (p . z_i) z_i
    return jnp.sum(shifted_cumsum(weighted, axis=-2) * keys, axis=-1) / prefix_counts(n, context.dtype)


@jax.jit
def prefix_grams(context: jax.Array) -> jax.Array:
    """``G_{k-1} = (1/(k-1)) sum_{i<k} z_i z_i^T`` for ``k = 1..n`` (``G_0 = 0``): ``[batch, n, D, D]``."""
    outer = context[..., :, :, None] * context[..., :, None, :]
    return shifted_cumsum(outer, axis=-3) / prefix_counts(context.shape[-2], context.dtype)[:, None, None]


def prefix_queries(context: jax.Array) -> jax.Array:
    """Query tokens ``[x_k; 0]`` for ``k = 1..n``: ``[batch, n, D]``."""
    return context.at[..., -1].set(0.0)


# --------------------------------------------------------------------------------------------------------------
# Constructions
# --------------------------------------------------------------------------------------------------------------


def gd_lsa_weights(d: int, eta: float, preconditioner=None) -> tuple[np.ndarray, np.ndarray]:
    """LSA weights that run one (preconditioned) GD step: von Oswald et al. 2023, Proposition 1.

    ``W^KQ = [[P^T, 0], [0, 0]]`` and the last row of ``W^PV`` is ``[0, ..., 0, eta]`` (all else 0), so
    ``Gamma_eff = c A^T = eta P`` and ``y_hat = x_q^T (eta P) h`` exactly (docs/theory.md §2). Returns numpy
    ``(w_pv, w_kq)``, each ``[d + 1, d + 1]``. [`LinearTransformer.from_gd`][icl.models.LinearTransformer.from_gd] builds the model.
    """
    d = check_positive_int("d", d)
    if not np.isfinite(eta):
        raise ValueError(f"eta must be a finite number, got {eta!r}")
    w_pv = np.zeros((d + 1, d + 1))
    w_pv[d, d] = float(eta)
    w_kq = np.zeros((d + 1, d + 1))
    if preconditioner is None:
        w_kq[:d, :d] = np.eye(d)
    else:
        prec = np.asarray(preconditioner, np.float64)
        if prec.shape != (d, d) or not np.all(np.isfinite(prec)):
            raise ValueError(f"preconditioner must be a finite [{d}, {d}] matrix, got shape {prec.shape}")
        w_kq[:d, :d] = prec.T
    return w_pv, w_kq


def align_gauge(w_pv, w_kq, reference_w_kq) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Move trained weights along the gauge ``(s W^PV, W^KQ / s)`` towards a reference (docs/theory.md §2).

    The LSA output depends on ``W^PV`` and ``W^KQ`` only through products, so ``s != 0`` changes nothing
    but where the weights sit. ``1/s`` is the least-squares fit of the query-key block: it minimises
    ``||A / s - A_ref||_F`` with ``A``, ``A_ref`` the top-left ``d x d`` blocks, i.e.
    ``1/s = <A, A_ref>_F / ||A||_F^2``. Returns ``(s W^PV, W^KQ / s, s)``.
    """
    return _align_gauge(jnp.asarray(w_pv), jnp.asarray(w_kq), jnp.asarray(reference_w_kq))


@jax.jit
def _align_gauge(w_pv, w_kq, ref):
    d = w_kq.shape[-1] - 1
    a, a_ref = w_kq[..., :d, :d], ref[..., :d, :d]
    inv_s = jnp.sum(a * a_ref, axis=(-2, -1)) / jnp.sum(a * a, axis=(-2, -1))
    s = 1.0 / inv_s
    return s[..., None, None] * w_pv, w_kq * inv_s[..., None, None], s


# --------------------------------------------------------------------------------------------------------------
# Read-offs
# --------------------------------------------------------------------------------------------------------------


def _layer_weights(layer_or_w_pv, w_kq=None):
    if w_kq is not None:
        return jnp.asarray(layer_or_w_pv), jnp.asarray(w_kq)
    obj = layer_or_w_pv
    if hasattr(obj, "layers") and not hasattr(obj, "w_pv"):
        layers = list(obj.layers)
        if len(layers) == 1:
            obj = layers[0]
        else:
            raise ValueError(
                f"layer_or_w_pv is a {type(obj).__name__} with {len(layers)} layers; the read-offs describe one "
                "LSA layer: pass model.layers[i]"
            )
    if not (hasattr(obj, "w_pv") and hasattr(obj, "w_kq")):
        raise ValueError(
            f"layer_or_w_pv must be an LSA layer (with w_pv, w_kq), a one-layer model, or the matrix W^PV together "
            f"with w_kq; got {type(obj).__name__}"
        )
    w_pv = obj.w_pv[...] if hasattr(obj.w_pv, "__getitem__") else obj.w_pv
    w_kq_ = obj.w_kq[...] if hasattr(obj.w_kq, "__getitem__") else obj.w_kq
    return jnp.asarray(w_pv), jnp.asarray(w_kq_)


def lsa_blocks(layer_or_w_pv, w_kq=None):
    """Split an LSA layer into the blocks that reach the prediction (docs/theory.md §2).

    The last row of ``W^PV`` is ``[b^T, c]``; the first ``d`` columns of ``W^KQ`` are ``[A; a^T]``.
    Accepts a [`LinearSelfAttention`][icl.models.LinearSelfAttention] (or a sparse layer), a one-layer model, or the two matrices
    (leading batch axes allowed). Returns ``(b [..., d], c [...], A [..., d, d], a [..., d])``.
    Raises ValueError for a model with several layers (pass ``model.layers[i]``).
    """
    return _blocks(*_checked_weights(layer_or_w_pv, w_kq))


def _checked_weights(layer_or_w_pv, w_kq):
    w_pv, w_kq = _layer_weights(layer_or_w_pv, w_kq)
    if w_pv.ndim < 2 or w_pv.shape[-1] != w_pv.shape[-2] or w_pv.shape[-1] < 2 or w_kq.shape != w_pv.shape:
        raise ValueError(f"w_pv and w_kq must be [..., d+1, d+1] matrices of one shape, got {w_pv.shape} and {w_kq.shape}")
    return w_pv, w_kq


@jax.jit
def _blocks(w_pv, w_kq):
    """The four blocks as one compiled program (eagerly, each slice compiled a program of its own)."""
    d = w_pv.shape[-1] - 1
    return w_pv[..., d, :d], w_pv[..., d, d], w_kq[..., :d, :d], w_kq[..., d, :d]


@jax.jit
def _gamma(w_pv, w_kq):
    b, c, a_mat, a = _blocks(w_pv, w_kq)
    return c[..., None, None] * jnp.swapaxes(a_mat, -1, -2) + a[..., :, None] * b[..., None, :]


def implied_preconditioner(layer_or_w_pv, w_kq=None) -> jax.Array:
    """``Gamma_eff = c A^T + a b^T``: the part of the LSA prediction linear in ``y`` is ``x_q^T Gamma_eff h``.

    Gauge invariant under ``(W^PV, W^KQ) -> (s W^PV, W^KQ / s)`` (docs/theory.md §2). Shape ``[..., d, d]``.
    Accepts a layer, a one-layer model, or the two matrices; a model with several layers raises a
    ValueError saying to pass ``model.layers[i]``.
    """
    return _gamma(*_checked_weights(layer_or_w_pv, w_kq))


def residual_terms(layer_or_w_pv, w_kq=None, x_cov=None) -> dict[str, jax.Array]:
    """Sizes of the LSA terms that are even in ``y`` and vanish at the optimum (docs/theory.md §2).

    ``(1/n) sum_i b^T x_i x_i^T A x_q`` has mean ``(A^T Sigma b)^T x_q`` and ``(c/n) sum_i y_i^2 a^T x_q``
    has coefficient ``c a``. Returns ``xx = ||A^T Sigma b||``, ``yy = ||c a||`` and both divided by
    ``||Gamma_eff||_F`` (``xx_rel``, ``yy_rel``); all gauge invariant.
    """
    b, c, a_mat, a = lsa_blocks(layer_or_w_pv, w_kq)
    d = b.shape[-1]
    sigma = jnp.eye(d) if x_cov is None else jnp.asarray(x_cov)
    if sigma.shape != (d, d):
        raise ValueError(f"x_cov must be [{d}, {d}], got shape {sigma.shape}")
    xx = jnp.linalg.norm(jnp.einsum("...ji,jk,...k->...i", a_mat, sigma, b), axis=-1)
    yy = jnp.linalg.norm(c[..., None] * a, axis=-1)
    scale = jnp.linalg.norm(implied_preconditioner(layer_or_w_pv, w_kq), axis=(-2, -1))
    return {"xx": xx, "yy": yy, "xx_rel": xx / scale, "yy_rel": yy / scale}


def relative_error(estimate, reference) -> jax.Array:
    """Relative Frobenius error ``||estimate - reference||_F / ||reference||_F`` (over the last two axes)."""
    estimate, reference = jnp.asarray(estimate), jnp.asarray(reference)
    if estimate.shape[-2:] != reference.shape[-2:]:
        raise ValueError(f"estimate and reference must have the same matrix shape, got {estimate.shape} and {reference.shape}")
    return jnp.linalg.norm(estimate - reference, axis=(-2, -1)) / jnp.linalg.norm(reference, axis=(-2, -1))


def dist_to_identity(m) -> jax.Array:
    """``Dist(M, I) = min_alpha ||M - alpha I||_F / ||M||_F`` (Ahn et al. 2023); ``alpha = tr(M)/d``."""
    m = jnp.asarray(m)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"m must be a square matrix [..., d, d], got shape {m.shape}")
    return _dist_to_identity(m)


@jax.jit
def _dist_to_identity(m):
    d = m.shape[-1]
    alpha = jnp.trace(m, axis1=-2, axis2=-1) / d
    return jnp.linalg.norm(m - alpha[..., None, None] * jnp.eye(d), axis=(-2, -1)) / jnp.linalg.norm(m, axis=(-2, -1))


def lsa_from_parameters(c, a_mat):
    """A one-layer [`icl.LinearTransformer`][icl.models.LinearTransformer] with ``W^PV = [[0, 0], [0, c]]``, ``W^KQ = [[A, 0], [0, 0]]``.

    Its predictions are ``x_q^T (c A^T) h`` (ZFB's parametrisation, ``b = a = 0``); evaluate it on sampled prompts
    to check the population closed forms by Monte Carlo.
    """
    a_mat = np.asarray(a_mat, np.float64)
    d = a_mat.shape[-1]
    if a_mat.shape != (d, d):
        raise ValueError(f"a_mat must be a square [d, d] matrix, got shape {a_mat.shape}")
    model = LinearTransformer(d, 1, init_scale=0.0, rngs=nnx.Rngs(0))
    w_pv = np.zeros((d + 1, d + 1))
    w_pv[d, d] = float(c)
    w_kq = np.zeros((d + 1, d + 1))
    w_kq[:d, :d] = a_mat
    layer = model.layers[0]
    layer.w_pv[...] = jnp.asarray(w_pv, layer.w_pv[...].dtype)
    layer.w_kq[...] = jnp.asarray(w_kq, layer.w_kq[...].dtype)
    return model
