"""The real GSM8K (7,473 training / 1,319 test problems, fields question/answer): from the Hugging Face Hub
(`openai/gsm8k`, config `main`), or from a local directory holding its train.jsonl / test.jsonl.

The solutions' calculator annotations (`<<48/2=24>>`) are removed unless asked to keep them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lowrank_jax.data.example import Example
from lowrank_jax.data.formats import RecordFormat
from lowrank_jax.data.sources import read_hub, read_local

GSM8K_HUB_ID = "openai/gsm8k"
GSM8K_FORMAT = RecordFormat("query_response", query_field="question", response_field="answer")
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(solution: str) -> str:
    """Removes GSM8K's calculator annotations.

    >>> strip_calculator_annotations("48/2 = <<48/2=24>>24 clips")
    '48/2 = 24 clips'
    """
    return _CALCULATOR_ANNOTATION.sub("", solution)


def gsm8k_dir(data_dir: str | os.PathLike) -> Path:
    """The local GSM8K directory `data_dir`, checked.

    Raises:
      FileNotFoundError: the directory lacks train.jsonl or test.jsonl; the message says how to point elsewhere.
    """
    directory = Path(os.path.expanduser(data_dir)).resolve()
    missing = [name for name in ("train.jsonl", "test.jsonl") if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"GSM8K directory {directory} lacks {missing}; point at a directory holding GSM8K's train.jsonl and "
            "test.jsonl (fields question/answer): --config.data.train=/path/gsm8k, or leave data.train empty to "
            f"read {GSM8K_HUB_ID} from the Hugging Face Hub")
    return directory


def read_gsm8k(split: str, data_dir: str | os.PathLike | None = None, keep_calculator_annotations: bool = False
               ) -> list[Example]:
    """GSM8K's 'train' or 'test' split, from `data_dir` when given, else from the Hub.

    Args:
      split: 'train' or 'test'.
      data_dir: a directory with GSM8K's train.jsonl / test.jsonl; None or '' reads `openai/gsm8k` (config
        'main') through `datasets`.
      keep_calculator_annotations: keep `<<a*b=c>>` in the solutions (off: models then learn plain arithmetic text).
    """
    if split not in ("train", "test"):
        raise ValueError(f"GSM8K has splits 'train' and 'test', not {split!r}; validation problems are held out of "
                         "'train' by lowrank_jax.data.hold_out")
    if data_dir:
        examples = read_local(gsm8k_dir(data_dir) / f"{split}.jsonl", record_format=GSM8K_FORMAT)
    else:
        examples = read_hub(GSM8K_HUB_ID, split, record_format=GSM8K_FORMAT)
    if keep_calculator_annotations:
        return examples
    return [Example(e.query, strip_calculator_annotations(e.response)) for e in examples]
