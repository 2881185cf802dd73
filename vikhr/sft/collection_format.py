"""Which published collection's format a record is in, told by its fields (see vikhr.sft.sources).

Kept apart from the readers (vikhr.sft.sources, which validate chats with vikhr.sft.template) so that
`sft prepare` can tell a collection's record given to it and point to `vikhr sft build`, which reads it.
"""

from __future__ import annotations

from typing import Any

# The fields that hold a chat's turns, and the format each names when its turns do not tell.
_TURN_LISTS = {"messages": "messages", "conversation": "messages", "conversations": "sharegpt"}


def turn_list_key(record: dict[str, Any]) -> str | None:
    """The field of `record` holding its turns (``messages``, ``conversation``, ``conversations``)."""
    return next((key for key in _TURN_LISTS if key in record), None)


def _turn_list_format(record: dict[str, Any], key: str) -> str:
    """The format of the turns under `key`, told by its turns' fields: collections keep OpenAI's
    ``{"role", "content"}`` under ``conversations`` (unsloth's `standardize_sharegpt`, axolotl's
    chat_template datasets) and ShareGPT's ``{"from", "value"}`` under ``messages``; otherwise the
    format the field's name stands for."""
    turns = record[key]
    first = turns[0] if isinstance(turns, list) and turns else None
    if isinstance(first, dict) and ("role" in first) != ("from" in first):
        return "messages" if "role" in first else "sharegpt"
    return _TURN_LISTS[key]


def record_format(record: dict[str, Any]) -> str | None:
    """The collection format whose fields `record` has (docs/sft.md §0 "Formats"), None for none."""
    key = turn_list_key(record)
    if key is not None:
        return _turn_list_format(record, key)
    if "prompt" in record and "answers" in record:
        return "nectar"
    if "chosen" in record and "rejected" in record:
        return "preference"
    if "instruction" in record and ("output" in record or "instances" in record):
        return "alpaca"
    if "inputs" in record and ("targets" in record or "target" in record):
        return "flan"
    if "instruction" in record and "response" in record:
        return "dolly"
    if "question" in record and "response" in record:
        return "orca"
    if all(key in record for key in ("message_id", "parent_id", "role", "text")):
        return "oasst"
    return None
