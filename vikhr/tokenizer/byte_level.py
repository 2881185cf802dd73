"""Byte-level BPE vocabularies (GPT-2, Llama-3, Qwen2.5, Mistral tekken): pieces as bytes.

A byte-level `tokenizer.json` writes every byte as one printable character (GPT-2's
`bytes_to_unicode`: "Ġ" is the space byte, "Ð" the byte 0xD0), so a piece is a string of those
characters and stands for a byte string that need not be valid UTF-8 (" Ð" is a space plus the
first byte of a Cyrillic letter). This module converts between the two and recognises the
byte-level layout of a `tokenizer.json`. It imports nothing heavy.
"""

from __future__ import annotations

import functools
import re
from typing import Any

# The pre-tokenizer split patterns of well-known byte-level models (their tokenizer.json's Split).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")  # digits one by one

CYRILLIC = re.compile(r"[\u0400-\u04FF\u0500-\u052F]")  # the letters extend mode adds tokens for
# In valid UTF-8 the bytes 0xD0-0xD3 only start U+0400-U+04FF and 0xD4 0x80-0xAF is U+0500-U+052F:
# a byte string holding one of these holds a Cyrillic character (or a part of one that starts here).
_CYRILLIC_BYTES = re.compile(rb"[\xd0-\xd3]|\xd4[\x80-\xaf]")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (the same in `tokenizers` and `transformers`)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def piece_bytes(piece: str) -> bytes | None:
    """The bytes a byte-level piece stands for; None if `piece` is not made of byte characters
    (a special or added token such as "<|im_end|>" or "[INST]")."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in piece)
    except KeyError:
        return None


def bytes_piece(data: bytes) -> str:
    """The byte-level piece of `data` (inverse of `piece_bytes`)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def has_cyrillic_bytes(data: bytes) -> bool:
    """True if `data` holds a byte that in valid UTF-8 only occurs in U+0400-U+052F (see the pattern)."""
    return _CYRILLIC_BYTES.search(data) is not None


def utf8_runs(data: bytes) -> list[str | int]:
    """`data` as valid UTF-8 text runs and the single bytes between them that are not valid UTF-8.

    b"\\xbf\\xd1\\x80" → [0xBF, "р"]: the longest valid prefix, then one byte, and so on. A piece that
    ends in half a character (" \\xd0") gives its valid text and the stray bytes.
    """
    out: list[str | int] = []
    rest = data
    while rest:
        try:
            out.append(rest.decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            if e.start:
                out.append(rest[: e.start].decode("utf-8"))
            out.append(rest[e.start])
            rest = rest[e.start + 1 :]
    return out


def readable_piece(piece: str) -> str:
    """A byte-level piece for people: its text with spaces as "▁" and stray bytes as <0xXX>."""
    data = piece_bytes(piece)
    if data is None:
        return piece
    return "".join(
        run.replace(" ", "▁") if isinstance(run, str) else f"<0x{run:02X}>" for run in utf8_runs(data)
    )


def _steps(component: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """A pre-tokenizer/decoder/normalizer and, for a Sequence, its parts."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [s for part in component.get(key, []) for s in _steps(part, key)]
    return [component]


def is_byte_level(spec: dict[str, Any]) -> bool:
    """True if a parsed `tokenizer.json` is byte-level BPE (a ByteLevel pre-tokenizer over a BPE model)."""
    if (spec.get("model") or {}).get("type") != "BPE":
        return False
    return any(s.get("type") == "ByteLevel" for s in _steps(spec.get("pre_tokenizer"), "pretokenizers"))


def drop_prefix_space(spec: dict[str, Any]) -> None:
    """Turn off ByteLevel's `add_prefix_space` (in place): text is then encoded as it occurs mid-text."""
    for step in _steps(spec.get("pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "ByteLevel":
            step["add_prefix_space"] = False
