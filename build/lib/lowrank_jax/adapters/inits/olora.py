"""OLoRA init as PEFT defines it: QR of W = Q R, B0 = Q[:, :r], A0 = R[:r, :], base W − s·B0 A0."""

import jax.numpy as jnp

from lowrank_jax.adapters.inits.registry import InitFactors, register_init


@register_init("olora")
def olora_init(kernel, rank, scale, key, config) -> InitFactors:
    """lora_a = R[:r, :]ᵀ (in, r), lora_b = Q[:, :r]ᵀ (r, out) from the reduced QR of W = Kᵀ; residual kernel."""
    q, r_factor = jnp.linalg.qr(kernel.T)
    lora_a = r_factor[:rank, :].T
    lora_b = q[:, :rank].T
    return InitFactors(lora_a, None, lora_b, kernel - scale * (lora_a @ lora_b))
