"""Grouped-query self-attention of a Llama-family decoder layer, with an optional per-layer slice of the KV cache.

Scores and softmax run in float32 inside `jax.nn.dot_product_attention`, which groups query heads over key/value
heads (query head h uses kv head h // groups, i.e. HF's `repeat_kv`) without materialising repeated keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.adapters.fused_linears import fused_linears
from lowrank_jax.models.axes import logical_axes
from lowrank_jax.models.config import LlamaConfig
from lowrank_jax.models.norm import RMSNorm
from lowrank_jax.models.packed_attention import PackedSegments, packed_causal_attention
from lowrank_jax.models.rope import apply_rope


def projection(config: LlamaConfig, in_features: int, out_features: int, axes: tuple[str, str], *, use_bias: bool,
               rngs: nnx.Rngs) -> nnx.Linear:
    """An `nnx.Linear` with the config's dtypes, HF-style init (normal(initializer_range), zero bias) and axis names.

    Args:
        axes: logical names of the kernel's (in, out) axes; the bias gets the out name.
    """
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=config.dtype, param_dtype=config.param_dtype,
        kernel_init=nnx.initializers.normal(config.initializer_range), bias_init=nnx.initializers.zeros,
        kernel_metadata=logical_axes(*axes), bias_metadata=logical_axes(axes[1]), rngs=rngs)


class Attention(nnx.Module):
    """q/k/v/o projections, rotary embeddings and masked dot-product attention.

    Kernels: q_proj (hidden, heads * head_dim), k_proj / v_proj (hidden, kv_heads * head_dim),
    o_proj (heads * head_dim, hidden); q/k/v biases when `config.attention_bias` (Qwen2); q_norm / k_norm
    (RMSNorm over head_dim, before the rotary embedding) when `config.qk_norm` (Qwen3, Gemma 3). With
    `config.fuse_projections` q/k/v come from one matmul (`fused_linears`).
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        q_size = config.num_attention_heads * config.head_dim
        kv_size = config.num_key_value_heads * config.head_dim
        bias = config.attention_bias
        self.q_proj = projection(config, config.hidden_size, q_size, ("embed", "q_heads"), use_bias=bias, rngs=rngs)
        self.k_proj = projection(config, config.hidden_size, kv_size, ("embed", "kv_heads"), use_bias=bias, rngs=rngs)
        self.v_proj = projection(config, config.hidden_size, kv_size, ("embed", "kv_heads"), use_bias=bias, rngs=rngs)
        self.o_proj = projection(config, q_size, config.hidden_size, ("q_heads", "embed"), use_bias=False, rngs=rngs)
        if config.qk_norm:
            norm_kwargs = dict(eps=config.rms_norm_eps, dtype=config.dtype, param_dtype=config.param_dtype,
                               zero_centered=config.gemma_layout)
            self.q_norm = RMSNorm(config.head_dim, **norm_kwargs)
            self.k_norm = RMSNorm(config.head_dim, **norm_kwargs)
        self.qk_norm = config.qk_norm
        self.scale = None if config.query_pre_attn_scalar is None else config.query_pre_attn_scalar ** -0.5
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.implementation = config.attention_impl
        self.fuse_projections = config.fuse_projections

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array | PackedSegments | None,
                 layer_cache: tuple[jax.Array, jax.Array] | None = None, write_index: jax.Array | None = None,
                 window: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Self-attention over `x`, or over the cache after writing x's keys/values into it.

        Args:
            x: (batch, T, hidden).
            cos, sin: (batch, T, head_dim) rotary tables of x's positions.
            mask: without a cache, (batch, 1, T, T) padding/segment mask or None (causality is added here), or
                the rows' `PackedSegments` for cuDNN's packed kernel; with a cache, the full (batch, 1, T, cache_len)
                mask.
            layer_cache: (keys, values), each (batch, cache_len, kv_heads, head_dim), or None.
            write_index: () int, the cache slot of x's first token (with a cache).
            window: () int, this layer's sliding window (a query at slot i sees keys at slots > i - window), or
                None for full causal attention. Slots are sequence indices (cache slots when decoding), as in HF.

        Returns:
            (batch, T, hidden) and the updated (keys, values) or None.
        """
        batch, seq, _ = x.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = fused_linears(x, projections) if self.fuse_projections else (p(x) for p in projections)
        q = q.reshape(batch, seq, self.num_heads, self.head_dim)
        k = k.reshape(batch, seq, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = v.reshape(batch, seq, self.num_kv_heads, self.head_dim)
        if isinstance(mask, PackedSegments):
            out = packed_causal_attention(q, k, v, mask)
        elif layer_cache is None:
            implementation = self.implementation
            if window is not None:  # a traced window: only an explicit mask, which XLA's kernel takes, expresses it
                mask, implementation = _and(mask, _causal(jnp.arange(seq), jnp.arange(seq), window)), "xla"
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=self.scale, is_causal=window is None,
                                               implementation=implementation)
        else:
            cached_k, cached_v = layer_cache
            start = (0, write_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cached_k, k.astype(cached_k.dtype), start)
            v = jax.lax.dynamic_update_slice(cached_v, v.astype(cached_v.dtype), start)
            layer_cache = (k, v)
            # Decoding queries sit at arbitrary cache slots, which only the explicit mask expresses.
            if window is not None:
                mask = _and(mask, _causal(write_index + jnp.arange(seq), jnp.arange(k.shape[1]), window))
            out = jax.nn.dot_product_attention(q.astype(k.dtype), k, v, mask=mask, scale=self.scale,
                                               implementation="xla")
        return self.o_proj(out.reshape(batch, seq, self.num_heads * self.head_dim)), layer_cache


def _causal(query_slots: jax.Array, key_slots: jax.Array, window: jax.Array | None = None) -> jax.Array:
    """(1, 1, T, S) bool: key slot <= query slot and, with a window, key slot > query slot - window."""
    distance = query_slots[:, None] - key_slots[None, :]
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    return allowed[None, None]


def _and(mask: jax.Array | None, other: jax.Array | None) -> jax.Array | None:
    if mask is None or other is None:
        return other if mask is None else mask
    return mask & other
