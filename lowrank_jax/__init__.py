"""lowrank-jax: low-rank fine-tuning of LLMs in JAX / Flax NNX.

The public entry points: `adapt` / `merge` / `export_peft` (adapters as module transforms) and `lorapro` /
`lorapro_adamw` / `loraplus` (LoRA-Pro and LoRA+ as optax transforms), `quantize` (an int8 / NF4 frozen base).
Models live in `lowrank_jax.models`, the training loop in `lowrank_jax.training.loop`.
"""

from lowrank_jax.adapters import AdapterConfig, adapt, merge
from lowrank_jax.export import export_peft
from lowrank_jax.optim import loraplus, lorapro, lorapro_adamw
from lowrank_jax.quant import QuantizeConfig, dequantize, quantize

__version__ = "0.1.0"

__all__ = ["AdapterConfig", "QuantizeConfig", "__version__", "adapt", "dequantize", "export_peft", "loraplus",
           "lorapro", "lorapro_adamw", "merge", "quantize"]
