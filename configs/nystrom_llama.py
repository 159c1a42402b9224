"""Nyström-initialised SLoRA (this project's stable generalized Nyström; base residualised so the output is unchanged at init).

Run (the embedded default: SmolLM2-135M-Instruct, offline data, CPU-friendly):
  python train.py --config=configs/nystrom_llama.py
Presets: python train.py --config=configs/nystrom_llama.py:llama2_7b   (NLoRA's hyper-parameters with the principled init)
         python train.py --config=configs/nystrom_llama.py:gsm8k       (SmolLM2 on real GSM8K; --config.data.train=DIR)
Overrides: --config.adapter.rank=16 --config.optimizer.learning_rate=1e-4 --config.workdir=runs/x
"""

from configs import common


def get_config(preset=None):
    return common.get_config(preset, method="nystrom", rank=128, alpha=128.0, learning_rate=2e-4,
                             small_model_learning_rate=5e-4)
