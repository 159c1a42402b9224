"""GSM8K-style evaluation, the exact-match evaluation with the 'gsm8k' extractor: greedy accuracy on the final number
and the answer-token loss (the loss of only the reference's final-answer tokens, a smooth second metric).
"""

from __future__ import annotations

from collections.abc import Sequence

from lowrank_jax.data import Example
from lowrank_jax.evaluation.exact_match_eval import evaluate_exact_match


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
      {'accuracy', 'correct', 'n', 'answer_loss', 'answer_perplexity', 'generated_tokens', 'tokens_per_second',
      'generation_seconds', 'seconds'}.
    """
    return evaluate_exact_match(model, tokenizer, examples, extractor="gsm8k", template=template,
                                num_examples=cfg.num_examples, batch_size=cfg.batch_size,
                                max_new_tokens=cfg.max_new_tokens, max_length=cfg.max_length,
                                loss_target="final_answer", predictions_path=predictions_path)
