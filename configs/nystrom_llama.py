"""Nyström-initialised SLoRA (this project's stable generalized Nyström; base residualised so the output is unchanged at init).

Run (the embedded default: SmolLM2-135M-Instruct, offline data, CPU-friendly):
  python train.py --config=configs/nystrom_llama.py
Presets: python train.py --config=configs/nystrom_llama.py:llama2_7b   (NLoRA's hyper-parameters with the principled init)
         python train.py --config=configs/nystrom_llama.py:gsm8k       (SmolLM2 on real GSM8K from the hub, or --config.data.train=DIR)
Overrides: --config.adapter.rank=16 --config.optimizer.learning_rate=1e-4 --config.workdir=runs/x
"""

from configs import common


# What each preset runs (alpha / rank kept at the paper's ratio where the rank is capped for small models).
SETTINGS = {
    "llama2_7b": dict(rank=128, alpha=128.0, learning_rate=2e-4),
    "gsm8k": dict(rank=128, alpha=128.0, learning_rate=5e-4),
    "embedded": dict(rank=16, alpha=16.0, learning_rate=1e-3),
    "tiny": dict(rank=4, alpha=4.0, learning_rate=5e-4),
}


def get_config(preset=None):
    return common.get_config(preset, method="nystrom", settings=SETTINGS)
