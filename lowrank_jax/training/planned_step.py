"""The run's compiled train step: the config's `model.remat` and `data.grad_accum`, where either is 'auto' ('auto',
0) the fastest that fits the devices' memory (memory_plan.py), compiled once and reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from lowrank_jax.data.packing import BATCH_DTYPES
from lowrank_jax.sharding import batch_sharding
from lowrank_jax.training.memory_plan import (AUTO_GRAD_ACCUM, AUTO_REMAT, REMAT_FASTEST_FIRST, MemoryPlan,
                                              device_memory_limit, micro_batch_options, plan_memory)
from lowrank_jax.training.placement import TrainState, compile_train_step, with_remat


def train_step_compiler(config: ml_collections.ConfigDict, state: TrainState, optimizer: optax.GradientTransformation,
                        opt_state, mesh: Mesh) -> Callable:
    """`compile_for(remat, grad_accum)`: the run's train step compiled with that remat policy for its batch
    (`data.batch_size` rows of `data.max_length` tokens) in that many micro-batches, laid out on `mesh`."""
    rows, seq_len = config.data.batch_size, config.data.max_length
    layout = batch_sharding(mesh)

    def compile_for(remat: str, accum: int):
        batch = {name: jax.ShapeDtypeStruct((accum, rows // accum, seq_len), dtype, sharding=layout)
                 for name, dtype in BATCH_DTYPES.items()}
        return compile_train_step(with_remat(state, remat), optimizer, opt_state, batch, mesh,
                                  loss_chunk_tokens=config.train.loss_chunk_tokens)

    return compile_for


def planned_train_step(config: ml_collections.ConfigDict, state: TrainState, optimizer: optax.GradientTransformation,
                       opt_state, mesh: Mesh) -> tuple[Callable, MemoryPlan]:
    """The train step of `config` on `mesh`, compiled as the memory plan chooses.

    Candidates: every remat policy when `model.remat='auto'` (else the one set), and every number of micro-batches
    that splits the batch evenly over the batch devices and processes when `data.grad_accum=0` (else the one set).
    The limit is `train.device_memory_gib` when > 0, else the devices' own (`device_memory_limit`).

    Returns:
      (compiled step with `make_train_step`'s signature, MemoryPlan); feed it batches of `plan.grad_accum`
      micro-batches.

    Raises:
      MemoryPlanError: nothing fits.
    """
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    remats = REMAT_FASTEST_FIRST if config.model.remat == AUTO_REMAT else (config.model.remat,)
    accums = (micro_batch_options(config.data.batch_size, math.lcm(batch_devices, jax.process_count()))
              if config.data.grad_accum == AUTO_GRAD_ACCUM else (config.data.grad_accum,))
    local_devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    limit = device_memory_limit(local_devices, config.train.device_memory_gib)
    plan, compiled = plan_memory(train_step_compiler(config, state, optimizer, opt_state, mesh), remats=remats,
                                 accums=accums, batch_rows=config.data.batch_size, seq_len=config.data.max_length,
                                 batch_devices=batch_devices, limit_bytes=limit)
    return compiled, plan
