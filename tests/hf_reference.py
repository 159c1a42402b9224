"""Reference checkpoints for tests against transformers: a random Hugging Face Llama saved as safetensors."""

import torch
import transformers


def save_random_hf_llama(path, hf_config: dict) -> str:
    """A transformers Llama of `hf_config` with weights ~ N(0, 0.2²) and norm scales 1 + N(0, 0.2²) (large enough
    that layout mistakes show), saved in `path`; returns the path as a string."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(path)
    return str(path)
