"""The tiny setup that tests of whole runs share: short GSM8K-format problems written by the test, the `tiny` preset
on them, and (fixture `trained_run`) one LoRA run trained once per test session, which tests copy and then damage,
resume or diverge. Its base is the tiny preset's random model saved as an HF directory, which a subprocess loads as
fast as the test process."""

import glob
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from flax import nnx
from tensorboardX.proto import event_pb2

from configs import lora_llama
from lowrank_jax.models import Llama, LlamaConfig, save_pretrained
from lowrank_jax.training import loop
from lowrank_jax.training.model_source import embedded_tokenizer

# The trained run every copy starts from: checkpoints at steps 2 and 4, on one device (the fastest compile), at a
# constant lr, so that its compiled step serves runs of any length.
TRAINED = {"train.steps": 4, "train.checkpoint_every": 2, "mesh.devices": 1, "optimizer.schedule": "constant",
           "optimizer.warmup_ratio": 0.0}


def write_problems(directory):
    """train.jsonl (48) and test.jsonl (4) of 'Tom has a apples and buys b more' problems, answers as `#### n`."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("test", 4)):
        with open(directory / f"{split}.jsonl", "w") as f:
            for a, b in rng.integers(1, 50, size=(count, 2)):
                f.write(json.dumps({"question": f"Tom has {a} apples and buys {b} more. How many now?",
                                    "answer": f"{a} + {b} = {a + b}.\n#### {a + b}"}) + "\n")


def tiny(module, data_dir, workdir, **overrides):
    """The module's `tiny` preset on the test data, on one device unless the overrides set the mesh; overrides are
    dotted keys, e.g. {'train.steps': 2}."""
    config = module.get_config("tiny")
    config.data.train = str(data_dir / "train.jsonl")
    config.data.test = str(data_dir / "test.jsonl")
    config.workdir = str(workdir)
    config.eval.after = False
    config.train.export_peft = False
    if not any(key.startswith("mesh.") for key in overrides):
        config.mesh.devices = 1   # one device compiles fastest; tests of sharded runs set the mesh
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def logged_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def logged_losses(workdir):
    return [r["train/loss"] for r in logged_rows(workdir) if "train/loss" in r]


def files_of(directory):
    """{relative path: sha256} of every file under `directory`."""
    return {os.path.relpath(path, directory): hashlib.sha256(open(path, "rb").read()).hexdigest()
            for path in glob.glob(str(directory / "**"), recursive=True) if os.path.isfile(path)}


def purge_step(workdir):
    """The step of the SessionLog START that begins the newest TensorBoard event file of `workdir` (TensorBoard
    drops older files' events from that step on). Records: length (8 bytes), its crc (4), the event, its crc (4)."""
    data = open(max(glob.glob(str(workdir / "tensorboard" / "*")), key=os.path.getmtime), "rb").read()
    while data:
        length = int.from_bytes(data[:8], "little")
        event = event_pb2.Event.FromString(data[12:12 + length])
        if event.HasField("session_log"):
            return event.step
        data = data[12 + length + 4:]
    return None


def saved_base_model(directory):
    """The tiny preset's random Llama (seed 0) and the embedded SmolLM2 tokenizer as an HF directory, the same model
    that model.path='random' builds."""
    config = lora_llama.get_config("tiny").model
    runtime = dict(dtype=config.dtype, param_dtype=config.param_dtype, scan_layers=config.scan_layers,
                   remat=config.remat)
    save_pretrained(Llama(LlamaConfig(**config.random.to_dict(), **runtime), rngs=nnx.Rngs(0)), str(directory))
    embedded_tokenizer().save_pretrained(str(directory))
    return directory


class TrainedRun:
    """The data, the base model directory and a finished run (`tiny(lora_llama, ...)` with TRAINED on that model);
    `copy` gives a test its own copy of the run."""

    def __init__(self, data_dir, base_model, workdir):
        self.data_dir, self.base_model, self.workdir = data_dir, base_model, workdir

    def config(self, workdir, **overrides):
        return tiny(lora_llama, self.data_dir, workdir, **{**TRAINED, "model.path": str(self.base_model), **overrides})

    def copy(self, workdir):
        shutil.copytree(self.workdir, workdir)
        return workdir


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A TrainedRun, trained at the first use in a test process (its programs then come from the compilation cache
    that tests/conftest.py sets)."""
    base = tmp_path_factory.getbasetemp()
    run = TrainedRun(base / "run_data", base / "base_model", base / "trained_run")
    if not run.data_dir.exists():
        run.data_dir.mkdir()
        write_problems(run.data_dir)
    if not run.base_model.exists():
        saved_base_model(run.base_model)
    if not (run.workdir / "report.json").exists():
        loop.run(run.config(run.workdir))
    return run
