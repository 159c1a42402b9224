"""`DoraLinear`: DoRA (Liu et al. 2024, arXiv 2402.09353), an adapted linear whose kernel is a trained magnitude
per output column times a normalised direction: K' = m ⊙ (K + s·A B) / ‖K + s·A B‖, the norm over the input axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.adapters.delta import adapter_delta
from lowrank_jax.adapters.frozen_base import dense_kernel, kernel_axes
from lowrank_jax.adapters.inits import InitFactors
from lowrank_jax.adapters.layer import AdaptedLinear


def _direction(layer: AdaptedLinear) -> jax.Array:
    """V = K + ΔK, (…, in, out) float32."""
    return dense_kernel(layer.base).astype(jnp.float32) + adapter_delta(layer)


def direction_norm(layer: AdaptedLinear) -> jax.Array:
    """‖K + ΔK‖ over the input axis, (…, out) float32: DoRA's column norm (PEFT's `weight_norm`)."""
    return jnp.linalg.norm(_direction(layer), axis=-2)


def dora_kernel(layer: "DoraLinear") -> jax.Array:
    """m ⊙ (K + ΔK) / ‖K + ΔK‖, (…, in, out) float32: the kernel the layer computes with, what `merge` stores."""
    direction = _direction(layer)
    column_scale = layer.lora_magnitude[...].astype(jnp.float32) / jnp.linalg.norm(direction, axis=-2)
    return direction * column_scale[..., None, :]


class DoraLinear(AdaptedLinear):
    """A DoRA layer: y = x K' + bias with K' = m ⊙ (K + s·A B) / ‖K + s·A B‖ (per output column).

    On top of `AdaptedLinear`'s variables (`lora_a (…, in, r)`, `lora_b (…, r, out)`, `lora_scale (…)`) it trains
    `lora_magnitude (…, out)` (`nnx.LoRAParam`, the adapter dtype, sharding names (…, out_name)), initialised to
    ‖K + s·A B‖ (= ‖K‖ for B = 0), so the output is unchanged at init. As the paper (§4.3) and PEFT do, the norm
    is a constant of the backward pass (`stop_gradient`): A and B get the gradient of a LoRA on the direction
    V = K + s·A B with ∂L/∂V = ∂L/∂K' ⊙ m/‖V‖, and m gets Σ_in (∂L/∂K' ⊙ V) / ‖V‖.

    The output is computed as PEFT does, y = base(x) + (g − 1) ⊙ (x' K) + g ⊙ s·x' A B with g = m/‖V‖ and
    x' = dropout(x); without dropout x' K is base(x) − bias, so the only extra work is V's norm: one (in, out)
    float32 temporary and in·out·r multiply-adds per call. Dropout > 0 costs one more x' K matmul.

    Args:
        base: the `nnx.Linear` or `QuantizedLinear` (read dequantized); it stays unchanged.
        factors: lora_a, lora_b with the base's stack axes leading; lora_m and kernel must be None.
        scale, frozen, dropout, dropout_key: as `AdaptedLinear`.

    Example:
        >>> from flax import nnx
        >>> import jax.numpy as jnp
        >>> linear = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
        >>> layer = DoraLinear(linear, InitFactors(jnp.ones((4, 2)), None, jnp.zeros((2, 3)), None), scale=2.0)
        >>> layer.lora_magnitude.shape, bool(jnp.allclose(layer(jnp.ones(4)), linear(jnp.ones(4))))
        ((3,), True)
    """

    def __init__(
        self,
        base: nnx.Linear,
        factors: InitFactors,
        scale: float,
        *,
        frozen: tuple[str, ...] = (),
        dropout: float = 0.0,
        dropout_key: jax.Array | None = None,
    ):
        if factors.lora_m is not None or factors.kernel is not None:
            raise ValueError("DoraLinear takes two factors on the unchanged base: lora_m and a residual kernel must "
                             "be None (method='dora' initialises A, B as LoRA does).")
        super().__init__(base, factors, scale, frozen=frozen, dropout=dropout, dropout_key=dropout_key)
        magnitude = direction_norm(self).astype(factors.lora_a.dtype)
        names = kernel_axes(base)
        if names is None:
            self.lora_magnitude = nnx.LoRAParam(magnitude)
        else:
            self.lora_magnitude = nnx.LoRAParam(magnitude, out_sharding=(*names[:-2], names[-1]),
                                                eager_sharding=False)

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        """x (…, in) → (…, out), on unstacked (per-layer) variables."""
        y = self.base(x, out_sharding=out_sharding)
        dtype = y.dtype
        precision = self.base.precision
        norm = jax.lax.stop_gradient(direction_norm(self))
        column_scale = (self.lora_magnitude[...].astype(jnp.float32) / norm).astype(dtype)
        if self.dropout is not None:
            # PEFT's form: the magnitude also rescales the base path of the dropped-out input.
            x = self.dropout(x, rngs=self.dropout_rngs)
            base_part = jnp.matmul(x.astype(dtype), dense_kernel(self.base).astype(dtype), precision=precision)
        else:
            base_part = y if self.base.bias is None else y - self.base.bias[...].astype(dtype)
        h = jnp.matmul(x.astype(dtype), self.lora_a[...].astype(dtype), precision=precision)
        h = jnp.matmul(h, self.lora_b[...].astype(dtype), precision=precision)
        return y + (column_scale - 1) * base_part + column_scale * (self.lora_scale[...].astype(dtype) * h)
