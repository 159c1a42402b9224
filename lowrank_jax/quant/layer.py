"""`QuantizedLinear`: a frozen `nnx.Linear` whose kernel is stored int8 or NF4 and dequantized inside the matmul.

Stacked kernels (…, in, out) (nnx.vmap-made, run per slice by a scanned model) are quantized slice by slice; every
part carries the kernel's stack axes first and the kernel's logical axis names, so it is split like the kernel.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.quant.config import QuantizeConfig
from lowrank_jax.quant.int8 import INT8_PART_AXES, dequantize_int8, quantize_int8
from lowrank_jax.quant.nf4 import NF4_PART_AXES, dequantize_nf4, quantize_nf4

PART_AXES = {"int8": INT8_PART_AXES, "nf4": NF4_PART_AXES}


class QuantizedWeight(nnx.Variable):
    """A part of a quantized frozen kernel (codes or scales); not an `nnx.Param`, so no optimizer ever updates it."""


@functools.partial(jax.jit, static_argnames="config")
def quantize_kernel(kernel: jax.Array, config: QuantizeConfig) -> dict[str, jax.Array]:
    """The parts of `kernel` (…, in, out) in `config.format`, stack axes leading; one slice at a time (lax.map), so
    the float32 work space is one layer's, not the stack's.

    Example:
        >>> parts = quantize_kernel(jnp.ones((3, 64, 8)), QuantizeConfig("nf4"))
        >>> {name: part.shape for name, part in parts.items()}
        {'codes': (3, 32, 8), 'scale_codes': (3, 1, 8), 'scale_offset': (3,), 'scale_scale': (3, 1, 1)}
    """
    stack_shape, matrix_shape = kernel.shape[:-2], kernel.shape[-2:]
    if config.format == "int8":
        one = quantize_int8
    else:
        one = functools.partial(quantize_nf4, block_size=config.block_size, double_quant=config.double_quant,
                                scale_block_size=config.scale_block_size)
    parts = jax.lax.map(one, kernel.reshape((math.prod(stack_shape), *matrix_shape)))
    return {name: part.reshape((*stack_shape, *part.shape[1:])) for name, part in parts.items()}


@functools.partial(jax.jit, static_argnames=("format", "dtype"))
def dequantize_kernel(parts: dict[str, jax.Array], format: str, dtype) -> jax.Array:  # noqa: A002 (the config name)
    """The dense kernel (…, in, out) in `dtype` from `quantize_kernel`'s parts (jitted; inlined when traced)."""
    return (dequantize_int8 if format == "int8" else dequantize_nf4)(parts, dtype)


class QuantizedLinear(nnx.Module):
    """y = x @ dequantize(parts) + bias: an `nnx.Linear` with its kernel replaced by `QuantizedWeight` parts.

    Parts: int8 `qvalue (…, in, out)`, `scale (…, 1, out)`; nf4 `codes (…, in/2, out)` uint8 (two codes per
    byte) and `scale (…, in/block, out)`, or with double quantization `scale_codes (…, in/block, out)` int8,
    `scale_scale (…, in/block, out/scale_block)`, `scale_offset (…)`. The kernel is dequantized in the compute dtype
    right before the matmul; the bias (if any) is the linear's, unchanged.

    Args:
        linear: the layer to quantize (its kernel is read, not kept).
        config: format and block sizes.

    Example:
        >>> linear = nnx.Linear(64, 8, rngs=nnx.Rngs(0))
        >>> layer = QuantizedLinear(linear, QuantizeConfig("int8"))
        >>> x = jnp.ones((2, 64))
        >>> layer.qvalue.dtype, bool(jnp.abs(layer(x) - linear(x)).max() < 0.02)
        (dtype('int8'), True)
    """

    def __init__(self, linear: nnx.Linear, config: QuantizeConfig):
        self.config = config
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype, self.param_dtype = linear.dtype, linear.kernel.dtype
        self.precision, self.preferred_element_type = linear.precision, linear.preferred_element_type
        self.kernel_axes = linear.kernel.get_metadata().get("out_sharding")
        self.bias = nnx.data(linear.bias)
        self.set_kernel(linear.kernel[...])

    def set_kernel(self, kernel: jax.Array) -> None:
        """Quantizes `kernel` (…, in, out) into this layer's parts (residual inits write the base this way)."""
        for name, part in quantize_kernel(kernel, self.config).items():
            if hasattr(self, name):
                getattr(self, name).set_value(part)
            else:
                setattr(self, name, QuantizedWeight(part, **self._part_metadata(name)))

    def dequantize(self, dtype=None) -> jax.Array:
        """The dense kernel (…, in, out), by default in the quantized kernel's original dtype."""
        parts = {name: getattr(self, name)[...] for name in PART_AXES[self.config.format] if hasattr(self, name)}
        return dequantize_kernel(parts, self.config.format, jnp.dtype(dtype or self.param_dtype))

    def to_linear(self) -> nnx.Linear:
        """An `nnx.Linear` holding the dequantized kernel (original dtype and axis names) and this layer's bias."""
        linear = nnx.eval_shape(lambda: nnx.Linear(
            self.in_features, self.out_features, use_bias=self.bias is not None, dtype=self.dtype,
            param_dtype=self.param_dtype, precision=self.precision,
            preferred_element_type=self.preferred_element_type, rngs=nnx.Rngs(0)))
        metadata = {} if self.kernel_axes is None else {"out_sharding": self.kernel_axes, "eager_sharding": False}
        linear.kernel = nnx.Param(self.dequantize(), **metadata)
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        """x (…, in) → (…, out), on an unstacked (per-layer) slice, as `nnx.Linear.__call__`."""
        dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
        x = x.astype(dtype)
        y = jax.lax.dot_general(x, self.dequantize(dtype), (((x.ndim - 1,), (0,)), ((), ())),
                                precision=self.precision, preferred_element_type=self.preferred_element_type,
                                out_sharding=out_sharding)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y

    def _part_metadata(self, name: str) -> dict:
        if self.kernel_axes is None:
            return {}
        *stack_names, in_name, out_name = self.kernel_axes
        names = {"in": in_name, "out": out_name, None: None}
        return {"out_sharding": (*stack_names, *(names[a] for a in PART_AXES[self.config.format][name])),
                "eager_sharding": False}
