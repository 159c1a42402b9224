"""The next-token loss that training minimises and evaluation reports, on the batch layout of docs/contracts.md."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def token_loss(model: nnx.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Summed next-token cross-entropy over target tokens, and the number of target tokens.

    Args:
      model: called as `model(input_ids, positions=, segment_ids=) -> (B, T, V)` logits.
      batch: `input_ids`, `loss_mask`, `segment_ids`, `positions`, each (B, T); `loss_mask[t]` marks token t as a
        target predicted from tokens < t.

    Returns:
      (loss_sum, n_tokens), both fp32 scalars.

    >>> from lowrank_jax.models import Llama, LlamaConfig
    >>> model = Llama(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, num_key_value_heads=1))
    >>> ids = jnp.array([[3, 4, 5, 6]])
    >>> batch = dict(input_ids=ids, loss_mask=jnp.array([[0, 0, 1, 1]]), segment_ids=jnp.ones_like(ids),
    ...              positions=jnp.arange(4)[None])
    >>> float(token_loss(model, batch)[1])
    2.0
    """
    logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    logits = logits[:, :-1].astype(jnp.float32)
    targets = batch["input_ids"][:, 1:]
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * weights), jnp.sum(weights)
