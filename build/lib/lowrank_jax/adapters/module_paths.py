"""Finding modules of an NNX graph by dotted path ('layers.self_attn.q_proj') and swapping them in place."""

from __future__ import annotations

from typing import Iterator

from flax import nnx


_CONTAINERS = (nnx.List, nnx.Dict, list, dict)


def dotted(path: tuple) -> str:
    """('layers', 0, 'q_proj') → 'layers.0.q_proj'."""
    return ".".join(str(part) for part in path)


def iter_module_paths(model: nnx.Module) -> Iterator[tuple[tuple, nnx.Module]]:
    """(path tuple, module) for every submodule of `model`, the root excluded."""
    for path, module in nnx.iter_modules(model):
        if path:
            yield tuple(path), module


def replace_module(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    """Puts `new` at `path` inside `model` (attribute, or item of an nnx.List / nnx.Dict)."""
    parent = model
    for part in path[:-1]:
        parent = parent[part] if isinstance(parent, _CONTAINERS) else getattr(parent, part)
    if isinstance(parent, _CONTAINERS):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)
