"""Llama-family models in Flax NNX: configuration, model, generation."""

from lowrank_jax.models.config import LlamaConfig
from lowrank_jax.models.generate import generate
from lowrank_jax.models.llama import Llama
from lowrank_jax.models.pretrained import load_pretrained, load_tokenizer, pretrained_config, save_pretrained

__all__ = ["LlamaConfig", "Llama", "generate"]
__all__ += ["load_pretrained", "save_pretrained", "load_tokenizer", "pretrained_config"]
