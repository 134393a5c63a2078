"""A GPT-2-style causal transformer on in-context regression prompts (Garg et al. 2022), in Flax NNX.

``Transformer`` is the standard architecture of half of the in-context-learning literature: a linear
read-in, learned positional embeddings, ``num_layers`` pre-LayerNorm blocks of multi-head causal
self-attention and a GELU MLP, a final LayerNorm and a linear read-out. Its switches walk from GPT-2 down
to the one-layer linear self-attention (LSA) of docs/theory.md §2 one component at a time:

====================  ==========================================================================
switch                effect
====================  ==========================================================================
``attention``         ``"softmax"`` (GPT-2: ``softmax(q.k / sqrt(head_dim))`` over the causal past)
                      or ``"linear"`` (unnormalised ``q.k``, divided by the number of context pairs
                      the token attends to, as in the LSA's ``1/n``)
``mlp``               the GELU MLP of each block (``False``: attention-only blocks)
``layer_norm``        the pre-LayerNorms and the final LayerNorm (``False``: none)
``positional``        ``"learned"`` positional embeddings or ``"none"``
``encoding``          ``"interleaved"`` (Garg: tokens ``x_1, [y_1, 0...0], x_2, ...``, predictions read
                      at the x tokens) or ``"stacked"`` (von Oswald, Akyurek: tokens ``[x_i, y_i]`` and a
                      query ``[x_q, 0]``)
====================  ==========================================================================

With ``encoding="stacked", attention="linear", mlp=False, layer_norm=False, positional="none"`` and one
layer and head, the model can hold the LSA's one-step-GD construction (von Oswald et al. 2023, Prop. 1;
docs/theory.md §2) exactly: :func:`set_gd_construction` writes those weights. The query also attends to
itself (a causal decoder always does), but its token carries ``y = 0`` so under that construction its own
value adds nothing. **For two or more layers the causal model is a different model from the LSA stack**
(:class:`icl.LinearTransformer`): there, every context token attends to the whole context; here, token ``i``
attends to tokens ``1..i`` only, so later layers see causally updated context tokens.

Every-prefix predictions (Garg's convention, docs/theory.md §10): ``model.prefix(prompts)[:, k-1]`` is the
prediction of ``y_k`` from ``x_k`` and the first ``k - 1`` pairs. For ``"interleaved"`` this is one causal
pass over ``x_1, y_1, ..., x_n, y_n`` read at the x tokens. For ``"stacked"`` the token ``[x_k, y_k]`` carries
its own label, so a second stream of query tokens ``[x_k, 0]`` (at position ``k - 1``) runs alongside the
causal context stream: query ``k`` attends to context tokens ``1..k-1`` and to itself, in every layer. Both
are exactly the model run on the truncated prompts, for all ``k`` at once and without a loop over ``k``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.tasks import Prompts, check_positive_int

__all__ = ["Transformer", "plot_attention_maps", "set_gd_construction"]

_ENCODINGS = ("interleaved", "stacked")
_POSITIONAL = ("learned", "none")
_ATTENTION = ("softmax", "linear")
# Context attention of prompts with t tokens and head width dh runs as one broadcast multiply-and-sum when
# t * dh <= _BROADCAST_MAX, else as batched matmuls. Measured on a 2-core CPU (training step, 4 layers; ms/step
# broadcast vs matmul): t=8, dh=8: 2.8 vs 12.1; t=8, dh=16: 12.0 vs 21.3; t=14, dh=8: 6.8 vs 16.4; t=20, dh=8:
# 7.5 vs 11.4; t=12, dh=16: 29.5 vs 30.5; t=20, dh=16: 14.6 vs 12.7; t=40, dh=8: 89 vs 57; t=40, dh=32: 102 vs 45.
_BROADCAST_MAX = 160
_INIT_STD = 0.02  # GPT-2's initialiser


def _check_choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class _Dense(nnx.Module):
    """``x @ kernel + bias`` (the layout of ``nnx.Linear``: ``kernel [in, out]``), built from given arrays."""

    def __init__(self, kernel: jax.Array, bias: jax.Array):
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        # As one 2-D matmul over every token: XLA:CPU otherwise transposes the activations for the gradient.
        out = x.reshape(-1, x.shape[-1]) @ self.kernel[...] + self.bias[...]
        return out.reshape(*x.shape[:-1], out.shape[-1])


class _LayerNorm(nnx.Module):
    """LayerNorm over the last axis (GPT-2's epsilon 1e-5), as ``nnx.LayerNorm``, built from given arrays."""

    def __init__(self, scale: jax.Array, bias: jax.Array):
        self.scale = nnx.Param(scale)
        self.bias = nnx.Param(bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        var = jnp.mean(centred * centred, axis=-1, keepdims=True)
        return centred * jax.lax.rsqrt(var + 1e-5) * self.scale[...] + self.bias[...]


def _layout(token_dim: int, width: int, mlp_ratio: int, num_layers: int, mlp: bool, layer_norm: bool,
            num_positions: int | None, variance_head: bool) -> tuple:
    """Every parameter as ``(name, shape, std)``: ``std > 0`` draws ``N(0, std^2)``, ``0`` zeros, ``-1`` ones.

    GPT-2's initialisation: ``N(0, 0.02^2)`` weights, residual projections ``0.02 / sqrt(2 L)``, zero biases,
    unit LayerNorm scales; read-in and read-out ``N(0, 1/fan_in)`` (as Flax's default ``lecun_normal``).
    """
    proj = _INIT_STD / math.sqrt(2 * num_layers)
    entries = [("read_in.kernel", (token_dim, width), 1 / math.sqrt(token_dim)), ("read_in.bias", (width,), 0.0)]
    if num_positions is not None:
        entries.append(("positions", (num_positions, width), _INIT_STD))

    def norm(name):
        return [(f"{name}.scale", (width,), -1.0), (f"{name}.bias", (width,), 0.0)] if layer_norm else []

    for i in range(num_layers):
        b = f"blocks.{i}"
        entries += norm(f"{b}.ln1") + [(f"{b}.qkv.kernel", (width, 3 * width), _INIT_STD),
                                       (f"{b}.qkv.bias", (3 * width,), 0.0),
                                       (f"{b}.attn_out.kernel", (width, width), proj), (f"{b}.attn_out.bias", (width,), 0.0)]
        if mlp:
            hidden = mlp_ratio * width
            entries += norm(f"{b}.ln2") + [(f"{b}.fc.kernel", (width, hidden), _INIT_STD), (f"{b}.fc.bias", (hidden,), 0.0),
                                           (f"{b}.fc_out.kernel", (hidden, width), proj),
                                           (f"{b}.fc_out.bias", (width,), 0.0)]
    entries += norm("ln_f") + [("read_out.kernel", (width, 1), 1 / math.sqrt(width)), ("read_out.bias", (1,), 0.0)]
    if variance_head:
        entries += [("log_var_out.kernel", (width, 1), 1 / math.sqrt(width)), ("log_var_out.bias", (1,), 0.0)]
    return tuple(entries)


@functools.partial(jax.jit, static_argnames=("size", "dtype"))
def _standard_normals(key: jax.Array, size: int, dtype) -> jax.Array:
    return jax.random.normal(key, (size,), dtype)


def _init_arrays(key: jax.Array, layout: tuple, dtype) -> dict:
    """Every parameter of ``layout`` from ONE draw of standard normals, sliced in order.

    The draw's length is rounded up to a power of two, so models of similar size share one compiled
    random-number program (eager NNX initialisation compiles one per parameter shape: seconds per new model
    size on this CPU). With a concrete key the slicing is done in numpy (no compilation); under ``jit``/``vmap``
    in ``jnp``; both give the same values.
    """
    sizes = [math.prod(shape) if std > 0 else 0 for _, shape, std in layout]
    total = max(sum(sizes), 1)
    flat = _standard_normals(key, max(1024, 1 << (total - 1).bit_length()), jnp.dtype(dtype))
    xp = jnp if isinstance(flat, jax.core.Tracer) else np
    if xp is np:
        flat = np.asarray(flat)
    out, start = {}, 0
    for (name, shape, std), size in zip(layout, sizes):
        if std > 0:
            value = flat[start : start + size].reshape(shape) * xp.asarray(std, flat.dtype)
            start += size
        else:
            value = xp.full(shape, 1.0 if std < 0 else 0.0, flat.dtype)
        out[name] = jnp.asarray(value)
    return out


class _Block(nnx.Module):
    """One pre-LayerNorm block: ``h + Attn(LN(h))`` then ``h + MLP(LN(h))`` (either part switchable)."""

    def __init__(self, p: dict, prefix: str, num_heads: int):
        def get(name):
            return p.get(f"{prefix}.{name}")

        self.ln1 = _LayerNorm(get("ln1.scale"), get("ln1.bias")) if get("ln1.scale") is not None else None
        self.qkv = _Dense(get("qkv.kernel"), get("qkv.bias"))
        self.attn_out = _Dense(get("attn_out.kernel"), get("attn_out.bias"))
        self.ln2 = _LayerNorm(get("ln2.scale"), get("ln2.bias")) if get("ln2.scale") is not None else None
        self.fc = _Dense(get("fc.kernel"), get("fc.bias")) if get("fc.kernel") is not None else None
        self.fc_out = _Dense(get("fc_out.kernel"), get("fc_out.bias")) if self.fc is not None else None
        self.num_heads = num_heads


class Transformer(nnx.Module):
    """GPT-2-style causal decoder for in-context regression (Garg et al. 2022; issue 10).

    ``model(prompts) -> [batch]`` predicts the query; ``model.prefix(prompts) -> [batch, n]`` gives every
    prefix's prediction (entry ``k-1``: ``y_k`` from ``x_k`` and the first ``k-1`` pairs; docs/theory.md §10);
    ``model.attention_maps(prompts)`` returns every layer's and head's attention weights. Built with
    ``variance_head=True`` it also reads out a log-variance and both calls return ``(mean, var)``
    (``returns_variance`` is then True; the Gaussian NLL losses of :func:`icl.train` use it).

    Args:
      d: input dimension of the prompts (>= 1).
      num_layers: number of blocks (>= 1). width: residual-stream width (>= 1, divisible by ``num_heads``).
      num_heads: attention heads per block (>= 1). mlp_ratio: MLP hidden width / width (>= 1; GPT-2: 4).
      encoding: ``"interleaved"`` (Garg) or ``"stacked"`` (see the module docstring).
      positional: ``"learned"`` (GPT-2) or ``"none"``.
      max_pairs: with learned positions, the longest context (pairs) the model accepts; a longer prompt is a
        ValueError (train with ``max_pairs`` above the training length for length-shift experiments, or use
        ``positional="none"``).
      attention: ``"softmax"`` (GPT-2) or ``"linear"`` (unnormalised, ``1/#context pairs`` attended, as in the LSA).
      mlp, layer_norm: include the GELU MLPs / the LayerNorms.
      variance_head: also read out ``log var`` (mean-and-variance predictor).
      param_dtype: dtype of the parameters (float32; float64 for exactness checks under x64).
      rngs: ``nnx.Rngs`` with a ``params`` stream. All parameters are drawn in one compiled call (GPT-2's
        initialisation, see ``_layout``); the layers follow ``nnx.Linear``/``nnx.LayerNorm``'s parameter names
        (``kernel [in, out]``, ``bias``, ``scale``).

    Raises:
      ValueError: naming the argument, for a non-positive size, ``width`` not divisible by ``num_heads``, or an
        unknown ``encoding``/``positional``/``attention``.

    Example::

        model = icl.Transformer(5, num_layers=4, width=64, num_heads=2, rngs=nnx.Rngs(0))
        y_hat = model(prompts)            # [batch]
        curve = model.prefix(prompts)     # [batch, n]
    """

    returns_variance = False

    def __init__(self, d: int, *, num_layers: int, width: int, num_heads: int, mlp_ratio: int = 4,
                 encoding: str = "interleaved", positional: str = "learned", max_pairs: int = 64,
                 attention: str = "softmax", mlp: bool = True, layer_norm: bool = True, variance_head: bool = False,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.d = check_positive_int("d", d)
        num_layers = check_positive_int("num_layers", num_layers)
        width = check_positive_int("width", width)
        num_heads = check_positive_int("num_heads", num_heads)
        mlp_ratio = check_positive_int("mlp_ratio", mlp_ratio)
        self.max_pairs = check_positive_int("max_pairs", max_pairs)
        if width % num_heads:
            raise ValueError(f"width must be divisible by num_heads, got width={width} and num_heads={num_heads}")
        self.encoding = _check_choice("encoding", encoding, _ENCODINGS)
        self.positional = _check_choice("positional", positional, _POSITIONAL)
        self.attention = _check_choice("attention", attention, _ATTENTION)
        self.mlp = _check_bool("mlp", mlp)
        self.layer_norm = _check_bool("layer_norm", layer_norm)
        variance_head = _check_bool("variance_head", variance_head)
        param_dtype = jnp.dtype(param_dtype)
        # Constructor arguments (hashable, no rngs): icl.load_checkpoint rebuilds the model from them.
        self._init_args = (("d", self.d), ("num_layers", num_layers), ("width", width), ("num_heads", num_heads),
                           ("mlp_ratio", mlp_ratio), ("encoding", encoding), ("positional", positional),
                           ("max_pairs", self.max_pairs), ("attention", attention), ("mlp", self.mlp),
                           ("layer_norm", self.layer_norm), ("variance_head", variance_head),
                           ("param_dtype", param_dtype.name))
        self.num_layers, self.width, self.num_heads = num_layers, width, num_heads
        token_dim = d if encoding == "interleaved" else d + 1
        # Interleaved: 2 tokens per pair and the query; stacked: one per pair and the query.
        self.num_positions = 2 * max_pairs + 1 if encoding == "interleaved" else max_pairs + 1
        layout = _layout(token_dim, width, mlp_ratio, num_layers, self.mlp, self.layer_norm,
                         self.num_positions if positional == "learned" else None, variance_head)
        p = _init_arrays(rngs.params(), layout, param_dtype)
        self.read_in = _Dense(p["read_in.kernel"], p["read_in.bias"])
        self.positions = nnx.Param(p["positions"]) if "positions" in p else None
        self.blocks = nnx.List([_Block(p, f"blocks.{i}", num_heads) for i in range(num_layers)])
        self.ln_f = _LayerNorm(p["ln_f.scale"], p["ln_f.bias"]) if layer_norm else None
        self.read_out = _Dense(p["read_out.kernel"], p["read_out.bias"])
        self.log_var_out = _Dense(p["log_var_out.kernel"], p["log_var_out.bias"]) if variance_head else None
        if variance_head:
            self.returns_variance = True

    # ----------------------------------------------------------------------------------------------------
    # public calls
    def __call__(self, prompts: Prompts):
        """Prediction of the query, ``[batch]`` (``(mean, var)`` with ``variance_head``)."""
        return self._apply("query", prompts)

    def prefix(self, prompts: Prompts):
        """Every prefix's prediction ``[batch, n]``: entry ``k-1`` predicts ``y_k`` from the first ``k-1`` pairs.

        Equals the model run on the truncated prompt ``(x_1..x_{k-1}, y_1..y_{k-1}; x_k)`` for every ``k``, in
        one pass (interleaved: one causal pass read at the x tokens; stacked: a query stream beside the
        context stream, see the module docstring). Cost about one forward pass (two for stacked).
        """
        return self._apply("prefix", prompts)

    def attention_maps(self, prompts: Prompts) -> jax.Array:
        """Attention weights of the query call: ``[num_layers, batch, num_heads, T, T]``.

        ``T`` tokens: ``2n + 1`` for interleaved (``x_1, y_1, ..., x_n, y_n, x_q``), ``n + 1`` for stacked
        (``[x_i, y_i]`` then ``[x_q, 0]``); row ``t`` is what token ``t`` attends to (zero above the diagonal).
        With softmax attention every row sums to 1; with linear attention the entries are the unnormalised
        weights ``q.k / #pairs`` that multiply the values.
        """
        return self._apply("maps", prompts)

    def hidden_states(self, prompts: Prompts) -> list[jax.Array]:
        """The residual stream of the query call: ``num_layers + 1`` arrays ``[batch, T, width]``.

        Entry 0 is the embedded tokens (read-in plus positions), entry ``l`` the stream after block ``l``
        (before the final LayerNorm). Tokens as in :meth:`attention_maps`; the last one (``T - 1``) is the
        query token, from which ``model(prompts)`` is read (for probes, Akyurek et al. 2023).
        """
        return self._apply("states", prompts)

    def _apply(self, what: str, prompts: Prompts):
        """Validate (static shapes), then run ``what`` as one compiled program (cached per model structure and
        shape), so eager calls are fast; inside an outer ``jit``/``grad`` the inner ``jit`` is inlined."""
        self._check(prompts)
        graphdef, state = nnx.split(self)
        return _compiled(graphdef, state, Prompts(*prompts), what)

    def _run(self, what: str, prompts: Prompts):
        n = prompts.x.shape[1]
        if what == "prefix":
            tokens = self._tokens(prompts, query=False)
            if self.encoding == "interleaved":
                h, _ = self._stream(tokens, None, _context_pairs("interleaved", 2 * n), None)
                return self._read(h[:, 0::2])
            queries = jnp.concatenate([prompts.x, jnp.zeros_like(prompts.y)[..., None]], axis=-1)
            _, g = self._stream(tokens, queries, _context_pairs("stacked", n), None)
            return self._read(g)
        tokens = self._tokens(prompts, query=True)
        pairs = _context_pairs(self.encoding, tokens.shape[1], query=True)
        if what == "query":
            h, _ = self._stream(tokens, None, pairs, None)
            return self._read(h[:, -1])
        if what == "maps":
            maps: list = []
            self._stream(tokens, None, pairs, maps)
            return jnp.stack(maps)
        states: list = []
        self._stream(tokens, None, pairs, None, states)
        return states

    # ----------------------------------------------------------------------------------------------------
    # internals
    def _check(self, prompts: Prompts) -> int:
        x = prompts.x
        if x.ndim != 3:
            raise ValueError(f"prompts.x must have shape [batch, n, d], got {tuple(x.shape)}")
        if x.shape[-1] != self.d:
            raise ValueError(f"d mismatch: prompts have d={x.shape[-1]} but the model was built with d={self.d}")
        if prompts.x_query.ndim != 2:
            raise ValueError(f"prompts.x_query must be [batch, d] (one query); got {tuple(prompts.x_query.shape)}; "
                             "flatten several queries with icl.tasks.each_query")
        n = x.shape[1]
        if self.positional == "learned" and n > self.max_pairs:
            raise ValueError(f"prompts have n={n} context pairs but the model has learned positions for at most "
                             f"max_pairs={self.max_pairs}; build it with a larger max_pairs or positional='none'")
        return n

    def _tokens(self, prompts: Prompts, query: bool) -> jax.Array:
        x, y = prompts.x, prompts.y
        if self.encoding == "interleaved":
            y_wide = jnp.concatenate([y[..., None], jnp.zeros_like(x[..., 1:])], axis=-1)
            tokens = jnp.stack([x, y_wide], axis=2).reshape(x.shape[0], 2 * x.shape[1], x.shape[2])
            if query:
                tokens = jnp.concatenate([tokens, prompts.x_query[:, None]], axis=1)
            return tokens
        tokens = jnp.concatenate([x, y[..., None]], axis=-1)
        if query:
            q = jnp.concatenate([prompts.x_query, jnp.zeros_like(prompts.x_query[:, :1])], axis=-1)
            tokens = jnp.concatenate([tokens, q[:, None]], axis=1)
        return tokens

    def _embed(self, tokens: jax.Array) -> jax.Array:
        h = self.read_in(tokens)
        if self.positions is not None:
            h = h + self.positions[: tokens.shape[1]].astype(h.dtype)
        return h

    def _read(self, h: jax.Array):
        if self.ln_f is not None:
            h = self.ln_f(h)
        mean = self.read_out(h)[..., 0]
        if self.log_var_out is None:
            return mean
        return mean, jnp.exp(self.log_var_out(h)[..., 0])

    def _stream(self, tokens, queries, pairs, maps, states=None):
        """Run the blocks over the causal context stream ``tokens [b, T, ·]`` and, if given, the query stream
        ``queries [b, T, ·]`` (query ``t`` sits at position ``t``, attends to context tokens ``< t`` and itself).
        ``pairs [T]``: context pairs attended by each position (linear attention's divisor)."""
        h = self._embed(tokens)
        g = None if queries is None else self._embed(queries)
        if states is not None:
            states.append(h)
        for block in self.blocks:
            h, g = self._block(block, h, g, pairs, maps)
            if states is not None:
                states.append(h)
        return h, g

    def _block(self, block: _Block, h, g, pairs, maps):
        a_h = block.ln1(h) if block.ln1 is not None else h
        a_g = None if g is None else (block.ln1(g) if block.ln1 is not None else g)
        out_h, out_g = self._attend(block, a_h, a_g, pairs, maps)
        h = h + out_h
        g = None if g is None else g + out_g
        if block.fc is not None:
            h = h + self._mlp(block, h)
            g = None if g is None else g + self._mlp(block, g)
        return h, g

    @staticmethod
    def _mlp(block: _Block, h):
        a = block.ln2(h) if block.ln2 is not None else h
        return block.fc_out(jax.nn.gelu(block.fc(a), approximate=True))

    def _attend(self, block: _Block, a_h, a_g, pairs, maps):
        b, t, w = a_h.shape
        heads = block.num_heads
        dh = w // heads
        softmax = self.attention == "softmax"
        scale = 1.0 / math.sqrt(dh) if softmax else 1.0
        causal = np.tril(np.ones((t, t), bool))
        inv_pairs = (1.0 / np.maximum(pairs, 1)).astype(np.float64)  # linear attention's 1/#pairs per row
        if t * dh <= _BROADCAST_MAX:
            # Short prompts: [b, t, s, heads] products summed over the head dimension. XLA:CPU runs the
            # b * heads tiny batched matmuls of the other layout slowly (measurements at _BROADCAST_MAX).
            q, k, v = (z.reshape(b, t, heads, dh) for z in jnp.split(block.qkv(a_h), 3, axis=-1))
            scores = jnp.sum((q * scale)[:, :, None] * k[:, None], axis=-1)
            mask = causal[None, :, :, None]
            if softmax:
                weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=2)
            else:
                weights = jnp.where(mask, scores, 0.0) * jnp.asarray(inv_pairs, scores.dtype)[None, :, None, None]
            if maps is not None:
                maps.append(weights.transpose(0, 3, 1, 2))
            out_h = jnp.sum(weights[..., None] * v[:, None], axis=2).reshape(b, t, w)
        else:
            # One transpose of the fused projection to [3, b, heads, t, dh]: batched matmuls in their natural layout.
            q, k, v = block.qkv(a_h).reshape(b, t, 3, heads, dh).transpose(2, 0, 3, 1, 4)
            scores = (q * scale) @ k.swapaxes(-1, -2)
            if softmax:
                weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
            else:
                weights = jnp.where(causal, scores, 0.0) * jnp.asarray(inv_pairs, scores.dtype)[:, None]
            if maps is not None:
                maps.append(weights)
            out_h = (weights @ v).transpose(0, 2, 1, 3).reshape(b, t, w)
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, t, heads, dh] for the query stream
        out_h = block.attn_out(out_h)
        if a_g is None:
            return out_h, None
        # Query stream: query t attends to context tokens s < t and to itself.
        qg, kg, vg = jnp.split(block.qkv(a_g), 3, axis=-1)
        qg, kg, vg = (z.reshape(b, t, heads, dh) for z in (qg, kg, vg))
        strict = np.tril(np.ones((t, t), bool), -1)
        s_ctx = jnp.einsum("bthe,bshe->bhts", qg * scale, k)
        s_self = jnp.einsum("bthe,bthe->bht", qg * scale, kg)
        if softmax:
            s_ctx = jnp.where(strict, s_ctx, -jnp.inf)
            top = jnp.maximum(jnp.max(s_ctx, axis=-1), s_self)  # s_self is finite: every row has one entry
            e_ctx = jnp.exp(s_ctx - top[..., None])
            e_self = jnp.exp(s_self - top)
            total = jnp.sum(e_ctx, axis=-1) + e_self
            w_ctx, w_self = e_ctx / total[..., None], e_self / total
        else:
            inv = jnp.asarray(1.0 / np.maximum(np.arange(t), 1), s_ctx.dtype)  # query t attends t pairs
            w_ctx = jnp.where(strict, s_ctx, 0.0) * inv[:, None]
            w_self = s_self * inv
        out_g = jnp.einsum("bhts,bshe->bthe", w_ctx, v) + jnp.einsum("bht,bthe->bthe", w_self, vg)
        return out_h, block.attn_out(out_g.reshape(b, t, w))


def _context_pairs(encoding: str, num_tokens: int, query: bool = False) -> np.ndarray:
    """Complete context pairs that token ``t`` attends to causally (tokens ``0..t``); with ``query`` the last
    token is the query (interleaved ``x_q``: already not counted; stacked ``[x_q, 0]``: not a pair)."""
    t = np.arange(num_tokens)
    if encoding == "interleaved":
        return (t + 1) // 2
    pairs = t + 1
    if query:
        pairs[-1] = num_tokens - 1
    return pairs


@functools.partial(jax.jit, static_argnames=("graphdef", "what"))
def _compiled(graphdef, state, prompts: Prompts, what: str):
    return nnx.merge(graphdef, state)._run(what, prompts)


def set_gd_construction(model: Transformer, eta: float) -> Transformer:
    """Write the LSA's one-GD-step construction (docs/theory.md §2) into an all-linear stacked model, in place.

    The model must be ``Transformer(d, num_layers=1, width=d+1, num_heads=1, encoding="stacked",
    attention="linear", mlp=False, layer_norm=False, positional="none")``. The weights are: read-in and
    key/output projections the identity, query projection ``W^KQ = [[I, 0], [0, 0]]``, value projection with
    last row of ``W^PV`` = ``[0, eta]``, read-out the last coordinate, biases zero. Then
    ``model(prompts) = x_q . (eta / n) sum_i y_i x_i``, one GD step from zero with step ``eta`` (the
    predictor ``icl.gradient_descent(eta)``), and ``model.prefix`` is that step on every prefix.
    Returns the model.
    """
    d = model.d
    ok = (model.encoding == "stacked" and model.attention == "linear" and not model.mlp and not model.layer_norm
          and model.positional == "none" and model.num_layers == 1 and model.num_heads == 1 and model.width == d + 1)
    if not ok:
        raise ValueError("model must be a one-layer, one-head, width d+1, stacked, all-linear Transformer "
                         "(attention='linear', mlp=False, layer_norm=False, positional='none')")
    block = model.blocks[0]
    dtype = model.read_in.kernel[...].dtype
    eye = jnp.eye(d + 1, dtype=dtype)
    w_kq = eye.at[d, d].set(0.0)  # [[I, 0], [0, 0]]
    w_pv = jnp.zeros((d + 1, d + 1), dtype).at[d, d].set(eta)  # last row [0, eta]
    # Rows are inputs (x @ kernel): score = (z_q Kq).(z_i Kk) = z_i^T W^KQ z_q needs Kq Kk^T = (W^KQ)^T.
    model.read_in.kernel[...] = eye
    block.qkv.kernel[...] = jnp.concatenate([w_kq.T, eye, w_pv.T], axis=1)
    block.attn_out.kernel[...] = eye
    model.read_out.kernel[...] = eye[:, d:]
    for layer in (model.read_in, block.qkv, block.attn_out, model.read_out):
        layer.bias[...] = jnp.zeros_like(layer.bias[...])
    return model


def plot_attention_maps(model_or_maps, prompts: Prompts | None = None, *, index: int = 0, encoding: str | None = None):
    """Figure of every layer's (rows) and head's (columns) attention map for prompt ``index``.

    Pass a :class:`Transformer` and ``prompts`` (the maps of ``model.attention_maps(prompts)`` are drawn, with
    token labels), or an array ``[num_layers, batch, num_heads, T, T]`` of maps. Returns the matplotlib figure
    (the caller saves it).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if isinstance(model_or_maps, Transformer):
        if prompts is None:
            raise ValueError("prompts is required when a model is given")
        encoding = model_or_maps.encoding
        maps = model_or_maps.attention_maps(prompts)
    else:
        maps = model_or_maps
    maps = np.asarray(maps)
    if maps.ndim != 5:
        raise ValueError(f"maps must have shape [num_layers, batch, num_heads, T, T], got {maps.shape}")
    if not 0 <= index < maps.shape[1]:
        raise ValueError(f"index must be in [0, {maps.shape[1]}), got {index}")
    layers, _, heads, t, _ = maps.shape
    if encoding == "interleaved":
        labels = [f"{'xy'[i % 2]}{i // 2 + 1}" for i in range(t - 1)] + ["xq"]
    elif encoding == "stacked":
        labels = [f"z{i + 1}" for i in range(t - 1)] + ["q"]
    else:
        labels = [str(i) for i in range(t)]
    fig, axes = plt.subplots(layers, heads, figsize=(2.6 * heads + 0.8, 2.4 * layers), squeeze=False)
    step = max(1, t // 12)
    for li in range(layers):
        for hi in range(heads):
            ax = axes[li, hi]
            image = ax.imshow(maps[li, index, hi], cmap="viridis", aspect="auto")
            ax.set_title(f"layer {li + 1}, head {hi + 1}", fontsize=8)
            ax.set_xticks(range(0, t, step), labels[::step], fontsize=6, rotation=90)
            ax.set_yticks(range(0, t, step), labels[::step], fontsize=6)
            fig.colorbar(image, ax=ax, fraction=0.046)
    axes[-1, 0].set_xlabel("attended token (key)")
    axes[-1, 0].set_ylabel("attending token (query)")
    fig.tight_layout()
    return fig
