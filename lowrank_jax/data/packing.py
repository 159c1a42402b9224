"""Rows of a batch: which examples share a row (first-fit packing, or one per row), and the row arrays themselves.

A row holds whole examples one after another; `segment_ids` number them 1, 2, ... (0 = padding) and `positions`
restart at 0 in each, so attention and RoPE see every example as if it were alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lowrank_jax.data.tokenization import TokenizedExample

# The arrays of a batch and their dtypes (docs/contracts.md, Data).
BATCH_DTYPES = {"input_ids": np.int32, "loss_mask": np.float32, "segment_ids": np.int32, "positions": np.int32}


def pack_first_fit(lengths: np.ndarray, order: np.ndarray, seq_len: int) -> list[list[int]]:
    """Packs examples, taken in `order`, each into the first row with room for it, else into a new row.

    Args:
      lengths: (n,) token counts, each <= seq_len.
      order: (n,) permutation of example indices.
      seq_len: row length T.

    Returns:
      Rows as lists of example indices, in the order the rows were opened.

    >>> pack_first_fit(np.array([3, 2, 2, 1]), np.arange(4), seq_len=4)
    [[0, 3], [1, 2]]
    """
    free = np.empty(len(order), np.int64)  # room left in each open row; at most one row per example
    rows: list[list[int]] = []
    for index in order.tolist():
        fits = np.flatnonzero(free[:len(rows)] >= lengths[index])
        if fits.size:
            row = int(fits[0])
        else:
            row = len(rows)
            rows.append([])
            free[row] = seq_len
        rows[row].append(index)
        free[row] -= lengths[index]
    return rows


def rows_to_batch(rows: Sequence[Sequence[int]], examples: Sequence[TokenizedExample], seq_len: int,
                  pad_id: int = 0) -> dict[str, np.ndarray]:
    """The batch arrays of `rows` (an empty row is all padding).

    Returns:
      `input_ids` (R, T) int32, `loss_mask` (R, T) float32, `segment_ids` (R, T) int32 (0 = padding),
      `positions` (R, T) int32 (0 on padding), with R = len(rows) and T = seq_len.
    """
    batch = {name: np.zeros((len(rows), seq_len), dtype) for name, dtype in BATCH_DTYPES.items()}
    batch["input_ids"][:] = pad_id
    for r, row in enumerate(rows):
        start = 0
        for segment, index in enumerate(row, start=1):
            ids, mask = examples[index]
            end = start + len(ids)
            if end > seq_len:
                raise ValueError(f"row {r} holds {end} tokens but seq_len is {seq_len}")
            batch["input_ids"][r, start:end] = ids
            batch["loss_mask"][r, start:end] = mask
            batch["segment_ids"][r, start:end] = segment
            batch["positions"][r, start:end] = np.arange(len(ids))
            start = end
    return batch
