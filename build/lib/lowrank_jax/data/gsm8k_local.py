"""The real GSM8K from a local directory holding its train.jsonl / test.jsonl (fields question/answer).

By default the directory is `../shared/data/gsm8k` beside the repository; the solutions' calculator annotations
(`<<48/2=24>>`) are removed unless asked to keep them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lowrank_jax.data.example import Example
from lowrank_jax.data.sources import read_local

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GSM8K_DIR = REPO_ROOT.parent / "shared" / "data" / "gsm8k"
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(solution: str) -> str:
    """Removes GSM8K's calculator annotations.

    >>> strip_calculator_annotations("48/2 = <<48/2=24>>24 clips")
    '48/2 = 24 clips'
    """
    return _CALCULATOR_ANNOTATION.sub("", solution)


def gsm8k_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The GSM8K directory to read: `data_dir`, or DEFAULT_GSM8K_DIR when it is None or empty.

    Raises:
      FileNotFoundError: the directory lacks train.jsonl or test.jsonl; the message says how to point elsewhere.
    """
    directory = Path(os.path.expanduser(data_dir)).resolve() if data_dir else DEFAULT_GSM8K_DIR
    missing = [name for name in ("train.jsonl", "test.jsonl") if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"GSM8K directory {directory} lacks {missing}; point at a directory holding GSM8K's train.jsonl and "
            "test.jsonl (fields question/answer): --config.data.train=/path/gsm8k --config.data.test=/path/gsm8k, "
            "or use --config.data.source=openai/gsm8k when the Hugging Face Hub is reachable")
    return directory


def read_gsm8k(split: str, data_dir: str | os.PathLike | None = None, keep_calculator_annotations: bool = False
               ) -> list[Example]:
    """GSM8K's 'train' (7,473 problems) or 'test' (1,319) split from a local directory.

    Args:
      split: 'train' or 'test'.
      data_dir: see `gsm8k_dir`.
      keep_calculator_annotations: keep `<<a*b=c>>` in the solutions (off: models then learn plain arithmetic text).
    """
    if split not in ("train", "test"):
        raise ValueError(f"GSM8K has splits 'train' and 'test', not {split!r}; validation problems are held out of "
                         "'train' by lowrank_jax.data.hold_out")
    examples = read_local(gsm8k_dir(data_dir) / f"{split}.jsonl", fields=("question", "answer"))
    if keep_calculator_annotations:
        return examples
    return [Example(e.query, strip_calculator_annotations(e.response)) for e in examples]
