"""`quantize(model, config)`: the frozen `nnx.Linear` layers of a model stored int8 / NF4 (`QuantizedLinear`), and
`dequantize(model)`, its inverse up to the quantization error.

Either order with `adapt` works: adapt-then-quantize quantizes each adapter's `base` (a residual init's residual
is computed from the full-precision kernel, as QPiSSA does); adapt on a quantized model initialises from the
dequantized kernel and requantizes the residual.
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx

from lowrank_jax.adapters.module_paths import dotted, iter_module_paths, replace_module
from lowrank_jax.quant.config import QuantizeConfig, as_quantize_config
from lowrank_jax.quant.layer import QuantizedLinear


def quantize(model: nnx.Module, config: QuantizeConfig | str | Mapping[str, Any]) -> nnx.Module:
    """A copy of `model` with a `QuantizedLinear` in place of every `nnx.Linear` whose path fullmatches the targets.

    Adapter factors are untouched (they are not `nnx.Linear` layers) and keep training as before; the quantized
    parts are `QuantizedWeight` variables, which no optimizer updates. All targets are checked before any kernel
    is quantized.

    Args:
        model: any NNX module (a `Llama`, adapted or not).
        config: a `QuantizeConfig`, a format name ('int8' / 'nf4'), or a dict of `QuantizeConfig` fields.

    Returns:
        The quantized model; the input is not modified (the copy shares its unchanged arrays).

    Raises:
        ValueError: the targets match no `nnx.Linear`, or a kernel's shape does not fit the nf4 block sizes.

    Example:
        >>> class Tiny(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.up_proj = nnx.Linear(64, 64, rngs=rngs)
        ...         self.lm_head = nnx.Linear(64, 10, rngs=rngs)
        >>> tiny = quantize(Tiny(nnx.Rngs(0)), "nf4")
        >>> type(tiny.up_proj).__name__, type(tiny.lm_head).__name__, tiny.up_proj.codes.shape
        ('QuantizedLinear', 'Linear', (32, 64))
    """
    config = as_quantize_config(config)
    model = nnx.clone(model)
    modules = list(iter_module_paths(model))
    targets = [(path, module) for path, module in modules
               if isinstance(module, nnx.Linear) and config.targets_match(dotted(path))]
    if not targets:
        linear_paths = [dotted(path) for path, module in modules if isinstance(module, nnx.Linear)]
        raise ValueError(f"quantize targets {config.targets!r} match no nnx.Linear (the pattern must fullmatch a "
                         f"dotted path). Linear layers in this model: {linear_paths}.")
    problems = [config.check_kernel(dotted(path), linear.in_features) for path, linear in targets]
    problems = [problem for problem in problems if problem]
    if problems:
        raise ValueError("cannot quantize: " + "; ".join(problems) + ". Choose block sizes that divide these "
                         "dims, or exclude these layers from the quantize targets.")
    for path, linear in targets:
        replace_module(model, path, QuantizedLinear(linear, config))
    return model


def dequantize(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with every `QuantizedLinear` replaced by an `nnx.Linear` holding its dequantized kernel.

    Example:
        >>> class Tiny(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.up_proj = nnx.Linear(64, 64, rngs=rngs)
        >>> type(dequantize(quantize(Tiny(nnx.Rngs(0)), "int8")).up_proj).__name__
        'Linear'
    """
    model = nnx.clone(model)
    for path, layer in [(p, m) for p, m in iter_module_paths(model) if isinstance(m, QuantizedLinear)]:
        replace_module(model, path, layer.to_linear())
    return model
