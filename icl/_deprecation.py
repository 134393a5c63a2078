"""One resolver for deprecated names: ``{old: ("dotted.path.to.new", "replacement text")}`` tables."""

from __future__ import annotations

import importlib
import warnings


def resolve(owner: str, name: str, table: dict[str, tuple[str, str]]):
    """Return ``table[name]``'s object with a ``DeprecationWarning`` naming the replacement (module ``__getattr__``)."""
    if name not in table:
        raise AttributeError(f"module {owner!r} has no attribute {name!r}")
    path, replacement = table[name]
    warnings.warn(f"{owner}.{name} is deprecated; use {replacement}", DeprecationWarning, stacklevel=3)
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)
