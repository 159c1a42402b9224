"""Checkpoints damaged the way disks and people damage them (bytes flipped in a tensor file, a file cut short, an
emptied _METADATA, a deleted item): a resumed run names the step, the file and what is wrong, moves the checkpoint
aside and continues from the newest intact one with the uninterrupted run's losses; with none intact it stops and
changes nothing. `train.resume_step` picks the checkpoint; checkpoints of sane-looking files but insane values
(1e30 weights) are not good."""

import glob
import os
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_jax.training import loop
from lowrank_jax.training.checkpoint import Checkpointer, CheckpointError
from lowrank_jax.training.checkpoint_integrity import MANIFEST, manifest_problem
from run_setup import files_of, logged_losses, logged_rows, purge_step, trained_run  # noqa: F401 (a fixture)


def tensor_file(step_dir, item):
    """The largest array data file of `item` (its ocdbt data), as a user finds it."""
    return max(glob.glob(str(step_dir / item / "ocdbt.process_0" / "d" / "*")), key=os.path.getsize)


def flip_bytes(path, count=2000):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        start = (len(data) - count) // 2
        data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
        f.seek(0)
        f.write(data)


def cut_in_half(path):
    os.truncate(path, os.path.getsize(path) // 2)


DAMAGE = {  # what a user does to a step directory -> what the message says of it
    "flipped bytes": (lambda d: flip_bytes(tensor_file(d, "trainable")),
                      r"trainable/ocdbt.process_0/d/\w+ changed after it was saved"),
    "truncated file": (lambda d: cut_in_half(tensor_file(d, "opt_state")),
                       r"opt_state/ocdbt.process_0/d/\w+ has \d+ bytes, \d+ when saved"),
    "empty _METADATA": (lambda d: open(d / "trainable" / "_METADATA", "w").close(),
                        r"trainable/_METADATA has 0 bytes, \d+ when saved"),
    "deleted opt_state": (lambda d: shutil.rmtree(d / "opt_state"), r"opt_state/\S+ is missing"),
}


def test_every_saved_step_has_a_manifest_of_its_files(trained_run):
    for step in (2, 4):
        step_dir = trained_run.workdir / "checkpoints" / str(step)
        assert os.path.isfile(step_dir / MANIFEST) and manifest_problem(str(step_dir)) is None
        assert {"trainable/_METADATA", "opt_state/_METADATA"} <= set(files_of(step_dir))


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_moves_a_damaged_latest_checkpoint_aside_and_continues_from_the_intact_one(
        trained_run, tmp_path, capsys, damage):
    """The resumed run stops right after restoring (stop_after=2); the next test trains on from step 2."""
    workdir = trained_run.copy(tmp_path / "run")
    harm, said = DAMAGE[damage]
    harm(workdir / "checkpoints" / "4")
    loop.run(trained_run.config(workdir, resume=True, **{"train.stop_after": 2}))
    out = capsys.readouterr().out
    assert re.search(rf"checkpoint 4 is damaged: {workdir}/checkpoints/4: {said}[^\n]*\. Moved it to "
                     rf"{workdir}/unused_checkpoints/4\n", out), out
    assert f"resumed from step 2 (the newest intact checkpoint) in {workdir}/checkpoints" in out
    assert re.search(said, (workdir / "unused_checkpoints" / "4" / "why.txt").read_text())
    assert Checkpointer(str(workdir)).steps() == [2]
    assert [row["step"] for row in logged_rows(workdir)] == [1, 2]  # rows of the steps the run will replay: gone


def test_resume_with_every_checkpoint_damaged_stops_naming_each_and_changes_nothing(trained_run, tmp_path):
    workdir = trained_run.copy(tmp_path / "run")
    flip_bytes(tensor_file(workdir / "checkpoints" / "4", "trainable"))
    open(workdir / "checkpoints" / "2" / "trainable" / "_METADATA", "w").close()
    before = files_of(workdir)
    with pytest.raises(CheckpointError) as error:
        loop.run(trained_run.config(workdir, resume=True))
    message = str(error.value)
    assert re.search(rf"step 4 \({workdir}/checkpoints/4\): trainable/\S+ changed after it was saved \(sha256 "
                     rf"differs\); "
                     rf"step 2 \({workdir}/checkpoints/2\): trainable/_METADATA has 0 bytes", message), message
    assert "start a new run in another --config.workdir" in message
    assert files_of(workdir) == before


def test_resume_step_continues_from_the_chosen_checkpoint_and_replaces_later_metrics(trained_run, tmp_path, capsys):
    workdir = trained_run.copy(tmp_path / "run")
    loop.run(trained_run.config(workdir, resume=True, **{"train.resume_step": 2}))
    out = capsys.readouterr().out
    assert f"checkpoint 4 comes after the chosen step 2: moved it to {workdir}/unused_checkpoints/4" in out
    assert "resumed from step 2 in" in out
    assert logged_losses(workdir) == logged_losses(trained_run.workdir)  # steps 3 and 4 replayed bit for bit
    assert [row["step"] for row in logged_rows(workdir) if "train/loss" in row] == [1, 2, 3, 4]  # once each
    assert Checkpointer(str(workdir)).steps() == [2, 4] and manifest_problem(str(workdir / "checkpoints" / "4")) is None
    assert purge_step(workdir) == 3  # TensorBoard drops the replaced run's steps 3 and 4 as well


def test_a_checkpoint_whose_files_are_whole_but_weights_diverged_is_not_intact(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    for step, scale in ((1, 1.0), (2, 1e30)):
        ckpt.save(step, {"trainable": {"lora_b": scale * jnp.ones(3)}, "opt_state": {"mu": jnp.zeros(3)}}, {})
    ckpt.wait()
    items, meta, rejected = ckpt.restore_newest_intact({"trainable": {"lora_b": jnp.zeros(3)}})
    assert meta["step"] == 1 and np.asarray(items["trainable"]["lora_b"]).tolist() == [1.0] * 3
    assert rejected == [(2, str(tmp_path / "checkpoints" / "2"),
                         "trainable['lora_b'] holds values up to 1e+30 (a diverged update; sane weights stay below "
                         "10000)")]
