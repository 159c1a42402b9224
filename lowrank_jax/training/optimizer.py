"""Optimizers and learning-rate schedules by registry name, as the configs select them.

`build_optimizer(config.optimizer, total_steps, frozen)` returns one optax transform over the trainable tree:
global-norm clipping (or a no-op: the state keeps one structure either way), then the named optimizer (`adamw`,
`sgd`, `lorapro` = lorapro() chained with adamw, `lorapro_adamw` = the paper's Algorithm 2) driven by a warmup +
cosine / linear / constant schedule.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

from lowrank_jax.optim import lorapro, lorapro_adamw, with_loraplus

OPTIMIZERS = ("adamw", "sgd", "lorapro", "lorapro_adamw")
SCHEDULES = ("cosine", "linear", "constant")
LORAPRO_OPTIMIZERS = ("lorapro", "lorapro_adamw")


def build_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup over `warmup_ratio` of the steps, then `schedule` decay to zero (or constant)."""
    warmup = int(round(cfg.warmup_ratio * total_steps))
    peak = cfg.learning_rate
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), 0.0)
    decay = (optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1)) if cfg.schedule == "linear"
             else optax.constant_schedule(peak))
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup]) if warmup else decay


def build_optimizer(cfg: ml_collections.ConfigDict, total_steps: int,
                    frozen_factors=None) -> optax.GradientTransformation:
    """The optimizer named by `cfg.name`, with clipping (`cfg.grad_clip` > 0) or a no-op in front.

    Args:
      cfg: the config's `optimizer` block.
      total_steps: optimizer steps of the run (the schedule's length).
      frozen_factors: the frozen state (lorapro_adamw sizes IntTune's moments from its fixed A, B). The adapters'
        scales reach the LoRA-Pro transforms one way only: the train step passes the frozen state, which holds
        each adapter's `lora_scale`, to every update as `frozen_factors`.
    """
    schedule = build_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "sgd":
        core = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                           optax.sgd(schedule, momentum=cfg.momentum or None))
    elif cfg.name == "lorapro":
        core = optax.chain(lorapro(x_mode=cfg.x_mode, delta=cfg.delta),
                           optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    elif cfg.name == "lorapro_adamw":
        core = lorapro_adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, x_mode=cfg.x_mode, delta=cfg.delta,
                             moment_dtype=jnp.dtype(cfg.moment_dtype), frozen_factors=frozen_factors,
                             fused_update=cfg.fused_update)
    else:
        raise ValueError(f"optimizer.name={cfg.name!r} is unknown; choose one of {OPTIMIZERS}")
    core = with_loraplus(core, cfg.loraplus_ratio)
    # identity() holds the same (empty) state as clipping, so a resumed run may turn clipping on or off.
    clip = optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip and cfg.grad_clip > 0 else optax.identity()
    return optax.chain(clip, core)
