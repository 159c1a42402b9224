"""One training/evaluation example (a query and its response) and the mapping from dataset records to it.

Datasets name their two fields differently: GSM8K question/answer, MetaMathQA query/response, Alpaca
instruction(/input)/output. `records_to_examples` detects which pair a dataset uses, or takes it explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple


class Example(NamedTuple):
    """A prompt's content (`query`, without any template) and the target `response` the model learns to write."""

    query: str
    response: str


# Known (query field, response field) pairs, in the order they are tried.
FIELD_PAIRS = (("question", "answer"), ("query", "response"), ("instruction", "output"))


def detect_fields(column_names: Sequence[str], source: str) -> tuple[str, str]:
    """The (query, response) field pair a dataset with `column_names` uses.

    Raises:
      ValueError: none of FIELD_PAIRS is present; the message lists the columns and how to name the fields.
    """
    for pair in FIELD_PAIRS:
        if all(name in column_names for name in pair):
            return pair
    raise ValueError(f"{source}: cannot tell which fields hold the query and the response among columns "
                     f"{list(column_names)}; expected one of {[f'{q}/{r}' for q, r in FIELD_PAIRS]}, or pass "
                     "fields=(query_field, response_field)")


def records_to_examples(records: Iterable[Mapping[str, object]], fields: tuple[str, str], source: str
                        ) -> list[Example]:
    """Maps dataset records to Examples; Alpaca's optional `input` field is appended to the instruction.

    Args:
      records: dict-like rows (a `datasets.Dataset` iterates as such).
      fields: (query field, response field).
      source: the dataset's name or path, for error messages.

    >>> records = [{"instruction": "Add.", "input": "2 and 3", "output": "5"}]
    >>> records_to_examples(records, ("instruction", "output"), "alpaca.json")
    [Example(query='Add.\\n\\n2 and 3', response='5')]
    """
    query_field, response_field = fields
    examples = []
    for i, record in enumerate(records):
        query, response = record.get(query_field), record.get(response_field)
        if not isinstance(query, str) or not isinstance(response, str):
            raise ValueError(f"{source}: record {i} has {query_field}={query!r} and {response_field}={response!r}; "
                             "both must be strings")
        extra = record.get("input") if query_field == "instruction" else None
        if isinstance(extra, str) and extra.strip():
            query = f"{query}\n\n{extra}"
        examples.append(Example(query, response))
    return examples
