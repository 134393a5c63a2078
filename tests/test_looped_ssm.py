"""Looped transformers and state-space models: tied K-step GD theory (docs/theory.md §16), the looped sparse and
GPT-2-style models, the matrix-state linear RNN, S4D and the Mamba-style selective SSM (docs/models.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import EXACT_F64, assert_close, assert_within_se, mean_se, x64

import icl

D, N = 3, 8


def general_task(noise=0.3):
    return icl.LinearRegressionTask.from_eigenvalues([2.0, 1.0, 0.3], noise_std=noise, w_prior=np.diag([1.0, 0.7, 1.4]),
                                                     rotation_seed=3)


def prompts64(task, batch: int, n: int, seed: int) -> icl.Prompts:
    """Prompts of a Gaussian linear task as float64 numpy arrays (no sampling program to compile)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n + 1, task.d)) @ np.linalg.cholesky(task.x_cov).T
    w = rng.standard_normal((batch, task.d)) @ np.linalg.cholesky(task.w_cov).T
    y = np.einsum("bnd,bd->bn", x, w) + task.noise_std * rng.standard_normal((batch, n + 1))
    return icl.Prompts(x=x[:, :n], y=y[:, :n], x_query=x[:, n], y_query=y[:, n], w=w)


def truncated(p: icl.Prompts, k: int) -> icl.Prompts:
    """The first ``k - 1`` pairs with query ``x_k``: what ``prefix(p)[:, k - 1]`` predicts from."""
    return icl.Prompts(x=p.x[:, :k - 1], y=p.y[:, :k - 1], x_query=p.x[:, k - 1], y_query=p.y[:, k - 1], w=p.w)


# --------------------------------------------------------------------------------------------------------------
# Theory: tied K-step GD
# --------------------------------------------------------------------------------------------------------------


def test_tied_gd_risk_is_the_multistep_risk_at_equal_steps_and_its_polynomial():
    task, n = general_task(), 9
    for k in (1, 2, 4):
        etas = np.array([0.2, 0.55, 1.1])
        tied = icl.tied_gd_risk(etas, task, n, k)
        assert tied.shape == (3,) and tied.dtype == np.float64
        assert_close(tied, icl.multistep_gd_risk(np.repeat(etas[:, None], k, axis=1), task, n), 1e-12)
        coeffs = icl.tied_gd_risk_polynomial(task, n, k)
        assert coeffs.shape == (2 * k + 1,)
        assert_close(np.polynomial.polynomial.polyval(etas, coeffs), tied, 1e-12)
    eta1, r1 = icl.optimal_tied_step_size(task, n, 1)
    steps, r = icl.optimal_multistep_step_sizes(task, n, 1)
    assert eta1 == pytest.approx(steps[0], rel=1e-12) and r1 == pytest.approx(r, rel=1e-12)


@pytest.mark.parametrize("kind", ["isotropic", "general"])
def test_tied_gd_risk_matches_monte_carlo_within_4_se(kind):
    """K = 3 tied steps of GD (Sigma^{-1}-preconditioned for the general task), simulated in float64 numpy."""
    task = icl.LinearRegressionTask.isotropic(5, noise_std=0.5) if kind == "isotropic" else general_task()
    n, k, eta, count = 10, 3, 0.6, 40_000
    rng = np.random.default_rng(7)
    lx, lw = np.linalg.cholesky(task.x_cov), np.linalg.cholesky(task.w_cov)
    x = rng.standard_normal((count, n + 1, task.d)) @ lx.T
    w = rng.standard_normal((count, task.d)) @ lw.T
    y = np.einsum("bnd,bd->bn", x, w) + task.noise_std * rng.standard_normal((count, n + 1))
    prec = np.linalg.inv(task.x_cov)
    wk = np.zeros_like(w)
    for _ in range(k):
        grad = np.einsum("bnd,bn->bd", x[:, :n], np.einsum("bnd,bd->bn", x[:, :n], wk) - y[:, :n]) / n
        wk = wk - eta * grad @ prec.T
    err = (np.einsum("bd,bd->b", x[:, n], wk) - y[:, n]) ** 2
    assert_within_se(*mean_se(err), icl.tied_gd_risk(eta, task, n, k), what=f"tied GD ({kind})")


def test_optimal_tied_step_size_is_the_grid_minimum_and_pinned_values():
    task, n = icl.LinearRegressionTask.isotropic(5, noise_std=0.0), 20
    expected = {2: (0.7425181413, 0.4990073880), 3: (0.7155867242, 0.2683422178)}
    for k, (eta_ref, r_ref) in expected.items():
        eta, r = icl.optimal_tied_step_size(task, n, k)
        assert eta == pytest.approx(eta_ref, rel=1e-8) and r == pytest.approx(r_ref, rel=1e-8)
        grid = np.linspace(0.01, 2 * n / (n + 5 + 1), 300)
        risks = icl.tied_gd_risk(grid, task, n, k)
        assert r <= risks.min() + 1e-13 and abs(eta - grid[np.argmin(risks)]) <= grid[1] - grid[0]
        assert r >= icl.optimal_multistep_step_sizes(task, n, k)[1]  # tying never helps
    # K = 1: Mahankali et al.'s eta* = n / (n + d + 1 + sigma^2 / tau^2)
    eta, _ = icl.optimal_tied_step_size(icl.LinearRegressionTask.isotropic(5, noise_std=0.5), n, 1)
    assert eta == pytest.approx(n / (n + 5 + 1 + 0.25), rel=1e-12)
    # large K stays exact: evaluated in rational arithmetic, it equals the float risk where that is accurate
    eta, r = icl.optimal_tied_step_size(task, n, 12)
    assert 0 < eta < 0.7 and 0 < r < icl.optimal_tied_step_size(task, n, 11)[1]


def test_tied_theory_validates_its_arguments():
    task = general_task()
    with pytest.raises(ValueError, match="num_steps"):
        icl.optimal_tied_step_size(task, 5, 0)
    with pytest.raises(ValueError, match="step_size"):
        icl.tied_gd_risk(float("nan"), task, 5, 2)
    with pytest.raises(ValueError, match=r"\bn\b"):
        icl.tied_gd_risk(0.5, task, 0, 2)
    with pytest.raises(ValueError, match="Gaussian"):
        icl.tied_gd_risk(0.5, icl.UniformLinearTask(3), 5, 2)


# --------------------------------------------------------------------------------------------------------------
# Looped sparse linear transformer
# --------------------------------------------------------------------------------------------------------------


def test_looped_sparse_from_gd_runs_tied_gd_exactly_in_float64():
    task, k, eta = general_task(), 4, 0.45
    prec = np.linalg.inv(task.x_cov)
    with x64():
        p = prompts64(task, 16, N, 1)
        tied = icl.SparseLinearTransformer.from_gd(D, eta, prec, loops=k)
        gd = icl.gradient_descent([eta] * k, prec)
        untied = icl.SparseLinearTransformer.from_gd(D, [eta] * k, prec)
        assert_close(tied(p), gd(p), EXACT_F64, "tied model vs K GD steps")
        assert_close(tied.prefix(p), gd.prefix(p), EXACT_F64, "tied prefix vs GD on every prefix")
        assert_close(tied.prefix(p), untied.prefix(p), EXACT_F64, "looped GD form vs the Gram form")
        np.testing.assert_allclose(tied.step_matrices(), np.broadcast_to(eta * prec, (k, D, D)), rtol=1e-14)
        np.testing.assert_allclose(icl.layer_step_sizes(tied, task.x_cov), [eta], rtol=1e-12)
        assert len(tied.hidden_states(p)) == k + 1
        assert_close(tied.hidden_states(p)[-1][:, -1, -1], -gd(p), EXACT_F64)
        two = tied.with_loops(2)  # a copy: the loop count is set at prediction time, the parameters are shared values
        assert tied.loops == k and two.spec()["loops"] == 2
        assert_close(two(p), icl.gradient_descent([eta] * 2, prec)(p), EXACT_F64)
        tied.loops = 1
        assert "loops" not in tied.spec()
        assert_close(tied(p), icl.gradient_descent(eta, prec)(p), EXACT_F64)
        tied.loops = 0
        with pytest.raises(ValueError, match="loops"):
            tied(p)
        with pytest.raises(ValueError, match="loops"):
            two.with_loops(0)
        assert_refuses_another_d(two)


@pytest.mark.slow
def test_looped_sparse_prefix_equals_the_model_on_truncated_prompts():
    with x64():
        model = icl.SparseLinearTransformer(D, 2, loops=3, init_scale=0.4, rngs=nnx.Rngs(2))
        for layer in model.layers:
            layer.a_mat[...] = jnp.asarray(layer.a_mat[...], jnp.float64)
        p = prompts64(general_task(), 6, N, 3)
        pre = model.prefix(p)
        for k in (1, 4, N):
            assert_close(pre[:, k - 1], model(truncated(p, k)) if k > 1 else jnp.zeros(6), EXACT_F64)


# --------------------------------------------------------------------------------------------------------------
# Looped Transformer
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [pytest.param("interleaved", marks=pytest.mark.slow), "stacked"])
def test_looped_transformer_shares_weights_reads_every_loop_and_keeps_the_default(encoding):
    kw = {"num_layers": 1, "width": 8, "num_heads": 2, "max_pairs": N, "encoding": encoding, "param_dtype": jnp.float64}
    with x64():
        p = prompts64(icl.LinearRegressionTask.isotropic(D, noise_std=0.1), 4, N, 0)
        base = icl.Transformer(D, **kw, rngs=nnx.Rngs(0))
        looped = icl.Transformer(D, **kw, loops=3, input_injection=True, rngs=nnx.Rngs(0))
        assert "loops" not in base.spec() and looped.spec()["loops"] == 3 and looped.spec()["input_injection"]
        base_leaves = jax.tree.leaves(nnx.state(base, nnx.Param))
        looped_leaves = jax.tree.leaves(nnx.state(looped, nnx.Param))
        assert [a.shape for a in base_leaves] == [a.shape for a in looped_leaves]  # the same parameters
        outs = looped.loop_outputs(p)
        assert outs.shape == (3, 4)
        assert_close(outs[0], base(p), EXACT_F64, "one loop is the unlooped model")
        assert_close(outs[-1], looped(p), EXACT_F64, "the fori_loop path vs the unrolled one")
        if encoding == "interleaved":  # the every-prefix paths (slow: four more programs to compile)
            pre = looped.loop_outputs(p, prefix=True)
            assert pre.shape == (3, 4, N)
            assert_close(pre[0], base.prefix(p), EXACT_F64)
            assert_close(pre[-1], looped.prefix(p), EXACT_F64)
            assert_close(pre[-1][:, 4], looped(truncated(p, 5)), EXACT_F64, "prefix = truncated prompt")
        window = float(icl.loop_window_loss(2)(looped, p))  # Yang et al.'s truncated loss: the last 2 loops
        assert window == pytest.approx(float(np.mean((np.asarray(outs[1:]) - p.y_query) ** 2)), rel=1e-12)
        plain = looped.with_loops(3)  # a copy, set at prediction time; without injection only loops 2..T change
        plain.input_injection = False
        plain_outs = plain.loop_outputs(p)
        assert_close(plain_outs[0], outs[0], EXACT_F64)
        assert float(jnp.max(jnp.abs(plain_outs[1:] - outs[1:]))) > 1e-6
        looped.loops = 0
        with pytest.raises(ValueError, match="loops"):
            looped(p)


@pytest.mark.slow
def test_loop_norm_closes_every_loop_with_the_final_layer_norm_and_one_loop_is_the_standard_model():
    kw = {"num_layers": 1, "width": 8, "num_heads": 2, "max_pairs": N, "encoding": "stacked", "param_dtype": jnp.float64}
    with x64():
        p = prompts64(icl.LinearRegressionTask.isotropic(D, noise_std=0.1), 4, N, 0)
        base = icl.Transformer(D, **kw, rngs=nnx.Rngs(0))
        plain = icl.Transformer(D, **kw, loops=3, input_injection=True, rngs=nnx.Rngs(0))
        normed = icl.Transformer(D, **kw, loops=3, input_injection=True, loop_norm=True, rngs=nnx.Rngs(0))
        assert normed.spec()["loop_norm"] and "loop_norm" not in plain.spec()  # old specs and checkpoints unchanged
        assert icl.Transformer(**normed.spec(), rngs=nnx.Rngs(1)).loop_norm
        outs = normed.loop_outputs(p)
        assert_close(outs[0], base(p), EXACT_F64, "one loop with loop_norm is the unlooped model")
        assert_close(outs[-1], normed(p), EXACT_F64, "the fori_loop path vs the unrolled one")
        assert float(jnp.max(jnp.abs(outs[1:] - plain.loop_outputs(p)[1:]))) > 1e-6
    with pytest.raises(ValueError, match="loop_norm"):
        icl.Transformer(D, num_layers=1, width=8, num_heads=2, loop_norm="yes", rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_loop_window_loss_trains_a_looped_transformer():
    task = icl.LinearRegressionTask.isotropic(D, noise_std=0.1)
    config = icl.TrainConfig(steps=8, batch=32, n=N, lr=1e-3)
    make = lambda rngs: icl.Transformer(D, num_layers=1, width=8, num_heads=1, max_pairs=N, loops=3,
                                        input_injection=True, rngs=rngs)
    result = icl.train(make, task, config, loss_fn=icl.loop_window_loss(2))
    assert np.all(np.isfinite(result.losses))
    every = icl.train(make, task, config, loss_fn=icl.loop_window_loss(2, prefix=True))
    assert np.all(np.isfinite(every.losses))
    model = result.model(0)
    p = task.sample(jax.random.key(5), 64, N)
    outs = model.loop_outputs(p)
    want = float(jnp.mean((outs[1:] - p.y_query) ** 2))
    assert float(icl.loop_window_loss(2)(model, p)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="window"):
        icl.loop_window_loss(0)


@pytest.mark.slow
def test_loop_curriculum_loss_at_a_step_equals_the_fixed_count_loss_with_its_gradient_in_float64():
    """Yang et al.'s curriculum: at training step s the loss (and its truncated gradient) is that of the same
    weights run with T(s) = min(loops, start + step * (s // every)) loops, the step passed traced as in icl.train."""
    task = general_task(0.2)
    with x64():
        model = icl.Transformer(D, num_layers=1, width=8, num_heads=2, max_pairs=5, loops=4, input_injection=True,
                                param_dtype=jnp.float64, rngs=nnx.Rngs(3))
        p = prompts64(task, 8, 4, seed=11)
        curriculum = icl.loop_window_loss(2, prefix=True, loops_start=2, loops_step=1, loops_every=10)
        assert icl.training.takes_step(curriculum) and not icl.training.takes_step(lambda model, prompts: 0.0)
        graphdef, params = nnx.split(model)

        at_step = jax.jit(jax.value_and_grad(lambda v, s: curriculum(nnx.merge(graphdef, v), p, step=s)))

        for step, count in [(9, 2), (1000, 4)]:
            fixed_graph, _ = nnx.split(model.with_loops(count))
            want, want_grad = jax.jit(jax.value_and_grad(
                lambda v: icl.loop_window_loss(2, prefix=True)(nnx.merge(fixed_graph, v), p)))(params)
            got, got_grad = at_step(params, jnp.asarray(step))
            assert_close(got, want, EXACT_F64, f"loss at step {step} (T = {count})")
            for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
                assert_close(a, b, EXACT_F64, f"truncated gradient at step {step} (T = {count})")
        # outside training (no step) the curriculum loss is the final count's
        assert_close(curriculum(model, p), icl.loop_window_loss(2, prefix=True)(model, p), EXACT_F64)
    for bad in (dict(loops_start=0), dict(loops_start=2, loops_every=0), dict(loops_start=2, loops_step=-1)):
        with pytest.raises(ValueError, match="loops_"):
            icl.loop_window_loss(2, **bad)
    with pytest.raises(ValueError, match="loops_start"):
        icl.loop_window_loss(2, loops_start=5)(model, p, step=0)


def test_train_passes_the_step_to_a_loss_with_a_step_parameter():
    task = icl.LinearRegressionTask.isotropic(D, noise_std=0.1)
    config = icl.TrainConfig(steps=6, batch=8, n=N, lr=1e-6)
    seen = icl.train(lambda r: icl.LinearTransformer(D, 1, rngs=r), task, config,
                     loss_fn=lambda model, prompts, step: step.astype(jnp.float32))
    np.testing.assert_array_equal(seen.losses[0], np.arange(6))  # the loss recorded at step s is s


# --------------------------------------------------------------------------------------------------------------
# State-space models
# --------------------------------------------------------------------------------------------------------------


def test_linear_rnn_from_an_lsa_equals_it_at_every_prefix_in_float64():
    with x64():
        lsa = icl.LinearTransformer(D, 1, init_scale=0.5, rngs=nnx.Rngs(4))
        layer = lsa.layers[0]
        layer.w_pv[...] = jnp.asarray(layer.w_pv[...], jnp.float64)  # full matrices: every LSA term is present
        layer.w_kq[...] = jnp.asarray(layer.w_kq[...], jnp.float64)
        p = prompts64(general_task(), 8, N, 6)
        rnn = icl.LinearRNN.from_linear_transformer(lsa)
        assert rnn.w_value[...].dtype == jnp.float64 and rnn.spec()["state_size"] == D + 1
        assert_close(rnn(p), lsa(p), EXACT_F64, "query")
        pre = rnn.prefix(p)
        assert_close(pre, lsa.prefix(p), EXACT_F64, "every prefix")
        np.testing.assert_array_equal(pre[:, 0], 0.0)  # k = 1 reads the empty state
        assert_close(pre[:, 5], rnn(truncated(p, 6)), EXACT_F64)
        long = prompts64(general_task(), 4, 3 * N, 7)  # any length: no positions
        assert_close(rnn(long), lsa(long), EXACT_F64)
        assert_refuses_another_d(rnn)
    with pytest.raises(ValueError, match="one-layer"):
        icl.LinearRNN.from_linear_transformer(icl.LinearTransformer(D, 2, rngs=nnx.Rngs(0)))


def test_linear_scan_is_the_recurrence():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.2, 1.0, (2, 9, 3)), rng.standard_normal((2, 9, 3))
    with x64():
        h = np.asarray(icl.linear_scan(jnp.asarray(a), jnp.asarray(b)))
    ref, state = np.zeros_like(b), np.zeros((2, 3))
    for t in range(9):
        state = a[:, t] * state + b[:, t]
        ref[:, t] = state
    assert_close(h, ref, EXACT_F64, "associative scan")


def s4d_convolution_is_the_recurrence(model):
    """S4D's convolution view: ``sum_{s<=t} K_{t-s} u_s`` with ``model.kernels`` equals the recurrence."""
    rng = np.random.default_rng(1)
    block, width = model.blocks[0], model.width
    u = rng.standard_normal((2, 7, width))
    a_bar, b_bar = (np.asarray(m) for m in block.discretised())
    kernel = np.asarray(model.kernels(7))[0]
    s, ys = np.zeros((2, width, model.state_size)), []
    for t in range(7):  # s_t = A_bar s_{t-1} + B_bar u_t, y_t = C s_t
        s = a_bar * s + b_bar * u[:, t, :, None]
        ys.append(np.sum(s * np.asarray(block.c[...]), axis=-1))
    conv = np.stack([sum(kernel[:, j] * u[:, t - j] for j in range(t + 1)) for t in range(7)], axis=1)
    assert_close(conv, np.stack(ys, axis=1), EXACT_F64, "K * u")


@pytest.mark.parametrize("cls", [icl.DiagonalSSM, icl.SelectiveSSM], ids=["DiagonalSSM", "SelectiveSSM"])
def test_ssm_prefix_is_causal_in_one_pass_and_takes_longer_prompts(cls):
    with x64():
        model = cls(D, num_layers=2, width=8, state_size=4, param_dtype="float64", rngs=nnx.Rngs(0))
        p = prompts64(general_task(), 4, N, 8)
        pre = model.prefix(p)
        np.testing.assert_array_equal(np.isfinite(pre), True)
        assert_close(pre[:, 2], model(truncated(p, 3)), EXACT_F64, "prefix = truncated prompt")
        y_nan = p.y.copy()
        y_nan[:, 4] = np.nan
        nan = model.prefix(p._replace(y=y_nan))  # y_5 reaches entries k >= 6 only
        assert np.all(np.isfinite(nan[:, :5])) and not np.any(np.isfinite(nan[:, 5:]))
        longer = model(prompts64(general_task(), 4, 4 * N, 9))  # no positions: any length
        assert longer.shape == (4,) and np.all(np.isfinite(longer))
        assert_refuses_another_d(model)
        if cls is icl.DiagonalSSM:
            s4d_convolution_is_the_recurrence(model)


def test_new_models_validate_their_arguments():
    rngs = nnx.Rngs(0)
    for make, name in [(lambda: icl.LinearRNN(D, 0, rngs=rngs), "state_size"),
                       (lambda: icl.DiagonalSSM(D, state_size=0, rngs=rngs), "state_size"),
                       (lambda: icl.SelectiveSSM(D, state_size=-1, rngs=rngs), "state_size"),
                       (lambda: icl.SelectiveSSM(D, conv_width=0, rngs=rngs), "conv_width"),
                       (lambda: icl.SelectiveSSM(D, dt_rank=0, rngs=rngs), "dt_rank"),
                       (lambda: icl.DiagonalSSM(D, dt_min=0.5, dt_max=0.1, rngs=rngs), "dt_min"),
                       (lambda: icl.DiagonalSSM(D, num_layers=0, rngs=rngs), "num_layers"),
                       (lambda: icl.DiagonalSSM(0, rngs=rngs), r"\bd\b"),
                       (lambda: icl.SparseLinearTransformer(D, loops=0, rngs=rngs), "loops"),
                       (lambda: icl.Transformer(D, num_layers=1, width=4, num_heads=1, loops=0, rngs=rngs), "loops"),
                       (lambda: icl.Transformer(D, num_layers=1, width=4, num_heads=1, input_injection=1, rngs=rngs),
                        "input_injection")]:
        with pytest.raises(ValueError, match=name):
            make()


def test_new_models_build_under_eval_shape_as_icl_train_builds_them():
    for make in (lambda: icl.LinearRNN(D, rngs=nnx.Rngs(0)),
                 lambda: icl.DiagonalSSM(D, num_layers=1, width=8, state_size=4, rngs=nnx.Rngs(0)),
                 lambda: icl.SelectiveSSM(D, num_layers=1, width=8, state_size=4, rngs=nnx.Rngs(0)),
                 lambda: icl.SparseLinearTransformer(D, loops=3, rngs=nnx.Rngs(0))):
        model = nnx.eval_shape(make)
        assert jax.tree.leaves(nnx.state(model, nnx.Param))


def assert_refuses_another_d(model):
    with pytest.raises(ValueError, match="d="):
        model(prompts64(icl.LinearRegressionTask.isotropic(D + 1), 2, 4, 0))


# --------------------------------------------------------------------------------------------------------------
# The whole protocol: train, checkpoint, compare, error curve, fingerprint, probe (slow: ~10-25 s a model on 2
# cores, mostly compiling; the default suite checks the protocol's members in tests/test_protocol.py)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda rngs: icl.LinearRNN(D, rngs=rngs),
    lambda rngs: icl.DiagonalSSM(D, num_layers=1, width=8, state_size=4, rngs=rngs),
    lambda rngs: icl.SelectiveSSM(D, num_layers=1, width=8, state_size=4, rngs=rngs),
    lambda rngs: icl.SparseLinearTransformer(D, 1, loops=3, rngs=rngs),
], ids=["LinearRNN", "DiagonalSSM", "SelectiveSSM", "LoopedSparseLinearTransformer"])
def test_new_models_go_through_every_analysis(make, tmp_path):
    task = icl.LinearRegressionTask.isotropic(D, noise_std=0.1)
    config = icl.TrainConfig(steps=6, batch=32, n=N, lr=0.01, loss="every_prefix")
    trained = icl.train(make, task, config)
    assert np.all(np.isfinite(trained.losses))
    loaded = icl.load_checkpoint(icl.save_checkpoint(tmp_path / "ck", trained))  # rebuilt from spec()
    model = loaded.model(0)
    p = task.sample(jax.random.key(1), 16, N)
    np.testing.assert_array_equal(np.asarray(model(p)), np.asarray(trained.model(0)(p)))
    cmp = icl.compare_predictors({"m": model}, task, jax.random.key(2), N, num_prompts=256, chunk_size=256)
    assert np.isfinite(cmp.losses["m"][0])
    curve = icl.error_curve(model, task, jax.random.key(3), N, num_prompts=256, chunk_size=256)
    assert np.asarray(curve.mean).shape == (N,)
    fp = icl.fingerprint(model, task, jax.random.key(4), N, candidates=["gd"], num_prompts=256, num_ilwd_prompts=0)
    assert fp is not None and "gd" in fp.spd
    probed = icl.probe(model, task, jax.random.key(5), N, targets=("w",), num_prompts=64)
    assert all(len(v) == len(model.hidden_states(p)) for v in probed.r2.values())
