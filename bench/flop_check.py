"""Checks the MFU numerator (bench/common.py `train_step_flops`) against XLA's own FLOP count of the real step.

Compiles the users' train step (unrolled layers, no remat, float32, on the CPU) for each method on a small model and
compares `compiled.cost_analysis()['flops']` with our formula plus the masked half of attention, which XLA's dense
attention computes and our count leaves out. XLA also counts elementwise work and the optimizer; our formula counts
the input gradient of the first layer that a frozen embedding does not need. Agreement within a few % is expected.

  python -m bench.flop_check            # ~1 min on 2 CPU cores
"""

from __future__ import annotations

import argparse

from bench.common import METHODS, attention_forward_flops, format_table, model_shape, write_json
from bench.train_one import RunSpec, model_flops, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="lora-r8,lora-r128,nlora-r128,inttune-r128,full")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--out", help="JSON output path")
    args = parser.parse_args()
    rows = []
    for method in args.methods.split(","):
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        spec = RunSpec(model="small", method=method, seq=args.seq, batch=args.batch, steps=1, warmup=0,
                       remat="none", scan_layers=False, attention="xla", dtype="float32")
        prepared = prepare(spec)
        analysis = prepared.compiled.cost_analysis()
        xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
        ours = model_flops(prepared.row)
        masked_half = 3 * attention_forward_flops(model_shape("small"), args.batch, args.seq)
        rows.append(dict(method=method, xla_gflop=xla / 1e9, ours_gflop=ours / 1e9,
                         ours_dense_gflop=(ours + masked_half) / 1e9, ratio=xla / (ours + masked_half)))
    print(format_table(rows, (("method", "method", ""), ("xla_gflop", "XLA GFLOP", ".3f"),
                              ("ours_gflop", "formula GFLOP", ".3f"),
                              ("ours_dense_gflop", "formula + masked half", ".3f"),
                              ("ratio", "XLA / formula+masked", ".3f"))))
    write_json(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
