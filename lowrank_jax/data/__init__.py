"""Data for fine-tuning: query/response examples, chat conversations and plain texts from the Hub, local files, a
saved dataset, GSM8K or the embedded offline set, tokenised with their loss masks (responses, assistant turns, or
every token) and packed into resumable, per-process (B, T) batches.
"""

from lowrank_jax.data.answers import extract_answer, final_answer_span, gold_answer, normalize_number
from lowrank_jax.data.batching import BatchIterator, evaluation_batches
from lowrank_jax.data.chat import conversation_pieces, generation_prompt
from lowrank_jax.data.embedded import EMBEDDED_PACKAGE, embedded_examples
from lowrank_jax.data.example import Conversation, Example, Text
from lowrank_jax.data.formats import FORMATS, RecordFormat, records_to_examples, resolve_format
from lowrank_jax.data.gsm8k import GSM8K_HUB_ID, read_gsm8k, strip_calculator_annotations
from lowrank_jax.data.packing import pack_first_fit, rows_to_batch
from lowrank_jax.data.pipeline import Batches, build_batches, check_data_config
from lowrank_jax.data.sources import read_examples, read_hub, read_local
from lowrank_jax.data.splits import Splits, hold_out, load_splits
from lowrank_jax.data.template import ALPACA_TEMPLATE, render_prompt
from lowrank_jax.data.tokenization import TokenizedExample, encode_prompts, pad_id, tokenize_examples

__all__ = ["ALPACA_TEMPLATE", "BatchIterator", "Batches", "Conversation", "EMBEDDED_PACKAGE", "Example", "FORMATS",
           "GSM8K_HUB_ID", "RecordFormat", "Splits", "Text", "TokenizedExample", "build_batches", "check_data_config",
           "conversation_pieces", "embedded_examples", "encode_prompts", "evaluation_batches", "extract_answer",
           "final_answer_span", "generation_prompt", "gold_answer", "hold_out", "load_splits", "normalize_number",
           "pack_first_fit", "pad_id", "read_examples", "read_gsm8k", "read_hub", "read_local",
           "records_to_examples", "render_prompt", "resolve_format", "rows_to_batch",
           "strip_calculator_annotations", "tokenize_examples"]
