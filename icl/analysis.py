"""Deprecated module: its names moved (icl.evaluate, icl.models). Kept for this release as a thin shim.

Every attribute access warns with a ``DeprecationWarning`` naming the replacement; importing the
module does not warn.
"""

from __future__ import annotations

import importlib
import warnings

_MOVED = {
    "lsa_blocks": ("icl.models", "lsa_blocks"),
    "implied_preconditioner": ("icl.models", "implied_preconditioner"),
    "residual_terms": ("icl.models", "residual_terms"),
    "relative_error": ("icl.models", "relative_error"),
    "dist_to_identity": ("icl.models", "dist_to_identity"),
    "prediction_gap": ("icl.evaluate", "prediction_gap"),
    "sensitivities": ("icl.evaluate", "sensitivities"),
    "sensitivity_cosine": ("icl.evaluate", "sensitivity_cosine"),
    "Comparison": ("icl.evaluate", "Comparison"),
    "compare_predictors": ("icl.evaluate", "compare_predictors"),
}


def __getattr__(name: str):
    if name in _MOVED:
        module, attr = _MOVED[name]
        warnings.warn(f"icl.analysis.{name} is deprecated; use {module}.{attr} (also icl.{attr})",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'icl.analysis' has no attribute {name!r}")


def __dir__():
    return sorted(_MOVED)
