"""Adapters on nnx.LinearGeneral and nnx.Einsum (LoRA over the flattened in/out axes): the closed form
x·W + s·x·A·B in float64 NumPy, merge, refused einsums, an nnx.MultiHeadAttention model trained with
optax.chain(lorapro(), adamw), and LoRA-Pro's adjusted gradient on such a layer against its float64 closed form.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lowrank_jax.adapters import AdaptedEinsum, AdaptedLinearGeneral, AdapterScale, adapt, merge
from lowrank_jax.optim import lorapro

RNG = np.random.default_rng(0)


class Holder(nnx.Module):
    def __init__(self, layer):
        self.proj = layer


def adapted(layer, **config):
    """`layer` adapted as `proj` (lora, rank 2, s = 1.5) with lora_b moved off zero so the adapter path counts."""
    model = adapt(Holder(layer), {"method": "lora", "rank": 2, "alpha": 3.0, "targets": "proj", **config})
    model.proj.lora_b[...] = jnp.asarray(RNG.normal(size=model.proj.lora_b.shape), jnp.float32)
    return model.proj


def as_numpy(variable):
    return np.asarray(variable[...], np.float64)


def test_linear_general_multi_axis_matches_the_closed_form():
    base = nnx.LinearGeneral((3, 4), (2, 5), axis=(1, 2), rngs=nnx.Rngs(0))
    layer = adapted(base)
    assert isinstance(layer, AdaptedLinearGeneral) and layer.lora_a.shape == (12, 2) and layer.lora_b.shape == (2, 10)
    x = RNG.normal(size=(6, 3, 4))
    w = as_numpy(layer.base.kernel).reshape(12, 10)
    delta = 1.5 * as_numpy(layer.lora_a) @ as_numpy(layer.lora_b)
    expected = (x.reshape(6, 12) @ (w + delta)).reshape(6, 2, 5) + as_numpy(layer.base.bias)
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5, atol=1e-5)
    merged = merge(Holder(layer)).proj
    assert type(merged) is nnx.LinearGeneral
    np.testing.assert_allclose(merged(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5, atol=1e-5)


def test_linear_general_batch_axis_gets_one_adapter_per_batch_entry():
    base = nnx.LinearGeneral(4, 3, axis=-1, batch_axis={0: 2}, use_bias=False, rngs=nnx.Rngs(1))
    layer = adapted(base)
    assert layer.lora_a.shape == (2, 4, 2) and layer.lora_b.shape == (2, 2, 3) and layer.lora_scale.shape == (2,)
    x = RNG.normal(size=(2, 5, 4))
    kernel = as_numpy(layer.base.kernel) + 1.5 * as_numpy(layer.lora_a) @ as_numpy(layer.lora_b)
    expected = np.einsum("bti,bio->bto", x, kernel)
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation, kernel_shape, delta_as_kernel", [
    # heads as output axes: in = d, out = (h, k)
    ("btd,dhk->bthk", (4, 2, 3), lambda d: d.reshape(4, 2, 3)),
    # kernel axes (k, h, d): in = d, out = (k, h) in kernel order
    ("btd,khd->bthk", (3, 2, 4), lambda d: d.reshape(4, 3, 2).transpose(1, 2, 0)),
], ids=["heads_out", "kernel_axes_permuted"])
def test_einsum_matches_the_closed_form(equation, kernel_shape, delta_as_kernel):
    base = nnx.Einsum(equation, kernel_shape, rngs=nnx.Rngs(2))
    layer = adapted(base)
    assert isinstance(layer, AdaptedEinsum) and layer.lora_a.shape == (4, 2) and layer.lora_b.shape == (2, 6)
    x = RNG.normal(size=(2, 5, 4))
    delta = 1.5 * as_numpy(layer.lora_a) @ as_numpy(layer.lora_b)
    kernel = as_numpy(layer.base.kernel) + delta_as_kernel(delta)
    expected = np.einsum(equation, x, kernel)
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(as_numpy(merge(Holder(layer)).proj.kernel), kernel, rtol=1e-6, atol=1e-6)


def test_einsum_batch_index_is_a_stack_axis():
    base = nnx.Einsum("bhd,hdk->bhk", (3, 4, 5), (3, 5), rngs=nnx.Rngs(3))
    layer = adapted(base)
    assert layer.lora_a.shape == (3, 4, 2) and layer.lora_b.shape == (3, 2, 5)
    x = RNG.normal(size=(2, 3, 4))
    kernel = as_numpy(layer.base.kernel) + 1.5 * as_numpy(layer.lora_a) @ as_numpy(layer.lora_b)
    expected = np.einsum("bhd,hdk->bhk", x, kernel) + as_numpy(layer.base.bias)
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation, kernel_shape, message", [
    ("btd,...k->btk", (4, 3), "ellipsis or a repeated index"),
    ("bd,dkk->bk", (4, 3, 3), "ellipsis or a repeated index"),
    ("bd,dek->bk", (4, 2, 3), "kernel-only summed axes"),
    ("bd,bd->b", (3, 4), "contracted input axes and output axes"),
])
def test_unsupported_einsums_are_refused_before_any_init(equation, kernel_shape, message):
    base = nnx.Einsum(equation, kernel_shape, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=message):
        adapt(Holder(base), {"method": "lora", "rank": 1, "targets": "proj"})


class TinyAttentionModel(nnx.Module):
    """Embedding → nnx.MultiHeadAttention (LinearGeneral query/key/value/out) → readout."""

    def __init__(self, rngs, dtype=jnp.float32):
        self.embed = nnx.Embed(16, 8, param_dtype=dtype, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False,
                                                param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.readout = nnx.Linear(8, 16, param_dtype=dtype, rngs=rngs)

    def __call__(self, tokens):
        return self.readout(self.attention(self.embed(tokens)))


def next_token_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


ATTENTION_TARGETS = r"attention\.(query|key|value|out)"


def test_multi_head_attention_trains_with_lorapro_and_adamw():
    tokens = jnp.asarray(RNG.integers(0, 16, (4, 9)))
    model = adapt(TinyAttentionModel(nnx.Rngs(0)),
                  {"method": "pissa", "rank": 2, "alpha": 2.0, "targets": ATTENTION_TARGETS})
    assert all(isinstance(getattr(model.attention, name), AdaptedLinearGeneral)
               for name in ("query", "key", "value", "out"))
    tx = optax.chain(lorapro(scale=nnx.state(model, AdapterScale)), optax.adamw(5e-2))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(next_token_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, tokens)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(30)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_lorapro_adjusted_gradient_on_an_attention_layer_is_the_tangent_projection():
    with jax.enable_x64(True):
        tokens = jnp.asarray(RNG.integers(0, 16, (3, 7)))
        model = adapt(TinyAttentionModel(nnx.Rngs(1), dtype=jnp.float64),
                      {"method": "pissa", "rank": 2, "alpha": 3.0, "targets": ATTENTION_TARGETS, "dtype": "float64"})
        layer = model.attention.value  # kernel (8, 2, 4): in 8, out (2, 4) = 8
        params = nnx.state(model, nnx.LoRAParam)
        grads = nnx.grad(next_token_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, tokens)
        # The full kernel gradient: y depends on K + s·A B, so ∂L/∂K_base is the gradient of the adapted kernel.
        kernel_grad = nnx.grad(next_token_loss, argnums=nnx.DiffState(0, nnx.PathContains("kernel")))(model, tokens)
        g = np.asarray(kernel_grad["attention"]["value"]["base"]["kernel"][...]).reshape(8, 8)
        updates, _ = lorapro(scale=nnx.state(model, AdapterScale), delta=1e-12).update(grads, None, params)
        a, b, s = as_numpy(layer.lora_a), as_numpy(layer.lora_b), float(layer.lora_scale[...])
        da = np.asarray(updates["attention"]["value"]["lora_a"][...])
        db = np.asarray(updates["attention"]["value"]["lora_b"][...])

    def projector(x):
        u, _, _ = np.linalg.svd(x, full_matrices=False)
        return u @ u.T

    p_in, p_out = projector(a), projector(b.T)
    tangent = p_in @ g + g @ p_out - p_in @ g @ p_out
    first_order = s * (da @ b + a @ db)
    assert np.linalg.norm(first_order - tangent) < 1e-8 * np.linalg.norm(tangent)
