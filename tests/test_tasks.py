"""Task families: sampling laws, purity, pytrees, multi-query prompts, validation that names the argument."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, assert_within_se, mean_se
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import icl

FAMILIES = {
    "gaussian": lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0, 0.5], noise_std=0.3, w_prior="inverse"),
    "uniform": lambda: icl.UniformLinearTask(3, half_width=0.7, noise_std=0.2),
    "sparse": lambda: icl.SparseLinearTask(5, s=2, noise_std=0.1),
    "relu_net": lambda: icl.ReluNetworkTask(3, width=4, noise_std=0.1),
    "single_index": lambda: icl.SingleIndexTask(3, "tanh", index_std=0.8, noise_std=0.1),
}
# FAMILIES share one compiled draw each (``sampled``) between the sampling checks here and the check that the
# theory each family's law() feeds (docs/theory.md §3-§5) matches Monte Carlo of its own prompts.


BATCH, N, Q = 20_000, 6, 2


@functools.cache
def sampled(family: str):
    """``(task, prompts)``: one compiled draw of ``BATCH`` prompts with ``N`` pairs and ``Q`` queries per family."""
    task = FAMILIES[family]()
    leaves, treedef = jax.tree.flatten(task)  # a pytree: rebuilt inside jit without validation
    draw = jax.jit(lambda leaves, key: jax.tree.unflatten(treedef, leaves).sample(key, BATCH, N, num_queries=Q))
    return task, draw(leaves, jax.random.key(0)), functools.partial(draw, leaves)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_samples_prompts_and_multi_query_prompts_of_the_documented_shapes(family):
    task, q, draw = sampled(family)
    d = task.d
    assert [tuple(a.shape) for a in q] == [(BATCH, N, d), (BATCH, N), (BATCH, Q, d), (BATCH, Q), (BATCH, d)]
    assert q.x.dtype == jnp.float32
    icl.check_prompts(q)
    single = jax.eval_shape(lambda k: task.sample(k, 4, 5), jax.random.key(0))
    assert [tuple(a.shape) for a in single] == [(4, 5, d), (4, 5), (4, d), (4,), (4, d)]
    small = jax.tree.map(lambda a: a[:3], q)
    flat = icl.each_query(small)
    assert [tuple(a.shape) for a in flat] == [(3 * Q, N, d), (3 * Q, N), (3 * Q, d), (3 * Q,), (3 * Q, d)]
    np.testing.assert_array_equal(flat.x[Q : 2 * Q], np.repeat(small.x[1:2], Q, axis=0))
    np.testing.assert_array_equal(flat.x_query[Q : 2 * Q], small.x_query[1])
    np.testing.assert_array_equal(flat.y_query.reshape(3, Q), small.y_query)
    assert icl.each_query(flat) is flat
    for u, v in zip(q, draw(jax.random.key(0))):  # a pure function of the key
        np.testing.assert_array_equal(u, v)
    for u, v in zip(q, task.sample(jax.random.key(0), BATCH, N, num_queries=Q)):  # eager = inside jit, bit for bit
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("family", FAMILIES)
def test_signal_variance_plus_noise_is_the_mean_square_query_target_within_4_se(family):
    """tr(Omega Sigma), d s^2, s, 1/2 and the tanh quadrature, each against Monte Carlo of E[y_q^2] - sigma^2."""
    task, q, _ = sampled(family)
    per_prompt = np.mean(np.asarray(q.y_query, np.float64) ** 2, axis=1)  # queries of one prompt share its task
    assert_within_se(*mean_se(per_prompt), task.signal_variance() + task.noise_std**2, what=family)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_theory_of_each_familys_law_matches_monte_carlo_of_one_gd_step_on_its_prompts(family):
    """One API, every law: Gaussian (§3), i.i.d. uniform inputs (§5), sparse w (§3 with Omega = s/d I), ReLU
    networks and tanh single-index targets (§4, tanh moments by quadrature): R(eta) at eta* and eta*/2."""
    task, q, _ = sampled(family)
    x, y, xq, yq = (np.asarray(a, np.float64) for a in (q.x, q.y, q.x_query, q.y_query))
    pred = np.einsum("bqd,bd->bq", xq, np.einsum("bnd,bn->bd", x, y) / N)  # x_q^T h
    eta = icl.optimal_step_size(task, N)
    assert isinstance(eta, float) and eta > 0
    for step in (eta, 0.5 * eta):
        per_prompt = np.mean((step * pred - yq) ** 2, axis=1)  # the queries of one prompt share its task
        assert_within_se(*mean_se(per_prompt), icl.one_step_risk(step, task, N), what=f"{family} eta={step:.3g}")
    if family != "gaussian":  # isotropic laws: the optimum of P(Gamma) is the GD step (exact)
        assert_close(icl.optimal_gamma(task, N), eta * np.eye(task.d), what="Gamma*")
        assert_close(icl.optimal_risk(task, N), icl.one_step_risk(eta, task, N), what="R*")
    else:
        per_prompt = np.mean((np.einsum("bqi,ij,bj->bq", xq, icl.optimal_gamma(task, N),
                                        np.einsum("bnd,bn->bd", x, y) / N) - yq) ** 2, axis=1)
        assert_within_se(*mean_se(per_prompt), icl.optimal_risk(task, N), what="Gaussian R*")


@pytest.mark.parametrize("family", ["gaussian", "uniform", "sparse"])
def test_linear_families_label_context_and_every_query_with_the_prompts_own_w(family):
    task, q, _ = sampled(family)
    for x, y in ((q.x, q.y), (q.x_query, q.y_query)):
        noise = np.asarray(y, np.float64) - np.einsum("bnd,bd->bn", np.asarray(x, np.float64), q.w)
        assert_within_se(*mean_se(noise.reshape(-1) ** 2), task.noise_std**2, what=family)
        assert_within_se(*mean_se(noise.reshape(-1)), 0.0, what=family)


def test_gaussian_inputs_and_weights_have_covariances_sigma_and_omega_within_4_se():
    task, q, _ = sampled("gaussian")
    x = np.asarray(q.x[:, 0], np.float64)
    w = np.asarray(q.w, np.float64)
    for samples, target in ((x, task.x_cov), (w, task.w_cov)):
        mean, se = mean_se(samples[:, :, None] * samples[:, None, :])
        assert np.all(np.abs(mean - target) <= 4 * se), (mean, target, se)


def test_sparse_task_has_s_unit_gaussian_coordinates_at_uniform_positions():
    task, q, _ = sampled("sparse")
    d, s = task.d, task.s
    w = np.asarray(q.w, np.float64)
    nonzero = w != 0
    assert np.all(nonzero.sum(1) == s)
    for j in range(d):  # every position equally likely: P(w_j != 0) = s/d
        assert_within_se(*mean_se(nonzero[:, j].astype(float)), s / d, what=f"coordinate {j}")
    assert_within_se(*mean_se(w[nonzero] ** 2), 1.0)
    assert task.signal_variance() == s
    np.testing.assert_allclose(task.law().w_cov, s / d * np.eye(d))


def test_from_eigenvalues_builds_rotated_sigma_and_resolves_the_prior():
    eig = np.array([3.0, 1.0, 0.5])
    t = icl.LinearRegressionTask.from_eigenvalues(eig, w_prior="inverse", rotation_seed=4)
    np.testing.assert_allclose(np.linalg.eigvalsh(t.x_cov), np.sort(eig), rtol=1e-12)
    np.testing.assert_allclose(t.w_cov @ t.x_cov, np.eye(3), atol=1e-12)
    assert not np.allclose(t.x_cov, np.diag(np.diag(t.x_cov)))  # really rotated
    unrotated = icl.LinearRegressionTask.from_eigenvalues(eig, rotation_seed=None)
    np.testing.assert_array_equal(unrotated.x_cov, np.diag(eig))
    np.testing.assert_array_equal(icl.LinearRegressionTask.from_eigenvalues(eig, w_prior=2.0).w_cov, 2.0 * np.eye(3))
    np.testing.assert_array_equal(icl.LinearRegressionTask.isotropic(3, 0.5, tau=2.0).w_cov, 4.0 * np.eye(3))
    q = icl.random_rotation(5, 4)
    np.testing.assert_allclose(q @ q.T, np.eye(4), atol=1e-12)
    np.testing.assert_array_equal(q, icl.random_rotation(5, 4))


def test_ill_conditioned_covariance_warns_naming_it_and_theory_stays_finite():
    with pytest.warns(icl.IllConditionedWarning) as record:
        task = icl.LinearRegressionTask.from_eigenvalues([1.0, 1e-12], w_prior="inverse", noise_std=0.1)
    assert [str(r.message).split()[0] for r in record] == ["x_cov", "w_cov"]
    assert record[0].filename == __file__  # the warning points at the caller
    assert np.all(np.isfinite(icl.optimal_gamma(task, 10))) and np.isfinite(icl.optimal_risk(task, 10))
    assert np.all(np.isfinite(np.asarray(jax.jit(lambda k: task.sample(k, 2, 3).x)(jax.random.key(0)))))
    with pytest.warns(icl.IllConditionedWarning, match=r"\bw_cov\b"):
        icl.LinearRegressionTask(d=2, w_cov=np.diag([1.0, 1e-6]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        icl.LinearRegressionTask.from_eigenvalues([1.0, 1e-3])  # cond 1e3 < 1/sqrt(eps32): silent
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        icl.LinearRegressionTask.from_eigenvalues([1.0, 1e-6])  # resolvable in float64: silent
    with pytest.raises(ValueError, match=r"x_cov is numerically singular"):
        icl.LinearRegressionTask(d=2, x_cov=np.diag([1.0, 1e-17]))


NOT_SYMMETRIC = np.array([[1.0, 0.5], [0.0, 1.0]])
NOT_PD = np.array([[1.0, 2.0], [2.0, 1.0]])


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: icl.LinearRegressionTask(d=2.5), "d"),
        (lambda: icl.LinearRegressionTask(d=True), "d"),
        (lambda: icl.LinearRegressionTask(d=2, noise_std=float("nan")), "noise_std"),
        (lambda: icl.LinearRegressionTask(d=2, noise_std="0.1"), "noise_std"),
        (lambda: icl.LinearRegressionTask(d=2, x_cov=NOT_SYMMETRIC), "x_cov"),
        (lambda: icl.LinearRegressionTask(d=2, x_cov=NOT_PD), "x_cov"),
        (lambda: icl.LinearRegressionTask(d=2, x_cov=np.eye(3)), "x_cov"),
        (lambda: icl.LinearRegressionTask(d=2, x_cov=np.array([[1.0, np.nan], [np.nan, 1.0]])), "x_cov"),
        (lambda: icl.LinearRegressionTask(d=2, w_cov=NOT_PD), "w_cov"),
        (lambda: icl.LinearRegressionTask.isotropic(2, tau=0.0), "tau"),
        (lambda: icl.LinearRegressionTask.isotropic(2, tau=float("inf")), "tau"),
        (lambda: icl.LinearRegressionTask.isotropic(2.0), "d"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 0.0]), "eigenvalues"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([]), "eigenvalues"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues(["a"]), "eigenvalues"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0], w_prior="isotropc"), "w_prior"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0], w_prior=-1.0), "w_prior"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0], w_prior=NOT_PD), "w_prior"),
        (lambda: icl.LinearRegressionTask.from_eigenvalues([1.0, 2.0], rotation_seed=-1), "rotation_seed"),
        (lambda: icl.UniformLinearTask(0), "d"),
        (lambda: icl.UniformLinearTask(2, half_width=0.0), "half_width"),
        (lambda: icl.UniformLinearTask(2, noise_std=-1.0), "noise_std"),
        (lambda: icl.SparseLinearTask(3, s=4), "s"),
        (lambda: icl.SparseLinearTask(3, s=0), "s"),
        (lambda: icl.SparseLinearTask(3, noise_std=float("inf")), "noise_std"),
        (lambda: icl.ReluNetworkTask(3, width=0), "width"),
        (lambda: icl.SingleIndexTask(3, link="sin"), "link"),
        (lambda: icl.SingleIndexTask(3, index_std=0.0), "index_std"),
        (lambda: icl.IIDLaw(2, 1.0, 0.5), "m4"),
        (lambda: icl.GaussianLaw(np.eye(2), NOT_PD, 0.0), "w_cov"),
    ],
)
def test_constructors_raise_value_error_naming_the_argument(build, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        build()


CONSTRUCTORS = {
    "d": [lambda v: icl.LinearRegressionTask(d=v), lambda v: icl.LinearRegressionTask.isotropic(v),
          lambda v: icl.UniformLinearTask(v), lambda v: icl.SparseLinearTask(v, s=1),
          lambda v: icl.ReluNetworkTask(v), lambda v: icl.SingleIndexTask(v)],
    "noise_std": [lambda v: icl.LinearRegressionTask(d=2, noise_std=v), lambda v: icl.UniformLinearTask(2, noise_std=v),
                  lambda v: icl.SparseLinearTask(2, s=1, noise_std=v), lambda v: icl.ReluNetworkTask(2, noise_std=v),
                  lambda v: icl.SingleIndexTask(2, noise_std=v),
                  lambda v: icl.LinearRegressionTask.from_eigenvalues([1.0], noise_std=v)],
    "width": [lambda v: icl.ReluNetworkTask(2, width=v)],
    "half_width": [lambda v: icl.UniformLinearTask(2, half_width=v)],
    "index_std": [lambda v: icl.SingleIndexTask(2, index_std=v)],
    "tau": [lambda v: icl.LinearRegressionTask.isotropic(2, tau=v)],
}
BAD_INT = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(), st.text(max_size=2), st.none())
BAD_NON_NEGATIVE = st.one_of(st.floats(max_value=-1e-300), st.just(float("nan")), st.just(float("inf")),
                             st.booleans(), st.text(max_size=2), st.none())
BAD_POSITIVE = st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf")), st.booleans(),
                         st.text(max_size=2), st.none())
BAD = {"d": BAD_INT, "width": BAD_INT, "noise_std": BAD_NON_NEGATIVE, "half_width": BAD_POSITIVE,
       "index_std": BAD_POSITIVE, "tau": BAD_POSITIVE}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_bad_arguments_of_every_task_constructor_raise_value_error_naming_them(data):
    field = data.draw(st.sampled_from(sorted(CONSTRUCTORS)))
    build = data.draw(st.sampled_from(CONSTRUCTORS[field]))
    value = data.draw(BAD[field])
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        build(value)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 4), seed=st.integers(0, 1000), spread=st.floats(0.0, 3.0))
def test_random_spd_covariances_build_tasks_with_the_requested_spectrum_and_inverse_prior(d, seed, spread):
    eig = 10.0 ** np.random.default_rng(seed).uniform(-spread / 2, spread / 2, d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", icl.IllConditionedWarning)
        task = icl.LinearRegressionTask.from_eigenvalues(eig, noise_std=0.1, w_prior="inverse", rotation_seed=seed)
    np.testing.assert_allclose(task.w_cov @ task.x_cov, np.eye(d), atol=1e-9 * eig.max() / eig.min())
    np.testing.assert_allclose(np.linalg.eigvalsh(task.x_cov), np.sort(eig), rtol=1e-9 * eig.max() / eig.min())


@pytest.mark.parametrize("batch, n, q, field", [(0, 3, None, "batch"), (2, 0, None, "n"), (2, 1.5, None, "n"),
                                                (2, 3, 0, "num_queries"), (2, 3, 1.0, "num_queries")])
def test_sample_rejects_bad_batch_n_and_num_queries(batch, n, q, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        icl.LinearRegressionTask.isotropic(2).sample(jax.random.key(0), batch, n, num_queries=q)


def _prompts():
    return sampled("gaussian")[1]._replace(x_query=sampled("gaussian")[1].x_query[:, 0],
                                           y_query=sampled("gaussian")[1].y_query[:, 0])


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda p: p._replace(x=p.x[0]), r"prompts\.x must"),
        (lambda p: p._replace(y=p.y[:, :-1]), r"prompts\.y must"),
        (lambda p: p._replace(x_query=p.x_query[:, :2]), r"prompts\.x_query must"),
        (lambda p: p._replace(y_query=p.y_query[:2]), r"prompts\.y_query must"),
        (lambda p: p._replace(w=p.w[:, :2]), r"prompts\.w must"),
        (lambda p: p._replace(x=p.x.at[0, 1, 2].set(jnp.nan)), r"prompts\.x contains NaN"),
        (lambda p: p._replace(y_query=p.y_query.at[3].set(jnp.inf)), r"prompts\.y_query contains NaN"),
    ],
)
def test_check_prompts_names_the_bad_field(mutate, pattern):
    with pytest.raises(ValueError, match=pattern):
        icl.check_prompts(mutate(_prompts()))
