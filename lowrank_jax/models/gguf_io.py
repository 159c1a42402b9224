"""llama.cpp GGUF checkpoints read as a Hugging Face checkpoint: a config.json-style dict from the metadata and
dequantised tensors under HF names, with llama.cpp's Q/K row permutation undone.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from lowrank_jax.models.param_map import hf_name_from_gguf, rule_for_hf_name, unpermute_gguf_rows

# GGUF general.architecture -> HF model_type. llama.cpp writes Llama and Mistral as `llama`.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "gemma3": "gemma3_text"}
# llama.cpp's converter permutes Q/K rows to interleaved RoPE order for these (not for the others, which use NEOX
# RoPE, HF's split-half layout).
PERMUTED_ARCHITECTURES = ("llama",)
# llama.cpp's Gemma converter stores every RMSNorm weight w as 1 + w (its norm multiplies by the weight).
NORM_SHIFTED_ARCHITECTURES = ("gemma3",)
# Gemma 3 settings llama.cpp fixes in code when the file lacks them (llama-model.cpp): every 6th layer global,
# local rope base 10000, and queries scaled by head_dim ** -0.5 except in the 62-layer 27B model (hidden / heads).
_GEMMA3_SLIDING_WINDOW_PATTERN = 6
_GEMMA3_LOCAL_ROPE_THETA = 10000.0
_GEMMA3_27B_LAYERS = 62
_REQUIRED = object()


class GGUFCheckpoint:
    """A GGUF file as HF-named tensors: `hf_config`, `shapes` and one-at-a-time `read`.

    Opening parses the header and memory-maps the file (no tensor is dequantised yet); it fails with the file's name
    on a truncated file, an unsupported architecture or rope scaling, or a tensor the name table does not know.
    The parsed metadata is dropped once `hf_config` is built (a 49k-token vocabulary is ~150 MB of objects).

    Example:
        >>> ckpt = GGUFCheckpoint("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        >>> ckpt.shapes["model.layers.0.self_attn.k_proj.weight"]  # doctest: +SKIP
        (192, 576)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: GGUF file not found.")
        import gguf  # the [train] extra: GGUF support is optional for the library

        try:
            reader = gguf.GGUFReader(self.path)
        except (ValueError, IndexError, KeyError, OSError) as err:
            raise ValueError(f"{self.path}: unreadable GGUF file (truncated or corrupt?): {err}") from err
        metadata = _Metadata(reader, self.path)
        self.architecture = metadata.architecture
        self._tensors = {}
        for tensor in reader.tensors:
            hf_name = hf_name_from_gguf(tensor.name, self.architecture)
            if hf_name is None:
                hint = (" (llama3 rope scaling, stored by llama.cpp as rope_freqs, or Phi-3's long-context "
                        "rope_factors, is not supported from GGUF)") if tensor.name.startswith("rope_") else ""
                raise ValueError(f"{self.path}: tensor {tensor.name!r} of GGUF architecture {self.architecture!r} "
                                 f"has no counterpart in this model{hint}.")
            self._tensors[hf_name] = tensor
        self.shapes = {name: tuple(int(d) for d in reversed(t.shape)) for name, t in self._tensors.items()}
        self.hf_config = metadata.hf_config(tensor_names=self._tensors)

    def read(self, name: str) -> np.ndarray:
        """One tensor dequantised to float32 (F16/BF16/F32 exactly), in HF name, layout and row order."""
        import gguf

        tensor = self._tensors[name]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(self.shapes[name])
        head_count = rule_for_hf_name(name)[0].gguf_head_count
        if self.architecture in PERMUTED_ARCHITECTURES and head_count is not None:
            values = unpermute_gguf_rows(values, self.hf_config[head_count])
        if self.architecture in NORM_SHIFTED_ARCHITECTURES and name.endswith("norm.weight"):
            values = values - 1.0
        return values


def open_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """`GGUFCheckpoint(path)`, parsed once per version of the file: parsing a 49k-token vocabulary takes seconds, and
    a run opens its GGUF three times (the pre-flight model structure, the weights, the tokenizer's special tokens)."""
    if not os.path.isfile(path):
        return GGUFCheckpoint(path)  # raises, naming the file
    stat = os.stat(path)
    return _parsed_gguf(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _parsed_gguf(path: str, mtime_ns: int, size: int) -> GGUFCheckpoint:
    del mtime_ns, size  # in the cache key only: a rewritten file is parsed again
    return GGUFCheckpoint(path)


class _Metadata:
    """The key/value metadata of a GGUF file, read with llama.cpp's key names (`gguf.Keys`)."""

    def __init__(self, reader: gguf.GGUFReader, path: str):
        import gguf

        self.reader, self.path = reader, path
        architecture = reader.get_field(gguf.Keys.General.ARCHITECTURE)
        self.architecture = None if architecture is None else architecture.contents()
        if self.architecture not in GGUF_ARCHITECTURES:
            raise ValueError(f"{path}: GGUF architecture {self.architecture!r} is not supported; supported: "
                             f"{tuple(GGUF_ARCHITECTURES)}.")
        split_count = self.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, default=1)
        if split_count > 1:
            raise ValueError(f"{path} is part of a {split_count}-file split GGUF; merge the parts first "
                             "(llama.cpp's gguf-split --merge).")

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        key = key.format(arch=self.architecture)
        field = self.reader.get_field(key)
        if field is None:
            if default is _REQUIRED:
                raise ValueError(f"{self.path}: GGUF metadata lacks {key!r}.")
            return default
        return field.contents()

    def hf_config(self, tensor_names) -> dict[str, Any]:
        """The transformers config.json dict the metadata describes; `tensor_names` are the file's HF names."""
        import gguf

        keys = gguf.Keys
        scaling_type = self.get(keys.Rope.SCALING_TYPE, default="none")
        if scaling_type not in ("none", "linear"):
            raise ValueError(f"{self.path}: GGUF rope scaling {scaling_type!r} is not supported; supported: none, "
                             "linear.")
        rope_scaling = None
        if scaling_type == "linear":
            rope_scaling = {"rope_type": "linear", "factor": self.get(keys.Rope.SCALING_FACTOR)}
        heads = self.get(keys.Attention.HEAD_COUNT)
        hidden = self.get(keys.LLM.EMBEDDING_LENGTH)
        head_dim = self.get(keys.Attention.KEY_LENGTH, default=hidden // heads)
        rotary_dims = self.get(keys.Rope.DIMENSION_COUNT, default=head_dim)
        if rotary_dims != head_dim:
            raise ValueError(f"{self.path}: rope.dimension_count={rotary_dims} != head_dim={head_dim} (partial "
                             "rotary embeddings) is not supported.")
        tokens = self.reader.get_field(keys.Tokenizer.LIST)
        blocks = self.get(keys.LLM.BLOCK_COUNT)
        family = {}
        if self.architecture in ("phi3", "gemma3"):
            family["sliding_window"] = self.get(keys.Attention.SLIDING_WINDOW, default=None)
        if self.architecture == "gemma3":
            pattern = self.get(keys.Attention.SLIDING_WINDOW_PATTERN, default=_GEMMA3_SLIDING_WINDOW_PATTERN)
            sliding = pattern if isinstance(pattern, list) else [bool((i + 1) % pattern) for i in range(blocks)]
            family.update(
                layer_types=["sliding_attention" if is_sliding else "full_attention" for is_sliding in sliding],
                rope_local_base_freq=_GEMMA3_LOCAL_ROPE_THETA,
                query_pre_attn_scalar=hidden // heads if blocks == _GEMMA3_27B_LAYERS else head_dim,
                final_logit_softcapping=self.get(keys.LLM.FINAL_LOGIT_SOFTCAPPING, default=None))
        return {
            **family,
            "model_type": GGUF_ARCHITECTURES[self.architecture],
            "vocab_size": len(tokens.data) if tokens is not None else self.get(keys.LLM.VOCAB_SIZE),
            "hidden_size": hidden,
            "intermediate_size": self.get(keys.LLM.FEED_FORWARD_LENGTH),
            "num_hidden_layers": blocks,
            "num_attention_heads": heads,
            "num_key_value_heads": self.get(keys.Attention.HEAD_COUNT_KV, default=heads),
            "head_dim": head_dim,
            "rms_norm_eps": self.get(keys.Attention.LAYERNORM_RMS_EPS),
            "rope_theta": self.get(keys.Rope.FREQ_BASE, default=10000.0),
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.get(keys.LLM.CONTEXT_LENGTH),
            "tie_word_embeddings": "lm_head.weight" not in tensor_names,
            "attention_bias": "model.layers.0.self_attn.q_proj.bias" in tensor_names,
            "bos_token_id": self.get(keys.Tokenizer.BOS_ID, default=None),
            "eos_token_id": self.get(keys.Tokenizer.EOS_ID, default=None),
            "pad_token_id": self.get(keys.Tokenizer.PAD_ID, default=None),
        }
