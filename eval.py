"""Evaluate a model on the config's test split: greedy accuracy (batched, KV cache) and answer-token loss.

  python eval.py --config=configs/nystrom_llama.py --workdir=runs/nystrom_embedded   # adapters from the run's checkpoint
  python eval.py --config=configs/nystrom_llama.py --base                            # the base model, no adapters
  python eval.py --config=configs/nystrom_llama.py --model=runs/nystrom_embedded/merged  # a merged / any HF model dir

Predictions go to `<out>/predictions.jsonl` and the scores to `<out>/eval.json` (out defaults to the workdir). The
work is `lowrank_jax.training.eval_run.run_eval`.
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from lowrank_jax.training.eval_run import run_eval

# As in train.py: JAX's default GPU allocation (75%) is too small for the 7B preset; a value the user set wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/nystrom_llama.py", "Run config (file[:preset]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints (default: config.workdir).")
_MODEL = flags.DEFINE_string("model", None, "Evaluate this HF directory / .gguf file instead of the config's run.")
_BASE = flags.DEFINE_bool("base", False, "Evaluate the config's base model without adapters.")
_OUT = flags.DEFINE_string("out", None, "Where eval.json and predictions.jsonl go (default: the workdir).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # as train.py: JAX's and orbax's INFO lines do not cross the bar
    result = run_eval(_CONFIG.value, workdir=_WORKDIR.value, model_path=_MODEL.value, base=_BASE.value,
                      out=_OUT.value)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
