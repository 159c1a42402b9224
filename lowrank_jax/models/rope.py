"""Rotary position embeddings as in Hugging Face Llama: split-half rotation, rope theta, llama3 or linear frequency
scaling.

Frequencies are computed once on the host from the config; angles and the rotation run in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rope_inverse_frequencies(head_dim: int, theta: float, rope_scaling: dict | None = None) -> np.ndarray:
    """Inverse frequencies `theta ** (-2i / head_dim)`, llama3- or linearly scaled when `rope_scaling` is given.

    Args:
        head_dim: rotary dimension (even).
        theta: rope base.
        rope_scaling: None, a llama3 dict (`factor`, `low_freq_factor`, `high_freq_factor`,
            `original_max_position_embeddings`): long wavelengths are divided by `factor`, short ones kept,
            the band between interpolated smoothly; or a linear dict: every frequency divided by `factor`.

    Returns:
        (head_dim // 2,) float32.

    Example:
        >>> rope_inverse_frequencies(4, 10000.0).tolist()
        [1.0, 0.009999999776482582]
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if rope_scaling is not None and rope_scaling["rope_type"] == "linear":
        inv_freq = inv_freq / rope_scaling["factor"]
    elif rope_scaling is not None:
        factor = rope_scaling["factor"]
        low, high = rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
        context = rope_scaling["original_max_position_embeddings"]
        wavelength = 2 * np.pi / inv_freq
        smooth = (context / wavelength - low) / (high - low)
        interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = np.where(wavelength > context / low, inv_freq / factor,
                            np.where(wavelength < context / high, inv_freq, interpolated))
    return inv_freq.astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotation angles `position * inv_freq`, halves repeated.

    Args:
        positions: (batch, seq) integer positions.
        inv_freq: (head_dim // 2,) from `rope_inverse_frequencies`.

    Returns:
        cos, sin: (batch, seq, head_dim) float32.
    """
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates the two halves of each head: `x * cos + [-x2, x1] * sin` (HF `rotate_half` convention).

    Args:
        x: (batch, seq, heads, head_dim).
        cos, sin: (batch, seq, head_dim) from `rope_cos_sin`.

    Returns:
        (batch, seq, heads, head_dim) in x's dtype.
    """
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)
