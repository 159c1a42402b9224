"""Fixed-shape (B, T) batches: an endless, seeded, resumable training iterator and a one-pass evaluation iterator.

Every process computes the same global plan of rows and materialises only its own contiguous slice of each global
batch (process p of P gets rows [p*B/P, (p+1)*B/P)), so the union over processes is the single-process batch and a
run can resume on a different number of processes. The training position is `state()`, a small dict of ints.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from lowrank_jax.data.packing import pack_first_fit, rows_to_batch
from lowrank_jax.data.tokenization import TokenizedExample


def _check_layout(examples: Sequence[TokenizedExample], global_batch_size: int, seq_len: int, process_index: int,
                  process_count: int) -> None:
    if not examples:
        raise ValueError("no examples to batch: the split is empty")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the process count "
                         f"{process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside [0, {process_count})")
    longest = max(len(e.input_ids) for e in examples)
    if longest > seq_len:
        raise ValueError(f"an example has {longest} tokens but seq_len is {seq_len}; tokenize with "
                         f"max_length={seq_len}")


def _plan_rows(lengths: np.ndarray, order: np.ndarray, seq_len: int, packing: bool) -> list[list[int]]:
    return pack_first_fit(lengths, order, seq_len) if packing else [[i] for i in order.tolist()]


class BatchIterator:
    """Endless training batches: each epoch shuffles the examples by (seed, epoch), then packs or pads them into rows.

    Yields this process's rows of each global batch as a dict of numpy arrays `input_ids`, `loss_mask`,
    `segment_ids`, `positions`, each (global_batch_size / process_count, seq_len) (docs/contracts.md). Rows that
    do not fill a last global batch of an epoch are skipped.

    >>> examples = [TokenizedExample(np.arange(n, dtype=np.int32), np.ones(n, bool)) for n in (3, 2, 2, 1, 4, 3)]
    >>> batches = BatchIterator(examples, global_batch_size=2, seq_len=4, seed=0)
    >>> first = next(batches); first["input_ids"].shape, batches.state()
    ((2, 4), {'epoch': 0, 'step': 1, 'seed': 0, 'num_examples': 6})
    >>> resumed = BatchIterator(examples, global_batch_size=2, seq_len=4, seed=0); resumed.restore(batches.state())
    >>> a, b = next(resumed), next(batches)
    >>> all((a[k] == b[k]).all() for k in a)
    True
    """

    def __init__(self, examples: Sequence[TokenizedExample], *, global_batch_size: int, seq_len: int,
                 seed: int = 0, packing: bool = True, pad_id: int = 0, process_index: int = 0,
                 process_count: int = 1):
        _check_layout(examples, global_batch_size, seq_len, process_index, process_count)
        self._examples = examples
        self._lengths = np.array([len(e.input_ids) for e in examples])
        self._global_batch_size, self._seq_len, self._seed = global_batch_size, seq_len, seed
        self._packing, self._pad_id = packing, pad_id
        local = global_batch_size // process_count
        self._local_rows = slice(process_index * local, (process_index + 1) * local)
        self._epoch, self._step = 0, 0
        self._plan: tuple[int, list[list[int]]] | None = None  # (epoch, rows) of the last planned epoch
        if self.steps_in_epoch(0) == 0:
            raise ValueError(f"{len(examples)} examples fill {len(self._rows(0))} rows, fewer than one global batch "
                             f"of {global_batch_size}; lower the batch size or add data")

    def _rows(self, epoch: int) -> list[list[int]]:
        if self._plan is None or self._plan[0] != epoch:
            order = np.random.default_rng([self._seed, epoch]).permutation(len(self._examples))
            self._plan = (epoch, _plan_rows(self._lengths, order, self._seq_len, self._packing))
        return self._plan[1]

    def steps_in_epoch(self, epoch: int = 0) -> int:
        """Number of global batches in `epoch` (packing makes it vary slightly between epochs)."""
        return len(self._rows(epoch)) // self._global_batch_size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._step >= self.steps_in_epoch(self._epoch):
            self._epoch, self._step = self._epoch + 1, 0
        start = self._step * self._global_batch_size
        global_rows = self._rows(self._epoch)[start:start + self._global_batch_size]
        self._step += 1
        return rows_to_batch(global_rows[self._local_rows], self._examples, self._seq_len, self._pad_id)

    def state(self) -> dict[str, int]:
        """The position after the last batch returned, plus what it is only valid for (seed, number of examples)."""
        return {"epoch": self._epoch, "step": self._step, "seed": self._seed, "num_examples": len(self._examples)}

    def restore(self, state: dict) -> None:
        """Continues from `state()` of an iterator over the same examples and seed (any process count).

        Raises:
          ValueError: the state belongs to other data or another seed, so the continuation would differ.
        """
        expected = {"seed": self._seed, "num_examples": len(self._examples)}
        found = {key: int(state[key]) for key in expected}
        if found != expected:
            raise ValueError(f"data iterator state {dict(state)} was saved with {found}, but this run has {expected}; "
                             "resume with the same data and data.seed")
        self._epoch, self._step = int(state["epoch"]), int(state["step"])


def evaluation_batches(examples: Sequence[TokenizedExample], *, global_batch_size: int, seq_len: int,
                       packing: bool = True, pad_id: int = 0, process_index: int = 0, process_count: int = 1
                       ) -> Iterator[dict[str, np.ndarray]]:
    """One pass over every example in order; the last global batch is filled with padding rows (loss_mask 0).

    Yields:
      This process's rows of each global batch, the same arrays as BatchIterator.
    """
    _check_layout(examples, global_batch_size, seq_len, process_index, process_count)
    lengths = np.array([len(e.input_ids) for e in examples])
    rows = _plan_rows(lengths, np.arange(len(examples)), seq_len, packing)
    rows += [[]] * (-len(rows) % global_batch_size)
    local = global_batch_size // process_count
    for start in range(0, len(rows), global_batch_size):
        first = start + process_index * local
        yield rows_to_batch(rows[first:first + local], examples, seq_len, pad_id)
