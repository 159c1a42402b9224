"""One adapter as a whole: its adjusted step, that step's first-order change of ΔK, and pulling a full-space
direction back onto its factors. Factors are dicts keyed lora_a (in, r), lora_b (r, out), lora_m (r, r).
"""

import jax
import jax.numpy as jnp

from lowrank_jax.optim.adjust import adjust
from lowrank_jax.optim.linalg import compute_dtype, matmul
from lowrank_jax.optim.three_factor import adjust_core, adjust_three_factor

TWO_FACTOR = frozenset({"lora_a", "lora_b"})
THREE_FACTOR = frozenset({"lora_a", "lora_m", "lora_b"})
CORE_ONLY = frozenset({"lora_m"})


def _upcast(*dicts: dict) -> list[dict]:
    """The dicts with every array cast to their common compute dtype (float32 or wider)."""
    dtype = compute_dtype(*(x for d in dicts for x in d.values()))
    return [{name: x.astype(dtype) for name, x in d.items()} for d in dicts]


def adjust_factors(factors: dict, grads: dict, *, scale, x_mode: str, delta: float) -> dict:
    """Adjusted gradients for the trainable factors of one adapter, in float32 or wider.

    Args:
      factors: lora_a (in, r), lora_b (r, out) and, for three-factor adapters, lora_m (r, r).
      grads: gradients of the trainable factors: {lora_a, lora_b}, {lora_a, lora_m, lora_b} or {lora_m}.
      scale: s in ΔK = s·a@(m@)b.
      x_mode: the free matrix of two-factor adapters (adjust()); three-factor adapters use the canonical split.
      delta: δ in the regularised Gram inverses.

    Returns:
      dict with the keys of ``grads``.
    """
    (grads,) = _upcast(grads)
    a, b, m = factors["lora_a"], factors["lora_b"], factors.get("lora_m")
    trainable = frozenset(grads)
    if trainable == TWO_FACTOR and m is None:
        da, db = adjust(a, b, grads["lora_a"], grads["lora_b"], scale=scale, x_mode=x_mode, delta=delta)
        return {"lora_a": da, "lora_b": db}
    if trainable == THREE_FACTOR:
        da, dm, db = adjust_three_factor(
            a, m, b, grads["lora_a"], grads["lora_m"], grads["lora_b"], scale=scale, delta=delta
        )
        return {"lora_a": da, "lora_m": dm, "lora_b": db}
    if trainable == CORE_ONLY:
        return {"lora_m": adjust_core(a, b, grads["lora_m"], scale=scale, delta=delta)}
    raise ValueError(
        f"LoRA-Pro adjusts an adapter whose trainable factors are {{lora_a, lora_b}}, {{lora_a, lora_m, lora_b}} "
        f"or {{lora_m}} (IntTune); got trainable {sorted(trainable)} with factors {sorted(factors)}."
    )


def first_order_factors(factors: dict, steps: dict) -> tuple[jax.Array, jax.Array]:
    """(left (in, k), right (k, out)), k ≤ 2r, with left @ right = da m b + a dm b + a m db: how ΔK / s moves, to
    first order, when the factors move by ``steps``. Absent steps (frozen factors) and an absent lora_m (two-factor
    adapters) drop out. Float32 or wider."""
    factors, steps = _upcast(factors, steps)
    a, b, m = factors["lora_a"], factors["lora_b"], factors.get("lora_m")
    left, right, inner = [], [], []
    if "lora_a" in steps:
        left.append(steps["lora_a"])
        right.append(b if m is None else matmul(m, b))
    if "lora_m" in steps:
        inner.append(matmul(steps["lora_m"], b))
    if "lora_b" in steps:
        inner.append(steps["lora_b"] if m is None else matmul(m, steps["lora_b"]))
    if inner:
        left.append(a)
        right.append(inner[0] if len(inner) == 1 else inner[0] + inner[1])
    return jnp.concatenate(left, axis=-1), jnp.concatenate(right, axis=-2)


def first_order_change(factors: dict, steps: dict, *, scale) -> jax.Array:
    """s·(da m b + a dm b + a m db) (in, out): how ΔK moves, to first order, when the factors move by ``steps``;
    one (in, k)@(k, out) matmul of first_order_factors. Returns float32 or wider."""
    left, right = first_order_factors(factors, steps)
    return jnp.asarray(scale, left.dtype) * matmul(left, right)


def pull_back(factors: dict, direction: jax.Array, names, *, scale) -> dict:
    """The factors' LoRA gradients for a kernel-space direction U (in, out): s U (m b)ᵀ, s aᵀ U bᵀ, s (a m)ᵀ U.

    Args:
      factors: as in adjust_factors.
      direction: (in, out).
      names: which factors to return.
      scale: s.

    Returns:
      dict name -> array shaped like that factor, float32 or wider.
    """
    factors, direction = _upcast(factors, {"u": direction})
    a, b, u = factors["lora_a"], factors["lora_b"], direction["u"]
    u_bt = matmul(u, b.T) if "lora_a" in names or "lora_m" in names else None
    at_u = matmul(a.T, u) if "lora_b" in names else None
    return pulled_gradients(factors, u_bt, at_u, names, scale=scale)


def pulled_gradients(factors: dict, u_bt, at_u, names, *, scale) -> dict:
    """pull_back's gradients from the direction's two contractions U bᵀ (in, r) and aᵀ U (r, out) (either may be
    None when ``names`` does not need it)."""
    (factors,) = _upcast(factors)
    a, m = factors["lora_a"], factors.get("lora_m")
    s = jnp.asarray(scale, a.dtype)
    out = {}
    if "lora_a" in names:
        out["lora_a"] = s * (u_bt if m is None else matmul(u_bt, m.T))
    if "lora_m" in names:
        out["lora_m"] = s * matmul(a.T, u_bt)
    if "lora_b" in names:
        out["lora_b"] = s * (at_u if m is None else matmul(m.T, at_u))
    return out


def equivalent_gradient(a, b, grad_a, grad_b, *, scale, delta: float = 1e-8) -> jax.Array:
    """The first-order change of ΔK under LoRA-Pro's step, s(da b + a db) (in, out); the same for every x_mode.

    It is the projection of the kernel gradient G_K onto the tangent space of rank-r matrices at a@b,
    G_K P_b + P_a G_K − P_a G_K P_b with P_a = a(aᵀa)⁻¹aᵀ, P_b = bᵀ(b bᵀ)⁻¹b (neither is formed).

    Args:
      a: lora_a (in, r).
      b: lora_b (r, out).
      grad_a: dL/da (in, r).
      grad_b: dL/db (r, out).
      scale: s in ΔK = s·a@b.
      delta: δ in the regularised Gram inverses.

    Returns:
      (in, out) in float32, or float64 for float64 inputs.

    Example:
      >>> a, b = jnp.eye(4, 2), jnp.zeros((2, 3))
      >>> equivalent_gradient(a, b, jnp.zeros((4, 2)), jnp.ones((2, 3)), scale=1.0).shape
      (4, 3)
    """
    factors = {"lora_a": a, "lora_b": b}
    steps = adjust_factors(factors, {"lora_a": grad_a, "lora_b": grad_b}, scale=scale, x_mode="zero", delta=delta)
    return first_order_change(factors, steps, scale=scale)
