"""Hugging Face safetensors checkpoints (one file, or shards listed in an index json), one tensor at a time.

Reading holds at most one tensor in host memory; writing holds at most one shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors needs for BF16 tensors)
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


class SafetensorsCheckpoint:
    """The tensors of an HF checkpoint directory: names, shapes and one-at-a-time reads.

    Opening reads only headers, and fails on a missing or truncated file or an index naming absent tensors.

    Example:
        >>> ckpt = SafetensorsCheckpoint("path/to/hf_dir")  # doctest: +SKIP
        >>> ckpt.shapes["model.norm.weight"], ckpt.read("model.norm.weight").dtype  # doctest: +SKIP
        ((576,), dtype(bfloat16))
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        index_path = os.path.join(self.directory, INDEX_FILE)
        single_path = os.path.join(self.directory, SINGLE_FILE)
        if os.path.exists(index_path):
            with open(index_path) as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError) as err:
                    raise ValueError(f"{index_path}: not a safetensors index (needs a 'weight_map'): {err}") from err
        elif os.path.exists(single_path):
            weight_map = None
        else:
            raise FileNotFoundError(f"{self.directory} has no {SINGLE_FILE} or {INDEX_FILE}; an HF checkpoint "
                                    "directory needs its weights as safetensors (convert .bin files with "
                                    "transformers: from_pretrained(...).save_pretrained(dir)).")
        self.file_of: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        files = [SINGLE_FILE] if weight_map is None else sorted(set(weight_map.values()))
        for file_name in files:
            path = os.path.join(self.directory, file_name)
            for name, shape in _header_shapes(path).items():
                self.file_of[name], self.shapes[name] = path, shape
        if weight_map is not None:
            absent = sorted(name for name in weight_map if name not in self.shapes)
            if absent:
                raise ValueError(f"{index_path} lists tensors missing from their shard files: {absent[:5]} "
                                 f"(e.g. {absent[0]} in {weight_map[absent[0]]}).")

    def read(self, name: str) -> np.ndarray:
        """One tensor in its stored dtype and HF layout."""
        # Open per tensor: safetensors memory-maps the file, and mapped pages that were read stay in this
        # process's resident set until the file is closed; held open, the whole file would join the peak.
        with safe_open(self.file_of[name], framework="numpy") as f:
            return f.get_tensor(name)


def _header_shapes(path: str) -> dict[str, tuple[int, ...]]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: safetensors file not found.")
    try:
        with safe_open(path, framework="numpy") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path}: unreadable safetensors file (truncated or corrupt?): {err}") from err


def write_safetensors(directory: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Writes tensors as `model.safetensors`, or as shards plus `model.safetensors.index.json` when they exceed
    `max_shard_bytes` (the names transformers' `from_pretrained` looks for).

    Args:
        directory: an existing directory.
        tensors: (HF name, C-contiguous numpy array) pairs, consumed one by one.
        max_shard_bytes: a shard is closed before it would exceed this (a larger single tensor gets its own).

    Returns:
        The names of the files written.
    """
    shards: list[list[str]] = []
    pending: dict[str, np.ndarray] = {}
    pending_bytes = total_bytes = 0

    def flush():
        save_file(pending, os.path.join(directory, f"shard-{len(shards)}.partial"), metadata={"format": "pt"})
        shards.append(list(pending))
        pending.clear()

    for name, tensor in tensors:
        if pending and pending_bytes + tensor.nbytes > max_shard_bytes:
            flush()
            pending_bytes = 0
        pending[name] = tensor
        pending_bytes += tensor.nbytes
        total_bytes += tensor.nbytes
    flush()

    if len(shards) == 1:
        os.replace(os.path.join(directory, "shard-0.partial"), os.path.join(directory, SINGLE_FILE))
        return [SINGLE_FILE]
    file_names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for i, file_name in enumerate(file_names):
        os.replace(os.path.join(directory, f"shard-{i}.partial"), os.path.join(directory, file_name))
    weight_map = {name: file_name for file_name, names in zip(file_names, shards) for name in names}
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f, indent=2)
    return [*file_names, INDEX_FILE]
