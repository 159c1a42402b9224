"""Loading Llama-family checkpoints (Hugging Face safetensors directories or llama.cpp GGUF files) into `Llama`,
and saving `Llama` as a Hugging Face directory that transformers' PyTorch models load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.models.config import RUNTIME_FIELDS, LlamaConfig
from lowrank_jax.models.gguf_io import open_gguf
from lowrank_jax.models.gguf_tokenizer import load_gguf_tokenizer
from lowrank_jax.models.llama import Llama
from lowrank_jax.models.param_map import (NNXPath, expected_hf_shapes, hf_tensors_from_nnx, nnx_leaves_from_hf,
                                          rules_for)
from lowrank_jax.models.safetensors_io import (DEFAULT_MAX_SHARD_BYTES, INDEX_FILE, SINGLE_FILE,
                                               SafetensorsCheckpoint, write_safetensors)

CONFIG_FILE = "config.json"
# Tensors some HF checkpoints carry that the model recomputes or ties; loading skips them.
_IGNORED_HF_TENSORS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_WEIGHT_FILES = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


def load_pretrained(path: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None,
                    gguf_file: str | None = None, **runtime_overrides: Any) -> tuple[Llama, LlamaConfig]:
    """Loads a Llama / Mistral / Qwen2 checkpoint into a `Llama`.

    Sources: an HF directory (config.json plus model.safetensors, or shards with model.safetensors.index.json),
    a `.gguf` file, or a directory plus `gguf_file=` (dequantised; llama.cpp's Q/K row permutation undone).
    The model is built abstractly and each parameter is filled tensor by tensor, converted to `param_dtype`, and
    moved to the default device, so host memory holds one parameter (plus one tensor) beyond the loaded ones.
    Everything is checked (config, tensor names and shapes, file integrity) before any tensor is read.

    Args:
        path: the directory or .gguf file.
        dtype: compute dtype, 'float32' or 'bfloat16' (a name or a dtype); default `LlamaConfig`'s.
        param_dtype: parameter dtype, likewise.
        gguf_file: a GGUF file name inside the directory `path`.
        **runtime_overrides: other runtime fields of `LlamaConfig` (scan_layers, remat, attention_impl).

    Returns:
        (model, config).

    Example:
        >>> model, config = load_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf", dtype="bfloat16")  # doctest: +SKIP
    """
    checkpoint, config, source = _open_with_config(path, gguf_file, dtype, param_dtype, runtime_overrides)
    model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    variables = dict(nnx.to_flat_state(state))
    specs = {leaf_path: variable.get_value() for leaf_path, variable in variables.items()}
    _check_tensor_names_and_shapes(checkpoint.shapes, expected_hf_shapes(config, _shapes(specs)), config, source)
    _check_table_covers(specs, config)
    for leaf_path, leaf in nnx_leaves_from_hf(checkpoint.read, config, specs):
        # On an accelerator the host buffer is freed once copied; on CPU the device array adopts it (no copy).
        variables[leaf_path].set_value(jax.device_put(leaf))
        del leaf
    return nnx.merge(graphdef, state), config


def pretrained_config(path: str | os.PathLike, *, dtype: str | None = None, param_dtype: str | None = None,
                      gguf_file: str | None = None, **runtime_overrides: Any) -> LlamaConfig:
    """The `LlamaConfig` that `load_pretrained` with the same arguments builds, from config.json or the GGUF
    metadata: no tensor is read, so `nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))` gives the model's
    structure in a moment, whatever its size.

    Example:
        >>> pretrained_config("SmolLM2-135M-Instruct.Q4_1.gguf").num_hidden_layers  # doctest: +SKIP
        30
    """
    return _open_with_config(path, gguf_file, dtype, param_dtype, runtime_overrides)[1]


def save_pretrained(model: Llama, directory: str | os.PathLike, config: LlamaConfig | None = None, *,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Writes `model` as an HF directory: config.json plus model.safetensors (or shards and an index json).

    Files are written completely into a temporary directory beside `directory` first, then moved in; weight
    files of an earlier save that the new one does not overwrite are removed, other files (e.g. a tokenizer) kept.
    A failure while writing leaves `directory` as it was. Tensors keep the parameters' dtype.

    Args:
        model: a `Llama` without adapters (merge them first).
        directory: created if missing.
        config: the model's config; default `model.config`.
        max_shard_bytes: above this total, weights are split into shards of at most this size.

    Returns:
        The names of the files written.

    Example:
        >>> save_pretrained(model, "out/my-llama")  # doctest: +SKIP
        ['config.json', 'model.safetensors']
    """
    config = getattr(model, "config", None) if config is None else config
    if not isinstance(config, LlamaConfig):
        raise ValueError("save_pretrained needs a LlamaConfig: pass config=... (the model has no .config).")
    leaves = {path: variable.get_value() for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    expected = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    _check_model_matches(leaves, {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(expected, nnx.Param))})

    directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.saving-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the saved directory should not be
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            json.dump(config.to_hf_dict(), f, indent=2)
        written = [CONFIG_FILE, *write_safetensors(staging, hf_tensors_from_nnx(leaves, config), max_shard_bytes)]
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_into(staging, directory, written)
    return written


def load_tokenizer(path: str | os.PathLike, *, gguf_file: str | None = None):
    """The tokenizer of a checkpoint (transformers `AutoTokenizer`), from an HF directory or a GGUF file.

    From a GGUF file, bos / eos / pad are the tokens the file's metadata names (`tokenizer.ggml.*_token_id`), as
    `load_pretrained`'s config has them, and the converted tokenizer is cached (`lowrank_jax.models.gguf_tokenizer`).

    Args:
        path: the directory or .gguf file given to `load_pretrained`.
        gguf_file: a GGUF file name inside the directory `path`.
    """
    path = os.fspath(path)
    if gguf_file or path.endswith(".gguf"):
        return load_gguf_tokenizer(os.path.join(path, gguf_file) if gguf_file else path)
    from transformers import AutoTokenizer  # heavy import, only needed here

    return AutoTokenizer.from_pretrained(path)


def _open_with_config(path: str | os.PathLike, gguf_file: str | None, dtype, param_dtype, runtime_overrides: dict):
    """(tensor reader, LlamaConfig with the runtime fields set, description for errors) of a checkpoint path."""
    dtypes = {"dtype": dtype, "param_dtype": param_dtype}
    runtime = {**runtime_overrides, **{k: jnp.dtype(v).name for k, v in dtypes.items() if v is not None}}
    unknown = sorted(set(runtime) - set(RUNTIME_FIELDS))
    if unknown:
        raise TypeError(f"unknown keyword arguments {unknown}; runtime overrides are {RUNTIME_FIELDS}.")
    checkpoint, hf_config, source = _open_checkpoint(os.fspath(path), gguf_file)
    try:
        config = LlamaConfig.from_hf(hf_config)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    return checkpoint, config.replace(**runtime), source


def _open_checkpoint(path: str, gguf_file: str | None):
    """(tensor reader, config.json dict, description for errors) of a checkpoint path."""
    if path.endswith(".gguf") or gguf_file is not None:
        gguf_path = os.path.join(path, gguf_file) if gguf_file is not None else path
        checkpoint = open_gguf(gguf_path)
        return checkpoint, checkpoint.hf_config, gguf_path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory or .gguf file.")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        hint = f"; for a GGUF file pass gguf_file= one of {ggufs}" if ggufs else ""
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}: not a Hugging Face checkpoint directory{hint}.")
    with open(config_path) as f:
        try:
            hf_config = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path}: not valid JSON: {err}") from err
    return SafetensorsCheckpoint(path), hf_config, config_path


def _shapes(specs: dict[NNXPath, Any]) -> dict[NNXPath, tuple[int, ...]]:
    return {path: tuple(spec.shape) for path, spec in specs.items()}


def _check_tensor_names_and_shapes(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                                   config: LlamaConfig, source: str) -> None:
    missing = [name for name in expected if name not in found]
    if missing:
        raise ValueError(f"{source}: checkpoint lacks {len(missing)} tensor(s) the config needs, e.g. {missing[:3]} "
                         "(a truncated shard list, or a config.json for another model?).")
    ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = [n for n in found if n not in expected and n not in ignorable and not _IGNORED_HF_TENSORS.fullmatch(n)]
    if unexpected:
        raise ValueError(f"{source}: checkpoint has {len(unexpected)} tensor(s) this Llama has no place for, e.g. "
                         f"{unexpected[:3]} (a different architecture or config?).")
    for name, shape in expected.items():
        if found[name] != shape:
            raise ValueError(f"{source}: tensor {name} has shape {found[name]}, but the config needs {shape}.")


def _check_table_covers(specs: dict[NNXPath, Any], config: LlamaConfig) -> None:
    """Guards against a model parameter the mapping table does not fill (the table and model disagree)."""
    unfilled = set(specs) - {rule.nnx_path for rule in rules_for(config)}
    if unfilled:
        raise NotImplementedError(f"param_map.LLAMA_TENSORS has no rule for model parameters {sorted(unfilled)}.")


def _check_model_matches(leaves: dict[NNXPath, Any], expected: dict[NNXPath, Any]) -> None:
    if set(leaves) != set(expected):
        extra, absent = sorted(set(leaves) - set(expected)), sorted(set(expected) - set(leaves))
        raise ValueError(f"save_pretrained writes plain Llama models: the model has parameters {extra[:3]} the "
                         f"config does not describe and lacks {absent[:3]} (merge adapters first, or pass the "
                         "model's own config).")
    for path, spec in expected.items():
        if tuple(leaves[path].shape) != tuple(spec.shape):
            raise ValueError(f"model parameter {'.'.join(path)} has shape {tuple(leaves[path].shape)} but the config "
                             f"needs {tuple(spec.shape)}; pass the model's own config.")


def _move_into(staging: str, directory: str, written: list[str]) -> None:
    """Moves the finished files from `staging` into `directory` and removes stale weight files of a prior save."""
    if not os.path.exists(directory):
        os.rename(staging, directory)
        return
    # Shards first and the index / config last, so a reader never sees an index naming absent shards.
    for name in sorted(written, key=lambda n: n in (INDEX_FILE, SINGLE_FILE, CONFIG_FILE)):
        os.replace(os.path.join(staging, name), os.path.join(directory, name))
    os.rmdir(staging)
    for name in os.listdir(directory):
        if _WEIGHT_FILES.fullmatch(name) and name not in written:
            os.remove(os.path.join(directory, name))
