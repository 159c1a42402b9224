"""Prompt templates: the Alpaca prompt that LoRA-Pro and NLoRA fine-tune with, the tokenizer's chat template, or a
custom format string with a `{query}` field. The response follows the prompt directly.
"""

from __future__ import annotations

ALPACA_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\n{query}\n\n### Response:")
TEMPLATES = ("alpaca", "chat")


def check_template(template: str) -> None:
    """Raises ValueError unless `template` is 'alpaca', 'chat', or a format string with exactly a `{query}` field."""
    if template in TEMPLATES:
        return
    try:
        template.format(query="")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"template {template!r} is neither one of {TEMPLATES} nor a format string whose only field "
                         f"is {{query}} ({e!r})") from e
    if "{query}" not in template:
        raise ValueError(f"template {template!r} has no {{query}} field; choose one of {TEMPLATES} or add {{query}}")


def uses_chat_template(template: str) -> bool:
    """Whether the prompt comes from the tokenizer's chat template (whose text already holds special tokens)."""
    return template == "chat"


def render_prompt(query: str, template: str = "alpaca", tokenizer=None) -> str:
    """The prompt text for `query`; the model's response is appended right after it.

    Args:
      query: the problem / instruction.
      template: 'alpaca', 'chat' (the tokenizer's chat template, one user turn, generation prompt added) or a
        format string with a `{query}` field.
      tokenizer: needed for 'chat' (an object with `apply_chat_template`).

    >>> render_prompt("What is 2 + 3?").endswith("### Instruction:\\nWhat is 2 + 3?\\n\\n### Response:")
    True
    """
    check_template(template)
    if uses_chat_template(template):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("template='chat' needs a tokenizer with a chat template; this one has none, use "
                             "template='alpaca'")
        return tokenizer.apply_chat_template([{"role": "user", "content": query}], tokenize=False,
                                             add_generation_prompt=True)
    return (ALPACA_TEMPLATE if template == "alpaca" else template).format(query=query)
