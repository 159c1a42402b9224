"""Stable generalized Nyström init (Nakatsukasa 2020, arXiv 2009.11392), residualised so the output is unchanged.

W ≈ (W X)(Yᵀ W X)⁺(Yᵀ W) with Gaussian X (in, r), Y (out, r + ℓ); with Yᵀ W X = Q R: B0 = W X, M0 = R⁻¹,
A0 = Qᵀ Yᵀ W, and the base becomes W − s·B0 M0 A0. One pass over W, O(in·out·r) work, no SVD.
"""

import jax
import jax.numpy as jnp

from lowrank_jax.adapters.inits.registry import InitFactors, register_init


@register_init("nystrom")
def nystrom_init(kernel, rank, scale, key, config) -> InitFactors:
    """Nyström factors of K = Wᵀ (in, out) in Flax orientation, and the residual kernel.

    The sketches have variance 1/in and 1/out, so B0 and A0 have the scale of W's entries (the product B0 M0 A0
    does not depend on this choice). Oversampling ℓ is `config.oversampling`, default r // 2.

    Where r = min(in, out) the product is W itself, but M0 carries the conditioning of a square Gaussian sketch
    (M0 A0 = (Vᵀ X)⁻¹ Vᵀ for W = U Σ Vᵀ), so one AdamW update of B can move the layer by many times its norm;
    docs/experiments.md measures it.

    Returns:
        lora_a = (Qᵀ Yᵀ W)ᵀ (in, r), lora_m = R⁻ᵀ (r, r), lora_b = (W X)ᵀ (r, out), kernel = K − s·a m b.
    """
    n_in, n_out = kernel.shape
    oversampling = rank // 2 if config.oversampling is None else config.oversampling
    key_x, key_y = jax.random.split(key)
    sketch_in = jax.random.normal(key_x, (n_in, rank), kernel.dtype) / jnp.sqrt(n_in)
    sketch_out = jax.random.normal(key_y, (n_out, rank + oversampling), kernel.dtype) / jnp.sqrt(n_out)
    lora_b = sketch_in.T @ kernel  # (W X)ᵀ: (r, out)
    right = kernel @ sketch_out  # (Yᵀ W)ᵀ: (in, r + ℓ)
    core = (lora_b @ sketch_out).T  # Yᵀ W X: (r + ℓ, r)
    q, r_factor = jnp.linalg.qr(core)
    lora_a = right @ q
    # M0 = R⁻¹ by a triangular solve; the Flax factor is its transpose, R⁻ᵀ = solve(Rᵀ, I).
    lora_m = jax.scipy.linalg.solve_triangular(r_factor.T, jnp.eye(rank, dtype=kernel.dtype), lower=True)
    residual = kernel - scale * (lora_a @ (lora_m @ lora_b))
    return InitFactors(lora_a, lora_m, lora_b, residual)
