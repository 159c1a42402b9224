"""The three kinds of training/evaluation item: a query and its response, a chat conversation, a plain text.

`Example` goes through a prompt template (Alpaca, the chat template, or a format string) with the loss on the
response; `Conversation` goes through the tokenizer's chat template with the loss on its assistant turns; `Text`
is plain language modelling with the loss on every token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

ROLES = ("system", "user", "assistant", "tool")


class Example(NamedTuple):
    """A prompt's content (`query`, without any template) and the target `response` the model learns to write."""

    query: str
    response: str


class Conversation(NamedTuple):
    """Chat messages ({'role', 'content'} dicts, roles from ROLES); the loss covers the assistant turns from
    message `trained_from` on (0 for a `messages` record; the length of the prompt for prompt/completion).

    >>> chat = Conversation(({"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "5"}))
    >>> chat.trained_turns(), chat.prompt_and_reference()
    ([1], ([{'role': 'user', 'content': '2 + 3?'}], '5'))
    """

    messages: tuple[Mapping[str, str], ...]
    trained_from: int = 0

    def trained_turns(self) -> list[int]:
        """Indices of the messages the loss covers."""
        return [i for i, m in enumerate(self.messages) if i >= self.trained_from and m["role"] == "assistant"]

    def prompt_and_reference(self) -> tuple[list[Mapping[str, str]], str]:
        """The messages before the last trained turn (what generation is prompted with) and that turn's content."""
        last = self.trained_turns()[-1]
        return list(self.messages[:last]), self.messages[last]["content"]


class Text(NamedTuple):
    """A document for plain language modelling: the loss covers every token after the first."""

    text: str
