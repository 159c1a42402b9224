"""The one base config every method file starts from; method files change only what differs.

Presets (the part after ':' in `--config=configs/nlora_llama.py:PRESET`):
  embedded    SmolLM2-135M-Instruct (the offline GGUF) on offline leg-counting problems; a 2-core CPU runs it in ~10 min.
  gsm8k       SmolLM2-135M-Instruct on real GSM8K (openai/gsm8k from the Hub, or `--config.data.train=DIR` with
              GSM8K's train.jsonl / test.jsonl), GPU-sized.
  llama2_7b   Llama-2-7B from the hub (or `--config.model.path=/local/dir`) on MetaMathQA-100k: the papers' setup.
  tiny        a random 2-layer Llama on a few test problems, for tests and smoke runs.
"""

import ml_collections
from ml_collections import config_dict

PRESETS = ("embedded", "gsm8k", "llama2_7b", "tiny")

TINY_MODEL = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                  tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=2048)


def get_config(preset, *, method, settings, optimizer="adamw", trainable="adapters"):
    """Builds the config for `method` at `preset` (default: embedded).

    Args:
      preset: one of PRESETS, or None for 'embedded'.
      method: the adapter method (ignored when trainable='all').
      settings: {preset: dict(rank=, alpha=, learning_rate=)}, the method file's table of what each preset runs.
      optimizer: the optimizer name.
      trainable: 'adapters' (the adapter factors train, the base is frozen) or 'all' (full fine-tuning: no
        adapters, every weight trains).
    """
    preset = preset or "embedded"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    learning_rate = settings[preset]["learning_rate"]
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.seed = 0
    c.workdir = f"runs/{method if trainable == 'adapters' else 'full'}_{preset}"
    c.resume = False              # continue the run in workdir (from its newest intact checkpoint)

    c.model = ml_collections.ConfigDict(dict(
        path="embedded",          # 'embedded' | HF dir | .gguf file | hub id | 'random'
        hf_name="",               # HF id exported adapters name as their base ('' = path's own)
        random=ml_collections.ConfigDict(TINY_MODEL),  # the architecture when path == 'random'
        dtype="bfloat16",         # compute dtype
        param_dtype="bfloat16",   # frozen base weights
        quantize="none",          # frozen base storage: 'none' | 'int8' (per output channel) | 'nf4' (QLoRA)
        scan_layers=True,
        remat="full",             # activations recomputed in the backward pass: 'none' | 'dots_saveable' |
                                  # 'dots_with_no_batch_dims_saveable' | 'full' | 'auto' (the fastest that fits)
        attention_impl="auto",    # cuDNN flash attention on NVIDIA GPUs (sm80+, bf16), else XLA | cudnn | xla
        fuse_projections=False,   # q/k/v and gate/up (+ adapters' x A) from one matmul each; 3% slower at 8B (H200)
    ))
    if trainable == "adapters":  # full fine-tuning has no adapter block
        c.adapter = ml_collections.ConfigDict(dict(
            method=method,
            rank=settings[preset]["rank"],
            alpha=float(settings[preset]["alpha"]),
            targets=".*(q|k|v|o|gate|up|down)_proj",
            scaling="standard",       # alpha/r; 'rslora' = alpha/sqrt(r)
            dropout=0.0,
            dtype="float32",
            seed=0,
            niter=config_dict.placeholder(int),        # PiSSA: randomized-SVD subspace iterations (None = exact SVD)
            oversampling=config_dict.placeholder(int), # nystrom: extra sketch columns (None = r // 2)
            stable_gamma=config_dict.placeholder(float),  # LoRA-GA: γ of the stable scale (None = 16)
            init_base=config_dict.placeholder(str),    # IntTune: the init providing the frozen A, B (None = 'nlora')
        ))
    c.optimizer = ml_collections.ConfigDict(dict(
        name=optimizer,           # adamw | sgd | lorapro | lorapro_adamw
        learning_rate=learning_rate,
        schedule="cosine",
        warmup_ratio=0.03,
        b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0,
        momentum=0.0,
        grad_clip=1.0,
        x_mode="sylvester",       # LoRA-Pro's free r x r matrix
        delta=1e-8,
        moment_dtype="float32",   # lorapro_adamw's full-size moments
        fused_update=False,       # lorapro_adamw: its kernel-space Adam step as one Pallas kernel (one GPU)
        loraplus_ratio=config_dict.placeholder(float),  # LoRA+: B's learning rate / A's (the paper: 16); None = off
    ))
    c.data = ml_collections.ConfigDict(dict(
        source="embedded",        # 'embedded' | 'gsm8k' | 'local' | a Hub dataset id | a local file/dir
        train="",                 # 'local': json/jsonl/parquet file, dir of train.*/test.*, or save_to_disk dir;
                                  # 'gsm8k': a dir with GSM8K's train/test.jsonl ('' = openai/gsm8k from the Hub)
        test="",                  # evaluation file/dir or Hub id ('' = none: set it, or turn eval.after off)
        hub_config="",            # config name of the Hub dataset in `source` ('' = its default)
        format="auto",            # 'auto' | 'messages' | 'prompt_completion' | 'text' | 'query_response'
        messages_field="messages",      # chat messages [{'role', 'content'}, ...]: loss on assistant turns
        prompt_field="prompt",          # prompt/completion (strings, or message lists): loss on the completion
        completion_field="completion",
        text_field="text",              # plain text: loss on every token
        query_field="",                 # query/response columns ('' = detect question/answer, query/response,
        response_field="",              # instruction(/input)/output)
        template="alpaca",        # prompt of query/response data: 'alpaca' | 'chat' | a format string with {query}
        max_length=512,
        batch_size=32,            # global batch in sequences
        grad_accum=1,             # micro-batches per step; 0 = auto (the fewest that fit the device's memory)
        packing=True,
        overflow="truncate",      # longer examples: 'truncate' the response or 'drop' them
        epochs=1.0,
        max_train_examples=0,     # 0 = all
        val_examples=200,         # held out of train for loss / lr selection
        val_seed=0,               # which examples are held out (fixed, so runs of any seed score the same problems)
        seed=0,                   # training order
    ))
    # LoRA-GA: training batches whose mean loss gradient initialises the adapters (the authors average 64 of 2 rows).
    c.loraga = ml_collections.ConfigDict(dict(gradient_batches=8))
    c.train = ml_collections.ConfigDict(dict(
        trainable=trainable,      # 'adapters' (base frozen) | 'all' (full fine-tuning; the adapter block is unused)
        steps=0,                  # 0 = derive from epochs
        stop_after=0,             # end this process after N steps (time-sliced jobs; resume later); 0 = run to the end
        log_every=10,
        eval_every=0,             # validation loss every N steps (0 = at the end only)
        checkpoint_every=200,
        keep_checkpoints=3,
        resume_step=0,            # with resume=True: the checkpoint step to continue from (0 = the newest intact one)
        resume_or_start=False,    # resume the run in workdir if there is one, else start it (relaunched jobs)
        export_peft=True,
        export_merged=False,
        loss_chunk_tokens=0,      # > 0: the loss's logits N sequence positions at a time, (B, T, V) never whole
                                  # (docs/contracts.md, Training); 0 = all at once
        device_memory_gib=0.0,    # per-device memory the memory plan fits the step into (model.remat='auto' or
                                  # data.grad_accum=0); 0 = the device's own limit (CPUs: the host's memory)
    ))
    # Axis sizes over the first `devices` devices (0 = all of them); one axis may be -1 (the rest).
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, devices=0))
    # Multi-process runs: explicit coordinator (e.g. several CPU processes), or auto=True on TPU pods / SLURM.
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=1, process_id=0,
                                                   auto=False))
    c.eval = ml_collections.ConfigDict(dict(
        task="gsm8k",             # 'gsm8k' | 'exact_match' | 'loss' (response-token loss) | 'humaneval' (pass@1)
        extractor="",             # exact_match: 'gsm8k' | 'last_number' | 'exact' | 'regex:<pattern>' ('' = task's)
        stop_sequences=(),        # exact_match: cut generations at the first of these strings
        timeout=5.0,              # humaneval: seconds per generated program
        num_examples=1319, batch_size=64, max_new_tokens=512, max_length=768, after=True,
        before_and_after=False))

    if preset == "embedded":
        c.model.update(dtype="float32", param_dtype="float32", remat="none")
        # Two-animal leg counting, about 95 tokens a problem: 20 steps of 4 packed rows (~320 problems seen).
        c.data.update(max_length=384, batch_size=4, epochs=1.0, max_train_examples=0, val_examples=32)
        c.train.update(steps=20, log_every=2, checkpoint_every=10)
        c.eval.update(num_examples=64, batch_size=64, max_new_tokens=56, max_length=128, before_and_after=True)
    elif preset == "gsm8k":
        # remat and micro-batches: the fastest that fits the GPU (training/memory_plan.py; printed at the start)
        c.model.update(remat="auto")
        c.data.update(source="gsm8k", max_length=512, batch_size=32, grad_accum=0, epochs=2.0, val_examples=300)
        c.eval.update(num_examples=1319, batch_size=256, max_new_tokens=320)
    elif preset == "llama2_7b":
        # remat and micro-batches: the fastest that fits the GPU (training/memory_plan.py). 7B LoRA at 4 x 2048
        # tokens on one H200, unrolled: no remat 50.6% MFU in 56.2 GiB, dots_with_no_batch_dims_saveable 47.7% in
        # 54.8 GiB (docs/benchmarks.md). Unrolled layers (scan_layers=False): 45.2% instead of 42.1% on an H100, for
        # 86 s of compilation instead of 14, paid once for each candidate the plan compiles.
        c.model.update(path="meta-llama/Llama-2-7b-hf", remat="auto", scan_layers=False)
        c.data.update(source="meta-math/MetaMathQA", max_train_examples=100_000, max_length=512,
                      batch_size=32, grad_accum=0, val_examples=0)
        c.data.test = "openai/gsm8k"
        # 128 prompts decoding 512 tokens need a 78.5 GiB generate program on an H100 (KV cache); 64 fit.
        c.eval.update(num_examples=1319, batch_size=64, max_new_tokens=512)
        c.train.update(checkpoint_every=500)
    elif preset == "tiny":
        c.model.update(path="random", dtype="float32", param_dtype="float32", remat="none")
        c.data.update(source="local", max_length=64, batch_size=8, val_examples=8)
        c.train.update(steps=4, log_every=1, checkpoint_every=2)
        c.eval.update(num_examples=4, batch_size=4, max_new_tokens=8)
    return c
