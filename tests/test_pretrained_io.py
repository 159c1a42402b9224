"""load_pretrained / save_pretrained against transformers' PyTorch models: HF directories written by transformers
(single file and sharded), GGUF files written in llama.cpp's convention, exact round trips, and bad input.

Random models with weights ~ N(0, 0.2²) and 64 tokens, so a mis-mapped or mis-permuted tensor shows far above 1e-4.
"""

import json
import os
import shutil

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from lowrank_jax.models import load_pretrained, safetensors_io, save_pretrained

TOL = 1e-4
SEQ = 64
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
# Keyed by llama.cpp's GGUF architecture name.
TORCH_CONFIGS = {
    "llama": transformers.LlamaConfig(**TINY, head_dim=24, rope_theta=5e5, rms_norm_eps=1e-5,
                                      tie_word_embeddings=False),
    "qwen2": transformers.Qwen2Config(**TINY, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen3": transformers.Qwen3Config(**TINY, head_dim=24, rope_theta=1e6, rms_norm_eps=1e-6,
                                      tie_word_embeddings=True),
    "phi3": transformers.Phi3Config(**TINY, sliding_window=16, pad_token_id=None, tie_word_embeddings=False),
    # llama.cpp's Gemma 3 defaults: every 6th layer global (none of 2 here), queries scaled by head_dim ** -0.5.
    "gemma3": transformers.Gemma3TextConfig(**TINY, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                                            final_logit_softcapping=None),
}


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    with jax.default_matmul_precision("highest"):
        yield


def random_torch_model(torch_config, seed=0):
    """A transformers causal LM with weights ~ N(0, 0.2²) and norm scales 1 + N(0, 0.2²) (Gemma's (1 + w) norms:
    w ~ N(0, 0.2²))."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(torch_config).eval()
    norm_offset = 0.0 if torch_config.model_type == "gemma3_text" else 1.0
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (norm_offset if "norm" in name else 0.0))
    return model


def torch_logits(model, input_ids):
    with torch.no_grad():
        return model(torch.as_tensor(input_ids)).logits.numpy()


def jax_logits(model, input_ids):
    return np.asarray(model(jnp.asarray(input_ids)))


def saved_state_dict(model) -> dict:
    """The tensors transformers saves (a tied lm_head is the embedding and is not saved)."""
    state = {name: t.detach().numpy() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]
    return state


def all_leaves(model) -> dict:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model))}


def assert_same_leaves(a, b):
    leaves_a, leaves_b = all_leaves(a), all_leaves(b)
    assert leaves_a.keys() == leaves_b.keys()
    for path in leaves_a:
        assert leaves_a[path].dtype == leaves_b[path].dtype, path
        np.testing.assert_array_equal(leaves_a[path], leaves_b[path], err_msg=str(path))


def llama_cpp_permute(weights, num_heads):
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`: HF split-half RoPE rows -> interleaved rows."""
    return (weights.reshape(num_heads, 2, weights.shape[0] // num_heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_llama_cpp_gguf(path, torch_model, arch):
    """Writes `torch_model` as llama.cpp's converter would: its tensor names and metadata keys (via the gguf
    package's own name map and writer), Q/K rows permuted for arch `llama`, Gemma's norm weights stored as 1 + w,
    embeddings F16, MLP weights Q8_0, the rest F32.

    Returns:
        The HF state dict as the file holds it (after F16 / Q8_0 rounding), in HF row order.
    """
    cfg = torch_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(global_rope_theta(cfg))
    if getattr(cfg, "sliding_window", None) is not None:
        writer.add_sliding_window(cfg.sliding_window)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(cfg.vocab_size)])
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    held = {}
    for hf_name, weights in saved_state_dict(torch_model).items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if ".mlp." in hf_name:
            quantized = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            held[hf_name] = gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q8_0)
            continue
        if "embed_tokens" in hf_name:
            weights = weights.astype(np.float16)
        held[hf_name] = weights.astype(np.float32)
        if arch == "gemma3" and "norm" in hf_name:
            weights = weights + np.float32(1.0)
        if arch == "llama" and "q_proj" in hf_name:
            weights = llama_cpp_permute(weights, cfg.num_attention_heads)
        elif arch == "llama" and "k_proj" in hf_name:
            weights = llama_cpp_permute(weights, cfg.num_key_value_heads)
        writer.add_tensor(gguf_name, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


def global_rope_theta(torch_config) -> float:
    params = torch_config.rope_parameters
    return params.get("full_attention", params)["rope_theta"]


@pytest.fixture(scope="module")
def input_ids():
    return np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, SEQ))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Per architecture: a random transformers model, and its save_pretrained directories (single, sharded)."""
    dirs = {}
    for arch, torch_config in TORCH_CONFIGS.items():
        torch_model = random_torch_model(torch_config)
        single, sharded = tmp_path_factory.mktemp(f"{arch}_single"), tmp_path_factory.mktemp(f"{arch}_sharded")
        torch_model.save_pretrained(single)
        torch_model.save_pretrained(sharded, max_shard_size="40KB")
        dirs[arch] = dict(torch_model=torch_model, single=single, sharded=sharded)
    return dirs


@pytest.fixture(scope="module", params=list(TORCH_CONFIGS))
def reference(request, hf_dirs, input_ids):
    """One architecture's directories, the model loaded from the single file, and transformers' logits."""
    ref = dict(hf_dirs[request.param])
    ref["model"], ref["config"] = load_pretrained(ref["single"])
    ref["logits"] = torch_logits(ref["torch_model"], input_ids)
    return ref


def test_hf_directory_matches_transformers_logits(reference, input_ids):
    config, torch_config = reference["config"], reference["torch_model"].config
    assert (config.model_type, config.num_key_value_heads, config.tie_word_embeddings) == (
        torch_config.model_type, torch_config.num_key_value_heads, torch_config.tie_word_embeddings)
    error = np.abs(jax_logits(reference["model"], input_ids) - reference["logits"]).max()
    assert error <= TOL, error


def test_sharded_hf_directory_loads_the_same_parameters(reference):
    assert os.path.exists(reference["sharded"] / safetensors_io.INDEX_FILE)
    assert len(list(reference["sharded"].glob("model-*.safetensors"))) > 2
    sharded_model, sharded_config = load_pretrained(reference["sharded"])
    assert sharded_config == reference["config"]
    assert_same_leaves(sharded_model, reference["model"])


def test_saved_directory_loads_in_transformers_with_the_same_weights(reference, tmp_path, input_ids):
    save_pretrained(reference["model"], tmp_path / "saved")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert type(reloaded) is type(reference["torch_model"])
    original = saved_state_dict(reference["torch_model"])
    assert saved_state_dict(reloaded).keys() == original.keys()
    for name, weights in saved_state_dict(reloaded).items():
        np.testing.assert_array_equal(weights, original[name], err_msg=name)
    np.testing.assert_array_equal(torch_logits(reloaded, input_ids), reference["logits"])


@pytest.mark.parametrize("param_dtype", ["float32", jnp.bfloat16], ids=["float32", "bfloat16"])
def test_load_save_load_is_exact(reference, tmp_path, param_dtype):
    model, config = load_pretrained(reference["single"], param_dtype=param_dtype)
    param_dtype = jnp.dtype(param_dtype).name  # a name or a dtype may be given
    assert {leaf.dtype.name for leaf in all_leaves(model).values()} == {param_dtype}
    written = save_pretrained(model, tmp_path / "out", max_shard_bytes=60_000)
    assert safetensors_io.INDEX_FILE in written and len(written) > 3
    again, again_config = load_pretrained(tmp_path / "out", param_dtype=param_dtype)
    assert again_config == config
    assert_same_leaves(again, model)
    with open(tmp_path / "out" / "config.json") as f:
        assert json.load(f)["dtype"] == param_dtype


@pytest.mark.parametrize("arch", list(TORCH_CONFIGS))
def test_gguf_in_llama_cpp_convention_matches_transformers(arch, tmp_path, input_ids):
    torch_model = random_torch_model(TORCH_CONFIGS[arch], seed=1)
    held = write_llama_cpp_gguf(str(tmp_path / "tiny.gguf"), torch_model, arch)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in held.items()}, strict=False)
    torch_model.tie_weights()

    model, config = load_pretrained(tmp_path / "tiny.gguf")

    cfg = torch_model.config
    assert (config.model_type, config.head_dim, config.num_key_value_heads, config.tie_word_embeddings) == (
        cfg.model_type, getattr(cfg, "head_dim", None) or 16, cfg.num_key_value_heads, cfg.tie_word_embeddings)
    assert (config.rope_theta, config.bos_token_id, config.eos_token_id) == (global_rope_theta(cfg), 1, 2)
    assert (config.sliding_window, config.layer_types) == (
        getattr(cfg, "sliding_window", None), None if config.sliding_window is None else (
            tuple(getattr(cfg, "layer_types", None) or ["sliding_attention"] * cfg.num_hidden_layers)))
    error = np.abs(jax_logits(model, input_ids) - torch_logits(torch_model, input_ids)).max()
    assert error <= TOL, error
    same_file_by_name, _ = load_pretrained(tmp_path, gguf_file="tiny.gguf")
    assert_same_leaves(same_file_by_name, model)


def test_save_into_existing_directory_replaces_weights_and_keeps_other_files(reference, tmp_path):
    target = tmp_path / "ckpt"
    save_pretrained(reference["model"], target)
    (target / "tokenizer.json").write_text("{}")
    save_pretrained(reference["model"], target, max_shard_bytes=60_000)
    assert not (target / safetensors_io.SINGLE_FILE).exists()
    assert (target / safetensors_io.INDEX_FILE).exists() and (target / "tokenizer.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging directory left behind
    assert_same_leaves(load_pretrained(target)[0], reference["model"])


def test_failed_save_leaves_existing_directory_untouched(reference, tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    save_pretrained(reference["model"], target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors_io, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(reference["model"], target, max_shard_bytes=60_000)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_with_a_config_of_another_shape_is_refused(reference, tmp_path):
    wrong = reference["config"].replace(intermediate_size=96)
    with pytest.raises(ValueError, match=r"layers\.mlp\.down_proj\.kernel has shape \(2, 128, 64\) but the config "
                                         r"needs \(2, 96, 64\)"):
        save_pretrained(reference["model"], tmp_path / "out", config=wrong)
    assert not (tmp_path / "out").exists()


# Bad input: each is detected before any tensor is read, and names the file or tensor.

@pytest.fixture
def llama_copy(hf_dirs, tmp_path):
    return shutil.copytree(hf_dirs["llama"]["single"], tmp_path / "copy")


def rewrite_weights(directory, change):
    path = directory / safetensors_io.SINGLE_FILE
    tensors = safetensors.numpy.load_file(path)
    change(tensors)
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def test_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such checkpoint directory or .gguf file"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="absent.gguf: GGUF file not found"):
        load_pretrained(tmp_path / "absent.gguf")


def test_missing_config_json_is_named(llama_copy):
    os.remove(llama_copy / "config.json")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_pretrained(llama_copy)


def test_missing_weights_are_named(llama_copy):
    os.remove(llama_copy / safetensors_io.SINGLE_FILE)
    with pytest.raises(FileNotFoundError, match="has no model.safetensors or model.safetensors.index.json"):
        load_pretrained(llama_copy)


def test_missing_shard_is_named(hf_dirs, tmp_path):
    copy = shutil.copytree(hf_dirs["llama"]["sharded"], tmp_path / "copy")
    shard = sorted(copy.glob("model-*.safetensors"))[1]
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match=f"{shard.name}: safetensors file not found"):
        load_pretrained(copy)


def test_unknown_model_type_is_named(llama_copy):
    hf_config = json.loads((llama_copy / "config.json").read_text())
    (llama_copy / "config.json").write_text(json.dumps({**hf_config, "model_type": "gpt_neox"}))
    with pytest.raises(ValueError, match="config.json: model_type='gpt_neox' is not supported"):
        load_pretrained(llama_copy)


def test_wrong_tensor_shape_is_named(llama_copy):
    def transpose_up_proj(tensors):
        name = "model.layers.1.mlp.up_proj.weight"
        tensors[name] = np.ascontiguousarray(tensors[name].T)

    rewrite_weights(llama_copy, transpose_up_proj)
    with pytest.raises(ValueError, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight has shape \(64, 128\), "
                                         r"but the config needs \(128, 64\)"):
        load_pretrained(llama_copy)


def test_missing_tensor_is_named(llama_copy):
    rewrite_weights(llama_copy, lambda t: t.pop("model.layers.1.post_attention_layernorm.weight"))
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*model\.layers\.1\.post_attention_layernorm\.weight"):
        load_pretrained(llama_copy)


def test_unexpected_tensor_is_named(llama_copy):
    rewrite_weights(llama_copy, lambda t: t.update({"model.layers.0.mlp.up_proj.bias": np.zeros(128, np.float32)}))
    with pytest.raises(ValueError, match=r"no place for.*model\.layers\.0\.mlp\.up_proj\.bias"):
        load_pretrained(llama_copy)


def test_truncated_safetensors_is_named(llama_copy):
    path = llama_copy / safetensors_io.SINGLE_FILE
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="model.safetensors: unreadable safetensors file \\(truncated"):
        load_pretrained(llama_copy)


def test_truncated_gguf_is_named(hf_dirs, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_llama_cpp_gguf(str(path), hf_dirs["llama"]["torch_model"], "llama")
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="tiny.gguf: unreadable GGUF file \\(truncated"):
        load_pretrained(path)


def test_unsupported_gguf_architecture_is_named(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "gemma")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="other.gguf: GGUF architecture 'gemma' is not supported"):
        load_pretrained(tmp_path / "other.gguf")


def test_unknown_keyword_is_named(hf_dirs):
    with pytest.raises(TypeError, match=r"unknown keyword arguments \['scan'\]"):
        load_pretrained(hf_dirs["llama"]["single"], scan=False)
