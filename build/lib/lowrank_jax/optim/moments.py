"""Zero optimizer moments placed like what they shadow: full-size (…, in, out) moments of an adapter sharded like
its base kernel (lora_a's stack and input axes, lora_b's output axis), so that no device holds a whole copy.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from lowrank_jax.optim.adapter_tree import is_variable, value_of, with_value


def _spec(sharding: NamedSharding, ndim: int) -> tuple:
    spec = tuple(sharding.spec)
    return spec + (None,) * (ndim - len(spec))


def _mesh_axes(entry) -> tuple:
    return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


def kernel_spec(a_spec: tuple, b_spec: tuple) -> tuple:
    """The kernel's (…, in, out) axes from lora_a's (…, in, r) and lora_b's (…, r, out); an axis name already
    used by lora_a's axes is not used twice (logical names or mesh axes alike).

    >>> kernel_spec(("layers", "embed", None), ("layers", None, "mlp"))
    ('layers', 'embed', 'mlp')
    """
    used = {axis for entry in a_spec[:-1] for axis in _mesh_axes(entry)}
    out = b_spec[-1] if not used.intersection(_mesh_axes(b_spec[-1])) else None
    return tuple(a_spec[:-1]) + (out,)


def _known_sharding(x):
    """x's NamedSharding when it is known outside tracing (a concrete array or a ShapeDtypeStruct), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    sharding = getattr(x, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None


def _kernel_sharding(a, b) -> NamedSharding | None:
    a_sharding, b_sharding = _known_sharding(a), _known_sharding(b)
    mesh_of = a_sharding or b_sharding
    if mesh_of is None:
        return None
    a_spec = _spec(a_sharding, a.ndim) if a_sharding else (None,) * a.ndim
    same_mesh = b_sharding is not None and b_sharding.mesh == mesh_of.mesh
    b_spec = _spec(b_sharding, b.ndim) if same_mesh else (None,) * b.ndim
    return NamedSharding(mesh_of.mesh, PartitionSpec(*kernel_spec(a_spec, b_spec)))


def anchored_zeros(x, dtype) -> jax.Array:
    """Zeros shaped like x whose value depends on x in the program, so that under jit the sharding of x
    propagates to them (plain jnp.zeros has no operand to inherit a sharding from).

    |x|·0 where x is finite, else 0: exact +0 for every x (NaN and ±inf included), and nothing XLA can fold to a
    constant before it propagates shardings. (A select with a constant False predicate was folded on GPUs: a 1B
    model's LoRA-Pro AdamW moments came out whole on each of 2 H200s.)
    """
    return jnp.where(jnp.isfinite(x), jnp.abs(x) * 0, 0).astype(dtype)


def _zeros(shape, dtype, a, b, sharding):
    if sharding is None:
        if isinstance(a, jax.core.Tracer) and isinstance(b, jax.core.Tracer):
            return anchored_zeros(a[..., :1], dtype) + anchored_zeros(b[..., :1, :], dtype)
        return jnp.zeros(shape, dtype)
    zeros = jnp.zeros(shape, dtype)
    if not isinstance(zeros, jax.core.Tracer):
        return jnp.zeros(shape, dtype, device=sharding)  # allocated sharded, never whole on one device
    if sharding.mesh.explicit_axes:
        return jax.sharding.reshard(zeros, sharding)
    return jax.lax.with_sharding_constraint(zeros, sharding)


def kernel_moment_zeros(a_leaf, b_leaf, dtype):
    """Zeros (…, in, out) for a full-size moment of the adapter (a_leaf: lora_a (…, in, r), b_leaf: lora_b (…, r, out)).

    Placement: with sharded concrete arrays (or ShapeDtypeStructs with a NamedSharding) the zeros get the kernel's
    NamedSharding; under jit they are built from slices of a and b, so sharding propagation (Auto axes) or the
    sharding-in-types rules (Explicit axes) give them a's (…, in) and b's out sharding. When lora_a is an
    nnx.Variable the result is one too, with ``out_sharding`` metadata (…, in_name, out_name), so flax's
    annotation-driven placement (nnx.get_partition_spec) shards it like the kernel.

    Args:
      a_leaf: lora_a, as an array, ShapeDtypeStruct or nnx.Variable.
      b_leaf: lora_b, likewise.
      dtype: the moment dtype.

    Returns:
      The zeros, wrapped like a_leaf.
    """
    a, b = value_of(a_leaf), value_of(b_leaf)
    zeros = _zeros(a.shape[:-1] + b.shape[-1:], dtype, a, b, _kernel_sharding(a, b))
    if not is_variable(a_leaf):
        return zeros
    moment = with_value(a_leaf, zeros)
    a_names = a_leaf.get_metadata("out_sharding", None)
    b_names = b_leaf.get_metadata("out_sharding", None) if is_variable(b_leaf) else None
    if a_names or b_names:
        a_names = tuple(a_names) if a_names else (None,) * a.ndim
        b_names = tuple(b_names) if b_names else (None,) * b.ndim
        moment.set_metadata("out_sharding", kernel_spec(a_names, b_names))
    return moment


def leaf_moment_zeros(leaf, dtype):
    """Zeros shaped and placed like one parameter leaf (array or nnx.Variable, wrapped alike)."""
    x = value_of(leaf)
    zeros = anchored_zeros(x, dtype) if isinstance(x, jax.core.Tracer) else jnp.zeros_like(x, dtype)
    return with_value(leaf, zeros)
