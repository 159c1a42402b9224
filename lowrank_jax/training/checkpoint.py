"""Checkpoints of a run: named pytrees (trainable params, optimizer state, RNG state) plus JSON meta (orbax).

Saves are asynchronous (the step loop keeps going while the previous save is written) and atomic (orbax writes a
temporary directory and renames it), the last `keep` are kept, and restore reads only the items asked for, placing
every array on the sharding of its template (eval.py restores the adapters without the optimizer state).

Each committed step gets a manifest of its files (checkpoint_integrity.py), written at the next save or `wait`, so
the save itself stays asynchronous. `restore_newest_intact` skips steps whose files or values are damaged; a run
that continues moves those (and any it will overwrite) to `<workdir>/unused_checkpoints/` with `set_aside`.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from lowrank_jax.training.checkpoint_integrity import has_manifest, manifest_problem, value_problem, write_manifest


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


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def saved_steps(workdir: str) -> list[int]:
    """The committed checkpoint steps under `<workdir>/checkpoints`, oldest first, read without creating anything."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)).all_steps())


class CheckpointError(RuntimeError):
    """No checkpoint that a run could continue from: each one asked for is missing or damaged."""


def describe(rejected: list[tuple[int, str, str]]) -> str:
    """'step 4 (/w/checkpoints/4): trainable/d/ab12 changed after it was saved; step 2 (...): ...'"""
    return "; ".join(f"step {step} ({path}): {problem}" for step, path, problem in rejected)


class Checkpointer:
    """Last-N asynchronous checkpoints under `<workdir>/checkpoints`, each with a manifest of its files.

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
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._unsealed = None  # the step saved last, until its save has committed and its manifest is written

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, items: dict[str, Any], meta: dict) -> None:
        """Starts writing `items` (name -> pytree of arrays) and `meta` (JSON-able) for `step`; returns at once
        (after sealing the previous save, which orbax would wait for anyway)."""
        self._seal()
        args = {name: ocp.args.StandardSave(_unwrap_keys(tree)) for name, tree in items.items()
                if jax.tree.leaves(tree)}  # orbax refuses empty trees (e.g. no RNG state)
        self.manager.save(step, args=ocp.args.Composite(**args, meta=ocp.args.JsonSave({**meta, "step": int(step)})))
        self._unsealed = step

    def _seal(self) -> None:
        """Waits for the save in flight to commit, then writes its manifest (process 0; the files are shared)."""
        self.manager.wait_until_finished()
        if self._unsealed is not None and jax.process_index() == 0:
            write_manifest(self.step_dir(self._unsealed))
        self._unsealed = None

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

    def restore_newest_intact(self, templates: dict[str, Any], steps: list[int] | None = None
                              ) -> tuple[dict | None, dict | None, list[tuple[int, str, str]]]:
        """Restores the newest of `steps` (default: all) whose files match their manifest, which orbax reads and
        whose values pass `value_problem`.

        Returns:
          (items, meta, rejected): rejected lists (step, directory, what is wrong) for each newer step skipped;
          items and meta are None when no step is intact.
        """
        rejected = []
        for step in sorted(self.steps() if steps is None else steps, reverse=True):
            problem = manifest_problem(self.step_dir(step))
            if problem is None:
                if not has_manifest(self.step_dir(step)):
                    print(f"checkpoint {step} has no manifest (the run stopped right after saving it): checking its "
                          "values only")
                try:
                    items, meta = self.restore(templates, step)
                except Exception as err:  # whatever orbax or tensorstore raise on damaged files, the step is unusable
                    problem = f"orbax cannot read it: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
                else:
                    problem = value_problem(items)
            if problem is None:
                return items, meta, rejected
            rejected.append((step, self.step_dir(step), problem))
        return None, None, rejected

    def resume(self, templates: dict[str, Any], step: int = 0) -> tuple[dict[str, Any], dict]:
        """Restores checkpoint `step` (a saved one; 0: the newest intact one) for a run that continues from it.
        Damaged newer checkpoints, and those after the restored step (the run would write them again), are set
        aside, each move printed.

        Raises:
          CheckpointError: naming each damaged step, its directory, what is wrong and the fix, when `step` (for 0:
            every checkpoint) is damaged.
        """
        steps = self.steps()
        items, meta, rejected = self.restore_newest_intact(templates, [step] if step else steps)
        if items is None:
            fix = "restore the files from a copy, or start a new run in another --config.workdir"
            others = [s for s in steps if s != step]
            if step and others:
                fix = f"resume from another step (--config.train.resume_step=N, N in {others}), or {fix}"
            raise CheckpointError(f"no intact checkpoint to resume in {self.directory}: {describe(rejected)}. "
                                  f"To go on: {fix}")
        for damaged, path, problem in rejected:
            moved = self.set_aside(damaged, f"damaged: {problem}")
            print(f"checkpoint {damaged} is damaged: {path}: {problem}. Moved it to {moved}")
        for later in self.steps():
            if later > meta["step"]:
                moved = self.set_aside(later, f"after step {meta['step']}, which train.resume_step chose")
                print(f"checkpoint {later} comes after the chosen step {meta['step']}: moved it to {moved}")
        newest = " (the newest intact checkpoint)" if rejected else ""
        print(f"resumed from step {meta['step']}{newest} in {self.directory}")
        return items, meta

    def set_aside(self, step: int, why: str) -> str:
        """Moves checkpoint `step` out of orbax's sight to `<workdir>/unused_checkpoints/<step>` (a numbered suffix if
        taken), with `why` in its why.txt; returns the new path. Every process calls it; process 0 moves."""
        self._seal()
        target = base = os.path.join(self.workdir, "unused_checkpoints", str(step))
        suffix = 0
        while os.path.exists(target):
            suffix += 1
            target = f"{base}.{suffix}"
        _sync_processes(f"set_aside_{step}_chosen")  # every process has named the target before it exists
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(self.step_dir(step), target)
            with open(os.path.join(target, "why.txt"), "w") as f:
                f.write(why + "\n")
        _sync_processes(f"set_aside_{step}_moved")
        self.manager.reload()
        return target

    def wait(self) -> None:
        self._seal()

    def close(self) -> None:
        self._seal()
        self.manager.close()
