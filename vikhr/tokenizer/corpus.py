"""Reading JSONL corpora (plain, .gz, .zst: vikhr.jsonl) with a deterministic train / held-out split.

A document belongs to the held-out split when a hash of its id (or, without an id, of its line
number) falls into the lowest `heldout_percent` buckets. The split depends only on the id, so it is
the same for every tool (training, `compare`, benchmarks), every run and every copy of a file
(renamed or compressed). Documents that share an id share their split: a file whose ids repeat
gets a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal, TextIO

from vikhr.errors import VikhrError, require_file
from vikhr.jsonl import is_compressed, iter_decompressed, not_text_reason, read_jsonl
from vikhr.tokenizer.byte_level import CYRILLIC

Split = Literal["train", "heldout", "all"]
DEFAULT_HELDOUT_PERCENT = 5.0


def _unit_hash(key: str) -> float:
    """A number in [0, 1) from sha256(key): stable across runs, platforms and Python versions."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(doc_id: str, heldout_percent: float = DEFAULT_HELDOUT_PERCENT) -> bool:
    """True if the document with this id belongs to the held-out (measurement) split."""
    return _unit_hash("heldout:" + doc_id) * 100.0 < heldout_percent


def keep_sampled(key: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) choice keyed by `key` (independent of the held-out hash)."""
    return rate >= 1.0 or _unit_hash("sample:" + key) < rate


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


def iter_documents(
    path: str | Path,
    text_key: str = "text",
    split: Split = "all",
    heldout_percent: float = DEFAULT_HELDOUT_PERCENT,
    text_key_fix: str = "choose the field with --text-key",
) -> Iterator[Document]:
    """Documents of one JSONL file (plain, .gz or .zst), restricted to `split`.

    Raises VikhrError (with file and line number) on bad UTF-8, malformed JSON or a missing text key
    (`text_key_fix`: what the caller's user can do about the last).
    """
    path = require_file(path, "corpus file")
    first_line_of: dict[str, int] = {}
    for line_no, rec in read_jsonl(path):
        if text_key not in rec:
            raise VikhrError(f"{path}:{line_no}: no string field '{text_key}' ({text_key_fix})")
        if not isinstance(rec[text_key], str):
            raise VikhrError(f"{path}:{line_no}: {not_text_reason(text_key, rec[text_key], text_key_fix)}")
        doc_id = str(rec["id"]) if "id" in rec else f"#{line_no}"
        if len(first_line_of) < _IDS_WATCHED and "id" in rec:
            _watch_id(path, doc_id, line_no, first_line_of)
        if split != "all" and is_heldout(doc_id, heldout_percent) != (split == "heldout"):
            continue
        yield Document(doc_id, rec[text_key])


# How many ids of a file are remembered to notice a repeat (memory stays small on large corpora).
_IDS_WATCHED = 100_000
_warned_repeated_ids: set[str] = set()


def _watch_id(path: Path, doc_id: str, line_no: int, first_line_of: dict[str, int]) -> None:
    """Warn (once per file and process) when an id repeats: its documents share one split."""
    first = first_line_of.setdefault(doc_id, line_no)
    if first != line_no and str(path) not in _warned_repeated_ids:
        _warned_repeated_ids.add(str(path))
        print(
            f"warning: {path}:{line_no}: id {doc_id!r} is also the id of line {first}; documents that "
            "share an id share their train/held-out split (give each document its own id)",
            file=sys.stderr,
        )


def iter_lines(
    path: str | Path,
    text_key: str = "text",
    split: Split = "all",
    heldout_percent: float = DEFAULT_HELDOUT_PERCENT,
    max_chars: int | None = None,
) -> Iterator[str]:
    """Non-empty lines (paragraphs) of the documents of `split`, up to about `max_chars` characters.

    Lines, not whole documents, are the unit of measurement: a novel is one document and
    measuring it as one string would make the per-text numbers meaningless.
    """
    total = 0
    for doc in iter_documents(path, text_key, split, heldout_percent):
        for line in doc.text.split("\n"):
            line = line.strip("\r")  # a CRLF document's line ends, left out as training leaves them
            if not line.strip():
                continue
            if max_chars is not None and total + len(line) > max_chars:
                line = _cut_at_space(line, max_chars - total)  # one huge paragraph: the budget's worth
                if not line:  # what is left of the budget holds no word (an indented paragraph)
                    return
            yield line
            total += len(line)
            if max_chars is not None and total >= max_chars:
                return


def _cut_at_space(line: str, chars: int) -> str:
    """The first `chars` characters of `line`, back to its last white space when it has one ("" when
    they are all white space)."""
    head = line[: max(chars, 1)]
    if len(head) == len(line):
        return head
    words = head.rsplit(None, 1)
    return words[0] if words else ""


MAX_LINE_BYTES = 4000  # training lines are cut to this (SentencePiece skips those above 4192 bytes)
# A word with the white space after it (any white space: NBSP-separated text has no ASCII spaces).
_WORD = re.compile(r"\S+\s*|\s+")


def split_long_line(line: str, max_bytes: int) -> tuple[list[str], int]:
    """Cut `line` at white space into pieces of at most `max_bytes` UTF-8 bytes (SentencePiece skips
    longer ones); the pieces and the characters of words longer than that, which are dropped (base64,
    tables; and text without spaces, e.g. Chinese, whose paragraphs are one such "word")."""
    if len(line.encode("utf-8")) <= max_bytes:
        return [line], 0
    out: list[str] = []
    cur: list[str] = []
    size = dropped = 0
    for match in _WORD.finditer(line):
        word = match.group()
        wsize = len(word.encode("utf-8"))
        if cur and size + wsize > max_bytes:
            out.append("".join(cur).rstrip())
            cur, size = [], 0
        if len(word.rstrip().encode("utf-8")) > max_bytes:
            dropped += len(word.rstrip())
            continue
        cur.append(word)
        size += wsize
    if cur:
        out.append("".join(cur).rstrip())
    return [piece for piece in out if piece.strip()], dropped


def first_lines(
    path: str | Path, text_key: str, split: Split, heldout_percent: float, count: int
) -> list[str]:
    """The first `count` lines of `split` as tokenizer training takes them (a paragraph longer than
    MAX_LINE_BYTES cut at white space), reading the file no further than that."""
    pieces = (
        piece
        for line in iter_lines(path, text_key, split, heldout_percent)
        for piece in split_long_line(line, MAX_LINE_BYTES)[0]
    )
    return list(islice(pieces, count))


def corpus_sha256(path: str | Path) -> str:
    """sha256 of the file as stored (corpora and tokenizer files recorded in manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CorpusHashes:
    """sha256 of a corpus file as stored and of its content (its decompressed bytes, the same for a
    plain file): the content's is equal for every copy, renamed, decompressed or compressed again."""

    stored: str
    content: str


def corpus_hashes(path: str | Path) -> CorpusHashes:
    """The stored and content sha256 of a corpus file (see CorpusHashes)."""
    stored = corpus_sha256(path)
    if not is_compressed(path):
        return CorpusHashes(stored, stored)
    h = hashlib.sha256()
    for block in iter_decompressed(path):
        h.update(block)
    return CorpusHashes(stored, h.hexdigest())


def manifest_corpora(
    paths: list[Path], budgets: list[int | None], sample_stats: dict[str, dict[str, int | float]]
) -> list[dict[str, object]]:
    """The "corpora" of a tokenizer's manifest: each file with both its hashes (`tokenizer compare`
    knows a copy of it by the content's), its character budget and its sample's statistics."""
    entries: list[dict[str, object]] = []
    for path, budget in zip(paths, budgets, strict=True):
        hashes = corpus_hashes(path)
        entries.append(
            {
                "path": str(path),
                "sha256": hashes.stored,
                "content_sha256": hashes.content,
                "max_chars": budget,
                **sample_stats[str(path)],
            }
        )
    return entries


def parse_budget(text: str) -> int:
    """'20M' → 20_000_000, '500k' → 500_000, '1234' → 1234 (characters)."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale != 1 else text
    try:
        value = int(float(digits) * scale)
    except (ValueError, OverflowError):  # OverflowError: "inf", "1e400"
        raise VikhrError(f"not a character budget: {text!r} (use e.g. 500k, 20M or 1234)") from None
    if value <= 0:
        raise VikhrError(f"character budget must be positive, got {text!r}")
    return value


def split_corpus_spec(spec: str | Path) -> tuple[Path, int | None]:
    """'file.jsonl.gz@20M' → (path, 20_000_000); a plain path → (path, None)."""
    text = str(spec)
    if "@" in text and not Path(text).exists():
        path, budget = text.rsplit("@", 1)
        if "/" in budget or os.sep in budget:  # "backup@2024/ru.jsonl": a path, not a budget
            raise VikhrError(f"corpus file not found: {text} (check the path; a budget is FILE@20M)")
        return Path(path), parse_budget(budget)
    return Path(text), None


def write_training_text(
    paths: list[Path],
    out_path: Path,
    text_key: str,
    max_chars_per_file: int | list[int | None] | None,
    heldout_percent: float,
    max_line_bytes: int = MAX_LINE_BYTES,
    line_filter: object = None,
    keep_breaks: bool = False,
) -> dict[str, dict[str, int | float]]:
    """Write a deterministic sample of the training split of `paths` to `out_path`, one line per paragraph.

    `max_chars_per_file` is one budget for all files or one per file (None: no limit). With a budget,
    paragraphs are kept with probability budget/total chosen by a hash
    of (document id, paragraph number), which spreads the sample over the whole file instead of
    taking its first works. Returns per-file statistics for the manifest.

    With `keep_breaks` each line is a JSON string (read it with `read_break_lines`): a paragraph's last
    piece carries the newlines that followed it in the document (a blank line between paragraphs is
    "\n\n"), so a byte-level BPE, whose pre-tokenizer makes words of newline runs, learns them.
    """
    budgets = (
        max_chars_per_file if isinstance(max_chars_per_file, list) else [max_chars_per_file] * len(paths)
    )
    samples = _write_samples(
        paths, budgets, out_path, text_key, heldout_percent, max_line_bytes, line_filter, keep_breaks
    )
    return {str(sample.path): sample.stats() for sample in samples}


def _write_samples(
    paths: list[Path],
    budgets: list[int | None],
    out_path: Path,
    text_key: str,
    heldout_percent: float,
    max_line_bytes: int = MAX_LINE_BYTES,
    line_filter: object = None,
    keep_breaks: bool = False,
) -> list[_FileSample]:
    """`write_training_text`, returning what each file gave and held."""
    with open(out_path, "w", encoding="utf-8", newline="\n") as out:
        return [
            _sample_file(
                path, budget, out, text_key, heldout_percent, max_line_bytes, line_filter, keep_breaks
            )
            for path, budget in zip(paths, budgets, strict=True)
        ]


@dataclass
class _FileSample:
    """What the training sample took from one corpus file, and what there was to take."""

    path: Path
    rate: float = 1.0
    documents: int = 0  # all of the file's, held out or not
    train_documents: int = 0
    train_chars: int = 0  # of the training split's lines, as cut for training (what can be drawn)
    unsplit_chars: int = 0  # of the training split's runs without white space too long to train on
    sampled_chars: int = 0  # drawn by the budget, before a line filter
    kept_chars: int = 0
    kept_lines: int = 0
    dropped_chars: int = 0

    def stats(self) -> dict[str, int | float]:
        """The manifest's statistics of the file."""
        return {
            "sample_rate": self.rate,
            "chars": self.kept_chars,
            "lines": self.kept_lines,
            "dropped_chars": self.dropped_chars,
        }

    def why_nothing(self, heldout_percent: float) -> str:
        """Why the training split of the file gave the sample nothing, no line filter being the cause."""
        if self.documents == 0:
            return "no document"
        if self.train_documents == 0:
            which = (
                f"all its {self.documents:,} documents are" if self.documents > 1 else "its one document is"
            )
            return (
                f"{which} held out (--heldout-percent {heldout_percent:g} sets documents apart by a hash of "
                "their id; give more documents, or --heldout-percent 0)"
            )
        if self.unsplit_chars:
            return "only runs without white space too long to train on (text without spaces, base64)"
        return "only blank text"  # (a budget that draws nothing of a file's text is refused as it is read)


def _sample_file(
    path: Path,
    budget: int | None,
    out: TextIO,
    text_key: str,
    heldout_percent: float,
    max_line_bytes: int,
    line_filter: object,
    keep_breaks: bool,
) -> _FileSample:
    """Write the sample of one file's training split to `out` (see `write_training_text`)."""
    sample = _FileSample(path)
    if budget is not None:
        total = sum(len(doc.text) for doc in iter_documents(path, text_key, "train", heldout_percent))
        sample.rate = 1.0 if not budget or total <= budget else budget / total
    for doc in iter_documents(path, text_key, "all", heldout_percent):
        sample.documents += 1
        if is_heldout(doc.doc_id, heldout_percent):
            continue
        sample.train_documents += 1
        paras = doc.text.split("\n")
        for i, para in enumerate(paras):
            para = para.strip("\r")
            if not para.strip():
                continue
            pieces, dropped = split_long_line(para, max_line_bytes)
            sample.train_chars += sum(map(len, pieces))
            sample.unsplit_chars += dropped
            # Each piece is sampled on its own: a long paragraph is not all-or-nothing.
            for j, piece in enumerate(pieces):
                key = f"{doc.doc_id}#{i}" if j == 0 else f"{doc.doc_id}#{i}.{j}"
                if not keep_sampled(key, sample.rate):
                    continue
                sample.sampled_chars += len(piece)
                if callable(line_filter) and not line_filter(piece):
                    continue
                if keep_breaks:
                    brk = "\n" * _breaks_after(paras, i) if j == len(pieces) - 1 else ""
                    piece = json.dumps(piece + brk, ensure_ascii=False)
                out.write(piece + "\n")
                sample.kept_chars += len(piece)
                sample.kept_lines += 1
            sample.dropped_chars += round(dropped * sample.rate)
    if sample.rate < 1 and sample.sampled_chars == 0 and sample.train_chars > 0:
        # A budget far below the file's text: each paragraph's draw missed (FILE@10 is 10 characters).
        raise VikhrError(
            f"{path}: its budget of {budget:,} characters drew no paragraph of its {sample.train_chars:,} "
            "characters of training text (each paragraph is drawn with probability budget/total): give a "
            "larger budget, e.g. FILE@20M or --max-chars-per-file 20M (20 million characters)"
        )
    _warn_dropped(path, sample.kept_chars, sample.dropped_chars, max_line_bytes)
    return sample


def _breaks_after(paras: list[str], i: int) -> int:
    """The newlines between paragraph `i` and the next non-blank one (or the document's end)."""
    j = i + 1
    while j < len(paras) and not paras[j].strip():
        j += 1
    return j - i - (j == len(paras))


def sample_lines(path: Path) -> Iterator[str]:
    """The lines of a sample written by `write_training_text` as it wrote them: split at "\n" only, so a
    lone "\r" inside a paragraph stays in it, as `iter_lines` measures it (Python's universal newlines
    would make two training lines of it)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            yield line.removesuffix("\n")


def read_break_lines(path: Path) -> Iterator[str]:
    """The texts of a sample written with `keep_breaks` (see `write_training_text`)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _warn_dropped(path: Path, kept: int, dropped: int, max_line_bytes: int) -> None:
    if dropped > 0.01 * (kept + dropped):
        print(
            f"warning: {path}: {dropped:,} of {kept + dropped:,} sampled characters are in runs without "
            f"white space longer than {max_line_bytes} bytes, left out of training (text without "
            "spaces, base64, tables)",
            file=sys.stderr,
        )


def write_training_sample(
    paths: list[Path],
    budgets: list[int | None],
    out_path: Path,
    text_key: str,
    heldout_percent: float,
    only_cyrillic: bool,
    keep_breaks: bool = False,
) -> dict[str, dict[str, int | float]]:
    """`write_training_text` for a trainer: with `only_cyrillic`, only lines holding Cyrillic letters (the
    Russian pool of extend modes); VikhrError when nothing is left. Returns the per-file statistics."""
    line_filter = (lambda line: bool(CYRILLIC.search(line))) if only_cyrillic else None
    samples = _write_samples(
        paths, budgets, out_path, text_key, heldout_percent, line_filter=line_filter, keep_breaks=keep_breaks
    )
    if sum(sample.kept_chars for sample in samples) == 0:
        if only_cyrillic and any(sample.sampled_chars for sample in samples):
            raise VikhrError(
                "the training split of the corpora has no lines with Cyrillic letters (extend mode learns "
                "Russian pieces from them: give a Russian corpus)"
            )
        why = "; ".join(f"{sample.path}: {sample.why_nothing(heldout_percent)}" for sample in samples)
        raise VikhrError(f"the training split of the corpora has no text ({why})")
    return {str(sample.path): sample.stats() for sample in samples}
