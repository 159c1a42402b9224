"""LoRA-Pro's adjustment for three-factor adapters ΔK = s · a @ m @ b (SLoRA, NLoRA; IntTune trains m only).

The derivation, and why the full split is the canonical one, is in docs/lorapro.md.
"""

import jax.numpy as jnp

from lowrank_jax.optim.adjust import check_factor_shapes
from lowrank_jax.optim.linalg import compute_dtype, gram_inverse, matmul


def adjust_core(a, b, grad_m, *, scale, delta: float = 1e-8):
    """IntTune (a, b frozen, only m trains): dm = (1/s²)(aᵀa + δI)⁻¹ g_m (b bᵀ + δI)⁻¹.

    The least-squares optimum of min ‖s·a dm b − G_K‖: its first-order change s·a dm b = P_a G_K P_b is the
    projection of G_K onto col(a) × row(b). In the paper's orientation (A = aᵀ, B = bᵀ, M = mᵀ) this is
    dM = (1/s²)(BᵀB)⁻¹ g_M (AAᵀ)⁻¹ with g_M = s Bᵀ G Aᵀ. It does not depend on m.

    Args:
      a: lora_a (in, r), frozen.
      b: lora_b (r, out), frozen.
      grad_m: dL/dm (r, r).
      scale: s in ΔK = s·a@m@b.
      delta: δ in the regularised Gram inverses.

    Returns:
      dm (r, r) in grad_m's dtype.

    Example:
      >>> adjust_core(jnp.eye(3, 2), jnp.eye(2, 4), jnp.ones((2, 2)), scale=1.0).shape
      (2, 2)
    """
    check_factor_shapes(a, b, {"grad_m": (grad_m, (a.shape[-1],) * 2)})
    dtype = compute_dtype(a, b, grad_m)
    a, b, g_m = a.astype(dtype), b.astype(dtype), grad_m.astype(dtype)
    inv_a = gram_inverse(matmul(a.T, a), delta)
    inv_b = gram_inverse(matmul(b, b.T), delta)
    inv_s2 = 1.0 / jnp.square(jnp.asarray(scale, dtype))
    return (inv_s2 * inv_a.left(inv_b.right(g_m))).astype(grad_m.dtype)


def adjust_three_factor(a, m, b, grad_a, grad_m, grad_b, *, scale, delta: float = 1e-8):
    """The canonical LoRA-Pro split for a trainable three-factor adapter.

    With P_a, P_b the projectors onto col(a) and row(b), each factor takes the block of the optimal change only
    it can make, orthogonally to the others:
        s·a dm b      = P_a G P_b           dm = (1/s²)(aᵀa)⁻¹ g_m (b bᵀ)⁻¹              (IntTune's step)
        s·da m b      = (I − P_a) G P_b     da = (1/s²)(I − P_a) g_a (b̃ b̃ᵀ)⁻¹,  b̃ = m b
        s·a m db      = P_a G (I − P_b)     db = (1/s²)(ãᵀã)⁻¹ g_b (I − P_b),   ã = a m
    so aᵀ da = 0 and db bᵀ = 0 (the standard tangent-vector coordinates of the fixed-rank manifold), the total
    first-order change is the least-squares optimum for any m, and for invertible m it is the tangent projection
    G P_b + P_a G − P_a G P_b. All inverses are δ-regularised, r×r, float32 or wider; finite at b = 0.

    Args:
      a, m, b: lora_a (in, r), lora_m (r, r), lora_b (r, out).
      grad_a, grad_m, grad_b: their gradients, same shapes.
      scale: s in ΔK = s·a@m@b.
      delta: δ in the regularised Gram inverses.

    Returns:
      (grad_a, grad_m, grad_b) adjusted, in the dtypes of the given gradients.
    """
    core = (a.shape[-1],) * 2
    check_factor_shapes(
        a, b, {"m": (m, core), "grad_a": (grad_a, a.shape), "grad_m": (grad_m, core), "grad_b": (grad_b, b.shape)}
    )
    dtype = compute_dtype(a, m, b, grad_a, grad_m, grad_b)
    a, m, b, g_a, g_m, g_b = (x.astype(dtype) for x in (a, m, b, grad_a, grad_m, grad_b))
    inv_s2 = 1.0 / jnp.square(jnp.asarray(scale, dtype))
    gram_a, gram_b = matmul(a.T, a), matmul(b, b.T)
    inv_a, inv_b = gram_inverse(gram_a, delta), gram_inverse(gram_b, delta)
    inv_am = gram_inverse(matmul(matmul(m.T, gram_a), m), delta)  # Gram of ã = a m, from r×r work only
    inv_mb = gram_inverse(matmul(matmul(m, gram_b), m.T), delta)  # Gram of b̃ = m b
    dm = inv_s2 * inv_a.left(inv_b.right(g_m))
    da = inv_s2 * (inv_mb.right(g_a) - matmul(a, inv_mb.right(inv_a.left(matmul(a.T, g_a)))))
    db = inv_s2 * (inv_am.left(g_b) - matmul(inv_am.left(inv_b.right(matmul(g_b, b.T))), b))
    return da.astype(grad_a.dtype), dm.astype(grad_m.dtype), db.astype(grad_b.dtype)
