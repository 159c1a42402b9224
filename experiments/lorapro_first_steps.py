"""How far the first updates of LoRA-Pro AdamW (Algorithm 2) move a LoRA adapter that starts at B = 0, against
LoRA-Pro's transform + AdamW and plain AdamW, under a warm-up schedule from lr 0.

Algorithm 2 runs Adam in the kernel space and pulls its direction U back onto the factors: the change of A is
(1/s)(BᵀB + δI)⁻¹ Bᵀ U (Flax layout: a ← a − lr·(1/s) U bᵀ (b bᵀ + δI)⁻¹). At the first update after B leaves zero,
B is about the previous lr times an O(1) matrix, so A moves by about lr_t / lr_(t−1) / s in units where A's entries
are 1/√in: independent of the peak lr, and tens of times A's own size once BᵀB outgrows δ. The adapter's product
then moves by the second-order term s·Δa·Δb, which no first-order argument bounds. Plain AdamW, and `lorapro()`
followed by AdamW, normalise each factor's step after the adjustment, so their steps stay about lr per entry.

  python -m experiments.lorapro_first_steps [--out experiments/results/lorapro_first_steps.json]

One adapter of Qwen2.5-0.5B's q_proj shape (896 × 896, r = 8, alpha = 16), LoRA's init (A Kaiming-uniform, B = 0),
a gradient G + noise per step (fixed Gaussian G, new noise each step), float32 on the CPU, seconds. Per step it
prints ‖Δa‖ / ‖a‖ and ‖ΔK‖ / (lr·√(in·out)): the kernel's change against full fine-tuning's AdamW, which moves every
entry by about lr.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import optax

from lowrank_jax.adapters.inits import get_method
from lowrank_jax.optim import lorapro, lorapro_adamw

SHAPE = (896, 896)
RANK, ALPHA = 8, 16.0
STEPS = 4
# (name, peak lr, warm-up steps): the Qwen GSM8K runs' schedule (81 steps, 3% warm-up) at three peaks, and the
# authors' Llama-2-7B math recipe (lr 2e-5, about 3,000 steps, 3% warm-up).
SCHEDULES = (("runs, peak 2.5e-4", 2.5e-4, 2), ("runs, peak 5e-4", 5e-4, 2), ("runs, peak 1e-3", 1e-3, 2),
             ("authors' recipe, peak 2e-5", 2e-5, 90))


def optimizers(schedule, scale: float, delta: float) -> dict[str, optax.GradientTransformation]:
    """The three optimizers compared, on one lr schedule."""
    adamw = optax.adamw(schedule, weight_decay=0.0)
    return {"lorapro_adamw": lorapro_adamw(schedule, scale=scale, delta=delta),
            "lorapro() + adamw": optax.chain(lorapro(scale=scale, delta=delta), adamw),
            "adamw (LoRA)": adamw}


def first_steps(tx: optax.GradientTransformation, schedule, seed: int = 0) -> list[dict]:
    """Per update t = 1..STEPS: lr, ‖Δa‖/‖a‖ and ‖ΔK‖/(lr·√(in·out)) of one adapter (ΔK = s·a@b) under `tx`."""
    scale = ALPHA / RANK
    key_init, key_grad, key_noise = jax.random.split(jax.random.key(seed), 3)
    factors = get_method("lora").init(jnp.zeros(SHAPE, jnp.float32), RANK, scale, key_init, None)
    params = {"q": {"lora_a": factors.lora_a, "lora_b": factors.lora_b}}
    gradient = jax.random.normal(key_grad, SHAPE) * 1e-3
    state = tx.init(params)
    rows = []
    for step in range(STEPS):
        a, b = params["q"]["lora_a"], params["q"]["lora_b"]
        g = gradient + 0.5e-3 * jax.random.normal(jax.random.fold_in(key_noise, step), SHAPE)
        grads = {"q": {"lora_a": scale * g @ b.T, "lora_b": scale * a.T @ g}}   # dL/da, dL/db for dL/dK = g
        updates, state = tx.update(grads, state, params)
        new = optax.apply_updates(params, updates)
        lr = float(schedule(step))
        kernel_change = scale * (new["q"]["lora_a"] @ new["q"]["lora_b"] - a @ b)
        rows.append({"step": step + 1, "lr": lr,
                     "a_change": float(jnp.linalg.norm(new["q"]["lora_a"] - a) / jnp.linalg.norm(a)),
                     "kernel_change_vs_full_adamw": (float(jnp.linalg.norm(kernel_change))
                                                     / (lr * (SHAPE[0] * SHAPE[1]) ** 0.5)) if lr else None})
        params = new
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delta", type=float, default=1e-8, help="δ of the Gram inverses (the authors' 1e-8)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    results = []
    print("schedule | optimizer | per update t = 2, 3, 4: ‖Δa‖/‖a‖, ‖ΔK‖/(lr·√(in·out))")
    for name, peak, warmup in SCHEDULES:
        schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, 100 * max(warmup, 1), 0.0)
        for label, tx in optimizers(schedule, ALPHA / RANK, args.delta).items():
            rows = first_steps(tx, schedule)
            results.append({"schedule": name, "peak_lr": peak, "warmup_steps": warmup, "optimizer": label,
                            "delta": args.delta, "steps": rows})
            cells = ", ".join(f"{row['a_change']:.3g} / {row['kernel_change_vs_full_adamw']:.3g}" for row in rows[1:])
            print(f"{name} | {label} | {cells}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"shape": SHAPE, "rank": RANK, "alpha": ALPHA, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
