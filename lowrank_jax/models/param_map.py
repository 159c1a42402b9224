"""The one table linking Hugging Face tensor names of the Llama family to this project's NNX parameter paths.

Both loaders (safetensors, GGUF) and the saver go through it; GGUF names reach it via `hf_name_from_gguf`.
Fused checkpoint tensors (Phi-3's qkv_proj and gate_up_proj) are split into one leaf per projection on load
(each rule takes a block of rows) and concatenated again on save.
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


def _has_qk_norm(config: Any) -> bool:
    return config.qk_norm


def _has_gemma_layout(config: Any) -> bool:
    return config.gemma_layout


def _has_fused_projections(config: Any) -> bool:
    return config.model_type == "phi3"


def _has_separate_projections(config: Any) -> bool:
    return not _has_fused_projections(config)


def _row_block(*sizes: Callable[[Any], int]) -> Callable[[Any], tuple[int, int]]:
    """The rows (start, stop) of the last of `sizes` inside a fused tensor whose blocks have those sizes in order."""
    def rows(config: Any) -> tuple[int, int]:
        start = sum(size(config) for size in sizes[:-1])
        return start, start + sizes[-1](config)
    return rows


def _q_size(config: Any) -> int:
    return config.num_attention_heads * config.head_dim


def _kv_size(config: Any) -> int:
    return config.num_key_value_heads * config.head_dim


def _mlp_size(config: Any) -> int:
    return config.intermediate_size


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
        rows: for a block of a fused HF tensor, config -> (start, stop) of its rows (the HF out axis); rules sharing
            an `hf_name` list their blocks in row order. None: the whole tensor.
    """

    hf_name: str
    nnx_path: NNXPath
    transpose: bool = False
    gguf_head_count: str | None = None
    exists: Callable[[Any], bool] = _always
    rows: Callable[[Any], tuple[int, int]] | None = None

    @property
    def stacked(self) -> bool:
        """True for per-layer tensors, stored stacked (L, ...) in NNX."""
        return LAYER in self.hf_name

    def hf_names(self, num_layers: int) -> list[str]:
        """The HF names this rule covers, in NNX stacking order."""
        if not self.stacked:
            return [self.hf_name]
        return [self.hf_name.format(layer=i) for i in range(num_layers)]

    def to_nnx(self, hf_tensor: np.ndarray, config: Any = None) -> np.ndarray:
        """One HF tensor (its block of rows for a fused tensor, which needs `config`) in the layout of the NNX leaf
        (one layer's slice when stacked)."""
        if self.rows is not None:
            start, stop = self.rows(config)
            hf_tensor = hf_tensor[start:stop]
        return hf_tensor.T if self.transpose else hf_tensor

    def to_hf(self, nnx_tensor: np.ndarray) -> np.ndarray:
        """Inverse of `to_nnx` (for a fused tensor: this rule's block of rows)."""
        return nnx_tensor.T if self.transpose else nnx_tensor


def _layer(hf_suffix: str, nnx_path: NNXPath, **kwargs: Any) -> TensorRule:
    return TensorRule(f"model.layers.{LAYER}.{hf_suffix}", ("layers", *nnx_path), **kwargs)


_ATTENTION_BLOCKS = dict(q=_row_block(_q_size), k=_row_block(_q_size, _kv_size),
                         v=_row_block(_q_size, _kv_size, _kv_size))
_MLP_BLOCKS = dict(gate=_row_block(_mlp_size), up=_row_block(_mlp_size, _mlp_size))

LLAMA_TENSORS: tuple[TensorRule, ...] = (
    TensorRule("model.embed_tokens.weight", ("embed_tokens", "embedding")),
    _layer("input_layernorm.weight", ("input_layernorm", "scale")),
    _layer("self_attn.q_proj.weight", ("self_attn", "q_proj", "kernel"), transpose=True,
           gguf_head_count="num_attention_heads", exists=_has_separate_projections),
    _layer("self_attn.q_proj.bias", ("self_attn", "q_proj", "bias"), gguf_head_count="num_attention_heads",
           exists=_has_attention_bias),
    _layer("self_attn.k_proj.weight", ("self_attn", "k_proj", "kernel"), transpose=True,
           gguf_head_count="num_key_value_heads", exists=_has_separate_projections),
    _layer("self_attn.k_proj.bias", ("self_attn", "k_proj", "bias"), gguf_head_count="num_key_value_heads",
           exists=_has_attention_bias),
    _layer("self_attn.v_proj.weight", ("self_attn", "v_proj", "kernel"), transpose=True,
           exists=_has_separate_projections),
    _layer("self_attn.v_proj.bias", ("self_attn", "v_proj", "bias"), exists=_has_attention_bias),
    *(_layer("self_attn.qkv_proj.weight", ("self_attn", f"{part}_proj", "kernel"), transpose=True, rows=rows,
             exists=_has_fused_projections) for part, rows in _ATTENTION_BLOCKS.items()),
    _layer("self_attn.q_norm.weight", ("self_attn", "q_norm", "scale"), exists=_has_qk_norm),
    _layer("self_attn.k_norm.weight", ("self_attn", "k_norm", "scale"), exists=_has_qk_norm),
    _layer("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), transpose=True),
    _layer("post_attention_layernorm.weight", ("post_attention_layernorm", "scale")),
    _layer("pre_feedforward_layernorm.weight", ("pre_feedforward_layernorm", "scale"), exists=_has_gemma_layout),
    _layer("post_feedforward_layernorm.weight", ("post_feedforward_layernorm", "scale"), exists=_has_gemma_layout),
    _layer("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), transpose=True, exists=_has_separate_projections),
    _layer("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), transpose=True, exists=_has_separate_projections),
    *(_layer("mlp.gate_up_proj.weight", ("mlp", f"{part}_proj", "kernel"), transpose=True, rows=rows,
             exists=_has_fused_projections) for part, rows in _MLP_BLOCKS.items()),
    _layer("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), transpose=True),
    TensorRule("model.norm.weight", ("norm", "scale")),
    TensorRule("lm_head.weight", ("lm_head", "kernel"), transpose=True, exists=_has_untied_lm_head),
)

# llama.cpp tensor names (convert_hf_to_gguf.py) -> HF names, shared by architectures `llama`, `qwen2`, `qwen3`,
# `phi3` and `gemma3`; `GGUF_ARCHITECTURE_NAMES` holds each architecture's own meanings.
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
           ("attn_q_norm", "self_attn.q_norm", ("weight",)),
           ("attn_k_norm", "self_attn.k_norm", ("weight",)),
           ("attn_output", "self_attn.o_proj", ("weight",)),
           ("ffn_norm", "post_attention_layernorm", ("weight",)),
           ("ffn_gate", "mlp.gate_proj", ("weight",)),
           ("ffn_up", "mlp.up_proj", ("weight",)),
           ("ffn_down", "mlp.down_proj", ("weight",)),
       )
       for kind in kinds},
}
GGUF_ARCHITECTURE_NAMES: Mapping[str, Mapping[str, str]] = {
    "phi3": {f"blk.{LAYER}.attn_qkv.weight": f"model.layers.{LAYER}.self_attn.qkv_proj.weight",
             f"blk.{LAYER}.ffn_up.weight": f"model.layers.{LAYER}.mlp.gate_up_proj.weight"},
    # Gemma's ffn_norm is the norm before the MLP; its post-attention norm normalises the attention output.
    "gemma3": {f"blk.{LAYER}.ffn_norm.weight": f"model.layers.{LAYER}.pre_feedforward_layernorm.weight",
               f"blk.{LAYER}.post_attention_norm.weight": f"model.layers.{LAYER}.post_attention_layernorm.weight",
               f"blk.{LAYER}.post_ffw_norm.weight": f"model.layers.{LAYER}.post_feedforward_layernorm.weight"},
}


def _pattern_regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(re.escape(LAYER), r"(\d+)"))


_HF_RULE_REGEXES = tuple((_pattern_regex(rule.hf_name), rule) for rule in LLAMA_TENSORS)
_GGUF_NAME_REGEXES = {
    architecture: tuple((_pattern_regex(gguf), hf) for gguf, hf in {**GGUF_TO_HF_NAMES, **own}.items())
    for architecture, own in {"llama": {}, **GGUF_ARCHITECTURE_NAMES}.items()}


def rule_for_hf_name(hf_name: str) -> tuple[TensorRule, int | None] | None:
    """The (first) rule covering an HF tensor name and its layer index (None for unstacked); None if no rule does.

    >>> rule, layer = rule_for_hf_name("model.layers.7.mlp.up_proj.weight")
    >>> rule.nnx_path, layer
    (('layers', 'mlp', 'up_proj', 'kernel'), 7)
    """
    for regex, rule in _HF_RULE_REGEXES:
        match = regex.fullmatch(hf_name)
        if match:
            return rule, int(match.group(1)) if rule.stacked else None
    return None


def hf_name_from_gguf(gguf_name: str, architecture: str = "llama") -> str | None:
    """The HF name of a llama.cpp tensor name in a file of GGUF `architecture`, or None for a name the table does
    not know.

    >>> hf_name_from_gguf("blk.3.attn_k.weight")
    'model.layers.3.self_attn.k_proj.weight'
    >>> hf_name_from_gguf("blk.3.ffn_norm.weight", "gemma3")
    'model.layers.3.pre_feedforward_layernorm.weight'
    """
    for regex, hf_pattern in _GGUF_NAME_REGEXES.get(architecture, _GGUF_NAME_REGEXES["llama"]):
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
            rows = hf_shape[0] + (shapes[name][0] if rule.rows is not None and name in shapes else 0)
            shapes[name] = (rows, *hf_shape[1:])  # a further block of a fused tensor adds rows
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
        yield rule.nnx_path, _assemble_leaf(rule, read_hf, config, nnx_specs[rule.nnx_path])


def _assemble_leaf(rule: TensorRule, read_hf: Callable[[str], np.ndarray], config: Any, spec: Any) -> np.ndarray:
    leaf = _aligned_empty(spec.shape, spec.dtype)
    slices = leaf if rule.stacked else leaf[None]
    for nnx_slice, name in zip(slices, rule.hf_names(config.num_hidden_layers)):
        tensor = rule.to_nnx(read_hf(name), config)
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
        (HF name, C-contiguous numpy array in HF layout), in table order; a fused tensor's blocks concatenated.
    """
    rules = rules_for(config)
    for first in rules:
        blocks = [rule for rule in rules if rule.hf_name == first.hf_name]
        if first is not blocks[0]:
            continue  # a later block of a fused tensor, written with its first block
        for layer, name in enumerate(first.hf_names(config.num_hidden_layers)):
            views = [rule.to_hf(np.asarray(nnx_leaves[rule.nnx_path][layer] if rule.stacked
                                           else nnx_leaves[rule.nnx_path])) for rule in blocks]
            tensor = np.empty((sum(v.shape[0] for v in views), *views[0].shape[1:]), views[0].dtype)
            start = 0
            for view in views:
                _copy_tiled(tensor[start:start + view.shape[0]], view)
                start += view.shape[0]
            yield name, tensor
