"""int8 kernels, one absmax scale per output channel: K ≈ q · c, c = max_in |K[:, j]| / 127, q = round(K / c)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The logical kernel axis each part's last two dims follow ('in' / 'out' / None).
INT8_PART_AXES = {
    "qvalue": ("in", "out"),   # (…, in, out) int8
    "scale": (None, "out"),    # (…, 1, out) float32
}


def quantize_int8(kernel: jax.Array) -> dict[str, jax.Array]:
    """`qvalue` (…, in, out) int8 and `scale` (…, 1, out) float32 of `kernel` (…, in, out).

    Example:
        >>> parts = quantize_int8(jnp.array([[1.0, -0.5], [-2.0, 0.25]]))
        >>> parts["qvalue"], parts["scale"] * 127
        (Array([[  64, -127],
               [-127,   64]], dtype=int8), Array([[2. , 0.5]], dtype=float32))
    """
    kernel = kernel.astype(jnp.float32)
    scale = jnp.max(jnp.abs(kernel), axis=-2, keepdims=True) / 127.0
    qvalue = jnp.round(kernel / jnp.where(scale == 0, 1.0, scale))
    return {"qvalue": jnp.clip(qvalue, -127, 127).astype(jnp.int8), "scale": scale}


def dequantize_int8(parts: dict[str, jax.Array], dtype) -> jax.Array:
    """The kernel (…, in, out) in `dtype` from the parts of `quantize_int8`."""
    return (parts["qvalue"].astype(jnp.float32) * parts["scale"]).astype(dtype)
