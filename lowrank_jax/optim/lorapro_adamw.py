"""`lorapro_adamw()`: the paper's full LoRA-Pro AdamW (arXiv 2407.18242, Algorithm 2): Adam in the kernel space on
the equivalent gradient, its direction pulled back onto the factors and adjusted; moments sharded like the kernel.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lowrank_jax.optim.adapter_step import (
    adjust_factors,
    first_order_change,
    first_order_factors,
    pull_back,
    pulled_gradients,
)
from lowrank_jax.optim.adapter_tree import (
    Adapter,
    check_scale_option,
    collect_adapters,
    flatten,
    leaves_by_path,
    nest,
    over_stack,
    path_str,
    resolve_scale,
    value_of,
    with_value,
)
from lowrank_jax.optim.adjust import check_x_mode
from lowrank_jax.optim.fused_kernel_adam import (
    Tiles,
    check_fused_kernel_devices,
    fits_fused_kernel,
    kernel_adam_pullback,
)
from lowrank_jax.optim.linalg import compute_dtype
from lowrank_jax.optim.lorapro import check_delta, check_found
from lowrank_jax.optim.moments import kernel_moment_zeros, leaf_moment_zeros

MOMENT_KEY = "delta_kernel"


class LoraProAdamWState(NamedTuple):
    """State of lorapro_adamw.

    Attributes:
      count: int32 number of updates done.
      mu: first moments, a nested dict by path: an adapter's full-size (…, in, out) moment of its equivalent
        gradient at ``<adapter path>/delta_kernel``, any other trainable leaf's moment at its own path.
      nu: second moments, laid out like mu.
    """

    count: jax.Array
    mu: Any
    nu: Any


def _abstract(tree):
    """Shapes, dtypes and shardings of a tree's arrays (Variables kept, with their metadata); no data."""
    if tree is None:
        return None
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _moment_paths(flat, adapters: list[Adapter]):
    """(moment path, what it shadows) for every trainable leaf: one per adapter, one per other leaf."""
    in_adapter = {index for adapter in adapters for index in adapter.leaf_index.values()}
    return [(adapter.path + (MOMENT_KEY,), adapter) for adapter in adapters] + [
        (path, index) for index, (path, _) in enumerate(flat) if index not in in_adapter
    ]


def lorapro_adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    scale=None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    x_mode: str = "sylvester",
    delta: float = 1e-8,
    moment_dtype=jnp.float32,
    frozen_factors=None,
    fused_update: bool | Tiles = False,
) -> optax.GradientTransformationExtraArgs:
    """LoRA-Pro AdamW, the paper's Algorithm 2 ("full" mode), per adapter (ΔK = s·a@b, Flax layout):

    1. g̃ = s(da₀ b + a db₀), the equivalent gradient (the tangent projection of G_K; adjust() with X = 0).
    2. t ← t + 1;  m ← β₁m + (1−β₁)g̃;  v ← β₂v + (1−β₂)g̃²   (m, v: (…, in, out), like full fine-tuning).
    3. U = (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)   (standard bias correction).
    4. u_a = s U bᵀ, u_b = s aᵀ U, adjusted with ``x_mode`` → (da, db).
    5. updates −lr·(da + wd·a), −lr·(db + wd·b)   (decoupled weight decay on the factors).
    Use the updates with optax.apply_updates. Three-factor adapters (lora_m) run the same steps with the
    canonical split, or the core step when only lora_m trains (IntTune). Trainable leaves that are not adapter
    factors get plain AdamW with the same hyper-parameters.

    Differences from the authors' code (all deliberate): standard bias correction (theirs uses t+1, so the first
    step is ≈0.74× too small); moments in ``moment_dtype`` (theirs: bf16 in the standalone optimizer); weight decay
    decoupled on the factors (theirs scales A, B by √(1−lr·wd) and the frozen W₀ by (1−lr·wd)); all r×r work in
    float32 or wider with δ-regularised Grams.

    Memory: two (…, in, out) moments per adapter, i.e. full fine-tuning's Adam state. ``init`` places them like the
    base kernel (lora_a's stack and input axes, lora_b's output axis), eagerly or under jit, so that on a mesh no
    device holds a whole copy; with nnx Variables they carry matching ``out_sharding`` metadata.

    Args:
      learning_rate: a float or an optax schedule (evaluated at the update count, from 0).
      scale: s per adapter, as in lorapro(): None (each adapter's lora_scale in params), a number, or a tree.
      b1, b2, eps: Adam's β₁, β₂, ε.
      weight_decay: decoupled weight decay on the trainable factors (and other trainable leaves).
      x_mode: "sylvester" (default), "zero" or "symmetry", for step 4 of two-factor adapters.
      delta: δ in the regularised Gram inverses.
      moment_dtype: dtype of m and v (float32 by default; bfloat16 halves their memory).
      frozen_factors: only for IntTune (lora_m trains, lora_a and lora_b frozen): a tree holding the frozen
        factors, e.g. nnx.state(model, FrozenFactor); ``init`` reads their shapes and shardings (not their
        values) to size the moments. Pass the values to every update as well:
        ``update(grads, state, params, frozen_factors=...)``.
      fused_update: steps 1–4's kernel-space work as one Pallas kernel per adapter (fused_kernel_adam.py): the
        moments read and written once, g̃ and U never stored. True for the default tiles (32 × 64, 4 warps, float32
        matmuls on the CUDA cores), or a fused_kernel_adam.Tiles. One GPU only (interpreted on CPUs); adapters
        whose (in, out) the tiles do not divide, and float64 factors, keep the unfused step. Same numbers up to
        float32 round-off.

    Returns:
      An optax.GradientTransformationExtraArgs with LoraProAdamWState.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"q": {"lora_a": jnp.ones((4, 2)), "lora_b": jnp.zeros((2, 3))}}
      >>> tx = lorapro_adamw(1e-3, scale=2.0)
      >>> state = tx.init(params)
      >>> state.mu["q"]["delta_kernel"].shape
      (4, 3)
    """
    check_x_mode(x_mode)
    check_delta(delta)
    scale = check_scale_option(scale)
    if not (0 <= b1 < 1 and 0 <= b2 < 1 and eps >= 0 and weight_decay >= 0):
        raise ValueError(f"need 0 ≤ b1, b2 < 1 and eps, weight_decay ≥ 0; got {b1=}, {b2=}, {eps=}, {weight_decay=}.")
    moment_dtype = jnp.dtype(moment_dtype)
    if not jnp.issubdtype(moment_dtype, jnp.floating):
        raise ValueError(f"moment_dtype={moment_dtype} must be a floating dtype, e.g. jnp.float32 or jnp.bfloat16.")
    tiles = (Tiles() if fused_update is True else fused_update.checked()) if fused_update else None
    if tiles:
        check_fused_kernel_devices()
    frozen_shapes = leaves_by_path(_abstract(frozen_factors))

    def init(params):
        flat, _ = flatten(params)
        adapters = collect_adapters(flat, leaves_by_path(params), frozen_shapes)
        check_found(adapters, "lorapro_adamw")
        def zeros():  # called once per moment: mu and nu must not share buffers (a train step donates both)
            return nest([
                (path, kernel_moment_zeros(what.factors["lora_a"], what.factors["lora_b"], moment_dtype)
                 if isinstance(what, Adapter) else leaf_moment_zeros(flat[what][1], moment_dtype))
                for path, what in _moment_paths(flat, adapters)
            ])

        return LoraProAdamWState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def adam(mu, nu, grad, bias_1, bias_2):
        """New moments (in moment_dtype) and the bias-corrected Adam direction (float32 or wider)."""
        mu = b1 * mu.astype(grad.dtype) + (1 - b1) * grad
        nu = b2 * nu.astype(grad.dtype) + (1 - b2) * jnp.square(grad)
        direction = (mu / bias_1) / (jnp.sqrt(nu / bias_2) + eps)
        return mu.astype(moment_dtype), nu.astype(moment_dtype), direction

    def adapter_update(factors, grads, mu, nu, s, lr, bias_1, bias_2):
        steps = adjust_factors(factors, grads, scale=s, x_mode="zero", delta=delta)
        if tiles and fits_fused_kernel(*mu.shape, tiles) and compute_dtype(*factors.values()) == jnp.float32:
            left, right = first_order_factors(factors, steps)
            mu, nu, u_bt, at_u = kernel_adam_pullback(
                jnp.asarray(s, left.dtype) * left, right, factors["lora_a"], factors["lora_b"], mu, nu,
                jnp.stack([bias_1, bias_2]).astype(jnp.float32), b1=b1, b2=b2, eps=eps, tiles=tiles)
            pulled = pulled_gradients(factors, u_bt, at_u, tuple(grads), scale=s)
        else:
            mu, nu, direction = adam(mu, nu, first_order_change(factors, steps, scale=s), bias_1, bias_2)
            pulled = pull_back(factors, direction, tuple(grads), scale=s)
        adjusted = adjust_factors(factors, pulled, scale=s, x_mode=x_mode, delta=delta)
        updates = {
            name: -lr * (adjusted[name] + weight_decay * factors[name].astype(adjusted[name].dtype)) for name in grads
        }
        return updates, mu, nu

    def update_adapter(adapter: Adapter, leaves, mu, nu, s, lr, bias_1, bias_2):
        """Writes the adapter's updates into ``leaves``; returns its new moments."""
        grads = {name: value_of(leaves[i]) for name, i in adapter.leaf_index.items()}
        step = over_stack(lambda f, g, m, v, s: adapter_update(f, g, m, v, s, lr, bias_1, bias_2), adapter.stack_shape)
        new, mu, nu = step(adapter.factor_values(), grads, mu, nu, s)
        for name, i in adapter.leaf_index.items():
            leaves[i] = with_value(leaves[i], new[name].astype(grads[name].dtype))
        return mu, nu

    def update_leaf(index: int, param, leaves, mu, nu, lr, bias_1, bias_2):
        """Plain AdamW for a trainable leaf that is not an adapter factor; returns its new moments."""
        grad = value_of(leaves[index])
        mu, nu, direction = adam(mu, nu, grad.astype(jnp.promote_types(grad.dtype, jnp.float32)), bias_1, bias_2)
        leaves[index] = with_value(leaves[index], (-lr * (direction + weight_decay * param)).astype(grad.dtype))
        return mu, nu

    def update(updates, state, params=None, *, frozen_factors=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "lorapro_adamw needs params in update(updates, state, params): it reads the adapter factors and "
                "applies weight decay. Pass the same tree the optimizer was initialised with."
            )
        flat, treedef = flatten(updates)
        sources = (leaves_by_path(params), leaves_by_path(frozen_factors))
        adapters = collect_adapters(flat, *sources)
        check_found(adapters, "lorapro_adamw")
        mu_in, nu_in = leaves_by_path(state.mu), leaves_by_path(state.nu)
        count = optax.safe_increment(state.count)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        steps = count.astype(jnp.promote_types(moment_dtype, jnp.float32))
        bias = (1 - b1**steps, 1 - b2**steps)
        leaves = [leaf for _, leaf in flat]
        mu_out, nu_out = [], []
        for path, what in _moment_paths(flat, adapters):
            if path not in mu_in:
                raise ValueError(f"lorapro_adamw state has no moment at {path_str(path)!r}: the updates do not "
                                 "match the tree the optimizer was initialised with.")
            mu, nu = value_of(mu_in[path]), value_of(nu_in[path])
            if isinstance(what, Adapter):
                s = resolve_scale(scale, what, *sources)
                mu, nu = update_adapter(what, leaves, mu, nu, s, lr, *bias)
            else:
                if path not in sources[0]:
                    raise ValueError(f"lorapro_adamw: params has no leaf at {path_str(path)!r}, which the updates "
                                     "have; pass params with the same structure as the updates.")
                mu, nu = update_leaf(what, value_of(sources[0][path]), leaves, mu, nu, lr, *bias)
            mu_out.append((path, with_value(mu_in[path], mu)))
            nu_out.append((path, with_value(nu_in[path], nu)))
        return treedef.unflatten(leaves), LoraProAdamWState(count=count, mu=nest(mu_out), nu=nest(nu_out))

    return optax.GradientTransformationExtraArgs(init, update)
