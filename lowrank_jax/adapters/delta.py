"""ΔK = s · lora_a @ lora_m @ lora_b of an adapted layer in float32: what `merge` folds in and DoRA normalises."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lowrank_jax.adapters.layer import AdaptedLinear


def adapter_delta(layer: AdaptedLinear) -> jax.Array:
    """ΔK = s · lora_a @ lora_m @ lora_b of `layer`, (…, in, out) float32, per stacked slice.

    Example:
        >>> from flax import nnx
        >>> from lowrank_jax.adapters.inits import InitFactors
        >>> layer = AdaptedLinear(nnx.Linear(3, 2, rngs=nnx.Rngs(0)),
        ...                       InitFactors(jnp.ones((3, 1)), None, jnp.ones((1, 2)), None), scale=0.5)
        >>> adapter_delta(layer)
        Array([[0.5, 0.5],
               [0.5, 0.5],
               [0.5, 0.5]], dtype=float32)
    """
    h = layer.lora_a[...].astype(jnp.float32)
    if layer.lora_m is not None:
        h = jnp.matmul(h, layer.lora_m[...].astype(jnp.float32), precision="highest")
    delta = jnp.matmul(h, layer.lora_b[...].astype(jnp.float32), precision="highest")
    return layer.lora_scale[...][..., None, None] * delta
