"""Peak host memory of `load_pretrained` on a checkpoint of random bfloat16 safetensors of a benchmark shape.

Run from the repository root: `python -m bench.load_peak_memory [--shape 1b|7b] [--out result.json]` (writes the
checkpoint under --workdir once, then loads it in fresh processes with param_dtype bfloat16 and float32 and prints
peak RSS during loading against file and parameter size). 1b needs ~8 GB of RAM and 2.5 GB of disk; 7b ~30 GB / 14 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench.common import canonical_model, environment, format_table, model_shape, write_json

COLUMNS = (("param_dtype", "param_dtype", "s"), ("file_gb", "file GB", ".2f"), ("param_gb", "params GB", ".2f"),
           ("growth_gb", "peak RSS growth GB", ".2f"), ("per_file", "/ file", ".2f"),
           ("per_param", "/ params", ".2f"), ("seconds", "load s", ".1f"))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def write_checkpoint(directory: str, shape: str) -> None:
    """config.json plus bf16 safetensors of N(0, 0.02²) values, generated and written one tensor at a time."""
    import ml_dtypes
    import numpy as np
    from flax import nnx

    from lowrank_jax.models import Llama, LlamaConfig
    from lowrank_jax.models.param_map import expected_hf_shapes
    from lowrank_jax.models.safetensors_io import write_safetensors

    config = LlamaConfig.from_hf(dict(model_type="llama", **model_shape(shape)), param_dtype="bfloat16")
    model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    shapes = {path: var.get_value().shape for path, var in nnx.to_flat_state(nnx.state(model))}
    rng = np.random.default_rng(0)
    tensors = ((name, (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16))
               for name, shape in expected_hf_shapes(config, shapes).items())
    os.makedirs(directory, exist_ok=True)
    write_safetensors(directory, tensors)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f)


def measure(directory: str, param_dtype: str) -> dict:
    """Loads the checkpoint in this (fresh) process; sizes in GB."""
    import jax
    from flax import nnx

    from lowrank_jax.models import load_pretrained

    jax.devices()  # backend start-up is not part of loading
    before = _status_kb("VmRSS") * 1024
    start = time.perf_counter()
    model, _ = load_pretrained(directory, param_dtype=param_dtype)
    params = jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
    seconds = time.perf_counter() - start
    growth = _status_kb("VmHWM") * 1024 - before
    file_bytes = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
                     if f.endswith(".safetensors"))
    param_bytes = sum(p.nbytes for p in params)
    return dict(param_dtype=param_dtype, file_gb=file_bytes / 1e9, param_gb=param_bytes / 1e9, growth_gb=growth / 1e9,
                per_file=growth / file_bytes, per_param=growth / param_bytes, seconds=seconds,
                device=str(jax.devices()[0].device_kind))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1b", help="benchmark shape from bench/common.py (1b, 7b, tiny)")
    parser.add_argument("--workdir", default=None, help="checkpoint folder (default /tmp/lowrank_jax_load_<shape>)")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--measure", choices=("bfloat16", "float32"), help="internal: measure in this process")
    args = parser.parse_args()
    workdir = args.workdir or f"/tmp/lowrank_jax_load_{canonical_model(args.shape)}"
    if args.measure:
        print(json.dumps(measure(workdir, args.measure)))
        return
    if not os.path.exists(os.path.join(workdir, "config.json")):
        write_checkpoint(workdir, args.shape)
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for param_dtype in ("bfloat16", "float32"):
        out = subprocess.run([sys.executable, "-m", "bench.load_peak_memory", "--workdir", workdir, "--measure",
                              param_dtype], check=True, capture_output=True, text=True, cwd=repo_root).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{canonical_model(args.shape)}, random bf16 safetensors; peak RSS growth = peak RSS - RSS before loading")
    print(format_table(rows, COLUMNS))
    write_json(args.out, dict(environment(rows[0]["device"]), shape=canonical_model(args.shape), rows=rows))


if __name__ == "__main__":
    main()
