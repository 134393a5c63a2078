"""Deprecated module: Several layers: K-step GD theory, GD++ and Ahn et al.'s sparse transformer.

Everything moved; ``icl.multistep.NAME`` still works and warns (``DeprecationWarning``) with the new name.
Tasks live in :mod:`icl.tasks`, closed forms in :mod:`icl.theory` (docs/theory.md).
"""

from __future__ import annotations

from icl._deprecation import shim


_MOVED: dict[str, tuple[str, str, str]] = {
    "wishart_trace_moments": ("icl.theory", "wishart_trace_moments", "icl.wishart_trace_moments"),
    "gd_polynomial": ("icl.theory", "gd_polynomial", "icl.gd_polynomial"),
    "gd_plus_plus_polynomial": ("icl.theory", "gd_plus_plus_polynomial", "icl.gd_plus_plus_polynomial"),
    "polynomial_risk": ("icl.theory", "polynomial_risk", "icl.polynomial_risk"),
    "multistep_gd_risk": ("icl.theory", "multistep_gd_risk", "icl.multistep_gd_risk"),
    "gd_plus_plus_risk": ("icl.theory", "gd_plus_plus_risk", "icl.gd_plus_plus_risk"),
    "optimal_multistep_step_sizes": ("icl.theory", "optimal_multistep_step_sizes", "icl.optimal_multistep_step_sizes"),
    "optimal_gd_plus_plus": ("icl.theory", "optimal_gd_plus_plus", "icl.optimal_gd_plus_plus"),
    "gd_plus_plus_weights": ("icl.predictors", "gd_plus_plus_weights", "icl.gd_plus_plus_weights"),
    "gd_plus_plus": ("icl.predictors", "gd_plus_plus", "icl.gd_plus_plus"),
    "SparseLSALayer": ("icl.models", "SparseLSALayer", "icl.models.SparseLSALayer"),
    "SparseLinearTransformer": ("icl.models", "SparseLinearTransformer", "icl.models.SparseLinearTransformer"),
    "layer_preconditioners": ("icl.models", "layer_preconditioners", "icl.models.layer_preconditioners"),
    "whiten_preconditioner": ("icl.models", "whiten_preconditioner", "icl.models.whiten_preconditioner"),
}


__getattr__, __dir__ = shim("icl.multistep", _MOVED)
