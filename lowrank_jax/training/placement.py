"""How a model's state goes onto a mesh for training: split, place, initialise the optimizer, jit the step.

train.py and the benchmarks both call these, so what is benchmarked is exactly the step users run.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lowrank_jax.adapters import AdapterScale
from lowrank_jax.sharding import state_shardings
from lowrank_jax.training.step import make_train_step


class TrainState(NamedTuple):
    """A model split for training, every leaf on the mesh (pure trees: arrays, no Variables)."""

    graphdef: nnx.GraphDef
    trainable: Any   # what the optimizer updates: adapter factors (nnx.LoRAParam), or every nnx.Param when full
    rngs: Any        # RNG state (adapter dropout), replicated
    frozen: Any      # everything else: the base weights, frozen factors, scales
    scales: Any      # the adapters' recorded scales (nnx.state(model, AdapterScale)), None for full fine-tuning


def trainable_type(full: bool) -> type[nnx.Variable]:
    """What trains: every Param for full fine-tuning, else the adapter factors (frozen ones are not LoRAParams)."""
    return nnx.Param if full else nnx.LoRAParam


def split_onto_mesh(model: nnx.Module, mesh: Mesh, full: bool) -> TrainState:
    """Splits `model` into trainable / RNG / frozen state and places each leaf by its logical axis names."""
    graphdef, trainable, rngs, frozen = nnx.split(model, trainable_type(full), nnx.RngState, ...)
    scales = None if full else nnx.as_pure(nnx.state(model, AdapterScale))
    trainable, frozen = (jax.device_put(nnx.as_pure(s), state_shardings(s, mesh)) for s in (trainable, frozen))
    rngs = jax.device_put(nnx.as_pure(rngs), NamedSharding(mesh, PartitionSpec()))
    return TrainState(graphdef, trainable, rngs, frozen, scales)


def init_optimizer(optimizer: optax.GradientTransformation, trainable: Any, mesh: Mesh) -> Any:
    """Optimizer state laid out like the parameters it shadows; leaves that depend on no parameter, such as step
    counts, are replicated over the mesh.

    `init` runs eagerly on the placed parameters, so each moment is created with the sharding its parameters dictate
    (LoRA-Pro AdamW's full-size moments: from lora_a's and lora_b's) instead of one left to XLA's propagation (which
    once left those moments whole on each GPU of a 2-GPU FSDP mesh; see `optim/moments.py::anchored_zeros`).
    """
    opt_state = optimizer.init(trainable)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding)
                        else jax.device_put(np.asarray(x), replicated), opt_state)


def jit_train_step(state: TrainState, optimizer: optax.GradientTransformation, opt_state: Any):
    """The jitted train step; its outputs keep their inputs' shardings (one compile) and the inputs are donated."""
    shardings = jax.tree.map(lambda x: x.sharding, (state.trainable, opt_state, state.rngs))
    return jax.jit(make_train_step(state.graphdef, optimizer), donate_argnums=(0, 1, 2),
                   out_shardings=(*shardings, None))
