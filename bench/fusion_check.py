"""What `model.fuse_projections` changes in the compiled train step, by XLA's own counts on the CPU.

Compiles the users' train step (bench/train_one.py `prepare`: adapters on all 7 projections, AdamW) on the 'small'
shape, float32, unrolled layers, unfused and fused, and prints per method: the matmuls of the optimised program
(XLA's `dot` instructions) and their difference per layer; XLA's FLOP count; its bytes accessed, the traffic fusion
exists to cut. DoRA keeps its per-layer matmuls, so its two programs match. These are counts of a CPU program, not
GPU timings: `python -m bench.train_step --fuse-projections` measures the speed.

  python -m bench.fusion_check            # ~2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import re

from bench.common import METHODS, format_table, model_shape, write_json
from bench.train_one import RunSpec, prepare

DOT = re.compile(r"= \S+ dot\(")  # one per dot instruction, wherever XLA's CPU fusions put it


def compiled_counts(spec: RunSpec) -> dict:
    """dot instructions, FLOPs and bytes accessed of the compiled train step of `spec`."""
    compiled = prepare(spec).compiled
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {"dots": len(DOT.findall(compiled.as_text())), "flops": analysis["flops"],
            "bytes": analysis["bytes accessed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="lora-r8,nlora-r128,full,dora-r8")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--remat", default="dots_with_no_batch_dims_saveable", help="model.remat (the GPU presets')")
    parser.add_argument("--out", help="JSON output path")
    args = parser.parse_args()
    layers = model_shape("small")["num_hidden_layers"]
    rows = []
    for method in args.methods.split(","):
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        unfused, fused = (compiled_counts(RunSpec(
            model="small", method=method, seq=args.seq, batch=args.batch, steps=1, warmup=0, remat=args.remat,
            scan_layers=False, attention="xla", dtype="float32", fuse_projections=fuse)) for fuse in (False, True))
        rows.append(dict(method=method, dots=unfused["dots"], fused_dots=fused["dots"],
                         fewer_dots_per_layer=(unfused["dots"] - fused["dots"]) / layers,
                         gflop=unfused["flops"] / 1e9, fused_gflop=fused["flops"] / 1e9,
                         mb=unfused["bytes"] / 1e6, fused_mb=fused["bytes"] / 1e6,
                         bytes_ratio=fused["bytes"] / unfused["bytes"]))
    print(format_table(rows, (("method", "method", ""), ("dots", "dots", "d"), ("fused_dots", "fused", "d"),
                              ("fewer_dots_per_layer", "fewer / layer", ".1f"), ("gflop", "GFLOP", ".3f"),
                              ("fused_gflop", "fused", ".3f"), ("mb", "MB accessed", ".1f"),
                              ("fused_mb", "fused", ".1f"), ("bytes_ratio", "fused / unfused", ".3f"))))
    write_json(args.out, {"batch": args.batch, "seq": args.seq, "remat": args.remat, "rows": rows})


if __name__ == "__main__":
    main()
