"""What proves a checkpoint whole and good: the size and sha256 of every file of its step directory, recorded once
its save has committed and compared before it is restored, and the values it must hold (finite, trained weights
of a sane size).

Orbax records no checksum of array data (zarr's crc32c covers only the shard index), so a bit flip in a tensor file
restores silently; a manifest of the committed files catches flips, truncation, emptied and deleted files alike.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import jax
import jax.numpy as jnp

MANIFEST = "integrity.json"
# No trained weight of a working model comes near this; one diverged Adam step (about lr per entry) passes it.
MAX_SANE_PARAM = 1e4


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(step_dir: str) -> list[str]:
    """Paths under `step_dir`, relative to it, of every file but the manifest, sorted."""
    found = [os.path.relpath(os.path.join(root, name), step_dir)
             for root, _, names in os.walk(step_dir) for name in names]
    return sorted(path for path in found if path != MANIFEST)


def write_manifest(step_dir: str) -> None:
    """Records {relative path: {size, sha256}} of every file of a committed step directory in
    `<step_dir>/integrity.json` (written to a temporary name and renamed, so a manifest is whole or absent)."""
    files = {}
    for path in _files(step_dir):
        full = os.path.join(step_dir, path)
        files[path] = {"size": os.path.getsize(full), "sha256": _sha256(full)}
    temporary = os.path.join(step_dir, MANIFEST + ".tmp")
    with open(temporary, "w") as f:
        json.dump({"algorithm": "sha256", "files": files}, f, indent=1)
    os.replace(temporary, os.path.join(step_dir, MANIFEST))


def has_manifest(step_dir: str) -> bool:
    return os.path.exists(os.path.join(step_dir, MANIFEST))


def manifest_problem(step_dir: str) -> str | None:
    """What differs between `step_dir` and its manifest (the first missing, resized or changed file), or None when
    every recorded file is there unchanged, or when the step has no manifest (nothing to compare)."""
    if not has_manifest(step_dir):
        return None
    try:
        with open(os.path.join(step_dir, MANIFEST)) as f:
            recorded = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"its {MANIFEST} is unreadable ({err})"
    for path, expected in recorded.items():
        full = os.path.join(step_dir, path)
        if not os.path.isfile(full):
            return f"{path} is missing"
        size = os.path.getsize(full)
        if size != expected["size"]:
            return f"{path} has {size} bytes, {expected['size']} when saved"
        if _sha256(full) != expected["sha256"]:
            return f"{path} changed after it was saved (sha256 differs)"
    return None


@jax.jit
def _peaks(tree):
    """max |x| of every leaf (NaN or inf when it holds one), in one program for the whole tree."""
    return jax.tree.map(lambda x: jnp.max(jnp.abs(x.astype(jnp.float32)), initial=0.0), tree)


def value_problem(items: dict) -> str | None:
    """The first restored array that no good checkpoint holds: a non-finite value in any item, or a trained weight
    (item 'trainable') above MAX_SANE_PARAM. None when all are fine. Works on arrays sharded over processes."""
    floats = jax.tree.map(lambda x: x if jnp.issubdtype(x.dtype, jnp.floating) else None, items)
    for path, peak in jax.tree_util.tree_flatten_with_path(_peaks(floats))[0]:
        peak, where = float(peak), f"{path[0].key}{jax.tree_util.keystr(path[1:])}"
        if not math.isfinite(peak):
            return f"{where} holds non-finite values"
        if path[0].key == "trainable" and peak > MAX_SANE_PARAM:
            return (f"{where} holds values up to {peak:.3g} (a diverged update; sane weights stay below "
                    f"{MAX_SANE_PARAM:g})")
    return None
