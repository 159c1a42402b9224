"""Fine-tune a model with low-rank adapters (or fully), sharded over every device, then evaluate and export.

  python train.py                                        # the embedded default: Nyström-NLoRA on SmolLM2-135M, CPU
  python train.py --config=configs/nlora_llama.py:llama2_7b --config.model.path=/models/Llama-2-7b-hf
  python train.py --config=configs/lorapro_llama.py --config.optimizer.name=lorapro_adamw --config.resume=True

The loop itself is `lowrank_jax.training.loop.run(config)`.
"""

import os

from absl import app, logging
from ml_collections import config_flags

from lowrank_jax.training.loop import run

# JAX's GPU allocator takes 75% of GPU memory by default, and the 7B preset's train step needs a 54 GiB block
# beside 13 GiB of weights on an 80 GB GPU. Read when JAX first touches a device, which no import above does; a
# value the user set wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/nystrom_llama.py", "Run config (file[:preset]).",
                                          lock_config=True)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO, through the progress bar
    run(_CONFIG.value)


if __name__ == "__main__":
    app.run(main)
