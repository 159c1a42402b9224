"""A Llama with random weights created directly on the devices, sharded as training shards it, never on the host.

The model's own constructor runs under `jax.jit` with the mesh's shardings as outputs, so a 7B bf16 model is
initialised on the GPUs in its storage dtype (no fp32 copy, no host memory).
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from lowrank_jax.models import Llama, LlamaConfig
from lowrank_jax.sharding import state_shardings


def random_llama(config: LlamaConfig, mesh: Mesh, seed: int = 0) -> Llama:
    """`Llama(config, rngs=nnx.Rngs(seed))`, built on `mesh` with each parameter sharded by its logical axes.

    Args:
      config: the architecture and runtime settings (param_dtype is the stored dtype).
      mesh: a (data, fsdp, tensor) mesh from `lowrank_jax.sharding.make_mesh`.
      seed: weight-init seed.

    Returns:
      The model; its arrays live on `mesh`'s devices.
    """
    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)

    def init():
        return nnx.as_pure(nnx.state(Llama(config, rngs=nnx.Rngs(seed))))

    state = jax.jit(init, out_shardings=state_shardings(abstract_state, mesh))()
    return nnx.merge(graphdef, state)
