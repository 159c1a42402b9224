"""Adapters on `nnx.LinearGeneral` and `nnx.Einsum`: LoRA over the kernel's flattened input and output axes.

ΔK = s · lora_a @ lora_b as in `AdaptedLinear`, with lora_a (…, batch…, in, r) and lora_b (…, batch…, r, out) where
in / out are the products of the kernel's input / output axes (`KernelLayout`); batch axes (LinearGeneral's
`batch_axis`, Einsum indices shared by input, kernel and output) are stack axes: one adapter per batch entry.
"""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.adapters.inits import InitFactors
from lowrank_jax.adapters.kernel_layout import KernelLayout, einsum_layout, linear_general_layout
from lowrank_jax.adapters.layer import AdaptedLinear


class AdaptedGeneral(AdaptedLinear):
    """Variables, dropout and residual handling of `AdaptedLinear`, for a base whose kernel has the matrix view
    `layout`; subclasses compute the adapter path of their base's call.

    Args:
        base: the `nnx.LinearGeneral` / `nnx.Einsum`; for a residual init its kernel is overwritten.
        layout: the base kernel's `KernelLayout`.
        factors: as for `AdaptedLinear`, in matrix form (…, batch…, in, r) / (…, batch…, r, out); `kernel` (the
            residual) in matrix form too, or None.
        scale, frozen, dropout, dropout_key: as for `AdaptedLinear` (the stack shape includes the batch axes).
    """

    def __init__(self, base, layout: KernelLayout, factors: InitFactors, scale: float, **options):
        if base.kernel.get_metadata("out_sharding", None) is not None:
            raise ValueError(f"{type(base).__name__} kernels with sharding names cannot be adapted yet: the adapter "
                             "factors would need names for the flattened in/out axes. Adapt an unsharded model.")
        if factors.kernel is not None:
            factors = factors._replace(kernel=layout.from_matrix(factors.kernel))
        super().__init__(base, factors, scale, **options)
        self.layout = layout

    def _adapter_input(self, x: jax.Array, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(x after dropout, lora_a, s·lora_b) in `dtype`, the factors reshaped to (batch…, in…, r) and
        (batch…, r, out…); s (batch…) goes into lora_b, where it lines up with the batch axes."""
        if self.dropout is not None:
            x = self.dropout(x, rngs=self.dropout_rngs)
        layout = self.layout
        lora_a = self.lora_a[...].astype(dtype).reshape(*layout.batch_shape, *layout.in_shape, -1)
        scale = self.lora_scale[...].astype(dtype)[..., None, None]
        lora_b = (scale * self.lora_b[...].astype(dtype)).reshape(*layout.batch_shape, -1, *layout.out_shape)
        return x.astype(dtype), lora_a, lora_b


class AdaptedLinearGeneral(AdaptedGeneral):
    """An adapted `nnx.LinearGeneral`: y = base(x) + s · (x contracted over `axis` with lora_a) @ lora_b, batched
    over `batch_axis` as the base is.

    Example:
        >>> from flax import nnx
        >>> import jax.numpy as jnp
        >>> base = nnx.LinearGeneral((2, 3), 4, axis=(-2, -1), use_bias=False, rngs=nnx.Rngs(0))
        >>> factors = InitFactors(jnp.ones((6, 1)), None, jnp.ones((1, 4)), None)
        >>> layer = AdaptedLinearGeneral(base, factors, scale=0.5)
        >>> layer(jnp.ones((5, 2, 3)))[0] - base(jnp.ones((5, 2, 3)))[0]
        Array([3., 3., 3., 3.], dtype=float32)
    """

    def __init__(self, base: nnx.LinearGeneral, factors: InitFactors, scale: float, **options):
        super().__init__(base, linear_general_layout(base), factors, scale, **options)

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        """x with the base's input axes → the base's output (batch…, free…, out_features…)."""
        base = self.base
        y = base(x, out_sharding=out_sharding)
        x, lora_a, lora_b = self._adapter_input(x, y.dtype)
        axis = tuple(a % x.ndim for a in base.axis)
        batch_axis = tuple(a % x.ndim for a in base.batch_axis)
        n_batch, n_in = len(batch_axis), len(axis)
        h = jax.lax.dot_general(x, lora_a, ((axis, tuple(range(n_batch, n_batch + n_in))),
                                            (batch_axis, tuple(range(n_batch)))), precision=base.precision)
        h = jax.lax.dot_general(h, lora_b, (((h.ndim - 1,), (n_batch,)), (tuple(range(n_batch)),) * 2),
                                precision=base.precision)
        return y + h


class AdaptedEinsum(AdaptedGeneral):
    """An adapted `nnx.Einsum` 'lhs,kernel->out': the adapter runs 'lhs,(batch in r)->h' then 'h,(batch r out)->out'.

    Only the equation given at construction is supported (a call-time `einsum_str` is refused).

    Example:
        >>> from flax import nnx
        >>> import jax.numpy as jnp
        >>> base = nnx.Einsum("btd,dhk->bthk", (4, 2, 3), rngs=nnx.Rngs(0))
        >>> factors = InitFactors(jnp.ones((4, 1)), None, jnp.ones((1, 6)), None)
        >>> layer = AdaptedEinsum(base, factors, scale=1.0)
        >>> layer(jnp.ones((1, 1, 4))).shape, layer.lora_b.shape  # out axes (h, k) = (2, 3) flattened to 6
        ((1, 1, 2, 3), (1, 6))
    """

    def __init__(self, base: nnx.Einsum, factors: InitFactors, scale: float, **options):
        super().__init__(base, einsum_layout(base), factors, scale, **options)
        operands, output = base.einsum_str.split("->")
        lhs, rhs = operands.split(",")
        rank_index = next(c for c in string.ascii_letters if c not in base.einsum_str)
        batch = "".join(c for c in rhs if c in lhs and c in output)
        inputs = "".join(c for c in rhs if c in lhs and c not in output)
        outputs = "".join(c for c in rhs if c not in lhs and c in output)
        hidden = "".join(c for c in output if c not in outputs) + rank_index
        self.down_equation = f"{lhs},{batch}{inputs}{rank_index}->{hidden}"
        self.up_equation = f"{hidden},{batch}{rank_index}{outputs}->{output}"

    def __call__(self, x: jax.Array, einsum_str: str | None = None, out_sharding=None) -> jax.Array:
        if einsum_str is not None:
            raise ValueError("an adapted nnx.Einsum runs the equation it was built with; pass einsum_str when "
                             "constructing the Einsum, not when calling it.")
        y = self.base(x, out_sharding=out_sharding)
        x, lora_a, lora_b = self._adapter_input(x, y.dtype)
        precision = self.base.precision
        h = jnp.einsum(self.down_equation, x, lora_a, precision=precision)
        return y + jnp.einsum(self.up_equation, h, lora_b, precision=precision)
