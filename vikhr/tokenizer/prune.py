"""prune-and-extend: keep the base pieces a mixed corpus uses, drop the rest, fill up with Russian pieces.

SentencePiece BPE encodes a line by starting from its characters and repeatedly merging the adjacent
pair whose concatenation is a vocabulary piece of the highest score (leftmost on ties); a character
left over that is not a piece becomes its UTF-8 bytes (`<0xXX>`). So a piece is only ever produced
through the chain of merges that builds it from characters, and dropping a piece of that chain
changes how the piece is reached, or makes it unreachable. `derivation` replays that chain on the
piece's own text with the base vocabulary: every character and intermediate piece it passes through.
A kept piece is kept with its whole derivation; with those present the same merges still win on the
piece's own text (every merge that won in the base is still there, and dropping pieces only removes
competitors), so the piece stays reachable. Pieces added afterwards contain Cyrillic, so this holds
for every kept piece without Cyrillic; kept Cyrillic pieces are re-scored by the Russian pool's merge
order, as in extend mode. Characters must be kept too: `tokenizers` turns a character outside the
vocabulary into byte tokens before merging, SentencePiece merges it as text, so a multi-character
piece built from a dropped character would make the two disagree.

The weight of a base piece is how often the base tokenizer emits it on the training sample (Russian
and English lines together). Pieces are taken by weight, each with its derivation, until the kept
set is as large as asked; byte-fallback pieces and specials always stay. The kept pieces keep their
order (and scores), close ranks at the start of the vocabulary, and Russian pieces learned as in
extend mode fill the remaining ids up to the target size. `id_map.json` records where every base id
went (see docs/tokenizer.md).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.atomic import write_text
from vikhr.errors import VikhrError, read_json_object, require_file
from vikhr.tokenizer.corpus import sample_lines

ID_MAP_FILE = "id_map.json"
ID_MAP_FORMAT = "vikhr-id-map/1"
ENCODE_BATCH = 2048  # lines per sentencepiece encode call when counting piece use


def piece_use(base_model: str | Path, text_file: Path) -> list[int]:
    """How many times the base tokenizer emits each id when encoding every line of `text_file`."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(base_model))
    counts: Counter[int] = Counter()
    batch: list[str] = []
    for line in sample_lines(text_file):
        batch.append(line)
        if len(batch) == ENCODE_BATCH:
            for ids in sp.encode(batch):
                counts.update(ids)
            batch = []
    for ids in sp.encode(batch):
        counts.update(ids)
    return [counts[i] for i in range(sp.get_piece_size())]


def derivation(piece: str, scores: dict[str, float]) -> list[str] | None:
    """The characters and pieces SentencePiece BPE passes through when it encodes `piece`'s text alone
    with the vocabulary `scores` (piece → score), in the order formed; None if it does not end in `piece`.
    """
    symbols = list(piece)
    formed = list(dict.fromkeys(symbols))
    while len(symbols) > 1:
        best, best_score = -1, 0.0
        for i in range(len(symbols) - 1):
            score = scores.get(symbols[i] + symbols[i + 1])
            if score is not None and (best < 0 or score > best_score):  # strict: leftmost wins ties
                best, best_score = i, score
        if best < 0:
            return None
        symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
        formed.append(symbols[best])
    return formed if symbols == [piece] else None


@dataclass
class PruneResult:
    proto: Any  # the base with only the kept pieces (specials and bytes included), base order and scores
    stats: dict[str, int]


def prune_base(base_proto: Any, use: list[int], keep: int) -> PruneResult:
    """Keep `keep` normal pieces of `base_proto`: the most used ones with their derivations (module doc)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    normal = pb.ModelProto.SentencePiece.NORMAL
    pieces = base_proto.pieces
    index = {p.piece: i for i, p in enumerate(pieces)}
    scores = {p.piece: p.score for p in pieces if p.type == normal}
    num_normal = len(scores)
    if keep > num_normal:
        raise VikhrError(f"cannot keep {keep} base pieces: the base has only {num_normal} normal pieces")
    # Most used first; ties (unused pieces too) by base id, i.e. the base's merge order.
    ranked = sorted((i for i, p in enumerate(pieces) if p.type == normal), key=lambda i: (-use[i], i))
    kept: set[int] = set()
    unreachable = closure_added = 0
    for i in ranked:
        if len(kept) >= keep:
            break
        if i in kept:
            continue
        chain = derivation(pieces[i].piece, scores)
        if chain is None:  # the base itself never builds it from its own text: nothing depends on it
            unreachable += 1
            continue
        needed = {index[c] for c in chain if c in index and pieces[index[c]].type == normal} - kept
        if len(kept) + len(needed) > keep:
            continue  # a smaller piece further down may still fit
        closure_added += len(needed) - 1
        kept |= needed
    out = pb.ModelProto()
    out.CopyFrom(base_proto)
    del out.pieces[:]
    for i, p in enumerate(pieces):
        if p.type != normal or i in kept:
            out.pieces.add().CopyFrom(p)
    out.trainer_spec.vocab_size = len(out.pieces)
    used = sum(1 for i in ranked if use[i] > 0)
    stats = {
        "base_normal_pieces": num_normal,
        "base_pieces_used_on_sample": used,
        "kept_base_pieces": len(kept),
        "kept_only_as_dependencies": closure_added,
        "kept_unused_on_sample": sum(1 for i in kept if use[i] == 0),
        "dropped_base_pieces": num_normal - len(kept),
        "skipped_unreachable_in_base": unreachable,
    }
    return PruneResult(out, stats)


def kept_with_dependencies(base_proto: Any, final_proto: Any) -> list[str]:
    """Base pieces of `final_proto` whose base derivation is not entirely in `final_proto` (empty when
    the dependency rule holds)."""
    scores = {p.piece: p.score for p in base_proto.pieces if p.type == 1}
    final = {p.piece for p in final_proto.pieces}
    missing = []
    for p in final_proto.pieces:
        if p.type == 1 and p.piece in scores:
            chain = derivation(p.piece, scores)
            if chain is not None and not all(c in final for c in chain):
                missing.append(p.piece)
    return missing


# ------------------------------------------------------------------------------------------ the id map


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def id_map(base_proto: Any, final_proto: Any) -> list[int | None]:
    """old id → new id (None: dropped) for every piece of the base, matched by piece string."""
    new_index = {p.piece: i for i, p in enumerate(final_proto.pieces)}
    return [new_index.get(p.piece) for p in base_proto.pieces]


def write_id_map(path: Path, base_model: Path, old_to_new: list[int | None], new_size: int) -> None:
    doc = {
        "format": ID_MAP_FORMAT,
        "base_model": {"path": str(base_model), "sha256": _sha256(base_model)},
        "old_vocab_size": len(old_to_new),
        "new_vocab_size": new_size,
        "old_to_new": old_to_new,
    }
    write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")


@dataclass(frozen=True)
class IdMap:
    path: Path
    old_to_new: list[int | None]
    new_vocab_size: int

    def new_to_old(self) -> dict[int, int]:
        return {new: old for old, new in enumerate(self.old_to_new) if new is not None}


def read_id_map(path: str | Path) -> IdMap:
    """Parse and check the structure of an `id_map.json`; VikhrError (one line) when it is not one."""
    path = require_file(path, "id map")
    doc = read_json_object(path)

    def bad(why: str) -> VikhrError:
        return VikhrError(f"{path}: not a valid id map ({why}); rebuild it with `vikhr tokenizer train`")

    if doc.get("format") != ID_MAP_FORMAT:
        raise bad(f"format is {doc.get('format')!r}, expected {ID_MAP_FORMAT!r}")
    old_to_new, new_size = doc.get("old_to_new"), doc.get("new_vocab_size")
    if not isinstance(old_to_new, list) or not isinstance(new_size, int) or isinstance(new_size, bool):
        raise bad("old_to_new must be a list and new_vocab_size an integer")
    if doc.get("old_vocab_size") != len(old_to_new):
        raise bad(f"old_vocab_size {doc.get('old_vocab_size')} but old_to_new has {len(old_to_new)} entries")
    seen: set[int] = set()
    for old, new in enumerate(old_to_new):
        if new is None:
            continue
        if not isinstance(new, int) or isinstance(new, bool) or not 0 <= new < new_size:
            raise bad(f"old id {old} maps to {new!r}, not an id below {new_size}")
        if new in seen:
            raise bad(f"new id {new} is the target of two old ids")
        seen.add(new)
    return IdMap(path, old_to_new, new_size)
