"""cuDNN attention over packed rows (lowrank_jax/models/packed_attention.py): is it right, and how fast is it?

Correctness: one random small Llama (bfloat16 compute, float32 weights) run three ways on the same packed batch —
attention_impl='cudnn' (packed kernel, or its dense-mask fallback), 'xla' in bfloat16, and 'xla' in float32 as the
reference. cuDNN's error against the reference (logits on real tokens; gradient of the masked mean cross-entropy
w.r.t. every weight) must stay within 2x of XLA-bfloat16's (plus 1e-3), for rows within MAX_PACKED_SEGMENTS
segments with padding at their ends, rows beyond it (the fallback), rows of 4 segments without padding, and one
segment per row; with 2 or more devices also cuDNN with the rows split over 2 of them (`cudnn-2dev`, as train.py
runs it on a mesh).

Speed: attention alone at Llama-2-7B head shapes, forward + backward, for the packed kernel, jax.nn's cuDNN call
with the dense segment mask (what the model used before), cuDNN with causality only (no segments: an upper bound),
and XLA with the mask. TFLOP/s counts causal attention within each segment as the MFU numerator does
(bench/common.py `attention_forward_flops`), backward twice the forward.

  python -m bench.attention_check --out attention.json            # GPU (Hopper: the packed layout needs sm_90)
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from bench.common import attention_forward_flops, environment, format_table, write_json
from lowrank_jax.models import Llama, LlamaConfig
from lowrank_jax.models.masks import padding_and_segment_mask
from lowrank_jax.models.packed_attention import MAX_PACKED_SEGMENTS, packed_causal_attention, packed_segments
from lowrank_jax.sharding import make_mesh, spec_for

SMALL = dict(vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=4, head_dim=128, max_position_embeddings=4096)


def packed_rows(rng: np.random.Generator, batch: int, seq: int, lengths: tuple[int, int]) -> np.ndarray:
    """(batch, seq) segment ids 1, 2, ... of random lengths in [lo, hi), then padding (0) to the row's end."""
    rows = np.zeros((batch, seq), np.int32)
    for r in range(batch):
        t, segment = 0, 1
        while True:
            length = int(rng.integers(*lengths))
            if t + length > seq - int(rng.integers(0, 8)):
                break
            rows[r, t:t + length] = segment
            t, segment = t + length, segment + 1
    return rows


def equal_rows(batch: int, seq: int, segments: int) -> np.ndarray:
    """(batch, seq) segment ids: `segments` equal segments filling each row."""
    return np.broadcast_to(1 + np.arange(seq) // (seq // segments), (batch, seq)).astype(np.int32)


def loss_and_grads(model: Llama, ids: jax.Array, segment_ids: jax.Array, mesh: Mesh):
    """Logits, and gradients of the mean next-token cross-entropy over real tokens, w.r.t. every weight; the rows
    split over the mesh's devices as train.py splits a batch."""
    graphdef, params = nnx.split(model)

    def loss_fn(params, ids, segment_ids):
        logits = nnx.merge(graphdef, params)(ids, segment_ids=segment_ids)
        targets = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
        return (ce * targets).sum() / targets.sum(), logits

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    rows = NamedSharding(mesh, spec_for(("batch", None), ids.shape, mesh))
    with jax.set_mesh(mesh):
        (_, logits), grads = step(params, jax.device_put(ids, rows), jax.device_put(segment_ids, rows))
    return np.asarray(logits, np.float64), [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]


def relative_errors(got, reference, real: np.ndarray) -> tuple[float, float]:
    """(max |Δlogit| on real tokens / std of the reference logits, worst relative Frobenius error over gradients)."""
    (logits, grads), (ref_logits, ref_grads) = got, reference
    logit_error = np.abs(logits - ref_logits)[real].max() / ref_logits[real].std()
    grad_error = max(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30) for g, r in zip(grads, ref_grads))
    return float(logit_error), float(grad_error)


def check_correctness(seq: int = 1024) -> list[dict]:
    rng = np.random.default_rng(0)
    layouts = {"packed (<= M segments)": packed_rows(rng, 4, seq, (seq // MAX_PACKED_SEGMENTS, seq // 3)),
               "fallback (> M segments)": packed_rows(rng, 4, seq, (8, 40)),
               "packed, no padding": equal_rows(4, seq, 4),
               "one segment per row": equal_rows(4, seq, 1)}
    f32 = LlamaConfig(**SMALL, dtype="float32", attention_impl="xla")
    cudnn_config = f32.replace(dtype="bfloat16", attention_impl="cudnn")
    variants = [("f32", f32, 1), ("xla-bf16", f32.replace(dtype="bfloat16"), 1), ("cudnn", cudnn_config, 1)]
    if jax.device_count() >= 2:
        variants.append(("cudnn-2dev", cudnn_config, 2))
    state = nnx.state(Llama(f32, nnx.Rngs(0)))
    rows = []
    for name, segment_ids in layouts.items():
        ids = jnp.asarray(rng.integers(0, SMALL["vocab_size"], segment_ids.shape), jnp.int32)
        seg = jnp.asarray(segment_ids)
        results = {}
        for label, config, devices in variants:
            model = Llama(config, nnx.Rngs(1))
            nnx.update(model, state)
            results[label] = loss_and_grads(model, ids, seg, make_mesh(fsdp=devices, devices=jax.devices()[:devices]))
        real = segment_ids != 0
        xla = relative_errors(results["xla-bf16"], results["f32"], real)
        row = dict(layout=name, max_segments_in_a_row=int(segment_ids.max()),
                   packed_kernel=bool(packed_segments(seg).fits), xla_bf16_logit_error=xla[0],
                   xla_bf16_grad_error=xla[1], status="ok")
        for label in [label for label, _, _ in variants if label.startswith("cudnn")]:
            errors = relative_errors(results[label], results["f32"], real)
            row.update({f"{label}_logit_error": errors[0], f"{label}_grad_error": errors[1]})
            if not all(c <= 2 * x + 1e-3 for c, x in zip(errors, xla)):
                row["status"] = f"{label} MISMATCH"
        rows.append(row)
    return rows


def time_attention(batch: int = 4, seq: int = 2048, heads: int = 32, head_dim: int = 128,
                   steps: int = 20) -> list[dict]:
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (batch, seq, heads, head_dim), jnp.bfloat16) for key in keys)
    rows = []
    for segments in (1, 8):
        seg = jnp.asarray(equal_rows(batch, seq, segments))
        variants = {
            "cudnn packed": lambda q, k, v: packed_causal_attention(q, k, v, packed_segments(seg)),
            "cudnn dense mask": lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, mask=padding_and_segment_mask(None, seg), is_causal=True, implementation="cudnn"),
            "cudnn causal, no segments": lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, is_causal=True, implementation="cudnn"),
            "xla dense mask": lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, mask=padding_and_segment_mask(None, seg), is_causal=True, implementation="xla"),
        }
        # Forward + backward (3 × forward) of one attention layer, as the MFU numerator counts it.
        flops = 3 * attention_forward_flops(dict(num_attention_heads=heads, head_dim=head_dim, num_hidden_layers=1),
                                            batch, seq, segments)
        for name, attend in variants.items():
            step = jax.jit(jax.grad(lambda q, k, v: attend(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
            jax.block_until_ready(step(q, k, v))
            start = time.perf_counter()
            for _ in range(steps):
                out = step(q, k, v)
            jax.block_until_ready(out)
            seconds = (time.perf_counter() - start) / steps
            ignores_segments = segments > 1 and name == "cudnn causal, no segments"  # does other work than counted
            rows.append(dict(segments_per_row=segments, variant=name, ms=1e3 * seconds,
                             tflops=None if ignores_segments else flops / seconds / 1e12))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    correctness = check_correctness()
    print(format_table(correctness, [(k, k, f) for k, f in (
        ("layout", ""), ("packed_kernel", ""), ("xla_bf16_logit_error", ".2e"), ("cudnn_logit_error", ".2e"),
        ("cudnn-2dev_logit_error", ".2e"), ("xla_bf16_grad_error", ".2e"), ("cudnn_grad_error", ".2e"),
        ("cudnn-2dev_grad_error", ".2e"), ("status", ""))]))
    with jax.set_mesh(make_mesh(devices=jax.devices()[:1])):  # one device, as on one GPU
        speed = time_attention()
    print(format_table(speed, [("segments_per_row", "segments", "d"), ("variant", "variant", ""),
                               ("ms", "fwd+bwd ms", ".2f"), ("tflops", "TFLOP/s", ".0f")]))
    write_json(args.out, dict(environment(jax.devices()[0].device_kind), correctness=correctness, speed=speed))
    if any(row["status"] != "ok" for row in correctness):
        raise SystemExit("cuDNN packed attention disagrees with XLA beyond bfloat16 noise")


if __name__ == "__main__":
    main()
