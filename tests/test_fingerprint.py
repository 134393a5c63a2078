"""icl.fingerprint: known algorithms fingerprint as themselves, no verdict where none means anything, NaN never
changes a verdict, ILWD, bad inputs (docs/theory.md §11).

Self-recovery runs in float64 at tiny sizes (d = 3, n = 6): a known algorithm is exactly its own family, so the
fitted hyper-parameters come back to the precision of the golden-section search and its SPD to itself is zero up
to rounding. The default tests share one plan (candidates, sizes, shapes) and a few predictor types, so the fit
program compiles once per dtype and each evaluation program once per predictor type.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import icl
from icl.fingerprint import ATOL, FAMILIES, FIT_TOL, fingerprint, implicit_weights
from tests.helpers import rel_err, x64

D, N = 3, 6
SIMPLE = ("averaging", "least_squares", "bayes", "gd", "ridge")
KW = dict(candidates=SIMPLE, num_prompts=64, num_ilwd_prompts=0, max_steps=2)


def _task(noise=0.5):
    return icl.LinearRegressionTask.isotropic(D, noise_std=noise)


def _fp(predictor, seed=0, task=None, **kw):
    return fingerprint(predictor, task or _task(), jax.random.PRNGKey(seed), N, **{**KW, **kw})


@pytest.mark.slow
def test_ridge_fingerprints_as_ridge_and_gives_back_lambda_at_every_prefix():
    with x64():
        res = _fp(icl.ridge(0.5))
    assert res.best == "ridge" and res.reason is None, res.table()
    assert rel_err(res.fitted["ridge"]["lam"], 0.5) <= 1e-4
    # every prefix with data (k >= 2) identifies lambda; the SPD to itself is rounding only
    assert rel_err(res.fitted_by_k["ridge"]["lam"][1:], 0.5) <= 1e-4
    assert np.max(res.spd["ridge"]) <= 1e-12 * np.max(res.spd["averaging"])
    assert res.ks.tolist() == list(range(1, N + 2)) and res.best_by_k[1:] == ["ridge"] * N
    assert res.atol == ATOL and res.fit_tol == FIT_TOL and np.all(res.relative_spd[1:] <= 1e-10)


def test_gd_fingerprints_as_gd_and_gives_back_step_size_and_steps():
    with x64():
        res = _fp(icl.gradient_descent([0.35, 0.35]))
    assert res.best == "gd", res.table()
    assert res.fitted["gd"]["steps"] == 2 and rel_err(res.fitted["gd"]["eta"], 0.35) <= 1e-4
    assert np.all(res.fitted_by_k["gd"]["steps"][1:] == 2)
    assert rel_err(res.fitted_by_k["gd"]["eta"][1:], 0.35) <= 1e-4
    assert not res.at_edge["gd"].any()


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(["gd", "ridge"]), u=st.floats(0.0, 1.0))
@example(family="gd", u=1.0)  # the ends of the range are always tried: a grid that stops short fails here
@example(family="ridge", u=0.0)
def test_a_hidden_step_size_or_lambda_anywhere_in_its_range_is_given_back(family, u):
    """eta in [0.01, 3] (two steps) or lam in [0.01, 100]: inside the fitting grids, away from their edges."""
    lo, hi = {"gd": (0.01, 3.0), "ridge": (0.01, 100.0)}[family]
    value = lo * (hi / lo) ** u
    predictor = icl.gradient_descent([value, value]) if family == "gd" else icl.ridge(value)
    with x64():
        res = _fp(predictor)
    name = "eta" if family == "gd" else "lam"
    assert rel_err(res.fitted_by_k[family][name][1:], value) <= 1e-3, (value, res.fitted_by_k[family])
    assert not res.at_edge[family][1:].any()
    assert np.max(res.spd[family]) <= 1e-12 * np.max(res.spd["averaging"])
    assert res.best is not None  # the family itself, or a simpler one within the margin
    assert res.spd[res.best][-1] - res.spd[family][-1] <= ATOL * D + res.spd_gap_se[res.best][-1]


@pytest.mark.slow
def test_least_squares_fingerprints_as_itself_at_every_prefix_in_float32_even_rank_deficient():
    """Noiseless: k - 1 < d pairs leave the minimum-norm answer (Bayes with an isotropic prior ties it; least
    squares comes first). k = 1 has no context: every family predicts 0, so there is no verdict."""
    res = _fp(icl.least_squares(), task=_task(0.0))
    assert res.spd["least_squares"].dtype == np.float64 and res.ks[1] == 2
    assert res.best_by_k[1:] == ["least_squares"] * N, (res.best_by_k, res.table())
    assert res.best_by_k[0] is None and "no context" in res.reason_by_k[0]
    assert np.max(res.spd["least_squares"]) <= 1e-6 * np.max(res.spd["averaging"])


class _Constant:
    """Predicts 3 everywhere: no learning algorithm."""

    def __call__(self, prompts):
        return jnp.full(prompts.x.shape[0], 3.0, prompts.x.dtype)

    def prefix(self, prompts):
        return jnp.full(prompts.y.shape, 3.0, prompts.x.dtype)


def test_a_constant_predictor_fits_no_family_and_the_fingerprint_says_why():
    res = _fp(_Constant())
    assert res.best is None and res.best_by_k == [None] * (N + 1), res.table()
    assert "no family fits" in res.reason and all("no family fits" in r for r in res.reason_by_k[1:])
    assert np.all(res.relative_spd[1:] > FIT_TOL)
    assert "none (no family fits" in res.table()


def test_a_step_size_outside_the_grid_is_flagged_and_never_the_verdict():
    with x64():
        res = _fp(icl.gradient_descent([1e3, 1e3]))  # the grid ends at 100 / mean(x^2)
    assert np.all(res.at_edge["gd"][1:]), res.at_edge
    assert "gd" not in res.best_by_k and res.best is None, res.table()
    assert "(at grid edge)" in res.table()


class _NaNAbove:
    """Least squares, but NaN where the input's first coordinate exceeds 2 (about 2% of the points); with
    ``traced_only`` only inside a compiled evaluation (so the NaN first shows up on the evaluation prompts)."""

    def __init__(self, traced_only: bool):
        self.traced_only, self.ls = traced_only, icl.least_squares()

    def _nan(self, x, out):
        on = not self.traced_only or isinstance(x, jax.core.Tracer)
        return jnp.where((x[..., 0] > 2.0) & on, jnp.nan, out)

    def __call__(self, prompts):
        return self._nan(prompts.x_query, self.ls(prompts))

    def prefix(self, prompts):
        return self._nan(prompts.x, self.ls.prefix(prompts))


def test_nan_in_the_predictor_output_raises_value_error_with_counts_on_fitting_or_evaluation_prompts():
    """Never a verdict from NaN: whether it shows up while fitting or while judging, fingerprint refuses."""
    with pytest.raises(ValueError, match=r"_NaNAbove returned NaN or inf on \d+ of 64 fitting prompts \(k=\d"):
        _fp(_NaNAbove(traced_only=False))
    with pytest.raises(ValueError, match=r"_NaNAbove returned NaN or inf on \d+ of 64 evaluation prompts \(k=\d"):
        _fp(_NaNAbove(traced_only=True))


def test_atol_lets_a_simpler_family_tie_a_gap_smaller_than_the_margin_and_only_then():
    """ridge(0.3) is detectably not Bayes (ridge(0.25)) at 64 prompts; a margin above that gap makes Bayes tie."""
    with x64():
        strict = _fp(icl.ridge(0.3), atol=0.0)
        gap = float(strict.spd["bayes"][-1] - strict.spd["ridge"][-1]) / D
        below, above = _fp(icl.ridge(0.3), atol=0.5 * gap), _fp(icl.ridge(0.3), atol=2.0 * gap)
    assert strict.best == "ridge" and gap * D > strict.spd_gap_se["bayes"][-1], strict.table()
    assert below.best == "ridge" and above.best == "bayes", (below.table(), above.table())
    assert above.atol == 2.0 * gap and "ties within" in above.table()


def test_ilwd_recovers_a_linear_predictors_weights_with_zero_linearity_residual():
    """Probing an exactly linear predictor gives its own weights back (docs/theory.md §11)."""
    with x64():
        res = _fp(icl.ridge(0.5), num_ilwd_prompts=8, ilwd_ks=(4, N + 1), num_queries=D + 2)
    assert res.ilwd_ks.tolist() == [4, N + 1] and res.num_ilwd_prompts == 8
    assert np.max(res.linearity_residual) <= 1e-20
    assert np.max(res.ilwd["ridge"]) <= 1e-12 and np.all(res.ilwd["least_squares"] > 1e-3)
    assert np.allclose(res.ilwd_per_d["least_squares"], res.ilwd["least_squares"] / D)
    assert np.allclose(res.spd_per_d["gd"], res.spd["gd"] / D)
    p = res.predictor("ridge")
    assert isinstance(p, icl.Ridge) and rel_err(float(p.lam), 0.5) <= 1e-4
    assert set(res.to_dict()) >= {"best", "reason", "relative_spd", "at_edge", "spd_gap_se"}


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
        (dict(fit_tol=-0.1), "fit_tol"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(kwargs, name):
    args = dict(predictor=icl.ridge(0.5), task=_task(), key=jax.random.PRNGKey(0), n=N)
    args.update({k: v for k, v in kwargs.items() if k in args})
    rest = {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(ValueError, match=name):
        fingerprint(**args, **rest)


def test_bad_predictor_and_probe_points_raise_value_error():
    with pytest.raises(ValueError, match="predictor"):
        fingerprint(3.0, _task(), jax.random.PRNGKey(0), N)
    prompts = icl.Prompts(np.zeros((4, N, D)), np.zeros((4, N)), np.zeros((4, D)), np.zeros(4))
    with pytest.raises(ValueError, match="probes"):
        implicit_weights(icl.ridge(0.5), prompts, np.zeros((4, D, D)))


@pytest.mark.slow
def test_richer_families_recover_themselves_and_stay_nested_on_fresh_prompts():
    """Preconditioned GD and 3-NN fingerprint as themselves (L-BFGS, every family); fitted on some prompts and
    judged on fresh ones, GD <= preconditioned GD <= GD++ in SPD at every prefix length (ridge(1.3), d = 2)."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(D, D))
    a = 0.3 * np.eye(D) + 0.05 * (m + m.T)
    with x64():
        pgd = fingerprint(icl.gradient_descent([1.0], preconditioner=a), _task(), jax.random.PRNGKey(5), N,
                          num_prompts=256, max_steps=1, num_ilwd_prompts=0, lbfgs_iters=100)
        knn = fingerprint(icl.knn(3), _task(), jax.random.PRNGKey(6), N, num_prompts=256, max_steps=1,
                          num_ilwd_prompts=0)
    assert pgd.best == "preconditioned_gd", pgd.table()
    fitted = pgd.fitted["preconditioned_gd"]
    assert rel_err(fitted["step_sizes"][0] * fitted["preconditioner"], a) <= 1e-4
    assert knn.best == "knn" and knn.fitted["knn"]["neighbors"] == 3, knn.table()
    assert isinstance(knn.predictor("knn"), icl.KNearestNeighbours)
    nested = fingerprint(icl.ridge(1.3), icl.LinearRegressionTask.isotropic(2, 0.5), jax.random.PRNGKey(0), 6,
                         candidates=FAMILIES[:-1], num_prompts=4096, num_ilwd_prompts=0, lbfgs_iters=40)
    gd, pgd_spd, gdpp = (nested.spd[f][1:] for f in ("gd", "preconditioned_gd", "gd_plus_plus"))
    assert np.all(pgd_spd <= gd) and np.all(gdpp <= pgd_spd), nested.table()
