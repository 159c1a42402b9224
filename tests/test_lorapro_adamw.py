"""lorapro_adamw (the paper's Algorithm 2) against a float64 NumPy reference written from the spec in the paper's
orientation (W = W0 + s·B A), plus precision, sharding of the full-size moments on 8 devices, nnx, convergence.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from test_lorapro_transform import TinyAdapted, low_rank_regression, regression_loss

from lowrank_jax.adapters import AdapterScale, FrozenFactor
from lowrank_jax.optim import LoraProAdamWState, lorapro_adamw
from lowrank_jax.optim.moments import anchored_zeros

B1, B2, EPS, WD = 0.9, 0.99, 1e-8, 0.05
DELTA = 1e-14  # small enough that δ-regularised and exact pseudo-inverses agree to ~1e-10


def schedule(count):
    return 1e-2 / (1.0 + count)  # 1e-2 at the first update, 5e-3 at the second


def pinv_projector(X):
    return X @ np.linalg.pinv(X)


class ReferenceAdamW:
    """Algorithm 2 for one adapter, float64, paper orientation: A (r, in), B (out, r), optional M (r, r)."""

    def __init__(self, A, B, M=None, *, s, trains=("A", "B")):
        self.factors = {"A": A, "B": B, "M": M}
        self.s, self.trains, self.t = s, trains, 0
        self.m = self.v = np.zeros((B.shape[0], A.shape[1]))

    def tangent(self, G):
        """The optimal first-order change: the projection of G onto what the trainable factors can reach."""
        A, B = self.factors["A"], self.factors["B"]
        P_B, P_A = pinv_projector(B), pinv_projector(A.T)
        if self.trains == ("M",):
            return P_B @ G @ P_A
        return P_B @ G + G @ P_A - P_B @ G @ P_A

    def adjusted_direction(self, U):
        """Step 4: the LoRA gradients of U, adjusted (paper's Thm 2.1 with Sylvester X; for three factors the
        canonical blocks s·B dM A = P_B U P_A, s·B M dA = P_B U (I − P_A), s·dB M A = (I − P_B) U P_A)."""
        A, B, M, s = self.factors["A"], self.factors["B"], self.factors["M"], self.s
        if M is None:
            r = A.shape[0]
            u_A, u_B = s * B.T @ U, s * U @ A.T
            BB_inv = np.linalg.inv(B.T @ B + DELTA * np.eye(r))
            AA_inv = np.linalg.inv(A @ A.T + DELTA * np.eye(r))
            X = scipy.linalg.solve_sylvester(B.T @ B + DELTA * np.eye(r), A @ A.T + DELTA * np.eye(r),
                                             -BB_inv @ u_A @ A.T / s**2)
            dA = BB_inv @ u_A / s**2 + X @ A
            dB = (u_B - B @ BB_inv @ B.T @ u_B) @ AA_inv / s**2 - B @ X
            return {"A": dA, "B": dB}
        P_B, P_A = pinv_projector(B), pinv_projector(A.T)
        steps = {"M": np.linalg.pinv(B) @ U @ np.linalg.pinv(A) / s}
        if self.trains != ("M",):
            steps["A"] = np.linalg.pinv(B @ M) @ U @ (np.eye(A.shape[1]) - P_A) / s
            steps["B"] = (np.eye(B.shape[0]) - P_B) @ U @ np.linalg.pinv(M @ A) / s
        return steps

    def step(self, G, lr):
        g = self.tangent(G)
        self.t += 1
        self.m = B1 * self.m + (1 - B1) * g
        self.v = B2 * self.v + (1 - B2) * g**2
        U = (self.m / (1 - B1**self.t)) / (np.sqrt(self.v / (1 - B2**self.t)) + EPS)
        for name, d in self.adjusted_direction(U).items():
            self.factors[name] = self.factors[name] - lr * (d + WD * self.factors[name])


def flax_grads(factors, G, s):
    """dL/d(lora_a, lora_m, lora_b) in Flax layout for a kernel gradient G_K = Gᵀ (paper G is (out, in))."""
    a, b, m = factors["lora_a"], factors["lora_b"], factors.get("lora_m")
    G_K = G.T
    if m is None:
        return {"lora_a": s * G_K @ b.T, "lora_b": s * a.T @ G_K}
    return {"lora_a": s * G_K @ (m @ b).T, "lora_m": s * a.T @ G_K @ b.T, "lora_b": s * (a @ m).T @ G_K}


@pytest.mark.parametrize("kind", ["two_factor", "three_factor", "inttune"])
def test_two_steps_match_the_float64_reference(kind):
    rng = np.random.default_rng(2)
    n_in, n_out, r, scales = 10, 8, 3, (2.0, 0.5)
    A, B, M = rng.normal(size=(2, r, n_in)), rng.normal(size=(2, n_out, r)) * 0.5, rng.normal(size=(2, r, r))
    if kind == "two_factor":
        B[0] = 0.0  # the standard LoRA init in one stacked slice
    G = rng.normal(size=(2, 2, n_out, n_in))  # (step, slice, out, in)
    trains = {"two_factor": ("A", "B"), "three_factor": ("A", "M", "B"), "inttune": ("M",)}[kind]
    names = {"A": "lora_a", "B": "lora_b", "M": "lora_m"}
    with jax.enable_x64(True):
        factors = {"lora_a": jnp.swapaxes(A, 1, 2), "lora_b": jnp.swapaxes(B, 1, 2)}
        if kind != "two_factor":
            factors["lora_m"] = jnp.swapaxes(M, 1, 2)
        trainable = {"proj": {names[n]: factors[names[n]] for n in trains}}
        frozen = {"proj": {k: v for k, v in factors.items() if k not in trainable["proj"]}}
        tx = lorapro_adamw(schedule, scale={"proj": jnp.array(scales)}, b1=B1, b2=B2, eps=EPS, weight_decay=WD,
                           delta=DELTA, moment_dtype=jnp.float64, frozen_factors=frozen)
        state = tx.init(trainable)
        update = jax.jit(tx.update)
        for t in range(2):
            full = {**frozen["proj"], **trainable["proj"]}
            grads = jax.vmap(lambda f, g, s: flax_grads(f, g, s))(full, jnp.asarray(G[t]), jnp.array(scales))
            grads = {"proj": {k: grads[k] for k in trainable["proj"]}}
            updates, state = update(grads, state, trainable, frozen_factors=frozen)
            trainable = optax.apply_updates(trainable, updates)
    assert int(state.count) == 2
    for i, s in enumerate(scales):
        reference = ReferenceAdamW(A[i], B[i], None if kind == "two_factor" else M[i], s=s, trains=trains)
        for t in range(2):
            reference.step(G[t, i], schedule(t))
        for n in trains:
            ours = np.asarray(trainable["proj"][names[n]][i])
            expected = reference.factors[n].T  # Flax layout: a = Aᵀ, b = Bᵀ, m = Mᵀ
            assert np.linalg.norm(ours - expected) <= 1e-8 * np.linalg.norm(expected), (kind, n, i)
        moment = np.asarray(state.mu["proj"]["delta_kernel"][i])
        assert np.linalg.norm(moment - reference.m.T) <= 1e-8 * np.linalg.norm(reference.m)


def test_other_leaves_get_plain_adamw():
    rng = np.random.default_rng(3)
    params = {"proj": {"lora_a": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32), "lora_b": jnp.zeros((2, 5))},
              "norm": jnp.asarray(rng.normal(size=(6,)), jnp.float32)}
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    tx = lorapro_adamw(1e-2, scale=1.0, weight_decay=WD)
    reference = optax.adamw(1e-2, weight_decay=WD)
    state, reference_state = tx.init(params), reference.init(params)
    update = jax.jit(tx.update)
    for _ in range(2):
        updates, state = update(grads, state, params)
        expected, reference_state = reference.update(grads, reference_state, params)
        np.testing.assert_allclose(updates["norm"], expected["norm"], rtol=1e-6)
    assert isinstance(state, LoraProAdamWState) and state.mu["norm"].shape == (6,)


def low_precision_run(dtype, moment_dtype, a, b, grads):
    """Three lorapro_adamw updates with params and gradients in ``dtype``; the final params in float64."""
    params = {"proj": {"lora_a": jnp.asarray(a, dtype), "lora_b": jnp.asarray(b, dtype)}}
    tx = lorapro_adamw(1e-2, scale=2.0, moment_dtype=moment_dtype)
    state = tx.init(params)
    assert state.mu["proj"]["delta_kernel"].dtype == moment_dtype

    @jax.jit
    def step(params, state, G):
        factors = jax.tree.map(lambda x: x.astype(jnp.float32), params["proj"])
        g = jax.vmap(lambda f, G: flax_grads(f, G, 2.0))(factors, G)
        updates, state = tx.update({"proj": jax.tree.map(lambda x: x.astype(dtype), g)}, state, params)
        return optax.apply_updates(params, updates), state

    for G in grads:
        params, state = step(params, state, jnp.asarray(G, jnp.float32))
    assert all(x.dtype == dtype for x in jax.tree.leaves(params))
    return jax.tree.map(lambda x: np.asarray(x, np.float64), params)


def test_low_precision_params_stay_finite_and_close():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(3, 16, 4)) / 4, rng.normal(size=(3, 4, 12)) / 4
    b[0] = 0.0
    grads = [rng.normal(size=(3, 12, 16)) for _ in range(3)]
    base = low_precision_run(jnp.float32, jnp.float32, a, b, grads)
    for dtype, moment_dtype in ((jnp.bfloat16, jnp.float32), (jnp.bfloat16, jnp.bfloat16)):
        result = low_precision_run(dtype, moment_dtype, a, b, grads)
        for name in ("lora_a", "lora_b"):
            x, y = result["proj"][name], base["proj"][name]
            assert np.all(np.isfinite(x))
            assert np.linalg.norm(x - y) <= 2e-2 * np.linalg.norm(y), (dtype, moment_dtype, name)


def sharded_adapter(mesh):
    rng = np.random.default_rng(5)
    specs = {"lora_a": PartitionSpec("l", "x", None), "lora_b": PartitionSpec("l", None, "y")}
    shapes = {"lora_a": (2, 16, 4), "lora_b": (2, 4, 8)}
    params = {"q": {k: jax.device_put(jnp.asarray(rng.normal(size=shapes[k]), jnp.float32),
                                      NamedSharding(mesh, specs[k])) for k in specs},
              "norm": jax.device_put(jnp.ones(16), NamedSharding(mesh, PartitionSpec("x")))}
    grads = jax.tree.map(lambda p: jax.device_put(jnp.asarray(rng.normal(size=p.shape), jnp.float32), p.sharding),
                         params)
    return params, grads


def test_eager_init_gives_mu_and_nu_their_own_buffers():
    """A train step donates the whole state: mu and nu sharing a buffer would be donated twice (XLA:CPU crashed)."""
    params = {"q": {"lora_a": jnp.ones((2, 4, 2)), "lora_b": jnp.zeros((2, 2, 3))}, "norm": jnp.ones(4)}
    state = lorapro_adamw(1e-3, scale=2.0).init(params)
    pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves((state.mu, state.nu))]
    assert len(pointers) == 2 * 2 and len(set(pointers)) == len(pointers)


def test_anchored_zeros_are_exact_zeros_that_stay_tied_to_their_operand_after_xla():
    """Under jit the moments inherit the parameters' sharding only if the compiled zeros still read the parameters:
    a select with a constant-False predicate was folded to a constant on GPUs (moments whole on each device)."""
    x = jnp.asarray([[1.5, -2.0, np.nan, np.inf], [-np.inf, 0.0, -0.0, 3e38]], jnp.bfloat16)
    for zeros in (anchored_zeros(x, jnp.float32), jax.jit(anchored_zeros, static_argnums=1)(x, jnp.float32)):
        assert zeros.dtype == jnp.float32 and (np.asarray(zeros) == 0).all() and not np.signbit(zeros).any()
    hlo = jax.jit(anchored_zeros, static_argnums=1).lower(x, jnp.float32).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):].splitlines()
    param = next(re.search(r"(%\S+) = \S+ parameter\(0\)", line).group(1) for line in entry if "parameter(0)" in line)
    assert any(param in line for line in entry if "parameter(0)" not in line), "x is unused after compilation"


def test_moments_are_sharded_like_the_kernel_on_8_devices():
    auto = jax.make_mesh((2, 2, 2), ("l", "x", "y"), axis_types=(AxisType.Auto,) * 3)
    params, grads = sharded_adapter(auto)
    tx = lorapro_adamw(1e-3, scale=2.0)
    kernel = NamedSharding(auto, PartitionSpec("l", "x", "y"))
    for state in (tx.init(params), jax.jit(tx.init)(params)):
        moment = state.mu["q"]["delta_kernel"]
        assert moment.sharding.is_equivalent_to(kernel, 3)
        assert moment.addressable_shards[0].data.shape == (1, 8, 4)  # each device holds 1/8 of (2, 16, 8)
    _, new_state = jax.jit(tx.update)(grads, state, params)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert new.sharding.is_equivalent_to(old.sharding, old.ndim)

    explicit = jax.make_mesh((2, 2, 2), ("l", "x", "y"), axis_types=(AxisType.Explicit,) * 3)
    with jax.set_mesh(explicit):
        params, grads = sharded_adapter(explicit)
        state = tx.init(params)
        assert str(jax.typeof(state.mu["q"]["delta_kernel"])) == "float32[2@l,16@x,8@y]"
        assert jax.tree.map(jax.typeof, jax.jit(tx.init)(params)) == jax.tree.map(jax.typeof, state)
        updates, new_state = jax.jit(tx.update)(grads, state, params)
        assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(jax.typeof, state)
        assert jax.tree.map(jax.typeof, updates) == jax.tree.map(jax.typeof, grads)


@pytest.mark.parametrize("inttune", [False, True])
def test_nnx_optimizer_moments_carry_the_kernel_annotation(inttune):
    model = TinyAdapted(nnx.Rngs(1), inttune=inttune)
    frozen = nnx.state(model, FrozenFactor) if inttune else None
    tx = lorapro_adamw(1e-2, scale=nnx.state(model, AdapterScale), frozen_factors=frozen)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)
    specs = nnx.get_partition_spec(nnx.state(optimizer.opt_state))
    assert specs["mu"]["delta_kernel"].get_value() == PartitionSpec("layers", "embed", "mlp")
    assert model.lora_a.get_metadata("out_sharding") == ("layers", "embed", None)
    x, y = jnp.ones((4, 12)), jnp.zeros((2, 4, 10))

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(regression_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, x, y)
        optimizer.update(model, grads, frozen_factors=nnx.state(model, FrozenFactor))
        return loss

    losses = [float(step(model, optimizer)) for _ in range(3)]
    assert losses[2] < losses[0]


def test_lorapro_adamw_fits_faster_than_lora_with_adamw():
    lora = low_rank_regression(25, optax.adamw(3e-3))
    pro = low_rank_regression(25, lorapro_adamw(3e-3, scale=2.0))
    assert pro < 0.6 * lora, (pro, lora)
