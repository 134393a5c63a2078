"""Nonlinear targets (Mahankali et al. 2023, Thm 3; docs/theory.md §4): the moments A, B, C of each family
(closed form, quadrature, Monte Carlo estimator) and the one API on estimated moments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, assert_within_se

import icl
from icl.tasks.nonlinear import _mean_link_slope, _quadrature_moments


@pytest.mark.parametrize(
    "task, points",
    [(icl.ReluNetworkTask(3, width=8, noise_std=0.5), 4),
     (icl.SingleIndexTask(3, "cubic", index_std=0.5, noise_std=0.2), 32)],
    ids=["relu_net", "single_index_cubic"],
)
def test_monte_carlo_a_b_c_match_the_exact_moments_within_4_se(task, points):
    """Unbiased even with 4 points per function (relu_net); heavy-tailed cubic targets need more points for power."""
    m = icl.estimate_moments(task, jax.random.key(0), num_functions=20_000, points_per_function=points,
                             chunk_size=10_000)
    for name, est, se, exact in zip("ABC", (m.a, m.b, m.c), (m.a_se, m.b_se, m.c_se), task.exact_moments()):
        assert_within_se(est, se, exact, what=name)
    assert m.b_se < 0.1 * m.b and m.c_se < 0.1 * m.c  # the test has power
    assert m.d == task.d


def test_plug_in_b_is_biased_by_tr_cov_over_2k_where_the_two_half_estimator_is_not():
    """With K = 2 points per half, ||mean x y||^2 overshoots B = 1/4 (numpy ReLU networks, width 8, d = 3)."""
    rng = np.random.default_rng(3)
    f, pts, d, m = 20_000, 4, 3, 8
    w = rng.standard_normal((f, m, d)) / np.sqrt(d)
    v = rng.standard_normal((f, m))
    x = rng.standard_normal((f, pts, d))
    f_x = np.einsum("bnm,bm->bn", np.maximum(np.einsum("bnd,bmd->bnm", x, w), 0), v) / np.sqrt(m)
    y = f_x + 0.5 * rng.standard_normal((f, pts))
    plug_in = np.mean(np.sum(np.mean(x * y[..., None], axis=1) ** 2, axis=-1))
    split = np.sum(np.mean((x * y[..., None])[:, :2], 1) * np.mean((x * y[..., None])[:, 2:], 1), axis=-1)
    assert_within_se(split.mean(), split.std(ddof=1) / np.sqrt(f), 0.25)
    assert plug_in > 0.25 + 10 * split.std(ddof=1) / np.sqrt(f)


def test_quadrature_moments_equal_the_closed_forms_for_a_smooth_link():
    """The two-level trapezoid rule used for tanh reproduces the cubic link's closed forms (a smooth integrand)."""
    for d, s in ((1, 1.0), (3, 0.5), (8, 0.3)):
        exact = icl.SingleIndexTask(d, "cubic", index_std=s).exact_moments()
        assert_close(_quadrature_moments("cubic", d, s), exact, rtol=1e-9, what=f"d={d}")


def test_prompts_w_is_the_linear_part_e_x_of_x_f_x_of_each_prompt():
    task = icl.SingleIndexTask(3, "tanh", index_std=1.5)
    """Stein's lemma: Prompts.w = E_x[x f(x)]; checked against the mean of x_i y_i over 30k points of one f."""
    p = jax.jit(lambda k: task.sample(k, 2, 30_000))(jax.random.key(4))
    xy = np.asarray(p.x * p.y[..., None], np.float64)  # [2, N, d]
    mean, se = xy.mean(1), xy.std(1, ddof=1) / np.sqrt(xy.shape[1])
    assert np.all(np.abs(mean - np.asarray(p.w)) <= 4 * se), (mean, np.asarray(p.w), se)


@pytest.mark.slow
def test_linear_part_norm2_estimates_b_by_steins_lemma():
    task = icl.SingleIndexTask(3, "tanh", index_std=1.5)
    b, b_se = icl.linear_part_norm2(task, jax.random.key(6), num_functions=4_000, chunk_size=2_000)
    assert_within_se(b, b_se, task.exact_moments()[1])  # B = E||Prompts.w||^2 against the quadrature


def test_tanh_slope_quadrature_is_accurate_for_large_index_norms():
    z = np.linspace(-14, 14, 400_001)
    density = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    with jax.enable_x64(True):
        got = np.asarray(_mean_link_slope("tanh", jnp.asarray([0.1, 1.0, 3.0, 10.0, 30.0])))
    for r, value in zip((0.1, 1.0, 3.0, 10.0, 30.0), got):
        e = np.exp(-2 * np.abs(r * z))
        exact = np.sum(density * 4 * e / (1 + e) ** 2) * (z[1] - z[0])  # sech^2 without overflow
        assert value == pytest.approx(exact, rel=1e-9), r


def test_estimated_moments_plug_into_the_one_api_with_delta_method_standard_errors():
    task = icl.LinearRegressionTask.isotropic(3, 0.5)  # linear targets: B = d, C = d (d + 2 + sigma^2)
    m = icl.estimate_moments(task, jax.random.key(1), num_functions=5_000, points_per_function=16, chunk_size=5000)
    n = 7
    eta, eta_se = m.optimal_step_size(n)
    assert eta == pytest.approx(icl.optimal_step_size(m, n), rel=1e-12)
    assert_within_se(eta, eta_se, icl.optimal_step_size(task, n))
    r, r_se = m.optimal_risk(n)
    assert r == pytest.approx(icl.optimal_risk(m, n), rel=1e-12)
    assert_within_se(r, r_se, icl.optimal_risk(task, n))
    assert icl.one_step_risk(eta, m, n) == pytest.approx(r, rel=1e-12)


@pytest.mark.parametrize("kwargs, field", [({"points_per_function": 3}, "points_per_function"),
                                           ({"num_functions": 0}, "num_functions"), ({"chunk_size": -1}, "chunk_size")])
def test_estimate_moments_validation_names_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        icl.estimate_moments(icl.ReluNetworkTask(2), jax.random.key(0), **{"num_functions": 10, **kwargs})
