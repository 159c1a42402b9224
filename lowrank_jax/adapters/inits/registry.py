"""The registry of adapter initialisations: one small function per method, found by name.

A method is a function `(kernel (in, out), rank, scale, key, config) -> InitFactors` registered with `register_init`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, NamedTuple

import jax

if TYPE_CHECKING:
    from lowrank_jax.adapters.config import AdapterConfig


class InitFactors(NamedTuple):
    """Initial adapter factors of one matrix, Flax orientation (ΔK = scale · lora_a @ lora_m @ lora_b).

    Attributes:
        lora_a: (in, r).
        lora_m: (r, r), or None for two-factor adapters (LoRA, PiSSA, ...).
        lora_b: (r, out).
        kernel: (in, out) residual base kernel that replaces the original, or None when the base stays unchanged.
    """

    lora_a: jax.Array
    lora_m: jax.Array | None
    lora_b: jax.Array
    kernel: jax.Array | None


InitFn = Callable[[jax.Array, int, float, jax.Array, "AdapterConfig"], InitFactors]


@dataclasses.dataclass(frozen=True)
class AdapterMethod:
    """A registered method.

    Attributes:
        name: the `AdapterConfig.method` string.
        init: the init function, called on one float32 (in, out) kernel.
        zero_b: True when the init sets B = 0 (ΔK = 0 at step 0 without touching the base).
        frozen: names of factors (`lora_a`, `lora_b`, `lora_m`) that do not train.
        weight_decomposed: True for DoRA: the layer also trains a magnitude per output column (`DoraLinear`).
    """

    name: str
    init: InitFn
    zero_b: bool
    frozen: tuple[str, ...]
    weight_decomposed: bool = False


METHODS: dict[str, AdapterMethod] = {}


def register_init(
    name: str, *, zero_b: bool = False, frozen: tuple[str, ...] = (), weight_decomposed: bool = False
) -> Callable[[InitFn], InitFn]:
    """Registers `fn` as the init of `method=name`.

    Args:
        name: the method name users put in `AdapterConfig.method`.
        zero_b: whether the init sets B = 0 (such inits cannot be IntTune's base).
        frozen: factor names that are frozen (`FrozenFactor`) instead of trainable (`nnx.LoRAParam`).
        weight_decomposed: whether `adapt` builds a `DoraLinear` (magnitude ⊙ normalised direction) for it.

    Returns:
        A decorator that registers and returns the function unchanged.

    Example (the whole of `lora`, see `zero_b.py`):
        @register_init("lora", zero_b=True)
        def lora_init(kernel, rank, scale, key, config):
            return InitFactors(kaiming_uniform(key, (kernel.shape[0], rank)), None, jnp.zeros(...), None)
    """
    unknown = set(frozen) - {"lora_a", "lora_b", "lora_m"}
    if unknown:
        raise ValueError(f"frozen names {sorted(unknown)} are not factors; use 'lora_a', 'lora_b' or 'lora_m'.")

    def register(fn: InitFn) -> InitFn:
        if name in METHODS:
            raise ValueError(f"adapter method {name!r} is already registered (by {METHODS[name].init.__qualname__}).")
        METHODS[name] = AdapterMethod(name=name, init=fn, zero_b=zero_b, frozen=tuple(frozen),
                                      weight_decomposed=weight_decomposed)
        return fn

    return register


def get_method(name: str) -> AdapterMethod:
    """The registered method called `name`; an error listing the registered names otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown adapter method {name!r}; registered methods: {sorted(METHODS)}.")
    return METHODS[name]
