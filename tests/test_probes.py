"""icl.probes: linear probes read what a hidden state holds, on a constructed model and on icl.Transformer
(Akyürek et al. 2023, §5; docs/theory.md §11)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import icl
from icl.probes import PROBE_TARGETS, hidden_states, probe

D, N = 3, 6


def _task():
    return icl.LinearRegressionTask.isotropic(D, noise_std=0.5)


class _HoldsW:
    """A constructed 'model' whose last hidden state holds w at the query position (and noise elsewhere)."""

    def __init__(self, exact: bool):
        self.exact = exact

    def hidden_states(self, prompts):
        b = prompts.x.shape[0]
        noise = jax.random.normal(jax.random.PRNGKey(b), (b, 2, D))
        first = jnp.stack([prompts.x_query, noise[:, 0]], axis=1)
        last = prompts.w if self.exact else noise[:, 1]
        return [first, jnp.stack([noise[:, 0], last], axis=1)]


def test_probe_reads_w_exactly_from_a_hidden_state_that_holds_it():
    res = probe(_HoldsW(True), _task(), jax.random.PRNGKey(3), N, control=_HoldsW(False), targets=("w",),
                readout="query", num_prompts=256, lam=1e-8)
    assert res.r2["w"].shape == (2,)
    assert res.r2["w"][1] >= 1 - 1e-9
    assert res.r2["w"][0] <= 0.1  # x_q and noise say nothing about w
    assert res.control_r2["w"][1] <= 0.1
    assert "layer" in res.table()


def test_probes_read_every_layer_of_an_icl_transformer():
    def make(seed):
        return icl.Transformer(D, num_layers=2, width=16, num_heads=2, max_pairs=N, rngs=nnx.Rngs(seed))

    model = make(0)
    prompts = _task().sample(jax.random.PRNGKey(0), 4, N)
    states = hidden_states(model, prompts)
    assert len(states) == 3 and all(h.shape[0] == 4 and h.shape[2] == 16 for h in states)
    res = probe(model, _task(), jax.random.PRNGKey(4), N, control=make(1), num_prompts=64)
    assert set(res.r2) == set(PROBE_TARGETS) == set(res.control_r2)
    assert all(v.shape == (3,) and np.all(np.isfinite(v)) for v in res.r2.values())
    assert "control" in res.table()


def test_a_model_without_hidden_states_and_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="hidden_states"):
        probe(object(), _task(), jax.random.PRNGKey(0), N)
    with pytest.raises(ValueError, match="targets"):
        probe(_HoldsW(True), _task(), jax.random.PRNGKey(0), N, targets=("beta",))
    with pytest.raises(ValueError, match="readout"):
        probe(_HoldsW(True), _task(), jax.random.PRNGKey(0), N, readout="first")
    with pytest.raises(ValueError, match="lam"):
        probe(_HoldsW(True), _task(), jax.random.PRNGKey(0), N, lam=-1.0)

    class _Flat:
        def hidden_states(self, prompts):
            return [prompts.y]

    with pytest.raises(ValueError, match=r"\[batch, T, width\]"):
        hidden_states(_Flat(), _task().sample(jax.random.PRNGKey(0), 4, N))
