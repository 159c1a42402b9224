"""Key/value cache for incremental decoding: per-layer keys and values stacked like the decoder layers.

All sequences of a batch write at the same slot (prompts are left-padded); `valid` marks slots holding real tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lowrank_jax.models.config import LlamaConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Cached keys and values of every layer.

    Attributes:
        keys: (layers, batch, cache_len, kv_heads, head_dim), rotary embedding applied.
        values: (layers, batch, cache_len, kv_heads, head_dim).
        valid: (batch, cache_len) bool, True where a slot holds a real (not padding) token.
        length: () int32, number of slots written so far = the slot the next token goes to.
    """

    keys: jax.Array
    values: jax.Array
    valid: jax.Array
    length: jax.Array

    @classmethod
    def create(cls, config: LlamaConfig, batch: int, cache_len: int) -> KVCache:
        """An empty cache of `cache_len` slots in the compute dtype.

        Example:
            >>> cfg = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
            ...                   num_attention_heads=2, num_key_value_heads=1)
            >>> KVCache.create(cfg, batch=3, cache_len=5).keys.shape
            (2, 3, 5, 1, 4)
        """
        shape = (config.num_hidden_layers, batch, cache_len, config.num_key_value_heads, config.head_dim)
        return cls(keys=jnp.zeros(shape, config.dtype), values=jnp.zeros(shape, config.dtype),
                   valid=jnp.zeros((batch, cache_len), bool), length=jnp.zeros((), jnp.int32))
