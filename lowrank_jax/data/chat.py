"""A Conversation through the tokenizer's chat template, cut into prompt and target pieces of text.

A target is what the template writes for a trained assistant turn after the generation prompt: the content and the
end-of-turn marker (`<|im_end|>`, `<|eot_id|>`, ...), without the whitespace the template puts between turns. Its
start is the length of the conversation so far rendered with `add_generation_prompt=True`, so the prompt before a
target is exactly what generation is prompted with. Templates that render earlier turns differently once later ones
follow (e.g. dropping past reasoning) are refused rather than given a misplaced mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lowrank_jax.data.example import Conversation


def _render(tokenizer, messages: Sequence[Mapping[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def check_chat_template(tokenizer) -> None:
    """Raises ValueError unless `tokenizer` has a chat template (needed by conversational data)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("conversational data (messages, or prompt/completion message lists) goes through the "
                         "tokenizer's chat template, and this tokenizer has none; use a chat (instruct) model's "
                         "tokenizer, or give the data as query/response strings with data.template='alpaca'")


def generation_prompt(messages: Sequence[Mapping[str, str]], tokenizer) -> str:
    """The chat-template text that generation continues with after `messages` (the assistant header added)."""
    check_chat_template(tokenizer)
    return _render(tokenizer, messages, generation_prompt=True)


def conversation_pieces(conversation: Conversation, tokenizer) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive (text, is_target) pieces; their texts join to the full rendering.

    Args:
      conversation: messages and the first trained message.
      tokenizer: a `transformers` tokenizer with a chat template.

    Raises:
      ValueError: no chat template, or a template whose rendering of a prefix of the conversation is not a prefix
        of the whole (the message names the turn).

    >>> class Template:  # a ChatML-like template, as a stand-in for a tokenizer
    ...     chat_template = "chatml"
    ...     def apply_chat_template(self, messages, tokenize, add_generation_prompt):
    ...         text = "".join(f"<{m['role']}>{m['content']}</s>\\n" for m in messages)
    ...         return text + ("<assistant>" if add_generation_prompt else "")
    >>> chat = Conversation(({"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "5"}))
    >>> conversation_pieces(chat, Template())
    [('<user>2 + 3?</s>\\n<assistant>', False), ('5</s>', True), ('\\n', False)]
    """
    check_chat_template(tokenizer)
    messages = conversation.messages
    full = _render(tokenizer, messages)
    pieces, cursor = [], 0
    for turn in conversation.trained_turns():
        prompt = _render(tokenizer, messages[:turn], generation_prompt=True)
        through_turn = _render(tokenizer, messages[:turn + 1])
        start, end = len(prompt), len(through_turn.rstrip())
        if not (cursor <= start < end and through_turn.startswith(prompt) and full.startswith(through_turn[:end])):
            raise ValueError(f"the tokenizer's chat template renders messages[:{turn + 1}] differently from the start "
                             "of the whole conversation (it rewrites earlier turns once later ones follow), so the "
                             "loss cannot be placed on each assistant turn; split such conversations into "
                             "prompt/completion records, one per assistant turn")
        pieces += [(full[cursor:start], False), (full[start:end], True)]
        cursor = end
    if cursor < len(full):
        pieces.append((full[cursor:], False))
    return [(text, target) for text, target in pieces if text]
