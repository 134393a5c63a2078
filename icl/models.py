"""Linear self-attention (LSA) and the L-layer linear transformer, in Flax NNX (THEORY.md §2).

Token layout: context tokens ``z_i = [x_i; y_i]`` and the query token ``z_q = [x_q; 0]`` form the
columns of ``E in R^{(d+1) x (n+1)}``. One layer maps

    f(E) = E + W^PV E M (E^T W^KQ E) / n,    M = diag(1, ..., 1, 0),

so keys and values come from the context only. **Prediction convention**: ``y_hat`` is the last
coordinate of the query column after the last layer, with a plus sign (von Oswald's code and Ahn et
al. negate it). For one layer the sign is absorbed by the gauge ``W^PV -> -W^PV``; for two or more
layers it is not (the context y-tokens carry residuals into later layers), so Ahn et al.'s multi-layer
GD construction lives in :class:`icl.multistep.SparseLinearTransformer`, which reads out ``-y``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.tasks import Prompts, check_positive_int

__all__ = ["LinearSelfAttention", "LinearTransformer", "prompt_tokens"]


def prompt_tokens(prompts: Prompts) -> tuple[jax.Array, jax.Array]:
    """Tokens of a prompt: context ``[batch, n, d+1]`` rows ``[x_i, y_i]`` and query ``[batch, d+1]`` = ``[x_q, 0]``."""
    context = jnp.concatenate([prompts.x, prompts.y[..., None]], axis=-1)
    query = jnp.concatenate([prompts.x_query, jnp.zeros_like(prompts.x_query[..., :1])], axis=-1)
    return context, query


class LinearSelfAttention(nnx.Module):
    """One LSA layer with full ``(d+1) x (d+1)`` matrices ``W^PV`` and ``W^KQ`` (THEORY.md §2).

    With ``G = (1/n) sum_i z_i z_i^T`` over the context, every token ``z`` (context or query) becomes
    ``z + W^PV G W^KQ z``, which is ``f(E) = E + W^PV E M (E^T W^KQ E)/n`` column by column.

    Args:
      d: input dimension (tokens have ``d + 1`` coordinates).
      init_scale: entries start i.i.d. ``N(0, init_scale^2)``; 0 starts at zero.
      init_diag: added to the diagonal of both matrices at start (``W = init_diag I + noise``). A
        positive value starts on the ``c A^T`` path (``b = a = 0``, as in Zhang, Frei & Bartlett's
        initialisation), which avoids the rank-one ``a b^T`` stationary points that small random
        starts can fall into when Sigma is far from isotropic.
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(self, d: int, *, init_scale: float = 0.01, init_diag: float = 0.0, rngs: nnx.Rngs):
        d = check_positive_int("d", d)
        if not init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
        if not np.isfinite(init_diag):
            raise ValueError(f"init_diag must be finite, got {init_diag!r}")
        self.d = d
        shape = (d + 1, d + 1)
        diag = init_diag * jnp.eye(d + 1)
        self.w_pv = nnx.Param(diag + init_scale * jax.random.normal(rngs.params(), shape))
        self.w_kq = nnx.Param(diag + init_scale * jax.random.normal(rngs.params(), shape))

    def __call__(
        self, context: jax.Array, query: jax.Array, update_context: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """Apply the layer. ``context: [batch, n, d+1]``, ``query: [batch, d+1]``; returns both updated.

        The query update is computed as ``W^PV (1/n) sum_i z_i (z_i . W^KQ z_q)`` in ``O(n d)`` per prompt.
        With ``update_context=False`` (the last layer of a stack) the context is returned unchanged.
        """
        n = context.shape[-2]
        w_pv, w_kq = self.w_pv[...], self.w_kq[...]
        scores = jnp.einsum("bni,bi->bn", context, query @ w_kq.T)  # z_i . W^KQ z_q
        new_query = query + (jnp.einsum("bni,bn->bi", context, scores) / n) @ w_pv.T
        if not update_context:
            return context, new_query
        gram = jnp.einsum("bni,bnj->bij", context, context) / n  # G = (1/n) sum_i z_i z_i^T
        new_context = context + jnp.einsum("bnk,bjk->bnj", context @ w_kq.T, gram) @ w_pv.T
        return new_context, new_query


class LinearTransformer(nnx.Module):
    """``num_layers`` LSA layers with residual connections; ``y_hat`` = last coordinate of the query.

    One layer at the optimum implements one step of (preconditioned) gradient descent (Mahankali et al.
    2023, Thm 1-2); L layers implement L steps of preconditioned GD (Ahn et al. 2023, Thm 3).
    Call it on a :class:`~icl.tasks.Prompts` to get predictions ``[batch]``.
    """

    def __init__(
        self, d: int, num_layers: int = 1, *, init_scale: float = 0.01, init_diag: float = 0.0, rngs: nnx.Rngs
    ):
        check_positive_int("num_layers", num_layers)
        self.d = check_positive_int("d", d)
        self.layers = nnx.List(
            [LinearSelfAttention(d, init_scale=init_scale, init_diag=init_diag, rngs=rngs) for _ in range(num_layers)]
        )

    def tokens(self, prompts: Prompts, query_only: bool = False) -> tuple[jax.Array, jax.Array]:
        """Run all layers; return the final context ``[batch, n, d+1]`` and query ``[batch, d+1]`` tokens.

        ``query_only=True`` skips the last layer's context update (it cannot reach the prediction).
        """
        if prompts.d != self.d:
            raise ValueError(f"prompts have d={prompts.d} but the model was built with d={self.d}")
        context, query = prompt_tokens(prompts)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            context, query = layer(context, query, update_context=(i < last) or not query_only)
        return context, query

    def __call__(self, prompts: Prompts) -> jax.Array:
        """Predictions ``y_hat: [batch]`` (last coordinate of the final query token, plus sign)."""
        return self.tokens(prompts, query_only=True)[1][..., -1]
