"""Reads Examples from local json/jsonl/parquet files (a file or a directory) or from the Hugging Face Hub.

Both go through `datasets`; failures say which name or path failed and how to point the config at local files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lowrank_jax.data.example import Example, detect_fields, records_to_examples

# `datasets` builder per file extension.
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Hub datasets that need a config name to load.
HUB_CONFIG_NAMES = {"openai/gsm8k": "main", "gsm8k": "main"}
LOCAL_FILES_HINT = ("point at local files instead: --config.data.source=local --config.data.train=/path/train.jsonl "
                    "--config.data.test=/path/test.jsonl (json, jsonl or parquet; a directory holding "
                    "train.* / test.* files works too)")


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


def read_local(path: str | os.PathLike, split: str = "train", fields: tuple[str, str] | None = None
               ) -> list[Example]:
    """Examples from a json/jsonl/parquet file, or from the file for `split` in a directory.

    Args:
      path: a data file, or a directory with e.g. train.jsonl and test.jsonl.
      split: which file to take from a directory (ignored for a file).
      fields: (query field, response field); detected from the columns when None.

    Raises:
      FileNotFoundError: the path does not exist, or the directory has no unique file for `split`.
      ValueError: unsupported extension, or fields that cannot be detected.
    """
    resolved = Path(os.path.expanduser(path)).resolve()
    if not resolved.exists():
        raise FileNotFoundError(f"data path {str(path)!r} (resolved to {resolved}) does not exist; {LOCAL_FILES_HINT}")
    file = find_split_file(resolved, split) if resolved.is_dir() else resolved
    if file.suffix not in FILE_FORMATS:
        raise ValueError(f"{file}: unsupported data file type {file.suffix!r}; use one of {sorted(FILE_FORMATS)}")
    if file.suffix == ".jsonl":  # JSON lines need no pyarrow: read them directly
        with open(file) as f:
            records = [json.loads(line) for line in f if line.strip()]
        columns = list(records[0]) if records else []
    else:
        import datasets  # heavy import (pyarrow, pandas): only for json / parquet files

        records = datasets.load_dataset(FILE_FORMATS[file.suffix], data_files=str(file), split="train")
        columns = records.column_names
    return records_to_examples(records, fields or detect_fields(columns, str(file)), str(file))


def read_hub(name: str, split: str = "train", config_name: str | None = None,
             fields: tuple[str, str] | None = None) -> list[Example]:
    """Examples from a Hugging Face Hub dataset (`openai/gsm8k`, `meta-math/MetaMathQA`, ...).

    Args:
      name: the Hub dataset id.
      split: 'train', 'test', ... as the dataset defines them.
      config_name: the dataset's config; defaults to HUB_CONFIG_NAMES (e.g. 'main' for openai/gsm8k).
      fields: (query field, response field); detected from the columns when None.

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
    return records_to_examples(dataset, fields or detect_fields(dataset.column_names, name), name)


def read_examples(source: str, split: str = "train", fields: tuple[str, str] | None = None) -> list[Example]:
    """`read_local` for paths, `read_hub` for anything else (see `looks_like_path`)."""
    if looks_like_path(source):
        return read_local(source, split, fields)
    return read_hub(source, split, fields=fields)
