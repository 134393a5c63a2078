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
docs/theory.md §2) exactly: [`set_gd_construction`][icl.models.set_gd_construction] writes those weights. The query also attends to
itself (a causal decoder always does), but its token carries ``y = 0`` so under that construction its own
value adds nothing. **For two or more layers the causal model is a different model from the LSA stack**
([`icl.LinearTransformer`][icl.models.LinearTransformer]): there, every context token attends to the whole context; here, token ``i``
attends to tokens ``1..i`` only, so later layers see causally updated context tokens.

Every-prefix predictions (Garg's convention, docs/theory.md §10): ``model.prefix(prompts)[:, k-1]`` is the
prediction of ``y_k`` from ``x_k`` and the first ``k - 1`` pairs. For ``"interleaved"`` this is one causal
pass over ``x_1, y_1, ..., x_n, y_n`` read at the x tokens. For ``"stacked"`` the token ``[x_k, y_k]`` carries
its own label, so a second stream of query tokens ``[x_k, 0]`` (at position ``k - 1``) runs alongside the
causal context stream: query ``k`` attends to context tokens ``1..k-1`` and to itself, in every layer. Both
are exactly the model run on the truncated prompts, for all ``k`` at once and without a loop over ``k``.

**Looped (weight-tied) transformers** (Yang, Lee, Nowak & Papailiopoulos 2023, "Looped transformers are better at
learning learning algorithms"; Giannou et al. 2023): with ``loops=T`` the stack of ``num_layers`` blocks is applied
``T`` times with the same weights (the read-in, positions, final LayerNorm and read-out once; Yang et al.'s code
loops their GPT-2 backbone, which adds the positions and applies its final LayerNorm on every pass: with
``loop_norm=True`` the final LayerNorm closes every loop, ``Y_{t+1} = LN_f(M(Y_t + e))``, and the read-out reads the
normalised stream, so the stream stays bounded however many loops run; with input injection ``e`` includes the
positions, so this is their loop exactly). With
``input_injection=True`` the embedded prompt ``e`` is re-added before every loop, Yang et al.'s
``Y_{t+1} = M(Y_t + e)`` from ``Y_0 = 0``; without it, ``Y_{t+1} = M(Y_t)`` from ``Y_0 = e``. Either way one loop is
the unlooped model. ``model.loops`` may be reassigned at prediction time (or use ``model.with_loops(T)``); the
parameters do not change. ``loops=None`` (the default) is the standard transformer: the same parameters, outputs
and ``spec()`` as before the option existed. [`Transformer.loop_outputs`][icl.models.Transformer.loop_outputs] reads the prediction after every loop
and [`loop_window_loss`][icl.models.loop_window_loss] is Yang et al.'s truncated loss (the mean squared error over the last loops) as a
``loss_fn`` for [`icl.train`][icl.training.train].
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.tasks import Prompts, check_int, check_positive_int, check_prompt_shapes

__all__ = ["Transformer", "loop_window_loss", "plot_attention_maps", "set_gd_construction"]

_ENCODINGS = ("interleaved", "stacked")
_POSITIONAL = ("learned", "none")
_ATTENTION = ("softmax", "linear")
_STD = 0.02  # GPT-2's initialiser: N(0, 0.02^2) weights and learned positions


def _check_choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _linear(n_in: int, n_out: int, std: float | None, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """``nnx.Linear`` with kernel ``N(0, std^2)`` (``std=None``: ``N(0, 1/n_in)``) and a zero bias."""
    init = (nnx.initializers.normal(std) if std is not None
            else nnx.initializers.variance_scaling(1.0, "fan_in", "normal"))
    return nnx.Linear(n_in, n_out, kernel_init=init, bias_init=nnx.initializers.zeros, param_dtype=dtype, rngs=rngs)


def _layer_norm(width: int, on: bool, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm | None:
    """GPT-2's LayerNorm (epsilon 1e-5, two-pass variance, unit scale, zero bias), or None when switched off."""
    return (nnx.LayerNorm(width, epsilon=1e-5, use_fast_variance=False, param_dtype=dtype, rngs=rngs)
            if on else None)


def _maybe(layer, x):
    return x if layer is None else layer(x)


def _attend(q, k, v, mask: np.ndarray, pairs: np.ndarray, softmax: bool):
    """Masked attention of ``q [b, heads, t, e]`` over ``k, v [b, heads, s, e]``: the weights ``[b, heads, t, s]``
    and the output ``[b, heads, t, e]``.

    ``mask [t, s]``: which keys each query sees; ``pairs [t]``: linear attention's divisor (context pairs seen).
    A masked key's weight is exactly 0, but ``0 * nan = nan``: a non-finite value (from a NaN label, say) would
    leak into every earlier position through the product with the values. So non-finite values enter that
    product as 0, and the scores of the queries that do see them are NaN instead.
    """
    finite = jnp.all(jnp.isfinite(v), axis=-1, keepdims=True)  # [b, heads, s, 1]
    scores = jnp.where(finite.swapaxes(-1, -2), q @ k.swapaxes(-1, -2), jnp.nan)
    if softmax:
        weights = jax.nn.softmax(jnp.where(mask, scores / math.sqrt(q.shape[-1]), -jnp.inf), axis=-1)
    else:
        weights = jnp.where(mask, scores, 0.0) / np.maximum(pairs, 1)[:, None].astype(scores.dtype)
    return weights, weights @ jnp.where(finite, v, 0.0)


class _Block(nnx.Module):
    """One pre-LayerNorm block: ``h + Attn(LN(h))`` then ``h + MLP(LN(h))`` (either LayerNorm or the MLP off).

    GPT-2's initialisation: weights ``N(0, 0.02^2)``, the residual projections ``attn_out`` and ``fc_out``
    ``N(0, (0.02 / sqrt(2 num_layers))^2)``, zero biases, unit LayerNorm scales.
    """

    def __init__(self, width: int, num_heads: int, hidden: int | None, num_layers: int, layer_norm: bool, dtype,
                 rngs: nnx.Rngs):
        proj = _STD / math.sqrt(2 * num_layers)
        self.num_heads = num_heads
        self.ln1 = _layer_norm(width, layer_norm, dtype, rngs)
        self.qkv = _linear(width, 3 * width, _STD, dtype, rngs)
        self.attn_out = _linear(width, width, proj, dtype, rngs)
        self.ln2 = _layer_norm(width, layer_norm and hidden is not None, dtype, rngs)
        self.fc = None if hidden is None else _linear(width, hidden, _STD, dtype, rngs)
        self.fc_out = None if hidden is None else _linear(hidden, width, proj, dtype, rngs)

    def heads(self, h, b: int):
        """``q, k, v``, each ``[b, heads, t, head_dim]``, of the LayerNormed stream ``h [b * t, width]``."""
        w = h.shape[-1]
        qkv = self.qkv(_maybe(self.ln1, h)).reshape(b, -1, 3, self.num_heads, w // self.num_heads)
        return qkv.transpose(2, 0, 3, 1, 4)

    def attend_out(self, h, out):
        """``h + attn_out(out)`` for the heads' output ``out [b, heads, t, head_dim]`` and ``h [b * t, width]``."""
        return h + self.attn_out(out.transpose(0, 2, 1, 3).reshape(h.shape))

    def mlp(self, h):
        if self.fc is None:
            return h
        return h + self.fc_out(jax.nn.gelu(self.fc(_maybe(self.ln2, h)), approximate=True))


class Transformer(nnx.Module):
    """GPT-2-style causal decoder for in-context regression (Garg et al. 2022).

    ``model(prompts) -> [batch]`` predicts the query; ``model.prefix(prompts) -> [batch, n]`` gives every
    prefix's prediction (entry ``k-1``: ``y_k`` from ``x_k`` and the first ``k-1`` pairs; docs/theory.md §10);
    ``model.attention_maps(prompts)`` returns every layer's and head's attention weights;
    ``model.hidden_states(prompts)`` the residual stream; ``model.spec()`` the constructor arguments (the model
    protocol, [`icl.protocol`][icl.protocol]). Built with ``variance_head=True`` it also reads out a log-variance and both
    calls return ``(mean, var)`` (``returns_variance`` is then True; the Gaussian NLL losses of [`icl.train`][icl.training.train]
    use it).

    Args:
      d: input dimension of the prompts (>= 1).
      num_layers: number of blocks (>= 1). width: residual-stream width (>= 1, divisible by ``num_heads``).
      num_heads: attention heads per block (>= 1). mlp_ratio: MLP hidden width / width (>= 1; GPT-2: 4).
      encoding: ``"interleaved"`` (Garg) or ``"stacked"`` (see the module docstring).
      positional: ``"learned"`` (GPT-2) or ``"none"``.
      max_pairs: with learned positions, the longest context (pairs) the model accepts; a longer prompt is a
        ValueError (train with ``max_pairs`` above the training length for length-shift experiments, or use
        ``positional="none"``). ``prefix`` accepts one pair more (its last label is never read).
      attention: ``"softmax"`` (GPT-2) or ``"linear"`` (unnormalised, ``1/#context pairs`` attended, as in the LSA).
      mlp: include the GELU MLPs.
      layer_norm: include the LayerNorms.
      variance_head: also read out ``log var`` (mean-and-variance predictor).
      param_dtype: dtype of the parameters (float32; float64 for exactness checks under x64).
      loops: ``None`` (default, the standard model) or the number of times the block stack is applied with shared
        weights (>= 1; module docstring, "Looped"). May be reassigned on the model at prediction time.
      input_injection: re-add the embedded prompt before every loop (Yang et al. 2023).
      loop_norm: apply the final LayerNorm at the end of every loop (Yang et al.'s code; module docstring,
        "Looped"). With one loop the model is the standard one either way.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Layers are ``nnx.Linear`` (``kernel [in, out]``, ``bias``) and ``nnx.LayerNorm`` (``scale``, ``bias``;
    GPT-2's epsilon 1e-5) with GPT-2's initialisation: the read-in and read-outs ``N(0, 1/fan_in)``, the learned
    positions (a ``[num_positions, width]`` ``nnx.Param``) ``N(0, 0.02^2)``, the blocks as in ``_Block``.

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
                 param_dtype=jnp.float32, loops: int | None = None, input_injection: bool = False,
                 loop_norm: bool = False, rngs: nnx.Rngs):
        self.d = check_positive_int("d", d)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.width = check_positive_int("width", width)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.mlp_ratio = check_positive_int("mlp_ratio", mlp_ratio)
        self.max_pairs = check_positive_int("max_pairs", max_pairs)
        if width % num_heads:
            raise ValueError(f"width must be divisible by num_heads, got width={width} and num_heads={num_heads}")
        self.encoding = _check_choice("encoding", encoding, _ENCODINGS)
        self.positional = _check_choice("positional", positional, _POSITIONAL)
        self.attention = _check_choice("attention", attention, _ATTENTION)
        self.mlp = _check_bool("mlp", mlp)
        self.layer_norm = _check_bool("layer_norm", layer_norm)
        self.variance_head = _check_bool("variance_head", variance_head)
        self.loops = None if loops is None else check_positive_int("loops", loops)
        self.input_injection = _check_bool("input_injection", input_injection)
        self.loop_norm = _check_bool("loop_norm", loop_norm)
        dtype = jnp.dtype(param_dtype)
        self.param_dtype = dtype.name
        token_dim = d if encoding == "interleaved" else d + 1
        # Interleaved: 2 tokens per pair and the query; stacked: one per pair and the query.
        self.num_positions = 2 * max_pairs + 1 if encoding == "interleaved" else max_pairs + 1
        self.read_in = _linear(token_dim, width, None, dtype, rngs)
        self.positions = (nnx.Param(nnx.initializers.normal(_STD)(rngs.params(), (self.num_positions, width), dtype))
                          if positional == "learned" else None)
        hidden = mlp_ratio * width if self.mlp else None
        self.blocks = nnx.List([_Block(width, num_heads, hidden, num_layers, self.layer_norm, dtype, rngs)
                                for _ in range(num_layers)])
        self.ln_f = _layer_norm(width, self.layer_norm, dtype, rngs)
        self.read_out = _linear(width, 1, None, dtype, rngs)
        self.log_var_out = _linear(width, 1, None, dtype, rngs) if self.variance_head else None
        if self.variance_head:
            self.returns_variance = True
        # Learned positions beyond the training length are untrained: icl.train records the length it trained at
        # on its own copy of the structure (icl.protocol.mark_trained_length); a longer prompt is then a
        # ValueError. Set model.trained_pairs = None to evaluate at other lengths (length generalisation).
        self.trained_pairs = None

    def spec(self) -> dict:
        """The constructor's keyword arguments (JSON-able): ``Transformer(**m.spec(), rngs=...)`` has m's structure."""
        names = ("d", "num_layers", "width", "num_heads", "mlp_ratio", "encoding", "positional", "max_pairs",
                 "attention", "mlp", "layer_norm", "variance_head", "param_dtype")
        spec = {name: getattr(self, name) for name in names}
        if self.loops is not None or self.input_injection:  # absent at the defaults: unlooped specs are unchanged
            spec.update(loops=self._loop_count(), input_injection=bool(self.input_injection))
        if self.loop_norm:  # absent unless set: specs (and checkpoints) written before the option are unchanged
            spec.update(loop_norm=True)
        return spec

    def _loop_count(self) -> int:
        """How many times the block stack runs (``loops``, validated: it may be reassigned; None is 1)."""
        return 1 if self.loops is None else check_positive_int("loops", self.loops)

    def with_loops(self, loops: int) -> Transformer:
        """A copy of this model (same parameter values) that applies its block stack ``loops`` times."""
        loops = check_positive_int("loops", loops)
        model = nnx.clone(self)
        model.loops = loops
        return model

    def loop_outputs(self, prompts: Prompts, prefix: bool = False, *, stop_gradient_loops: int = 0):
        """The prediction read out after every loop: ``[loops, batch]`` (``[loops, batch, n]`` with ``prefix``).

        Entry ``t - 1`` is what the model with ``loops = t`` predicts (the final LayerNorm and read-out applied to
        the stream after ``t`` loops); the last entry is ``model(prompts)`` (or ``model.prefix(prompts)``). With
        ``variance_head`` a ``(mean, var)`` pair of those shapes. ``stop_gradient_loops``: no gradient flows back
        through the first that many loops (their values are unchanged; Yang et al. run them without gradients); an
        int ``>= 0``, or a traced integer scalar (a count that changes over training, as the loop curriculum's).
        Used by [`loop_window_loss`][icl.models.loop_window_loss].
        """
        if isinstance(stop_gradient_loops, jax.core.Tracer):  # a traced count (a loop curriculum inside icl.train)
            stop = jnp.asarray(stop_gradient_loops, jnp.int32)
            if stop.shape != () or not jnp.issubdtype(stop_gradient_loops.dtype, jnp.integer):
                raise ValueError(f"stop_gradient_loops must be an integer scalar, got {stop_gradient_loops}")
        else:
            stop = check_int("stop_gradient_loops", stop_gradient_loops, 0)
        return self._apply(f"loop_{'prefix' if _check_bool('prefix', prefix) else 'query'}", prompts, stop)

    def __call__(self, prompts: Prompts):
        """Prediction of the query, ``[batch]`` (``(mean, var)`` with ``variance_head``)."""
        return self._apply("query", prompts)

    def prefix(self, prompts: Prompts):
        """Every prefix's prediction ``[batch, n]``: entry ``k-1`` predicts ``y_k`` from the first ``k-1`` pairs.

        Equals the model run on the truncated prompt ``(x_1..x_{k-1}, y_1..y_{k-1}; x_k)`` for every ``k``, in
        one pass (interleaved: one causal pass read at the x tokens; stacked: a query stream beside the
        context stream, see the module docstring). Cost about one forward pass (two for stacked). Entry ``k-1``
        depends on ``x_1..x_k`` and ``y_1..y_{k-1}`` only: a NaN in ``y_j`` leaves the entries before ``j`` finite.
        """
        return self._apply("prefix", prompts)

    def attention_maps(self, prompts: Prompts) -> jax.Array:
        """Attention weights of the query call: ``[num_layers, batch, num_heads, T, T]`` (``num_layers * loops`` maps
        for a looped model, one per block application).

        ``T`` tokens: ``2n + 1`` for interleaved (``x_1, y_1, ..., x_n, y_n, x_q``), ``n + 1`` for stacked
        (``[x_i, y_i]`` then ``[x_q, 0]``); row ``t`` is what token ``t`` attends to (zero above the diagonal).
        With softmax attention every row sums to 1; with linear attention the entries are the unnormalised
        weights ``q.k / #pairs`` that multiply the values.
        """
        return self._apply("maps", prompts)

    def hidden_states(self, prompts: Prompts) -> list[jax.Array]:
        """The residual stream of the query call: ``num_layers + 1`` arrays ``[batch, T, width]`` (``num_layers * loops
        + 1`` for a looped model: the stream after every block application).

        Entry 0 is the embedded tokens (read-in plus positions), entry ``l`` the stream after block ``l``
        (before the final LayerNorm). Tokens as in ``attention_maps``; the last one (``T - 1``) is the
        query token, from which ``model(prompts)`` is read (for probes, Akyurek et al. 2023).
        """
        return self._apply("states", prompts)

    def _apply(self, what: str, prompts: Prompts, stop=0):
        """Validate (static shapes), then run ``what`` as one compiled program (cached per model structure and
        shape), so eager calls are fast; inside an outer ``jit``/``grad`` the inner ``jit`` is inlined. ``stop``
        (traced): the per-loop outputs' gradient stop (``loop_outputs``)."""
        self._check(prompts, what)
        self._loop_count()
        _check_bool("input_injection", self.input_injection)
        _check_bool("loop_norm", self.loop_norm)
        graphdef, state = nnx.split(self)
        return _compiled(graphdef, state, Prompts(*prompts), what, jnp.asarray(stop, jnp.int32))

    def _check(self, prompts: Prompts, what: str = "query") -> None:
        _, y = check_prompt_shapes(prompts, who="Transformer", d=self.d)
        n = np.shape(y)[1]
        extra = int(what.startswith(("prefix", "loop_prefix")))  # prefix never reads its last label: one position less
        if self.positional == "learned" and n > self.max_pairs + extra:
            raise ValueError(f"prompts have n={n} context pairs but the model has learned positions for at most "
                             f"max_pairs={self.max_pairs}{' (+1 for prefix)' if extra else ''}; build it with a "
                             "larger max_pairs or positional='none'")
        if self.positional == "learned" and self.trained_pairs is not None and n > self.trained_pairs + extra:
            raise ValueError(f"prompts have n={n} context pairs but this model was trained on prompts of "
                             f"trained_pairs={self.trained_pairs} pairs (the query as pair {self.trained_pairs + 1}); "
                             "its learned positions beyond them are untrained. To study length generalisation, "
                             "opt in with model.trained_pairs = None")

    def _run(self, what: str, prompts: Prompts, stop=0):
        x, y = prompts.x, prompts.y
        b, n, d = x.shape
        if self.encoding == "interleaved":  # x_1, [y_1, 0...0], ..., x_n, [y_n, 0...0] (, x_q)
            tokens = jnp.stack([x, jnp.pad(y[..., None], ((0, 0), (0, 0), (0, d - 1)))], axis=2).reshape(b, 2 * n, d)
            query = prompts.x_query
        else:  # [x_i, y_i] (, [x_q, 0])
            tokens = jnp.concatenate([x, y[..., None]], axis=-1)
            query = jnp.pad(prompts.x_query, ((0, 0), (0, 1)))
        if what in ("prefix", "loop_prefix"):
            every = [] if what == "loop_prefix" else None
            if self.encoding == "interleaved":  # the last label token is never read: 2n - 1 tokens
                h, _ = self._stream(tokens[:, :-1], every=every, stop=stop)
                return self._read(h[:, 0::2]) if every is None else self._read_loops([e[0][:, 0::2] for e in every])
            h = self._stream(tokens, jnp.pad(x, ((0, 0), (0, 0), (0, 1))), every=every, stop=stop)[1]
            return self._read(h) if every is None else self._read_loops([e[1] for e in every])
        if what == "loop_query":
            every = []
            self._stream(jnp.concatenate([tokens, query[:, None]], axis=1), every=every, stop=stop)
            return self._read_loops([e[0][:, -1] for e in every])
        maps, states = ([], []) if what in ("maps", "states") else (None, None)
        h, _ = self._stream(jnp.concatenate([tokens, query[:, None]], axis=1), None, maps, states)
        if what == "query":
            return self._read(h[:, -1])
        return jnp.stack(maps) if what == "maps" else states

    def _read_loops(self, streams: list):
        """The read-outs of the streams after each loop, stacked on a leading loop axis."""
        outs = [self._read(h) for h in streams]
        if self.log_var_out is None:
            return jnp.stack(outs)
        return jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])

    def _read(self, h: jax.Array):
        """The read-out (mean, or ``(mean, var)``) of the stream ``h [..., width]``, shape ``[...]``."""
        shape = h.shape[:-1]
        h = h.reshape(-1, h.shape[-1])
        h = h if self.loop_norm else _maybe(self.ln_f, h)  # with loop_norm every loop already ends with it
        mean = self.read_out(h).reshape(shape)
        return mean if self.log_var_out is None else (mean, jnp.exp(self.log_var_out(h)).reshape(shape))

    def _embed(self, tokens: jax.Array) -> jax.Array:
        """``[b * T, width]``: read-in plus positions of ``tokens [b, T, ·]``."""
        b, t, dim = tokens.shape
        h = self.read_in(tokens.reshape(b * t, dim)).reshape(b, t, -1)
        h = h if self.positions is None else h + self.positions[:t].astype(h.dtype)
        return h.reshape(b * t, -1)

    def _stream(self, tokens, queries=None, maps=None, states=None, every=None, stop=0):
        """Run the blocks over the causal context stream ``tokens [b, T, ·]`` and, if given, the query stream
        ``queries [b, T, ·]`` (query ``t`` sits at position ``t``, attends to context tokens ``< t`` and itself).
        Returns the final ``(h, g)``, each ``[b, T, width]`` (``g`` None without queries); appends each block's
        maps and the states, and to ``every`` the ``(h, g)`` after each loop. Inside, the streams are
        ``[b * T, width]``, so every layer but attention is one 2-D matmul (for 3-D activations XLA:CPU adds
        transposes to the gradient: 10-20% of a training step). Looped: the block stack runs ``loops`` times
        (``input_injection``: the embeddings re-added before each loop after the first); when neither maps, states
        nor per-loop streams are asked for, the loops are one ``jax.lax.fori_loop``. ``stop``: the streams after
        the first ``stop`` loops pass through ``jax.lax.stop_gradient``."""
        b, t, _ = tokens.shape
        position = np.arange(t)
        causal = position[:, None] >= position[None, :]
        # Linear attention's divisor: the complete context pairs each token attends (a query token is not one;
        # without a query stream a stacked prompt ends in its query [x_q, 0]).
        pairs = (position + 1) // 2 if self.encoding == "interleaved" else position + 1
        if queries is None and self.encoding == "stacked":
            pairs[-1] = t - 1
        query_mask = np.concatenate([causal & ~np.eye(t, dtype=bool), np.eye(t, dtype=bool)], axis=1)
        softmax = self.attention == "softmax"
        h = self._embed(tokens)
        g = None if queries is None else self._embed(queries)
        h0, g0 = h, g
        if states is not None:
            states.append(h.reshape(b, t, -1))

        def stack(h, g):
            for block in self.blocks:
                q, k, v = block.heads(h, b)
                weights, out = _attend(q, k, v, causal, pairs, softmax)
                if g is not None:  # query t: context keys < t, then its own key
                    qg, kg, vg = block.heads(g, b)
                    _, out_g = _attend(qg, jnp.concatenate([k, kg], 2), jnp.concatenate([v, vg], 2), query_mask,
                                       position, softmax)
                    g = block.mlp(block.attend_out(g, out_g))
                h = block.mlp(block.attend_out(h, out))
                if maps is not None:
                    maps.append(weights)
                if states is not None:
                    states.append(h.reshape(b, t, -1))
            return h, g

        def one_loop(h, g):  # the block stack, then (loop_norm) the final LayerNorm
            h, g = stack(h, g)
            if self.loop_norm:
                h, g = _maybe(self.ln_f, h), None if g is None else _maybe(self.ln_f, g)
            return h, g

        def inject(h, g):
            return h + h0, None if g is None else g + g0

        def shaped(h, g):
            return h.reshape(b, t, -1), None if g is None else g.reshape(b, t, -1)

        loops = self._loop_count()
        if loops > 1 and maps is None and states is None and every is None:
            def body(_, carry):
                h, g = carry if queries is not None else (carry, None)
                if self.input_injection:
                    h, g = inject(h, g)
                h, g = one_loop(h, g)
                return (h, g) if queries is not None else h

            h, g = one_loop(h, g)  # the first loop (no injection: Y_0 = 0), then loops 2..T
            out = jax.lax.fori_loop(1, loops, body, (h, g) if queries is not None else h)
            return shaped(*(out if queries is not None else (out, None)))
        for loop in range(loops):
            if loop and self.input_injection:
                h, g = inject(h, g)
            h, g = one_loop(h, g)
            if every is not None:  # per-loop outputs: no gradient through the first ``stop`` loops (traced)
                h = jnp.where(loop < stop, jax.lax.stop_gradient(h), h)
                g = None if g is None else jnp.where(loop < stop, jax.lax.stop_gradient(g), g)
                every.append(shaped(h, g))
        return shaped(h, g)


@functools.partial(jax.jit, static_argnames=("graphdef", "what"))
def _compiled(graphdef, state, prompts: Prompts, what: str, stop):
    return nnx.merge(graphdef, state)._run(what, prompts, stop)


def loop_window_loss(window: int, *, prefix: bool = False, truncate_backprop: bool = True,
                     loops_start: int | None = None, loops_step: int = 1, loops_every: int = 1):
    """Yang et al. (2023)'s truncated loss as an [`icl.train`][icl.training.train] ``loss_fn``: the squared error averaged over the
    last ``window`` loops (loops ``T - window + 1 .. T`` of a model with ``loops = T``; all when ``window >= T``).

    ``prefix=False``: the query's error (as ``loss="query"``); ``prefix=True``: the mean over the every-prefix
    predictions of the prompt extended by its query as pair ``n + 1`` (as ``loss="every_prefix"``; Yang et al.
    train on every prefix). ``truncate_backprop`` (default, as their code): no gradient flows through the loops
    before the window, so the backward pass costs ``window`` loops, not ``T``.

    The loop curriculum (Yang et al.'s, over the loop count): with ``loops_start``, training step ``s`` uses
    ``T(s) = min(model.loops, loops_start + loops_step * (s // loops_every))`` loops (the window is then loops
    ``T(s) - window + 1 .. T(s)``), so the model's ``loops`` is the final count ``b``. The loss receives the step
    (``icl.train`` passes it to a ``loss_fn`` with a ``step`` parameter); outside training (``step=None``) it uses
    ``T = model.loops``. Every step runs the model's ``loops`` loops forward (a curriculum step's later loops
    are computed and not used: same loss and gradient as a ``T(s)``-loop model, at the final count's cost).

    Use with a looped [`Transformer`][icl.models.Transformer] (any model with ``loops`` and ``loop_outputs(prompts, prefix,
    stop_gradient_loops=)``): ``icl.train(make, task, config, loss_fn=loop_window_loss(5))``.
    """
    window = check_positive_int("window", window)
    prefix = _check_bool("prefix", prefix)
    truncate_backprop = _check_bool("truncate_backprop", truncate_backprop)
    if loops_start is not None:
        loops_start = check_positive_int("loops_start", loops_start)
    loops_step = check_positive_int("loops_step", loops_step)
    loops_every = check_positive_int("loops_every", loops_every)

    def loss_fn(model, prompts: Prompts, step=None) -> jax.Array:
        loops = 1 if model.loops is None else check_positive_int("loops", model.loops)
        if loops_start is not None and loops_start > loops:
            raise ValueError(f"loops_start must be <= the model's loops={loops}, got {loops_start}")
        if prefix:
            prompts = Prompts(x=jnp.concatenate([prompts.x, prompts.x_query[:, None]], axis=1),
                              y=jnp.concatenate([prompts.y, prompts.y_query[:, None]], axis=1),
                              x_query=prompts.x_query, y_query=prompts.y_query, w=prompts.w)
            target = prompts.y
        else:
            target = prompts.y_query
        if loops_start is None or step is None:  # a fixed loop count
            stop = max(loops - window, 0) if truncate_backprop else 0
            outs = model.loop_outputs(prompts, prefix, stop_gradient_loops=stop)
            mean = outs[0] if isinstance(outs, tuple) else outs
            return jnp.mean((mean[-window:] - target[None]) ** 2)
        count = jnp.minimum(loops, loops_start + loops_step * (jnp.asarray(step) // loops_every))
        stop = jnp.maximum(count - window, 0) if truncate_backprop else jnp.zeros((), count.dtype)
        outs = model.loop_outputs(prompts, prefix, stop_gradient_loops=stop)
        mean = outs[0] if isinstance(outs, tuple) else outs
        per_loop = jnp.mean((mean - target[None]) ** 2, axis=tuple(range(1, mean.ndim)))  # [loops]
        t = jnp.arange(1, loops + 1)
        used = (t <= count) & (t > count - window)
        return jnp.sum(jnp.where(used, per_loop, 0.0)) / jnp.sum(used)

    loss_fn.__name__ = f"loop_window_loss_{window}" + ("" if loops_start is None else f"_from_{loops_start}")
    return loss_fn


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


# The figure lives in icl.plotting (which never sets matplotlib's backend); the name stays importable from here.
from icl.plotting import plot_attention_maps
