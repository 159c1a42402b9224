"""Train-step throughput, MFU and peak memory of every method, with the step users run (training/step.py).

Each configuration runs in a fresh process (bench/train_one.py), so its peak-memory counter is its own; compiled
programs and autotuning results are shared through JAX's persistent compilation cache. Writes JSON after every row.

  python -m bench.train_step --tiny                                    # CPU smoke test, tiny shapes
  python -m bench.train_step --models 7b --seqs 2048 --batch 8 --out results/train_7b.json
  python -m bench.train_step --models 1b --methods lora-r8 --batch 8 --scaling 1,2 --warmup 2 --steps 18
  python -m bench.train_step --models 7b --methods lora-r8 --batch 8 --loss-chunk-tokens 512   # chunked loss
  python -m bench.train_step --models 7b --methods lora-r8 --batch 8 --fuse-projections   # q/k/v, gate/up fused
  python -m bench.train_step --models 7b --methods lora-r8 --batch 8 --remat auto   # the memory plan's policy
  python -m bench.train_step --models 7b --seqs 512 --batch 32 --remat auto --accum 0 --unrolled   # 7B preset's plan
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.common import (FULL_FT_MODELS, H100_BF16_DENSE_TFLOPS, METHODS, TRAIN_COLUMNS, canonical_model,
                          environment, error_tail, format_table, write_json)

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "no train step fits")
SCALING_COLUMNS = (("model", "model", ""), ("method", "method", ""), ("devices", "GPUs", "d"),
                   ("batch", "global batch", "d"), ("accum", "accum", "d"), ("tokens_per_s", "tokens/s", ",.0f"),
                   ("scaling", "speed-up", ".2f"), ("scaling_efficiency", "efficiency", ".1%"),
                   ("final_loss", "loss@end", ".5f"), ("loss_diff_vs_1", "Δloss vs 1", ".2e"),
                   ("peak_memory_gib", "peak GiB/dev", ".1f"), ("status", "status", ""))


def parse_list(text: str, kind=str) -> list:
    """'a,b,c' -> [kind('a'), kind('b'), kind('c')]."""
    return [kind(x) for x in text.split(",") if x]


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every peer benchmark (bench/peft_step.py, bench/tunix_step.py) shares with this one."""
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--no-shrink", action="store_true", help="do not halve the batch when it does not fit")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, seq 64, batch 4")
    parser.add_argument("--deadline", type=float, help="unix time after which no new configuration starts")
    parser.add_argument("--out", help="JSON output path")


def finish_peer_arguments(parser: argparse.ArgumentParser, args, methods, framework: str):
    """`args` with the step counts' defaults (5 timed after 2 warm-up; --tiny 2 after 1), after checking that
    `methods` (the names the peer runs) has every requested method."""
    args.steps = args.steps or (2 if args.tiny else 5)
    args.warmup = (1 if args.tiny else 2) if args.warmup is None else args.warmup
    unknown = [m for m in args.methods if m not in methods]
    if unknown:
        parser.error(f"unknown methods {unknown}; {framework} runs {list(methods)}")
    return args


def parse_batch(text: str) -> dict[str, int]:
    """'8' or '1b=8,7b=4,7b/lorapro_adamw-r8-fp32=2' -> {'': 8} / {'llama-3.2-1b': 8, ...}; most specific wins."""
    table = {}
    for item in parse_list(text):
        key, _, value = item.rpartition("=")
        if key:
            model, _, method = key.partition("/")
            key = canonical_model(model) + (f"/{method}" if method else "")
        table[key] = int(value)
    return table


def batch_for(table: dict[str, int], model: str, method: str) -> int:
    """The batch of (model, method) from a parse_batch table: MODEL/METHOD, else MODEL, else the plain default."""
    for key in (f"{model}/{method}", model, ""):
        if key in table:
            return table[key]
    raise ValueError(f"--batch gives no batch for {model} / {method}; add '{model}=N' or a plain default")


def child_environment(args) -> dict[str, str]:
    """Environment of the benchmark processes: compilation cache, GPU memory fraction, CPU devices for --tiny."""
    env = dict(os.environ)
    if args.cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = args.cache_dir
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # JAX's default of 0.75 would hide a quarter
    if args.tiny:
        env["JAX_PLATFORMS"] = "cpu"
        devices = max(args.scaling or [args.devices])
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return env


def run_isolated(spec: dict, env: dict[str, str], module: str = "bench.train_one",
                 framework: str = "lowrank-jax") -> dict:
    """Runs one spec in a fresh `python -m MODULE --spec JSON --result PATH` process; a crash becomes a row with
    status 'oom' or 'error', with phase 'steps' when the step had compiled (its row so far is kept) and 'init'
    before that."""
    with tempfile.TemporaryDirectory() as folder:
        result = os.path.join(folder, "row.json")
        command = [sys.executable, "-m", module, "--spec", json.dumps(spec), "--result", result]
        process = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
        row = {"framework": framework, **spec, "phase": "init"}
        if os.path.exists(result):
            with open(result) as f:
                row = json.load(f)
    if process.returncode == 0 and "status" in row:
        return row
    status = "oom" if any(m in process.stderr for m in OOM_MARKERS) else "error"
    return {**row, "status": status, "error": error_tail(process.stderr)}


def run_here(spec: dict) -> dict:
    """Runs one spec in this process; an exception becomes a row with status 'oom' or 'error'."""
    from bench import train_one
    try:
        return train_one.run(train_one.RunSpec(**spec))
    except Exception as err:  # one failed configuration must not end the table
        message = f"{type(err).__name__}: {err}"
        status = "oom" if any(m in message for m in OOM_MARKERS) else "error"
        return {"framework": "lowrank-jax", **spec, "status": status, "error": message}


def may_fit_smaller(row: dict) -> bool:
    """Whether an 'oom' row may fit at half the batch: it ran out while stepping, or XLA's estimate leaves room once
    every temporary halves (an optimistic bound: optimizer temporaries do not shrink with the batch)."""
    if row.get("phase") == "steps":
        return True
    estimate, arguments, limit = (row.get(k) for k in ("step_memory_estimate_gib", "argument_gib", "memory_limit_gib"))
    return row.get("phase") == "compiled" and arguments + (estimate - arguments) / 2 <= limit


def run_with_shrinking(spec: dict, run, shrink: bool) -> dict:
    """Runs `spec`; on 'oom' halves the batch (keeping it a multiple of accum) and tries again while it may fit.
    A planned step (accum 0) is not shrunk: its plan has already tried every split into micro-batches."""
    while True:
        row = run(spec)
        smaller = spec["batch"] // 2
        if (row["status"] != "oom" or not shrink or not spec["accum"] or smaller < spec["accum"]
                or smaller % spec["accum"] or not may_fit_smaller(row)):
            return row
        print(f"  {spec['method']} batch {spec['batch']} does not fit; trying {smaller}", flush=True)
        spec = {**spec, "batch": smaller}


def table_specs(args, methods: list[str]) -> list[dict]:
    """The specs of the method table: models × seqs × methods (full fine-tuning only for shapes that fit)."""
    batches = parse_batch(args.batch)
    specs = []
    for model, seq, method in itertools.product(args.models, args.seqs, methods):
        model = canonical_model(model)
        if method == "full" and model not in FULL_FT_MODELS:
            print(f"skipping full fine-tuning of {model} (does not fit one GPU)")
            continue
        specs.append(dict(common_fields(args), model=model, method=method, seq=seq,
                          batch=batch_for(batches, model, method), accum=args.accum, devices=args.devices,
                          mesh=args.mesh))
    return specs


def scaling_specs(args, methods: list[str]) -> list[dict]:
    """Per device count n in --scaling: global batch = batch · max(n) in max(n)/n micro-batches (same data)."""
    largest = max(args.scaling)
    if any(largest % n for n in args.scaling):
        raise ValueError(f"--scaling {args.scaling}: every count must divide the largest, {largest}")
    batches = parse_batch(args.batch)
    specs = []
    for model, seq, method, n in itertools.product(args.models, args.seqs, methods, sorted(args.scaling)):
        model = canonical_model(model)
        per_device = batch_for(batches, model, method)
        specs.append(dict(common_fields(args), model=model, method=method, seq=seq, batch=per_device * largest,
                          accum=largest // n, devices=n, mesh=(1, 1, 1) if n == 1 else args.mesh))
    return specs


def common_fields(args) -> dict:
    """RunSpec fields that every configuration of this invocation shares."""
    return dict(steps=args.steps, warmup=args.warmup, remat=args.remat, attention=args.attention,
                scan_layers=not args.unrolled,
                adapter_dtype=args.adapter_dtype, learning_rate=args.lr, segments=args.segments,
                loss_chunk_tokens=args.loss_chunk_tokens, fuse_projections=args.fuse_projections,
                peak_tflops=args.peak_tflops, max_rank=16 if args.tiny else None)


def add_scaling_columns(rows: list[dict]) -> None:
    """Speed-up, efficiency and loss difference of each row against the 1-device row of the same configuration."""
    for row in rows:
        base = next((r for r in rows if r["devices"] == 1 and r["status"] == "ok" and all(
            r[k] == row[k] for k in ("model", "method", "seq", "batch"))), None)
        if row["status"] != "ok" or base is None:
            continue
        row["final_loss"] = row["losses"][-1]
        row["scaling"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["scaling_efficiency"] = row["scaling"] / row["devices"]
        row["loss_diff_vs_1"] = row["losses"][-1] - base["losses"][-1]
        row["max_abs_loss_diff_vs_1"] = max(abs(a - b) for a, b in zip(row["losses"], base["losses"]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=parse_list, default=["1b", "7b"], help="comma list: 1b, 7b, 8b, tiny")
    parser.add_argument("--methods", type=parse_list, default=list(METHODS),
                        help=f"comma list from {', '.join(METHODS)}")
    parser.add_argument("--seqs", type=lambda t: parse_list(t, int), default=[2048], help="comma list of lengths")
    parser.add_argument("--batch", default="8", help="rows per step: N, or MODEL=N[,MODEL/METHOD=N...]")
    parser.add_argument("--accum", type=int, default=1,
                        help="micro-batches per step (gradient accumulation); 0: the memory plan's (data.grad_accum=0)")
    parser.add_argument("--steps", type=int, help="timed steps (default 5; --quick 3, --tiny 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps before timing (default 2; --quick, --tiny 1)")
    parser.add_argument("--remat", default="full",
                        help="model.remat policy (none, full, dots_saveable, ...; auto: the fastest that fits)")
    parser.add_argument("--attention", default="cudnn", help="model.attention_impl: cudnn or xla")
    parser.add_argument("--unrolled", action="store_true",
                        help="model.scan_layers=False: one compiled block per layer instead of a scan")
    parser.add_argument("--adapter-dtype", default="float32", help="adapter parameter dtype (AdapterConfig.dtype)")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (cosine schedule, as configs)")
    parser.add_argument("--segments", type=int, default=1, help="packed sequences per row")
    parser.add_argument("--loss-chunk-tokens", type=int, default=0,
                        help="train.loss_chunk_tokens: the loss's logits this many positions at a time (0 = at once)")
    parser.add_argument("--fuse-projections", action="store_true",
                        help="model.fuse_projections: q/k/v and gate/up (with adapters' x A) from one matmul each")
    parser.add_argument("--devices", type=int, default=1, help="devices of the mesh (first N visible)")
    parser.add_argument("--mesh", type=lambda t: tuple(parse_list(t, int)), default=(1, -1, 1),
                        help="data,fsdp,tensor sizes (one may be -1); used for runs on more than one device")
    parser.add_argument("--scaling", type=lambda t: parse_list(t, int), default=None,
                        help="device counts, e.g. 1,2: same global batch and data on each, --batch rows per device")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="per-device peak for MFU")
    parser.add_argument("--in-process", action="store_true",
                        help="run every config in this process (faster; peak memory is then the running maximum)")
    parser.add_argument("--no-shrink", action="store_true", help="do not halve the batch when it does not fit")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/lowrank_jax_bench/jax"),
                        help="JAX persistent compilation cache ('' = off)")
    parser.add_argument("--quick", action="store_true", help="LoRA r=8 and LoRA-Pro AdamW fp32 only, 3 timed steps")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, seq 64, batch 4")
    parser.add_argument("--deadline", type=float, help="unix time after which no new configuration starts")
    parser.add_argument("--out", help="JSON output path")
    args = parser.parse_args(argv)
    if args.tiny:  # CPUs keep no memory statistics, so one process loses nothing
        args.models, args.seqs, args.batch, args.attention, args.cache_dir = ["tiny"], [64], "4", "xla", ""
        args.in_process = True
    if args.quick:
        args.methods = ["lora-r8", "lorapro_adamw-r8-fp32"]
    quick = args.tiny or args.quick
    args.steps = args.steps or (2 if args.tiny else 3 if args.quick else 5)
    args.warmup = (1 if quick else 2) if args.warmup is None else args.warmup
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if len(args.mesh) != 3:
        parser.error(f"--mesh needs three sizes data,fsdp,tensor, got {args.mesh}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    env = child_environment(args)
    specs = scaling_specs(args, args.methods) if args.scaling else table_specs(args, args.methods)
    if args.in_process:
        os.environ.update(env)  # before JAX is imported
        run = run_here
    else:
        run = lambda spec: run_isolated(spec, env)  # noqa: E731
    rows = []
    for index, spec in enumerate(specs):
        print(f"[{index + 1}/{len(specs)}] {spec['model']} {spec['method']} seq {spec['seq']} batch "
              f"{spec['batch']} devices {spec['devices']}", flush=True)
        if args.deadline and time.time() > args.deadline:
            row = {"framework": "lowrank-jax", **spec, "status": "skipped", "error": "time budget (--deadline)"}
        else:
            start = time.perf_counter()
            row = run_with_shrinking(spec, run, shrink=not args.no_shrink and not args.scaling)
            row["wall_s"] = time.perf_counter() - start
        rows.append({**row, "scaling_run": bool(args.scaling)})
        if row["status"] == "ok":
            print(f"  {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.1%}; init {row['init_s']:.0f} s "
                  f"(adapters {row['adapter_init_s']:.0f} s), compile {row['compile_s']:.0f} s, "
                  f"all {row['wall_s']:.0f} s", flush=True)
        else:
            print(f"  {row['status']}: {row.get('error', '')}", flush=True)
        if args.scaling:
            add_scaling_columns(rows)
        device = next((r["device"] for r in rows if "device" in r), None)
        write_json(args.out, {"environment": environment(device), "peak_tflops": args.peak_tflops,
                              "in_process": args.in_process, "rows": rows})
    print()
    print(format_table(rows, SCALING_COLUMNS if args.scaling else TRAIN_COLUMNS))


if __name__ == "__main__":
    main()
