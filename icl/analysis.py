"""Deprecated module: its names moved (icl.evaluate, icl.models). Kept for this release as a thin shim.

Every attribute access warns with a ``DeprecationWarning`` naming the replacement; importing the
module does not warn.
"""

from __future__ import annotations

from icl._deprecation import shim


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


__getattr__, __dir__ = shim("icl.analysis", _MOVED)
