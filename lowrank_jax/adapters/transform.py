"""`adapt(model, config)`: puts adapters on the `nnx.Linear` layers of any NNX model whose paths match the config.

Works on plain and on stacked (nnx.vmap-created, kernel (L, in, out)) linears, and on quantized ones
(`QuantizedLinear`: inits see the dequantized kernel); every layer slice gets its own init.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.adapters.config import AdapterConfig, as_adapter_config
from lowrank_jax.adapters.dora_layer import DoraLinear
from lowrank_jax.adapters.frozen_base import FROZEN_BASES, dense_kernel
from lowrank_jax.adapters.inits import get_method
from lowrank_jax.adapters.layer import AdaptedLinear
from lowrank_jax.adapters.module_paths import dotted, iter_module_paths, replace_module
from lowrank_jax.adapters.stacked_init import init_stacked
from lowrank_jax.quant.layer import QuantizedLinear


def adapt(model: nnx.Module, config: AdapterConfig | Mapping[str, Any]) -> nnx.Module:
    """A copy of `model` with an `AdaptedLinear` (`DoraLinear` for DoRA) in place of every `nnx.Linear` whose path
    fullmatches the targets.

    The input model is not modified (the copy shares its unchanged arrays). Module paths are attribute names joined
    with '.', e.g. 'layers.self_attn.q_proj'. All targets are checked (pattern, layer type, rank) before any init
    runs. Each module gets the key fold_in(key(seed), crc32(path)), split over its layer slices.

    Args:
        model: any NNX module containing `nnx.Linear` layers.
        config: an `AdapterConfig` or a dict of its fields.

    Returns:
        The adapted model.

    Raises:
        ValueError: the targets match no linear layer, match a module that is not an `nnx.Linear`, or ask for a
            rank above min(in, out) of a layer.

    Example:
        >>> from flax import nnx
        >>> import jax.numpy as jnp
        >>> class Tiny(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.q_proj = nnx.Linear(8, 8, rngs=rngs)
        ...         self.out = nnx.Linear(8, 2, rngs=rngs)
        >>> tiny = adapt(Tiny(nnx.Rngs(0)), {"method": "pissa", "rank": 2, "targets": "q_proj"})
        >>> tiny.q_proj.lora_a.shape, tiny.q_proj.lora_b.shape
        ((8, 2), (2, 8))
    """
    config = as_adapter_config(config)
    model = nnx.clone(model)
    targets = _plan(model, config)
    method = get_method(config.method)
    layer_type = DoraLinear if method.weight_decomposed else AdaptedLinear
    root_key = jax.random.key(config.seed)
    for path, linear in targets:
        name = dotted(path)
        module_key = jax.random.fold_in(root_key, zlib.crc32(name.encode()))
        init_key, dropout_key = jax.random.split(module_key)
        rank = config.rank_for(name)
        scale = config.scale_for(name)
        kernel = dense_kernel(linear)
        factors = init_stacked(kernel, init_key, rank=rank, scale=scale, config=config)
        stack_shape = kernel.shape[:-2]
        dropout_keys = jax.random.split(dropout_key, stack_shape) if config.dropout > 0 else None
        adapted = layer_type(
            linear, factors, scale, frozen=method.frozen, dropout=config.dropout, dropout_key=dropout_keys
        )
        replace_module(model, path, adapted)
    return model


def _plan(model: nnx.Module, config: AdapterConfig) -> list[tuple[tuple, nnx.Linear | QuantizedLinear]]:
    """The (path, linear) pairs to adapt, after checking every target; raises before any work is done."""
    modules = list(iter_module_paths(model))
    linear_paths = [dotted(path) for path, module in modules if isinstance(module, FROZEN_BASES)]
    matched = [(path, module) for path, module in modules if config.targets_match(dotted(path))]
    not_linear = [f"{dotted(path)} ({type(module).__name__})" for path, module in matched
                  if not isinstance(module, FROZEN_BASES)]
    if not_linear:
        raise ValueError(
            f"targets {config.targets!r} match modules that are not nnx.Linear: {not_linear}. Adapters go on "
            f"nnx.Linear (or quantized QuantizedLinear) layers only; narrow the pattern (it must fullmatch a path). Linear layers: {linear_paths}."
        )
    if not matched:
        raise ValueError(
            f"targets {config.targets!r} match no module (the pattern must fullmatch a dotted path). "
            f"Linear layers in this model: {linear_paths}."
        )
    problems = []
    for path, linear in matched:
        name = dotted(path)
        n_in, n_out = (linear.in_features, linear.out_features)
        rank = config.rank_for(name)
        if rank > min(n_in, n_out):
            problems.append(f"{name}: rank {rank} > min(in, out) = min({n_in}, {n_out})")
        kernel_dtype = linear.param_dtype if isinstance(linear, QuantizedLinear) else linear.kernel.dtype
        if not jnp.issubdtype(kernel_dtype, jnp.floating):
            problems.append(f"{name}: kernel dtype {kernel_dtype} is not floating point")
    if problems:
        raise ValueError("cannot adapt: " + "; ".join(problems) + ". Lower the rank (rank / rank_pattern) or "
                         "exclude these layers from targets.")
    return matched
