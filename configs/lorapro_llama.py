"""LoRA-Pro (arXiv 2407.18242): lorapro() adjusting LoRA gradients, chained with AdamW.

Run (the embedded default: SmolLM2-135M-Instruct, offline data, CPU-friendly):
  python train.py --config=configs/lorapro_llama.py
Presets: python train.py --config=configs/lorapro_llama.py:llama2_7b   (the paper's setup: r = 8, alpha = 16, lr 2e-5; the full Algorithm 2 with --config.optimizer.name=lorapro_adamw)
         python train.py --config=configs/lorapro_llama.py:gsm8k       (SmolLM2 on real GSM8K from the hub, or --config.data.train=DIR)
Overrides: --config.adapter.rank=16 --config.optimizer.learning_rate=1e-4 --config.workdir=runs/x
"""

from configs import common


# What each preset runs (alpha / rank kept at the paper's ratio where the rank is capped for small models).
SETTINGS = {
    "llama2_7b": dict(rank=8, alpha=16.0, learning_rate=2e-5),
    "gsm8k": dict(rank=8, alpha=16.0, learning_rate=5e-4),
    "embedded": dict(rank=8, alpha=16.0, learning_rate=5e-4),
    "tiny": dict(rank=4, alpha=8.0, learning_rate=5e-4),
}


def get_config(preset=None):
    return common.get_config(preset, method="lora", settings=SETTINGS, optimizer="lorapro")
