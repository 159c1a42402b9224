"""The data pipeline of a run, from the config's `data` block: checks, then tokenised and batched splits.

`check_data_config` runs before anything heavy (at most the first line of a local file is read); `build_batches` turns loaded Splits into the
training iterator and the validation pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lowrank_jax.data.batching import BatchIterator, evaluation_batches
from lowrank_jax.data.embedded import EMBEDDED_PACKAGE
from lowrank_jax.data.formats import RecordFormat, check_record_format, resolve_format
from lowrank_jax.data.gsm8k import GSM8K_HUB_ID, gsm8k_dir
from lowrank_jax.data.sources import LOCAL_FILES_HINT, SAVED_DATASET_FILES, find_split_file, looks_like_path
from lowrank_jax.data.splits import NAMED_SOURCES, Splits
from lowrank_jax.data.template import check_template
from lowrank_jax.data.tokenization import OVERFLOWS, TokenizedExample, pad_id, tokenize_examples

MIN_MAX_LENGTH = 16  # data.max_length below this leaves no room for a prompt and an answer


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"config: data.{message}")


def _hub_offline() -> bool:
    import datasets.config  # reads HF_HUB_OFFLINE / HF_DATASETS_OFFLINE the way loading will

    return bool(datasets.config.HF_HUB_OFFLINE)


def _first_jsonl_columns(path: Path) -> list[str] | None:
    """The keys of the first record of a .jsonl file (None for other files); a cheap look before loading."""
    if path.suffix != ".jsonl":
        return None
    with open(path) as f:
        line = next((line for line in f if line.strip()), None)
    if line is None:
        raise ValueError(f"{path} is empty; point at a file with one JSON record per line")
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: the first line is {line[:80]!r}, not a JSON object (one record per line)")
    return list(record)


def _check_local_split(key: str, path: str, split: str, record_format: RecordFormat) -> None:
    """`path` exists; a directory has a file for `split`; a .jsonl file's first record fits the format."""
    resolved = Path(os.path.expanduser(path))
    _require(resolved.exists(), f"{key}={path!r} does not exist; {LOCAL_FILES_HINT}")
    if resolved.is_dir():
        if any((resolved / name).is_file() for name in SAVED_DATASET_FILES):
            return
        try:
            resolved = find_split_file(resolved, split)
        except FileNotFoundError as e:
            raise ValueError(f"config: data.{key}: {e}") from e
    try:  # JSONDecodeError is a ValueError
        columns = _first_jsonl_columns(resolved)
        if columns is not None:
            resolve_format(record_format, columns, str(resolved))
    except ValueError as e:
        raise ValueError(f"config: data.{key}: {e}") from e


def check_data_config(cfg, *, needs_test: bool = False) -> None:
    """Validates the `data` block before any model or data is loaded: names, limits, paths, the first record of
    local .jsonl files, offline Hub ids, and (with `needs_test`) that there is a test split to evaluate on.

    Args:
      cfg: the `data` ConfigDict.
      needs_test: whether the run evaluates on the test split (`eval.after` or `eval.before_and_after`).

    Raises:
      ValueError: naming the key, the bad value and the fix.
    """
    _require(isinstance(cfg.source, str) and cfg.source != "",
             f"source={cfg.source!r}: use one of {NAMED_SOURCES}, a Hugging Face Hub id or a local path")
    try:
        check_template(cfg.template)
    except ValueError as e:
        raise ValueError(f"config: data.template: {e}") from e
    record_format = RecordFormat.from_config(cfg)
    try:
        check_record_format(record_format)
    except ValueError as e:
        raise ValueError(f"config: {e}") from e
    _require(cfg.max_length >= MIN_MAX_LENGTH,
             f"max_length={cfg.max_length} is too short for a prompt and an answer (at least {MIN_MAX_LENGTH})")
    _require(cfg.batch_size > 0 and cfg.grad_accum > 0 and cfg.batch_size % cfg.grad_accum == 0,
             f"batch_size={cfg.batch_size} must be a positive multiple of data.grad_accum={cfg.grad_accum}")
    _require(cfg.val_examples >= 0 and cfg.max_train_examples >= 0,
             f"val_examples={cfg.val_examples} and max_train_examples={cfg.max_train_examples} must be >= 0")
    _require(cfg.overflow in OVERFLOWS, f"overflow={cfg.overflow!r}: use one of {OVERFLOWS}")
    if cfg.source == "embedded":
        _require(importlib.util.find_spec("reasoning_gym") is not None,
                 f"source='embedded' needs `pip install {EMBEDDED_PACKAGE}` (it is in requirements.txt)")
        _require(not cfg.train and not cfg.test,
                 f"train={cfg.train!r} / test={cfg.test!r} are set, but source='embedded' generates its own splits. "
                 "Its problems come from templates of GSM8K *test* problems, so it is evaluated on held-out generated "
                 "problems only; to use files, set data.source='local' or 'gsm8k'")
        return
    if cfg.source == "gsm8k":
        if cfg.train or cfg.test:
            for key in ("train", "test"):
                try:
                    gsm8k_dir(cfg[key] or cfg.train)
                except FileNotFoundError as e:
                    raise ValueError(f"config: data.{key}: {e}") from e
        else:
            _require(not _hub_offline(),
                     f"source='gsm8k' reads {GSM8K_HUB_ID} from the Hugging Face Hub, which is switched off "
                     "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); point at a local copy with "
                     "--config.data.train=/path/gsm8k (a directory with train.jsonl and test.jsonl)")
        return
    _require(cfg.source != "local" or bool(cfg.train),
             "train is empty; source='local' needs data.train=/path/to/train.jsonl (or a directory)")
    _require(not needs_test or bool(cfg.test),
             f"test is empty, but the run evaluates on a test split (eval.after / eval.before_and_after) and "
             f"source={cfg.source!r} has none of its own; set --config.data.test=/path/test.jsonl (or a Hub id), or "
             "--config.eval.after=False --config.eval.before_and_after=False to train without evaluation")
    train_key = "train" if cfg.source == "local" else "source"  # where the training data is named
    for key, split in ((train_key, "train"), ("test", "test")):
        if cfg[key] and looks_like_path(cfg[key]):
            _check_local_split(key, cfg[key], split, record_format)
    hub_ids = [cfg[key] for key in (train_key, "test") if cfg[key] and not looks_like_path(cfg[key])]
    _require(not hub_ids or not _hub_offline(),
             f"source/test name Hugging Face Hub datasets {hub_ids}, but the Hub is switched off (HF_HUB_OFFLINE / "
             f"HF_DATASETS_OFFLINE); {LOCAL_FILES_HINT}")


class Batches:
    """A run's batches: `train` (endless, resumable) and `validation()` (one fresh pass per call)."""

    def __init__(self, train: BatchIterator, validation_examples: list[TokenizedExample], *, global_batch_size: int,
                 seq_len: int, packing: bool, pad_id: int, process_index: int, process_count: int):
        self.train = train
        self._validation_examples = validation_examples
        self._layout = dict(global_batch_size=global_batch_size, seq_len=seq_len, packing=packing, pad_id=pad_id,
                            process_index=process_index, process_count=process_count)

    def steps_per_epoch(self) -> int:
        """Global batches in the first training epoch (later epochs differ by a row or so when packing)."""
        return self.train.steps_in_epoch(0)

    def validation(self) -> Iterator[dict[str, np.ndarray]]:
        """Every row of the validation batches, in every process (evaluation runs replicated; nothing when there
        is no validation split)."""
        if not self._validation_examples:
            return iter(())
        return evaluation_batches(self._validation_examples, **{**self._layout, "process_index": 0,
                                                                "process_count": 1})


def build_batches(splits: Splits, tokenizer, cfg, *, process_index: int = 0, process_count: int = 1) -> Batches:
    """Tokenises the training and validation splits and batches them as the `data` block says.

    Args:
      splits: from `load_splits(cfg)`.
      tokenizer: a `transformers` tokenizer with an EOS token.
      cfg: the `data` ConfigDict (`template`, `max_length` = T, `batch_size` = global rows B, `packing`,
        `overflow`, `seed`).
      process_index, process_count: this process among all (jax.process_index(), jax.process_count()).

    Returns:
      Batches whose arrays are (B / process_count, T).
    """
    def tokenize(examples):
        return tokenize_examples(examples, tokenizer, max_length=cfg.max_length, template=cfg.template,
                                 overflow=cfg.overflow)

    layout = dict(global_batch_size=cfg.batch_size, seq_len=cfg.max_length, packing=cfg.packing,
                  pad_id=pad_id(tokenizer), process_index=process_index, process_count=process_count)
    train = BatchIterator(tokenize(splits.train), seed=cfg.seed, **layout)
    validation = tokenize(splits.validation) if splits.validation else []
    return Batches(train, validation, **layout)
