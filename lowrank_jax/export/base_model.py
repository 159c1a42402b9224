"""Which Hugging Face model an exported adapter belongs to, for `base_model_name_or_path` in adapter_config.json.

PEFT's `AutoPeftModelForCausalLM` loads the base named there, so a .gguf path (which transformers cannot load as a
base) is replaced by the Hugging Face id the user gives, or the one the GGUF's metadata records.
"""

from __future__ import annotations

import os
import warnings

# llama.cpp's converter writes these when it knows where the weights came from.
_GGUF_SOURCE_KEYS = ("general.base_model.0.repo_url", "general.source.repo_url", "general.source.huggingface.repository")
_HUB_PREFIX = "https://huggingface.co/"


def hf_base_model(model_path: str, hf_name: str = "") -> str:
    """The base model's name for exported adapters: `hf_name` when set; else `model_path` for an HF directory or hub
    id; else, for a .gguf file, the Hugging Face repository its metadata names.

    A .gguf file without such metadata gives its own path and a warning naming the setting that fixes it.

    >>> hf_base_model("/models/llama", "")
    '/models/llama'
    >>> hf_base_model("/models/x.gguf", "meta-llama/Llama-3.2-1B")
    'meta-llama/Llama-3.2-1B'
    """
    if hf_name:
        return hf_name
    if not model_path.endswith(".gguf"):
        return model_path
    import gguf  # only for GGUF bases

    fields = gguf.GGUFReader(model_path).fields
    for key in _GGUF_SOURCE_KEYS:
        if key in fields:
            source = str(fields[key].contents())
            return source.removeprefix(_HUB_PREFIX)
    warnings.warn(f"{os.path.basename(model_path)} does not record its Hugging Face base model, so the exported "
                  "adapter names the .gguf file, which PEFT cannot load as a base; set model.hf_name (e.g. "
                  "--config.model.hf_name=HuggingFaceTB/SmolLM2-135M-Instruct) to record it.", stacklevel=2)
    return model_path
