"""LoRA-GA: adapters from the top singular vectors of the loss gradient on a few training batches, residual frozen
(Wang et al. 2024, arXiv 2407.05000; the authors' ArB2r directions and stable scale out^¼/√γ, γ = 16).

Run (the embedded default: SmolLM2-135M-Instruct, offline data, CPU-friendly):
  python train.py --config=configs/loraga_llama.py
Presets: python train.py --config=configs/loraga_llama.py:llama2_7b   (the paper's Llama-2-7B setting: r = 8, alpha = 16, lr 2e-5; randomized SVD with --config.adapter.niter=4 as the authors)
         python train.py --config=configs/loraga_llama.py:gsm8k       (SmolLM2 on real GSM8K; --config.data.train=DIR)
Overrides: --config.adapter.stable_gamma=64 --config.loraga.gradient_batches=16 --config.workdir=runs/x
"""


from configs import common


# What each preset runs (LoRA-GA on LoRA-Pro's r = 8, alpha = 16).
SETTINGS = {
    "llama2_7b": dict(rank=8, alpha=16.0, learning_rate=2e-5),
    "gsm8k": dict(rank=8, alpha=16.0, learning_rate=5e-4),
    "embedded": dict(rank=8, alpha=16.0, learning_rate=5e-4),
    "tiny": dict(rank=4, alpha=8.0, learning_rate=5e-4),
}


def get_config(preset=None):
    config = common.get_config(preset, method="loraga", settings=SETTINGS)
    config.adapter.stable_gamma = 16.0  # γ in the stable scale out^¼/√γ of both factors
    return config
