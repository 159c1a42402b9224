"""The one table linking Hugging Face Llama tensor names to this project's NNX parameter paths.

Both loaders (safetensors, GGUF) and the saver go through it; GGUF names reach it via `GGUF_TO_HF_NAMES`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

NNXPath = tuple[str, ...]
LAYER = "{layer}"


def _always(config: Any) -> bool:
    return True


def _has_attention_bias(config: Any) -> bool:
    return config.attention_bias


def _has_untied_lm_head(config: Any) -> bool:
    return not config.tie_word_embeddings


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """How one Hugging Face tensor (or one per decoder layer) becomes one NNX parameter, and back.

    Attributes:
        hf_name: the HF tensor name; `{layer}` marks a per-layer tensor. Per-layer tensors are stacked on the NNX
            side along a leading axis of length L: `model.layers.3.…` is index 3 of the NNX leaf.
        nnx_path: the leaf's path in `nnx.state(model)`.
        transpose: HF `nn.Linear` weights are (out, in); Flax kernels are (in, out).
        gguf_head_count: for llama.cpp's `llama` architecture, the config field (`num_attention_heads` or
            `num_key_value_heads`) whose head count llama.cpp used to permute this tensor's rows; GGUF readers
            undo it with `unpermute_gguf_rows`. None: stored in HF row order.
        exists: whether a config has this tensor (q/k/v biases only for Qwen2, lm_head only when untied).
    """

    hf_name: str
    nnx_path: NNXPath
    transpose: bool = False
    gguf_head_count: str | None = None
    exists: Callable[[Any], bool] = _always

    @property
    def stacked(self) -> bool:
        """True for per-layer tensors, stored stacked (L, ...) in NNX."""
        return LAYER in self.hf_name

    def hf_names(self, num_layers: int) -> list[str]:
        """The HF names this rule covers, in NNX stacking order."""
        if not self.stacked:
            return [self.hf_name]
        return [self.hf_name.format(layer=i) for i in range(num_layers)]

    def to_nnx(self, hf_tensor: np.ndarray) -> np.ndarray:
        """One HF tensor in the layout of the NNX leaf (one layer's slice when stacked)."""
        return hf_tensor.T if self.transpose else hf_tensor

    def to_hf(self, nnx_tensor: np.ndarray) -> np.ndarray:
        """Inverse of `to_nnx`."""
        return nnx_tensor.T if self.transpose else nnx_tensor


def _layer(hf_suffix: str, nnx_path: NNXPath, **kwargs: Any) -> TensorRule:
    return TensorRule(f"model.layers.{LAYER}.{hf_suffix}", ("layers", *nnx_path), **kwargs)


LLAMA_TENSORS: tuple[TensorRule, ...] = (
    TensorRule("model.embed_tokens.weight", ("embed_tokens", "embedding")),
    _layer("input_layernorm.weight", ("input_layernorm", "scale")),
    _layer("self_attn.q_proj.weight", ("self_attn", "q_proj", "kernel"), transpose=True,
           gguf_head_count="num_attention_heads"),
    _layer("self_attn.q_proj.bias", ("self_attn", "q_proj", "bias"), gguf_head_count="num_attention_heads",
           exists=_has_attention_bias),
    _layer("self_attn.k_proj.weight", ("self_attn", "k_proj", "kernel"), transpose=True,
           gguf_head_count="num_key_value_heads"),
    _layer("self_attn.k_proj.bias", ("self_attn", "k_proj", "bias"), gguf_head_count="num_key_value_heads",
           exists=_has_attention_bias),
    _layer("self_attn.v_proj.weight", ("self_attn", "v_proj", "kernel"), transpose=True),
    _layer("self_attn.v_proj.bias", ("self_attn", "v_proj", "bias"), exists=_has_attention_bias),
    _layer("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), transpose=True),
    _layer("post_attention_layernorm.weight", ("post_attention_layernorm", "scale")),
    _layer("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), transpose=True),
    _layer("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), transpose=True),
    _layer("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), transpose=True),
    TensorRule("model.norm.weight", ("norm", "scale")),
    TensorRule("lm_head.weight", ("lm_head", "kernel"), transpose=True, exists=_has_untied_lm_head),
)

# llama.cpp tensor names (convert_hf_to_gguf.py, architectures `llama` and `qwen2`) -> HF names.
GGUF_TO_HF_NAMES: Mapping[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    **{f"blk.{LAYER}.{gguf}.{kind}": f"model.layers.{LAYER}.{hf}.{kind}"
       for gguf, hf, kinds in (
           ("attn_norm", "input_layernorm", ("weight",)),
           ("attn_q", "self_attn.q_proj", ("weight", "bias")),
           ("attn_k", "self_attn.k_proj", ("weight", "bias")),
           ("attn_v", "self_attn.v_proj", ("weight", "bias")),
           ("attn_output", "self_attn.o_proj", ("weight",)),
           ("ffn_norm", "post_attention_layernorm", ("weight",)),
           ("ffn_gate", "mlp.gate_proj", ("weight",)),
           ("ffn_up", "mlp.up_proj", ("weight",)),
           ("ffn_down", "mlp.down_proj", ("weight",)),
       )
       for kind in kinds},
}


def _pattern_regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(re.escape(LAYER), r"(\d+)"))


_HF_RULE_REGEXES = tuple((_pattern_regex(rule.hf_name), rule) for rule in LLAMA_TENSORS)
_GGUF_NAME_REGEXES = tuple((_pattern_regex(gguf), hf) for gguf, hf in GGUF_TO_HF_NAMES.items())


def rule_for_hf_name(hf_name: str) -> tuple[TensorRule, int | None] | None:
    """The rule covering an HF tensor name and its layer index (None for unstacked); None if no rule does.

    >>> rule, layer = rule_for_hf_name("model.layers.7.mlp.up_proj.weight")
    >>> rule.nnx_path, layer
    (('layers', 'mlp', 'up_proj', 'kernel'), 7)
    """
    for regex, rule in _HF_RULE_REGEXES:
        match = regex.fullmatch(hf_name)
        if match:
            return rule, int(match.group(1)) if rule.stacked else None
    return None


def hf_name_from_gguf(gguf_name: str) -> str | None:
    """The HF name of a llama.cpp tensor name, or None for a name the table does not know.

    >>> hf_name_from_gguf("blk.3.attn_k.weight")
    'model.layers.3.self_attn.k_proj.weight'
    """
    for regex, hf_pattern in _GGUF_NAME_REGEXES:
        match = regex.fullmatch(gguf_name)
        if match:
            return hf_pattern.format(layer=match.group(1)) if LAYER in hf_pattern else hf_pattern
    return None


def unpermute_gguf_rows(tensor: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation, giving HF's row order.

    Per head of `head_dim` rows, HF's split-half RoPE pairs row j with row j + head_dim/2; llama.cpp's converter
    (`LlamaModel.permute`) interleaves those pairs (row order 0, h/2, 1, h/2+1, ...) for its interleaved RoPE.

    Args:
        tensor: (num_heads * head_dim, ...) in llama.cpp row order (a weight (out, in) or a bias (out,)).
        num_heads: heads of this projection (query heads for Q, key/value heads for K).

    Returns:
        The same rows in HF order.

    >>> unpermute_gguf_rows(np.array([0, 2, 1, 3]), num_heads=1)
    array([0, 1, 2, 3])
    """
    rows = tensor.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"cannot unpermute {rows} rows over {num_heads} heads: rows must be a multiple of "
                         f"2 * num_heads = {2 * num_heads}.")
    per_head = tensor.reshape(num_heads, rows // num_heads // 2, 2, *tensor.shape[1:])
    return per_head.swapaxes(1, 2).reshape(tensor.shape)


def rules_for(config: Any) -> tuple[TensorRule, ...]:
    """The rules of the tensors a config's checkpoint holds."""
    return tuple(rule for rule in LLAMA_TENSORS if rule.exists(config))


def expected_hf_shapes(config: Any, nnx_shapes: Mapping[NNXPath, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of `config`'s checkpoint with its HF shape.

    Args:
        config: a `LlamaConfig`.
        nnx_shapes: NNX path -> shape of the model's leaves (e.g. from `nnx.eval_shape`).
    """
    shapes = {}
    for rule in rules_for(config):
        leaf_shape = nnx_shapes[rule.nnx_path]
        slice_shape = leaf_shape[1:] if rule.stacked else leaf_shape
        hf_shape = tuple(reversed(slice_shape)) if rule.transpose else tuple(slice_shape)
        for name in rule.hf_names(config.num_hidden_layers):
            shapes[name] = hf_shape
    return shapes


def nnx_leaves_from_hf(read_hf: Callable[[str], np.ndarray], config: Any,
                       nnx_specs: Mapping[NNXPath, Any]) -> Iterator[tuple[NNXPath, np.ndarray]]:
    """Assembles the NNX leaves from HF tensors, one leaf at a time, so at most one leaf is built at once.

    Args:
        read_hf: HF name -> tensor in HF layout, any float dtype (read lazily, once per name).
        config: a `LlamaConfig`.
        nnx_specs: NNX path -> an object with `.shape` and `.dtype` (e.g. `jax.ShapeDtypeStruct`); each leaf
            is built with that shape and converted to that dtype tensor by tensor.

    Yields:
        (NNX path, numpy array of the leaf's shape and dtype), in table order.
    """
    for rule in rules_for(config):
        # A helper builds the leaf, so this generator keeps no reference to it once yielded.
        yield rule.nnx_path, _assemble_leaf(rule, read_hf, config.num_hidden_layers, nnx_specs[rule.nnx_path])


def _assemble_leaf(rule: TensorRule, read_hf: Callable[[str], np.ndarray], num_layers: int, spec: Any) -> np.ndarray:
    leaf = _aligned_empty(spec.shape, spec.dtype)
    slices = leaf if rule.stacked else leaf[None]
    for nnx_slice, name in zip(slices, rule.hf_names(num_layers)):
        tensor = rule.to_nnx(read_hf(name))
        if tensor.shape != nnx_slice.shape:  # numpy would broadcast some mismatches silently
            raise ValueError(f"tensor {name} has shape {rule.to_hf(tensor).shape}, expected "
                             f"{rule.to_hf(nnx_slice).shape}.")
        _copy_tiled(nnx_slice, tensor)
    return leaf


def _copy_tiled(destination: np.ndarray, source: np.ndarray, tile: int = 256) -> None:
    """`destination[...] = source`, tile by tile when `source` is a strided 2-D view such as a transpose.

    One strided pass over a (4096, 11008) transpose misses the cache on nearly every element; square tiles make the
    copy (and any dtype conversion) several times faster.
    """
    if destination.ndim != 2 or source.flags.c_contiguous:
        destination[...] = source
        return
    for i in range(0, destination.shape[0], tile):
        for j in range(0, destination.shape[1], tile):
            destination[i:i + tile, j:j + tile] = source[i:i + tile, j:j + tile]


def _aligned_empty(shape: tuple[int, ...], dtype: Any, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an `alignment`-byte boundary.

    jax.device_put adopts such a buffer on CPU instead of copying it, so a loaded leaf is not held twice.
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + size].view(dtype).reshape(shape)


def hf_tensors_from_nnx(nnx_leaves: Mapping[NNXPath, Any], config: Any) -> Iterator[tuple[str, np.ndarray]]:
    """The HF tensors of a model, one at a time: the inverse of `nnx_leaves_from_hf`.

    Args:
        nnx_leaves: NNX path -> array (numpy or JAX; copied to host one HF tensor at a time).
        config: a `LlamaConfig`.

    Yields:
        (HF name, C-contiguous numpy array in HF layout), in table order.
    """
    for rule in rules_for(config):
        leaf = nnx_leaves[rule.nnx_path]
        names = rule.hf_names(config.num_hidden_layers)
        slices = (leaf[layer] for layer in range(len(names))) if rule.stacked else (leaf,)
        for name, nnx_slice in zip(names, slices):
            hf_view = rule.to_hf(np.asarray(nnx_slice))
            tensor = np.empty(hf_view.shape, hf_view.dtype)
            _copy_tiled(tensor, hf_view)
            yield name, tensor
