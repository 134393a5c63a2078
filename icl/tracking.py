"""Deprecated module: its names moved (icl.training, icl.evaluate, icl.models). A thin shim for this release.

Every attribute access warns with a ``DeprecationWarning`` naming the replacement; importing the
module does not warn. ``train_with_snapshots`` is ``icl.train(..., snapshot_every=every)``.
"""

from __future__ import annotations

import importlib
import warnings

_MOVED = {
    "Snapshots": ("icl.training", "Snapshots"),
    "train_with_snapshots": ("icl.training", "train_with_snapshots"),
    "gd_lsa_weights": ("icl.models", "gd_lsa_weights"),
    "align_gauge": ("icl.models", "align_gauge"),
    "interpolate": ("icl.evaluate", "interpolate"),
    "reference_metrics": ("icl.evaluate", "reference_metrics"),
    "snapshot_metrics": ("icl.evaluate", "snapshot_metrics"),
    "compare_with_reference": ("icl.evaluate", "compare_with_reference"),
    "interpolation_losses": ("icl.evaluate", "interpolation_losses"),
    "evaluate_across_tasks": ("icl.evaluate", "evaluate_across_tasks"),
}


def __getattr__(name: str):
    if name in _MOVED:
        module, attr = _MOVED[name]
        warnings.warn(f"icl.tracking.{name} is deprecated; use {module}.{attr} (also icl.{attr})",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'icl.tracking' has no attribute {name!r}")


def __dir__():
    return sorted(_MOVED)
