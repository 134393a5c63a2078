"""The model and predictor protocol: what everything in ``icl`` relies on, and nothing more.

A **predictor** is anything callable as ``p(prompts) -> [batch]`` (the query's prediction from the whole
context). It may also have ``p.prefix(prompts) -> [batch, n]``: entry ``k - 1`` (``k = 1..n``) predicts
``y_k`` from ``x_k`` and the first ``k - 1`` pairs (Garg et al. 2022's convention, docs/theory.md §10), so
``p(prompts)`` is what ``prefix`` would give at ``k = n + 1``, not ``prefix[:, n - 1]``.

A **model** is a predictor that is a ``flax.nnx.Module`` (so [`icl.train`][icl.training.train] can optimise its
``nnx.Param`` leaves). The members the library reads, all documented in ``docs/models.md``:

- ``__call__(prompts) -> [batch]`` (required);
- ``prefix(prompts) -> [batch, n]`` (required for the every-prefix losses, [`icl.error_curve`][icl.evaluate.error_curve] and the
  per-prefix fingerprint);
- ``returns_variance: bool`` (optional, default ``False``): when ``True`` both methods return
  ``(mean, variance)`` pairs of those shapes, and the Gaussian NLL losses and calibration use them;
- ``hidden_states(prompts) -> list of [batch, T, width]`` (optional): the token states before the first
  layer and after each, ``T`` positions with the query last, read by [`icl.probe`][icl.probes.probe];
- ``trained_pairs: int | None`` (optional): a model with learned positions declares it (``None`` when built);
  [`icl.train`][icl.training.train] sets it to the training length on the structure it returns ([`mark_trained_length`][icl.protocol.mark_trained_length]),
  and the model then refuses longer prompts with a ValueError naming both lengths, unless the caller sets it
  back to ``None`` (a length-generalisation study);
- ``spec() -> dict`` (optional): JSON-able keyword arguments such that ``type(model)(**model.spec(),
  rngs=nnx.Rngs(0))`` rebuilds a model of the same structure. [`icl.save_checkpoint`][icl.checkpoint.save_checkpoint] records it, so
  [`icl.load_checkpoint`][icl.checkpoint.load_checkpoint] needs no ``model_fn``, and resuming refuses a model whose spec differs.

Nothing in the library reads a model's parameter names; read-offs that need them (the implied
preconditioner of a linear self-attention layer) are methods of the model.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import jax.numpy as jnp
import numpy as np

__all__ = [
    "Model",
    "returns_variance",
    "has_prefix",
    "predictor_name",
    "check_output",
    "mean_of",
    "model_spec",
    "build_model",
    "mark_trained_length",
]


@runtime_checkable
class Model(Protocol):
    """The structural type of a model (see the module docstring for the optional members)."""

    def __call__(self, prompts) -> Any:  # pragma: no cover - protocol
        """``[batch]`` predictions of the queries (``(mean, var)`` when ``returns_variance``)."""

    def prefix(self, prompts) -> Any:  # pragma: no cover - protocol
        """``[batch, n]`` every-prefix predictions (``(mean, var)`` when ``returns_variance``)."""


def returns_variance(p) -> bool:
    """Whether ``p`` returns ``(mean, variance)`` pairs (attribute ``returns_variance``, default False)."""
    return bool(getattr(p, "returns_variance", False))


def has_prefix(p) -> bool:
    """Whether ``p`` has a working ``prefix`` (a predictor may declare ``has_prefix = False`` on its class)."""
    declared = getattr(type(p), "has_prefix", None)
    if isinstance(declared, bool):
        return declared
    return callable(getattr(p, "prefix", None))


def predictor_name(p) -> str:
    """A short human-readable name: a function's ``__name__``, else the class name."""
    name = getattr(p, "__name__", None)
    return name if isinstance(name, str) else type(p).__name__


def _shape(a) -> tuple:
    return tuple(getattr(a, "shape", np.shape(a)))


def check_output(name: str, out, prompts, prefix: bool = False, variance: bool | None = None):
    """Check a predictor's output against the protocol; return ``out`` unchanged (works on tracers).

    A mean predictor returns ``[batch]`` (``[batch, n]`` for ``prefix=True``); a mean-and-variance predictor
    (``variance=True``) a pair ``(mean, var)`` of those shapes. ``variance=None`` accepts either form.
    Raises ValueError naming ``name`` and the shapes.
    """
    b, n = prompts.x.shape[0], prompts.x.shape[1]
    want = (b, n) if prefix else (b,)
    what = "prefix output" if prefix else "output"
    pair = isinstance(out, (tuple, list))
    if variance and not pair:
        raise ValueError(f"{name} returns a mean and a variance (returns_variance=True), so its {what} must be a "
                         f"pair (mean {want}, variance {want}), got one array of shape {_shape(out)}")
    if pair and variance is False:
        raise ValueError(f"{name}'s {what} must be one array of shape {want}, got a {type(out).__name__} of "
                         f"{len(out)} (a mean-and-variance predictor sets returns_variance = True)")
    if pair and len(out) != 2:
        raise ValueError(f"predictor {name}: {what} must be an array {want} or a (mean, variance) pair of those, "
                         f"got a sequence of {len(out)} items")
    for part, arr in zip(("mean", "variance"), out) if pair else [("", out)]:
        if _shape(arr) != want:
            label = f"{what} {part}".strip()
            raise ValueError(f"predictor {name}: {label} must have shape {want} ([batch{', n' if prefix else ''}]), "
                             f"got {_shape(arr)}")
    return out


def mean_of(out):
    """The mean of an output: ``out`` itself, or ``out[0]`` of a ``(mean, variance)`` pair."""
    return out[0] if isinstance(out, (tuple, list)) else jnp.asarray(out)


def model_spec(model) -> dict | None:
    """``{"class": "module:qualname", "kwargs": model.spec()}``, or None for a model without ``spec``."""
    spec = getattr(model, "spec", None)
    if not callable(spec):
        return None
    kwargs = dict(spec())
    cls = type(model)
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": kwargs}


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def build_model(spec: dict, rngs):
    """Rebuild a model from [`model_spec`][icl.protocol.model_spec]'s record (JSON lists become tuples)."""
    module_name, _, qualname = spec["class"].partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot rebuild the model class {spec['class']!r} ({err}); import the module that defines "
                         "it, or pass model_fn, the function that built the model") from None
    return obj(**{k: _tuplify(v) for k, v in spec["kwargs"].items()}, rngs=rngs)


def mark_trained_length(model, n: int):
    """Record that ``model`` was trained on prompts of ``n`` context pairs, if it declares ``trained_pairs`` (a
    model with learned positions, which refuses longer prompts unless ``trained_pairs`` is set to None). The
    library calls it on the structure it builds for a training run or a checkpoint, never on a user's
    instance. Returns ``model``."""
    if hasattr(model, "trained_pairs"):
        model.trained_pairs = int(n)
    return model
