"""The JSONL readers agree: the Rust reader (`data preprocess`), vikhr.jsonl (tokenizer, eval and the
other Python stages) and the SFT sources' reader take and refuse the same lines, and give the same
text for a record's key.

Each case is a file of a good first line and tricky ones after it. The Rust reader's texts come back
from the dataset it writes with a byte-level tokenizer whose ids are the bytes themselves, so that the
dataset holds each text's UTF-8 bytes unchanged.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vikhr.data import preprocess
from vikhr.data.indexed import IndexedReader
from vikhr.errors import VikhrError
from vikhr.jsonl import MAX_DEPTH, parse_record, read_jsonl, read_texts, said_not_text
from vikhr.sft.sources import Unfit, read_records
from vikhr.tokenizer.byte_level import bytes_to_unicode

GOOD = b'{"text": "ok"}\n'


def nested(levels: int) -> bytes:
    """A record whose arrays and objects nest `levels` deep, its own object counted."""
    return b'{"text": "a", "n": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}\n"


# (case, the file's bytes, what both readers give: the texts, or the number of the line refused).
CASES: list[tuple[str, bytes, list[str] | int]] = [
    ("byte-order mark", b"\xef\xbb\xbf" + GOOD + b'{"text": "b"}\n', ["ok", "b"]),
    ("byte-order mark later", GOOD + b'\xef\xbb\xbf{"text": "b"}\n', 2),
    ("crlf", GOOD.replace(b"\n", b"\r\n") + b'{"text": "b"}\r\n', ["ok", "b"]),
    ("cr alone ends no line", GOOD + b'{"text": "a"}\r{"text": "b"}\n', 2),
    ("blank lines", GOOD + b'\n   \n\t\r\n\x0c\n{"text": "c"}\n\n', ["ok", "c"]),
    ("a line of nbsp", GOOD + "\u00a0\n".encode(), 2),
    ("a line of vertical tab", GOOD + b"\x0b\n", 2),
    ("last line without newline", GOOD + b'{"text": "c"}', ["ok", "c"]),
    ("cp1251", GOOD + '{"text": "Привет"}\n'.encode("cp1251"), 2),
    ("utf-8 of a surrogate", GOOD + b'{"text": "\xed\xa0\x80"}\n', 2),
    ("lone high surrogate", GOOD + b'{"text": "a\\ud83d b"}\n', 2),
    ("lone low surrogate", GOOD + b'{"text": "a\\uDE00 b"}\n', 2),
    ("surrogate pair", GOOD + b'{"text": "a\\ud83d\\ude00b"}\n', ["ok", "a😀b"]),
    ("reversed pair", GOOD + b'{"text": "a\\ude00\\ud83db"}\n', 2),
    ("high then another escape", GOOD + b'{"text": "\\ud83d\\u0041"}\n', 2),
    ("lone surrogate in another field", GOOD + b'{"title": "\\ud83d", "text": "a"}\n', 2),
    ("lone surrogate deep in a field", GOOD + b'{"text": "a", "m": {"k": ["\\udfff"]}}\n', 2),
    ("lone surrogate in a key", GOOD + b'{"\\ud83d": 1, "text": "a"}\n', 2),
    ("lone surrogate in a replaced value", GOOD + b'{"text": "\\ud83d", "text": "b"}\n', 2),
    ("escaped backslash before u", GOOD + b'{"text": "\\\\ud83d"}\n', ["ok", "\\ud83d"]),
    ("escaped nul", GOOD + b'{"text": "a\\u0000b"}\n', ["ok", "a\x00b"]),
    ("raw tab in a string", GOOD + b'{"text": "a\tb"}\n', 2),
    ("raw nul in a string", GOOD + b'{"text": "a\x00b"}\n', 2),
    ("del, line separators", GOOD + '{"text": "a\x7f\u2028\x85b"}\n'.encode(), ["ok", "a\x7f\u2028\x85b"]),
    ("nan", GOOD + b'{"text": "a", "score": NaN}\n', 2),
    ("infinity", GOOD + b'{"text": "a", "score": -Infinity}\n', 2),
    ("huge integer", GOOD + b'{"text": "a", "n": ' + b"9" * 5000 + b"}\n", ["ok", "a"]),
    ("huge float", GOOD + b'{"text": "a", "n": 1e400, "m": -1e-400}\n', ["ok", "a"]),
    ("duplicate key: the last wins", GOOD + b'{"text": "first", "text": "second"}\n', ["ok", "second"]),
    ("duplicate key: the last is no string", GOOD + b'{"text": "first", "text": 5}\n', 2),
    ("duplicate key: an escaped spelling", GOOD + b'{"text": "a", "t\\u0065xt": "b"}\n', ["ok", "b"]),
    ("array", GOOD + b'["text"]\n', 2),
    ("string", GOOD + b'"text"\n', 2),
    ("null", GOOD + b"null\n", 2),
    ("key missing", GOOD + b'{"body": "a"}\n', 2),
    ("empty object", GOOD + b"{}\n", 2),
    ("number", GOOD + b'{"text": 5}\n', 2),
    ("null value", GOOD + b'{"text": null}\n', 2),
    ("list value", GOOD + b'{"text": ["a"]}\n', 2),
    ("object value", GOOD + b'{"text": {"text": "a"}}\n', 2),
    ("huge number value", GOOD + b'{"text": ' + b"9" * 5000 + b"}\n", 2),
    (
        "huge number value, then the text",
        GOOD + b'{"text": ' + b"9" * 5000 + b', "text": "b"}\n',
        ["ok", "b"],
    ),
    ("huge float value", GOOD + b'{"text": -1e400}\n', 2),
    ("huge float value, then the text", GOOD + b'{"text": 1e400, "text": "b"}\n', ["ok", "b"]),
    ("white space text", GOOD + b'{"text": " \\n\\t "}\n', ["ok", " \n\t "]),
    ("empty text", GOOD + b'{"text": ""}\n', ["ok", ""]),
    ("trailing garbage", GOOD + b'{"text": "a"} x\n', 2),
    ("two objects", GOOD + b'{"text": "a"}{"text": "b"}\n', 2),
    ("white space around", GOOD + b' \t{"text": "a"} \t\n', ["ok", "a"]),
    ("invalid escape", GOOD + b'{"text": "a\\U0041"}\n', 2),
    ("trailing comma", GOOD + b'{"text": "a",}\n', 2),
    ("nested to the limit", GOOD + nested(MAX_DEPTH), ["ok", "a"]),
    ("nested past the limit", GOOD + nested(MAX_DEPTH + 1), 2),
    ("nested past Python's own limit", GOOD + nested(100_000), 2),
    ("brackets in strings nest nothing", GOOD + b'{"text": "' + b"[{" * 200 + b'"}\n', ["ok", "[{" * 200]),
    ("a long line", GOOD + b'{"text": "' + "ж".encode() * 1_000_000 + b'"}\n', ["ok", "ж" * 1_000_000]),
]
IDS = [case for case, _, _ in CASES]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer.json without merges whose id of each byte is the byte's value."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    path = tmp_path_factory.mktemp("bytes") / "tokenizer.json"
    tok.save(str(path))
    return path


def rust_texts(path: Path, tokenizer: Path) -> list[str]:
    """The texts `data preprocess` writes for `path`'s lines."""
    prefix = path.parent / "out"
    preprocess([path], prefix, tokenizer, tokenizer_type="HuggingFaceTokenizer", workers=1)
    dataset = IndexedReader(f"{prefix}_text_document")
    return [bytes(dataset.document(i)).decode("utf-8") for i in range(len(dataset))]


def outcome(read: Callable[[Path], list[Any]], path: Path) -> list[Any] | int:
    """What a reader gives for `path`: its texts or records, or the line it refuses, which its error
    must name in one line that starts with `path:line: `."""
    try:
        return read(path)
    except VikhrError as e:
        message = str(e)
        assert message.startswith(f"{path}:") and "\n" not in message, message
        return int(message[len(f"{path}:") :].split(":", 1)[0])


@pytest.mark.parametrize(("case", "data", "expected"), CASES, ids=IDS)
def test_the_rust_and_python_readers_agree(
    tmp_path: Path, tokenizer: Path, case: str, data: bytes, expected: list[str] | int
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    python = outcome(lambda p: list(read_texts(p)), path)
    rust = outcome(lambda p: rust_texts(p, tokenizer), path)
    assert python == rust == expected


# A text field holding no string: what its value is.
NOT_TEXT_VALUES = [
    ("number", b"5"),
    ("number past a double", b"1e400"),
    ("negative number past a double", b"-1e400"),
    ("integer past int()'s digits", b"9" * 5000),
    ("list of numbers past a double", b"[1e400, -1e-400]"),
    ("list of a turn and a number past a double", b'[{"role": "user", "content": "x"}, 1e400]'),
    ("chat with a number past a double", b'[{"role": "user", "content": "x", "n": 1e400}]'),
    ("object", b'{"n": 1e400}'),
]


@pytest.mark.parametrize(("case", "value"), NOT_TEXT_VALUES, ids=[c for c, _ in NOT_TEXT_VALUES])
def test_a_text_field_holding_no_string_is_said_alike(
    tmp_path: Path, tokenizer: Path, case: str, value: bytes
) -> None:
    """The Rust reader's words are those the Python stages give (vikhr.jsonl.said_not_text, on the
    value Python reads): a number past a double, which Python reads as ±inf, was "not valid JSON
    (number out of range)" there."""
    line = b'{"text": ' + value + b', "id": 1}'
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD + line + b"\n")
    said = said_not_text("text", parse_record(line.decode())["text"]).said
    with pytest.raises(VikhrError) as refused:
        rust_texts(path, tokenizer)
    assert str(refused.value).startswith(f"{path}:2: {said} ("), str(refused.value)[:200]


def test_compressed_files_are_read_alike(tmp_path: Path, tokenizer: Path) -> None:
    """The byte-order mark and CRLF of a gzip file, and its bad line, as for a plain one."""
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + GOOD.replace(b"\n", b"\r\n") + b'{"text": "b"}'))
    assert list(read_texts(path)) == rust_texts(path, tokenizer) == ["ok", "b"]
    path.write_bytes(gzip.compress(GOOD + b'{"text": "\\ud800"}\n'))
    python = outcome(lambda p: list(read_texts(p)), path)
    assert python == outcome(lambda p: rust_texts(p, tokenizer), path) == 2


def sft_records(path: Path) -> list[dict[str, Any]]:
    """The records the SFT sources' reader takes, up to the first line it refuses (a VikhrError)."""
    records = []
    for where, record in read_records(path):
        if isinstance(record, Unfit):
            assert where.startswith(f"{path}:"), where
            raise VikhrError(f"{where}: {record}")
        records.append(record)
    return records


@pytest.mark.parametrize(("case", "data", "expected"), CASES, ids=IDS)
def test_the_sft_reader_takes_the_records_vikhr_jsonl_takes(
    tmp_path: Path, case: str, data: bytes, expected: list[str] | int
) -> None:
    """A chat collection's JSONL lines are taken or refused as vikhr.jsonl takes them, NaN allowed."""
    path = tmp_path / "chats.jsonl"
    path.write_bytes(data)
    records = outcome(lambda p: [r for _, r in read_jsonl(p, allow_nan=True)], path)
    assert outcome(sft_records, path) == records
    if isinstance(expected, list):
        assert [r["text"] for r in records] == expected  # type: ignore[union-attr]


# The cases about a record's JSON value (not about lines), which a JSON array file can hold too.
VALUE_CASES = [
    c
    for c in CASES
    if c[0].startswith(("lone ", "surrogate pair", "reversed pair", "high then", "escaped", "nested", "huge"))
    or c[0] in ("nan", "infinity", "brackets in strings nest nothing", "duplicate key: the last wins")
]


@pytest.mark.parametrize(("case", "data", "expected"), VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_a_json_array_file_takes_the_records_its_jsonl_twin_takes(
    tmp_path: Path, case: str, data: bytes, expected: list[str] | int
) -> None:
    """A chat collection given as one JSON array (OpenHermes-2.5's file) takes and refuses the records
    its JSON Lines twin does: a 5,000-digit number and nesting past Python's limit were tracebacks
    there (the build lost), nesting past 128 levels was read."""
    lines = [line for line in data.split(b"\n") if line.strip()]
    jsonl, array = tmp_path / "chats.jsonl", tmp_path / "chats.json"
    jsonl.write_bytes(data)
    array.write_bytes(b"[" + b",\n".join(lines) + b"]")

    def taken(path: Path) -> list[str]:
        return [
            r.reason if isinstance(r, Unfit) else json.dumps(r, sort_keys=True) for _, r in read_records(path)
        ]

    assert taken(array) == taken(jsonl)
    refused = case.startswith(("lone ", "reversed", "high then", "nested past"))  # NaN is taken here
    assert len(taken(array)) == len(lines) and (taken(array)[-1] == "bad_json") == refused
