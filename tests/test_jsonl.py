"""vikhr.jsonl: one JSONL reader for plain, .gz and .zst files, with one-line errors naming path:line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from vikhr.errors import VikhrError
from vikhr.jsonl import open_text, read_jsonl, read_texts

RECORDS = [{"id": "a", "text": "Привет, мир"}, {"id": "b", "text": "второй\nабзац"}]


def write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def jsonl_bytes(records: list[dict], blank_after_first: bool = True) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if blank_after_first:
        lines.insert(1, "   ")  # a blank line: skipped, but it still counts for line numbers
    return ("\n".join(lines) + "\n").encode("utf-8")


def one_line_error(excinfo: pytest.ExceptionInfo[VikhrError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.jsonl.zst"])
def test_reads_plain_gz_and_zst_with_line_numbers(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, jsonl_bytes(RECORDS))
    assert list(read_jsonl(path)) == [(1, RECORDS[0]), (3, RECORDS[1])]
    assert list(read_texts(path)) == [r["text"] for r in RECORDS]
    assert list(read_texts(str(path), key="id")) == ["a", "b"]
    with open_text(path) as f:
        assert f.read().splitlines()[0] == json.dumps(RECORDS[0], ensure_ascii=False)


def test_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + jsonl_bytes(RECORDS).replace(b"\n", b"\r\n"))
    assert [r for _, r in read_jsonl(path)] == RECORDS


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.gz", "bad.jsonl.zst"])
def test_bad_json_names_path_and_line(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, jsonl_bytes(RECORDS) + b'{"text": "unterminated\n')
    with pytest.raises(VikhrError) as e:
        list(read_jsonl(path))
    assert one_line_error(e).startswith(f"{path}:4: not valid JSON")


def test_non_object_line_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "list.jsonl", b'{"text": "ok"}\n["not", "an", "object"]\n')
    with pytest.raises(VikhrError, match=r"list\.jsonl:2: expected a JSON object"):
        list(read_jsonl(path))


@pytest.mark.parametrize("name", ["cp.jsonl", "cp.jsonl.gz", "cp.jsonl.zst"])
def test_cp1251_names_path_and_line_and_the_fix(tmp_path: Path, name: str) -> None:
    # Enough valid lines before the bad one that a chunked decoder would fail on an earlier line.
    good = jsonl_bytes([{"text": "строка"}] * 2000, blank_after_first=False)
    path = write(tmp_path / name, good + json.dumps({"text": "Привет"}, ensure_ascii=False).encode("cp1251"))
    with pytest.raises(VikhrError) as e:
        list(read_texts(path))
    message = one_line_error(e)
    assert message.startswith(f"{path}:2001: not UTF-8")
    assert "re-encode it as UTF-8" in message
    with pytest.raises(VikhrError, match="not UTF-8"), open_text(path) as f:
        f.read()


def test_missing_key_names_path_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "k.jsonl", b'{"text": "a"}\n{"body": "b"}\n{"text": 3}\n')
    with pytest.raises(VikhrError) as e:
        list(read_texts(path))
    assert one_line_error(e).startswith(f"{path}:2: field 'text' is missing")
    with pytest.raises(VikhrError, match=r"k\.jsonl:1: field 'body' is missing"):
        list(read_texts(path, key="body"))


@pytest.mark.parametrize("name", ["t.jsonl.gz", "t.jsonl.zst"])
def test_truncated_or_mislabelled_compression_is_one_line(tmp_path: Path, name: str) -> None:
    whole = write(tmp_path / name, jsonl_bytes(RECORDS * 500)).read_bytes()
    truncated = tmp_path / ("cut-" + name)
    truncated.write_bytes(whole[: len(whole) // 2])
    mislabelled = tmp_path / ("plain-" + name)
    mislabelled.write_bytes(jsonl_bytes(RECORDS))
    for path in (truncated, mislabelled):
        with pytest.raises(VikhrError) as e:
            list(read_jsonl(path))
        assert one_line_error(e).startswith(f"{path}:")


def test_suffixes_in_any_case_and_compressed_data_under_a_plain_name(tmp_path: Path) -> None:
    """`.GZ` and `.zstd` are read as the Rust reader reads them; gzip or zstd data named `.jsonl` was
    "not UTF-8 ... re-encode it with iconv"."""
    import zstandard

    data = jsonl_bytes(RECORDS)
    (tmp_path / "a.jsonl.GZ").write_bytes(gzip.compress(data))
    (tmp_path / "a.jsonl.zstd").write_bytes(zstandard.ZstdCompressor().compress(data))
    for name in ("a.jsonl.GZ", "a.jsonl.zstd"):
        assert [r for _, r in read_jsonl(tmp_path / name)] == RECORDS
    (tmp_path / "g.jsonl").write_bytes(gzip.compress(data))
    (tmp_path / "z.jsonl").write_bytes(zstandard.ZstdCompressor().compress(data))
    for name, what, suffix in (("g.jsonl", "gzip", ".gz"), ("z.jsonl", "zstd", ".zst")):
        with pytest.raises(VikhrError) as e:
            list(read_jsonl(tmp_path / name))
        assert one_line_error(e) == f"{tmp_path / name} holds {what}-compressed data: name it {name}{suffix}"


def test_a_compression_the_readers_do_not_decode_is_named(tmp_path: Path) -> None:
    """An .xz or .bz2 file was read as plain text: "not UTF-8 ... re-encode it with iconv"."""
    for name in ("a.jsonl.xz", "a.jsonl.BZ2"):
        path = write(tmp_path / name, b"\xfd7zXZ\x00\x00\x04")
        with pytest.raises(VikhrError) as e:
            list(read_jsonl(path))
        suffix = name[name.rindex(".") :].lower()
        assert one_line_error(e) == (
            f"{path}: unsupported compression ({suffix}); decompress it or recompress with gzip/zstd"
        )


def test_xz_or_bzip2_data_under_a_plain_name_is_named(tmp_path: Path) -> None:
    """xz or bzip2 data named `.jsonl` was "not UTF-8 ... re-encode it with iconv" (bzip2's first line
    "not valid JSON"); text that merely starts as bzip2 data does is still read as text."""
    import bz2
    import lzma

    data = jsonl_bytes(RECORDS)
    for name, what, packed in (
        ("x.jsonl", "xz", lzma.compress(data)),
        ("b.json", "bzip2", bz2.compress(data)),
    ):
        path = write(tmp_path / name, packed)
        with pytest.raises(VikhrError) as e:
            list(read_jsonl(path))
        assert one_line_error(e) == (
            f"{path} holds {what}-compressed data, which the readers do not decode: decompress it, or "
            "recompress it with gzip/zstd"
        )
    path = write(tmp_path / "t.jsonl", b"BZh9 is not JSON\n" + data)
    with pytest.raises(VikhrError, match=r"t\.jsonl:1: "):
        list(read_jsonl(path))


def test_json_is_read_as_strictly_as_the_rust_reader_reads_it(tmp_path: Path) -> None:
    """NaN (not JSON; the Rust reader refuses it), nesting past Python's recursion limit (a
    traceback), and lines of non-ASCII white space (skipped here, refused there)."""
    cases = [
        (b'{"text": "a", "score": NaN}\n', "not valid JSON (NaN is not a JSON value)"),
        (
            b'{"text": "a", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
            "not valid JSON (arrays and objects nested more than 128 deep at column 147)",
        ),
        ("\u00a0\n".encode(), "not valid JSON"),
        (b'{"text": "a\x01"}\n', "not valid JSON (Invalid control character at column 12)"),  # not "at at"
    ]
    for data, message in cases:
        path = write(tmp_path / "s.jsonl", data)
        with pytest.raises(VikhrError) as e:
            list(read_jsonl(path))
        assert one_line_error(e).startswith(f"{path}:1: {message}")
    path = write(tmp_path / "ws.jsonl", b' \t\x0c\r\n{"text": "a"}\n')
    assert list(read_jsonl(path)) == [(2, {"text": "a"})]
    # vikhr's own files (metrics, scores) are written by json.dumps, which writes NaN
    path = write(tmp_path / "metrics.jsonl", b'{"loss": NaN}\n')
    [(_, row)] = read_jsonl(path, allow_nan=True)
    assert row["loss"] != row["loss"]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(VikhrError, match="file not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))
    with pytest.raises(VikhrError, match="not a regular file"):
        open_text(tmp_path)


def test_zst_with_several_frames(tmp_path: Path) -> None:
    import zstandard

    frames = [zstandard.ZstdCompressor().compress(jsonl_bytes([r], blank_after_first=False)) for r in RECORDS]
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(b"".join(frames))
    assert [r for _, r in read_jsonl(path)] == RECORDS


def test_a_resumed_run_appends_its_metrics_after_what_a_kill_left(tmp_path: Path) -> None:
    """A kill (or a full disk) mid-append leaves a partial last line; the next run's first record
    must not be glued onto it."""
    from vikhr.train.monitor import Monitor, read_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "kind": "train", "loss": 2.5}\n{"step": 2, "kind": "tr')
    monitor = Monitor(tmp_path, enabled=True, tensorboard=False, resume_step=1)  # resumed at step 1
    monitor.record(2, "train", {"loss": 2.25})
    train, _ = read_metrics(tmp_path)
    assert {step: row["loss"] for step, row in train.items()} == {1: 2.5, 2: 2.25}
