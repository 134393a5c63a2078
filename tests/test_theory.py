"""The one theory API (docs/theory.md §3-§5): closed forms against Monte Carlo (4 SE), exact identities once
(float64, 1e-10), float64 results whatever the JAX precision, validation. The dispatch on
each task family against Monte Carlo of its own prompts is in test_tasks.py (it shares their compiled draws)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, assert_within_se, mean_se, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import icl

EIGS = [2.0, 1.0, 0.3]
OMEGA = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, -0.2], [0.0, -0.2, 0.5]])


def general_task(noise=0.5, prior=OMEGA):
    return icl.LinearRegressionTask.from_eigenvalues(EIGS, noise_std=noise, w_prior=prior, rotation_seed=1)


def gaussian_mc(task, n, count, seed):
    """Float64 numpy ``(x_q, y_q, h)`` for ``count`` Gaussian prompts (numpy: no compilation)."""
    rng = np.random.default_rng(seed)
    d = task.d
    lx, lw = np.linalg.cholesky(task.x_cov), np.linalg.cholesky(task.w_cov)
    x = rng.standard_normal((count, n + 1, d)) @ lx.T
    w = rng.standard_normal((count, d)) @ lw.T
    y = np.einsum("bnd,bd->bn", x, w) + task.noise_std * rng.standard_normal((count, n + 1))
    return x[:, n], y[:, n], np.einsum("bnd,bn->bd", x[:, :n], y[:, :n]) / n


def test_gaussian_risk_expected_hh_and_optimum_match_monte_carlo_within_4_se():
    """General Sigma, Omega (neither I nor Sigma^-1) and noise: R(Gamma) of a random Gamma, E[hh^T] and R*."""
    n, task = 6, general_task()
    xq, yq, h = gaussian_mc(task, n, 100_000, seed=0)
    gamma = np.random.default_rng(0).standard_normal((3, 3)) * 0.3 + 0.5 * np.eye(3)
    for g, closed in ((gamma, icl.risk(gamma, task, n)), (icl.optimal_gamma(task, n), icl.optimal_risk(task, n))):
        assert_within_se(*mean_se((np.einsum("bi,ij,bj->b", xq, g, h) - yq) ** 2), closed)
    e_hh = icl.expected_hh(task, n)
    assert isinstance(e_hh, np.ndarray) and e_hh.dtype == np.float64
    for i in range(3):
        for j in range(i, 3):
            assert_within_se(*mean_se(h[:, i] * h[:, j]), e_hh[i, j], what=f"E[hh^T]_{i}{j}")


def test_closed_forms_reduce_to_the_papers_formulas_in_float64():
    """Ahn Thm 1 (Omega = I), Mahankali Thms 1 and 2, von Oswald's uniform numbers, i.i.d. Gaussian coordinates
    and linear targets giving back the Gaussian law: each identity once, to 1e-10."""
    n, sigma, d = 7, 0.6, 3
    iso = general_task(sigma, "isotropic")
    s = iso.x_cov
    assert_close(icl.optimal_gamma(iso, n), np.linalg.inv((1 + 1 / n) * s + (np.trace(s) + sigma**2) / n * np.eye(d)))
    inv = general_task(sigma, "inverse")
    assert_close(icl.optimal_gamma(inv, n), n / (n + d + 1 + sigma**2) * np.linalg.inv(inv.x_cov))
    omega = general_task(sigma)
    so, o = omega.x_cov, omega.w_cov
    expected = (1 + 1 / n) * so @ o @ so + (np.trace(o @ so) + sigma**2) / n * so
    assert_close(icl.expected_hh(omega, n), expected)
    assert_close(icl.optimal_gamma(omega, n), o @ so @ np.linalg.inv(expected))
    tau, d, n = 1.5, 4, 9
    r = sigma**2 / tau**2
    task = icl.LinearRegressionTask.isotropic(d, sigma, tau=tau)
    assert_close(icl.optimal_step_size(task, n), n / (n + d + 1 + r))
    assert_close(icl.optimal_risk(task, n), d * tau**2 * (d + 1 + r) / (n + d + 1 + r) + sigma**2)
    for eta in (0.0, 0.3, 1.2):
        formula = d * tau**2 * (1 - 2 * eta + eta**2 * (n + d + 1 + r) / n) + sigma**2
        assert_close(icl.one_step_risk(eta, task, n), formula)
    # the same Gaussian problem through the i.i.d. law (m4 = 3 s^4) and through the target moments of f = w^T x
    iid = icl.IIDLaw(d, 1.0, 3.0, noise_std=sigma, w_var=tau**2)
    lin = icl.TargetLaw(d, d + sigma**2, d, d * (d + 2 + sigma**2))  # f(x) = w^T x, w ~ N(0, I): B = d
    for law, ref in ((iid, task), (lin, icl.LinearRegressionTask.isotropic(d, sigma))):
        for fn in (icl.optimal_step_size, icl.optimal_risk, icl.expected_hh):
            assert_close(fn(law, n), fn(ref, n), what=f"{type(law).__name__} {fn.__name__}")
    # von Oswald et al.: U(-1/2, 1/2), d = n = 10: eta*/n = 0.606, 0.5 R* = 0.2062
    uni = icl.UniformLinearTask(10)
    assert icl.optimal_step_size(uni, 10) / 10 == pytest.approx(0.60606, abs=1e-5)
    assert 0.5 * icl.optimal_risk(uni, 10) == pytest.approx(0.2062, abs=1e-4)


def test_optimal_gamma_is_a_stationary_minimum_of_the_differentiable_risk():
    n = 6
    with jax.enable_x64(True):
        for prior in ("isotropic", "inverse", OMEGA):
            task = general_task(0.5, prior)
            gamma_star = icl.optimal_gamma(task, n)
            grad = jax.grad(lambda g, task=task: icl.differentiable_risk(g, task, n))
            assert np.linalg.norm(grad(jnp.asarray(gamma_star))) <= 1e-10 * np.linalg.norm(grad(jnp.zeros((3, 3))))
            r_star = icl.optimal_risk(task, n)
            assert_close(icl.risk(gamma_star, task, n), r_star)
            bumps = gamma_star + 0.05 * np.random.default_rng(1).standard_normal((5, 3, 3))
            assert np.all(icl.risk(bumps, task, n) > r_star)  # batched Gamma: [5, d, d] -> [5]
            eta = icl.optimal_step_size(task, n)
            slope = jax.grad(lambda e, task=task: icl.differentiable_risk(e * jnp.eye(3), task, n))(eta)
            assert abs(float(slope)) <= 1e-10 * icl.one_step_risk(eta, task, n)
            assert icl.one_step_risk(eta, task, n) >= r_star


def _ill_conditioned(prior):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", icl.IllConditionedWarning)
        return icl.LinearRegressionTask.from_eigenvalues(np.geomspace(1e-4, 1e4, 5), noise_std=0.1, w_prior=prior,
                                                         rotation_seed=3)


@pytest.mark.parametrize("prior", ["isotropic", "inverse"])
def test_closed_forms_on_eigenvalues_1e_minus_4_to_1e4_are_float64_and_equal_in_float32_and_x64_modes(prior):
    """float32 mode used to give a relative error of 1.23 (and NaN for Omega = Sigma^-1)."""
    n, task = 12, _ill_conditioned(prior)
    fns = (icl.optimal_gamma, icl.optimal_risk, icl.optimal_step_size, icl.expected_hh)
    f32 = [fn(task, n) for fn in fns]
    with jax.enable_x64(True):
        f64 = [fn(task, n) for fn in fns]
    for fn, a, b in zip(fns, f32, f64):
        assert np.asarray(a).dtype == np.float64 and np.all(np.isfinite(a)), fn.__name__
        assert rel_err(a, b) < 1e-6, fn.__name__
    d = task.d
    if prior == "inverse":  # Mahankali Thm 2 holds at this conditioning (the whitened form)
        assert rel_err(f32[0], n / (n + d + 1 + 0.01) * task.w_cov) < 1e-6
    else:  # an independent float64 solve of Gamma* E[hh^T] = Omega Sigma
        assert rel_err(f32[0] @ f64[3], task.w_cov @ task.x_cov) < 1e-6


def test_differentiable_risk_in_float32_is_within_1e_5_of_the_magnitude_of_its_terms():
    """The jnp risk used by gradient flow: float32 round-off stays at the scale of its largest term."""
    n, task = 8, general_task()
    rng = np.random.default_rng(2)
    gammas = icl.optimal_gamma(task, n) + 0.1 * rng.standard_normal((20, 3, 3))
    exact = icl.risk(gammas, task, n)
    got = np.asarray(icl.differentiable_risk(jnp.asarray(gammas, jnp.float32), task, n), np.float64)
    m = icl.expected_hh(task, n)
    scale = (np.trace(task.x_cov @ task.w_cov) + task.noise_std**2
             + 2 * np.abs(np.einsum("bij,ji->b", gammas, task.x_cov @ task.w_cov @ task.x_cov))
             + np.einsum("ij,bjk,kl,bil->b", task.x_cov, gammas, m, gammas))
    assert np.all(np.abs(got - exact) <= 1e-5 * scale)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 5), n=st.integers(1, 30), seed=st.integers(0, 10_000), spread=st.floats(0.0, 6.0),
       noise=st.floats(0.0, 2.0), x64=st.booleans())
def test_closed_forms_on_random_spd_covariances_are_consistent_float64_optima(d, n, seed, spread, noise, x64):
    """For random Sigma (condition up to 1e6), Omega, noise and either JAX precision: Gamma* solves the normal
    equation S Gamma* H = G^T, no perturbation beats it, eta* beats its neighbours, and everything is float64."""
    rng = np.random.default_rng(seed)
    eig = 10.0 ** rng.uniform(-spread / 2, spread / 2, d)
    a = rng.standard_normal((d, d))
    omega = a @ a.T + 0.1 * np.eye(d)
    with warnings.catch_warnings(), jax.enable_x64(x64):
        warnings.simplefilter("ignore", icl.IllConditionedWarning)
        task = icl.LinearRegressionTask.from_eigenvalues(eig, noise_std=noise, w_prior=omega, rotation_seed=seed)
        gamma = icl.optimal_gamma(task, n)
        r_star, eta = icl.optimal_risk(task, n), icl.optimal_step_size(task, n)
        h = icl.expected_hh(task, n)
        s = task.x_cov
        g = s @ task.w_cov @ s
        assert gamma.dtype == np.float64 and isinstance(r_star, float) and isinstance(eta, float)
        assert rel_err(s @ gamma @ h, g) < 1e-8
        assert r_star >= -1e-9 * icl.risk(np.zeros((d, d)), task, n)
        bumps = gamma + 1e-3 * np.linalg.norm(gamma) * rng.standard_normal((4, d, d))
        assert np.all(icl.risk(bumps, task, n) >= r_star * (1 - 1e-9))
        r_eta = icl.one_step_risk(eta, task, n)
        assert np.all(icl.one_step_risk(eta * np.array([0.9, 1.1]), task, n) >= r_eta) and r_eta >= r_star * (1 - 1e-9)


class NoLawTask(icl.Task):
    d = 2
    noise_std = 0.0


def test_families_without_a_closed_form_raise_value_error_naming_them():
    with pytest.raises(ValueError, match="NoLawTask has no closed form"):
        icl.optimal_step_size(NoLawTask(), 5)
    unknown = icl.TargetLaw(3, None, None, None, family="MyTargets")
    for fn in (icl.optimal_step_size, icl.optimal_risk, icl.optimal_gamma, icl.expected_hh):
        with pytest.raises(ValueError, match=r"MyTargets has no closed-form.*estimate_moments"):
            fn(unknown, 5)
    with pytest.raises(ValueError, match="needs Gaussian inputs"):
        icl.multistep_gd_risk([0.5], icl.UniformLinearTask(3), 5)


@pytest.mark.parametrize("fn", [icl.expected_hh, icl.optimal_gamma, icl.optimal_risk, icl.optimal_step_size])
@pytest.mark.parametrize("n", [0, -7, 2.5, True])
def test_theory_rejects_bad_n_naming_it(fn, n):
    with pytest.raises(ValueError, match=r"\bn\b"):
        fn(icl.UniformLinearTask(2), n)


def test_risk_rejects_a_gamma_of_the_wrong_shape_and_one_step_risk_a_non_finite_eta():
    with pytest.raises(ValueError, match=r"\bgamma\b"):
        icl.risk(np.eye(2), icl.LinearRegressionTask.isotropic(3), 5)
    with pytest.raises(ValueError, match=r"\beta\b"):
        icl.one_step_risk(float("nan"), icl.LinearRegressionTask.isotropic(3), 5)
