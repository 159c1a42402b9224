"""`AdaptedLinear`: an `nnx.Linear` (kept as `base`) plus a low-rank adapter, y = base(x) + s·dropout(x) A M B.

On stacked bases (kernel (…, in, out), made by nnx.vmap) every adapter variable carries the same leading stack axes,
and the layer is called on per-layer slices, as a scanned model does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.adapters.frozen_base import kernel_axes, set_dense_kernel
from lowrank_jax.adapters.inits import InitFactors
from lowrank_jax.adapters.variables import AdapterScale, FrozenFactor, InitialFactor
from lowrank_jax.quant.layer import QuantizedLinear


class AdaptedLinear(nnx.Module):
    """An adapted linear layer: y = base(x) + s · dropout(x) @ lora_a [@ lora_m] @ lora_b.

    The base computes as it always did (its dtype and precision); the adapter factors are cast to the base's output
    dtype. Variables: `lora_a (…, in, r)`, `lora_b (…, r, out)`, optional `lora_m (…, r, r)` (`nnx.LoRAParam`, or
    `FrozenFactor` when frozen), `lora_scale (…)` (`AdapterScale`), for residual inits `lora_a_init (…, in, r)` and
    `lora_b_init (…, r, out)` (`InitialFactor`), and with dropout an RNG stream `dropout_rngs` with key (…).
    Sharding names follow the base kernel's (…, in_name, out_name): lora_a (…, in_name, None), lora_b
    (…, None, out_name), lora_m (…, None, None), lora_scale (…).

    Args:
        base: the `nnx.Linear`, or a `QuantizedLinear`; for a residual init its kernel is overwritten with
            `factors.kernel` (a quantized base requantizes it, so its output at init matches the original up to the
            residual's quantization error).
        factors: initial factors with the base's stack axes leading, already in the adapter dtype; `kernel` (the
            residual, base dtype) or None.
        scale: s.
        frozen: factor names to store as `FrozenFactor`.
        dropout: rate on the adapter input; 0 creates no dropout state.
        dropout_key: PRNG key array of the stack shape, required when dropout > 0.

    Example:
        >>> from flax import nnx
        >>> import jax, jax.numpy as jnp
        >>> linear = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
        >>> factors = InitFactors(jnp.ones((4, 2)), None, jnp.ones((2, 3)), None)
        >>> layer = AdaptedLinear(linear, factors, scale=0.5)
        >>> layer(jnp.ones((1, 4))) - linear(jnp.ones((1, 4)))
        Array([[4., 4., 4.]], dtype=float32)
    """

    def __init__(
        self,
        base: nnx.Linear | QuantizedLinear,
        factors: InitFactors,
        scale: float,
        *,
        frozen: tuple[str, ...] = (),
        dropout: float = 0.0,
        dropout_key: jax.Array | None = None,
    ):
        stack_shape = factors.lora_a.shape[:-2]
        names = kernel_axes(base)

        def variable(name: str, value, kind=None, axes=()):
            kind = kind or (FrozenFactor if name in frozen else nnx.LoRAParam)
            if names is None:
                return kind(value)
            return kind(value, out_sharding=(*names[:-2], *axes), eager_sharding=False)

        in_name, out_name = (None, None) if names is None else names[-2:]
        self.base = base
        self.lora_a = variable("lora_a", factors.lora_a, axes=(in_name, None))
        self.lora_b = variable("lora_b", factors.lora_b, axes=(None, out_name))
        self.lora_m = nnx.data(None)
        if factors.lora_m is not None:
            self.lora_m = variable("lora_m", factors.lora_m, axes=(None, None))
        self.lora_scale = variable("lora_scale", jnp.full(stack_shape, scale, jnp.float32), kind=AdapterScale)
        if factors.kernel is not None:
            set_dense_kernel(base, factors.kernel)
            # Copies, not aliases of lora_a / lora_b: a train step may donate the state, and JAX refuses to donate
            # one buffer twice.
            init_b = jnp.copy(factors.lora_b)
            if factors.lora_m is not None:
                init_b = jnp.matmul(factors.lora_m, factors.lora_b, precision="highest",
                                    preferred_element_type=jnp.float32).astype(factors.lora_b.dtype)
            init_a = jnp.copy(factors.lora_a)
            self.lora_a_init = variable("lora_a_init", init_a, kind=InitialFactor, axes=(in_name, None))
            self.lora_b_init = variable("lora_b_init", init_b, kind=InitialFactor, axes=(None, out_name))
        if dropout > 0.0:
            if dropout_key is None or dropout_key.shape != stack_shape:
                raise ValueError(f"dropout > 0 needs a key array of the stack shape {stack_shape}.")
            self.dropout = nnx.Dropout(dropout)
            self.dropout_rngs = nnx.RngStream(dropout_key, tag="dropout")
        else:
            self.dropout = nnx.data(None)

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        """x (…, in) → (…, out), on unstacked (per-layer) variables."""
        y = self.base(x, out_sharding=out_sharding)
        dtype = y.dtype
        if self.dropout is not None:
            x = self.dropout(x, rngs=self.dropout_rngs)
        h = jnp.matmul(x.astype(dtype), self.lora_a[...].astype(dtype), precision=self.base.precision)
        return self.add_adapter(y, h)

    def add_adapter(self, y: jax.Array, h: jax.Array) -> jax.Array:
        """y + s · h [@ lora_m] @ lora_b: the adapter's output added to the base's output y (…, out), from the
        adapter's hidden h = dropout(x) @ lora_a (…, r), both in the compute dtype. `__call__` and
        `fused_linears` (which computes h in one matmul with other layers') both finish through here."""
        dtype = y.dtype
        precision = self.base.precision
        if self.lora_m is not None:
            h = jnp.matmul(h, self.lora_m[...].astype(dtype), precision=precision)
        h = jnp.matmul(h, self.lora_b[...].astype(dtype), precision=precision)
        return y + self.lora_scale[...].astype(dtype) * h
