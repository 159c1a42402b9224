"""RMSNorm computed in float32, as in Hugging Face Llama (normalise in fp32, cast, then scale) or Gemma (scale by
1 + w in fp32, then cast)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.models.axes import logical_axes


class RMSNorm(nnx.Module):
    """`scale * x / sqrt(mean(x**2) + eps)`, or `(1 + scale) * ...` when `zero_centered`; statistics in float32.

    Args:
        features: size of the normalised last axis.
        eps: added to the mean square.
        dtype: output (compute) dtype.
        param_dtype: dtype of `scale`.
        zero_centered: Gemma's form: the stored `scale` is w in `(1 + w)`, initialised to 0, and the product is
            taken in float32 before casting to `dtype`.

    Example:
        >>> norm = RMSNorm(4, eps=1e-6)
        >>> norm(jnp.array([[3.0, -3.0, 3.0, -3.0]])).round(4).tolist()
        [[1.0, -1.0, 1.0, -1.0]]
        >>> RMSNorm(4, eps=1e-6, zero_centered=True)(jnp.array([[3.0, -3.0, 3.0, -3.0]])).round(4).tolist()
        [[1.0, -1.0, 1.0, -1.0]]
    """

    def __init__(self, features: int, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32,
                 zero_centered: bool = False):
        init = jnp.zeros if zero_centered else jnp.ones
        self.scale = nnx.Param(init((features,), param_dtype), **logical_axes("norm"))
        self.eps = eps
        self.dtype = dtype
        self.zero_centered = zero_centered

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., features) -> (..., features) in `dtype`."""
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.zero_centered:
            return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(self.dtype)
        return normed.astype(self.dtype) * self.scale[...].astype(self.dtype)
