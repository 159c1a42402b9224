"""IntTune: another method's init (NLoRA by default, `config.init_base`) with A and B frozen; only M trains.

A base init with B = 0 (lora, slora) is refused by `AdapterConfig`: M's gradient would be exactly zero.
"""

import jax.numpy as jnp

from lowrank_jax.adapters.inits.registry import InitFactors, get_method, register_init


@register_init("inttune", frozen=("lora_a", "lora_b"))
def inttune_init(kernel, rank, scale, key, config) -> InitFactors:
    """The `config.init_base` factors; a two-factor base (e.g. pissa) gets lora_m = I (r, r)."""
    factors = get_method(config.init_method).init(kernel, rank, scale, key, config)
    if factors.lora_m is None:
        factors = factors._replace(lora_m=jnp.eye(rank, dtype=kernel.dtype))
    return factors
