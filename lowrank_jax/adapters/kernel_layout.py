"""`KernelLayout`: which axes of an `nnx.LinearGeneral` / `nnx.Einsum` kernel are batch, input and output axes, so
that the kernel can be viewed as a stack of matrices (…, batch…, in, out) with in/out axes flattened.

Leading kernel axes beyond the module's own (e.g. from nnx.vmap over layers) stay leading stack axes.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class KernelLayout:
    """The matrix view of a kernel's own axes.

    Attributes:
        permutation: the module's own kernel axes in (batch…, in…, out…) order.
        batch_shape: sizes of the batch axes (one matrix each).
        in_shape: sizes of the contracted (input) axes, flattened to in = prod(in_shape).
        out_shape: sizes of the output axes, flattened to out = prod(out_shape).

    Example:
        >>> layout = KernelLayout((1, 0, 2), (), (3, 4), (5,))
        >>> layout.to_matrix(jnp.zeros((4, 3, 5))).shape
        (12, 5)
    """

    permutation: tuple[int, ...]
    batch_shape: tuple[int, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def to_matrix(self, kernel: jax.Array) -> jax.Array:
        """kernel (lead…, own axes…) → (lead…, batch…, in, out)."""
        lead = kernel.ndim - len(self.permutation)
        moved = jnp.transpose(kernel, (*range(lead), *(lead + p for p in self.permutation)))
        return moved.reshape(*kernel.shape[:lead], *self.batch_shape, math.prod(self.in_shape),
                             math.prod(self.out_shape))

    def from_matrix(self, matrix: jax.Array) -> jax.Array:
        """(lead…, batch…, in, out) → kernel (lead…, own axes…); the inverse of `to_matrix`."""
        lead = matrix.ndim - 2 - len(self.batch_shape)
        moved = matrix.reshape(*matrix.shape[:lead], *self.batch_shape, *self.in_shape, *self.out_shape)
        inverse = [0] * len(self.permutation)
        for position, axis in enumerate(self.permutation):
            inverse[axis] = position
        return jnp.transpose(moved, (*range(lead), *(lead + p for p in inverse)))


def linear_general_layout(module: nnx.LinearGeneral) -> KernelLayout:
    """LinearGeneral's kernel is (batch…, in_features…, out_features…) already."""
    n_own = len(module.batch_axis) + len(module.in_features) + len(module.out_features)
    return KernelLayout(tuple(range(n_own)), tuple(module.batch_axis.values()), tuple(module.in_features),
                        tuple(module.out_features))


def einsum_layout(module: nnx.Einsum) -> KernelLayout:
    """The kernel axes of `module.einsum_str` 'lhs,rhs->out' (rhs = kernel; nnx.Einsum requires this explicit
    two-operand form): contracted (in lhs, not in the output) = input axes, in the output but not in lhs = output
    axes, in all three = batch axes.

    Raises:
        ValueError: an ellipsis or a repeated index in the kernel operand, a kernel index summed away, or no input
            or no output axis: these have no matrix view for LoRA.
    """
    equation = module.einsum_str
    where = f"nnx.Einsum {equation!r}"
    operands, output = equation.split("->")
    lhs, rhs = operands.split(",")
    if "." in rhs or len(set(rhs)) != len(rhs):
        raise ValueError(f"{where}: the kernel operand {rhs!r} has an ellipsis or a repeated index; adapters need one "
                         "named index per kernel axis.")
    batch = [c for c in rhs if c in lhs and c in output]
    inputs = [c for c in rhs if c in lhs and c not in output]
    outputs = [c for c in rhs if c not in lhs and c in output]
    summed = [c for c in rhs if c not in lhs and c not in output]
    if summed or not inputs or not outputs:
        raise ValueError(f"{where}: a LoRA kernel needs contracted input axes and output axes (got inputs {inputs}, "
                         f"outputs {outputs}, kernel-only summed axes {summed}); adapt another layer.")
    shape = module.kernel.shape[module.kernel.ndim - len(rhs):]
    size = {c: shape[rhs.index(c)] for c in rhs}
    return KernelLayout(tuple(rhs.index(c) for c in batch + inputs + outputs), tuple(size[c] for c in batch),
                        tuple(size[c] for c in inputs), tuple(size[c] for c in outputs))
