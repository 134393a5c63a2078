"""Models (docs/theory.md §2, §6): the linear transformers (LSA stack, Ahn's sparse parametrisation), their
GD constructions and read-offs, a standard transformer ([`icl.models.Transformer`][icl.models.Transformer]; both it and the sparse
stack have a looped, weight-tied option), and recurrent / state-space models (``icl.models.ssm``:
[`LinearRNN`][icl.models.LinearRNN], [`DiagonalSSM`][icl.models.DiagonalSSM], [`SelectiveSSM`][icl.models.SelectiveSSM]).

Every model follows the predictor protocol: ``model(prompts) -> [batch]`` and ``model.prefix(prompts) ->
[batch, n]`` (Garg's convention); a model built with ``variance_head=True`` returns ``(mean, var)`` pairs and
has ``returns_variance = True``.
"""

from icl.models.lsa import *  # noqa: F401,F403
from icl.models.lsa import __all__ as _lsa_all
from icl.models.sparse import *  # noqa: F401,F403
from icl.models.sparse import __all__ as _sparse_all
from icl.models.ssm import *  # noqa: F401,F403
from icl.models.ssm import __all__ as _ssm_all
from icl.models.transformer import *  # noqa: F401,F403
from icl.models.transformer import __all__ as _transformer_all

__all__ = [*_lsa_all, *_sparse_all, *_transformer_all, *_ssm_all]
