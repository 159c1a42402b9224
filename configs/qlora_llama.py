"""QLoRA: LoRA on an NF4 frozen base (block 64, double-quantized scales), adapters in float32 (docs/quantization.md).

Run (the embedded default: SmolLM2-135M-Instruct, offline data, CPU-friendly):
  python train.py --config=configs/qlora_llama.py
Presets: python train.py --config=configs/qlora_llama.py:llama2_7b   (QLoRA's 7B setting: r = 64, alpha = 16, lr 2e-4)
         python train.py --config=configs/qlora_llama.py:gsm8k       (SmolLM2 on real GSM8K; --config.data.train=DIR)
Overrides: --config.model.quantize=int8 (8-bit base) --config.adapter.method=pissa (QPiSSA) --config.workdir=runs/x
"""

from configs import common


def get_config(preset=None):
    config = common.get_config(preset, method="lora", rank=64, alpha=16.0, learning_rate=2e-4,
                               small_model_learning_rate=5e-4)
    config.model.quantize = "nf4"
    config.workdir = config.workdir.replace("lora_", "qlora_", 1)
    return config
