"""What a trained model leaves for other stacks: PEFT adapters relative to the original base (`export_peft`)
and the name of that base (`hf_base_model`).

Export sits above `adapters` (any NNX model) and `models` (Llama's Hugging Face tensor names), since it needs both.
"""

from lowrank_jax.export.base_model import hf_base_model
from lowrank_jax.export.peft import export_peft, hf_module_names

__all__ = ["export_peft", "hf_base_model", "hf_module_names"]
