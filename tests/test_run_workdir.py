"""A workdir belongs to one run: a new run is refused where another run left files (with checkpoints or without,
having died before its first save); a resume first compares the stored config and names the fields that may not
change; resume=True with nothing to resume fails unless told to start; a refused run changes no file. SIGTERM (as
schedulers send before preempting) saves a checkpoint at the next step boundary and prints the command that
continues the run."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from lowrank_jax.training import loop
from lowrank_jax.training.checkpoint import Checkpointer
from lowrank_jax.training.checkpoint_integrity import manifest_problem
from lowrank_jax.training.workdir import check_workdir
from run_setup import TRAINED, files_of, logged_rows, purge_step, trained_run  # noqa: F401 (a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_new_run_where_a_run_saved_checkpoints_is_refused(trained_run, tmp_path):
    workdir = trained_run.copy(tmp_path / "run")
    before = files_of(workdir)
    with pytest.raises(ValueError, match=rf"workdir '{workdir}' already holds checkpoints \(latest step 4\) of "
                                         r"another run: pass --config.resume=True"):
        loop.run(trained_run.config(workdir))
    assert files_of(workdir) == before


def test_workdir_of_a_run_that_died_before_its_first_checkpoint_is_refused_then_started_over(trained_run, tmp_path):
    workdir = trained_run.copy(tmp_path / "run")
    shutil.rmtree(workdir / "checkpoints")  # what a run that died before its first save leaves
    os.remove(workdir / "report.json")
    before = files_of(workdir)
    with pytest.raises(ValueError, match=r"holds files of another run \(config.json, metrics.jsonl, tensorboard\) "
                                         r"that saved no checkpoint to resume: pass "
                                         r"--config.train.resume_or_start=True to start that run over in place"):
        loop.run(trained_run.config(workdir))
    assert files_of(workdir) == before

    loop.run(trained_run.config(workdir, **{"train.resume_or_start": True, "train.stop_after": 1}))
    assert [row["step"] for row in logged_rows(workdir)] == [1]  # the dead run's rows are gone, not interleaved
    assert purge_step(workdir) == 1
    assert json.loads((workdir / "config.json").read_text())["train"]["stop_after"] == 1


def test_resume_with_a_changed_rank_is_refused_naming_it_before_anything_changes(trained_run, tmp_path):
    workdir = trained_run.copy(tmp_path / "run")
    before = files_of(workdir)
    with pytest.raises(ValueError) as error:
        loop.run(trained_run.config(workdir, resume=True, **{"adapter.rank": 8, "optimizer.learning_rate": 1e-3}))
    assert str(error.value) == (
        f"config: cannot resume the run in '{workdir}' with different adapter.rank (adapter.rank: 4 -> 8): set them "
        f"as {workdir}/config.json has them, or start a new run in another --config.workdir")
    assert files_of(workdir) == before


def test_resume_with_nothing_to_resume_fails_unless_told_to_start(trained_run, tmp_path):
    mistyped = tmp_path / "rnu"
    with pytest.raises(ValueError, match=rf"resume=True, but {mistyped}/checkpoints holds no checkpoint to resume: "
                                         r"check --config.workdir, or pass --config.train.resume_or_start=True"):
        loop.run(trained_run.config(mistyped, resume=True))
    assert not mistyped.exists()
    assert check_workdir(trained_run.config(mistyped, resume=True, **{"train.resume_or_start": True}))
    with pytest.raises(ValueError, match=r"train.resume_step=3, but \S+ holds no checkpoint 3; its steps are \[2, 4\]"):
        check_workdir(trained_run.config(trained_run.workdir, resume=True, **{"train.resume_step": 3}))


def test_sigterm_saves_a_checkpoint_at_the_next_step_and_prints_the_resume_command(trained_run, tmp_path):
    workdir = tmp_path / "run"
    settings = {**TRAINED, "train.steps": 100_000, "eval.after": False, "train.export_peft": False,
                "model.path": trained_run.base_model, "data.train": trained_run.data_dir / "train.jsonl",
                "data.test": trained_run.data_dir / "test.jsonl", "workdir": workdir}
    command = ["train.py", "--config=configs/lora_llama.py:tiny", *(f"--config.{k}={v}" for k, v in settings.items())]
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # the step compiled for trained_run serves it
    with open(tmp_path / "output.txt", "w") as output:
        process = subprocess.Popen([sys.executable, *command], cwd=REPO, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "output.txt").read_text()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
    out = (tmp_path / "output.txt").read_text()
    found = re.search(r"stopped by SIGTERM after step (\d+): checkpoint \1 saved in (\S+)\. Continue with: (.+)\n", out)
    assert found, out
    step = int(found.group(1))
    assert found.group(2) == str(workdir / "checkpoints") and Checkpointer(str(workdir)).steps()[-1] == step
    assert manifest_problem(str(workdir / "checkpoints" / str(step))) is None
    assert found.group(3) == " ".join(["python", *command, "--config.resume=True"])
    assert logged_rows(workdir)[-1]["step"] == step
