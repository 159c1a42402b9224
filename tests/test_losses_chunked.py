"""The chunked next-token loss (`token_loss(..., chunk_tokens=N)`) against the unchunked one and a float64 NumPy
closed form: loss and gradients for a tied head and an untied, soft-capped, adapted one, the adapter dropout RNG carried
through the chunks, and the train step's compiled temporary memory at a tall vocabulary.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lowrank_jax.adapters import adapt
from lowrank_jax.losses import token_loss
from lowrank_jax.models import Llama, LlamaConfig
from lowrank_jax.training.step import make_train_step

SMALL = dict(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, dtype="float32", param_dtype="float32")
GEMMA = dict(model_type="gemma3_text", hidden_act="gelu_pytorch_tanh", final_logit_softcapping=2.0)
SEQ, CHUNK = 11, 4  # 10 targets per row: chunks of 4, 4 and 2 (+ 2 padding)
# LLVM's optimisation off: XLA:CPU compiles in about half the time; the HLO passes, and so the buffer assignment
# whose temporaries the memory test reads, are the same.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def compiled(fn, *args):
    """`jax.jit(fn)` lowered for `args` and compiled with FAST_COMPILE."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def random_batch(rows: int, seq: int, vocab: int, seed: int = 0) -> dict[str, jax.Array]:
    """(rows, seq) arrays: random tokens and loss mask, two packed segments per row."""
    rng = np.random.default_rng(seed)
    half = seq // 2
    segment_ids = np.repeat([[1, 2]], [half, seq - half], axis=1).repeat(rows, 0)
    positions = np.concatenate([np.arange(half), np.arange(seq - half)])
    return dict(input_ids=jnp.asarray(rng.integers(0, vocab, (rows, seq)), jnp.int32),
                loss_mask=jnp.asarray(rng.integers(0, 2, (rows, seq)), jnp.float32),
                segment_ids=jnp.asarray(segment_ids, jnp.int32),
                positions=jnp.asarray(np.broadcast_to(positions, (rows, seq)), jnp.int32))


def adapted_softcapped_model() -> Llama:
    """Untied, soft-capped head; LoRA on q_proj and lm_head, lora_b moved off zero so both factors carry gradient."""
    model = adapt(Llama(LlamaConfig(**SMALL, **GEMMA, tie_word_embeddings=False)),
                  dict(method="lora", rank=2, alpha=4.0, targets=r".*(q_proj|lm_head)"))
    for layer in (model.lm_head, model.layers.self_attn.q_proj):
        layer.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(1), layer.lora_b.shape)
    return model


MODELS = {
    "tied": lambda: Llama(LlamaConfig(**SMALL, tie_word_embeddings=True)),
    "untied_softcapped_adapted": adapted_softcapped_model,
}


def chunked_and_unchunked(model: nnx.Module, batch: dict):
    """[(mean token loss, its gradient w.r.t. every Param, adapter factors included)] with chunk_tokens = CHUNK and
    0, from one compiled program."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def mean_loss(params, rest, chunk_tokens):
        loss_sum, n_tokens = token_loss(nnx.merge(graphdef, params, rest), batch, chunk_tokens=chunk_tokens)
        return loss_sum / n_tokens

    def both(params, rest):
        return [jax.value_and_grad(mean_loss)(params, rest, chunk_tokens) for chunk_tokens in (CHUNK, 0)]

    args = nnx.as_pure(params), nnx.as_pure(rest)
    return compiled(both, *args)(*args)


def relative_error(actual, expected) -> float:
    """Largest |actual - expected| of each leaf relative to that leaf's largest |expected|, over all leaves."""
    errors = jax.tree.map(lambda a, e: float(jnp.max(jnp.abs(a - e)) / jnp.max(jnp.abs(e))), actual, expected)
    return max(jax.tree.leaves(errors))


@pytest.mark.parametrize("name", MODELS)
def test_chunked_loss_and_gradients_equal_the_unchunked(name):
    model, batch = MODELS[name](), random_batch(3, SEQ, SMALL["vocab_size"])
    (loss, grads), (reference_loss, reference_grads) = chunked_and_unchunked(model, batch)
    assert abs(float(loss - reference_loss)) <= 1e-6 * abs(float(reference_loss))
    assert relative_error(grads, reference_grads) <= 1e-5


def test_chunked_loss_matches_the_float64_closed_form():
    model, batch = MODELS["tied"](), random_batch(2, SEQ, SMALL["vocab_size"], seed=1)

    @nnx.jit
    def hidden_and_loss(model, batch):
        inputs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
        return model.hidden_states(batch["input_ids"], **inputs), token_loss(model, batch, chunk_tokens=CHUNK)

    hidden, (loss_sum, n_tokens) = hidden_and_loss(model, batch)
    logits = np.asarray(hidden, np.float64)[:, :-1] @ np.asarray(model.embed_tokens.embedding[...], np.float64).T
    peak = logits.max(-1, keepdims=True)
    log_normaliser = (peak + np.log(np.exp(logits - peak).sum(-1, keepdims=True)))[..., 0]
    targets, weights = np.asarray(batch["input_ids"])[:, 1:], np.asarray(batch["loss_mask"], np.float64)[:, 1:]
    target_logits = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss_sum), np.sum((log_normaliser - target_logits) * weights), rtol=1e-6)
    assert float(n_tokens) == weights.sum()


def test_adapter_dropout_on_the_head_draws_once_per_chunk():
    model = adapt(Llama(LlamaConfig(**SMALL, tie_word_embeddings=False)),
                  dict(method="lora", rank=2, alpha=4.0, targets="lm_head", dropout=0.5))
    count = model.lm_head.dropout_rngs.count
    before = int(count[...])
    loss_sum, _ = nnx.jit(token_loss, static_argnames="chunk_tokens")(
        model, random_batch(2, SEQ, SMALL["vocab_size"]), chunk_tokens=CHUNK)
    assert np.isfinite(float(loss_sum)) and int(count[...]) == before + 3  # ceil(10 / 4) chunks


def step_temp_bytes(config: LlamaConfig, batch: dict, loss_chunk_tokens: int) -> int:
    """XLA's temporary buffer bytes of the train step (SGD on every Param) of an abstract model: compiled, never
    run, no weights created."""
    graphdef, *states = nnx.split(nnx.eval_shape(lambda: Llama(config)), nnx.Param, nnx.RngState, ...)
    trainable, rngs, frozen = map(nnx.as_pure, states)
    optimizer = optax.sgd(1e-3)
    step = make_train_step(graphdef, optimizer, loss_chunk_tokens=loss_chunk_tokens)
    step_batch = jax.tree.map(lambda x: x[None], batch)  # one micro-batch
    program = compiled(step, trainable, jax.eval_shape(optimizer.init, trainable), rngs, frozen, step_batch)
    return program.memory_analysis().temp_size_in_bytes


def test_chunked_step_needs_a_fraction_of_the_temporary_memory():
    config = LlamaConfig(vocab_size=32768, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, dtype="float32", param_dtype="float32")
    rows, seq = 8, 256  # B·T = 2048 tokens
    batch = random_batch(rows, seq, config.vocab_size)
    unchunked, chunked = step_temp_bytes(config, batch, 0), step_temp_bytes(config, batch, 32)
    assert unchunked >= rows * (seq - 1) * config.vocab_size * 4  # the float32 logits alone
    assert chunked < 0.25 * unchunked, (chunked, unchunked)
