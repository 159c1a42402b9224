"""GSM8K-style evaluation of a model: greedy batched generation with the KV cache, exact-match accuracy, and the
answer-token loss (the loss of only the final-answer tokens of the reference solution, a smooth second metric).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence

import jax
import numpy as np

from lowrank_jax.data import Example, encode_prompts, evaluation_batches, pad_id, tokenize_examples
from lowrank_jax.evaluation.metrics import exact_match_accuracy, mean_loss_and_perplexity
from lowrank_jax.evaluation.token_loss_eval import mean_token_loss
from lowrank_jax.models import generate

PROMPT_BUCKET = 64  # prompts are left-padded to a multiple of this, so few shapes compile


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, bucket: int = PROMPT_BUCKET):
    """(batch, P) ids and attention mask with prompts right-aligned; P rounded up to `bucket`."""
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


def generate_answers(model, tokenizer, queries: Sequence[str], *, template: str, batch_size: int,
                     max_new_tokens: int) -> list[str]:
    """Greedy responses (decoded, special tokens dropped) to `queries`, `batch_size` prompts at a time."""
    pad = pad_id(tokenizer)
    eos = stop_ids(model, tokenizer)
    prompts = encode_prompts(queries, tokenizer, template)
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # fixed batch shape: one compile
        ids, mask = left_pad(chunk, pad)
        new = np.asarray(generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                  pad_token_id=pad))
        texts += tokenizer.batch_decode(new[:len(prompts) - start], skip_special_tokens=True)
    return texts[:len(prompts)]


def answer_token_loss(model, tokenizer, examples: Sequence[Example], *, template: str, max_length: int,
                      batch_size: int) -> tuple[float, float]:
    """Mean loss (nats) and perplexity of the reference final-answer tokens given the prompt and solution."""
    tokenized = tokenize_examples(examples, tokenizer, max_length=max_length, template=template,
                                  target="final_answer")
    batches = evaluation_batches(tokenized, global_batch_size=batch_size, seq_len=max_length, packing=True,
                                 pad_id=pad_id(tokenizer))
    mean, count = mean_token_loss(model, batches)
    return mean_loss_and_perplexity(mean * count, count)


def evaluate(model, tokenizer, examples: Sequence[Example], cfg, template: str,
             predictions_path: str | None = None) -> dict:
    """Accuracy and answer-token loss of `model` on the first `cfg.num_examples` examples.

    Args:
      model: a Llama (adapted or not); called in eval mode.
      tokenizer: its tokenizer.
      examples: problems with reference solutions (`#### n` or "The answer is: n").
      cfg: the config's `eval` block: `num_examples`, `batch_size`, `max_new_tokens`, `max_length`.
      template: the prompt template training used.
      predictions_path: if given, one JSON line per problem (query, generation, predicted, gold, correct).

    Returns:
      {'accuracy', 'correct', 'n', 'answer_loss', 'answer_perplexity', 'seconds'}.
    """
    if not examples:
        raise ValueError("no evaluation examples: set data.test (or use a source with a test split)")
    examples = list(examples[:cfg.num_examples])
    model.eval()
    start = time.perf_counter()
    texts = generate_answers(model, tokenizer, [e.query for e in examples], template=template,
                             batch_size=min(cfg.batch_size, len(examples)), max_new_tokens=cfg.max_new_tokens)
    scored = exact_match_accuracy(texts, [e.response for e in examples])
    loss, perplexity = answer_token_loss(model, tokenizer, examples, template=template, max_length=cfg.max_length,
                                         batch_size=min(cfg.batch_size, len(examples)))
    model.train()
    if predictions_path and jax.process_index() == 0:
        with open(predictions_path, "w") as f:
            for e, text, pred, gold in zip(examples, texts, scored.predicted, scored.gold):
                f.write(json.dumps({"query": e.query, "generation": text, "predicted": pred, "gold": gold,
                                    "correct": pred == gold}) + "\n")
    return {"accuracy": scored.accuracy, "correct": scored.correct, "n": scored.n, "answer_loss": loss,
            "answer_perplexity": perplexity, "seconds": time.perf_counter() - start}
