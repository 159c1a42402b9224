"""Packing, batch arrays, seeded shuffling, exact resume from the iterator state, and per-process sharding, on
synthetic examples whose token ids say which example they came from."""

import json

import numpy as np
import pytest

from lowrank_jax.data import BatchIterator, TokenizedExample, evaluation_batches, pack_first_fit, rows_to_batch

SEQ_LEN = 16


def make_examples(n, seed=0, max_len=SEQ_LEN):
    """Example i holds ids 1000*(i+1) + position, so every token names its example; loss on its second half."""
    lengths = np.random.default_rng(seed).integers(2, max_len + 1, n)
    return [TokenizedExample(np.arange(length, dtype=np.int32) + 1000 * (i + 1),
                             np.arange(length) >= length // 2) for i, length in enumerate(lengths)]


def first_fit_reference(lengths, order, seq_len):
    rows, free = [], []
    for index in order:
        for r in range(len(rows)):
            if free[r] >= lengths[index]:
                rows[r].append(index)
                free[r] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(seq_len - lengths[index])
    return rows


def segments(batch):
    """Per row, the examples (by index) it holds, decoded from token ids, after checking each segment's layout."""
    decoded = []
    for ids, mask, seg, pos in zip(*(batch[k] for k in ("input_ids", "loss_mask", "segment_ids", "positions"))):
        row = []
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            assert (np.diff(where) == 1).all()                               # contiguous
            index = ids[where[0]] // 1000 - 1
            assert (ids[where] == np.arange(len(where)) + 1000 * (index + 1)).all()
            assert (pos[where] == np.arange(len(where))).all()
            assert (mask[where] == (np.arange(len(where)) >= len(where) // 2)).all()
            row.append(int(index))
        padding = seg == 0
        assert not mask[padding].any() and not pos[padding].any() and (ids[padding] == 7).all()
        assert not padding.any() or padding[padding.argmax():].all()         # padding only at the end
        decoded.append(row)
    return decoded


def test_first_fit_matches_reference():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, SEQ_LEN + 1, 300)
    order = rng.permutation(300)
    rows = pack_first_fit(lengths, order, SEQ_LEN)
    assert rows == first_fit_reference(lengths, order, SEQ_LEN)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert max(sum(lengths[i] for i in row) for row in rows) <= SEQ_LEN


def test_rows_to_batch_layout():
    examples = make_examples(6)
    rows = pack_first_fit(np.array([len(e.input_ids) for e in examples]), np.arange(6), SEQ_LEN) + [[]]
    batch = rows_to_batch(rows, examples, SEQ_LEN, pad_id=7)
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        "input_ids": ((len(rows), SEQ_LEN), "int32"), "loss_mask": ((len(rows), SEQ_LEN), "float32"),
        "segment_ids": ((len(rows), SEQ_LEN), "int32"), "positions": ((len(rows), SEQ_LEN), "int32")}
    assert segments(batch) == rows


@pytest.mark.parametrize("packing", [True, False])
def test_an_epoch_is_a_seeded_shuffle_of_every_example(packing):
    examples = make_examples(50)
    batches = BatchIterator(examples, global_batch_size=4, seq_len=SEQ_LEN, seed=3, packing=packing, pad_id=7)
    steps = batches.steps_in_epoch(0)
    epoch0 = [segments(next(batches)) for _ in range(steps)]
    seen = [i for batch in epoch0 for row in batch for i in row]
    assert len(seen) == len(set(seen))                                       # no example twice in an epoch
    rows = 4 * steps
    if packing:
        assert len(seen) > rows                                              # rows are shared
    else:
        assert len(seen) == rows == 48 and all(len(row) == 1 for batch in epoch0 for row in batch)
    assert batches.state()["epoch"] == 0
    epoch1 = [segments(next(batches)) for _ in range(batches.steps_in_epoch(1))]
    assert batches.state()["epoch"] == 1 and epoch1 != epoch0
    again = BatchIterator(examples, global_batch_size=4, seq_len=SEQ_LEN, seed=3, packing=packing, pad_id=7)
    assert [segments(next(again)) for _ in range(steps)] == epoch0
    other_seed = BatchIterator(examples, global_batch_size=4, seq_len=SEQ_LEN, seed=4, packing=packing, pad_id=7)
    assert [segments(next(other_seed)) for _ in range(steps)] != epoch0


def test_restored_state_continues_identically_across_epochs():
    examples = make_examples(30)
    batches = BatchIterator(examples, global_batch_size=4, seq_len=SEQ_LEN, seed=0)
    for _ in range(batches.steps_in_epoch(0) - 2):
        next(batches)
    state = json.loads(json.dumps(batches.state()))                           # survives a metadata round trip
    assert all(isinstance(v, int) for v in state.values())
    expected = [next(batches) for _ in range(6)]                              # crosses into epoch 1
    assert batches.state()["epoch"] == 1
    resumed = BatchIterator(examples, global_batch_size=4, seq_len=SEQ_LEN, seed=0)
    resumed.restore({k: np.int64(v) for k, v in state.items()})               # orbax may hand back numpy ints
    for want in expected:
        got = next(resumed)
        assert all((got[k] == want[k]).all() for k in want)
    with pytest.raises(ValueError, match="resume with the same data and data.seed"):
        BatchIterator(examples, global_batch_size=4, seq_len=SEQ_LEN, seed=1).restore(state)
    with pytest.raises(ValueError, match="resume with the same data"):
        BatchIterator(examples[:-1], global_batch_size=4, seq_len=SEQ_LEN, seed=0).restore(state)


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_split_the_global_batch(process_count):
    examples = make_examples(60)
    single = BatchIterator(examples, global_batch_size=8, seq_len=SEQ_LEN, seed=5)
    shards = [BatchIterator(examples, global_batch_size=8, seq_len=SEQ_LEN, seed=5, process_index=p,
                            process_count=process_count) for p in range(process_count)]
    for _ in range(single.steps_in_epoch(0) + 2):
        whole = next(single)
        parts = [next(s) for s in shards]
        assert all(part["input_ids"].shape == (8 // process_count, SEQ_LEN) for part in parts)
        for key in whole:
            assert (np.concatenate([part[key] for part in parts]) == whole[key]).all()
    # A single-process state resumes on several processes with the same global batches.
    resumed = BatchIterator(examples, global_batch_size=8, seq_len=SEQ_LEN, seed=5, process_index=1,
                            process_count=process_count)
    resumed.restore(single.state())
    assert (next(resumed)["input_ids"] == np.split(next(single)["input_ids"], process_count)[1]).all()


@pytest.mark.parametrize("packing", [True, False])
def test_evaluation_batches_cover_every_example_once(packing):
    examples = make_examples(21)
    kwargs = dict(global_batch_size=4, seq_len=SEQ_LEN, packing=packing, pad_id=7)
    batches = list(evaluation_batches(examples, **kwargs))
    seen = [i for batch in batches for row in segments(batch) for i in row]
    assert sorted(seen) == list(range(21))
    if not packing:
        assert seen == list(range(21)) and len(batches) == 6 and (batches[-1]["segment_ids"][1:] == 0).all()
    halves = [list(evaluation_batches(examples, process_index=p, process_count=2, **kwargs)) for p in (0, 1)]
    for whole, first, second in zip(batches, *halves):
        assert (np.concatenate([first["input_ids"], second["input_ids"]]) == whole["input_ids"]).all()


def test_bad_layouts_fail_with_the_fix():
    examples = make_examples(10)
    with pytest.raises(ValueError, match="tokenize with max_length=8"):
        BatchIterator(examples, global_batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match="multiple of the process count 4"):
        BatchIterator(examples, global_batch_size=6, seq_len=SEQ_LEN, process_count=4)
    with pytest.raises(ValueError, match="fewer than one global batch of 64"):
        BatchIterator(examples, global_batch_size=64, seq_len=SEQ_LEN)
    with pytest.raises(ValueError, match="split is empty"):
        BatchIterator([], global_batch_size=2, seq_len=SEQ_LEN)
