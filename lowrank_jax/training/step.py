"""The jitted train step: next-token loss on response tokens, gradient accumulation, one optimizer update.

The model is split once into (graphdef, trainable, rngs, frozen); the step differentiates only `trainable`
(adapter factors, or every Param for full fine-tuning) and returns the new trainable tree and optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lowrank_jax.losses import token_loss


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                    loss_chunk_tokens: int = 0) -> Callable:
    """Builds `step(trainable, opt_state, rngs, frozen, batch) -> (trainable, opt_state, rngs, metrics)`.

    `batch` leaves are (accum, B, T): the step scans over the `accum` micro-batches, sums gradients and divides by
    the total number of target tokens, so accumulation equals one big batch exactly (up to summation order).
    `loss_chunk_tokens` > 0 computes the loss's logits that many sequence positions at a time (`token_loss`'s
    `chunk_tokens`), so the (B, T, V) float32 logits never exist; 0 computes them at once.
    """

    def micro_loss(trainable, rngs, frozen, micro_batch):
        model = nnx.merge(graphdef, trainable, rngs, frozen)
        loss_sum, n_tokens = token_loss(model, micro_batch, chunk_tokens=loss_chunk_tokens)
        return loss_sum, (n_tokens, nnx.as_pure(nnx.state(model, nnx.RngState)))

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(trainable, opt_state, rngs, frozen, batch):
        def accumulate(carry, micro_batch):
            grads_sum, loss_sum, n_sum, rngs = carry
            (loss, (n_tokens, rngs)), grads = grad_fn(trainable, rngs, frozen, micro_batch)
            grads_sum = jax.tree.map(lambda acc, g: acc + g.astype(acc.dtype), grads_sum, grads)
            return (grads_sum, loss_sum + loss, n_sum + n_tokens, rngs), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
        init = (zeros, jnp.float32(0), jnp.float32(0), rngs)
        (grads, loss_sum, n_tokens, rngs), _ = jax.lax.scan(accumulate, init, batch)
        denom = jnp.maximum(n_tokens, 1.0)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, trainable)
        # The adapters' scales and IntTune's frozen A, B reach LoRA-Pro this way; other optimizers ignore it.
        updates, opt_state = optimizer.update(grads, opt_state, trainable, frozen_factors=frozen)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {"loss": loss_sum / denom, "tokens": n_tokens, "grad_norm": optax.tree.norm(grads)}
        return trainable, opt_state, rngs, metrics

    return step
