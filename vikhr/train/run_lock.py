"""One run per checkpoint directory: a second run started on it (a double submission, a scheduler's
requeue while the first still runs) would write the same `step_N.tmp/`, flip `latest` and have
`keep_last` remove the other's steps. Rank 0 holds an OS lock on `checkpoint.dir/run.lock` for the
run; the kernel releases it when the process ends, however it ends."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vikhr.locks import exclusive

LOCK_FILE = "run.lock"


@contextlib.contextmanager
def run_lock(checkpoint_dir: str | Path) -> Iterator[None]:
    """Hold `checkpoint_dir`'s run lock (on rank 0; other ranks pass), or VikhrError naming the
    process holding it. A file system without locks (some network mounts) goes unlocked."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    directory = Path(checkpoint_dir)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    busy = (
        f"checkpoint.dir {directory} is in use by another run ({{holder}}); wait for it to end, "
        "stop it, or give this run another checkpoint.dir"
    )
    with exclusive(directory / LOCK_FILE, busy):
        try:
            yield
        except BaseException:
            if created and [p.name for p in directory.iterdir()] == [LOCK_FILE]:
                # A run refused before it wrote anything leaves no directory behind.
                (directory / LOCK_FILE).unlink()
                directory.rmdir()
            raise
