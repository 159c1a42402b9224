"""Runs a registered init on every layer slice of a (…, in, out) kernel in one jit: vmap over the slices, or on the
CPU a loop over them (see `init_stacked`).

The kernel is upcast to float32 (float64 stays) on device; factors come back in the adapter dtype, the residual
kernel in the base's dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from lowrank_jax.adapters.config import AdapterConfig
from lowrank_jax.adapters.inits import InitFactors, get_method


@functools.partial(jax.jit, static_argnames=("rank", "scale", "config"))
def init_stacked(kernel: jax.Array, key: jax.Array, rank: int, scale: float, config: AdapterConfig,
                 gradient: jax.Array | None = None) -> InitFactors:
    """Factors of every slice of `kernel` (…, in, out), each slice with its own key split from `key`.

    `gradient` (…, in, out), the kernel's loss gradient, is required by (and only passed to) inits registered with
    `needs_gradient` (LoRA-GA); it is upcast like the kernel.

    Jitted (rank, scale, config static). Matmuls run at full float32 precision for a float32 base (so residual
    inits preserve the output to fp32 rounding) and at the backend's default (TF32 on GPUs) for bf16/fp16 bases,
    whose storage rounding is larger anyway.

    On the CPU the slices run one after another (`lax.map`), elsewhere batched (`vmap`); each slice's factors are
    the same either way. jaxlib 0.10's CPU LAPACK kernels (QR, triangular solve, SVD, …) split a batch of matrices
    into tasks on XLA's intra-op thread pool and block their pool thread until the tasks finish, so as many batched
    LAPACK calls running at once as the pool has threads (nystrom's Q and R⁻ᵀ at r = 128 on two cores) wait on each
    other forever; a single matrix runs on the calling thread.

    Returns:
        InitFactors with the stack axes leading: lora_a (…, in, r), lora_m (…, r, r) or None, lora_b (…, r, out),
        kernel (…, in, out) or None.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> config = AdapterConfig(method="nlora", rank=2)
        >>> f = init_stacked(jnp.ones((3, 4, 5)), jax.random.key(0), rank=2, scale=1.0, config=config)
        >>> f.lora_a.shape, f.lora_m.shape, f.lora_b.shape, f.kernel
        ((3, 4, 2), (3, 2, 2), (3, 2, 5), None)
    """
    stack_shape, matrix_shape = kernel.shape[:-2], kernel.shape[-2:]
    flat = kernel.reshape((math.prod(stack_shape), *matrix_shape))
    keys = jax.random.split(key, flat.shape[0])
    compute_dtype = jnp.promote_types(kernel.dtype, jnp.float32)
    method = get_method(config.method)
    if method.needs_gradient != (gradient is not None):
        need = "needs the kernel's gradient" if method.needs_gradient else "takes no gradient"
        raise ValueError(f"init_stacked: method {method.name!r} {need}.")

    def one(matrix, slice_key, *slice_gradient):
        extra = [g.astype(compute_dtype) for g in slice_gradient]
        return method.init(matrix.astype(compute_dtype), rank, scale, slice_key, config, *extra)

    gradients = () if gradient is None else (gradient.reshape(flat.shape),)
    precision = "highest" if jnp.dtype(kernel.dtype).itemsize >= 4 else "default"
    with jax.default_matmul_precision(precision):
        factors = jax.lax.platform_dependent(
            flat, keys, *gradients,
            cpu=lambda *slices: jax.lax.map(lambda args: one(*args), slices),
            default=jax.vmap(one),
        )
    adapter_dtype = jnp.dtype(config.dtype)

    def restack(array, dtype):
        return None if array is None else array.reshape((*stack_shape, *array.shape[1:])).astype(dtype)

    return InitFactors(
        restack(factors.lora_a, adapter_dtype),
        restack(factors.lora_m, adapter_dtype),
        restack(factors.lora_b, adapter_dtype),
        restack(factors.kernel, kernel.dtype),
    )
