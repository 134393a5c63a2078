"""icl.fingerprint: known algorithms fingerprint as themselves, ILWD, probes, bad inputs (docs/theory.md §11).

Self-recovery runs in float64 at tiny sizes (d = 3, n = 6): a known algorithm is exactly its own family, so
the fitted hyper-parameters come back to the precision of the golden-section search (far inside the 2% of
issue 11) and its SPD to itself is zero up to rounding. All default tests share one plan (the same
candidates, sizes and shapes) so the family programs compile once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl
from tests.helpers import rel_err, x64

D, N = 3, 6
SIMPLE = ("averaging", "bayes", "least_squares", "gd", "ridge")
KW = dict(candidates=SIMPLE, num_prompts=64, num_ilwd_prompts=0, max_steps=2)


def _task():
    return icl.LinearRegressionTask.isotropic(D, noise_std=0.5)


def _fp(predictor, seed=0, **kw):
    return icl.fingerprint(predictor, _task(), jax.random.PRNGKey(seed), N, **{**KW, **kw})


def test_ridge_fingerprints_as_ridge_and_gives_back_lambda_at_every_prefix():
    with x64():
        res = _fp(icl.ridge(0.5))
    assert res.best == "ridge"
    assert rel_err(res.fitted["ridge"]["lam"], 0.5) <= 0.02
    # every prefix with data (k >= 2) identifies lambda; the SPD to itself is rounding only
    assert rel_err(res.fitted_by_k["ridge"]["lam"][1:], 0.5) <= 0.02
    assert np.max(res.spd["ridge"]) <= 1e-12 * np.max(res.spd["averaging"])
    assert res.ks.tolist() == list(range(1, N + 2))


def test_gd_fingerprints_as_gd_and_gives_back_step_size_and_steps():
    with x64():
        res = _fp(icl.gradient_descent([0.35, 0.35]))
    assert res.best == "gd"
    assert res.fitted["gd"]["steps"] == 2
    assert rel_err(res.fitted["gd"]["eta"], 0.35) <= 0.02
    assert np.all(res.fitted_by_k["gd"]["steps"][1:] == 2)
    assert rel_err(res.fitted_by_k["gd"]["eta"][1:], 0.35) <= 0.02


def test_atol_lets_a_simpler_family_tie_a_gap_smaller_than_the_margin_and_only_then():
    """ridge(0.3) is detectably not Bayes (ridge(0.25)) at 64 prompts; a margin above that gap makes Bayes tie."""
    with x64():
        strict = _fp(icl.ridge(0.3))
        gap = float(strict.spd["bayes"][-1] - strict.spd["ridge"][-1]) / D
        below, above = _fp(icl.ridge(0.3), atol=0.5 * gap), _fp(icl.ridge(0.3), atol=2.0 * gap)
    assert strict.best == "ridge" and gap * D > strict.spd_gap_se["bayes"][-1], strict.table()
    assert below.best == "ridge" and above.best == "bayes", (below.table(), above.table())
    assert above.atol == 2.0 * gap and "ties within" in above.table()


def test_least_squares_is_its_own_best_match_at_every_prefix():
    with x64():
        res = _fp(icl.least_squares())
    assert res.best == "least_squares", res.table()
    assert all(b == "least_squares" for b in res.best_by_k[1:]), res.best_by_k  # k = 1: every family predicts 0
    assert np.max(res.spd["least_squares"]) <= 1e-12 * np.max(res.spd["averaging"])


def test_bayes_is_its_own_best_match_and_ridge_at_sigma2_over_tau2():
    # docs/theory.md §7: Omega = tau^2 I makes the posterior mean ridge at lam = sigma^2 / tau^2 = 0.25 here;
    # bayes comes before ridge in the parsimony order, so it is the best match
    with x64():
        res = _fp(icl.bayes_posterior_mean(_task()))
    assert res.best == "bayes", res.table()
    assert rel_err(res.fitted["ridge"]["lam"], 0.25) <= 0.02
    assert np.max(res.spd["bayes"]) <= 1e-12 * np.max(res.spd["averaging"])


def test_averaging_is_its_own_best_match_with_zero_ilwd_and_zero_linearity_residual():
    """ILWD recovers the implicit weights of an exactly linear predictor by probing (docs/theory.md §11)."""
    with x64():
        res = _fp(icl.averaging(), num_ilwd_prompts=8, ilwd_ks=(4, N + 1), num_queries=D + 2)
    assert res.best == "averaging", res.table()
    assert res.ilwd_ks.tolist() == [4, N + 1]
    assert np.max(res.linearity_residual) <= 1e-20
    assert np.max(res.ilwd["averaging"]) <= 1e-20  # probed weights = r / m exactly
    assert np.all(res.ilwd["least_squares"] > 1e-3)
    assert np.allclose(res.ilwd_per_d["least_squares"], res.ilwd["least_squares"] / D)
    assert np.allclose(res.spd_per_d["gd"], res.spd["gd"] / D)
    assert rel_err(res.fitted["gd"]["eta"], 1.0) <= 0.02 and res.fitted["gd"]["steps"] == 1
    assert "averaging *" in res.table()


class _HoldsW:
    """A constructed 'model' whose last hidden state holds w at the query position (and noise elsewhere)."""

    def __init__(self, exact: bool):
        self.exact = exact

    def hidden_states(self, prompts):
        b = prompts.x.shape[0]
        noise = jax.random.normal(jax.random.PRNGKey(b), (b, 2, D))
        first = jnp.stack([prompts.x_query, noise[:, 0]], axis=1)
        last = prompts.w if self.exact else noise[:, 1]
        return [first, jnp.stack([noise[:, 0], last], axis=1)]


def test_probe_reads_w_exactly_from_a_hidden_state_that_holds_it():
    res = icl.probe(_HoldsW(True), _task(), jax.random.PRNGKey(3), N, control=_HoldsW(False), targets=("w",), readout="query", num_prompts=256, lam=1e-8)
    assert res.r2["w"].shape == (2,)
    assert res.r2["w"][1] >= 1 - 1e-9
    assert res.r2["w"][0] <= 0.1  # x_q and noise say nothing about w
    assert res.control_r2["w"][1] <= 0.1
    assert "layer" in res.table()


def test_probe_reads_lsa_hidden_states_layer_by_layer():
    model = icl.LinearTransformer(D, num_layers=2, rngs=__import__("flax").nnx.Rngs(0))
    res = icl.probe(model, _task(), jax.random.PRNGKey(4), N, num_prompts=64)
    assert set(res.r2) == {"w", "xty", "xtx"}
    assert all(v.shape == (3,) for v in res.r2.values())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n=0), "n"),
        (dict(num_prompts=1), "num_prompts"),
        (dict(num_queries=D), "num_queries"),
        (dict(candidates=("gd", "adam")), "candidates"),
        (dict(max_steps=0), "max_steps"),
        (dict(ilwd_ks=(N + 5,)), "ilwd_ks"),
        (dict(num_ilwd_prompts=1), "num_ilwd_prompts"),
        (dict(atol=-1e-3), "atol"),
        (dict(atol=float("nan")), "atol"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(kwargs, name):
    args = dict(predictor=icl.ridge(0.5), task=_task(), key=jax.random.PRNGKey(0), n=N)
    args.update({k: v for k, v in kwargs.items() if k in args})
    rest = {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(ValueError, match=name):
        icl.fingerprint(**args, **rest)


def test_bad_predictor_and_probe_arguments_raise_value_error():
    with pytest.raises(ValueError, match="predictor"):
        icl.fingerprint(3.0, _task(), jax.random.PRNGKey(0), N)
    with pytest.raises(ValueError, match="targets"):
        icl.probe(_HoldsW(True), _task(), jax.random.PRNGKey(0), N, targets=("beta",))
    with pytest.raises(ValueError, match="readout"):
        icl.probe(_HoldsW(True), _task(), jax.random.PRNGKey(0), N, readout="first")
    with pytest.raises(ValueError, match="model"):
        icl.probe(object(), _task(), jax.random.PRNGKey(0), N)
    prompts = icl.Prompts(np.zeros((4, N, D)), np.zeros((4, N)), np.zeros((4, D)), np.zeros(4))
    with pytest.raises(ValueError, match="probes"):
        icl.implicit_weights(icl.ridge(0.5), prompts, np.zeros((4, D, D)))


@pytest.mark.slow
def test_richer_families_and_knn_recover_themselves():
    """Preconditioned GD with a fixed matrix, and 3-NN, fingerprint as themselves (L-BFGS, every family)."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(D, D))
    a = 0.3 * np.eye(D) + 0.05 * (m + m.T)
    with x64():
        pgd = icl.fingerprint(icl.gradient_descent([1.0], preconditioner=a), _task(), jax.random.PRNGKey(5), N, num_prompts=256, max_steps=1, num_ilwd_prompts=0, lbfgs_iters=100)
        knn = icl.fingerprint(icl.knn(3), _task(), jax.random.PRNGKey(6), N, num_prompts=256, max_steps=1, num_ilwd_prompts=0)
    assert pgd.best == "preconditioned_gd", pgd.table()
    assert rel_err(pgd.fitted["preconditioned_gd"]["A"][0], a) <= 1e-4
    assert knn.best == "knn" and knn.fitted["knn"]["neighbors"] == 3, knn.table()
