"""Registers and local-memory spills of the fused LoRA-Pro update's GPU kernel per tiling, on any machine (no GPU).

The kernel (lowrank_jax/optim/fused_kernel_adam.py) is lowered by JAX's Pallas to Triton IR for one adapter of the
7B shape's MLP (4096 × 11008, r = 8 or --rank, float32 moments), compiled to PTX for sm_90a (H100 / H200) by the
`triton` package's compiler, and assembled by ptxas: the one in the triton wheel, any `ptxas` on PATH (a CUDA
toolkit's) and those --ptxas names. The triton wheel is not a dependency of lowrank-jax:

    pip install triton
    python -m bench.fused_kernel_registers      # eight tilings, under a minute on 2 CPU cores
    python -m bench.fused_kernel_registers --tiles 64x128w8,32x64w4:tf32x3 --ptxas "$CUDA_HOME/bin/ptxas"

Columns, per tiling and ptxas release: registers per thread, the stack frame (local memory, where spilled registers
go) and the bytes spilled to it and loaded back, per thread; tensor-core matmul instructions (HMMA) and float32 fused
multiply-adds (FFMA) in the SASS. Register allocation differs between ptxas releases, and PyPI's Triton is not the
Triton inside XLA that compiles the kernel on a GPU: the rows tell which tilings spill, not the exact allocation of a
GPU run; `python -m bench.lorapro_update --fused-tiles` times them on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

from bench.common import format_table, write_json
from lowrank_jax.optim.fused_kernel_adam import Tiles, kernel_adam_pullback

DEFAULT_TILES = "128x128w8,128x128w16,64x128w8,64x64w4,32x64w4,64x128w8:bf16x6,32x64w4:tf32x3,32x64w4:bf16x6"
SHAPE = (4096, 11008)  # (in, out) of the 7B shape's gate / up projection
RANK = 8


def triton_ir(tiles: Tiles, shape: tuple[int, int] = SHAPE, rank: int = RANK) -> str:
    """The kernel's Triton IR (MLIR text, locations stripped) for one (in, out) adapter at `rank`, float32 moments,
    as Pallas lowers it for an NVIDIA GPU (`debug` prints it during lowering)."""
    in_dim, out_dim = shape
    arrays = [jax.ShapeDtypeStruct(s, jnp.float32) for s in
              [(in_dim, 2 * rank), (2 * rank, out_dim), (in_dim, rank), (rank, out_dim), shape, shape, (2,)]]
    step = jax.jit(lambda *x: kernel_adam_pullback(*x, b1=0.9, b2=0.999, eps=1e-8, tiles=tiles, interpret=False,
                                                   debug=True))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        step.trace(*arrays).lower(lowering_platforms=("cuda",))
    text = printed.getvalue()
    start = text.find("\nmodule ")
    if start < 0:
        raise RuntimeError("Pallas printed no Triton module; this JAX version's debug output differs")
    text = text[start + 1:]
    text = re.sub(r"\s*#loc\d*\s*=.*", "", text)                     # location definitions
    text = re.sub(r"\s*\(#loc\d*\)|\s*loc\(#loc\d*\)", "", text)     # location references
    text = text.replace(" [unknown]", "")
    return re.sub(r' "[^"\n]*:"(?=\s*$)', "", text, flags=re.M)     # name locations of operations


def triton_tool(name: str) -> str:
    """The path of a CUDA tool the triton wheel ships (ptxas-blackwell, cuobjdump)."""
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def ptxas_releases(extra: list[str]) -> dict[str, str]:
    """{path: release ('13.0', from `ptxas --version`)} of the triton wheel's ptxas for recent PTX, then `extra` and
    any ptxas on PATH (deduplicated)."""
    found = [triton_tool("ptxas-blackwell"), *extra, *([shutil.which("ptxas")] if shutil.which("ptxas") else [])]
    releases = {}
    for path in dict.fromkeys(os.path.realpath(p) for p in found):
        text = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
        release = re.search(r"release (\d+\.\d+)", text)
        releases[path] = release[1] if release else "?"
    return releases


def assemble(ptxas: str, ptx: str, cubin: str) -> dict:
    """Assembles `ptx` into `cubin` for sm_90a; registers, stack frame and spill bytes per thread from its report."""
    log = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", ptx, "-o", cubin], capture_output=True, text=True,
                         check=True)
    log = log.stdout + log.stderr
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"registers": int(re.search(r"Used (\d+) registers", log)[1]),
            **dict(zip(("stack_bytes", "spill_store_bytes", "spill_load_bytes"), map(int, frame.groups())))}


def resources(ir_text: str, warps: int, ptxas: dict[str, str]) -> list[dict]:
    """Compiles Triton IR to PTX (ISA 9.0) for sm_90a with the triton package and assembles it with each ptxas of
    `ptxas_releases`: one row per ptxas with `assemble`'s report, and HMMA and FFMA counts from the SASS of the
    first one's cubin."""
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as folder:
        source, ptx = os.path.join(folder, "kernel.ttir"), os.path.join(folder, "kernel.ptx")
        with open(source, "w") as f:
            f.write(ir_text)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": warps, "ptx_version": 90})
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        cubins = [os.path.join(folder, f"kernel{k}.cubin") for k in range(len(ptxas))]
        rows = [{"ptxas": release, **assemble(path, ptx, cubin)}
                for (path, release), cubin in zip(ptxas.items(), cubins)]
        sass = subprocess.run([triton_tool("cuobjdump"), "-sass", cubins[0]], capture_output=True, text=True,
                              check=True).stdout
    counts = {"hmma": len(re.findall(r"\bHMMA\b", sass)), "ffma": len(re.findall(r"\bFFMA\b", sass))}
    return [{**row, **counts} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", default=DEFAULT_TILES, help="comma list of ROWSxCOLSwWARPS[:DOT]")
    parser.add_argument("--rank", type=int, default=RANK, help="adapter rank (the kernel pads it to 16)")
    parser.add_argument("--ptxas", default="", help="comma list of further ptxas binaries to assemble with")
    parser.add_argument("--out", help="JSON output path")
    args = parser.parse_args()
    tilings = [Tiles.parse(t) for t in args.tiles.split(",") if t]  # bad input fails before any work
    if importlib.util.find_spec("triton") is None:
        raise SystemExit("needs the triton package (compiler, ptxas and cuobjdump for sm_90a): pip install triton")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # fused multiply-adds, as XLA's Triton emits them
    import triton

    ptxas = ptxas_releases([p for p in args.ptxas.split(",") if p])
    rows = []
    for tiles in tilings:
        floats = tiles.rows * tiles.cols // (32 * tiles.warps)
        for row in resources(triton_ir(tiles, rank=args.rank), tiles.warps, ptxas):
            rows.append({"tiles": str(tiles), "floats_per_thread": floats, **row})
            print(rows[-1], flush=True)
    header = {"shape": list(SHAPE), "rank": args.rank, "target": "sm_90a", "jax": jax.__version__,
              "triton": triton.__version__}
    print(f"\n{header}\n")
    print(format_table(rows, [("tiles", "tiles", ""), ("floats_per_thread", "tile floats / thread", "d"),
                              ("ptxas", "ptxas", ""), ("registers", "registers", "d"),
                              ("stack_bytes", "stack bytes", "d"), ("spill_store_bytes", "spill stores B", "d"),
                              ("spill_load_bytes", "spill loads B", "d"), ("hmma", "HMMA", "d"),
                              ("ffma", "FFMA", "d")]))
    write_json(args.out, {**header, "rows": rows})


if __name__ == "__main__":
    main()
