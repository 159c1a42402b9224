"""Checkpoints of a run: named pytrees (trainable params, optimizer state, RNG state) plus JSON meta (orbax).

Saves are asynchronous (the step loop keeps going while the previous save is written) and atomic (orbax writes a
temporary directory and renames it), the last `keep` are kept, and restore reads only the items asked for, placing
every array on the sharding of its template (eval.py restores the adapters without the optimizer state).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _unwrap_keys(tree):
    """Typed PRNG key arrays -> raw uint32 data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                        else x, tree)


def _rewrap_keys(restored, template):
    return jax.tree.map(lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
                        if jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key) else r, restored, template)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


class Checkpointer:
    """Last-N asynchronous checkpoints under `<workdir>/checkpoints`.

    >>> import tempfile, jax.numpy as jnp
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=2)
    >>> ckpt.save(3, {"trainable": {"w": jnp.ones(2)}}, {"data": {"position": 7}})
    >>> ckpt.wait()
    >>> items, meta = ckpt.restore({"trainable": {"w": jnp.zeros(2)}})
    >>> float(items["trainable"]["w"].sum()), meta["step"], meta["data"]["position"]
    (2.0, 3, 7)
    """

    def __init__(self, workdir: str, keep: int = 3):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, items: dict[str, Any], meta: dict) -> None:
        """Starts writing `items` (name -> pytree of arrays) and `meta` (JSON-able) for `step`; returns at once."""
        args = {name: ocp.args.StandardSave(_unwrap_keys(tree)) for name, tree in items.items()
                if jax.tree.leaves(tree)}  # orbax refuses empty trees (e.g. no RNG state)
        self.manager.save(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonSave({**meta, "step": int(step)})))

    def restore(self, templates: dict[str, Any], step: int | None = None) -> tuple[dict[str, Any], dict]:
        """Restores the items named in `templates` (and the meta) at `step` (default: latest), each onto the
        shapes, dtypes and shardings of its template."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}: train first, or check --workdir")
        args = {name: ocp.args.StandardRestore(_abstract(_unwrap_keys(tree))) for name, tree in templates.items()
                if jax.tree.leaves(tree)}
        restored = self.manager.restore(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonRestore()))
        items = {name: _rewrap_keys(restored[name], tree) if name in args else tree
                 for name, tree in templates.items()}
        return items, dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
