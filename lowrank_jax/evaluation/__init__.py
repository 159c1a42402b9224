"""Evaluation of fine-tuned models on GSM8K-style math: answer extraction and scores."""

from lowrank_jax.data.answers import extract_answer, gold_answer, normalize_number
from lowrank_jax.evaluation.metrics import AccuracyResult, exact_match_accuracy, mean_loss_and_perplexity

__all__ = ["AccuracyResult", "exact_match_accuracy", "extract_answer", "gold_answer", "mean_loss_and_perplexity",
           "normalize_number"]
