"""Exact-match evaluation of any question/answer dataset: greedy generation (KV cache), answers read by a chosen
extractor and compared with the references', and the loss of the reference tokens given the prompt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import jax

from lowrank_jax.data import Example, encode_prompts, pad_id
from lowrank_jax.evaluation.extractors import get_extractor
from lowrank_jax.evaluation.generation import generate_completions
from lowrank_jax.evaluation.metrics import exact_match_accuracy
from lowrank_jax.evaluation.token_loss_eval import response_loss

# The result key of each loss target: the whole response, or only a GSM8K-style final answer.
LOSS_NAMES = {"response": "response", "final_answer": "answer"}


def evaluate_exact_match(model, tokenizer, examples: Sequence[Example], *, extractor: str, template: str,
                         num_examples: int, batch_size: int, max_new_tokens: int, max_length: int,
                         stop_sequences: Sequence[str] = (), loss_target: str = "response",
                         predictions_path: str | None = None) -> dict:
    """Exact-match accuracy and reference-token loss of `model` on the first `num_examples` examples.

    Args:
      model: a Llama (adapted or not); put in eval mode for the evaluation, back in train mode after.
      tokenizer: its tokenizer.
      examples: (query, reference response) pairs.
      extractor: how answers are read from generations and references (`extractors.get_extractor`).
      template: the prompt template training used.
      num_examples: how many of `examples` to score (the first ones).
      batch_size: prompts per generate call / rows per loss batch.
      max_new_tokens: decoding budget per prompt.
      max_length: longest row of the loss batches.
      stop_sequences: generated text is cut at the first of these before the answer is read.
      loss_target: 'response' (every reference token) or 'final_answer' (GSM8K-style final-answer tokens only).
      predictions_path: if given, one JSON line per problem (query, generation, predicted, gold, correct).

    Returns:
      {'accuracy', 'correct', 'n', '<loss>_loss', '<loss>_perplexity', 'generated_tokens', 'tokens_per_second',
      'generation_seconds', 'seconds'} with <loss> 'response' or 'answer' (LOSS_NAMES).

    Raises:
      ValueError: no examples, an unknown extractor or loss target, or a reference the extractor cannot read;
        all before any generation.
    """
    if not examples:
        raise ValueError("no evaluation examples: set data.test (or use a source with a test split)")
    if loss_target not in LOSS_NAMES:
        raise ValueError(f"loss_target={loss_target!r}: choose one of {tuple(LOSS_NAMES)}")
    examples = list(examples[:num_examples])
    extract = get_extractor(extractor)
    for example in examples:  # a reference without an answer fails here, not after minutes of generation
        extract.gold(example.response)
    batch_size = min(batch_size, len(examples))
    start = time.perf_counter()
    model.eval()
    prompts = encode_prompts([e.query for e in examples], tokenizer, template)
    completions = generate_completions(model, tokenizer, prompts, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, stop_sequences=stop_sequences,
                                       pad_id=pad_id(tokenizer))
    scored = exact_match_accuracy(completions.texts, [e.response for e in examples], extractor)
    loss = response_loss(model, tokenizer, examples, template=template, max_length=max_length,
                         batch_size=batch_size, target=loss_target)
    model.train()
    if predictions_path and jax.process_index() == 0:
        with open(predictions_path, "w") as f:
            for e, text, pred, gold in zip(examples, completions.texts, scored.predicted, scored.gold):
                f.write(json.dumps({"query": e.query, "generation": text, "predicted": pred, "gold": gold,
                                    "correct": pred == gold}) + "\n")
    name = LOSS_NAMES[loss_target]
    return {"accuracy": scored.accuracy, "correct": scored.correct, "n": scored.n, f"{name}_loss": loss["loss"],
            f"{name}_perplexity": loss["perplexity"], "generated_tokens": completions.new_tokens,
            "tokens_per_second": completions.tokens_per_second, "generation_seconds": completions.seconds,
            "seconds": time.perf_counter() - start}
