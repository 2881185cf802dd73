"""What a chat template takes and gives: messages (and the functions a chat offers) in; token ids
and the loss mask out."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex, overload

from vikhr.errors import VikhrError


class TypedControlError(VikhrError):
    """A message's text holds a control token's string that would be read as that control."""


@dataclass(frozen=True)
class ToolCall:
    """A function an assistant message calls."""

    name: str
    # The arguments as JSON text of an object: a string as the chat gives it, an object as the
    # templates' `tojson` writes it (json.dumps, ensure_ascii=False, ", " and ": ", keys in order).
    arguments: str
    id: str | None = None  # OpenAI's call id, which a tool result may name (tool_call_id)


@dataclass(frozen=True)
class Message:
    role: str  # system, user, assistant, or tool (a function's result)
    content: str  # "" for an assistant message that only calls functions (its content null)
    trained: bool = True  # an assistant turn with weight 0 (ShareGPT's per-turn weight) is context only
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's function calls
    name: str | None = None  # a tool result's function name, where the chat gives it
    tool_call_id: str | None = None  # the call a tool result answers, where the chat gives it


class ChatMessages(list[Message]):
    """A chat's messages with the functions it offers: `tools`, each as JSON text of its schema
    (``{"type": "function", "function": {...}}``), empty for a chat that offers none. A slice keeps
    them (the prompt for generation of a chat offers the same functions). `trimmed`: the user turns
    after the chat's last answer that its record held and no answer followed, left out."""

    def __init__(self, messages: Iterable[Message] = (), tools: Iterable[str] = (), trimmed: int = 0) -> None:
        super().__init__(messages)
        self.tools = tuple(tools)
        self.trimmed = trimmed

    @overload
    def __getitem__(self, index: SupportsIndex) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> ChatMessages: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Message | ChatMessages:
        if isinstance(index, slice):
            return ChatMessages(super().__getitem__(index), self.tools)
        return super().__getitem__(index)


def tools_of(messages: Sequence[Message]) -> tuple[str, ...]:
    """The functions `messages` offer (see `ChatMessages`); none for a plain list."""
    return messages.tools if isinstance(messages, ChatMessages) else ()


def uses_tools(messages: Sequence[Message]) -> bool:
    """Whether a chat offers functions, calls one or holds a function's result."""
    return bool(tools_of(messages)) or any(m.tool_calls or m.role == "tool" for m in messages)


def arguments_object(call: ToolCall) -> Any:
    """The arguments of `call` as an object (what transformers' chat templates expect)."""
    return json.loads(call.arguments)


@dataclass
class EncodedChat:
    ids: list[int]
    mask: list[int]  # 1 = assistant token (the loss is taken on it), 0 = context only


def trained_tokens(offsets: list[tuple[int, int]], trained_chars: Sequence[bool]) -> list[int]:
    """The mask of tokens with these character `offsets` in a text whose characters are marked
    `trained_chars`: a token is trained when it holds a trained character (a byte-level merge of
    template text and an answer's first character is trained)."""
    spans = _token_spans(offsets, len(trained_chars))
    return [int(any(trained_chars[start:end])) for start, end in spans]


def _token_spans(offsets: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Each token's characters: its offsets, or where they are empty (a ByteLevel post-processor
    with trim_offsets gives whitespace tokens none) the gap between its neighbours' characters."""
    # One pass each way (a run of many whitespace tokens stays linear).
    next_start, after = [length] * len(offsets), length
    for i in range(len(offsets) - 1, -1, -1):
        next_start[i] = after
        if offsets[i][0] != offsets[i][1]:
            after = offsets[i][0]
    spans, before = [], 0
    for i, (start, end) in enumerate(offsets):
        if start == end:
            spans.append((before, max(before, next_start[i])))
        else:
            spans.append((start, end))
            before = end
    return spans
