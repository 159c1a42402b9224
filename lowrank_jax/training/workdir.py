"""A workdir belongs to one run: a new run starts only where no other run left files, and a run continues only with
a config whose fixed fields equal those of its stored config.json. Also the command line that continues a run.

Checked before anything is loaded or written, so a refused run changes nothing in the workdir.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

import ml_collections

from lowrank_jax.training.checkpoint import saved_steps

# What a run writes into its workdir besides checkpoints; any of them means the workdir holds a run.
RUN_FILES = ("config.json", "metrics.jsonl", "tensorboard", "unused_checkpoints", "predictions_before.jsonl", "peft",
             "merged", "predictions_after.jsonl", "report.json")

# How this process continues a run rather than what the run is: never compared.
CONTINUATION = ("resume", "train.resume_step", "train.resume_or_start", "workdir")

# Dotted config keys (or whole blocks) that a resumed run may set differently from the run it continues: none of
# them changes the shape or meaning of what the checkpoint holds (the optimizer state has one structure with or
# without clipping; the schedule is a function of the restored step count). Every other field must stay.
MAY_CHANGE = (
    "optimizer.learning_rate", "optimizer.schedule", "optimizer.warmup_ratio", "optimizer.grad_clip",
    "train.steps", "data.epochs", "train.stop_after",
    "train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.export_peft", "train.export_merged", "eval", "data.test",
    "data.grad_accum", "mesh", "distributed", "model.attention_impl", "model.remat", "train.loss_chunk_tokens",
    "model.fuse_projections", "optimizer.fused_update",
    "train.device_memory_gib",
)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _listed(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == listed or key.startswith(listed + ".") for listed in keys)


def config_changes(stored: dict, new: dict) -> tuple[list[str], list[str]]:
    """'key: old -> new' for each field that differs, split into (fixed ones, ones a resume may change). Keys the
    stored config lacks (written before the field existed) and CONTINUATION are not compared."""
    stored, new = _flatten(stored), _flatten(new)
    fixed, allowed = [], []
    for key in sorted(stored.keys() & new.keys()):
        if stored[key] != new[key] and not _listed(key, CONTINUATION):
            (allowed if _listed(key, MAY_CHANGE) else fixed).append(f"{key}: {stored[key]!r} -> {new[key]!r}")
    return fixed, allowed


def run_command(settings: dict) -> str:
    """The command line that started this process with `settings` ({dotted config key: value}) set, replacing
    earlier settings of them: 'python train.py --config=... --config.resume=True'. Outside train.py (the loop called
    as a library) only the settings, as flags."""
    flags = [f"--config.{key}={value}" for key, value in settings.items()]
    if os.path.basename(sys.argv[0]) != "train.py":
        return shlex.join(flags)
    kept = [arg for arg in sys.argv[1:] if not any(arg.startswith(f"--config.{key}=") for key in settings)]
    return shlex.join(["python", sys.argv[0], *kept, *flags])


def check_workdir(config: ml_collections.ConfigDict) -> bool:
    """Checks that `config` may run in `config.workdir`; returns True when it continues the run there (resume, or
    train.resume_or_start over files of a run), False when it starts a new one in an unused workdir.

    Raises:
      ValueError: naming the files, missing checkpoint or config fields, and the fix, when a new run would mix with
        another run's files, when resume=True finds nothing to resume, or when a resume changes a fixed field.
    """
    workdir = os.path.abspath(config.workdir)
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(workdir, name))]
    steps = saved_steps(workdir)
    t = config.train
    if t.resume_step < 0 or (t.resume_step and not config.resume):
        raise ValueError(f"config: train.resume_step={t.resume_step} picks the checkpoint a resumed run continues "
                         "from: set it >= 1 with --config.resume=True, or 0 for the newest intact one")
    if not (config.resume or (t.resume_or_start and present)):
        if steps:
            raise ValueError(f"config: workdir {config.workdir!r} already holds checkpoints (latest step {steps[-1]}) "
                             "of another run: pass --config.resume=True to continue that run, or choose another "
                             "--config.workdir")
        if present:
            raise ValueError(f"config: workdir {config.workdir!r} holds files of another run ({', '.join(present)}) "
                             "that saved no checkpoint to resume: pass --config.train.resume_or_start=True to start "
                             "that run over in place (its metrics are cleared), or delete them, or choose another "
                             "--config.workdir")
        return False
    if t.resume_step and t.resume_step not in steps:
        raise ValueError(f"config: train.resume_step={t.resume_step}, but {os.path.join(workdir, 'checkpoints')} "
                         f"holds no checkpoint {t.resume_step}; its steps are {steps}")
    if config.resume and not steps and not t.resume_or_start:
        raise ValueError(f"config: resume=True, but {os.path.join(workdir, 'checkpoints')} holds no checkpoint to "
                         "resume: check --config.workdir, or pass --config.train.resume_or_start=True instead to "
                         "start a new run when there is nothing to resume")
    stored_path = os.path.join(workdir, "config.json")
    if os.path.exists(stored_path):
        with open(stored_path) as f:
            stored = json.load(f)
        fixed, allowed = config_changes(stored, json.loads(config.to_json_best_effort()))
        if fixed:
            raise ValueError(f"config: cannot resume the run in {config.workdir!r} with different "
                             f"{', '.join(change.split(':')[0] for change in fixed)} ({'; '.join(fixed)}): set them "
                             f"as {stored_path} has them, or start a new run in another --config.workdir")
        if allowed:
            print(f"resuming with changed settings: {'; '.join(allowed)}")
    return True
