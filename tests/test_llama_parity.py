"""Parity of the NNX Llama family with transformers' PyTorch models (CPU, float32), and of its execution modes.

Random models with weights ~ N(0, 0.2²) (norm scales 1 + N(0, 0.2²), Gemma's (1 + w) norms w ~ N(0, 0.2²)) and
64+ tokens, so that RoPE layout, GQA grouping, rope theta/scaling, eps, bias, q/k norm, sliding-window (16 tokens)
and soft-capping errors all show up far above the 1e-4 tolerance.
"""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from lowrank_jax.models import Llama, LlamaConfig, generate
from lowrank_jax.models.axes import LOGICAL_AXES
from lowrank_jax.models.param_map import nnx_leaves_from_hf

TOL = 1e-4
SEQ = 72
PAD = 0
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=256,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)
LLAMA3_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=32)  # short original context: scaling matters at 72 tokens
CASES = {
    "llama3_gqa_tied_head_dim_scaled_rope": dict(
        model_type="llama", num_attention_heads=4, num_key_value_heads=2, head_dim=24, rope_theta=5e5,
        rope_scaling=LLAMA3_SCALING, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "llama2_mha_untied": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4,
                              tie_word_embeddings=False, rms_norm_eps=1e-6),
    "qwen2_biases_mqa": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=1, rope_theta=1e6,
                             tie_word_embeddings=False, rms_norm_eps=1e-6),
    "mistral_gqa": dict(model_type="mistral", num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                        sliding_window=None, tie_word_embeddings=False, rms_norm_eps=1e-5),
    "qwen3_qk_norm_gqa": dict(model_type="qwen3", num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                              rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6),
    "qwen3_sliding_upper_layer": dict(model_type="qwen3", num_attention_heads=4, num_key_value_heads=2,
                                      use_sliding_window=True, sliding_window=16, max_window_layers=1,
                                      tie_word_embeddings=False),
    "mistral_sliding_window": dict(model_type="mistral", num_attention_heads=4, num_key_value_heads=2,
                                   sliding_window=16, tie_word_embeddings=False, rms_norm_eps=1e-5),
    "phi3_fused_sliding_window": dict(model_type="phi3", num_attention_heads=4, num_key_value_heads=2,
                                      sliding_window=16, tie_word_embeddings=False, rms_norm_eps=1e-5),
    "gemma3_local_global_linear_rope_softcap": dict(
        model_type="gemma3_text", num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        layer_types=["sliding_attention", "full_attention"], sliding_window=16, query_pre_attn_scalar=24,
        final_logit_softcapping=3.0, tie_word_embeddings=True,
        rope_parameters=dict(full_attention=dict(rope_type="linear", factor=4.0, rope_theta=1e6),
                             sliding_attention=dict(rope_type="default", rope_theta=1e4))),
}


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    with jax.default_matmul_precision("highest"):
        yield


def random_torch_model(hf_dict: dict, seed: int = 0) -> torch.nn.Module:
    """A transformers causal LM with every weight ~ N(0, 0.2²), norm scales 1 + N(0, 0.2²) (Gemma's (1 + w) norms:
    w ~ N(0, 0.2²)); eager attention (the reference implementation)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_dict),
                                                          attn_implementation="eager").eval()
    norm_offset = 0.0 if hf_dict["model_type"] == "gemma3_text" else 1.0
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (norm_offset if "norm" in name else 0.0))
    return model


def copy_torch_weights(model: Llama, torch_model: torch.nn.Module) -> None:
    """Writes HF weights into the NNX model through the checkpoint table (split fused tensors, transpose, stack)."""
    weights = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    variables = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    specs = {path: variable.get_value() for path, variable in variables.items()}
    for path, leaf in nnx_leaves_from_hf(weights.__getitem__, model.config, specs):
        variables[path].set_value(jnp.asarray(leaf))


def torch_logits(torch_model, ids: np.ndarray) -> np.ndarray:
    """(seq,) tokens of one unpadded sequence -> (seq, vocab) reference logits."""
    with torch.no_grad():
        return torch_model(torch.tensor(ids[None])).logits[0].numpy()


def padded_batch(seed: int = 1):
    """Three rows of SEQ tokens: no padding, 10 left-padding tokens, 7 right-padding tokens."""
    ids = np.random.default_rng(seed).integers(1, TINY["vocab_size"], (3, SEQ))
    mask = np.ones((3, SEQ), np.int32)
    mask[1, :10] = 0
    mask[2, -7:] = 0
    return np.where(mask == 1, ids, PAD), mask


def max_error_on_real_tokens(logits: np.ndarray, mask: np.ndarray, ids: np.ndarray, torch_model) -> float:
    """Largest |logit difference| against the reference run on each row's real tokens alone."""
    return max(float(np.abs(logits[b][mask[b] == 1] - torch_logits(torch_model, ids[b][mask[b] == 1])).max())
               for b in range(len(ids)))


@functools.cache
def reference_and_model(name: str) -> tuple[torch.nn.Module, Llama]:
    """The random transformers model of CASES[name] and an NNX model with the same weights (built once)."""
    torch_model = random_torch_model({**TINY, **CASES[name]})
    model = Llama(LlamaConfig.from_hf(torch_model.config.to_dict()))
    copy_torch_weights(model, torch_model)
    return torch_model, model


@pytest.fixture(params=list(CASES))
def case(request):
    return request.param, *reference_and_model(request.param)


def test_logits_match_transformers_with_left_and_right_padding(case, record_property):
    name, torch_model, model = case
    ids, mask = padded_batch()
    error = max_error_on_real_tokens(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))), mask, ids, torch_model)
    record_property("max_abs_logit_error", error)
    print(f"\n{name}: max |Δlogit| = {error:.2e}")
    assert error <= TOL


def first_time_emitted_token(tokens: np.ndarray) -> int:
    """A token that first appears mid-row (the middle of the row's first occurrences)."""
    firsts = [k for k in range(len(tokens)) if tokens[k] not in tokens[:k]]
    return int(tokens[firsts[(len(firsts) - 1) // 2]])


def test_greedy_generation_matches_transformers_with_eos(case):
    """Batched left-padded greedy decoding, 32 tokens, with an EOS that stops row 0 early."""
    _, torch_model, model = case
    ids, mask = padded_batch(seed=2)
    ids, mask = ids[:, :20].copy(), np.ones((3, 20), np.int32)
    mask[1, :5], mask[2, :12] = 0, 0
    ids[mask == 0] = PAD

    def reference(eos):
        with torch.no_grad():
            out = torch_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=32,
                                       do_sample=False, eos_token_id=eos, pad_token_id=PAD)[:, 20:].numpy()
        return np.pad(out, ((0, 0), (0, 32 - out.shape[1])), constant_values=PAD)  # all rows may stop early

    eos = first_time_emitted_token(reference(None)[0])
    expected = reference(eos)
    tokens = np.asarray(generate(model, ids, mask, max_new_tokens=32, eos_token_id=eos, pad_token_id=PAD))
    np.testing.assert_array_equal(tokens, expected)
    assert tokens.dtype == np.int32 and eos in tokens[0] and tokens[0, -1] == PAD


@pytest.fixture
def scaled_rope_case():
    return reference_and_model("llama3_gqa_tied_head_dim_scaled_rope")


def test_packed_segments_match_separate_sequences(scaled_rope_case):
    torch_model, model = scaled_rope_case
    ids = np.random.default_rng(3).integers(1, TINY["vocab_size"], (2, SEQ))
    segment_ids = np.array([[1] * 40 + [2] * 30 + [0] * 2, [1] * SEQ], np.int32)
    logits = np.asarray(model(jnp.asarray(ids), segment_ids=jnp.asarray(segment_ids)))
    errors = []
    for row, segment in ((0, 1), (0, 2), (1, 1)):
        real = segment_ids[row] == segment
        errors.append(np.abs(logits[row][real] - torch_logits(torch_model, ids[row][real])).max())
    print(f"\npacked segments: max |Δlogit| = {max(errors):.2e}")
    assert max(errors) <= TOL


def mean_next_token_loss(model: Llama, ids, mask):
    logits = model(ids, mask)
    log_probs = jax.nn.log_softmax(logits[:, :-1])
    token_log_probs = jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, 1:] * mask[:, :-1]
    return -(token_log_probs * weights).sum() / weights.sum()


@pytest.mark.parametrize("scan_layers, remat", [(True, "dots_saveable"), (False, "full")])
def test_execution_modes_give_the_same_loss_and_gradients(scaled_rope_case, scan_layers, remat):
    """Scanned / unrolled layers and remat policies compute the same function; reference = transformers."""
    torch_model, model = scaled_rope_case
    variant = Llama(model.config.replace(scan_layers=scan_layers, remat=remat))
    nnx.update(variant, nnx.state(model))
    ids, mask = padded_batch(seed=4)
    loss_and_grads = nnx.jit(nnx.value_and_grad(mean_next_token_loss))
    loss, grads = loss_and_grads(variant, jnp.asarray(ids), jnp.asarray(mask))

    torch_model.zero_grad()
    labels = torch.tensor(np.where(mask == 1, ids, -100))
    reference_loss = 0.0
    for b in range(3):  # per-row reference on unpadded tokens, weighted by each row's number of targets
        real = mask[b] == 1
        row_loss = torch_model(torch.tensor(ids[b][real][None]), labels=labels[b][real][None]).loss
        (row_loss * (real.sum() - 1) / (mask.sum() - 3)).backward()
        reference_loss += row_loss.item() * (real.sum() - 1) / (mask.sum() - 3)
    assert abs(float(loss) - reference_loss) <= 1e-5
    q_grad = np.stack([torch_model.model.layers[i].self_attn.q_proj.weight.grad.numpy().T for i in range(2)])
    np.testing.assert_allclose(np.asarray(grads["layers"]["self_attn"]["q_proj"]["kernel"][...]), q_grad,
                               atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(grads["embed_tokens"]["embedding"][...]),
                               torch_model.model.embed_tokens.weight.grad.numpy(), atol=1e-5, rtol=1e-4)


class CallCounter(nnx.Variable):
    """A non-parameter Variable type, standing in for adapter state."""


class NoisyLinear(nnx.Module):
    """An adapter-like wrapper: base Linear + noise from its own RNG stream, counting its calls."""

    def __init__(self, base: nnx.Linear, rngs: nnx.Rngs):
        self.base = base
        self.rngs = rngs
        self.calls = CallCounter(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        self.calls[...] += 1
        return self.base(x) + 0.1 * jax.random.normal(self.rngs.noise(), x.shape[:-1] + (self.base.out_features,))


def with_noisy_down_proj(model: Llama) -> Llama:
    """Replaces the stacked down_proj by stacked NoisyLinear layers with per-layer RNG streams."""

    @nnx.vmap(in_axes=(0, 0), out_axes=0)
    def wrap(base, key):
        return NoisyLinear(base, nnx.Rngs(noise=key))

    keys = jax.random.split(jax.random.key(7), model.config.num_hidden_layers)
    model.layers.mlp.down_proj = wrap(model.layers.mlp.down_proj, keys)
    return model


def assert_same_arrays(tree, other):
    def plain(x):
        return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(plain(a), plain(b)), tree, other)


def test_layer_state_with_rng_streams_is_carried_and_written_back(scaled_rope_case):
    """Scan and unrolled modes see each layer's own RNG key and counter, and write the advanced state back."""
    _, model = scaled_rope_case
    scanned = with_noisy_down_proj(nnx.clone(model))
    unrolled = with_noisy_down_proj(Llama(model.config.replace(scan_layers=False)))
    nnx.update(unrolled, nnx.state(scanned))
    ids, mask = map(jnp.asarray, padded_batch(seed=5))
    first = scanned(ids, mask)
    np.testing.assert_allclose(unrolled(ids, mask), first, atol=1e-5)
    np.testing.assert_array_equal(scanned.layers.mlp.down_proj.calls[...], [1, 1])
    assert_same_arrays(nnx.state(unrolled), nnx.state(scanned))
    noise_keys = jax.random.key_data(scanned.layers.mlp.down_proj.rngs.noise.key[...])
    assert noise_keys.shape[0] == 2 and not np.array_equal(noise_keys[0], noise_keys[1])
    second = scanned(ids, mask)
    assert np.abs(np.asarray(second - first)).max() > 1e-3  # advanced RNG counts gave fresh noise
    np.testing.assert_array_equal(scanned.layers.mlp.down_proj.calls[...], [2, 2])


def test_bfloat16_compute_is_as_accurate_as_transformers_bfloat16(scaled_rope_case):
    """bf16 weights and compute: the error against the fp32 reference is that of transformers' own bf16 model."""
    torch_model, model = scaled_rope_case
    bf16 = Llama(model.config.replace(dtype="bfloat16", param_dtype="bfloat16"))
    nnx.update(bf16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(model, nnx.Param)))
    assert bf16.layers.mlp.up_proj.kernel.dtype == jnp.bfloat16
    ids, mask = padded_batch()
    logits = np.asarray(bf16(jnp.asarray(ids), jnp.asarray(mask)))
    assert logits.dtype == np.float32
    error = max_error_on_real_tokens(logits, mask, ids, torch_model)
    torch_bf16 = copy.deepcopy(torch_model).to(torch.bfloat16)
    with torch.no_grad():
        torch_error = max(
            np.abs(torch_bf16(torch.tensor(ids[b][mask[b] == 1][None])).logits[0].float().numpy()
                   - torch_logits(torch_model, ids[b][mask[b] == 1])).max() for b in range(len(ids)))
    print(f"\nbfloat16: max |Δlogit| = {error:.3f}, transformers bf16: {torch_error:.3f}")
    assert error <= 1.5 * torch_error


def test_parameters_have_contract_paths_shapes_and_logical_axes():
    cfg = LlamaConfig.from_hf({**TINY, **CASES["qwen2_biases_mqa"]})
    params = nnx.state(Llama(cfg), nnx.Param)
    flat = {".".join(map(str, path)): var for path, var in nnx.to_flat_state(params)}
    L, D, V, F = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    expected = {
        "embed_tokens.embedding": ((V, D), ("vocab", "embed")),
        "layers.input_layernorm.scale": ((L, D), ("layers", "norm")),
        "layers.post_attention_layernorm.scale": ((L, D), ("layers", "norm")),
        "layers.self_attn.q_proj.kernel": ((L, D, q), ("layers", "embed", "q_heads")),
        "layers.self_attn.q_proj.bias": ((L, q), ("layers", "q_heads")),
        "layers.self_attn.k_proj.kernel": ((L, D, kv), ("layers", "embed", "kv_heads")),
        "layers.self_attn.k_proj.bias": ((L, kv), ("layers", "kv_heads")),
        "layers.self_attn.v_proj.kernel": ((L, D, kv), ("layers", "embed", "kv_heads")),
        "layers.self_attn.v_proj.bias": ((L, kv), ("layers", "kv_heads")),
        "layers.self_attn.o_proj.kernel": ((L, q, D), ("layers", "q_heads", "embed")),
        "layers.mlp.gate_proj.kernel": ((L, D, F), ("layers", "embed", "mlp")),
        "layers.mlp.up_proj.kernel": ((L, D, F), ("layers", "embed", "mlp")),
        "layers.mlp.down_proj.kernel": ((L, F, D), ("layers", "mlp", "embed")),
        "norm.scale": ((D,), ("norm",)),
        "lm_head.kernel": ((D, V), ("embed", "vocab")),
    }
    assert set(flat) == set(expected)
    for path, (shape, axes) in expected.items():
        assert (flat[path].shape, tuple(flat[path].get_metadata()["out_sharding"])) == (shape, axes), path
        assert set(axes) <= set(LOGICAL_AXES)
    tied = nnx.state(Llama(cfg.replace(model_type="llama", attention_bias=False, tie_word_embeddings=True)))
    assert "lm_head" not in tied and "bias" not in tied["layers"]["self_attn"]["q_proj"]


def test_family_parameters_have_hf_named_paths_and_logical_axes():
    """Qwen3 / Gemma 3 add q/k norms (over head_dim) and Gemma 3 the norms around the MLP; Phi-3 keeps q/k/v and
    gate/up as separate kernels (split from its fused checkpoint tensors)."""
    def flat(name):
        params = nnx.state(Llama(LlamaConfig.from_hf({**TINY, **CASES[name]})), nnx.Param)
        return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(params)}

    gemma, phi3 = flat("gemma3_local_global_linear_rope_softcap"), flat("phi3_fused_sliding_window")
    for path in ("layers.self_attn.q_norm.scale", "layers.self_attn.k_norm.scale"):
        assert (gemma[path].shape, tuple(gemma[path].get_metadata()["out_sharding"])) == ((2, 32), ("layers", "norm"))
    assert {"layers.pre_feedforward_layernorm.scale", "layers.post_feedforward_layernorm.scale"} <= set(gemma)
    assert "lm_head.kernel" not in gemma and not gemma["norm.scale"][...].any()  # tied head, (1 + w) norms at w = 0
    assert "layers.self_attn.q_norm.scale" in flat("qwen3_qk_norm_gqa")
    assert {"layers.self_attn.v_proj.kernel", "layers.mlp.gate_proj.kernel"} <= set(phi3)
    assert not any("norm" in path and "self_attn" in path for path in phi3)
