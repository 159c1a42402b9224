"""Full fine-tuning baseline: no adapters, every weight trains with AdamW (`train.trainable='all'`).

Run (the embedded default: SmolLM2-135M-Instruct, offline data, CPU-friendly):
  python train.py --config=configs/full_llama.py
Presets: python train.py --config=configs/full_llama.py:llama2_7b   (lr 2e-5, the same loop and data as the adapter methods)
         python train.py --config=configs/full_llama.py:gsm8k       (SmolLM2 on real GSM8K from the hub, or --config.data.train=DIR)
Overrides: --config.optimizer.learning_rate=1e-5 --config.workdir=runs/x
"""

from configs import common


SETTINGS = {
    "llama2_7b": dict(learning_rate=2e-5),
    "gsm8k": dict(learning_rate=2e-5),
    "embedded": dict(learning_rate=2e-5),
    "tiny": dict(learning_rate=2e-5),
}


def get_config(preset=None):
    return common.get_config(preset, method="full", settings=SETTINGS, trainable="all")
