"""QLoRA: LoRA on an NF4 frozen base (block 64, double-quantized scales), adapters in float32 (docs/quantization.md).

Run (the embedded default: SmolLM2-135M-Instruct, offline data, CPU-friendly):
  python train.py --config=configs/qlora_llama.py
Presets: python train.py --config=configs/qlora_llama.py:llama2_7b   (QLoRA's 7B setting: r = 64, alpha = 16, lr 2e-4)
         python train.py --config=configs/qlora_llama.py:gsm8k       (SmolLM2 on real GSM8K; --config.data.train=DIR)
Overrides: --config.model.quantize=int8 (8-bit base) --config.adapter.method=pissa (QPiSSA) --config.workdir=runs/x
"""

from configs import common

# What each preset runs (QLoRA's r = 64, alpha = 16 on the 7B; the small models keep alpha / rank = 1/4).
SETTINGS = {
    "llama2_7b": dict(rank=64, alpha=16.0, learning_rate=2e-4),
    "gsm8k": dict(rank=16, alpha=4.0, learning_rate=5e-4),
    "embedded": dict(rank=16, alpha=4.0, learning_rate=5e-4),
    "tiny": dict(rank=4, alpha=1.0, learning_rate=5e-4),
}


def get_config(preset=None):
    config = common.get_config(preset, method="lora", settings=SETTINGS)
    config.model.quantize = "nf4"
    config.workdir = config.workdir.replace("lora_", "qlora_", 1)
    return config
