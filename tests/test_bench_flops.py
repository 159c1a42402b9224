"""The MFU numerator's attention term against a brute-force count of the (query, key) pairs that attention needs."""

import numpy as np
import pytest

from bench.common import attention_forward_flops, model_shape
from bench.train_one import RunSpec, make_batch
from lowrank_jax.models.masks import padding_and_segment_mask


@pytest.mark.parametrize("segments", [1, 4, 16])
def test_attention_flops_count_causal_pairs_inside_segments(segments):
    spec = RunSpec(model="tiny", method="lora-r8", seq=256, batch=2, segments=segments)
    segment_ids = make_batch(spec, 0)["segment_ids"][0]  # (batch, seq) of the one micro-batch
    mask = np.asarray(padding_and_segment_mask(None, segment_ids))[:, 0] & np.tri(spec.seq, dtype=bool)
    shape = model_shape("tiny")
    # QKᵀ and PV: 2 matmuls of 2 FLOPs per (query, key) pair per head dimension, per head and layer.
    brute = 4.0 * mask.sum() * shape["num_attention_heads"] * shape["head_dim"] * shape["num_hidden_layers"]
    formula = attention_forward_flops(shape, spec.batch, spec.seq, segments)
    length = spec.seq // segments
    assert formula == pytest.approx(brute, rel=1.0 / length)  # the formula leaves out the diagonal: len² / 2 pairs
    assert formula < brute
