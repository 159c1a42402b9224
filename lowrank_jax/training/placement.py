"""How a model's state goes onto a mesh for training: split, place, initialise the optimizer, jit (or compile) the
step, with the model's remat policy swapped where the memory plan asks.

The training loop, restoring a run and the benchmarks call these, so what is benchmarked is exactly the step users run.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lowrank_jax.adapters import AdapterConfig, adapt
from lowrank_jax.quant import quantize as quantize_base
from lowrank_jax.sharding import state_shardings
from lowrank_jax.training.step import make_train_step


class TrainState(NamedTuple):
    """A model split for training, every leaf on the mesh (pure trees: arrays, no Variables)."""

    graphdef: nnx.GraphDef
    trainable: Any   # what the optimizer updates: adapter factors (nnx.LoRAParam), or every nnx.Param without adapters
    rngs: Any        # RNG state (adapter dropout), replicated
    frozen: Any      # everything else: the base weights, frozen factors, the adapters' scales


def trainable_filter(model: nnx.Module) -> type[nnx.Variable]:
    """What trains, read from the model: its adapter factors (`nnx.LoRAParam`; frozen factors are not) when it has
    any, else every `nnx.Param` (full fine-tuning)."""
    return nnx.LoRAParam if nnx.state(model, nnx.LoRAParam) else nnx.Param


def split_onto_mesh(model: nnx.Module, mesh: Mesh) -> TrainState:
    """Splits `model` into trainable / RNG / frozen state and places each leaf by its logical axis names."""
    graphdef, trainable, rngs, frozen = nnx.split(model, trainable_filter(model), nnx.RngState, ...)
    trainable, frozen = (jax.device_put(nnx.as_pure(s), state_shardings(s, mesh)) for s in (trainable, frozen))
    rngs = jax.device_put(nnx.as_pure(rngs), NamedSharding(mesh, PartitionSpec()))
    return TrainState(graphdef, trainable, rngs, frozen)


def adapt_onto_mesh(model: nnx.Module, adapter: AdapterConfig | None, mesh: Mesh, *, quantize: str = "none",
                    gradients=None) -> TrainState:
    """The one path from a loaded base model to its training state: adapters put on (none when `adapter` is None:
    full fine-tuning; LoRA-GA reads `gradients`), the frozen base quantized ('int8', 'nf4'; after the adapters, so
    residual inits quantize their residual, as QPiSSA does), then split and placed on `mesh`. Training, restoring a
    run and the benchmarks call it."""
    if adapter is not None:
        model = adapt(model, adapter, gradients)
    if quantize != "none":
        model = quantize_base(model, quantize)
    return split_onto_mesh(model, mesh)


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


def jit_train_step(state: TrainState, optimizer: optax.GradientTransformation, opt_state: Any, *,
                   loss_chunk_tokens: int = 0):
    """The jitted train step; its outputs keep their inputs' shardings (one compile) and the inputs are donated.
    `loss_chunk_tokens` as `make_train_step` takes it (config: `train.loss_chunk_tokens`)."""
    shardings = jax.tree.map(lambda x: x.sharding, (state.trainable, opt_state, state.rngs))
    step = make_train_step(state.graphdef, optimizer, loss_chunk_tokens=loss_chunk_tokens)
    return jax.jit(step, donate_argnums=(0, 1, 2), out_shardings=(*shardings, None))


def with_remat(state: TrainState, remat: str) -> TrainState:
    """`state` whose model recomputes activations under the policy `remat` (`LlamaConfig.remat`): a new graphdef,
    the same arrays."""
    model = nnx.merge(state.graphdef, state.trainable, state.rngs, state.frozen)
    model.config = model.config.replace(remat=remat)
    return state._replace(graphdef=nnx.graphdef(model))


def compile_train_step(state: TrainState, optimizer: optax.GradientTransformation, opt_state: Any, batch: Any,
                       mesh: Mesh, *, loss_chunk_tokens: int = 0):
    """`jit_train_step` lowered for `batch` (leaves `jax.ShapeDtypeStruct` (accum, B, T) with the batch sharding)
    and compiled ahead of time, traced under `mesh` as the loop runs it; its `memory_analysis()` is XLA's buffer
    assignment of one step."""
    step = jit_train_step(state, optimizer, opt_state, loss_chunk_tokens=loss_chunk_tokens)
    with jax.set_mesh(mesh):
        return step.lower(state.trainable, opt_state, state.rngs, state.frozen, batch).compile()
