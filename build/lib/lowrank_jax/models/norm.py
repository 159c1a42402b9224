"""RMSNorm computed in float32, as in Hugging Face Llama (normalise in fp32, cast, then scale)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.models.axes import logical_axes


class RMSNorm(nnx.Module):
    """`scale * x / sqrt(mean(x**2) + eps)`; the statistics are taken in float32.

    Args:
        features: size of the normalised last axis.
        eps: added to the mean square.
        dtype: output (compute) dtype.
        param_dtype: dtype of `scale`.

    Example:
        >>> norm = RMSNorm(4, eps=1e-6)
        >>> norm(jnp.array([[3.0, -3.0, 3.0, -3.0]])).round(4).tolist()
        [[1.0, -1.0, 1.0, -1.0]]
    """

    def __init__(self, features: int, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((features,), param_dtype), **logical_axes("norm"))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., features) -> (..., features) in `dtype`."""
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * self.scale[...].astype(self.dtype)
