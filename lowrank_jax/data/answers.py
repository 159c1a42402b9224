"""Final answers of GSM8K-style math problems: extracted from generated text, read from gold solutions, normalised.

Two answers match when their normalised strings are equal: "$1,200.00", "1200" and "1200." all become "1200".
"""

from __future__ import annotations

import re
from decimal import Decimal

# A number as written in solutions: a sign (not a hyphen as in "3-page" or "12-5"), "$", thousands groups
# "1,234,567" or plain digits, decimals.
_NUMBER = re.compile(r"(?:(?<![\w)])[-−])?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_HASHES = re.compile(r"####[ \t]*(.*)")
_THE_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is[ \t]*:?[ \t]*(.*)")
# A new Alpaca section means the model went on to invent another problem; what follows is not its answer.
_NEXT_SECTION = "### Instruction"


def normalize_number(text: str) -> str | None:
    """The canonical form of the first number in `text`, or None if it holds none.

    Commas, "$" and a trailing ".0"/"." go; "-0" becomes "0"; decimals keep only significant digits.

    >>> [normalize_number(s) for s in ("$1,200.00", "72.", "-3.50 dollars", "18%", "no number")]
    ['1200', '72', '-3.5', '18', None]
    """
    match = _NUMBER.search(text)
    if match is None:
        return None
    raw = re.sub(r"[$,]", "", match.group(0)).replace("−", "-")
    value = Decimal(raw)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def last_number(text: str) -> str | None:
    """The canonical form of the last number in `text`, or None if it holds none.

    >>> last_number("3 * 4 = 12, then 12 + 5 = 17 apples.")
    '17'
    """
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def _stated_answer_span(text: str) -> tuple[int, int] | None:
    """Span of the number stated on the line after the first `####`, else after the first "The answer is"."""
    for pattern in (_HASHES, _THE_ANSWER_IS):
        match = pattern.search(text)
        number = _NUMBER.search(text, match.start(1), match.end(1)) if match else None
        if number is not None:
            return number.span()
    return None


def extract_answer(generated: str) -> str | None:
    """The model's final answer in `generated`, normalised; None if there is no number at all.

    Looks, in order, for GSM8K's `#### n`, MetaMath's "The answer is: n", then the last number in the text.
    Text after a new "### Instruction" section (the model inventing another problem) is ignored.

    >>> extract_answer("She sold 48 + 24 = 72 clips.\\n#### 72")
    '72'
    >>> extract_answer("So the total is $1,080. The answer is: 1080")
    '1080'
    >>> extract_answer("First 3 * 4 = 12, then 12 + 5 = 17 apples.")
    '17'
    """
    text = generated.split(_NEXT_SECTION, 1)[0]
    span = _stated_answer_span(text)
    if span is not None:
        return normalize_number(text[span[0]:span[1]])
    return last_number(text)


def final_answer_span(solution: str) -> tuple[int, int]:
    """Character span [start, end) of the final answer in a reference solution (after `####` or "The answer is").

    Raises:
      ValueError: the solution states no final answer in either form, so it cannot serve as a reference.

    >>> solution = "48 + 24 = 72\\n#### 72"
    >>> start, end = final_answer_span(solution); solution[start:end]
    '72'
    """
    span = _stated_answer_span(solution)
    if span is not None:
        return span
    raise ValueError(f"reference solution has no final answer ('#### n' or 'The answer is: n'): {solution[-200:]!r}; "
                     "evaluation needs GSM8K-format references")


def gold_answer(solution: str) -> str:
    """The normalised final answer of a reference solution (GSM8K's `#### n`, or MetaMath's "The answer is: n").

    Raises:
      ValueError: as `final_answer_span`.

    >>> gold_answer("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n#### 72")
    '72'
    """
    start, end = final_answer_span(solution)
    return normalize_number(solution[start:end])
