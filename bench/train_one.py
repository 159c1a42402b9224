"""One train-step benchmark configuration, run in this process: the users' jitted step on a random model.

Builds the model on the devices, adapts it as the training loop does, compiles the loop's own step
(lowrank_jax/training/placement.py) ahead of time (compile time, XLA's memory estimate), runs warm-up and timed
steps, and returns one result row. `bench/train_step.py` runs a table of these, each in a fresh process so that
the peak-memory counter belongs to one configuration:

  python -m bench.train_one --spec '{"model": "tiny", "method": "lora-r8", "seq": 64, "batch": 4}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from bench.common import (GIB, METHODS, canonical_model, matmul_params, mfu, model_shape, synthetic_batch,
                          train_step_flops, write_json)
from bench.random_llama import random_llama
from configs import common as run_configs
from lowrank_jax import AdapterConfig
from lowrank_jax.adapters.loraga import estimate_gradients
from lowrank_jax.losses import token_loss
from lowrank_jax.models import LlamaConfig
from lowrank_jax.sharding import batch_sharding, make_mesh
from lowrank_jax.training import memory_plan
from lowrank_jax.training.optimizer import build_optimizer
from lowrank_jax.training.placement import adapt_onto_mesh, init_optimizer
from lowrank_jax.training.planned_step import planned_train_step, train_step_compiler

ADAPTER_FACTORS = ("lora_a", "lora_m", "lora_b")  # trained or frozen; the residual inits' copies are not counted


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one configuration needs; JSON-serialisable so a parent process can hand it over.

    `batch` rows per optimizer step in `accum` micro-batches; `mesh` sizes (data, fsdp, tensor) over the first
    `devices` devices; `warmup` untimed steps, then `steps` timed ones (losses of all are recorded).
    `loss_chunk_tokens` as `train.loss_chunk_tokens` (0 = the loss's logits at once), `fuse_projections` as
    `model.fuse_projections`. `remat` 'auto' and `accum` 0: the memory plan picks the policy and the number of
    micro-batches, the fastest that fits the device, as the training loop does (lowrank_jax/training/
    planned_step.py). `max_rank` caps the method's rank (tiny smoke-test shapes are narrower than 128).
    """

    model: str
    method: str
    seq: int
    batch: int
    accum: int = 1
    steps: int = 5
    warmup: int = 2
    remat: str = "full"
    scan_layers: bool = True
    attention: str = "cudnn"
    dtype: str = "bfloat16"
    adapter_dtype: str = "float32"
    devices: int = 1
    mesh: tuple[int, int, int] = (1, -1, 1)
    learning_rate: float = 2e-4
    segments: int = 1
    loss_chunk_tokens: int = 0
    fuse_projections: bool = False
    max_rank: int | None = None
    peak_tflops: float = 989.0
    seed: int = 0

    def check(self) -> None:
        """Raises ValueError for a spec that cannot run, naming the field and the fix (before any device work)."""
        canonical_model(self.model)
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is unknown; choose from {sorted(METHODS)}")
        for name in ("seq", "batch", "steps", "devices", "segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("warmup", "loss_chunk_tokens", "accum"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.accum and self.batch % self.accum:
            raise ValueError(f"batch={self.batch} must be a multiple of accum={self.accum}")
        if self.seq % self.segments:
            raise ValueError(f"seq={self.seq} must be a multiple of segments={self.segments}")


def make_batch(spec: RunSpec, step: int) -> dict[str, np.ndarray]:
    """Step `step`'s batch in the train step's layout: leaves (accum, batch / accum, seq).

    Each row holds `segments` packed sequences; the first token of a segment is not a target.
    """
    input_ids = synthetic_batch(step, spec.batch, spec.seq, model_shape(spec.model)["vocab_size"], spec.seed)
    length = spec.seq // spec.segments
    index = np.arange(spec.seq)
    segment_ids = np.broadcast_to(1 + index // length, input_ids.shape).astype(np.int32)
    positions = np.broadcast_to(index % length, input_ids.shape).astype(np.int32)
    loss_mask = np.broadcast_to(index % length != 0, input_ids.shape).astype(np.float32)
    batch = dict(input_ids=input_ids, loss_mask=loss_mask, segment_ids=segment_ids, positions=positions)
    return {k: v.reshape(spec.accum, spec.batch // spec.accum, spec.seq) for k, v in batch.items()}


def adapter_rank(spec: RunSpec) -> int:
    """The method's rank, capped by `spec.max_rank`."""
    rank = METHODS[spec.method].rank
    return rank if spec.max_rank is None else min(rank, spec.max_rank)


def run_config(spec: RunSpec):
    """The run configs' config for this method (user defaults: clipping, cosine schedule, AdamW betas, LoRA-GA's
    gradient batches)."""
    method = METHODS[spec.method]
    settings = {"embedded": dict(rank=adapter_rank(spec), alpha=2.0 * adapter_rank(spec),
                                 learning_rate=spec.learning_rate)}
    config = run_configs.get_config(None, method=method.adapter, settings=settings, optimizer=method.optimizer,
                                    trainable="adapters" if method.adapter else "all")
    config.optimizer.update(moment_dtype=method.moment_dtype, loraplus_ratio=method.loraplus_ratio,
                            fused_update=method.fused_update)
    config.model.remat = spec.remat
    config.data.update(batch_size=spec.batch, max_length=spec.seq, grad_accum=spec.accum)
    config.train.loss_chunk_tokens = spec.loss_chunk_tokens
    return config


def loraga_gradients(spec: RunSpec, model):
    """LoRA-GA's gradient estimate as a run makes it (training/loraga_gradients.py: the mean token loss over the
    micro-batches of the first `loraga.gradient_batches` batches), from this benchmark's synthetic batches."""
    config = run_config(spec)
    spec = dataclasses.replace(spec, accum=spec.accum or spec.batch)   # a planned step's: one row each, as the loop
    micro_batches = [{k: v[i] for k, v in make_batch(spec, step).items()}
                     for step in range(config.loraga.gradient_batches) for i in range(spec.accum)]

    def mean_token_loss(model, batch):
        loss_sum, n_tokens = token_loss(model, batch)
        return loss_sum / n_tokens

    return estimate_gradients(model, mean_token_loss, micro_batches, config.adapter.targets)


def build_state(spec: RunSpec, mesh):
    """(TrainState, parameter counts and the adapters' init seconds, LoRA-GA's gradient estimate included), adapted,
    split and placed by the training loop's own function."""
    method = METHODS[spec.method]
    rank = adapter_rank(spec)
    remat = "full" if spec.remat == memory_plan.AUTO_REMAT else spec.remat   # the plan swaps in its choice (`prepare`)
    config = LlamaConfig(**model_shape(spec.model), dtype=spec.dtype, param_dtype=spec.dtype,
                         scan_layers=spec.scan_layers, remat=remat, attention_impl=spec.attention,
                         fuse_projections=spec.fuse_projections)
    model = random_llama(config, mesh, spec.seed)
    adapter = None
    if method.adapter:
        adapter = AdapterConfig(method=method.adapter, rank=rank, alpha=2.0 * rank, dtype=spec.adapter_dtype,
                                seed=spec.seed, niter=method.niter)
    jax.block_until_ready(nnx.state(model))
    start = time.perf_counter()
    gradients = loraga_gradients(spec, model) if method.adapter == "loraga" else None
    state = adapt_onto_mesh(model, adapter, mesh, gradients=gradients)
    jax.block_until_ready(state.trainable)
    adapter_init_s = time.perf_counter() - start
    leaves = [*jax.tree_util.tree_leaves_with_path(state.trainable), *jax.tree_util.tree_leaves_with_path(state.frozen)]
    counts = {"adapter_params": sum(x.size for path, x in leaves if path[-1].key in ADAPTER_FACTORS),
              "trainable_params": sum(x.size for x in jax.tree.leaves(state.trainable)),
              "adapter_init_s": adapter_init_s}
    return state, counts


def peak_bytes(devices) -> int | None:
    """The largest `peak_bytes_in_use` over `devices`, or None where the backend keeps no statistics (CPU)."""
    stats = [d.memory_stats() for d in devices]
    if any(s is None or "peak_bytes_in_use" not in s for s in stats):
        return None
    return max(s["peak_bytes_in_use"] for s in stats)


def step_memory(compiled) -> dict[str, float | None]:
    """XLA's buffer sizes of one step per device, in GiB: `step_memory_estimate_gib` = the memory plan's estimate
    (arguments + temporaries + outputs not aliased to (donated) inputs); `argument_gib` = the resident state and
    batch alone."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {"step_memory_estimate_gib": None, "argument_gib": None}
    return {"step_memory_estimate_gib": memory_plan.step_memory(compiled).total / GIB,
            "argument_gib": analysis.argument_size_in_bytes / GIB}


@dataclasses.dataclass
class Prepared:
    """A configuration ready to step: the split state on its mesh, batches, the compiled step, its row so far."""

    devices: list
    trainable: Any
    opt_state: Any
    rngs: Any
    frozen: Any
    batches: list
    compiled: Any
    row: dict


def prepare(spec: RunSpec) -> Prepared:
    """Builds the state as the training loop does and compiles the train step ahead of time (nothing runs yet)."""
    spec.check()
    available = jax.devices()
    if spec.devices > len(available):
        raise ValueError(f"devices={spec.devices} but only {len(available)} are visible; lower --devices")
    devices = available[:spec.devices]
    mesh = make_mesh(*spec.mesh, devices=devices)
    row = {"framework": "lowrank-jax", **dataclasses.asdict(spec), "model": canonical_model(spec.model),
           "rank": adapter_rank(spec), "device": devices[0].device_kind,
           "mesh": dict(zip(mesh.axis_names, mesh.devices.shape))}

    start = time.perf_counter()
    state, counts = build_state(spec, mesh)
    total_steps = spec.warmup + spec.steps
    config = run_config(spec)
    optimizer = build_optimizer(config.optimizer, total_steps, state.frozen)
    opt_state = init_optimizer(optimizer, state.trainable, mesh)
    jax.block_until_ready(opt_state)
    row.update(counts, init_s=time.perf_counter() - start)

    start = time.perf_counter()
    limit = (devices[0].memory_stats() or {}).get("bytes_limit")
    if spec.remat == memory_plan.AUTO_REMAT or spec.accum == memory_plan.AUTO_GRAD_ACCUM:
        compiled, plan = planned_train_step(config, state, optimizer, opt_state, mesh)
        print(f"  {plan.line()}", flush=True)
        row.update(remat=plan.remat, accum=plan.grad_accum, memory_plan=plan.as_dict())
        spec = dataclasses.replace(spec, accum=plan.grad_accum)
    else:
        compiled = train_step_compiler(config, state, optimizer, opt_state, mesh)(spec.remat, spec.accum)
    row["compile_s"] = time.perf_counter() - start
    row.update(step_memory(compiled), memory_limit_gib=None if limit is None else limit / GIB)
    batches = [jax.device_put(make_batch(spec, i), batch_sharding(mesh)) for i in range(total_steps)]
    return Prepared(devices, state.trainable, opt_state, state.rngs, state.frozen, batches, compiled, row)


def model_flops(row: dict) -> float:
    """Model FLOPs of one step of the configuration in `row` (needs its adapter and trainable counts)."""
    shape = model_shape(row["model"])
    trained = matmul_params(shape) if METHODS[row["method"]].adapter is None else row["trainable_params"]
    return train_step_flops(shape, row["batch"], row["seq"], row["adapter_params"], trained, row.get("segments", 1))


def run(spec: RunSpec, on_compiled=None) -> dict:
    """Runs one configuration; returns its row.

    Status 'ok' (finite losses), 'nonfinite_loss' (timings still valid) or 'oom' with phase 'compiled' when XLA's
    estimate exceeds the device memory (nothing ran). `on_compiled(row)` is called before the steps start, so a
    parent process can tell a crash while stepping (phase 'steps') from one during model or optimizer init.
    """
    p = prepare(spec)
    estimate, limit = p.row["step_memory_estimate_gib"], p.row["memory_limit_gib"]
    if estimate is not None and limit is not None and estimate > limit:
        return {**p.row, "status": "oom", "phase": "compiled",
                "error": f"XLA needs {estimate:.1f} GiB per device, the limit is {limit:.1f} GiB; lower the batch"}
    if on_compiled is not None:
        on_compiled({**p.row, "phase": "steps"})
    trainable, opt_state, rngs, metrics = p.trainable, p.opt_state, p.rngs, []
    for i, batch in enumerate(p.batches):
        if i == spec.warmup:
            jax.block_until_ready(trainable)
            start = time.perf_counter()
        trainable, opt_state, rngs, step_metrics = p.compiled(trainable, opt_state, rngs, p.frozen, batch)
        metrics.append(step_metrics)
    jax.block_until_ready((trainable, metrics))
    step_s = (time.perf_counter() - start) / spec.steps

    losses = [float(m["loss"]) for m in jax.device_get(metrics)]
    status = "ok" if all(math.isfinite(x) for x in losses) else "nonfinite_loss"
    flops = model_flops(p.row)
    peak = peak_bytes(p.devices)
    tokens_per_s = spec.batch * spec.seq / step_s
    return {**p.row, "status": status, "step_s": step_s, "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": tokens_per_s / spec.devices, "model_tflop_per_step": flops / 1e12,
            "mfu": mfu(flops, step_s, spec.peak_tflops, spec.devices),
            "peak_memory_gib": None if peak is None else peak / GIB, "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="RunSpec fields as JSON")
    parser.add_argument("--result", help="write the row here as JSON (else print it); holds the compiled row "
                                         "while the steps run")
    args = parser.parse_args()
    fields = json.loads(args.spec)
    if "mesh" in fields:
        fields["mesh"] = tuple(fields["mesh"])
    if args.result:
        write_json(args.result, run(RunSpec(**fields), on_compiled=lambda row: write_json(args.result, row)))
    else:
        print(json.dumps(run(RunSpec(**fields)), indent=2, default=float))


if __name__ == "__main__":
    main()
