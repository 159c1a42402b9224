"""Evaluation of fine-tuned models: answer extraction and scores here; the tasks (GSM8K, exact match with any
extractor, response loss, HumanEval pass@1) in `lowrank_jax.evaluation.tasks`.
"""

from lowrank_jax.data.answers import extract_answer, gold_answer, last_number, normalize_number
from lowrank_jax.evaluation.extractors import EXTRACTORS, AnswerExtractor, get_extractor
from lowrank_jax.evaluation.metrics import AccuracyResult, exact_match_accuracy, mean_loss_and_perplexity

__all__ = ["EXTRACTORS", "AccuracyResult", "AnswerExtractor", "exact_match_accuracy", "extract_answer",
           "get_extractor", "gold_answer", "last_number", "mean_loss_and_perplexity", "normalize_number"]
