"""Device meshes and the rules that place logically-named parameters on them.

The model annotates every parameter with logical axis names (`embed`, `mlp`, `vocab`, ...); this module alone
decides which mesh axis each name is split over, so models never mention a mesh.

>>> mesh = make_mesh(data=1, fsdp=-1, tensor=1)
>>> mesh.axis_names
('data', 'fsdp', 'tensor')
>>> spec_for(('layers', 'embed', 'mlp'), (2, 64, 128), mesh) == PartitionSpec(None, 'fsdp', None)
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# The one logical-axis rules table: logical name -> mesh axes, tried in order (MaxText's `logical_axis_rules`).
# Base weights are split FSDP-style over `fsdp` along the hidden (`embed`) axis and Megatron-style over `tensor`
# along heads / MLP / vocab; activations' `batch` rows over every data-parallel axis. A name missing here is
# replicated.
LOGICAL_AXIS_RULES: Mapping[str, tuple[str, ...]] = {
    "batch": BATCH_AXES,
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "heads": ("tensor",),
    "mlp": ("tensor",),
}


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; one axis may be -1 to take all remaining devices.

    Args:
      data, fsdp, tensor: axis sizes; their product must equal the number of devices.
      devices: defaults to all devices of all processes.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got data={data}, fsdp={fsdp}, tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if known <= 0 or len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices cannot be split as data={data}, fsdp={fsdp}, "
                             f"tensor={tensor}; choose sizes whose product divides {len(devices)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices) or min(sizes) < 1:
        raise ValueError(f"mesh: data*fsdp*tensor = {int(np.prod(sizes))} but there are {len(devices)} devices; "
                         "set --config.mesh.* so the product equals the device count (or use -1 for one axis)")
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)


def per_shard(fn: Callable[..., jax.Array], args: Sequence[jax.Array], names: Sequence[Sequence[str | None]],
              out_names: Sequence[str | None]) -> jax.Array:
    """`fn(*args)`, run on each device's block of its arguments (`jax.shard_map`) when traced under a mesh of several
    devices (`jax.set_mesh`); called directly otherwise.

    For computations that are independent across batch rows (and heads) but that XLA's partitioner gets wrong, such
    as cuDNN's packed attention. `names` gives each argument's dims a logical name: 'batch' (split over data and
    fsdp), 'heads' (over tensor) or None (whole on every device). A name is split only where its mesh axes divide
    every dim that carries it, so query and key/value heads stay grouped alike.

    Example:
        >>> mesh = make_mesh(data=1, fsdp=-1, tensor=1)
        >>> rows = np.zeros((2 * mesh.size, 3), np.float32)
        >>> add_rows_seen = lambda x: per_shard(lambda b: b + b.shape[0], [x], [("batch", None)], ("batch", None))
        >>> with jax.set_mesh(mesh):  # each device sees its own 2 rows
        ...     jax.jit(add_rows_seen)(rows)[0, 0]
        Array(2., dtype=float32)
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(*args)
    split = {}
    for name in {n for arg_names in names for n in arg_names if n}:
        dims = [d for arg, arg_names in zip(args, names) for d, n in zip(arg.shape, arg_names) if n == name]
        axes = _mesh_axes(name, dims, mesh, used=set())
        if axes:
            split[name] = axes

    def spec(dim_names):
        return PartitionSpec(*(split.get(n) if n else None for n in dim_names))

    return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec(n) for n in names), out_specs=spec(out_names),
                         check_vma=False)(*args)


def _mesh_axes(name: str, dims: Sequence[int], mesh, used: set[str]) -> tuple[str, ...]:
    """The mesh axes that logical `name` is split over: its rule's axes of size > 1 not yet `used` (each mesh axis
    splits an array once), or () where their product does not divide every dim in `dims`."""
    axes = tuple(a for a in LOGICAL_AXIS_RULES.get(name, ()) if a not in used and mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in axes]))
    return axes if axes and all(d % size == 0 for d in dims) else ()


def spec_for(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for an array with logical axis `names`; dims that a mesh axis does not divide stay whole."""
    used: set[str] = set()
    spec = []
    for name, dim in zip(names or (), shape):
        axes = _mesh_axes(name, [dim], mesh, used) if name else ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def spec_on_current_mesh(names: Sequence[str | None] | None, shape: Sequence[int]) -> PartitionSpec:
    """`spec_for` under the mesh set by `jax.set_mesh` (the abstract mesh while tracing): how an array with logical
    axis `names` is split where it is being used; all None (one entry per dim) when no mesh is set.

    Example:
        >>> spec_on_current_mesh(("embed", "mlp"), (64, 128))
        P(None, None)
        >>> with jax.set_mesh(make_mesh(data=1, fsdp=2, tensor=4)):
        ...     spec_on_current_mesh(("embed", "mlp"), (64, 128))
        P('fsdp', 'tensor')
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return PartitionSpec(*(None,) * len(shape))
    spec = spec_for(names, shape, mesh)
    return PartitionSpec(*spec, *(None,) * (len(shape) - len(spec)))


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedShardings for every Variable of `state` from its `out_sharding` names, shaped like `nnx.pure(state)`."""

    def one(variable):
        names = variable.get_metadata().get("out_sharding")
        return NamedSharding(mesh, spec_for(names, jax.numpy.shape(variable.get_value()), mesh))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The train step's batch layout (accum, B, T): rows split like `batch`, micro-batch and sequence axes whole."""
    return NamedSharding(mesh, spec_for((None, "batch", None), (1, mesh.size, 1), mesh))
