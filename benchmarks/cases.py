"""Benchmark cases: each runs in its own process (``python benchmarks/cases.py CASE [--quick]``).

Every case uses the public ``icl`` API only and writes a dict ``{"results": [...], "figures": {...}}``
through :func:`harness.write_child_result`. The figures and their targets:

- ``train_step_over_sampling.*``: a training step (forward, backward, Adam) against sampling its prompts.
  Each step's cost is the difference between ``train`` with ``3S`` and with ``S`` steps run as chunks of
  ``S`` (the same compiled chunk, so set-up and compilation cancel); sampling is a jitted ``lax.scan`` of
  ``task.sample`` over the same keys.
- ``vmapped_speedup.S32``: 32 seeds in one vmapped ``train`` against 32 sequential one-seed calls.
- ``evaluate.second_over_first``: a second ``compare_predictors`` call (same shapes, another step size)
  against the first, 20,000 prompts: the evaluator compiles once.
- ``transformer_over_garg.small``: ``icl.Transformer`` trained by ``icl.train`` at the small configuration
  (d=5, 20 points, 4 layers, width 64, 2 heads, batch 64, every-prefix loss, Adam at lr 1e-4), side by side
  with Garg et al.'s own training step when their code is given (``--garg-src``/``--garg-python``, or the
  environment variables ``ICL_BENCH_GARG_SRC``/``ICL_BENCH_GARG_PYTHON``), otherwise against the constant
  ``GARG_PROMPTS_PER_S``; the standard configuration (d=20, 41 points, 12 layers, width 256, 8 heads) is
  measured the same way and reported in the figures. See :func:`side_by_side`.
- baselines: microseconds per prompt of each predictor and of its ``prefix`` (all n predictions).
- ``selective_ssm_over_attention.1block`` (the families case, :func:`case_families`): at experiments/architectures.py's
  defaults (d=5, n=11, batch 128, every-prefix loss, width 32, 2 blocks, 4 heads, state 16), each family's
  training step (``icl.LinearRNN``, ``icl.DiagonalSSM``, ``icl.SelectiveSSM``, the plain ``icl.Transformer``, the
  looped Transformer at b=4 with input injection and ``icl.loop_window_loss``, the looped one-layer
  ``icl.SparseLinearTransformer`` at 3 loops), measured as ``train_step_over_sampling`` above and all in the same
  rounds: ms per step, prompts/s, step / sampling and XLA's flops per step. The target: a one-block SelectiveSSM's
  step over a one-block softmax-attention Transformer's (attention and MLP), same width, d, n, batch, <= 1.

Their code is never copied here: a worker process (``cases.py garg_worker``, run by *their* Python with
PyTorch and ``transformers``) imports their ``models.py``, ``samplers.py``, ``tasks.py`` and ``train.py``
from the folder given and runs their ``train_step``; the packages their modules import only for baselines
and logging (scikit-learn, xgboost, wandb, quinine, funcy, munch, pandas) are stubbed when absent.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Result,
    Window,
    Worker,
    gemm_ceiling,
    hlo_dot_flops,
    interleaved,
    median,
    rates,
    ratio,
    write_child_result,
)

TRAIN_RATIO_TARGET = 1.3  # one-layer models
LT3_RATIO_TARGET = 1.5  # the 3-layer linear transformer
AHN_PROMPTS_PER_S = 8.6e4  # Ahn et al.'s own loop (PyTorch, 2 threads), measured here side by side;
#   re-checked 2026-12-01 on this machine at load 1.5: 7.5e4 prompts/s
GARG_PROMPTS_PER_S = 1079.0  # Garg et al.'s own code at the small configuration, measured here
# Side by side (2026-12-01, chengxiang/LinearTransformer b6ddc35, dtsip/in-context-learning 3383371, torch 2.13 CPU;
# warmed-up processes, alternating >= 15 s windows, medians of per-round ratios, load 4-10): icl's lt3 against
# Ahn's loop 7.6x (OMP_WAIT_POLICY=PASSIVE, 2 threads; CPU-s per prompt 7.6x); icl's Transformer against Garg's
# train.py 1.71x (1 thread: their 2 threads spin and collapse under load; CPU-s per prompt 1.87x).
AHN_SIDE_BY_SIDE_RATIO = 7.6
GARG_SIDE_BY_SIDE_RATIO = 1.71
SEEDS_TARGET = 2.0
EVAL_TARGET = 0.2

THROUGHPUT_CASES = {  # name: (d, n, batch, layers)
    "lsa1_d10_n10_b2048": (10, 10, 2048, 1),
    "lsa1_d20_n40_b2048": (20, 40, 2048, 1),
    "lt3_d5_n20_b20000": (5, 20, 20000, 3),
}
# The families case: experiments/architectures.py's defaults (its OWN and FLAGS; one seed)
FAMILY_SETTINGS = dict(d=5, n=11, batch=128, noise_std=0.5, width=32, layers=2, heads=4, state_size=16, loop_b=4,
                       sparse_loops=3)
SSM_OVER_ATTENTION_TARGET = 1.0  # a selective-scan block costs no more than a same-width attention block


def _block(tree):
    import jax

    return jax.block_until_ready(tree)


def _xla_costs(model_fn, task, config, sample: bool = True, loss_fn=None) -> dict:
    """XLA's cost analysis (flops and bytes accessed) of one training step and of sampling its prompts, and the
    flops of their matrix products alone (``dot_flops``, counted from the optimised HLO).

    The step is the engine's (sample, value-and-grad of ``icl.training_loss`` with ``loss_fn`` if given, Optax
    update), written with the public API and compiled with icl's compiler options. A step that is bound by memory
    traffic cannot cost less than its ``bytes_ratio`` times sampling; one bound by arithmetic, than its
    ``flops_ratio``.
    """
    import jax
    import optax
    from flax import nnx

    import icl
    from icl.compiler import compiler_options

    # shapes only: the programs are lowered from abstract values, so nothing is initialised op by op
    graphdef, params = nnx.split(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))
    opt = icl.make_optimizer(config)

    def step(params, opt_state, key):
        prompts = task.sample(key, config.batch, config.n)
        loss_of = lambda p: icl.training_loss(nnx.merge(graphdef, p), prompts, config, loss_fn)  # noqa: E731
        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def sample_fn(key):
        p = task.sample(key, config.batch, config.n)
        return p.y.sum() + p.y_query.sum()

    def cost(fn, *args):
        compiled = jax.jit(fn, compiler_options=compiler_options()).lower(*args).compile()
        c = compiled.cost_analysis()
        c = c[0] if isinstance(c, (list, tuple)) else c
        return {"flops": float(c["flops"]), "bytes": float(c["bytes accessed"]),
                "dot_flops": hlo_dot_flops(compiled.as_text())}

    key = jax.random.key(0)
    train = cost(step, params, jax.eval_shape(opt.init, params), key)
    if not sample:  # the training step only
        return {"train": train}
    samp = cost(sample_fn, key)
    return dict(train=train, sample=samp, flops_ratio=train["flops"] / samp["flops"],
                bytes_ratio=train["bytes"] / samp["bytes"])


# ---------------------------------------------------------------------------------------------------------------
# A training step against sampling its prompts (the throughput and families cases): each step's cost is the
# difference between icl.train with 3S and S steps in chunks of S, timed in interleaved rounds with a jitted
# lax.scan of task.sample over 2S keys (the prompts of the 2S steps the difference times).

def _training_calls(model_fn, task, chunk: int, loss_fn=None, **config) -> dict:
    """``{"train_1": ..., "train_3": ...}``: zero-argument calls of ``icl.train`` for ``chunk`` and ``3 chunk``
    steps in chunks of ``chunk`` (``progress_every``), ``config`` the rest of the :class:`icl.TrainConfig`."""
    import icl

    def run(k):
        cfg = icl.TrainConfig(steps=k * chunk, progress_every=chunk, **config)
        return icl.train(model_fn, task, cfg, loss_fn=loss_fn).losses

    return {"train_1": lambda: run(1), "train_3": lambda: run(3)}


def _sampling_call(task, batch: int, n: int, steps: int):
    """A zero-argument blocking call: a jitted ``lax.scan`` of ``task.sample(key, batch, n)`` over ``steps`` keys."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), steps)

    @jax.jit
    def sample(keys):
        def body(c, k):
            p = task.sample(k, batch, n)
            return c + p.y.sum() + p.y_query.sum(), None

        return jax.lax.scan(body, jnp.zeros(()), keys)[0]

    return lambda: _block(sample(keys))


def _timed_steps(calls: dict, sampling, chunk: int, rounds: int) -> tuple[dict, list[float]]:
    """Compile every call (``{name: _training_calls(...)}``) and ``sampling`` (over ``2 chunk`` keys), then time
    them all in the same :func:`harness.interleaved` rounds. Returns ``({name: {"wall": [s per step, per round],
    "cpu": [...]}}, [sampling s per step, per round])``: a step is ``(train_3 - train_1) / (2 chunk)``."""
    fns = {f"{name}.{k}": f for name, pair in calls.items() for k, f in pair.items()} | {"sample": sampling}
    for f in fns.values():
        f()
    t = interleaved(fns, rounds)
    steps = {name: {kind: [(c - a) / (2 * chunk) for a, c in zip(t[f"{name}.train_1"][kind],
                                                                   t[f"{name}.train_3"][kind])]
                    for kind in ("wall", "cpu")} for name in calls}
    return steps, [s / (2 * chunk) for s in t["sample"]["wall"]]


def _step_figures(step_s: list[float], sample_s: list[float], batch: int) -> dict:
    """ms per training step and prompts/s (medians over rounds), and ``ratio``: the median of per-round
    ``step / sampling``."""
    train_ms = 1e3 * median(step_s)
    return dict(train_ms_per_step=train_ms, train_prompts_per_s=batch / train_ms * 1e3,
                ratio=median([a / b for a, b in zip(step_s, sample_s)]))


def case_throughput(quick: bool) -> dict:
    import icl

    results, figures = [], {}
    rounds = 3 if quick else 5
    for name, (d, n, batch, layers) in THROUGHPUT_CASES.items():
        task = icl.LinearRegressionTask.isotropic(d, 0.5)
        chunk = 5 if quick else 10

        def model_fn(rngs, d=d, layers=layers):
            return icl.LinearTransformer(d, layers, rngs=rngs)

        config = dict(batch=batch, n=n, lr=1e-3, schedule="constant")
        xla = _xla_costs(model_fn, task, icl.TrainConfig(steps=chunk, **config))
        steps, sample_s = _timed_steps({"lsa": _training_calls(model_fn, task, chunk, **config)},
                                       _sampling_call(task, batch, n, 2 * chunk), chunk, rounds)
        fig = _step_figures(steps["lsa"]["wall"], sample_s, batch)
        sample_ms = 1e3 * median(sample_s)
        figures[name] = dict(train_ms_per_step=fig["train_ms_per_step"], sample_ms_per_step=sample_ms,
                             train_prompts_per_s=fig["train_prompts_per_s"],
                             sample_prompts_per_s=batch / sample_ms * 1e3, ratio=fig["ratio"], xla_per_step=xla)
        step_ratio, train_ms = fig["ratio"], fig["train_ms_per_step"]
        if layers > 1:
            figures[name]["side_by_side_over_ahn"] = AHN_SIDE_BY_SIDE_RATIO
        target = LT3_RATIO_TARGET if layers > 1 else TRAIN_RATIO_TARGET
        results.append(Result(f"train_step_over_sampling.{name}", step_ratio, "x", f"<= {target}",
                              step_ratio <= target))
        if layers > 1:
            speed = batch / train_ms * 1e3
            results.append(Result(f"over_ahn.{name}", speed / AHN_PROMPTS_PER_S, "x",
                                  f">= 3 (Ahn et al.'s loop: {AHN_PROMPTS_PER_S:.3g} prompts/s here)",
                                  speed / AHN_PROMPTS_PER_S >= 3))
    return dict(results=results, figures=figures)


def _family_models(s: dict) -> dict:
    """``{name: (model_fn, loss_fn, linear)}`` at the settings ``s`` (``FAMILY_SETTINGS``): the families of
    experiments/architectures.py's table (its ``model_fn``), then the one-block pair of the selective-scan target."""
    import icl

    d, n, w, L, h, N = s["d"], s["n"], s["width"], s["layers"], s["heads"], s["state_size"]

    def attention(layers, **kw):
        return lambda r: icl.Transformer(d, num_layers=layers, width=w, num_heads=h, max_pairs=2 * n, rngs=r, **kw)

    return {
        "linear_rnn": (lambda r: icl.LinearRNN(d, rngs=r), None, True),
        "diagonal_ssm": (lambda r: icl.DiagonalSSM(d, num_layers=L, width=w, state_size=N, rngs=r), None, False),
        "selective_ssm": (lambda r: icl.SelectiveSSM(d, num_layers=L, width=w, state_size=N, rngs=r), None, False),
        "transformer": (attention(L), None, False),
        "looped_transformer": (attention(1, loops=s["loop_b"], input_injection=True),
                               icl.loop_window_loss(s["loop_b"], prefix=True), False),
        "looped_sparse": (lambda r: icl.SparseLinearTransformer(d, 1, loops=s["sparse_loops"], rngs=r), None, True),
        "selective_ssm_1block": (lambda r: icl.SelectiveSSM(d, num_layers=1, width=w, state_size=N, rngs=r), None,
                                 False),
        "attention_1block": (attention(1), None, False),
        "attention_only_1block": (attention(1, mlp=False), None, False),
    }


def case_families(quick: bool) -> dict:
    """The model families' training step against sampling their prompts, and the selective scan against attention.

    At ``FAMILY_SETTINGS`` (experiments/architectures.py's defaults: the dense noisy task d = 5, sigma = 0.5,
    n = 11, every-prefix loss, batch 128, one seed; width 32, 2 blocks, 4 heads, state 16; the looped Transformer
    one block at b = 4 loops with ``icl.loop_window_loss(4, prefix=True)``, the SparseLinearTransformer one layer
    at 3 loops; Adam at constant lr, 1e-2 for the linear families, 3e-3 with global-norm clipping at 1 for the
    others), every model's step and one sampling call are timed in the same interleaved rounds (see
    :func:`_timed_steps`). Figures per model: ``train_ms_per_step``, ``train_prompts_per_s`` (medians over
    rounds), ``ratio`` (median of per-round step / sampling), ``params``, and XLA's ``xla_flops_per_step``,
    ``xla_dot_flops_per_step``, ``xla_bytes_per_step`` and ``xla_flops_over_sampling``. Target:
    ``selective_ssm_over_attention``, the median of per-round step-time ratios of a one-block SelectiveSSM over a
    one-block softmax-attention Transformer (attention and MLP, as the table's), same width, d, n, batch;
    reported beside it: the same against an attention-only block (``mlp=False``), its CPU-time version, the
    ratio of XLA's flops, and the two-block SelectiveSSM over the two-block Transformer.
    """
    import jax
    import numpy as np
    from flax import nnx

    import icl

    s = FAMILY_SETTINGS
    rounds, chunk = (3, 5) if quick else (5, 10)
    task = icl.LinearRegressionTask.isotropic(s["d"], s["noise_std"])
    base = dict(batch=s["batch"], n=s["n"], schedule="constant", loss="every_prefix")
    calls, figures = {}, {}
    for name, (model_fn, loss_fn, linear) in _family_models(s).items():
        config = dict(base, lr=1e-2) if linear else dict(base, lr=3e-3, grad_clip=1.0)
        calls[name] = _training_calls(model_fn, task, chunk, loss_fn, **config)
        xla = _xla_costs(model_fn, task, icl.TrainConfig(steps=chunk, **config), loss_fn=loss_fn)
        params = nnx.state(nnx.eval_shape(lambda f=model_fn: f(nnx.Rngs(0))), nnx.Param)
        figures[name] = dict(params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
                             xla_flops_per_step=xla["train"]["flops"], xla_dot_flops_per_step=xla["train"]["dot_flops"],
                             xla_bytes_per_step=xla["train"]["bytes"], xla_flops_over_sampling=xla["flops_ratio"])
    steps, sample_s = _timed_steps(calls, _sampling_call(task, s["batch"], s["n"], 2 * chunk), chunk, rounds)
    for name in calls:
        figures[name] = dict(_step_figures(steps[name]["wall"], sample_s, s["batch"]), **figures[name])

    def over(a, b, kind="wall"):
        return median([x / y for x, y in zip(steps[a][kind], steps[b][kind])])

    r = over("selective_ssm_1block", "attention_1block")
    sample_ms = 1e3 * median(sample_s)
    figures |= {
        "settings": dict(s, chunk=chunk, rounds=rounds, seeds=1),
        "sample_ms_per_step": sample_ms, "sample_prompts_per_s": s["batch"] / sample_ms * 1e3,
        "selective_ssm_over_attention": dict(
            wall=r, cpu=over("selective_ssm_1block", "attention_1block", "cpu"),
            xla_flops=figures["selective_ssm_1block"]["xla_flops_per_step"]
            / figures["attention_1block"]["xla_flops_per_step"],
            over_attention_only=over("selective_ssm_1block", "attention_only_1block"),
            two_blocks_over_transformer=over("selective_ssm", "transformer")),
        "about": (f"icl.train steps of each family (d={s['d']}, n={s['n']}, batch {s['batch']}, every-prefix loss, "
                  f"width {s['width']}, {s['layers']} blocks, state {s['state_size']}) against a jitted scan of "
                  "task.sample, in interleaved rounds; a step is (3S - S steps) / 2S; ratios are medians of "
                  "per-round ratios"),
    }
    target = (f"<= {SSM_OVER_ATTENTION_TARGET} (1-block SelectiveSSM over 1-block softmax Transformer, width "
              f"{s['width']}, d={s['d']}, n={s['n']}, batch {s['batch']})")
    return dict(results=[Result("selective_ssm_over_attention.1block", r, "x", target,
                                r <= SSM_OVER_ATTENTION_TARGET)], figures=figures)


def case_seeds(quick: bool) -> dict:
    import icl

    d = n = 10
    steps = 60 if quick else 200
    task = icl.LinearRegressionTask.isotropic(d)
    model_fn = lambda rngs: icl.LinearTransformer(d, 1, rngs=rngs)  # noqa: E731
    vm = icl.TrainConfig(steps=steps, batch=256, n=n, lr=1e-2, num_seeds=32)
    one = [icl.TrainConfig(steps=steps, batch=256, n=n, lr=1e-2, num_seeds=1, seed=i) for i in range(32)]
    fns = {"vmapped": lambda: icl.train(model_fn, task, vm), "sequential": lambda: [icl.train(model_fn, task, c) for c in one]}
    for f in fns.values():
        f()
    t = interleaved(fns, 1 if quick else 3)
    speedup = ratio(t, "sequential", "vmapped")
    figures = {"S32": dict(vmapped_s=median(t["vmapped"]["wall"]), sequential_s=median(t["sequential"]["wall"]),
                           speedup_wall=speedup, speedup_cpu=ratio(t, "sequential", "vmapped", "cpu"))}
    return dict(results=[Result("vmapped_speedup.S32", speedup, "x", f">= {SEEDS_TARGET}", speedup >= SEEDS_TARGET)],
                figures=figures)


def case_evaluate(quick: bool) -> dict:
    import time

    import jax

    import icl

    d, n = 10, 20
    task = icl.LinearRegressionTask.isotropic(d, 0.5)
    times = []
    for eta, lam in ((0.5, 0.25), (0.6, 0.3)):
        preds = {"gd": icl.gradient_descent(eta), "ridge": icl.ridge(lam), "ols": icl.least_squares()}
        t0 = time.perf_counter()
        icl.compare_predictors(preds, task, jax.random.key(0), n, num_prompts=20_000, pairs=[("gd", "ridge")])
        times.append(time.perf_counter() - t0)
    r = times[1] / times[0]
    return dict(results=[Result("evaluate.second_over_first", r, "x", f"<= {EVAL_TARGET}", r <= EVAL_TARGET)],
                figures={"compare_predictors": dict(first_s=times[0], second_s=times[1])})


# Garg et al.'s configurations: d, points per prompt (their n_points: every point is a trained prediction),
# layers, width, heads; batch 64, Adam at lr 1e-4 (their conf/base.yaml), no curriculum (its final length).
GARG_CONFIGS = {
    "small": dict(d=5, points=20, layers=4, width=64, heads=2, batch=64),
    "standard": dict(d=20, points=41, layers=12, width=256, heads=8, batch=64),
}
# Steps per timed window: (steps per icl chunk, timed chunks), full / quick. icl's window is the chunks of one
# icl.train call after its first (warm) chunk; their window is as many steps of their loop.
GARG_WINDOWS = {"small": ((10, 5), (10, 2)), "standard": ((1, 3), (1, 1))}
# --smoke: the same code at toy sizes in seconds, to check the pipeline (their workers included); not figures
SMOKE_CONFIGS = {"small": dict(d=2, points=4, layers=1, width=8, heads=2, batch=4),
                 "standard": dict(d=3, points=5, layers=2, width=16, heads=2, batch=4)}
GARG_LR = 1e-4


def garg_tokens(points: int) -> dict:
    """Tokens per prompt at ``points`` trained predictions: their prompt interleaves ``points`` pairs (``2 *
    points`` tokens, the last label's token computed but never read); icl trains the same ``points`` predictions
    with ``n = points - 1`` context pairs and the query as the last pair, and drops the unread last label
    (``2 * points - 1`` tokens)."""
    return {"icl": 2 * points - 1, "garg": 2 * points}


def gemm_shapes(cfg: dict) -> list[tuple[int, int, int]]:
    """The model's dense-layer products ``[rows, in] @ [in, out]`` over a batch's icl tokens: qkv, attention
    out, MLP in, MLP out."""
    rows, w = cfg["batch"] * garg_tokens(cfg["points"])["icl"], cfg["width"]
    return [(rows, w, 3 * w), (rows, w, w), (rows, w, 4 * w), (rows, 4 * w, w)]


class _Stop(Exception):
    """Raised from a training callback to end a timed ``icl.train`` call after its last timed chunk."""


def _icl_window(cfg: dict, chunk: int, chunks: int):
    """A self-timed window of icl's training step: one ``icl.train`` call (the Transformer of ``cfg``, ``n =
    points - 1``, every-prefix loss, Adam at constant lr) in chunks of ``chunk`` steps, timed from the end of its
    first chunk to the end of chunk ``chunks + 1`` (the callback then stops it, so the final chunk, which also
    measures a last loss, never runs). Set-up, compilation (cached after the first call) and the first chunk are
    outside the window. Returns a zero-argument callable giving a :class:`harness.Window` (units: steps)."""
    import icl

    d = cfg["d"]
    task = icl.LinearRegressionTask.isotropic(d)
    config = icl.TrainConfig(steps=(chunks + 2) * chunk, batch=cfg["batch"], n=cfg["points"] - 1, lr=GARG_LR,
                             schedule="constant", loss="every_prefix", progress_every=chunk)

    def model_fn(rngs):
        return icl.Transformer(d, num_layers=cfg["layers"], width=cfg["width"], num_heads=cfg["heads"], rngs=rngs)

    def window() -> Window:
        marks = []

        def callback(step, losses):
            marks.append((time.perf_counter(), time.process_time()))
            if len(marks) == chunks + 1:
                raise _Stop

        try:
            icl.train(model_fn, task, config, callback=callback)
        except _Stop:
            pass
        (t0, c0), (t1, c1) = marks[0], marks[-1]
        return Window(t1 - t0, c1 - c0, chunks * chunk)

    return window, model_fn, task, config


def _garg_worker_argv(garg: dict, cfg: dict, threads: int) -> list[str]:
    return [garg["python"], str(Path(__file__).resolve()), "garg_worker", "--garg-src", garg["src"],
            "--threads", str(threads), "--config", json.dumps(cfg), "--lr", str(GARG_LR)]


def _garg_env(threads: int) -> dict:
    # Their Python runs with its own packages only; thread counts pinned for every pool torch may use.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def side_by_side(configs: dict, rounds: int, windows: dict, garg: dict | None = None, threads=(2, 1)) -> dict:
    """icl's training step against Garg et al.'s, per configuration, in interleaved windows.

    For each configuration (``GARG_CONFIGS``' keys: d, points, layers, width, heads, batch), ``rounds``
    rounds (order rotating) of: an icl window (:func:`_icl_window`, ``windows[name] = (chunk, chunks)``), and
    when ``garg`` (``{"src": folder of their src/, "python": interpreter with torch and transformers}``) is
    given, one window of ``chunk * chunks`` steps of their loop per torch thread count in ``threads``, each in
    its own warmed-up worker process (their model, ``samplers``/``tasks`` and ``train_step``; the same batch,
    points, learning rate). Equal work per prompt: both train ``points`` predictions per prompt (icl with ``n =
    points - 1`` and the query as the last pair), over ``2 points - 1`` (icl) and ``2 points`` (their) tokens.

    Per round, each side's prompts/s; the ratio is the median of per-round ratios (icl over their faster
    thread setting, and over each). Also: XLA's cost analysis of icl's compiled step (all flops, and those of
    its matrix products), torch's count of their step's matrix-product flops (``FlopCounterMode``), each
    side's achieved GFLOP/s, and a GEMM ceiling measured in every round on the model's shapes
    (:func:`gemm_shapes`): jitted JAX matmuls with icl's compiler options and with XLA's defaults, and
    ``torch.mm`` in each worker. Returns ``{name: figures}``.
    """
    return {name: _compare(cfg, *windows[name], rounds, garg, threads) for name, cfg in configs.items()}


def _compare(cfg: dict, chunk: int, chunks: int, rounds: int, garg: dict | None, threads) -> dict:
    """One configuration of :func:`side_by_side`."""
    import jax

    import icl
    from icl.compiler import compiler_options

    fig = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "load_average_start": list(os.getloadavg()), "config": dict(cfg), "icl_n": cfg["points"] - 1,
           "targets_per_prompt": cfg["points"], "tokens_per_prompt": garg_tokens(cfg["points"]),
           "steps_per_window": chunk * chunks, "rounds": rounds}
    window, model_fn, task, config = _icl_window(cfg, chunk, chunks)
    xla = _xla_costs(model_fn, task, config, sample=False)["train"]
    shapes = gemm_shapes(cfg)
    workers = {}
    ceilings = {"jax_icl_options": [], "jax_xla_defaults": []}

    def jax_gemm(key, options):
        def run():
            ceilings[key].append(gemm_ceiling(shapes, repeats=3, compiler_options=options))
        return run

    def torch_gemm(t):
        def run():
            ceilings[f"torch_t{t}"].append(workers[t].call(cmd="gemm", shapes=shapes, repeats=3)["gflops"])
        return run

    def garg_window(t):
        def run():
            r = workers[t].call(cmd="steps", n=chunk * chunks)
            return Window(r["wall"], r["cpu"], r["steps"])
        return run

    try:
        if garg is not None:
            for t in threads:
                workers[t] = Worker(_garg_worker_argv(garg, cfg, t), env=_garg_env(t))
                workers[t].call(cmd="steps", n=chunk * chunks)  # start-up and warm-up
                ceilings[f"torch_t{t}"] = []
        window()  # compiles icl's chunk (the workers warmed up above)
        fns = {"icl": window} | {f"garg_t{t}": garg_window(t) for t in workers}
        fns |= {"gemm_jax_icl": jax_gemm("jax_icl_options", compiler_options()),
                "gemm_jax_xla": jax_gemm("jax_xla_defaults", None)}
        fns |= {f"gemm_torch_t{t}": torch_gemm(t) for t in workers}
        timing = interleaved(fns, rounds)
        garg_info = {t: w.call(cmd="info") for t, w in workers.items()}
        garg_flops = {t: w.call(cmd="flops") for t, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    batch = cfg["batch"]
    sides = ["icl"] + [f"garg_t{t}" for t in workers]
    per_round = {k: rates(timing[k], batch) for k in sides}
    cpu_per_prompt = {k: [c / (u * batch) for c, u in zip(timing[k]["cpu"], timing[k]["units"])] for k in sides}
    for k in sides:
        tokens = garg_tokens(cfg["points"])["icl" if k == "icl" else "garg"]
        fig[k] = {"prompts_per_s": median(per_round[k]), "rounds_prompts_per_s": per_round[k],
                  "ms_per_step": 1e3 * median([w / u for w, u in zip(timing[k]["wall"], timing[k]["units"])]),
                  "tokens_per_s": median(per_round[k]) * tokens, "cpu_s_per_prompt": median(cpu_per_prompt[k])}
    fig["gemm_ceiling_gflops"] = {k: {s: median([c[s] for c in v]) for s in v[0]} for k, v in ceilings.items()}
    step_s = fig["icl"]["ms_per_step"] / 1e3
    fig["icl"].update(xla_flops_per_step=xla["flops"], xla_bytes_per_step=xla["bytes"],
                      dot_flops_per_step=xla["dot_flops"], achieved_gflops=xla["flops"] / step_s / 1e9,
                      achieved_dot_gflops=xla["dot_flops"] / step_s / 1e9)
    fig["icl"]["dot_fraction_of_jax_ceiling"] = (fig["icl"]["achieved_dot_gflops"]
                                                 / fig["gemm_ceiling_gflops"]["jax_icl_options"]["max"])
    for t in workers:
        k = f"garg_t{t}"
        step_s = fig[k]["ms_per_step"] / 1e3
        flops = garg_flops[t]["matmul_flops_per_step"]
        fig[k].update(threads=t, matmul_flops_per_step=flops, achieved_matmul_gflops=flops / step_s / 1e9,
                      matmul_fraction_of_torch_ceiling=flops / step_s / 1e9
                      / fig["gemm_ceiling_gflops"][f"torch_t{t}"]["max"],
                      flop_counts=garg_flops[t]["by_op"], info=garg_info[t])
        fig[f"ratio_over_{k}"] = median([a / b for a, b in zip(per_round["icl"], per_round[k])])
        fig[f"ratio_cpu_over_{k}"] = median([b / a for a, b in zip(cpu_per_prompt["icl"], cpu_per_prompt[k])])
    if workers:
        best = max(workers, key=lambda t: fig[f"garg_t{t}"]["prompts_per_s"])
        fig["ratio_over_garg"] = fig[f"ratio_over_garg_t{best}"]
        fig["garg_best_threads"] = best
    fig["load_average_end"] = list(os.getloadavg())
    fig["jax"] = {"jax": jax.__version__, "backend": jax.default_backend(), "compiler_options": compiler_options(),
                  "xla_threads": "XLA:CPU's default intra-op pool (one thread per usable CPU)",
                  "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                  "icl": getattr(icl, "__version__", "")}
    return fig


def _garg_spec(args) -> dict | None:
    src = args.garg_src or os.environ.get("ICL_BENCH_GARG_SRC")
    if not src:
        return None
    if not (Path(src) / "train.py").is_file():
        raise SystemExit(f"Garg et al.'s code: {src} has no train.py (give the src/ folder of their repository)")
    python = args.garg_python or os.environ.get("ICL_BENCH_GARG_PYTHON") or sys.executable
    return {"src": str(Path(src).resolve()), "python": python}


def case_transformer(quick: bool, garg: dict | None = None, threads=(2, 1), smoke: bool = False) -> dict:
    windows = {name: w[1] if quick or smoke else w[0] for name, w in GARG_WINDOWS.items()}
    figures = side_by_side(SMOKE_CONFIGS if smoke else GARG_CONFIGS, 3 if quick or smoke else 5, windows, garg,
                           threads)
    small = figures["small"]
    if "ratio_over_garg" in small:
        r = small["ratio_over_garg"]
        target = (f">= 1.5 (side by side with Garg et al.'s train_step, torch {small['garg_best_threads']} "
                  f"thread(s), equal trained predictions per prompt)")
    else:
        r = small["icl"]["prompts_per_s"] / GARG_PROMPTS_PER_S
        target = f">= 1.5 (Garg et al.'s code: {GARG_PROMPTS_PER_S:.0f} prompts/s here on another day)"
        small["side_by_side_ratio_2026_12_01"] = GARG_SIDE_BY_SIDE_RATIO
    about = ("icl.train of icl.Transformer (n = points - 1, every-prefix loss: the same trained predictions per "
             "prompt as their code) against Garg et al.'s train_step in interleaved windows; ratios are medians of "
             "per-round ratios")
    if not garg:
        about += "; their code not given: compared with a constant"
    figures["about"] = ("SMOKE RUN (toy sizes, not figures): " if smoke else "") + about
    return dict(results=[Result("transformer_over_garg.small", r, "x", target, r >= 1.5)], figures=figures)


# ---------------------------------------------------------------------------------------------------------------
# The worker that runs Garg et al.'s code (under their Python: torch and transformers, no jax needed).

def _stub_missing(names) -> list[str]:
    """Put a permissive stand-in into ``sys.modules`` for each module in ``names`` that cannot be imported (their
    modules import them for baselines, configuration schemas and logging, none of which a training step uses)."""
    import importlib.machinery
    import importlib.util
    import types

    class _Anything:
        def __init__(self, *a, **k):
            pass

        def __call__(self, *a, **k):
            return _Anything()

        def __getattr__(self, name):
            return _Anything()

        def __getitem__(self, key):
            return _Anything()

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Anything

    stubbed = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            module = _Module(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch's import scans need a spec
            sys.modules[name] = module
            stubbed.append(name)
    return stubbed


def garg_worker(argv) -> int:
    """Run Garg et al.'s training loop body on commands (JSON lines on stdin, replies on stdout; see
    :class:`harness.Worker`): ``steps`` (run ``n`` steps: sample xs with their ``GaussianSampler``, a task with
    their ``LinearRegression`` sampler, ``train_step`` with Adam, and their point-wise metric, as their ``train``
    loop does without logging; reply wall and CPU seconds), ``gemm`` (``torch.mm`` GFLOP/s on given shapes),
    ``flops`` (matrix-product flops of one step, ``torch.utils.flop_counter``), ``info``, ``exit``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--garg-src", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--lr", type=float, default=GARG_LR)
    args = parser.parse_args(argv)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever their code prints goes to stderr; stdout carries the replies only
    sys.stdout = sys.stderr
    cfg = json.loads(args.config)
    sys.path.insert(0, args.garg_src)
    stubbed = _stub_missing(["sklearn", "sklearn.svm", "sklearn.linear_model", "sklearn.tree", "xgboost",
                             "wandb", "quinine", "funcy", "munch", "pandas"])
    import torch

    torch.set_num_threads(args.threads)
    import transformers
    from models import TransformerModel
    from samplers import get_data_sampler
    from tasks import get_task_sampler
    from train import train_step

    torch.manual_seed(0)
    d, points, batch = cfg["d"], cfg["points"], cfg["batch"]
    model = TransformerModel(n_dims=d, n_positions=max(points, 101), n_embd=cfg["width"], n_layer=cfg["layers"],
                             n_head=cfg["heads"])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data_sampler = get_data_sampler("gaussian", n_dims=d)
    task_sampler = get_task_sampler("linear_regression", d, batch)

    def step():
        xs = data_sampler.sample_xs(points, batch, d)
        task = task_sampler()
        ys = task.evaluate(xs)
        loss, output = train_step(model, xs, ys, optimizer, task.get_training_metric())
        task.get_metric()(output, ys).mean(dim=0)  # their loop's point-wise loss
        return loss

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            kind = cmd.get("cmd")
            if kind == "exit":
                break
            if kind == "steps":
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(int(cmd["n"])):
                    loss = step()
                reply({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "steps": int(cmd["n"]),
                       "loss": loss})
            elif kind == "gemm":
                out = {}
                for m, k, n in cmd["shapes"]:
                    a, b = torch.randn(m, k), torch.randn(k, n)
                    torch.mm(a, b)
                    best = float("inf")
                    for _ in range(int(cmd.get("repeats", 3))):
                        t0 = time.perf_counter()
                        torch.mm(a, b)
                        best = min(best, time.perf_counter() - t0)
                    out[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best / 1e9
                out["max"] = max(out.values())
                reply({"gflops": out})
            elif kind == "flops":
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as counter:
                    step()
                by_op = {str(op): float(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
                counted = float(counter.get_total_flops())
                # torch's counter has no formula for the fused CPU attention kernel; count it as a full
                # T x T product each way (scores and weighted values: 4 b T^2 width a layer forward, twice that
                # backward), as icl's dots are counted (they too compute every score, then mask)
                tokens = 2 * points
                attention = 12.0 * batch * tokens ** 2 * cfg["width"] * cfg["layers"]
                sdpa = any("scaled_dot_product" in op for op in by_op)
                reply({"matmul_flops_per_step": counted + (0.0 if sdpa else attention), "counted_by_torch": counted,
                       "attention_added": 0.0 if sdpa else attention, "by_op": by_op})
            elif kind == "info":
                reply({"torch": torch.__version__, "transformers": transformers.__version__,
                       "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                       "attn_implementation": getattr(model._backbone.config, "_attn_implementation", None),
                       "n_positions": model._backbone.config.n_positions, "stubbed_modules": stubbed,
                       "garg_src": args.garg_src, "python": sys.executable,
                       "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                               "OMP_WAIT_POLICY")}})
            else:
                reply({"error": f"unknown command {kind!r}"})
        except Exception as err:  # noqa: BLE001 - reported to the parent, which raises with the log
            reply({"error": f"{type(err).__name__}: {err}"})
    return 0


def case_baselines(quick: bool) -> dict:
    import jax

    import icl

    d, n, batch = 20, 40, 2000 if quick else 10_000
    task = icl.LinearRegressionTask.isotropic(d, 0.5)
    prompts = task.sample(jax.random.key(0), batch, n)
    lsa = icl.LinearTransformer(d, 1, rngs=__import__("flax").nnx.Rngs(0))
    preds = {"ridge": icl.ridge(0.25), "least_squares": icl.least_squares(), "bayes": icl.bayes_posterior_mean(task),
             "gd_1step": icl.gradient_descent(0.5), "gd_10step": icl.gradient_descent([0.1] * 10),
             "averaging": icl.averaging(), "knn3": icl.knn(3), "lsa_1layer": lsa}
    call = jax.jit(lambda p, q: p(q))
    pre = jax.jit(lambda p, q: p.prefix(q))
    fns = {}
    for name, p in preds.items():
        fns[f"{name}"] = lambda p=p: _block(call(p, prompts))
        fns[f"{name}.prefix"] = lambda p=p: _block(pre(p, prompts))
    for f in fns.values():
        f()
    t = interleaved(fns, 3 if quick else 5)
    figures = {name: dict(us_per_prompt=1e6 * median(t[name]["wall"]) / batch,
                          prefix_us_per_prompt=1e6 * median(t[f"{name}.prefix"]["wall"]) / batch) for name in preds}
    return dict(results=[], figures=figures)


CASES = {"throughput": case_throughput, "seeds": case_seeds, "evaluate": case_evaluate,
         "transformer": case_transformer, "baselines": case_baselines, "families": case_families}


def main() -> int:
    if sys.argv[1:2] == ["garg_worker"]:
        return garg_worker(sys.argv[2:])
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--garg-src", help="Garg et al.'s src/ folder (a scratch checkout, never copied here)")
    parser.add_argument("--garg-python", help="a Python with torch and transformers to run their code")
    parser.add_argument("--garg-threads", default="2,1", help="torch thread counts for their code (comma-separated)")
    parser.add_argument("--smoke", action="store_true", help="transformer: toy sizes, to check the pipeline")
    args = parser.parse_args()
    if args.case == "transformer":
        threads = tuple(int(t) for t in args.garg_threads.split(",") if t.strip())
        out = case_transformer(args.quick, _garg_spec(args), threads, smoke=args.smoke)
    else:
        out = CASES[args.case](args.quick)
    write_child_result({"results": [r.to_dict() for r in out["results"]], "figures": out["figures"],
                        "load_average": list(os.getloadavg())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
