"""Evaluating a finished run, its base model, or any HF / GGUF model on the config's test split; `eval.py` is its
command line."""

from __future__ import annotations

import json
import os

import jax

from lowrank_jax.data import check_data_config, load_splits
from lowrank_jax.evaluation.tasks import check_eval_config, evaluate
from lowrank_jax.models import load_pretrained, load_tokenizer
from lowrank_jax.training.config_check import check_config
from lowrank_jax.training.model_source import load_model
from lowrank_jax.training.preflight import check_not_peft, check_run_to_evaluate
from lowrank_jax.training.restore import trained_model


def run_eval(config, *, workdir: str | None = None, model_path: str | None = None, base: bool = False,
             out: str | None = None) -> dict:
    """Scores one model on `config`'s test split; writes `<out>/eval.json` and `<out>/predictions.jsonl`.

    Args:
      config: a run config (its `data`, `eval` and, unless `model_path` is given, `model` and `adapter` blocks).
      workdir: the run whose latest checkpoint is evaluated (default: config.workdir).
      model_path: evaluate this HF directory or .gguf file instead of the run.
      base: evaluate the config's base model without adapters.
      out: where the files go (default: the workdir).

    Returns:
      The scores (accuracy, answer-token loss, ...).
    """
    workdir = workdir or config.workdir
    if model_path:
        check_not_peft(model_path)
        check_eval_config(config.eval)
        if config.eval.task != "humaneval":  # HumanEval ships its problems: no data to check
            check_data_config(config.data, needs_test=True)
        model, _ = load_pretrained(model_path, dtype=config.model.dtype, param_dtype=config.model.param_dtype)
        tokenizer = load_tokenizer(model_path)
    else:
        if not base:
            check_run_to_evaluate(workdir)  # before anything loads, and without creating <workdir>/checkpoints
        resolved = check_config(config)
        if base:
            model, _, tokenizer = load_model(config.model, resolved, config.seed)
        else:
            model, tokenizer = trained_model(config, resolved, workdir)
    out = out or workdir
    os.makedirs(out, exist_ok=True)
    test = [] if config.eval.task == "humaneval" else load_splits(config.data).test  # HumanEval ships its problems
    result = evaluate(model, tokenizer, test, config.eval, config.data.template,
                      os.path.join(out, "predictions.jsonl"))
    if jax.process_index() == 0:
        with open(os.path.join(out, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result
