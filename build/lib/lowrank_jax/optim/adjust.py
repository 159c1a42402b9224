"""LoRA-Pro's closed-form gradient adjustment for one two-factor adapter (arXiv 2407.18242, Thm 2.1).

Flax layout: a (in, r), b (r, out), ΔK = scale · a @ b; the paper's A = aᵀ, B = bᵀ, W = Kᵀ (docs/lorapro.md).
"""

import jax
import jax.numpy as jnp

from lowrank_jax.optim.linalg import GramInverse, compute_dtype, gram_inverse, matmul, sylvester

X_MODES = ("sylvester", "zero", "symmetry")


def check_x_mode(x_mode: str) -> None:
    """Raise a ValueError naming the valid choices when ``x_mode`` is not one of X_MODES."""
    if x_mode not in X_MODES:
        raise ValueError(f"x_mode={x_mode!r} is not one of {X_MODES}; 'sylvester' is the paper's default.")


def check_factor_shapes(a, b, others: dict) -> None:
    """Raise a ValueError unless a is (in, r), b is (r, out) and each of ``others`` (name -> (array, shape))
    has its expected shape."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(
            f"expected one adapter: a (in, r) and b (r, out), got a{a.shape} and b{b.shape}; "
            "for stacked adapters (L, in, r) use jax.vmap or lowrank_jax.lorapro()."
        )
    for name, (array, shape) in others.items():
        if array.shape != tuple(shape):
            raise ValueError(f"{name} has shape {array.shape}, expected {tuple(shape)} for a{a.shape}, b{b.shape}.")


def _gauge(inv_a: GramInverse, inv_b: GramInverse, a, grad_a, coupling, inv_s2, x_mode) -> jax.Array:
    """Y = Xᵀ (r, r): the free matrix of Thm 2.1 in Flax orientation (da gains a @ Y, db loses Y @ b)."""
    if x_mode == "zero":
        return jnp.zeros_like(coupling)
    if x_mode == "symmetry":
        return -0.5 * coupling
    # sylvester: (aᵀa + δ) Y + Y (b bᵀ + δ) = -(1/s²) aᵀ g_a (b bᵀ + δ)⁻¹, the paper's equation transposed.
    return sylvester(inv_a, inv_b, -inv_s2 * inv_b.right(matmul(a.T, grad_a)))


def _adjust(a, b, grad_a, grad_b, scale, x_mode, delta):
    """adjust() in the compute dtype, also returning Y = Xᵀ."""
    check_x_mode(x_mode)
    check_factor_shapes(a, b, {"grad_a": (grad_a, a.shape), "grad_b": (grad_b, b.shape)})
    dtype = compute_dtype(a, b, grad_a, grad_b)
    a, b, grad_a, grad_b = (x.astype(dtype) for x in (a, b, grad_a, grad_b))
    inv_s2 = 1.0 / jnp.square(jnp.asarray(scale, dtype))
    inv_a = gram_inverse(matmul(a.T, a), delta)
    inv_b = gram_inverse(matmul(b, b.T), delta)
    # (1/s²)(aᵀa)⁻¹ (g_b bᵀ)(b bᵀ)⁻¹: the part of g_b inside row(b), which db must not take twice.
    coupling = inv_s2 * inv_a.left(inv_b.right(matmul(grad_b, b.T)))
    y = _gauge(inv_a, inv_b, a, grad_a, coupling, inv_s2, x_mode)
    grad_a_adjusted = inv_s2 * inv_b.right(grad_a) + matmul(a, y)
    grad_b_adjusted = inv_s2 * inv_a.left(grad_b) - matmul(coupling + y, b)
    return grad_a_adjusted, grad_b_adjusted, y


def adjust(a, b, grad_a, grad_b, *, scale, x_mode: str = "sylvester", delta: float = 1e-8):
    """LoRA-Pro's adjusted gradients for one adapter: the (da, db) whose first-order change best matches G.

    In the paper's orientation (A = aᵀ, B = bᵀ, Gram inverses δ-regularised):
        dA = (1/s²)(BᵀB)⁻¹ g_A + X A,   dB = (1/s²)[I − B(BᵀB)⁻¹Bᵀ] g_B (AAᵀ)⁻¹ − B X,
    so that s(B dA + dB A) is the projection of the full gradient G onto the tangent space at BA, whatever X.
    X by ``x_mode`` (see solve_x). No (in×in) or (out×out) matrix is formed; r×r work is float32 or wider.
    Finite and exact at b = 0 (standard LoRA init): then da = 0 and db = (1/s²)(aᵀa)⁻¹ g_b.

    Args:
      a: lora_a (in, r).
      b: lora_b (r, out).
      grad_a: dL/da (in, r).
      grad_b: dL/db (r, out).
      scale: s in ΔK = s·a@b (a float or a scalar array).
      x_mode: "sylvester" (the paper's default), "zero" or "symmetry".
      delta: δ in the regularised Gram inverses (aᵀa + δI)⁻¹, (b bᵀ + δI)⁻¹.

    Returns:
      (grad_a, grad_b) adjusted, shapes (in, r) and (r, out), in the dtypes of the given gradients.

    Example:
      >>> a, b = jnp.ones((4, 2)), jnp.zeros((2, 3))
      >>> da, db = adjust(a, b, jnp.zeros((4, 2)), jnp.ones((2, 3)), scale=2.0)
      >>> da.shape, db.shape
      ((4, 2), (2, 3))
    """
    grad_a_adjusted, grad_b_adjusted, _ = _adjust(a, b, grad_a, grad_b, scale, x_mode, delta)
    return grad_a_adjusted.astype(grad_a.dtype), grad_b_adjusted.astype(grad_b.dtype)


def solve_x(a, b, grad_a, grad_b, *, scale, x_mode: str = "sylvester", delta: float = 1e-8) -> jax.Array:
    """The paper's free matrix X (r, r), in the paper's orientation (X acts as dA = … + X A).

    - "sylvester": X minimising ‖dA − g_A‖² + ‖dB − g_B‖²; it solves
      (BᵀB + δI) X + X (AAᵀ + δI) = −(1/s²)(BᵀB + δI)⁻¹ g_A Aᵀ. This is the minimiser when (g_A, g_B) are the
      LoRA gradients of one G (raw or uniformly rescaled, e.g. clipped), where g_A Aᵀ = Bᵀ g_B.
    - "zero": X = 0.
    - "symmetry": X = −(1/(2s²))(BᵀB)⁻¹ Bᵀ g_B (AAᵀ)⁻¹, which gives each factor half of the in-plane block
      P_B G P_A. (The authors' code multiplies by AAᵀ where the inverse belongs; that is their bug.)

    Args and shapes as adjust(). Returns X (r, r) in the compute dtype (float32 or float64).
    """
    return _adjust(a, b, grad_a, grad_b, scale, x_mode, delta)[2].T

