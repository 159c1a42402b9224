"""The tiny setup that tests of whole runs share: short GSM8K-format problems written by the test, the `tiny` preset
on them, and (fixture `trained_run`) one LoRA run trained once per test session, which tests copy and then damage,
resume or diverge, under a compilation cache so that runs with the same shapes and settings skip XLA. Its base is
the tiny preset's random model saved as an HF directory, which a subprocess loads as fast as the test process."""

import glob
import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache
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
    """The module's `tiny` preset on the test data; overrides are dotted keys, e.g. {'train.steps': 2}."""
    config = module.get_config("tiny")
    config.data.train = str(data_dir / "train.jsonl")
    config.data.test = str(data_dir / "test.jsonl")
    config.workdir = str(workdir)
    config.eval.after = False
    config.train.export_peft = False
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


def saved_base_model(directory, tokenizer_dir):
    """The tiny preset's random Llama (seed 0) and the embedded SmolLM2 tokenizer as an HF directory, the same model
    that model.path='random' builds. `tokenizer_dir` keeps the tokenizer across test sessions: parsing it out of the
    embedded GGUF takes seconds (staged and renamed, so an interrupted session leaves none half written)."""
    if not tokenizer_dir.exists():
        embedded_tokenizer().save_pretrained(str(tokenizer_dir) + ".staging")
        os.replace(str(tokenizer_dir) + ".staging", tokenizer_dir)
    config = lora_llama.get_config("tiny").model
    runtime = dict(dtype=config.dtype, param_dtype=config.param_dtype, scan_layers=config.scan_layers,
                   remat=config.remat)
    save_pretrained(Llama(LlamaConfig(**config.random.to_dict(), **runtime), rngs=nnx.Rngs(0)), str(directory))
    shutil.copytree(tokenizer_dir, directory, dirs_exist_ok=True)
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
def trained_run(request, tmp_path_factory):
    """A TrainedRun, trained at the first use in a test session. The module's runs share a compilation cache; it and
    the tokenizer are kept in pytest's cache directory (.pytest_cache; `pytest --cache-clear` empties it), so that
    later sessions compile nothing the code has not changed."""
    base = tmp_path_factory.getbasetemp()
    pytest_cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    kept = pytest_cache.mkdir("lowrank_jax_run_tests") if pytest_cache else base
    previous = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    compilation_cache.set_cache_dir(str(kept / "jax_compilation_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()  # takes the directory even if this process compiled before
    run = TrainedRun(base / "run_data", base / "base_model", base / "trained_run")
    if not run.data_dir.exists():
        run.data_dir.mkdir()
        write_problems(run.data_dir)
    if not run.base_model.exists():
        saved_base_model(run.base_model, kept / "embedded_tokenizer")
    if not (run.workdir / "report.json").exists():
        loop.run(run.config(run.workdir))
    yield run
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    compilation_cache.reset_cache()
