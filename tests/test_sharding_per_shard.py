"""`per_shard` runs a function on each device's block of its arguments, against a loop over the blocks.

The function below depends on the shapes it sees (local row and head indices), so it gives a different answer per
block than on the whole array: equal to the blockwise loop means it ran per device, on the right blocks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_jax.sharding import make_mesh, per_shard

HEADS, ROWS = ("batch", None, "heads", None), ("batch", None)
NAMES = [HEADS, HEADS, ROWS, ()]


def local_indices(q, k, rows, scale):
    """q plus its local row index, 10 x its local head index, its row's sum, the sum over k's heads and a scalar."""
    row = jnp.arange(q.shape[0])[:, None, None, None]
    head = jnp.arange(q.shape[2])[None, None, :, None]
    return q + row + 10 * head + rows.sum(axis=1)[:, None, None, None] + k.sum(axis=2, keepdims=True) + scale


def blockwise(q, k, rows, scale, row_blocks, head_blocks):
    """`local_indices` called on each (row block, head block), the blocks put back in place."""
    out = np.zeros_like(q)
    for r in np.split(np.arange(q.shape[0]), row_blocks):
        for qh, kh in zip(np.split(np.arange(q.shape[2]), head_blocks), np.split(np.arange(k.shape[2]), head_blocks)):
            block = local_indices(q[r][:, :, qh], k[r][:, :, kh], rows[r], scale)
            out[r[:, None], :, qh[None, :]] = np.moveaxis(np.asarray(block), 2, 1)
    return out


def arrays(q_heads, kv_heads):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(8, 3, q_heads, 2)).astype(np.float32),
            rng.normal(size=(8, 3, kv_heads, 2)).astype(np.float32),
            rng.integers(0, 5, (8, 6)).astype(np.int32), np.float32(0.5))


def run_per_shard(args, mesh):
    with jax.set_mesh(mesh):
        return np.asarray(jax.jit(lambda *a: per_shard(local_indices, a, NAMES, HEADS))(*args))


@pytest.mark.parametrize("data, fsdp, tensor", [(2, 2, 2), (1, 8, 1), (8, 1, 1)])
def test_rows_and_heads_split_over_their_mesh_axes(data, fsdp, tensor):
    args = arrays(q_heads=4, kv_heads=2)
    got = run_per_shard(args, make_mesh(data, fsdp, tensor))
    np.testing.assert_allclose(got, blockwise(*args, row_blocks=data * fsdp, head_blocks=tensor), rtol=1e-6)
    assert not np.allclose(got, local_indices(*args))  # the whole-array answer differs


def test_heads_stay_whole_when_one_argument_cannot_split_them():
    args = arrays(q_heads=4, kv_heads=1)   # 1 key/value head: tensor=2 cannot split it, so neither is split
    got = run_per_shard(args, make_mesh(2, 2, 2))
    np.testing.assert_allclose(got, blockwise(*args, row_blocks=4, head_blocks=1), rtol=1e-6)


def test_without_a_mesh_the_function_sees_whole_arrays():
    args = arrays(q_heads=4, kv_heads=2)
    got = jax.jit(lambda *a: per_shard(local_indices, a, NAMES, HEADS))(*args)
    np.testing.assert_allclose(got, local_indices(*args), rtol=1e-6)
