"""When a file's stamp may stand for its content in a cache that lasts a process."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

# A file system stamps a write with the time of its clock's last tick (milliseconds to two seconds
# apart), and frees a replaced file's inode for the next new one: a file written this recently may be
# written again, the same size, with the same stamp.
SETTLED_NS = 2_000_000_000


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


def settled(before: Sequence[FileStamp], after: Sequence[FileStamp], read_started_ns: int) -> bool:
    """Whether what was read from files stamped `before` (then `after`, once read) may be cached under
    `before`: no file changed while it was read, and each was last written more than SETTLED_NS
    before the read began (`time.time_ns()`), so a later write gets a stamp of its own."""
    return tuple(before) == tuple(after) and all(read_started_ns - s.mtime_ns > SETTLED_NS for s in before)
