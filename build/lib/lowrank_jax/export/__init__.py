"""What a trained model leaves for other stacks: PEFT adapters relative to the original base (`export_peft`).

Export sits above `adapters` (any NNX model) and `models` (Llama's Hugging Face tensor names), since it needs both.
"""

from lowrank_jax.export.peft import export_peft, hf_module_names

__all__ = ["export_peft", "hf_module_names"]
