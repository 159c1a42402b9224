"""The training loop: a config in, a trained (and evaluated, exported) model out. `train.py` is its command line.

Data flows config -> data -> model -> adapters -> optimizer -> step -> checkpoint -> eval, in that order in `run`.
What a run produces is written before anything that can still fail: the PEFT adapter and merged model are exported
as soon as training ends, before evaluation; report.json last. The workdir is checked (workdir.py) before anything
is loaded, the train step is compiled as the memory plan chooses (planned_step.py; printed, and written to
memory_plan.json), config.json is written once the run has its starting step, a diverging run stops without exporting
(divergence.py), and SIGINT / SIGTERM save a checkpoint at the next step boundary (stop_signals.py).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from lowrank_jax.adapters import merge
from lowrank_jax.data import build_batches, load_splits
from lowrank_jax.evaluation.tasks import check_eval_examples, evaluate
from lowrank_jax.evaluation.token_loss_eval import mean_token_loss
from lowrank_jax.export import export_peft, hf_base_model
from lowrank_jax.models import save_pretrained
from lowrank_jax.sharding import batch_sharding, make_mesh
from lowrank_jax.training.checkpoint import Checkpointer
from lowrank_jax.training.config_check import adapter_config_from, check_config, check_mesh
from lowrank_jax.training.divergence import Diverged, Divergence, DivergenceWatch
from lowrank_jax.training.loraga_gradients import loraga_gradients
from lowrank_jax.training.metrics_log import MetricsLog
from lowrank_jax.training.model_source import hf_name, load_model
from lowrank_jax.training.optimizer import build_optimizer, build_schedule
from lowrank_jax.training.placement import adapt_onto_mesh, init_optimizer
from lowrank_jax.training.planned_step import planned_train_step
from lowrank_jax.training.stop_signals import StopSignals
from lowrank_jax.training.workdir import check_workdir, run_command


def maybe_initialize_distributed(cfg) -> None:
    """Joins a multi-process run: explicit coordinator settings, or JAX's auto-detection on pods / SLURM."""
    if cfg.num_processes > 1:
        jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    elif cfg.auto:
        jax.distributed.initialize()


def global_batch(local: dict[str, np.ndarray], sharding, accum: int) -> dict[str, jax.Array]:
    """This process's rows (B_local, T) -> global (accum, B / accum, T) arrays split over the batch axes."""
    def one(x):
        x = x.reshape(accum, x.shape[0] // accum, *x.shape[1:])
        shape = (accum, x.shape[1] * jax.process_count(), *x.shape[2:])
        return jax.make_array_from_process_local_data(sharding, x, shape)
    return {k: one(v) for k, v in local.items()}


class RunResult(NamedTuple):
    """What a run leaves in memory: the report (also in <workdir>/report.json) and the final states."""

    report: dict
    trainable: Any   # pure tree of the trained parameters
    frozen: Any      # pure tree of everything else, as placed on the mesh


def on_mesh(mesh: Mesh, fn: Callable) -> Callable:
    """`fn`, called with `mesh` set, so that per-device kernels (cuDNN packed attention) find it when traced. Only
    around what runs the model: under a mesh, flax's `nnx.eval_shape` (model loading) reads logical names as mesh
    axes and fails."""
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)
    return call


def score_line(scores: dict) -> str:
    """One line of an evaluation's headline scores, e.g. 'accuracy 0.625 (15/24), answer_loss 0.0360'."""
    parts = []
    for key in ("accuracy", "pass@1"):
        if key in scores:
            parts.append(f"{key} {scores[key]:.3f} ({scores.get('correct', scores.get('passed'))}/{scores['n']})")
    parts += [f"{key} {scores[key]:.4f}" for key in ("answer_loss", "response_loss") if key in scores]
    return ", ".join(parts)


def run(config) -> RunResult:
    """Runs the whole job the config describes (the same code path as the command line)."""
    model_path = check_config(config)           # every value checked before anything heavy happens
    continuing = check_workdir(config)          # and the workdir: a refused run changes nothing there
    maybe_initialize_distributed(config.distributed)
    devices = jax.devices()[:config.mesh.devices] if config.mesh.devices else None
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    check_mesh(config, mesh, jax.process_count())
    adapter = adapter_config_from(config)
    is_main = jax.process_index() == 0
    ckpt = Checkpointer(config.workdir, keep=config.train.keep_checkpoints)  # creates the workdir, or fails early

    # data
    model, model_config, tokenizer = load_model(config.model, model_path, config.seed)
    splits = load_splits(config.data)
    if config.eval.after or config.eval.before_and_after:
        check_eval_examples(config.eval, splits.test)  # before any training: the run must be able to finish
    batches = build_batches(splits, tokenizer, config.data, process_index=jax.process_index(),
                            process_count=jax.process_count())
    total_steps = config.train.steps or batches.steps_per_epoch() * config.data.epochs
    total_steps = int(math.ceil(total_steps))
    report = {"method": adapter.method if adapter else "full", "optimizer": config.optimizer.name, "steps": total_steps,
              "attention_impl": model_config.attention_impl}

    def validation_loss(model) -> float:
        return on_mesh(mesh, mean_token_loss)(model, batches.validation(),
                                              chunk_tokens=config.train.loss_chunk_tokens)[0]

    report["val_loss_before"] = validation_loss(model)
    if config.eval.before_and_after:
        report["before"] = on_mesh(mesh, evaluate)(model, tokenizer, splits.test, config.eval, config.data.template,
                                                   os.path.join(config.workdir, "predictions_before.jsonl"))

    # adapters
    gradients = loraga_gradients(model, batches.train, config) if adapter and adapter.method == "loraga" else None
    state = adapt_onto_mesh(model, adapter, mesh, quantize=config.model.quantize, gradients=gradients)
    del model
    graphdef, trainable, rngs, frozen = state
    report["trainable_params"] = int(sum(x.size for x in jax.tree.leaves(trainable)))

    # optimizer and step
    optimizer = build_optimizer(config.optimizer, total_steps, frozen)
    opt_state = init_optimizer(optimizer, trainable, mesh)
    step_fn, memory_plan = planned_train_step(config, state, optimizer, opt_state, mesh)  # traced under the mesh
    report["memory_plan"] = memory_plan.as_dict()
    if is_main:
        print(memory_plan.line(), flush=True)
    schedule = build_schedule(config.optimizer, total_steps)
    batch_layout = batch_sharding(mesh)

    # checkpoint (a resumed run starts from the newest intact one), then the run's files
    start, start_loss = 0, None
    if continuing and ckpt.steps():
        items, meta = ckpt.resume({"trainable": trainable, "opt_state": opt_state, "rngs": rngs},
                                  config.train.resume_step)
        trainable, opt_state, rngs = items["trainable"], items["opt_state"], items["rngs"]
        batches.train.restore(meta["data"])
        start, start_loss = meta["step"], meta.get("start_loss")
    if is_main:
        with open(os.path.join(config.workdir, "config.json"), "w") as f:   # as given: 'auto' stays 'auto'
            f.write(config.to_json_best_effort(indent=2))
        with open(os.path.join(config.workdir, "memory_plan.json"), "w") as f:  # what this process chose
            json.dump(report["memory_plan"], f, indent=2)
    log = MetricsLog(config.workdir, start)  # drops rows after `start`: the run replays those steps

    stop = min(total_steps, config.train.stop_after or total_steps)
    bar = tqdm(total=total_steps, initial=start, disable=not is_main, desc=report["method"])
    tokens, t0 = 0.0, time.perf_counter()
    watch = DivergenceWatch(model_config.vocab_size, start_loss)

    def stop_diverged(divergence: Divergence):
        """Sets aside the checkpoints whose parameters gave the divergence (and later ones, and any whose values are
        not sane), then raises naming the last good checkpoint and the resume command that lowers the lr."""
        ckpt.wait()
        log.close()
        moved = [step for step in ckpt.steps() if step >= divergence.step - 1]
        for step in moved:
            ckpt.set_aside(step, f"diverged: its parameters gave step {divergence.step}'s {divergence.reason}")
        _, meta, rejected = ckpt.restore_newest_intact({"trainable": trainable})
        for step, _, problem in rejected:
            ckpt.set_aside(step, f"unusable: {problem}")
        moved = sorted(moved + [step for step, _, _ in rejected])
        lower = {"optimizer.learning_rate": f"{config.optimizer.learning_rate / 10:g}"}
        if not config.optimizer.grad_clip:
            lower["optimizer.grad_clip"] = 1.0
        if meta is None:
            advice = (f"No checkpoint of this run is good: start it over in place with a lower learning rate, e.g. "
                      f"{run_command({'train.resume_or_start': True, **lower})} (or in another --config.workdir)")
        else:
            advice = (f"The last good checkpoint is step {meta['step']} ({ckpt.step_dir(meta['step'])}); continue "
                      f"from it with a lower learning rate: {run_command({'resume': True, **lower})}")
        unused = os.path.join(ckpt.workdir, "unused_checkpoints")
        aside = (f"; checkpoint{'s' * (len(moved) > 1)} {', '.join(map(str, moved))} moved to {unused}"
                 if moved else "")
        raise Diverged(f"training diverged at step {divergence.step}: {divergence.reason}. Stopped; nothing "
                       f"exported{aside}. {advice}")

    def record(step, metrics):
        """Host side of a finished step: stop on divergence, else log."""
        nonlocal tokens
        loss = float(metrics["loss"])
        divergence = watch.check(step, loss, float(metrics["grad_norm"]), float(metrics["tokens"]))
        if divergence is not None:
            stop_diverged(divergence)
        tokens += float(metrics["tokens"])
        if step % config.train.log_every == 0 or step == stop:
            rate = tokens / (time.perf_counter() - t0)
            scalars = {"train/loss": loss, "train/lr": float(schedule(step - 1)),
                       "train/grad_norm": float(metrics["grad_norm"]), "train/tokens_per_s": rate}
            log.write(step, scalars)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scalars['train/lr']:.2e}", tok_s=f"{rate:.0f}")

    pending = None
    with StopSignals() as signals:
        for step in range(start, stop):
            local = next(batches.train)
            batch = global_batch(local, batch_layout, memory_plan.grad_accum)
            trainable, opt_state, rngs, metrics = step_fn(trainable, opt_state, rngs, frozen, batch)
            if pending is not None:          # read the previous step's loss while this one runs
                record(*pending)
            pending = (step + 1, metrics)
            bar.update(1)
            if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == stop or signals.received:
                record(*pending)             # never checkpoint a state whose loss has diverged
                pending = None
                ckpt.save(step + 1, {"trainable": trainable, "opt_state": opt_state, "rngs": rngs},
                          {"data": batches.train.state(), "start_loss": watch.start_loss})
            if signals.received:
                ckpt.wait()
                log.close()
                bar.close()
                name = signal.Signals(signals.received).name
                print(f"stopped by {name} after step {step + 1}: checkpoint {step + 1} saved in {ckpt.directory}. "
                      f"Continue with: {run_command({'resume': True})}", flush=True)
                raise SystemExit(128 + signals.received)
            if config.train.eval_every and (step + 1) % config.train.eval_every == 0 and step + 1 < total_steps:
                val_loss = validation_loss(nnx.merge(graphdef, trainable, rngs, frozen))
                log.write(step + 1, {"val/loss": val_loss})   # the last step's is measured below, with the report
    bar.close()
    ckpt.wait()
    if stop < total_steps:
        print(f"stopped after step {stop} of {total_steps} (train.stop_after); continue with --config.resume=True")
        log.close()
        return RunResult(report, trainable, frozen)
    report["train_seconds"] = time.perf_counter() - t0

    # export (before evaluation, so that a failing evaluation loses nothing), then eval
    model = nnx.merge(graphdef, trainable, rngs, frozen)
    if is_main and adapter is not None and config.train.export_peft:
        base = hf_base_model(model_path, hf_name(config.model))
        export_peft(model, os.path.join(config.workdir, "peft"), base=base)
    if is_main and config.train.export_merged:
        merged_dir = os.path.join(config.workdir, "merged")
        save_pretrained(merge(model), merged_dir)
        tokenizer.save_pretrained(merged_dir)  # so the directory loads as a model of its own (eval.py --model)
    report["val_loss"] = validation_loss(model)
    log.write(total_steps, {"val/loss": report["val_loss"]})
    if config.eval.before_and_after or config.eval.after:
        report["after"] = on_mesh(mesh, evaluate)(model, tokenizer, splits.test, config.eval, config.data.template,
                                                  os.path.join(config.workdir, "predictions_after.jsonl"))
    log.close()
    ckpt.close()
    if is_main:
        with open(os.path.join(config.workdir, "report.json"), "w") as f:
            json.dump(report, f, indent=2, default=float)
        print(json.dumps({k: v for k, v in report.items() if k not in ("before", "after")}, default=float))
        for name in ("before", "after"):
            if name in report:
                print(f"{name:>6}: {score_line(report[name])}")
        print(f"held-out loss: {report['val_loss_before']:.4f} before -> {report['val_loss']:.4f} after")
    return RunResult(report, trainable, frozen)
