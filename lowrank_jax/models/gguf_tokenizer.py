"""The tokenizer of a GGUF file, converted once and kept as a Hugging Face tokenizer directory.

transformers rebuilds a GGUF's tokenizer from its vocabulary and merges on every load (about ten seconds for a
49k-token vocabulary on a laptop CPU). The first load saves the result under
`$LOWRANK_JAX_CACHE/tokenizers/<key>` (default `~/.cache/lowrank_jax`), the key naming the file's path, size and
modification time and the transformers version; later loads read that directory. Where the cache cannot be written
(a read-only home), every load converts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from lowrank_jax.models.gguf_io import open_gguf


def cache_root() -> str:
    """Where converted tokenizers are kept: $LOWRANK_JAX_CACHE, else ~/.cache/lowrank_jax."""
    return os.environ.get("LOWRANK_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lowrank_jax")


def cached_directory(gguf_path: str) -> str:
    """The cache directory of `gguf_path`'s tokenizer (it may not exist yet)."""
    import transformers

    stat = os.stat(gguf_path)
    identity = f"{os.path.realpath(gguf_path)}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    name = os.path.basename(gguf_path).removesuffix(".gguf")
    return os.path.join(cache_root(), "tokenizers", f"{name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}")


def convert(gguf_path: str):
    """transformers' tokenizer of the GGUF file, with bos / eos / pad the tokens the file's metadata names
    (`tokenizer.ggml.*_token_id`, as `load_pretrained`'s config has them), whatever the converter made of them."""
    from transformers import AutoTokenizer  # heavy import, only needed here

    directory, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    special_ids = open_gguf(gguf_path).hf_config
    for role in ("bos", "eos", "pad"):
        token_id = special_ids.get(f"{role}_token_id")
        if token_id is not None and getattr(tokenizer, f"{role}_token_id") != token_id:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    return tokenizer


def load_gguf_tokenizer(gguf_path: str):
    """The tokenizer of `gguf_path`: from the cache when converted before, else converted and cached.

    The cache is written to a temporary directory and renamed into place, so processes loading at once (test
    workers, the hosts of one run) never read a half-written tokenizer.
    """
    from transformers import AutoTokenizer

    directory = cached_directory(gguf_path)
    if os.path.isdir(directory):
        return AutoTokenizer.from_pretrained(directory)
    tokenizer = convert(gguf_path)
    try:
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".saving-", dir=os.path.dirname(directory))
    except OSError:  # an unwritable cache: this load converted, and so will the next
        return tokenizer
    try:
        tokenizer.save_pretrained(staging)
        os.rename(staging, directory)
    except OSError:  # another process cached it first, or the disk is full
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer
