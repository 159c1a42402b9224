"""loraplus(): B's update is exactly λ× the same optimizer's (adamw, lorapro()+adamw, lorapro_adamw), every other
leaf's unchanged; the same trajectory as AdamW with per-group learning rates lr and λ·lr; nnx.Optimizer; bad input.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lowrank_jax.adapters import adapt
from lowrank_jax.optim import lorapro, lorapro_adamw, loraplus, with_loraplus

RNG = np.random.default_rng(0)
LR, WD = 1e-2, 0.1


def normal(*shape, scale=1.0):
    return jnp.asarray(RNG.normal(size=shape) * scale, jnp.float32)


# Two stacked adapters (one three-factor, one with a DoRA magnitude) and a leaf that is no adapter factor.
PARAMS = {
    "q_proj": {"lora_a": normal(2, 6, 3), "lora_m": normal(2, 3, 3), "lora_b": normal(2, 3, 5)},
    "v_proj": {"lora_a": normal(2, 6, 3), "lora_b": normal(2, 3, 4, scale=0.3), "lora_magnitude": normal(2, 4)},
    "norm": {"scale": normal(6)},
}
SCALES = {"q_proj": {"lora_scale": jnp.asarray([0.5, 2.0])}, "v_proj": {"lora_scale": jnp.asarray([1.0, 1.5])}}
OPTIMIZERS = {
    "adamw": lambda: optax.adamw(LR, weight_decay=WD),
    "lorapro+adamw": lambda: optax.chain(lorapro(scale=SCALES), optax.adamw(LR, weight_decay=WD)),
    "lorapro_adamw": lambda: lorapro_adamw(LR, scale=SCALES, weight_decay=WD),
}


def is_b(path) -> bool:
    return jax.tree_util.keystr(path).endswith("['lora_b']")


@pytest.mark.parametrize("name, ratio", [("adamw", 16.0), ("adamw", 3.0), ("lorapro+adamw", 16.0),
                                         ("lorapro_adamw", 16.0)])
def test_b_update_is_ratio_times_the_optimizers_and_the_rest_unchanged(name, ratio):
    plain, plus = OPTIMIZERS[name](), optax.chain(OPTIMIZERS[name](), loraplus(ratio))
    plain_state, plus_state = plain.init(PARAMS), plus.init(PARAMS)
    update = jax.jit(lambda tx, g, s, p: tx.update(g, s, p), static_argnums=0)
    for _ in range(2):  # the second step runs on moments both have built up alike
        grads = jax.tree.map(lambda x: normal(*x.shape), PARAMS)
        expected, plain_state = update(plain, grads, plain_state, PARAMS)
        updates, plus_state = update(plus, grads, plus_state, PARAMS)

        def check(path, got, want):
            # Bit for bit with λ = 16 (a power of two); XLA may fold λ into lr's constant for other λ (1 ulp).
            np.testing.assert_allclose(got, want * ratio if is_b(path) else want, rtol=0 if ratio == 16 else 1e-6)
            assert np.abs(want).max() > 0

        jax.tree_util.tree_map_with_path(check, updates, expected)


def test_same_trajectory_as_adamw_with_learning_rate_ratio_times_larger_for_b():
    ratio = 16.0
    target = jax.tree.map(lambda x: normal(*x.shape), PARAMS)
    loss = jax.jit(jax.grad(lambda p: sum(jnp.sum((x - t) ** 4) for x, t in zip(jax.tree.leaves(p),
                                                                                  jax.tree.leaves(target)))))
    labels = jax.tree_util.tree_map_with_path(lambda path, _: "b" if is_b(path) else "rest", PARAMS)
    reference = optax.partition({"rest": optax.adamw(LR, weight_decay=WD),
                                 "b": optax.adamw(ratio * LR, weight_decay=WD)}, labels)
    ours = optax.chain(optax.adamw(LR, weight_decay=WD), loraplus(ratio))
    trajectories = []
    for tx in (ours, reference):
        params, state = PARAMS, tx.init(PARAMS)
        for _ in range(5):
            updates, state = tx.update(loss(params), state, params)
            params = optax.apply_updates(params, updates)
        trajectories.append(params)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7), *trajectories)
    moved = jax.tree.map(lambda p, p0: float(np.abs(p - p0).max()), trajectories[0], PARAMS)
    assert moved["v_proj"]["lora_b"] > 5 * moved["v_proj"]["lora_a"]  # B does move faster


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.q_proj = nnx.Linear(6, 5, rngs=rngs)


def test_nnx_optimizer_on_a_dora_model_scales_only_b():
    ratio = 4.0
    model = adapt(Tiny(nnx.Rngs(0)), {"method": "dora", "rank": 2, "targets": "q_proj"})
    nnx.update(model, {"q_proj": {"lora_b": normal(2, 5)}})
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.LoRAParam))
    x = normal(3, 6)
    grads = nnx.grad(lambda m: jnp.sum(m.q_proj(x) ** 2), argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
    optimizer = nnx.Optimizer(model, with_loraplus(optax.sgd(LR), ratio), wrt=nnx.LoRAParam)
    optimizer.update(model, grads)
    after = nnx.state(model, nnx.LoRAParam)["q_proj"]
    for name in ("lora_a", "lora_b", "lora_magnitude"):
        step = np.asarray(after[name][...]) - before["q_proj"][name][...]
        want = -LR * (ratio if name == "lora_b" else 1.0) * np.asarray(grads["q_proj"][name][...])
        np.testing.assert_allclose(step, want, rtol=1e-4, atol=1e-7)


def test_with_loraplus_none_is_the_optimizer_itself():
    tx = optax.sgd(LR)
    assert with_loraplus(tx, None) is tx


@pytest.mark.parametrize("ratio", [0.0, -2.0, float("nan"), float("inf"), True, "16"])
def test_bad_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match="loraplus ratio must be a positive number"):
        loraplus(ratio)


def test_a_tree_without_lora_b_is_refused():
    inttune = {"q_proj": {"lora_m": normal(3, 3)}}
    with pytest.raises(ValueError, match=r"found no lora_b leaf in the params \(leaves: \['q_proj/lora_m'\]\)"):
        optax.chain(optax.sgd(LR), loraplus()).init(inttune)
