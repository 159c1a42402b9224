"""LlamaConfig against transformers' configs: reading both rope layouts, writing dicts transformers loads, and
clear errors for variants the model does not compute.
"""

import json

import jax
import pytest
import transformers

from lowrank_jax.models import LlamaConfig

SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=8192)
TRANSFORMERS_CONFIGS = {
    "llama3": (transformers.LlamaConfig, dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=True,
                                              rope_parameters=dict(LLAMA3, rope_theta=5e5),
                                              max_position_embeddings=131072, eos_token_id=[7, 9])),
    "llama2": (transformers.LlamaConfig, dict(rms_norm_eps=1e-5)),
    "mistral": (transformers.MistralConfig, dict(num_key_value_heads=2, sliding_window=None,
                                                 rope_parameters=dict(rope_type="default", rope_theta=1e6))),
    "qwen2": (transformers.Qwen2Config, dict(num_key_value_heads=1, tie_word_embeddings=True, pad_token_id=3,
                                             rope_parameters=dict(rope_type="default", rope_theta=1e6))),
    "mistral_sliding": (transformers.MistralConfig, dict(num_key_value_heads=2, sliding_window=4096)),
    "qwen2_sliding": (transformers.Qwen2Config, dict(num_key_value_heads=4, use_sliding_window=True, sliding_window=64,
                                                     max_window_layers=1)),
    "qwen3": (transformers.Qwen3Config, dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)),
    "phi3": (transformers.Phi3Config, dict(num_key_value_heads=2, sliding_window=2047, pad_token_id=None)),
    "gemma3": (transformers.Gemma3TextConfig, dict(num_key_value_heads=1, head_dim=32, sliding_window=512,
                                                   query_pre_attn_scalar=24, final_logit_softcapping=30.0,
                                                   sliding_window_pattern=2)),
}


@pytest.mark.parametrize("name", list(TRANSFORMERS_CONFIGS))
def test_reads_transformers_configs_and_writes_dicts_transformers_loads(name, tmp_path):
    hf_class, kwargs = TRANSFORMERS_CONFIGS[name]
    reference = hf_class(**SHAPE, **kwargs)
    cfg = LlamaConfig.from_hf(reference.to_dict())
    assert (cfg.model_type, cfg.attention_bias) == (reference.model_type, name.startswith("qwen2"))
    assert cfg.num_key_value_heads == reference.num_key_value_heads
    assert cfg.head_dim == kwargs.get("head_dim", SHAPE["hidden_size"] // SHAPE["num_attention_heads"])
    assert cfg.rope_theta == reference.rope_parameters.get("full_attention", reference.rope_parameters)["rope_theta"]
    assert cfg.sliding_window == getattr(reference, "sliding_window", None)
    reference_layer_types = getattr(reference, "layer_types", None) or (
        ["sliding_attention"] * SHAPE["num_hidden_layers"] if cfg.sliding_window else None)
    assert cfg.layer_types == (tuple(reference_layer_types) if cfg.sliding_window else None)
    assert cfg.rope_scaling == (LLAMA3 if name == "llama3" else None)
    assert cfg.tie_word_embeddings == reference.tie_word_embeddings
    assert cfg.rms_norm_eps == reference.rms_norm_eps and cfg.pad_token_id == reference.pad_token_id
    assert cfg.eos_token_ids == tuple(kwargs.get("eos_token_id", [reference.eos_token_id] * (
        reference.eos_token_id is not None)))

    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is hf_class
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
                  "rope_parameters", "bos_token_id", "eos_token_id", "pad_token_id"):
        expected = getattr(reference, field) if hasattr(reference, field) else cfg.head_dim  # Qwen2: no head_dim
        assert getattr(loaded, field) == expected, field
    for field in ("sliding_window", "layer_types", "query_pre_attn_scalar", "final_logit_softcapping",
                  "hidden_activation", "use_sliding_window"):
        assert getattr(loaded, field, None) == getattr(reference, field, None), field
    assert LlamaConfig.from_hf(loaded.to_dict()) == cfg


def test_old_rope_layout_reads_like_rope_parameters():
    base = dict(SHAPE, model_type="llama")
    old = LlamaConfig.from_hf(dict(base, rope_theta=5e5, rope_scaling=LLAMA3))
    legacy_key = LlamaConfig.from_hf(dict(base, rope_theta=5e5, rope_scaling={
        "type": "llama3", **{k: v for k, v in LLAMA3.items() if k != "rope_type"}}))
    new = LlamaConfig.from_hf(dict(base, rope_parameters=dict(LLAMA3, rope_theta=5e5)))
    assert old == new == legacy_key and new.rope_scaling == LLAMA3 and new.rope_theta == 5e5
    assert LlamaConfig.from_hf(base).rope_theta == 10000.0  # transformers' default when the key is absent


def test_runtime_fields_and_hashing():
    hf = dict(SHAPE, model_type="llama")
    cfg = LlamaConfig.from_hf(hf, dtype="bfloat16", scan_layers=False, remat="dots_saveable")
    assert (cfg.dtype, cfg.param_dtype, cfg.scan_layers, cfg.remat) == ("bfloat16", "float32", False, "dots_saveable")
    same = LlamaConfig.from_hf(hf, dtype="bfloat16", scan_layers=False, remat="dots_saveable")
    assert same == cfg and hash(same) == hash(cfg) and hash(cfg.replace(dtype="float32")) != hash(cfg)
    traced_with = jax.jit(lambda x, c: x * c.num_query_groups, static_argnums=1)
    assert int(traced_with(2, cfg)) == 2


@pytest.mark.parametrize("change, message", [
    (dict(model_type="gemma"), "supported model types"),
    (dict(model_type=None), "supported model types"),
    (dict(model_type="qwen3_moe"), "mixture-of-experts"),
    (dict(model_type="mixtral"), "mixture-of-experts"),
    (dict(model_type="qwen2", layer_types=["full_attention", "sliding_attention"]), "use_sliding_window is false"),
    (dict(model_type="mistral", sliding_window=8, layer_types=["full_attention", "sliding_attention"]),
     "applies sliding_window to every layer"),
    (dict(model_type="qwen3", attention_bias=True), "attention_bias=True for model_type 'qwen3'"),
    (dict(model_type="phi3", resid_pdrop=0.1), "resid_pdrop"),
    (dict(model_type="phi3", rope_parameters=dict(rope_type="longrope", rope_theta=1e4)), "'longrope' is not"),
    (dict(model_type="phi3", partial_rotary_factor=0.75), "partial_rotary"),
    (dict(model_type="gemma3_text", attn_logit_softcapping=50.0), "attn_logit_softcapping"),
    (dict(model_type="gemma3_text", hidden_activation="gelu"), "hidden_activation"),
    (dict(model_type="gemma3_text", use_bidirectional_attention=True), "use_bidirectional_attention"),
    (dict(model_type="gemma3_text", rope_parameters=dict(
        full_attention=dict(rope_type="yarn", factor=8.0, rope_theta=1e6),
        sliding_attention=dict(rope_type="default", rope_theta=1e4))), "'yarn' is not supported"),
    (dict(rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=1e4)), "'yarn' is not supported"),
    (dict(rope_scaling=dict(type="dynamic", factor=2.0)), "'dynamic' is not supported"),
    (dict(rope_scaling=dict(type="linear")), "linear rope scaling needs a factor"),
    (dict(rope_parameters=dict(rope_type="llama3", factor=8.0, rope_theta=1e4)), "lacks"),
    (dict(rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.5)), "partial_rotary"),
    (dict(attention_bias=True), "o_proj"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "silu"),
    (dict(attention_dropout=0.1), "attention_dropout"),
    (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
    (dict(vocab_size=None), "lacks required keys"),
    (dict(head_dim=7), "even"),
])
def test_unsupported_hf_configs_raise_naming_what_is_supported(change, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig.from_hf(dict(SHAPE, model_type="llama") | change)


@pytest.mark.parametrize("fields, message", [
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(remat="everything"), "remat"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(attention_impl="cudnn"), "bfloat16"),
    (dict(model_type="qwen2"), "attention_bias"),
    (dict(hidden_size=0), "hidden_size"),
])
def test_invalid_runtime_or_architecture_fields_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**(SHAPE | fields))


def test_from_hf_rejects_architecture_overrides():
    with pytest.raises(ValueError, match="only .*dtype"):
        LlamaConfig.from_hf(dict(SHAPE, model_type="llama"), hidden_size=32)

