"""Markdown tables for docs/benchmarks.md from the JSON files of one benchmark run (a folder of bench outputs).

  python -m bench.report results/h100        # prints: setup, our train steps, ours vs PEFT, generation, scaling
  python -m bench.report results/peers --peers   # one table per shape from bench/compare_peers.sh's rows
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

from bench.common import METHODS, QUANTIZED_COLUMNS, format_cell, format_table

OURS, PEFT = "lowrank-jax", "pytorch+peft"
PEER_FRAMEWORKS = (OURS, PEFT, "tunix")


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table; columns are (key, header, format spec), missing values print as '-'."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(format_cell(row, key, spec) for key, _, spec in columns) + " |" for row in rows]
    return "\n".join(lines)


def mesh_text(mesh) -> str:
    """'data=1 fsdp=2 tensor=1' from a row's mesh (a dict from a run, or the requested sizes)."""
    if isinstance(mesh, dict):
        return " ".join(f"{k}={v}" for k, v in mesh.items())
    return " ".join(f"{k}={v}" for k, v in zip(("data", "fsdp", "tensor"), mesh or ()))


def table_order(row: dict) -> tuple:
    """Rows by model, sequence length, then the method table's order."""
    method = row.get("method")
    return (row.get("model") or "", row.get("seq") or 0, list(METHODS).index(method) if method in METHODS else -1)


def load(folder: str) -> tuple[list[dict], list[dict]]:
    """(environments with their file names, all rows tagged with their file) from folder/*.json."""
    environments, rows = [], []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            payload = json.load(f)
        if not isinstance(payload, dict) or "rows" not in payload:
            continue
        environments.append({"file": os.path.basename(path), **payload.get("environment", {})})
        rows += [{**row, "file": os.path.basename(path)} for row in payload["rows"]]
    return environments, rows


def ours_vs_peft(rows: list[dict]) -> list[dict]:
    """One row per configuration measured by both: tokens/s ratio, MFU and peak memory side by side."""
    key = lambda r: (r["model"], r["method"], r["seq"])  # noqa: E731
    peft = {key(r): r for r in rows if r.get("framework") == PEFT and r["status"] == "ok"}
    pairs = []
    for ours in rows:
        if (ours.get("framework") != OURS or ours["status"] != "ok" or ours.get("scaling_run") or "quantize" in ours
                or "tokens_per_s" not in ours):  # a profile's row has no throughput
            continue
        theirs = peft.get(key(ours))
        if theirs is None:
            continue
        pairs.append(dict(model=ours["model"], method=ours["method"], seq=ours["seq"], ours_batch=ours["batch"],
                          peft_batch=theirs["batch"], ours_tps=ours["tokens_per_s"], peft_tps=theirs["tokens_per_s"],
                          ratio=ours["tokens_per_s"] / theirs["tokens_per_s"], ours_mfu=ours["mfu"],
                          peft_mfu=theirs["mfu"], ours_peak=ours.get("peak_memory_gib"),
                          peft_peak=theirs.get("peak_memory_gib")))
    return pairs


def peer_tables(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """bench/compare_peers.sh's rows per (model, seq): each with `run` (its file's row name), `vs_pytorch`, its
    tokens/s over the fastest PyTorch row's of the same method, and for our other rows (levers, LoRA-Pro)
    `vs_ours_none`, their tokens/s over `ours_none`'s at the same rank and batch; by method, then fastest first."""
    tables = {}
    for row in rows:
        if row.get("framework") in PEER_FRAMEWORKS and row.get("file", "").startswith("peers_"):
            rank, run = re.match(r"^peers_[^_]+_r(\d+)_(.+)$", os.path.splitext(row["file"])[0]).groups()
            tables.setdefault((row["model"], row["seq"]), []).append({**row, "run": run, "row_rank": int(rank)})
    for table in tables.values():
        fastest, baseline = {}, {}
        for row in table:
            if row.get("framework") == PEFT and row["status"] == "ok":
                fastest[row["method"]] = max(fastest.get(row["method"], 0.0), row["tokens_per_s"])
            if row["run"] == "ours_none" and row["status"] == "ok":
                baseline[row["row_rank"], row.get("batch")] = row["tokens_per_s"]
        for row in table:
            if row["status"] == "ok" and row["method"] in fastest:
                row["vs_pytorch"] = row["tokens_per_s"] / fastest[row["method"]]
            ours_none = baseline.get((row["row_rank"], row.get("batch")))
            if row["status"] == "ok" and row["run"].startswith("ours_") and row["run"] != "ours_none" and ours_none:
                row["vs_ours_none"] = row["tokens_per_s"] / ours_none
        table.sort(key=lambda r: (table_order(r), -(r.get("tokens_per_s") or 0.0)))
    return tables


TRAIN = [("model", "model", ""), ("method", "method", ""), ("seq", "seq", "d"), ("batch", "batch", "d"),
         ("accum", "micro-batches", "d"), ("remat", "remat", ""), ("step_s", "step s", ".3f"),
         ("tokens_per_s", "tokens/s", ",.0f"), ("mfu", "MFU", ".1%"),
         ("peak_memory_gib", "peak GiB", ".1f"), ("step_memory_estimate_gib", "XLA est. GiB", ".1f"),
         ("adapter_init_s", "adapter init s", ".1f"), ("compile_s", "compile s", ".0f"), ("status", "status", "")]
PEFT_TRAIN = [("model", "model", ""), ("method", "method", ""), ("seq", "seq", "d"), ("batch", "batch", "d"),
              ("attention", "attention", ""), ("compile", "compile", ""), ("step_s", "step s", ".3f"),
              ("tokens_per_s", "tokens/s", ",.0f"), ("mfu", "MFU", ".1%"), ("peak_memory_gib", "peak GiB", ".1f"),
              ("status", "status", "")]
PAIRS = [("model", "model", ""), ("method", "method", ""), ("seq", "seq", "d"), ("ours_batch", "batch (ours)", "d"),
         ("peft_batch", "batch (PEFT)", "d"), ("ours_tps", "ours tokens/s", ",.0f"),
         ("peft_tps", "PEFT tokens/s", ",.0f"), ("ratio", "ours / PEFT", ".2f"), ("ours_mfu", "ours MFU", ".1%"),
         ("peft_mfu", "PEFT MFU", ".1%"), ("ours_peak", "ours peak GiB", ".1f"), ("peft_peak", "PEFT peak GiB", ".1f")]
PEERS = [("method", "method", ""), ("run", "run", ""), ("framework", "framework", ""), ("batch", "batch", "d"),
         ("step_s", "step s", ".3f"), ("tokens_per_s", "tokens/s", ",.0f"), ("mfu", "MFU", ".1%"),
         ("peak_memory_gib", "peak GiB", ".1f"), ("vs_pytorch", "÷ fastest PyTorch", ".2f"),
         ("vs_ours_none", "÷ ours_none, same batch", ".2f"), ("status", "status", "")]
GENERATION = [("impl", "implementation", ""), ("model", "model", ""), ("batch", "batch", "d"),
              ("prompt_len", "prompt", "d"), ("new_tokens", "new tokens", "d"), ("seconds", "s / call", ".2f"),
              ("tokens_per_s", "new tokens/s", ",.0f"), ("vs_hf", "vs transformers", ".2f"),
              ("peak_memory_gib", "peak GiB", ".1f"), ("status", "status", "")]
SCALING = [("model", "model", ""), ("method", "method", ""), ("devices", "GPUs", "d"), ("mesh_text", "mesh", ""),
           ("batch", "global batch", "d"), ("accum", "accum", "d"), ("tokens_per_s", "tokens/s", ",.0f"),
           ("scaling", "speed-up", ".2f"), ("scaling_efficiency", "efficiency", ".1%"),
           ("final_loss", "loss at end", ".5f"), ("max_abs_loss_diff_vs_1", "max abs Δloss vs 1 GPU", ".2e"),
           ("peak_memory_gib", "peak GiB / GPU", ".1f"), ("status", "status", "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder holding the benchmarks' JSON outputs")
    parser.add_argument("--text", action="store_true", help="fixed-width text tables instead of markdown")
    parser.add_argument("--peers", action="store_true",
                        help="bench/compare_peers.sh's tables only: each shape's rows against its fastest PyTorch row")
    args = parser.parse_args()
    environments, rows = load(args.folder)
    render = (lambda r, c: format_table(r, c)) if args.text else markdown
    print("## Setup\n")
    for env in environments:
        versions = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
        print(f"- `{env['file']}`: {env.get('device')}, {env.get('date')}; `{env.get('command')}`; {versions}")
    rows.sort(key=table_order)
    train = [r for r in rows if r.get("framework") == OURS and "quantize" not in r]
    single = [r for r in train if not r.get("scaling_run")]
    multi = [{**r, "mesh_text": mesh_text(r.get("mesh"))} for r in train if r.get("scaling_run")]
    sections = [("Train step, lowrank-jax", single, TRAIN),
                ("Train step, transformers + PEFT", [r for r in rows if r.get("framework") == PEFT], PEFT_TRAIN),
                ("Ours vs PEFT (same GPU, same shapes)", ours_vs_peft(rows), PAIRS),
                ("Quantized frozen base (bench/quantized_base.py)", [r for r in rows if "quantize" in r],
                 QUANTIZED_COLUMNS),
                ("Batched greedy generation", [r for r in rows if "impl" in r], GENERATION),
                ("Scaling over GPUs (same global batch and data)", multi, SCALING)]
    if args.peers:
        sections = [(f"{model}, sequence {seq}", table, PEERS)
                    for (model, seq), table in sorted(peer_tables(rows).items())]
    for title, section_rows, columns in sections:
        if section_rows:
            print(f"\n## {title}\n")
            print(render(section_rows, columns))
    failed = [r for r in rows if r.get("status") not in ("ok", None)]
    if failed:
        print("\n## Not measured\n")
        for row in failed:
            last_line = (str(row.get("error") or "").strip().splitlines() or [""])[-1]
            print(f"- {row.get('framework', row.get('impl'))} {row.get('model')} {row.get('method', '')} "
                  f"seq {row.get('seq', '-')} batch {row.get('batch', '-')} ({row['file']}): {row['status']}: "
                  f"{last_line}")


if __name__ == "__main__":
    main()
