"""icl: an in-context learning theory sandbox (JAX + Flax NNX + Optax).

Tasks sample prompts; models, baselines and closed-form optima are all predictors (``Prompts -> [batch]``
with ``.prefix(Prompts) -> [batch, n]``); theory gives the closed forms they are measured against.
See README.md and docs/theory.md.
"""

from __future__ import annotations

import importlib
import types

from icl import _deprecation

# The public API is the union of these modules' ``__all__`` (one home per kind).
_MODULES = (
    "icl._pytree",  # pytree_dataclass, static_field: for users' own tasks and predictors
    "icl._compile",  # compile_ahead
    "icl.tasks",
    "icl.theory",
    "icl.predictors",
    "icl.models",
    "icl.training",
    "icl.sweeps",
    "icl.evaluate",
    "icl.checkpoint",
    "icl.io",
    "icl.fingerprint",
    "icl.uncertainty",
)
# Old module names (icl.algorithms, icl.analysis, icl.prefix, icl.nonlinear, icl.uniform, icl.multistep,
# icl.population, icl.tracking) remain importable as shims that warn and point to the new home.

_DEPRECATED: dict[str, tuple[str, str]] = {}
__all__: list[str] = []

_loaded = [importlib.import_module(_name) for _name in _MODULES]
# Export after every import, so that a public name shadows a submodule of the same name for good
# (icl.fingerprint is the function, not the module icl/fingerprint.py).
for _module in _loaded:
    for _attr in getattr(_module, "__all__", ()):
        if _attr not in globals() or isinstance(globals()[_attr], types.ModuleType):
            globals()[_attr] = getattr(_module, _attr)
            if _attr not in __all__:
                __all__.append(_attr)
    _DEPRECATED.update(getattr(_module, "DEPRECATED", {}))


def __getattr__(name: str):
    """Deprecated names resolve to their replacement with a ``DeprecationWarning`` naming it."""
    return _deprecation.resolve("icl", name, _DEPRECATED)


__version__ = "0.2.0"
