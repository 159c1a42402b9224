"""`fused_linears(x, layers)`: the outputs of linear layers that read one input (q/k/v, gate/up) from one matmul
against their kernels and adapter down-projections side by side; every parameter stays in its own layer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowrank_jax.adapters.frozen_base import kernel_axes
from lowrank_jax.adapters.layer import AdaptedLinear
from lowrank_jax.sharding import spec_on_current_mesh


def fused_linears(x: jax.Array, layers: Sequence[nnx.Module]) -> list[jax.Array]:
    """`[layer(x) for layer in layers]`, from one matmul where the layers allow it.

    x (…, in) is multiplied once by [K_1 | … | K_n | A_1 | … | A_m]: the layers' kernels (in, out_i), then the
    adapted layers' `lora_a` (in, r_j), all in the compute dtype. The product splits into each base output
    x K_i (+ bias_i) and each adapter hidden x A_j, which `AdaptedLinear.add_adapter` finishes (· [M] B · s). A layer
    without an adapter contributes its kernel only, so a group with adapters on some of its layers fuses too.

    The layers run one by one instead (the same numbers from more matmuls) unless each is an `nnx.Linear`, or an
    `AdaptedLinear` on one without adapter dropout (the adapter would read another x), all with a compute `dtype`
    set (the model's projections have one) and agreeing in input size, dtypes and precision, with no kernel's output
    axis split by the mesh set with `jax.set_mesh`: under tensor parallelism the concatenation would be resharded on
    every call. So DoRA, quantized bases and `LinearGeneral` / `Einsum` adapters run unfused.

    Args:
        x: (…, in), the input every layer reads.
        layers: the layers, e.g. (q_proj, k_proj, v_proj), on per-layer (unstacked) variables.

    Returns:
        Each layer's output (…, out_i), in order.

    Example:
        >>> from lowrank_jax.adapters.inits import InitFactors
        >>> linear = lambda out, seed: nnx.Linear(4, out, dtype=jnp.float32, rngs=nnx.Rngs(seed))
        >>> q, k = linear(3, 0), linear(2, 1)
        >>> v = AdaptedLinear(linear(2, 2), InitFactors(jnp.ones((4, 1)), None, jnp.ones((1, 2)), None), scale=0.5)
        >>> x = jnp.arange(8.0).reshape(2, 4)
        >>> [bool(jnp.allclose(y, layer(x))) for y, layer in zip(fused_linears(x, [q, k, v]), [q, k, v])]
        [True, True, True]
    """
    if not _fusable(layers):
        return [layer(x) for layer in layers]
    bases = [_base(layer) for layer in layers]
    kernels, biases = [], []
    for base in bases:
        bias = None if base.bias is None else base.bias[...]
        x_compute, kernel, bias = base.promote_dtype((x, base.kernel[...], bias), dtype=base.dtype)
        kernels.append(kernel)
        biases.append(bias)
    adapted = [layer for layer in layers if isinstance(layer, AdaptedLinear)]
    down = [layer.lora_a[...].astype(x_compute.dtype) for layer in adapted]
    matrices = (*kernels, *down)
    product = _matmul_concatenated(x_compute, matrices, bases[0].precision)
    parts = jnp.split(product, np.cumsum([m.shape[-1] for m in matrices])[:-1], axis=-1)
    outputs = [y if bias is None else y + bias for y, bias in zip(parts, biases)]
    hidden = iter(parts[len(bases):])  # in the order of `adapted`
    return [layer.add_adapter(y, next(hidden)) if isinstance(layer, AdaptedLinear) else y
            for layer, y in zip(layers, outputs)]


def _base(layer: nnx.Module) -> nnx.Module:
    return layer.base if isinstance(layer, AdaptedLinear) else layer


def _fusable(layers: Sequence[nnx.Module]) -> bool:
    """Whether `fused_linears` computes exactly what the layers' own calls do (see its docstring)."""
    for layer in layers:
        if type(layer) is AdaptedLinear:  # subclasses (DoRA, LinearGeneral / Einsum adapters) have their own math
            if layer.dropout is not None:
                return False
            layer = layer.base
        if (type(layer) is not nnx.Linear or layer.dtype is None or layer.preferred_element_type is not None
                or layer.dot_general is not jax.lax.dot_general or len(layer.kernel.shape) != 2):
            return False
    bases = [_base(layer) for layer in layers]
    settings = {(b.in_features, b.dtype, b.kernel.dtype, b.precision, b.promote_dtype) for b in bases}
    # lora_a carries its base's input-axis name, so kernels split alike along the input axis concatenate in place.
    specs = [spec_on_current_mesh((kernel_axes(b) or (None, None))[-2:], b.kernel.shape) for b in bases]
    return len(settings) == 1 and len({spec[0] for spec in specs}) == 1 and all(spec[1] is None for spec in specs)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _matmul_concatenated(x: jax.Array, matrices: tuple[jax.Array, ...], precision) -> jax.Array:
    """x (…, in) @ [M_1 | … | M_n] (in, Σ out_i) → (…, Σ out_i).

    The derivative is written out because autodiff of a matmul against a concatenation differentiates through the
    concatenation: its transpose computes x^T g for all of (in, Σ out_i) and slices each M_i's gradient from it, so
    the frozen kernels' gradients (a full fine-tuning's worth of work) would be computed and dropped. Here the
    tangent is dx [M_1 | … | M_n] plus one x dM_i per matrix that has a tangent, so the backward pass is one matmul
    for the input's gradient and one per trained matrix. A JVP rule (not a VJP rule) keeps the forward matmul an
    ordinary `dot_general` in the differentiated program, which remat policies such as `dots_saveable` can save.
    """
    return _concatenate_and_matmul(x, matrices, precision)


def _matmul(x: jax.Array, matrix: jax.Array, precision) -> jax.Array:
    return jax.lax.dot_general(x, matrix, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


@functools.partial(_matmul_concatenated.defjvp, symbolic_zeros=True)
def _matmul_concatenated_jvp(precision, primals, tangents):
    x, matrices = primals
    dx, d_matrices = tangents
    total = sum(matrix.shape[-1] for matrix in matrices)
    # Under jax.checkpoint the backward pass rebuilds the concatenation from the matrices (which it keeps anyway)
    # instead of keeping one more copy of them per layer, which a scan without remat would stack.
    terms = [] if _is_zero(dx) else [jax.checkpoint(_concatenate_and_matmul, static_argnums=2)(dx, matrices, precision)]
    start = 0
    for matrix, d_matrix in zip(matrices, d_matrices):
        end = start + matrix.shape[-1]
        if not _is_zero(d_matrix):  # placed in its columns by zero padding, which transposes to a slice
            padding = [(0, 0, 0)] * (x.ndim - 1) + [(start, total - end, 0)]
            terms.append(jax.lax.pad(_matmul(x, d_matrix, precision), jnp.zeros((), x.dtype), padding))
        start = end
    return _concatenate_and_matmul(x, matrices, precision), sum(terms[1:], terms[0])


def _concatenate_and_matmul(x: jax.Array, matrices: tuple[jax.Array, ...], precision) -> jax.Array:
    return _matmul(x, jnp.concatenate(matrices, axis=-1), precision)


def _is_zero(tangent) -> bool:
    return isinstance(tangent, jax.custom_derivatives.SymbolicZero)
