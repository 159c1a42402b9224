"""The data pipeline of a run, from the config's `data` block: checks, then tokenised and batched splits.

`check_data_config` runs before anything heavy (it reads local data files in full: they are small beside a model);
`build_batches` turns loaded Splits into the training iterator and the validation pass.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator

import numpy as np

from lowrank_jax.data.batching import BatchIterator, evaluation_batches
from lowrank_jax.data.embedded import EMBEDDED_PACKAGE
from lowrank_jax.data.formats import RecordFormat, check_record_format
from lowrank_jax.data.gsm8k import GSM8K_HUB_ID, read_gsm8k
from lowrank_jax.data.sources import LOCAL_FILES_HINT, looks_like_path, read_local
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


def _check_local(cfg, key: str, split: str, read: Callable[..., list], *args) -> None:
    """Reads a local split in full (`read(*args)`), re-raising its error (the file, the line, the fix) under
    `data.<key>`: data files are small beside a model, so every record is checked before any weight loads. A
    training split must keep examples to train on beside the `data.val_examples` held out of it."""
    try:
        items = read(*args)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"config: data.{key}: {e}") from e
    _require(split != "train" or cfg.val_examples < len(items),
             f"val_examples={cfg.val_examples} are held out of the {len(items)} training examples in "
             f"data.{key}={cfg[key]!r}, which leaves none to train on; lower data.val_examples or add examples")


def check_data_config(cfg, *, needs_test: bool = False) -> None:
    """Validates the `data` block before any model is loaded: names, limits, paths, every record of local data
    files (errors name the file and line), offline Hub ids, and (with `needs_test`) that there is a test split to
    evaluate on.

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
    _require(cfg.grad_accum >= 0, f"grad_accum={cfg.grad_accum} must be 0 (the memory plan picks the number of "
             "micro-batches) or the number of micro-batches per step")
    _require(cfg.batch_size > 0 and (cfg.grad_accum == 0 or cfg.batch_size % cfg.grad_accum == 0),
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
        for key in ("train", "test"):
            if cfg[key] or cfg.train:
                _check_local(cfg, key, key, read_gsm8k, key, cfg[key] or cfg.train)
        _require(bool(cfg.train) or not _hub_offline(),
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
            _check_local(cfg, key, split, read_local, cfg[key], split, record_format)
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
