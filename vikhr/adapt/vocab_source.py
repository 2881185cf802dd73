"""Tokenizers seen as vocabularies: id → piece, piece kinds, and raw encoding of a piece's text.

A new piece's text is encoded with the old tokenizer *without* the dummy-prefix space, so a
word-internal piece ("ение") is segmented as it occurs inside a word and a word-initial piece
("▁слово") as after a space.

Byte-level BPE pieces (Llama-3, Qwen2.5, tekken) stand for bytes ("ĠÐ¼Ð¸ÑĢ" is " мир"), which need
not be valid UTF-8 (" Ð" is a space and half a letter). `piece_runs` cuts a piece's bytes into
valid UTF-8 text, encoded by the old tokenizer, and the stray bytes, taken as the old vocabulary's
single-byte tokens (every byte-level vocabulary has all 256; SentencePiece with byte fallback has
<0xXX>). For a piece that is valid UTF-8 this is just the old encoding of its text; otherwise it is
the old encoding of its longest valid prefix plus the single bytes of the rest, repeated on the rest
when valid text follows a stray byte.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vikhr.errors import VikhrError, read_json_object
from vikhr.tokenizer.byte_level import bytes_piece, is_byte_level, piece_bytes, utf8_runs
from vikhr.tokenizer.load import load_without_dummy_prefix, require_tokenizer_json, resolve_tokenizer_file
from vikhr.tokenizer.tekken import is_tekken, tekken_error

SPIECE_UNDERLINE = "▁"
ADDED_TOKENS_FILE = "added_tokens.json"  # a slow tokenizer's tokens past its .model (transformers)
BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass
class Vocabulary:
    path: Path
    pieces: list[str]
    kinds: list[str]  # normal | byte | control | unknown | unused | user | none (an id with no token)
    encode_raw: Callable[[str], list[int]]  # text (no dummy prefix added) → ids
    unk_id: int | None
    byte_level: bool = False  # pieces are GPT-2 byte characters (module doc)
    _byte_index: dict[int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.pieces)

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.pieces)}

    def piece_runs(self, piece: str) -> list[str | int]:
        """A normal piece of this vocabulary as text runs and stray bytes (module doc)."""
        if not self.byte_level:
            return [piece_text(piece)]
        data = piece_bytes(piece)
        return [piece] if data is None else utf8_runs(data)

    def piece_index(self, by_bytes: bool) -> dict[str | bytes, int]:
        """Piece → id; with `by_bytes`, normal and byte pieces are keyed by the bytes they stand for
        (to match across SentencePiece and byte-level vocabularies, where "Ð" is a Latin letter in one
        and the byte 0xD0 in the other), a normal piece winning over a byte piece of the same bytes."""
        if not by_bytes:
            return self.index()
        index: dict[str | bytes, int] = {}
        for i in sorted(range(self.size), key=lambda i: self.kinds[i] != "normal"):
            index.setdefault(self.piece_key(i), i)
        return index

    def piece_key(self, i: int) -> str | bytes:
        """The bytes piece `i` stands for when it stands for text (`piece_index`), else the piece."""
        piece, kind = self.pieces[i], self.kinds[i]
        if kind == "byte" and (m := BYTE_PIECE.match(piece)):
            return bytes([int(m.group(1), 16)])
        if kind != "normal":
            return piece
        data = piece_bytes(piece) if self.byte_level else piece_text(piece).encode("utf-8")
        return piece if data is None else data

    def byte_token(self, byte: int) -> int | None:
        """The id of this vocabulary's token for the single byte `byte` (None if it has none)."""
        if self._byte_index is None:
            names = [bytes_piece(bytes([b])) if self.byte_level else f"<0x{b:02X}>" for b in range(256)]
            where = {p: i for i, p in enumerate(self.pieces)}
            self._byte_index = {b: where[p] for b, p in enumerate(names) if p in where}
        return self._byte_index.get(byte)


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
    if is_tekken(spec):
        raise tekken_error(path)
    require_tokenizer_json(spec, path)
    model = spec["model"]
    if model.get("type") != "BPE":
        raise VikhrError(f"{path}: only BPE tokenizer.json files are supported (got {model.get('type')})")
    raw = load_without_dummy_prefix(path)
    pieces = [raw.id_to_piece(i) for i in range(raw.vocab_size)]
    byte_level = is_byte_level(spec)
    specials = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    added = {a["content"] for a in spec.get("added_tokens", [])}
    unk_piece = model.get("unk_token")
    kinds = [
        "none"  # an id with no token: a vocabulary with gaps in its ids
        if raw.backend.id_to_token(i) is None
        else "unknown"
        if p == unk_piece
        else "control"
        if p in specials
        else "user"
        if p in added
        else "byte"
        if not byte_level and BYTE_PIECE.match(p)
        else "normal"
        for i, p in enumerate(pieces)
    ]
    unk_id = raw.piece_to_id(unk_piece) if unk_piece else None
    return Vocabulary(path, pieces, kinds, raw.encode, unk_id, byte_level)


def load_vocabulary(path: str | Path) -> Vocabulary:
    """A SentencePiece `.model`, an HF `tokenizer.json`, or a directory (precedence: vikhr.tokenizer.load)."""
    p = resolve_tokenizer_file(path)
    return _from_tokenizer_json(p) if p.suffix == ".json" else _from_sentencepiece(p)


def added_token_ids(directory: Path) -> dict[int, str]:
    """Id → token of `directory`'s added_tokens.json (where a slow tokenizer's save keeps the tokens past
    its .model, such as a chat model's <|im_start|>/<|im_end|>); empty without one."""
    path = directory / ADDED_TOKENS_FILE
    if not path.is_file():
        return {}
    listed = read_json_object(path, f"fix it or remove it from {directory}")
    return {i: token for token, i in listed.items() if type(i) is int}


def with_added_tokens(vocab: Vocabulary, rows: int) -> Vocabulary:
    """`vocab` and the tokens the added_tokens.json beside its file gives the ids that follow its own,
    up to the model's `rows` (a token past them has no row): the tokenizer transformers loads from that
    directory."""
    added = added_token_ids(vocab.path.parent)
    extra: list[str] = []
    while vocab.size + len(extra) < rows and (token := added.get(vocab.size + len(extra))) is not None:
        extra.append(token)
    if not extra:
        return vocab
    return dataclasses.replace(
        vocab, pieces=[*vocab.pieces, *extra], kinds=[*vocab.kinds, *["user"] * len(extra)]
    )


def piece_text(piece: str) -> str:
    """The text a normal piece stands for (`▁` is a space)."""
    return piece.replace(SPIECE_UNDERLINE, " ")
