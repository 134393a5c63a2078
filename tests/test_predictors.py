"""Predictors (icl.predictors): the protocol, every factory's prefix, each identity once, numerics, bad inputs.

Exact identities run in float64 at tiny shapes (d = 3, n = 7, batch 8), and almost every test uses that one
shape (in float64 or float32), because compilation dominates the cost: the library jits its inner loops at
module level (least squares, ridge and Bayes share one program per shape), and predictors are called eagerly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import icl
import icl.protocol
import icl.predictors as ip
from icl.tasks import Prompts
from tests.helpers import assert_close, rel_err, x64

D, N, B = 3, 7, 8


def call(p, prompts):
    return p(prompts)


def prefix(p, prompts):
    return p.prefix(prompts)


def make_prompts(seed=0, b=B, n=N, d=D, noise=0.3, cov=None, dtype=np.float64, w=None) -> Prompts:
    """Gaussian prompts built in numpy (x ~ N(0, cov), w ~ N(0, I)), cast to ``dtype``."""
    rng = np.random.default_rng(seed)
    root = np.eye(d) if cov is None else np.linalg.cholesky(cov)
    x = rng.normal(size=(b, n + 1, d)) @ root.T
    w = rng.normal(size=(b, d)) if w is None else np.broadcast_to(w, (b, d))
    y = np.einsum("bnd,bd->bn", x, w) + noise * rng.normal(size=(b, n + 1))
    c = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    return Prompts(x=c(x[:, :n]), y=c(y[:, :n]), x_query=c(x[:, n]), y_query=c(y[:, n]), w=c(w))


def truncated(prompts: Prompts, k: int) -> Prompts:
    """The prompt whose context is the first ``k - 1`` pairs and whose query is ``x_k`` (prefix entry k-1)."""
    return prompts._replace(x=prompts.x[:, : k - 1], y=prompts.y[:, : k - 1], x_query=prompts.x[:, k - 1],
                            y_query=prompts.y[:, k - 1])


OMEGA = np.diag([1.5, 0.7, 0.4])

FACTORIES = {
    "gd_one_step_preconditioned": lambda: ip.gradient_descent(0.4, np.diag([1.0, 0.5, 2.0]) + 0.1),
    "gd_three_steps_per_step_preconditioners": lambda: ip.gradient_descent(
        [0.3, 0.2, 0.1], np.stack([np.eye(D), np.diag([0.5, 1.0, 1.5]), np.eye(D) + 0.05])),
    "gd_plus_plus": lambda: ip.gd_plus_plus([0.5, 0.4, 0.3], [0.2, 0.1], np.eye(D) + 0.1),
    "ridge": lambda: ip.ridge(0.3),
    "least_squares": ip.least_squares,
    "bayes_noisy": lambda: ip.BayesPosteriorMean(OMEGA, 0.3),
    "bayes_noiseless": lambda: ip.BayesPosteriorMean(OMEGA, 0.0),
    "bayes_predictive": lambda: ip.BayesPredictive(OMEGA, 0.3),
    "averaging": ip.averaging,
    "knn": lambda: ip.knn(3),
    "lasso": lambda: ip.lasso(0.05, steps=50),
    "nadaraya_watson": lambda: ip.nadaraya_watson(0.8),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_prefix_entry_k_equals_the_predictor_on_the_first_k_minus_1_pairs(name):
    with x64():
        p = FACTORIES[name]()
        prompts = make_prompts(seed=1)
        got = prefix(p, prompts)
        icl.protocol.check_output(name, got, prompts, prefix=True)
        got_mean = got[0] if icl.protocol.returns_variance(p) else got
        # k = 1: the explicit no-data answer, 0 (and the prior predictive variance for Bayes).
        assert np.all(np.asarray(got_mean[:, 0]) == 0.0)
        if icl.protocol.returns_variance(p):
            x1 = np.asarray(prompts.x[:, 0])
            assert_close(got[1][:, 0], 0.09 + np.einsum("bi,ij,bj->b", x1, OMEGA, x1), what=f"{name} k=1 var")
        for k in (D, N):  # with k = 1 above: the lengths 1, d, n (each k is a new shape to compile)
            want = call(p, truncated(prompts, k))
            icl.protocol.check_output(name, want, truncated(prompts, k))
            if icl.protocol.returns_variance(p):
                assert_close(got[0][:, k - 1], want[0], what=f"{name} mean k={k}")
                assert_close(got[1][:, k - 1], want[1], what=f"{name} var k={k}")
            else:
                assert_close(got[:, k - 1], want, what=f"{name} k={k}")


def test_one_gd_step_is_eta_a_h():
    with x64():
        prompts = make_prompts(seed=2)
        a = np.diag([1.0, 0.5, 2.0]) + 0.1
        x, y, xq = (np.asarray(v) for v in (prompts.x, prompts.y, prompts.x_query))
        w = 0.4 * np.einsum("ij,bnj,bn->bi", a, x, y) / N  # w_1 = eta A X^T y / n
        assert_close(call(ip.gradient_descent(0.4, a), prompts), np.einsum("bd,bd->b", xq, w))
        assert_close(ip.gd_weights(prompts.x, prompts.y, 0.4, a), w)


def test_recursive_least_squares_is_ridge():
    with x64():
        prompts = make_prompts(seed=3)
        rls = ip.recursive_least_squares_weights(prompts.x, prompts.y, 0.7)  # entry k-1: after k pairs
        assert_close(rls[:, N - 1], ip.ridge_weights(prompts.x, prompts.y, 0.7))


def test_ridge_matches_its_closed_form_and_bayes_with_an_isotropic_prior_is_ridge():
    with x64():
        prompts = make_prompts(seed=4)
        x, y = np.asarray(prompts.x), np.asarray(prompts.y)
        gram = np.einsum("bni,bnj->bij", x, x) + 0.5 * np.eye(D)
        w = np.linalg.solve(gram, np.einsum("bnd,bn->bd", x, y)[..., None])[..., 0]
        assert_close(ip.ridge_weights(prompts.x, prompts.y, 0.5), w)
        tau2, sigma = 2.0, 1.0  # lam = sigma^2 / tau^2
        task = icl.LinearRegressionTask.isotropic(D, noise_std=sigma, tau=np.sqrt(tau2))
        assert_close(call(ip.bayes_posterior_mean(task), prompts), call(ip.ridge(sigma**2 / tau2), prompts))
        assert_close(prefix(ip.bayes_posterior_mean(task), prompts), prefix(ip.ridge(sigma**2 / tau2), prompts))


def test_posterior_and_predictive_variance_match_the_textbook_formulas():
    with x64():
        prompts = make_prompts(seed=5)
        x, y, xq = (np.asarray(v) for v in (prompts.x, prompts.y, prompts.x_query))
        sigma = 0.3
        cov = np.linalg.inv(np.einsum("bni,bnj->bij", x, x) / sigma**2 + np.linalg.inv(OMEGA))
        mean, got_cov = ip.posterior(prompts.x, prompts.y, OMEGA, sigma)
        assert_close(got_cov, cov)
        assert_close(mean, np.einsum("bij,bnj,bn->bi", cov, x, y) / sigma**2)
        m, v = call(ip.BayesPredictive(OMEGA, sigma), prompts)
        assert_close(v, sigma**2 + np.einsum("bi,bij,bj->b", xq, cov, xq))


def test_least_squares_is_the_minimum_norm_solution_for_n_below_d_and_rank_deficient_contexts():
    with x64():
        p = make_prompts(seed=6)
        # rank 2 < d: two random rows, then duplicates of them and a zero row (n = 7)
        x = jnp.concatenate([p.x[:, :2], p.x[:, :2], p.x[:, :1], 0 * p.x[:, :1], p.x[:, 1:2]], 1)
        y = jnp.concatenate([p.y[:, :2], p.y[:, :2], p.y[:, :1], 0 * p.y[:, :1], p.y[:, 1:2]], 1)
        p = p._replace(x=x, y=y)
        xn, yn = np.asarray(x), np.asarray(y)
        want = np.einsum("bdn,bn->bd", np.linalg.pinv(xn), yn)
        assert_close(ip.least_squares_weights(x, y), want, rtol=1e-9)
        # n < d: the prefix entries that use 1 and 2 pairs
        pre = np.asarray(prefix(ip.least_squares(), p))
        for m in (1, 2):
            w_m = np.einsum("bdn,bn->bd", np.linalg.pinv(xn[:, :m]), yn[:, :m])
            assert_close(pre[:, m], np.einsum("bd,bd->b", xn[:, m], w_m), rtol=1e-9, what=f"{m} pairs")
        # noiseless Bayes (the Omega^-1-weighted min-norm interpolant) is finite and interpolates
        bayes = ip.posterior(x, y, OMEGA, 0.0)[0]
        assert_close(np.einsum("bnd,bd->bn", xn, np.asarray(bayes)), yn, rtol=1e-9)
    # float32 (the default precision): duplicated and zero rows never give NaN
    p32 = Prompts(*(jnp.asarray(np.asarray(v), jnp.float32) for v in p))
    out = np.asarray(call(ip.least_squares(), p32))
    assert np.all(np.isfinite(out)) and rel_err(out, np.einsum("bd,bd->b", np.asarray(p.x_query), want)) < 1e-4


def test_float32_least_squares_and_bayes_have_no_nan_at_condition_1e12():
    evals = np.array([1.0, 1e-6, 1e-12])
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))[0]
    cov = (rot * evals) @ rot.T
    cov = 0.5 * (cov + cov.T)
    for noise in (0.0, 0.1):
        p = make_prompts(seed=7, noise=noise, cov=cov, dtype=np.float32)
        for pred in (ip.least_squares(), ip.BayesPosteriorMean(np.eye(D), noise), ip.ridge(1e-3)):
            for out in (call(pred, p), prefix(pred, p)):
                assert np.all(np.isfinite(np.asarray(out))), (type(pred).__name__, noise)
        err = np.asarray(call(ip.BayesPosteriorMean(np.eye(D), noise), p)) - np.asarray(p.y_query)
        assert np.max(np.abs(err)) < 5 * noise + 1e-3, err  # the tiny directions carry no signal


def test_every_prefix_least_squares_is_finite_in_float32_and_matches_truncated_least_squares():
    """d = 5, n = 40, 20,000 isotropic prompts in float32.

    The reference runs least squares on the truncated prompts (first k - 1 pairs, query x_k) at every k, in
    float64 numpy from the same float32 data (normal equations / their minimum-norm form, accurate here in
    float64). Tolerance: 1e-3 relative on the normalised mean error, plus 1e-6 absolute because for
    k - 1 >= d the noiseless error is float32 rounding (~1e-14), where no relative comparison is meaningful.
    """
    b, n, d = 20_000, 40, 5
    p = make_prompts(seed=8, b=b, n=n, d=d, noise=0.0, dtype=np.float32)
    out = np.asarray(prefix(ip.least_squares(), p), np.float64)
    assert np.all(np.isfinite(out))
    err = np.mean((out - np.asarray(p.y, np.float64)) ** 2, axis=0) / d
    x, y = np.asarray(p.x, np.float64), np.asarray(p.y, np.float64)
    ref = np.empty(n)
    ref[0] = np.mean(y[:, 0] ** 2) / d
    for k in range(2, n + 1):
        xs, ys = x[:, : k - 1], y[:, : k - 1]
        if k - 1 < d:
            w = np.einsum("bnd,bn->bd", xs, np.linalg.solve(xs @ xs.transpose(0, 2, 1), ys[..., None])[..., 0])
        else:
            w = np.linalg.solve(xs.transpose(0, 2, 1) @ xs, np.einsum("bnd,bn->bd", xs, ys)[..., None])[..., 0]
        ref[k - 1] = np.mean((np.einsum("bd,bd->b", x[:, k - 1], w) - y[:, k - 1]) ** 2) / d
    assert np.all(np.abs(err - ref) <= 1e-3 * ref + 1e-6), np.max(np.abs(err - ref) / (ref + 1e-3))
    np.testing.assert_allclose(err[:d], 1 - np.arange(d) / d, atol=0.02)  # docs/theory.md §10: 1 - (k-1)/d


def test_knn_lasso_and_nadaraya_watson_behave_as_their_definitions():
    with x64():
        p = make_prompts(seed=9)
        x, y, xq = (np.asarray(v) for v in (p.x, p.y, p.x_query))
        dist = np.sum((x - xq[:, None]) ** 2, -1)
        order = np.argsort(dist, axis=1)
        nearest3 = np.take_along_axis(y, order[:, :3], 1).mean(1)
        assert_close(call(ip.knn(3), p), nearest3)
        assert_close(call(ip.knn(10), p), y.mean(1))  # fewer than k points: all of them
        # NW at a tiny bandwidth is 1-NN, at a huge one the mean of y
        assert_close(call(ip.nadaraya_watson(1e-3), p), np.take_along_axis(y, order[:, :1], 1)[:, 0])
        assert_close(call(ip.nadaraya_watson(1e6), p), y.mean(1), rtol=1e-9)
        # LASSO recovers a 2-sparse w from 9 noiseless points in d = 12 (least squares cannot: n < d)
        w = np.zeros(12)
        w[[2, 7]] = [1.5, -1.0]
        s = make_prompts(seed=10, b=8, n=9, d=12, noise=0.0, w=w)
        got = np.asarray(ip.lasso_weights(s.x, s.y, 1e-3, steps=3000))
        assert np.max(np.abs(got - w)) < 0.02, np.max(np.abs(got - w))
        ls = np.einsum("bdn,bn->bd", np.linalg.pinv(np.asarray(s.x)), np.asarray(s.y))
        assert np.max(np.abs(ls - w)) > 0.1


def test_a_plain_weights_function_is_a_predictor_without_prefix():
    p = make_prompts(seed=11, dtype=np.float32)
    avg = ip.linear_predictor(lambda x, y: jnp.einsum("bnd,bn->bd", x, y) / x.shape[-2])
    assert_close(call(avg, p), call(ip.averaging(), p), rtol=1e-6)
    assert not icl.protocol.has_prefix(avg) and icl.protocol.has_prefix(ip.averaging())
    with pytest.raises(ValueError, match="no prefix"):
        avg.prefix(p)


def test_hyper_parameters_are_leaves_so_one_compilation_serves_every_value():
    traces = []

    @jax.jit
    def evaluate(pred, prompts):
        traces.append(1)  # runs once per compilation
        return jnp.mean((pred(prompts) - prompts.y_query) ** 2)

    p = make_prompts(seed=12, dtype=np.float32)
    a, b = evaluate(ip.ridge(0.1), p), evaluate(ip.ridge(10.0), p)
    assert float(a) != float(b) and len(traces) == 1


def test_library_names_are_exported_unchanged():
    for name in ("gradient_descent", "ridge", "least_squares", "bayes_posterior_mean", "averaging", "knn", "lasso",
                 "nadaraya_watson", "bayes_predictive", "gd_plus_plus"):
        assert getattr(icl, name) is getattr(ip, name)


# ----------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: ip.ridge(0.0), "lam"),
        (lambda: ip.ridge(-1.0), "lam"),
        (lambda: ip.ridge(float("inf")), "lam"),
        (lambda: ip.ridge(float("nan")), "lam"),
        (lambda: ip.ridge_weights(jnp.ones((1, 2, 2)), jnp.ones((1, 2)), 0.0), "lam"),
        (lambda: ip.knn(0), "k"),
        (lambda: ip.knn(2.5), "k"),
        (lambda: ip.nadaraya_watson(0.0), "bandwidth"),
        (lambda: ip.nadaraya_watson(float("inf")), "bandwidth"),
        (lambda: ip.lasso(-0.1), "lam"),
        (lambda: ip.lasso(0.1, steps=0), "steps"),
        (lambda: ip.gradient_descent([[0.1, 0.2]]), "step_sizes"),
        (lambda: ip.gradient_descent([0.1, float("nan")]), "step_sizes"),
        (lambda: ip.gradient_descent([0.1, 0.2], np.ones((3, 2, 2))), "preconditioner"),
        (lambda: ip.gd_plus_plus([0.1, 0.2, 0.3], [0.1]), "gammas"),
        (lambda: ip.BayesPosteriorMean(-np.eye(2), 0.1), "prior_cov"),
        (lambda: ip.BayesPosteriorMean(np.eye(2), -0.1), "noise_std"),
        (lambda: ip.linear_predictor(3), "weights_fn"),
    ],
)
def test_bad_hyper_parameters_raise_value_error_naming_the_argument(build, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        build()


@pytest.mark.parametrize("name", ["gradient_descent", "least_squares", "knn"])
def test_bad_prompt_shapes_raise_value_error_naming_the_field(name):
    pred = {"gradient_descent": lambda: ip.gradient_descent(0.1), "least_squares": ip.least_squares,
            "knn": ip.knn}[name]()
    p = make_prompts(seed=13, dtype=np.float32)
    with pytest.raises(ValueError, match=r"prompts\.y"):
        pred(p._replace(y=p.y[0]))  # y without its batch axis
    with pytest.raises(ValueError, match=r"prompts\.x_query"):
        pred(p._replace(x_query=p.x_query[:, None, :].repeat(2, 1)))  # several queries
    with pytest.raises(ValueError, match=r"prompts\.x\b"):
        pred.prefix(p._replace(x=p.x[0]))
    with pytest.raises(ValueError, match="prior_cov"):
        ip.BayesPosteriorMean(np.eye(D + 1), 0.1)(p)


def test_check_output_names_the_predictor_on_a_wrong_shape():
    p = make_prompts(seed=14, dtype=np.float32)
    b = p.x.shape[0]
    icl.protocol.check_output("mine", jnp.zeros(b), p)
    icl.protocol.check_output("mine", (jnp.zeros((b, N)), jnp.ones((b, N))), p, prefix=True)
    for bad, pre in [(jnp.zeros((b, 1)), False), (jnp.zeros(b), True), ((jnp.zeros(b), jnp.zeros(b + 1)), False),
                     ((jnp.zeros(b),) * 3, False)]:
        with pytest.raises(ValueError, match="predictor mine"):
            icl.protocol.check_output("mine", bad, p, prefix=pre)


# ----------------------------------------------------------------------------------------------------------
# Property-based: shapes, dtypes, SPD covariances, rotation equivariance
# ----------------------------------------------------------------------------------------------------------

# Same structures (leaf shapes) as FACTORIES, so these reuse its compiled programs; isotropic ones only.
PROPERTY_PREDICTORS = {
    "least_squares": ip.least_squares,
    "ridge": lambda: ip.ridge(0.2),
    "gd": lambda: ip.gradient_descent(0.3, np.eye(D)),
    "gd_plus_plus": lambda: ip.gd_plus_plus([0.3, 0.2, 0.1], [0.1, 0.05], np.eye(D)),
    "averaging": ip.averaging,
    "knn": ip.knn,
    "nadaraya_watson": lambda: ip.nadaraya_watson(1.5),
    "bayes_isotropic": lambda: ip.BayesPosteriorMean(np.eye(D) * 2.0, 0.2),
}
# float32 vs float64: one predictor per distinct numerical method (QR, moments recursion, kernel).
PRECISION_PREDICTORS = ["least_squares", "bayes_isotropic", "gd_plus_plus", "nadaraya_watson"]
SHAPES = [(B, N, D)]  # (batch, n, d): the file's one shape, so nothing compiles again


@st.composite
def spd_matrices(draw, d=3):
    """SPD with eigenvalues in [0.3, 3] (condition <= 10) and a random rotation."""
    evals = np.array(draw(st.lists(st.floats(0.3, 3.0), min_size=d, max_size=d)))
    seed = draw(st.integers(0, 2**31 - 1))
    rot = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]
    return (rot * evals) @ rot.T


@settings(max_examples=16, deadline=None)
@given(name=st.sampled_from(PRECISION_PREDICTORS), shape=st.sampled_from(SHAPES), cov=spd_matrices(),
       seed=st.integers(0, 1000))
def test_float32_agrees_with_float64_and_shapes_hold(name, shape, cov, seed):
    """float32 vs float64 within 2e-3 (relative to max(1, |y|)): the inputs are O(1) with condition <= 10,
    n >= 2 d keeps cond(X) moderate, so forward errors are ~ cond(X)^2 * n * eps32 ~ 1e-4 (k-NN is left out:
    a near-tie between neighbours may flip at float32 rounding, a discontinuity rather than an error)."""
    b, n, d = shape
    pred = PROPERTY_PREDICTORS[name]()
    with x64():
        p64 = make_prompts(seed=seed, b=b, n=n, d=d, cov=cov, noise=0.1)
        out64, pre64 = np.asarray(call(pred, p64)), np.asarray(prefix(pred, p64))
    p32 = Prompts(*(None if v is None else jnp.asarray(np.asarray(v), jnp.float32) for v in p64))
    out32, pre32 = call(pred, p32), prefix(pred, p32)
    assert out32.shape == (b,) and pre32.shape == (b, n) and out32.dtype == jnp.float32
    scale = max(1.0, float(np.max(np.abs(out64))))
    assert np.max(np.abs(np.asarray(out32) - out64)) <= 2e-3 * scale
    # prefixes include k - 1 = d (square X, the least-squares interpolation peak): compare away from it
    keep = [k for k in range(n) if abs(k - d) > 1]
    assert np.max(np.abs(np.asarray(pre32)[:, keep] - pre64[:, keep])) <= 2e-3 * max(1.0, np.max(np.abs(pre64)))


@settings(max_examples=10, deadline=None)
@given(name=st.sampled_from(sorted(PROPERTY_PREDICTORS)), seed=st.integers(0, 1000))
def test_isotropic_predictors_are_rotation_equivariant(name, seed):
    """Rotating every input by an orthogonal U leaves the predictions unchanged (isotropic predictors)."""
    with x64():
        b, n, d = SHAPES[0]
        pred = PROPERTY_PREDICTORS[name]()
        p = make_prompts(seed=seed, b=b, n=n, d=d)
        u = np.linalg.qr(np.random.default_rng(seed + 1).normal(size=(d, d)))[0]
        rotated = p._replace(x=p.x @ u.T, x_query=p.x_query @ u.T)
        assert_close(call(pred, rotated), call(pred, p), rtol=1e-8)
        assert_close(prefix(pred, rotated), prefix(pred, p), rtol=1e-8)
