"""vikhr.file_stamps: a value cached under a file's stamp is never one of its earlier content."""

from __future__ import annotations

import os
import time
from pathlib import Path

from vikhr.file_stamps import SETTLED_NS, StampedCache, file_stamp


def _counted_read(path: Path, reads: list[str]):
    def read() -> str:
        reads.append(path.read_text())
        return reads[-1]

    return read


def test_a_file_rewritten_in_place_within_one_tick_with_its_size_is_read_again(tmp_path: Path) -> None:
    """A file system that stamps whole seconds gives two writes of one second, in place and of one
    size, the same stamp: a value cached after the first would stand for the second's content."""
    path = tmp_path / "tokenizer.json"
    cache: StampedCache[str] = StampedCache(maxsize=4)
    reads: list[str] = []
    tick = time.time_ns() // 1_000_000_000 * 1_000_000_000
    path.write_text("aaaa")
    os.utime(path, ns=(tick, tick))
    first = file_stamp(path)
    assert cache.get("key", [path], _counted_read(path, reads)) == "aaaa"
    with path.open("r+") as f:
        f.write("bbbb")
    os.utime(path, ns=(tick, tick))
    assert file_stamp(path) == first  # nothing in the stamp tells the two writes apart
    assert cache.get("key", [path], _counted_read(path, reads)) == "bbbb"
    assert reads == ["aaaa", "bbbb"]


def test_a_settled_file_is_read_once_until_it_is_written_again(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    cache: StampedCache[str] = StampedCache(maxsize=4)
    reads: list[str] = []
    path.write_text("aaaa")
    settled = time.time_ns() - 2 * SETTLED_NS
    os.utime(path, ns=(settled, settled))
    for _ in range(3):
        assert cache.get("key", [path], _counted_read(path, reads)) == "aaaa"
    assert reads == ["aaaa"]
    path.write_text("bbbbb")  # a new stamp: read again, not cached while it is this recent
    for _ in range(2):
        assert cache.get("key", [path], _counted_read(path, reads)) == "bbbbb"
    assert reads == ["aaaa", "bbbbb", "bbbbb"]
