"""Logical axis names of the model's parameters (docs/contracts.md); no mesh here.

`lowrank_jax/sharding.py` maps these names to mesh axes. Annotations are metadata only (no eager sharding).
"""

from __future__ import annotations

LOGICAL_AXES = ("layers", "vocab", "embed", "q_heads", "kv_heads", "mlp", "norm")


def logical_axes(*names: str) -> dict:
    """Variable metadata annotating each axis of a parameter with a logical name.

    Args:
        *names: one name from LOGICAL_AXES per parameter axis ('layers' is added by the layer stacking).

    Returns:
        kwargs for `nnx.Param(...)` or a layer's `kernel_metadata` / `bias_metadata`.

    Example:
        >>> logical_axes("embed", "mlp")
        {'out_sharding': ('embed', 'mlp'), 'eager_sharding': False}
    """
    unknown = [n for n in names if n not in LOGICAL_AXES]
    if unknown:
        raise ValueError(f"Unknown logical axis names {unknown}; use names from {LOGICAL_AXES}.")
    return {"out_sharding": names, "eager_sharding": False}
