"""TrainConfig's Adam decay rates b1 and b2: validated, and passed to the optimiser."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import icl
from icl.training import make_optimizer


@pytest.mark.parametrize("name", ["b1", "b2"])
@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "0.9"])
def test_adam_decay_rates_outside_0_1_are_rejected_naming_the_argument(name, bad):
    with pytest.raises(ValueError, match=name):
        icl.TrainConfig(**{name: bad})


def test_make_optimizer_uses_the_configured_b1_b2():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = [{"w": jnp.array([0.5, 3.0])}, {"w": jnp.array([-1.0, 0.25])}]
    config = icl.TrainConfig(steps=10, lr=0.1, schedule="constant", b1=0.5, b2=0.9)
    ours, reference = make_optimizer(config), optax.adam(0.1, b1=0.5, b2=0.9)
    state, ref_state = ours.init(params), reference.init(params)
    for g in grads:
        update, state = ours.update(g, state, params)
        ref_update, ref_state = reference.update(g, ref_state, params)
        np.testing.assert_allclose(update["w"], ref_update["w"], rtol=1e-6)
    assert icl.TrainConfig().b1 == 0.9 and icl.TrainConfig().b2 == 0.999
