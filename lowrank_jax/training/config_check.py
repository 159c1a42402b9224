"""Checks a run config before anything expensive happens, with errors that name the key and the fix.

ml_collections' `lock_config=True` already rejects unknown keys and wrongly-typed overrides; this module checks
values and combinations: names from the registries, ranges, forbidden pairs, paths that must exist, every record of
local data files, and the adapter targets and rank against the model's structure (preflight.py). Whether the workdir
may take the run is workdir.py's question.
"""

from __future__ import annotations

import ml_collections
from jax.sharding import Mesh

from lowrank_jax.adapters import AdapterConfig
from lowrank_jax.data import check_data_config
from lowrank_jax.evaluation.tasks import check_eval_config
from lowrank_jax.quant import FORMATS as QUANTIZE_FORMATS
from lowrank_jax.models.attention_choice import check_attention_impl
from lowrank_jax.models.config import DTYPES as MODEL_DTYPES
from lowrank_jax.models.config import REMAT_POLICIES
from lowrank_jax.training.memory_plan import AUTO_GRAD_ACCUM, AUTO_REMAT
from lowrank_jax.training.model_source import resolve_model_path
from lowrank_jax.training.optimizer import LORAPRO_OPTIMIZERS, OPTIMIZERS, SCHEDULES
from lowrank_jax.training.preflight import check_adapter_targets

MOMENT_DTYPES = ("float32", "bfloat16", "float16")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"config: {message}")


TRAINABLE = ("adapters", "all")


def adapter_config_from(config: ml_collections.ConfigDict) -> AdapterConfig | None:
    """The library's AdapterConfig from the run config's `adapter` block (validates method, rank, dtype, ...), or
    None for full fine-tuning (`train.trainable='all'`)."""
    if config.train.trainable == "all":
        return None
    return AdapterConfig(**config.adapter.to_dict())


def check_mesh(config: ml_collections.ConfigDict, mesh: Mesh, process_count: int) -> None:
    """The micro-batch (with data.grad_accum=0, the whole batch) splits evenly over the mesh's data-parallel devices
    and the processes."""
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    accum = config.data.grad_accum
    if accum == AUTO_GRAD_ACCUM:
        _require(config.data.batch_size % batch_devices == 0 and config.data.batch_size % process_count == 0,
                 f"data.batch_size = {config.data.batch_size} rows must split evenly over data*fsdp = "
                 f"{batch_devices} devices and {process_count} processes; change data.batch_size or mesh")
        return
    micro_batch = config.data.batch_size // accum
    _require(micro_batch % batch_devices == 0 and micro_batch % process_count == 0,
             f"data.batch_size / data.grad_accum = {micro_batch} rows must split evenly over data*fsdp = "
             f"{batch_devices} devices and {process_count} processes; change data.batch_size, data.grad_accum or mesh")


def check_config(config: ml_collections.ConfigDict) -> str:
    """Validates `config`; returns the resolved local model path ('random' for random models)."""
    m, o, d, t, e = config.model, config.optimizer, config.data, config.train, config.eval
    _require(m.dtype in MODEL_DTYPES and m.param_dtype in MODEL_DTYPES,
             f"model.dtype={m.dtype!r} / model.param_dtype={m.param_dtype!r}: use one of {MODEL_DTYPES}")
    _require(m.remat in (AUTO_REMAT, *REMAT_POLICIES),
             f"model.remat={m.remat!r}: use {AUTO_REMAT!r} (the fastest policy that fits the device's memory) or one "
             f"of {REMAT_POLICIES}")
    _require(t.device_memory_gib >= 0, f"train.device_memory_gib={t.device_memory_gib} must be 0 (the device's own "
             "limit) or the per-device memory in GiB that the memory plan fits the train step into")
    try:
        check_attention_impl(m.attention_impl, m.dtype)
    except ValueError as err:
        raise ValueError(f"config: model.{err}") from None
    _require(t.trainable in TRAINABLE, f"train.trainable={t.trainable!r}: choose one of {TRAINABLE}")
    full = t.trainable == "all"
    adapter_config_from(config)
    _require(o.name in OPTIMIZERS, f"optimizer.name={o.name!r} is unknown; choose one of {OPTIMIZERS}")
    _require(not (full and o.name in LORAPRO_OPTIMIZERS),
             f"optimizer.name={o.name!r} adjusts low-rank factors, but train.trainable='all' trains no adapters; "
             "use optimizer.name='adamw' for full fine-tuning, or train.trainable='adapters'")
    ratio = o.loraplus_ratio
    _require(ratio is None or (ratio > 0 and not full and config.adapter.method != "inttune"),
             f"optimizer.loraplus_ratio={ratio} scales lora_b's updates: it must be > 0 and needs a method whose B "
             "trains (not train.trainable='all' or inttune); leave it unset to turn LoRA+ off")
    _require(m.quantize in ("none", *QUANTIZE_FORMATS), f"model.quantize={m.quantize!r}: choose 'none', 'int8' or 'nf4'")
    _require(not (full and m.quantize != "none"), f"model.quantize={m.quantize!r} stores the frozen base quantized, "
             "but train.trainable='all' trains every weight; set model.quantize='none' or train.trainable='adapters'")
    _require(full or config.adapter.method != "loraga" or config.loraga.gradient_batches >= 1,
             f"loraga.gradient_batches={config.loraga.gradient_batches} must be >= 1 (LoRA-GA's init reads them)")
    _require(o.schedule in SCHEDULES, f"optimizer.schedule={o.schedule!r}: choose one of {SCHEDULES}")
    _require(o.learning_rate > 0, f"optimizer.learning_rate={o.learning_rate} must be > 0")
    _require(0 <= o.warmup_ratio < 1, f"optimizer.warmup_ratio={o.warmup_ratio} must be in [0, 1)")
    _require(not o.fused_update or o.name == "lorapro_adamw", f"optimizer.fused_update fuses lorapro_adamw's step, "
             f"but optimizer.name={o.name!r}; set optimizer.name='lorapro_adamw' or fused_update=False")
    _require(o.moment_dtype in MOMENT_DTYPES,
             f"optimizer.moment_dtype={o.moment_dtype!r}: use one of {MOMENT_DTYPES}")
    _require(t.steps > 0 or d.epochs > 0, "set train.steps > 0 or data.epochs > 0")
    _require(t.log_every > 0 and t.checkpoint_every > 0 and t.keep_checkpoints > 0,
             "train.log_every, train.checkpoint_every and train.keep_checkpoints must be > 0")
    _require(t.loss_chunk_tokens >= 0, f"train.loss_chunk_tokens={t.loss_chunk_tokens} must be 0 (the loss's logits "
             "all at once) or a positive number of sequence positions per chunk")
    _require(e.batch_size > 0 and e.max_new_tokens > 0, "eval.batch_size and eval.max_new_tokens must be > 0")
    check_eval_config(e)
    check_data_config(d, needs_test=(e.after or e.before_and_after) and e.task != "humaneval")
    model_path = resolve_model_path(m.path)
    check_adapter_targets(adapter_config_from(config), m, model_path)
    return model_path
