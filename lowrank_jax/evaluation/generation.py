"""Batched greedy completions for evaluation: fixed-shape left-padded batches, stop sequences, progress, tokens/s.

Every batch has the same number of rows and a prompt width rounded up to `PROMPT_BUCKET`, so few programs compile.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from lowrank_jax.models import generate

PROMPT_BUCKET = 64  # prompts are left-padded to a multiple of this, so few shapes compile


class Completions(NamedTuple):
    """Decoded completions and what producing them cost."""

    texts: list[str]     # one per prompt, special tokens dropped, cut before the first stop sequence
    new_tokens: int      # tokens decoded for the prompts (each up to and including its EOS), batch filler excluded
    seconds: float       # wall time of generation and decoding, the first batch's compilation included

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, bucket: int = PROMPT_BUCKET):
    """(batch, P) ids and attention mask with prompts right-aligned; P rounded up to `bucket`.

    >>> ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, bucket=4)
    >>> ids.tolist(), mask.tolist()
    ([[0, 5, 6, 7], [0, 0, 0, 8]], [[0, 1, 1, 1], [0, 0, 0, 1]])
    """
    width = int(math.ceil(max(len(p) for p in prompts) / bucket) * bucket)
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def stop_ids(model, tokenizer) -> list[int]:
    """Every id that ends a generation: the model config's EOS ids and the tokenizer's EOS."""
    ids = model.config.eos_token_id
    ids = [] if ids is None else list(np.atleast_1d(ids))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted({int(i) for i in ids})


def cut_at_stop(text: str, stop_sequences: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop sequence.

    >>> cut_at_stop("    return x\\n\\ndef other():\\n    pass", ["\\nclass", "\\ndef"])
    '    return x\\n'
    """
    ends = [i for i in (text.find(s) for s in stop_sequences) if i >= 0]
    return text[:min(ends)] if ends else text


def decoded_lengths(new: np.ndarray, eos_ids: Sequence[int]) -> np.ndarray:
    """(batch,) number of tokens each row of (batch, max_new) `new` decoded: up to and including its first EOS.

    >>> decoded_lengths(np.array([[4, 2, 0, 0], [4, 5, 6, 7]]), eos_ids=[2]).tolist()
    [2, 4]
    """
    is_eos = np.isin(new, eos_ids)
    return np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, new.shape[1])


def balanced_rows(n: int, most: int) -> int:
    """Rows per call that split `n` prompts into as few calls of at most `most` rows as possible, with the least
    filler.

    >>> balanced_rows(1319, 256), balanced_rows(1319, 32), balanced_rows(10, 64)
    (220, 32, 10)
    """
    return -(-n // -(-n // most))


def _decode_continuation(tokenizer, prompt: Sequence[int], new: Sequence[int]) -> str:
    # Decoded with its prompt, then the prompt's text removed: SentencePiece tokenizers drop the leading space of
    # the first token decoded on its own, which would change code indentation.
    def text(ids):
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    return text([*prompt, *new])[len(text(prompt)):]


def generate_completions(model, tokenizer, prompts: Sequence[Sequence[int]], *, batch_size: int,
                         max_new_tokens: int, stop_sequences: Sequence[str] = (), pad_id: int = 0,
                         desc: str = "generating") -> Completions:
    """Greedy completions (KV cache) of tokenized `prompts`, `batch_size` at a time, with a progress bar.

    Args:
      model: a Llama (adapted or not), in eval mode.
      tokenizer: its `transformers` tokenizer (decodes; its EOS stops a row).
      prompts: token ids per prompt, special tokens included.
      batch_size: most rows per generate call. The prompts are split into ceil(n / batch_size) calls of equal rows
        (the last filled up with copies, so every call has one shape): 1,319 prompts at 256 take 6 calls of 220.
      max_new_tokens: decoding budget per prompt.
      stop_sequences: text cut at the first of these (e.g. "\\ndef" for code); decoding itself stops at EOS.
      pad_id: the id written into padding.
      desc: the progress bar's label.

    Returns:
      Completions(texts, new_tokens, seconds); `tokens_per_second` counts the prompts' decoded tokens.
    """
    from tqdm.auto import tqdm  # only the progress bar needs it

    if not prompts:
        raise ValueError("no prompts to complete: the evaluation set is empty")
    eos = stop_ids(model, tokenizer)
    texts, new_tokens = [], 0
    start = time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=jax.process_index() != 0)
    batch_size = balanced_rows(len(prompts), batch_size)
    for first in range(0, len(prompts), batch_size):
        chunk = list(prompts[first:first + batch_size])
        real = len(chunk)
        ids, mask = left_pad(chunk + [chunk[-1]] * (batch_size - real), pad_id)
        new = np.asarray(generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                  pad_token_id=pad_id))[:real]
        lengths = decoded_lengths(new, eos)
        new_tokens += int(lengths.sum())
        texts += [cut_at_stop(_decode_continuation(tokenizer, prompt, row[:n]), stop_sequences)
                  for prompt, row, n in zip(chunk, new, lengths)]
        bar.update(real)
        bar.set_postfix(tokens_per_s=f"{new_tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    return Completions(texts, new_tokens, time.perf_counter() - start)
