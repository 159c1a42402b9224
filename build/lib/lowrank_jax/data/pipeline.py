"""The data pipeline of a run, from the config's `data` block: checks, then tokenised and batched splits.

`check_data_config` runs before anything heavy (no data is read); `build_batches` turns loaded Splits into the
training iterator and the validation pass.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import numpy as np

from lowrank_jax.data.batching import BatchIterator, evaluation_batches
from lowrank_jax.data.embedded import EMBEDDED_PACKAGE
from lowrank_jax.data.gsm8k_local import gsm8k_dir
from lowrank_jax.data.sources import LOCAL_FILES_HINT, looks_like_path
from lowrank_jax.data.splits import NAMED_SOURCES, Splits
from lowrank_jax.data.template import check_template
from lowrank_jax.data.tokenization import OVERFLOWS, TokenizedExample, pad_id, tokenize_examples


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"config: data.{message}")


def _hub_offline() -> bool:
    import datasets.config  # reads HF_HUB_OFFLINE / HF_DATASETS_OFFLINE the way loading will

    return bool(datasets.config.HF_HUB_OFFLINE)


def check_data_config(cfg) -> None:
    """Validates the `data` block without reading data: names, ranges, paths that must exist, offline Hub ids.

    Raises:
      ValueError: naming the key, the bad value and the fix.
    """
    _require(isinstance(cfg.source, str) and cfg.source != "",
             f"source={cfg.source!r}: use one of {NAMED_SOURCES}, a Hugging Face Hub id or a local path")
    try:
        check_template(cfg.template)
    except ValueError as e:
        raise ValueError(f"config: data.template: {e}") from e
    _require(cfg.max_length >= 2, f"max_length={cfg.max_length} must be >= 2")
    _require(cfg.batch_size > 0, f"batch_size={cfg.batch_size} must be > 0")
    _require(cfg.val_examples >= 0 and cfg.max_train_examples >= 0,
             f"val_examples={cfg.val_examples} and max_train_examples={cfg.max_train_examples} must be >= 0")
    _require(cfg.overflow in OVERFLOWS, f"overflow={cfg.overflow!r}: use one of {OVERFLOWS}")
    if cfg.source == "embedded":
        _require(importlib.util.find_spec("reasoning_gym") is not None,
                 f"source='embedded' needs `pip install {EMBEDDED_PACKAGE}` (it is in requirements.txt)")
        _require(not cfg.train and not cfg.test,
                 f"train={cfg.train!r} / test={cfg.test!r} are set, but source='embedded' generates its own splits. "
                 "Its problems come from templates of GSM8K *test* problems, so it is evaluated on held-out generated "
                 "problems only; to use files, set data.source='local' or 'gsm8k_local'")
        return
    if cfg.source == "gsm8k_local":
        for key in ("train", "test"):
            try:
                gsm8k_dir(cfg[key] or cfg.train)
            except FileNotFoundError as e:
                raise ValueError(f"config: data.{key}: {e}") from e
        return
    _require(cfg.source != "local" or bool(cfg.train),
             "train is empty; source='local' needs data.train=/path/to/train.jsonl (or a directory)")
    for key in ("source", "train", "test"):
        path = cfg[key]
        _require(not path or not looks_like_path(path) or os.path.exists(os.path.expanduser(path)),
                 f"{key}={path!r} does not exist; {LOCAL_FILES_HINT}")
    hub_ids = [v for v in (cfg.source, cfg.test) if v and v not in NAMED_SOURCES and not looks_like_path(v)]
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
