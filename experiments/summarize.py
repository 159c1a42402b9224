"""Tables of the GSM8K comparison from its committed JSON (experiments/results/*.json), as in docs/experiments.md.

  python experiments/summarize.py [experiments/results]
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys
from collections import defaultdict


def load(directory: str) -> list[dict]:
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(directory, "*.json")))]


def mean_se(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) / len(values) ** 0.5:.3f}"


def sweep_table(runs: list[dict]) -> str:
    """Held-out (validation) loss of every (method, lr), seed 0: the learning-rate selection."""
    lines = ["| method | lr | held-out loss after 150 steps |", "| --- | --- | --- |"]
    for r in sorted((r for r in runs if r["seed"] == 0 and r["name"] != "base"), key=lambda r: (r["name"], r["lr"])):
        lines.append(f"| {r['name']} | {r['lr']:g} | {r['report']['val_loss']:.3f} |")
    return "\n".join(lines)


def result_table(runs: list[dict]) -> str:
    """Accuracy / answer-token loss of the runs evaluated on GSM8K test, mean ± standard error over seeds."""
    groups = defaultdict(list)
    for r in runs:
        if "after" in r["report"]:
            groups[(r["name"], r["lr"])].append(r)
    lines = ["| method | lr | seeds | trainable params | GSM8K accuracy | answer-token loss | held-out loss | "
             "wall s (H100) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (name, lr), rs in sorted(groups.items()):
        lines.append(
            f"| {name} | {lr:g} | {len(rs)} | {rs[0]['report']['trainable_params'] if name != 'base' else 0:,} | "
            f"{mean_se([r['report']['after']['accuracy'] for r in rs])} | "
            f"{mean_se([r['report']['after']['answer_loss'] for r in rs])} | "
            f"{mean_se([r['report']['val_loss'] for r in rs])} | {statistics.mean(r['wall_s'] for r in rs):.0f} |")
    return "\n".join(lines)


def main():
    runs = load(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results"))
    print(result_table(runs))
    print()
    print(sweep_table(runs))


if __name__ == "__main__":
    main()
