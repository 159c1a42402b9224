"""Variable types of an adapted layer, the handles that `nnx.state` / `nnx.Optimizer(wrt=...)` filter on.

Trainable factors are `nnx.LoRAParam`; everything here is a plain `nnx.Variable` (not a Param) and never trains.
"""

from flax import nnx


class FrozenFactor(nnx.Variable):
    """An adapter factor that takes part in the forward pass but does not train (IntTune's lora_a, lora_b)."""


class AdapterScale(nnx.Variable):
    """The adapter's scale s in ΔK = s · lora_a @ lora_m @ lora_b; shape = the stack shape ((L,) or ())."""


class InitialFactor(nnx.Variable):
    """The init-time factors of a residual init (lora_a_init (…, in, r), lora_b_init = M0 B0 (…, r, out)).

    Kept so that `export_peft` can express the trained adapter relative to the original weights:
    ΔK = s · (lora_a @ lora_m @ lora_b − lora_a_init @ lora_b_init).
    """
