"""Data sources: local json/jsonl/parquet files, directories and save_to_disk directories in every record format,
the Hub when offline, GSM8K (a directory, or the Hub), the embedded generated set, validation hold-out, load_splits
and check_data_config. Only data written here is read, and the real GSM8K test split by the path conftest passes."""

import json

import datasets
import ml_collections
import pytest

from lowrank_jax.data import (Conversation, Example, RecordFormat, Text, check_data_config, embedded_examples,
                              gold_answer, hold_out, load_splits, normalize_number, read_examples, read_gsm8k, read_hub,
                              read_local)

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
    """The `data` block of configs/common.py."""
    cfg = ml_collections.ConfigDict(dict(source="embedded", train="", test="", hub_config="", format="auto",
                                         messages_field="messages", prompt_field="prompt", completion_field="completion",
                                         text_field="text", query_field="", response_field="", template="alpaca",
                                         max_length=256, batch_size=4, grad_accum=1, packing=True, epochs=1.0,
                                         max_train_examples=0, val_examples=4, val_seed=0, seed=0, overflow="truncate"))
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
    assert read_local_rows([{"problem": "p", "solution": "s"}],
                           RecordFormat(query_field="problem", response_field="solution")) == [Example("p", "s")]
    with pytest.raises(ValueError, match=r"cannot tell the data format from its columns \['problem', 'solution'\].*"
                                         r"--config\.data\.query_field=problem"):
        read_local_rows([{"problem": "p", "solution": "s"}])
    with pytest.raises(ValueError, match=r"rows\d+\.jsonl, line 1 has question=None"):
        read_local_rows([{"question": None, "answer": "a"}])


def test_messages_prompt_completion_and_text_records(read_local_rows):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?"},
            {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 + 4?"},
            {"role": "assistant", "content": "8"}]
    assert read_local_rows([{"messages": chat, "id": 1}]) == [Conversation(tuple(chat), 0)]
    assert read_local_rows([{"conversations": chat}], RecordFormat(messages_field="conversations")) == [
        Conversation(tuple(chat), 0)]
    # Conversational prompt/completion: the loss starts at the completion (the prompt's assistant turn is context).
    assert read_local_rows([{"prompt": chat[:4], "completion": chat[4:]}]) == [Conversation(tuple(chat), 4)]
    assert read_local_rows([{"prompt": "2 + 3 =", "completion": " 5"}]) == [Example("2 + 3 =", " 5")]
    assert read_local_rows([{"text": "Once upon a time."}]) == [Text("Once upon a time.")]
    assert read_local_rows([{"body": "Hello."}], RecordFormat("text", text_field="body")) == [Text("Hello.")]
    # A record with every kind of column: 'auto' prefers messages, an explicit format picks its columns.
    both = [{"messages": chat, "text": "plain", "question": "q", "answer": "a"}]
    assert read_local_rows(both) == [Conversation(tuple(chat), 0)]
    assert read_local_rows(both, RecordFormat("query_response")) == [Example("q", "a")]
    assert read_local_rows(both, RecordFormat("text")) == [Text("plain")]


def test_bad_records_name_the_record_the_column_and_the_fix(read_local_rows, tmp_path):
    user_only = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match=r"line 2: messages has no 'assistant' message.*at least one assistant"):
        read_local_rows([{"messages": user_only + [{"role": "assistant", "content": "hello"}]},
                         {"messages": user_only}])
    with pytest.raises(ValueError, match=r"line 1: messages\[0\]=.*'role' in \('system', 'user', 'assistant'"):
        read_local_rows([{"messages": [{"role": "human", "value": "hi"}]}])
    with pytest.raises(ValueError, match=r"line 1: completion has no 'assistant' message"):
        read_local_rows([{"prompt": user_only, "completion": user_only}])
    with pytest.raises(ValueError, match=r"both must be strings, or both lists of chat messages"):
        read_local_rows([{"prompt": "hi", "completion": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(ValueError, match=r"data\.format='messages' needs the column\(s\) \['messages'\] but the data "
                                         r"has \['text'\]; set data\.messages_field"):
        read_local_rows([{"text": "x"}], RecordFormat("messages"))
    with pytest.raises(ValueError, match=r"text='' must be a non-empty string"):
        read_local_rows([{"text": ""}])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl holds no records; point data\.train / data\.test"):
        read_local(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON \(Expecting value: column 10\)"):
        read_local(tmp_path / "bad.jsonl")


def test_save_to_disk_directories(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    train = [{"messages": chat, "source": "a"}] * 3
    datasets.Dataset.from_list(train).save_to_disk(str(tmp_path / "one"))
    assert read_local(tmp_path / "one") == [Conversation(tuple(chat), 0)] * 3
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "test": datasets.Dataset.from_list([{"text": "t"}])}).save_to_disk(str(tmp_path / "dict"))
    assert read_local(tmp_path / "dict", "test") == [Text("t")]
    assert read_examples(str(tmp_path / "dict"), "train") == [Conversation(tuple(chat), 0)] * 3
    with pytest.raises(ValueError, match=r"has splits \['test', 'train'\], not 'validation'"):
        read_local(tmp_path / "dict", "validation")


@pytest.fixture
def read_local_rows(tmp_path):
    def read(rows, record_format=RecordFormat()):
        path = write_jsonl(tmp_path / f"rows{len(list(tmp_path.iterdir()))}.jsonl", rows)
        return read_local(path, record_format=record_format)
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


def test_gsm8k_reads_the_hub_by_default_or_a_named_directory(tmp_path, shared_gsm8k_dir):
    with pytest.raises(ConnectionError, match=r"'openai/gsm8k' \(config 'main'\), split 'test'"):
        read_gsm8k("test")                                        # no directory: the Hub (offline in tests)
    with pytest.raises(FileNotFoundError, match=r"lacks \['train\.jsonl', 'test\.jsonl'\].*--config\.data\.train="):
        read_gsm8k("train", tmp_path)
    test = read_gsm8k("test", shared_gsm8k_dir)                   # the real GSM8K, by the path conftest passes
    assert len(test) == 1319 and not any("<<" in e.response for e in test)
    assert all(gold_answer(e.response) is not None for e in test)


def test_hold_out_is_a_seeded_partition():
    examples = [Example(str(i), "") for i in range(50)]
    rest, held = hold_out(examples, 10, seed=3)
    assert len(held) == 10 and sorted(rest + held) == sorted(examples)
    assert rest == [e for e in examples if e not in held]                  # training order is kept
    assert hold_out(examples, 10, seed=3) == (rest, held)
    assert set(hold_out(examples, 10, seed=4)[1]) != set(held)
    with pytest.raises(ValueError, match="lower data.val_examples"):
        hold_out(examples, 50, seed=0)


def test_load_splits_gsm8k_and_local(gsm8k_dir):
    splits = load_splits(data_config(source="gsm8k", train=str(gsm8k_dir), val_examples=4,
                                     max_train_examples=5, val_seed=1, seed=7))
    everything = read_gsm8k("train", gsm8k_dir)
    rest, held = hold_out(everything, 4, seed=1)
    assert splits.validation == held and splits.train == rest[:5]
    other_seed = load_splits(data_config(source="gsm8k", train=str(gsm8k_dir), val_examples=4, val_seed=1,
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
    check_data_config(data_config(), needs_test=True)
    check_data_config(data_config(source="gsm8k", train=str(gsm8k_dir)), needs_test=True)
    check_data_config(data_config(source="local", train=str(gsm8k_dir / "train.jsonl")))
    check_data_config(data_config(source="local", train=str(gsm8k_dir), test=str(gsm8k_dir)), needs_test=True)
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"conversations": [{"role": "user", "content": "hi"},
                                                                     {"role": "assistant", "content": "hello"}]}])
    check_data_config(data_config(source="local", train=str(chat), format="messages", messages_field="conversations",
                                  val_examples=0))
    (tmp_path / "empty.jsonl").write_text("")
    bad = {
        "data.template": dict(template="Question: {question}"),
        "data.overflow": dict(overflow="wrap"),
        r"data.max_length=8 is too short.*at least 16": dict(max_length=8),
        r"data.batch_size=6 must be a positive multiple of data.grad_accum=4": dict(batch_size=6, grad_accum=4),
        "data.val_examples": dict(val_examples=-1),
        r"data.format='chat' is unknown; choose one of \('auto', 'messages'": dict(format="chat"),
        r"data.query_field='problem' / data.response_field='': set both": dict(query_field="problem"),
        r"data.text_field='' must name a column": dict(text_field=""),
        "data.train: GSM8K directory": dict(source="gsm8k", train=str(tmp_path / "missing")),
        r"source='gsm8k' reads openai/gsm8k from the Hugging Face Hub, which is switched off.*--config\.data\.train=":
            dict(source="gsm8k"),
        "data.train is empty": dict(source="local"),
        "data.train: .*missing.jsonl.* does not exist": dict(source="local", train=str(tmp_path / "missing.jsonl")),
        r"data.train: .*chat\.jsonl: data.format='messages' needs the column\(s\) \['messages'\]":
            dict(source="local", train=str(chat), format="messages"),
        r"data.train: .*chat\.jsonl: cannot tell the data format": dict(source="local", train=str(chat)),
        r"data.train: .*empty\.jsonl holds no records": dict(source="local", train=str(tmp_path / "empty.jsonl")),
        r"data.test: .*no file matches split 'test'": dict(source="local", train=str(gsm8k_dir / "train.jsonl"),
                                                           test=str(tmp_path)),
        r"Hub datasets \['openai/gsm8k'\].*switched off": dict(source="openai/gsm8k"),
        r"source='embedded' generates its own splits.*GSM8K \*test\*": dict(test="openai/gsm8k"),
    }
    for message, overrides in bad.items():
        with pytest.raises(ValueError, match=message):
            check_data_config(data_config(**overrides))


def test_check_data_config_needs_a_test_split_when_the_run_evaluates(gsm8k_dir):
    """Evaluation after training needs test data: a run without it fails before training, not after."""
    train_only = data_config(source="local", train=str(gsm8k_dir / "train.jsonl"))
    check_data_config(train_only, needs_test=False)
    with pytest.raises(ValueError, match=r"data.test is empty, but the run evaluates on a test split.*"
                                         r"--config\.data\.test=.*--config\.eval\.after=False"):
        check_data_config(train_only, needs_test=True)
