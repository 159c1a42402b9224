"""A finished (or stopped) run's model: the config's base model with the trained weights of its newest intact
checkpoint.

`eval.py --workdir` evaluates it; tests compare it with what the training loop measured.
"""

from __future__ import annotations

import jax
from flax import nnx

from lowrank_jax.data import build_batches, load_splits
from lowrank_jax.sharding import make_mesh
from lowrank_jax.training.checkpoint import Checkpointer, CheckpointError, describe
from lowrank_jax.training.config_check import adapter_config_from
from lowrank_jax.training.loraga_gradients import loraga_gradients
from lowrank_jax.training.model_source import load_model
from lowrank_jax.training.placement import adapt_onto_mesh


def trained_model(config, model_path: str, workdir: str):
    """The base model with its adapters (or full weights) restored from `workdir`'s newest intact checkpoint (newer
    damaged ones are named and skipped, not moved).

    Returns:
      (model, tokenizer); the model lives on the first device (single process).
    """
    model, _, tokenizer = load_model(config.model, model_path, config.seed)
    mesh = make_mesh(devices=jax.devices()[:1])
    adapter, gradients = adapter_config_from(config), None
    if adapter is not None and adapter.method == "loraga":  # its frozen base is rebuilt from the same gradients
        batches = build_batches(load_splits(config.data), tokenizer, config.data, process_index=0, process_count=1)
        gradients = loraga_gradients(model, batches.train, config)
    graphdef, trainable, rngs, frozen = adapt_onto_mesh(model, adapter, mesh, quantize=config.model.quantize,
                                                        gradients=gradients)
    items, meta, rejected = Checkpointer(workdir).restore_newest_intact({"trainable": trainable})
    if items is None:
        problems = describe(rejected) or "none saved (train first, or check --workdir)"
        raise CheckpointError(f"no intact checkpoint in {workdir}: {problems}")
    skipped = f" (skipped damaged {describe(rejected)})" if rejected else ""
    print(f"restored step {meta['step']} from {workdir}{skipped}")
    return nnx.merge(graphdef, items["trainable"], rngs, frozen), tokenizer
