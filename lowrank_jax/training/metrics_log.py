"""Metrics sinks of a run: TensorBoard event files and a JSONL log under the workdir (process 0 only)."""

from __future__ import annotations

import json
import os

import jax
from tensorboardX import SummaryWriter


def _step(line: str) -> int | None:
    """The step of one metrics.jsonl row; None for a line cut short by a killed process."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricsLog:
    """Writes scalars to `<workdir>/tensorboard` and appends one JSON line per call to `<workdir>/metrics.jsonl`.

    A run that continues from step `start` replays the steps after it, so rows logged after `start` by the run it
    continues are dropped from metrics.jsonl, and TensorBoard drops its older events from step start + 1 on (the new
    event file begins with a purge at that step). Every write is flushed: a later failure loses no row.
    """

    def __init__(self, workdir: str, start: int = 0):
        self.active = jax.process_index() == 0
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            if os.path.exists(path):
                with open(path) as f:
                    kept = [line for line in f if _step(line) is not None and _step(line) <= start]
                with open(path + ".tmp", "w") as f:
                    f.writelines(kept)
                os.replace(path + ".tmp", path)
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start + 1)
            self.jsonl = open(path, "a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        self.jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.active:
            self.writer.close()
            self.jsonl.close()
