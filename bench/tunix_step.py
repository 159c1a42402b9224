"""The JAX peer: the same LoRA train step with google-tunix (its PeftTrainer's step, LoRA through qwix).

tunix's Llama 3 model in the benchmark shape (the 7B shape as a Llama 3 with 32 KV heads) with random bf16
weights; LoRA of rank r, alpha 2r on all 7 projections applied by qwix as tunix's examples do (adapters in the
base's dtype, bf16); the step `PeftTrainer.train` runs (`jit_train_and_eval_step`: nnx.value_and_grad over the
nnx.LoRAParam variables, tunix's default next-token loss, the optimizer update), timed without its logging loop,
on the synthetic rows of bench/common.py; AdamW after clipping to global norm 1, as the other benchmarks.
tunix's Llama 3 attention is XLA's dense einsum; its rotary embedding has no llama3 scaling (same FLOPs).
Each configuration runs in a fresh process (its own peak memory) and at half the batch after running out of memory.

  python -m bench.tunix_step --tiny                  # CPU smoke test, tiny shapes
  python -m bench.tunix_step --models 8b --methods lora-r8,lora-r16 --batch 4 --out results/tunix_8b.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import time

from bench.common import (GIB, H100_BF16_DENSE_TFLOPS, METHODS, TRAIN_COLUMNS, canonical_model, environment,
                          format_table, mfu, model_shape, synthetic_batch, train_step_flops, write_json)
from bench.train_step import (add_peer_arguments, batch_for, finish_peer_arguments, parse_batch, parse_list,
                              run_isolated, run_with_shrinking)

FRAMEWORK = "tunix"
TUNIX_METHODS = ("lora-r8", "lora-r16", "lora-r128")  # plain LoRA: what tunix's PeftTrainer trains
REMAT = ("none", "block", "decoder")  # tunix's RematConfig: nothing, attention and MLP blocks, whole layers
LORA_TARGETS = ".*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
INSTALL_HINT = ("bench/tunix_step.py needs google-tunix and qwix: pip install --no-deps -r "
                "bench/peers_requirements.txt (pinned, on top of JAX, flax, optax and orbax; its header says how to "
                "carry the wheels)")


@dataclasses.dataclass(frozen=True)
class TunixSpec:
    """One configuration: `batch` rows of `seq` tokens, `warmup` untimed steps then `steps` timed ones.

    `remat` is one of REMAT ('decoder' recomputes each layer in the backward pass, as our remat='full');
    `max_rank` caps the method's rank (tiny shapes). `accum` stays 1 (the shrinking loop reads it)."""

    model: str
    method: str
    seq: int
    batch: int
    steps: int = 5
    warmup: int = 2
    remat: str = "decoder"
    learning_rate: float = 2e-4
    max_rank: int | None = None
    peak_tflops: float = H100_BF16_DENSE_TFLOPS
    seed: int = 0
    accum: int = 1

    def check(self) -> None:
        """Raises ValueError naming the field and the fix, before anything is built."""
        canonical_model(self.model)
        if self.method not in TUNIX_METHODS:
            raise ValueError(f"method {self.method!r}: tunix runs {list(TUNIX_METHODS)}")
        if self.remat not in REMAT:
            raise ValueError(f"remat {self.remat!r} is not tunix's; choose from {list(REMAT)}")
        for name in ("seq", "batch", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.warmup < 1:
            raise ValueError(f"warmup={self.warmup} must be >= 1 (the first step compiles)")
        if self.accum != 1:
            raise ValueError(f"accum={self.accum}: tunix's step here takes whole batches (accum 1)")

    @property
    def rank(self) -> int:
        rank = METHODS[self.method].rank
        return rank if self.max_rank is None else min(rank, self.max_rank)


def tunix_model_config(shape: dict, remat: str):
    """tunix's Llama 3 ModelConfig of a bench/common.py shape (norms' epsilon, tying and the rest as the shape's)."""
    from tunix.models.llama3 import model as llama3
    return llama3.ModelConfig(
        num_layers=shape["num_hidden_layers"], vocab_size=shape["vocab_size"], embed_dim=shape["hidden_size"],
        hidden_dim=shape["intermediate_size"], num_heads=shape["num_attention_heads"], head_dim=shape["head_dim"],
        num_kv_heads=shape["num_key_value_heads"], rope_theta=int(shape["rope_theta"]), norm_eps=shape["rms_norm_eps"],
        weight_tying=shape["tie_word_embeddings"], remat_config=llama3.RematConfig[remat.upper()])


def lora_model(spec: TunixSpec):
    """tunix's Llama 3 with random bf16 weights (std 0.02) and qwix LoRA on the 7 projections."""
    import jax.numpy as jnp
    import qwix
    from flax import nnx
    from tunix.models import dummy_model_creator
    from tunix.models.llama3 import model as llama3

    config = tunix_model_config(model_shape(spec.model), spec.remat)
    base = dummy_model_creator.create_dummy_model(llama3.Llama3, config, dtype=jnp.bfloat16, random_seed=spec.seed)
    provider = qwix.LoraProvider(module_path=LORA_TARGETS, rank=spec.rank, alpha=2.0 * spec.rank)
    return qwix.apply_lora_to_model(base, provider, rngs=nnx.Rngs(spec.seed), **base.get_model_input())


def model_inputs(batch) -> dict:
    """The loss's inputs from a tunix TrainingInput: every token real, positions 0..T-1, a causal mask."""
    from tunix.sft import utils
    return dict(input_tokens=batch.input_tokens, input_mask=batch.input_mask,
                positions=utils.build_positions_from_mask(batch.input_mask),
                attention_mask=utils.make_causal_attn_mask(batch.input_mask))


def peak_gib() -> float | None:
    """The first device's peak_bytes_in_use in GiB, or None where the backend keeps no statistics (CPU)."""
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / GIB if "peak_bytes_in_use" in stats else None


def run(spec: TunixSpec, on_stepping=None) -> dict:
    """Builds, warms up (the first step compiles) and times one configuration; returns its row.

    `on_stepping(row)` is called before the first step, so a parent process can tell a crash while compiling or
    stepping (phase 'steps', worth retrying at half the batch) from one while building."""
    spec.check()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from tunix.sft import peft_trainer

    row = {"framework": FRAMEWORK, **dataclasses.asdict(spec), "model": canonical_model(spec.model),
           "rank": spec.rank, "adapter_dtype": "bfloat16", "device": jax.devices()[0].device_kind}
    start = time.perf_counter()
    model = lora_model(spec)
    adapters = jax.tree.leaves(nnx.state(model, nnx.LoRAParam))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(spec.learning_rate))
    total = spec.warmup + spec.steps
    trainer = peft_trainer.PeftTrainer(model, optimizer,
                                       peft_trainer.TrainingConfig(eval_every_n_steps=total, max_steps=total))
    train_step, _ = trainer.with_gen_model_input_fn(model_inputs).jit_train_and_eval_step(cache_nnx_graph=True)
    vocab = model_shape(spec.model)["vocab_size"]
    batches = [peft_trainer.TrainingInput(input_tokens=jnp.asarray(synthetic_batch(i, spec.batch, spec.seq, vocab,
                                                                                   spec.seed)),
                                          input_mask=jnp.ones((spec.batch, spec.seq), dtype=bool))
               for i in range(total)]
    jax.block_until_ready(nnx.state(model))
    row.update(adapter_params=sum(x.size for x in adapters), trainable_params=sum(x.size for x in adapters),
               init_s=time.perf_counter() - start)
    if on_stepping is not None:
        on_stepping({**row, "phase": "steps"})

    losses = []
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        if i == 1:
            jax.block_until_ready(losses)
            row["compile_s"] = time.perf_counter() - start  # compilation and the first step
        if i == spec.warmup:
            jax.block_until_ready(losses)
            start = time.perf_counter()
        loss, _, _ = train_step(batch)
        losses.append(loss)
    jax.block_until_ready(losses)
    step_s = (time.perf_counter() - start) / spec.steps

    losses = [float(x) for x in np.asarray(jax.device_get(losses))]
    flops = train_step_flops(model_shape(spec.model), spec.batch, spec.seq, row["adapter_params"],
                             row["trainable_params"])
    return {**row, "status": "ok" if all(math.isfinite(x) for x in losses) else "nonfinite_loss", "step_s": step_s,
            "tokens_per_s": spec.batch * spec.seq / step_s, "model_tflop_per_step": flops / 1e12,
            "mfu": mfu(flops, step_s, spec.peak_tflops), "peak_memory_gib": peak_gib(), "losses": losses}


def missing_tunix() -> str | None:
    """What to install when tunix or qwix cannot be imported (the parent checks before starting children)."""
    try:
        import qwix  # noqa: F401
        import tunix.sft.peft_trainer  # noqa: F401
    except ImportError as err:
        return f"{INSTALL_HINT}; importing it failed: {err}"
    return None


def child_environment(tiny: bool) -> dict[str, str]:
    """The children's environment: JAX may take 95% of the GPU (its default 0.75 hides a quarter); CPU for --tiny."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    if tiny:
        env["JAX_PLATFORMS"] = "cpu"
    return env


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=parse_list, default=["8b"], help="comma list: 1b, 7b, 8b, tiny")
    parser.add_argument("--methods", type=parse_list, default=["lora-r8"],
                        help=f"comma list from {', '.join(TUNIX_METHODS)}")
    parser.add_argument("--seqs", type=lambda t: parse_list(t, int), default=[2048])
    parser.add_argument("--batch", default="4", help="rows per step: N, or MODEL=N[,MODEL/METHOD=N...]")
    parser.add_argument("--steps", type=int, help="timed steps (default 5; --tiny 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps, the first compiles (default 2; --tiny 1)")
    parser.add_argument("--remat", default="decoder", choices=REMAT,
                        help="tunix's RematConfig: decoder (whole layers, as our remat=full), block, none")
    add_peer_arguments(parser)
    parser.add_argument("--spec", help=argparse.SUPPRESS)  # a child process: one TunixSpec as JSON ...
    parser.add_argument("--result", help=argparse.SUPPRESS)  # ... and where its row goes
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.seqs, args.batch = ["tiny"], [64], "4"
    return finish_peer_arguments(parser, args, TUNIX_METHODS, "tunix")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.spec:
        spec = TunixSpec(**json.loads(args.spec))
        write_json(args.result, run(spec, on_stepping=lambda row: write_json(args.result, row)))
        return
    batches = parse_batch(args.batch)
    missing = missing_tunix()
    env = child_environment(args.tiny)
    rows = []
    for model, seq, method in itertools.product(args.models, args.seqs, args.methods):
        model = canonical_model(model)
        spec = dataclasses.asdict(TunixSpec(model, method, seq, batch_for(batches, model, method), args.steps,
                                            args.warmup, args.remat, args.lr, 16 if args.tiny else None,
                                            args.peak_tflops))
        print(f"{model} {method} seq {seq} batch {spec['batch']} remat {args.remat}", flush=True)
        if missing:
            row = {"framework": FRAMEWORK, **spec, "status": "error", "error": missing}
        elif args.deadline and time.time() > args.deadline:
            row = {"framework": FRAMEWORK, **spec, "status": "skipped", "error": "time budget (--deadline)"}
        else:
            row = run_with_shrinking(spec, lambda s: run_isolated(s, env, "bench.tunix_step", FRAMEWORK),
                                     shrink=not args.no_shrink)
        rows.append(row)
        if row["status"] == "ok":
            print(f"  {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.1%}; compile and first step "
                  f"{row['compile_s']:.0f} s", flush=True)
        else:
            print(f"  {row['status']}: {row.get('error', '')}", flush=True)
        device = next((r["device"] for r in rows if "device" in r), None)
        write_json(args.out, {"environment": environment(device), "peak_tflops": args.peak_tflops, "rows": rows})
    print()
    print(format_table(rows, TRAIN_COLUMNS))


if __name__ == "__main__":
    main()
