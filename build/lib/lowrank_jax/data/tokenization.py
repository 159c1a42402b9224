"""Token ids and loss masks of prompt + response examples: the loss covers the response tokens and EOS only.

Prompt and response are encoded separately and concatenated, so the mask boundary is exact and the prompt ids are
the same ones evaluation feeds to generation (`encode_prompts`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lowrank_jax.data.example import Example
from lowrank_jax.data.template import render_prompt, uses_chat_template
from lowrank_jax.evaluation.answers import final_answer_span

TARGETS = ("response", "final_answer")
OVERFLOWS = ("truncate", "drop")


class TokenizedExample(NamedTuple):
    """One example's tokens: `input_ids` (n,) int32 and `loss_mask` (n,) bool (True on target tokens)."""

    input_ids: np.ndarray
    loss_mask: np.ndarray


def pad_id(tokenizer) -> int:
    """The id that fills padding positions: the tokenizer's pad token, else 0 (padding is always masked out)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def encode_prompts(queries: Sequence[str], tokenizer, template: str = "alpaca") -> list[list[int]]:
    """Prompt token ids, exactly as training sees them before the response.

    The tokenizer's own special tokens (e.g. Llama's BOS) are added for text templates; a chat template's text
    already contains them.

    Args:
      queries: problems / instructions.
      tokenizer: a `transformers` tokenizer (callable on a list of texts, `add_special_tokens=`).
      template: see `render_prompt`.
    """
    prompts = [render_prompt(q, template, tokenizer) for q in queries]
    return tokenizer(prompts, add_special_tokens=not uses_chat_template(template))["input_ids"]


def _response_masks(responses: Sequence[str], tokenizer, target: str) -> tuple[list[list[int]], list[list[bool]]]:
    """Response token ids and which of them are targets: all of them, or those covering the final answer."""
    if target == "response":
        ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
        return ids, [[True] * len(r) for r in ids]
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("target='final_answer' needs character offsets, which only fast (Rust) tokenizers give")
    encoded = tokenizer(list(responses), add_special_tokens=False, return_offsets_mapping=True)
    masks = []
    for response, offsets in zip(responses, encoded["offset_mapping"]):
        start, end = final_answer_span(response)
        masks.append([token_start < end and token_end > start for token_start, token_end in offsets])
    return encoded["input_ids"], masks


def tokenize_examples(examples: Sequence[Example], tokenizer, *, max_length: int, template: str = "alpaca",
                      overflow: str = "truncate", target: str = "response") -> list[TokenizedExample]:
    """Encodes `prompt + response + EOS` per example, with the loss mask on the response and EOS.

    Args:
      examples: the Examples.
      tokenizer: a `transformers` tokenizer with `eos_token_id` (fast, for target='final_answer').
      max_length: longest sequence kept (the batch's T).
      template: see `render_prompt`.
      overflow: longer sequences are 'truncate'd (prompt kept, response cut; dropped if no response token fits)
        or 'drop'ped.
      target: 'response' (every response token + EOS, for training) or 'final_answer' (only the tokens of the
        number after `####`, for the answer-token loss).

    Returns:
      TokenizedExamples in input order, minus dropped ones (the count is logged).

    Raises:
      ValueError: bad option, no EOS token, or every example dropped.
    """
    if overflow not in OVERFLOWS or target not in TARGETS:
        raise ValueError(f"overflow={overflow!r} / target={target!r}: choose overflow from {OVERFLOWS}, target from "
                         f"{TARGETS}")
    if not examples:
        raise ValueError("no examples to tokenize: the split is empty")
    if max_length < 2:
        raise ValueError(f"max_length={max_length} leaves no room for a prompt and a response token")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token before tokenizing")
    prompt_ids = encode_prompts([e.query for e in examples], tokenizer, template)
    response_ids, response_masks = _response_masks([e.response for e in examples], tokenizer, target)
    tokenized, truncated = [], 0
    for prompt, response, response_mask in zip(prompt_ids, response_ids, response_masks):
        ids = np.asarray([*prompt, *response, eos], np.int32)
        mask = np.asarray([False] * len(prompt) + response_mask + [target == "response"], bool)
        if len(ids) > max_length:
            if overflow == "drop" or not mask[:max_length].any():
                continue
            ids, mask, truncated = ids[:max_length], mask[:max_length], truncated + 1
        tokenized.append(TokenizedExample(ids, mask))
    if not tokenized:
        raise ValueError(f"all {len(examples)} examples are longer than max_length={max_length} (overflow="
                         f"{overflow!r}); raise data.max_length")
    dropped = len(examples) - len(tokenized)
    if dropped or truncated:
        logging.warning("tokenize_examples: %d of %d examples longer than max_length=%d: %d dropped, %d truncated",
                        dropped + truncated, len(examples), max_length, dropped, truncated)
    return tokenized
