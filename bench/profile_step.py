"""Where a train step's GPU time goes: kernel time by category, GPU idle time, the top kernels, matmul TFLOP/s.

Builds the benchmark's own step (bench/train_one.py `prepare`, so the shapes, methods, remat and attention are those of
bench/train_step.py), times `--steps` steps after `--warmup` ones, then runs `--steps` more under
`jax.profiler.trace` and reads the kernels of the GPU stream rows from its perfetto_trace.json.gz:

  python -m bench.profile_step --models 7b --methods lora-r8 --batch 4 --seq 2048 \\
      --remat dots_with_no_batch_dims_saveable --out profile.json
  python -m bench.profile_step --tiny      # CPU smoke test: no GPU rows, so XLA's CPU op events stand in

A kernel's category is the first of collective, memcpy (and memset), attention, matmul, fusion (XLA's elementwise,
reduction and layout kernels) whose pattern its name matches, else other. Busy times merge overlapping kernels
(several streams), so a category's share and the idle fraction (1 - busy / step) never double count. The step time
is the one measured outside the trace, as MFU's: under the profiler XLA runs its CUDA graphs op by op, so the traced
step (printed as 'traced') can be slower while the kernels themselves are not. Matmul TFLOP/s is the MFU
numerator's matmul part (less attention when cuDNN runs it) over the matmul kernels' busy time; remat's
recomputation is not in the numerator, so it is a lower bound of what the kernels do. On the CPU, op events nest
(a while loop holds its body's ops), so there categories overlap and the tables only show that the code runs.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

from bench.common import (H100_BF16_DENSE_TFLOPS, METHODS, attention_forward_flops, canonical_model, environment,
                          mfu, model_shape, write_json)
from bench.report import markdown
from bench.train_step import child_environment, parse_list

CATEGORY_PATTERNS = (  # a kernel takes the first category whose pattern its lower-cased name contains
    ("collective", r"nccl|all[-_]?reduce|all[-_]?gather|reduce[-_]?scatter|all[-_]to[-_]all|collective"),
    ("memcpy", r"memcpy|memset"),
    ("attention", r"fmha|flash|attention|sdpa|dot_do_o"),  # dot_do_o: cuDNN's rowsum(dO·O) of the backward
    ("matmul", r"gemm|cublas|cutlass|xmma|nvjet|(?<![a-z])dot(?![a-z])"),
    ("fusion", r"fusion|loop_|input_|reduce|transpose|convert|copy|broadcast|slice|concatenate|select|iota|scatter"
               r"|gather|softmax"),
)
CATEGORIES = tuple(name for name, _ in CATEGORY_PATTERNS) + ("other",)
CATEGORY_COLUMNS = (("category", "category", ""), ("ms_per_step", "ms / step", ".2f"),
                    ("share_of_step", "% of step", ".1%"), ("kernels_per_step", "kernels / step", ".0f"))
KERNEL_COLUMNS = (("kernel", "kernel", ""), ("category", "category", ""), ("ms_per_step", "ms / step", ".2f"),
                  ("share_of_step", "% of step", ".1%"), ("calls_per_step", "calls / step", ".0f"))
NAME_WIDTH = 90  # kernel names in the printed table (JSON keeps them whole)


def kernel_category(name: str) -> str:
    """The category of a kernel (or, on the CPU, an XLA op) by its name; see CATEGORY_PATTERNS."""
    lowered = name.lower()
    return next((category for category, pattern in CATEGORY_PATTERNS if re.search(pattern, lowered)), "other")


def busy_time(intervals) -> float:
    """Length of the union of (start, end) intervals: overlapping kernels count once."""
    total, covered_until = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > covered_until:
            total += end - max(start, covered_until)
            covered_until = end
    return total


def device_kernels(events: list[dict]) -> tuple[list[dict], list[str]]:
    """The complete ('X') events of the GPU stream rows and those rows' names, 'process / thread'.

    jax names a GPU's process '/device:GPU:N' and its streams' threads 'Stream #ID(kinds)' (the CUPTI overhead row
    and the host threads are left out). Without such rows (the CPU), the events of XLA ops (an 'hlo_op' arg) stand in.
    """
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e["name"] == "thread_name"}

    def row(event):
        return f"{processes.get(event['pid'], '?')} / {threads.get((event['pid'], event['tid']), '?')}"

    complete = [e for e in events if e.get("ph") == "X"]
    kernels = [e for e in complete if processes.get(e["pid"], "").startswith("/device:GPU")
               and threads.get((e["pid"], e["tid"]), "").startswith("Stream #")]
    kernels = kernels or [e for e in complete if "hlo_op" in e.get("args", {})]
    return kernels, sorted({row(e) for e in kernels})


def kernel_summary(kernels: list[dict], steps: int, step_s: float, top: int = 15) -> dict:
    """Busy time, idle fraction, per-category and top-`top` kernel rows of `steps` traced steps (times in µs, as
    Chrome traces have them), each as ms per step and share of a `step_s`-second step."""
    def ms_per_step(microseconds):
        return microseconds / 1e3 / steps

    def share(microseconds):
        return microseconds / 1e6 / steps / step_s

    def busy(group):
        return busy_time((e["ts"], e["ts"] + e["dur"]) for e in group)

    by_category, by_name = collections.defaultdict(list), collections.defaultdict(list)
    for event in kernels:
        by_category[kernel_category(event["name"])].append(event)
        by_name[event["name"]].append(event)
    categories = [{"category": c, "ms_per_step": ms_per_step(busy(by_category[c])),
                   "share_of_step": share(busy(by_category[c])), "kernels_per_step": len(by_category[c]) / steps}
                  for c in CATEGORIES]
    totals = sorted(((sum(e["dur"] for e in group), name) for name, group in by_name.items()), reverse=True)
    top_kernels = [{"kernel": name, "category": kernel_category(name), "ms_per_step": ms_per_step(total),
                    "share_of_step": share(total), "calls_per_step": len(by_name[name]) / steps}
                   for total, name in totals[:top]]
    busy_all = busy(kernels)
    return {"busy_ms_per_step": ms_per_step(busy_all), "idle_fraction": 1.0 - share(busy_all),
            "categories": categories, "top_kernels": top_kernels}


def load_trace_events(folder: str) -> list[dict]:
    """The events of the newest perfetto_trace.json.gz that `jax.profiler.trace(folder, ...)` wrote."""
    path = max(glob.glob(os.path.join(folder, "plugins", "profile", "*", "perfetto_trace.json.gz")),
               key=os.path.getmtime)
    with gzip.open(path) as f:
        return json.load(f)["traceEvents"]


def model_tflops(flops: float, milliseconds_per_step: float) -> float | None:
    """Model TFLOP/s of `flops` per step done in `milliseconds_per_step`; None when nothing ran."""
    return flops / (milliseconds_per_step * 1e-3) / 1e12 if milliseconds_per_step > 0 else None


def profile(spec, trace_folder: str, top: int) -> dict:
    """Times `spec.steps` steps after `spec.warmup`, traces `spec.steps` more into `trace_folder`; the result row."""
    import jax

    from bench.train_one import model_flops, prepare

    p = prepare(spec)

    def run_steps(state, batches):
        for batch in batches:
            *state, _ = p.compiled(*state, p.frozen, batch)
        return jax.block_until_ready(state)

    state = run_steps((p.trainable, p.opt_state, p.rngs), p.batches[:spec.warmup])
    timed = p.batches[spec.warmup:]
    start = time.perf_counter()
    state = run_steps(state, timed)
    step_s = (time.perf_counter() - start) / spec.steps
    with jax.profiler.trace(trace_folder, create_perfetto_trace=True):
        start = time.perf_counter()
        run_steps(state, timed)
        traced_step_s = (time.perf_counter() - start) / spec.steps

    kernels, rows = device_kernels(load_trace_events(trace_folder))
    summary = kernel_summary(kernels, spec.steps, step_s, top)
    flops = model_flops(p.row)
    # Attention's forward and backward matmuls (train_step_flops); with --attention xla they run as matmul kernels.
    attention_flops = (3 * attention_forward_flops(model_shape(spec.model), spec.batch, spec.seq, spec.segments)
                       if spec.attention == "cudnn" else 0.0)
    category_ms = {c["category"]: c["ms_per_step"] for c in summary["categories"]}
    return {**p.row, "status": "ok", "step_s": step_s, "traced_step_s": traced_step_s,
            "mfu": mfu(flops, step_s, spec.peak_tflops), "model_tflop_per_step": flops / 1e12,
            "matmul_model_tflops": model_tflops(flops - attention_flops, category_ms["matmul"]),
            "attention_model_tflops": (model_tflops(attention_flops, category_ms["attention"]) if attention_flops
                                       else None),
            "trace_rows": rows, **summary}


def report(row: dict) -> str:
    """Markdown: a heading, the step's totals, the category table and the top-kernel table."""
    def tflops(value):
        return "-" if value is None else f"{value:.0f}"

    kernels = [{**k, "kernel": k["kernel"][:NAME_WIDTH]} for k in row["top_kernels"]]
    return "\n\n".join([
        f"## {row['model']} {row['method']}, seq {row['seq']}, batch {row['batch']}, remat {row['remat']}, "
        f"attention {row['attention']} ({row['device']})",
        f"step {row['step_s'] * 1e3:.1f} ms (traced {row['traced_step_s'] * 1e3:.1f} ms), MFU {row['mfu']:.1%}; "
        f"busy {row['busy_ms_per_step']:.1f} ms / step, idle {row['idle_fraction']:.1%}; model TFLOP/s of matmul "
        f"kernels {tflops(row['matmul_model_tflops'])}, of attention kernels {tflops(row['attention_model_tflops'])}"
        f"\n\nrows: {', '.join(row['trace_rows'])}",
        markdown(row["categories"], CATEGORY_COLUMNS),
        markdown(kernels, KERNEL_COLUMNS)])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=parse_list, default=["7b"], help="comma list: 1b, 7b, tiny")
    parser.add_argument("--methods", type=parse_list, default=["lora-r8"],
                        help=f"comma list from {', '.join(METHODS)}")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per row")
    parser.add_argument("--batch", type=int, default=8, help="rows per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, then as many traced ones")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--remat", default="full", help="model.remat policy (none, full, dots_saveable, ...)")
    parser.add_argument("--attention", default="cudnn", help="model.attention_impl: cudnn or xla")
    parser.add_argument("--unrolled", action="store_true",
                        help="model.scan_layers=False: one compiled block per layer instead of a scan")
    parser.add_argument("--fuse-projections", action="store_true",
                        help="model.fuse_projections: q/k/v and gate/up (with adapters' x A) from one matmul each")
    parser.add_argument("--adapter-dtype", default="float32", help="adapter parameter dtype (AdapterConfig.dtype)")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="device peak for MFU")
    parser.add_argument("--top", type=int, default=15, help="kernels in the top table")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/lowrank_jax_bench/jax"),
                        help="JAX persistent compilation cache ('' = off)")
    parser.add_argument("--trace-dir", help="keep the traces here, one folder per model and method")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, seq 64, batch 4")
    parser.add_argument("--out", help="JSON output path")
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.seq, args.batch, args.attention, args.cache_dir = ["tiny"], 64, 4, "xla", ""
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.update(child_environment(argparse.Namespace(**vars(args), devices=1, scaling=None)))  # before JAX
    from bench.train_one import RunSpec

    rows = []
    for model in args.models:
        for method in args.methods:
            spec = RunSpec(model=canonical_model(model), method=method, seq=args.seq, batch=args.batch,
                           steps=args.steps, warmup=args.warmup, remat=args.remat, attention=args.attention,
                           scan_layers=not args.unrolled, fuse_projections=args.fuse_projections,
                           adapter_dtype=args.adapter_dtype, peak_tflops=args.peak_tflops,
                           max_rank=16 if args.tiny else None)
            print(f"[{len(rows) + 1}/{len(args.models) * len(args.methods)}] {spec.model} {method} seq {spec.seq} "
                  f"batch {spec.batch}", flush=True)
            with tempfile.TemporaryDirectory() as scratch:
                rows.append(profile(spec, os.path.join(args.trace_dir or scratch, f"{spec.model}_{method}"),
                                    args.top))
            write_json(args.out, {"environment": environment(rows[0]["device"]), "peak_tflops": args.peak_tflops,
                                  "rows": rows})
    for row in rows:
        print("\n" + report(row))


if __name__ == "__main__":
    main()
