"""DoRA's factors (Liu et al. 2024, arXiv 2402.09353): LoRA's, A Kaiming-uniform and B = 0.

The magnitude m = ‖K‖ per output column is not a factor; `DoraLinear` makes it from the base kernel.
"""

from lowrank_jax.adapters.inits.registry import InitFactors, register_init
from lowrank_jax.adapters.inits.zero_b import lora_init


@register_init("dora", zero_b=True, weight_decomposed=True)
def dora_init(kernel, rank, scale, key, config) -> InitFactors:
    """lora_a (in, r) ~ U(±1/sqrt(in)), lora_b (r, out) = 0, as `lora` draws them from the same key."""
    return lora_init(kernel, rank, scale, key, config)
