"""Mistakes a user makes on the `tiny` preset fail before any weight loads (the loaders are replaced by ones that fail
the test), with a message naming the file, the line, the setting and the fix: a broken data line, a record without
the configured fields, too few examples for the validation hold-out, a missing data file, a rank wider than the
layers, targets matching nothing, and eval.py on a workdir without checkpoints or on a PEFT adapter directory (which
must create nothing)."""

import json
import os
import re

import pytest
from absl import flags
from ml_collections import config_flags

from lowrank_jax.training import eval_run, loop, restore

QUESTION = {"question": "Tom has 3 apples and buys 4 more. How many now?", "answer": "3 + 4 = 7.\n#### 7"}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def data(tmp_path):
    """A GSM8K-style train.jsonl (40 records, a blank line 5) and test.jsonl, as a user writes them."""
    lines = [json.dumps(QUESTION)] * 40
    lines.insert(4, "")
    write_lines(tmp_path / "train.jsonl", lines)
    write_lines(tmp_path / "test.jsonl", [json.dumps(QUESTION)] * 4)
    return tmp_path


@pytest.fixture(autouse=True)
def no_weights(monkeypatch):
    """Every way a run or eval.py loads weights fails the test: the errors must come before."""
    def load(*args, **kwargs):
        raise AssertionError("weights were loaded before the error")
    for module, name in ((loop, "load_model"), (restore, "load_model"), (eval_run, "load_model"),
                         (eval_run, "load_pretrained")):
        monkeypatch.setattr(module, name, load)


def user_config(*overrides, data_dir):
    """The config train.py / eval.py make of `--config=configs/lora_llama.py:tiny` with the data and `overrides`."""
    argv = ["train.py", "--config=configs/lora_llama.py:tiny", f"--config.data.train={data_dir / 'train.jsonl'}",
            f"--config.data.test={data_dir / 'test.jsonl'}", f"--config.workdir={data_dir / 'run'}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_broken_line_names_the_file_the_true_line_and_what_is_expected(data, suffix):
    lines = (data / "train.jsonl").read_text().splitlines()
    lines[20] = lines[20][:40]  # line 21, cut short
    train = write_lines(data / f"train{suffix}", lines)
    with pytest.raises(ValueError) as error:
        loop.run(user_config(f"--config.data.train={train}", data_dir=data))
    message = str(error.value)
    assert f"data.train: {train}, line 21: not valid JSON" in message
    assert "expected one JSON object per line with" in message and "question/answer" in message
    assert not os.path.exists(data / "run")


def test_a_record_without_the_configured_fields_names_its_line(data):
    lines = (data / "train.jsonl").read_text().splitlines()
    lines[20] = json.dumps({"question": "What is 2 + 2?", "solution": "4"})
    write_lines(data / "train.jsonl", lines)
    with pytest.raises(ValueError, match=re.escape(f"data.train: {data / 'train.jsonl'}, line 21 has no 'answer' "
                                                   "field (it has ['question', 'solution'])")):
        loop.run(user_config(data_dir=data))


def test_too_few_training_examples_for_the_validation_hold_out_fail_before_loading(data):
    with pytest.raises(ValueError, match=re.escape(f"val_examples=8 are held out of the 4 training examples in "
                                                   f"data.train='{data / 'test.jsonl'}'")):
        loop.run(user_config(f"--config.data.train={data / 'test.jsonl'}", data_dir=data))


def test_a_missing_data_file_is_named_with_its_setting(data):
    missing = data / "tests.jsonl"
    with pytest.raises(ValueError, match=rf"data\.test.*'{re.escape(str(missing))}'.* does not exist; point at"):
        loop.run(user_config(f"--config.data.test={missing}", data_dir=data))


def test_a_rank_wider_than_the_layers_names_them_and_their_sizes(data):
    with pytest.raises(ValueError) as error:
        loop.run(user_config("--config.adapter.rank=10000", data_dir=data))
    message = str(error.value)
    assert "adapter.rank=10000" in message and "model.path='random'" in message
    assert "layers.self_attn.k_proj: rank 10000 > min(in, out) = min(64, 32)" in message
    assert "--config.adapter.rank=" in message


def test_targets_matching_nothing_list_the_layers_that_exist(data):
    with pytest.raises(ValueError) as error:
        loop.run(user_config("--config.adapter.targets=.*qkv_proj", data_dir=data))
    message = str(error.value)
    assert "adapter.targets='.*qkv_proj'" in message and "match no module" in message
    assert "'layers.self_attn.q_proj'" in message and "'layers.mlp.down_proj'" in message


@pytest.mark.parametrize("exists", [True, False])
def test_eval_of_a_workdir_without_checkpoints_says_so_and_creates_nothing(data, exists):
    workdir = data / "empty_run"
    if exists:
        workdir.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        eval_run.run_eval(user_config(data_dir=data), workdir=str(workdir))
    message = str(error.value)
    assert f"no checkpoint in {workdir / 'checkpoints'}" in message
    assert f"--config.workdir={workdir}" in message and "--model=" in message
    assert (os.listdir(workdir) == []) if exists else not os.path.exists(workdir)


@pytest.mark.parametrize("flag", ["workdir", "model_path"])
def test_eval_of_a_peft_directory_says_how_to_evaluate_its_run(data, flag):
    peft = data / "run" / "peft"
    peft.mkdir(parents=True)
    (peft / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    with pytest.raises(ValueError) as error:
        eval_run.run_eval(user_config(data_dir=data), **{flag: str(peft)})
    message = str(error.value)
    assert f"{peft} is a PEFT adapter directory" in message
    assert f"--workdir={data / 'run'}" in message and f"--model={data / 'run' / 'merged'}" in message
    assert sorted(os.listdir(data / "run")) == ["peft"]
