"""Cost of LoRA-Pro's optimizer update on every adapter of a Llama-shaped model, against plain AdamW on the same
adapters; the memory of lorapro_adamw's full-size state; optionally the PyPI `lora-pro-adamw` (PyTorch) on the same
shapes. Numbers in docs/benchmarks.md come from (one GPU; the memory table also on several):

    python -m bench.lorapro_update --out runs/bench/lorapro_update.json
    python -m bench.lorapro_update --tiny            # CPU smoke test, seconds
    python -m bench.lorapro_update --model 7b --skip-torch --moment-dtypes float32 \
        --fused-tiles 128x128w8,64x128w8,64x64w4,32x64w4,64x128w8:bf16x6,32x64w4:tf32x3,32x64w4:bf16x6  # tilings
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m bench.lorapro_update --memory-only   # any machine

lorapro_adamw with float32 moments needs ~48 GiB of state plus the update's temporaries on one device: on an 80 GB
GPU give JAX the memory with XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 (a row that runs out of memory says OOM).
The PyPI comparison runs when `lora_pro` is importable (pip install --no-deps lora-pro-adamw==0.2.1).

Shapes: the 7 projections of every layer (q, k, v, o, gate, up, down), stacked per projection as lora_a (L, in, r),
lora_b (L, r, out) in bf16 — Llama-2-7B: 32 layers, 224 adapters, r = 8, s = alpha / r = 2.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from bench.common import GIB, environment, format_table, model_shape, write_json
from lowrank_jax.optim import lorapro, lorapro_adamw
from lowrank_jax.optim.fused_kernel_adam import Tiles
from lowrank_jax.sharding import make_mesh, spec_for

SCALE = 2.0
LEARNING_RATE = 2e-5
TIME_COLUMNS = (("optimizer", "optimizer", ""), ("moments", "moments", ""), ("update_ms", "update ms", ".2f"),
                ("vs_adamw", "× adamw", ".2f"), ("peak_gib", "peak GiB", ".2f"), ("status", "status", ""))
MEMORY_COLUMNS = (("moments", "moments", ""), ("devices", "devices", "d"), ("state_gib", "state GiB", ".2f"),
                  ("per_device_gib", "per device GiB", ".2f"))


def projections(shape: dict) -> dict[str, tuple[int, int, str, str]]:
    """Projection path -> (in, out, logical in name, logical out name), as the model names its kernels."""
    hidden, inner = shape["hidden_size"], shape["intermediate_size"]
    q_size = shape["num_attention_heads"] * shape["head_dim"]
    kv_size = shape["num_key_value_heads"] * shape["head_dim"]
    return {"self_attn/q_proj": (hidden, q_size, "embed", "q_heads"),
            "self_attn/k_proj": (hidden, kv_size, "embed", "kv_heads"),
            "self_attn/v_proj": (hidden, kv_size, "embed", "kv_heads"),
            "self_attn/o_proj": (q_size, hidden, "q_heads", "embed"),
            "mlp/gate_proj": (hidden, inner, "embed", "mlp"),
            "mlp/up_proj": (hidden, inner, "embed", "mlp"),
            "mlp/down_proj": (inner, hidden, "mlp", "embed")}


def adapter_tree(shape: dict, rank: int, make) -> dict:
    """The adapters as the model's paths: {'layers': {'self_attn': {'q_proj': {'lora_a', 'lora_b'}}, 'mlp': …}},
    each leaf make(factor name, shape, logical axis names)."""
    layers = shape["num_hidden_layers"]
    tree: dict = {"layers": {"self_attn": {}, "mlp": {}}}
    for path, (n_in, n_out, in_name, out_name) in projections(shape).items():
        group, projection = path.split("/")
        tree["layers"][group][projection] = {
            "lora_a": make("lora_a", (layers, n_in, rank), ("layers", in_name, None)),
            "lora_b": make("lora_b", (layers, rank, n_out), ("layers", None, out_name)),
        }
    return tree


def random_adapters(shape: dict, rank: int, seed: int = 0) -> tuple[dict, dict]:
    """bf16 params (a ~ N(0, 1/in), b small and nonzero, as after a few steps) and bf16 gradients, one device."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))

    def make(name, leaf_shape, _):
        std = leaf_shape[-2] ** -0.5 if name == "lora_a" else 1e-3
        return (std * jax.random.normal(next(keys), leaf_shape)).astype(jnp.bfloat16)

    params = adapter_tree(shape, rank, make)
    grads = jax.tree.map(lambda p: (1e-3 * jax.random.normal(next(keys), p.shape)).astype(jnp.bfloat16), params)
    return params, grads


def time_update(tx, params, grads, iters: int) -> dict:
    """Median wall time of one jitted `update + apply_updates` (params and state donated), and XLA's peak."""
    params = jax.tree.map(jnp.copy, params)  # donated below; the caller's copy stays valid
    state = jax.jit(tx.init)(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = step.lower(params, state, grads).compile()
    memory = compiled.memory_analysis()
    peak = None
    if memory is not None:
        peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                - memory.alias_size_in_bytes) / GIB
    for _ in range(2):
        params, state = compiled(params, state, grads)
    jax.block_until_ready(params)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        params, state = compiled(params, state, grads)
        jax.block_until_ready((params, state))
        times.append(time.perf_counter() - start)
    return {"update_ms": 1e3 * statistics.median(times), "peak_gib": peak, "status": "ok"}


def guarded(fn, *args, failure_row: bool = False) -> dict:
    """fn(*args), or a row saying it ran out of memory (or, with failure_row, that it failed: a Pallas kernel
    that does not compile, say)."""
    try:
        return fn(*args)
    except Exception as error:  # XLA raises its own error types for RESOURCE_EXHAUSTED
        if "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower():
            return {"status": "OOM"}
        if failure_row:
            return {"status": "error", "error": f"{type(error).__name__}: {error}".splitlines()[0]}
        raise


def timings(shape: dict, rank: int, iters: int, moment_dtypes: list[str], fused_tiles: list[Tiles]) -> list[dict]:
    params, grads = random_adapters(shape, rank)
    rows = [{"optimizer": "optax.adamw", **time_update(optax.adamw(LEARNING_RATE), params, grads, iters)}]
    chain = optax.chain(lorapro(scale=SCALE), optax.adamw(LEARNING_RATE))
    rows.append({"optimizer": "lorapro()+adamw", **guarded(time_update, chain, params, grads, iters)})
    for dtype, tiles in itertools.product(moment_dtypes, [None, *fused_tiles]):
        tx = lorapro_adamw(LEARNING_RATE, scale=SCALE, moment_dtype=jnp.dtype(dtype), fused_update=tiles or False)
        name = f"lorapro_adamw, fused {tiles}" if tiles else "lorapro_adamw"
        rows.append({"optimizer": name, "moments": dtype,
                     **guarded(time_update, tx, params, grads, iters, failure_row=tiles is not None)})
    return rows


def state_memory(shape: dict, rank: int, moment_dtype: str, devices: list) -> dict:
    """Bytes of lorapro_adamw's state, in all and on the fullest device, from the shardings jitted init gives the
    moments when the adapters are sharded by the project's rules on an fsdp mesh over ``devices`` (no allocation)."""
    mesh = make_mesh(data=1, fsdp=len(devices), tensor=1, devices=devices)

    def abstract(_, leaf_shape, names):
        sharding = NamedSharding(mesh, spec_for(names, leaf_shape, mesh))
        return jax.ShapeDtypeStruct(leaf_shape, jnp.bfloat16, sharding=sharding)

    params = adapter_tree(shape, rank, abstract)
    tx = lorapro_adamw(LEARNING_RATE, scale=SCALE, moment_dtype=jnp.dtype(moment_dtype))
    compiled = jax.jit(tx.init).lower(params).compile()
    leaves = jax.tree.leaves(jax.eval_shape(tx.init, params))
    shardings = jax.tree.leaves(compiled.output_shardings)
    total = sum(x.size * x.dtype.itemsize for x in leaves)
    per_device = [0] * len(devices)
    index = {device: i for i, device in enumerate(devices)}
    for leaf, sharding in zip(leaves, shardings):
        for device, slices in sharding.devices_indices_map(leaf.shape).items():
            size = np.prod([len(range(*s.indices(n))) for s, n in zip(slices, leaf.shape)], dtype=np.int64)
            per_device[index[device]] += int(size) * leaf.dtype.itemsize
    return {"moments": moment_dtype, "devices": len(devices), "state_gib": total / GIB,
            "per_device_gib": max(per_device) / GIB}


def torch_lora_pro_adamw(shape: dict, rank: int, iters: int, mode: str) -> dict:
    """The PyPI package lora-pro-adamw (PyTorch; `lorapro_mode` 'full' = Algorithm 2, 'efficient' = adjusted
    gradients + AdamW) on the same 224 adapters in bf16, PEFT layout lora_A (r, in), lora_B (out, r)."""
    import torch
    from lora_pro import LoRAProAdamW

    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)

    class Pair(torch.nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.r, self.lora_alpha = rank, SCALE * rank
            a = torch.randn(rank, n_in, device=device, generator=generator) * n_in**-0.5
            b = torch.randn(n_out, rank, device=device, generator=generator) * 1e-3
            self.lora_A = torch.nn.Parameter(a.to(torch.bfloat16))
            self.lora_B = torch.nn.Parameter(b.to(torch.bfloat16))

    pairs = [Pair(n_in, n_out) for _ in range(shape["num_hidden_layers"])
             for n_in, n_out, _, _ in projections(shape).values()]
    model = torch.nn.ModuleList(pairs)
    optimizer = LoRAProAdamW(model, lr=LEARNING_RATE, weight_decay=0.0, lorapro_mode=mode)
    grads = [1e-3 * torch.randn(p.shape, device=device, generator=generator).to(p.dtype) for p in model.parameters()]

    def step():
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        optimizer.step()

    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        step()
    times = []
    for _ in range(iters):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None
    return {"optimizer": f"lora-pro-adamw ({mode}, torch)", "update_ms": 1e3 * statistics.median(times),
            "peak_gib": peak, "status": "ok"}


def release_torch_memory() -> None:
    """Return PyTorch's cached GPU memory so that JAX can take it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7b", help="benchmark shape: 7b, 1b or tiny (bench/common.py)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--moment-dtypes", default="bfloat16,float32", help="lorapro_adamw moment dtypes to time")
    parser.add_argument("--fused-tiles", default=str(Tiles()),
                        help="comma list of fused-update tilings ROWSxCOLSwWARPS[:DOT] to time ('' for none)")
    parser.add_argument("--skip-torch", action="store_true", help="do not time the PyPI lora-pro-adamw package")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: --model tiny --rank 4 --iters 3")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the state-memory table (abstract shapes, nothing allocated: runs anywhere)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.rank, args.iters = "tiny", 4, 3
    shape = model_shape(args.model)
    moment_dtypes = [d for d in args.moment_dtypes.split(",") if d]
    fused_tiles = [Tiles.parse(t) for t in args.fused_tiles.split(",") if t]   # bad input fails before any work

    # PyTorch first, while JAX has not yet reserved GPU memory (JAX preallocates a fraction of it at first use).
    torch_rows = []
    if not (args.skip_torch or args.memory_only):
        for mode in ("efficient", "full"):
            try:
                torch_rows.append(guarded(torch_lora_pro_adamw, shape, args.rank, args.iters, mode))
            except ImportError as error:
                print(f"skipping lora-pro-adamw ({error}); pip install lora-pro-adamw==0.2.1 to compare")
                break
            torch_rows[-1].setdefault("optimizer", f"lora-pro-adamw ({mode}, torch)")
        release_torch_memory()
    device = str(jax.devices()[0].device_kind)
    rows = [] if args.memory_only else timings(shape, args.rank, args.iters, moment_dtypes, fused_tiles) + torch_rows
    for row in rows[1:]:
        if row.get("update_ms"):
            row["vs_adamw"] = row["update_ms"] / rows[0]["update_ms"]
    device_sets = [jax.devices()[:1]] + ([jax.devices()] if len(jax.devices()) > 1 else [])
    memory = [state_memory(shape, args.rank, dtype, devices)
              for dtype in ("bfloat16", "float32") for devices in device_sets]

    print(f"{args.model}: {len(projections(shape)) * shape['num_hidden_layers']} adapters, r={args.rank}, "
          f"bf16 params, on {len(jax.devices())} × {device}")
    if rows:
        print(format_table(rows, TIME_COLUMNS) + "\n")
    print(format_table(memory, MEMORY_COLUMNS))
    write_json(args.out, {"environment": environment(device), "model": args.model, "rank": args.rank,
                          "timings": rows, "state_memory": memory})


if __name__ == "__main__":
    main()
