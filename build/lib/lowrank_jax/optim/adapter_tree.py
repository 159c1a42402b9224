"""Finding adapters in parameter trees: mappings holding lora_a and lora_b (optionally lora_m), or lora_m alone
(IntTune), in dicts or nnx.State (pure or of Variables); leading axes are stack axes; scales per docs/contracts.md.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

FACTOR_NAMES = ("lora_a", "lora_m", "lora_b")
SCALE_NAME = "lora_scale"


def is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def value_of(leaf):
    """The array inside an nnx.Variable, or the leaf itself."""
    return leaf.get_value() if is_variable(leaf) else leaf


def with_value(leaf, value):
    """``value`` wrapped like ``leaf``: a Variable of the same type and metadata, or the bare value."""
    return jax.tree.map(lambda _: value, leaf) if is_variable(leaf) else value


def _key_name(entry):
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return getattr(entry, attribute)
    raise TypeError(f"unsupported pytree key {entry!r}")


def flatten(tree) -> tuple[list, jax.tree_util.PyTreeDef]:
    """[(path, leaf)] with paths as tuples of plain keys (Variables count as leaves), and the treedef."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)
    return [(tuple(_key_name(k) for k in path), leaf) for path, leaf in pairs], treedef


def leaves_by_path(tree) -> dict:
    """{path: leaf} of a tree, or {} for None."""
    return {} if tree is None else dict(flatten(tree)[0])


def path_str(path: tuple) -> str:
    return "/".join(map(str, path)) or "<root>"


def nest(pairs) -> dict:
    """A nested dict from (path, value) pairs: nest([(('x', 'y'), 1)]) == {'x': {'y': 1}}."""
    root: dict = {}
    for path, value in pairs:
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return root


@dataclasses.dataclass
class Adapter:
    """One adapter (or a stack of them) of a trainable tree.

    Attributes:
      path: path of the mapping that holds the factors.
      leaf_index: trainable factor name -> index of its leaf in the flattened trainable tree.
      factors: lora_a (…, in, r), lora_b (…, r, out) and lora_m (…, r, r) if the adapter has one: the leaves as
        found (Variables, arrays or ShapeDtypeStructs), from the trainable tree, params or frozen_factors.
      stack_shape: the leading stack axes (…).
    """

    path: tuple
    leaf_index: dict
    factors: dict
    stack_shape: tuple

    def factor_values(self) -> dict:
        return {name: value_of(leaf) for name, leaf in self.factors.items()}


def _fail(path, problem, fix):
    raise ValueError(f"LoRA-Pro adapter at {path_str(path)!r}: {problem}. {fix}")


def _factor_groups(flat_trainable: list) -> dict[tuple, dict]:
    """{adapter path: {factor name: leaf index}} for every leaf named lora_a, lora_m or lora_b."""
    groups: dict[tuple, dict] = {}
    for index, (path, _) in enumerate(flat_trainable):
        if path and path[-1] in FACTOR_NAMES:
            groups.setdefault(path[:-1], {})[path[-1]] = index
    return groups


def _resolve_factors(path: tuple, trainable: set, sources) -> dict:
    """The adapter's factor leaves, looked up in ``sources`` in order; refuses unsupported trainable sets."""
    if trainable not in ({"lora_a", "lora_b"}, {"lora_a", "lora_m", "lora_b"}, {"lora_m"}):
        _fail(path, f"the trainable factors are {sorted(trainable)}",
              "LoRA-Pro needs lora_a and lora_b to train together (with lora_m if the adapter has one), or only "
              "lora_m (IntTune); freeze or train the factors accordingly, or leave this adapter out with "
              "optax.masked / optax.partition.")
    factors = {}
    for name in FACTOR_NAMES:
        leaf = next((source[path + (name,)] for source in sources if path + (name,) in source), None)
        if leaf is not None:
            factors[name] = leaf
    missing = [name for name in ("lora_a", "lora_b") if name not in factors]
    if missing and trainable == {"lora_m"}:
        _fail(path, f"only lora_m trains and {missing} are found neither in params nor in frozen_factors",
              "Pass the frozen factors to update: tx.update(grads, state, params, "
              "frozen_factors=nnx.state(model, FrozenFactor)) (nnx.Optimizer.update forwards keyword "
              "arguments); lorapro_adamw also needs them at construction: lorapro_adamw(..., frozen_factors=...).")
    missing += [name for name in trainable if name not in factors and name not in missing]
    if missing:
        _fail(path, f"params has no {sorted(missing)} for it", "Pass the params the updates belong to.")
    if "lora_m" in factors and trainable == {"lora_a", "lora_b"}:
        _fail(path, "lora_a and lora_b train while lora_m is frozen",
              "Train lora_m too (the full three-factor split) or only lora_m (IntTune).")
    return factors


def _stack_shape(path: tuple, factors: dict, updates: dict) -> tuple:
    """The common leading stack axes of the factors, after checking every shape (factors and their updates)."""
    shapes = {name: tuple(value_of(leaf).shape) for name, leaf in factors.items()}
    if any(len(shape) < 2 for shape in shapes.values()):
        _fail(path, f"factor shapes {shapes} have fewer than 2 axes", "lora_a is (…, in, r), lora_b (…, r, out).")
    stack, rank = shapes["lora_a"][:-2], shapes["lora_a"][-1:]
    expected = {"lora_b": stack + rank + shapes["lora_b"][-1:], "lora_m": stack + rank + rank}
    if any(shapes[name] != expected[name] for name in expected if name in shapes):
        _fail(path, f"factor shapes {shapes} do not fit lora_a (…, in, r), lora_b (…, r, out), lora_m (…, r, r)",
              "Give every factor the same leading stack axes and rank.")
    for name, update in updates.items():
        if tuple(value_of(update).shape) != shapes[name]:
            _fail(path, f"the update of {name} has shape {tuple(value_of(update).shape)} but the factor "
                  f"{shapes[name]}", "Pass params with the same structure as the updates.")
    return stack


def collect_adapters(flat_trainable: list, *sources: dict) -> list[Adapter]:
    """The adapters of a flattened trainable tree (updates, or params at init), with their factors resolved.

    Args:
      flat_trainable: flatten(updates)[0] or flatten(params)[0].
      sources: {path: leaf} dicts (leaves_by_path of params, then of frozen_factors) searched in order for the
        factors' values.

    Returns:
      The adapters, in tree order. Raises a ValueError naming the adapter and the fix for partial, missing or
      misshapen factors.
    """
    adapters = []
    for path, leaf_index in _factor_groups(flat_trainable).items():
        factors = _resolve_factors(path, set(leaf_index), sources)
        updates = {name: flat_trainable[index][1] for name, index in leaf_index.items()}
        adapters.append(Adapter(path, leaf_index, factors, _stack_shape(path, factors, updates)))
    return adapters


def resolve_scale(scale, adapter: Adapter, *sources: dict) -> jax.Array:
    """The adapter's scale s as a float32 array of its stack shape.

    Args:
      scale: the transform's ``scale`` argument: None (read the adapter's own lora_scale from ``sources``), a
        number (every adapter), or {path: leaf} of a scale tree (a lora_scale leaf in the adapter's mapping, as in
        nnx.state(model, AdapterScale), or a scalar at the adapter's own path).
      adapter: the adapter.
      sources: {path: leaf} dicts (params, frozen_factors) searched for lora_scale when scale is None.
    """
    path = adapter.path
    if isinstance(scale, dict):
        candidates = [scale.get(path + (SCALE_NAME,)), scale.get(path)]
        where = "the scale tree"
    elif scale is None:
        candidates = [source.get(path + (SCALE_NAME,)) for source in sources]
        where = "params (or frozen_factors)"
    else:
        candidates = [scale]
        where = "scale"
    found = next((value_of(c) for c in candidates if c is not None), None)
    if found is None:
        _fail(path, f"no scale: {where} has no {SCALE_NAME} for it",
              "Pass scale=<float> for all adapters, or scale=nnx.state(model, AdapterScale) (a tree with each "
              "adapter's lora_scale, or a scalar at each adapter's path).")
    found = jnp.asarray(found, jnp.float32)
    try:
        found = jnp.broadcast_to(found, adapter.stack_shape)
    except ValueError:
        _fail(path, f"its scale has shape {found.shape}, which does not broadcast to the stack shape "
              f"{adapter.stack_shape}", "Give one scale per stacked adapter, or a scalar.")
    return _sharded_like_stack(found, value_of(adapter.factors["lora_a"]))


def _sharded_like_stack(x, factor):
    """x (…) resharded like the stack axes of ``factor`` (…, in, r) under explicit mesh axes, where vmap needs
    every mapped axis sharded alike; unchanged otherwise."""
    sharding = jax.typeof(factor).sharding
    if x.ndim == 0 or sharding.mesh.empty or not sharding.mesh.explicit_axes:
        return x
    spec = tuple(sharding.spec) + (None,) * (factor.ndim - len(sharding.spec))
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec(*spec[: x.ndim]))


def over_stack(fn, stack_shape: tuple):
    """``fn`` vmapped once per leading stack axis (every argument's leaves carry those axes)."""
    for _ in stack_shape:
        fn = jax.vmap(fn)
    return fn


def check_scale_option(scale):
    """Validate the ``scale`` argument early and turn a scale tree into {path: leaf}."""
    if scale is None or isinstance(scale, (int, float)) or (hasattr(scale, "shape") and jnp.ndim(scale) == 0):
        if scale is not None and not float(scale) > 0:
            raise ValueError(f"scale={scale} must be positive (s = alpha / r in ΔK = s·a@b).")
        return scale
    lookup = leaves_by_path(scale)
    if not lookup:
        raise ValueError("scale is an empty tree; pass a float, None, or nnx.state(model, AdapterScale).")
    return lookup
