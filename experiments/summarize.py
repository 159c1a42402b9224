"""Tables of the GSM8K comparison from its committed JSON (experiments/results/{sweep,final}/*.json), as in
docs/experiments.md.

  python experiments/summarize.py [experiments/results]
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys
from collections import defaultdict


def load(directory: str, stage: str) -> list[dict]:
    """The runs of one stage ('sweep' or 'final') of experiments/gsm8k_comparison.py."""
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(directory, stage, "*.json")))]


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (0 for a single run)."""
    return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def mean_se(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return "{:.3f} ± {:.3f}".format(*mean_and_se(values))


def sweep_table(sweep: list[dict]) -> str:
    """Validation loss (held-out training problems, seed 0) of every method at every swept lr; * marks the chosen."""
    by_method = defaultdict(dict)
    for r in sweep:
        by_method[r["name"]][r["lr"]] = r["report"]["val_loss"]
    lines = ["| method | validation loss at lr (chosen: *) |", "| --- | --- |"]
    for name, losses in sorted(by_method.items()):
        best = min(losses, key=losses.get)
        cells = ", ".join(f"{lr:g}: {loss:.3f}{'*' if lr == best else ''}" for lr, loss in sorted(losses.items()))
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def result_table(final: list[dict]) -> str:
    """GSM8K test accuracy, answer-token loss and validation loss of the final runs, mean ± s.e. over seeds."""
    groups = defaultdict(list)
    for r in final:
        groups[r["name"]].append(r)
    lines = ["| method | lr | seeds | trainable params | GSM8K accuracy | answer-token loss | validation loss | "
             "train s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, rs in sorted(groups.items(), key=lambda item: statistics.mean(r["report"]["val_loss"] for r in item[1])):
        base = name == "base"
        lines.append(
            f"| {name} | {'—' if base else format(rs[0]['lr'], 'g')} | {len(rs)} | "
            f"{0 if base else rs[0]['report']['trainable_params']:,} | "
            f"{mean_se([r['report']['after']['accuracy'] for r in rs])} | "
            f"{mean_se([r['report']['after']['answer_loss'] for r in rs])} | "
            f"{mean_se([r['report']['val_loss'] for r in rs])} | "
            f"{'—' if base else format(statistics.mean(r['report']['train_seconds'] for r in rs), '.0f')} |")
    return "\n".join(lines)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
    print(result_table(load(directory, "final")))
    print()
    print(sweep_table(load(directory, "sweep")))


if __name__ == "__main__":
    main()
