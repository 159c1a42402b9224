"""The next-token loss that training minimises and evaluation reports, on the batch layout of docs/contracts.md.

With `chunk_tokens` the (B, T, V) float32 logits are never materialised: the head and the cross-entropy run over
chunks of sequence positions, and the backward pass recomputes each chunk's logits instead of storing them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def token_loss(model: nnx.Module, batch: dict[str, jax.Array], *,
               chunk_tokens: int = 0) -> tuple[jax.Array, jax.Array]:
    """Summed next-token cross-entropy over target tokens, and the number of target tokens.

    Args:
      model: called as `model(input_ids, positions=, segment_ids=) -> (B, T, V)` logits; with `chunk_tokens` it
        must also have `hidden_states(input_ids, positions=, segment_ids=) -> (B, T, D)` and `head((…, D)) -> (…, V)`
        float32 logits, as `Llama` has.
      batch: `input_ids`, `loss_mask`, `segment_ids`, `positions`, each (B, T); `loss_mask[t]` marks token t as a
        target predicted from tokens < t.
      chunk_tokens: 0 computes all (B, T, V) logits at once; N > 0 computes them N sequence positions at a time,
        (B, N, V) each, and recomputes them in the backward pass. The same loss and gradients up to summation order.

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
    >>> bool(jnp.isclose(token_loss(model, batch, chunk_tokens=2)[0], token_loss(model, batch)[0]))
    True
    """
    inputs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
    targets = batch["input_ids"][:, 1:]
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    if chunk_tokens:
        hidden = model.hidden_states(batch["input_ids"], **inputs)[:, :-1]
        losses = _chunked_head_losses(model, hidden, targets, chunk_tokens)
    else:
        logits = model(batch["input_ids"], **inputs)[:, :-1]
        losses = _head_losses(logits, targets)
    return jnp.sum(losses * weights), jnp.sum(weights)


def _head_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Cross-entropy of each target: logits (…, V), integer targets (…) -> (…) fp32 (logsumexp - target logit)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _chunked_head_losses(model: nnx.Module, hidden: jax.Array, targets: jax.Array, chunk_tokens: int) -> jax.Array:
    """`_head_losses(model.head(hidden), targets)` without the (B, S, V) logits: hidden (B, S, D) and targets (B, S)
    -> (B, S) fp32.

    A `jax.lax.scan` over chunks of `chunk_tokens` positions (the last one zero-padded and cut off again); each
    chunk's head and cross-entropy sit in `jax.checkpoint`, so only its (B, chunk_tokens, V) logits are ever live.
    The model's RNG state (adapter dropout on an adapted `lm_head`) is carried through the scan and written back.
    """
    graphdef, rngs, rest = nnx.split(model, nnx.RngState, ...)

    @jax.checkpoint
    def chunk_losses(rngs, chunk):
        hidden, targets = chunk  # (B, chunk_tokens, D), (B, chunk_tokens)
        model = nnx.merge(graphdef, rngs, rest)
        losses = _head_losses(model.head(hidden), targets)
        return nnx.state(model, nnx.RngState), losses

    length = hidden.shape[1]
    rngs, losses = jax.lax.scan(chunk_losses, rngs, (_chunks(hidden, chunk_tokens), _chunks(targets, chunk_tokens)))
    nnx.update(model, rngs)
    return jnp.moveaxis(losses, 0, 1).reshape(hidden.shape[0], -1)[:, :length]


def _chunks(x: jax.Array, size: int) -> jax.Array:
    """(B, S, …) -> (ceil(S / size), B, size, …), the sequence zero-padded to a multiple of `size`."""
    x = jnp.pad(x, [(0, 0), (0, -x.shape[1] % size)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], -1, size, *x.shape[2:]), 1, 0)
