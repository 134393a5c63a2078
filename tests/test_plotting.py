"""icl.plotting draws every analysis from its real result and never touches matplotlib's backend; progress bars
(tqdm, ``progress=True``) write to stderr and leave no thread behind.

The analyses run at the smallest sizes (d = 2, n = 4): the figures' content is checked through their artists
(lines, bar containers, outlines), not their pixels. The backend is chosen here, by the test, never by icl.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import jax
import matplotlib
import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.patches import Rectangle

import icl
from icl import plotting

ROOT = Path(__file__).resolve().parents[1]
D, N = 2, 4
TASK = icl.LinearRegressionTask.isotropic(D, noise_std=0.3)
CONFIG = icl.TrainConfig(steps=6, batch=8, n=N, lr=1e-2, num_seeds=2)
# the candidates whose fit compiles fastest
FP_KW = {"candidates": ("averaging", "gd"), "num_prompts": 64, "num_ilwd_prompts": 0, "max_steps": 1}


@pytest.fixture(scope="module", autouse=True)
def agg_backend():
    """The test picks Agg (and puts the previous backend back); the library never does."""
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("Agg")
    yield
    plt.close("all")
    matplotlib.use(before)


def _lsa(rngs):
    return icl.LinearTransformer(D, 1, rngs=rngs)


def _fingerprint(**kw):
    return icl.fingerprint(icl.gradient_descent(0.7), TASK, jax.random.PRNGKey(0), N, **FP_KW, **kw)


@pytest.fixture(scope="module")
def trained():
    with contextlib.redirect_stderr(io.StringIO()):
        return icl.train(_lsa, TASK, CONFIG, progress=True)


@pytest.fixture(scope="module")
def fp():
    with contextlib.redirect_stderr(io.StringIO()):
        return _fingerprint(progress=True)


@pytest.fixture(scope="module")
def curves():
    return icl.error_curves({"averaging": icl.averaging(), "gd": icl.gradient_descent(0.5)}, TASK,
                            jax.random.key(1), N, num_prompts=200, chunk_size=100)


@pytest.fixture(scope="module")
def calibration():
    """One real calibration result; the plots of several predictors get it twice (under two names)."""
    return icl.calibration(icl.bayes_predictive(TASK), TASK, jax.random.key(2), N, num_prompts=200, chunk_size=100)


@pytest.fixture(autouse=True)
def close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def _maps(layers=1, heads=2, t=2 * N + 1):
    """Attention maps ``[layers, batch, heads, T, T]``, causal and row-stochastic (a Transformer's are drawn in
    tests/test_transformer.py)."""
    scores = np.tril(np.random.default_rng(0).random((layers, 2, heads, t, t)) + 0.1)
    return scores / scores.sum(-1, keepdims=True)


def _every_plot(trained, fp, curves, calibration) -> dict:
    """Every figure of icl.plotting (and icl.plot_fingerprint, exported from icl.fingerprint), each on a real
    result: ``{function name: what it returned}``."""
    import matplotlib.pyplot as plt

    one_step_runs = [{"noise": 0.1, "gamma_learned": np.eye(D), "eta_learned_mean": 0.5, "eta_learned_std": 0.01}]
    diversity = {"model": (np.array([1.0, 0.8, 0.5, 0.45]), np.full(4, 0.02)), "dMMSE": np.array([0.9, 0.7, 0.6, 0.6]),
                 "ridge": 0.5}
    return {
        "plot_error_curves": plotting.plot_error_curves(curves, d=D),
        "plot_fingerprint_heatmap": plotting.plot_fingerprint_heatmap(fp),
        "plot_coverage": plotting.plot_coverage({"a": calibration, "b": calibration}),
        "plot_pit_histogram": plotting.plot_pit_histogram(calibration),
        "plot_task_diversity": plotting.plot_task_diversity([2, 8, 32, np.inf], diversity),
        "plot_learning_curves": plotting.plot_learning_curves(trained),
        "plot_attention_maps": plotting.plot_attention_maps(_maps(), encoding="interleaved"),
        "gamma_heatmap": plotting.gamma_heatmap(plt.subplots()[1], np.eye(D), "gamma"),
        "plot_one_step_gd": plotting.plot_one_step_gd(one_step_runs, (np.linspace(0, 1, 5), np.full(5, 0.5)), D, N),
        "plot_fingerprint": icl.plot_fingerprint(fp),
    }


def test_error_curves_draw_one_line_and_band_per_predictor_and_raw_error_scales_by_the_normaliser(curves):
    ax = plotting.plot_error_curves(curves, d=D)
    assert [line.get_label() for line in ax.lines] == ["averaging", "gd", f"k = d + 1 = {D + 1}"]
    assert len(ax.collections) == 2  # the SE bands
    np.testing.assert_allclose(ax.lines[1].get_ydata(), curves["gd"].mean)
    raw = plotting.plot_error_curves(curves["gd"], normalise=False, bands=0)
    assert len(raw.lines) == 1 and not raw.collections
    np.testing.assert_allclose(raw.lines[0].get_ydata(), curves["gd"].mean * curves["gd"].normaliser)
    with pytest.raises(ValueError, match="normaliser"):
        plotting.plot_error_curves({"a": {"mean": np.ones(3), "se": np.ones(3)}}, normalise=False)


def test_fingerprint_heatmap_outlines_the_verdict_at_every_prefix_length_that_has_one(fp):
    ax = plotting.plot_fingerprint_heatmap(fp)
    outlines = [p for p in ax.patches if isinstance(p, Rectangle)]
    verdicts = [b for b in fp.best_by_k if b is not None]
    assert len(outlines) == len(verdicts) > 0 and fp.best_by_k[0] is None  # k = 1: no context, no verdict
    rows = [round(p.get_y() + 0.5) for p in outlines]
    assert [fp.families[r] for r in rows] == verdicts
    assert ax.images[0].get_array().shape == (len(fp.families), len(fp.ks))
    assert len(plotting.plot_fingerprint_heatmap(fp, ks=[1, N + 1]).patches) == int(fp.best is not None)
    with pytest.raises(ValueError, match="prefix lengths"):
        plotting.plot_fingerprint_heatmap(fp, ks=[N + 5])


def test_coverage_and_pit_histogram_draw_every_predictor(calibration):
    two = icl.CalibrationComparison(calibration.num_prompts, {"bayes": calibration, "again": calibration})
    ax = plotting.plot_coverage(two)
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert ax.lines[0].get_label() == "calibrated" and len(errorbars) == 2  # the diagonal, one per predictor
    levels = sorted(calibration.coverage)
    np.testing.assert_allclose(errorbars[0].lines[0].get_xdata(), levels)
    np.testing.assert_allclose(errorbars[0].lines[0].get_ydata(), [calibration.coverage[lv][0] for lv in levels])
    ax = plotting.plot_pit_histogram(two)
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2 and all(len(b) == 10 for b in bars)
    np.testing.assert_allclose([r.get_height() for r in bars[0]], calibration.pit_histogram[0])
    single = plotting.plot_pit_histogram(calibration, bands=0)
    assert len([c for c in single.containers if isinstance(c, BarContainer)]) == 1
    with pytest.raises(ValueError, match="prefix"):
        plotting.plot_coverage(calibration, k=2)


def test_task_diversity_and_learning_curves_draw_their_series(trained):
    ax = plotting.plot_task_diversity([2, 8, 32, np.inf], {"model": np.array([1.0, 0.8, 0.5, 0.45]),
                                                           "ridge": 0.5}, transition=8)
    labels = [line.get_label() for line in ax.lines]
    assert labels[0] == "model" and "ridge" in labels and any(lb.startswith("transition") for lb in labels)
    assert len(ax.lines[0].get_xdata()) == 3 and ax.get_xscale() == "log"  # M = inf: a dotted line instead
    ax = plotting.plot_learning_curves(trained)
    assert len(ax.lines) == CONFIG.num_seeds and ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.lines[1].get_ydata(), trained.losses[1])
    two = plotting.plot_learning_curves({"a": trained, "b": trained.losses}, smooth=2)
    assert len(two.lines) == 2 * CONFIG.num_seeds and len(two.lines[0].get_ydata()) == CONFIG.steps - 1
    assert two.lines[0].get_color() == two.lines[1].get_color() != two.lines[2].get_color()


def test_attention_maps_live_in_plotting_and_keep_their_old_names():
    assert icl.plot_attention_maps is plotting.plot_attention_maps
    assert icl.models.plot_attention_maps is plotting.plot_attention_maps
    fig = plotting.plot_attention_maps(_maps(2, 3), encoding="interleaved")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2 * 3 and panels[0].get_xticklabels()[-1].get_text() == "xq"


def test_no_plot_function_sets_or_switches_the_backend(monkeypatch, trained, fp, curves, calibration):
    import matplotlib.pyplot as plt

    calls = []
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: calls.append(("use", a)))
    monkeypatch.setattr(plt, "switch_backend", lambda *a, **k: calls.append(("switch_backend", a)))
    before = matplotlib.get_backend()
    drawn = _every_plot(trained, fp, curves, calibration)
    assert set(plotting.__all__) <= set(drawn) and all(v is not None for v in drawn.values())
    assert not calls and matplotlib.get_backend() == before


def test_importing_icl_and_plotting_keeps_the_backend_the_user_chose():
    script = ("import matplotlib, numpy as np\nimport icl, icl.plotting, icl.models\n"
              "icl.plot_attention_maps(np.ones((1, 1, 1, 3, 3)))\nicl.plot_learning_curves(np.ones((2, 5)))\n"
              "print(matplotlib.get_backend())\n")
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().lower() == "svg"


def test_the_library_source_never_sets_a_backend_nor_shows_a_figure():
    bad = []
    for path in sorted((ROOT / "icl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("use", "switch_backend", "show"):
                owner = ast.unparse(node.func.value)
                if owner in ("matplotlib", "mpl", "plt", "pyplot", "matplotlib.pyplot"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node.func)}")
    assert not bad, bad


def _tqdm_threads():
    from tqdm.std import TMonitor

    return [t for t in threading.enumerate() if isinstance(t, TMonitor)]


def test_train_progress_goes_to_stderr_and_leaves_no_thread(capsys, trained):
    import tqdm

    before = set(threading.enumerate())
    result = icl.train(_lsa, TASK, CONFIG, progress=True)
    out = capsys.readouterr()
    assert "train" in out.err and f"{CONFIG.steps}/{CONFIG.steps}" in out.err and "loss" in out.err
    assert out.out == ""
    assert set(threading.enumerate()) <= before and not _tqdm_threads()
    assert threading.main_thread() in threading.enumerate()
    assert tqdm.tqdm.monitor_interval == 10  # tqdm's own class is left as it was
    np.testing.assert_array_equal(result.losses, trained.losses)


def test_fingerprint_and_monte_carlo_progress_go_to_stderr_and_leave_no_thread(capsys, fp):
    before = set(threading.enumerate())
    again = _fingerprint(progress=True)
    out = capsys.readouterr()
    assert "fingerprint" in out.err and "SPD on fresh prompts" in out.err and out.out == ""
    assert set(threading.enumerate()) <= before and not _tqdm_threads()
    assert again.best == fp.best and again.best_by_k == fp.best_by_k
    for f in fp.families:
        np.testing.assert_array_equal(again.spd[f], fp.spd[f])

def test_evaluation_progress_shows_one_step_per_chunk_and_changes_no_statistic(capsys, curves):
    """Under a bar the chunks run one compiled call each; the statistics are those of one scan over them."""
    shown = icl.error_curves({"averaging": icl.averaging(), "gd": icl.gradient_descent(0.5)}, TASK,
                             jax.random.key(1), N, num_prompts=200, chunk_size=100, progress=True)
    out = capsys.readouterr()
    assert "error_curves" in out.err and "2/2" in out.err and out.out == ""
    for name, curve in curves.items():
        np.testing.assert_allclose(shown[name].mean, curve.mean, rtol=1e-6)
        np.testing.assert_allclose(shown[name].se, curve.se, rtol=1e-5)
