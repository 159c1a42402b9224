"""Shared pieces of the GPU benchmarks: model shapes, synthetic batches, the model-FLOPs (MFU) count, tables, JSON.

Imports neither JAX nor torch, so the JAX and the PyTorch benchmarks use the same shapes, data and FLOP count.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence

import numpy as np

# Architecture fields (transformers' names) of the benchmarked shapes; weights are random.
MODEL_SHAPES = {
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                         tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=131072),
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, head_dim=128, rope_theta=10000.0,
                       tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=4096),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192),
                         tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=131072),
    # CPU smoke tests (--tiny): same structure as llama-3.2-1b (GQA, tied embeddings), seconds to compile.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, rope_theta=10000.0, tie_word_embeddings=True,
                 rms_norm_eps=1e-5, max_position_embeddings=4096),
    # bench/flop_check.py: matmuls large enough against elementwise work for XLA's FLOP count to compare with ours.
    "small": dict(vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=64, rope_theta=10000.0, tie_word_embeddings=True,
                  rms_norm_eps=1e-5, max_position_embeddings=4096),
}
SHORT_NAMES = {"1b": "llama-3.2-1b", "7b": "llama-2-7b", "8b": "llama-3.1-8b"}
FULL_FT_MODELS = ("llama-3.2-1b", "tiny", "small")  # full fine-tuning of the 7B shape does not fit one 80 GB GPU


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of the method table: adapter init (None: full fine-tuning, no adapters), rank, optimizer, LoRA-Pro
    moment dtype, LoRA+ ratio (B's learning rate / A's; None = off), the SVD inits' randomized-SVD iterations
    (None = exact SVD) and lorapro_adamw's fused step (optimizer.fused_update)."""

    adapter: str | None
    rank: int
    optimizer: str
    moment_dtype: str = "float32"
    loraplus_ratio: float | None = None
    niter: int | None = None
    fused_update: bool = False


# All 7 projections adapted; alpha = 2·rank. SLoRA, NLoRA and LoRA-GA run LoRA's step program (only the init
# differs).
METHODS = {
    "lora-r8": Method("lora", 8, "adamw"),
    "lora-r16": Method("lora", 16, "adamw"),
    "lora-r128": Method("lora", 128, "adamw"),
    "slora-r128": Method("slora", 128, "adamw"),
    "nlora-r128": Method("nlora", 128, "adamw"),
    "inttune-r128": Method("inttune", 128, "adamw"),
    "lorapro-r8": Method("lora", 8, "lorapro"),
    "lorapro-r16": Method("lora", 16, "lorapro"),
    "lorapro_adamw-r8-bf16": Method("lora", 8, "lorapro_adamw", "bfloat16"),
    "lorapro_adamw-r16-bf16": Method("lora", 16, "lorapro_adamw", "bfloat16"),
    "lorapro_adamw-r8-fp32": Method("lora", 8, "lorapro_adamw", "float32"),
    "lorapro_adamw-r16-fp32": Method("lora", 16, "lorapro_adamw", "float32"),
    "lorapro_adamw-r8-fp32-fused": Method("lora", 8, "lorapro_adamw", "float32", fused_update=True),
    "lorapro_adamw-r16-fp32-fused": Method("lora", 16, "lorapro_adamw", "float32", fused_update=True),
    "lorapro_adamw-r8-bf16-fused": Method("lora", 8, "lorapro_adamw", "bfloat16", fused_update=True),
    "lorapro_adamw-r16-bf16-fused": Method("lora", 16, "lorapro_adamw", "bfloat16", fused_update=True),
    "dora-r8": Method("dora", 8, "adamw"),
    "loraplus-r8": Method("lora", 8, "adamw", loraplus_ratio=16.0),
    # LoRA-GA: gradients of the bench's first synthetic batches; randomized SVD as its authors (exact SVD of the
    # 224 7B gradients would take minutes).
    "loraga-r8": Method("loraga", 8, "adamw", niter=4),
    "full": Method(None, 0, "adamw"),
}
H100_BF16_DENSE_TFLOPS = 989.0
# Tokens of the synthetic data are drawn from this many ids, so a model can lower its loss in a few steps.
DATA_VOCAB = 1000
DATA_POOL = 8


def model_shape(name: str) -> dict:
    """The architecture dict of a benchmark shape ('llama-3.2-1b' or '1b', 'llama-2-7b' or '7b', 'llama-3.1-8b' or
    '8b', 'tiny')."""
    name = SHORT_NAMES.get(name, name)
    if name not in MODEL_SHAPES:
        raise ValueError(f"unknown model shape {name!r}; choose one of {sorted(MODEL_SHAPES)} (or 1b / 7b / 8b)")
    return MODEL_SHAPES[name]


def canonical_model(name: str) -> str:
    """'1b' -> 'llama-3.2-1b'; full names pass through (after checking them)."""
    model_shape(name)
    return SHORT_NAMES.get(name, name)


def synthetic_batch(step: int, batch: int, seq: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """(batch, seq) int32 token ids of step `step`: rows cycle through a fixed pool of random sequences.

    Ids are below min(DATA_VOCAB, vocab_size).
    The same (step, batch, seq, seed) gives the same rows in every framework and on any number of devices, and
    the repetition makes the loss fall within a few steps (for the multi-device loss comparison).
    """
    high = min(DATA_VOCAB, vocab_size)
    pool = np.random.default_rng(seed).integers(0, high, size=(DATA_POOL, seq), dtype=np.int32)
    return pool[(step * batch + np.arange(batch)) % DATA_POOL]


def matmul_params(shape: dict) -> int:
    """Weights that multiply every token in the forward pass: the 7 projections of all layers plus the LM head."""
    hidden, inner, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q_size = shape["num_attention_heads"] * shape["head_dim"]
    kv_size = shape["num_key_value_heads"] * shape["head_dim"]
    per_layer = 2 * hidden * q_size + 2 * hidden * kv_size + 3 * hidden * inner
    return layers * per_layer + shape["vocab_size"] * hidden


def attention_forward_flops(shape: dict, batch: int, seq: int, segments: int = 1) -> float:
    """QKᵀ and PV of causal attention over the unmasked half of each segment: 2·B·T²/segments·heads·head_dim per
    layer, for rows of `segments` equal packed sequences (attention stays inside a segment)."""
    return (2.0 * batch * seq**2 / segments * shape["num_attention_heads"] * shape["head_dim"]
            * shape["num_hidden_layers"])


def train_step_flops(shape: dict, batch: int, seq: int, adapter_params: int, trained_matmul_params: int,
                     segments: int = 1) -> float:
    """Model FLOPs one train step needs (no recomputation counted; see docs/benchmarks.md for the formula).

    Args:
      shape: a MODEL_SHAPES entry.
      batch, seq: rows and tokens per row of one optimizer step (all micro-batches together).
      adapter_params: entries of all adapter factors (lora_a, lora_m, lora_b; trained or frozen), which every
        token multiplies in the forward pass.
      trained_matmul_params: entries of the trained weights that tokens multiply: every matmul weight for full
        fine-tuning, the trained adapter factors otherwise.
      segments: equal packed sequences per row.

    Returns:
      forward (2·N·tokens + attention) + input gradients (2·N·tokens + 2·attention) + weight gradients
      (2·N_trained·tokens), with N = matmul_params(shape) + adapter_params.
    """
    tokens = batch * seq
    weights = matmul_params(shape) + adapter_params
    attention = attention_forward_flops(shape, batch, seq, segments)
    forward = 2.0 * weights * tokens + attention
    input_gradients = 2.0 * weights * tokens + 2.0 * attention  # attention backward: 4 matmuls of forward's size
    weight_gradients = 2.0 * trained_matmul_params * tokens
    return forward + input_gradients + weight_gradients


def mfu(flops: float, seconds: float, peak_tflops: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: flops / seconds / (peak · devices)."""
    return flops / seconds / (peak_tflops * 1e12 * devices)


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of `names` (without importing them); missing packages are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def environment(device: str | None = None) -> dict:
    """Date, command (as `python -m bench.NAME ARGS`), Python and package versions, and the device when known."""
    packages = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "torch", "transformers",
                "peft", "liger-kernel", "triton", "google-tunix", "qwix")
    module = os.path.splitext(os.path.relpath(sys.argv[0]))[0].replace(os.sep, ".")
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m", module] + sys.argv[1:]),
            "python": platform.python_version(), "packages": package_versions(packages), "device": device}


def write_json(path: str | None, payload: dict) -> None:
    """Writes `payload` to `path` (parent folders created); a no-op when path is None."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)


def format_cell(row: dict, key: str, spec: str) -> str:
    """`row[key]` formatted with `spec`; a missing value prints as '-'."""
    value = row.get(key)
    return "-" if value is None else format(value, spec)


def error_tail(stderr: str, lines: int = 15) -> str:
    """What a crashed child process said: its last exception line (XLA appends a Python stack trace to its messages,
    so that line may sit above the tail) and the last `lines` lines."""
    text = stderr.strip().splitlines()
    raised = [line for line in text if "Error:" in line or "Error(" in line][-1:]
    return "\n".join(raised + text[-lines:])


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table; columns are (key, header, format spec), missing values print as '-'."""
    body = [[format_cell(row, key, spec) for key, _, spec in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max([len(h)] + [len(line[i]) for line in body]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


GIB = 2.0**30
TRAIN_COLUMNS = (("model", "model", ""), ("method", "method", ""), ("seq", "seq", "d"), ("batch", "batch", "d"),
                 ("step_s", "step s", ".3f"), ("tokens_per_s", "tokens/s", ",.0f"), ("mfu", "MFU", ".1%"),
                 ("peak_memory_gib", "peak GiB", ".1f"), ("adapter_init_s", "adapter init s", ".1f"),
                 ("status", "status", ""))
QUANTIZED_COLUMNS = (("quantize", "base", ""), ("frozen_base_gib", "frozen base GiB", ".3f"),
                     ("step_memory_estimate_gib", "step GiB (XLA)", ".1f"), ("peak_memory_gib", "peak GiB", ".1f"),
                     ("tokens_per_s", "tokens/s", ",.0f"), ("tokens_per_s_vs_bf16", "vs bf16", ".2f"),
                     ("final_loss", "loss@end", ".4f"), ("status", "status", ""))
