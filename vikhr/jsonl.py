"""Reading JSONL: the one reader every stage uses, for plain, `.gz` and `.zst` files.

The compression is chosen by the file name's suffix, in any case (`.gz`, `.zst` or `.zstd`;
`.xz`, `.bz2` and other compressions are refused; anything else is plain text), as the Rust reader
chooses it; compressed data under a plain name is refused with the suffix to give it. Text is UTF-8
(a leading byte-order mark is skipped). Lines of ASCII whitespace are skipped, and JSON is strict
(no NaN or Infinity, no lone UTF-16 surrogate escape, nesting up to MAX_DEPTH), as in the Rust
reader. Every problem is one VikhrError line naming `path:line`, what is wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shlex
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple, TextIO

from vikhr.errors import VikhrError

_FIX_ENCODING = "re-encode it as UTF-8, e.g. iconv -f cp1251 -t utf-8"
_BOM = b"\xef\xbb\xbf"
# What gzip and zstd raise on truncated or corrupt data (zstandard.ZstdError becomes _ZstdDamaged).
_DAMAGED = (EOFError, OSError, zlib.error)


class _ZstdRaw(io.RawIOBase):
    """Decompressed bytes of a .zst file (one or more frames); a frame cut short raises EOFError.

    zstandard's own stream reader ends quietly at a truncated frame, which would lose records.
    """

    def __init__(self, path: Path) -> None:
        try:
            import zstandard
        except ImportError as e:
            raise VikhrError(
                f"{path}: reading .zst needs the zstandard package (pip install zstandard)"
            ) from e
        self._error = zstandard.ZstdError
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._in_frame = False
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            chunk = self._file.read(1 << 17)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the zstd data ends in the middle of a frame")
                return 0
            self._out = memoryview(self._decompress(chunk))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        parts = []
        while chunk:
            try:
                parts.append(self._dobj.decompress(chunk))
            except self._error as e:
                raise OSError(str(e)) from e
            self._in_frame = not self._dobj.eof
            chunk = self._dobj.unused_data if self._dobj.eof else b""
            if self._dobj.eof:
                self._dobj = self._dctx.decompressobj()  # a further frame may follow
        return b"".join(parts)

    def close(self) -> None:
        self._file.close()
        super().close()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VikhrError(f"file not found: {path} (check the path)")
    if not path.is_file():
        raise VikhrError(f"not a regular file: {path} (give a .jsonl, .jsonl.gz or .jsonl.zst file)")


# How many first bytes of a plain-named file tell compressed data (bzip2's magic is 10 long).
_HEAD_BYTES = 10


def _compression(path: Path) -> str:
    """ "gz", "zst" or "" (plain) for `path`, by its suffix in any case."""
    suffix = path.suffix.lower()
    return "gz" if suffix == ".gz" else "zst" if suffix in (".zst", ".zstd") else ""


# Compressions neither reader decodes, by suffix (as the Rust reader refuses them).
_UNSUPPORTED = (".xz", ".lzma", ".bz2", ".lz4", ".zip", ".7z")


def check_compression_name(path: Path) -> None:
    """VikhrError when a file's name says a compression the readers do not decode, or a regular file
    named as plain text holds compressed data (gzip, zstd, xz or bzip2: read as bytes of text, "not
    UTF-8" or "not valid JSON" on its first line)."""
    suffix = next((s for s in _UNSUPPORTED if path.name.lower().endswith(s)), None)
    if suffix is not None:
        raise VikhrError(
            f"{path}: unsupported compression ({suffix}); decompress it or recompress with gzip/zstd"
        )
    if _compression(path) or not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return  # opening it for real names the problem
    from vikhr import _core  # the Rust reader's check: one list of magic bytes, one wording

    try:
        _core.check_plain_content(path, head)
    except ValueError as e:
        raise VikhrError(str(e)) from None


def _open_binary(path: Path) -> IO[bytes]:
    """`path` opened for reading bytes, decompressed by its suffix."""
    _check_file(path)
    check_compression_name(path)
    try:
        kind = _compression(path)
        if kind == "gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]
        if kind == "zst":
            return io.BufferedReader(_ZstdRaw(path), buffer_size=1 << 16)
        return open(path, "rb")
    except OSError as e:
        raise VikhrError(f"cannot open {path}: {e.strerror or e}") from e


def _not_utf8(where: str, e: UnicodeDecodeError) -> VikhrError:
    return VikhrError(f"{where}: not UTF-8 (byte 0x{e.object[e.start]:02x}); {_FIX_ENCODING}")


def _damaged(where: str, path: Path, e: Exception) -> VikhrError:
    kind = {"gz": "gzip", "zst": "zstd"}.get(_compression(path), "")
    return VikhrError(
        f"{where}: cannot read {kind} data ({e}); the file is truncated, damaged or not {kind}-compressed"
    )


class _TextReader(io.TextIOWrapper):
    """A UTF-8 text stream whose decoding and decompression errors are VikhrErrors naming the file."""

    def __init__(self, binary: IO[bytes], path: Path) -> None:
        super().__init__(binary, encoding="utf-8-sig")  # type: ignore[arg-type]
        self._path = path

    def _guard(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except UnicodeDecodeError as e:
            raise _not_utf8(str(self._path), e) from e
        except _DAMAGED as e:
            raise _damaged(str(self._path), self._path, e) from e

    def read(self, size: int | None = -1) -> str:
        return self._guard(super().read, size)  # type: ignore[no-any-return]

    def readline(self, size: int = -1) -> str:  # type: ignore[override]
        return self._guard(super().readline, size)  # type: ignore[no-any-return]

    def __next__(self) -> str:
        return self._guard(super().__next__)  # type: ignore[no-any-return]


def open_text(path: str | os.PathLike[str]) -> TextIO:
    """`path` opened for reading as UTF-8 text, decompressed by its suffix (.gz, .zst).

    Reading raises a one-line VikhrError naming the file for bytes that are not UTF-8 and for
    damaged compressed data (`read_jsonl` names the line as well).
    """
    p = Path(path)
    return _TextReader(_open_binary(p), p)


def iter_decompressed(path: str | os.PathLike[str], block_size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of `path`, decompressed by its suffix, block by block (damaged data: a VikhrError)."""
    p = Path(path)
    with _open_binary(p) as f:
        while True:
            try:
                block = f.read(block_size)
            except _DAMAGED as e:
                raise _damaged(str(p), p, e) from e
            if not block:
                return
            yield block


def is_compressed(path: str | os.PathLike[str]) -> bool:
    """True when `path` is read decompressed (its suffix is .gz, .zst or .zstd, in any case)."""
    return bool(_compression(Path(path)))


def _lines(path: Path, complete_only: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of `path`, each line decoded on its own to name the bad one
    (`complete_only`: without a last line that lacks its newline)."""
    line_no = 0
    with _open_binary(path) as f:
        while True:
            try:
                raw = f.readline()
            except _DAMAGED as e:  # truncated or corrupt .gz / .zst
                raise _damaged(f"{path}:{line_no + 1}", path, e) from e
            if not raw or (complete_only and not raw.endswith(b"\n")):
                return
            line_no += 1
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(f"{path}:{line_no}", e) from e


def drop_partial_last_line(path: str | os.PathLike[str]) -> None:
    """Cut what a killed append left after the last newline of a JSONL file appended to record by
    record, so that the next record starts a line of its own."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def record_lines(path: str | os.PathLike[str], complete_only: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of every non-blank line of a JSONL file (plain, .gz or .zst), for
    `parse_record` (`complete_only`: as in read_jsonl)."""
    for line_no, line in _lines(Path(path), complete_only):
        if line.strip(_ASCII_WHITESPACE):
            yield line_no, line


def not_json_lines(path: str | os.PathLike[str]) -> str | None:
    """What a regular file given as JSON Lines is instead, where its name or first bytes tell:
    "a Parquet file" or "one JSON array" (None: neither, or no regular file, which a reader names)."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix.lower() == ".parquet":
        return "a Parquet file"
    with contextlib.closing(iter_decompressed(p, 1 << 16)) as blocks:
        for i, block in enumerate(blocks):
            if i == 0 and block.startswith(b"PAR1"):
                return "a Parquet file"
            rest = (block.removeprefix(b"\xef\xbb\xbf") if i == 0 else block).lstrip(b" \t\r\n\x0c")
            if rest:
                return "one JSON array" if rest.startswith(b"[") else None
    return None


def refuse_what_is_not_json_lines(path: str | os.PathLike[str]) -> None:
    """VikhrError when the file given as JSON Lines is a Parquet file (read as text it was "not UTF-8
    … iconv -f cp1251") or one JSON array ("not valid JSON" on line 1, --skip-invalid advised)."""
    p = Path(path)
    kind = not_json_lines(p)
    if kind is None:
        return
    how = "write its rows as JSONL first"
    if kind == "one JSON array":
        target = p.with_name(f"{p.name.split('.')[0]}.records.jsonl")
        how = f"write it as JSONL first, e.g. jq -c '.[]' {shlex.quote(str(p))} > {shlex.quote(str(target))}"
    raise VikhrError(f"{p} is {kind}, not JSON Lines (one JSON object a line): {how}")


def read_jsonl(
    path: str | os.PathLike[str], allow_nan: bool = False, complete_only: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) of every non-blank line of a JSONL file (plain, .gz or .zst).

    `allow_nan`: take Python's NaN/Infinity (files vikhr writes itself with json.dumps: metrics,
    scores), which input corpora may not hold (the Rust reader refuses them). `complete_only`: leave
    out a last line without its newline (what a killed append left; see drop_partial_last_line)."""
    p = Path(path)
    refuse_what_is_not_json_lines(p)
    for line_no, line in record_lines(p, complete_only):
        yield line_no, record_at(p, line_no, line, allow_nan)


def record_at(
    path: str | os.PathLike[str], line_no: int, line: str, allow_nan: bool = False
) -> dict[str, Any]:
    """The object on line `line_no` of `path` (a line `record_lines` gave), as `read_jsonl` reads it:
    a VikhrError "path:line: problem" where there is none."""
    try:
        return parse_record(line, allow_nan)
    except BadLine as e:
        raise VikhrError(f"{Path(path)}:{line_no}: {e}") from None


# What the Rust reader (and JSON) counts as white space around a line.
_ASCII_WHITESPACE = " \t\n\x0c\r"

# The deepest nesting of arrays and objects a line may hold, its own object counted: the Rust
# reader's MAX_DEPTH (Python's own limit depends on its version and on the caller's stack).
MAX_DEPTH = 128


class BadLine(ValueError):
    """Why a line of a JSONL file holds no record, said to follow the line's `file:line: `."""


def _not_json(why: str) -> BadLine:
    return BadLine(f"not valid JSON ({why}); expected one object per line")


def parse_record(line: str, allow_nan: bool = False) -> dict[str, Any]:
    """The JSON object on one line, read as the Rust reader reads it (BadLine when it is refused):
    strict JSON (no NaN or Infinity unless `allow_nan`), nesting up to MAX_DEPTH, no half of a UTF-16
    surrogate pair escaped alone. Numbers of any size are JSON (an integer past Python's limit on
    int() digits reads as ±inf, as 1e400 does)."""
    deep = depth_refusal(line)
    if deep is not None:
        raise _not_json(deep)
    constant = None if allow_nan else _not_json_constant
    try:
        record = json.loads(line, parse_constant=constant)
    except BadLine:
        raise
    except json.JSONDecodeError as e:
        if line.startswith("\ufeff", e.pos):  # json's "decode using utf-8-sig" would drop one opening a line
            raise _not_json(bom_said(e.colno)) from None
        # json's "Invalid control character at" ends in the word the column follows
        raise _not_json(f"{e.msg.removesuffix(' at')} at column {e.colno}") from None
    except ValueError:  # an integer past sys.get_int_max_str_digits()
        record = json.loads(line, parse_constant=constant, parse_int=int_or_float)
    if not isinstance(record, dict):
        raise BadLine(f"expected a JSON object per line, got {type(record).__name__}")
    unpaired = surrogate_refusal(line)
    if unpaired is not None:
        raise BadLine(f"not valid JSON ({unpaired}); fix or drop the line")
    return record


def bom_said(column: int) -> str:
    """A byte order mark met at `column` of a line: one opening a file is dropped, so this one is
    where files that each open with one were joined (`cat`); the Rust reader's words."""
    return (
        f"a byte order mark (U+FEFF) at column {column}, where only a file's first bytes may hold one: "
        "were files written with one joined? remove them, e.g. sed -i 's/^\\xEF\\xBB\\xBF//' FILE"
    )


def depth_refusal(text: str) -> str | None:
    """Why the JSON `text` of one record nests too deep for the readers (checked before decoding it:
    Python's own limit is a RecursionError), None when it does not."""
    deep_at = _too_deep(text)
    return (
        None
        if deep_at is None
        else f"arrays and objects nested more than {MAX_DEPTH} deep at column {deep_at}"
    )


def surrogate_refusal(text: str) -> str | None:
    """Why the valid JSON `text` of one record is no text (an escaped half of a UTF-16 surrogate pair
    alone, which json decodes and no encoder takes), None when it is text."""
    unpaired = _unpaired_surrogate(text)
    if unpaired is None:
        return None
    escape, column = unpaired[0], unpaired.start() + 1
    return (
        f"unpaired UTF-16 surrogate escape {escape} at column {column} (half of a pair, without its other "
        "half)"
    )


def _not_json_constant(name: str) -> Any:
    raise _not_json(f"{name} is not a JSON value")


def int_or_float(digits: str) -> int | float:
    """A JSON integer's value (`parse_int`): an int, or past int()'s digit limit the float it names."""
    try:
        return int(digits)
    except ValueError:  # more digits than int() takes: the float they name (±inf)
        return float(digits)


# A JSON string or a bracket: what the nesting of a line is counted on.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]+|\\.)*"|[][{}]', re.S)


def _too_deep(line: str) -> int | None:
    """The column of the bracket that nests arrays and objects past MAX_DEPTH, None if none does."""
    if line.count("[") + line.count("{") <= MAX_DEPTH:  # cheap test first
        return None
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(line):
        first = match[0][0]
        if first in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return match.start() + 1
        elif first in "]}":
            depth -= 1
    return None


# A \uD800-\uDFFF escape: half of a UTF-16 pair, which json.loads turns into a lone surrogate
# (text no encoder takes) unless its other half follows.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# One escape of a JSON string (in valid JSON every backslash opens one).
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.S)


def _unpaired_surrogate(line: str) -> re.Match[str] | None:
    """The first surrogate escape of a valid JSON line that is not half of a pair (a high half
    followed at once by a low one), None if there is none."""
    if not ("\\ud" in line or "\\uD" in line) or not _SURROGATE_ESCAPE.search(line):  # cheap test first
        return None
    high = None  # a high half, waiting for its low half
    for escape in _ESCAPE.finditer(line):
        unit = int(escape[1], 16) if escape[1] else -1
        if high is not None:
            if escape.start() == high.end() and 0xDC00 <= unit <= 0xDFFF:
                high = None
                continue
            return high
        if 0xD800 <= unit <= 0xDBFF:
            high = escape
        elif 0xDC00 <= unit <= 0xDFFF:
            return escape
    return high


def read_texts(path: str | os.PathLike[str], key: str = "text") -> Iterator[str]:
    """The string field `key` of every record of a JSONL file (plain, .gz or .zst)."""
    for line_no, record in read_jsonl(path):
        value = record.get(key)
        if not isinstance(value, str):
            choose = "choose the field that holds the text"
            if key not in record:
                raise VikhrError(f"{path}:{line_no}: field {key!r} is missing ({choose})")
            raise VikhrError(f"{path}:{line_no}: {not_text_reason(key, value, choose)}")
        yield value


def read_text_file(path: str | os.PathLike[str]) -> str:
    """The whole text of a plain UTF-8 text file (plain, .gz or .zst), as the JSONL readers take their
    bytes: a leading byte-order mark skipped, CRLF line ends read as LF (a file written on Windows
    gives the text its copy with LF gives); bytes that are not UTF-8 are a VikhrError naming
    `path:line`."""
    return "".join(line for _, line in _lines(Path(path))).replace("\r\n", "\n")


class NotTextField(NamedTuple):
    """The native reader's words for a field wanted as text that holds another value."""

    said: str
    is_chat: bool
    says_its_fix: bool  # the words say how to fix the line (a list of strings: join them)


def said_not_text(key: str, value: Any) -> NotTextField:
    """The native reader's words for the field `key` holding `value`, no string: one wording for
    both readers."""
    from vikhr import _core

    # Never None: the value is no string.
    return NotTextField(*_core.not_text_field(key, json.dumps(_numbers_as_zero(value))))


def not_text_reason(key: str, value: Any, choose: str) -> str:
    """Why the field `key`, wanted as text, holding `value` (no string) is refused, and the fix: a
    chat said as one, a list of strings with how to join them, else what it is and `choose` (how to
    name another field)."""
    field = said_not_text(key, value)
    if field.is_chat:
        return f"field {json.dumps(key)} holds a chat (a list of turns), not a string ({choose})"
    return field.said if field.says_its_fix else f"{field.said} ({choose})"


def _numbers_as_zero(value: Any) -> Any:
    """`value` with each number 0: what the value is does not depend on them, and a number past a
    double (1e400, read as inf) would be written back as Infinity, which is no JSON."""
    if isinstance(value, dict):
        return {k: _numbers_as_zero(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_zero(v) for v in value]
    return 0 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
