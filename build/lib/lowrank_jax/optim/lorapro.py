"""`lorapro()`: LoRA-Pro's gradient adjustment (arXiv 2407.18242) as a stateless Optax transform that any
optimizer can follow: optax.chain(lorapro(), optax.adamw(...)) — the authors' "efficient" mode.
"""

from typing import NamedTuple

import optax

from lowrank_jax.optim.adapter_step import adjust_factors
from lowrank_jax.optim.adapter_tree import (
    check_scale_option,
    collect_adapters,
    flatten,
    leaves_by_path,
    over_stack,
    resolve_scale,
    value_of,
    with_value,
)
from lowrank_jax.optim.adjust import check_x_mode


class LoraProState(NamedTuple):
    """lorapro() keeps no state."""


def check_delta(delta: float) -> None:
    if not delta > 0:
        raise ValueError(f"delta={delta} must be positive: it regularises the Gram inverses (aᵀa + δI)⁻¹.")


def check_found(adapters: list, caller: str) -> None:
    """Raise when a LoRA-Pro transform finds no adapter: using it on such a tree is a mistake."""
    if not adapters:
        raise ValueError(
            f"{caller} found no adapter in the tree: an adapter is a mapping holding lora_a and lora_b "
            "(optionally lora_m), or lora_m alone (IntTune). Check that the trainable tree holds the adapter "
            "factors (e.g. nnx.state(model, nnx.LoRAParam)), or do not use LoRA-Pro for this tree."
        )


def adjust_tree(updates, params, frozen_factors, *, scale, x_mode: str, delta: float, caller: str):
    """Every adapter's gradients in ``updates`` replaced by LoRA-Pro's adjustment; other leaves untouched.

    Args:
      updates: gradients (any pytree: dicts, nnx.State, with or without Variables).
      params: the parameters, same structure as updates (their factors are read).
      frozen_factors: a tree with frozen factors (IntTune's lora_a, lora_b), or None.
      scale: the processed scale option (check_scale_option).
      x_mode, delta: as adjust().
      caller: the transform's name, for error messages.
    """
    if params is None:
        raise ValueError(
            f"{caller} needs params in update(updates, state, params): it reads the adapter factors "
            "(lora_a, lora_b) to adjust their gradients. Pass the same tree the optimizer was initialised with."
        )
    flat, treedef = flatten(updates)
    sources = (leaves_by_path(params), leaves_by_path(frozen_factors))
    adapters = collect_adapters(flat, *sources)
    check_found(adapters, caller)
    leaves = [leaf for _, leaf in flat]

    def adjust_one(factors, grads, s):
        return adjust_factors(factors, grads, scale=s, x_mode=x_mode, delta=delta)

    for adapter in adapters:
        grads = {name: value_of(leaves[index]) for name, index in adapter.leaf_index.items()}
        adjusted = over_stack(adjust_one, adapter.stack_shape)(
            adapter.factor_values(), grads, resolve_scale(scale, adapter, *sources)
        )
        for name, index in adapter.leaf_index.items():
            leaves[index] = with_value(leaves[index], adjusted[name].astype(grads[name].dtype))
    return treedef.unflatten(leaves)


def lorapro(*, scale=None, x_mode: str = "sylvester", delta: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """LoRA-Pro's gradient adjustment as an Optax transform (arXiv 2407.18242, the authors' "efficient" mode).

    Every adapter in the updates — any mapping holding ``lora_a`` (…, in, r) and ``lora_b`` (…, r, out), with
    ΔK = s·lora_a@lora_b — gets the adjusted gradients (da, db) whose first-order change s(da b + a db) is the
    projection of the full kernel gradient onto the tangent space at a@b (see adjust()); the base optimizer that
    follows then works on them. Leading axes (L, in, r) are L independent adapters. Three-factor adapters
    (``lora_m``, ΔK = s·a@m@b) get the canonical split (adjust_three_factor) or, when only lora_m trains
    (IntTune), the core step (adjust_core). Other leaves pass through untouched. Works on plain dicts and
    nnx.State (pure, or of Variables), under jit, and with optax.chain / masked / partition.

    Composes with any optimizer that follows it, e.g.::

        tx = optax.chain(optax.clip_by_global_norm(1.0), lorapro(scale=2.0), optax.adamw(2e-5))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)

    ``update(updates, state, params, *, frozen_factors=None)`` needs params (the factors are read from them).
    IntTune trains only lora_m, so lora_a and lora_b are not in params: pass them as
    ``frozen_factors=nnx.state(model, FrozenFactor)`` (any tree holding them at the adapters' paths; as an
    update argument they reach the jitted step as inputs, never as compile-time constants).

    Args:
      scale: s per adapter. None reads each adapter's ``lora_scale`` leaf from params (or frozen_factors); a
        number applies to every adapter; a tree gives one per adapter — ``nnx.state(model, AdapterScale)`` (each
        adapter mapping holding lora_scale, shape () or the stack shape) or a scalar at each adapter's path.
      x_mode: the free matrix X of two-factor adapters: "sylvester" (the paper's default), "zero", "symmetry".
      delta: δ in the regularised Gram inverses (aᵀa + δI)⁻¹ (the authors' 1e-8).

    Returns:
      An optax.GradientTransformationExtraArgs with an empty LoraProState.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"q": {"lora_a": jnp.ones((4, 2)), "lora_b": jnp.zeros((2, 3))}}
      >>> grads = {"q": {"lora_a": jnp.zeros((4, 2)), "lora_b": jnp.ones((2, 3))}}
      >>> tx = optax.chain(lorapro(scale=2.0), optax.sgd(0.1))
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> updates["q"]["lora_b"].shape
      (2, 3)
    """
    check_x_mode(x_mode)
    check_delta(delta)
    scale = check_scale_option(scale)

    def init(params):
        del params
        return LoraProState()

    def update(updates, state, params=None, *, frozen_factors=None, **extra_args):
        del extra_args
        adjusted = adjust_tree(
            updates, params, frozen_factors, scale=scale, x_mode=x_mode, delta=delta, caller="lorapro()"
        )
        return adjusted, state

    return optax.GradientTransformationExtraArgs(init, update)
