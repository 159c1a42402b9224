"""Each adapter init against an independent float64 NumPy reference: NLoRA's slices (orientation pinned), PiSSA /
MiLoRA against the SVD, OLoRA against the QR, Nyström's exactness on rank-r matrices and its error bound, IntTune.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lowrank_jax.adapters import AdapterConfig, FrozenFactor, adapt

N_IN, N_OUT = 40, 24


class OneLinear(nnx.Module):
    """A module holding one `q_proj` linear with a given kernel (in, out)."""

    def __init__(self, kernel):
        self.q_proj = nnx.Linear(*kernel.shape, use_bias=False, param_dtype=kernel.dtype, rngs=nnx.Rngs(0))
        self.q_proj.kernel[...] = kernel


def adapted_layer(kernel, **config):
    """The AdaptedLinear that `adapt` puts on a single linear with `kernel`."""
    return adapt(OneLinear(jnp.asarray(kernel)), AdapterConfig(targets="q_proj", **config)).q_proj


def factors(layer):
    """(a, m or None, b, scale, residual kernel) of an adapted layer as float64 NumPy."""
    m = None if layer.lora_m is None else np.asarray(layer.lora_m[...], np.float64)
    return (np.asarray(layer.lora_a[...], np.float64), m, np.asarray(layer.lora_b[...], np.float64),
            float(layer.lora_scale[...]), np.asarray(layer.base.kernel[...], np.float64))


def kernel_with_spectrum(singular_values, shape=(N_IN, N_OUT), seed=0):
    """A random (in, out) float32 kernel with the given singular values."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], len(singular_values))))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], len(singular_values))))
    return ((u * singular_values) @ v.T).astype(np.float32)


def rel_err(approx, exact):
    return np.linalg.norm(approx - exact) / np.linalg.norm(exact)


DECAYING = kernel_with_spectrum(0.7 ** np.arange(N_OUT))


def test_nlora_takes_the_spec_slices_of_w_in_peft_orientation():
    # W (out, in) in PEFT orientation; each entry encodes its own (row, column) so a transposed slice cannot pass.
    rows, cols = np.meshgrid(np.arange(N_OUT), np.arange(N_IN), indexing="ij")
    w = 100.0 * rows + cols
    r = 3
    a, m, b, s, kernel = factors(adapted_layer(w.T.astype(np.float32), method="nlora", rank=r, alpha=6))
    np.testing.assert_array_equal(a.T, w[:r, :])  # A0 = W[:r, :] (first r rows)
    np.testing.assert_array_equal(b.T, w[:, :r])  # B0 = W[:, :r] (first r columns)
    np.testing.assert_array_equal(m.T, w[:r, :r])  # M0 = W[:r, :r]
    np.testing.assert_array_equal(kernel, w.T)  # base unchanged
    np.testing.assert_allclose((s * a @ m @ b).T, 2.0 * w[:, :r] @ w[:r, :r] @ w[:r, :], rtol=1e-12)


def test_lora_and_slora_are_kaiming_uniform_with_zero_b():
    rank = 16
    a, m, b, _, kernel = factors(adapted_layer(DECAYING, method="slora", rank=rank))
    for factor, fan_in in ((a, N_IN), (m, rank)):
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(factor).max() <= bound and np.abs(factor).max() > 0.9 * bound
        assert np.mean(factor**2) == pytest.approx(bound**2 / 3, rel=0.15)  # variance of U(±bound)
    assert not b.any()
    np.testing.assert_array_equal(kernel, DECAYING)
    a_lora, m_lora, b_lora, _, _ = factors(adapted_layer(DECAYING, method="lora", rank=rank))
    assert m_lora is None and not b_lora.any() and np.abs(a_lora).max() <= 1 / np.sqrt(N_IN)


def test_pissa_exact_matches_numpy_svd_with_peft_scaling():
    rank, alpha = 5, 20.0  # s = 4: PEFT divides S by s, so s·B0 A0 is the plain truncated SVD
    a, m, b, s, kernel = factors(adapted_layer(DECAYING, method="pissa", rank=rank, alpha=alpha))
    u, sv, vt = np.linalg.svd(DECAYING.astype(np.float64), full_matrices=False)
    top = (u[:, :rank] * sv[:rank]) @ vt[:rank]
    assert m is None and s == 4.0
    np.testing.assert_allclose(s * a @ b, top, atol=1e-5)
    np.testing.assert_allclose(kernel + s * a @ b, DECAYING, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=0) ** 2, sv[:rank] / s, rtol=1e-5)  # A0 = √(S/s) Vᵀ
    np.testing.assert_allclose(np.linalg.norm(b, axis=1) ** 2, sv[:rank] / s, rtol=1e-5)
    np.testing.assert_allclose(np.abs(a / np.sqrt(sv[:rank] / s)), np.abs(u[:, :rank]), atol=1e-5)


def test_pissa_niter_is_a_near_optimal_randomized_svd():
    rank = 5
    a, _, b, s, kernel = factors(adapted_layer(DECAYING, method="pissa", rank=rank, niter=4))
    u, sv, vt = np.linalg.svd(DECAYING.astype(np.float64), full_matrices=False)
    top = (u[:, :rank] * sv[:rank]) @ vt[:rank]
    optimal = np.linalg.norm(DECAYING - top)
    assert np.linalg.norm(DECAYING - s * a @ b) < 1.01 * optimal  # 4 subspace iterations: within 1% of the SVD
    gram_a, gram_b = a.T @ a, b @ b.T  # balanced split of orthogonal factors: both Grams = diag(S/s)
    np.testing.assert_allclose(gram_a, np.diag(np.diag(gram_a)), atol=1e-5)
    np.testing.assert_allclose(np.diag(gram_a), np.diag(gram_b), rtol=1e-5)
    np.testing.assert_allclose(kernel + s * a @ b, DECAYING, atol=1e-6)


def test_milora_takes_the_smallest_triplets():
    rank = 4
    kernel_in = kernel_with_spectrum(np.linspace(3.0, 1.0, N_OUT))  # well separated, no zero singular values
    a, _, b, s, kernel = factors(adapted_layer(kernel_in, method="milora", rank=rank, alpha=8))
    u, sv, vt = np.linalg.svd(kernel_in.astype(np.float64), full_matrices=False)
    bottom = (u[:, -rank:] * sv[-rank:]) @ vt[-rank:]
    np.testing.assert_allclose(s * a @ b, bottom, atol=1e-5)
    np.testing.assert_allclose(kernel + s * a @ b, kernel_in, atol=1e-6)


def test_olora_matches_numpy_qr_of_w():
    rank = 6
    a, _, b, s, kernel = factors(adapted_layer(DECAYING, method="olora", rank=rank, alpha=12))
    q, r_factor = np.linalg.qr(DECAYING.T.astype(np.float64))  # W = Kᵀ = Q R
    np.testing.assert_allclose((a @ b).T, q[:, :rank] @ r_factor[:rank], atol=1e-5)  # B0 A0 = Q_r R_r
    np.testing.assert_allclose(b @ b.T, np.eye(rank), atol=1e-5)  # B0 = Q_r has orthonormal columns
    np.testing.assert_allclose(kernel + s * a @ b, DECAYING, atol=1e-6)
    assert s == 2.0


def test_nystrom_is_exact_on_rank_r_matrices_and_residual_uses_s():
    rank = 4
    low_rank = kernel_with_spectrum(np.array([5.0, 3.0, 2.0, 1.0]))
    a, m, b, s, kernel = factors(adapted_layer(low_rank, method="nystrom", rank=rank, alpha=8.0))
    np.testing.assert_allclose(a @ m @ b, low_rank, atol=1e-5)  # generalized Nyström reproduces rank r
    np.testing.assert_allclose(kernel, (1 - s) * low_rank, atol=2e-5)  # W_res = W − s·B0 M0 A0 (s = 2)
    np.testing.assert_allclose(m, np.tril(m), atol=0)  # M0ᵀ = R⁻ᵀ is lower triangular


def test_nystrom_error_is_within_a_small_factor_of_truncated_svd():
    # 0.9-decaying spectrum, r = 16, ℓ = 8: over 300 NumPy draws the error ratio had median 3.3, max 5.2.
    rank, kernel_in = 16, kernel_with_spectrum(0.9 ** np.arange(64), shape=(96, 64))
    a, m, b, s, kernel = factors(adapted_layer(kernel_in, method="nystrom", rank=rank))
    sv = np.linalg.svd(kernel_in.astype(np.float64), compute_uv=False)
    optimal = np.sqrt(np.sum(sv[rank:] ** 2)) / np.linalg.norm(kernel_in)
    assert optimal < rel_err(a @ m @ b, kernel_in) < 5.0 * optimal
    np.testing.assert_allclose(kernel + s * a @ m @ b, kernel_in, atol=1e-6)


def test_inttune_freezes_a_b_of_its_base_init():
    rank = 4
    for base in ("nlora", "nystrom"):
        reference = adapted_layer(DECAYING, method=base, rank=rank)
        layer = adapted_layer(DECAYING, method="inttune", init_base=None if base == "nlora" else base, rank=rank)
        assert isinstance(layer.lora_a, FrozenFactor) and isinstance(layer.lora_b, FrozenFactor)
        assert type(layer.lora_m) is nnx.LoRAParam
        for got, want in zip(factors(layer), factors(reference)):
            np.testing.assert_array_equal(got, want)
    _, m, _, _, _ = factors(adapted_layer(DECAYING, method="inttune", init_base="pissa", rank=rank))
    np.testing.assert_array_equal(m, np.eye(rank))


def test_bf16_base_gets_fp32_adapters_and_a_bf16_residual():
    base = DECAYING.astype(jnp.bfloat16)
    layer = adapted_layer(base, method="pissa", rank=4)
    assert layer.lora_a.dtype == jnp.float32 and layer.lora_b.dtype == jnp.float32
    assert layer.base.kernel.dtype == jnp.bfloat16
    a, _, b, s, kernel = factors(layer)
    np.testing.assert_allclose(kernel + s * a @ b, np.asarray(base, np.float64), atol=4e-3)  # bf16 rounding
    assert adapted_layer(base, method="pissa", rank=4, dtype="bfloat16").lora_a.dtype == jnp.bfloat16
