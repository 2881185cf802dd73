"""A guard for megatron-core's dataset index cache (`<checkpoint.dir>/data-cache` or `data.cache_dir`).

megatron-core stores its document/sample/shuffle indices as `.npy` files and loads them back with
`numpy.load(..., allow_pickle=True)`. A pickled `.npy` placed there (a checkpoint directory someone
sent, a shared cache) would run code when a run resumes. Before megatron sees the cache, every
`.npy` in it must be a plain numeric array; anything else stops the run with one line naming the
file. A numeric one whose size is not its header's was left by a build killed mid-write: the
indices of that build are removed and megatron-core builds them again.

megatron-core writes the cache in place (rank 0 builds, the other ranks then read). Runs sharing a
cache (an ablation grid, two jobs on one corpus) would otherwise read each other's half-written
files, and be told they are damaged: the building rank holds `LOCK_FILE` exclusively while it
checks and builds, and every check holds it shared, waiting while another run writes.

megatron-core names its cached indices by the dataset's path and the run's settings, not by what the
dataset holds: a dataset written again at the same prefix would be read through the indices of the
old one (documents past the old count never read, or an IndexError when it shrank). The building
rank records each dataset's `.bin`/`.idx` size and modification time in `STAMPS_FILE`, and removes
the cached indices built from a dataset whose files changed since (or were built before the record
existed), so that megatron-core builds them again. A dataset written in the last seconds may be
written again with the same sizes within one tick of the clock, keeping its stamp: it is recorded
as such (no stamp), and the next run builds its indices again.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vikhr import atomic, locks
from vikhr.data.indexed import settled_dataset_stamp
from vikhr.errors import VikhrError, os_error_line

LOCK_FILE = ".vikhr-cache.lock"
# {absolute prefix: [size, mtime_ns] of .bin and .idx, or null where they were written in the seconds
# before (see `settled_dataset_stamp`)} of the datasets the cached indices were built from
STAMPS_FILE = "vikhr-datasets.json"
# megatron-core's {hash}-{class}-{split}-description.txt beside its .npy files
_DESCRIPTION = "-description.txt"

_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class IncompleteNpy(VikhrError):
    """A numeric `.npy` shorter or longer than its header says: megatron-core writes in place, so a
    build killed mid-write (a time limit, a preemption) leaves one."""


def check_npy_file(path: Path) -> None:
    """Raise VikhrError unless `path` is a complete `.npy` of a numeric dtype (no pickled objects);
    IncompleteNpy for an empty one or one of a numeric dtype whose size is not its header's."""
    fix = f"delete {path} (megatron-core rebuilds its index cache) or point data.cache_dir elsewhere"
    if path.stat().st_size == 0:
        raise IncompleteNpy(f"data cache file {path} is empty: {fix}")
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            reader = _READERS.get(version)
            if reader is None:
                raise ValueError(f"unsupported .npy version {version}")
            # The header is a Python literal parsed with ast.literal_eval: no code runs here.
            shape, _fortran, dtype = reader(f, max_header_size=10_000)
            data_offset = f.tell()
    except (OSError, ValueError, SyntaxError) as e:
        raise VikhrError(f"data cache file {path} is not a readable .npy ({e}); {fix}") from e
    if dtype.hasobject or dtype.kind not in "biuf":
        raise VikhrError(
            f"data cache file {path} holds {dtype} data, not plain numbers (loading it could run code); {fix}"
        )
    expected = data_offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise IncompleteNpy(f"data cache file {path} is {actual} bytes, its header says {expected}: {fix}")


def check_index_cache(cache_dir: str | Path, builder: bool = True) -> int:
    """Check every `.npy` under `cache_dir` (absent: nothing to check), once no other run writes
    it; returns how many were checked. The `builder` (rank 0, which builds the cache) removes the
    indices of a killed build, and says so; the other ranks leave them to it."""
    root = Path(cache_dir)
    if not root.is_dir():
        return 0
    busy = f"megatron-core's data cache {root} is being written by another run ({{holder}}); waiting for it"
    with locks.shared(root / LOCK_FILE, busy):
        return _check_files(root, builder)


def _check_files(root: Path, builder: bool) -> int:
    """Check every `.npy` (called holding the cache's lock: no run is writing it). The `builder`
    removes the indices of a build that was killed mid-write, so that megatron-core builds them again
    (they stopped every rerun); anything else that is not a plain array stops the run."""
    files = sorted(root.rglob("*.npy"))
    for path in files:
        if not path.exists():
            continue  # removed with an incomplete file of its build
        try:
            check_npy_file(path)
        except IncompleteNpy:
            if not builder:  # every rank checks: the one that builds again says it, once
                continue
            for sibling in path.parent.glob(path.name.split("-", 1)[0] + "-*"):
                sibling.unlink(missing_ok=True)
            print(
                f"note: {path.name} in megatron-core's data cache {root} was left incomplete by a "
                "killed build: built again",
                file=sys.stderr,
            )
    return len(files)


def _dataset_paths(description: Any) -> Iterator[str]:
    """Every "dataset_path" in megatron-core's description of a dataset (a blend nests its parts')."""
    if isinstance(description, dict):
        for key, value in description.items():
            if key == "dataset_path" and isinstance(value, str):
                yield value
            else:
                yield from _dataset_paths(value)
    elif isinstance(description, list):
        for value in description:
            yield from _dataset_paths(value)


def forget_changed_datasets(root: Path, prefixes: list[str]) -> list[str]:
    """Remove the cached indices built from any of `prefixes` whose files are not those recorded in
    `STAMPS_FILE` (changed, not recorded, or written within seconds of the record: see
    `settled_dataset_stamp`), then record them; returns the prefixes whose indices were removed as
    changed (those recorded as written within seconds of the last build are rebuilt without a word:
    nothing is known to have changed). Called by the building rank holding the cache's lock."""
    try:
        saved = json.loads((root / STAMPS_FILE).read_text(encoding="utf-8"))
        saved = saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        saved = {}
    current = dict(settled_dataset_stamp(p) for p in prefixes)
    changed = {key for key, stamp in current.items() if stamp is None or saved.get(key) != stamp}
    removed: set[str] = set()
    for description in sorted(root.glob(f"*{_DESCRIPTION}")) if changed else ():
        try:
            paths = {
                str(Path(p).resolve()) for p in _dataset_paths(json.loads(description.read_text("utf-8")))
            }
        except (OSError, ValueError):
            paths = changed  # unreadable: which dataset it belongs to is unknown, so it goes too
        if paths & changed:
            removed |= paths & changed
            for path in root.glob(f"{description.name[: -len(_DESCRIPTION)]}-*"):
                path.unlink(missing_ok=True)
    if changed:
        atomic.write_text(root / STAMPS_FILE, json.dumps({**saved, **current}, indent=1) + "\n")
    return [p for p in sorted(removed) if p not in saved or saved[p] is not None]


@contextlib.contextmanager
def building_index_cache(cache_dir: str | Path, builder: bool, prefixes: list[str]) -> Iterator[None]:
    """Around megatron-core's dataset builder. The `builder` (the rank that writes the cache) holds
    it against other runs, checks it again, removes the indices of `prefixes` whose datasets changed
    since they were built (see the module doc), and when a write fails (a full disk) removes the files
    it left (a next run would refuse them); any rank's failed write is one line."""
    root = Path(cache_dir)
    with contextlib.ExitStack() as held:
        before: set[Path] = set()
        if builder:
            root.mkdir(parents=True, exist_ok=True)
            busy = f"megatron-core's data cache {root} is in use by another run ({{holder}}); waiting for it"
            held.enter_context(locks.exclusive(root / LOCK_FILE, busy, wait=True))
            _check_files(root, builder)
            for prefix in forget_changed_datasets(root, prefixes):
                print(
                    f"note: {prefix} changed since megatron-core's index cache was built: built again",
                    file=sys.stderr,
                )
            before = set(root.rglob("*"))
        try:
            yield
        except Exception as e:
            # Under torch.distributed megatron wraps the OSError in a plain Exception.
            cause = e if isinstance(e, OSError) else e.__cause__
            if not isinstance(cause, OSError):
                raise
            for path in set(root.rglob("*")) - before if builder else ():
                if path.is_file():
                    path.unlink(missing_ok=True)
            if not builder and isinstance(cause, FileNotFoundError):
                raise VikhrError(
                    f"reading megatron-core's data cache ({root}, set by data.cache_dir): "
                    f"{os_error_line(cause)}: rank 0 built it where this node does not see it; put "
                    "data.cache_dir (or checkpoint.dir) on storage every node shares"
                ) from None
            raise VikhrError(
                f"writing megatron-core's data cache ({root}, set by data.cache_dir): {os_error_line(cause)}"
            ) from None
