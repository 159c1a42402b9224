"""How far NLoRA's released init moves each pretrained weight: ‖ΔK0‖ / ‖K‖ over 7 projections per layer.

The authors' init adds ΔK0 = s · K[:, :r] · K[:r, :r] · K[:r, :] (s = alpha / r) to the output without taking it out
of the base weight. With weights of standard deviation σ the ratio is about alpha · σ² (the width barely enters), so
the same r and alpha can be a small nudge on one model and a rewrite of another.

  python -m experiments.init_perturbation MODEL.gguf [--rank 128 --alpha 128] [--gsm8k GSM8K_DIR --examples 64]

With --gsm8k it also measures the loss of the responses of held-out GSM8K training problems (the runs' validation
problems, `data.val_seed` 0) before and after `adapt(model, nlora)`, on the CPU in float32.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")


def perturbation_ratio(kernel: np.ndarray, rank: int, alpha: float) -> float:
    """‖ΔK0‖_F / ‖K‖_F of NLoRA's init on one (in, out) kernel, with the library's own init function.

    >>> k = np.random.default_rng(0).normal(0, 0.05, (256, 128)).astype(np.float32)
    >>> round(perturbation_ratio(k, rank=64, alpha=64) / (64 * 0.05 ** 2), 1)  # about alpha * sigma^2
    1.0
    """
    import jax.numpy as jnp

    from lowrank_jax.adapters.inits import get_method

    factors = get_method("nlora").init(jnp.asarray(kernel), rank, alpha / rank, None, None)
    delta = (alpha / rank) * (factors.lora_a @ factors.lora_m @ factors.lora_b)
    return float(jnp.linalg.norm(delta) / jnp.linalg.norm(kernel))


def weight_ratios(path: str, rank: int, alpha: float) -> dict[str, dict[str, list[float]]]:
    """{projection: {'ratio': per layer, 'std': per layer}} for every layer of the GGUF at `path`."""
    from lowrank_jax.models.gguf_io import GGUFCheckpoint

    checkpoint = GGUFCheckpoint(path)
    layers = checkpoint.hf_config["num_hidden_layers"]
    out = {p: {"ratio": [], "std": []} for p in PROJECTIONS}
    for layer in range(layers):
        for projection in PROJECTIONS:
            kernel = checkpoint.read(f"model.layers.{layer}.{projection}.weight").T  # HF (out, in) -> (in, out)
            out[projection]["ratio"].append(perturbation_ratio(kernel, rank, alpha))
            out[projection]["std"].append(float(kernel.std()))
    return out


def init_losses(path: str, gsm8k: str, examples: int, rank: int, alpha: float) -> tuple[float, float]:
    """(loss before, loss after adapting with nlora) on `examples` held-out GSM8K training problems, float32."""
    from lowrank_jax import AdapterConfig, adapt
    from lowrank_jax.data import evaluation_batches, hold_out, pad_id, read_gsm8k, tokenize_examples
    from lowrank_jax.evaluation.token_loss_eval import mean_token_loss
    from lowrank_jax.models import load_pretrained, load_tokenizer

    model, _ = load_pretrained(path, dtype="float32", param_dtype="float32", attention_impl="xla")
    tokenizer = load_tokenizer(path)
    _, held = hold_out(read_gsm8k("train", gsm8k), examples, seed=0)
    tokenized = tokenize_examples(held, tokenizer, max_length=512, template="alpaca")

    def loss(m) -> float:
        batches = evaluation_batches(tokenized, global_batch_size=8, seq_len=512, packing=True,
                                     pad_id=pad_id(tokenizer))
        return mean_token_loss(m, batches)[0]

    before = loss(model)
    return before, loss(adapt(model, AdapterConfig(method="nlora", rank=rank, alpha=alpha)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .gguf file")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=128.0)
    parser.add_argument("--gsm8k", help="GSM8K directory: also measure the held-out loss before and after the init")
    parser.add_argument("--examples", type=int, default=64, help="held-out problems for the loss")
    parser.add_argument("--json", help="write the measurements here too")
    args = parser.parse_args()
    start = time.perf_counter()
    per_projection = weight_ratios(args.model, args.rank, args.alpha)
    ratios = np.concatenate([v["ratio"] for v in per_projection.values()])
    stds = np.concatenate([v["std"] for v in per_projection.values()])
    print(f"{args.model}: r = {args.rank}, alpha = {args.alpha:g}, {len(ratios)} matrices "
          f"({time.perf_counter() - start:.0f} s)")
    print("| projection | median ‖ΔK0‖/‖K‖ | min | max | median σ |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in per_projection.items():
        r = np.asarray(values["ratio"])
        print(f"| {name.split('.')[1]} | {np.median(r):.3g} | {r.min():.3g} | {r.max():.3g} | "
              f"{np.median(values['std']):.3g} |")
    print(f"| all | {np.median(ratios):.3g} | {ratios.min():.3g} | {ratios.max():.3g} | {np.median(stds):.3g} |")
    print(f"alpha * median(σ)^2 = {args.alpha * np.median(stds) ** 2:.3g}")
    record = {"model": args.model.rsplit("/", 1)[-1], "rank": args.rank, "alpha": args.alpha,
              "median_ratio": float(np.median(ratios)), "min_ratio": float(ratios.min()),
              "max_ratio": float(ratios.max()), "median_std": float(np.median(stds)), "per_projection": per_projection}
    if args.gsm8k:
        before, after = init_losses(args.model, args.gsm8k, args.examples, args.rank, args.alpha)
        print(f"held-out loss ({args.examples} GSM8K training problems): {before:.3f} before, {after:.3f} after "
              "the nlora init")
        record.update(loss_examples=args.examples, loss_before=before, loss_after_init=after)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
