"""Full fine-tuning baseline: no adapters, every weight trains with AdamW.

Run (the embedded default: SmolLM2-135M-Instruct, offline data, CPU-friendly):
  python train.py --config=configs/full_llama.py
Presets: python train.py --config=configs/full_llama.py:llama2_7b   (lr 2e-5, the same loop and data as the adapter methods)
         python train.py --config=configs/full_llama.py:gsm8k       (SmolLM2 on real GSM8K; --config.data.train=DIR)
Overrides: --config.adapter.rank=16 --config.optimizer.learning_rate=1e-4 --config.workdir=runs/x
"""

from configs import common


def get_config(preset=None):
    return common.get_config(preset, method="full", rank=0, alpha=0.0, learning_rate=2e-5,
                             small_model_learning_rate=2e-5)
