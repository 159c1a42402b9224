"""The HF <-> NNX mapping table: names and shapes against transformers' PyTorch models, exact round trips (Phi-3's
fused tensors split and re-fused), GGUF names against the gguf package's own llama.cpp name map, and the Q/K
un-permutation against its index definition.
"""

import gguf
import numpy as np
import pytest
import transformers
from flax import nnx

from lowrank_jax.models import Llama, LlamaConfig
from lowrank_jax.models.param_map import (expected_hf_shapes, hf_name_from_gguf, hf_tensors_from_nnx,
                                          nnx_leaves_from_hf, rule_for_hf_name, unpermute_gguf_rows)

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2)
TORCH_CONFIGS = {
    "llama_untied_head_dim": transformers.LlamaConfig(**TINY, head_dim=12, tie_word_embeddings=False),
    "qwen2_tied_biases": transformers.Qwen2Config(**TINY, tie_word_embeddings=True),
    "qwen3_qk_norm": transformers.Qwen3Config(**TINY, head_dim=12, tie_word_embeddings=False),
    "phi3_fused": transformers.Phi3Config(**TINY, pad_token_id=None),
    "gemma3_sandwich_norms": transformers.Gemma3TextConfig(**TINY, head_dim=16),
}


def _nnx_specs(config: LlamaConfig) -> dict:
    model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    return {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model))}


def _torch_shapes(torch_config) -> dict:
    model = transformers.AutoModelForCausalLM.from_config(torch_config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if torch_config.tie_word_embeddings:
        del shapes["lm_head.weight"]  # the same tensor as the embeddings; not saved separately
    return shapes


@pytest.mark.parametrize("name", list(TORCH_CONFIGS))
def test_table_names_and_shapes_match_transformers(name):
    torch_config = TORCH_CONFIGS[name]
    config = LlamaConfig.from_hf(torch_config.to_dict())
    shapes = {path: spec.shape for path, spec in _nnx_specs(config).items()}
    assert expected_hf_shapes(config, shapes) == _torch_shapes(torch_config)


@pytest.mark.parametrize("name", list(TORCH_CONFIGS))
def test_table_round_trip_is_exact(name):
    config = LlamaConfig.from_hf(TORCH_CONFIGS[name].to_dict())
    specs = _nnx_specs(config)
    rng = np.random.default_rng(0)
    leaves = {path: rng.standard_normal(spec.shape).astype(spec.dtype) for path, spec in specs.items()}

    hf = dict(hf_tensors_from_nnx(leaves, config))
    assert all(t.flags.c_contiguous for t in hf.values())
    back = dict(nnx_leaves_from_hf(hf.__getitem__, config, specs))

    assert back.keys() == leaves.keys()
    for path, leaf in leaves.items():
        np.testing.assert_array_equal(back[path], leaf, err_msg=str(path))
    # Kernels are HF weights transposed, layer i of a stacked leaf is model.layers.i.
    np.testing.assert_array_equal(hf["model.layers.2.mlp.down_proj.weight"],
                                  leaves[("layers", "mlp", "down_proj", "kernel")][2].T)


def test_phi3_fused_tensors_are_the_projections_stacked_by_rows():
    """transformers' Phi3Attention splits qkv_proj's output as [q | k | v] and Phi3MLP gate_up_proj's as [gate | up]."""
    config = LlamaConfig.from_hf(TORCH_CONFIGS["phi3_fused"].to_dict())
    specs = _nnx_specs(config)
    rng = np.random.default_rng(2)
    leaves = {path: rng.standard_normal(spec.shape).astype(spec.dtype) for path, spec in specs.items()}
    hf = dict(hf_tensors_from_nnx(leaves, config))
    assert "model.layers.1.self_attn.q_proj.weight" not in hf

    def kernel(group, name):
        return leaves[("layers", group, name, "kernel")][1].T

    np.testing.assert_array_equal(hf["model.layers.1.self_attn.qkv_proj.weight"], np.concatenate(
        [kernel("self_attn", "q_proj"), kernel("self_attn", "k_proj"), kernel("self_attn", "v_proj")]))
    np.testing.assert_array_equal(hf["model.layers.1.mlp.gate_up_proj.weight"],
                                  np.concatenate([kernel("mlp", "gate_proj"), kernel("mlp", "up_proj")]))


def test_round_trip_converts_dtype_per_tensor():
    config = LlamaConfig.from_hf(TORCH_CONFIGS["llama_untied_head_dim"].to_dict(), param_dtype="bfloat16")
    specs = _nnx_specs(config)
    rng = np.random.default_rng(1)
    hf = {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in expected_hf_shapes(config, {p: s.shape for p, s in specs.items()}).items()}
    leaves = dict(nnx_leaves_from_hf(hf.__getitem__, config, specs))
    norm = leaves[("norm", "scale")]
    assert norm.dtype == specs[("norm", "scale")].dtype == np.dtype("bfloat16")
    np.testing.assert_array_equal(norm, hf["model.norm.weight"].astype(norm.dtype))


def test_wrong_tensor_shape_is_named():
    config = LlamaConfig.from_hf(TORCH_CONFIGS["llama_untied_head_dim"].to_dict())
    specs = _nnx_specs(config)
    hf = {name: np.zeros(shape, np.float32)
          for name, shape in expected_hf_shapes(config, {p: s.shape for p, s in specs.items()}).items()}
    hf["model.layers.1.input_layernorm.weight"] = np.zeros((1, 32), np.float32)  # numpy would broadcast this
    with pytest.raises(ValueError, match=r"model\.layers\.1\.input_layernorm\.weight has shape \(1, 32\)"):
        dict(nnx_leaves_from_hf(hf.__getitem__, config, specs))


def test_every_hf_name_parses_back_to_its_rule():
    config = LlamaConfig.from_hf(TORCH_CONFIGS["qwen2_tied_biases"].to_dict())
    for name in _torch_shapes(TORCH_CONFIGS["qwen2_tied_biases"]):
        rule, layer = rule_for_hf_name(name)
        assert name in rule.hf_names(config.num_hidden_layers)
        assert layer == (rule.hf_names(config.num_hidden_layers).index(name) if rule.stacked else None)
    assert rule_for_hf_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None


@pytest.mark.parametrize("arch, name", [(gguf.MODEL_ARCH.LLAMA, "llama_untied_head_dim"),
                                        (gguf.MODEL_ARCH.QWEN2, "qwen2_tied_biases"),
                                        (gguf.MODEL_ARCH.QWEN3, "qwen3_qk_norm"),
                                        (gguf.MODEL_ARCH.PHI3, "phi3_fused"),
                                        (gguf.MODEL_ARCH.GEMMA3, "gemma3_sandwich_norms")])
def test_gguf_names_match_llama_cpp_name_map(arch, name):
    hf_names = list(_torch_shapes(TORCH_CONFIGS[name]))
    llama_cpp_map = gguf.get_tensor_name_map(arch, TINY["num_hidden_layers"])
    for hf_name in hf_names:
        gguf_name = llama_cpp_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, hf_name
        assert hf_name_from_gguf(gguf_name, gguf.MODEL_ARCH_NAMES[arch]) == hf_name
    assert hf_name_from_gguf("rope_freqs.weight") is None


@pytest.mark.parametrize("num_heads, head_dim, trailing", [(1, 4, ()), (3, 8, (5,)), (2, 6, (7,))])
def test_unpermute_inverts_llama_cpp_interleaving(num_heads, head_dim, trailing):
    hf = np.random.default_rng(2).standard_normal((num_heads * head_dim, *trailing))
    # llama.cpp row order: within each head, HF rows i and i + head_dim/2 (a RoPE pair) become rows 2i and 2i+1.
    gguf_rows = np.empty_like(hf)
    for h in range(num_heads):
        for i in range(head_dim // 2):
            gguf_rows[h * head_dim + 2 * i] = hf[h * head_dim + i]
            gguf_rows[h * head_dim + 2 * i + 1] = hf[h * head_dim + head_dim // 2 + i]
    np.testing.assert_array_equal(unpermute_gguf_rows(gguf_rows, num_heads), hf)


def test_unpermute_rejects_rows_not_divisible_by_heads():
    with pytest.raises(ValueError, match="multiple of 2 \\* num_heads"):
        unpermute_gguf_rows(np.zeros((12, 3)), num_heads=4)
