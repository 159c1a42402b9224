"""LoRA-GA's input in a run: the loss gradients of the target kernels, averaged over the first training batches."""

from __future__ import annotations

import jax.numpy as jnp

from lowrank_jax.adapters.loraga import estimate_gradients
from lowrank_jax.losses import token_loss
from lowrank_jax.training.memory_plan import AUTO_GRAD_ACCUM


def loraga_gradients(model, train_batches, config):
    """A lazy {module path: gradient (…, in, out)} from the first `loraga.gradient_batches` training batches, split
    into the run's micro-batches (one row each with `data.grad_accum=0`: the split must not depend on the device,
    since restoring the run rebuilds the base from the same gradients); the iterator is rewound, so training still
    starts at its first batch."""
    start = train_batches.state()
    sample = [next(train_batches) for _ in range(config.loraga.gradient_batches)]
    train_batches.restore(start)
    rows = len(next(iter(sample[0].values())))
    micro = 1 if config.data.grad_accum == AUTO_GRAD_ACCUM else rows // config.data.grad_accum
    micro_batches = [{k: jnp.asarray(v[i:i + micro]) for k, v in batch.items()}
                     for batch in sample for i in range(0, len(batch["input_ids"]), micro)]

    def mean_token_loss(model, batch):
        loss_sum, n_tokens = token_loss(model, batch)
        return loss_sum / jnp.maximum(n_tokens, 1.0)

    return estimate_gradients(model, mean_token_loss, micro_batches, config.adapter.targets)
