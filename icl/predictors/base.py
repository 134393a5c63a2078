"""The predictor protocol: ``p(prompts) -> [batch]`` and ``p.prefix(prompts) -> [batch, n]``.

A predictor maps [`Prompts`][icl.tasks.Prompts] to the prediction of the query from the whole context,
``[batch]``. Its ``prefix`` gives, at entry ``k - 1`` (``k = 1..n``), the prediction of ``y_k`` from
``x_k`` using the first ``k - 1`` pairs (Garg et al. 2022's convention, docs/theory.md §10); ``k = 1``
is the no-data answer, 0 for the zero-mean priors here. So ``p(prompts)`` is what ``prefix`` would give
at ``k = n + 1``, not ``prefix[:, n - 1]``.

Mean-and-variance predictors set ``returns_variance = True`` and return ``(mean, var)`` pairs of those
shapes. Library predictors are pytrees ([`icl.pytree.pytree_dataclass`][icl.pytree.pytree_dataclass]) whose hyper-parameters are
leaves, so one compiled evaluator serves every step size or penalty.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icl.protocol import predictor_name
from icl.tasks.base import check_prompt_shapes

__all__ = ["Predictor"]


class Predictor:
    """Base class of the library's predictors (see the module docstring for the protocol).

    Subclasses implement ``__call__(prompts) -> [batch]`` and, when they can, ``prefix(prompts) ->
    [batch, n]``. The base ``prefix`` raises ValueError naming the predictor: such a predictor predicts
    from the whole context only.
    """

    returns_variance = False
    has_prefix = False  # set per subclass: whether it overrides prefix

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "has_prefix" not in cls.__dict__:
            cls.has_prefix = cls._overrides_prefix()

    @classmethod
    def _overrides_prefix(cls) -> bool:
        return cls.prefix is not Predictor.prefix

    def __call__(self, prompts):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__")

    def prefix(self, prompts):
        raise ValueError(
            f"predictor {predictor_name(self)} has no prefix: it predicts the query from the whole context only"
        )


@jax.jit
def _call_jit(p, prompts):
    return p._call(prompts)


@jax.jit
def _prefix_jit(p, prompts):
    return p._prefix(prompts)


class JittedPredictor(Predictor):
    """A [`Predictor`][icl.predictors.Predictor] whose ``__call__``/``prefix`` run ``_call``/``_prefix`` under one module-level
    ``jax.jit`` (the predictor is a pytree argument): eager calls compile once per class, shape and dtype,
    for every value of the hyper-parameters. Inside an outer ``jit`` the inner one is inlined."""

    @classmethod
    def _overrides_prefix(cls) -> bool:
        base = globals().get("JittedPredictor", cls)  # JittedPredictor itself has no prefix
        return cls._prefix is not base._prefix

    def __call__(self, prompts):
        return _call_jit(self, prompts)

    def prefix(self, prompts):
        if type(self)._prefix is JittedPredictor._prefix:
            return Predictor.prefix(self, prompts)
        return _prefix_jit(self, prompts)

    def _call(self, prompts):  # pragma: no cover - abstract
        raise NotImplementedError

    def _prefix(self, prompts):  # pragma: no cover - abstract
        raise NotImplementedError


def _shape(a):
    return tuple(getattr(a, "shape", np.shape(a)))


def check_prompts(name: str, prompts, query: bool = True):
    """[`icl.tasks.check_prompt_shapes`][icl.tasks.check_prompt_shapes] for predictor ``name``; returns ``(x, y)``."""
    return check_prompt_shapes(prompts, who=f"predictor {name}", query=query)


def check_context(name: str, x, y):
    """The ``(x [batch, n, d], y [batch, n])`` check of the ``*_weights`` functions."""
    if len(_shape(x)) != 3:
        raise ValueError(f"{name}: x must have shape [batch, n, d], got {_shape(x)}")
    if _shape(y) != _shape(x)[:2]:
        raise ValueError(f"{name}: y must have shape [batch, n] = {_shape(x)[:2]}, got {_shape(y)}")
    x = jnp.asarray(x)
    return x, jnp.asarray(y, x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Hyper-parameter leaves
# ----------------------------------------------------------------------------------------------------------


def is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def as_leaf(value):
    """Hyper-parameter leaf: a float64 numpy array when concrete (cast to the prompts' dtype at use)."""
    if value is None or not is_concrete(value):
        return value
    return np.asarray(value, dtype=np.float64)


def check_scalar(name: str, value, *, positive: bool = False, nonnegative: bool = False, hint: str = ""):
    """Validate a finite scalar (``> 0`` or ``>= 0`` if asked); tracers pass unchecked. Returns the leaf."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not is_concrete(value):
        return value
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    if not np.isfinite(arr):
        raise ValueError(f"{name} must be finite, got {value!r}{hint}")
    if positive and not arr > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}{hint}")
    if nonnegative and not arr >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}{hint}")
    return arr


def prefix_counts(n: int, dtype) -> jax.Array:
    """``max(k - 1, 1)`` for ``k = 1..n``: the number of context pairs before point ``k`` (1 at ``k = 1``,
    where every sum is empty, so the no-data answer is ``0 / 1 = 0``, never ``0 / 0``)."""
    return jnp.maximum(jnp.arange(n, dtype=dtype), 1)


def shifted_cumsum(a: jax.Array, axis: int = 1) -> jax.Array:
    """Exclusive cumulative sum along ``axis``: entry ``k - 1`` sums entries ``< k - 1`` (0 at ``k = 1``)."""
    c = jnp.cumsum(a, axis=axis)
    zero = jnp.zeros_like(jax.lax.slice_in_dim(c, 0, 1, axis=axis))
    return jnp.concatenate([zero, jax.lax.slice_in_dim(c, 0, c.shape[axis] - 1, axis=axis)], axis=axis)


def context_moments(x, y):
    """``S = X^T X / n [b, d, d]`` and ``h = X^T y / n [b, d]`` of whole contexts."""
    n = x.shape[-2]
    return jnp.einsum("bni,bnj->bij", x, x) / n, jnp.einsum("bnd,bn->bd", x, y) / n


def prefix_context_moments(x, y, gram: bool = True):
    """Moments of the first ``k - 1`` pairs at entry ``k - 1``: ``S [b, n, d, d]`` (if asked), ``h [b, n, d]``."""
    c = prefix_counts(x.shape[-2], x.dtype)
    h = shifted_cumsum(y[..., None] * x, axis=1) / c[:, None]
    if not gram:
        return None, h
    s = shifted_cumsum(x[..., :, None] * x[..., None, :], axis=1) / c[:, None, None]
    return s, h
