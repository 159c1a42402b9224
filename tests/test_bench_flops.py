"""The MFU numerator's attention term against a brute-force count of the (query, key) pairs that attention needs; the
8B shape's weight counts against the closed form and transformers' own model."""

import numpy as np
import pytest

from bench.common import attention_forward_flops, matmul_params, model_shape
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


def test_8b_shape_counts_llama_3_1_8b_weights():
    import torch
    import transformers

    from lowrank_jax.models import LlamaConfig
    shape = model_shape("8b")
    # per layer: q and o 4096 x 4096, k and v 4096 x (8 KV heads x 128), gate, up and down 4096 x 14336; untied head
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    assert matmul_params(shape) == 32 * per_layer + 128256 * 4096 == 7_504_658_432
    hf_config = transformers.LlamaConfig.from_dict(LlamaConfig(**shape).to_hf_dict())
    assert hf_config.rope_parameters["rope_type"] == "llama3" and hf_config.rope_parameters["factor"] == 8.0
    with torch.device("meta"):
        network = transformers.AutoModelForCausalLM.from_config(hf_config)
    # Llama-3.1-8B's published parameter count: N_base + input embeddings + 2 norms per layer + the final norm
    assert sum(p.numel() for p in network.parameters()) == 8_030_261_248
    assert 8_030_261_248 == 7_504_658_432 + 128256 * 4096 + 32 * 2 * 4096 + 4096
