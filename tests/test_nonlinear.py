"""Nonlinear targets (Mahankali et al. 2023, Thm 3): tasks, the B and C estimators, the eta formula, the script."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl
from icl.nonlinear import (
    ReluNetworkTask,
    SingleIndexTask,
    estimate_moments,
    linear_part_norm2,
    nonlinear_one_step_risk,
    nonlinear_optimal_risk,
    nonlinear_optimal_step_size,
)


def within_4_se(estimate, se, exact):
    return abs(estimate - exact) <= 4 * se


@pytest.mark.parametrize(
    "task",
    [ReluNetworkTask(3, width=8, noise_std=0.5), SingleIndexTask(4, "relu", index_std=0.7),
     SingleIndexTask(3, "cubic", index_std=0.5, noise_std=0.2)],
    ids=["relu_net", "single_index_relu", "single_index_cubic"],
)
def test_monte_carlo_a_b_c_match_the_closed_forms_within_4_se(task):
    m = estimate_moments(task, jax.random.key(0), num_functions=20_000, points_per_function=64)
    a, b, c = task.exact_moments()
    for name, est, se, exact in (("A", m.a, m.a_se, a), ("B", m.b, m.b_se, b), ("C", m.c, m.c_se, c)):
        assert within_4_se(est, se, exact), (name, est, se, exact)
    assert m.b_se < 0.05 * b and m.c_se < 0.05 * c  # the test has power (cubic targets are heavy-tailed)


def test_linear_targets_give_back_mahankali_theorem_1():
    """For f(x) = w^T x, w ~ N(0, I): B = d, C = d (d + 2 + sigma^2), and eta = n / (n + d + 1 + sigma^2)."""
    d, n, sigma = 3, 7, 0.5
    task = icl.LinearRegressionTask.isotropic(d, sigma)
    m = estimate_moments(task, jax.random.key(1), num_functions=20_000, points_per_function=64)
    assert within_4_se(m.a, m.a_se, d + sigma**2)
    assert within_4_se(m.b, m.b_se, d)
    assert within_4_se(m.c, m.c_se, d * (d + 2 + sigma**2))
    exact_eta = nonlinear_optimal_step_size(d, d * (d + 2 + sigma**2), n)
    assert exact_eta == pytest.approx(icl.isotropic_optimal_step_size(d, n, sigma), rel=1e-12)
    assert nonlinear_optimal_risk(d + sigma**2, d, d * (d + 2 + sigma**2), n) == pytest.approx(
        icl.isotropic_optimal_risk(d, n, sigma), rel=1e-12)
    eta, eta_se = m.eta(n)
    assert within_4_se(eta, eta_se, exact_eta) and 0 < eta_se < 0.01


def test_estimate_moments_accepts_tasks_that_are_not_pytrees():
    class Wrapped:  # a plain object with the Task protocol (d, sample), not a registered pytree
        def __init__(self, inner):
            self.inner, self.d = inner, inner.d

        def sample(self, key, batch, n):
            return self.inner.sample(key, batch, n)

    task = ReluNetworkTask(2, width=4)
    a = estimate_moments(Wrapped(task), jax.random.key(8), num_functions=500, points_per_function=8, chunk_size=250)
    b = estimate_moments(task, jax.random.key(8), num_functions=500, points_per_function=8, chunk_size=250)
    assert (a.a, a.b, a.c) == pytest.approx((b.a, b.b, b.c), rel=1e-6)


def test_plug_in_b_is_biased_but_the_two_half_estimator_is_not():
    """With few points per function ||mean x y||^2 overshoots B by tr Cov/2K; the split estimator stays on B."""
    task = ReluNetworkTask(3, width=8)
    m = estimate_moments(task, jax.random.key(2), num_functions=20_000, points_per_function=4)
    assert within_4_se(m.b, m.b_se, 0.25)
    p = task.sample(jax.random.key(3), 20_000, 4)
    plug_in = np.mean(np.sum(np.mean(np.asarray(p.x * p.y[..., None]), axis=1) ** 2, axis=-1))
    assert plug_in > 0.25 + 10 * m.b_se


@pytest.mark.parametrize("task", [ReluNetworkTask(3, width=4), SingleIndexTask(3, "tanh", index_std=1.5)],
                         ids=["relu_net", "single_index_tanh"])
def test_prompts_w_is_the_linear_part_e_x_of_x_f_x_of_each_prompt(task):
    """Stein's lemma: Prompts.w = E_x[x f(x)]; checked against the mean of x_i y_i over 400k points of one f."""
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(4), 2, 400_000)
        xy = np.asarray(p.x * p.y[..., None])  # [2, N, d]
        mean, se = xy.mean(1), xy.std(1, ddof=1) / np.sqrt(xy.shape[1])
        assert np.all(np.abs(mean - np.asarray(p.w)) <= 4 * se), (mean, np.asarray(p.w), se)


def test_stein_b_agrees_with_the_two_half_estimator_for_tanh():
    task = SingleIndexTask(4, "tanh", index_std=1.0)
    m = estimate_moments(task, jax.random.key(5), num_functions=20_000, points_per_function=64)
    b, b_se = linear_part_norm2(task, jax.random.key(6), num_functions=20_000)
    assert abs(m.b - b) <= 4 * np.hypot(m.b_se, b_se)
    assert b_se < m.b_se  # no inner Monte Carlo over x


def test_tanh_slope_quadrature_is_accurate_for_large_index_norms():
    from icl.nonlinear import _mean_link_slope

    z = np.linspace(-14, 14, 400_001)
    density = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    with jax.enable_x64(True):
        for r in (0.1, 1.0, 3.0, 10.0, 30.0):
            e = np.exp(-2 * np.abs(r * z))
            exact = np.sum(density * 4 * e / (1 + e) ** 2) * (z[1] - z[0])  # sech^2 without overflow
            got = float(_mean_link_slope("tanh", jnp.asarray(r)))
            assert got == pytest.approx(exact, rel=1e-9), r


def test_one_step_gd_risk_formula_matches_monte_carlo_on_relu_targets():
    """R(eta) = A - 2 eta B + eta^2 ((n-1) B + C)/n, with the closed-form A, B, C, at eta* and eta*/2."""
    d, n = 3, 6
    task = ReluNetworkTask(d, width=8, noise_std=0.3)
    a, b, c = task.exact_moments()
    eta_star = nonlinear_optimal_step_size(b, c, n)
    cmp = icl.compare_predictors({"star": icl.gradient_descent(eta_star), "half": icl.gradient_descent(eta_star / 2)},
                                 task, jax.random.key(7), n, num_prompts=200_000)
    for name, eta in (("star", eta_star), ("half", eta_star / 2)):
        mean, se = cmp.losses[name]
        assert within_4_se(mean, se, nonlinear_one_step_risk(eta, a, b, c, n)), (name, mean, se)
    assert nonlinear_optimal_risk(a, b, c, n) == pytest.approx(nonlinear_one_step_risk(eta_star, a, b, c, n))


def test_tasks_are_pytrees_and_sampling_is_a_pure_function_of_the_key():
    for task in (ReluNetworkTask(3, width=5, noise_std=0.1), SingleIndexTask(3, "cubic", 0.5, 0.1)):
        leaves, treedef = jax.tree.flatten(task)
        rebuilt = jax.tree.unflatten(treedef, leaves)
        sample = jax.jit(lambda t, k: t.sample(k, 4, 6))
        a, b = sample(rebuilt, jax.random.key(0)), task.sample(jax.random.key(0), 4, 6)
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)
        assert a.x.shape == (4, 6, 3) and a.y.shape == (4, 6) and a.w.shape == (4, 3)
        assert not np.array_equal(task.sample(jax.random.key(1), 4, 6).y, b.y)
        icl.check_prompts(b)


@pytest.mark.parametrize(
    "build, field",
    [(lambda: ReluNetworkTask(0), "d"), (lambda: ReluNetworkTask(3, width=0), "width"),
     (lambda: ReluNetworkTask(3, noise_std=-1.0), "noise_std"), (lambda: SingleIndexTask(3, link="sin"), "link"),
     (lambda: SingleIndexTask(3, index_std=0.0), "index_std"),
     (lambda: estimate_moments(ReluNetworkTask(2), jax.random.key(0), 10, 3), "points_per_function")],
)
def test_validation_errors_name_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_tanh_single_index_has_no_closed_form_and_says_so():
    with pytest.raises(NotImplementedError, match="estimate_moments"):
        SingleIndexTask(3, "tanh").exact_moments()


@pytest.mark.slow
def test_nonlinear_targets_script_end_to_end_on_a_tiny_configuration(REPO_ROOT, tmp_path):
    flags = ["--d", "2", "--n", "4", "--steps", "30", "--batch", "64", "--seeds", "2", "--eval-prompts", "2000",
             "--moment-functions", "2000", "--moment-points", "16", "--width", "4"]
    proc = subprocess.run([sys.executable, "experiments/nonlinear_targets.py", *flags, "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: a claim failed (tiny run), not a crash
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["experiment"] == "nonlinear_targets"
    assert summary["config"]["d"] == 2 and summary["config"]["families"] == ["relu_net", "single_index"]
    assert len(summary["claims"]) == 8
    for claim in summary["claims"]:
        assert {"name", "theory", "measured", "tolerance", "passed"} <= set(claim)
        assert isinstance(claim["passed"], bool)
    assert [r["family"] for r in summary["runs"]] == ["relu_net", "single_index"]
    for run in summary["runs"]:
        for key in ("B", "B_se", "C", "C_se", "eta_theory", "eta_learned_mean", "eta_learned_std", "gamma_learned"):
            assert key in run
        assert set(run["loss"]) == {"lsa", "gd_theory", "ols", "ridge"}
        assert np.asarray(run["gamma_learned"]).shape == (2, 2)
        assert run["eta_theory"] == pytest.approx(4 * run["B"] / (3 * run["B"] + run["C"]), rel=1e-9)
    assert summary["runs"][0]["moments_exact"] == {"A": 0.5, "B": 0.25, "C": 2.0}
    assert (tmp_path / "nonlinear_targets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
