"""One run per checkpoint directory: a second run started on it (a double submission, a scheduler's
requeue while the first still runs) would write the same `step_N.tmp/`, flip `latest` and have
`keep_last` remove the other's steps. Rank 0 holds an OS lock on `checkpoint.dir/run.lock` for the
run; the kernel releases it when the process ends, however it ends."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vikhr.atomic import missing_dirs, remove_empty_dirs
from vikhr.locks import exclusive
from vikhr.train.stop import SignalledInSetup

LOCK_FILE = "run.lock"


@contextlib.contextmanager
def run_lock(checkpoint_dir: str | Path) -> Iterator[None]:
    """Hold `checkpoint_dir`'s run lock (on rank 0; other ranks pass), or VikhrError naming the
    process holding it. A file system without locks (some network mounts) goes unlocked.

    A run that fails (a refusal in its setup: a checkpoint of another model, a damaged one) leaves
    the directory as it found it where it wrote nothing in it: the empty folders it made there (an
    unused data cache), its lock file and the directory itself, if it made them, are removed. A stop
    in the setup is no failure: its `stopped.json` goes in the directory."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    directory = Path(checkpoint_dir)
    created = missing_dirs(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock_was_there = (directory / LOCK_FILE).exists()
    busy = (
        f"checkpoint.dir {directory} is in use by another run ({{holder}}); wait for it to end, "
        "stop it, or give this run another checkpoint.dir"
    )
    with exclusive(directory / LOCK_FILE, busy):
        # Taken under the lock: a run that held it until now may have added folders until it ended.
        found = {entry.name for entry in directory.iterdir() if entry.name != LOCK_FILE or lock_was_there}
        try:
            yield
        except BaseException as e:
            if not isinstance(e, SignalledInSetup):
                _remove_what_the_run_added(directory, found)
                remove_empty_dirs(created)
            raise


def _remove_what_the_run_added(directory: Path, found: set[str]) -> None:
    """Remove the run's own lock file and the empty folders it added to `directory` (which held
    `found` before): a file it wrote (a checkpoint, a data cache's indices) stays."""
    for entry in directory.iterdir():
        if entry.name in found:
            continue
        if entry.name == LOCK_FILE:
            entry.unlink(missing_ok=True)  # while held, as locks.exclusive(remove=True) does
        elif entry.is_dir() and not entry.is_symlink():
            with contextlib.suppress(OSError):  # not empty
                entry.rmdir()
