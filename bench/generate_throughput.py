"""Batched greedy decoding throughput: eval's `lowrank_jax.models.generate` vs transformers' `generate`.

Same shape (Llama-3.2-1B by default), random bf16 weights, batch 64 prompts of equal length, exactly 256 new tokens
per sequence on both sides (no early EOS stop). Each implementation runs in its own process (JAX preallocates GPU
memory); one untimed call (compilation) precedes the timed ones.

  python -m bench.generate_throughput --tiny                        # CPU smoke test
  python -m bench.generate_throughput --out results/generate.json   # jax and hf (dynamic cache)
  python -m bench.generate_throughput --impls jax,hf,hf-static      # + transformers' static cache (auto-compiled)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.common import (GIB, canonical_model, environment, error_tail, format_table, model_shape, synthetic_batch,
                          write_json)
from bench.train_step import parse_list

IMPLS = ("jax", "hf", "hf-static")
COLUMNS = (("impl", "implementation", ""), ("batch", "batch", "d"), ("prompt_len", "prompt", "d"),
           ("new_tokens", "new tokens", "d"), ("seconds", "s / call", ".2f"), ("tokens_per_s", "new tokens/s", ",.0f"),
           ("vs_hf", "vs hf", ".2f"), ("peak_memory_gib", "peak GiB", ".1f"), ("status", "status", ""))


def prompts(args) -> np.ndarray:
    """(batch, prompt_len) int32 prompt ids, the same for every implementation."""
    return synthetic_batch(0, args.batch, args.prompt_len, model_shape(args.model)["vocab_size"])


def time_calls(generate_once, repeats: int) -> tuple[float, np.ndarray]:
    """(mean seconds per call after one untimed call, the last call's tokens)."""
    tokens = generate_once()
    start = time.perf_counter()
    for _ in range(repeats):
        tokens = generate_once()
    return (time.perf_counter() - start) / repeats, tokens


def run_jax(args) -> dict:
    """lowrank_jax.models.generate (greedy, KV cache) on a random bf16 model built on the first device."""
    import jax
    import jax.numpy as jnp

    from bench.random_llama import random_llama
    from lowrank_jax.models import LlamaConfig, generate
    from lowrank_jax.sharding import make_mesh

    config = LlamaConfig(**model_shape(args.model), dtype="bfloat16", param_dtype="bfloat16", remat="none")
    device = jax.devices()[0]
    model = random_llama(config, make_mesh(1, 1, 1, devices=[device]))
    ids = jnp.asarray(prompts(args))
    mask = jnp.ones_like(ids)

    def once():
        return np.asarray(generate(model, ids, mask, max_new_tokens=args.new_tokens, eos_token_id=None))

    seconds, tokens = time_calls(once, args.repeats)
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {"device": device.device_kind, "seconds": seconds, "tokens_shape": list(tokens.shape),
            "peak_memory_gib": None if peak is None else peak / GIB}


def run_hf(args, cache: str) -> dict:
    """transformers' LlamaForCausalLM.generate (greedy) with a dynamic or static (auto-compiled) KV cache."""
    import torch
    import transformers

    from lowrank_jax.models import LlamaConfig

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    hf_config = transformers.LlamaConfig.from_dict(LlamaConfig(**model_shape(args.model)).to_hf_dict())
    with device:
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16,
                                                              attn_implementation="sdpa")
    model.eval()
    ids = torch.as_tensor(prompts(args), dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   pad_token_id=0)
    if cache == "static":
        options["cache_implementation"] = "static"

    def once():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, **options)
        return out[:, ids.shape[1]:].cpu().numpy()  # .cpu() waits for the GPU

    seconds, tokens = time_calls(once, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "seconds": seconds, "tokens_shape": list(tokens.shape), "peak_memory_gib": peak}


def run_impl(args) -> dict:
    """One implementation in this process; returns its row."""
    row = dict(impl=args.impl, model=canonical_model(args.model), batch=args.batch, prompt_len=args.prompt_len,
               new_tokens=args.new_tokens)
    result = run_jax(args) if args.impl == "jax" else run_hf(args, "static" if args.impl == "hf-static" else "dynamic")
    expected = [args.batch, args.new_tokens]
    if result["tokens_shape"] != expected:
        raise RuntimeError(f"{args.impl} returned tokens of shape {result['tokens_shape']}, expected {expected}")
    return {**row, **result, "status": "ok", "tokens_per_s": args.batch * args.new_tokens / result["seconds"]}


def run_isolated(args, impl: str) -> dict:
    """Runs `impl` in a fresh process of this script; a crash becomes a row with status 'error'."""
    with tempfile.TemporaryDirectory() as folder:
        result = os.path.join(folder, "row.json")
        forwarded = [f"--model={args.model}", f"--batch={args.batch}", f"--prompt-len={args.prompt_len}",
                     f"--new-tokens={args.new_tokens}", f"--repeats={args.repeats}"]
        command = [sys.executable, "-m", "bench.generate_throughput", f"--impl={impl}", f"--result={result}",
                   *forwarded, *(["--tiny"] if args.tiny else [])]
        env = dict(os.environ, **({"JAX_PLATFORMS": "cpu"} if args.tiny else {}))
        process = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
        if process.returncode == 0:
            with open(result) as f:
                return json.load(f)
    return {"impl": impl, "status": "error", "error": error_tail(process.stderr)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="1b", help="1b, 7b or tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls")
    parser.add_argument("--impls", type=parse_list, default=["jax", "hf"], help=f"comma list from {IMPLS}")
    parser.add_argument("--impl", choices=IMPLS, help="(internal) run only this implementation, in this process")
    parser.add_argument("--result", help="(internal) where --impl writes its row")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, batch 4, 8 new tokens")
    parser.add_argument("--out", help="JSON output path")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.batch, args.prompt_len, args.new_tokens, args.repeats = "tiny", 4, 16, 8, 1
    unknown = [i for i in args.impls if i not in IMPLS]
    if unknown:
        parser.error(f"unknown implementations {unknown}; choose from {IMPLS}")
    canonical_model(args.model)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.impl:
        write_json(args.result, run_impl(args))
        return
    rows = []
    for impl in args.impls:
        print(f"{impl}: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens", flush=True)
        rows.append(run_isolated(args, impl))
        hf = next((r for r in rows if r["impl"] == "hf" and r["status"] == "ok"), None)
        for row in rows:
            if row["status"] == "ok" and hf is not None:
                row["vs_hf"] = row["tokens_per_s"] / hf["tokens_per_s"]
        device = next((r["device"] for r in rows if "device" in r), None)
        write_json(args.out, {"environment": environment(device), "rows": rows})
    print()
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
