"""The Llama-family decoder (Llama 2/3.x, Mistral, Qwen2, Qwen3, Phi-3, Gemma 3 text) in Flax NNX.

Decoder layers are stored stacked (leading axis L) and run by `jax.lax.scan` over their whole state, or by a
Python loop over slices of the same state when `config.scan_layers` is False; mutated layer state is written back.
Layers that differ by attention type (Gemma 3's sliding / global pattern) share one stack: each layer's window and
rope table are chosen by per-layer values scanned alongside its weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowrank_jax.adapters.fused_linears import fused_linears
from lowrank_jax.models.attention import Attention, projection
from lowrank_jax.models.axes import logical_axes
from lowrank_jax.models.config import LlamaConfig
from lowrank_jax.models.kv_cache import KVCache
from lowrank_jax.models.masks import (cached_attention_mask, padding_and_segment_mask, positions_from_attention_mask,
                                      positions_from_segment_ids)
from lowrank_jax.models.norm import RMSNorm
from lowrank_jax.models.packed_attention import packed_segments
from lowrank_jax.models.rope import rope_cos_sin, rope_inverse_frequencies

REMAT_POLICY_FUNCTIONS = {
    "full": None,  # jax.checkpoint's default: save nothing, recompute the layer in the backward pass
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ACTIVATIONS = {"silu": jax.nn.silu, "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True)}
# The window of a global layer in a stack with sliding layers: larger than any slot distance.
_UNBOUNDED_WINDOW = np.iinfo(np.int32).max


class MLP(nnx.Module):
    """Gated feed-forward `down_proj(act(gate_proj(x)) * up_proj(x))`, kernels (hidden, mlp) / (mlp, hidden);
    act is silu (SwiGLU) or tanh-approximated gelu (Gemma's GeGLU). With `config.fuse_projections` gate and up come
    from one matmul (`fused_linears`)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = projection(config, hidden, inner, ("embed", "mlp"), use_bias=False, rngs=rngs)
        self.up_proj = projection(config, hidden, inner, ("embed", "mlp"), use_bias=False, rngs=rngs)
        self.down_proj = projection(config, inner, hidden, ("mlp", "embed"), use_bias=False, rngs=rngs)
        self.activation = ACTIVATIONS[config.hidden_act]
        self.fuse_projections = config.fuse_projections

    def __call__(self, x: jax.Array) -> jax.Array:
        """(batch, T, hidden) -> (batch, T, hidden)."""
        projections = (self.gate_proj, self.up_proj)
        gate, up = fused_linears(x, projections) if self.fuse_projections else (p(x) for p in projections)
        return self.down_proj(self.activation(gate) * up)


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: attention then MLP, each after an RMSNorm.

    In Gemma's layout each branch's output is normalised too (HF names: input_layernorm -> attention ->
    post_attention_layernorm, pre_feedforward_layernorm -> MLP -> post_feedforward_layernorm); otherwise
    post_attention_layernorm is the norm before the MLP, as in Llama.
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        norm_kwargs = dict(eps=config.rms_norm_eps, dtype=config.dtype, param_dtype=config.param_dtype,
                           zero_centered=config.gemma_layout)
        self.input_layernorm = RMSNorm(config.hidden_size, **norm_kwargs)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm_kwargs)
        if config.gemma_layout:
            self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, **norm_kwargs)
            self.post_feedforward_layernorm = RMSNorm(config.hidden_size, **norm_kwargs)
        self.mlp = MLP(config, rngs=rngs)
        self.gemma_layout = config.gemma_layout

    def __call__(self, h, cos, sin, mask, layer_cache=None, write_index=None, window=None):
        """(batch, T, hidden) -> (batch, T, hidden), updated layer cache; arguments as in `Attention`."""
        attended, layer_cache = self.self_attn(self.input_layernorm(h), cos, sin, mask, layer_cache, write_index,
                                               window)
        if self.gemma_layout:
            h = h + self.post_attention_layernorm(attended)
            return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h))), layer_cache
        h = h + attended
        return h + self.mlp(self.post_attention_layernorm(h)), layer_cache


class Llama(nnx.Module):
    """Causal language model: embeddings, L stacked decoder layers, final RMSNorm, lm_head (or tied embeddings).

    Gemma 3 additionally scales the embeddings by sqrt(hidden_size) (rounded to the parameter dtype, as HF does)
    and soft-caps the logits when `final_logit_softcapping` is set.

    Args:
        config: the architecture and runtime settings.
        rngs: initialisation randomness (default `nnx.Rngs(0)`); weights are normal(initializer_range).

    Example:
        >>> cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=4, num_key_value_heads=2)
        >>> model = Llama(cfg)
        >>> model.layers.self_attn.q_proj.kernel.shape
        (2, 16, 16)
        >>> model(jnp.ones((3, 5), jnp.int32), jnp.array([[1] * 5, [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])).shape
        (3, 5, 32)
    """

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs | None = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.config = config
        self.embed_tokens = nnx.Embed(
            config.vocab_size, config.hidden_size, dtype=config.dtype, param_dtype=config.param_dtype,
            embedding_init=nnx.initializers.normal(config.initializer_range),
            embedding_metadata=logical_axes("vocab", "embed"), rngs=rngs)
        self.layers = _stacked_layers(config, rngs)
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=config.dtype,
                            param_dtype=config.param_dtype, zero_centered=config.gemma_layout)
        if not config.tie_word_embeddings:
            self.lm_head = projection(config, config.hidden_size, config.vocab_size, ("embed", "vocab"),
                                      use_bias=False, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
        """Next-token logits for every position: `head(hidden_states(...))`, arguments as `hidden_states` takes them.

        Returns:
            (batch, seq, vocab) float32 logits; values at padding positions are meaningless.
        """
        return self.head(self.hidden_states(input_ids, attention_mask, positions=positions, segment_ids=segment_ids))

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                      positions: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
        """The final hidden states (after the last norm), which `head` maps to logits.

        Args:
            input_ids: (batch, seq) int.
            attention_mask: (batch, seq), 1 = real token (left or right padding), or None (all real).
            positions: (batch, seq) rotary positions; default: restart per segment when `segment_ids` is given,
                else the count of real tokens before each token (so left padding is handled).
            segment_ids: (batch, seq) int, 0 = padding; attention stays inside a segment (packed sequences), each
                segment contiguous. With attention_impl='cudnn' (and no sliding-window layer) they go to cuDNN as
                offsets and lengths (`packed_attention.py`).

        Returns:
            (batch, seq, hidden) in the compute dtype; values at padding positions are meaningless.
        """
        _check_tokens(input_ids, attention_mask, positions, segment_ids)
        if positions is None:
            if segment_ids is not None:
                positions = positions_from_segment_ids(segment_ids)
            elif attention_mask is not None:
                positions = positions_from_attention_mask(attention_mask)
            else:
                positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
        if (self.config.attention_impl == "cudnn" and segment_ids is not None and attention_mask is None
                and not self.config.has_sliding_layers):
            mask = packed_segments(segment_ids)
        else:
            mask = padding_and_segment_mask(attention_mask, segment_ids)
        h, _ = self._run_layers(self._embed(input_ids), positions, mask)
        return self.norm(h)

    def decode(self, input_ids: jax.Array, kv_cache: KVCache, *, positions: jax.Array,
               attention_mask: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """Appends `input_ids` to the cache and returns the logits that follow the last of them.

        Used for the prompt (prefill, T = prompt length) and then one token at a time (T = 1).

        Args:
            input_ids: (batch, T) int, written at cache slots `kv_cache.length + t`.
            kv_cache: the cache so far.
            positions: (batch, T) rotary positions of the new tokens.
            attention_mask: (batch, T), 1 = real token (left-padded prompts); default all real.

        Returns:
            (batch, vocab) float32 logits at the last new token, and the updated cache.
        """
        _check_tokens(input_ids, attention_mask, positions, None)
        new_valid = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
        valid = jax.lax.dynamic_update_slice(kv_cache.valid, new_valid, (0, kv_cache.length))
        mask = cached_attention_mask(valid, kv_cache.length, input_ids.shape[1])
        h, (keys, values) = self._run_layers(self._embed(input_ids), positions, mask,
                                             (kv_cache.keys, kv_cache.values), kv_cache.length)
        new_cache = KVCache(keys=keys, values=values, valid=valid, length=kv_cache.length + input_ids.shape[1])
        return self.head(self.norm(h[:, -1])), new_cache

    def _embed(self, input_ids: jax.Array) -> jax.Array:
        h = self.embed_tokens(input_ids)
        if self.config.gemma_layout:
            h = h * jnp.asarray(self.config.hidden_size ** 0.5, self.config.param_dtype).astype(h.dtype)
        return h

    def head(self, h: jax.Array) -> jax.Array:
        """Final hidden states (…, hidden) -> float32 logits (…, vocab): the tied embeddings or `lm_head` (adapted or
        not), soft-capped when `final_logit_softcapping` is set."""
        logits = self.embed_tokens.attend(h) if self.config.tie_word_embeddings else self.lm_head(h)
        logits = logits.astype(jnp.float32)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else cap * jnp.tanh(logits / cap)

    def _run_layers(self, h, positions, mask, cache=None, write_index=None):
        """Runs the stacked layers over h (batch, T, hidden); cache is (keys, values) with leading L, or None."""
        config = self.config
        cos, sin = rope_cos_sin(positions, rope_inverse_frequencies(config.head_dim, config.rope_theta,
                                                                   config.rope_scaling))
        local_tables = None
        if config.rope_local_theta is not None and config.rope_local_theta != config.rope_theta:
            local_tables = rope_cos_sin(positions, rope_inverse_frequencies(config.head_dim, config.rope_local_theta))
        per_layer = None
        if config.has_sliding_layers:
            sliding = np.array([t == "sliding_attention" for t in config.layer_types])
            per_layer = dict(sliding=jnp.asarray(sliding),
                             window=jnp.asarray(np.where(sliding, config.sliding_window, _UNBOUNDED_WINDOW), jnp.int32))
        graphdef, layer_state = nnx.split(self.layers)

        def run_layer(h, layer_state, layer_cache, layer_values):
            layer = nnx.merge(graphdef, layer_state)
            layer_cos, layer_sin, window = cos, sin, None
            if layer_values is not None:
                window = layer_values["window"]
                if local_tables is not None:
                    layer_cos = jnp.where(layer_values["sliding"], local_tables[0], cos)
                    layer_sin = jnp.where(layer_values["sliding"], local_tables[1], sin)
            h, layer_cache = layer(h, layer_cos, layer_sin, mask, layer_cache, write_index, window)
            return h, nnx.state(layer), layer_cache

        if config.remat != "none":
            run_layer = jax.checkpoint(run_layer, policy=REMAT_POLICY_FUNCTIONS[config.remat],
                                       prevent_cse=not config.scan_layers)
        if config.scan_layers:
            def scan_step(h, xs):
                h, new_state, layer_cache = run_layer(h, *xs)
                return h, (new_state, layer_cache)
            h, (new_state, cache) = jax.lax.scan(scan_step, h, (layer_state, cache, per_layer))
        else:
            outputs = []
            for i in range(config.num_hidden_layers):
                layer_slice = jax.tree.map(lambda x: x[i], (layer_state, cache, per_layer))
                h, new_layer_state, layer_cache = run_layer(h, *layer_slice)
                outputs.append((new_layer_state, layer_cache))
            new_state, cache = jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)
        nnx.update(self.layers, new_state)
        return h, cache


def _stacked_layers(config: LlamaConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """L decoder layers created by vmap: every Variable gets a leading 'layers' axis."""

    @nnx.split_rngs(splits=config.num_hidden_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(rngs):
        return DecoderLayer(config, rngs=rngs)

    return create(rngs)


def _check_tokens(input_ids, attention_mask, positions, segment_ids) -> None:
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be a (batch, seq) integer array, got shape {input_ids.shape} "
                         f"dtype {input_ids.dtype}.")
    for name, value in (("attention_mask", attention_mask), ("positions", positions), ("segment_ids", segment_ids)):
        if value is not None and value.shape != input_ids.shape:
            raise ValueError(f"{name} has shape {value.shape}; it must match input_ids {input_ids.shape}.")
