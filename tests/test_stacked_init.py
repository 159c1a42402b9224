"""`init_stacked` on the CPU: every LAPACK call sees one matrix (batched ones can deadlock jaxlib 0.10's thread
pool), and each slice's factors equal its own init run by itself.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_jax.adapters import AdapterConfig
from lowrank_jax.adapters.inits import get_method
from lowrank_jax.adapters.stacked_init import init_stacked

LAYERS, N_IN, N_OUT, RANK = 3, 32, 24, 8


def stacked_kernel():
    """(LAYERS, N_IN, N_OUT) float32 Gaussian kernels, entries of variance 1 / N_IN."""
    return jax.random.normal(jax.random.key(1), (LAYERS, N_IN, N_OUT), jnp.float32) / np.sqrt(N_IN)


@pytest.mark.parametrize("method", ["nystrom", "pissa"])
def test_cpu_lapack_calls_take_one_matrix_each(method):
    config = AdapterConfig(method=method, rank=RANK)
    compiled = init_stacked.lower(stacked_kernel(), jax.random.key(0), rank=RANK, scale=2.0, config=config).compile()
    lapack_calls = [line for line in compiled.as_text().splitlines() if 'custom_call_target="lapack_' in line]
    assert lapack_calls, "expected the init to call LAPACK on the CPU"
    for line in lapack_calls:
        shapes = re.findall(r"\b(?:f32|s32)\[([\d,]*)\]", line)
        assert all(len(shape.split(",")) <= 2 for shape in shapes if shape), line


def test_each_slice_equals_its_own_init():
    config = AdapterConfig(method="nystrom", rank=RANK)
    kernel, key = stacked_kernel(), jax.random.key(0)
    stacked = init_stacked(kernel, key, rank=RANK, scale=2.0, config=config)
    one_slice = jax.jit(get_method("nystrom").init, static_argnums=(1, 2, 4))
    for i, slice_key in enumerate(jax.random.split(key, LAYERS)):
        alone = one_slice(kernel[i], RANK, 2.0, slice_key, config)
        for name, expected in alone._asdict().items():
            np.testing.assert_allclose(getattr(stacked, name)[i], expected, rtol=1e-6, atol=1e-6, err_msg=name)
