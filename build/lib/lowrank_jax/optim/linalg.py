"""Small dense linear algebra behind LoRA-Pro: full-precision matmuls and δ-regularised r×r Gram solves.

Everything r×r runs in float32 or wider whatever the parameter dtype; nothing (in×in) or (out×out) is formed.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec


def compute_dtype(*arrays) -> jnp.dtype:
    """The dtype LoRA-Pro computes in: float32, or float64 when an input is float64."""
    return jnp.promote_types(jnp.float32, jnp.result_type(*arrays))


def _explicit_out_sharding(x: jax.Array, y: jax.Array) -> NamedSharding | None:
    """Output sharding of ``x @ y`` under explicit mesh axes (None when no axis is explicit).

    JAX refuses to guess the output sharding of a contraction over an explicitly sharded axis; the answer is
    the free axes of x and the last axis of y, each mesh axis used once.
    """
    x_sharding, y_sharding = jax.typeof(x).sharding, jax.typeof(y).sharding
    mesh = x_sharding.mesh
    if mesh.empty or not mesh.explicit_axes:
        return None
    x_spec = tuple(x_sharding.spec) + (None,) * (x.ndim - len(x_sharding.spec))
    y_spec = tuple(y_sharding.spec) + (None,) * (y.ndim - len(y_sharding.spec))

    def axes(entry):
        return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))

    used = {axis for entry in x_spec[:-1] for axis in axes(entry)}
    last = y_spec[-1] if not used.intersection(axes(y_spec[-1])) else None
    return NamedSharding(mesh, PartitionSpec(*x_spec[:-1], last))


def matmul(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x @ y`` at full precision (no TF32/bf16 passes), valid under explicit sharding too.

    Args:
      x: (..., m, k).
      y: (..., k, n), same dtype as x.

    Returns:
      (..., m, n) in the inputs' dtype.
    """
    return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST, out_sharding=_explicit_out_sharding(x, y))


class GramInverse(NamedTuple):
    """(G + δI)⁻¹ on the numerical range of a symmetric PSD r×r Gram G, held as its eigendecomposition.

    Eigenvalues at rounding level (λ ≤ r·ε·λ_max, which includes every eigenvalue of G = 0) count as null, as in
    a pseudo-inverse: the inverse is 0 there instead of 1/δ, which would amplify rounding noise by 1/δ for
    rank-deficient factors. Elsewhere it is exactly (G + δI)⁻¹. This keeps B = 0 and rank-deficient factors finite
    and exact.

    Attributes:
      vectors: (r, r) orthonormal eigenvectors U.
      values: (r,) max(λ, 0) + δ.
      in_range: (r,) bool, the eigenvalues above rounding level.
    """

    vectors: jax.Array
    values: jax.Array
    in_range: jax.Array

    def _weights(self) -> jax.Array:
        return jnp.where(self.in_range, 1.0 / self.values, 0.0)

    def left(self, x: jax.Array) -> jax.Array:
        """(G + δI)⁻¹ x for x of shape (r, k)."""
        return matmul(self.vectors, matmul(self.vectors.T, x) * self._weights()[:, None])

    def right(self, x: jax.Array) -> jax.Array:
        """x (G + δI)⁻¹ for x of shape (k, r)."""
        return matmul(matmul(x, self.vectors) * self._weights(), self.vectors.T)


def gram_inverse(gram: jax.Array, delta: float) -> GramInverse:
    """Eigendecompose a symmetric PSD Gram (r, r) once, for solves with G + δI.

    Example:
      >>> g = jnp.array([[2.0, 0.0], [0.0, 0.0]])
      >>> gram_inverse(g, 1e-8).left(jnp.eye(2))
      Array([[0.5, 0. ],
             [0. , 0. ]], dtype=float32)
    """
    values, vectors = jnp.linalg.eigh((gram + gram.T) / 2)
    rounding_level = gram.shape[-1] * jnp.finfo(gram.dtype).eps * jnp.max(values)
    return GramInverse(vectors, jnp.maximum(values, 0) + delta, values > rounding_level)


def sylvester(inv_left: GramInverse, inv_right: GramInverse, c: jax.Array) -> jax.Array:
    """Solve (G₁ + δI) Y + Y (G₂ + δI) = C by two eigendecompositions: Y = U₁ [(U₁ᵀ C U₂) / (λ_i + μ_j)] U₂ᵀ.

    Entries pairing a null direction of G₁ with one of G₂ are set to 0 (their right-hand side is rounding noise
    in LoRA-Pro's equation), so Y stays finite and exact when both Grams are singular.

    Args:
      inv_left: GramInverse of G₁ (r, r).
      inv_right: GramInverse of G₂ (r, r).
      c: (r, r).

    Returns:
      Y (r, r).
    """
    u1, u2 = inv_left.vectors, inv_right.vectors
    rotated = matmul(matmul(u1.T, c), u2)
    both_null = ~inv_left.in_range[:, None] & ~inv_right.in_range[None, :]
    denominators = inv_left.values[:, None] + inv_right.values[None, :]
    return matmul(matmul(u1, jnp.where(both_null, 0.0, rotated / denominators)), u2.T)
