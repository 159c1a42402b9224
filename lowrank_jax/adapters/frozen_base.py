"""The frozen base of an adapter, an `nnx.Linear` or a `QuantizedLinear`, read and written through one interface.

A quantized base is read dequantized and written by requantizing, so inits and `merge` see a dense kernel either way.
"""

from __future__ import annotations

import jax
from flax import nnx

from lowrank_jax.quant.layer import QuantizedLinear



def dense_kernel(base: nnx.Linear | QuantizedLinear) -> jax.Array:
    """The kernel (…, in, out) in its stored dtype (a quantized base's: dequantized, in its original dtype).

    Example:
        >>> from lowrank_jax.quant import QuantizeConfig
        >>> linear = nnx.Linear(64, 4, rngs=nnx.Rngs(0))
        >>> quantized = QuantizedLinear(linear, QuantizeConfig("int8"))
        >>> error = abs(dense_kernel(quantized) - dense_kernel(linear))  # ≤ half an int8 step, absmax / 254
        >>> dense_kernel(quantized).shape, bool((error <= abs(dense_kernel(linear)).max(0) / 254 + 1e-7).all())
        ((64, 4), True)
    """
    return base.dequantize() if isinstance(base, QuantizedLinear) else base.kernel[...]


def kernel_axes(base: nnx.Linear | QuantizedLinear) -> tuple | None:
    """The kernel's logical axis names (…, in_name, out_name), or None when it has none."""
    if isinstance(base, QuantizedLinear):
        return base.kernel_axes
    return base.kernel.get_metadata().get("out_sharding")


def set_dense_kernel(base: nnx.Linear | QuantizedLinear, kernel: jax.Array) -> None:
    """Writes `kernel` (…, in, out) into the base; a quantized base requantizes it."""
    if isinstance(base, QuantizedLinear):
        base.set_kernel(kernel)
    else:
        base.kernel.set_value(kernel)


def as_linear(base: nnx.Linear | QuantizedLinear) -> nnx.Linear:
    """The base as an `nnx.Linear` (a quantized base: a dequantized copy)."""
    return base.to_linear() if isinstance(base, QuantizedLinear) else base
