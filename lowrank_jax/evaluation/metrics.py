"""Scores: exact-match accuracy of extracted answers, and the mean loss / perplexity of target tokens.

The per-token loss sums come from `token_loss` on batches whose `loss_mask` marks the tokens being scored (the
whole response, or with `lowrank_jax.data.tokenize_examples(..., target="final_answer")` only the final answer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from lowrank_jax.evaluation.extractors import get_extractor


class AccuracyResult(NamedTuple):
    """Exact-match accuracy and the per-problem answers behind it (for a predictions JSONL)."""

    accuracy: float
    correct: int
    n: int
    predicted: list[str | None]  # extracted from each generation; None when it holds no answer
    gold: list[str]


def exact_match_accuracy(generations: Sequence[str], reference_solutions: Sequence[str],
                         extractor: str = "gsm8k") -> AccuracyResult:
    """Scores generated solutions against reference solutions by their extracted (normalised) final answers.

    Args:
      generations: model outputs, one per problem (the decoded response, prompt excluded).
      reference_solutions: the gold responses, same order (for 'gsm8k': `#### n` or "The answer is: n").
      extractor: how answers are read, see `lowrank_jax.evaluation.extractors.get_extractor`.

    Returns:
      AccuracyResult; a generation with no answer counts as wrong.

    >>> exact_match_accuracy(["... so 72 clips.\\n#### 72", "The answer is: 9"], ["...\\n#### 72", "...\\n#### 10"])[:3]
    (0.5, 1, 2)
    >>> exact_match_accuracy([" Paris", "Rome."], ["Paris", "Rome"], extractor="exact").correct
    1
    """
    extract = get_extractor(extractor)
    if len(generations) != len(reference_solutions):
        raise ValueError(f"{len(generations)} generations but {len(reference_solutions)} reference solutions; "
                         "pass one generation per problem, in the same order")
    if not generations:
        raise ValueError("no problems to score: the evaluation split is empty")
    predicted = [extract.predicted(g) for g in generations]
    gold = [extract.gold(s) for s in reference_solutions]
    correct = sum(p == g for p, g in zip(predicted, gold))
    return AccuracyResult(correct / len(gold), correct, len(gold), predicted, gold)


def mean_loss_and_perplexity(loss_sum: float, n_tokens: float) -> tuple[float, float]:
    """Mean per-token loss (nats) and its perplexity from summed token losses over a whole evaluation set.

    >>> mean_loss_and_perplexity(6.0, 4.0)
    (1.5, 4.4816890703380645)
    """
    if n_tokens <= 0:
        raise ValueError("no target tokens were scored (loss_mask is all zero); check the evaluation batches")
    mean = loss_sum / n_tokens
    return mean, math.exp(mean)
