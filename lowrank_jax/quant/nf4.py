"""4-bit NormalFloat (NF4) kernels as in QLoRA: block-wise absmax over `block_size` inputs, two codes per byte, and
optionally the block scales themselves quantized to int8 ("double quantization").

A kernel K (…, in, out) is cut into blocks of `block_size` consecutive input rows per output column (the blocks of
bitsandbytes' row-major (out, in) weight). Each block b with absmax c_b stores codes q = argmin_j |K / c_b − NF4[j]|;
K ≈ NF4[q] · c_b. With double quantization the scales c (…, in/block, out) are stored as int8 codes in blocks of
`scale_block_size` outputs around their mean: c ≈ offset + code · c2 / 127, c2 float32 per scale block.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# The 16 NF4 values of QLoRA (Dettmers et al., 2023, Appendix E; bitsandbytes' `get_4bit_type("nf4")`).
NF4_CODE_BOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], np.float32)

# Where the nearest code changes: rounding to the nearest NF4 value is a search among these 15 midpoints, O(n) memory
# instead of an (n, 16) distance matrix.
_MIDPOINTS = (NF4_CODE_BOOK[1:] + NF4_CODE_BOOK[:-1]) / 2

# The logical kernel axis each part's last two dims follow ('in' / 'out' / None); `scale_offset` has stack dims only.
NF4_PART_AXES = {
    "codes": ("in", "out"),           # (…, in/2, out) uint8, high nibble = even input row
    "scale": ("in", "out"),           # (…, in/block, out) float32, without double quantization
    "scale_codes": ("in", "out"),     # (…, in/block, out) int8, with double quantization
    "scale_scale": ("in", "out"),     # (…, in/block, out/scale_block) float32
    "scale_offset": (),               # (…,) float32, the mean block scale
}


def quantize_nf4(kernel: jax.Array, block_size: int = 64, double_quant: bool = True,
                 scale_block_size: int = 256) -> dict[str, jax.Array]:
    """NF4 parts of `kernel` (…, in, out): `codes` and `scale`, or `codes` and the double-quantized scale parts.

    Args:
        kernel: (…, in, out) floating; `in` a multiple of `block_size`.
        block_size: inputs per absmax block (even).
        double_quant: store the block scales as int8 codes with float32 scales per `scale_block_size` outputs.
        scale_block_size: outputs per scale block, as far as `out` allows: blocks are gcd(out, scale_block_size)
            wide (256 for Llama-2-7B's dims, 64 for SmolLM2's 576).

    Returns:
        {name: array} with the shapes of `NF4_PART_AXES`.

    Example:
        >>> kernel = jnp.linspace(-1.0, 1.0, 128).reshape(64, 2)
        >>> parts = quantize_nf4(kernel, double_quant=False)
        >>> parts["codes"].shape, parts["codes"].dtype, parts["scale"].shape
        ((32, 2), dtype('uint8'), (1, 2))
        >>> # at most half the widest gap between NF4 values (-1 to -0.696) times the block absmax
        >>> float(jnp.abs(dequantize_nf4(parts, jnp.float32) - kernel).max()) <= (1 - 0.6961928) / 2
        True
    """
    *stack, n_in, n_out = kernel.shape
    blocks = kernel.astype(jnp.float32).reshape(*stack, n_in // block_size, block_size, n_out)
    scale = jnp.max(jnp.abs(blocks), axis=-2)
    normalized = blocks / jnp.where(scale == 0, 1.0, scale)[..., None, :]
    codes = jnp.searchsorted(jnp.asarray(_MIDPOINTS), normalized.ravel(), side="left", method="compare_all")
    codes = codes.astype(jnp.uint8).reshape(*stack, n_in // 2, 2, n_out)
    parts = {"codes": (codes[..., 0, :] << 4) | codes[..., 1, :]}
    if not double_quant:
        return {**parts, "scale": scale}
    return {**parts, **_quantize_scales(scale, math.gcd(n_out, scale_block_size))}


def dequantize_nf4(parts: dict[str, jax.Array], dtype) -> jax.Array:
    """The kernel (…, in, out) in `dtype` from the parts of `quantize_nf4` (any block sizes, read from the shapes)."""
    packed = parts["codes"]
    *stack, half_in, n_out = packed.shape
    codes = jnp.stack([packed >> 4, packed & 15], axis=-2).reshape(*stack, 2 * half_in, n_out)
    values = jnp.asarray(NF4_CODE_BOOK)[codes]
    scale = parts["scale"] if "scale" in parts else _dequantize_scales(parts)
    n_blocks = scale.shape[-2]
    blocks = values.reshape(*stack, n_blocks, 2 * half_in // n_blocks, n_out) * scale[..., None, :]
    return blocks.reshape(*stack, 2 * half_in, n_out).astype(dtype)


def _quantize_scales(scale: jax.Array, block: int) -> dict[str, jax.Array]:
    """Double quantization: int8 absmax codes of the mean-centred scales, blocks of `block` outputs."""
    *lead, n_out = scale.shape
    offset = jnp.mean(scale, axis=(-2, -1))
    centred = (scale - offset[..., None, None]).reshape(*lead, n_out // block, block)
    scale_scale = jnp.max(jnp.abs(centred), axis=-1)
    step = jnp.where(scale_scale == 0, 1.0, scale_scale)[..., None] / 127.0
    scale_codes = jnp.clip(jnp.round(centred / step), -127, 127).astype(jnp.int8).reshape(scale.shape)
    return {"scale_codes": scale_codes, "scale_scale": scale_scale, "scale_offset": offset}


def _dequantize_scales(parts: dict[str, jax.Array]) -> jax.Array:
    scale_codes, scale_scale = parts["scale_codes"], parts["scale_scale"]
    *lead, n_out = scale_codes.shape
    n_blocks = scale_scale.shape[-1]
    centred = scale_codes.astype(jnp.float32).reshape(*lead, n_blocks, n_out // n_blocks) * (
        scale_scale[..., None] / 127.0)
    return centred.reshape(scale_codes.shape) + parts["scale_offset"][..., None, None]
