"""cuDNN flash attention over packed rows, with segments given as offsets and lengths instead of a dense mask.

`jax.nn.dot_product_attention(implementation='cudnn', mask=...)` turns a (batch, 1, T, T) boolean mask into an
additive bias: cuDNN then runs its bias kernel and, in the backward pass, also computes the bias gradient
(batch·T² per layer, thrown away). cuDNN's packed ("ragged") layout describes the same attention — causal within
each segment, nothing across segments or onto padding — by each segment's start offset and length, and keeps the
plain causal kernel. It needs a static bound on segments per row: rows within `MAX_PACKED_SEGMENTS` take the packed
kernel; a batch with a fuller row takes the dense-mask kernel (`jax.lax.cond`, so the result is right either way).

A segment here is a run of equal non-zero `segment_ids` (0 = padding), as `lowrank_jax.data.packing` writes them.
`jax.nn.dot_product_attention` takes no offsets, so this calls JAX's own cuDNN entry point
(`jax._src.cudnn.fused_attention_stablehlo`, internal: imported only when the kernel is traced, so a JAX that moves
it breaks this path alone). `bench/attention_check.py` checks it against XLA on a GPU.

On a mesh of several devices the call runs per device (`lowrank_jax.sharding.per_shard`, over the batch rows and,
with tensor parallelism, the heads): left to XLA's partitioner, JAX's cuDNN call combined one device's rows with
another's segment offsets and gave a wrong loss (docs/benchmarks.md). That needs the mesh at trace time:
`jax.set_mesh(mesh)`, which the training loop and bench/ set.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lowrank_jax.models.masks import padding_and_segment_mask
from lowrank_jax.sharding import per_shard

MAX_PACKED_SEGMENTS = 16


class PackedSegments(NamedTuple):
    """Segments of each row in cuDNN's packed layout (M = max_segments; -1 marks an absent segment).

    Attributes:
        segment_ids: (batch, T) int, 0 = padding.
        lengths: (batch, M) int32 token count of each segment, in row order.
        offsets: (batch, M + 1) int32 first token of each segment within its row.
        fits: () bool, every row has at most M segments.
    """
    segment_ids: jax.Array
    lengths: jax.Array
    offsets: jax.Array
    fits: jax.Array


def packed_segments(segment_ids: jax.Array, max_segments: int = MAX_PACKED_SEGMENTS) -> PackedSegments:
    """Each row's segments (runs of equal non-zero ids) as lengths and start offsets.

    Args:
        segment_ids: (batch, T) int, 0 = padding.
        max_segments: M, the number of segment slots per row.

    Example:
        >>> s = packed_segments(jnp.array([[1, 1, 2, 2, 2, 0], [3, 3, 3, 3, 0, 0]]), max_segments=2)
        >>> s.lengths.tolist(), s.offsets.tolist(), bool(s.fits)
        ([[2, 3], [4, -1]], [[0, 2, -1], [0, -1, -1]], True)
    """
    batch, seq = segment_ids.shape
    real = segment_ids != 0
    previous = jnp.concatenate([jnp.zeros((batch, 1), segment_ids.dtype), segment_ids[:, :-1]], axis=1)
    starts = real & (segment_ids != previous)
    ordinal = jnp.cumsum(starts, axis=1) - 1  # (batch, T) index of the token's segment within its row
    slots = jnp.arange(max_segments)
    in_slot = real[..., None] & (ordinal[..., None] == slots)  # (batch, T, M)
    lengths = in_slot.sum(axis=1, dtype=jnp.int32)
    first = jnp.argmax(in_slot, axis=1).astype(jnp.int32)
    present = lengths > 0
    lengths = jnp.where(present, lengths, -1)
    offsets = jnp.concatenate([jnp.where(present, first, -1), jnp.full((batch, 1), -1, jnp.int32)], axis=1)
    fits = jnp.all(starts.sum(axis=1) <= max_segments)
    return PackedSegments(segment_ids, lengths, offsets, fits)


def packed_causal_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                            segments: PackedSegments) -> jax.Array:
    """Causal attention within each segment; padding queries get zeros.

    Args:
        query: (batch, T, heads, head_dim) bfloat16.
        key, value: (batch, T, kv_heads, head_dim) bfloat16 (heads a multiple of kv_heads).
        segments: the rows' segments, from `packed_segments`.

    Returns:
        (batch, T, heads, head_dim), equal to `jax.nn.dot_product_attention(query, key, value, is_causal=True,
        mask=padding_and_segment_mask(None, segment_ids))` on every non-padding query.
    """
    scale = query.shape[-1] ** -0.5

    def attend(q, k, v, segment_ids, lengths, offsets, fits):
        def packed(q, k, v):
            from jax._src.cudnn.fused_attention_stablehlo import MaskType
            from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_attention
            return cudnn_attention(q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets,
                                   kv_offsets=offsets, scale=scale, mask_type=MaskType.PADDING_CAUSAL)

        def dense_mask(q, k, v):
            mask = padding_and_segment_mask(None, segment_ids)
            return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")

        # cuDNN leaves the outputs of padding tokens, and their query/key/value gradients, unwritten: zero both ways.
        real = (segment_ids != 0)[:, :, None, None]
        q, k, v = (jnp.where(real, x, jnp.zeros((), x.dtype)) for x in (q, k, v))
        out = jax.lax.cond(fits, packed, dense_mask, q, k, v)
        return jnp.where(real, out, jnp.zeros((), out.dtype))

    if jax.sharding.get_abstract_mesh().empty and jax.device_count() > 1:
        warnings.warn(f"cuDNN packed attention traced without a mesh while there are {jax.device_count()} devices: "
                      "if the batch is split over devices the result is wrong (JAX's partitioning of the cuDNN "
                      "call mixes up rows). Trace under `jax.set_mesh(mesh)`, as the training loop does.", stacklevel=2)
    heads, rows = ("batch", None, "heads", None), ("batch", None)
    args = [query, key, value, segments.segment_ids, segments.lengths, segments.offsets, segments.fits]
    return per_shard(attend, args, [heads, heads, heads, rows, rows, rows, ()], heads)
