"""The training loop (train.py's) end to end on a random tiny Llama (CPU, fp32): resume equals an uninterrupted run, sharded runs equal the
one-device run, every config's method/optimizer trains, and bad configs fail before any model is loaded."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

from configs import (common, dora_llama, full_llama, inttune_llama, lora_llama, loraga_llama, lorapro_llama,
                     nlora_llama, nystrom_llama, pissa_llama, qlora_llama, slora_llama)
from lowrank_jax.data import build_batches, load_splits
from lowrank_jax.evaluation.token_loss_eval import mean_token_loss
from lowrank_jax.models import load_pretrained, load_tokenizer
from lowrank_jax.sharding import make_mesh
from lowrank_jax.training.checkpoint import Checkpointer
from lowrank_jax.training.config_check import adapter_config_from, check_config
from lowrank_jax.training.model_source import load_model
from lowrank_jax.training.optimizer import build_optimizer
from lowrank_jax.training import loop, placement
from lowrank_jax.training.placement import adapt_onto_mesh, init_optimizer
from lowrank_jax.training.step import make_train_step
from lowrank_jax.training.restore import trained_model
from run_setup import logged_losses, tiny, write_problems


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Short GSM8K-format problems (question / answer with `#### n`), written by the test."""
    directory = tmp_path_factory.mktemp("data")
    write_problems(directory)
    return directory


def assert_trees_close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def validation_loss_of_checkpoint(config):
    """The validation loss of the latest checkpoint in config.workdir, restored the way eval.py restores it."""
    model, tokenizer = trained_model(config, check_config(config), config.workdir)
    batches = build_batches(load_splits(config.data), tokenizer, config.data, process_index=0, process_count=1)
    return mean_token_loss(model, batches.validation())[0]


def test_resume_after_stop_equals_uninterrupted_run_then_eval_and_export(data_dir, tmp_path):
    whole = loop.run(tiny(lora_llama, data_dir, tmp_path / "whole", **{
        "train.steps": 4, "train.checkpoint_every": 2, "train.eval_every": 2, "eval.after": True,
        "train.export_peft": True, "train.export_merged": True}))
    first_config = tiny(lora_llama, data_dir, tmp_path / "split", **{
        "train.steps": 4, "train.checkpoint_every": 2, "train.stop_after": 2})
    first = loop.run(first_config)
    assert first.report["steps"] == 4 and "val_loss" not in first.report
    with open(tmp_path / "whole" / "metrics.jsonl") as f:
        validation = {r["step"]: r["val/loss"] for r in map(json.loads, f) if "val/loss" in r}
    assert sorted(validation) == [2, 4] and validation[4] == whole.report["val_loss"]
    first_config.resume = True
    np.testing.assert_allclose(validation[2], validation_loss_of_checkpoint(first_config), rtol=1e-6)
    resumed = loop.run(tiny(lora_llama, data_dir, tmp_path / "split", **{
        "train.steps": 4, "train.checkpoint_every": 2, "resume": True}))

    losses = logged_losses(tmp_path / "whole")
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    np.testing.assert_allclose(logged_losses(tmp_path / "split"), losses, rtol=1e-6)
    assert_trees_close(resumed.trainable, whole.trainable, 1e-6)
    assert Checkpointer(str(tmp_path / "split")).latest_step() == 4

    after = whole.report["after"]
    assert after["n"] == 4 and 0.0 <= after["accuracy"] <= 1.0 and math.isfinite(after["answer_loss"])
    with open(tmp_path / "whole" / "predictions_after.jsonl") as f:
        assert len(f.readlines()) == 4
    assert os.path.exists(tmp_path / "whole" / "peft" / "adapter_model.safetensors")
    merged_dir = str(tmp_path / "whole" / "merged")  # a model of its own: weights, config and tokenizer
    merged, _ = load_pretrained(merged_dir, dtype="float32", param_dtype="float32")
    batches = build_batches(load_splits(first_config.data), load_tokenizer(merged_dir), first_config.data,
                            process_index=0, process_count=1)
    np.testing.assert_allclose(mean_token_loss(merged, batches.validation())[0], whole.report["val_loss"], rtol=1e-5)


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=4, tensor=1), dict(data=2, fsdp=2, tensor=2)])
def test_sharded_run_equals_one_device_and_shards_base_weights(data_dir, tmp_path, mesh):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    steps = {"train.steps": 2, "train.checkpoint_every": 2}
    single = loop.run(tiny(slora_llama, data_dir, tmp_path / "one", **steps, **{"mesh.devices": 1}))
    sharded = loop.run(tiny(slora_llama, data_dir, tmp_path / "many", **steps, **{"train.loss_chunk_tokens": 24},
                             **{f"mesh.{k}": v for k, v in mesh.items()}))  # and its loss 24 positions at a time
    np.testing.assert_allclose(logged_losses(tmp_path / "many"), logged_losses(tmp_path / "one"), rtol=1e-5)
    assert_trees_close(sharded.trainable, single.trainable, 1e-5)

    kernel = sharded.frozen["layers"]["mlp"]["gate_proj"]["base"]["kernel"]  # (L, embed, mlp)
    spec = tuple(kernel.sharding.spec) + (None,) * 3
    assert spec[1] == "fsdp" and spec[2] == ("tensor" if mesh["tensor"] > 1 else None)
    shard_shape = kernel.addressable_shards[0].data.shape
    assert shard_shape[1] == kernel.shape[1] // mesh["fsdp"]
    assert shard_shape[2] == kernel.shape[2] // mesh["tensor"]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = common.TINY_MODEL
# (in, out) of the seven adapted projections of the tiny model.
PROJECTIONS = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]


def expected_trainable(config):
    """Closed-form trainable parameter counts of the tiny model (2 layers) per method."""
    layers = TINY["num_hidden_layers"]
    if config.train.trainable == "all":
        hidden, vocab = TINY["hidden_size"], TINY["vocab_size"]
        per_layer = sum(i * o for i, o in PROJECTIONS) + 2 * hidden
        return layers * per_layer + vocab * hidden + hidden  # tied embeddings + final norm
    method, rank = config.adapter.method, config.adapter.rank
    lora = layers * sum(rank * (i + o) for i, o in PROJECTIONS)
    if method in ("lora", "pissa", "loraga"):
        return lora
    if method == "dora":  # and a magnitude per output column
        return lora + layers * sum(o for _, o in PROJECTIONS)
    if method in ("slora", "nlora", "nystrom"):
        return lora + layers * len(PROJECTIONS) * rank * rank
    assert method == "inttune", method
    return layers * len(PROJECTIONS) * rank * rank


@pytest.mark.parametrize("module,optimizer", [
    (lora_llama, "adamw"), (lora_llama, "sgd"), (slora_llama, "adamw"), (nlora_llama, "adamw"),
    (nystrom_llama, "adamw"), (inttune_llama, "adamw"), (pissa_llama, "adamw"), (full_llama, "adamw"),
    (lorapro_llama, "lorapro"), (lorapro_llama, "lorapro_adamw"), (nlora_llama, "lorapro"),
    (inttune_llama, "lorapro_adamw"), (dora_llama, "adamw"), (dora_llama, "lorapro"), (lora_llama, "loraplus"),
    (loraga_llama, "adamw"), (qlora_llama, "lorapro"),
])
def test_every_config_trains_a_few_steps(data_dir, tmp_path, module, optimizer):
    overrides = {"optimizer.loraplus_ratio": 16.0} if optimizer == "loraplus" else {"optimizer.name": optimizer}
    config = tiny(module, data_dir, tmp_path, **{"train.steps": 2, **overrides})
    result = loop.run(config)
    assert all(math.isfinite(x) for x in logged_losses(tmp_path))
    assert math.isfinite(result.report["val_loss"])
    assert result.report["trainable_params"] == expected_trainable(config)


def test_lorapro_adamw_moments_are_split_over_the_run_mesh(data_dir, tmp_path):
    """LoRA-Pro AdamW's full-size moments, as train.py places them on an fsdp mesh of 8: each device holds 1/8."""
    config = tiny(lorapro_llama, data_dir, tmp_path, **{"optimizer.name": "lorapro_adamw"})
    model, _, _ = load_model(config.model, "random", config.seed)
    mesh = make_mesh(fsdp=-1)
    state = adapt_onto_mesh(model, adapter_config_from(config), mesh)
    optimizer = build_optimizer(config.optimizer, 4, state.frozen)
    opt_state = init_optimizer(optimizer, state.trainable, mesh)
    moments = [x for path, x in jax.tree_util.tree_flatten_with_path(opt_state)[0]
               if "delta_kernel" in jax.tree_util.keystr(path)]
    assert len(moments) == 2 * 7  # mu and nu of the 7 stacked projections
    for x in moments:
        assert x.addressable_shards[0].data.size * 8 == x.size, (x.shape, x.sharding)


@pytest.mark.parametrize("module,optimizer", [(nystrom_llama, "adamw"), (lorapro_llama, "lorapro_adamw")])
def test_unrolled_layers_train_like_scanned_ones(data_dir, tmp_path, module, optimizer):
    """model.scan_layers=False (the llama2_7b preset's, for speed): same inits, losses and adapters as the scan."""
    runs = {}
    for scan in (True, False):
        workdir = tmp_path / f"scan_{scan}"
        config = tiny(module, data_dir, workdir, **{"train.steps": 2, "optimizer.name": optimizer,
                                                    "model.scan_layers": scan, "train.export_peft": True})
        runs[scan] = loop.run(config)
        assert runs[scan].report["trainable_params"] == expected_trainable(config)
    np.testing.assert_allclose(logged_losses(tmp_path / "scan_False"), logged_losses(tmp_path / "scan_True"),
                               rtol=1e-5)
    exported = [safetensors.numpy.load_file(tmp_path / f"scan_{scan}" / "peft" / "adapter_model.safetensors")
                for scan in (True, False)]
    assert exported[0].keys() == exported[1].keys()
    for name, scanned in exported[0].items():  # float32 rounding apart (per-layer vs batched LoRA-Pro solves)
        assert np.linalg.norm(exported[1][name] - scanned) <= 1e-4 * np.linalg.norm(scanned), name


@pytest.mark.parametrize("overrides,message", [
    ({"adapter.method": "inttune", "adapter.init_base": "lora"}, "init_base"),
    ({"train.trainable": "all", "optimizer.name": "lorapro"}, "train.trainable='all'"),
    ({"train.trainable": "lora"}, "train.trainable"),
    ({"optimizer.loraplus_ratio": -1.0}, "loraplus_ratio"),
    ({"model.quantize": "nf3"}, "model.quantize"),
    ({"adapter.method": "loraga", "loraga.gradient_batches": 0}, "gradient_batches"),
    ({"adapter.method": "inttune", "optimizer.loraplus_ratio": 16.0}, "loraplus_ratio"),
    ({"adapter.method": "vera"}, "vera"),
    ({"adapter.rank": 0}, "rank"),
    ({"optimizer.schedule": "step"}, "optimizer.schedule"),
    ({"data.batch_size": 6, "data.grad_accum": 4}, "grad_accum"),
    ({"model.path": "/no/such/model"}, "/no/such/model"),
    ({"model.dtype": "float16"}, "model.dtype"),
    ({"model.attention_impl": "flash"}, "model.attention_impl"),
    ({"model.attention_impl": "cudnn", "model.dtype": "float32"}, "bfloat16"),
    ({"train.loss_chunk_tokens": -1}, "train.loss_chunk_tokens"),
    ({"optimizer.fused_update": True}, "optimizer.fused_update"),
])
def test_bad_configs_fail_before_loading(data_dir, tmp_path, overrides, message):
    with pytest.raises(ValueError if "path" not in str(overrides) else FileNotFoundError, match=message):
        check_config(tiny(lora_llama, data_dir, tmp_path, **overrides))


def test_everything_that_runs_the_model_is_traced_under_the_run_mesh(data_dir, tmp_path, monkeypatch):
    """Per-device kernels (cuDNN packed attention via `per_shard`) find the mesh only if `run` sets it where the
    model runs: step, validation loss, evaluation (and not around loading: see `loop.on_mesh`)."""
    seen = []

    def recording(label, fn):
        def wrapped(*args, **kwargs):
            seen.append((label, dict(jax.sharding.get_abstract_mesh().shape)))
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(loop, "mean_token_loss", recording("validation", loop.mean_token_loss))
    # The step is compiled ahead of time (the memory plan): it is traced once, and must be traced under the mesh.
    monkeypatch.setattr(placement, "make_train_step", lambda *a, **k: recording("step", make_train_step(*a, **k)))
    monkeypatch.setattr(loop, "evaluate", recording("evaluate", loop.evaluate))
    loop.run(tiny(lora_llama, data_dir, tmp_path, **{"mesh.data": 2, "mesh.fsdp": -1, "mesh.devices": 4, "train.steps": 2,
                                                      "eval.before_and_after": True}))
    mesh = {"data": 2, "fsdp": 2, "tensor": 1}
    assert seen == [("validation", mesh), ("evaluate", mesh), ("step", mesh), ("validation", mesh),
                    ("evaluate", mesh)]
    assert jax.sharding.get_abstract_mesh().empty  # and unset afterwards


@pytest.mark.parametrize("user_value", [None, "0.5"])
def test_entry_points_raise_the_gpu_memory_fraction_before_jax_touches_a_device(user_value):
    """JAX's default (75%) left the 7B preset's train step out of memory on an 80 GB GPU; train.py and eval.py raise
    it to 0.95 unless the user set it, which only works while importing them initialises no JAX backend."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_MEM_FRACTION"}
    if user_value:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = user_value
    for module in ("train", "eval"):
        code = (f"import os, {module}; from jax._src import xla_bridge; "
                "print(os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'], xla_bridge.backends_are_initialized())")
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == [user_value or "0.95", "False"], module


def test_two_processes_with_jax_distributed_agree_with_one_process(data_dir, tmp_path):
    """Two CPU processes (4 fake devices each) joined by jax.distributed, each feeding its own half of every batch,
    log the same losses as one process with one device."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    flags = ["--config=configs/lora_llama.py:tiny", f"--config.data.train={data_dir / 'train.jsonl'}",
             f"--config.data.test={data_dir / 'test.jsonl'}", f"--config.workdir={tmp_path / 'two'}",
             "--config.train.steps=3", "--config.eval.after=False", "--config.train.export_peft=False",
             "--config.distributed.num_processes=2", f"--config.distributed.coordinator_address=localhost:{port}"]
    # 4 fake devices per process; the suite's other XLA flags (conftest.py: cheaper compilation) carry over
    xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count=4 {xla_flags}", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "train.py", *flags, f"--config.distributed.process_id={i}"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
    loop.run(tiny(lora_llama, data_dir, tmp_path / "one", **{"train.steps": 3, "mesh.devices": 1}))
    np.testing.assert_allclose(logged_losses(tmp_path / "two"), logged_losses(tmp_path / "one"), rtol=1e-5)
