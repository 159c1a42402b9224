"""`adapt` / `merge` on small NNX modules, plain and stacked (nnx.vmap) with a scanned forward: every method's
forward against the float64 closed form x@K + b + s·x@A@M@B, output preservation, trainable set, optimizer state,
sharding names, dropout RNG state inside the scan, config patterns and bad input.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lowrank_jax.adapters import AdaptedLinear, AdapterConfig, AdapterScale, FrozenFactor, adapt, merge

LAYERS, HIDDEN, INNER = 3, 12, 8
RESIDUAL_INITS = ("nystrom", "pissa", "milora", "olora")


class Block(nnx.Module):
    """x + down_proj(silu(q_proj(norm(x)))), kernels annotated with logical axis names."""

    def __init__(self, rngs):
        self.norm = nnx.RMSNorm(HIDDEN, rngs=rngs)
        self.q_proj = nnx.Linear(HIDDEN, INNER, kernel_init=nnx.initializers.normal(0.5),
                                 bias_init=nnx.initializers.normal(0.5),
                                 kernel_metadata={"out_sharding": ("embed", "mlp"), "eager_sharding": False},
                                 rngs=rngs)
        self.down_proj = nnx.Linear(INNER, HIDDEN, use_bias=False, kernel_init=nnx.initializers.normal(0.5),
                                    kernel_metadata={"out_sharding": ("mlp", "embed"), "eager_sharding": False},
                                    rngs=rngs)

    def __call__(self, x):
        return x + self.down_proj(jax.nn.silu(self.q_proj(self.norm(x))))


class Stack(nnx.Module):
    """LAYERS stacked Blocks run by lax.scan over the whole layer state, written back (as the Llama does)."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def create(rngs):
            return Block(rngs)

        self.layers = create(rngs)

    def __call__(self, x):
        graphdef, state = nnx.split(self.layers)

        def step(h, layer_state):
            layer = nnx.merge(graphdef, layer_state)
            return layer(h), nnx.state(layer)

        h, new_state = jax.lax.scan(step, x, state)
        nnx.update(self.layers, new_state)
        return h


@functools.cache
def _built(stacked: bool):
    return Stack(nnx.Rngs(0)) if stacked else Block(nnx.Rngs(0))


def build(stacked: bool):
    """A fresh copy of the (once built) plain Block or stacked Stack."""
    return nnx.clone(_built(stacked))


def f64(variable, index):
    value = np.asarray(variable[...], np.float64)
    return value if index is None else value[index]


def linear_reference(layer, x, index):
    """float64 NumPy closed form of a (possibly adapted) linear: x@K + bias [+ s·x@A@M@B]."""
    base = layer.base if isinstance(layer, AdaptedLinear) else layer
    y = x @ f64(base.kernel, index)
    if base.bias is not None:
        y = y + f64(base.bias, index)
    if isinstance(layer, AdaptedLinear):
        h = x @ f64(layer.lora_a, index)
        if layer.lora_m is not None:
            h = h @ f64(layer.lora_m, index)
        y = y + f64(layer.lora_scale, index) * (h @ f64(layer.lora_b, index))
    return y


def block_reference(block, x, index=None):
    normed = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + block.norm.epsilon) * f64(block.norm.scale, index)
    h = linear_reference(block.q_proj, normed, index)
    return x + linear_reference(block.down_proj, h / (1 + np.exp(-h)), index)


def model_reference(model, x):
    if isinstance(model, Stack):
        for index in range(LAYERS):
            x = block_reference(model.layers, x, index)
        return x
    return block_reference(model, x)


def assert_close(actual, reference):
    """Equal up to float32 rounding: 1e-5 of the output's scale."""
    np.testing.assert_allclose(actual, reference, rtol=0, atol=1e-5 * np.abs(reference).max())


def perturb_trainable(model, seed=1):
    """Moves every trainable factor by N(0, 0.3²), standing in for training (so B ≠ 0 and M moves)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.LoRAParam)
    nnx.update(model, jax.tree.map(lambda v: v + 0.3 * rng.standard_normal(v.shape).astype(v.dtype), state))


forward = nnx.jit(lambda model, x: model(x))
X = np.random.default_rng(0).standard_normal((2, 5, HIDDEN)).astype(np.float32)


@pytest.mark.parametrize("stacked", [False, True], ids=["plain", "stacked"])
@pytest.mark.parametrize("method, options", [
    ("lora", {}), ("slora", {}), ("nlora", {}), ("nystrom", {}), ("pissa", {}), ("pissa", {"niter": 2}),
    ("milora", {}), ("olora", {}), ("inttune", {}), ("inttune", {"init_base": "nystrom"}),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_forward_equals_closed_form_and_merge_folds_it(method, options, stacked):
    original = build(stacked)
    model = adapt(original, AdapterConfig(method=method, rank=4, alpha=6.0, targets=r".*(q|down)_proj", **options))
    before = np.asarray(forward(original, X), np.float64)
    at_init = np.asarray(forward(model, X), np.float64)
    init_base = options.get("init_base", "nlora") if method == "inttune" else method
    if init_base in RESIDUAL_INITS or init_base in ("lora", "slora"):
        assert_close(at_init, before)  # output preserved at init
    else:
        assert np.abs(at_init - before).max() > 1e-2  # nlora's released init changes the output
    perturb_trainable(model)
    reference = model_reference(model, X.astype(np.float64))
    assert_close(np.asarray(model(X)), reference)
    assert_close(np.asarray(forward(model, X)), reference)
    merged = merge(model)
    assert not any(isinstance(m, AdaptedLinear) for _, m in nnx.iter_modules(merged))
    assert isinstance(merged.layers.q_proj if stacked else merged.q_proj, nnx.Linear)
    assert_close(np.asarray(forward(merged, X)), reference)
    assert isinstance((original.layers if stacked else original).q_proj, nnx.Linear)  # input model untouched
    np.testing.assert_array_equal(np.asarray(forward(original, X), np.float64), before)


def adapter_paths(state):
    return {path for path, _ in nnx.to_flat_state(state)}


def test_trainable_set_and_optimizer_state():
    model = adapt(build(True), {"method": "slora", "rank": 2, "targets": r".*(q|down)_proj"})
    trainable = adapter_paths(nnx.state(model, nnx.LoRAParam))
    names = ("q_proj", "down_proj")
    assert trainable == {("layers", n, f) for n in names for f in ("lora_a", "lora_m", "lora_b")}
    assert adapter_paths(nnx.state(model, AdapterScale)) == {("layers", n, "lora_scale") for n in names}

    inttune = adapt(build(True), {"method": "inttune", "rank": 2, "targets": r".*(q|down)_proj"})
    assert adapter_paths(nnx.state(inttune, nnx.LoRAParam)) == {("layers", n, "lora_m") for n in names}
    assert adapter_paths(nnx.state(inttune, FrozenFactor)) == {("layers", n, f) for n in names for f in ("lora_a", "lora_b")}
    optimizer = nnx.Optimizer(inttune, optax.adam(1e-1), wrt=nnx.LoRAParam)
    moments = {path[-2:] for path, _ in nnx.to_flat_state(nnx.state(optimizer.opt_state))
               if path[-1] in ("lora_a", "lora_b", "lora_m", "kernel")}
    assert moments == {("q_proj", "lora_m"), ("down_proj", "lora_m")}

    frozen_before = nnx.state(inttune, nnx.Not(nnx.LoRAParam))
    m_before = np.asarray(inttune.layers.q_proj.lora_m[...])
    grads = nnx.grad(lambda m: jnp.sum(m(X) ** 2), argnums=nnx.DiffState(0, nnx.LoRAParam))(inttune)
    optimizer.update(inttune, grads)
    assert np.abs(np.asarray(inttune.layers.q_proj.lora_m[...]) - m_before).max() > 1e-3
    jax.tree.map(np.testing.assert_array_equal, nnx.state(inttune, nnx.Not(nnx.LoRAParam)), frozen_before)


def test_stacked_adapters_have_stack_shapes_and_inherit_sharding_names():
    model = adapt(build(True), {"method": "nystrom", "rank": 3, "targets": r".*(q|down)_proj"})
    q = model.layers.q_proj
    assert q.lora_a.shape == (LAYERS, HIDDEN, 3) and q.lora_b.shape == (LAYERS, 3, INNER)
    assert q.lora_m.shape == (LAYERS, 3, 3) and q.lora_scale.shape == (LAYERS,)
    assert q.base.kernel.get_metadata("out_sharding") == ("layers", "embed", "mlp")
    expected = {"lora_a": ("layers", "embed", None), "lora_b": ("layers", None, "mlp"),
                "lora_m": ("layers", None, None), "lora_scale": ("layers",),
                "lora_a_init": ("layers", "embed", None), "lora_b_init": ("layers", None, "mlp")}
    for name, names in expected.items():
        assert getattr(q, name).get_metadata("out_sharding") == names, name
    assert model.layers.down_proj.lora_b.get_metadata("out_sharding") == ("layers", None, "embed")
    # Each layer slice is its own init: different sketches, each exact for its own residual.
    assert np.abs(np.asarray(q.lora_a[0]) - np.asarray(q.lora_a[1])).max() > 1e-3


def test_dropout_state_is_stacked_and_advances_inside_the_scan():
    plain = adapt(build(True), {"method": "lora", "rank": 2, "targets": r".*q_proj"})
    assert not nnx.state(plain, nnx.RngState)  # dropout = 0 adds no RNG state
    model = adapt(build(True), {"method": "pissa", "rank": 2, "targets": r".*q_proj", "dropout": 0.5})
    streams = model.layers.q_proj.dropout_rngs
    assert streams.key.shape == (LAYERS,) and streams.count.shape == (LAYERS,)
    keys = jax.random.key_data(streams.key[...])
    assert len({tuple(np.asarray(k).ravel()) for k in keys}) == LAYERS  # independent per layer
    model.eval()
    assert_close(np.asarray(forward(model, X)), model_reference(model, X.astype(np.float64)))
    model.train()
    first, second = np.asarray(forward(model, X)), np.asarray(forward(model, X))
    np.testing.assert_array_equal(np.asarray(streams.count[...]), [2] * LAYERS)
    assert np.abs(first - second).max() > 1e-3  # fresh masks each call
    unstacked = adapt(build(False), {"method": "pissa", "rank": 2, "targets": "q_proj", "dropout": 0.5})
    assert unstacked.q_proj.dropout_rngs.key.shape == ()
    assert np.abs(np.asarray(unstacked(X)) - np.asarray(forward(build(False), X))).max() > 1e-3


def test_rank_alpha_patterns_and_rslora_scale():
    config = AdapterConfig(method="lora", rank=4, alpha=8.0, targets=r".*(q|down)_proj", scaling="rslora",
                           rank_pattern={r".*down_proj": 2}, alpha_pattern={r".*down_proj": 3.0})
    model = adapt(build(False), config)
    assert model.q_proj.lora_a.shape == (HIDDEN, 4) and model.down_proj.lora_a.shape == (INNER, 2)
    assert float(model.q_proj.lora_scale[...]) == pytest.approx(8.0 / 2.0)
    assert float(model.down_proj.lora_scale[...]) == pytest.approx(3.0 / np.sqrt(2.0))
    standard = adapt(build(False), {"method": "lora", "rank": 4, "alpha": 8.0, "targets": "q_proj"})
    assert float(standard.q_proj.lora_scale[...]) == 2.0


@pytest.mark.parametrize("config, message", [
    ({"method": "vera"}, "unknown adapter method 'vera'; registered methods"),
    ({"rank": 0}, "rank must be an integer ≥ 1"),
    ({"rank": 9, "targets": r".*(q|down)_proj"}, "q_proj: rank 9 > min(in, out) = min(12, 8)"),
    ({"rank_pattern": {"down_proj": 13}, "targets": "down_proj"}, "rank 13 > min(in, out)"),
    ({"targets": r".*norm"}, "not nnx.Linear: ['norm (RMSNorm)']"),
    ({"targets": r"v_proj"}, "match no module (the pattern must fullmatch a dotted path). Linear layers in this "
                             "model: ['down_proj', 'q_proj']"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"dtype": "nonsense"}, "dtype must be one of"),
    ({"method": "inttune", "init_base": "slora"}, "M's gradient is exactly zero"),
    ({"method": "inttune", "init_base": "lora"}, "that init sets B = 0"),
    ({"method": "nlora", "init_base": "nlora"}, "init_base applies to method='inttune' only"),
    ({"method": "nlora", "niter": 4}, "niter applies to pissa only"),
    ({"method": "pissa", "oversampling": 4}, "oversampling applies to nystrom only"),
    ({"scaling": "sqrt"}, "scaling must be one of"),
    ({"dropout": 1.0}, "dropout must be a rate in [0, 1)"),
    ({"targets": "q_proj("}, "not a valid regex"),
    ({"rnak": 4}, "unknown AdapterConfig keys ['rnak']; valid keys: ['method', 'rank'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_refused_with_a_clear_message(config, message):
    with pytest.raises(ValueError) as err:
        adapt(build(False), {"targets": "q_proj", **config})
    assert message in str(err.value)


def test_linears_inside_an_nnx_list_are_found_and_replaced():
    class Listed(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([nnx.Linear(HIDDEN, HIDDEN, rngs=rngs) for _ in range(2)])

    original = Listed(nnx.Rngs(0))
    model = adapt(original, {"method": "nlora", "rank": 2, "targets": r"blocks\.1"})
    assert isinstance(model.blocks[0], nnx.Linear) and isinstance(model.blocks[1], AdaptedLinear)
    x = X.astype(np.float64)
    assert_close(np.asarray(model.blocks[1](X)), linear_reference(model.blocks[1], x, None))
    assert isinstance(merge(model).blocks[1], nnx.Linear)
