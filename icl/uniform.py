"""Deprecated module: Linear regression with uniform covariates (von Oswald et al. 2023).

Everything moved; ``icl.uniform.NAME`` still works and warns (``DeprecationWarning``) with the new name.
Tasks live in :mod:`icl.tasks`, closed forms in :mod:`icl.theory` (docs/theory.md).
"""

from __future__ import annotations

from icl._deprecation import shim


_MOVED: dict[str, tuple[str, str, str]] = {
    "UniformLinearTask": ("icl.tasks", "UniformLinearTask", "icl.UniformLinearTask"),
    "uniform_moments": ("icl.tasks", "uniform_moments", "icl.tasks.uniform_moments"),
    "iid_one_step_risk": ("icl.theory.iid", "iid_one_step_risk", "icl.one_step_risk(eta, task, n)"),
    "iid_optimal_step_size": ("icl.theory.iid", "iid_optimal_step_size", "icl.optimal_step_size(task, n)"),
    "iid_optimal_risk": ("icl.theory.iid", "iid_optimal_risk", "icl.optimal_risk(task, n)"),
}


__getattr__, __dir__ = shim("icl.uniform", _MOVED)
