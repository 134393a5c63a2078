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

:func:`compile_ahead` compiles a program in a background thread before it is needed (XLA compiles without
holding Python's GIL, so on a multi-core CPU it overlaps the caller's own compilation and work).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import heapq
import itertools
import os
import threading
import time

import jax

from icl._pytree import is_traced

__all__ = ["compile_ahead"]

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
    pending: list[concurrent.futures.Future] = []  # compile_ahead calls that reached this program
    lock = threading.Lock()

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        nonlocal compiled
        if is_traced(args, kwargs):
            return nested(*args, **kwargs)
        with lock:
            if compiled is None:
                compiled = jax.jit(fun, compiler_options=compiler_options(), **jit_kwargs)
        ahead = getattr(_AHEAD, "future", None)
        if ahead is not None:  # inside compile_ahead: compile (filling JAX's caches), run nothing, stop the call
            with lock:
                if ahead not in pending:
                    pending.append(ahead)
            compiled.lower(*args, **kwargs).compile()
            raise _CompiledAhead
        with lock:
            waiting, pending[:] = list(pending), []
        concurrent.futures.wait(waiting)  # a compilation already under way finishes sooner than a second one
        return compiled(*args, **kwargs)

    def expect(future):  # a compile_ahead call that will reach this program: a real call waits for it
        with lock:
            pending.append(future)

    wrapper.jitted = lambda: compiled  # the underlying top-level jax.jit object once called (None before)
    wrapper.expect = expect
    return wrapper


# ----------------------------------------------------------------------------------------------------
# Compiling ahead

_AHEAD = threading.local()
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="icl-compile-ahead")
_QUEUE: list = []  # heap of (priority, order, submitted, future, work): the most urgent queued work runs first
_QUEUE_LOCK = threading.Lock()
_ORDER = itertools.count()
URGENT, LATER = 0, 1
_GRACE_S = 0.3  # a LATER request waits this long for URGENT ones made just after it (a script's evaluation
# queued just before its training, whose first chunk is needed sooner)


class _CompiledAhead(Exception):
    """Stops a call inside :func:`compile_ahead` once its first program is compiled."""


def compile_ahead(fn, *args, **kwargs) -> concurrent.futures.Future:
    """Compile the first icl program that ``fn(*args, **kwargs)`` reaches, in a background thread; run nothing.

    ``fn`` runs (in the background) up to its first call of an icl-compiled program (the training engine,
    the Monte-Carlo evaluator, a read-off), which is traced and compiled for those arguments and not run;
    the call stops there. The program lands in JAX's caches, so the later real call with the same shapes
    and static arguments skips its compilation (and if it comes while the compilation is still under way,
    it waits for it rather than compiling twice). XLA compiles without holding Python's GIL: on a CPU with
    an idle core the compilation overlaps the caller's own work, e.g. the headline compiles its evaluation
    while it compiles and runs training. Only shapes, dtypes and static arguments matter: weights may be
    abstract (a model from ``nnx.eval_shape``, ``jax.ShapeDtypeStruct`` leaves). Results are unchanged.
    The caller's 64-bit setting (``jax.enable_x64``, thread-local) carries over to the background thread.

    Returns a ``Future``: ``True`` once the program is compiled, ``False`` if ``fn`` returned without
    reaching one; an exception raised by ``fn`` is kept in the future (the real call raises it again).
    One background thread serves the calls in order, except that :func:`icl.train` and
    :func:`icl.sweeps.sweep` put their optimiser set-up and first training chunk (needed as soon as their runs
    are initialised) ahead of calls made here; a call made here starts at the earliest 0.3 s after it was
    made, so that a training started just after it goes first. At interpreter exit, calls not yet started
    are dropped (their futures cancelled).
    """
    return _compile_ahead(fn, args, kwargs, LATER)


def _compile_ahead(fn, args, kwargs, priority: int, target=None) -> concurrent.futures.Future:
    """:func:`compile_ahead` at ``priority``; ``target``: the icl-compiled function ``fn`` reaches, whose real
    calls then wait for this compilation from the start (not only once the background thread gets there)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    if target is not None:
        target.expect(future)
    x64 = bool(jax.config.jax_enable_x64)  # the caller's setting (jax.enable_x64 is thread-local)

    def work():
        if not future.set_running_or_notify_cancel():  # cancelled while queued
            return
        _AHEAD.future = future
        try:
            with jax.enable_x64(x64):
                fn(*args, **kwargs)
        except _CompiledAhead:
            future.set_result(True)
        except BaseException as e:  # noqa: BLE001 - kept for the caller; the real call raises it again
            future.set_exception(e)
        else:
            future.set_result(False)
        finally:
            _AHEAD.future = None

    with _QUEUE_LOCK:
        heapq.heappush(_QUEUE, (priority, next(_ORDER), time.monotonic(), future, work))
    _EXECUTOR.submit(_run_next)
    return future


def _run_next():
    while True:
        with _QUEUE_LOCK:
            if not _QUEUE:  # dropped at exit
                return
            priority, _, submitted, _, work = _QUEUE[0]
            wait = submitted + _GRACE_S - time.monotonic() if priority != URGENT else 0.0
            if wait <= 0:
                heapq.heappop(_QUEUE)
                break
        time.sleep(wait)
    work()


def _drop_queued():
    """At interpreter exit, compilations not yet started are dropped (their futures cancelled): the process
    waits for the one under way only."""
    with _QUEUE_LOCK:
        dropped, _QUEUE[:] = list(_QUEUE), []
    for item in dropped:
        item[3].cancel()


# threading's exit hooks run before the executor joins its thread (atexit's would run after)
getattr(threading, "_register_atexit", atexit.register)(_drop_queued)
