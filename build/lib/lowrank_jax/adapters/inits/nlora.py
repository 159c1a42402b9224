"""NLoRA as the authors released it: three slices of the pretrained weight, base unchanged.

With W = Kᵀ (out, in): A0 = W[:r, :], B0 = W[:, :r], M0 = W[:r, :r]; in Flax orientation these are
lora_a = K[:, :r], lora_b = K[:r, :], lora_m = K[:r, :r] (ΔW = B0 M0 A0 ⇔ ΔK = lora_a @ lora_m @ lora_b).
"""

from lowrank_jax.adapters.inits.registry import InitFactors, register_init


@register_init("nlora")
def nlora_init(kernel, rank, scale, key, config) -> InitFactors:
    """lora_a = K[:, :r] (in, r), lora_m = K[:r, :r] (r, r), lora_b = K[:r, :] (r, out); kernel unchanged."""
    return InitFactors(kernel[:, :rank], kernel[:rank, :rank], kernel[:rank, :], None)
