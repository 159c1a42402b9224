"""LoRA-Pro (arXiv 2407.18242) as Optax gradient transformations, and the closed-form adjustment behind them.

`lorapro()` adjusts adapter gradients for any optimizer that follows it; `lorapro_adamw()` is the paper's
Algorithm 2. Conventions and derivations (Flax layout, three-factor adapters): docs/lorapro.md. `loraplus()` is
LoRA+ (B's learning rate λ× A's), placed after any optimizer.
"""

from lowrank_jax.optim.adapter_step import equivalent_gradient, first_order_change, pull_back
from lowrank_jax.optim.adjust import X_MODES, adjust, solve_x
from lowrank_jax.optim.lorapro import LoraProState, lorapro
from lowrank_jax.optim.loraplus import loraplus, with_loraplus
from lowrank_jax.optim.lorapro_adamw import LoraProAdamWState, lorapro_adamw
from lowrank_jax.optim.three_factor import adjust_core, adjust_three_factor

__all__ = [
    "X_MODES",
    "LoraProAdamWState",
    "LoraProState",
    "adjust",
    "adjust_core",
    "adjust_three_factor",
    "equivalent_gradient",
    "first_order_change",
    "lorapro",
    "lorapro_adamw",
    "loraplus",
    "pull_back",
    "solve_x",
    "with_loraplus",
]
