"""von Oswald et al. 2023's setting: the uniform task, the §5 closed forms, the tracking tools, the script.

Everything through public ``icl.*`` names (the tracking tools live in icl.evaluate and icl.models)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import icl
from icl import (
    UniformLinearTask,
    align_gauge,
    compare_with_reference,
    evaluate_across_tasks,
    interpolation_losses,
    reference_metrics,
    snapshot_metrics,
    uniform_moments,
)


def gd_lsa_weights(d, eta):
    return icl.gd_lsa_weights(d, eta)


def eta_star(d, n, half_width=0.5, sigma=0.0):
    return float(icl.optimal_step_size(UniformLinearTask(d, half_width=half_width, noise_std=sigma), n))


def lsa_with(d, w_pv, w_kq):
    model = icl.LinearTransformer(d, 1, rngs=nnx.Rngs(0))
    model.layers[0].w_pv[...] = jnp.asarray(w_pv)
    model.layers[0].w_kq[...] = jnp.asarray(w_kq)
    return model


def test_closed_forms_give_von_oswalds_numbers_and_minimise_the_one_step_risk():
    s2, m4 = uniform_moments(0.5)
    assert (s2, m4) == pytest.approx((1 / 12, 1 / 80), rel=1e-15)
    task = UniformLinearTask(10)
    eta = float(icl.optimal_step_size(task, 10))
    assert eta / 10 == pytest.approx(0.60606, abs=1e-5)
    assert eta == pytest.approx(10 * s2 / ((10 + 10 - 2) * s2**2 + m4), rel=1e-12)  # docs/theory.md §5
    assert 0.5 * float(icl.optimal_risk(task, 10)) == pytest.approx(0.2062, abs=5e-5)
    etas = np.linspace(0, 2 * eta, 2001)  # eta* minimises the closed-form risk
    risks = [float(icl.one_step_risk(e, task, 10)) for e in etas[::10]]
    assert etas[::10][int(np.argmin(risks))] == pytest.approx(eta, abs=2 * eta / 200)


def test_uniform_task_samples_uniform_coordinates_with_the_right_moments_and_linear_targets():
    task = UniformLinearTask(3, half_width=0.5, noise_std=0.0)
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(0), 50_000, 3)
    x = np.asarray(p.x).reshape(-1)
    assert np.all(np.abs(x) <= 0.5)
    for power, exact in ((2, 1 / 12), (4, 1 / 80)):
        v = x**power
        assert abs(v.mean() - exact) <= 4 * v.std(ddof=1) / np.sqrt(v.size)
    hist, _ = np.histogram(x, bins=10, range=(-0.5, 0.5))  # flat: every bin within 4 SE of 1/10
    expected = x.size / 10
    assert np.all(np.abs(hist - expected) <= 4 * np.sqrt(expected * 0.9))
    np.testing.assert_allclose(p.y, np.einsum("bnd,bd->bn", p.x, p.w), atol=1e-12)
    np.testing.assert_allclose(p.y_query, np.einsum("bd,bd->b", p.x_query, p.w), atol=1e-12)


def test_optimal_step_formula_matches_a_monte_carlo_fit_of_the_step():
    """eta* = argmin_eta E(eta x_q^T h - y_q)^2 = E[(x_q^T h) y_q] / E[(x_q^T h)^2], estimated by Monte Carlo."""
    d, n, sigma = 4, 6, 0.3
    task = UniformLinearTask(d, half_width=0.5, noise_std=sigma)
    with jax.enable_x64(True):
        p = task.sample(jax.random.key(1), 400_000, n)
        u = np.einsum("bd,bd->b", np.asarray(p.x_query), np.einsum("bnd,bn->bd", np.asarray(p.x), np.asarray(p.y)) / n)
        y = np.asarray(p.y_query)
    num, den = u * y, u * u
    ratio = num.mean() / den.mean()
    # delta method for the SE of a ratio of means
    cov = np.cov(np.stack([num, den])) / num.size
    grad = np.array([1 / den.mean(), -num.mean() / den.mean() ** 2])
    se = float(np.sqrt(grad @ cov @ grad))
    assert abs(ratio - eta_star(d, n, sigma=sigma)) <= 4 * se
    assert se < 0.01 * ratio


def test_one_step_gd_risk_matches_monte_carlo_at_several_steps_and_input_scales():
    d, n = 4, 6
    eta = eta_star(d, n)
    scales = [0.5, 1.0, 2.0]
    tasks = [UniformLinearTask(d, half_width=0.5 * a) for a in scales]
    out = evaluate_across_tasks({"star": icl.gradient_descent(eta), "big": icl.gradient_descent(1.5 * eta)}, tasks,
                                jax.random.key(2), n, num_prompts=100_000, pairs=[("star", "big")])
    for name, step in (("star", eta), ("big", 1.5 * eta)):
        means, ses = out["loss"][name]
        for a, mean, se in zip(scales, means, ses):
            theory = float(icl.one_step_risk(step, UniformLinearTask(d, half_width=0.5 * a), n))
            assert abs(mean - theory) <= 4 * se, (name, a)
    diff, diff_se = out["loss_diff"][("star", "big")]
    assert diff[1] < -4 * diff_se[1]  # in distribution, eta* beats 1.5 eta* on the same prompts


# The GD construction (= one GD step) and the gauge alignment are tested once, in test_models.py.


def test_reference_metrics_of_gd_against_itself_and_against_twice_itself():
    d, n = 3, 5
    p = UniformLinearTask(d).sample(jax.random.key(4), 256, n)
    gd, gd2 = icl.gradient_descent(1.0), icl.gradient_descent(2.0)
    same = reference_metrics(gd, gd, p)
    np.testing.assert_allclose(same["gap"], 0.0, atol=1e-7)
    np.testing.assert_allclose(same["cosine"], 1.0, atol=1e-5)
    np.testing.assert_allclose(same["sensitivity_diff"], 0.0, atol=1e-7)
    double = reference_metrics(gd2, gd, p)
    np.testing.assert_allclose(double["gap"], double["reference_abs"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(double["cosine"], 1.0, atol=1e-5)
    grad = icl.sensitivities(gd, p)  # d y_GD / d x_q = eta h
    np.testing.assert_allclose(double["sensitivity_diff"], np.linalg.norm(grad, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(double["loss_diff"], double["sq_error"] - double["reference_sq_error"], atol=1e-6)
    stats = compare_with_reference(gd2, gd, UniformLinearTask(d), jax.random.key(5), n, num_prompts=2000,
                                   chunk_size=500)
    assert stats["cosine"][0] == pytest.approx(1.0, abs=1e-5)
    assert stats["gap"][0] == pytest.approx(stats["reference_abs"][0], rel=1e-5)
    assert stats["gap"][1] > 0


def test_train_with_snapshots_keeps_every_chunk_and_its_last_snapshot_is_the_result():
    """(That snapshots do not change the run, i.e. equal ``icl.train``'s, is tested once, in test_training.py.)"""
    d, n = 2, 4
    task = UniformLinearTask(d)
    config = icl.TrainConfig(steps=6, batch=16, n=n, lr=1e-2, num_seeds=2, seed=3)
    model_fn = lambda r: icl.LinearTransformer(d, 1, rngs=r)  # noqa: E731
    result, snaps = icl.train_with_snapshots(model_fn, task, config, every=3)
    assert result.snapshots is snaps and result.losses.shape == (2, 6)
    np.testing.assert_array_equal(snaps.steps, [0, 3, 6])
    last = jax.tree.map(lambda a: a[-1], snaps.params)
    for ours, theirs in zip(jax.tree.leaves(last), jax.tree.leaves(result.params)):
        np.testing.assert_array_equal(ours, theirs)
    assert jax.tree.leaves(snaps.params)[0].shape[:2] == (3, 2)
    prompts = task.sample(jax.random.key(6), 100, n)
    metrics = snapshot_metrics(snaps, icl.gradient_descent(1.0), prompts)
    assert metrics["cosine"].shape == (3, 2) and np.all(np.isfinite(metrics["gap"]))
    np.testing.assert_allclose(snaps.model(2, 1)(prompts), result.model(1)(prompts), rtol=1e-6)


def test_interpolation_losses_hit_the_endpoints_and_are_flat_between_gauge_equivalent_gd_weights():
    d, n = 3, 5
    eta = eta_star(d, n)
    task = UniformLinearTask(d)
    prompts = task.sample(jax.random.key(7), 2000, n)
    w_pv, w_kq = gd_lsa_weights(d, eta)
    a = lsa_with(d, 3.0 * w_pv, w_kq / 3.0)  # the same function, elsewhere on the gauge orbit
    b = lsa_with(d, w_pv, w_kq)
    graphdef, params_a = nnx.split(a)
    params_b = nnx.split(b)[1]
    ts = np.linspace(0, 1, 5)
    means, ses = interpolation_losses(graphdef, params_a, params_b, ts, prompts)
    gd_loss = float(jnp.mean((icl.gradient_descent(eta)(prompts) - prompts.y_query) ** 2))
    assert means[0] == pytest.approx(gd_loss, rel=1e-5) and means[-1] == pytest.approx(gd_loss, rel=1e-5)
    assert means[2] > 1.05 * gd_loss  # the raw midpoint has c A = (3 + 1)/2 * (1/3 + 1)/2 * eta = 4/3 eta*
    al_pv, al_kq, _ = align_gauge(3.0 * w_pv, w_kq / 3.0, w_kq)
    aligned = nnx.split(lsa_with(d, al_pv, al_kq))[1]
    means, _ = interpolation_losses(graphdef, aligned, params_b, ts, prompts)
    np.testing.assert_allclose(means, gd_loss, rtol=1e-5)
    assert np.all(ses > 0)


@pytest.mark.parametrize("build, field", [(lambda: UniformLinearTask(0), "d"),
                                          (lambda: UniformLinearTask(2, half_width=0.0), "half_width"),
                                          (lambda: UniformLinearTask(2, noise_std=-0.1), "noise_std"),
                                          (lambda: icl.optimal_step_size(UniformLinearTask(2), 0), "n")])
def test_validation_errors_name_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


@pytest.mark.slow
def test_von_oswald_fast_preset_end_to_end_passes_every_claim(run_experiment, tmp_path):
    summary = run_experiment("experiments/von_oswald.py", ["--fast"], tmp_path)
    assert summary["experiment"] == "von_oswald"
    assert summary["config"]["steps"] == 500 and summary["config"]["schedule"] == "cosine"
    assert len(summary["claims"]) == 9
    (run,) = summary["runs"]
    s2, m4 = 1 / 12, 1 / 80
    assert run["eta_theory"] == pytest.approx(10 * s2 / (18 * s2**2 + m4), rel=1e-12)
    assert run["along_training"]["steps"][0] == 0 and run["along_training"]["steps"][-1] == 500
    assert np.asarray(run["along_training"]["cosine"]).shape == (len(run["along_training"]["steps"]), 1)
    assert len(run["interpolation"]["aligned_half_mse"]) == len(run["interpolation"]["t"]) == 21
    assert len(run["input_scale"]["alpha"]) == len(run["input_scale"]["lsa_half_mse"]) == 13
    assert np.asarray(run["gamma_learned"]).shape == (10, 10)
    assert summary["figures"] == ["von_oswald.png"]
