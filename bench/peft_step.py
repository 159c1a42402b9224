"""The PyTorch baseline: the same LoRA / full fine-tuning train steps with transformers' LlamaForCausalLM + PEFT.

bf16 random weights created on the GPU, the best attention in the image (flash-attn if installed, else SDPA, whose
flash kernel serves causal unpadded batches), gradient checkpointing per decoder layer (as our remat='full'),
fused AdamW over the trainable parameters after clipping to norm 1 (as transformers' Trainer and our configs).
`--liger` patches Liger's Triton kernels into transformers' Llama before the model is built (`--liger flce`: its
fused linear cross-entropy alone); the loss still comes from the model's forward with labels.
One process runs the table; peak memory is reset between configurations.

  python -m bench.peft_step --tiny                      # CPU smoke test, tiny shapes
  python -m bench.peft_step --models 7b --seqs 2048 --batch 8 --out results/peft_7b.json
  python -m bench.peft_step --models 8b --methods lora-r8 --batch 4 --compile --no-grad-ckpt --liger
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import time

import torch
import transformers
from peft import LoraConfig, get_peft_model

from bench.common import (FULL_FT_MODELS, GIB, METHODS, TRAIN_COLUMNS, canonical_model,
                          environment, format_table, matmul_params, mfu, model_shape, synthetic_batch,
                          train_step_flops, write_json)
from bench.train_step import add_peer_arguments, batch_for, finish_peer_arguments, parse_batch, parse_list
from lowrank_jax.models import LlamaConfig

PEFT_METHODS = ("lora-r8", "lora-r16", "lora-r128", "full")  # METHODS rows that PEFT runs as they are
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def attention_implementation(requested: str, device: torch.device) -> str:
    """'auto' -> flash_attention_2 when the flash-attn package is installed on a GPU, else sdpa."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def apply_liger(kernels: str) -> str | None:
    """Patches transformers' Llama classes with Liger's kernels, so that models built afterwards use them; returns
    None, or what to install when liger-kernel (or triton, which the CUDA build of torch brings) cannot be imported.

    'all': RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy (FLCE: the loss from the last hidden states and
    the LM head's weight in chunks, the logits never materialised); 'flce': FLCE alone. FLCE replaces
    `LlamaForCausalLM.forward`, which PEFT's wrapper calls, and runs when the model trains and gets labels. PEFT's
    LoRA layers wrap the projections of Liger's SwiGLU MLP as they wrap LlamaMLP's.
    """
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError as err:
        return (f"--liger needs liger-kernel and triton ({err}); pip install liger-kernel (triton comes with the "
                "CUDA build of torch); its kernels run on CUDA GPUs only")
    every_kernel = kernels == "all"
    apply_liger_kernel_to_llama(rope=every_kernel, rms_norm=every_kernel, swiglu=every_kernel, cross_entropy=False,
                                fused_linear_cross_entropy=True)
    return None


def liger_parts(network) -> list[str]:
    """Names of the Liger pieces a built model runs: module classes, RoPE and the LM's forward, when they are
    Liger's."""
    from transformers.models.llama import modeling_llama
    parts = {type(m).__name__ for m in network.modules() if type(m).__module__.startswith("liger_kernel")}
    if modeling_llama.apply_rotary_pos_emb.__module__.startswith("liger_kernel"):
        parts.add(modeling_llama.apply_rotary_pos_emb.__name__)
    forward = type(network.get_base_model() if hasattr(network, "get_base_model") else network).forward
    if forward.__module__.startswith("liger_kernel"):
        parts.add(f"{forward.__name__} (fused linear cross-entropy)")
    return sorted(parts)


def build_model(model: str, method: str, args, device: torch.device):
    """LlamaForCausalLM of the benchmark shape with random bf16 weights made on `device`, LoRA-wrapped or not."""
    hf_config = transformers.LlamaConfig.from_dict(LlamaConfig(**model_shape(model)).to_hf_dict())
    hf_config.use_cache = False
    with device:
        network = transformers.AutoModelForCausalLM.from_config(
            hf_config, dtype=torch.bfloat16, attn_implementation=attention_implementation(args.attn, device))
    if args.grad_ckpt:
        network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if METHODS[method].adapter != "full":
        rank = METHODS[method].rank
        rank = min(rank, args.max_rank) if args.max_rank else rank
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, lora_dropout=0.0, bias="none")
        network = get_peft_model(network, lora, autocast_adapter_dtype=args.adapter_dtype == "float32")
    network.train()
    return network


def run(model: str, method: str, seq: int, batch: int, args, device: torch.device) -> dict:
    """One configuration: build, warm up, time `args.steps` steps; returns its row."""
    row = dict(framework="pytorch+peft", model=model, method=method, seq=seq, batch=batch,
               grad_ckpt=args.grad_ckpt, compile=args.compile, adapter_dtype=args.adapter_dtype, liger=args.liger)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    network = build_model(model, method, args, device)
    row["attention"] = network.config._attn_implementation
    if args.liger:
        row["liger_parts"] = liger_parts(network)
        if device.type != "cuda":
            return {**row, "status": "needs_cuda",
                    "error": f"Liger's Triton kernels run on CUDA GPUs only; the model was built with "
                             f"{row['liger_parts']}, no step was run"}
    trainable = [p for p in network.parameters() if p.requires_grad]
    adapter_params = sum(p.numel() for name, p in network.named_parameters() if "lora_" in name)
    row.update(trainable_params=sum(p.numel() for p in trainable), adapter_params=adapter_params)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, fused=device.type == "cuda")
    step_model = torch.compile(network) if args.compile else network
    ids = [torch.as_tensor(synthetic_batch(i, batch, seq, model_shape(model)["vocab_size"]), dtype=torch.long,
                           device=device)
           for i in range(args.warmup + args.steps)]

    def train_step(input_ids):
        loss = step_model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    losses = [train_step(x) for x in ids[:args.warmup]]
    synchronize(device)
    row["init_and_warmup_s"] = time.perf_counter() - start
    start = time.perf_counter()
    losses += [train_step(x) for x in ids[args.warmup:]]
    synchronize(device)
    step_s = (time.perf_counter() - start) / args.steps

    shape = model_shape(model)
    trained = matmul_params(shape) if method == "full" else row["trainable_params"]
    flops = train_step_flops(shape, batch, seq, adapter_params, trained)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return {**row, "status": "ok", "step_s": step_s, "tokens_per_s": batch * seq / step_s,
            "model_tflop_per_step": flops / 1e12, "mfu": mfu(flops, step_s, args.peak_tflops),
            "peak_memory_gib": peak, "losses": [float(x) for x in losses]}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_with_shrinking(model: str, method: str, seq: int, batch: int, args, device) -> dict:
    """Runs one configuration, halving the batch after an out-of-memory error (unless --no-shrink); another error
    becomes a row with status 'error'."""
    while True:
        try:
            return run(model, method, seq, batch, args, device)
        except Exception as err:  # one failed configuration must not end the table; torch.compile may wrap an OOM
            message = f"{type(err).__name__}: {err}"
            if not isinstance(err, torch.OutOfMemoryError) and "out of memory" not in message:
                return dict(framework="pytorch+peft", model=model, method=method, seq=seq, batch=batch,
                            liger=args.liger, status="error", error=message)
            message = message.splitlines()[0]
        finally:
            gc.collect()
            if device.type == "cuda":
                try:
                    torch.cuda.empty_cache()
                except RuntimeError:  # a kernel fault (illegal memory access) leaves CUDA unusable: keep the row
                    pass
        if args.no_shrink or batch == 1:
            return dict(framework="pytorch+peft", model=model, method=method, seq=seq, batch=batch, status="oom",
                        error=message)
        print(f"  {method} batch {batch} does not fit; trying {batch // 2}", flush=True)
        batch //= 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=parse_list, default=["1b", "7b"], help="comma list: 1b, 7b, 8b, tiny")
    parser.add_argument("--methods", type=parse_list, default=list(PEFT_METHODS),
                        help=f"comma list from {', '.join(PEFT_METHODS)}")
    parser.add_argument("--seqs", type=lambda t: parse_list(t, int), default=[2048])
    parser.add_argument("--batch", default="8", help="rows per step: N, or MODEL=N[,MODEL/METHOD=N...]")
    parser.add_argument("--steps", type=int, help="timed steps (default 5; --tiny 2)")
    parser.add_argument("--warmup", type=int,
                        help="untimed steps, also torch.compile's compilation (default 2; --tiny 1)")
    parser.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false",
                        help="keep all activations (our --remat none)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--attn", default="auto", help="attn_implementation: auto, sdpa, flash_attention_2, eager")
    parser.add_argument("--adapter-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="float32 = PEFT's default autocast of adapters on a bf16 model")
    parser.add_argument("--liger", nargs="?", const="all", choices=("all", "flce"),
                        help="Liger's kernels (liger-kernel, CUDA): all (RMSNorm, RoPE, SwiGLU, fused linear "
                             "cross-entropy; the default of a bare --liger) or flce (fused linear cross-entropy alone)")
    add_peer_arguments(parser)
    args = parser.parse_args(argv)
    args.max_rank = None
    if args.tiny:
        args.models, args.seqs, args.batch, args.max_rank = ["tiny"], [64], "4", 16
    return finish_peer_arguments(parser, args, PEFT_METHODS, "the PyTorch baseline")


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    batches = parse_batch(args.batch)
    liger_missing = args.liger and apply_liger(args.liger)
    rows = []
    for model, seq, method in itertools.product(args.models, args.seqs, args.methods):
        model = canonical_model(model)
        if method == "full" and model not in FULL_FT_MODELS:
            continue
        batch = batch_for(batches, model, method)
        print(f"{model} {method} seq {seq} batch {batch}", flush=True)
        if args.deadline and time.time() > args.deadline:
            row = dict(framework="pytorch+peft", model=model, method=method, seq=seq, batch=batch, status="skipped",
                       error="time budget (--deadline)")
        elif liger_missing:
            row = dict(framework="pytorch+peft", model=model, method=method, seq=seq, batch=batch, liger=args.liger,
                       status="error" if device.type == "cuda" else "needs_cuda", error=liger_missing)
        else:
            row = run_with_shrinking(model, method, seq, batch, args, device)
        rows.append(row)
        if row["status"] == "ok":
            print(f"  {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.1%}", flush=True)
        else:
            print(f"  {row['status']}: {row.get('error', '')}", flush=True)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        write_json(args.out, {"environment": environment(name), "peak_tflops": args.peak_tflops, "rows": rows})
    print()
    print(format_table(rows, TRAIN_COLUMNS))


if __name__ == "__main__":
    main()
