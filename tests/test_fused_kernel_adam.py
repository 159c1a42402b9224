"""lorapro_adamw's fused kernel-space step (a Pallas kernel, interpreted on the CPU): the kernel against float64
NumPy, and lorapro_adamw(fused_update=True) against the unfused step over three updates, for two-factor, stacked,
three-factor and IntTune adapters, with an adapter the kernel cannot tile taking the unfused step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lowrank_jax.optim import lorapro_adamw
from lowrank_jax.optim.fused_kernel_adam import Tiles, kernel_adam_pullback

B1, B2, EPS = 0.9, 0.99, 1e-8


@pytest.mark.parametrize("moment_dtype, tiles", [(jnp.float32, Tiles()), (jnp.bfloat16, Tiles()),
                                                 (jnp.float32, Tiles(64, 128, 8)), (jnp.float32, Tiles(128, 128, 8)),
                                                 (jnp.float32, Tiles(32, 64, 4, "tf32x3"))])
def test_kernel_matches_float64_numpy(moment_dtype, tiles):
    """Interpreted on the CPU every `dot` computes in float32 (XLA's CPU has no TF32 dot algorithm to run)."""
    rng = np.random.default_rng(0)
    n_in, n_out, k, r = 256, 384, 6, 5  # k and r below Triton's 16: zero-padded inside
    left, right = rng.normal(size=(n_in, k)), rng.normal(size=(k, n_out))
    a, b = rng.normal(size=(n_in, r)), rng.normal(size=(r, n_out))
    mu = np.asarray(jnp.asarray(rng.normal(size=(n_in, n_out)), moment_dtype), np.float64)
    nu = np.asarray(jnp.asarray(rng.random((n_in, n_out)), moment_dtype), np.float64)
    bias = np.array([1 - B1**3, 1 - B2**3])
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    got = jax.jit(lambda *x: kernel_adam_pullback(*x, b1=B1, b2=B2, eps=EPS, tiles=tiles))(
        f32(left), f32(right), f32(a), f32(b), jnp.asarray(mu, moment_dtype), jnp.asarray(nu, moment_dtype),
        f32(bias))
    g = left @ right
    m, v = B1 * mu + (1 - B1) * g, B2 * nu + (1 - B2) * g**2
    u = (m / bias[0]) / (np.sqrt(v / bias[1]) + EPS)
    tolerance = 1e-6 if moment_dtype == jnp.float32 else 4e-3  # bf16 moments: their own rounding
    for name, ours, expected in zip(("mu", "nu", "u_bt", "at_u"), got, (m, v, u @ b.T, a.T @ u)):
        assert ours.shape == expected.shape, name
        error = np.abs(np.asarray(ours, np.float64) - expected).max() / np.abs(expected).max()
        assert error < (tolerance if name in ("mu", "nu") else 1e-5), (name, error)
    assert got[0].dtype == moment_dtype


def adapter_trees(rng):
    """Trainable leaves and IntTune's frozen factors: a stacked two-factor adapter, a three-factor one, a core-only
    (IntTune) one, a two-factor one of 100 rows (no whole tiles), and a plain leaf."""
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape) * 0.3, jnp.float32)  # noqa: E731
    trainable = {
        "stacked": {"lora_a": normal(2, 128, 4), "lora_b": normal(2, 4, 256)},
        "three": {"lora_a": normal(256, 3), "lora_m": normal(3, 3) + 2 * jnp.eye(3), "lora_b": normal(3, 128)},
        "core": {"lora_m": normal(4, 4) + 2 * jnp.eye(4)},
        "odd": {"lora_a": normal(100, 4), "lora_b": normal(4, 128)},
        "norm": {"scale": normal(128)},
    }
    frozen = {"core": {"lora_a": normal(128, 4), "lora_b": normal(4, 128)}}
    return trainable, frozen


def run(fused: bool, steps: int = 3):
    rng = np.random.default_rng(1)
    params, frozen = adapter_trees(rng)
    tx = lorapro_adamw(1e-2, scale=2.0, b1=B1, b2=B2, eps=EPS, weight_decay=0.01, frozen_factors=frozen,
                       fused_update=fused)
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, frozen_factors=frozen))
    grads_of_step = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
                     for _ in range(steps)]
    jaxpr = str(jax.make_jaxpr(update)(grads_of_step[0], state, params))
    for grads in grads_of_step:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state, jaxpr


@pytest.mark.parametrize("fused", [True, Tiles(128, 128, 16)])
def test_fused_update_matches_the_unfused_step(fused):
    fused_params, fused_state, fused_jaxpr = run(fused=fused)
    params, state, jaxpr = run(fused=False)
    assert fused_jaxpr.count("pallas_call[") == 3  # stacked, three, core; "odd" has no whole tiles
    assert "pallas_call" not in jaxpr
    for ours, theirs in [(fused_params, params), (fused_state.mu, state.mu), (fused_state.nu, state.nu)]:
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)):
            assert np.allclose(x, y, rtol=2e-5, atol=1e-6 * float(jnp.abs(y).max())), jax.tree_util.keystr(path)
    moved = np.abs(np.asarray(params["stacked"]["lora_a"]) - np.asarray(adapter_trees(np.random.default_rng(1))[0]
                                                                         ["stacked"]["lora_a"])).max()
    assert moved > 1e-3  # three updates moved the factors, so the comparison is not of two unchanged trees


def test_tiles_triton_cannot_take_are_refused_before_any_work():
    with pytest.raises(ValueError, match="powers of two"):
        lorapro_adamw(1e-2, fused_update=Tiles(96, 128, 8))
    with pytest.raises(ValueError, match="ROWSxCOLSwWARPS"):
        Tiles.parse("128x128")
    with pytest.raises(ValueError, match="dot one of"):
        Tiles.parse("64x128w8:fp16")
    assert [str(Tiles.parse(text)) for text in ("64x128w8", "32x64w4:tf32x3")] == ["64x128w8", "32x64w4:tf32x3"]


def test_fused_update_refuses_several_gpus(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="fused_update=False"):
        lorapro_adamw(1e-2, fused_update=True)


def test_kernel_lowers_to_triton_for_gpus():
    """The GPU path's Pallas-to-Triton lowering runs here too (no GPU needed): the kernel's loads, scalar reads and
    matmul shapes are all ones Triton accepts."""
    shape = jax.ShapeDtypeStruct
    step = jax.jit(lambda *x: kernel_adam_pullback(*x, b1=B1, b2=B2, eps=EPS, tiles=Tiles(64, 128, 4),
                                                   interpret=False))
    lowered = step.trace(shape((256, 16), jnp.float32), shape((16, 384), jnp.float32), shape((256, 8), jnp.float32),
                         shape((8, 384), jnp.float32), shape((256, 384), jnp.bfloat16),
                         shape((256, 384), jnp.bfloat16), shape((2,), jnp.float32)
                         ).lower(lowering_platforms=("cuda",)).as_text()
    assert lowered.count("xla.gpu.triton") == 1 and "num_warps = 4" in lowered


@pytest.mark.parametrize("dot, operands, matmuls, precision", [
    ("ieee", "xf32>", 3, None), ("tf32x3", "xf32>", 3, "tf32x3"), ("bf16x3", "xbf16>", 9, None),
    ("bf16x6", "xbf16>", 18, None)])
def test_each_dot_lowers_to_its_triton_matmuls(dot, operands, matmuls, precision):
    """The Triton IR of the kernel's three matmuls per `dot`: float32 operands on the CUDA cores (ieee, Triton's
    default precision), three TF32x3 dots, or the float32 operands split into bfloat16 parts, 3 or 6 products each."""
    from bench.fused_kernel_registers import triton_ir

    dots = [line for line in triton_ir(Tiles(32, 64, 4, dot), shape=(256, 384)).splitlines() if "tt.dot" in line]
    assert len(dots) == matmuls
    assert all(operands in line.split(":")[-1].split("*")[0] for line in dots)
    assert all((f"inputPrecision = {precision}" in line) if precision else ("inputPrecision" not in line)
               for line in dots)
