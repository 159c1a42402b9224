"""Token ids and loss masks: an Example's response and EOS, a Conversation's trained assistant turns, a Text's
every token after the first.

Prompt and target pieces are encoded separately and concatenated, so the mask boundaries are exact and the prompt
ids are the same ones evaluation feeds to generation (`encode_prompts`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from lowrank_jax.data.answers import final_answer_span
from lowrank_jax.data.chat import conversation_pieces, generation_prompt
from lowrank_jax.data.example import Conversation, Example, Text
from lowrank_jax.data.template import render_prompt, uses_chat_template

TARGETS = ("response", "final_answer")
OVERFLOWS = ("truncate", "drop")


class TokenizedExample(NamedTuple):
    """One example's tokens: `input_ids` (n,) int32 and `loss_mask` (n,) bool (True on target tokens)."""

    input_ids: np.ndarray
    loss_mask: np.ndarray


def pad_id(tokenizer) -> int:
    """The id that fills padding positions: the tokenizer's pad token, else 0 (padding is always masked out)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def encode_prompts(queries: Sequence[str | Sequence[Mapping[str, str]]], tokenizer, template: str = "alpaca"
                   ) -> list[list[int]]:
    """Prompt token ids, exactly as training sees them before the response.

    The tokenizer's own special tokens (e.g. Llama's BOS) are added for text templates; a chat template's text
    already contains them.

    Args:
      queries: problems / instructions (rendered with `template`), or chat messages (a Conversation's
        `prompt_and_reference()[0]`, rendered with the chat template and its generation prompt).
      tokenizer: a `transformers` tokenizer (callable on a list of texts, `add_special_tokens=`).
      template: see `render_prompt`.
    """
    ids = [None] * len(queries)
    texts = [i for i, q in enumerate(queries) if isinstance(q, str)]
    chats = [i for i, q in enumerate(queries) if not isinstance(q, str)]
    for group, prompts, special in (
            (texts, [render_prompt(queries[i], template, tokenizer) for i in texts],
             not uses_chat_template(template)),
            (chats, [generation_prompt(queries[i], tokenizer) for i in chats], False)):
        for i, prompt_ids in zip(group, tokenizer(prompts, add_special_tokens=special)["input_ids"] if group else []):
            ids[i] = prompt_ids
    return ids


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


def _encode_examples(examples: Sequence[Example], tokenizer, template: str, target: str, eos: int
                     ) -> list[tuple[list[int], list[bool]]]:
    prompt_ids = encode_prompts([e.query for e in examples], tokenizer, template)
    response_ids, response_masks = _response_masks([e.response for e in examples], tokenizer, target)
    return [([*prompt, *response, eos], [False] * len(prompt) + response_mask + [target == "response"])
            for prompt, response, response_mask in zip(prompt_ids, response_ids, response_masks)]


def _encode_conversations(conversations: Sequence[Conversation], tokenizer) -> list[tuple[list[int], list[bool]]]:
    """The chat template's tokens (it writes the end-of-turn marker, so no EOS is added), every piece of every
    conversation encoded in one tokenizer call."""
    pieces = [conversation_pieces(c, tokenizer) for c in conversations]
    piece_ids = iter(tokenizer([text for p in pieces for text, _ in p], add_special_tokens=False)["input_ids"])
    encoded = []
    for conversation in pieces:
        ids, mask = [], []
        for _, is_target in conversation:
            piece = next(piece_ids)
            ids += piece
            mask += [is_target] * len(piece)
        encoded.append((ids, mask))
    return encoded


def _encode_texts(texts: Sequence[Text], tokenizer, eos: int) -> list[tuple[list[int], list[bool]]]:
    """Text + EOS with the tokenizer's special tokens (e.g. BOS); the first token is never a target, so a packed
    document is not predicted from the one before it."""
    encoded = tokenizer([t.text for t in texts])["input_ids"]
    return [([*ids, eos], [False] + [True] * len(ids)) for ids in encoded]


def tokenize_examples(examples: Sequence[Example | Conversation | Text], tokenizer, *, max_length: int,
                      template: str = "alpaca", overflow: str = "truncate", target: str = "response"
                      ) -> list[TokenizedExample]:
    """Encodes each item with its loss mask: an Example as `prompt + response + EOS` (loss on the response and
    EOS), a Conversation through the chat template (loss on its trained assistant turns and their end-of-turn
    markers), a Text as `text + EOS` (loss on every token after the first).

    Args:
      examples: Examples, Conversations and/or Texts.
      tokenizer: a `transformers` tokenizer with `eos_token_id` (fast, for target='final_answer'; with a chat
        template, for Conversations).
      max_length: longest sequence kept (the batch's T).
      template: the prompt template of Examples, see `render_prompt` (Conversations always use the chat template).
      overflow: longer sequences are 'truncate'd (the end cut off; dropped if no target token is left) or
        'drop'ped.
      target: 'response' (every target token, for training) or 'final_answer' (only the tokens of the number after
        `####` of an Example's response, for the answer-token loss).

    Returns:
      TokenizedExamples in input order, minus dropped ones (the count is logged).

    Raises:
      ValueError: bad option, no EOS token, target='final_answer' for a non-Example, or every example dropped.
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
    if target == "final_answer" and not all(isinstance(e, Example) for e in examples):
        raise ValueError("target='final_answer' scores the number after '####' of query/response Examples; "
                         "conversations and plain texts have no such answer")
    encoded: list = [None] * len(examples)
    for kind, encode in ((Example, lambda group: _encode_examples(group, tokenizer, template, target, eos)),
                         (Text, lambda group: _encode_texts(group, tokenizer, eos)),
                         (Conversation, lambda group: _encode_conversations(group, tokenizer))):
        indices = [i for i, e in enumerate(examples) if isinstance(e, kind)]
        for i, ids_and_mask in zip(indices, encode([examples[i] for i in indices]) if indices else []):
            encoded[i] = ids_and_mask
    tokenized, truncated = [], 0
    for ids, mask in encoded:
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
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
