"""Outputs that appear only when complete: nothing half-written ever looks valid.

Files are written under a temporary name and renamed; directories are filled in a private
temporary directory beside the target and renamed over it at the end (removed on failure).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def temporary_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside `path` (same suffix) that replaces `path` when the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """A private directory to fill; on success it replaces `path` (an existing one is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield work
        os.chmod(work, 0o755)  # mkdtemp makes it private; the result is an ordinary directory
        if path.exists():
            shutil.rmtree(path)
        os.replace(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
