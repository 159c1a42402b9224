"""Metrics sinks of a run: TensorBoard event files and a JSONL log under the workdir (process 0 only)."""

from __future__ import annotations

import json
import os

import jax
from tensorboardX import SummaryWriter


class MetricsLog:
    """Writes scalars to `<workdir>/tensorboard` and appends one JSON line per call to `<workdir>/metrics.jsonl`."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.active:
            self.writer.close()
            self.jsonl.close()
