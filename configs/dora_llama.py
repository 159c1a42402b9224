"""DoRA: LoRA's A, B (B = 0) plus a trained magnitude per output column, K' = m ⊙ (K + s·AB) / ‖K + s·AB‖.

Run (the embedded default: SmolLM2-135M-Instruct, offline data, CPU-friendly):
  python train.py --config=configs/dora_llama.py
Presets: python train.py --config=configs/dora_llama.py:llama2_7b   (LoRA's baseline settings, for a like-for-like comparison: r = 8, alpha = 16, lr 2e-5)
         python train.py --config=configs/dora_llama.py:gsm8k       (SmolLM2 on real GSM8K; --config.data.train=DIR)
Overrides: --config.adapter.rank=32 --config.adapter.alpha=64 --config.optimizer.learning_rate=1e-4 --config.workdir=runs/x
"""

from configs import common


# What each preset runs (DoRA on LoRA's settings).
SETTINGS = {
    "llama2_7b": dict(rank=8, alpha=16.0, learning_rate=2e-5),
    "gsm8k": dict(rank=8, alpha=16.0, learning_rate=5e-4),
    "embedded": dict(rank=8, alpha=16.0, learning_rate=5e-4),
    "tiny": dict(rank=4, alpha=8.0, learning_rate=5e-4),
}


def get_config(preset=None):
    return common.get_config(preset, method="dora", settings=SETTINGS)
