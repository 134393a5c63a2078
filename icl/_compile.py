"""``jit`` for icl's outermost compiled programs: on XLA:CPU, without YNNPACK's library fusions.

jaxlib 0.10's XLA:CPU hands fused multiply-and-reduce ops to YNNPACK, which first materialises the broadcast
operand (for the 3-layer linear transformer at d=5, n=20, batch 20000: a [B, 6, 6, 6] copy per product) and then
reduces it. Compiling without those fusions (``xla_cpu_experimental_ynn_fusion_type=""``) made that model's
training step 3x faster (222 -> 71 ms per step on the 2-core CPU; see benchmarks/). Compiler options only
apply to the outermost ``jit`` (an inner one is inlined). The training engine and the Monte-Carlo evaluator use
this ``jit``. Not every program gains: the fingerprint programs ran 1.6x faster without the fusions (0.29 against
0.48 s at d=3, n=8, 2048 prompts) but compiled about 2 s slower (19.0 against 17.1 s), a net loss for a program
that is usually called once per predictor, so they keep XLA's defaults.

The backend is read at the first call, not at import (reading it initialises JAX). Set the environment variable
``ICL_XLA_CPU_YNN=1`` to keep XLA's default fusions (for A/B measurements).
"""

from __future__ import annotations

import functools
import os

import jax

from icl._pytree import is_traced

CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options() -> dict | None:
    """The options icl's programs compile with on the current backend (``None``: XLA's defaults)."""
    if jax.default_backend() != "cpu" or os.environ.get("ICL_XLA_CPU_YNN", "") == "1":
        return None
    return dict(CPU_COMPILER_OPTIONS)


def jit(fun=None, **jit_kwargs):
    """``jax.jit(fun, **jit_kwargs)`` compiled with :func:`compiler_options` (decided at the first call).

    JAX accepts compiler options on a top-level ``jit`` only: called while another ``jit`` is tracing (any
    argument is a tracer), the function is traced inline by a plain ``jax.jit`` and the outer program's options
    apply.
    """
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    compiled = None
    nested = jax.jit(fun, **jit_kwargs)

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        nonlocal compiled
        if is_traced(args, kwargs):
            return nested(*args, **kwargs)
        if compiled is None:
            compiled = jax.jit(fun, compiler_options=compiler_options(), **jit_kwargs)
        return compiled(*args, **kwargs)

    wrapper.jitted = lambda: compiled  # the underlying top-level jax.jit object once called (None before)
    return wrapper
