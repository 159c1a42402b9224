"""Building a settings dataclass from a plain dict, with unknown keys an error that names the valid ones."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def from_fields(cls: type, config: Mapping[str, Any]):
    """`cls(**config)` for a dataclass `cls`, after checking that every key of `config` is one of its fields.

    >>> @dataclasses.dataclass
    ... class Point:
    ...     x: int = 0
    >>> from_fields(Point, {"x": 2})
    Point(x=2)
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"expected {cls.__name__} or a dict of its fields, got {type(config).__name__}.")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {valid}.")
    return cls(**config)
