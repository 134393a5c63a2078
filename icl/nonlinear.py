"""Deprecated module: Nonlinear in-context targets (Mahankali et al. 2023, Thm 3).

Everything moved; ``icl.nonlinear.NAME`` still works and warns (``DeprecationWarning``) with the new name.
Tasks live in :mod:`icl.tasks`, closed forms in :mod:`icl.theory` (docs/theory.md).
"""

from __future__ import annotations

from icl._deprecation import shim


_MOVED: dict[str, tuple[str, str, str]] = {
    "LINKS": ("icl.tasks", "LINKS", "icl.tasks.LINKS"),
    "ReluNetworkTask": ("icl.tasks", "ReluNetworkTask", "icl.ReluNetworkTask"),
    "SingleIndexTask": ("icl.tasks", "SingleIndexTask", "icl.SingleIndexTask"),
    "TargetMoments": ("icl.theory", "TargetMoments", "icl.TargetMoments"),
    "estimate_moments": ("icl.theory", "estimate_moments", "icl.estimate_moments"),
    'linear_part_norm2': ('icl.theory', 'linear_part_norm2', 'icl.linear_part_norm2'),
    "nonlinear_optimal_step_size": (
        "icl.theory.nonlinear", "nonlinear_optimal_step_size", "icl.optimal_step_size(task_or_moments, n)"
    ),
    "nonlinear_one_step_risk": (
        "icl.theory.nonlinear", "nonlinear_one_step_risk", "icl.one_step_risk(eta, task_or_moments, n)"
    ),
    "nonlinear_optimal_risk": (
        "icl.theory.nonlinear", "nonlinear_optimal_risk", "icl.optimal_risk(task_or_moments, n)"
    ),
}


__getattr__, __dir__ = shim("icl.nonlinear", _MOVED)
