"""What a chat template takes and gives: messages in; token ids and the loss mask out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vikhr.errors import VikhrError


class TypedControlError(VikhrError):
    """A message's text holds a control token's string that would be read as that control."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    trained: bool = True  # an assistant turn with weight 0 (ShareGPT's per-turn weight) is context only


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
