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


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in ("tokenizer.model", "tokenizer.json"):
            if (p / name).is_file():
                return p / name
        raise VikhrError(f"{p} holds neither tokenizer.model nor tokenizer.json")
    if not p.is_file():
        raise VikhrError(f"tokenizer not found: {p} (give a .model, a tokenizer.json or its directory)")
    return p


def _from_sentencepiece(path: Path) -> Vocabulary:
    import sentencepiece as spm

    from vikhr.tokenizer.hf_export import load_model_proto

    proto = load_model_proto(path)
    kind_names = {1: "normal", 2: "unknown", 3: "control", 4: "user", 5: "unused", 6: "byte"}
    pieces = [p.piece for p in proto.pieces]
    kinds = [kind_names.get(p.type, "normal") for p in proto.pieces]
    raw = type(proto)()
    raw.CopyFrom(proto)
    raw.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=raw.SerializeToString())
    unk = proto.trainer_spec.unk_id
    return Vocabulary(path, pieces, kinds, lambda text: list(sp.encode(text)), unk if unk >= 0 else None)


def _from_tokenizer_json(path: Path) -> Vocabulary:
    from tokenizers import Tokenizer

    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VikhrError(f"{path} is not a tokenizer.json ({e})") from e
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise VikhrError(f"{path}: only BPE tokenizer.json files are supported (got {model.get('type')})")
    # Drop the dummy prefix: the Prepend normaliser (Llama/Mistral v4 layout) or Metaspace's prepend.
    norm = spec.get("normalizer")
    if norm and norm.get("type") == "Sequence":
        norm["normalizers"] = [n for n in norm["normalizers"] if n.get("type") != "Prepend"]
    elif norm and norm.get("type") == "Prepend":
        spec["normalizer"] = None
    pre = spec.get("pre_tokenizer")
    if pre and pre.get("type") == "Metaspace":
        pre["prepend_scheme"] = "never"
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.encode_special_tokens = True
    vocab = tok.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    pieces = [""] * size
    for piece, i in vocab.items():
        pieces[i] = piece
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
    unk_id = vocab.get(unk_piece) if unk_piece else None
    return Vocabulary(
        path, pieces, kinds, lambda text: tok.encode(text, add_special_tokens=False).ids, unk_id
    )


def load_vocabulary(path: str | Path) -> Vocabulary:
    """A SentencePiece `.model`, an HF `tokenizer.json`, or a directory holding either."""
    p = _resolve(path)
    return _from_tokenizer_json(p) if p.suffix == ".json" else _from_sentencepiece(p)


def piece_text(piece: str) -> str:
    """The text a normal piece stands for (`▁` is a space)."""
    return piece.replace(SPIECE_UNDERLINE, " ")
