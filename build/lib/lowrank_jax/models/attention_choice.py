"""Which attention kernel a run uses: 'auto' takes cuDNN's fused flash attention where it runs, XLA's elsewhere.

cuDNN's kernel (`jax.nn.dot_product_attention(implementation='cudnn')`, and its packed-rows form in
`packed_attention.py`) needs an NVIDIA GPU of compute capability 8.0 or newer (Ampere, Hopper, Blackwell) and bfloat16
compute; on one H200 it made the 1B LoRA step 2.2× faster than XLA's attention (62,487 vs 28,918 tokens/s,
docs/benchmarks.md). XLA's kernel runs on every device and dtype. The choice reads the devices, so call it after
`jax.distributed.initialize`.
"""

from __future__ import annotations

import jax

from lowrank_jax.models.config import ATTENTION_IMPLS

AUTO = "auto"
CUDNN_MIN_COMPUTE_CAPABILITY = (8, 0)


def cuda_compute_capability(device) -> tuple[int, int] | None:
    """(major, minor) of an NVIDIA GPU, None for any other device (CPU, TPU, ROCm GPU)."""
    if device.platform != "gpu":
        return None
    try:
        major, minor = str(getattr(device, "compute_capability", "")).split(".")
        return int(major), int(minor)
    except ValueError:  # ROCm reports a gfx name
        return None


def check_attention_impl(requested: str, dtype: str) -> None:
    """Refuses an unknown name, and 'cudnn' with a compute dtype its kernel lacks; reads no device, so config checks
    call it before `jax.distributed.initialize`."""
    if requested not in (AUTO, *ATTENTION_IMPLS):
        raise ValueError(f"attention_impl={requested!r} is unknown; use one of {(AUTO, *ATTENTION_IMPLS)}")
    if requested == "cudnn" and dtype != "bfloat16":
        raise ValueError(f"attention_impl='cudnn' needs dtype='bfloat16' (cuDNN flash attention has no {dtype} "
                         "kernel); use attention_impl='auto' or 'xla' for it")


def choose_attention_impl(requested: str, dtype: str, device=None) -> str:
    """The attention implementation ('xla' | 'cudnn') that `requested` means on `device` for compute `dtype`.

    Args:
        requested: 'auto' (cuDNN where it runs, else XLA), 'xla' or 'cudnn'.
        dtype: the model's compute dtype name ('bfloat16' | 'float32').
        device: the device the model runs on; default `jax.devices()[0]` (every device of a run is of one kind).

    Returns:
        'cudnn' or 'xla'.

    Raises:
        ValueError: for an unknown name, or 'cudnn' where cuDNN's kernel cannot run (the message names the fix).

    Example:
        >>> cpu = jax.devices("cpu")[0]
        >>> choose_attention_impl("auto", "bfloat16", cpu), choose_attention_impl("xla", "bfloat16", cpu)
        ('xla', 'xla')
    """
    check_attention_impl(requested, dtype)
    if requested == "xla":
        return requested
    if device is None:
        device = jax.devices()[0]
    capability = cuda_compute_capability(device)
    on_cudnn_gpu = capability is not None and capability >= CUDNN_MIN_COMPUTE_CAPABILITY
    if requested == AUTO:
        return "cudnn" if on_cudnn_gpu and dtype == "bfloat16" else "xla"
    if not on_cudnn_gpu:
        found = f"an NVIDIA GPU of compute capability {capability}" if capability else f"a {device.platform} device"
        raise ValueError(f"attention_impl='cudnn' needs an NVIDIA GPU of compute capability >= 8.0, but the run is on "
                         f"{found}; use attention_impl='auto' (picks cuDNN where it runs) or 'xla'")
    return requested
