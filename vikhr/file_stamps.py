"""When a file's stamp may stand for its content in a cache that lasts a process."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, NamedTuple, TypeVar

# A file system stamps a write with the time of its clock's last tick (milliseconds to two seconds
# apart), and frees a replaced file's inode for the next new one: a file written this recently may be
# written again, the same size, with the same stamp.
SETTLED_NS = 2_000_000_000

V = TypeVar("V")


class FileStamp(NamedTuple):
    """What changes when a file is written again (by a rename into place or in place), once settled."""

    device: int
    inode: int
    size: int
    mtime_ns: int


def file_stamp(path: str | os.PathLike[str]) -> FileStamp:
    """The stamp of `path` as it is now; OSError where it cannot be read."""
    st = os.stat(path)
    return FileStamp(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_stamp_or_none(path: str | os.PathLike[str]) -> FileStamp | None:
    """`file_stamp` of `path`, None where there is no such file (a cache key for a file that may be
    absent, such as a tokenizer's optional chat template)."""
    try:
        return file_stamp(path)
    except FileNotFoundError:
        return None


def written_long_ago(stamps: Sequence[FileStamp | None], now_ns: int) -> bool:
    """Whether each file (None: absent) was last written more than SETTLED_NS before `now_ns`
    (`time.time_ns()`), so that a later write gets a stamp of its own."""
    return all(s is None or now_ns - s.mtime_ns > SETTLED_NS for s in stamps)


def settled(
    before: Sequence[FileStamp | None], after: Sequence[FileStamp | None], read_started_ns: int
) -> bool:
    """Whether what was read from files stamped `before` (then `after`, once read) may be cached under
    `before`: no file changed while it was read, and each was last written more than SETTLED_NS
    before the read began (`time.time_ns()`, see `written_long_ago`)."""
    return tuple(before) == tuple(after) and written_long_ago(before, read_started_ns)


class StampedCache(Generic[V]):
    """Values computed from files, kept for the process under the files' stamps once settled (see
    `settled`): a file written again is read again, even one written in place with its old size
    within one tick of the clock. The `maxsize` values used last are kept."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._values: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, files: Iterable[str | os.PathLike[str]], compute: Callable[[], V]) -> V:
        """The value of `key` computed from `files` (any may be absent) as they are now: `compute()`'s,
        called again only where a file changed since, or was written in the last seconds."""
        paths = tuple(files)
        started = time.time_ns()
        before = tuple(map(file_stamp_or_none, paths))
        entry = (key, before)
        with self._lock:
            if entry in self._values:
                self._values.move_to_end(entry)
                return self._values[entry]
        value = compute()
        if settled(before, tuple(map(file_stamp_or_none, paths)), started):
            with self._lock:
                self._values[entry] = value
                if len(self._values) > self.maxsize:
                    self._values.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every value (as a new process would start)."""
        with self._lock:
            self._values.clear()
