"""Megatron indexed datasets (`.bin/.idx`, MMIDIDX v1): the one Python module that touches the format.

Writing, reading, validating and merging happen in the Rust core (`vikhr._core`), whose files are
byte-identical to megatron-core's `IndexedDatasetBuilder`; Python code never writes or parses the
bytes itself. A document is written as one sequence (none when it is empty), as Megatron-LM's
`preprocess_data.py` does, and files appear under their final names only once complete.

Importing this module is cheap: the extension is loaded when a function is called.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vikhr import atomic
from vikhr.errors import VikhrError, overlap, require_output_prefix
from vikhr.file_stamps import FileStamp, file_stamp, settled, written_long_ago
from vikhr.locks import abandoned, exclusive

# What the writer can store: token ids (uint16 / int32, see `token_dtype`) and uint8 masks.
WRITABLE_DTYPES = ("uint8", "uint16", "int32")

PathLike = str | os.PathLike[str]


def dataset_prefix(output_prefix: PathLike, key: str) -> str:
    """Megatron's name of the dataset of JSON key `key`: `{output_prefix}_{key}_document`."""
    return f"{output_prefix}_{key}_document"


def token_dtype(vocab_size: int) -> str:
    """The dtype of token ids for a vocabulary of `vocab_size` ids: uint16 below 65,500, else int32
    (megatron-core's `DType.optimal_dtype`)."""
    from vikhr import _core  # the extension is only loaded when used

    return str(_core.token_dtype(vocab_size))


@dataclass(frozen=True)
class IndexInfo:
    """Counts of one `{prefix}.bin/.idx` pair, validated against each other."""

    prefix: str
    dtype: str
    documents: int
    empty_documents: int
    sequences: int
    tokens: int
    bin_bytes: int
    max_token_id: int | None = None  # set by `validate` (None: not scanned, or no token)


def missing_dataset_hint(prefix: str) -> str | None:
    """The fix for a dataset prefix naming no `.bin/.idx`, where it most likely names something else:
    one of the files, a folder of datasets, or the --output-prefix of `data preprocess` or
    `sft prepare` (whose datasets add `_{key}_document`); None where nothing tells."""
    if prefix.endswith((".bin", ".idx")):
        return "give the dataset prefix without .bin/.idx"
    if prefix and Path(prefix).is_dir():
        found = sorted(Path(prefix).glob("*.idx"))
        example = f", e.g. {found[0].with_suffix('')}" if found else ""
        return f"{prefix} is a directory: give the prefix of a dataset in it{example}"
    written = dataset_prefix(prefix, "text")
    if Path(f"{prefix}_sft.json").is_file():
        return f"vikhr sft prepare writes {written} and {dataset_prefix(prefix, 'mask')}: give one of them"
    if Path(f"{written}.bin").is_file():
        return f"vikhr data preprocess writes {written}: give that prefix"
    return None


def _check_files(prefix: str) -> None:
    for suffix in (".idx", ".bin"):
        if not Path(prefix + suffix).is_file():
            hint = missing_dataset_hint(prefix) or "check the path"
            raise VikhrError(f"{prefix}{suffix} not found ({hint})")


def _info(prefix: str, raw: dict, max_token_id: int | None = None) -> IndexInfo:
    return IndexInfo(
        prefix=prefix,
        dtype=raw["dtype"],
        documents=raw["documents"],
        empty_documents=raw["empty_documents"],
        sequences=raw["sequences"],
        tokens=raw["tokens"],
        bin_bytes=raw["bin_bytes"],
        max_token_id=max_token_id,
    )


# Counts of the datasets this process has validated, by `identity`: a trainer's start-up checks
# (config, blend, model.init's tokenizer, the data itself) on every rank would each read a corpus's
# index of gigabytes again. Files written in the last seconds are read anew (see `settled`).
_INSPECTED: dict[tuple, IndexInfo] = {}
_INSPECTED_MAX = 4096


def identity(prefix: str) -> tuple[str, FileStamp, FileStamp]:
    """What changes when `{prefix}.bin/.idx` are written again, once settled: the stamps of both files."""
    return prefix, file_stamp(prefix + ".bin"), file_stamp(prefix + ".idx")


def _still_settled(before: tuple[str, FileStamp, FileStamp], read_started_ns: int) -> bool:
    """Whether what was read from the dataset whose `identity` was `before`, from `read_started_ns`
    on, may be kept under `before`: its files are there, unchanged and settled (see `settled`)."""
    try:
        after = identity(before[0])
    except OSError:  # removed since it was read
        return False
    return settled(before[1:], after[1:], read_started_ns)


def _remember(before: tuple[str, FileStamp, FileStamp], read_started_ns: int, info: IndexInfo) -> None:
    """Cache `info`, read from files whose identity was `before`, where their stamps are settled."""
    if not _still_settled(before, read_started_ns):
        return
    if len(_INSPECTED) >= _INSPECTED_MAX:
        _INSPECTED.clear()
    _INSPECTED[before] = info


def inspect(prefix: PathLike) -> IndexInfo:
    """Validate `{prefix}.idx` against `{prefix}.bin` (reads the index only) and return its counts;
    a dataset this process validated before and unchanged since is not read again."""
    from vikhr import _core

    prefix = str(prefix)
    _check_files(prefix)
    started = time.time_ns()
    stamp = identity(prefix)
    if stamp in _INSPECTED:
        return _INSPECTED[stamp]
    try:
        info = _info(prefix, _core.inspect_index(prefix))
    except ValueError as e:
        raise VikhrError(f"invalid indexed dataset: {e}") from None
    _remember(stamp, started, info)
    return info


def validate(
    prefix: PathLike, vocab_size: int | None = None, record: ValidationRecord | None = None
) -> IndexInfo:
    """`inspect`, plus the largest token id (one pass over the `.bin` in Rust, no Python per token;
    the reader of that pass validates the index, read once).

    With `vocab_size`, a token id >= `vocab_size` raises VikhrError (the dataset was written with
    another tokenizer); an empty `.bin` raises too (Megatron cannot memory-map it). With `record`,
    a `.bin` scanned before and unchanged since is not read again (the `.idx` is still validated
    against it), and a new scan of files written more than a few seconds before is added to it.
    """
    prefix = str(prefix)
    _check_files(prefix)  # before the record's lookup, which stats the files
    known, max_id = record.lookup(prefix) if record is not None else (False, None)
    started, before = time.time_ns(), identity(prefix)
    # A scan opens the reader, which validates the index itself (an `inspect` first would read the
    # index twice); the reader's counts are remembered for later `inspect` calls.
    reader = None if known else IndexedReader(prefix)
    info = inspect(prefix) if reader is None else reader.info
    if info.tokens == 0:
        raise VikhrError(
            f"{info.prefix} holds no token (Megatron cannot load an empty .bin); write it again from "
            "input with text"
        )
    if reader is not None:
        max_id = reader.max_token_id()
        if record is not None:
            record.add(before, started, max_id)
    if vocab_size is not None and max_id is not None and max_id >= vocab_size:
        raise VikhrError(
            f"{info.prefix}: token id {max_id} is outside the vocabulary of {vocab_size} ids "
            "(was it written with another tokenizer? pre-tokenize it again with this one)"
        )
    return IndexInfo(**{**info.__dict__, "max_token_id": max_id})


def dataset_stamp(prefix: str) -> tuple[str, list[int]]:
    """A dataset's absolute prefix, and [size, mtime_ns] of its .bin and .idx: what changes when it is
    written again."""
    return _record_entry_stamp(identity(prefix))


def settled_dataset_stamp(prefix: str) -> tuple[str, list[int] | None]:
    """`dataset_stamp`, the stamp None where the dataset's files were written in the last seconds (see
    `settled`): written again with the same sizes within one tick of the clock, it would keep its
    stamp, so a record keyed by it must not hold it yet. One stat of each file: nothing is read
    between two."""
    started = time.time_ns()
    files = identity(prefix)
    key, stamp = _record_entry_stamp(files)
    return key, stamp if written_long_ago(files[1:], started) else None


def _record_entry_stamp(files: tuple[str, FileStamp, FileStamp]) -> tuple[str, list[int]]:
    prefix, *stamps = files
    return str(Path(prefix).resolve()), [value for s in stamps for value in (s.size, s.mtime_ns)]


class ValidationRecord:
    """The largest token ids of datasets already scanned, kept in a JSON file, so that a restarted
    run does not re-read a corpus of terabytes. An entry holds while the dataset's `.bin` and `.idx`
    keep their size and modification time (files written in the last seconds are not recorded, see
    `add`). An absent or unreadable file is an empty record; one that cannot be written is skipped,
    as the record only saves time.
    """

    VERSION = 1

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._added: dict = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            ok = data.get("version") == self.VERSION and isinstance(data["datasets"], dict)
            self._datasets: dict = data["datasets"] if ok else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._datasets = {}

    def lookup(self, prefix: str) -> tuple[bool, int | None]:
        """(whether the record holds the dataset as it is now, its largest token id)."""
        key, stamp = dataset_stamp(prefix)
        entry = self._datasets.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and "max_token_id" in entry:
            return True, entry["max_token_id"]
        return False, None

    def add(
        self, before: tuple[str, FileStamp, FileStamp], read_started_ns: int, max_token_id: int | None
    ) -> None:
        """Record `max_token_id`, scanned from `read_started_ns` in the dataset whose `identity` was
        `before`, where its files are settled (see `settled`): a dataset written in the last seconds
        may be written again with the same size and mtime, so it is scanned again next time."""
        if not _still_settled(before, read_started_ns):
            return
        key, stamp = _record_entry_stamp(before)
        self._datasets[key] = self._added[key] = {"stamp": stamp, "max_token_id": max_token_id}

    def save(self) -> None:
        """Write the record (atomically) if anything was added, with what other runs sharing the
        file added since it was read (under a lock, so that neither's entries are lost)."""
        if not self._added:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with exclusive(self.path.with_name(self.path.name + ".lock"), "", remove=True, wait=True):
                datasets = {**ValidationRecord(self.path)._datasets, **self._added}
                text = json.dumps({"version": self.VERSION, "datasets": datasets}, indent=1) + "\n"
                atomic.write_text(self.path, text)
        except OSError:
            pass


class IndexedReader:
    """A validated dataset read document by document: `len(reader)`, `reader.document(i)`."""

    def __init__(self, prefix: PathLike) -> None:
        from vikhr import _core

        self.prefix = str(prefix)
        _check_files(self.prefix)
        started = time.time_ns()
        stamp = identity(self.prefix)
        try:
            self._reader = _core.IndexedDatasetReader(self.prefix)
        except ValueError as e:
            raise VikhrError(f"invalid indexed dataset: {e}") from None
        self.info = _info(self.prefix, self._reader.info())
        _remember(stamp, started, self.info)

    def __len__(self) -> int:
        return len(self._reader)

    def document(self, index: int) -> list[int]:
        """The token ids of document `index` (empty for an empty document)."""
        if not 0 <= index < len(self):
            raise VikhrError(f"document {index} is outside {self.prefix}'s {len(self)} documents")
        return list(self._reader.document(index))

    def max_token_id(self) -> int | None:
        """The largest token id (None when the dataset holds no token); reads the whole `.bin`."""
        return self._reader.max_token_id()


@contextlib.contextmanager
def writing(prefixes: Sequence[PathLike]) -> Iterator[None]:
    """Hold the write lock of each dataset (`{prefix}.lock`, removed after): a second process writing
    one of them at the same time is refused in one line before it touches a file (the two would
    share scratch files and publish a mix of both)."""
    with contextlib.ExitStack() as locks:
        for prefix in sorted({str(p) for p in prefixes}):
            Path(prefix).parent.mkdir(parents=True, exist_ok=True)
            busy = (
                f"{prefix}.bin/.idx is being written by another process ({{holder}}): wait for it to "
                "end, or write another output prefix"
            )
            locks.enter_context(exclusive(Path(prefix + ".lock"), busy, remove=True))
        for folder in sorted({Path(p).parent for p in prefixes}):
            remove_abandoned_scratch(folder)
        yield


def remove_abandoned_scratch(folder: Path) -> list[Path]:
    """Remove the scratch files of datasets in `folder` whose writer was killed: those whose lock
    (`{prefix}.lock`, see `vikhr.locks.abandoned`) names a process of this host that is gone and is
    held by no one. A dataset being written (its lock held), one whose lock names another host, and
    scratch files without a lock file (a writer that takes none) are left alone."""
    from vikhr import _core

    by_prefix: dict[str, list[Path]] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        suffix = next((s for s in _core.SCRATCH_SUFFIXES if name.endswith(s)), None)
        if suffix is not None:
            by_prefix.setdefault(name.removesuffix(suffix), []).append(folder / name)
    removed = []
    for prefix, files in sorted(by_prefix.items()):
        with abandoned(folder / f"{prefix}.lock") as held:
            for file in files if held else []:
                with contextlib.suppress(OSError):
                    file.unlink()
                    removed.append(file)
    return removed


# The tokenization record of a dataset (vikhr.data.tokenization): here, as every writer of a dataset
# moves the record of the one it replaces aside.
RECORD_SUFFIX = ".tokenization.json"


def record_path(prefix: PathLike) -> Path:
    """The tokenization record of the dataset `{prefix}.bin/.idx`."""
    return Path(f"{prefix}{RECORD_SUFFIX}")


@contextlib.contextmanager
def replacing_records(prefixes: Sequence[PathLike]) -> Iterator[None]:
    """Around the writing of datasets `prefixes`: their records are moved aside first (to hidden
    scratch names); on an error, each is put back where its dataset's files are still the ones it
    described, and dropped where the dataset was replaced. The block writes the new records (or none)."""
    with contextlib.ExitStack() as stack:
        aside: list[tuple[PathLike, Path, tuple | None]] = []
        for prefix in prefixes:
            path = record_path(prefix)
            _restore_abandoned_record(prefix, path)
            if not path.is_file():
                continue
            # Removed on leaving unless put back; named apart from the new record's scratch file.
            tmp = stack.enter_context(atomic.scratch_file(path.with_name(path.name + ".replaced")))
            aside.append((prefix, tmp, _files_of(prefix)))
            os.replace(path, tmp)
        try:
            yield
        except BaseException:
            for prefix, tmp, before in aside:
                if before is not None and _files_of(prefix) == before:
                    os.replace(tmp, record_path(prefix))
            raise


def describes(record: dict, info: IndexInfo) -> bool:
    """Whether a tokenization record's counts are those of dataset `info` (not of one written before it)."""
    counts = (info.dtype, info.documents, info.tokens)
    return (record.get("dtype"), record.get("documents"), record.get("tokens")) == counts


def _restore_abandoned_record(prefix: PathLike, path: Path) -> None:
    """The record a killed writer (SIGKILL, the out-of-memory killer) had moved aside is put back
    where the dataset it describes is still there and has none; otherwise it is removed. Else it
    stayed hidden for good, and the old dataset read as one without a record."""
    for aside in atomic.stale_temporaries(path.with_name(path.name + ".replaced")):
        with contextlib.suppress(OSError, VikhrError, ValueError):
            record = json.loads(aside.read_text(encoding="utf-8"))
            if isinstance(record, dict) and not path.exists() and describes(record, inspect(str(prefix))):
                os.replace(aside, path)
        aside.unlink(missing_ok=True)


def _files_of(prefix: PathLike) -> tuple | None:
    """The identity of the files of dataset `prefix` (`identity`), None where one is missing."""
    try:
        return identity(str(prefix))
    except OSError:
        return None


class IndexedWriter:
    """Writes one dataset document by document; a context manager that finishes on success and
    removes everything written on an exception (nothing at the final names is touched then). It
    holds the dataset's write lock (see `writing`) until it finishes or aborts."""

    def __init__(self, prefix: PathLike, dtype: str) -> None:
        from vikhr import _core

        if dtype not in WRITABLE_DTYPES:
            raise VikhrError(f"cannot write a dataset of {dtype}; use one of {', '.join(WRITABLE_DTYPES)}")
        self.prefix = str(prefix)
        self.dtype = dtype
        self.documents = 0
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(writing([self.prefix]))
        try:
            self._writer = _core.IndexedDatasetWriter(self.prefix, dtype)
        except OSError as e:
            self._lock.close()
            raise VikhrError(f"cannot write {self.prefix}.bin/.idx: {e} (check the output path)") from None

    def add_document(self, ids: Sequence[int]) -> None:
        """Add one document (a sequence of ints, e.g. a list or a numpy array)."""
        try:
            self._writer.add_document(ids if isinstance(ids, list) else [int(i) for i in ids])
        except (ValueError, OverflowError) as e:
            raise VikhrError(
                f"{self.prefix}: document {self.documents}: {e} (use a wider dtype than {self.dtype})"
            ) from None
        self.documents += 1

    def finish(self) -> IndexInfo:
        """Write the index and move both files to their final names (a tokenization record of the
        dataset written there before goes: this one has none)."""
        with self._lock:
            try:
                with replacing_records([self.prefix]):
                    self._writer.finish()
            except OSError as e:
                raise VikhrError(f"cannot write {self.prefix}.bin/.idx: {e}") from None
            return inspect(self.prefix)

    def abort(self) -> None:
        """Remove everything written so far."""
        with self._lock:
            self._writer.abort()

    def __enter__(self) -> IndexedWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def write_indexed(prefix: PathLike, documents: Iterable[Sequence[int]], dtype: str) -> IndexInfo:
    """Write `documents` (sequences of ints) as `{prefix}.bin/.idx` of `dtype`."""
    with IndexedWriter(prefix, dtype) as writer:
        for doc in documents:
            writer.add_document(doc)
    return inspect(prefix)


def merge_input(name: str) -> IndexInfo:
    """`inspect` of a merge input; its error says what to do (as the Rust merge says it)."""
    try:
        return inspect(name)
    except VikhrError as e:
        message = str(e)
        if message.startswith("invalid indexed dataset"):
            message += f" (an input of the merge: copy or write {name} again, or leave it out of the merge)"
        raise VikhrError(message) from None


def merge(
    prefixes: Sequence[PathLike],
    output_prefix: PathLike,
    on_written: Callable[[IndexInfo], None] | None = None,
) -> IndexInfo:
    """Concatenate datasets of one dtype into one, byte for byte as Megatron's merge tool does;
    `on_written(info)` runs while the output's write lock is still held (to write what goes beside
    it before another writer can replace the dataset). The tokenization record of the dataset
    written there before goes (`on_written` writes the output's)."""
    from vikhr import _core

    if isinstance(prefixes, (str, os.PathLike)):  # one prefix, not a sequence of its characters
        prefixes = [prefixes]
    names = [str(p) for p in prefixes]
    if not names:
        raise VikhrError("nothing to merge (give at least one input prefix)")
    infos = {name: merge_input(name) for name in names}
    dtypes = {info.dtype for info in infos.values()}
    if len(dtypes) > 1:  # found now, not after the earlier inputs have been copied
        by_dtype = "; ".join(
            f"{dtype}: {', '.join(n for n, i in infos.items() if i.dtype == dtype)}"
            for dtype in sorted(dtypes)
        )
        raise VikhrError(
            f"the merge inputs differ in token dtype ({by_dtype}); they come from different vocabularies: "
            "pre-tokenize them all with one tokenizer"
        )
    if all(info.tokens == 0 for info in infos.values()):
        raise VikhrError(
            f"every input of the merge holds no token ({', '.join(names)}): the merged dataset would be "
            "empty, which Megatron cannot load"
        )
    require_output_prefix(output_prefix)
    if any(overlap(Path(output_prefix), Path(name)) for name in names):
        raise VikhrError(f"the merge output {output_prefix} is also an input; choose another prefix")
    try:
        with writing([output_prefix]), replacing_records([output_prefix]):
            _core.merge_datasets(names, str(output_prefix))
            info = inspect(output_prefix)
            if on_written is not None:
                on_written(info)
    except OSError as e:
        raise VikhrError(f"merge failed: {e}") from None
    return info
