"""`AdapterConfig`: which layers get adapters, with which init, rank, scale and dtype; validated on creation.

Module paths are NNX attribute paths joined with '.', e.g. `layers.self_attn.q_proj`; patterns use `re.fullmatch`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from typing import Any, Mapping, Sequence

import jax.numpy as jnp

from lowrank_jax.adapters.inits import get_method
from lowrank_jax.config_fields import from_fields

_SCALINGS = ("standard", "rslora")
_DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Adapter settings; a plain dict with the same keys is accepted wherever a config is.

    Attributes:
        method: a registered init (`lora`, `slora`, `nlora`, `nystrom`, `pissa`, `milora`, `olora`, `inttune`,
            `dora`, `loraga`; loraga needs `adapt(..., gradients=...)`).
        rank: adapter rank r (≥ 1, ≤ min(in, out) of every target).
        alpha: scale numerator: s = alpha / r ('standard') or alpha / sqrt(r) ('rslora').
        targets: regex (or sequence of regexes) that must fullmatch the module path of each adapted `nnx.Linear`.
        scaling: 'standard' or 'rslora'.
        dropout: dropout rate on the adapter's input, in [0, 1); 0 adds no RNG state.
        rank_pattern: {regex: rank} overrides; the first regex that fullmatches a path wins.
        alpha_pattern: {regex: alpha} overrides, matched the same way.
        dtype: adapter parameter dtype, one of float32 (default, also on a bf16 base), bfloat16, float16, float64.
        seed: seed of the random inits and dropout keys (each module and stacked layer gets its own key).
        niter: pissa and loraga: None = exact SVD, K = randomized SVD with K subspace iterations (PEFT's
            pissa_niter_K; LoRA-GA's authors use 4).
        oversampling: nystrom only: extra sketch columns ℓ (default r // 2).
        init_base: inttune only: the init whose M trains (default 'nlora'; 'nystrom' and other B ≠ 0 inits work).
        stable_gamma: loraga only: γ of the stable scale out^¼/√γ on both factors (default 16, the authors').

    Example:
        >>> AdapterConfig(method="nystrom", rank=16, alpha=32, targets=r".*(q|v)_proj").scale_for("layers.q_proj")
        2.0
    """

    method: str = "lora"
    rank: int = 8
    alpha: float = 8.0
    targets: str | Sequence[str] = r".*(q|k|v|o|gate|up|down)_proj"
    scaling: str = "standard"
    dropout: float = 0.0
    rank_pattern: Mapping[str, int] = dataclasses.field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = dataclasses.field(default_factory=dict)
    dtype: str = "float32"
    seed: int = 0
    niter: int | None = None
    oversampling: int | None = None
    init_base: str | None = None
    stable_gamma: float | None = None

    def __post_init__(self):
        get_method(self.method)
        _check_int("rank", self.rank, minimum=1)
        _check_positive("alpha", self.alpha)
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        for pattern in targets:
            _check_regex("targets", pattern)
        object.__setattr__(self, "targets", targets[0] if len(targets) == 1 else targets)
        if self.scaling not in _SCALINGS:
            raise ValueError(f"scaling must be one of {_SCALINGS}, got {self.scaling!r}.")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a rate in [0, 1), got {self.dropout!r}.")
        for pattern, rank in self.rank_pattern.items():
            _check_regex("rank_pattern", pattern)
            _check_int(f"rank_pattern[{pattern!r}]", rank, minimum=1)
        for pattern, alpha in self.alpha_pattern.items():
            _check_regex("alpha_pattern", pattern)
            _check_positive(f"alpha_pattern[{pattern!r}]", alpha)
        object.__setattr__(self, "rank_pattern", types.MappingProxyType(dict(self.rank_pattern)))
        object.__setattr__(self, "alpha_pattern", types.MappingProxyType(dict(self.alpha_pattern)))
        object.__setattr__(self, "dtype", _canonical_dtype(self.dtype))
        _check_int("seed", self.seed, minimum=0)
        self._check_method_options()

    def _check_method_options(self) -> None:
        if self.init_base is not None:
            if self.method != "inttune":
                raise ValueError(f"init_base applies to method='inttune' only; remove it for method={self.method!r}.")
            base = get_method(self.init_base)
            if base.name == "inttune":
                raise ValueError("init_base='inttune' is circular; use 'nlora' (the paper's) or 'nystrom'.")
            if base.needs_gradient:
                raise ValueError(f"inttune with init_base={base.name!r} is not supported: that init needs loss "
                                 "gradients. Use init_base='nlora' or 'nystrom', or method='loraga' itself.")
            if base.zero_b:
                raise ValueError(
                    f"inttune with init_base={base.name!r} cannot train: that init sets B = 0, so M's gradient is "
                    "exactly zero. Use init_base='nlora' or 'nystrom'."
                )
        if self.niter is not None:
            _check_int("niter", self.niter, minimum=0)
            if self.init_method not in ("pissa", "loraga"):
                raise ValueError(f"niter applies to pissa and loraga only (randomized SVD); remove it for "
                                 f"{self.init_method!r}.")
        if self.oversampling is not None:
            _check_int("oversampling", self.oversampling, minimum=0)
            if self.init_method != "nystrom":
                raise ValueError(f"oversampling applies to nystrom only; remove it for {self.init_method!r}.")
        if self.stable_gamma is not None:
            _check_positive("stable_gamma", self.stable_gamma)
            if self.method != "loraga":
                raise ValueError(f"stable_gamma applies to method='loraga' only; remove it for {self.method!r}.")

    def __hash__(self):
        # Hashable so that the config can be a static argument of the jitted init.
        fields = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return hash(tuple(tuple(v.items()) if isinstance(v, Mapping) else v for v in fields))

    @property
    def init_method(self) -> str:
        """The init that produces the factors: `init_base` (default 'nlora') for inttune, else `method`."""
        if self.method == "inttune":
            return self.init_base or "nlora"
        return self.method

    def targets_match(self, path: str) -> bool:
        """Whether module path `path` (e.g. 'layers.self_attn.q_proj') fullmatches `targets`."""
        targets = (self.targets,) if isinstance(self.targets, str) else self.targets
        return any(re.fullmatch(pattern, path) for pattern in targets)

    def rank_for(self, path: str) -> int:
        """The rank of the adapter at `path`: the first fullmatching `rank_pattern` entry, else `rank`."""
        return _first_match(self.rank_pattern, path, self.rank)

    def alpha_for(self, path: str) -> float:
        """The alpha of the adapter at `path`: the first fullmatching `alpha_pattern` entry, else `alpha`."""
        return _first_match(self.alpha_pattern, path, self.alpha)

    def scale_for(self, path: str) -> float:
        """s = alpha / r ('standard') or alpha / sqrt(r) ('rslora') at `path`."""
        rank = self.rank_for(path)
        denominator = rank if self.scaling == "standard" else math.sqrt(rank)
        return float(self.alpha_for(path)) / denominator


def as_adapter_config(config: AdapterConfig | Mapping[str, Any]) -> AdapterConfig:
    """`config` itself, or an `AdapterConfig` built from a dict (unknown keys are an error naming the valid ones)."""
    if isinstance(config, AdapterConfig):
        return config
    return from_fields(AdapterConfig, config)


def _first_match(patterns: Mapping[str, Any], path: str, default):
    for pattern, value in patterns.items():
        if re.fullmatch(pattern, path):
            return value
    return default


def _check_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}.")


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")


def _check_regex(name: str, pattern) -> None:
    if not isinstance(pattern, str):
        raise ValueError(f"{name} patterns must be regex strings, got {pattern!r}.")
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{name} pattern {pattern!r} is not a valid regex: {err}.") from None


def _canonical_dtype(dtype) -> str:
    try:
        name = None if dtype is None else jnp.dtype(dtype).name
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES} (adapter parameter dtype), got {dtype!r}.")
    return name
