"""Adapters on the real Llama from a tiny Hugging Face checkpoint, end to end against PyTorch references:
merge → save_pretrained → transformers gives our logits; export_peft → PEFT on the ORIGINAL base gives our logits
(DoRA through PEFT's use_dora).
"""

import json

import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

from hf_reference import save_random_hf_llama
from lowrank_jax.adapters import AdaptedLinear, adapt, merge
from lowrank_jax.export import export_peft
from lowrank_jax.models.pretrained import load_pretrained, save_pretrained

TOL = 1e-4
HF_CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, rms_norm_eps=1e-5)
IDS = np.random.default_rng(0).integers(0, HF_CONFIG["vocab_size"], (2, 24))


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A random HF Llama (weights ~ N(0, 0.2²), norm scales 1 + N(0, 0.2²)) saved as safetensors."""
    return save_random_hf_llama(tmp_path_factory.mktemp("base"), HF_CONFIG)


@pytest.fixture(scope="module")
def base_model(base_dir):
    return load_pretrained(base_dir, dtype="float32", param_dtype="float32")[0]


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits.numpy()


def perturb_trainable(model, seed=1):
    """Moves every trainable factor by N(0, 0.05²), standing in for training (so B ≠ 0 and M moves)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.LoRAParam)
    nnx.update(model, jax.tree.map(lambda v: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype), state))


# pissa also exercises per-module ranks and alphas (PEFT rank_pattern / alpha_pattern in the export).
@pytest.mark.parametrize("method, options", [
    ("lora", {}), ("slora", {}), ("nlora", {}), ("nystrom", {}), ("inttune", {}),
    ("pissa", {"rank_pattern": {r".*mlp\..*": 2}, "alpha_pattern": {r".*down_proj": 3.0}}),
    ("dora", {"rank_pattern": {r".*mlp\..*": 2}, "alpha_pattern": {r".*down_proj": 3.0}}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_merged_and_peft_exported_adapters_match_pytorch(method, options, base_model, base_dir, tmp_path):
    model = adapt(base_model, {"method": method, "rank": 4, "alpha": 8.0, **options})
    adapted = [m for _, m in nnx.iter_modules(model) if isinstance(m, AdaptedLinear)]
    assert len(adapted) == 7 and all(m.lora_a.shape[0] == HF_CONFIG["num_hidden_layers"] for m in adapted)
    perturb_trainable(model)
    ours = np.asarray(model(IDS))
    assert np.abs(ours - np.asarray(base_model(IDS))).max() > 1e-2  # the adapters do change the function

    save_pretrained(merge(model), tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    np.testing.assert_allclose(torch_logits(merged), ours, atol=TOL)

    export_peft(model, tmp_path / "peft", base=base_dir)
    with open(tmp_path / "peft" / "adapter_config.json") as f:
        exported = json.load(f)
    assert exported["use_dora"] == (method == "dora")
    if options:
        assert exported["rank_pattern"] and exported["alpha_pattern"]
    original = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    with_adapter = peft.PeftModel.from_pretrained(original, tmp_path / "peft").eval()
    np.testing.assert_allclose(torch_logits(with_adapter), ours, atol=TOL)


def test_export_refuses_phi3_whose_checkpoints_fuse_the_projections(tmp_path):
    """Phi-3's HF modules are fused qkv_proj / gate_up_proj: per-projection adapters have no PEFT name there."""
    from lowrank_jax.models import Llama, LlamaConfig

    config = LlamaConfig(model_type="phi3", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    model = adapt(Llama(config, rngs=nnx.Rngs(0)), {"method": "lora", "rank": 2})
    with pytest.raises(NotImplementedError, match="merged model"):
        export_peft(model, tmp_path / "peft", base="microsoft/Phi-3-mini-4k-instruct")
    assert not (tmp_path / "peft").exists()
