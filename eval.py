"""Evaluate a model on GSM8K-style math: greedy accuracy (batched, KV cache) and answer-token loss.

  python eval.py --config=configs/nystrom_llama.py --workdir=runs/nystrom_embedded   # adapters from the run's checkpoint
  python eval.py --config=configs/nystrom_llama.py --base                            # the base model, no adapters
  python eval.py --config=configs/nystrom_llama.py --model=runs/nystrom_embedded/merged  # a merged / any HF model dir

The test problems come from the config's `data` block; predictions go to `<out>/predictions.jsonl` and the scores to
`<out>/eval.json` (out defaults to the workdir).
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from lowrank_jax.data import check_data_config, load_splits
from lowrank_jax.evaluation.gsm8k_eval import evaluate
from lowrank_jax.models import load_pretrained, load_tokenizer
from lowrank_jax.training.config_check import check_config
from lowrank_jax.training.model_source import load_model
from lowrank_jax.training.restore import trained_model

# JAX's GPU allocator takes 75% of GPU memory by default, and the 7B preset's train step needs a 54 GiB block
# beside 13 GiB of weights on an 80 GB GPU. Read when JAX first touches a device, which no import above does; a
# value the user set wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/nystrom_llama.py", "Run config (file[:preset]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints (default: config.workdir).")
_MODEL = flags.DEFINE_string("model", None, "Evaluate this HF directory / .gguf file instead of the config's run.")
_BASE = flags.DEFINE_bool("base", False, "Evaluate the config's base model without adapters.")
_OUT = flags.DEFINE_string("out", None, "Where eval.json and predictions.jsonl go (default: the workdir).")


def main(argv):
    del argv
    config = _CONFIG.value
    workdir = _WORKDIR.value or config.workdir
    if _MODEL.value:
        check_data_config(config.data)
        model, _ = load_pretrained(_MODEL.value, dtype=config.model.dtype, param_dtype=config.model.param_dtype)
        tokenizer = load_tokenizer(_MODEL.value)
    else:
        config.resume = True  # reading an existing run is not starting a new one there
        model_path = check_config(config)
        if _BASE.value:
            model, _, tokenizer = load_model(config.model, model_path, config.seed)
        else:
            model, tokenizer = trained_model(config, model_path, workdir)
    out = _OUT.value or workdir
    os.makedirs(out, exist_ok=True)
    test = load_splits(config.data).test
    result = evaluate(model, tokenizer, test, config.eval, config.data.template,
                      os.path.join(out, "predictions.jsonl"))
    if jax.process_index() == 0:
        with open(os.path.join(out, "eval.json"), "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
