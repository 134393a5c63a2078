"""Load the trained GPT-2 models of Garg et al. (2022) and of the codebases built on theirs into [`icl.Transformer`][icl.models.Transformer].

Garg, Tsipras, Liang and Valiant released their trained models (``models.zip`` of dtsip/in-context-learning), and
later work (Fu et al., Bai et al. and others) tells its users to download them. Their model, ``TransformerModel``,
is a Hugging Face ``GPT2Model`` between two linear layers, with the prompt interleaved as
``x_1, [y_1, 0, ..., 0], x_2, ...`` and the prediction of ``y_k`` read off at token ``x_k``. That is exactly
[`icl.Transformer`][icl.models.Transformer] with ``encoding="interleaved"``, learned positions, softmax attention, GELU (tanh)
MLPs of ratio 4 and GPT-2's LayerNorms, whose [`prefix`][icl.models.Transformer.prefix] is their ``forward``. The weights
map one to one:

| theirs (PyTorch state dict) | [`icl.Transformer`][icl.models.Transformer] |
|---|---|
| ``_read_in.weight [width, d]``, ``.bias`` | ``read_in.kernel [d, width]`` (transposed), ``read_in.bias`` |
| ``_backbone.wpe.weight [2 n_positions, width]`` | ``positions`` (the first ``2 n_positions - 1`` rows) |
| ``_backbone.h.<l>.ln_1``, ``.attn.c_attn``, ``.attn.c_proj`` | ``blocks[l].ln1``, ``.qkv``, ``.attn_out`` |
| ``_backbone.h.<l>.ln_2``, ``.mlp.c_fc``, ``.mlp.c_proj`` | ``blocks[l].ln2``, ``.fc``, ``.fc_out`` |
| ``_backbone.ln_f`` | ``ln_f`` |
| ``_read_out.weight [1, width]``, ``.bias`` | ``read_out.kernel [width, 1]`` (transposed), ``read_out.bias`` |

(GPT-2's ``Conv1D`` weights are stored ``[in, out]``, as ``nnx.Linear`` kernels are; ``nn.Linear`` weights are
``[out, in]``.) The token embedding ``wte`` (unused: the model is called with ``inputs_embeds``) and the causal
mask buffers of older ``transformers`` versions (``attn.bias``, ``attn.masked_bias``) are skipped; any other
key, missing or extra, is a ``ValueError``.

Their configurations (``src/conf/models/*.yaml``; ``n_positions`` pairs of tokens, so ``2 n_positions`` GPT-2
positions) map to ``icl.Transformer(n_dims, num_layers=n_layer, width=n_embd, num_heads=n_head,
max_pairs=n_positions - 1)``: the standard model is d = 20, 12 layers, width 256, 8 heads (``n_positions`` 101),
the small one 6 layers, 4 heads, the tiny one 3 layers, 2 heads, each width 256 in their configs. Their task
(``linear_regression``: x ~ N(0, I_d), w ~ N(0, I_d), y = w.x, no noise) is
``icl.LinearRegressionTask.isotropic(d)``. Their curriculum trains up to ``training.curriculum.points.end``
points per prompt (41 for d = 20); when the run's ``config.yaml`` says so, the loaded model's
``trained_pairs`` is set to that length minus one (the query as the last point), so that a longer prompt, whose
learned positions were never trained, is refused unless the user opts in (``model.trained_pairs = None``).

Reading a ``.pt`` file needs PyTorch (the ``garg`` extra; a CPU build is enough:
``pip install torch --index-url https://download.pytorch.org/whl/cpu``) and a ``config.yaml`` needs PyYAML;
[`transformer_from_garg_state`][icl.models.garg.transformer_from_garg_state] takes the arrays themselves and needs neither.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from icl.models.transformer import Transformer

__all__ = ["load_garg_checkpoint", "transformer_from_garg_state"]

_SKIPPED = re.compile(r"^_backbone\.(wte\.weight|h\.\d+\.attn\.(bias|masked_bias))$")
_BLOCK = {  # their name inside _backbone.h.<l>. -> (our layer inside blocks[l], transpose?)
    "ln_1": "ln1", "attn.c_attn": "qkv", "attn.c_proj": "attn_out", "ln_2": "ln2", "mlp.c_fc": "fc",
    "mlp.c_proj": "fc_out",
}


def _array(value) -> np.ndarray:
    """A state-dict entry as a float32 numpy array (a torch tensor, a numpy array or nested lists)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def transformer_from_garg_state(state: Mapping[str, object], *, n_head: int,
                                trained_points: int | None = None) -> Transformer:
    """An [`icl.Transformer`][icl.models.Transformer] with the weights of a Garg-lineage ``TransformerModel`` state dict.

    Args:
      state: the state dict (``{name: tensor or array}``, their ``model_state_dict``), names as in the module
        docstring's table. ``d``, the width, the number of layers and ``n_positions`` are read off its shapes.
      n_head: the number of attention heads (not recorded in the shapes; their ``config.yaml``'s
        ``model.n_head``), >= 1 and dividing the width.
      trained_points: points per prompt the model was trained on (``training.curriculum.points.end``); the
        model then refuses longer prompts (``trained_pairs = trained_points - 1``) until
        ``model.trained_pairs = None``. ``None``: no limit beyond the positions it has.

    Returns:
      A float32 [`icl.Transformer`][icl.models.Transformer] whose [`prefix`][icl.models.Transformer.prefix] equals their ``forward`` to float32
      rounding.

    Raises:
      ValueError: a key missing or unexpected (named), a shape that does not fit the others (named), or a bad
        ``n_head`` / ``trained_points``.
    """
    state = {str(k): v for k, v in state.items() if not _SKIPPED.match(str(k))}
    n_head = _check_positive_int("n_head", n_head)
    for key in ("_read_in.weight", "_read_out.weight", "_backbone.wpe.weight"):
        if key not in state:
            raise ValueError(f"state: missing {key!r}; is this a Garg-lineage TransformerModel state dict? "
                             f"(keys: {sorted(state)[:6]}...)")
    width, d = _array(state["_read_in.weight"]).shape
    rows = _array(state["_backbone.wpe.weight"]).shape[0]
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"_backbone\.h\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))):
        raise ValueError(f"state: blocks _backbone.h.<l> must be numbered 0..L-1, got {layers}")
    if width % n_head:
        raise ValueError(f"n_head must divide the width {width}, got n_head={n_head}")
    if rows < 2 or rows % 2:
        raise ValueError(f"state: _backbone.wpe.weight must have 2 n_positions rows, got {rows}")
    n_positions = rows // 2
    max_pairs = n_positions - 1  # the query call with n pairs uses 2n + 1 of their 2 n_positions positions
    if trained_points is not None:
        trained_points = _check_positive_int("trained_points", trained_points)
        if trained_points > n_positions:
            raise ValueError(f"trained_points must be <= n_positions = {n_positions}, got {trained_points}")
    model = Transformer(d, num_layers=len(layers), width=width, num_heads=n_head, mlp_ratio=4,
                        encoding="interleaved", positional="learned", max_pairs=max(max_pairs, 1),
                        attention="softmax", mlp=True, layer_norm=True, rngs=nnx.Rngs(0))

    used = set()

    def take(key: str, shape: tuple, transpose: bool = False) -> jnp.ndarray:
        if key not in state:
            raise ValueError(f"state: missing {key!r}")
        value = _array(state[key])
        value = value.T if transpose else value
        if value.shape != shape:
            raise ValueError(f"state: {key!r} has shape {value.shape}, expected {shape} "
                             f"(d={d}, width={width}, layers={len(layers)})")
        used.add(key)
        return jnp.asarray(value)

    def linear(layer: nnx.Linear, prefix: str, torch_linear: bool) -> None:
        n_in, n_out = layer.kernel[...].shape
        layer.kernel[...] = (take(prefix + ".weight", (n_in, n_out), transpose=True) if torch_linear
                              else take(prefix + ".weight", (n_in, n_out)))
        layer.bias[...] = take(prefix + ".bias", (n_out,))

    def norm(layer: nnx.LayerNorm, prefix: str) -> None:
        layer.scale[...] = take(prefix + ".weight", (width,))
        layer.bias[...] = take(prefix + ".bias", (width,))

    linear(model.read_in, "_read_in", torch_linear=True)
    linear(model.read_out, "_read_out", torch_linear=True)
    positions = take("_backbone.wpe.weight", (rows, width))
    model.positions[...] = positions[: model.positions[...].shape[0]]
    for l, block in enumerate(model.blocks):
        for theirs, ours in _BLOCK.items():
            prefix = f"_backbone.h.{l}.{theirs}"
            if theirs.startswith("ln"):
                norm(getattr(block, ours), prefix)
            else:
                linear(getattr(block, ours), prefix, torch_linear=False)
    norm(model.ln_f, "_backbone.ln_f")
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"state: unexpected keys {extra[:8]}{'...' if len(extra) > 8 else ''}; not a "
                         "Garg-lineage GPT-2 TransformerModel (another read-in/read-out or a modified block?)")
    if trained_points is not None:
        model.trained_pairs = trained_points - 1
    return model


def _read_yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading config.yaml needs PyYAML: pip install 'icl[garg]'") from err
    with open(path) as f:
        return yaml.safe_load(f) or {}


def load_garg_checkpoint(path: str | os.PathLike, *, step: int | None = None, n_head: int | None = None,
                         trained_points: int | None = None) -> Transformer:
    """Load a Garg-lineage trained model (a run folder of theirs, or a ``.pt`` file) as an [`icl.Transformer`][icl.models.Transformer].

    Args:
      path: a run folder with ``config.yaml`` and ``state.pt`` (their ``models.zip`` layout; ``state.pt`` holds
        ``{"model_state_dict": ...}``), or a ``.pt`` file holding that dict or the state dict itself.
      step: read ``model_<step>.pt`` of the run folder instead of ``state.pt`` (their ``get_model_from_run``).
      n_head: attention heads; read from ``config.yaml`` (``model.n_head``) when not given. Required for a bare
        ``.pt`` file.
      trained_points: the training prompt length in points; read from ``config.yaml``
        (``training.curriculum.points.end``) when not given. See [`transformer_from_garg_state`][icl.models.garg.transformer_from_garg_state].

    Returns:
      The model (float32), ready for [`icl.error_curve`][icl.evaluate.error_curve], [`icl.fingerprint`][icl.fingerprint.fingerprint], [`icl.probe`][icl.probes.probe] and the rest.

    Raises:
      ValueError: a missing file, a configuration of another model family (``model.family`` not ``gpt2``), an
        unknown layout, or a bad state dict (see [`transformer_from_garg_state`][icl.models.garg.transformer_from_garg_state]).
      ImportError: PyTorch (or PyYAML, for ``config.yaml``) is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path {str(path)!r} does not exist")
    if path.is_dir():
        conf_path = path / "config.yaml"
        conf = _read_yaml(conf_path) if conf_path.exists() else {}
        family = conf.get("model", {}).get("family", "gpt2")
        if family != "gpt2":
            raise ValueError(f"path: {conf_path} describes a {family!r} model; only Garg et al.'s 'gpt2' "
                             "TransformerModel is supported")
        n_head = n_head if n_head is not None else conf.get("model", {}).get("n_head")
        if trained_points is None:
            trained_points = conf.get("training", {}).get("curriculum", {}).get("points", {}).get("end")
        file = path / (f"model_{step}.pt" if step is not None else "state.pt")
        if not file.exists():
            raise ValueError(f"path: {str(file)!r} does not exist (step={step})")
    else:
        if step is not None:
            raise ValueError("step applies to a run folder, not to a single .pt file")
        file = path
    if n_head is None:
        raise ValueError("n_head is required: pass n_head=... or a run folder whose config.yaml has model.n_head")
    try:
        import torch
    except ImportError as err:
        raise ImportError("reading a PyTorch .pt file needs torch (a CPU build is enough): "
                          "pip install 'icl[garg]' --extra-index-url https://download.pytorch.org/whl/cpu") from err
    data = torch.load(file, map_location="cpu", weights_only=True)
    state = data.get("model_state_dict", data) if isinstance(data, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"path: {str(file)!r} holds a {type(data).__name__}, not a state dict")
    return transformer_from_garg_state(state, n_head=n_head, trained_points=trained_points)
