"""DoRA on plain and stacked (nnx.vmap) linears against float64 NumPy: init (m = ‖K‖, LoRA's A, B = 0), forward
m ⊙ (K + s·AB)/‖K + s·AB‖, merge, gradients with the norm detached, PEFT's dropout form, what lorapro() and
lorapro_adamw() do with the magnitude, and bad input. PEFT parity of export_peft is in test_adapters_llama.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lowrank_jax.adapters import AdapterConfig, AdapterScale, DoraLinear, adapt, merge
from lowrank_jax.adapters.inits import InitFactors
from lowrank_jax.export import export_peft
from lowrank_jax.optim import adjust, lorapro, lorapro_adamw

LAYERS, N_IN, N_OUT, RANK, ALPHA = 3, 8, 6, 2, 6.0
SCALE = ALPHA / RANK
RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, N_IN)).astype(np.float32)
TARGET = RNG.standard_normal((LAYERS, 4, N_OUT))  # loss = Σ y ⊙ TARGET, so ∂L/∂K' = xᵀ TARGET per layer


def linear(rngs):
    return nnx.Linear(N_IN, N_OUT, kernel_init=nnx.initializers.normal(0.5), bias_init=nnx.initializers.normal(0.5),
                      kernel_metadata={"out_sharding": ("embed", "mlp"), "eager_sharding": False}, rngs=rngs)


class Plain(nnx.Module):
    def __init__(self, rngs):
        self.proj = linear(rngs)

    def __call__(self, x):
        return self.proj(x)[None]


class Stacked(nnx.Module):
    """LAYERS stacked linears, each applied to the same x by lax.scan over per-layer slices: y (L, …, out)."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def create(rngs):
            return linear(rngs)

        self.proj = create(rngs)

    def __call__(self, x):
        graphdef, state = nnx.split(self.proj)

        def step(carry, layer_state):
            layer = nnx.merge(graphdef, layer_state)
            return carry, (layer(carry), nnx.state(layer))

        _, (ys, new_state) = jax.lax.scan(step, x, state)
        nnx.update(self.proj, new_state)
        return ys


@functools.cache
def _built(stacked: bool):
    return Stacked(nnx.Rngs(0)) if stacked else Plain(nnx.Rngs(0))


def build(stacked: bool, **options):
    return adapt(nnx.clone(_built(stacked)), {"method": "dora", "rank": RANK, "alpha": ALPHA, "targets": "proj",
                                              **options})


def perturb(model, seed=1):
    """Moves A, B and m by N(0, 0.3²), standing in for training."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.LoRAParam)
    nnx.update(model, jax.tree.map(lambda v: v + 0.3 * rng.standard_normal(v.shape).astype(v.dtype), state))


def slices(layer):
    """Per-layer float64 (kernel, bias, a, b, m) of a DoraLinear, stacked or not."""
    arrays = [layer.base.kernel, layer.base.bias, layer.lora_a, layer.lora_b, layer.lora_magnitude]
    arrays = [np.asarray(v[...], np.float64) for v in arrays]
    return [arrays] if arrays[0].ndim == 2 else [[v[i] for v in arrays] for i in range(arrays[0].shape[0])]


def reference(layer, x):
    """Per layer: the output, the merged kernel and ∂L/∂(a, b, m) of L = Σ y ⊙ TARGET, from the closed form."""
    out = []
    for i, (kernel, bias, a, b, m) in enumerate(slices(layer)):
        direction = kernel + SCALE * a @ b
        norm = np.linalg.norm(direction, axis=0)
        merged = direction * (m / norm)
        grad_kernel = x.T @ TARGET[i]
        grad_direction = grad_kernel * (m / norm)  # the norm is a constant of the backward pass
        grads = {"lora_a": SCALE * grad_direction @ b.T, "lora_b": SCALE * a.T @ grad_direction,
                 "lora_magnitude": (grad_kernel * direction).sum(0) / norm}
        out.append((x @ merged + bias, merged, grads))
    return out


def assert_close(actual, expected, tol=1e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * np.abs(expected).max())


def loss_grads(model):
    loss = lambda m: jnp.sum(m(X) * TARGET[: 1 if isinstance(m, Plain) else LAYERS])
    return nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)


forward = nnx.jit(lambda model, x: model(x))


@pytest.mark.parametrize("stacked", [False, True], ids=["plain", "stacked"])
def test_init_is_loras_factors_with_the_column_norms_and_keeps_the_output(stacked):
    model = build(stacked)
    lora = adapt(nnx.clone(_built(stacked)), {"method": "lora", "rank": RANK, "alpha": ALPHA, "targets": "proj"})
    layer = model.proj
    assert isinstance(layer, DoraLinear)
    np.testing.assert_array_equal(layer.lora_a[...], lora.proj.lora_a[...])
    np.testing.assert_array_equal(layer.lora_b[...], 0.0)
    kernel = np.asarray(layer.base.kernel[...], np.float64)
    assert_close(layer.lora_magnitude[...], np.linalg.norm(kernel, axis=-2), tol=1e-6)
    assert_close(forward(model, X), forward(_built(stacked), X))
    stack = ("layers",) if stacked else ()
    assert layer.lora_magnitude.shape == (*([LAYERS] if stacked else []), N_OUT)
    assert layer.lora_magnitude.get_metadata("out_sharding") == (*stack, "mlp")
    assert set(nnx.state(model, nnx.LoRAParam)["proj"]) == {"lora_a", "lora_b", "lora_magnitude"}


@pytest.mark.parametrize("stacked", [False, True], ids=["plain", "stacked"])
def test_forward_merge_and_gradients_equal_the_closed_form(stacked):
    model = build(stacked)
    perturb(model)
    expected = reference(model.proj, X.astype(np.float64))
    assert_close(forward(model, X), np.stack([y for y, _, _ in expected]))
    merged = merge(model)
    assert type(merged.proj) is nnx.Linear
    assert_close(merged.proj.kernel[...], np.stack([k for _, k, _ in expected]).reshape(merged.proj.kernel.shape))
    assert_close(forward(merged, X), np.stack([y for y, _, _ in expected]))
    grads = loss_grads(model)["proj"]
    for name in ("lora_a", "lora_b", "lora_magnitude"):
        want = np.stack([g[name] for _, _, g in expected]).reshape(grads[name].shape)
        assert_close(grads[name][...], want)


def test_dropout_follows_pefts_form():
    model = build(False, dropout=0.5)
    perturb(model)
    (kernel, bias, a, b, m), = slices(model.proj)
    direction = kernel + SCALE * a @ b
    scale = m / np.linalg.norm(direction, axis=0)
    x = X.astype(np.float64)
    model.eval()
    assert_close(model(X)[0], x @ (direction * scale) + bias)
    model.train()
    twin = nnx.clone(model)  # same RNG state: draws the mask model(X) is about to draw
    dropped = np.asarray(twin.proj.dropout(X, rngs=twin.proj.dropout_rngs), np.float64)
    assert 0 < np.mean(dropped == 0) < 1
    # PEFT: base(x) + (g − 1) ⊙ x'K + g ⊙ s·x'AB with x' = dropout(x).
    expected = x @ kernel + bias + (scale - 1) * (dropped @ kernel) + scale * SCALE * (dropped @ a @ b)
    assert_close(model(X)[0], expected)


def test_lorapro_adjusts_a_b_as_a_lora_of_the_direction_and_the_magnitude_gets_its_plain_gradient():
    model = build(True)
    perturb(model)
    expected = reference(model.proj, X.astype(np.float64))
    params = nnx.as_pure(nnx.state(model, nnx.LoRAParam))
    scales = nnx.as_pure(nnx.state(model, AdapterScale))
    grads = nnx.as_pure(loss_grads(model))
    tx = optax.chain(lorapro(scale=scales), optax.sgd(1.0))
    updates, _ = tx.update(grads, tx.init(params), params)
    for i, (_, _, g) in enumerate(expected):
        a, b = params["proj"]["lora_a"][i], params["proj"]["lora_b"][i]
        da, db = adjust(a, b, jnp.asarray(g["lora_a"], jnp.float32), jnp.asarray(g["lora_b"], jnp.float32),
                        scale=SCALE)
        assert_close(updates["proj"]["lora_a"][i], -da, tol=1e-4)
        assert_close(updates["proj"]["lora_b"][i], -db, tol=1e-4)
        assert_close(updates["proj"]["lora_magnitude"][i], -g["lora_magnitude"])

    # lorapro_adamw: LoRA-Pro AdamW on A, B as if the magnitude were not there; plain AdamW on the magnitude.
    def split(tree):
        return {"proj": {k: v for k, v in tree["proj"].items() if k != "lora_magnitude"}}, tree["proj"]["lora_magnitude"]

    hyper = dict(b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1)
    full, factors_only, magnitude_only = (lorapro_adamw(1e-2, scale=scales, **hyper),
                                          lorapro_adamw(1e-2, scale=scales, **hyper), optax.adamw(1e-2, **hyper))
    factor_params, magnitude = split(params)
    states = full.init(params), factors_only.init(factor_params), magnitude_only.init(magnitude)
    for step in range(2):
        step_grads = jax.tree.map(lambda g: g * (1.0 + step), grads)
        factor_grads, magnitude_grad = split(step_grads)
        updates, full_state = full.update(step_grads, states[0], params)
        factor_updates, factor_state = factors_only.update(factor_grads, states[1], factor_params)
        magnitude_update, magnitude_state = magnitude_only.update(magnitude_grad, states[2], magnitude)
        states = full_state, factor_state, magnitude_state
        got_factors, got_magnitude = split(updates)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9), got_factors, factor_updates)
        np.testing.assert_allclose(got_magnitude, magnitude_update, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("config, message", [
    ({"method": "inttune", "init_base": "dora"}, "that init sets B = 0"),
    ({"method": "dora", "niter": 2}, "niter applies to pissa and loraga only"),
], ids=["inttune-on-dora", "niter"])
def test_bad_config_is_refused(config, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**config)


def test_dora_layer_refuses_three_factors_and_export_refuses_mixed_methods(tmp_path):
    factors = InitFactors(jnp.ones((N_IN, RANK)), jnp.eye(RANK), jnp.zeros((RANK, N_OUT)), None)
    with pytest.raises(ValueError, match="lora_m and a residual kernel must be None"):
        DoraLinear(linear(nnx.Rngs(0)), factors, scale=1.0)

    class Two(nnx.Module):
        def __init__(self, rngs):
            self.q_proj, self.v_proj = linear(rngs), linear(rngs)

    mixed = adapt(adapt(Two(nnx.Rngs(0)), {"method": "dora", "rank": RANK, "targets": "q_proj"}),
                  {"method": "lora", "rank": RANK, "targets": "v_proj"})
    with pytest.raises(ValueError, match=r"DoRA layers \['q_proj'\] sit beside plain adapted layers"):
        export_peft(mixed, tmp_path, base="some/model")
