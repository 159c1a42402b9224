"""Quantized frozen bases: NF4 / int8 numerics against float64 NumPy references (and QLoRA's construction of the
code book), the quantized Llama against the dense one, sharding names, every adapter method on a quantized base, and
a QLoRA run of the real train step whose loss falls."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from configs import lora_llama
from lowrank_jax.adapters import adapt, merge
from lowrank_jax.adapters.delta import adapter_delta
from lowrank_jax.adapters.dora_layer import DoraLinear, dora_kernel
from lowrank_jax.adapters.inits.registry import METHODS
from lowrank_jax.models import Llama, LlamaConfig
from lowrank_jax.quant import (NF4_CODE_BOOK, QuantizeConfig, QuantizedLinear, QuantizedWeight, dequantize,
                               dequantize_kernel, quantize, quantize_kernel)
from lowrank_jax.sharding import make_mesh, spec_for, state_shardings
from lowrank_jax.training.optimizer import build_optimizer
from lowrank_jax.training.placement import init_optimizer, jit_train_step, split_onto_mesh


@functools.lru_cache(maxsize=None)
def small_llama():
    """A random 2-layer Llama, built once per process (tests never modify it: quantize and adapt return copies)."""
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, dtype="float32",
                         param_dtype="float32", remat="none")
    return Llama(config, rngs=nnx.Rngs(0))


@functools.lru_cache(maxsize=None)
def quantized_llama(fmt):
    """`small_llama()` quantized to `fmt`, once per process (tests never modify it)."""
    return quantize(small_llama(), fmt)


def nf4_reference(kernel, block, double_quant, scale_block):
    """bitsandbytes' layout in float64: the (out, in) weight's rows cut into blocks of `block`, nearest NF4 value by
    argmin of the distance to all 16; scales (double quant) centred on their mean, int8 absmax per `scale_block`."""
    weight = np.asarray(kernel, np.float64).T                      # (out, in), as PyTorch stores it
    n_out, n_in = weight.shape
    blocks = weight.reshape(n_out, n_in // block, block)
    absmax = np.abs(blocks).max(-1)                                # (out, in/block)
    codes = np.abs(blocks[..., None] / absmax[..., None, None] - NF4_CODE_BOOK.astype(np.float64)).argmin(-1)
    if double_quant:
        offset = absmax.mean()
        centred = (absmax - offset).T.reshape(n_in // block, n_out // scale_block, scale_block)
        step = np.abs(centred).max(-1, keepdims=True) / 127
        absmax = (np.round(centred / step) * step).reshape(n_in // block, n_out).T + offset
    values = NF4_CODE_BOOK.astype(np.float64)[codes] * absmax[..., None]
    return codes.reshape(n_out, n_in).T, values.reshape(n_out, n_in).T


def unpacked_codes(packed):
    """(in/2, out) uint8, high nibble first → (in, out) codes."""
    packed = np.asarray(packed)
    return np.stack([packed >> 4, packed & 15], axis=1).reshape(2 * packed.shape[0], packed.shape[1])


def test_nf4_code_book_is_qloras():
    """QLoRA's construction (bitsandbytes `create_normal_map(0.9677083)`): 8 positive and 7 negative N(0, 1)
    quantiles of evenly spaced probabilities, an exact zero, scaled to [-1, 1]."""
    offset = 0.9677083
    positive = scipy.stats.norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    negative = -scipy.stats.norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    values = np.sort(np.concatenate([positive, [0.0], negative]))
    np.testing.assert_allclose(NF4_CODE_BOOK, values / np.abs(values).max(), atol=1e-7)
    # the values printed in the paper's Appendix E
    np.testing.assert_allclose(NF4_CODE_BOOK[[0, 7, 8, 14, 15]], [-1.0, 0.0, 0.0796, 0.7230, 1.0], atol=5e-5)


@pytest.mark.parametrize("double_quant,n_out,scale_block", [(False, 512, None), (True, 512, 256), (True, 576, 64)])
def test_nf4_quantize_dequantize_matches_numpy(double_quant, n_out, scale_block):
    """Llama-2's dims take scale blocks of 256; SmolLM2's 576 outputs, of gcd(576, 256) = 64."""
    kernel = jax.random.normal(jax.random.key(0), (3, 128, n_out)) * jnp.linspace(0.1, 2.0, n_out)
    config = QuantizeConfig("nf4", double_quant=double_quant)
    parts = quantize_kernel(kernel, config)
    assert parts["codes"].shape == (3, 64, n_out) and parts["codes"].dtype == jnp.uint8
    dense = dequantize_kernel(parts, "nf4", jnp.float32)
    for i in range(3):
        codes, values = nf4_reference(kernel[i], 64, double_quant, scale_block)
        np.testing.assert_array_equal(unpacked_codes(parts["codes"][i]), codes)
        np.testing.assert_allclose(dense[i], values, rtol=1e-6, atol=1e-6)
    # the NF4 rounding error: at most half the widest gap (-1 to -0.696) times each block's absmax
    error = np.abs(np.asarray(dense) - np.asarray(kernel)).reshape(3, 2, 64, n_out).max(2)
    absmax = np.abs(np.asarray(kernel)).reshape(3, 2, 64, n_out).max(2)
    assert np.all(error <= absmax * (1 - NF4_CODE_BOOK[1]) / 2 * (1 + 1e-3))
    if double_quant:  # scales in int8 (1 byte per 64 weights) plus one float32 per scale block of them
        assert parts["scale_codes"].dtype == jnp.int8
        assert parts["scale_scale"].shape == (3, 2, n_out // scale_block)


def test_nf4_codes_equal_qwix():
    """qwix (Google's JAX quantization library) quantizes NF4 too, one scale per 64-row tile and column."""
    from qwix._src.core import qarray

    kernel = jax.random.normal(jax.random.key(1), (128, 48))
    theirs = qarray.quantize(kernel, qarray.HowToQuantize(qtype="nf4", channelwise_axes=(1,), tiled_axes={0: 64}))
    ours = quantize_kernel(kernel, QuantizeConfig("nf4", double_quant=False))
    np.testing.assert_array_equal(unpacked_codes(ours["codes"]), np.asarray(theirs.qvalue, np.uint8))
    np.testing.assert_allclose(ours["scale"], theirs.scale, rtol=1e-7)


def test_int8_quantize_dequantize_matches_numpy():
    kernel = np.array(jax.random.normal(jax.random.key(2), (2, 96, 40)) * jnp.linspace(0.01, 3.0, 40))
    kernel[1, :, 5] = 0.0  # an all-zero output channel stays zero
    parts = quantize_kernel(jnp.asarray(kernel), QuantizeConfig("int8"))
    step = np.abs(kernel.astype(np.float64)).max(axis=1, keepdims=True) / 127
    codes = np.round(kernel / np.where(step == 0, 1, step))
    np.testing.assert_array_equal(parts["qvalue"], codes)
    np.testing.assert_allclose(dequantize_kernel(parts, "int8", jnp.float32), codes * step, rtol=1e-6, atol=1e-7)
    assert np.all(np.abs(codes * step - kernel) <= step / 2 * (1 + 1e-5))


def jitted_logits(model, ids):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state: nnx.merge(graphdef, state)(ids))(state)


@pytest.mark.parametrize("fmt,tolerance", [("int8", 0.02), ("nf4", 0.25)])
def test_quantized_llama_logits_within_the_quantization_error(fmt, tolerance):
    """The quantized model computes exactly the dense model with the dequantized kernels, scanned or unrolled, and
    differs from the original by the first-order effect (a JVP along the kernels' quantization error) of that
    error, up to second-order terms (relatively larger for NF4's ~10% weight error than for int8's)."""
    model = small_llama()
    ids = jax.random.randint(jax.random.key(3), (2, 12), 0, 96)
    quantized = quantized_llama(fmt)
    assert isinstance(quantized.layers.mlp.down_proj, QuantizedLinear)
    assert isinstance(quantized.embed_tokens, nnx.Embed)
    logits, reference = jitted_logits(quantized, ids), jitted_logits(model, ids)
    np.testing.assert_allclose(logits, jitted_logits(dequantize(quantized), ids), atol=2e-5)
    unrolled = nnx.clone(quantized)
    unrolled.config = dataclasses.replace(unrolled.config, scan_layers=False)
    np.testing.assert_allclose(logits, jitted_logits(unrolled, ids), atol=2e-5)

    graphdef, params = nnx.split(model)
    _, dequantized = nnx.split(dequantize(quantized))
    error = jax.tree.map(lambda q, p: q - p, dequantized, params)
    first_order = jax.jit(lambda p, e: jax.jvp(lambda state: nnx.merge(graphdef, state)(ids), (p,), (e,))[1])(
        params, error)
    difference = logits - reference
    assert float(jnp.linalg.norm(difference)) > 0
    assert float(jnp.linalg.norm(difference - first_order)) < tolerance * float(jnp.linalg.norm(first_order))


def test_quantized_parts_carry_the_kernels_axis_names():
    model = adapt(small_llama(), {"method": "lora", "rank": 4})
    quantized = quantize(model, "nf4")
    base = quantized.layers.mlp.gate_proj.base
    kernel_names = model.layers.mlp.gate_proj.base.kernel.get_metadata()["out_sharding"]
    assert kernel_names == ("layers", "embed", "mlp")
    expected = {"codes": kernel_names, "scale_codes": kernel_names, "scale_scale": kernel_names,
                "scale_offset": ("layers",)}
    for name, names in expected.items():
        assert getattr(base, name).get_metadata()["out_sharding"] == names, name
    assert quantize(model, "int8").layers.mlp.gate_proj.base.scale.get_metadata()["out_sharding"] == (
        "layers", None, "mlp")
    # on a (data 1, fsdp 4, tensor 2) mesh the codes are split like the kernel
    mesh = make_mesh(fsdp=4, tensor=2)
    shardings = state_shardings(nnx.state(quantized, QuantizedWeight), mesh)
    assert shardings["layers"]["mlp"]["gate_proj"]["base"]["codes"].spec == spec_for(
        kernel_names, model.layers.mlp.gate_proj.base.kernel.shape, mesh)
    assert shardings["layers"]["mlp"]["gate_proj"]["base"]["codes"].spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor")


def test_gradient_inits_refuse_an_already_quantized_base():
    with pytest.raises(ValueError, match="adapt first and quantize after"):
        adapt(quantized_llama("nf4"), {"method": "loraga", "rank": 4, "alpha": 8.0, "targets": ".*q_proj"},
              gradients={})


@pytest.mark.parametrize("method", sorted(m for m in METHODS if not METHODS[m].needs_gradient))
def test_every_method_adapts_a_quantized_base(method):
    """Adapting a quantized model: inits read the dequantized kernel; a residual init requantizes the residual, so the
    effective kernel at init moves by that residual's quantization error only (not at all for B = 0 inits); merge
    dequantizes every quantized layer, adapted or not."""
    quantized = quantized_llama("nf4")
    adapted = adapt(quantized, {"method": method, "rank": 4, "alpha": 8.0, "targets": ".*q_proj"})
    layer, original = adapted.layers.self_attn.q_proj, quantized.layers.self_attn.q_proj
    assert isinstance(layer.base, QuantizedLinear)
    delta = adapter_delta(layer)
    if not hasattr(layer, "lora_a_init"):  # the base is untouched; B = 0 inits leave the kernel as it was
        jax.tree.map(np.testing.assert_array_equal, nnx.state(layer.base, QuantizedWeight),
                     nnx.state(original, QuantizedWeight))
        assert (float(jnp.abs(delta).max()) == 0) == METHODS[method].zero_b
    else:  # the stored residual is Q(W - ΔK): within NF4's rounding error of W - ΔK
        residual = np.asarray(original.dequantize() - delta)
        error = np.abs(np.asarray(layer.base.dequantize()) - residual).reshape(2, 1, 64, 64).max(2)
        assert np.all(error <= np.abs(residual).reshape(2, 1, 64, 64).max(2) * (1 - NF4_CODE_BOOK[1]) / 2 * 1.01)
    merged = merge(adapted)
    expected = dora_kernel(layer) if isinstance(layer, DoraLinear) else layer.base.dequantize() + delta
    np.testing.assert_allclose(merged.layers.self_attn.q_proj.kernel[...], expected, atol=1e-6)
    assert isinstance(merged.layers.mlp.up_proj, nnx.Linear)  # quantized, not adapted
    np.testing.assert_array_equal(merged.layers.mlp.up_proj.kernel[...], quantized.layers.mlp.up_proj.dequantize())


def test_adapt_then_quantize_keeps_the_adapter_and_quantizes_the_residual():
    """QPiSSA's order: the residual comes from the full-precision kernel, then only the base is quantized."""
    adapted = adapt(small_llama(), {"method": "pissa", "rank": 4})
    quantized = quantize(adapted, "int8")
    layer = quantized.layers.mlp.up_proj
    np.testing.assert_array_equal(layer.lora_a[...], adapted.layers.mlp.up_proj.lora_a[...])
    dense = adapted.layers.mlp.up_proj.base.kernel[...]
    step = np.abs(np.asarray(dense)).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(np.asarray(layer.base.dequantize() - dense)) <= step / 2 * (1 + 1e-5))
    ids = jax.random.randint(jax.random.key(4), (2, 8), 0, 96)
    np.testing.assert_allclose(jitted_logits(quantized, ids), jitted_logits(merge(quantized), ids), atol=2e-5)


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="format must be one of"):
        QuantizeConfig("int4")
    with pytest.raises(ValueError, match="block_size"):
        QuantizeConfig("nf4", block_size=63)
    class Odd(nnx.Module):
        def __init__(self):
            self.up_proj = nnx.Linear(96, 8, rngs=nnx.Rngs(0))

    with pytest.raises(ValueError, match="up_proj: in = 96 is not a multiple of block_size 64"):
        quantize(Odd(), "nf4")
    with pytest.raises(ValueError, match="match no nnx.Linear"):
        quantize(small_llama(), {"format": "int8", "targets": "nothing"})


@pytest.mark.parametrize("optimizer", ["adamw", "lorapro", "lorapro_adamw"])
def test_qlora_trains_through_the_train_step(optimizer):
    """A QLoRA run (NF4 base, double-quantized, LoRA on every projection) on a sharded 8-device mesh: the jitted train
    step lowers the loss of a fixed batch, and the quantized base never changes."""
    model = quantize(adapt(small_llama(), {"method": "lora", "rank": 4, "alpha": 8.0}), "nf4")
    mesh = make_mesh(fsdp=4, tensor=2)
    state = split_onto_mesh(model, mesh)
    cfg = ml_collections.ConfigDict(lora_llama.get_config("tiny").optimizer.to_dict())
    cfg.update(name=optimizer, learning_rate=2e-2, warmup_ratio=0.0, schedule="constant")
    tx = build_optimizer(cfg, 8, state.frozen)
    opt_state = init_optimizer(tx, state.trainable, mesh)
    step = jit_train_step(state, tx, opt_state)
    ids = jax.random.randint(jax.random.key(5), (1, 8, 16), 0, 96)
    batch = {"input_ids": ids, "loss_mask": jnp.ones_like(ids), "segment_ids": jnp.ones_like(ids),
             "positions": jnp.broadcast_to(jnp.arange(16), ids.shape)}
    frozen_before = jax.tree.map(np.asarray, state.frozen)
    trainable, rngs, losses = state.trainable, state.rngs, []
    for _ in range(4):
        trainable, opt_state, rngs, metrics = step(trainable, opt_state, rngs, state.frozen, batch)
        losses.append(float(metrics["loss"]))
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.frozen), frozen_before)
