"""lorapro() as an Optax transform: adapter discovery in dicts and nnx.State, stacked adapters, scale lookup,
three-factor and IntTune adapters, compositions under jit, nnx.Optimizer, sharding, and a convergence check.

The per-adapter reference is adjust() / adjust_three_factor() / adjust_core(), which test_lorapro_math.py checks
against brute-force least squares.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from lowrank_jax.adapters import AdapterScale, FrozenFactor
from lowrank_jax.optim import adjust, adjust_core, adjust_three_factor, lorapro

RNG = np.random.default_rng(0)


def normal(*shape, scale=1.0):
    return jnp.asarray(RNG.normal(size=shape) * scale, jnp.float32)


def adapter(stack=(2,), n_in=12, n_out=10, r=3, core=False, scale=(0.5, 2.0)):
    params = {"lora_a": normal(*stack, n_in, r), "lora_b": normal(*stack, r, n_out, scale=0.3)}
    if core:
        params["lora_m"] = normal(*stack, r, r)
    params["lora_scale"] = jnp.asarray(scale, jnp.float32)
    return params


def trainable_of(params):
    """The tree without its lora_scale leaves (what trains)."""
    return {k: trainable_of(v) if isinstance(v, dict) else v for k, v in params.items() if k != "lora_scale"}


def scales_of(params):
    """Only the lora_scale leaves, in their adapter mappings (the shape of nnx.state(model, AdapterScale))."""
    out = {k: scales_of(v) for k, v in params.items() if isinstance(v, dict)}
    out = {k: v for k, v in out.items() if v}
    return out | ({"lora_scale": params["lora_scale"]} if "lora_scale" in params else {})


def like(tree):
    return jax.tree.map(lambda x: normal(*x.shape), tree)


def reference(params, grads, scale, x_mode="sylvester"):
    """Per-slice adjust() of one stacked two-factor adapter."""
    out = {"lora_a": [], "lora_b": []}
    for i in range(params["lora_a"].shape[0]):
        s = float(jnp.broadcast_to(scale, params["lora_a"].shape[:1])[i])
        da, db = adjust(params["lora_a"][i], params["lora_b"][i], grads["lora_a"][i], grads["lora_b"][i], scale=s,
                        x_mode=x_mode)
        out["lora_a"].append(da)
        out["lora_b"].append(db)
    return {k: jnp.stack(v) for k, v in out.items()}


def assert_close(x, y, tol=2e-5):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert np.linalg.norm(x - y) <= tol * max(np.linalg.norm(y), 1e-12), np.abs(x - y).max()


@pytest.fixture(scope="module")
def model_tree():
    """Two stacked adapters with recorded scales, a three-factor one, and a non-adapter leaf."""
    params = {
        "layers": {"q_proj": adapter(), "mlp": {"up": adapter(n_in=12, n_out=16, scale=1.5)}},
        "slora": adapter(stack=(), core=True, scale=0.75),
        "norm": normal(12),
    }
    return params, like(trainable_of(params))


def test_adjusts_every_adapter_and_leaves_the_rest(model_tree):
    params, grads = model_tree
    tx = lorapro(x_mode="symmetry")
    updates, state = jax.jit(tx.update)(grads, tx.init(trainable_of(params)), params)
    for path in (("layers", "q_proj"), ("layers", "mlp", "up")):
        p, g, u = params, grads, updates
        for key in path:
            p, g, u = p[key], g[key], u[key]
        expected = reference(p, g, p["lora_scale"], "symmetry")
        assert_close(u["lora_a"], expected["lora_a"])
        assert_close(u["lora_b"], expected["lora_b"])
    p, g = params["slora"], grads["slora"]
    expected = adjust_three_factor(p["lora_a"], p["lora_m"], p["lora_b"], g["lora_a"], g["lora_m"], g["lora_b"],
                                   scale=0.75)
    for name, value in zip(("lora_a", "lora_m", "lora_b"), expected):
        assert_close(updates["slora"][name], value)
    assert np.array_equal(updates["norm"], grads["norm"])
    assert state == tx.init(params) and jax.tree.structure(updates) == jax.tree.structure(grads)


def test_scale_option_overrides_recorded_scales(model_tree):
    params, grads = model_tree
    no_scales = trainable_of(params)
    q_params, q_grads = params["layers"]["q_proj"], grads["layers"]["q_proj"]
    as_float, _ = lorapro(scale=3.0).update(grads, None, no_scales)
    assert_close(as_float["layers"]["q_proj"]["lora_a"], reference(q_params, q_grads, 3.0)["lora_a"])
    # A tree in the shape of nnx.state(model, AdapterScale): a lora_scale leaf in every adapter mapping.
    scale_tree = {"layers": {"q_proj": {"lora_scale": jnp.array([4.0, 0.25])},
                             "mlp": {"up": {"lora_scale": jnp.float32(1.0)}}},
                  "slora": {"lora_scale": jnp.float32(2.0)}}
    as_tree, _ = lorapro(scale=nnx.State(scale_tree)).update(grads, None, no_scales)
    assert_close(as_tree["layers"]["q_proj"]["lora_b"], reference(q_params, q_grads, jnp.array([4.0, 0.25]))["lora_b"])
    # A tree with a scalar at each adapter's own path.
    scalars = {"layers": {"q_proj": 4.0, "mlp": {"up": 1.0}}, "slora": 2.0}
    as_scalars, _ = lorapro(scale=scalars).update(grads, None, params)
    assert_close(as_scalars["layers"]["mlp"]["up"]["lora_a"], as_tree["layers"]["mlp"]["up"]["lora_a"])
    with pytest.raises(ValueError, match="no scale.*scale=<float>.*AdapterScale"):
        lorapro().update(grads, None, no_scales)
    with pytest.raises(ValueError, match="does not broadcast"):
        lorapro(scale={"layers": {"q_proj": jnp.ones(3), "mlp": {"up": 1.0}}, "slora": 1.0}).update(grads, None, params)


def test_nnx_state_forms_match_plain_dicts(model_tree):
    params, grads = model_tree
    tx = lorapro()
    expected, _ = tx.update(grads, None, params)
    for convert in (nnx.State, lambda t: nnx.State(t).to_pure_dict()):
        out, _ = tx.update(convert(grads), None, convert(params))
        assert_close(out["layers"]["q_proj"]["lora_a"], expected["layers"]["q_proj"]["lora_a"], tol=0)
    # A State of Variables (what nnx.state(model) gives): Variables in, Variables of the same type out.
    def wrap(tree):
        return nnx.State(jax.tree.map(nnx.LoRAParam, tree))

    out, _ = tx.update(wrap(grads), None, wrap(params))
    assert isinstance(out["slora"]["lora_m"], nnx.LoRAParam)
    assert_close(out["slora"]["lora_m"].get_value(), expected["slora"]["lora_m"], tol=0)


def test_inttune_reads_frozen_factors_from_the_update_call():
    params = adapter(core=True)
    frozen = {"attn": {k: FrozenFactor(params[k]) for k in ("lora_a", "lora_b")}}
    trainable = {"attn": {"lora_m": params["lora_m"]}}
    grads = like(trainable)
    tx = lorapro(scale=nnx.State({"attn": {"lora_scale": params["lora_scale"]}}))
    with pytest.raises(ValueError, match="frozen_factors=nnx.state\\(model, FrozenFactor\\)"):
        tx.update(grads, tx.init(trainable), trainable)
    out, _ = jax.jit(tx.update)(grads, tx.init(trainable), trainable, frozen_factors=nnx.State(frozen))
    for i, s in enumerate((0.5, 2.0)):
        expected = adjust_core(params["lora_a"][i], params["lora_b"][i], grads["attn"]["lora_m"][i], scale=s)
        assert_close(out["attn"]["lora_m"][i], expected)


def test_bad_use_fails_with_a_clear_message(model_tree):
    params, grads = model_tree
    with pytest.raises(ValueError, match="needs params"):
        lorapro().update(grads, None)
    with pytest.raises(ValueError, match="found no adapter"):
        lorapro(scale=1.0).update({"w": jnp.ones(3)}, None, {"w": jnp.ones(3)})
    half = {"q": {"lora_a": params["slora"]["lora_a"]}}
    with pytest.raises(ValueError, match="trainable factors are \\['lora_a'\\]"):
        lorapro(scale=1.0).update(half, None, half)
    bad = {"q": {"lora_a": jnp.ones((2, 5, 3)), "lora_b": jnp.ones((3, 3, 4))}}
    with pytest.raises(ValueError, match="factor shapes"):
        lorapro(scale=1.0).update(bad, None, bad)
    for kwargs, match in (({"x_mode": "best"}, "x_mode"), ({"delta": 0.0}, "delta"), ({"scale": -1.0}, "positive")):
        with pytest.raises(ValueError, match=match):
            lorapro(**kwargs)


def test_compositions_under_jit(model_tree):
    params, grads = model_tree  # two stacked adapters and a norm: each jit compiles quickly
    params = {"layers": params["layers"], "norm": params["norm"]}
    grads = {"layers": grads["layers"], "norm": grads["norm"]}
    q_params, q_grads = params["layers"]["q_proj"], grads["layers"]["q_proj"]
    trainable, scales = trainable_of(params), scales_of(params)
    adjusted, _ = lorapro().update(grads, None, params)

    # clip -> lorapro -> sgd: the clipped gradients are adjusted, then scaled by -lr.
    tx = optax.chain(optax.clip_by_global_norm(0.5), lorapro(scale=scales), optax.sgd(0.1))
    updates, _ = jax.jit(tx.update)(grads, tx.init(trainable), trainable)
    factor = 0.5 / optax.tree.norm(grads)
    clipped = jax.tree.map(lambda g: g * factor, q_grads)
    expected = reference(q_params, clipped, q_params["lora_scale"])
    assert_close(updates["layers"]["q_proj"]["lora_a"], -0.1 * expected["lora_a"])

    # lorapro -> adamw: adamw sees the adjusted gradients.
    tx = optax.chain(lorapro(scale=scales), optax.adamw(1e-2, weight_decay=0.1))
    updates, _ = jax.jit(tx.update)(grads, tx.init(trainable), trainable)
    adamw = optax.adamw(1e-2, weight_decay=0.1)
    expected, _ = adamw.update(adjusted, adamw.init(trainable), trainable)
    assert_close(updates["layers"]["mlp"]["up"]["lora_b"], expected["layers"]["mlp"]["up"]["lora_b"])

    # masked: only the masked-in adapter is adjusted.
    mask = jax.tree.map(lambda _: False, trainable)
    mask["layers"]["q_proj"] = {"lora_a": True, "lora_b": True}
    tx = optax.masked(lorapro(scale=2.0), mask)
    updates, _ = jax.jit(tx.update)(grads, tx.init(trainable), trainable)
    assert_close(updates["layers"]["q_proj"]["lora_b"], reference(q_params, q_grads, 2.0)["lora_b"])
    assert np.array_equal(updates["layers"]["mlp"]["up"]["lora_a"], grads["layers"]["mlp"]["up"]["lora_a"])

    # partition: lorapro + sgd on adapters, plain sgd elsewhere.
    labels = jax.tree.map(lambda _: "adapters", trainable) | {"norm": "other"}
    tx = optax.partition({"adapters": optax.chain(lorapro(scale=2.0), optax.sgd(1.0)), "other": optax.sgd(1.0)}, labels)
    updates, _ = jax.jit(tx.update)(grads, tx.init(trainable), trainable)
    assert_close(updates["layers"]["q_proj"]["lora_a"], -reference(q_params, q_grads, 2.0)["lora_a"])
    assert np.array_equal(updates["norm"], -grads["norm"])


class TinyAdapted(nnx.Module):
    """A frozen stacked kernel (2, 12, 10) with an adapter in the project's layout: LoRAParam factors, AdapterScale
    scales, FrozenFactor for IntTune's a and b; sharding names on the factors as the adapters give them."""

    def __init__(self, rngs: nnx.Rngs, *, inttune: bool = False):
        key = rngs.params
        self.kernel = nnx.Param(jax.random.normal(key(), (2, 12, 10)) / 4)
        factor = FrozenFactor if inttune else nnx.LoRAParam
        self.lora_a = factor(jax.random.normal(key(), (2, 12, 3)) / 4, out_sharding=("layers", "embed", None),
                             eager_sharding=False)
        b = jax.random.normal(key(), (2, 3, 10)) / 4 if inttune else jnp.zeros((2, 3, 10))
        self.lora_b = factor(b, out_sharding=("layers", None, "mlp"), eager_sharding=False)
        self.lora_m = nnx.LoRAParam(jnp.broadcast_to(jnp.eye(3), (2, 3, 3))) if inttune else nnx.data(None)
        self.lora_scale = AdapterScale(jnp.array([2.0, 0.5]))

    def delta(self):
        a, b = self.lora_a[...], self.lora_b[...]
        core = a if self.lora_m is None else a @ self.lora_m[...]
        return self.lora_scale[...][:, None, None] * core @ b

    def __call__(self, x):
        return jnp.einsum("ni,lio->lno", x, self.kernel[...] + self.delta())


def regression_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


@pytest.mark.parametrize("inttune", [False, True])
def test_nnx_optimizer_step_is_minus_lr_times_the_adjusted_gradient(inttune):
    model = TinyAdapted(nnx.Rngs(0), inttune=inttune)
    x, y = normal(6, 12), normal(2, 6, 10)
    optimizer = nnx.Optimizer(model, optax.chain(lorapro(scale=nnx.state(model, AdapterScale)), optax.sgd(0.1)),
                              wrt=nnx.LoRAParam)
    grads = nnx.grad(regression_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, x, y)
    before = jax.tree.map(lambda v: v.get_value(), nnx.state(model, nnx.Any(nnx.LoRAParam, FrozenFactor)),
                          is_leaf=lambda v: isinstance(v, nnx.Variable))

    @nnx.jit
    def step(model, optimizer, grads):
        optimizer.update(model, grads, frozen_factors=nnx.state(model, FrozenFactor))

    step(model, optimizer, grads)
    for i, s in enumerate((2.0, 0.5)):
        if inttune:
            dm = adjust_core(before["lora_a"][i], before["lora_b"][i], grads["lora_m"][...][i], scale=s)
            expected = {"lora_m": dm}
        else:
            da, db = adjust(before["lora_a"][i], before["lora_b"][i], grads["lora_a"][...][i], grads["lora_b"][...][i],
                            scale=s)
            expected = {"lora_a": da, "lora_b": db}
        for name, value in expected.items():
            assert_close(getattr(model, name)[...][i], before[name][i] - 0.1 * value)


def sharded_tree(mesh):
    """A stacked adapter sharded like its kernel (layers, fsdp, tensor) and a norm, on ``mesh``."""
    params = adapter(stack=(2,), n_in=16, n_out=8, r=4)
    specs = {"lora_a": PartitionSpec("l", "x", None), "lora_b": PartitionSpec("l", None, "y"),
             "lora_scale": PartitionSpec()}
    params = {"q": {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}}
    trainable = trainable_of(params)
    grads = jax.tree.map(lambda p: jax.device_put(normal(*p.shape), p.sharding), trainable)
    return params, trainable, grads


def test_update_keeps_the_gradients_sharding_on_8_devices():
    auto = jax.make_mesh((2, 2, 2), ("l", "x", "y"), axis_types=(AxisType.Auto,) * 3)
    params, trainable, grads = sharded_tree(auto)
    tx = lorapro()
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(trainable), params)
    for name in ("lora_a", "lora_b"):
        assert updates["q"][name].sharding.is_equivalent_to(grads["q"][name].sharding, grads["q"][name].ndim)
    assert_close(updates["q"]["lora_a"], reference(params["q"], grads["q"], params["q"]["lora_scale"])["lora_a"])

    explicit = jax.make_mesh((2, 2, 2), ("l", "x", "y"), axis_types=(AxisType.Explicit,) * 3)
    with jax.set_mesh(explicit):
        params, trainable, grads = sharded_tree(explicit)
        tx = optax.chain(lorapro(scale=scales_of(params)), optax.adamw(1e-3))
        state = tx.init(trainable)
        updates, new_state = jax.jit(tx.update)(grads, state, trainable)
        assert jax.tree.map(jax.typeof, updates) == jax.tree.map(jax.typeof, grads)
        assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(jax.typeof, state)
        assert str(jax.typeof(updates["q"]["lora_a"])) == "float32[2@l,16@x,4]"


def low_rank_regression(steps, tx, *, seed=0, n_in=32, n_out=24, r=4, s=2.0):
    """Fit X(K0 + s·a@b) to Y = X(K0 + Δ) with Δ full rank (decaying spectrum), from LoRA's init (b = 0).
    Returns the loss after ``steps`` updates of ``tx`` (one jitted scan)."""
    keys = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(keys[0], (256, n_in))
    k0 = jax.random.normal(keys[1], (n_in, n_out)) / np.sqrt(n_in)
    u = jnp.linalg.qr(jax.random.normal(keys[2], (n_in, n_in)))[0][:, :n_out]
    v = jnp.linalg.qr(jax.random.normal(keys[3], (n_out, n_out)))[0]
    y = x @ (k0 + (u * 0.8 ** jnp.arange(n_out)) @ v.T)
    params = {"proj": {"lora_a": jax.random.uniform(keys[4], (n_in, r), minval=-1, maxval=1) / np.sqrt(n_in),
                       "lora_b": jnp.zeros((r, n_out))}}

    def loss(p):
        return jnp.mean((x @ (k0 + s * p["proj"]["lora_a"] @ p["proj"]["lora_b"]) - y) ** 2)

    def step(carry, _):
        p, state = carry
        grads = jax.grad(loss)(p)
        updates, state = tx.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=steps))(params)
    return float(loss(params))


def test_lorapro_with_sgd_fits_faster_than_lora_with_sgd():
    lora = low_rank_regression(40, optax.sgd(0.3))
    pro = low_rank_regression(40, optax.chain(lorapro(scale=2.0), optax.sgd(0.3)))
    assert pro < 0.6 * lora, (pro, lora)  # measured: 0.039 vs 0.092 (seed 0)
