"""The module types that take adapters (`nnx.Linear`, `nnx.LinearGeneral`, `nnx.Einsum`): their kernels as stacks
of matrices (…, in, out) and the adapted module that replaces each.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from lowrank_jax.adapters.general_layer import AdaptedEinsum, AdaptedLinearGeneral
from lowrank_jax.adapters.inits import InitFactors
from lowrank_jax.adapters.kernel_layout import KernelLayout, einsum_layout, linear_general_layout
from lowrank_jax.adapters.layer import AdaptedLinear

ADAPTABLE = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum)


def _layout(module) -> KernelLayout | None:
    if isinstance(module, nnx.LinearGeneral):
        return linear_general_layout(module)
    if isinstance(module, nnx.Einsum):
        return einsum_layout(module)
    return None


def matrix_shape(module) -> tuple[int, ...]:
    """(…, in, out) of the module's kernel as matrices, from shapes only; raises for unsupported einsums.

    >>> matrix_shape(nnx.Einsum("btd,dhk->bthk", (8, 2, 4), rngs=nnx.Rngs(0)))
    (8, 8)
    """
    layout = _layout(module)
    shape = module.kernel.shape
    if layout is None:
        return tuple(shape)
    lead = shape[: len(shape) - len(layout.permutation)]
    return (*lead, *layout.batch_shape, math.prod(layout.in_shape), math.prod(layout.out_shape))


def as_matrix(module, array: jax.Array) -> jax.Array:
    """`array` of the module's kernel shape (the kernel, or its gradient) as (…, in, out)."""
    layout = _layout(module)
    return array if layout is None else layout.to_matrix(array)


def adapted_module(module, factors: InitFactors, scale: float, **options) -> AdaptedLinear:
    """The adapter module for `module` with matrix-form `factors` (options as `AdaptedLinear` takes them)."""
    if isinstance(module, nnx.LinearGeneral):
        return AdaptedLinearGeneral(module, factors, scale, **options)
    if isinstance(module, nnx.Einsum):
        return AdaptedEinsum(module, factors, scale, **options)
    return AdaptedLinear(module, factors, scale, **options)
