"""LoRA-GA init (Wang et al. 2024, arXiv 2407.05000): factors from the top 2r singular vectors of the kernel's loss
gradient, "stable" scale ∜out/√γ, base W − s·B0 A0 so the output is unchanged at init.

With G = ∇_W L = U S Vᵀ (PEFT orientation, W (out, in)) the authors' default direction ('ArB2r', also PEFT's) is
A0 = c·V[:, :r]ᵀ, B0 = c·U[:, r:2r], c = out^¼ / √γ: one SGD step on A and B then moves W by the best rank-2r
approximation of G. The gradients come from `lowrank_jax.adapters.loraga.estimate_gradients`.
"""

import jax
import jax.numpy as jnp

from lowrank_jax.adapters.inits.registry import InitFactors, register_init
from lowrank_jax.adapters.inits.svd import randomized_svd

DEFAULT_STABLE_GAMMA = 16.0  # the authors' default γ


def fix_signs(u: jax.Array, vt: jax.Array):
    """u (m, k), vt (k, n) with each singular pair (u_i, v_i) negated where needed so that the largest-magnitude
    entry of v_i is positive: a deterministic choice (SVD fixes each pair only up to a common sign)."""
    largest = jnp.take_along_axis(vt, jnp.argmax(jnp.abs(vt), axis=1)[:, None], axis=1)[:, 0]
    signs = jnp.where(largest < 0, -1.0, 1.0).astype(vt.dtype)
    return u * signs[None, :], vt * signs[:, None]


@register_init("loraga", needs_gradient=True, rank_factor=2)
def loraga_init(kernel, rank, scale, key, config, gradient) -> InitFactors:
    """LoRA-GA from `gradient` = ∂L/∂K (in, out), K = Wᵀ.

    In Flax orientation ∂L/∂K = Gᵀ = V S Uᵀ, so its left singular vectors u are the paper's V (input side) and its
    right ones vt are Uᵀ (output side): lora_a = c·u[:, :r] (in, r), lora_b = c·vt[r:2r] (r, out). Exact SVD, or
    with `config.niter` PEFT's / the authors' randomized `svd_lowrank(G, q=min(4r, in, out), niter)`. Signs follow
    `fix_signs` (the largest entry of each output-side vector is positive).

    Returns:
        InitFactors(lora_a (in, r), None, lora_b (r, out), kernel − scale · lora_a @ lora_b).
    """
    n_in, n_out = kernel.shape
    gradient = gradient.astype(kernel.dtype)
    if config.niter is None:
        u, _, vt = jnp.linalg.svd(gradient, full_matrices=False)
    else:
        # svd_lowrank runs on G = ∂L/∂W = gradientᵀ; its triplets are ours with u and v swapped.
        u_w, _, vt_w = randomized_svd(gradient.T, min(4 * rank, n_in, n_out), config.niter, key)
        u, vt = vt_w.T, u_w.T
    u, vt = fix_signs(u[:, : 2 * rank], vt[: 2 * rank])
    gamma = DEFAULT_STABLE_GAMMA if config.stable_gamma is None else config.stable_gamma
    stable = n_out**0.25 / jnp.sqrt(jnp.asarray(gamma, kernel.dtype))
    lora_a = stable * u[:, :rank]
    lora_b = stable * vt[rank : 2 * rank]
    return InitFactors(lora_a, None, lora_b, kernel - scale * (lora_a @ lora_b))
