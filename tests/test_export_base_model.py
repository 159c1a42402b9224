"""The base model an exported adapter names: the user's Hugging Face id, an HF path as given, or (for a GGUF file
that does not record its source) the file itself with a warning that names the setting to fix it."""

import pytest

from lowrank_jax.export import hf_base_model
from lowrank_jax.training.model_source import EMBEDDED_HF_NAME, embedded_gguf, hf_name
from configs import lora_llama


def test_gguf_without_source_metadata_warns_and_names_the_setting():
    path = embedded_gguf()
    with pytest.warns(UserWarning, match="model.hf_name"):
        assert hf_base_model(path) == path
    assert hf_base_model(path, "HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_run_configs_name_the_embedded_models_hub_id_and_let_the_user_set_another():
    config = lora_llama.get_config("embedded")
    assert hf_name(config.model) == EMBEDDED_HF_NAME
    config.model.hf_name = "me/my-base"
    assert hf_name(config.model) == "me/my-base"
    config.model.update(path="/models/llama", hf_name="")
    assert hf_name(config.model) == "" and hf_base_model("/models/llama", "") == "/models/llama"
