"""How an adapter init starts training a pretrained model: the output change at init, the size and conditioning of
its factors, the first gradient per module and factor, and what the first AdamW update does.

  python -m experiments.init_gradients MODEL.gguf --gsm8k GSM8K_DIR --method nystrom [--rank 128 --alpha 128]
      [--examples 8 --seq-len 384 --lr 6.25e-5 --bf16 --low-memory] [--json OUT]

On the CPU in float32. The loss is the mean response-token loss of the first --examples of the runs' held-out
validation problems (`data.val_seed` 0); the gradient is that of the first --examples training problems, packed into
rows of --seq-len tokens. One AdamW update (the runs' settings: clipping at 1, b2 0.999, no weight decay) at --lr
(default: the first nonzero lr of the lowest swept lr's warm-up) is applied to that gradient, and the held-out loss
and each projection's effective weight are measured again. --bf16 also measures the init's output change in the runs'
bfloat16 compute. --low-memory recomputes each decoder layer in the backward pass and computes the logits 128
positions at a time: Qwen2.5-Coder-1.5B then fits a 24 GB host; the gradients change by float32 round-off only.

For each projection, over the layers (median and max): ‖s·A M B‖ / ‖K‖ (the adapter's share at init), ‖K_res‖ / ‖K‖
(the frozen base after a residual init) next to the best rank-r residual ‖K − K_r‖ / ‖K‖ (truncated SVD), the factor
norms, cond(M), and the gains of `update_gains`: how far a unit change of each factor can move the effective weight.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np

from experiments.init_perturbation import PROJECTIONS

FACTORS = ("lora_a", "lora_m", "lora_b")


def update_gains(a: np.ndarray, m: np.ndarray | None, b: np.ndarray, scale: float) -> dict[str, float]:
    """How much the effective weight s·a·m·b moves per unit (Frobenius) change of each factor, at most.

    A change δb of lora_b (r, out) moves it by s·a·m·δb, so by at most s·‖a m‖₂·‖δb‖_F; likewise s·‖m b‖₂ for
    lora_a (in, r) and s·‖a‖₂·‖b‖₂ for lora_m (r, r). AdamW's first update moves every entry by about its lr, so
    these gains are what turns one lr into a change of the model. A two-factor adapter has m = I (no lora_m gain).

    >>> a, b = np.diag([2.0, 1.0]), np.diag([1.0, 3.0])
    >>> {k: round(v, 9) for k, v in update_gains(a, np.diag([1.0, 0.5]), b, scale=2.0).items()}
    {'lora_a': 3.0, 'lora_m': 12.0, 'lora_b': 4.0}
    """
    core = np.eye(a.shape[1]) if m is None else m
    gains = {"lora_a": scale * np.linalg.norm(core @ b, 2), "lora_b": scale * np.linalg.norm(a @ core, 2)}
    if m is not None:
        gains["lora_m"] = scale * np.linalg.norm(a, 2) * np.linalg.norm(b, 2)
    return {name: float(gains[name]) for name in FACTORS if name in gains}


def module_at(model, path: str):
    """The submodule at dotted `path` ('layers.self_attn.q_proj')."""
    return functools.reduce(getattr, path.split("."), model)


def factor_statistics(model, adapted, rank: int) -> dict[str, dict[str, list[float]]]:
    """{projection: {statistic: one value per layer}} of the adapters `adapt` put on `model`'s stacked layers."""
    out = {}
    for projection in PROJECTIONS:
        layer = module_at(adapted, f"layers.{projection}")
        kernels = module_at(model, f"layers.{projection}").kernel[...]
        a_all, b_all = (np.asarray(getattr(layer, f)[...], np.float64) for f in ("lora_a", "lora_b"))
        m_all = None if layer.lora_m is None else np.asarray(layer.lora_m[...], np.float64)
        scales = np.asarray(layer.lora_scale[...], np.float64)
        stats = {}
        for i in range(len(kernels)):  # one layer's kernels in float64 at a time: 1.5B's MLPs are 3 GB stacked
            kernel = np.asarray(kernels[i], np.float64)
            residual = np.asarray(layer.base.kernel[i], np.float64)
            a, b, m = a_all[i], b_all[i], None if m_all is None else m_all[i]
            product = a @ b if m is None else a @ m @ b
            singular = np.linalg.svd(kernel, compute_uv=False)
            row = {"adapter_share": np.linalg.norm(scales[i] * product) / np.linalg.norm(kernel),
                   "residual": np.linalg.norm(residual) / np.linalg.norm(kernel),
                   "svd_residual": np.sqrt(np.sum(singular[rank:] ** 2) / np.sum(singular ** 2)),
                   "norm_a": np.linalg.norm(a), "norm_b": np.linalg.norm(b), "scale": scales[i]}
            if m is not None:
                core = np.linalg.svd(m, compute_uv=False)
                row.update(norm_m=np.linalg.norm(m), cond_m=core[0] / core[-1])
            row.update({f"gain_{name[5:]}": g for name, g in update_gains(a, m, b, scales[i]).items()})
            for key, value in row.items():
                stats.setdefault(key, []).append(float(value))
        out[projection] = stats
    return out


def effective_change(before, after, kernel_norms: dict[str, list[float]],
                     scales: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """{projection: ‖s·(A'M'B' − AMB)‖ / ‖K‖ per layer} between two trainable states of the same adapted model,
    given each layer's ‖K‖ and s."""
    def product(factors, i):
        f = {name: np.asarray(factors[name][i], np.float64) for name in FACTORS if name in factors}
        return f["lora_a"] @ f["lora_m"] @ f["lora_b"] if "lora_m" in f else f["lora_a"] @ f["lora_b"]

    out = {}
    for projection, norms in kernel_norms.items():
        old, new = (functools.reduce(lambda s, k: s[k], ["layers", *projection.split(".")], state)
                    for state in (before, after))
        out[projection] = [float(s * np.linalg.norm(product(new, i) - product(old, i)) / n)  # one layer at a time
                           for i, (n, s) in enumerate(zip(norms, scales[projection]))]
    return out


def adapt_op_by_op(model, config):
    """`adapt` with its init run op by op (`jax.disable_jit`), as the results in experiments/results/*/init_gradients/
    were measured. Jitted, nystrom's float32 factors round differently; where M0 is ill-conditioned (Qwen2.5-0.5B's
    k/v at r = 128) that moves some k/v statistics in their third digit and the bfloat16 loss at init from 1.579 to
    1.640 (one thread) or 1.653 (two)."""
    import jax

    from lowrank_jax import adapt

    with jax.disable_jit():
        return adapt(model, config)


def model_and_batches(path: str, gsm8k: str, dtype: str, examples: int, seq_len: int, remat: str = "none"):
    """(model in `dtype` with `remat`, validation batches, training batches): the first `examples` problems of the
    runs' validation split (300 held out of GSM8K train, seed 0) and of the rest, as packed rows of `seq_len` tokens."""
    from lowrank_jax.data import evaluation_batches, hold_out, pad_id, read_gsm8k, tokenize_examples
    from lowrank_jax.models import load_pretrained, load_tokenizer

    model, _ = load_pretrained(path, dtype=dtype, param_dtype=dtype, attention_impl="xla", remat=remat)
    tokenizer = load_tokenizer(path)
    train, held = hold_out(read_gsm8k("train", gsm8k), 300, seed=0)

    def batches(problems):
        tokenized = tokenize_examples(problems[:examples], tokenizer, max_length=seq_len, template="alpaca")
        return list(evaluation_batches(tokenized, global_batch_size=4, seq_len=seq_len, packing=True,
                                       pad_id=pad_id(tokenizer)))

    return model, batches(held), batches(train)


def measure(path: str, gsm8k: str, config, examples: int, seq_len: int, lr: float, low_memory: bool) -> dict:
    """Everything but --bf16, in float32 (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from lowrank_jax.evaluation.token_loss_eval import mean_token_loss
    from lowrank_jax.losses import token_loss

    model, validation, train_batches = model_and_batches(path, gsm8k, "float32", examples, seq_len,
                                                         remat="full" if low_memory else "none")
    record = {"loss_before": mean_token_loss(model, validation)[0]}
    adapted = adapt_op_by_op(model, config)
    record["loss_after_init"] = mean_token_loss(adapted, validation)[0]
    record["factors"] = factor_statistics(model, adapted, config.rank)
    kernel_norms = {p: [float(np.linalg.norm(np.asarray(k))) for k in module_at(model, f"layers.{p}").kernel[...]]
                    for p in PROJECTIONS}
    scales = {p: np.asarray(module_at(adapted, f"layers.{p}").lora_scale[...], np.float64) for p in PROJECTIONS}
    del model  # the unadapted kernels: 5 GB at 1.5B, which the gradient below needs room for

    graphdef, trainable, frozen = nnx.split(adapted, nnx.LoRAParam, ...)
    trainable, frozen = nnx.as_pure(trainable), nnx.as_pure(frozen)
    chunk_tokens = 128 if low_memory else 0
    loss_sum_grad = jax.jit(jax.grad(
        lambda t, f, batch: token_loss(nnx.merge(graphdef, t, f), batch, chunk_tokens=chunk_tokens)[0]))
    grads = jax.tree.map(jnp.zeros_like, trainable)
    tokens = 0.0
    for batch in train_batches:
        grads = jax.tree.map(jnp.add, grads, loss_sum_grad(trainable, frozen, batch))
        tokens += float(batch["loss_mask"][:, 1:].sum())
    grads = jax.tree.map(lambda g: g / tokens, grads)
    record["grad_norm"] = float(optax.tree.norm(grads))
    record["gradients"] = {
        projection: {name: np.sqrt(np.sum(np.asarray(g, np.float64) ** 2, axis=(1, 2))).tolist()
                     for name, g in functools.reduce(lambda s, k: s[k], ["layers", *projection.split(".")],
                                                     grads).items()}
        for projection in PROJECTIONS}

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=0.0))
    updates, _ = optimizer.update(grads, optimizer.init(trainable), trainable)
    stepped = optax.apply_updates(trainable, updates)
    record["loss_after_step"] = mean_token_loss(nnx.merge(graphdef, stepped, frozen), validation)[0]
    record["step_change"] = effective_change(trainable, stepped, kernel_norms, scales)
    return record


def bf16_losses(path: str, gsm8k: str, config, examples: int, seq_len: int) -> tuple[float, float]:
    """(loss before, after the init) with bfloat16 weights and compute, as the runs train."""
    from lowrank_jax.evaluation.token_loss_eval import mean_token_loss

    model, validation, _ = model_and_batches(path, gsm8k, "bfloat16", examples, seq_len)
    return mean_token_loss(model, validation)[0], mean_token_loss(adapt_op_by_op(model, config), validation)[0]


def print_tables(record: dict) -> None:
    """Markdown tables of one measurement: the init per projection, the first gradient, the first update."""
    factors, grads, change = record["factors"], record["gradients"], record["step_change"]
    columns = [c for c in ("adapter_share", "residual", "svd_residual", "norm_a", "norm_m", "norm_b", "cond_m",
                           "gain_a", "gain_m", "gain_b") if c in factors[PROJECTIONS[0]]]
    print("\nAt init, median over layers (max):")
    print("| projection | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for projection, stats in factors.items():
        cells = [f"{np.median(stats[c]):.3g} ({np.max(stats[c]):.3g})" for c in columns]
        print(f"| {projection.split('.')[1]} | " + " | ".join(cells) + " |")
    total = record["grad_norm"] ** 2
    print(f"\nFirst gradient: norm {record['grad_norm']:.4g}; per factor, over all layers (share of the squared norm; "
          "largest layer):")
    print("| projection | " + " | ".join(FACTORS) + " |")
    print("| --- " * (len(FACTORS) + 1) + "|")
    for projection, per_factor in grads.items():
        cells = []
        for name in FACTORS:
            if name not in per_factor:
                cells.append("—")
                continue
            layers = np.asarray(per_factor[name])
            norm = np.sqrt(np.sum(layers ** 2))
            cells.append(f"{norm:.3g} ({norm ** 2 / total:.1%}; {layers.max():.3g} in layer {layers.argmax()})")
        print(f"| {projection.split('.')[1]} | " + " | ".join(cells) + " |")
    print(f"\nOne AdamW update at lr {record['lr']:g}: ‖Δ(s·A M B)‖ / ‖K‖ median (max) per projection: "
          + ", ".join(f"{p.split('.')[1]} {np.median(v):.3g} ({np.max(v):.3g})" for p, v in change.items()))
    print(f"held-out loss: {record['loss_before']:.4f} before, {record['loss_after_init']:.4f} after the init, "
          f"{record['loss_after_step']:.4f} after one update (float32)")
    if "bf16_loss_before" in record:
        print(f"bfloat16: {record['bf16_loss_before']:.4f} before, {record['bf16_loss_after_init']:.4f} after the init")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .gguf file")
    parser.add_argument("--gsm8k", required=True, help="GSM8K directory (train.jsonl)")
    parser.add_argument("--method", default="nystrom")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=128.0)
    parser.add_argument("--examples", type=int, default=8, help="held-out and training problems")
    parser.add_argument("--seq-len", type=int, default=384)
    parser.add_argument("--lr", type=float, default=6.25e-5)
    parser.add_argument("--bf16", action="store_true", help="also the init's output change in bfloat16")
    parser.add_argument("--low-memory", action="store_true",
                        help="recompute layers and chunk the logits in the gradient (for 1.5B on a 24 GB host)")
    parser.add_argument("--json", help="write the measurements here too")
    args = parser.parse_args()

    from lowrank_jax import AdapterConfig

    config = AdapterConfig(method=args.method, rank=args.rank, alpha=args.alpha)
    start = time.perf_counter()
    record = {"model": args.model.rsplit("/", 1)[-1], "method": args.method, "rank": args.rank, "alpha": args.alpha,
              "examples": args.examples, "seq_len": args.seq_len, "lr": args.lr, "low_memory": args.low_memory,
              **measure(args.model, args.gsm8k, config, args.examples, args.seq_len, args.lr, args.low_memory)}
    if args.bf16:
        before, after = bf16_losses(args.model, args.gsm8k, config, args.examples, args.seq_len)
        record.update(bf16_loss_before=before, bf16_loss_after_init=after)
    print(f"{record['model']}: {args.method}, r = {args.rank}, alpha = {args.alpha:g} "
          f"({time.perf_counter() - start:.0f} s)")
    print_tables(record)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
