"""KV-cache decoding and `generate`: cache vs full forward, sampling law, determinism, per-sequence EOS, compiles.

Greedy parity with transformers' `generate` is in test_llama_parity.py; here the references are the model's own
full (cache-free) forward pass and closed-form sampling distributions computed in float64 NumPy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lowrank_jax.models import Llama, LlamaConfig, generate
from lowrank_jax.models.generate import _generate as compiled_generate
from lowrank_jax.models.kv_cache import KVCache
from lowrank_jax.models.masks import positions_from_attention_mask

PAD = 0
NEW = 16
CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, rope_theta=5e5, initializer_range=0.2, eos_token_id=None)


@pytest.fixture(scope="module")
def model():
    return Llama(CONFIG)


def left_padded_prompts(batch: int = 3, length: int = 12, seed: int = 0):
    """Prompts of lengths length, length - 4, length - 7 (cycled), left-padded with PAD."""
    ids = np.random.default_rng(seed).integers(1, CONFIG.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for row in range(batch):
        mask[row, :(0, 4, 7)[row % 3]] = 0
    return np.where(mask == 1, ids, PAD), mask


def test_cached_decoding_matches_full_forward(model):
    """Prefill + one-token decode steps give the logits of a cache-free forward over the whole sequence."""
    ids, mask = left_padded_prompts()
    continuation = np.random.default_rng(1).integers(1, CONFIG.vocab_size, (3, 5)).astype(np.int32)
    full_ids = np.concatenate([ids, continuation], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(continuation)], axis=1)
    expected = np.asarray(model(jnp.asarray(full_ids), jnp.asarray(full_mask)))

    positions = positions_from_attention_mask(jnp.asarray(full_mask))
    cache = KVCache.create(CONFIG, batch=3, cache_len=full_ids.shape[1])
    decode = nnx.jit(lambda model, ids, cache, positions, mask=None: model.decode(
        ids, cache, positions=positions, attention_mask=mask))
    logits, cache = decode(model, jnp.asarray(ids), cache, positions[:, :12], jnp.asarray(mask))
    np.testing.assert_allclose(logits, expected[:, 11], atol=1e-5)
    for step in range(5):
        logits, cache = decode(model, jnp.asarray(continuation[:, step:step + 1]), cache,
                               positions[:, 12 + step:13 + step])
        np.testing.assert_allclose(logits, expected[:, 12 + step], atol=1e-5)
    assert int(cache.length) == 17 and np.array_equal(np.asarray(cache.valid), full_mask == 1)


def test_nucleus_sampling_with_tiny_top_p_is_greedy(model):
    ids, mask = left_padded_prompts()
    greedy = generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=None)
    nucleus = generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=None, temperature=1.0, top_p=1e-6,
                       rng=jax.random.key(3))
    np.testing.assert_array_equal(nucleus, greedy)


def test_sampling_is_deterministic_given_rng(model):
    ids, mask = left_padded_prompts()

    def sample(seed):
        return np.asarray(generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=None, temperature=1.0,
                                   top_p=0.9, rng=jax.random.key(seed)))

    first = sample(0)
    np.testing.assert_array_equal(sample(0), first)
    assert not np.array_equal(sample(1), first)


def test_sampled_generation_stops_each_sequence_at_its_own_eos(model):
    """With a list of EOS ids, each row is the free-running sample cut after its first EOS, then padding."""
    ids, mask = left_padded_prompts()
    rng = jax.random.key(5)
    free = np.asarray(generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=None, temperature=1.0, rng=rng))
    eos_ids = [int(free[0, 3]), int(free[1, 9])]
    expected = free.copy()
    for row in expected:
        hits = np.flatnonzero(np.isin(row, eos_ids))
        if hits.size:
            row[hits[0] + 1:] = PAD
    stopped = np.asarray(generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=eos_ids, temperature=1.0,
                                  rng=rng, pad_token_id=PAD))
    np.testing.assert_array_equal(stopped, expected)
    assert (stopped[0, 4:] == PAD).all() and (stopped[1, 10:] == PAD).all()


def test_first_sampled_token_follows_the_tempered_nucleus_distribution(model):
    """4096 draws of the first token vs softmax(logits / T) restricted to the top-p nucleus (float64 NumPy)."""
    temperature, top_p, draws = 0.7, 0.8, 4096
    ids, mask = left_padded_prompts(batch=1)
    logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))[0, -1].astype(np.float64) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    mass_before = np.cumsum(probs[order]) - probs[order]
    nucleus = order[mass_before < top_p]
    expected = np.zeros_like(probs)
    expected[nucleus] = probs[nucleus] / probs[nucleus].sum()

    tokens = np.asarray(generate(model, np.repeat(ids, draws, 0), np.repeat(mask, draws, 0), max_new_tokens=1,
                                 eos_token_id=None, temperature=temperature, top_p=top_p, rng=jax.random.key(11)))
    counts = np.bincount(tokens[:, 0], minlength=CONFIG.vocab_size)
    assert len(nucleus) >= 3 and set(np.flatnonzero(counts)) <= set(nucleus)
    sigma = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(counts / draws - expected) <= 5 * sigma + 1e-9)


def test_generate_compiles_once_per_shape(model):
    ids, mask = left_padded_prompts()
    generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=None, temperature=1.0, rng=jax.random.key(0))
    compiled = compiled_generate._cache_size()
    other_ids, other_mask = left_padded_prompts(seed=9)
    other_mask[2] = 1  # a different padding pattern, same shape
    generate(model, other_ids, other_mask, max_new_tokens=NEW, eos_token_id=None, temperature=0.3, top_p=0.5,
             rng=jax.random.key(1))
    assert compiled_generate._cache_size() == compiled


@pytest.mark.parametrize("kwargs, message", [
    (dict(right_padded=True), "left-padded"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=1.0), "needs rng"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0, temperature=1.0, rng=jax.random.key(0)), "top_p"),
])
def test_bad_requests_raise_clear_errors(model, kwargs, message):
    ids, mask = left_padded_prompts()
    if kwargs.pop("right_padded", False):
        ids, mask = ids[:, ::-1], mask[:, ::-1]
    request = dict(max_new_tokens=NEW, eos_token_id=None) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(model, ids, mask, **request)
