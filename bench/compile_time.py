"""Compile time of a full Llama train step versus depth, scanned versus unrolled decoder layers.

The step is `jax.value_and_grad` of the mean next-token cross-entropy over all parameters of an abstract
(`nnx.eval_shape`, never allocated) Llama-2-7B-shaped model in bfloat16, timed as `jax.jit(...).lower(...)` and
`.compile()`. Scanned layers should compile in about the same time at any depth; unrolled ones grow with it.

    python -m bench.compile_time                         # 7B shapes, depths 2,8,32, scan and unrolled (GPU)
    python -m bench.compile_time --depths 32 --modes scan
    python -m bench.compile_time --tiny                  # tiny shapes: a CPU smoke test in seconds
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from lowrank_jax.models import Llama, LlamaConfig

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                 num_key_value_heads=32)
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


def mean_next_token_loss(params, rest, graphdef, input_ids):
    """Mean cross-entropy of predicting token t + 1 from tokens <= t, over the whole batch."""
    logits = nnx.merge(graphdef, params, rest)(input_ids)
    log_probs = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(log_probs, input_ids[:, 1:, None], axis=-1).mean()


def time_compile(config: LlamaConfig, batch: int, seq: int) -> tuple[float, float]:
    """Seconds to lower and to compile one train step of an abstract model with this config."""
    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: Llama(config)), nnx.Param, ...)
    input_ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    step = jax.jit(jax.value_and_grad(mean_next_token_loss), static_argnums=2)
    start = time.perf_counter()
    lowered = step.lower(params, rest, graphdef, input_ids)
    lowered_at = time.perf_counter()
    lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="2,8,32", help="comma-separated layer counts")
    parser.add_argument("--modes", default="scan,unrolled", help="comma-separated: scan, unrolled")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--remat", default="none", help="remat policy name (see LlamaConfig)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, depths 2,4,8, seq 32 (CPU smoke test)")
    args = parser.parse_args(argv)
    shapes, depths, seq = LLAMA2_7B, [int(d) for d in args.depths.split(",")], args.seq
    if args.tiny:
        shapes, depths, seq = TINY, [2, 4, 8] if args.depths == parser.get_default("depths") else depths, 32
    modes = args.modes.split(",")
    unknown = set(modes) - {"scan", "unrolled"}
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; use scan and/or unrolled")

    print(f"# {jax.devices()[0].device_kind} | jax {jax.__version__} | batch {args.batch} seq {seq} | "
          f"remat {args.remat} | hidden {shapes['hidden_size']} vocab {shapes['vocab_size']} | bfloat16")
    print(f"{'layers':>6} {'mode':>9} {'lower_s':>8} {'compile_s':>9} {'total_s':>8}")
    for mode in modes:
        for depth in depths:
            config = LlamaConfig(**shapes, num_hidden_layers=depth, dtype="bfloat16", param_dtype="bfloat16",
                                 scan_layers=mode == "scan", remat=args.remat)
            lower_s, compile_s = time_compile(config, args.batch, seq)
            print(f"{depth:>6} {mode:>9} {lower_s:>8.1f} {compile_s:>9.1f} {lower_s + compile_s:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
