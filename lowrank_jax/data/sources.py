"""Reads Examples, Conversations or Texts (see formats.py) from local json/jsonl/parquet files, a directory of them,
a `datasets.Dataset.save_to_disk` directory, or the Hugging Face Hub.

Failures say which name or path failed and how to point the config at local files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lowrank_jax.data.example import Conversation, Example, Text
from lowrank_jax.data.formats import RecordFormat, expected_columns, records_to_examples

# Data file types: JSON lines or a JSON array (read here, so errors name the line), parquet (through `datasets`).
FILE_FORMATS = (".jsonl", ".json", ".parquet")
# Hub datasets that need a config name to load.
HUB_CONFIG_NAMES = {"openai/gsm8k": "main"}
# Files `datasets` writes into a save_to_disk directory: a Dataset, or a DatasetDict of splits.
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")
LOCAL_FILES_HINT = ("point at local files instead: --config.data.source=local --config.data.train=/path/train.jsonl "
                    "--config.data.test=/path/test.jsonl (json, jsonl or parquet; a directory holding "
                    "train.* / test.* files, or a datasets save_to_disk directory, works too)")


def looks_like_path(source: str) -> bool:
    """True for an existing path or a string that can only be a path (a data file name, ./ ../ / ~ prefixes)."""
    return (os.path.exists(os.path.expanduser(source)) or source.startswith((".", "/", "~"))
            or Path(source).suffix in FILE_FORMATS)


def find_split_file(directory: Path, split: str) -> Path:
    """The data file for `split` in `directory`: `{split}.{jsonl,json,parquet}`, else the one file naming it.

    Raises:
      FileNotFoundError: no file, or several, match; the message lists what the directory holds.
    """
    files = sorted(p for p in directory.iterdir() if p.suffix in FILE_FORMATS)
    exact = [p for p in files if p.stem == split]
    named = exact or [p for p in files if split in p.stem]
    if len(named) == 1:
        return named[0]
    found = [p.name for p in files] or "no json/jsonl/parquet files"
    problem = "several files match" if named else "no file matches"
    raise FileNotFoundError(f"{directory}: {problem} split {split!r} (found: {found}); name one {split}.jsonl, "
                            f"or pass the file itself")


def _read_saved(directory: Path, split: str):
    """The records of a `save_to_disk` directory (a Dataset, or `split` of a DatasetDict)."""
    import datasets  # heavy import (pyarrow, pandas): only when data is actually read

    saved = datasets.load_from_disk(str(directory))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise ValueError(f"{directory}: the saved DatasetDict has splits {sorted(saved)}, not {split!r}; save "
                             f"a {split!r} split, or point at a directory saved from one Dataset")
        saved = saved[split]
    return saved


def read_local(path: str | os.PathLike, split: str = "train", record_format: RecordFormat = RecordFormat()
               ) -> list[Example | Conversation | Text]:
    """Items from a json/jsonl/parquet file, from the file for `split` in a directory, or from a `save_to_disk`
    directory.

    Args:
      path: a data file, a directory with e.g. train.jsonl and test.jsonl, or a save_to_disk directory.
      split: which file (or saved split) to take from a directory (ignored for a file or a saved Dataset).
      record_format: which columns hold what (see formats.RecordFormat).

    Raises:
      FileNotFoundError: the path does not exist, or the directory has no unique file for `split`.
      ValueError: unsupported extension, bad JSON, no records, or records that do not fit `record_format`.
    """
    resolved = Path(os.path.expanduser(path)).resolve()
    if not resolved.exists():
        raise FileNotFoundError(f"data path {str(path)!r} (resolved to {resolved}) does not exist; {LOCAL_FILES_HINT}")
    if resolved.is_dir() and any((resolved / name).is_file() for name in SAVED_DATASET_FILES):
        records = _read_saved(resolved, split)
        return records_to_examples(records, records.column_names, str(resolved), record_format)
    file = find_split_file(resolved, split) if resolved.is_dir() else resolved
    if file.suffix not in FILE_FORMATS:
        raise ValueError(f"{file}: unsupported data file type {file.suffix!r}; use one of {sorted(FILE_FORMATS)}")
    if file.suffix == ".parquet":
        import datasets  # heavy import (pyarrow, pandas): only for parquet files

        records = datasets.load_dataset("parquet", data_files=str(file), split="train")
        return records_to_examples(records, records.column_names, str(file), record_format)
    records, locations = _read_json(file, record_format)
    columns = list(dict.fromkeys(key for record in records for key in record))
    return records_to_examples(records, columns, str(file), record_format, locations)


def _read_json(file: Path, record_format: RecordFormat) -> tuple[list[dict], list[str]]:
    """The records of a JSON-lines file (.jsonl, or .json), or of a .json file holding one array of objects, and
    where each one is ('line 21', 'record 3'); read without `datasets`, so that errors name the true line.

    Raises:
      ValueError: naming the file, the line (or record) and what each line must hold under `record_format`.
    """
    data = file.read_bytes()
    expected = f"one JSON object per line with {expected_columns(record_format)}"
    if file.suffix == ".json" and data.lstrip()[:1] == b"[":  # a JSON document: one array of records
        try:
            records = json.loads(data)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            where = f", line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            raise ValueError(f"{file}{where}: not valid JSON ({getattr(e, 'msg', e)}); expected a JSON array of "
                             f"objects, or {expected}") from e
        locations = [f"record {i}" for i in range(len(records))]  # numbered as `records_to_examples` does
    else:
        records, locations = [], []
        for number, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as e:
                    problem = f"{e.msg}: column {e.colno}" if isinstance(e, json.JSONDecodeError) else e
                    raise ValueError(f"{file}, line {number}: not valid JSON ({problem}): {_shorten(line)}; "
                                     f"expected {expected}; fix or remove that line") from e
                locations.append(f"line {number}")
    for record, location in zip(records, locations):
        if not isinstance(record, dict):
            raise ValueError(f"{file}, {location} holds {_shorten(json.dumps(record).encode())}, not a JSON object; "
                             f"expected {expected}")
    return records, locations


def _shorten(line: bytes, limit: int = 80) -> str:
    """The start of a line of a data file, for error messages."""
    text = line.decode("utf-8", errors="replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def read_hub(name: str, split: str = "train", config_name: str | None = None,
             record_format: RecordFormat = RecordFormat()) -> list[Example | Conversation | Text]:
    """Items from a Hugging Face Hub dataset (`openai/gsm8k`, `meta-math/MetaMathQA`, ...).

    Args:
      name: the Hub dataset id.
      split: 'train', 'test', ... as the dataset defines them.
      config_name: the dataset's config; defaults to HUB_CONFIG_NAMES (e.g. 'main' for openai/gsm8k).
      record_format: which columns hold what (see formats.RecordFormat).

    Raises:
      ConnectionError: offline, or the Hub is unreachable; FileNotFoundError: no such dataset; ValueError: no such
      split. Each message names the dataset and how to use local files instead.
    """
    import datasets  # heavy import (pyarrow, pandas): only when data is actually read

    config_name = config_name or HUB_CONFIG_NAMES.get(name)
    what = f"dataset {name!r}" + (f" (config {config_name!r})" if config_name else "") + f", split {split!r}"
    try:
        dataset = datasets.load_dataset(name, config_name, split=split)
    except ConnectionError as e:
        raise ConnectionError(f"cannot reach the Hugging Face Hub for {what} ({e}); {LOCAL_FILES_HINT}") from e
    except FileNotFoundError as e:  # DatasetNotFoundError subclasses it
        raise FileNotFoundError(f"{what} was not found on the Hugging Face Hub ({e}); check the name, or "
                                f"{LOCAL_FILES_HINT}") from e
    except ValueError as e:  # unknown split or config
        raise ValueError(f"cannot load {what}: {e}") from e
    return records_to_examples(dataset, dataset.column_names, name, record_format)


def read_examples(source: str, split: str = "train", record_format: RecordFormat = RecordFormat(),
                  hub_config: str | None = None) -> list[Example | Conversation | Text]:
    """`read_local` for paths, `read_hub` (with `hub_config`) for anything else (see `looks_like_path`)."""
    if looks_like_path(source):
        return read_local(source, split, record_format)
    return read_hub(source, split, hub_config, record_format)
