"""Frozen-base bytes, step memory and tokens/s of a quantized (QLoRA-style) base against the bf16 base.

Each format ('none' = the bf16 base, 'int8', 'nf4' with double-quantized scales) runs users' jitted train step
(bench/train_one.py) in a fresh process, so the peak-memory counter is its own. The frozen base bytes are also
computed exactly from shapes alone (no device memory), which is how the 7B figures come out on any machine:

  python -m bench.quantized_base --model tiny --seq 64 --batch 4 --steps 2 --warmup 1 --tiny    # CPU smoke test
  python -m bench.quantized_base --bytes-only --model 7b                                         # base bytes only
  python -m bench.quantized_base --model 7b --seq 2048 --batch 4 --out docs/bench_results/quantized_base_7b.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import jax
from flax import nnx

from bench.common import (GIB, QUANTIZED_COLUMNS, canonical_model, environment, error_tail, format_table,
                          model_shape, write_json)
from lowrank_jax import AdapterConfig, adapt
from lowrank_jax.adapters import FrozenFactor
from lowrank_jax.models import Llama, LlamaConfig
from lowrank_jax.quant import quantize
from lowrank_jax.sharding import state_shardings

FORMATS = ("none", "int8", "nf4")


def build_model(config: LlamaConfig, fmt: str, rank: int, adapter_dtype: str, seed: int) -> nnx.Module:
    """A random Llama with LoRA (alpha = 2·rank) on every projection, its frozen base quantized to `fmt`."""
    model = adapt(Llama(config, rngs=nnx.Rngs(seed)),
                  AdapterConfig(method="lora", rank=rank, alpha=2.0 * rank, dtype=adapter_dtype, seed=seed))
    return model if fmt == "none" else quantize(model, fmt)


def frozen_base_bytes(model_name: str, fmt: str, dtype: str = "bfloat16") -> int:
    """Bytes of everything that does not train (base kernels or their quantized parts, embeddings, norms, lm_head),
    from shapes alone: the model is only traced (`nnx.eval_shape`)."""
    config = LlamaConfig(**model_shape(model_name), dtype=dtype, param_dtype=dtype)
    abstract = nnx.eval_shape(lambda: build_model(config, fmt, 8, "float32", 0))
    _, _, frozen = nnx.split(abstract, nnx.LoRAParam, ...)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.as_pure(frozen)))


def quantized_build_state(spec, mesh, fmt: str):
    """`bench.train_one.build_state` with the base quantized after `adapt`: the model is built, adapted and
    quantized in one jitted program whose outputs are placed by their logical axes (as `random_llama` does), so
    the bf16 base never sits in memory beside the quantized one."""
    from bench.train_one import adapter_rank
    from lowrank_jax.training.placement import split_onto_mesh

    config = LlamaConfig(**model_shape(spec.model), dtype=spec.dtype, param_dtype=spec.dtype,
                         scan_layers=spec.scan_layers, remat=spec.remat, attention_impl=spec.attention)
    rank = adapter_rank(spec)

    def build():
        return build_model(config, fmt, rank, spec.adapter_dtype, spec.seed)

    graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
    state = jax.jit(lambda: nnx.as_pure(nnx.state(build())),
                    out_shardings=state_shardings(abstract_state, mesh))()
    model = nnx.merge(graphdef, state)
    factors = nnx.state(model, nnx.Any(nnx.LoRAParam, FrozenFactor))
    counts = {"adapter_params": sum(x.size for x in jax.tree.leaves(nnx.as_pure(factors)))}
    train_state = split_onto_mesh(model, mesh)
    counts["trainable_params"] = sum(x.size for x in jax.tree.leaves(train_state.trainable))
    counts["frozen_base_gib"] = sum(x.nbytes for x in jax.tree.leaves(train_state.frozen)) / GIB
    return train_state, counts


def run_one(fields: dict, fmt: str) -> dict:
    """One format's row, in this process (`bench.train_one.run` with the quantized state)."""
    from bench import train_one

    # train_one builds an unquantized state; this process runs one format only, so its builder is swapped here.
    train_one.build_state = lambda spec, mesh: quantized_build_state(spec, mesh, fmt)
    row = train_one.run(train_one.RunSpec(**fields))
    return {**row, "quantize": fmt, "final_loss": row["losses"][-1] if row.get("losses") else None}


def run_isolated(fields: dict, fmt: str, env: dict) -> dict:
    """`run_one` in a fresh process; a crash becomes a row with status 'error' and the end of its stderr."""
    with tempfile.TemporaryDirectory() as folder:
        result = os.path.join(folder, "row.json")
        command = [sys.executable, "-m", "bench.quantized_base", "--one", fmt, "--spec", json.dumps(fields),
                   "--result", result]
        process = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
        if process.returncode == 0 and os.path.exists(result):
            with open(result) as f:
                return json.load(f)
    return {**fields, "quantize": fmt, "status": "error", "error": error_tail(process.stderr)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="7b", help="benchmark shape: 7b (Llama-2), 1b, tiny")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {FORMATS}")
    parser.add_argument("--method", default="lora-r8", help="bench.common METHODS entry (a LoRA method)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--remat", default="full")
    parser.add_argument("--attention", default="cudnn", help="cudnn (GPU) or xla")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: xla attention, fp32, small rank")
    parser.add_argument("--bytes-only", action="store_true", help="print the frozen base bytes and stop")
    parser.add_argument("--out", help="write the rows here as JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(args.formats) - set(FORMATS))
    if unknown:
        parser.error(f"--formats {unknown} unknown; choose from {FORMATS}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        write_json(args.result, run_one(json.loads(args.spec), args.one))
        return
    model = canonical_model(args.model)
    base_bytes = {fmt: frozen_base_bytes(model, fmt) / GIB for fmt in args.formats}
    print(f"{model}: frozen base from shapes (bf16 model): "
          + ", ".join(f"{fmt} {gib:.2f} GiB ({gib * 1024:.1f} MiB)" for fmt, gib in base_bytes.items()))
    if args.bytes_only:
        return
    fields = dict(model=model, method=args.method, seq=args.seq, batch=args.batch, accum=args.accum,
                  steps=args.steps, warmup=args.warmup, remat=args.remat, attention=args.attention)
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    if args.tiny:
        fields.update(attention="xla", dtype="float32", max_rank=4)
        env["JAX_PLATFORMS"] = "cpu"
    rows = [run_isolated(fields, fmt, env) for fmt in args.formats]
    bf16 = next((r for r in rows if r["quantize"] == "none" and r.get("tokens_per_s")), None)
    for row in rows:
        row["frozen_base_gib_from_shapes"] = base_bytes[row["quantize"]]
        if bf16 and row.get("tokens_per_s"):
            row["tokens_per_s_vs_bf16"] = row["tokens_per_s"] / bf16["tokens_per_s"]
    print(format_table(rows, QUANTIZED_COLUMNS))
    if args.out:
        device = next((r["device"] for r in rows if "device" in r), None)
        write_json(args.out, {"environment": environment(device), "rows": rows})


if __name__ == "__main__":
    main()
