"""``pytree_dataclass``: frozen dataclasses that are JAX pytrees, validated at construction only.

Fields marked with [`static_field`][icl.pytree.static_field] are auxiliary (hashable, part of the compiled program's key);
every other field, including ``init=False`` ones, is a leaf. ``tree_unflatten`` rebuilds the object
without calling ``__init__``/``__post_init__`` (leaves may be tracers inside ``jit``), so validation
runs once, when a user builds the object (the Equinox convention).
"""

from __future__ import annotations

import dataclasses

import jax

__all__ = ["pytree_dataclass", "static_field", "is_pytree", "is_traced", "Static"]


def static_field(**kwargs):
    """A dataclass field that is static pytree metadata (e.g. a dimension or a number of steps)."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata["static"] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def pytree_dataclass(cls=None, **dataclass_kwargs):
    """Make ``cls`` a frozen dataclass registered as a pytree (use as ``@pytree_dataclass``)."""

    def wrap(klass):
        kwargs = {"frozen": True, "eq": False, **dataclass_kwargs}
        klass = dataclasses.dataclass(**kwargs)(klass)
        fields = dataclasses.fields(klass)
        data = tuple(f.name for f in fields if not f.metadata.get("static"))
        meta = tuple(f.name for f in fields if f.metadata.get("static"))

        def flatten_with_keys(obj):
            children = [(jax.tree_util.GetAttrKey(name), getattr(obj, name)) for name in data]
            return children, tuple(getattr(obj, name) for name in meta)

        def flatten(obj):
            return [getattr(obj, name) for name in data], tuple(getattr(obj, name) for name in meta)

        def unflatten(aux, leaves):
            obj = object.__new__(klass)
            for name, value in zip(meta, aux):
                object.__setattr__(obj, name, value)
            for name, value in zip(data, leaves):
                object.__setattr__(obj, name, value)
            return obj

        jax.tree_util.register_pytree_with_keys(klass, flatten_with_keys, unflatten, flatten)
        return klass

    return wrap if cls is None else wrap(cls)


def is_pytree(obj) -> bool:
    """True when ``obj`` flattens into array leaves (a registered pytree), not into itself."""
    leaves = jax.tree.leaves(obj)
    return not (len(leaves) == 1 and leaves[0] is obj)


def is_traced(*trees) -> bool:
    """True when any leaf of ``trees`` is a tracer (the call runs inside ``jit``, ``vmap`` or ``grad``)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


class Static:
    """Carries a non-pytree object (a plain function, a task that is not a pytree) through ``jit`` as static
    data, hashed and compared by identity: ``Static(obj).value is obj``."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, Static) and other.value is self.value
