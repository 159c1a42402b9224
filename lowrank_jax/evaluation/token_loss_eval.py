"""Mean target-token loss of a model over a stream of batches (validation loss, answer-token loss)."""

from __future__ import annotations

from collections.abc import Iterable

import jax
import numpy as np
from flax import nnx

from lowrank_jax.losses import token_loss


def mean_token_loss(model: nnx.Module, batches: Iterable[dict[str, np.ndarray]]) -> tuple[float, float]:
    """(mean loss in nats, number of target tokens) of `model` in eval mode over `batches` of (B, T) arrays."""
    graphdef, state = nnx.split(model)
    model.eval()
    loss_fn = jax.jit(lambda state, batch: token_loss(nnx.merge(graphdef, state), batch))
    total, count = 0.0, 0.0
    for batch in batches:
        loss_sum, n = loss_fn(state, batch)
        total, count = total + float(loss_sum), count + float(n)
    model.train()
    if count == 0:
        raise ValueError("no target tokens in the evaluation batches (loss_mask is all zero)")
    return total / count, count
