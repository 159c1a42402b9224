"""Templates and tokenisation with the real SmolLM2 tokenizer: the loss mask is exactly the response + EOS (checked by
decoding), truncation and dropping, the final-answer mask, and the whole pipeline into contract-shaped batches."""

import ml_collections
import numpy as np
import pytest

from lowrank_jax.data import (Example, Splits, build_batches, embedded_examples, encode_prompts, render_prompt,
                              tokenize_examples)
from lowrank_jax.data.answers import final_answer_span
from lowrank_jax.training.model_source import embedded_tokenizer

EXAMPLES = [
    Example("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How "
            "many clips did Natalia sell altogether in April and May?",
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
            "in April and May.\n#### 72"),
    Example("Adam earns $40 daily. 10% is deducted as taxes. How much does he keep after 30 days?",
            "He keeps $40 \u2013 $4 = $36 a day, so $36 * 30 = $1080.\n#### 1,080"),
    Example("  Leading spaces and a tab\tin the query?", " A response with a leading space.\n\n#### -7"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()  # load_tokenizer of the SmolLM2 GGUF, as train.py loads it (once per process)


def test_render_prompt_alpaca_custom_and_chat(tokenizer):
    assert render_prompt("What is 2 + 3?") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nWhat is 2 + 3?\n\n### Response:")
    assert render_prompt("2 + 3?", "Q: {query}\nA:") == "Q: 2 + 3?\nA:"
    chat = render_prompt("2 + 3?", "chat", tokenizer)
    assert chat.endswith("<|im_start|>user\n2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="no {query} field"):
        render_prompt("x", "Question:")
    with pytest.raises(ValueError, match="only field is {query}"):
        render_prompt("x", "{question}")


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_loss_mask_is_exactly_response_and_eos(tokenizer, template):
    tokenized = tokenize_examples(EXAMPLES, tokenizer, max_length=512, template=template)
    prompts = encode_prompts([e.query for e in EXAMPLES], tokenizer, template)
    for example, (ids, mask), prompt_ids in zip(EXAMPLES, tokenized, prompts):
        assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape
        assert tokenizer.decode(ids[mask]) == example.response + tokenizer.eos_token
        assert tokenizer.decode(ids[~mask]) == render_prompt(example.query, template, tokenizer)
        # Targets are one contiguous block at the end, after exactly the ids generation is prompted with.
        assert mask[len(prompt_ids):].all() and not mask[:len(prompt_ids)].any()
        assert ids[:len(prompt_ids)].tolist() == prompt_ids
        assert ids[-1] == tokenizer.eos_token_id


def test_final_answer_mask_covers_the_answer_number_only(tokenizer):
    tokenized = tokenize_examples(EXAMPLES, tokenizer, max_length=512, target="final_answer")
    for example, (ids, mask) in zip(EXAMPLES, tokenized):
        start, end = final_answer_span(example.response)
        assert tokenizer.decode(ids[mask]).strip() == example.response[start:end]
        assert ids[-1] == tokenizer.eos_token_id and not mask[-1]


def test_overflow_truncates_or_drops(tokenizer):
    full = tokenize_examples(EXAMPLES[:1], tokenizer, max_length=512)[0]
    n_prompt = int((~full.loss_mask).sum())
    max_length = n_prompt + 5
    (ids, mask), = tokenize_examples(EXAMPLES[:1], tokenizer, max_length=max_length)
    assert ids.tolist() == full.input_ids[:max_length].tolist() and mask.sum() == 5
    long_and_short = [EXAMPLES[0], Example("Hi?", "#### 1")]
    kept = tokenize_examples(long_and_short, tokenizer, max_length=max_length, overflow="drop")
    assert len(kept) == 1 and tokenizer.decode(kept[0].input_ids[kept[0].loss_mask]) == "#### 1<|im_end|>"
    # A prompt that fills max_length leaves no target: dropped even when truncating.
    assert len(tokenize_examples(long_and_short, tokenizer, max_length=n_prompt)) == 1
    with pytest.raises(ValueError, match="all 1 examples are longer than max_length=8"):
        tokenize_examples(EXAMPLES[:1], tokenizer, max_length=8)
    with pytest.raises(ValueError, match="overflow='wrap'"):
        tokenize_examples(EXAMPLES, tokenizer, max_length=64, overflow="wrap")


def test_pipeline_gives_contract_batches_from_embedded_data(tokenizer):
    cfg = ml_collections.ConfigDict(dict(template="alpaca", max_length=256, batch_size=4, packing=True,
                                         overflow="truncate", seed=0))
    splits = Splits(embedded_examples("train", 40), embedded_examples("validation", 6), [])
    batches = build_batches(splits, tokenizer, cfg, process_index=1, process_count=2)
    batch = next(batches.train)
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        "input_ids": ((2, 256), "int32"), "loss_mask": ((2, 256), "float32"),
        "segment_ids": ((2, 256), "int32"), "positions": ((2, 256), "int32")}
    assert batch["segment_ids"].max() >= 2                                  # rows hold several packed examples
    assert batches.steps_per_epoch() == batches.train.steps_in_epoch(0) > 0
    # Validation runs replicated: each process's pass holds every validation target token exactly once.
    validation_targets = sum(int(t.loss_mask.sum()) for t in tokenize_examples(
        splits.validation, tokenizer, max_length=256))
    for p in (0, 1):
        batches = build_batches(splits, tokenizer, cfg, process_index=p, process_count=2)
        assert sum(b["loss_mask"].sum() for b in batches.validation()) == validation_targets
    # Each packed segment decodes to one whole training example, with positions restarting at 0.
    texts = {render_prompt(e.query) + e.response + tokenizer.eos_token for e in splits.train}
    for row in range(2):
        for segment in range(1, batch["segment_ids"][row].max() + 1):
            where = batch["segment_ids"][row] == segment
            assert tokenizer.decode(batch["input_ids"][row][where]) in texts
            assert batch["positions"][row][where].tolist() == list(range(where.sum()))
