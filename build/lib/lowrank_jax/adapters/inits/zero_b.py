"""LoRA and SLoRA inits: Kaiming-uniform factors and B = 0, so ΔK = 0 at step 0 and the base is untouched.

Kaiming-uniform is torch's `kaiming_uniform_(a=sqrt(5))` as PEFT uses it: U(±1/sqrt(fan_in)).
"""

import jax
import jax.numpy as jnp

from lowrank_jax.adapters.inits.registry import InitFactors, register_init


def kaiming_uniform(key: jax.Array, fan_in: int, shape: tuple[int, ...], dtype) -> jax.Array:
    """U(±1/sqrt(fan_in)) samples of `shape`: torch's `kaiming_uniform_(a=sqrt(5))` on a (fan_out, fan_in) weight."""
    bound = 1.0 / jnp.sqrt(jnp.asarray(fan_in, dtype))
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


@register_init("lora", zero_b=True)
def lora_init(kernel, rank, scale, key, config) -> InitFactors:
    """LoRA: lora_a (in, r) ~ U(±1/sqrt(in)), lora_b (r, out) = 0."""
    n_in, n_out = kernel.shape
    lora_a = kaiming_uniform(key, n_in, (n_in, rank), kernel.dtype)
    return InitFactors(lora_a, None, jnp.zeros((rank, n_out), kernel.dtype), None)


@register_init("slora", zero_b=True)
def slora_init(kernel, rank, scale, key, config) -> InitFactors:
    """SLoRA: lora_a (in, r) ~ U(±1/sqrt(in)), lora_m (r, r) ~ U(±1/sqrt(r)), lora_b (r, out) = 0."""
    n_in, n_out = kernel.shape
    key_a, key_m = jax.random.split(key)
    lora_a = kaiming_uniform(key_a, n_in, (n_in, rank), kernel.dtype)
    lora_m = kaiming_uniform(key_m, rank, (rank, rank), kernel.dtype)
    return InitFactors(lora_a, lora_m, jnp.zeros((rank, n_out), kernel.dtype), None)
