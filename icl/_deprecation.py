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


def shim(owner: str, moved: dict):
    """``(__getattr__, __dir__)`` for an old module whose names moved.

    ``moved[name]`` is the new dotted path (``"icl.predictors.ridge"``), ``(module, attr)`` or
    ``(module, attr, replacement text)``; the warning names the replacement (the path by default).
    """
    table = {}
    for name, entry in moved.items():
        if isinstance(entry, str):
            entry = tuple(entry.rsplit(".", 1))
        module, attr, *text = entry
        table[name] = (f"{module}.{attr}", text[0] if text else f"{module}.{attr}")

    def __getattr__(name: str):
        return resolve(owner, name, table)

    def __dir__():
        return sorted(table)

    return __getattr__, __dir__
