"""Quantized frozen bases (QLoRA-style): `quantize` stores a model's frozen linear kernels int8 or NF4, dequantized
inside each matmul; adapters on top train as before. `dequantize` (and `merge`) give dense models back.
"""

from lowrank_jax.quant.config import FORMATS, QuantizeConfig, as_quantize_config
from lowrank_jax.quant.layer import QuantizedLinear, QuantizedWeight, dequantize_kernel, quantize_kernel
from lowrank_jax.quant.nf4 import NF4_CODE_BOOK
from lowrank_jax.quant.transform import dequantize, quantize

__all__ = [
    "FORMATS",
    "NF4_CODE_BOOK",
    "QuantizeConfig",
    "QuantizedLinear",
    "QuantizedWeight",
    "as_quantize_config",
    "dequantize",
    "dequantize_kernel",
    "quantize",
    "quantize_kernel",
]
