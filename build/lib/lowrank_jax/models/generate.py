"""Batched greedy / nucleus-sampled generation with a KV cache, stopping on EOS per sequence.

One jitted program per (batch, prompt_len, max_new_tokens, greedy or sampled, number of EOS ids): prefill, then a
`lax.while_loop` of one-token steps that exits early once every sequence has produced an EOS token.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowrank_jax.models.kv_cache import KVCache
from lowrank_jax.models.llama import Llama
from lowrank_jax.models.masks import positions_from_attention_mask


def generate(model: Llama, input_ids: jax.Array, attention_mask: jax.Array, *, max_new_tokens: int,
             eos_token_id: int | Sequence[int] | None, temperature: float = 0.0, top_p: float = 1.0,
             rng: jax.Array | None = None, pad_token_id: int | None = None) -> jax.Array:
    """Continues left-padded prompts.

    Args:
        model: the language model (its state is read, not updated).
        input_ids: (batch, prompt_len) int, left-padded.
        attention_mask: (batch, prompt_len), 1 = real token; every row ends with a real token.
        max_new_tokens: number of tokens to generate per sequence.
        eos_token_id: one id or a list of ids that end a sequence, or None (never stop early).
        temperature: 0 = greedy (argmax); > 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling: sample only among the most likely tokens whose probability mass reaches top_p.
        rng: PRNG key, required when temperature > 0; the same key gives the same tokens.
        pad_token_id: written after a sequence's EOS; default `model.config.pad_token_id`, else the first EOS id,
            else 0.

    Returns:
        (batch, max_new_tokens) int32 new tokens; the EOS token is kept, later positions hold pad_token_id.

    Example:
        >>> from lowrank_jax.models import Llama, LlamaConfig
        >>> cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=4, num_key_value_heads=2)
        >>> ids, mask = jnp.array([[0, 5, 6], [7, 8, 9]]), jnp.array([[0, 1, 1], [1, 1, 1]])
        >>> generate(Llama(cfg), ids, mask, max_new_tokens=4, eos_token_id=2).shape
        (2, 4)
    """
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
    _check_request(ids, mask, max_new_tokens, temperature, top_p, rng)
    eos_ids = () if eos_token_id is None else tuple(np.atleast_1d(np.asarray(eos_token_id, np.int64)).tolist())
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id
    if pad_token_id is None:
        pad_token_id = eos_ids[0] if eos_ids else 0
    greedy = temperature == 0
    sampling = (jnp.float32(temperature if not greedy else 1.0), jnp.float32(top_p),
                jax.random.key(0) if rng is None else rng)
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                     jnp.asarray(eos_ids, jnp.int32), jnp.int32(pad_token_id), *sampling,
                     max_new_tokens=max_new_tokens, greedy=greedy)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy"))
def _generate(graphdef, state, input_ids, attention_mask, eos_ids, pad_id, temperature, top_p, rng, *,
              max_new_tokens: int, greedy: bool):
    batch, prompt_len = input_ids.shape
    model = nnx.merge(graphdef, state)
    positions = positions_from_attention_mask(attention_mask)
    cache = KVCache.create(model.config, batch, prompt_len + max_new_tokens)
    logits, cache = model.decode(input_ids, cache, positions=positions, attention_mask=attention_mask)

    def keep_going(carry):
        step, _, _, _, _, done = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def one_token(carry):
        step, tokens, logits, cache, next_position, done = carry
        token = _next_token(logits, jax.random.fold_in(rng, step), temperature, top_p, greedy)
        token = jnp.where(done, pad_id, token)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
        done = done | jnp.isin(token, eos_ids)
        # A copy: Variables mutated inside the loop body must belong to the body's trace.
        step_model = nnx.merge(graphdef, state, copy=True)
        logits, cache = step_model.decode(token[:, None], cache, positions=next_position[:, None])
        return step + 1, tokens, logits, cache, next_position + 1, done

    tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    carry = (jnp.int32(0), tokens, logits, cache, positions[:, -1] + 1, jnp.zeros((batch,), bool))
    return jax.lax.while_loop(keep_going, one_token, carry)[1]


def _next_token(logits, rng, temperature, top_p, greedy: bool) -> jax.Array:
    """(batch, vocab) logits -> (batch,) int32: argmax, or a sample from the top-p nucleus at `temperature`."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    in_nucleus = mass_before < top_p  # the most likely token always qualifies
    cutoff = jnp.min(jnp.where(in_nucleus, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _check_request(ids: np.ndarray, mask: np.ndarray, max_new_tokens, temperature, top_p, rng) -> None:
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be a (batch, prompt_len) integer array, got shape {ids.shape} "
                         f"dtype {ids.dtype}.")
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}; it must match input_ids {ids.shape}.")
    if not (np.all(mask[:, -1] == 1) and np.all(np.diff(mask.astype(np.int64), axis=1) >= 0)):
        raise ValueError("generate needs left-padded prompts (zeros then ones in every attention_mask row, ending "
                         "with a real token); pad on the left, e.g. tokenizer.padding_side = 'left'.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if temperature > 0 and rng is None:
        raise ValueError("Sampling (temperature > 0) needs rng, e.g. rng=jax.random.key(0).")
