"""icl.Transformer: shapes, encodings, switches, validation, the LSA construction, every prefix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from flax import nnx

import icl
from tests.helpers import EXACT_F32, EXACT_F64, assert_close, x64

D, N, B = 3, 5, 4
SMALL = dict(num_layers=2, width=8, num_heads=2, mlp_ratio=2)  # two layers: causality across layers matters
ONE = dict(num_layers=1, width=8, num_heads=2, mlp_ratio=2)  # where depth does not matter (compiles faster)


def _prompts(d=D, n=N, b=B, seed=0, noise=0.1, dtype=jnp.float32):
    """Gaussian linear prompts drawn with numpy (eager JAX sampling would compile per shape)."""
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((b, n + 1, d)), rng.standard_normal((b, d))
    y = np.einsum("bnd,bd->bn", x, w) + noise * rng.standard_normal((b, n + 1))
    arrays = (x[:, :n], y[:, :n], x[:, n], y[:, n], w)
    return icl.Prompts(*(jnp.asarray(a, dtype) for a in arrays))


def _prefix_and_truncated(model, prompts, ks, reference=None):
    """``(model.prefix(prompts), [model(truncated k) for k in ks])`` as one compiled program (k=None: the prompt);
    with ``reference`` (a predictor) also ``[reference(truncated k) for k in ks]``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, prompts):
        m = nnx.merge(graphdef, state)
        cut = [prompts if k is None else _truncated(prompts, k) for k in ks]
        out = m.prefix(prompts), [m(c) for c in cut]
        return out if reference is None else (*out, [reference(c) for c in cut])

    return run(state, prompts)


def _truncated(prompts, k):
    """The prompt made of the first ``k - 1`` pairs with ``x_k`` as query (Garg's k-th prediction)."""
    return icl.Prompts(prompts.x[:, : k - 1], prompts.y[:, : k - 1], prompts.x[:, k - 1], prompts.y[:, k - 1],
                       prompts.w)


@pytest.mark.parametrize("encoding", ["interleaved", "stacked"])
@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_outputs_have_documented_shapes(encoding, attention):
    model = icl.Transformer(D, encoding=encoding, attention=attention, rngs=nnx.Rngs(0), **SMALL)
    prompts = _prompts()
    tokens = 2 * N + 1 if encoding == "interleaved" else N + 1
    shape = lambda f: jax.eval_shape(f, prompts)  # noqa: E731  (traced, not compiled: fast)
    assert shape(model).shape == (B,)
    assert shape(model.prefix).shape == (B, N)
    assert shape(model.attention_maps).shape == (2, B, 2, tokens, tokens)
    states = shape(model.hidden_states)
    assert len(states) == 3 and all(s.shape == (B, tokens, 8) for s in states)


@pytest.mark.parametrize("encoding", ["interleaved", "stacked"])
def test_prefix_equals_model_on_truncated_prompts(encoding):
    """Entry k-1 of prefix is the model run on (x_1..x_{k-1}, y_1..y_{k-1}; x_k), for k in {1, 2, n} (float64)."""
    with x64():
        model = icl.Transformer(D, encoding=encoding, param_dtype=jnp.float64, rngs=nnx.Rngs(1), **SMALL)
        prompts = _prompts(dtype=jnp.float64)
        ks = (1, 2, N)
        prefix, truncated = _prefix_and_truncated(model, prompts, ks)
        assert prefix.dtype == jnp.float64
        for k, out in zip(ks, truncated):
            assert_close(prefix[:, k - 1], out, EXACT_F64, f"{encoding} k={k}")


def test_model_called_inside_a_user_jit_gives_the_same_predictions():
    """icl's top-level programs compile with their own options; traced inside another jit they inline (float64)."""
    with x64():
        model = icl.Transformer(D, param_dtype=jnp.float64, rngs=nnx.Rngs(1), **SMALL)
        prompts = _prompts(dtype=jnp.float64)
        assert_close(jax.jit(lambda p: model.prefix(p))(prompts), model.prefix(prompts), EXACT_F64, "prefix")
        assert_close(jax.jit(lambda p: model(p))(prompts), model(prompts), EXACT_F64, "query")


def test_prefix_is_causal_in_later_pairs():
    """Changing pairs k..n leaves predictions 1..k-1 unchanged (and changes prediction k+1, for contrast)."""
    model = icl.Transformer(D, encoding="stacked", rngs=nnx.Rngs(2), **SMALL)
    prompts = _prompts()
    changed = prompts._replace(y=prompts.y.at[:, 2:].add(5.0))
    before, after = model.prefix(prompts), model.prefix(changed)
    np.testing.assert_array_equal(np.asarray(before[:, :3]), np.asarray(after[:, :3]))
    assert float(jnp.max(jnp.abs(before[:, 3] - after[:, 3]))) > 1e-4


def test_all_linear_stacked_model_holds_the_one_step_gd_construction():
    """von Oswald's construction in the all-linear one-layer model equals one GD step (float64, 1e-10)."""
    with x64():
        eta = 0.7
        model = icl.Transformer(D, num_layers=1, width=D + 1, num_heads=1, encoding="stacked", attention="linear",
                                mlp=False, layer_norm=False, positional="none", param_dtype=jnp.float64,
                                rngs=nnx.Rngs(0))
        icl.set_gd_construction(model, eta)
        prompts = _prompts(n=7, dtype=jnp.float64, noise=0.3)
        ks = (None, 2, 4, 7)
        prefix, queries, gd = _prefix_and_truncated(model, prompts, ks, reference=icl.gradient_descent(eta))
        for k, query, want in zip(ks, queries, gd):
            assert_close(query, want, EXACT_F64, f"query of the prompt truncated at k={k}")
            if k is not None:
                assert_close(prefix[:, k - 1], want, EXACT_F64, f"prefix k={k}")
        np.testing.assert_array_equal(np.asarray(prefix[:, 0]), 0.0)  # k = 1: no context, predicts 0


def test_gd_construction_rejects_a_model_that_cannot_hold_it():
    with pytest.raises(ValueError, match="all-linear"):
        icl.set_gd_construction(icl.Transformer(D, rngs=nnx.Rngs(0), **SMALL), 0.5)


def test_softmax_attention_rows_sum_to_one_and_are_causal():
    model = icl.Transformer(D, rngs=nnx.Rngs(0), **ONE)
    maps = np.asarray(model.attention_maps(_prompts()))
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=EXACT_F32)
    assert np.all(maps >= 0)
    assert np.all(np.triu(maps, k=1) == 0)


def test_linear_attention_divides_by_the_number_of_attended_pairs():
    """With unit keys/queries the interleaved weights of token t are 1/max(#pairs before it, 1)."""
    model = icl.Transformer(D, num_layers=1, width=4, num_heads=1, attention="linear", mlp=False, layer_norm=False,
                            positional="none", rngs=nnx.Rngs(0))
    block = model.blocks[0]
    model.read_in.kernel[...] = jnp.zeros((D, 4))
    model.read_in.bias[...] = jnp.ones(4) * 0.5  # every token embeds to 0.5 * ones: q.k = 1 with identity maps
    block.qkv.kernel[...] = jnp.concatenate([jnp.eye(4)] * 3, axis=1)
    block.qkv.bias[...] = jnp.zeros(12)
    maps = np.asarray(model.attention_maps(_prompts()))[0, 0, 0]
    pairs = np.maximum((np.arange(2 * N + 1) + 1) // 2, 1)
    np.testing.assert_allclose(maps, np.tril(np.ones_like(maps)) / pairs[:, None], rtol=EXACT_F32)


def test_switches_remove_their_components():
    def count(model):
        return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    full = icl.Transformer(D, rngs=nnx.Rngs(0), **SMALL)
    no_mlp = icl.Transformer(D, mlp=False, rngs=nnx.Rngs(0), **SMALL)
    no_ln = icl.Transformer(D, layer_norm=False, rngs=nnx.Rngs(0), **SMALL)
    no_pos = icl.Transformer(D, positional="none", rngs=nnx.Rngs(0), **SMALL)
    no_ln_mlp = icl.Transformer(D, layer_norm=False, mlp=False, rngs=nnx.Rngs(0), **SMALL)
    w, hidden = 8, 16
    assert count(full) - count(no_mlp) == 2 * (w * hidden + hidden + hidden * w + w + 2 * w)
    assert count(full) - count(no_ln) == (2 * 2 + 1) * 2 * w
    assert count(full) - count(no_pos) == (2 * 64 + 1) * w
    assert count(full) - count(no_ln_mlp) == count(full) - count(no_mlp) + (2 + 1) * 2 * w
    prompts = _prompts()
    assert all(jax.eval_shape(m, prompts).shape == (B,) for m in (full, no_mlp, no_ln, no_pos, no_ln_mlp))


def test_prompts_longer_than_max_pairs_are_rejected_unless_positions_are_off():
    model = icl.Transformer(D, max_pairs=4, rngs=nnx.Rngs(0), **ONE)
    with pytest.raises(ValueError, match="max_pairs"):
        model(_prompts(n=5))
    with pytest.raises(ValueError, match="max_pairs"):
        model.prefix(_prompts(n=6))
    assert jax.eval_shape(model, _prompts(n=4)).shape == (B,)
    assert jax.eval_shape(model.prefix, _prompts(n=5)).shape == (B, 5)  # its last label is never read
    free = icl.Transformer(D, max_pairs=4, positional="none", rngs=nnx.Rngs(0), **ONE)
    assert jax.eval_shape(free.prefix, _prompts(n=6)).shape == (B, 6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(width=10, num_heads=4), "width"),
        (dict(encoding="bidirectional"), "encoding"),
        (dict(attention="relu"), "attention"),
        (dict(positional="sinusoidal"), "positional"),
        (dict(num_layers=0), "num_layers"),
        (dict(max_pairs=0), "max_pairs"),
        (dict(mlp="yes"), "mlp"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = dict(SMALL) | kwargs
    with pytest.raises(ValueError, match=name):
        icl.Transformer(D, rngs=nnx.Rngs(0), **args)


def test_prompts_of_another_dimension_are_rejected_naming_d():
    model = icl.Transformer(D, rngs=nnx.Rngs(0), **ONE)
    with pytest.raises(ValueError, match="d mismatch"):
        model(_prompts(d=D + 1))


def test_variance_head_returns_mean_and_positive_variance():
    model = icl.Transformer(D, variance_head=True, rngs=nnx.Rngs(0), **ONE)
    assert model.returns_variance and not icl.Transformer.returns_variance
    prompts = _prompts()
    (pmean, pvar), [(mean2, var2), (mean, var)] = _prefix_and_truncated(model, prompts, (2, None))
    assert mean.shape == var.shape == (B,) and pmean.shape == pvar.shape == (B, N)
    assert bool(jnp.all(var > 0)) and bool(jnp.all(pvar > 0))
    assert_close(pmean[:, 1], mean2, 1e-5, "variance-head prefix mean")
    assert_close(pvar[:, 1], var2, 1e-5, "variance-head prefix variance")


def test_spec_is_json_and_rebuilds_the_same_structure():
    import json

    model = icl.Transformer(D, encoding="stacked", variance_head=True, mlp_ratio=2, num_layers=2, width=8,
                            num_heads=2, max_pairs=7, attention="linear", positional="none", rngs=nnx.Rngs(0))
    spec = json.loads(json.dumps(model.spec()))
    assert spec == dict(d=D, num_layers=2, width=8, num_heads=2, mlp_ratio=2, encoding="stacked", positional="none",
                        max_pairs=7, attention="linear", mlp=True, layer_norm=True, variance_head=True,
                        param_dtype="float32")
    again = icl.Transformer(**spec, rngs=nnx.Rngs(1))
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))  # noqa: E731
    assert shapes(model) == shapes(again)
    assert hash(nnx.graphdef(model)) == hash(nnx.graphdef(again))
    assert again.spec() == spec and again.returns_variance


def test_initialisation_follows_gpt2():
    """N(0, 0.02^2) weights, residual projections 0.02 / sqrt(2 L), read-in/out N(0, 1/fan_in), zero biases."""
    layers, width = 2, 64
    model = icl.Transformer(D, num_layers=layers, width=width, num_heads=2, rngs=nnx.Rngs(0))
    block = model.blocks[0]
    stds = {"qkv": (block.qkv.kernel, 0.02), "attn_out": (block.attn_out.kernel, 0.02 / np.sqrt(2 * layers)),
            "fc": (block.fc.kernel, 0.02), "fc_out": (block.fc_out.kernel, 0.02 / np.sqrt(2 * layers)),
            "positions": (model.positions, 0.02), "read_out": (model.read_out.kernel, 1 / np.sqrt(width))}
    for name, (param, std) in stds.items():
        value = np.asarray(param[...])
        assert abs(value.std() / std - 1) < 4 / np.sqrt(value.size) + 0.02, name
        assert abs(value.mean()) < 4 * std / np.sqrt(value.size), name
    np.testing.assert_array_equal(np.asarray(block.qkv.bias[...]), 0.0)
    np.testing.assert_array_equal(np.asarray(block.ln1.scale[...]), 1.0)
    np.testing.assert_array_equal(np.asarray(model.ln_f.bias[...]), 0.0)


@pytest.mark.parametrize("field, shape", [("x_query", (B, D + 1)), ("x_query", (B, 2, D)), ("y", (B, N + 1)),
                                          ("y", (B, N, 1)), ("y", (B + 1, N))])
def test_prompts_with_a_badly_shaped_field_are_rejected_naming_it(field, shape):
    model = icl.Transformer(D, rngs=nnx.Rngs(0), **ONE)
    bad = _prompts()._replace(**{field: jnp.zeros(shape)})
    for call in (model, model.prefix, model.hidden_states):
        with pytest.raises(ValueError, match=f"prompts.{field}"):
            call(bad)


@pytest.mark.parametrize("encoding", ["interleaved", "stacked"])
@pytest.mark.parametrize("attention", ["softmax", "linear"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_label_leaves_the_earlier_prefix_entries_untouched(encoding, attention, bad):
    """NaN/inf in y_j (0-based): prefix entries 0..j (which never see it) are finite and as on the clean prompt."""
    j = 2
    model = icl.Transformer(D, encoding=encoding, attention=attention, rngs=nnx.Rngs(4), **SMALL)
    prompts = _prompts()
    clean, dirty = jax.jit(lambda p: (model.prefix(p), model.prefix(p._replace(y=p.y.at[:, j].set(bad)))))(prompts)
    np.testing.assert_array_equal(np.asarray(dirty[:, : j + 1]), np.asarray(clean[:, : j + 1]))
    assert np.all(np.isfinite(np.asarray(dirty[:, : j + 1])))
    assert not np.any(np.isfinite(np.asarray(dirty[:, j + 1 :])))


_CAUSAL_MODEL = icl.Transformer(D, rngs=nnx.Rngs(5), max_pairs=N, **ONE)


@jax.jit
def _corrupted_prefix(prompts, j, value, in_x):
    """prefix of the prompt with pair j's label (or its whole input, ``in_x``) replaced by ``value``; j, value and
    in_x are traced, so every example shares one compiled program."""
    y = jnp.where(in_x, prompts.y, prompts.y.at[:, j].set(value))
    x = jnp.where(in_x, prompts.x.at[:, j].set(value), prompts.x)
    return _CAUSAL_MODEL.prefix(prompts._replace(x=x, y=y))


@settings(max_examples=12, deadline=None)
@given(j=st.integers(0, N - 1), value=st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -1e30]), in_x=st.booleans(),
       seed=st.integers(0, 2**16))
def test_prefix_entries_never_depend_on_later_pairs_whatever_those_hold(j, value, in_x, seed):
    """Causality for any corrupted pair: entries that predict y_k from pairs < k are exactly the clean ones for
    every k that pair j cannot reach (k <= j for a label, k < j for an input, which is also entry j's query).
    A mask that multiplied instead of selecting (0 * NaN) fails this for every j < N - 1."""
    prompts = _prompts(seed=seed)
    clean = np.asarray(_CAUSAL_MODEL.prefix(prompts))
    dirty = np.asarray(_corrupted_prefix(prompts, j, np.float32(value), in_x))
    reach = j if in_x else j + 1
    np.testing.assert_array_equal(dirty[:, :reach], clean[:, :reach])


def test_plot_attention_maps_draws_every_layer_and_head():
    model = icl.Transformer(D, rngs=nnx.Rngs(0), **ONE)
    fig = icl.plot_attention_maps(model, _prompts())
    assert len([ax for ax in fig.axes if ax.get_title()]) == 1 * 2
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_every_prefix_loss_trains_a_few_finite_steps():
    config = icl.TrainConfig(steps=4, batch=8, n=N, lr=1e-3, loss="every_prefix")
    task = icl.LinearRegressionTask.isotropic(D)
    tiny = dict(num_layers=1, width=4, num_heads=1, mlp=False)
    result = icl.train(lambda r: icl.Transformer(D, rngs=r, **tiny), task, config)
    assert result.losses.shape == (1, 4)
    assert np.all(np.isfinite(result.losses))


@pytest.mark.slow
def test_a_trained_model_refuses_prompts_longer_than_its_training_length_unless_asked():
    """icl.train records the length it trained at; untrained learned positions are never read silently."""
    task = icl.LinearRegressionTask.isotropic(3, 0.1)
    config = icl.TrainConfig(steps=2, batch=8, n=5, lr=1e-3, loss="every_prefix")
    result = icl.train(lambda rngs: icl.Transformer(3, num_layers=1, width=8, num_heads=2, max_pairs=12,
                                                    rngs=rngs), task, config)
    model = result.model(0)
    assert model.trained_pairs == 5
    p5, p6, p8 = (task.sample(jax.random.key(0), 4, n) for n in (5, 6, 8))
    model(p5), model.prefix(p5), model.prefix(p6)  # the trained lengths: the query is pair 6 of the loss
    with pytest.raises(ValueError, match=r"n=6 .* trained_pairs=5"):
        model(p6)
    with pytest.raises(ValueError, match=r"n=8 .* trained_pairs=5"):
        model.prefix(p8)
    model.trained_pairs = None  # a length-generalisation study opts in
    assert model(p8).shape == (4,)


def test_prefix_of_the_prompt_extended_by_its_query_ends_with_the_query_prediction():
    """Entry n + 1 of the every-prefix loss is exactly model(prompts): one position, trained once."""
    model = icl.Transformer(3, num_layers=2, width=16, num_heads=2, max_pairs=6, rngs=nnx.Rngs(1))
    p = icl.LinearRegressionTask.isotropic(3, 0.1).sample(jax.random.key(2), 4, 6)
    ext = icl.training.with_query_as_last_pair(p)
    np.testing.assert_allclose(np.asarray(model.prefix(ext))[:, -1], np.asarray(model(p)), rtol=1e-5, atol=1e-6)
