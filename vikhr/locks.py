"""One writer at a time: OS locks on lock files, naming the holder when a second process is refused.

Two runs writing one output at once (a double submission, two shells, a requeue while the first
still runs) would mix their files. Each writer holds `flock` on a lock file for as long as it
writes; the kernel releases it however the process ends, so a killed run never blocks the next.
Readers of something written in place (megatron-core's data cache) hold it `shared`: they wait
while a writer writes, not each other. A file system without locks (some network mounts) goes
unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from vikhr.errors import VikhrError


def _holder_line() -> str:
    return f"pid {os.getpid()} on {os.uname().nodename}"


@contextlib.contextmanager
def exclusive(lock_path: Path, busy: str, remove: bool = False, wait: bool = False) -> Iterator[bool]:
    """Hold the lock of `lock_path` (created if missing); when another process holds it, VikhrError
    `busy` with `{holder}` filled in, or with `wait`, `busy` on stderr (none when empty) and a wait
    for the lock. Yields whether a lock is held. `remove`: delete the lock file at the end (for
    locks beside user files, which should not pile up)."""
    while True:
        f = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115  # held open with the lock, closed below
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                said = _busy_line(f, busy)
                if not wait:
                    f.close()
                    raise VikhrError(said) from None
                if said:
                    print(said, file=sys.stderr)
                fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system: nothing to hold
            with f:
                yield False
            return
        # A holder that removed the file as we opened it left us locking a name no one else sees.
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    with f:
        f.seek(0)
        f.truncate()
        f.write(_holder_line() + "\n")
        f.flush()
        try:
            yield True
        finally:
            if remove:
                lock_path.unlink(missing_ok=True)
            else:  # a reader waiting on this file's later holders must not name this process
                f.truncate(0)
                f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def shared(lock_path: Path, busy: str) -> Iterator[bool]:
    """Hold `lock_path` shared with other readers, waiting (with `busy` on stderr, `{holder}` filled
    in) while a writer holds it `exclusive`. Yields whether a lock is held: not where the lock file
    cannot be opened (a read-only directory no one writes) or the file system has no locks."""
    try:
        f = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115  # held open with the lock, closed below
    except OSError:
        yield False
        return
    with f:
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                print(_busy_line(f, busy), file=sys.stderr)
                fcntl.flock(f, fcntl.LOCK_SH)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def abandoned(lock_path: Path) -> Iterator[bool]:
    """Hold the lock of `lock_path` if a process of this host left it when killed (its holder line is
    still there) and is gone, and no process holds it now; yields whether it is held, and removes the
    lock file at the end as its holder would have. The file is never created. Another host's lock (on
    a shared file system its lock may not reach this host), a live process's, a held one, one without
    a holder line, or a file system without locks: False."""
    try:
        f = open(lock_path, "r+", encoding="utf-8")  # noqa: SIM115  # held open with the lock, closed below
    except OSError:
        yield False
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path))
            holder = re.fullmatch(r"pid (\d+) on (.+)", f.read().strip())
        except (OSError, ValueError):
            same, holder = False, None
        ours = holder is not None and holder[2] == os.uname().nodename
        held = same and ours and not process_alive(int(holder[1]))
        try:
            yield held
        finally:
            if held:
                lock_path.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host (this PID namespace) exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # no such pid
        return False
    return True


def _busy_line(f, busy: str) -> str:
    """`busy` naming the process whose line is in the lock file `f`."""
    f.seek(0)
    return busy.replace("{holder}", f.read().strip() or "another process")
