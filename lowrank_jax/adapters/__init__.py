"""Low-rank adapters as Flax NNX module transforms: `adapt`, `merge` and their variable types.

Methods (LoRA, SLoRA, NLoRA, Nyström, PiSSA, MiLoRA, OLoRA, IntTune, DoRA, LoRA-GA) are registered init functions
in `inits/`; DoRA's layer is `DoraLinear`; LoRA-GA's gradients come from `loraga.estimate_gradients`.
"""

from lowrank_jax.adapters.config import AdapterConfig, as_adapter_config
from lowrank_jax.adapters.dora_layer import DoraLinear
from lowrank_jax.adapters.inits import InitFactors, register_init
from lowrank_jax.adapters.general_layer import AdaptedEinsum, AdaptedLinearGeneral
from lowrank_jax.adapters.layer import AdaptedLinear
from lowrank_jax.adapters.merge import merge
from lowrank_jax.adapters.transform import adapt, check_targets
from lowrank_jax.adapters.variables import AdapterScale, FrozenFactor, InitialFactor

__all__ = [
    "AdaptedEinsum",
    "AdaptedLinear",
    "AdaptedLinearGeneral",
    "AdapterConfig",
    "AdapterScale",
    "DoraLinear",
    "FrozenFactor",
    "InitFactors",
    "InitialFactor",
    "adapt",
    "as_adapter_config",
    "check_targets",
    "merge",
    "register_init",
]
