#!/usr/bin/env python
"""icl benchmarks (issue 5): training throughput against sampling alone, vmapped seeds against sequential
runs, baseline and prefix-wise predictor costs, time to target, and the peak memory of each.

    python benchmarks/run.py [--quick] --out DIR

Writes ``DIR/benchmarks.json`` and ``DIR/benchmarks.md`` (atomically). ``benchmarks.json`` holds
``results``: one ``{name, value, unit, target, passed}`` per measured figure that has a target, and
``raw``: every other figure, the date and the machine.

How it measures. Every benchmark runs in its own subprocess; its peak memory is that process's
``ru_maxrss`` (read by the parent with ``os.wait4``, so XLA's buffers count). Inside a benchmark the
things compared run in the same process, compiled first and then timed in interleaved rounds (the
order rotates each round); a figure is the median over rounds, and a ratio is the median of the
per-round ratios, so it holds when other jobs change the machine's speed. CPU-time ratios
(``time.process_time``, all threads) are kept beside the wall-clock ones as a cross-check: where the
two differ, the things compared kept different numbers of cores busy (other jobs take cores away).
Time to target is measured from just before the interpreter is started.

The script exits 0 when every benchmark ran (whether or not its target was met) and 1 if one failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing: ``import icl`` still works
    sys.path.insert(0, str(ROOT))

# --------------------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------------------

THROUGHPUT_CASES = {
    "lsa1_d10_n10_b2048": dict(d=10, n=10, batch=2048, layers=1, steps=(20, 50)),
    "lsa1_d20_n40_b2048": dict(d=20, n=40, batch=2048, layers=1, steps=(8, 20)),
    "lt3_d5_n20_b20000": dict(d=5, n=20, batch=20000, layers=3, steps=(2, 3)),
}
"""name -> model and prompt shape; ``steps`` = (quick, full) optimiser steps per timed call, raised
on a fast device until one call takes ``min_call_s``."""

TRAIN_RATIO_TARGET = 1.3
SEEDS_SPEEDUP_TARGET = 2.0
ETA_TOLERANCE = 0.01

TTT_D = TTT_N = 10
TTT_DEFAULT = dict(steps=500, batch=512, lr=1e-2, schedule="cosine", warmup=0, init_scale=0.01, init_diag=0.0,
                   jitted_setup=False)
TTT_SETTINGS = {
    # The defaults of experiments/one_step_gd.py at d = n = 10.
    "default": {},
    # Fewer prompts (steps x batch): shorter training, but seeds land outside 1% more often
    # (too few steps to leave the small-init plateau, or too much gradient noise at the end).
    "steps300": dict(steps=300),
    "steps200_batch1024": dict(steps=200, batch=1024),
    # Proposed: fewer steps, larger batch; every one of 64 seeds within 1% in exploratory runs.
    "steps300_batch1024": dict(steps=300, batch=1024),
    "steps400_batch1024": dict(steps=400, batch=1024),
    # A higher peak learning rate with a short warm-up.
    "steps300_lr1.5e-2_warmup30": dict(steps=300, lr=1.5e-2, warmup=30),
    # Same numbers as their twins above, with the proposed jitted setup (train_jitted_setup).
    "default+jitted_setup": dict(jitted_setup=True),
    "steps300_batch1024+jitted_setup": dict(steps=300, batch=1024, jitted_setup=True),
}
TTT_PROPOSED = "steps300_batch1024"
"""The hyper-parameters proposed as new defaults (64 of 64 seeds within 1% in exploratory runs, against
57 of 64 for the current defaults)."""
TTT_QUICK = ("default", TTT_PROPOSED, "default+jitted_setup")
TTT_PASS_SEEDS = 4
"""Seeds that must all land within 1% of eta* for a setting to pass (the issue's criterion); a setting
is called robust when every seed of the larger check (16 in a full run) does too."""


def settings(quick: bool) -> dict:
    """Sizes and repeat counts of a quick or a full run."""
    if quick:
        return dict(rounds=3, profile=False, min_call_s=0.1, seed_steps=60, seed_rounds=1, seed_counts=(1, 8, 32),
                    baseline_batch=2000, baseline_rounds=3, ttt_settings=TTT_QUICK, ttt_repeats=1, ttt_seeds=(4,),
                    ttt_cache=False)
    return dict(rounds=5, profile=True, min_call_s=0.3, seed_steps=200, seed_rounds=3, seed_counts=(1, 8, 32),
                baseline_batch=10_000, baseline_rounds=5, ttt_settings=tuple(TTT_SETTINGS), ttt_repeats=3,
                ttt_seeds=(4, 16), ttt_cache=True)


# --------------------------------------------------------------------------------------------------
# Timing helpers (used inside the workers)
# --------------------------------------------------------------------------------------------------


def interleaved(fns: dict, rounds: int) -> dict:
    """Run each zero-argument blocking callable once per round, rotating the order every round.

    Returns ``{name: {"wall": [s per round], "cpu": [s per round]}}``; ``cpu`` is the process CPU
    time (all threads), which other jobs on the machine disturb less than the wall clock.
    """
    names = list(fns)
    out = {k: {"wall": [], "cpu": []} for k in names}
    for r in range(rounds):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k]()
            out[k]["wall"].append(time.perf_counter() - t0)
            out[k]["cpu"].append(time.process_time() - c0)
    return out


def median(values) -> float:
    return float(statistics.median(values))


def ratio(timings: dict, a: str, b: str, kind: str = "wall") -> float:
    """Median over rounds of ``time(a) / time(b)`` measured in the same round."""
    return median([x / y for x, y in zip(timings[a][kind], timings[b][kind])])


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------------------
# Model variants measured as evidence for proposed changes (not used by the library)
# --------------------------------------------------------------------------------------------------


def gram_prediction(model, prompts):
    """The L-layer LSA prediction computed from ``G = (1/n) sum_i z_i z_i^T`` alone.

    A layer maps every context token ``z -> P z`` with ``P = I + W^PV G W^KQ`` and the query to
    ``z_q + W^PV G W^KQ z_q``; so the next layer's Gram matrix is ``P G P^T`` and the context tokens
    are not needed once ``G`` is formed: ``O(n d^2 + L d^3)`` per prompt instead of ``O(L n d^2)``.
    Equal to ``model(prompts)`` (float64: ~1e-14). A candidate for ``LinearTransformer.__call__``
    with two or more layers (see the benchmark report).
    """
    import jax.numpy as jnp

    from icl.models import prompt_tokens

    context, q = prompt_tokens(prompts)
    n = context.shape[-2]
    gram = jnp.einsum("bni,bnj->bij", context, context) / n
    eye = jnp.eye(context.shape[-1], dtype=context.dtype)
    layers = list(model.layers)
    for i, layer in enumerate(layers):
        w_pv, w_kq = layer.w_pv[...], layer.w_kq[...]
        q = q + jnp.einsum("bij,bj->bi", gram, q @ w_kq.T) @ w_pv.T
        if i < len(layers) - 1:
            p = eye + jnp.einsum("ij,bjk,kl->bil", w_pv, gram, w_kq)
            gram = jnp.einsum("bij,bjk,blk->bil", p, gram, p)
    return q[..., -1]


def gram_mse(model, prompts):
    """MSE of :func:`gram_prediction` (a ``loss_fn`` for ``icl.training``)."""
    import jax.numpy as jnp

    return jnp.mean((gram_prediction(model, prompts) - prompts.y_query) ** 2)


class StoredPrompts:
    """A task that returns one of ``T`` stored prompt batches (picked by the key): training without sampling."""

    def __init__(self, prompts, d):
        self.prompts, self.d = prompts, d

    def sample(self, key, batch, n):
        import jax

        count = self.prompts.x.shape[0]
        idx = jax.random.key_data(key).reshape(-1)[-1] % count
        return jax.tree.map(lambda a: a[idx], self.prompts)


def _register_stored_prompts():
    import jax

    jax.tree_util.register_pytree_node(
        StoredPrompts, lambda t: ((t.prompts,), t.d), lambda d, leaves: StoredPrompts(leaves[0], d)
    )


# --------------------------------------------------------------------------------------------------
# Workers: each runs in its own process and returns a JSON-ready dict
# --------------------------------------------------------------------------------------------------


def worker_env(_arg, _quick):
    """Versions, device and the resident memory of a process that has imported icl and run one jit."""
    import flax
    import jax
    import jax.numpy as jnp
    import jaxlib
    import optax

    import icl  # noqa: F401

    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.zeros(3)))
    dev = jax.devices()[0]
    return dict(jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__, optax=optax.__version__,
                backend=jax.default_backend(), device=str(dev), device_kind=getattr(dev, "device_kind", ""),
                device_count=jax.device_count())


def _chunk_runner(d, n, batch, layers, steps, task, loss_fn):
    """A blocking call of the real jitted training chunk (``icl.training._train_chunk``), one run.

    Set up exactly as :func:`icl.training.train` does, so the first call compiles and later calls
    time the steady state.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import icl
    from icl.training import _train_chunk, make_optimizer

    config = icl.TrainConfig(steps=steps, batch=batch, n=n)

    def model_fn(rngs):
        return icl.LinearTransformer(d, layers, rngs=rngs)

    graphdef, _ = nnx.split(model_fn(nnx.Rngs(0)))
    run_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(1))
    params = jax.vmap(lambda k: nnx.split(model_fn(nnx.Rngs(params=jax.random.fold_in(k, 0))))[1])(run_keys)
    opt_state = jax.vmap(make_optimizer(config).init)(params)
    step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 1), steps))(run_keys)
    lrs = jnp.full((1,), config.lr)
    static = dict(graphdef=graphdef, loss_fn=loss_fn, batch=batch, n=n, task_batched=False,
                  transform=(config.optimizer, config.schedule, config.warmup, config.steps))

    def run():
        jax.block_until_ready(_train_chunk(params, opt_state, step_keys, lrs, task, **static))

    return run, dict(graphdef=graphdef, params=params, step_keys=step_keys, config=config)


def worker_throughput(case, quick):
    """Training steps/s against sampling the same prompts alone; with ``profile``, the pieces of a step."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import icl

    spec = THROUGHPUT_CASES[case]
    cfg = settings(quick)
    d, n, batch, layers = spec["d"], spec["n"], spec["batch"], spec["layers"]
    steps = spec["steps"][0 if quick else 1]
    task = icl.LinearRegressionTask.isotropic(d, 0.0)
    train, parts = _chunk_runner(d, n, batch, layers, steps, task, icl.mse_loss)
    train()
    t0 = time.perf_counter()
    train()
    probe = time.perf_counter() - t0
    if probe < cfg["min_call_s"]:  # fast device: more steps per call, so per-call dispatch cost stays small
        steps = min(4096, math.ceil(1.2 * steps * cfg["min_call_s"] / probe))
        train, parts = _chunk_runner(d, n, batch, layers, steps, task, icl.mse_loss)
    keys = parts["step_keys"][0]

    @jax.jit
    def sample_only(keys, task):
        def body(acc, key):
            p = task.sample(key, batch, n)
            return acc + jnp.sum(p.x) + jnp.sum(p.y) + jnp.sum(p.x_query) + jnp.sum(p.y_query), None

        return jax.lax.scan(body, jnp.zeros(()), keys)[0]

    fns = {"train": train, "sample": lambda: jax.block_until_ready(sample_only(keys, task))}
    compile_s = {}
    if cfg["profile"]:
        _register_stored_prompts()
        stored = StoredPrompts(jax.block_until_ready(jax.vmap(lambda k: task.sample(k, batch, n))(keys[:16])), d)
        fns["train_stored_prompts"] = _chunk_runner(d, n, batch, layers, steps, stored, icl.mse_loss)[0]
        graphdef, params = parts["graphdef"], jax.tree.map(lambda a: a[0], parts["params"])

        def loss(p, prompts):
            return icl.mse_loss(nnx.merge(graphdef, p), prompts)

        @jax.jit
        def forward_only(p, keys, stored):
            return jax.lax.scan(lambda acc, k: (acc + loss(p, stored.sample(k, batch, n)), None), jnp.zeros(()),
                                keys)[0]

        @jax.jit
        def forward_backward(p, keys, stored):
            def body(acc, k):
                value, grads = jax.value_and_grad(loss)(p, stored.sample(k, batch, n))
                return acc + value + sum(jnp.sum(g) for g in jax.tree.leaves(grads)), None

            return jax.lax.scan(body, jnp.zeros(()), keys)[0]

        fns["forward_stored"] = lambda: jax.block_until_ready(forward_only(params, keys, stored))
        fns["forward_backward_stored"] = lambda: jax.block_until_ready(forward_backward(params, keys, stored))
        if layers > 1:
            fns["train_gram_form"] = _chunk_runner(d, n, batch, layers, steps, task, gram_mse)[0]
    for name, fn in fns.items():  # compile (and warm) everything first
        t0 = time.perf_counter()
        fn()
        compile_s[name] = time.perf_counter() - t0
    timings = interleaved(fns, cfg["rounds"])
    per_step = {k: median(v["wall"]) / steps for k, v in timings.items()}
    out = dict(
        case=case, d=d, n=n, batch=batch, layers=layers, steps_per_call=steps, rounds=cfg["rounds"],
        train_prompts_per_s=batch / per_step["train"], sample_prompts_per_s=batch / per_step["sample"],
        ms_per_step={k: 1e3 * v for k, v in per_step.items()},
        ratio_train_over_sample=ratio(timings, "train", "sample"),
        ratio_train_over_sample_cpu=ratio(timings, "train", "sample", "cpu"),
        cpu_over_wall={k: median(v["cpu"]) / median(v["wall"]) for k, v in timings.items()},
        first_call_s=compile_s,
    )
    if cfg["profile"]:
        out["ratios_over_sample"] = {k: ratio(timings, k, "sample") for k in timings if k != "sample"}
        ms = out["ms_per_step"]
        out["step_breakdown_ms"] = dict(
            sampling=ms["sample"], forward=ms["forward_stored"],
            backward=ms["forward_backward_stored"] - ms["forward_stored"],
            optimizer_and_copy=ms["train_stored_prompts"] - ms["forward_backward_stored"],
            interaction=ms["train"] - ms["sample"] - ms["train_stored_prompts"],
        )
        out["flops"] = _flops(task, parts, batch, n, layers)
        if layers > 1:  # the Gram form gives the same predictions: check it here, in float32
            model = icl.LinearTransformer(d, layers, init_scale=0.1, rngs=nnx.Rngs(1))
            prompts = task.sample(jax.random.key(5), 256, n)
            reference = model(prompts)
            out["gram_form_max_rel_diff_f32"] = float(jnp.max(jnp.abs(reference - gram_prediction(model, prompts)))
                                                      / jnp.max(jnp.abs(reference)))
    return out


def _flops(task, parts, batch, n, layers):
    """XLA's cost analysis of one training step and of one sampling step (flops, bytes accessed)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import icl
    from icl.training import make_optimizer

    graphdef, config = parts["graphdef"], parts["config"]
    params = jax.tree.map(lambda a: a[0], parts["params"])
    optimizer = make_optimizer(config)
    state = optimizer.init(params)

    def step(p, s, key, loss_fn):
        prompts = task.sample(key, batch, n)
        value, grads = jax.value_and_grad(lambda q: loss_fn(nnx.merge(graphdef, q), prompts))(p)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    def sample(key):
        p = task.sample(key, batch, n)
        return jnp.sum(p.x) + jnp.sum(p.y) + jnp.sum(p.x_query) + jnp.sum(p.y_query)

    def cost(fn, *args):
        analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        return {k: float(analysis.get(k, float("nan"))) for k in ("flops", "bytes accessed")}

    key = jax.random.key(0)
    out = {"train_step": cost(lambda p, s, k: step(p, s, k, icl.mse_loss), params, state, key),
           "sample": cost(sample, key)}
    if layers > 1:
        out["train_step_gram_form"] = cost(lambda p, s, k: step(p, s, k, gram_mse), params, state, key)
    return out


def worker_seeds(_arg, quick):
    """``icl.train`` with ``num_seeds = S`` (one vmapped program) against ``S`` sequential single-seed runs."""
    import icl

    cfg = settings(quick)
    d = n = 10
    steps, batch = cfg["seed_steps"], 256
    task = icl.LinearRegressionTask.isotropic(d, 0.0)

    def model_fn(rngs):
        return icl.LinearTransformer(d, 1, rngs=rngs)

    def vmapped(s):
        return lambda: icl.train(model_fn, task, icl.TrainConfig(steps=steps, batch=batch, n=n, num_seeds=s))

    def sequential(s):
        def run():
            for seed in range(s):
                icl.train(model_fn, task, icl.TrainConfig(steps=steps, batch=batch, n=n, num_seeds=1, seed=seed))

        return run

    fns = {}
    for s in cfg["seed_counts"]:
        fns[f"vmapped_{s}"], fns[f"sequential_{s}"] = vmapped(s), sequential(s)
    if cfg["profile"]:  # a run at batch 1: the fixed per-step and per-call cost that vmapping can share
        fns["single_batch1"] = lambda: icl.train(model_fn, task, icl.TrainConfig(steps=steps, batch=1, n=n))
    for s in cfg["seed_counts"]:  # compile both programs (sequential_1 compiles the single-seed one)
        fns[f"vmapped_{s}"]()
    fns["sequential_1"]()
    if "single_batch1" in fns:
        fns["single_batch1"]()
    timings = interleaved(fns, cfg["seed_rounds"])
    out = dict(d=d, n=n, batch=batch, steps=steps, rounds=cfg["seed_rounds"],
               seconds={k: median(v["wall"]) for k, v in timings.items()}, speedup={}, speedup_cpu={})
    for s in cfg["seed_counts"]:
        out["speedup"][str(s)] = ratio(timings, f"sequential_{s}", f"vmapped_{s}")
        out["speedup_cpu"][str(s)] = ratio(timings, f"sequential_{s}", f"vmapped_{s}", "cpu")
    out["cpu_over_wall"] = {k: median(v["cpu"]) / median(v["wall"]) for k, v in timings.items()}
    if "single_batch1" in timings:
        single = out["seconds"]["sequential_1"]
        fixed = out["seconds"]["single_batch1"]
        out["fixed_cost_share_of_single_run"] = fixed / single
    return out


def worker_baselines(_arg, quick):
    """Per-prompt cost of the baselines and of their prefix-wise versions (all n prefixes), jitted."""
    import jax
    import numpy as np
    from flax import nnx

    import icl
    from icl import prefix

    cfg = settings(quick)
    d, n, batch, noise = 20, 40, cfg["baseline_batch"], 0.5
    task = icl.LinearRegressionTask.isotropic(d, noise)
    prompts = jax.block_until_ready(task.sample(jax.random.key(0), batch, n))
    eta = icl.isotropic_optimal_step_size(d, n, noise)
    k_steps = np.full(10, 0.3)
    lsa = icl.LinearTransformer(d, 1, init_scale=0.1, rngs=nnx.Rngs(0))
    predictors = {
        "ridge": (icl.ridge(noise**2), prefix.prefix_ridge(noise**2)),
        "least_squares": (icl.least_squares(), prefix.prefix_least_squares()),
        "bayes": (icl.bayes_posterior_mean(task), prefix.prefix_bayes_posterior_mean(task)),
        "gd_1step": (icl.gradient_descent(eta), prefix.prefix_gradient_descent(eta)),
        "gd_10step": (icl.gradient_descent(k_steps), prefix.prefix_gradient_descent(k_steps)),
        "lsa_1layer": (lsa, prefix.prefix_lsa(lsa)),
    }
    fns, first = {}, {}
    for name, (ordinary, all_prefixes) in predictors.items():
        for kind, fn in (("ordinary", ordinary), ("prefix", all_prefixes)):
            jitted = jax.jit(lambda p, fn=fn: fn(p))
            t0 = time.perf_counter()
            jax.block_until_ready(jitted(prompts))
            first[f"{name}.{kind}"] = time.perf_counter() - t0
            fns[f"{name}.{kind}"] = lambda jitted=jitted: jax.block_until_ready(jitted(prompts))
    timings = interleaved(fns, cfg["baseline_rounds"])
    out = dict(d=d, n=n, batch=batch, noise=noise, rounds=cfg["baseline_rounds"], first_call_s=first, predictors={})
    for name in predictors:
        o, p = (median(timings[f"{name}.{k}"]["wall"]) for k in ("ordinary", "prefix"))
        out["predictors"][name] = dict(us_per_prompt=1e6 * o / batch, prefix_us_per_prompt=1e6 * p / batch,
                                       prefix_us_per_prompt_per_prefix=1e6 * p / batch / n,
                                       prefix_over_ordinary=ratio(timings, f"{name}.prefix", f"{name}.ordinary"))
    return out


def train_jitted_setup(model_fn, task, config):
    """Prototype of a proposed change to :func:`icl.train`: its setup as one jitted program.

    ``icl.train`` runs ``model_fn`` eagerly for the graph definition, then initialises the parameters,
    the optimiser state and the step keys op by op outside ``jit``: dozens of small eager operations,
    each compiled on first use, which cost seconds in a fresh process. Here the graph definition comes
    from ``nnx.eval_shape`` (no computation) and the rest is one jitted function; the keys, parameters
    and losses are those of ``icl.train`` (same ``fold_in`` scheme). Returns ``(params, losses)``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import icl
    from icl.training import _train_chunk, make_optimizer

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))
    optimizer = make_optimizer(config)

    @jax.jit
    def setup(seed):
        run_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(config.num_seeds))
        params = jax.vmap(lambda k: nnx.split(model_fn(nnx.Rngs(params=jax.random.fold_in(k, 0))))[1])(run_keys)
        opt_state = jax.vmap(optimizer.init)(params)
        step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 1), config.steps))(run_keys)
        return params, opt_state, step_keys, jnp.full((config.num_seeds,), config.lr)

    params, opt_state, step_keys, lrs = setup(config.seed)
    params, _, losses = _train_chunk(params, opt_state, step_keys, lrs, task, graphdef=graphdef,
                                     loss_fn=icl.mse_loss, batch=config.batch, n=config.n, task_batched=False,
                                     transform=(config.optimizer, config.schedule, config.warmup, config.steps))
    return params, np.asarray(losses)


def worker_ttt_run(setting, _quick):
    """One training run as a user script would do it: import, train, read eta off the weights.

    Returns the wall-clock (``time.time``) instants at which imports finished, training finished and
    eta was known, so the parent can measure from before it started the interpreter. With
    ``jitted_setup`` the run uses :func:`train_jitted_setup` and reads eta with numpy
    (``Gamma_eff = c A^T + a b^T`` from the weights), the two proposed changes.
    """
    t_start = time.time()
    import numpy as np

    import icl

    t_imported = time.time()
    d, n = TTT_D, TTT_N
    task = icl.LinearRegressionTask.isotropic(d, 0.0)
    config = icl.TrainConfig(steps=setting["steps"], batch=setting["batch"], n=n, lr=setting["lr"],
                             schedule=setting["schedule"], warmup=setting["warmup"], num_seeds=1, seed=0)

    def model_fn(rngs):
        return icl.LinearTransformer(d, 1, init_scale=setting["init_scale"], init_diag=setting["init_diag"], rngs=rngs)

    if setting.get("jitted_setup"):
        params, _ = train_jitted_setup(model_fn, task, config)
        t_trained = time.time()
        layer = params["layers"][0]
        w_pv, w_kq = np.asarray(layer["w_pv"][...])[0], np.asarray(layer["w_kq"][...])[0]
        gamma = w_pv[d, d] * w_kq[:d, :d].T + np.outer(w_kq[d, :d], w_pv[d, :d])
        eta = float(np.trace(gamma) / d)
    else:
        result = icl.train(model_fn, task, config)
        t_trained = time.time()
        eta = float(np.trace(np.asarray(icl.implied_preconditioner(result.model(0).layers[0]))) / d)
    t_done = time.time()
    eta_star = icl.isotropic_optimal_step_size(d, n, 0.0)
    return dict(t_start=t_start, t_imported=t_imported, t_trained=t_trained, t_done=t_done, eta=eta,
                eta_star=eta_star, rel_error=abs(eta / eta_star - 1))


def worker_ttt_check(arg, _quick):
    """Every setting trained with ``seeds`` seeds in one vmapped program: the eta error of each seed."""
    import numpy as np

    import icl

    d, n = TTT_D, TTT_N
    task = icl.LinearRegressionTask.isotropic(d, 0.0)
    eta_star = icl.isotropic_optimal_step_size(d, n, 0.0)
    out = {}
    for name, s in arg["settings"].items():
        config = icl.TrainConfig(steps=s["steps"], batch=s["batch"], n=n, lr=s["lr"], schedule=s["schedule"],
                                 warmup=s["warmup"], num_seeds=arg["seeds"], seed=0)
        result = icl.train(lambda rngs, s=s: icl.LinearTransformer(d, 1, init_scale=s["init_scale"],
                                                                   init_diag=s["init_diag"], rngs=rngs), task, config)
        layer = result.params["layers"][0]
        gammas = np.asarray(icl.implied_preconditioner(layer["w_pv"][...], layer["w_kq"][...]))
        etas = np.trace(gammas, axis1=1, axis2=2) / d
        errors = np.abs(etas / eta_star - 1)
        out[name] = dict(etas=etas.tolist(), rel_errors=errors.tolist(), max_rel_error=float(errors.max()),
                         fraction_within_tolerance=float(np.mean(errors <= ETA_TOLERANCE)))
        if arg.get("time_single") and not s["jitted_setup"]:  # the training loop alone, compiled and warm
            single = dataclasses.replace(config, num_seeds=1)
            fn = lambda s=s, single=single: icl.train(  # noqa: E731
                lambda rngs: icl.LinearTransformer(d, 1, init_scale=s["init_scale"], init_diag=s["init_diag"],
                                                   rngs=rngs), task, single)
            fn()
            out[name]["steady_train_s"] = median(interleaved({"train": fn}, 3)["train"]["wall"])
    return dict(eta_star=eta_star, seeds=arg["seeds"], settings=out)


WORKERS = {"env": worker_env, "throughput": worker_throughput, "seeds": worker_seeds,
           "baselines": worker_baselines, "ttt_run": worker_ttt_run, "ttt_check": worker_ttt_check}


def run_worker_main(args) -> int:
    """Entry point of a worker process: run one benchmark and write its JSON result."""
    from icl.experiment import write_json_atomic

    out = WORKERS[args.worker](json.loads(args.arg), args.quick)
    out = dict(out, worker_peak_rss_mb=peak_rss_mb())
    write_json_atomic(args.result, out)
    return 0


# --------------------------------------------------------------------------------------------------
# The parent: launch workers, collect, write
# --------------------------------------------------------------------------------------------------


def launch(worker: str, arg, quick: bool, timeout: float = 900.0, env: dict | None = None) -> dict:
    """Run one worker in a fresh interpreter; return its result with wall time and peak RSS added.

    ``wall_s`` is measured from just before the interpreter is started to its exit; ``peak_rss_mb`` is
    the child's ``ru_maxrss`` from ``os.wait4``. Raises RuntimeError (with the log's tail) on failure.
    """
    with tempfile.TemporaryDirectory(prefix="icl-bench-") as tmp:
        result, log = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--arg", json.dumps(arg),
               "--result", str(result)] + (["--quick"] if quick else [])
        child_env = dict(os.environ if env is None else env)
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), child_env.get("PYTHONPATH")]))
        with open(log, "w") as handle:
            t_launch, t0 = time.time(), time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not result.exists():
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"worker {worker} {arg} failed (exit {proc.returncode}):\n{tail}")
        out = json.loads(result.read_text())
    return dict(out, wall_s=wall, t_launch=t_launch, peak_rss_mb=usage.ru_maxrss / 1024.0)


def measure_time_to_target(cfg: dict, quick: bool, log) -> dict:
    """Time-to-target runs (interleaved over settings, ``ttt_repeats`` each) and the multi-seed check."""
    names = list(cfg["ttt_settings"])
    full = {k: dict(TTT_DEFAULT, **TTT_SETTINGS[k]) for k in names}
    runs = {k: [] for k in names}
    for r in range(cfg["ttt_repeats"]):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            res = launch("ttt_run", full[name], quick)
            res["time_to_target_s"] = res["t_done"] - res["t_launch"]
            res["import_s"] = res["t_imported"] - res["t_launch"]
            runs[name].append(res)
            log(f"  time to target [{name}] {res['time_to_target_s']:.2f}s (eta err {100 * res['rel_error']:.2f}%)")
    cache = {}
    if cfg["ttt_cache"]:  # the same runs with JAX's persistent compilation cache, warm
        with tempfile.TemporaryDirectory(prefix="icl-jax-cache-") as cache_dir:
            env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
            cached = [k for k in ("default", "default+jitted_setup") if k in names]
            for name in cached:
                launch("ttt_run", full[name], quick, env=env)  # fills the cache
            cache = {k: [] for k in cached}
            for _ in range(cfg["ttt_repeats"]):
                for name in cached:
                    res = launch("ttt_run", full[name], quick, env=env)
                    res["time_to_target_s"] = res["t_done"] - res["t_launch"]
                    cache[name].append(res)
            for name in cached:
                log(f"  time to target [{name}, warm compilation cache] "
                    f"{median([c['time_to_target_s'] for c in cache[name]]):.2f}s")
    checks = {s: launch("ttt_check", {"settings": full, "seeds": s, "time_single": s == TTT_PASS_SEEDS}, quick)
              for s in cfg["ttt_seeds"]}
    table = {}
    for name in names:
        times = [x["time_to_target_s"] for x in runs[name]]
        row = dict(full[name], time_to_target_s=median(times), times_s=times,
                   import_s=median([x["import_s"] for x in runs[name]]),
                   setup_and_train_s=median([x["t_trained"] - x["t_imported"] for x in runs[name]]),
                   read_eta_s=median([x["t_done"] - x["t_trained"] for x in runs[name]]),
                   eta=runs[name][0]["eta"], rel_error_timed_run=runs[name][0]["rel_error"],
                   peak_rss_mb=max(x["peak_rss_mb"] for x in runs[name]))
        for s, check in checks.items():
            row[f"max_rel_error_{s}_seeds"] = check["settings"][name]["max_rel_error"]
            row[f"fraction_within_{s}_seeds"] = check["settings"][name]["fraction_within_tolerance"]
        row["steady_train_s"] = checks[TTT_PASS_SEEDS]["settings"][name].get("steady_train_s")
        row["passes"] = row[f"max_rel_error_{TTT_PASS_SEEDS}_seeds"] <= ETA_TOLERANCE and \
            row["rel_error_timed_run"] <= ETA_TOLERANCE
        row["robust"] = all(row[f"max_rel_error_{s}_seeds"] <= ETA_TOLERANCE for s in checks)
        table[name] = row
    out = dict(d=TTT_D, n=TTT_N, eta_star=TTT_N / (TTT_N + TTT_D + 1), tolerance=ETA_TOLERANCE,
               seeds_checked=list(cfg["ttt_seeds"]), repeats=cfg["ttt_repeats"], settings=table,
               check_peak_rss_mb={str(s): c["peak_rss_mb"] for s, c in checks.items()})
    out["warm_compilation_cache"] = {
        k: dict(time_to_target_s=median([c["time_to_target_s"] for c in v]), times_s=[c["time_to_target_s"] for c in v],
                rel_error=v[0]["rel_error"]) for k, v in cache.items()}
    robust = [k for k in names if table[k]["robust"] and not table[k]["jitted_setup"]]
    out["fastest_robust"] = min(robust, key=lambda k: table[k]["time_to_target_s"]) if robust else None
    out["proposed"] = TTT_PROPOSED
    return out


BENCHMARKS = ("throughput", "seeds", "baselines", "time_to_target")


def build_report(quick: bool, log, only=BENCHMARKS) -> tuple[dict, list[str]]:
    """Run the benchmarks named in ``only`` (all by default); return the JSON document and the failures."""
    cfg = settings(quick)
    errors: list[str] = []
    raw: dict = dict(mode="quick" if quick else "full", settings=cfg,
                     date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                                  python=platform.python_version(), cpu_count=os.cpu_count(),
                                  cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                  else None,
                                  load_average_start=list(os.getloadavg())),
                     peak_rss_mb={})
    results: list[dict] = []

    def attempt(label, fn):
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # keep going: the report says what failed
            errors.append(f"{label}: {exc}")
            log(f"[{label}] FAILED: {exc}")
            return None
        log(f"[{label}] done in {time.perf_counter() - t0:.1f}s")
        return value

    env = attempt("env", lambda: launch("env", None, quick))
    if env:
        raw["machine"].update({k: env[k] for k in ("jax", "jaxlib", "flax", "optax", "backend", "device",
                                                   "device_kind", "device_count")})
        raw["peak_rss_mb"]["import_icl_and_one_jit"] = env["peak_rss_mb"]

    raw["only"] = list(only)
    raw["throughput"] = {}
    for case in THROUGHPUT_CASES if "throughput" in only else ():
        res = attempt(f"throughput {case}", lambda case=case: launch("throughput", case, quick))
        if res is None:
            results.append(_result(f"train_step_over_sampling.{case}", None, "x", f"<= {TRAIN_RATIO_TARGET}", False))
            continue
        raw["throughput"][case] = res
        raw["peak_rss_mb"][f"throughput.{case}"] = res["peak_rss_mb"]
        value = res["ratio_train_over_sample"]
        results.append(_result(f"train_step_over_sampling.{case}", value, "x", f"<= {TRAIN_RATIO_TARGET}",
                               value <= TRAIN_RATIO_TARGET))
        log(f"  {case}: train {res['train_prompts_per_s']:.4g} prompts/s, sampling {res['sample_prompts_per_s']:.4g}"
            f" prompts/s, ratio {value:.2f}")

    res = attempt("seeds", lambda: launch("seeds", None, quick)) if "seeds" in only else False
    if res is False:
        pass
    elif res is None:
        results.append(_result("vmapped_speedup.S32", None, "x", f">= {SEEDS_SPEEDUP_TARGET}", False))
    else:
        raw["seeds"] = res
        raw["peak_rss_mb"]["seeds"] = res["peak_rss_mb"]
        value = res["speedup"]["32"]
        results.append(_result("vmapped_speedup.S32", value, "x", f">= {SEEDS_SPEEDUP_TARGET}",
                               value >= SEEDS_SPEEDUP_TARGET))
        log("  speedups " + ", ".join(f"S={s}: {v:.2f}x" for s, v in res["speedup"].items()))

    res = attempt("baselines", lambda: launch("baselines", None, quick)) if "baselines" in only else None
    if res is not None:
        raw["baselines"] = res
        raw["peak_rss_mb"]["baselines"] = res["peak_rss_mb"]

    ttt = "time_to_target" in only
    res = attempt("time to target", lambda: measure_time_to_target(cfg, quick, log)) if ttt else False
    target = f"max |eta/eta* - 1| <= {ETA_TOLERANCE:g} over {TTT_PASS_SEEDS} seeds"
    if res is False:
        pass
    elif res is None:
        results.append(_result("time_to_target.default", None, "s", target, False))
    else:
        raw["time_to_target"] = res
        raw["peak_rss_mb"]["time_to_target.run"] = max(r["peak_rss_mb"] for r in res["settings"].values())
        raw["peak_rss_mb"]["time_to_target.check"] = max(res["check_peak_rss_mb"].values())
        for name, row in res["settings"].items():
            if name in ("default", "default+jitted_setup", TTT_PROPOSED, f"{TTT_PROPOSED}+jitted_setup"):
                label = name.replace(TTT_PROPOSED, "proposed")
                results.append(_result(f"time_to_target.{label}", row["time_to_target_s"], "s", target,
                                       row["passes"]))
    raw["machine"]["load_average_end"] = list(os.getloadavg())
    raw["errors"] = errors
    return dict(results=results, raw=raw), errors


def _result(name, value, unit, target, passed) -> dict:
    return dict(name=name, value=value, unit=unit, target=target, passed=bool(passed))


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def markdown(doc: dict) -> str:
    """The report as markdown tables: targets, throughput, seeds, baselines, time to target, memory."""
    raw = doc["raw"]
    m = raw["machine"]
    lines = [f"# icl benchmarks ({raw['mode']} run)", "",
             f"{raw['date']} · {m.get('processor')} · {m.get('cpu_count')} CPUs ({m.get('cpus_usable')} usable) · "
             f"{m.get('platform')} · Python {m.get('python')} · jax {m.get('jax')} / jaxlib {m.get('jaxlib')}, "
             f"flax {m.get('flax')}, optax {m.get('optax')} · device {m.get('device_kind') or m.get('device')} "
             f"({m.get('backend')}) · load average at start {m['load_average_start'][0]:.1f}, "
             f"at end {m.get('load_average_end', [float('nan')])[0]:.1f}", ""]
    if raw.get("note"):
        lines += [raw["note"], ""]
    lines += ["## Targets", ""]
    lines += _table(["benchmark", "value", "unit", "target", "met"],
                    [[r["name"], r["value"], r["unit"], r["target"], r["passed"]] for r in doc["results"]])
    if raw.get("throughput"):
        lines += ["## Training throughput (steady state, one run)", "",
                  "Ratio: median over interleaved rounds of (training step time) / (sampling the same prompts alone)."
                  " CPU: the same with process CPU time.", ""]
        rows = []
        for case, r in raw["throughput"].items():
            rows.append([case, r["train_prompts_per_s"], r["sample_prompts_per_s"], r["ms_per_step"]["train"],
                         r["ms_per_step"]["sample"], r["ratio_train_over_sample"], r["ratio_train_over_sample_cpu"],
                         r["peak_rss_mb"]])
        lines += _table(["case", "train prompts/s", "sampling prompts/s", "train ms/step", "sampling ms/step",
                         "ratio (wall)", "ratio (CPU)", "peak RSS MB"], rows)
        prof = [(c, r) for c, r in raw["throughput"].items() if "step_breakdown_ms" in r]
        if prof:
            lines += ["Where a step's time goes (ms/step; forward and backward on 16 stored prompt batches, "
                      "`optimizer+copy` = train on stored prompts - forward+backward, `interaction` = train - "
                      "sampling - train on stored prompts) and XLA's cost analysis (flops, bytes) of one step "
                      "against one sampling step:", ""]
            rows = []
            for case, r in prof:
                b = r["step_breakdown_ms"]
                fl = r["flops"]
                gram = r["ratios_over_sample"].get("train_gram_form")
                byte = "bytes accessed"
                gram_fl = fl.get("train_step_gram_form")
                rows.append([case, b["sampling"], b["forward"], b["backward"], b["optimizer_and_copy"],
                             b["interaction"], fl["train_step"]["flops"] / fl["sample"]["flops"],
                             fl["train_step"][byte] / fl["sample"][byte], gram,
                             gram_fl["flops"] / fl["sample"]["flops"] if gram_fl else None,
                             gram_fl[byte] / fl["sample"][byte] if gram_fl else None])
            lines += _table(["case", "sampling", "forward", "backward", "optimizer+copy", "interaction",
                             "flops step/sampling", "bytes step/sampling", "ratio, Gram-form model",
                             "flops Gram-form/sampling", "bytes Gram-form/sampling"], rows)
    if raw.get("seeds"):
        s = raw["seeds"]
        lines += [f"## Seeds: one vmapped program against sequential runs (d={s['d']}, n={s['n']}, batch {s['batch']},"
                  f" {s['steps']} steps, steady state)", ""]
        counts = sorted(int(k) for k in s["speedup"])
        lines += _table(["S", "vmapped s", "sequential s", "speedup (wall)", "speedup (CPU time)"],
                        [[c, s["seconds"][f"vmapped_{c}"], s["seconds"][f"sequential_{c}"], s["speedup"][str(c)],
                          s["speedup_cpu"][str(c)]] for c in counts])
        if "fixed_cost_share_of_single_run" in s and m.get("backend", "cpu") == "cpu":
            cw = s["cpu_over_wall"]
            big = max(counts)
            lines += [f"Where the speedup comes from: a run at batch 1 costs "
                      f"{100 * s['fixed_cost_share_of_single_run']:.0f}% of one at batch {s['batch']} (per-call and "
                      f"per-step cost that one vmapped program pays once), and the larger program keeps more cores "
                      f"busy (CPU time / wall time: vmapped S={big} {cw[f'vmapped_{big}']:.2f}, sequential "
                      f"{cw[f'sequential_{big}']:.2f}), which other jobs on the machine take away.", ""]
    if raw.get("baselines"):
        b = raw["baselines"]
        lines += [f"## Baselines (batch {b['batch']}, d={b['d']}, n={b['n']}, sigma={b['noise']}, jitted, "
                  "steady state)",
                  "", "`all prefixes`: predictions from every prefix length 1..n at once (`icl.prefix`).", ""]
        lines += _table(["predictor", "µs/prompt", "all prefixes µs/prompt", "µs/prompt/prefix",
                         "all prefixes / one"],
                        [[k, v["us_per_prompt"], v["prefix_us_per_prompt"], v["prefix_us_per_prompt_per_prefix"],
                          v["prefix_over_ordinary"]] for k, v in b["predictors"].items()])
    if raw.get("time_to_target"):
        t = raw["time_to_target"]
        seeds = t["seeds_checked"]
        lines += [f"## Time to target (one-layer LSA, d=n={t['d']}, sigma=0: eta within {100 * t['tolerance']:g}% of "
                  f"eta* = {t['eta_star']:.4f})", "",
                  f"Wall time from before the interpreter starts until eta is read off the trained weights (median of "
                  f"{t['repeats']}); the accuracy check trains {', '.join(map(str, seeds))} seeds per setting.", ""]
        rows = []
        for name, r in t["settings"].items():
            rows.append([name, r["steps"], r["batch"], r["lr"], r["warmup"], r["init_scale"], r["init_diag"],
                         r["time_to_target_s"], r["import_s"], r["setup_and_train_s"], r["read_eta_s"],
                         r["steady_train_s"]]
                        + [100 * r[f"max_rel_error_{s}_seeds"] for s in seeds]
                        + [f"{round(r[f'fraction_within_{seeds[-1]}_seeds'] * seeds[-1])}/{seeds[-1]}", r["passes"]])
        lines += _table(["setting", "steps", "batch", "lr", "warmup", "init_scale", "init_diag", "time to target s",
                         "start+import s", "setup+compile+train s", "read eta s", "steady train s"]
                        + [f"max err % ({s} seeds)" for s in seeds]
                        + [f"seeds within 1% (of {seeds[-1]})", f"passes ({TTT_PASS_SEEDS} seeds)"], rows)
        if t.get("warm_compilation_cache"):
            lines += ["With JAX's persistent compilation cache warm (`JAX_COMPILATION_CACHE_DIR`, filled by an "
                      "earlier run): " + "; ".join(f"{k} {v['time_to_target_s']:.2f} s"
                                                   for k, v in t["warm_compilation_cache"].items()) + ".", ""]
        lines += [f"Proposed defaults: `{t['proposed']}`. Fastest setting within 1% on every checked seed here: "
                  f"`{t['fastest_robust']}`. `steady train s`: the training call alone, compiled and warm, one seed.",
                  ""]
    if raw.get("peak_rss_mb"):
        lines += ["## Peak memory (ru_maxrss of each benchmark's process)", ""]
        lines += _table(["benchmark", "peak RSS MB"], [[k, v] for k, v in raw["peak_rss_mb"].items()])
    if raw.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in raw["errors"]] + [""]
    return "\n".join(lines)


def write_outputs(out_dir: Path, doc: dict) -> None:
    """``benchmarks.json`` via ``write_json_atomic``; ``benchmarks.md`` via a temporary file and ``os.replace``."""
    from icl.experiment import write_json_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    write_json_atomic(out_dir / "benchmarks.json", doc)
    os.chmod(out_dir / "benchmarks.json", 0o666 & ~umask)  # mkstemp creates files readable by the owner only
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".benchmarks.md.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(markdown(doc))
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out_dir / "benchmarks.md")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (~1-2 minutes)")
    parser.add_argument("--out", help="output folder for benchmarks.json and benchmarks.md")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--arg", default="null", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker_main(args)
    if not args.out:
        parser.error("--out DIR is required")
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {sorted(unknown)}; choose from {','.join(BENCHMARKS)}")
    doc, errors = build_report(args.quick, log, only)
    doc["raw"]["total_seconds"] = time.perf_counter() - start
    write_outputs(Path(args.out), doc)
    print(markdown(doc))
    log(f"wrote {Path(args.out) / 'benchmarks.json'} and benchmarks.md")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
