"""Shared test helpers: tolerances, standard errors, float64 scope. Import these; do not copy them."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import numpy as np

# Tolerances of docs/theory.md §9.
EXACT_F64 = 1e-10  # exact identities in float64 (relative)
EXACT_F32 = 1e-5  # the same identities in float32
NUM_SE = 4.0  # closed form vs Monte Carlo: within this many standard errors


def rel_err(a, b) -> float:
    """Relative error ``max|a - b| / max(max|b|, tiny)`` (works for scalars and arrays)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_close(a, b, rtol: float = EXACT_F64, what: str = "") -> None:
    """Assert ``rel_err(a, b) <= rtol`` with a message giving the error."""
    err = rel_err(a, b)
    assert err <= rtol, f"{what} relative error {err:.3g} > {rtol:g}"


def mean_se(samples, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and its standard error along ``axis`` (float64)."""
    s = np.asarray(samples, np.float64)
    m = s.shape[axis]
    return s.mean(axis), s.std(axis=axis, ddof=1) / np.sqrt(m)


def assert_within_se(measured: float, se: float, theory: float, k: float = NUM_SE, what: str = "") -> None:
    """Assert ``|measured - theory| <= k * se`` (closed form vs Monte Carlo)."""
    gap = abs(float(measured) - float(theory))
    assert gap <= k * float(se), f"{what} |{measured:.6g} - {theory:.6g}| = {gap:.3g} > {k:g} SE ({se:.3g})"


def compiling_threads(run) -> tuple:
    """``(run(), {program name: {threads that compiled it}})`` for every XLA compilation while ``run()`` runs
    (thread names without their index: ``MainThread`` or ``icl-compile-ahead``; ``{}`` when nothing compiled)."""
    import threading

    import jax

    seen: dict[str, set[str]] = {}

    def listener(event, duration, fun_name=None, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.setdefault(fun_name, set()).add(threading.current_thread().name.split("_")[0])

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        result = run()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return result, seen


@contextlib.contextmanager
def x64():
    """Run a block with 64-bit JAX arrays (``jax.enable_x64`` as a context manager)."""
    import jax

    with jax.enable_x64(True):
        yield


def load_script(path):
    """Import an experiment script by file path (scripts are not package modules) as module ``<stem>_script``.

    Registered in ``sys.modules`` so that dataclasses defined in the script resolve their annotations.
    """
    path = Path(path)
    name = f"{path.stem}_script"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
