"""Attention masks and default rotary positions for padded batches, packed sequences and the KV cache.

Masks are boolean, True = may attend, shaped (batch, 1, query, key) for `jax.nn.dot_product_attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def positions_from_attention_mask(attention_mask: jax.Array) -> jax.Array:
    """Position of each token = number of real tokens before it (0 on leading padding).

    Args:
        attention_mask: (batch, seq), 1 = real token, left or right padding.

    Returns:
        (batch, seq) int32.

    Example:
        >>> positions_from_attention_mask(jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])).tolist()
        [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]
    """
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def positions_from_segment_ids(segment_ids: jax.Array) -> jax.Array:
    """Positions restarting at 0 wherever the segment id changes (packed sequences).

    Args:
        segment_ids: (batch, seq) int, each segment contiguous.

    Returns:
        (batch, seq) int32.

    Example:
        >>> positions_from_segment_ids(jnp.array([[1, 1, 1, 2, 2, 0]])).tolist()
        [[0, 1, 2, 0, 1, 0]]
    """
    seq = segment_ids.shape[-1]
    index = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), segment_ids.shape)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=-1)
    segment_start = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    return index - segment_start


def padding_and_segment_mask(attention_mask: jax.Array | None, segment_ids: jax.Array | None) -> jax.Array | None:
    """The non-causal part of a self-attention mask: real keys only, and same segment.

    Args:
        attention_mask: (batch, seq) 1 = real token, or None.
        segment_ids: (batch, seq) int, 0 = padding, or None.

    Returns:
        (batch, 1, seq, seq) bool, or None when both inputs are None (combine with `is_causal=True`).
    """
    mask = None
    if attention_mask is not None:
        mask = attention_mask.astype(bool)[:, None, None, :]
    if segment_ids is not None:
        same_segment = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
        same_segment &= (segment_ids != 0)[:, None, None, :]
        mask = same_segment if mask is None else mask & same_segment
    return mask


def cached_attention_mask(valid: jax.Array, write_index: jax.Array, num_queries: int) -> jax.Array:
    """Mask for queries written at cache slots `write_index + t`: valid keys in slots up to the query's own.

    Args:
        valid: (batch, cache_len) bool, slots holding real tokens (including the ones just written).
        write_index: () int, the cache slot of the first query.
        num_queries: number of queries T.

    Returns:
        (batch, 1, T, cache_len) bool.

    Example:
        >>> cached_attention_mask(jnp.array([[False, True, True, False]]), 1, 2)[0, 0].astype(int).tolist()
        [[0, 1, 0, 0], [0, 1, 1, 0]]
    """
    slots = jnp.arange(valid.shape[-1])
    causal = slots[None, :] <= write_index + jnp.arange(num_queries)[:, None]
    return valid[:, None, None, :] & causal[None, None]
