"""Data sources: local json/jsonl/parquet files and directories, the Hub when offline, a GSM8K directory, the
embedded generated set, validation hold-out, load_splits and check_data_config. Only data written here is read."""

import json

import datasets
import ml_collections
import pytest

from lowrank_jax.data import (DEFAULT_GSM8K_DIR, Example, check_data_config, embedded_examples, hold_out, load_splits,
                              read_examples, read_gsm8k, read_hub, read_local)
from lowrank_jax.evaluation import gold_answer, normalize_number

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How "
                 "much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
] + [{"question": f"Tom has {i} apples and buys {i + 1} more. How many apples does he have?",
      "answer": f"{i} + {i + 1} = <<{i}+{i + 1}={2 * i + 1}>>{2 * i + 1}\n#### {2 * i + 1}"} for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_config(**overrides):
    """The `data` block of configs/common.py, with `overflow`."""
    cfg = ml_collections.ConfigDict(dict(source="embedded", train="", test="", template="alpaca", max_length=256,
                                         batch_size=4, grad_accum=1, packing=True, epochs=1.0, max_train_examples=0,
                                         val_examples=4, val_seed=0, seed=0, overflow="truncate"))
    cfg.update(overrides)
    return cfg


@pytest.fixture
def gsm8k_dir(tmp_path):
    directory = tmp_path / "gsm8k"
    directory.mkdir()
    write_jsonl(directory / "train.jsonl", GSM8K_ROWS)
    write_jsonl(directory / "test.jsonl", GSM8K_ROWS[:3])
    return directory


def test_read_local_json_jsonl_parquet_and_directories(tmp_path):
    rows = [{"query": f"q{i}", "response": f"r{i}", "extra": i} for i in range(5)]
    expected = [Example(f"q{i}", f"r{i}") for i in range(5)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    for name in ("a.jsonl", "b.json", "c.parquet"):
        assert read_local(tmp_path / name) == expected
    directory = tmp_path / "d"
    directory.mkdir()
    write_jsonl(directory / "train.jsonl", rows[:3])
    write_jsonl(directory / "gsm_test_set.jsonl", rows[3:])
    assert read_local(directory, "train") == expected[:3]
    assert read_local(directory, "test") == expected[3:]
    assert read_examples(str(directory), "test") == expected[3:]


def test_field_mappings(read_local_rows):
    assert read_local_rows([{"question": "q", "answer": "a"}]) == [Example("q", "a")]
    assert read_local_rows([{"instruction": "Add.", "input": "2 and 3", "output": "5"},
                            {"instruction": "Say hi.", "input": "", "output": "hi"}]) == [
        Example("Add.\n\n2 and 3", "5"), Example("Say hi.", "hi")]
    assert read_local_rows([{"problem": "p", "solution": "s"}], fields=("problem", "solution")) == [
        Example("p", "s")]
    with pytest.raises(ValueError, match=r"cannot tell which fields.*\['problem', 'solution'\].*fields="):
        read_local_rows([{"problem": "p", "solution": "s"}])
    with pytest.raises(ValueError, match="record 0 has question=None"):
        read_local_rows([{"question": None, "answer": "a"}])


@pytest.fixture
def read_local_rows(tmp_path):
    def read(rows, fields=None):
        path = write_jsonl(tmp_path / f"rows{len(list(tmp_path.iterdir()))}.jsonl", rows)
        return read_local(path, fields=fields)
    return read


def test_read_local_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope/train\.jsonl.*does not exist.*--config\.data\.train="):
        read_local(tmp_path / "nope" / "train.jsonl")
    with pytest.raises(FileNotFoundError, match=r"no file matches split 'test' \(found: \['train\.jsonl'\]\)"):
        write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
        read_local(tmp_path, "test")
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match=r"unsupported data file type '\.csv'"):
        read_local(tmp_path / "data.csv")


def test_hub_offline_error_names_dataset_and_local_fix():
    with pytest.raises(ConnectionError, match=r"'openai/gsm8k' \(config 'main'\), split 'train'.*"
                                              r"--config\.data\.train=/path/train\.jsonl"):
        read_hub("openai/gsm8k")
    with pytest.raises(ConnectionError, match="meta-math/MetaMathQA"):
        read_examples("meta-math/MetaMathQA")


def test_read_gsm8k_strips_calculator_annotations(gsm8k_dir):
    train = read_gsm8k("train", gsm8k_dir)
    assert len(train) == len(GSM8K_ROWS)
    assert train[0] == Example(GSM8K_ROWS[0]["question"], "Natalia sold 48/2 = 24 clips in May.\nNatalia sold "
                                                          "48+24 = 72 clips altogether in April and May.\n#### 72")
    assert [gold_answer(e.response) for e in train] == [r["answer"].split("#### ")[1] for r in GSM8K_ROWS]
    kept = read_gsm8k("test", gsm8k_dir, keep_calculator_annotations=True)
    assert kept == [Example(r["question"], r["answer"]) for r in GSM8K_ROWS[:3]]
    with pytest.raises(ValueError, match="held out of 'train'"):
        read_gsm8k("validation", gsm8k_dir)


def test_gsm8k_dir_default_and_missing_directory(tmp_path):
    assert DEFAULT_GSM8K_DIR.parts[-3:] == ("shared", "data", "gsm8k")
    with pytest.raises(FileNotFoundError, match=r"lacks \['train\.jsonl', 'test\.jsonl'\].*--config\.data\.train="):
        read_gsm8k("train", tmp_path)


def test_hold_out_is_a_seeded_partition():
    examples = [Example(str(i), "") for i in range(50)]
    rest, held = hold_out(examples, 10, seed=3)
    assert len(held) == 10 and sorted(rest + held) == sorted(examples)
    assert rest == [e for e in examples if e not in held]                  # training order is kept
    assert hold_out(examples, 10, seed=3) == (rest, held)
    assert set(hold_out(examples, 10, seed=4)[1]) != set(held)
    with pytest.raises(ValueError, match="lower data.val_examples"):
        hold_out(examples, 50, seed=0)


def test_load_splits_gsm8k_local_and_local(gsm8k_dir):
    splits = load_splits(data_config(source="gsm8k_local", train=str(gsm8k_dir), val_examples=4,
                                     max_train_examples=5, val_seed=1, seed=7))
    everything = read_gsm8k("train", gsm8k_dir)
    rest, held = hold_out(everything, 4, seed=1)
    assert splits.validation == held and splits.train == rest[:5]
    other_seed = load_splits(data_config(source="gsm8k_local", train=str(gsm8k_dir), val_examples=4, val_seed=1,
                                         seed=8))
    assert other_seed.validation == held   # the training seed does not move the validation problems
    assert splits.test == read_gsm8k("test", gsm8k_dir)
    local = load_splits(data_config(source="local", train=str(gsm8k_dir / "train.jsonl"), val_examples=2))
    assert len(local.train) == len(GSM8K_ROWS) - 2 and len(local.validation) == 2 and local.test == []
    assert "<<" in local.train[0].response + local.validation[0].response   # a plain local file is read verbatim


def test_embedded_examples_are_gsm8k_format_deterministic_and_disjoint():
    test = embedded_examples("test", 40)
    assert embedded_examples("test", 40) == test
    assert embedded_examples("test", 40, seed=1) != test
    train = embedded_examples("train", 200, exclude={e.query for e in test})
    assert len({e.query for e in train}) == 200
    assert not {e.query for e in train} & {e.query for e in test}
    for example in train[:50] + test:
        assert not example.query.endswith("Do not include units.")
        reasoning, last_line = example.response.rsplit("\n", 1)
        assert reasoning and last_line == f"#### {gold_answer(example.response)}"
        assert normalize_number(last_line) == last_line[5:]                 # "#### 27", never "#### 27.0"
    with pytest.raises(ValueError, match="not 'dev'"):
        embedded_examples("dev", 3)


def test_load_splits_embedded_holds_out_validation_and_test():
    splits = load_splits(data_config(val_examples=16, max_train_examples=300))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (300, 16, 1319)
    train, validation, test = ({e.query for e in s} for s in splits)
    assert not train & validation and not train & test and not validation & test


def test_check_data_config_rejects_bad_values_with_the_key(gsm8k_dir, tmp_path):
    check_data_config(data_config())
    check_data_config(data_config(source="gsm8k_local", train=str(gsm8k_dir)))
    check_data_config(data_config(source="local", train=str(gsm8k_dir / "train.jsonl")))
    bad = {
        "data.template": dict(template="Question: {question}"),
        "data.overflow": dict(overflow="wrap"),
        "data.max_length": dict(max_length=1),
        "data.val_examples": dict(val_examples=-1),
        "data.train: GSM8K directory": dict(source="gsm8k_local", train=str(tmp_path / "missing")),
        "data.train is empty": dict(source="local"),
        "data.train=.* does not exist": dict(source="local", train=str(tmp_path / "missing.jsonl")),
        r"Hub datasets \['openai/gsm8k'\].*switched off": dict(source="openai/gsm8k"),
        r"source='embedded' generates its own splits.*GSM8K \*test\*": dict(test="openai/gsm8k"),
    }
    for message, overrides in bad.items():
        with pytest.raises(ValueError, match=message):
            check_data_config(data_config(**overrides))
