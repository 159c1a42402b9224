"""`merge(model)`: folds every adapter into its base kernel, K + s·A M B (DoRA: m ⊙ (K + s·A B) / ‖K + s·A B‖),
and returns a model of plain linear layers.

Quantized bases (`QuantizedLinear`) are dequantized first: the merged model is dense, in the base's original dtype.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lowrank_jax.adapters.delta import adapter_delta
from lowrank_jax.adapters.dora_layer import DoraLinear, dora_kernel
from lowrank_jax.adapters.frozen_base import as_linear
from lowrank_jax.adapters.general_layer import AdaptedGeneral
from lowrank_jax.adapters.layer import AdaptedLinear
from lowrank_jax.adapters.module_paths import iter_module_paths, replace_module
from lowrank_jax.quant.transform import dequantize


def merge(model: nnx.Module) -> nnx.Module:
    """A copy of `model` where each adapted layer is replaced by its base (`nnx.Linear`, `nnx.LinearGeneral`,
    `nnx.Einsum`) with ΔK folded in (reshaped to the kernel's axes).

    The merged kernel is computed in float32 and stored in the base kernel's dtype; dropout and adapter variables
    are dropped. A `DoraLinear` becomes the kernel it computes with, m ⊙ (K + ΔK) / ‖K + ΔK‖ (bias unchanged).
    Every quantized layer, adapted or not, comes back as a dense `nnx.Linear` holding its dequantized kernel (plus
    ΔK where adapted). The input model is not modified.

    Example:
        >>> from flax import nnx
        >>> import jax.numpy as jnp
        >>> from lowrank_jax.adapters import adapt
        >>> class Tiny(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.q_proj = nnx.Linear(8, 8, rngs=rngs)
        >>> adapted = adapt(Tiny(nnx.Rngs(0)), {"method": "nystrom", "rank": 2, "targets": "q_proj"})
        >>> merged = merge(adapted)
        >>> x = jnp.ones(8)
        >>> type(merged.q_proj).__name__, bool(jnp.abs(merged.q_proj(x) - adapted.q_proj(x)).max() < 1e-5)
        ('Linear', True)
    """
    model = nnx.clone(model)
    adapted = [(path, module) for path, module in iter_module_paths(model) if isinstance(module, AdaptedLinear)]
    for path, layer in adapted:
        base = as_linear(layer.base)
        kernel = base.kernel
        if isinstance(layer, DoraLinear):
            merged = dora_kernel(layer)
        else:
            delta = adapter_delta(layer)
            if isinstance(layer, AdaptedGeneral):
                delta = layer.layout.from_matrix(delta)
            merged = kernel[...].astype(jnp.float32) + delta
        kernel.set_value(merged.astype(kernel.dtype))
        replace_module(model, path, base)
    return dequantize(model)
