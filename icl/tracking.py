"""Deprecated module: its names moved (icl.training, icl.evaluate, icl.models). A thin shim for this release.

Every attribute access warns with a ``DeprecationWarning`` naming the replacement; importing the
module does not warn. ``train_with_snapshots`` is ``icl.train(..., snapshot_every=every)``.
"""

from __future__ import annotations

from icl._deprecation import shim


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


__getattr__, __dir__ = shim("icl.tracking", _MOVED)
