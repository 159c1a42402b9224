"""cuDNN's packed layout (segment lengths and offsets) computed from segment ids, against a per-row Python scan.

The cuDNN kernel itself needs a GPU; `bench/attention_check.py` compares it with the XLA path there
(docs/benchmarks.md has the run).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowrank_jax.models.packed_attention import packed_segments


def runs_of(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of equal non-zero ids, scanning the row token by token."""
    runs = []
    for t, sid in enumerate(row.tolist()):
        if sid == 0:
            continue
        if runs and t > 0 and row[t - 1] == sid:
            runs[-1][1] += 1
        else:
            runs.append([t, 1])
    return [tuple(r) for r in runs]


def random_rows(rng: np.random.Generator, batch: int, seq: int) -> np.ndarray:
    """Rows of random-length segments with ids that repeat across non-adjacent runs, and padding anywhere."""
    rows = np.zeros((batch, seq), np.int32)
    for r in range(batch):
        t = 0
        while t < seq:
            length = int(rng.integers(1, 9))
            rows[r, t:t + length] = rng.integers(0, 4)  # 0 = padding; equal neighbours' ids merge into one run
            t += length
    return rows


@pytest.mark.parametrize("max_segments", [1, 4, 16])
def test_lengths_and_offsets_match_runs(max_segments):
    rows = random_rows(np.random.default_rng(max_segments), batch=6, seq=40)
    rows[0] = 0  # an all-padding row
    rows[1] = 5  # one segment filling the row
    got = jax.jit(packed_segments, static_argnums=1)(jnp.asarray(rows), max_segments)
    assert got.lengths.shape == (6, max_segments) and got.offsets.shape == (6, max_segments + 1)
    fits = True
    for r, row in enumerate(rows):
        runs = runs_of(row)
        fits &= len(runs) <= max_segments
        kept = runs[:max_segments]
        pad = max_segments - len(kept)
        np.testing.assert_array_equal(got.lengths[r], [n for _, n in kept] + [-1] * pad)
        np.testing.assert_array_equal(got.offsets[r], [s for s, _ in kept] + [-1] * (pad + 1))
    assert bool(got.fits) == fits


def test_fits_counts_runs_not_ids():
    rows = jnp.array([[1, 1, 2, 1, 0, 3], [4, 4, 4, 0, 0, 0]])  # row 0: four runs, id 1 twice
    assert bool(packed_segments(rows, max_segments=4).fits)
    assert not bool(packed_segments(rows, max_segments=3).fits)
