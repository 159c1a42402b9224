"""A finished (or stopped) run's model: the config's base model with the trained weights of its latest checkpoint.

`eval.py --workdir` evaluates it; tests compare it with what the training loop measured.
"""

from __future__ import annotations

from flax import nnx

from lowrank_jax.adapters import adapt
from lowrank_jax.training.checkpoint import Checkpointer
from lowrank_jax.training.config_check import adapter_config_from
from lowrank_jax.training.model_source import load_model
from lowrank_jax.training.placement import trainable_type


def trained_model(config, model_path: str, workdir: str):
    """The base model with its adapters (or full weights) restored from `workdir`'s latest checkpoint.

    Returns:
      (model, tokenizer); the model is unsharded (single process).
    """
    model, _, tokenizer = load_model(config.model, model_path, config.seed)
    full = config.adapter.method == "full"
    if not full:
        model = adapt(model, adapter_config_from(config.adapter))
    graphdef, trainable, rest = nnx.split(model, trainable_type(full), ...)
    items, meta = Checkpointer(workdir).restore({"trainable": nnx.as_pure(trainable)})
    print(f"restored step {meta['step']} from {workdir}")
    return nnx.merge(graphdef, items["trainable"], rest), tokenizer
