"""Recurrent and state-space models in pure JAX / Flax NNX: a matrix-state linear RNN, S4D and a Mamba-style SSM.

Three causal sequence models that follow the model protocol (docs/models.md) and, having no learned positions,
accept prompts of any length:

- [`LinearRNN`][icl.models.LinearRNN]: causal linear attention run as a recurrence with a matrix-valued state,
  ``S_t = S_{t-1} + v_t k_t^T``, read by a query as ``S q / (number of pairs in the state)`` (Katharopoulos et al.
  2020, "Transformers are RNNs"). Its tokens are the LSA's: ``z_i = [x_i; y_i]`` and queries ``[x_k; 0]``; a query
  reads the state *before* its own pair is absorbed, so [`LinearRNN.from_linear_transformer`][icl.models.LinearRNN.from_linear_transformer] turns a one-layer
  [`icl.LinearTransformer`][icl.models.LinearTransformer] into a recurrence that equals it at every prefix (the LSA's ``1/n`` is the
  ``1/(k - 1)`` of the state's count; ``k = 1`` reads the empty state and predicts 0).
- [`DiagonalSSM`][icl.models.DiagonalSSM]: a stack of S4D blocks (Gu, Gupta, Goel & Ré 2022, "On the parameterization and
  initialization of diagonal state space models"): per channel a diagonal linear time-invariant SSM
  ``h_t = A_bar h_{t-1} + B_bar u_t``, ``y_t = C h_t + D u_t`` with zero-order-hold discretisation
  ``A_bar = exp(dt A)``, ``B_bar = (A_bar - 1)/A B``, S4D-Real initialisation ``A_n = -(n + 1)``, then GELU and a
  GLU output map, in a pre-LayerNorm residual block.
- [`SelectiveSSM`][icl.models.SelectiveSSM]: a stack of Mamba blocks (Gu & Dao 2023, "Mamba: linear-time sequence modeling with
  selective state spaces"): input and gate projections, a short causal depthwise convolution, an input-dependent
  step ``dt_t = softplus(W_dt x_t + b)`` and input-dependent ``B_t``, ``C_t`` (selection), the discretisation
  ``A_bar_t = exp(dt_t A)``, ``B_bar_t u_t = dt_t B_t u_t``, and the output gated by ``silu(z)``, in a pre-RMSNorm
  residual block.

The two SSM stacks read a prompt in Garg et al.'s interleaved order, ``x_1, y_1, ..., x_n, y_n, x_q``, with
tokens ``[x_i; 0]`` and ``[0; y_i]`` in ``R^{d+1}`` (the last coordinate marks a label); the prediction of
``y_k`` is read at the token of ``x_k``, so ``prefix`` is one causal pass over ``2n - 1`` tokens and
``model(prompts)`` one over ``2n + 1`` (docs/theory.md §10). Both recurrences run as one
``jax.lax.associative_scan`` over time (``O(log T)`` depth; memory ``[batch, T, channels, state_size]``), which
combines only contiguous segments ending at each position, so a non-finite label ``y_j`` leaves every earlier
prediction finite.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.models.lsa import LinearTransformer, check_model_prompts, prefix_queries, prompt_tokens
from icl.tasks.base import Prompts, check_non_negative, check_positive, check_positive_int

__all__ = ["DiagonalSSM", "LinearRNN", "SelectiveSSM", "linear_scan"]


def _check_dtype(param_dtype) -> jnp.dtype:
    try:
        dtype = jnp.dtype(param_dtype)
    except TypeError as err:
        raise ValueError(f"param_dtype must be a floating dtype, got {param_dtype!r}") from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"param_dtype must be a floating dtype, got {param_dtype!r}")
    return dtype


def linear_scan(a: jax.Array, b: jax.Array, axis: int = 1) -> jax.Array:
    """``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1} = 0`` along ``axis``, by ``jax.lax.associative_scan``.

    The pairs ``(a, b)`` compose as affine maps: ``(a1, b1)`` then ``(a2, b2)`` is ``(a1 a2, a2 b1 + b2)``.
    ``a`` and ``b`` have one shape (broadcast ``a`` first); returns all ``h_t``, that shape.
    """
    def combine(left, right):
        a1, b1 = left
        a2, b2 = right
        return a1 * a2, a2 * b1 + b2

    return jax.lax.associative_scan(combine, (a, b), axis=axis)[1]


@functools.partial(jax.jit, static_argnames=("graphdef", "what"))
def _compiled(graphdef, state, prompts: Prompts, what: str):
    """``model._run(what, prompts)`` as one compiled program per model structure, shape and ``what`` (eager calls
    are fast; inside an outer ``jit``/``grad`` it is inlined)."""
    return nnx.merge(graphdef, state)._run(what, prompts)


# --------------------------------------------------------------------------------------------------------------
# The linear RNN (causal linear attention as a recurrence)
# --------------------------------------------------------------------------------------------------------------


class LinearRNN(nnx.Module):
    """Causal linear attention as a recurrence with a matrix-valued state (module docstring).

    Tokens live in ``R^D``, ``D = d + 1``: context ``z_i = [x_i; y_i]``, queries ``[x_k; 0]``. Keys
    ``k_i = w_key^T z_i`` and queries ``r = w_query^T q`` have ``state_size`` coordinates, values
    ``v_i = w_value^T z_i`` have ``D``. After ``t`` pairs the state is ``S_t = sum_{i<=t} v_i k_i^T``
    (``[D, state_size]``), updated by ``S_t = S_{t-1} + v_t k_t^T``; a token ``u`` read against it becomes
    ``u + S_t r(u) / max(t, 1)`` and the prediction is the last coordinate of the query token. Entry ``k - 1`` of
    ``prefix`` reads ``S_{k-1}`` with ``[x_k; 0]`` (Garg's convention; ``S_0 = 0`` gives 0); ``model(prompts)``
    reads ``S_n`` with ``[x_q; 0]``. Both are one ``jax.lax.scan`` over the context carrying ``S`` (memory
    ``[batch, D, state_size]``, any prompt length).

    Args:
      d: input dimension (>= 1). state_size: key/query dimension (>= 1; default ``d + 1``, which holds any
        one-layer LSA exactly).
      init_scale: ``w_value`` starts ``N(0, init_scale^2)`` (small, as the LSA's weights); ``w_key`` and
        ``w_query`` start ``N(0, 1/D)``, so the value's gradient is not 0 at the start.
      param_dtype: dtype of the parameters ("float32"; "float64" for exactness checks under x64).
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    returns_variance = False

    def __init__(self, d: int, state_size: int | None = None, *, init_scale: float = 0.01,
                 param_dtype="float32", rngs: nnx.Rngs):
        self.d = check_positive_int("d", d)
        big = d + 1
        self.state_size = big if state_size is None else check_positive_int("state_size", state_size)
        self.init_scale = check_non_negative("init_scale", init_scale)
        dtype = _check_dtype(param_dtype)
        self.param_dtype = dtype.name
        m = self.state_size

        def normal(shape, scale):
            return _param(scale * jax.random.normal(rngs.params(), shape, dtype), dtype)

        self.w_key = normal((big, m), 1 / math.sqrt(big))
        self.w_query = normal((big, m), 1 / math.sqrt(big))
        self.w_value = normal((big, big), self.init_scale)

    def spec(self) -> dict:
        """Constructor keyword arguments that rebuild this model's structure (the model protocol)."""
        return {"d": self.d, "state_size": self.state_size, "init_scale": self.init_scale,
                "param_dtype": self.param_dtype}

    @classmethod
    def from_linear_transformer(cls, model: LinearTransformer) -> LinearRNN:
        """The recurrence equal to a one-layer [`icl.LinearTransformer`][icl.models.LinearTransformer] at every prefix and at the query.

        The LSA predicts the last coordinate of ``q + W^PV G W^KQ q`` with ``G = (1/m) sum_{i<=m} z_i z_i^T`` over
        the ``m`` pairs it may use, i.e. of ``q + (1/m) sum_i (W^PV z_i)(z_i^T W^KQ q)``: values ``W^PV z``, keys
        ``z`` and queries ``W^KQ q``, so ``w_value = W^PV^T``, ``w_key = I`` (``state_size = d + 1``) and
        ``w_query = W^KQ^T``, in the LSA's dtype. Raises ValueError for a deeper stack (its context tokens are
        updated by the whole context, not causally) or one with a variance head.
        """
        if not isinstance(model, LinearTransformer):
            raise ValueError(f"model must be a one-layer icl.LinearTransformer, got {type(model).__name__}")
        if len(model.layers) != 1 or model.returns_variance:
            raise ValueError("model must be a one-layer icl.LinearTransformer without a variance head (a deeper "
                             f"stack updates its context from the whole context), got {len(model.layers)} layers"
                             f"{' with a variance head' if model.returns_variance else ''}")
        layer = model.layers[0]
        w_pv, w_kq = layer.w_pv[...], layer.w_kq[...]
        rnn = cls(model.d, model.d + 1, init_scale=0.0, param_dtype=w_pv.dtype.name, rngs=nnx.Rngs(0))
        rnn.w_key[...] = jnp.eye(model.d + 1, dtype=w_pv.dtype)
        rnn.w_query[...] = w_kq.T
        rnn.w_value[...] = w_pv.T
        return rnn

    def _scan(self, context: jax.Array, queries: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Run the recurrence over ``context [b, n, D]``; query ``t`` (``queries [b, n, D]``) reads ``S_{t-1}``.

        Returns the read tokens ``[b, n, D]`` and the final state ``S_n`` ``[b, D, state_size]``.
        """
        w_key, w_query, w_value = self.w_key[...], self.w_query[...], self.w_value[...]
        dtype = jnp.result_type(context.dtype, w_value.dtype)
        keys, values = context @ w_key, context @ w_value
        reads = queries @ w_query
        b, n, big = context.shape

        def step(state, inputs):
            t, k, v, r = inputs
            out = jnp.einsum("bij,bj->bi", state, r) / jnp.maximum(t, 1).astype(dtype)
            return state + v[:, :, None] * k[:, None, :], out

        xs = (jnp.arange(n), *(jnp.swapaxes(a, 0, 1) for a in (keys, values, reads)))
        state, outs = jax.lax.scan(step, jnp.zeros((b, big, self.state_size), dtype), xs)
        return queries + jnp.swapaxes(outs, 0, 1), state

    def _read(self, state: jax.Array, query: jax.Array, count: int) -> jax.Array:
        """Token ``query [b, D]`` read against ``state`` holding ``count`` pairs."""
        r = query @ self.w_query[...]
        return query + jnp.einsum("bij,bj->bi", state, r) / max(count, 1)

    def __call__(self, prompts: Prompts) -> jax.Array:
        """Prediction of the query ``[batch]``: the last coordinate of ``[x_q; 0]`` read against ``S_n``."""
        return self._apply("query", prompts)

    def prefix(self, prompts: Prompts) -> jax.Array:
        """Every-prefix predictions ``[batch, n]``: entry ``k - 1`` reads ``S_{k-1}`` with ``[x_k; 0]`` (0 at k = 1)."""
        return self._apply("prefix", prompts)

    def hidden_states(self, prompts: Prompts) -> list[jax.Array]:
        """Tokens ``[batch, n + 1, d + 1]`` (context, then the query) before and after the recurrent layer.

        After the layer, context token ``i`` is ``z_i`` read against ``S_{i-1}`` (the pairs before it) and the
        query token ``[x_q; 0]`` read against ``S_n``, whose last coordinate is the prediction.
        """
        return self._apply("states", prompts)

    def _apply(self, what: str, prompts: Prompts):
        check_model_prompts(prompts, self.d, type(self).__name__)
        graphdef, state = nnx.split(self)
        return _compiled(graphdef, state, Prompts(*prompts), what)

    def _run(self, what: str, prompts: Prompts):
        context, query = prompt_tokens(prompts)
        if what == "prefix":
            return self._scan(context, prefix_queries(context))[0][..., -1]
        read, state = self._scan(context, context)
        out = self._read(state, query, context.shape[-2])
        if what == "query":
            return out[..., -1]
        return [jnp.concatenate([context, query[:, None]], axis=1), jnp.concatenate([read, out[:, None]], axis=1)]


# --------------------------------------------------------------------------------------------------------------
# The SSM stacks (S4D, Mamba) on interleaved prompts
# --------------------------------------------------------------------------------------------------------------


def _linear(n_in: int, n_out: int, dtype, rngs: nnx.Rngs, use_bias: bool = True):
    """``nnx.Linear`` with kernel ``N(0, 1/n_in)`` and a zero bias."""
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
    return nnx.Linear(n_in, n_out, use_bias=use_bias, kernel_init=init, bias_init=nnx.initializers.zeros,
                      param_dtype=dtype, rngs=rngs)


def _log_uniform(rngs: nnx.Rngs, shape, low: float, high: float, dtype) -> jax.Array:
    """``log`` of a log-uniform draw on ``[low, high]``."""
    return jax.random.uniform(rngs.params(), shape, dtype, math.log(low), math.log(high))


def _param(value, dtype) -> nnx.Param:
    """A parameter from a numpy constant (deterministic initial values are built in numpy, so building a model
    compiles only its random draws) or from a traced draw (models are built under ``jit``/``eval_shape`` too)."""
    if isinstance(value, np.ndarray):
        return nnx.Param(jnp.asarray(value.astype(dtype)))
    return nnx.Param(jnp.asarray(value, dtype))


def _s4d_real(channels: int, state_size: int) -> np.ndarray:
    """``log(n + 1)``, ``n = 0..N-1``, for every channel: S4D-Real's ``A_n = -(n + 1)`` as ``-exp(log_a)``."""
    return np.log(np.broadcast_to(np.arange(1, state_size + 1, dtype=np.float64), (channels, state_size)))


def _interleaved(prompts: Prompts, what: str) -> jax.Array:
    """Tokens ``[x_1; 0], [0; y_1], ..., [x_n; 0], [0; y_n]`` then ``[x_q; 0]`` (``what="query"``, ``2n + 1``
    tokens), or the first ``2n - 1`` of them (``what="prefix"``: the last label is never read)."""
    x, y = prompts.x, prompts.y
    b, n, d = x.shape
    x_tok = jnp.pad(x, ((0, 0), (0, 0), (0, 1)))
    y_tok = jnp.pad(y[..., None], ((0, 0), (0, 0), (d, 0)))
    tokens = jnp.stack([x_tok, y_tok], axis=2).reshape(b, 2 * n, d + 1)
    if what == "prefix":
        return tokens[:, :-1]
    return jnp.concatenate([tokens, jnp.pad(prompts.x_query, ((0, 0), (0, 1)))[:, None]], axis=1)


class _S4DBlock(nnx.Module):
    """``h + GLU(W gelu(SSM(LN(h)) + D LN(h)))``: one S4D block (S4D-Real, zero-order hold)."""

    def __init__(self, width: int, state_size: int, dt_min: float, dt_max: float, dtype, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(width, epsilon=1e-5, use_fast_variance=False, param_dtype=dtype, rngs=rngs)
        self.log_dt = _param(_log_uniform(rngs, (width,), dt_min, dt_max, dtype), dtype)
        self.log_a = _param(_s4d_real(width, state_size), dtype)
        self.b = _param(np.ones((width, state_size)), dtype)
        self.c = _param(jax.random.normal(rngs.params(), (width, state_size), dtype) / math.sqrt(state_size), dtype)
        self.skip = _param(np.ones(width), dtype)
        self.out = _linear(width, 2 * width, dtype, rngs)

    def discretised(self) -> tuple[jax.Array, jax.Array]:
        """``(A_bar, B_bar)``, each ``[width, state_size]``: ``exp(dt A)`` and ``(A_bar - 1)/A B`` (zero-order hold)."""
        a = -jnp.exp(self.log_a[...])
        dt_a = jnp.exp(self.log_dt[...])[:, None] * a
        return jnp.exp(dt_a), jnp.expm1(dt_a) / a * self.b[...]

    def __call__(self, h: jax.Array) -> jax.Array:
        u = self.norm(h)
        a_bar, b_bar = self.discretised()
        bu = u[..., None] * b_bar  # [b, T, width, N]
        states = linear_scan(jnp.broadcast_to(a_bar, bu.shape), bu)
        y = jnp.sum(states * self.c[...], axis=-1) + self.skip[...] * u
        value, gate = jnp.split(self.out(jax.nn.gelu(y, approximate=True)), 2, axis=-1)
        return h + value * jax.nn.sigmoid(gate)


class _MambaBlock(nnx.Module):
    """One Mamba block (Gu & Dao 2023): ``h + W_out(y * silu(z))`` with ``[x, z] = W_in RMSNorm(h)``,
    ``x <- silu(causal_conv(x))`` and ``y`` the selective scan of ``x`` plus ``D x``."""

    def __init__(self, width: int, state_size: int, expand: int, conv_width: int, dt_rank: int, dt_min: float,
                 dt_max: float, dtype, rngs: nnx.Rngs):
        inner = expand * width
        self.state_size, self.dt_rank = state_size, dt_rank
        self.norm = nnx.RMSNorm(width, epsilon=1e-5, param_dtype=dtype, rngs=rngs)
        self.in_proj = _linear(width, 2 * inner, dtype, rngs)
        # PyTorch's Conv1d initialisation U(-1/sqrt(w), 1/sqrt(w)), as in Mamba's reference code
        bound = 1 / math.sqrt(conv_width)
        self.conv_kernel = _param(jax.random.uniform(rngs.params(), (conv_width, inner), dtype, -bound, bound), dtype)
        self.conv_bias = _param(np.zeros(inner), dtype)
        self.x_proj = _linear(inner, dt_rank + 2 * state_size, dtype, rngs, use_bias=False)
        # Mamba's dt_proj: kernel U(-1/sqrt(r), 1/sqrt(r)); bias softplus^{-1}(dt) with dt log-uniform on
        # [dt_min, dt_max], so the steps start in that range
        self.dt_proj = nnx.Linear(dt_rank, inner, param_dtype=dtype, rngs=rngs)
        bound = 1 / math.sqrt(dt_rank)
        self.dt_proj.kernel[...] = jax.random.uniform(rngs.params(), (dt_rank, inner), dtype, -bound, bound)
        dt = jnp.exp(_log_uniform(rngs, (inner,), dt_min, dt_max, dtype))
        self.dt_proj.bias[...] = dt + jnp.log(-jnp.expm1(-dt))
        self.log_a = _param(_s4d_real(inner, state_size), dtype)
        self.skip = _param(np.ones(inner), dtype)
        self.out_proj = _linear(inner, width, dtype, rngs)

    def conv(self, x: jax.Array) -> jax.Array:
        """Causal depthwise convolution of ``x [b, T, inner]``: ``sum_j kernel[j] x_{t - (w - 1) + j}`` + bias."""
        kernel = self.conv_kernel[...]
        w, t = kernel.shape[0], x.shape[1]
        padded = jnp.pad(x, ((0, 0), (w - 1, 0), (0, 0)))
        return sum(kernel[j] * padded[:, j:j + t] for j in range(w)) + self.conv_bias[...]

    def selective(self, x: jax.Array):
        """``(A_bar [b, T, inner, N], B_bar x [b, T, inner, N], C [b, T, N])`` of the conv output ``x``."""
        dt_in, b, c = jnp.split(self.x_proj(x), [self.dt_rank, self.dt_rank + self.state_size], axis=-1)
        dt = jax.nn.softplus(self.dt_proj(dt_in))  # [b, T, inner]
        a = -jnp.exp(self.log_a[...])  # [inner, N]
        return jnp.exp(dt[..., None] * a), (dt * x)[..., None] * b[..., None, :], c

    def __call__(self, h: jax.Array) -> jax.Array:
        x, z = jnp.split(self.in_proj(self.norm(h)), 2, axis=-1)
        x = jax.nn.silu(self.conv(x))
        a_bar, bx, c = self.selective(x)
        states = linear_scan(a_bar, bx)
        y = jnp.einsum("btin,btn->bti", states, c) + self.skip[...] * x
        return h + self.out_proj(y * jax.nn.silu(z))


class _InterleavedStack(nnx.Module):
    """Read-in, residual blocks, final norm and read-out over interleaved tokens (module docstring)."""

    returns_variance = False

    def _check_common(self, d: int, num_layers: int, width: int, state_size: int, dt_min: float, dt_max: float,
                      param_dtype):
        """Validate (before any parameter is drawn) and record the arguments every stack has; returns the dtype."""
        self.d = check_positive_int("d", d)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.width = check_positive_int("width", width)
        self.state_size = check_positive_int("state_size", state_size)
        self.dt_min, self.dt_max = check_positive("dt_min", dt_min), check_positive("dt_max", dt_max)
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min must be <= dt_max, got dt_min={dt_min} and dt_max={dt_max}")
        dtype = _check_dtype(param_dtype)
        self.param_dtype = dtype.name
        return dtype

    def _build(self, make_block, norm, dtype, rngs: nnx.Rngs):
        self.read_in = _linear(self.d + 1, self.width, dtype, rngs)
        self.blocks = nnx.List([make_block() for _ in range(self.num_layers)])
        self.norm_f = norm
        self.read_out = _linear(self.width, 1, dtype, rngs)

    def __call__(self, prompts: Prompts) -> jax.Array:
        """Prediction of the query ``[batch]``: one causal pass over ``2n + 1`` tokens, read at the last."""
        return self._apply("query", prompts)

    def prefix(self, prompts: Prompts) -> jax.Array:
        """Every-prefix predictions ``[batch, n]``: one causal pass over ``2n - 1`` tokens, read at the x tokens.

        Entry ``k - 1`` depends on ``x_1..x_k`` and ``y_1..y_{k-1}`` only: it equals the model on the prompt
        truncated to ``k - 1`` pairs with query ``x_k``.
        """
        return self._apply("prefix", prompts)

    def hidden_states(self, prompts: Prompts) -> list[jax.Array]:
        """The residual stream ``[batch, 2n + 1, width]`` after the read-in and after each block (the query last)."""
        return self._apply("states", prompts)

    def _apply(self, what: str, prompts: Prompts):
        check_model_prompts(prompts, self.d, type(self).__name__)
        graphdef, state = nnx.split(self)
        return _compiled(graphdef, state, Prompts(*prompts), what)

    def _run(self, what: str, prompts: Prompts):
        tokens = _interleaved(prompts, "prefix" if what == "prefix" else "query")
        h = self.read_in(tokens)
        states = [h]
        for block in self.blocks:
            h = block(h)
            states.append(h)
        if what == "states":
            return states
        out = self.read_out(self.norm_f(h))[..., 0]
        return out[:, 0::2] if what == "prefix" else out[:, -1]


class DiagonalSSM(_InterleavedStack):
    """A stack of S4D blocks (diagonal linear time-invariant SSMs; module docstring) on interleaved prompts.

    Each block: ``u = LayerNorm(h)``; per channel ``c`` and state ``n``, ``s_t = A_bar s_{t-1} + B_bar u_t`` with
    ``A_bar = exp(dt_c A_cn)``, ``B_bar = (A_bar - 1)/A_cn B_cn`` (zero-order hold), ``A = -exp(log_a)`` started at
    S4D-Real's ``-(n + 1)``, ``dt`` log-uniform in ``[dt_min, dt_max]``, ``B = 1``, ``C ~ N(0, 1/N)``; then
    ``y = C s + D u``, ``h <- h + GLU(W gelu(y))``. The recurrence is one ``associative_scan``; as the SSM is time
    invariant it equals the causal convolution of ``u`` with the kernel ``K_k = sum_n C_n B_bar_n A_bar_n^k``
    (the S4 view). Being linear and time invariant per channel, the SSM mixes tokens only additively: products
    of ``x`` and ``y`` (which in-context regression needs) come only from the GELU/GLU between blocks, so expect
    it to learn much less in context than [`SelectiveSSM`][icl.models.SelectiveSSM].

    Args:
      d: input dimension (>= 1).
      num_layers: blocks (>= 1).
      width: channels (>= 1).
      state_size: ``N`` per channel (>= 1).
      dt_min: lower end of the range of the initial steps (0 < dt_min <= dt_max).
      dt_max: upper end of that range.
      param_dtype: "float32" or "float64".
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(self, d: int, *, num_layers: int = 2, width: int = 32, state_size: int = 16, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, param_dtype="float32", rngs: nnx.Rngs):
        dtype = self._check_common(d, num_layers, width, state_size, dt_min, dt_max, param_dtype)
        self._build(lambda: _S4DBlock(self.width, self.state_size, self.dt_min, self.dt_max, dtype, rngs),
                    nnx.LayerNorm(width, epsilon=1e-5, use_fast_variance=False, param_dtype=dtype, rngs=rngs),
                    dtype, rngs)

    def spec(self) -> dict:
        """Constructor keyword arguments that rebuild this model's structure (the model protocol)."""
        return {"d": self.d, "num_layers": self.num_layers, "width": self.width, "state_size": self.state_size,
                "dt_min": self.dt_min, "dt_max": self.dt_max, "param_dtype": self.param_dtype}

    def kernels(self, length: int) -> jax.Array:
        """Each block's convolution kernel ``K_k = sum_n C_n B_bar_n A_bar_n^k``, ``k < length``:
        ``[num_layers, width, length]`` (the SSM's output is ``sum_{s <= t} K_{t-s} u_s + D u_t``)."""
        length = check_positive_int("length", length)
        out = []
        for block in self.blocks:
            a_bar, b_bar = block.discretised()
            powers = a_bar[..., None] ** jnp.arange(length, dtype=a_bar.dtype)  # [width, N, length]
            out.append(jnp.einsum("cn,cnk->ck", block.c[...] * b_bar, powers))
        return jnp.stack(out)


class SelectiveSSM(_InterleavedStack):
    """A stack of Mamba blocks (selective SSMs; module docstring) on interleaved prompts.

    Each block (Gu & Dao 2023, their Algorithm 2 and reference code): ``[x, z] = W_in RMSNorm(h)`` (``inner =
    expand * width`` each); ``x <- silu(conv(x))``, a causal depthwise convolution of width ``conv_width``;
    ``[dt_in, B, C] = W_x x`` (``dt_rank``, ``N``, ``N``); ``dt = softplus(W_dt dt_in + b_dt)`` (``b_dt`` started
    so that ``dt`` is log-uniform in ``[dt_min, dt_max]``); ``A = -exp(log_a)`` (``[inner, N]``, started at
    ``-(n + 1)``); ``s_t = exp(dt_t A) s_{t-1} + dt_t B_t x_t`` (one ``associative_scan``); ``y_t = C_t . s_t +
    D x_t``; ``h <- h + W_out(y * silu(z))``. A final RMSNorm precedes the read-out. The input-dependent ``B_t``
    and ``C_t`` make the state a sum of products of tokens, as linear attention's (the convolution lets a label
    token see its ``x``).

    Args:
      d: input dimension (>= 1).
      num_layers: blocks (>= 1).
      width: residual width (>= 1).
      state_size: ``N`` (>= 1).
      expand: ``inner / width`` (>= 1; Mamba: 2).
      conv_width: the convolution's width (>= 1; Mamba: 4).
      dt_rank: rank of the step projection (>= 1; default ``ceil(width / 16)``, Mamba's).
      dt_min: lower end of the range of the initial steps.
      dt_max: upper end of that range.
      param_dtype: "float32" or "float64".
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(self, d: int, *, num_layers: int = 2, width: int = 32, state_size: int = 16, expand: int = 2,
                 conv_width: int = 4, dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 param_dtype="float32", rngs: nnx.Rngs):
        dtype = self._check_common(d, num_layers, width, state_size, dt_min, dt_max, param_dtype)
        self.expand = check_positive_int("expand", expand)
        self.conv_width = check_positive_int("conv_width", conv_width)
        self.dt_rank = math.ceil(self.width / 16) if dt_rank is None else check_positive_int("dt_rank", dt_rank)
        self._build(lambda: _MambaBlock(self.width, self.state_size, self.expand, self.conv_width, self.dt_rank,
                                        self.dt_min, self.dt_max, dtype, rngs),
                    nnx.RMSNorm(width, epsilon=1e-5, param_dtype=dtype, rngs=rngs), dtype, rngs)

    def spec(self) -> dict:
        """Constructor keyword arguments that rebuild this model's structure (the model protocol)."""
        return {"d": self.d, "num_layers": self.num_layers, "width": self.width, "state_size": self.state_size,
                "expand": self.expand, "conv_width": self.conv_width, "dt_rank": self.dt_rank, "dt_min": self.dt_min,
                "dt_max": self.dt_max, "param_dtype": self.param_dtype}
