"""Record formats: which columns of a dataset hold what, and the mapping from records to Examples, Conversations
and Texts.

The formats are the ones TRL and PEFT users bring: `messages` (a list of {'role', 'content'} chat messages, loss on
the assistant turns), `prompt` / `completion` (strings, or lists of messages for conversational data; loss on the
completion), `text` (loss on every token), and a query/response pair (GSM8K's question/answer, MetaMathQA's
query/response, Alpaca's instruction(/input)/output). Each column name is a config setting. String prompt /
completion pairs become Examples, so the prompt goes through `data.template` like a query (`data.template='{query}'`
uses it verbatim).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from lowrank_jax.data.example import ROLES, Conversation, Example, Text

FORMATS = ("auto", "messages", "prompt_completion", "text", "query_response")
# Known (query column, response column) pairs, in the order 'auto' tries them.
QUERY_RESPONSE_PAIRS = (("question", "answer"), ("query", "response"), ("instruction", "output"))
_FIELD_KEYS = ("messages_field", "prompt_field", "completion_field", "text_field", "query_field", "response_field")


class RecordFormat(NamedTuple):
    """How to read records: `kind` (one of FORMATS) and the column of each part (the config's `data.format` and
    `data.*_field`). Empty query/response fields mean the first of QUERY_RESPONSE_PAIRS a dataset has."""

    kind: str = "auto"
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    text_field: str = "text"
    query_field: str = ""
    response_field: str = ""

    @classmethod
    def from_config(cls, cfg) -> RecordFormat:
        """From the `data` block: `format` and the `*_field` keys."""
        return cls(cfg.format, *(cfg[key] for key in _FIELD_KEYS))


def check_record_format(record_format: RecordFormat) -> None:
    """Raises ValueError, naming the config key, for an unknown format or unusable column names."""
    if record_format.kind not in FORMATS:
        raise ValueError(f"data.format={record_format.kind!r} is unknown; choose one of {FORMATS}")
    for key in _FIELD_KEYS[:4]:
        if not isinstance(getattr(record_format, key), str) or not getattr(record_format, key):
            raise ValueError(f"data.{key}={getattr(record_format, key)!r} must name a column")
    if bool(record_format.query_field) != bool(record_format.response_field):
        raise ValueError(f"data.query_field={record_format.query_field!r} / data.response_field="
                         f"{record_format.response_field!r}: set both (e.g. --config.data.query_field=problem "
                         "--config.data.response_field=solution) or neither (detect question/answer, query/response, "
                         "instruction/output)")


def expected_columns(record_format: RecordFormat) -> str:
    """What a record needs under `record_format`, in words, for error messages.

    >>> expected_columns(RecordFormat("query_response", query_field="problem", response_field="solution"))
    "'problem' and 'solution'"
    """
    f = record_format
    pairs = f"a query/response pair ({', '.join('/'.join(p) for p in QUERY_RESPONSE_PAIRS)})"
    described = {"messages": f"a {f.messages_field!r} column (chat messages)",
                 "prompt_completion": f"{f.prompt_field!r} and {f.completion_field!r}",
                 "query_response": f"{f.query_field!r} and {f.response_field!r}" if f.query_field else pairs,
                 "text": f"{f.text_field!r}"}
    if f.kind == "auto":
        return ", ".join(described[kind] for kind in ("messages", "prompt_completion", "query_response")) + \
            f" or {described['text']}"
    return described[f.kind]


def _query_response_fields(record_format: RecordFormat, columns: Sequence[str]) -> tuple[str, str] | None:
    if record_format.query_field:
        pair = (record_format.query_field, record_format.response_field)
        return pair if all(c in columns for c in pair) else None
    return next((pair for pair in QUERY_RESPONSE_PAIRS if all(c in columns for c in pair)), None)


def resolve_format(record_format: RecordFormat, columns: Sequence[str], source: str) -> tuple[str, tuple[str, ...]]:
    """The format kind and its columns for a dataset with `columns`.

    Returns:
      ('messages', (messages,)), ('prompt_completion', (prompt, completion)), ('text', (text,)) or
      ('query_response', (query, response)).

    Raises:
      ValueError: the columns do not hold the format; the message lists the columns and the settings to change.

    >>> resolve_format(RecordFormat(), ["question", "answer"], "gsm8k")
    ('query_response', ('question', 'answer'))
    >>> resolve_format(RecordFormat(messages_field="conversations"), ["id", "conversations"], "chat.jsonl")
    ('messages', ('conversations',))
    """
    f = record_format
    candidates = {"messages": (f.messages_field,), "prompt_completion": (f.prompt_field, f.completion_field),
                  "query_response": _query_response_fields(f, columns), "text": (f.text_field,)}
    kinds = FORMATS[1:] if f.kind == "auto" else (f.kind,)
    for kind in kinds:
        fields = candidates[kind]
        if fields is not None and all(c in columns for c in fields):
            return kind, fields
    settings = {"messages": "data.messages_field", "prompt_completion": "data.prompt_field / data.completion_field",
                "text": "data.text_field", "query_response": "data.query_field / data.response_field"}
    if f.kind == "auto":
        raise ValueError(
            f"{source}: cannot tell the data format from its columns {list(columns)}; expected "
            f"{expected_columns(f)}. Name the columns: e.g. --config.data.messages_field=conversations, or "
            "--config.data.query_field=problem --config.data.response_field=solution, or "
            "--config.data.text_field=content")
    wanted = candidates[f.kind] or QUERY_RESPONSE_PAIRS
    raise ValueError(f"{source}: data.format={f.kind!r} needs the column(s) {list(wanted)} but the data has "
                     f"{list(columns)}; set {settings[f.kind]} to the right column names, or data.format='auto'")


def _messages(value, where: str, field: str) -> tuple[dict[str, str], ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: {field}={value!r} must be a non-empty list of {{'role', 'content'}} messages")
    messages = []
    for j, m in enumerate(value):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, Mapping) else (None, None)
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"{where}: {field}[{j}]={m!r} must be a dict with 'role' in {ROLES} and string "
                             "'content'")
        messages.append({"role": role, "content": content})
    return tuple(messages)


def _conversation(messages: tuple[dict[str, str], ...], trained_from: int, where: str, field: str) -> Conversation:
    conversation = Conversation(messages, trained_from)
    if not conversation.trained_turns():
        raise ValueError(f"{where}: {field} has no 'assistant' message, so there is nothing to learn; every "
                         "conversation needs at least one assistant turn (drop such records, or fix the roles)")
    return conversation


def _item(record: Mapping, kind: str, fields: tuple[str, ...], where: str) -> Example | Conversation | Text:
    missing = [name for name in fields if name not in record]
    if missing:
        raise ValueError(f"{where} has no {' / '.join(map(repr, missing))} field (it has {list(record)}); every "
                         f"record of the {kind!r} format needs {' and '.join(map(repr, fields))} (data.format and "
                         "data.*_field name them); fix or remove that record")
    values = [record[name] for name in fields]
    if kind == "messages":
        return _conversation(_messages(values[0], where, fields[0]), 0, where, fields[0])
    if kind == "text":
        if not isinstance(values[0], str) or not values[0]:
            raise ValueError(f"{where}: {fields[0]}={values[0]!r} must be a non-empty string")
        return Text(values[0])
    first, second = values
    if kind == "prompt_completion" and isinstance(first, list) and isinstance(second, list):
        prompt = _messages(first, where, fields[0])
        return _conversation(prompt + _messages(second, where, fields[1]), len(prompt), where, fields[1])
    if not isinstance(first, str) or not isinstance(second, str):
        raise ValueError(f"{where} has {fields[0]}={first!r} and {fields[1]}={second!r}; both must be strings"
                         + (", or both lists of chat messages" if kind == "prompt_completion" else ""))
    extra = record.get("input") if fields[0] == "instruction" else None
    if isinstance(extra, str) and extra.strip():  # Alpaca's optional input
        first = f"{first}\n\n{extra}"
    return Example(first, second)


def records_to_examples(records: Sequence[Mapping], columns: Sequence[str], source: str,
                        record_format: RecordFormat = RecordFormat(), locations: Sequence[str] | None = None
                        ) -> list[Example | Conversation | Text]:
    """Maps dataset records to Examples, Conversations or Texts, as `record_format` and the columns say.

    Args:
      records: dict-like rows (a `datasets.Dataset` iterates as such).
      columns: the dataset's column names.
      source: the dataset's name or path, for error messages.
      record_format: see RecordFormat.
      locations: where each record is in `source`, for error messages (e.g. 'line 21'); default 'record i'.

    Raises:
      ValueError: no records, an unknown format, or a record that does not fit it (naming the record and column).

    >>> records_to_examples([{"instruction": "Add.", "input": "2 and 3", "output": "5"}],
    ...                     ["instruction", "input", "output"], "alpaca.json")
    [Example(query='Add.\\n\\n2 and 3', response='5')]
    >>> records_to_examples([{"text": "Once upon a time."}], ["text"], "stories.jsonl")
    [Text(text='Once upon a time.')]
    """
    if not len(records):
        raise ValueError(f"{source} holds no records; point data.train / data.test at a non-empty file")
    kind, fields = resolve_format(record_format, columns, source)
    places = ([f"{source}, {location}" for location in locations] if locations
              else [f"{source}: record {i}" for i in range(len(records))])
    return [_item(record, kind, fields, place) for record, place in zip(records, places)]
