"""Init time of adapters on all 224 target matrices of a Llama-2-7B-shaped model (r = 128, random bf16 base).

Each of the 7 projections is one stacked (32, in, out) kernel initialised by one jitted, vmapped call, as `adapt`
does it. Compilation (AOT, `.lower().compile()`) is timed apart from the run; runs end in block_until_ready.

    python -m bench.adapter_init --out results/adapter_init.json      # 7B shapes, GPU (a few minutes)
    python -m bench.adapter_init --svd-layers 32                        # exact SVD on all layers (very slow)
    python -m bench.adapter_init --tiny                                 # CPU smoke test in seconds

Exact-SVD PiSSA runs on the first `--svd-layers` layers only (default 4 of 32: its layers are independent
sequential SVDs, so time scales linearly); the "all layers" column scales every method to all 32 layers.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from bench.common import environment, format_table, model_shape, write_json
from lowrank_jax.adapters import AdapterConfig
from lowrank_jax.adapters.stacked_init import init_stacked

METHODS = {
    "nystrom": dict(method="nystrom"),
    "nlora": dict(method="nlora"),
    "pissa_svd": dict(method="pissa"),
    "pissa_niter4": dict(method="pissa", niter=4),
}


def columns(num_layers: int) -> tuple:
    """The result table's (key, header, format) columns."""
    return (("method", "method", ""), ("matrices", "matrices", "d"), ("compile_s", "compile s", ".2f"),
            ("init_s", "init s", ".3f"), ("init_s_all_layers", f"init s, all {num_layers} layers", ".3f"),
            ("vs_pissa_svd", "speed-up vs pissa_svd", ".1f"))


def projection_shapes(shape: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of the seven target projections of a Llama shape dict."""
    hidden, inner = shape["hidden_size"], shape["intermediate_size"]
    q_size = shape["num_attention_heads"] * shape["head_dim"]
    kv_size = shape["num_key_value_heads"] * shape["head_dim"]
    return {"q_proj": (hidden, q_size), "k_proj": (hidden, kv_size), "v_proj": (hidden, kv_size),
            "o_proj": (q_size, hidden), "gate_proj": (hidden, inner), "up_proj": (hidden, inner),
            "down_proj": (inner, hidden)}


def time_method(kernels: dict, config: AdapterConfig, key) -> tuple[float, float]:
    """(compile seconds, run seconds) of initialising every kernel; each distinct shape is compiled once."""
    scale = config.scale_for("")
    compiled, compile_s = {}, 0.0
    for kernel in kernels.values():
        if kernel.shape not in compiled:
            start = time.perf_counter()
            lowered = init_stacked.lower(kernel, key, rank=config.rank, scale=scale, config=config)
            compiled[kernel.shape] = lowered.compile()
            compile_s += time.perf_counter() - start
    run_s = 0.0
    for kernel in kernels.values():
        start = time.perf_counter()
        factors = jax.block_until_ready(compiled[kernel.shape](kernel, key))
        run_s += time.perf_counter() - start
        del factors  # the residual kernels of a 7B model would not all fit beside the base
    return compile_s, run_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and rank 8 (CPU smoke test)")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--rank", type=int, help="adapter rank (default 128, 8 with --tiny)")
    parser.add_argument("--layers", type=int, help="decoder layers to initialise (default all: 32, 2 with --tiny)")
    parser.add_argument("--svd-layers", type=int, help="layers for pissa_svd (default 4; all with --tiny)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    shape = model_shape("tiny" if args.tiny else "7b")
    rank = args.rank or (8 if args.tiny else 128)
    layers = args.layers or shape["num_hidden_layers"]
    svd_layers = min(layers, args.svd_layers or (layers if args.tiny else 4))

    key = jax.random.key(0)
    kernels = {}
    for index, (name, (n_in, n_out)) in enumerate(projection_shapes(shape).items()):
        kernel = 0.02 * jax.random.normal(jax.random.fold_in(key, index), (layers, n_in, n_out), jnp.float32)
        kernels[name] = jax.block_until_ready(kernel.astype(jnp.bfloat16))
    device = str(jax.devices()[0].device_kind)
    print(f"{7 * layers} matrices ({layers} layers × 7 projections; pissa_svd: {svd_layers} layers), rank {rank}, "
          f"bf16 base, device {device}")

    rows = []
    for name in args.methods:
        config = AdapterConfig(rank=rank, alpha=float(rank), **METHODS[name])
        method_layers = svd_layers if name == "pissa_svd" else layers
        method_kernels = {proj: kernel[:method_layers] for proj, kernel in kernels.items()}
        compile_s, init_s = time_method(method_kernels, config, key)
        rows.append(dict(method=name, matrices=7 * method_layers, compile_s=compile_s, init_s=init_s,
                         init_s_all_layers=init_s * shape["num_hidden_layers"] / method_layers))
        print(f"{name}: compile {compile_s:.2f} s, init {init_s:.3f} s", flush=True)
    svd = next((row["init_s_all_layers"] for row in rows if row["method"] == "pissa_svd"), None)
    for row in rows:
        row["vs_pissa_svd"] = None if svd is None else svd / row["init_s_all_layers"]
    print(format_table(rows, columns(shape["num_hidden_layers"])))
    write_json(args.out, dict(environment(device), shape=shape, rank=rank, layers=layers, svd_layers=svd_layers,
                              rows=rows))


if __name__ == "__main__":
    main()
