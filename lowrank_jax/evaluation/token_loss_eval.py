"""Loss of target tokens: the next-token cross-entropy the train step minimises, its mean over a stream of batches
(validation loss), and the response-token loss / perplexity of a set of examples (any dataset's generic metric).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import numpy as np
from flax import nnx

from lowrank_jax.data import evaluation_batches, pad_id, tokenize_examples
from lowrank_jax.evaluation.metrics import mean_loss_and_perplexity
from lowrank_jax.losses import token_loss

# Bytes of float32 logits alive at once while scoring responses: (rows, positions, vocabulary) is computed that many
# positions at a time, so the batch size is not tied to the vocabulary (32 rows of 768 tokens at Qwen's 151,936-token
# vocabulary would otherwise be 15 GB of logits).
LOGITS_BYTES = 1 << 30


def mean_token_loss(model: nnx.Module, batches: Iterable[dict[str, np.ndarray]], *,
                    chunk_tokens: int = 0) -> tuple[float, float]:
    """(mean loss in nats, number of target tokens) of `model` in eval mode over `batches` of (B, T) arrays;
    `chunk_tokens` as `token_loss`'s (0: the whole (B, T, V) logits at once)."""
    graphdef, state = nnx.split(model)
    model.eval()
    loss_fn = jax.jit(lambda state, batch: token_loss(nnx.merge(graphdef, state), batch, chunk_tokens=chunk_tokens))
    total, count = 0.0, 0.0
    for batch in batches:
        loss_sum, n = loss_fn(state, batch)
        total, count = total + float(loss_sum), count + float(n)
    model.train()
    if count == 0:
        raise ValueError("no target tokens in the evaluation batches (loss_mask is all zero)")
    return total / count, count


def response_loss(model: nnx.Module, tokenizer, examples: Sequence, *, template: str, max_length: int,
                  batch_size: int, target: str = "response", logits_bytes: int = LOGITS_BYTES) -> dict[str, float]:
    """Mean loss (nats) and perplexity of the reference responses' tokens given their prompts, over `examples`.

    Args:
      model: a Llama (adapted or not).
      tokenizer: its tokenizer.
      examples: `lowrank_jax.data.Example`s (query, reference response).
      template: the prompt template training used.
      max_length: longest packed row; longer examples lose the end of their response.
      batch_size: rows per forward pass.
      target: 'response' (every response token and EOS) or 'final_answer' (only a GSM8K-style final answer).
      logits_bytes: the most float32 logits alive at once; (batch_size, max_length, vocab) logits larger than that
        are computed in chunks of positions (`token_loss`'s `chunk_tokens`), which changes only the summation order.

    Returns:
      {'loss', 'perplexity', 'tokens'} (tokens: how many target tokens were scored).
    """
    tokenized = tokenize_examples(examples, tokenizer, max_length=max_length, template=template, target=target)
    batches = evaluation_batches(tokenized, global_batch_size=batch_size, seq_len=max_length, packing=True,
                                 pad_id=pad_id(tokenizer))
    positions = logits_bytes // (4 * batch_size * model.config.vocab_size)
    mean, count = mean_token_loss(model, batches, chunk_tokens=max(1, positions) if positions < max_length else 0)
    loss, perplexity = mean_loss_and_perplexity(mean * count, count)
    return {"loss": loss, "perplexity": perplexity, "tokens": count}
