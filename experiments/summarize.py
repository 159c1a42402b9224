"""Tables of the GSM8K comparison from its committed JSON, as docs/experiments.md shows them.

  python -m experiments.summarize [experiments/results/MODEL ...]     # default: every model folder

Per model: the finals at each arm's chosen lr (the swept lr with the lowest validation loss; `edge` marks a best
at the end of the measured range), the shared-lr arm, the fraction of the LoRA -> full gap that each LoRA-Pro
variant closes, and the sweep. Mean ± standard error over seeds.
"""

from __future__ import annotations

import glob
import math
import os
import statistics
import sys
from collections import defaultdict

from experiments import plan
from experiments.arms import ARMS, BASE, SHARED_LR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LORAPRO_ARMS = ("lorapro-r8", "lorapro_adamw-r8", "lorapro-r8-rslora")


def load(directory: str) -> tuple[list[dict], list[dict]]:
    """(sweep runs, evaluated runs) of one model's results folder."""
    results = plan.load_results(directory)
    is_final = [os.path.basename(os.path.dirname(r["path"])) == "final" for r in results]
    return [r for r, f in zip(results, is_final) if not f], [r for r, f in zip(results, is_final) if f]


def model_folders(root: str = os.path.join(ROOT, "experiments", "results")) -> list[str]:
    """Every model folder under experiments/results that holds runs."""
    return sorted(d for d in glob.glob(os.path.join(root, "*"))
                  if glob.glob(os.path.join(d, "sweep", "*.json")) or glob.glob(os.path.join(d, "final", "*.json")))


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (0 for a single run)."""
    return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def mean_se(values: list[float], digits: int = 3) -> str:
    if any(v is None or not math.isfinite(v) for v in values):
        return "diverged"
    mean, se = mean_and_se(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {se:.{digits}f}"


def final_train_loss(record: dict) -> float | None:
    """Training loss at the end: the mean over the last tenth of the logged steps (one batch alone is noisy)."""
    losses = [p["train/loss"] for p in record["curve"] if "train/loss" in p]
    if not losses or record["report"].get("val_loss") is None:
        return None
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def metric(record: dict, name: str) -> float | None:
    """'accuracy', 'answer_loss' (GSM8K test), 'val_loss', 'train_loss' or 'humaneval' (pass@1) of one run."""
    if name == "train_loss":
        return final_train_loss(record)
    if name == "val_loss":
        return record["report"].get("val_loss")
    if name == "humaneval":
        return record["report"].get("humaneval", {}).get("pass@1")
    after = record["report"].get("after")
    return None if after is None else after[name]


def chosen_lrs(sweep: list[dict], final: list[dict]) -> dict[str, tuple[float, bool]]:
    """arm -> (lr with the lowest seed-0 validation loss, whether it lies at an end of the measured range)."""
    chosen = {}
    for name in sorted({r["name"] for r in sweep + final} - {BASE.name}):
        points = plan.sweep_points(sweep + final, name)
        if points:
            best = plan.best_lr(points)
            lrs = [lr for lr, _ in points.values()]
            chosen[name] = (best, len(lrs) < 3 or best in (min(lrs), max(lrs)))
    return chosen


def groups_at(final: list[dict], lrs: dict[str, float]) -> dict[str, list[dict]]:
    """arm -> its evaluated runs at lrs[arm] (base: all of its runs)."""
    groups = defaultdict(list)
    for r in final:
        if r["name"] == BASE.name or (r["name"] in lrs and plan.lr_key(r["lr"]) == plan.lr_key(lrs[r["name"]])):
            groups[r["name"]].append(r)
    return groups


def setting_of(name: str) -> str:
    return ARMS[name].setting if name in ARMS else BASE.setting


def result_table(final: list[dict], lrs: dict[str, float], edges: dict[str, bool] = None) -> str:
    """One row per arm at its lr in `lrs`: accuracy, answer-token loss, validation and training loss, mean ± s.e.;
    HumanEval pass@1 too once any run has it ('—' where an arm's runs lack it)."""
    edges = edges or {}
    groups = groups_at(final, lrs)
    humaneval = any(metric(r, "humaneval") is not None for runs in groups.values() for r in runs)
    lines = ["| setting | arm | lr | seeds | trainable params | GSM8K accuracy | answer-token loss | validation loss | "
             "train loss (end) |" + (" HumanEval pass@1 |" if humaneval else ""),
             "| --- " * (10 if humaneval else 9) + "|"]
    if not groups:
        return "(no evaluated runs)"
    order = {"lorapro": 0, "nlora": 1, "others": 2, "base": 3}

    def sort_key(item):
        name, runs = item
        losses = [metric(r, "val_loss") for r in runs]
        return order[setting_of(name)], math.inf if None in losses else statistics.mean(losses)

    for name, runs in sorted(groups.items(), key=sort_key):
        base = name == BASE.name
        lr = "—" if base else f"{runs[0]['lr']:g}{' (edge)' if edges.get(name) else ''}"
        lines.append(
            f"| {setting_of(name)} | {name} | {lr} | {len(runs)} | "
            f"{trainable_params_cell(runs, base)} | "
            f"{mean_se([metric(r, 'accuracy') for r in runs])} | {mean_se([metric(r, 'answer_loss') for r in runs])} | "
            f"{mean_se([metric(r, 'val_loss') for r in runs])} | "
            f"{'—' if base else mean_se([final_train_loss(r) for r in runs])} |"
            + (f" {humaneval_cell(runs)} |" if humaneval else ""))
    return "\n".join(lines)


def trainable_params_cell(runs: list[dict], base: bool) -> str:
    """The arm's trainable parameter count from any run that reports it; '—' where none does (a diverged run stops
    before its report has one)."""
    if base:
        return "0"
    counts = [r["report"]["trainable_params"] for r in runs if "trainable_params" in r["report"]]
    return f"{counts[0]:,}" if counts else "—"


def humaneval_cell(runs: list[dict]) -> str:
    """Mean ± s.e. of pass@1 over the runs that scored HumanEval, with their count when some did not."""
    scores = [score for score in (metric(r, "humaneval") for r in runs) if score is not None]
    if not scores:
        return "—"
    return mean_se(scores) + ("" if len(scores) == len(runs) else f" ({len(scores)} of {len(runs)} runs)")


def sweep_table(sweep: list[dict], final: list[dict]) -> str:
    """Seed-0 validation loss of every arm at every measured lr (sweep and evaluated runs); * marks the best."""
    lines = ["| arm | validation loss at lr (best: *) |", "| --- | --- |"]
    for name in sorted({r["name"] for r in sweep + final} - {BASE.name}):
        points = plan.sweep_points(sweep + final, name)
        if not points:
            continue
        best = plan.best_lr(points)
        cells = ", ".join(f"{lr:g}: {'diverged' if math.isinf(loss) else format(loss, '.3f')}"
                          f"{'*' if lr == best else ''}" for lr, loss in sorted(points.values()))
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def gap_closed(groups: dict[str, list[dict]], pro: str, name: str) -> str:
    """(L_lora - L_pro) / (L_lora - L_full) on one metric (accuracy as L = -accuracy), or why it cannot be read.

    Full fine-tuning must beat LoRA by more than twice their combined standard error; otherwise the claim that
    LoRA-Pro closes the gap cannot be tested on this metric here.
    """
    if any(k not in groups for k in ("lora-r8", "full", pro)):
        return "not run"
    sign = -1.0 if name == "accuracy" else 1.0
    stats = {}
    for key in ("lora-r8", "full", pro):
        values = [metric(r, name) for r in groups[key]]
        if any(v is None or not math.isfinite(v) for v in values):
            return "not measured"
        mean, se = mean_and_se(values)
        stats[key] = (sign * mean, se)
    (lora, se_lora), (full, se_full), (pro_value, _) = stats["lora-r8"], stats["full"], stats[pro]
    if lora - full <= 2 * math.hypot(se_lora, se_full):
        return f"cannot be tested here: full does not beat LoRA ({sign * full:.3f} vs {sign * lora:.3f})"
    return f"{(lora - pro_value) / (lora - full):.2f}"


def gap_table(groups: dict[str, list[dict]]) -> str:
    """The fraction of the LoRA r=8 -> full fine-tuning gap that each LoRA-Pro arm closes (1 = all of it)."""
    names = (("train_loss", "train loss"), ("val_loss", "validation loss"), ("accuracy", "GSM8K accuracy"))
    lines = ["| arm | " + " | ".join(label for _, label in names) + " |", "| --- |" + " --- |" * len(names)]
    for pro in LORAPRO_ARMS:
        lines.append(f"| {pro} | " + " | ".join(gap_closed(groups, pro, n) for n, _ in names) + " |")
    return "\n".join(lines)


def summary(directory: str, shared_lr: float = SHARED_LR) -> str:
    """Every table of one model's results folder, as markdown."""
    sweep, final = load(directory)
    chosen = chosen_lrs(sweep, final)
    lrs = {name: lr for name, (lr, _) in chosen.items()}
    shared = {name: shared_lr for name in ARMS}
    return "\n\n".join([
        f"## {os.path.basename(os.path.normpath(directory))}: {len(sweep)} sweep runs, {len(final)} evaluated runs",
        "Each arm at its chosen lr:", result_table(final, lrs, {n: e for n, (_, e) in chosen.items()}),
        f"Every arm at the shared lr {shared_lr:g}:", result_table(final, shared),
        "Fraction of the LoRA r=8 -> full fine-tuning gap closed (at the chosen lrs):",
        gap_table(groups_at(final, lrs)),
        "Learning-rate sweep (seed 0, validation loss):", sweep_table(sweep, final)])


def main():
    folders = sys.argv[1:] or model_folders()
    print("\n\n".join(summary(folder) for folder in folders))


if __name__ == "__main__":
    main()
