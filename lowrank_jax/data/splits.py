"""The train / validation / test items of a run, from the config's `data` block.

Sources: 'embedded' (generated offline, see embedded.py), 'gsm8k' (the Hub's `openai/gsm8k`, or the GSM8K directory
`data.train` names), 'local' (files or directories named by `data.train` / `data.test`), or a Hugging Face Hub id;
`data.format` and `data.*_field` say how records map to items (formats.py). Validation problems are held out of the
training examples by `data.val_seed` (not `data.seed`, so runs that differ in seed or data order are scored on the
same problems), except for 'embedded', which generates its own disjoint validation problems.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lowrank_jax.data.embedded import embedded_examples
from lowrank_jax.data.example import Conversation, Example, Text
from lowrank_jax.data.formats import RecordFormat
from lowrank_jax.data.gsm8k import read_gsm8k
from lowrank_jax.data.sources import read_examples, read_local

# Sizes of the generated embedded splits (GSM8K's own sizes); `data.max_train_examples` caps the training split.
EMBEDDED_TRAIN_SIZE = 7473
EMBEDDED_TEST_SIZE = 1319
NAMED_SOURCES = ("embedded", "gsm8k", "local")
Item = Example | Conversation | Text


class Splits(NamedTuple):
    """The items of one run; `test` may be empty when the config names no evaluation data."""

    train: list[Item]
    validation: list[Item]
    test: list[Item]


def hold_out(examples: list[Item], count: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Splits off `count` examples chosen by `seed`: returns (rest in original order, held-out in random order).

    >>> rest, held = hold_out([Example(str(i), "") for i in range(5)], 2, seed=0)
    >>> len(rest), len(held), sorted(e.query for e in rest + held)
    (3, 2, ['0', '1', '2', '3', '4'])
    """
    if not 0 <= count < len(examples):
        raise ValueError(f"cannot hold out {count} validation examples from {len(examples)} training examples; "
                         "lower data.val_examples")
    order = np.random.default_rng(seed).permutation(len(examples))
    held = set(order[:count].tolist())
    return ([e for i, e in enumerate(examples) if i not in held], [examples[i] for i in order[:count]])


def load_splits(cfg) -> Splits:
    """Reads the items the config's `data` block names.

    Args:
      cfg: the `data` ConfigDict: `source`, `train`, `test` (paths or Hub ids), `hub_config` (of the source),
        `format` and the `*_field` column names, `val_examples`, `max_train_examples` (0 = all), `seed`, `val_seed`.

    Returns:
      Splits; the training split is capped at `max_train_examples` after the validation hold-out.
    """
    limit = cfg.max_train_examples or None
    if cfg.source == "embedded":
        test = embedded_examples("test", EMBEDDED_TEST_SIZE, cfg.seed)
        validation = (embedded_examples("validation", cfg.val_examples, cfg.seed, exclude={e.query for e in test})
                      if cfg.val_examples else [])
        held_out = {e.query for e in test + validation}
        train = embedded_examples("train", limit or EMBEDDED_TRAIN_SIZE, cfg.seed, exclude=held_out)
        return Splits(train, validation, test)
    record_format = RecordFormat.from_config(cfg)
    if cfg.source == "gsm8k":
        train, test = read_gsm8k("train", cfg.train), read_gsm8k("test", cfg.test or cfg.train)
    elif cfg.source == "local":
        if not cfg.train:
            raise ValueError("data.source='local' needs data.train=/path/to/train.jsonl (or a directory)")
        train = read_local(cfg.train, "train", record_format)
        test = read_local(cfg.test, "test", record_format) if cfg.test else []
    else:
        train = read_examples(cfg.source, "train", record_format, cfg.hub_config or None)
        test = read_examples(cfg.test, "test", record_format) if cfg.test else []
    train, validation = hold_out(train, cfg.val_examples, cfg.val_seed)
    return Splits(train[:limit], validation, test)
