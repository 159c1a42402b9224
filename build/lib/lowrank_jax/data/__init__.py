"""Data for fine-tuning: examples from the Hub, local files, real GSM8K or the embedded offline set, tokenised with
the Alpaca or chat template (loss on responses only) and packed into resumable, per-process (B, T) batches.
"""

from lowrank_jax.data.batching import BatchIterator, evaluation_batches
from lowrank_jax.data.embedded import EMBEDDED_PACKAGE, embedded_examples
from lowrank_jax.data.example import Example, records_to_examples
from lowrank_jax.data.gsm8k_local import DEFAULT_GSM8K_DIR, read_gsm8k, strip_calculator_annotations
from lowrank_jax.data.packing import pack_first_fit, rows_to_batch
from lowrank_jax.data.pipeline import Batches, build_batches, check_data_config
from lowrank_jax.data.sources import read_examples, read_hub, read_local
from lowrank_jax.data.splits import Splits, hold_out, load_splits
from lowrank_jax.data.template import ALPACA_TEMPLATE, render_prompt
from lowrank_jax.data.tokenization import TokenizedExample, encode_prompts, pad_id, tokenize_examples

__all__ = ["ALPACA_TEMPLATE", "BatchIterator", "Batches", "DEFAULT_GSM8K_DIR", "EMBEDDED_PACKAGE", "Example", "Splits",
           "TokenizedExample", "build_batches", "check_data_config", "embedded_examples", "encode_prompts",
           "evaluation_batches", "hold_out", "load_splits", "pack_first_fit", "pad_id", "read_examples", "read_gsm8k",
           "read_hub", "read_local", "records_to_examples", "render_prompt", "rows_to_batch",
           "strip_calculator_annotations", "tokenize_examples"]
