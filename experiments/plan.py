"""What the GSM8K comparison still has to run, in order of value, from the results already on disk (no JAX here).

A run is (arm, lr, seed, evaluate): it trains one epoch and writes one JSON; `evaluate` adds the GSM8K test set
(accuracy and answer-token loss). Results of one model live under OUT = experiments/results/<model-name>/:
`sweep/{arm}_lr{lr}.json` (seed 0, validation loss only) and `final/{arm}_lr{lr}_s{seed}.json` (test set too).
A seed-0 run of either kind is a point of its arm's lr sweep, so the shared-lr run and seed 0 of a final count.

The plan, re-derived whenever a run finishes (`pending`), in tiers:
  0 base;  1 every arm at the shared lr, seed 0, evaluated (the papers' convention, also a sweep point);
  2 the sweep grids (round-robin over arms, nearest the centre first);  3 one step past a best range end, until
  every arm's best is interior;  4 the seeds of each arm at its chosen lr (seed 0 first, evaluated);
  5 the shared lr's other seeds.
`--order arm` instead finishes each arm (in ARMS order) before the next; `--order value` is the default.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from typing import NamedTuple

from experiments.arms import ARMS, BASE, BASE_LR, SHARED_LR, Arm


class Run(NamedTuple):
    """One planned run; `tier` and `rank` order it (lower first)."""

    arm: str
    lr: float
    seed: int
    evaluate: bool
    tier: int = 0
    rank: int = 0


class Settings(NamedTuple):
    """The planner's knobs (the command line's --arms, --lr-points, ...)."""

    arms: tuple[str, ...] = tuple(ARMS)
    lr_points: int = 4
    lr_factor: float = 2.0
    extend: bool = True
    seeds: tuple[int, ...] = (0, 1, 2)
    shared_lr: float = SHARED_LR
    shared_seeds: tuple[int, ...] = (0, 1, 2)
    base: bool = True
    order: str = "value"
    humaneval: bool = False  # evaluated runs score HumanEval too; a base run without that score reruns


def lr_key(lr: float) -> str:
    """The lr as file names and comparisons spell it (3 significant digits)."""
    return f"{lr:.3g}"


def result_path(out: str, run: Run) -> str:
    if run.evaluate:
        return os.path.join(out, "final", f"{run.arm}_lr{lr_key(run.lr)}_s{run.seed}.json")
    return os.path.join(out, "sweep", f"{run.arm}_lr{lr_key(run.lr)}.json")


def load_results(out: str) -> list[dict]:
    """Every finished run's JSON under OUT (sweep and final), each with `path` added."""
    records = []
    paths = glob.glob(os.path.join(out, "sweep", "*.json")) + glob.glob(os.path.join(out, "final", "*.json"))
    for path in sorted(paths):
        with open(path) as f:
            records.append({**json.load(f), "path": path})
    return records


def val_loss(record: dict) -> float:
    """A run's validation loss; a diverged run (no loss) counts as infinitely bad."""
    loss = record["report"].get("val_loss")
    return math.inf if loss is None or not math.isfinite(loss) else loss


def sweep_points(results: list[dict], arm: str) -> dict[str, tuple[float, float]]:
    """lr_key -> (lr, validation loss) of `arm`'s seed-0 runs, sweep or final (the sweep run wins a tie)."""
    points = {}
    for r in sorted(results, key=lambda r: "final" in os.path.basename(os.path.dirname(r["path"]))):
        if r["name"] == arm and r["seed"] == 0:
            points.setdefault(lr_key(r["lr"]), (r["lr"], val_loss(r)))
    return points


def snap(lr: float, settings: Settings) -> float:
    """The lattice point shared_lr * factor^k nearest `lr` (so grids meet the shared lr)."""
    k = round(math.log(lr / settings.shared_lr) / math.log(settings.lr_factor))
    return settings.shared_lr * settings.lr_factor ** k


def grid(arm: Arm, settings: Settings) -> list[float]:
    """`lr_points` lattice lrs around the arm's centre, nearest the centre first (centre, x/f, x*f, x/f^2, ...)."""
    centre = snap(arm.lr, settings)
    offsets = sorted(range(-(settings.lr_points // 2), settings.lr_points - settings.lr_points // 2),
                     key=lambda k: (abs(k), -k if k < 0 else k))
    return [centre * settings.lr_factor ** k for k in offsets]


def best_lr(points: dict[str, tuple[float, float]]) -> float:
    """The lr with the lowest validation loss."""
    return min(points.values(), key=lambda p: p[1])[0]


def extension(points: dict[str, tuple[float, float]], settings: Settings) -> float | None:
    """One lr past the measured range's end when that end scored best (None when the best is interior)."""
    lrs = sorted(lr for lr, _ in points.values())
    best = best_lr(points)
    if best == lrs[-1]:
        return best * settings.lr_factor
    if best == lrs[0]:
        return best / settings.lr_factor
    return None


def chosen_lr(results: list[dict], arm: str, settings: Settings) -> float | None:
    """The arm's lr for its finals: its best swept lr once the grid is done and (with `extend`) the best is
    interior; None while the sweep is still open."""
    points = sweep_points(results, arm)
    if any(lr_key(lr) not in points for lr in grid(ARMS[arm], settings)):
        return None
    if settings.extend and extension(points, settings) is not None:
        return None
    return best_lr(points)


def pending(out: str, results: list[dict], settings: Settings, running=frozenset()) -> list[Run]:
    """The runs of OUT still to do now, best first: neither finished (in `results`) nor `running` (result paths).

    Runs that depend on others (extensions, finals) appear once what they depend on has finished; call again after
    each finished run.
    """
    taken = {os.path.normpath(r["path"]) for r in results
             if not (settings.humaneval and r["name"] == BASE.name and "humaneval" not in r["report"])}
    taken |= {os.path.normpath(p) for p in running}
    runs: list[Run] = []

    def add(run: Run) -> None:
        path = os.path.normpath(result_path(out, run))
        if path not in taken:
            taken.add(path)
            runs.append(run)

    arm_index = {name: i for i, name in enumerate(settings.arms)}
    if settings.base:
        add(Run(BASE.name, BASE_LR, 0, True, 0, -1))
    for name in settings.arms:
        if 0 in settings.shared_seeds:
            add(Run(name, settings.shared_lr, 0, True, 1, arm_index[name]))
    for name in settings.arms:
        points = sweep_points(results, name)
        shared = lr_key(settings.shared_lr) if 0 in settings.shared_seeds else None  # its seed-0 run is a point
        for round_, lr in enumerate(grid(ARMS[name], settings)):
            if lr_key(lr) not in points and lr_key(lr) != shared:
                add(Run(name, lr, 0, False, 2, round_ * len(arm_index) + arm_index[name]))
        if settings.extend and points and all(lr_key(lr) in points for lr in grid(ARMS[name], settings)):
            beyond = extension(points, settings)
            if beyond is not None:
                add(Run(name, beyond, 0, False, 3, arm_index[name]))
        lr = chosen_lr(results, name, settings)
        if lr is not None:
            for seed in settings.seeds:
                add(Run(name, lr, seed, True, 4, seed * len(arm_index) + arm_index[name]))
    for seed in settings.shared_seeds:
        if seed != 0:
            for name in settings.arms:
                add(Run(name, settings.shared_lr, seed, True, 5, seed * len(arm_index) + arm_index[name]))
    if settings.order == "arm":
        return sorted(runs, key=lambda r: (arm_index.get(r.arm, -1), r.tier, r.rank))
    return sorted(runs, key=lambda r: (r.tier, r.rank))


def device_seconds(results: list[dict], eval_batch: int | None = None) -> dict[bool, float]:
    """Measured device time of one run, {evaluate: seconds}: the mean of wall time / runs sharing the GPU. Evaluated
    runs that decoded `eval_batch` prompts at a time stand for the rest once there are any (decoding is most of an
    evaluated run, and its time falls with the number of generate calls)."""
    by_kind: dict[bool, list[float]] = {True: [], False: []}
    same_batch = []
    for r in results:
        if "wall_s" in r and r["name"] != BASE.name:
            evaluated = "final" in os.path.basename(os.path.dirname(r["path"]))
            seconds = r["wall_s"] / max(1, r.get("concurrent_runs", 1))
            by_kind[evaluated].append(seconds)
            if evaluated and eval_batch is not None and r.get("eval_batch") == eval_batch:
                same_batch.append(seconds)
    by_kind[True] = same_batch or by_kind[True]
    return {kind: sum(v) / len(v) for kind, v in by_kind.items() if v}


def estimate(runs: list[Run], results: list[dict], prior: dict[bool, float],
             eval_batch: int | None = None) -> tuple[float, str]:
    """(device seconds for `runs`, how it was estimated): measured per-run device time where this model has
    finished runs of the kind (`device_seconds`), else `prior` ({evaluate: seconds})."""
    measured = device_seconds(results, eval_batch)
    per_run = {kind: measured.get(kind, prior[kind]) for kind in (True, False)}
    total = sum(per_run[r.evaluate] for r in runs)
    source = ", ".join(f"{'evaluated' if kind else 'sweep'} run {per_run[kind]:.0f} s "
                       f"({'measured' if kind in measured else 'prior'})" for kind in (False, True))
    return total, source


def model_name(path: str) -> str:
    """Results folder name of a model: the file or directory name, lower case, without .gguf and quantisation.

    >>> model_name("/m/SmolLM2-135M-Instruct.Q4_1.gguf"), model_name("qwen2.5-coder-0.5b-instruct.gguf")
    ('smollm2-135m-instruct', 'qwen2.5-coder-0.5b-instruct')
    """
    name = os.path.basename(os.path.normpath(path)).lower()
    name = re.sub(r"\.gguf$", "", name)
    return re.sub(r"\.(q\d\w*|f16|bf16|f32)$", "", name)
