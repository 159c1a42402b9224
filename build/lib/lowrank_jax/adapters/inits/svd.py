"""PiSSA and MiLoRA inits (PEFT's conventions): singular triplets of W split as B0 = U √(S/s), A0 = √(S/s) Vᵀ.

PiSSA takes the top r triplets (exact SVD, or PEFT's randomized `svd_lowrank` with `niter` subspace iterations);
MiLoRA the smallest r. The base becomes W − s·B0 A0, so the output is unchanged at init.
"""

import jax
import jax.numpy as jnp

from lowrank_jax.adapters.inits.registry import InitFactors, register_init


def randomized_svd(matrix: jax.Array, rank: int, niter: int, key: jax.Array):
    """Rank-`rank` SVD of `matrix` (m, n) as torch.svd_lowrank(matrix, q=rank, niter) computes it (Halko et al.).

    Returns:
        u (m, rank), s (rank,), vt (rank, n) with matrix ≈ u diag(s) vt.
    """
    test = jax.random.normal(key, (matrix.shape[1], rank), matrix.dtype)
    basis, _ = jnp.linalg.qr(matrix @ test)
    for _ in range(niter):
        basis, _ = jnp.linalg.qr(matrix.T @ basis)
        basis, _ = jnp.linalg.qr(matrix @ basis)
    u_small, s, vt = jnp.linalg.svd(basis.T @ matrix, full_matrices=False)
    return basis @ u_small, s, vt


def _split_triplets(kernel, u, s, vt, scale) -> InitFactors:
    """Factors from triplets of K = u diag(s) vt (K = Wᵀ): lora_a = u √(s/scale), lora_b = √(s/scale) vt."""
    root = jnp.sqrt(s / scale)
    lora_a = u * root[None, :]
    lora_b = root[:, None] * vt
    return InitFactors(lora_a, None, lora_b, kernel - scale * (lora_a @ lora_b))


@register_init("pissa")
def pissa_init(kernel, rank, scale, key, config) -> InitFactors:
    """PiSSA: top-r triplets; exact SVD, or randomized with `config.niter` iterations (PEFT's `pissa_niter_K`)."""
    if config.niter is None:
        u, s, vt = jnp.linalg.svd(kernel, full_matrices=False)
        return _split_triplets(kernel, u[:, :rank], s[:rank], vt[:rank], scale)
    # PEFT runs svd_lowrank on W = Kᵀ; K's triplets are W's with u and v swapped.
    u_w, s, vt_w = randomized_svd(kernel.T, rank, config.niter, key)
    return _split_triplets(kernel, vt_w.T, s, u_w.T, scale)


@register_init("milora")
def milora_init(kernel, rank, scale, key, config) -> InitFactors:
    """MiLoRA: the r smallest singular triplets (exact SVD), split as in PiSSA."""
    u, s, vt = jnp.linalg.svd(kernel, full_matrices=False)
    return _split_triplets(kernel, u[:, -rank:], s[-rank:], vt[-rank:], scale)
