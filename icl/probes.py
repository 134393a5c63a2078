"""Linear probes of a model's hidden states (Akyürek et al. 2023, §5; docs/theory.md §11).

[`probe`][icl.probes.probe] fits, for every layer, a ridge probe from the hidden state to the task weight ``w``, to
``X^T y / n`` and to ``X^T X / n`` on one set of prompts and scores it (held-out R^2) on a fresh set, for the
model and, when given, a control (e.g. the same model untrained). The hidden states come from the model itself:
``model.hidden_states(prompts) -> list of [batch, T, width]``, entry 0 the input tokens and entry ``l`` the
stream after layer ``l`` (the written protocol, [`icl.protocol`][icl.protocol]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl.protocol import predictor_name
from icl.tasks import Prompts, check_int, check_non_negative

__all__ = ["PROBE_TARGETS", "ProbeResult", "hidden_states", "probe"]

PROBE_TARGETS = ("w", "xty", "xtx")
"""What a probe reads: the task weight ``w``, ``X^T y / n`` and the upper triangle of ``X^T X / n``."""

_READOUTS = {"query": lambda h: [h[:, -1]], "mean": lambda h: [h.mean(1)], "both": lambda h: [h[:, -1], h.mean(1)]}
"""Readout -> the parts of a hidden state ``[batch, T, width]`` that, concatenated, are the probe's features."""


def hidden_states(model, prompts: Prompts) -> list:
    """``model.hidden_states(prompts)`` checked against the protocol: a list of ``[batch, T, width]`` arrays.

    Entry 0 is the input tokens, entry ``l`` the stream after layer ``l``; ValueError naming the model when it
    has no such method or returns something else.
    """
    method = getattr(model, "hidden_states", None)
    if not callable(method):
        raise ValueError(f"model {predictor_name(model)} has no hidden_states(prompts) -> list of [batch, T, width] "
                         "(the optional member of icl.protocol that probes read)")
    states = list(method(prompts))
    if any(jnp.ndim(h) != 3 or jnp.shape(h)[0] != prompts.x.shape[0] for h in states):
        raise ValueError(f"model {predictor_name(model)}: hidden_states must return arrays [batch, T, width] with "
                         f"batch = {prompts.x.shape[0]}, got shapes {[jnp.shape(s) for s in states]}")
    return states


def _targets(prompts: Prompts, targets) -> dict:
    x, y, (n, d) = prompts.x, prompts.y, prompts.x.shape[1:]
    if "w" in targets and prompts.w is None:
        raise ValueError("targets: 'w' needs prompts that carry w (task.sample returned w=None)")
    make = {"w": lambda: prompts.w, "xty": lambda: jnp.einsum("bnd,bn->bd", x, y) / n,
            "xtx": lambda: (jnp.einsum("bni,bnj->bij", x, x) / n)[:, *np.triu_indices(d)]}
    return {t: make[t]() for t in targets}


def _ridge_probe_r2(f_train, t_train, f_test, t_test, lam: float) -> float:
    """Ridge probe fitted on (f_train, t_train) (standardised features, penalty ``lam`` times the number of
    prompts), pooled R^2 on the test set ``1 - SSE / SST`` (float64 numpy)."""
    f_train, t_train, f_test, t_test = (np.asarray(a, np.float64) for a in (f_train, t_train, f_test, t_test))
    mu, sd = f_train.mean(0), f_train.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    a, b = (f_train - mu) / sd, (f_test - mu) / sd
    coef = np.linalg.solve(a.T @ a + lam * a.shape[0] * np.eye(a.shape[1]), a.T @ (t_train - t_train.mean(0)))
    sse, sst = np.sum((t_test - b @ coef - t_train.mean(0)) ** 2), np.sum((t_test - t_test.mean(0)) ** 2)
    return float(1.0 - sse / sst) if sst > 0 else float("nan")


@dataclasses.dataclass
class ProbeResult:
    """Per-layer probe R^2 (docs/theory.md §11; Akyürek et al. 2023, §5).

    Attributes:
      r2: ``{target: [L+1]}`` held-out R^2 of the ridge probe from layer ``l``'s hidden state (entry 0: input).
      control_r2: the same probe on the control model (e.g. untrained), or None.
      targets, readout, lam, num_prompts: the settings used.
    """

    r2: dict
    control_r2: dict | None
    targets: tuple
    readout: str
    lam: float
    num_prompts: int

    def table(self) -> str:
        """Plain text: one row per layer, R^2 and the control's R^2 per target."""
        lines = [f"{'layer':<7}" + "".join(f"{t + ' R2':>12}{'control':>10}" for t in self.targets)]
        control = self.control_r2 or {t: [] for t in self.targets}
        for i in range(len(next(iter(self.r2.values())))):  # layer i
            cells = [(self.r2[t][i], control[t][i] if i < len(control[t]) else np.nan) for t in self.targets]
            lines.append(f"{i:<7}" + "".join(f"{r:>12.3f}{c:>10.3f}" for r, c in cells))
        return "\n".join(lines)


def probe(model, task, key: jax.Array, n: int, *, control=None, targets: Sequence[str] = PROBE_TARGETS,
          readout: str = "both", num_prompts: int = 2048, lam: float = 1e-3) -> ProbeResult:
    """Linear probes from each layer's hidden states to ``w``, ``X^T y / n`` and ``X^T X / n`` (Akyürek §5).

    A ridge probe (penalty ``lam`` times the number of prompts, on standardised features) is fitted on
    ``num_prompts`` prompts and scored (pooled R^2) on ``num_prompts`` fresh ones, for every layer; the same
    for ``control`` (e.g. the untrained model) when given.

    Args:
      model: a model with ``hidden_states(prompts)`` ([`hidden_states`][icl.probes.hidden_states], [`icl.protocol`][icl.protocol]).
      task: draws the prompts (``task.sample(key, batch, n)``). key: PRNG key. n: context length.
      control: a second model probed the same way, or None.
      targets: a non-empty subset of ``PROBE_TARGETS``.
      readout: ``"query"`` (the last position), ``"mean"`` (mean over positions) or ``"both"`` (concatenated).
      num_prompts: prompts to fit on and, as many again, to score on (>= 4). lam: ridge penalty (>= 0).
    """
    if not callable(getattr(task, "sample", None)):
        raise ValueError(f"task must have .sample(key, batch, n), got {type(task).__name__}")
    n, num_prompts = check_int("n", n), check_int("num_prompts", num_prompts, 4)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets or any(t not in PROBE_TARGETS for t in targets):
        raise ValueError(f"targets must be a non-empty subset of {PROBE_TARGETS}, got {targets!r}")
    if readout not in _READOUTS:
        raise ValueError(f"readout must be 'query', 'mean' or 'both', got {readout!r}")
    lam = check_non_negative("lam", lam)
    train, test = (task.sample(k, num_prompts, n) for k in jax.random.split(key))
    t_train, t_test = _targets(train, targets), _targets(test, targets)

    def r2(m):  # hidden_states raises ValueError for a model without it
        f_train, f_test = ([jnp.concatenate(_READOUTS[readout](h), axis=-1) for h in hidden_states(m, p)]
                           for p in (train, test))
        return {t: np.array([_ridge_probe_r2(a, t_train[t], b, t_test[t], lam) for a, b in zip(f_train, f_test)])
                for t in targets}

    return ProbeResult(r2(model), None if control is None else r2(control), targets, readout, lam, num_prompts)
