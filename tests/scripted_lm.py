"""A byte-level tokenizer and a Llama that writes a chosen script, for end-to-end evaluation tests.

The Llama's attention and MLP outputs are zero, so its logits at a position depend only on that position's token:
`logits(a) = rmsnorm(embed[a]) @ lm_head`. `lm_head` is small noise plus, for each scripted pair a -> b, a large
column that makes b the argmax after a. Its next-token loss therefore has a closed form (`bigram_log_probs`),
computed here in float64 NumPy, independent of the model code.
"""

import numpy as np
from flax import nnx

from lowrank_jax.models import Llama, LlamaConfig

SPECIALS = ("<pad>", "<eos>")
PAD, EOS = 0, 1
SCRIPT_LOGIT = 40.0


def byte_tokenizer(words=()):
    """A fast (Rust) GPT-2-style byte-level tokenizer: one token per byte when encoding (no merges), plus `words`
    (byte-level strings, e.g. 'Ġreturn' for ' return') as extra tokens that a model can emit and decode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for token in [*sorted(pre_tokenizers.ByteLevel.alphabet()), *words]:
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=SPECIALS[PAD], eos_token=SPECIALS[EOS])


def scripted_llama(tokenizer, script, hidden=32, seed=0) -> Llama:
    """A Llama whose greedy continuation after token `script[0]` is `script[1:]` (token strings; '<eos>' ends).

    The script's tokens must be distinct (the next token depends on the current one only).
    """
    ids = tokenizer.convert_tokens_to_ids(list(script))
    assert len(set(ids)) == len(ids), f"script tokens repeat: {script}"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, eos_token_id=EOS,
                         pad_token_id=PAD, tie_word_embeddings=False, dtype="float32", param_dtype="float32")
    model = Llama(config, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    embed = rng.normal(size=(config.vocab_size, hidden))
    head = rng.normal(scale=0.5, size=(hidden, config.vocab_size))
    for current, following in zip(ids, ids[1:]):
        head[:, following] += SCRIPT_LOGIT * embed[current] / np.linalg.norm(embed[current])
    model.embed_tokens.embedding[...] = embed.astype(np.float32)
    model.lm_head.kernel[...] = head.astype(np.float32)
    model.layers.self_attn.o_proj.kernel[...] = np.zeros(model.layers.self_attn.o_proj.kernel.shape, np.float32)
    model.layers.mlp.down_proj.kernel[...] = np.zeros(model.layers.mlp.down_proj.kernel.shape, np.float32)
    return model


def bigram_log_probs(model: Llama) -> np.ndarray:
    """(vocab, vocab) float64 log p(next | current) of a `scripted_llama`, from its weights."""
    embed = np.asarray(model.embed_tokens.embedding[...], np.float64)
    normed = embed / np.sqrt(np.mean(embed ** 2, axis=-1, keepdims=True) + model.config.rms_norm_eps)
    logits = normed * np.asarray(model.norm.scale[...], np.float64) @ np.asarray(model.lm_head.kernel[...],
                                                                                 np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def target_loss(log_probs: np.ndarray, context_ids, target_ids) -> tuple[float, int]:
    """Summed -log p of `target_ids` following `context_ids` (each predicted from the token before it), and count."""
    sequence = [*context_ids, *target_ids]
    start = len(context_ids)
    return -sum(log_probs[sequence[t - 1], sequence[t]] for t in range(start, len(sequence))), len(target_ids)
