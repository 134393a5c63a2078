"""``jit`` for icl's outermost compiled programs (the training engine and the Monte-Carlo evaluator).

One switch, one measured special case: on XLA:CPU, jaxlib 0.10 hands fused multiply-and-reduce ops to
YNNPACK, which first materialises the broadcast operand and then reduces it. Compiling without those
fusions (the XLA option ``xla_cpu_experimental_ynn_fusion_type=""``) made the 3-layer linear transformer's
training step about 3x faster on a 2-core CPU (222 -> 71 ms at d=5, n=20, batch 20000; benchmarks/).

The option is used only where the running jaxlib accepts it: the first compilation on a CPU backend tries
it on a trivial program and falls back to XLA's defaults if it is unknown (older jaxlibs reject it with
"No such compile option"). It is never decided from a version string. Set ``ICL_XLA_CPU_YNN=1`` to keep
XLA's defaults (for A/B measurements). Compiler options apply to the outermost ``jit`` only; called while
another ``jit`` is tracing, the function is traced inline and the outer program's options apply.
"""

from __future__ import annotations

import functools
import os

import jax

from icl.pytree import is_traced

__all__ = ["jit", "compiler_options"]

CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_options_supported() -> bool:
    try:
        jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=CPU_COMPILER_OPTIONS)
    except Exception:  # noqa: BLE001 - any rejection means: not supported by this jaxlib
        return False
    return True


def compiler_options() -> dict | None:
    """The options icl's programs compile with on the current backend (``None``: XLA's defaults)."""
    if jax.default_backend() != "cpu" or os.environ.get("ICL_XLA_CPU_YNN", "") == "1":
        return None
    return dict(CPU_COMPILER_OPTIONS) if _cpu_options_supported() else None


def jit(fun=None, **jit_kwargs):
    """``jax.jit(fun, **jit_kwargs)`` compiled with ``compiler_options`` (decided at the first call)."""
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    nested = jax.jit(fun, **jit_kwargs)

    @functools.cache
    def top_level():
        return jax.jit(fun, compiler_options=compiler_options(), **jit_kwargs)

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        if is_traced(args, kwargs):
            return nested(*args, **kwargs)
        return top_level()(*args, **kwargs)

    wrapper.jitted = top_level  # the underlying top-level jax.jit object (for cost analyses)
    return wrapper
