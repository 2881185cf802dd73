"""Outputs that appear only when complete: nothing half-written ever looks valid.

Files are written under a temporary name and renamed; directories are filled in a private
temporary directory beside the target and renamed over it at the end (removed on failure).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from vikhr.errors import VikhrError, refuse_to_replace
from vikhr.locks import process_alive

# How torch.save and safetensors word a failed write: their own exceptions, not OSError.
_FULL_DISK = ("No space left", "StorageFull", "os error 28")
_SHORT_WRITE = ("file write failed", "unexpected pos")


@contextlib.contextmanager
def write_errors_as_os_errors(path: str | Path) -> Iterator[None]:
    """torch.save and safetensors report a failed write (a full disk) as RuntimeError or
    SafetensorError, and a file object's write as an OSError naming no file: re-raise those as the
    OSError naming `path` that the callers handle."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except (RuntimeError, SafetensorError) as e:
        text = " ".join(str(e).split())
        if any(s in text for s in _FULL_DISK):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from e
        if any(s in text for s in _SHORT_WRITE):
            raise OSError(errno.EIO, f"a write failed ({text[:100]}); is the disk full?", str(path)) from e
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with temporary_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def temporary_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside `path` (same suffix) that replaces `path` when the block succeeds."""
    with temporary_paths([Path(path)]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def temporary_paths(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary file names beside `paths` that replace them when the block succeeds: every file is
    written before any is renamed, so a failure leaves the old set whole (a report's table, CSV
    and chart never disagree)."""
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(scratch_file(p)) for p in paths]
        yield temps
        for tmp, path in zip(temps, paths, strict=True):
            os.replace(tmp, path)


@contextlib.contextmanager
def scratch_file(path: str | Path) -> Iterator[Path]:
    """This process's temporary file for `path` (hidden, beside it, same suffix), removed after the
    block unless the block renamed it. What killed runs left for `path` is removed first (see
    remove_stale_temporaries); the file is locked meanwhile, so that no other run removes it."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(_temporary_prefix(path) + path.suffix)
    try:
        with open(tmp, "a") as held:  # created empty: the lock is on this file
            with contextlib.suppress(OSError):
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def missing_dirs(path: str | Path) -> list[Path]:
    """`path` and those of its parents that do not exist, deepest first: what mkdir(parents=True)
    makes, and what a refused command removes again (`remove_empty_dirs`)."""
    missing = []
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def remove_empty_dirs(created: Sequence[Path]) -> None:
    """Remove the folders in `created` (a directory and the parents made for it, deepest first)
    while they are empty: one something else has put a file in since stays, and the folders above it."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone)
            break


def _host_tag() -> str:
    """This host, briefly (a host name may be 64 characters; a file name only 255)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:10]


def _temporary_prefix(path: Path) -> str:
    """The start of the names of `path`'s temporary directories: who made it (process and host),
    so that a later run can tell the leftovers of a killed one from a live one's work."""
    return f".{path.name}.tmp-{os.getpid()}@{_host_tag()}@"


def _lock_of(work: Path) -> Path:
    return work.with_name(work.name + ".lock")


def _unlocked(work: Path) -> bool:
    """Whether no process holds `work`'s lock (a directory's lock file, a scratch file itself): a
    writer in another PID namespace of this host (a container) is alive though its pid is not ours
    to see. No lock file: none was taken."""
    try:
        with open(_lock_of(work) if work.is_dir() else work, "r+") as f:  # never creates it
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return True
    except OSError:  # held, or locks unsupported here: keep it
        return False
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary directories and files of `path` that processes of this host, since
    gone (killed: a clean failure removes its own), left beside it: a killed 7B conversion leaves
    ~15 GB there, a killed `sft build` its candidate chats. Another host's (a shared file system),
    a running process's, or a locked one are left alone."""
    removed = []
    for entry in stale_temporaries(path):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            _lock_of(entry).unlink(missing_ok=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def stale_temporaries(path: Path) -> list[Path]:
    """The temporary directories and files of `path` that processes of this host, since gone, left
    beside it (what `remove_stale_temporaries` removes), in name order."""
    stale = []
    for entry in sorted(path.parent.glob(f".{glob.escape(path.name)}.tmp-*@*@*")):
        pid, _, rest = entry.name.removeprefix(f".{path.name}.tmp-").partition("@")
        if entry.name.endswith(".lock") or not pid.isdigit() or rest.partition("@")[0] != _host_tag():
            continue
        if (entry.is_dir() or entry.is_file()) and not process_alive(int(pid)) and _unlocked(entry):
            stale.append(entry)
    return stale


class WrittenMeanwhile(VikhrError):
    """An output that did not exist when the work began was written by another run meanwhile."""


def _swap_in(work: Path, path: Path, existed: bool) -> None:
    """Rename `work` to `path`. An existing `path` is exchanged with `work` in one step where the
    system can (a reader never finds `path` missing), else renamed aside first; the old output is
    deleted only once the new one is in place, under a temporary name of this process (which a later
    run removes if this one is killed): an interrupt never leaves half of it under `path`.
    A `path` that did not exist when the work began (`existed`) and does now was written by another
    run meanwhile: it is kept, and this run's result refused."""
    if not existed:
        taken = f"{path} was written by another run while this one worked; this run's result is discarded"
        if path.exists():
            raise WrittenMeanwhile(f"{taken} (give another output path)")
        try:
            os.rename(work, path)  # refused if a directory with files appeared there since
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise WrittenMeanwhile(f"{taken} (give another output path)") from None
            raise
        return
    if not path.exists():
        os.replace(work, path)
        return
    if _exchange(work, path):
        shutil.rmtree(work, ignore_errors=True)  # the old output now
        return
    old = work.with_name(work.name + ".old")
    os.replace(path, old)
    try:
        os.replace(work, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries `a` and `b` atomically (Linux renameat2 with RENAME_EXCHANGE); False where
    the C library, the kernel or the file system (some network mounts) cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """A private directory to fill; on success it replaces `path` (an existing one is removed after).
    What killed runs left for `path` is removed first (see remove_stale_temporaries). A `path` that
    another run created meanwhile is not replaced: WrittenMeanwhile (see _swap_in)."""
    path = Path(path)
    refuse_to_replace(path)  # callers check their inputs too, before the work
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    remove_stale_temporaries(path)
    work = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), dir=path.parent))
    try:
        with open(_lock_of(work), "w") as lock:  # held while the directory is filled (see _unlocked)
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield work
        os.chmod(work, 0o755)  # mkdtemp makes it private; the result is an ordinary directory
        _swap_in(work, path, existed)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        _lock_of(work).unlink(missing_ok=True)
