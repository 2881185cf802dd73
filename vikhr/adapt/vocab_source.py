"""Tokenizers seen as vocabularies: id → piece, piece kinds, and raw encoding of a piece's text.

A new piece's text is encoded with the old tokenizer *without* the dummy-prefix space, so a
word-internal piece ("ение") is segmented as it occurs inside a word and a word-initial piece
("▁слово") as after a space.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vikhr.errors import VikhrError
from vikhr.tokenizer.load import load_without_dummy_prefix, resolve_tokenizer_file

SPIECE_UNDERLINE = "▁"
BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass
class Vocabulary:
    path: Path
    pieces: list[str]
    kinds: list[str]  # normal | byte | control | unknown | unused | user
    encode_raw: Callable[[str], list[int]]  # text (no dummy prefix added) → ids
    unk_id: int | None

    @property
    def size(self) -> int:
        return len(self.pieces)

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.pieces)}


def _from_sentencepiece(path: Path) -> Vocabulary:
    from vikhr.tokenizer.hf_export import load_model_proto

    proto = load_model_proto(path)
    kind_names = {1: "normal", 2: "unknown", 3: "control", 4: "user", 5: "unused", 6: "byte"}
    pieces = [p.piece for p in proto.pieces]
    kinds = [kind_names.get(p.type, "normal") for p in proto.pieces]
    raw = load_without_dummy_prefix(path)
    unk = proto.trainer_spec.unk_id
    return Vocabulary(path, pieces, kinds, raw.encode, unk if unk >= 0 else None)


def _from_tokenizer_json(path: Path) -> Vocabulary:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise VikhrError(f"{path} is not a tokenizer.json ({e})") from e
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise VikhrError(f"{path}: only BPE tokenizer.json files are supported (got {model.get('type')})")
    raw = load_without_dummy_prefix(path)
    pieces = [raw.id_to_piece(i) for i in range(raw.vocab_size)]
    specials = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    unk_piece = model.get("unk_token")
    kinds = [
        "unknown"
        if p == unk_piece
        else "control"
        if p in specials
        else "byte"
        if BYTE_PIECE.match(p)
        else "normal"
        for p in pieces
    ]
    unk_id = raw.piece_to_id(unk_piece) if unk_piece else None
    return Vocabulary(path, pieces, kinds, raw.encode, unk_id)


def load_vocabulary(path: str | Path) -> Vocabulary:
    """A SentencePiece `.model`, an HF `tokenizer.json`, or a directory (precedence: vikhr.tokenizer.load)."""
    p = resolve_tokenizer_file(path)
    return _from_tokenizer_json(p) if p.suffix == ".json" else _from_sentencepiece(p)


def piece_text(piece: str) -> str:
    """The text a normal piece stands for (`▁` is a space)."""
    return piece.replace(SPIECE_UNDERLINE, " ")
