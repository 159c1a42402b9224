"""Answer extractors for exact match: how a final answer is read from a generation and from a reference response.

An extractor is named by a string, so configs can choose it: 'gsm8k' (`#### n` / "The answer is n" / last number),
'last_number', 'exact' (the whole stripped text) or 'regex:<pattern>' (the first match; its first group if it
has one). Numbers are normalised ("$1,200.00" == "1200"), text is stripped of surrounding whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from lowrank_jax.data.answers import extract_answer, gold_answer, last_number

EXTRACTORS = ("gsm8k", "last_number", "exact", "regex:<pattern>")


class AnswerExtractor(NamedTuple):
    """Reads answers: `predicted(generation) -> str | None` (None: no answer found, scored wrong) and
    `gold(reference) -> str` (raises ValueError when a reference holds no answer)."""

    name: str
    predicted: Callable[[str], str | None]
    gold: Callable[[str], str]


def _gold_last_number(reference: str) -> str:
    answer = last_number(reference)
    if answer is None:
        raise ValueError(f"reference {reference[-200:]!r} holds no number, so extractor 'last_number' cannot score "
                         "it; choose eval.extractor='exact' or 'regex:<pattern>'")
    return answer


def _regex_extractor(spec: str, pattern: str) -> AnswerExtractor:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"extractor {spec!r}: {pattern!r} is not a valid Python regular expression ({e})") from e

    def predicted(text: str) -> str | None:
        match = compiled.search(text)
        if match is None:
            return None
        return (match.group(1) if compiled.groups else match.group(0)).strip()

    def gold(reference: str) -> str:
        # A reference that is the bare answer ("B") need not repeat the pattern's context ("Answer: (B)").
        answer = predicted(reference)
        return reference.strip() if answer is None else answer

    return AnswerExtractor(spec, predicted, gold)


def get_extractor(spec: str) -> AnswerExtractor:
    """The extractor named by `spec` (one of EXTRACTORS).

    Raises:
      ValueError: an unknown name or an invalid regular expression; the message lists the choices.

    >>> get_extractor("gsm8k").predicted("3 + 4 = 7 apples.\\n#### 7")
    '7'
    >>> get_extractor("last_number").predicted("It was 3, then 1,200.00 dollars.")
    '1200'
    >>> get_extractor("regex:answer is \\\\(([A-D])\\\\)").predicted("So the answer is (C).")
    'C'
    >>> get_extractor("exact").gold("  Paris \\n")
    'Paris'
    """
    if spec == "gsm8k":
        return AnswerExtractor(spec, extract_answer, gold_answer)
    if spec == "last_number":
        return AnswerExtractor(spec, last_number, _gold_last_number)
    if spec == "exact":
        return AnswerExtractor(spec, str.strip, str.strip)
    if spec.startswith("regex:") and spec != "regex:":
        return _regex_extractor(spec, spec[len("regex:"):])
    raise ValueError(f"unknown answer extractor {spec!r}; set eval.extractor to one of {EXTRACTORS}")
