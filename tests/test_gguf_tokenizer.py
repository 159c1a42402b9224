"""The GGUF tokenizer cache: the first load converts (transformers' GGUF converter) and keeps an HF tokenizer
directory; later loads read it and tokenize, template and name special tokens exactly as the conversion does."""

import os

from lowrank_jax.models import gguf_tokenizer, load_tokenizer
from lowrank_jax.training.model_source import embedded_gguf

CHAT = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many now?"},
        {"role": "assistant", "content": "3 + 4 = 7.\n#### 7"}]


def test_second_load_reads_the_cache_and_equals_the_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_JAX_CACHE", str(tmp_path))
    path = embedded_gguf()
    converted = load_tokenizer(path)
    directory = gguf_tokenizer.cached_directory(path)
    assert os.path.isfile(os.path.join(directory, "tokenizer.json"))
    assert [name for name in os.listdir(os.path.dirname(directory)) if name.startswith(".saving-")] == []

    def no_conversion(_):
        raise AssertionError("converted again although the cache holds the tokenizer")

    monkeypatch.setattr(gguf_tokenizer, "convert", no_conversion)
    cached = load_tokenizer(path)
    text = CHAT[0]["content"] + " <|im_end|> Ünïcödé  spaces\n\ttabs"
    assert cached(text)["input_ids"] == converted(text)["input_ids"]
    assert cached.apply_chat_template(CHAT, tokenize=False) == converted.apply_chat_template(CHAT, tokenize=False)
    for role in ("bos", "eos", "pad"):
        assert getattr(cached, f"{role}_token_id") == getattr(converted, f"{role}_token_id"), role
    assert len(cached) == len(converted)


def test_an_unwritable_cache_still_loads(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("LOWRANK_JAX_CACHE", str(blocked))
    monkeypatch.setattr(gguf_tokenizer, "convert", lambda path: f"converted {os.path.basename(path)}")
    assert load_tokenizer(embedded_gguf()) == f"converted {os.path.basename(embedded_gguf())}"
    assert blocked.read_text() == "not a directory"


def test_a_rewritten_file_gets_a_new_cache_entry(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"one")
    first = gguf_tokenizer.cached_directory(str(gguf))
    os.utime(gguf, ns=(0, 10**9))
    assert gguf_tokenizer.cached_directory(str(gguf)) != first
