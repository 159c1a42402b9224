"""LoRA-Pro's closed forms against brute-force float64 least squares, written in the paper's orientation.

Paper/PEFT orientation: W (out, in) += s·B A with A (r, in), B (out, r) [+ M (r, r): s·B M A]; the code's Flax
layout is a = Aᵀ, b = Bᵀ, m = Mᵀ, K = Wᵀ. Every reference below is built in the paper's orientation and compared
with the transposed Flax results, which pins the orientation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from lowrank_jax.optim import (
    X_MODES,
    adjust,
    adjust_core,
    adjust_three_factor,
    equivalent_gradient,
    first_order_change,
    solve_x,
)

DELTA = 1e-12  # float64 checks: small enough that δ/σ² stays far below the 1e-8 tolerance


def relative_error(x, y):
    return np.linalg.norm(np.asarray(x) - np.asarray(y)) / max(np.linalg.norm(np.asarray(y)), 1e-300)


def random_factors(rng, n_in, n_out, r, kind):
    """A (r, in), B (out, r), M (r, r) in the paper's orientation; `kind` makes B = 0 or factors rank-deficient."""
    A = rng.normal(size=(r, n_in))
    B = rng.normal(size=(n_out, r))
    M = rng.normal(size=(r, r))
    if kind == "b_zero":
        B = np.zeros_like(B)
    if kind in ("a_rank_deficient", "both_rank_deficient"):
        A = rng.normal(size=(r, 1)) @ rng.normal(size=(1, n_in))
    if kind == "both_rank_deficient":
        B = rng.normal(size=(n_out, r - 1)) @ rng.normal(size=(r - 1, r))
    if kind == "m_singular":
        M = rng.normal(size=(r, r - 1)) @ rng.normal(size=(r - 1, r))
    return A, B, M


def projector(X):
    """Orthogonal projector onto the column space of X (SVD based, exact for rank-deficient X)."""
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    U = U[:, S > 1e-10 * max(S.max(), 1e-300)]
    return U @ U.T


def map_matrix(linear_map, shapes):
    """Dense matrix of a linear map from arrays of ``shapes`` to one array, column by column."""
    sizes = [int(np.prod(s)) for s in shapes]
    columns = []
    for k in range(sum(sizes)):
        unit = np.zeros(sum(sizes))
        unit[k] = 1.0
        parts = np.split(unit, np.cumsum(sizes)[:-1])
        columns.append(linear_map(*[p.reshape(s) for p, s in zip(parts, shapes)]).ravel())
    return np.stack(columns, axis=1)


def lstsq_two_factor(A, B, G, s):
    """Minimum-norm (dA, dB) minimising ‖s(B dA + dB A) − G‖ (paper orientation)."""
    shapes = [A.shape, B.shape]
    matrix = map_matrix(lambda dA, dB: s * (B @ dA + dB @ A), shapes)
    solution = np.linalg.lstsq(matrix, G.ravel(), rcond=None)[0]
    dA, dB = solution[: A.size].reshape(A.shape), solution[A.size :].reshape(B.shape)
    return dA, dB, (matrix @ solution).reshape(G.shape)


# One shape for most cases (eager JAX compiles once per shape), one wide-output shape.
CASES = [
    (9, 6, 3, 2.0, "full_rank"),
    (5, 12, 4, 0.25, "full_rank"),
    (9, 6, 3, 16.0, "b_zero"),
    (9, 6, 3, 1.0, "a_rank_deficient"),
    (9, 6, 3, 0.5, "both_rank_deficient"),
]


@pytest.mark.parametrize("n_in,n_out,r,s,kind", CASES)
def test_two_factor_step_is_the_tangent_projection_and_the_least_squares_optimum(n_in, n_out, r, s, kind):
    rng = np.random.default_rng(hash((n_in, n_out, r, kind)) % 2**32)
    A, B, _ = random_factors(rng, n_in, n_out, r, kind)
    G = rng.normal(size=(n_out, n_in))
    g_A, g_B = s * B.T @ G, s * G @ A.T  # LoRA gradients of W = W0 + s B A
    P_B, P_A = projector(B), projector(A.T)
    tangent = P_B @ G + G @ P_A - P_B @ G @ P_A
    dA_ls, dB_ls, best = lstsq_two_factor(A, B, G, s)
    assert relative_error(best, tangent) < 1e-10
    with jax.enable_x64(True):
        a, b, ga, gb = A.T, B.T, g_A.T, g_B.T
        eg = equivalent_gradient(a, b, ga, gb, scale=s, delta=DELTA)
        assert eg.dtype == jnp.float64
        assert relative_error(eg.T, tangent) < 1e-8
        for x_mode in X_MODES:
            da, db = adjust(a, b, ga, gb, scale=s, x_mode=x_mode, delta=DELTA)
            first_order = s * (np.asarray(da) @ b + a @ np.asarray(db))
            assert relative_error(first_order.T, tangent) < 1e-8, x_mode
        # The Sylvester choice of X is the minimum-norm least-squares solution itself.
        da, db = adjust(a, b, ga, gb, scale=s, delta=DELTA)
        assert relative_error(np.concatenate([np.ravel(da), np.ravel(db)]),
                              np.concatenate([dA_ls.T.ravel(), dB_ls.T.ravel()])) < 1e-7


def test_default_delta_is_a_small_regulariser():
    """With the default δ = 1e-8 the step's error is of order δ/σ_min² of the Grams, no more."""
    rng = np.random.default_rng(1)
    A, B, _ = random_factors(rng, 9, 6, 3, "full_rank")
    G = rng.normal(size=(6, 9))
    tangent = projector(B) @ G + G @ projector(A.T) - projector(B) @ G @ projector(A.T)
    sigma_min_sq = min(np.linalg.svd(A, compute_uv=False).min(), np.linalg.svd(B, compute_uv=False).min()) ** 2
    with jax.enable_x64(True):
        eg = equivalent_gradient(A.T, B.T, (2.0 * B.T @ G).T, (2.0 * G @ A.T).T, scale=2.0)
    error = relative_error(eg.T, tangent)
    assert 1e-12 < error < 10 * 1e-8 / sigma_min_sq


def sylvester_objective(A, B, g_A, g_B, s, X, delta):
    """‖dA − g_A‖² + ‖dB − g_B‖² for the paper's dA, dB with free matrix X (regularised inverses)."""
    r = A.shape[0]
    inv_BB = np.linalg.inv(B.T @ B + delta * np.eye(r))
    inv_AA = np.linalg.inv(A @ A.T + delta * np.eye(r))
    dA = inv_BB @ g_A / s**2 + X @ A
    dB = (g_B - B @ inv_BB @ B.T @ g_B) @ inv_AA / s**2 - B @ X
    return np.sum((dA - g_A) ** 2) + np.sum((dB - g_B) ** 2), dA, dB


@pytest.mark.parametrize("kind", ["full_rank", "b_zero"])
def test_paper_formulas_in_peft_orientation_and_sylvester_x(kind):
    """Every x_mode against the paper's formulas written in W = B A orientation; the Sylvester X against scipy,
    and no random perturbation of it lowers the objective it minimises."""
    rng = np.random.default_rng(7)
    n_in, n_out, r, s, delta = 9, 6, 3, 1.5, 1e-8
    A, B, _ = random_factors(rng, n_in, n_out, r, kind)
    G = rng.normal(size=(n_out, n_in))
    g_A, g_B = s * B.T @ G, s * G @ A.T
    BB, AA = B.T @ B + delta * np.eye(r), A @ A.T + delta * np.eye(r)
    x_sylvester = scipy.linalg.solve_sylvester(BB, AA, -np.linalg.inv(BB) @ g_A @ A.T / s**2)
    x_reference = {
        "sylvester": x_sylvester,
        "zero": np.zeros((r, r)),
        "symmetry": -np.linalg.inv(BB) @ B.T @ g_B @ np.linalg.inv(AA) / (2 * s**2),
    }
    with jax.enable_x64(True):
        for x_mode, X in x_reference.items():
            x = solve_x(A.T, B.T, g_A.T, g_B.T, scale=s, x_mode=x_mode, delta=delta)
            assert np.allclose(x, X, rtol=1e-9, atol=1e-12 * np.abs(X).max(initial=1.0)), x_mode
            _, dA, dB = sylvester_objective(A, B, g_A, g_B, s, X, delta)
            da, db = adjust(A.T, B.T, g_A.T, g_B.T, scale=s, x_mode=x_mode, delta=delta)
            assert relative_error(np.asarray(da).T, dA) < 1e-9 and relative_error(np.asarray(db).T, dB) < 1e-9
    best, _, _ = sylvester_objective(A, B, g_A, g_B, s, x_sylvester, delta)
    for size in (1e-4, 1e-2, 1.0):
        for _ in range(10):
            x_perturbed = x_sylvester + size * rng.normal(size=(r, r))
            perturbed, _, _ = sylvester_objective(A, B, g_A, g_B, s, x_perturbed, delta)
            assert perturbed >= best * (1 - 1e-12)


def test_b_zero_is_finite_and_exact_in_low_precision():
    """At the standard LoRA init (b = 0) in fp32 and bf16: da = 0 exactly, db = (1/s²)(aᵀa)⁻¹ g_b, all finite."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(16, 4))
    g_b = rng.normal(size=(4, 10))
    expected = np.linalg.solve(a.T @ a, g_b) / 4.0
    for dtype in (jnp.float32, jnp.bfloat16):
        a_low, g_b_low = jnp.asarray(a, dtype), jnp.asarray(g_b, dtype)
        for x_mode in X_MODES:
            da, db = adjust(a_low, jnp.zeros((4, 10), dtype), jnp.zeros((16, 4), dtype), g_b_low, scale=2.0,
                            x_mode=x_mode)
            assert da.dtype == dtype and db.dtype == dtype
            assert np.all(np.asarray(da, np.float64) == 0.0)
            reference = np.linalg.solve(np.asarray(a_low, np.float64).T @ np.asarray(a_low, np.float64),
                                        np.asarray(g_b_low, np.float64)) / 4.0
            assert relative_error(np.asarray(db, np.float64), reference) < (1e-5 if dtype == jnp.float32 else 1e-2)
            assert relative_error(np.asarray(db, np.float64), expected) < (1e-5 if dtype == jnp.float32 else 5e-2)


def test_low_precision_inputs_are_computed_in_float32():
    """bf16 factors and gradients: the result equals the float64 computation on the same (rounded) inputs up to
    bf16 output rounding, i.e. the r×r work did not happen in bf16."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(32, 4)), rng.normal(size=(4, 24)) * 0.1
    G = rng.normal(size=(32, 24))
    arrays = [a, b, 2.0 * G @ b.T, 2.0 * a.T @ G]
    low = [jnp.asarray(x, jnp.bfloat16) for x in arrays]
    da, db = adjust(*low, scale=2.0)
    with jax.enable_x64(True):
        da64, db64 = adjust(*[np.asarray(x, np.float64) for x in low], scale=2.0)
    assert relative_error(np.asarray(da, np.float64), da64) < 1e-2
    assert relative_error(np.asarray(db, np.float64), db64) < 1e-2


def three_factor_matrices(A, M, B, s):
    """The linear maps (dA, dM, dB) ↦ first-order change of s·B M A, in full and with the canonical constraints
    (dA's rows ⊥ row(A), dB's columns ⊥ col(B)) parametrised by orthonormal null-space bases."""
    full = map_matrix(lambda dA, dM, dB: s * (B @ M @ dA + B @ dM @ A + dB @ M @ A), [A.shape, M.shape, B.shape])
    N_A = scipy.linalg.null_space(A)      # (in, k): A N_A = 0, so dA = Z_A N_Aᵀ has rows ⊥ row(A)
    N_B = scipy.linalg.null_space(B.T)    # (out, l): Bᵀ N_B = 0, so dB = N_B Z_B has columns ⊥ col(B)
    r = A.shape[0]
    shapes = [(r, N_A.shape[1]), M.shape, (N_B.shape[1], r)]
    constrained = map_matrix(lambda Z_A, dM, Z_B: s * (B @ M @ Z_A @ N_A.T + B @ dM @ A + N_B @ Z_B @ M @ A),
                             shapes)
    return full, constrained, N_A, N_B, shapes


@pytest.mark.parametrize("kind", ["full_rank", "b_zero", "m_singular", "a_rank_deficient"])
def test_three_factor_split_is_the_canonical_least_squares_solution(kind):
    rng = np.random.default_rng(11)
    n_in, n_out, r, s = 9, 6, 3, 0.75
    A, B, M = random_factors(rng, n_in, n_out, r, kind)
    G = rng.normal(size=(n_out, n_in))
    g_A, g_M, g_B = s * (B @ M).T @ G, s * B.T @ G @ A.T, s * G @ (M @ A).T
    full, constrained, N_A, N_B, shapes = three_factor_matrices(A, M, B, s)
    best = (full @ np.linalg.lstsq(full, G.ravel(), rcond=None)[0]).reshape(G.shape)
    solution = np.linalg.lstsq(constrained, G.ravel(), rcond=None)[0]
    Z_A, dM, Z_B = np.split(solution, np.cumsum([np.prod(x) for x in shapes])[:-1])
    dA, dM, dB = Z_A.reshape(shapes[0]) @ N_A.T, dM.reshape(shapes[1]), N_B @ Z_B.reshape(shapes[2])
    if kind in ("full_rank", "b_zero"):  # invertible M: the optimum is the tangent projection at B M A
        P_B, P_A = projector(B @ M), projector((M @ A).T)
        if kind == "full_rank":
            assert relative_error(best, P_B @ G + G @ P_A - P_B @ G @ P_A) < 1e-10
    with jax.enable_x64(True):
        factors = {"lora_a": A.T, "lora_m": M.T, "lora_b": B.T}
        da, dm, db = adjust_three_factor(A.T, M.T, B.T, g_A.T, g_M.T, g_B.T, scale=s, delta=DELTA)
        change = first_order_change(factors, {"lora_a": da, "lora_m": dm, "lora_b": db}, scale=s)
    assert relative_error(np.asarray(change).T, best) < 1e-8
    ours = np.concatenate([np.ravel(x) for x in (da, dm, db)])
    assert relative_error(ours, np.concatenate([dA.T.ravel(), dM.T.ravel(), dB.T.ravel()])) < 1e-7


@pytest.mark.parametrize("kind", ["full_rank", "both_rank_deficient"])
def test_inttune_core_step_in_both_orientations(kind):
    """Only M trains: dM = (1/s²)(BᵀB)⁻¹ g_M (AAᵀ)⁻¹ with g_M = s Bᵀ G Aᵀ equals the least-squares optimum, and the
    Flax-layout step is its transpose (m = Mᵀ, g_m = s aᵀ G_K bᵀ)."""
    rng = np.random.default_rng(5)
    n_in, n_out, r, s = 9, 6, 3, 2.0
    A, B, M = random_factors(rng, n_in, n_out, r, kind)
    G = rng.normal(size=(n_out, n_in))
    g_M = s * B.T @ G @ A.T
    matrix = map_matrix(lambda dM: s * B @ dM @ A, [M.shape])
    dM_ls = np.linalg.lstsq(matrix, G.ravel(), rcond=None)[0].reshape(M.shape)
    a, b, G_K = A.T, B.T, G.T
    g_m = s * a.T @ G_K @ b.T
    assert np.allclose(g_m, g_M.T)
    with jax.enable_x64(True):
        dm = adjust_core(a, b, g_m, scale=s, delta=DELTA)
    assert relative_error(np.asarray(dm).T, dM_ls) < 1e-7
    assert relative_error(s * B @ np.asarray(dm).T @ A, projector(B) @ G @ projector(A.T)) < 1e-8
    if kind == "full_rank":
        closed_form = np.linalg.inv(B.T @ B) @ g_M @ np.linalg.inv(A @ A.T) / s**2
        assert relative_error(np.asarray(dm).T, closed_form) < 1e-9


def test_jit_and_vmap_match_per_adapter_calls():
    rng = np.random.default_rng(6)
    a, b = jnp.asarray(rng.normal(size=(3, 10, 4)), jnp.float32), jnp.asarray(rng.normal(size=(3, 4, 8)), jnp.float32)
    ga, gb = jnp.asarray(rng.normal(size=a.shape), jnp.float32), jnp.asarray(rng.normal(size=b.shape), jnp.float32)
    scales = jnp.array([0.5, 1.0, 2.0])
    batched = jax.jit(jax.vmap(lambda *x: adjust(*x[:4], scale=x[4])))(a, b, ga, gb, scales)
    for i in range(3):
        single = adjust(a[i], b[i], ga[i], gb[i], scale=float(scales[i]))
        for x, y in zip(batched, single):
            assert relative_error(x[i], y) < 1e-5


def test_bad_input_is_refused():
    a, b = jnp.ones((4, 2)), jnp.ones((2, 3))
    with pytest.raises(ValueError, match="x_mode"):
        adjust(a, b, a, b, scale=1.0, x_mode="paper")
    with pytest.raises(ValueError, match="a \\(in, r\\) and b \\(r, out\\)"):
        adjust(a, jnp.ones((3, 3)), a, jnp.ones((3, 3)), scale=1.0)
    with pytest.raises(ValueError, match="grad_b"):
        adjust(a, b, a, jnp.ones((2, 4)), scale=1.0)
    with pytest.raises(ValueError, match="m has shape"):
        adjust_three_factor(a, jnp.ones((3, 3)), b, a, jnp.ones((3, 3)), b, scale=1.0)
