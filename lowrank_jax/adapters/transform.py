"""`adapt(model, config)`: puts adapters on the `nnx.Linear`, `nnx.LinearGeneral` and `nnx.Einsum` layers of any NNX
model whose paths match the config.

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
from lowrank_jax.adapters.frozen_base import dense_kernel
from lowrank_jax.adapters.inits import get_method
from lowrank_jax.adapters.module_paths import dotted, iter_module_paths, replace_module
from lowrank_jax.adapters.stacked_init import init_stacked
from lowrank_jax.adapters.targets import ADAPTABLE, adapted_module, as_matrix, matrix_shape
from lowrank_jax.quant.layer import QuantizedLinear


def adapt(model: nnx.Module, config: AdapterConfig | Mapping[str, Any],
          gradients: Mapping[str, jax.Array] | None = None) -> nnx.Module:
    """A copy of `model` with an adapter in place of every linear layer whose path fullmatches the targets.

    `nnx.Linear` becomes `AdaptedLinear` (`DoraLinear` for DoRA); `nnx.LinearGeneral` and `nnx.Einsum` become
    `AdaptedLinearGeneral` / `AdaptedEinsum`, LoRA over their kernels' flattened input and output axes.

    The input model is not modified (the copy shares its unchanged arrays). Module paths are attribute names joined
    with '.', e.g. 'layers.self_attn.q_proj'. All targets are checked (pattern, layer type, rank) before any init
    runs. Each module gets the key fold_in(key(seed), crc32(path)), split over its layer slices.

    Args:
        model: any NNX module containing `nnx.Linear` layers.
        config: an `AdapterConfig` or a dict of its fields.
        gradients: for methods that read the loss gradient (loraga): {module path: ∂L/∂kernel of that module's
            kernel shape}, e.g. `lowrank_jax.adapters.loraga.estimate_gradients(...)`, which computes each entry
            when it is read, so only one module's gradient is in memory at a time. None for other methods.

    Returns:
        The adapted model.

    Raises:
        ValueError: the targets match no linear layer, match a module that is not a linear layer, ask for a
            rank above min(in, out) of a layer, or gradients are missing (loraga) or given to another method.

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
    targets = _plan(model, config, gradients)
    method = get_method(config.method)
    root_key = jax.random.key(config.seed)
    for path, linear in targets:
        name = dotted(path)
        module_key = jax.random.fold_in(root_key, zlib.crc32(name.encode()))
        init_key, dropout_key = jax.random.split(module_key)
        rank = config.rank_for(name)
        scale = config.scale_for(name)
        gradient = _gradient_of(linear, name, gradients) if method.needs_gradient else None
        kernel = dense_kernel(linear) if isinstance(linear, QuantizedLinear) else as_matrix(linear, linear.kernel[...])
        factors = init_stacked(kernel, init_key, rank=rank, scale=scale, config=config, gradient=gradient)
        stack_shape = kernel.shape[:-2]
        dropout_keys = jax.random.split(dropout_key, stack_shape) if config.dropout > 0 else None
        adapted = (DoraLinear if method.weight_decomposed else adapted_module)(
            linear, factors, scale, frozen=method.frozen, dropout=config.dropout, dropout_key=dropout_keys
        )
        replace_module(model, path, adapted)
    return model


BASES = (*ADAPTABLE, QuantizedLinear)


def _in_out(module) -> tuple[int, int]:
    """(in, out) of a base's kernel as a matrix."""
    if isinstance(module, QuantizedLinear):
        return module.in_features, module.out_features
    return matrix_shape(module)[-2:]


def _gradient_of(module, name: str, gradients: Mapping[str, jax.Array]) -> jax.Array:
    """The module's gradient as (…, in, out) matrices, after checking its shape."""
    gradient = gradients[name]
    if tuple(gradient.shape) != tuple(module.kernel.shape):
        raise ValueError(f"gradients[{name!r}] has shape {tuple(gradient.shape)}, but the kernel is "
                         f"{tuple(module.kernel.shape)}; pass the gradient of the kernel itself.")
    return as_matrix(module, gradient)


def check_targets(model: nnx.Module, config: AdapterConfig | Mapping[str, Any]) -> list[tuple[tuple, nnx.Module]]:
    """The (path, linear) pairs `adapt` would adapt, after checking that the targets match linear layers only (and
    at least one), of a type the method adapts, each with min(in, out) >= its rank.

    Reads module types and shapes only, so `model` may be abstract (`nnx.eval_shape`): a run checks its adapter
    settings against the model's structure before loading any weight.

    Raises:
        ValueError: naming the pattern or the layers, the layers that exist, and the setting to change.

    Example:
        >>> from flax import nnx
        >>> model = nnx.eval_shape(lambda: nnx.Sequential(nnx.Linear(8, 4, rngs=nnx.Rngs(0))))
        >>> check_targets(model, {"rank": 8, "targets": "layers.0"})
        Traceback (most recent call last):
        ...
        ValueError: cannot adapt: layers.0: rank 8 > min(in, out) = min(8, 4). Lower the rank ...
    """
    config = as_adapter_config(config)
    modules = list(iter_module_paths(model))
    linear_paths = [dotted(path) for path, module in modules if isinstance(module, BASES)]
    matched = [(path, module) for path, module in modules if config.targets_match(dotted(path))]
    not_linear = [f"{dotted(path)} ({type(module).__name__})" for path, module in matched
                  if not isinstance(module, BASES)]
    if not_linear:
        raise ValueError(
            f"targets {config.targets!r} match modules that are not linear layers: {not_linear}. Adapters go on "
            "nnx.Linear (quantized too), nnx.LinearGeneral and nnx.Einsum layers only; narrow the pattern (it must fullmatch a "
            f"path). Linear layers: {linear_paths}."
        )
    if not matched:
        raise ValueError(
            f"targets {config.targets!r} match no module (the pattern must fullmatch a dotted path). "
            f"Linear layers in this model: {linear_paths}."
        )
    method = get_method(config.method)
    general = [dotted(path) for path, module in matched if not isinstance(module, (nnx.Linear, QuantizedLinear))]
    if method.weight_decomposed and general:
        raise ValueError(f"dora adapts nnx.Linear layers only, and the targets match {general}; narrow the targets.")
    problems = []
    for path, linear in matched:
        name = dotted(path)
        n_in, n_out = _in_out(linear)
        rank = config.rank_for(name)
        if method.rank_factor * rank > min(n_in, n_out):
            needed = f"rank {rank}"
            if method.rank_factor > 1:
                needed = f"{method.name} needs {method.rank_factor} x {needed}"
            problems.append(f"{name}: {needed} > min(in, out) = min({n_in}, {n_out})")
        kernel_dtype = linear.param_dtype if isinstance(linear, QuantizedLinear) else linear.kernel.dtype
        if not jnp.issubdtype(kernel_dtype, jnp.floating):
            problems.append(f"{name}: kernel dtype {kernel_dtype} is not floating point")
    if problems:
        raise ValueError("cannot adapt: " + "; ".join(problems) + ". Lower the rank (rank / rank_pattern) or "
                         "exclude these layers from targets.")
    return matched


def _plan(model: nnx.Module, config: AdapterConfig, gradients) -> list[tuple[tuple, nnx.Module]]:
    """The (path, linear) pairs to adapt, after checking every target and the gradients; raises before any work is
    done."""
    matched = check_targets(model, config)
    method = get_method(config.method)
    quantized = [dotted(path) for path, module in matched if isinstance(module, QuantizedLinear)]
    if method.needs_gradient and quantized:
        raise ValueError(f"{method.name} initialises from the loss gradients of dense kernels, but {quantized[:3]} are "
                         "quantized; adapt first and quantize after (as adapt_onto_mesh and model.quantize do).")
    _check_gradients(method, [dotted(path) for path, _ in matched], gradients)
    return matched


def _check_gradients(method, names: list[str], gradients) -> None:
    if not method.needs_gradient:
        if gradients is not None:
            raise ValueError(f"gradients were given, but method {method.name!r} does not use them; drop them or "
                             "use method='loraga'.")
        return
    if gradients is None:
        raise ValueError(f"method {method.name!r} initialises from loss gradients: pass adapt(model, config, "
                         "gradients=lowrank_jax.adapters.loraga.estimate_gradients(model, loss_fn, batches, "
                         "config.targets)).")
    missing = [name for name in names if name not in gradients]
    if missing:
        raise ValueError(f"gradients has no entry for the targets {missing}; estimate them with the same targets "
                         "as the adapter config.")
