"""Fault injection across stages: hostile or damaged inputs end in one line, run nothing, leave nothing."""

from __future__ import annotations

import collections
import io
import os
import pickle
import shlex
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from vikhr.errors import VikhrError
from vikhr.train.index_cache import check_index_cache


class _Payload:
    """Unpickling this writes a marker file: proof that loading the cache would have run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def plant_pickle_npy(path: Path, marker: Path) -> None:
    array = np.empty(1, dtype=object)
    array[0] = _Payload(marker)
    np.save(path, array, allow_pickle=True)
    # The payload really runs when numpy is allowed to unpickle it (the hazard being guarded).
    probe = marker.with_name("probe-" + marker.name)
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.read_text() == "ran"


def test_pickled_index_cache_is_refused_and_never_loaded(tmp_path: Path) -> None:
    cache = tmp_path / "data-cache"
    cache.mkdir()
    np.save(cache / "ok-document_index.npy", np.arange(10, dtype=np.int32))
    marker = tmp_path / "payload-ran"
    plant_pickle_npy(cache / "evil-sample_index.npy", marker)
    with pytest.raises(VikhrError, match=r"evil-sample_index\.npy holds object data.*delete"):
        check_index_cache(cache)
    assert not marker.exists()


def test_an_index_left_incomplete_by_a_killed_build_is_built_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """megatron-core writes its indices in place: a SIGTERM during the first start's build left a
    short .npy that stopped every rerun ("delete it") — requeueing never resumed. Its build's files
    are removed and built again; a file that is no .npy at all is still refused."""
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.config import load_config
    from vikhr.train.data import build_pretrain_datasets
    from vikhr.train.trainer import index_cache_dir, train_samples

    cfg = load_config(_train_config(tmp_path, _write_tokens(tmp_path / "ru")))
    cache = Path(index_cache_dir(cfg))

    def first_samples() -> list[list[int]]:
        with distributed_env(tp_size=1, seed=cfg.train.seed, device="cpu"):
            train = build_pretrain_datasets(cfg, str(cache), train_samples(cfg)).train
        return [train[i]["tokens"].tolist() for i in range(4)]

    before = first_samples()
    [path] = cache.glob("*-train-document_index.npy")
    path.write_bytes(path.read_bytes()[:-100])
    assert check_index_cache(cache) > 0
    assert "was left incomplete by a killed build: built again" in capsys.readouterr().err
    assert not list(cache.glob(path.name.split("-", 1)[0] + "-*"))  # the whole build's files
    assert first_samples() == before
    (cache / "x-shuffle_index.npy").write_bytes(b"not numpy at all")
    with pytest.raises(VikhrError, match=r"not a readable \.npy"):
        check_index_cache(cache)


@pytest.mark.parametrize(("rank", "said"), [("1", False), ("0", True)])
def test_an_incomplete_index_is_said_and_removed_by_rank_0_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, rank: str, said: bool
) -> None:
    """Every rank checks the data cache before the process group exists: each that came upon an index
    left incomplete by a killed build removed its build's files (racing the others) and said the note.
    Rank 0, which builds it again, does both; the others leave it to it, silent."""
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.config import load_config
    from vikhr.train.data import build_pretrain_datasets
    from vikhr.train.trainer import check_data, index_cache_dir, train_samples

    cfg = load_config(_train_config(tmp_path, _write_tokens(tmp_path / "ru")))
    cache = Path(index_cache_dir(cfg))
    with distributed_env(tp_size=1, seed=cfg.train.seed, device="cpu"):
        build_pretrain_datasets(cfg, str(cache), train_samples(cfg))
    [path] = cache.glob("*-train-document_index.npy")
    path.write_bytes(path.read_bytes()[:-100])
    capsys.readouterr()
    monkeypatch.setenv("RANK", rank)
    check_data(cfg)
    assert ("left incomplete by a killed build: built again" in capsys.readouterr().err) == said
    assert path.exists() != said


def test_plain_index_cache_passes(tmp_path: Path) -> None:
    assert check_index_cache(tmp_path / "absent") == 0
    np.save(tmp_path / "a.npy", np.arange(5, dtype=np.int64))
    np.save(tmp_path / "b.npy", np.zeros((3, 2), dtype=np.int32))
    assert check_index_cache(tmp_path) == 2


# --------------------------------------------------------------------------- the trainer's inputs

VOCAB = 512  # the tiny preset's vocabulary
EOD = 2


def _write_tokens(prefix: Path, n_docs: int = 40, max_id: int = VOCAB - 1, seed: int = 0) -> str:
    from vikhr.data.indexed import write_indexed

    rng = np.random.default_rng(seed)
    docs = [
        [*rng.integers(3, max_id + 1, size=int(rng.integers(20, 60))).tolist(), EOD] for _ in range(n_docs)
    ]
    docs[-1][0] = max_id  # the largest id occurs
    write_indexed(prefix, docs, "uint16")
    return str(prefix)


def _train_config(tmp_path: Path, prefix: str, **sections: dict) -> Path:
    import yaml

    cfg = {
        "model": {"preset": "tiny", "attention": "sdpa"},
        "parallel": {"tensor": 1, "device": "cpu"},
        "data": {"train": [{"prefix": prefix, "name": "ru"}], "split": "90,10,0", "seq_len": 32},
        "train": {"steps": 2, "micro_batch": 1, "global_batch": 2},
        "optim": {"warmup_steps": 0},
        "checkpoint": {"dir": str(tmp_path / "run"), "save_every": 1},
        "logging": {"eval_every": 100, "tensorboard": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str], status: int, *fragments: str) -> str:
    """Exit status 2 and exactly one non-empty stderr line holding every fragment (no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_pickled_index_cache_stops_the_trainer_before_megatron_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cache megatron-core really builds, with one index replaced by a pickle (numpy.load with
    allow_pickle=True runs a file whose bytes are a pickle, whatever its name)."""
    from vikhr.cli import main
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.config import load_config
    from vikhr.train.data import build_pretrain_datasets
    from vikhr.train.trainer import index_cache_dir, train_samples

    config = _train_config(tmp_path, _write_tokens(tmp_path / "ru"))
    cfg = load_config(config)
    with distributed_env(tp_size=1, seed=cfg.train.seed, device="cpu"):  # megatron builds on rank 0
        build_pretrain_datasets(cfg, index_cache_dir(cfg), train_samples(cfg))
    cached = sorted(Path(index_cache_dir(cfg)).glob("*GPTDataset-train-document_index.npy"))
    assert cached, "megatron-core built no index cache"
    marker = tmp_path / "payload-ran"
    cached[0].write_bytes(pickle.dumps(_Payload(marker)))
    line = _one_error_line(capsys, main(["pretrain", "--config", str(config)]), cached[0].name, "delete")
    assert "not a readable .npy" in line
    assert not marker.exists()
    assert not (tmp_path / "run" / "latest").exists()


def _flip(path: Path, offset: int, value: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))


# MMIDIDX v1 index: 9-byte magic, u64 version, u8 dtype code (offset 17), u64 sequence count,
# u64 document count, then int32 lengths (offset 34), int64 pointers, int64 document indices.
_N_DOCS = 40
_CORRUPTIONS = {
    "dtype byte": (17, b"\x01", "points at byte"),
    "sequence length": (34, (7).to_bytes(4, "little"), "points at byte"),
    "document index": (34 + _N_DOCS * 12 + 8 * 5, (99).to_bytes(8, "little"), "document_indices[5]"),
}


@pytest.mark.parametrize("corruption", sorted(_CORRUPTIONS))
def test_trainer_refuses_a_corrupt_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corruption: str
) -> None:
    from vikhr.cli import main

    prefix = _write_tokens(tmp_path / "ru", n_docs=_N_DOCS)
    offset, value, message = _CORRUPTIONS[corruption]
    _flip(Path(prefix + ".idx"), offset, value)
    config = _train_config(tmp_path, prefix)
    _one_error_line(
        capsys,
        main(["pretrain", "--config", str(config)]),
        "data.train[0] (ru)",
        message,
        "vikhr data preprocess",
    )
    assert not (tmp_path / "run").exists()


def test_trainer_refuses_token_ids_outside_the_vocabulary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vikhr.cli import main

    config = _train_config(tmp_path, _write_tokens(tmp_path / "ru", max_id=VOCAB))  # one id too many
    _one_error_line(
        capsys, main(["pretrain", "--config", str(config)]), "token id 512 is outside the vocabulary of 512"
    )
    assert not (tmp_path / "run").exists()


def test_data_check_is_recorded_once_every_dataset_passed_and_not_repeated_on_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vikhr.data.indexed import IndexedReader
    from vikhr.train.config import load_config
    from vikhr.train.trainer import check_data

    good = _write_tokens(tmp_path / "ru")
    bad = _write_tokens(tmp_path / "bad", max_id=VOCAB)
    for suffix in (".bin", ".idx"):  # written a while ago: files of the last seconds are not recorded
        os.utime(good + suffix, ns=(1_000_000_000, 1_000_000_000))
    scans = []
    real_scan = IndexedReader.max_token_id
    monkeypatch.setattr(IndexedReader, "max_token_id", lambda r: scans.append(r.prefix) or real_scan(r))
    refused = load_config(_train_config(tmp_path, good, data={"train": [{"prefix": good}, {"prefix": bad}]}))
    with pytest.raises(VikhrError, match="token id 512"):
        check_data(refused)
    assert not (tmp_path / "run").exists()  # a refused start writes nothing, the record neither
    cfg = load_config(_train_config(tmp_path, good))
    check_data(cfg)
    record = tmp_path / "run" / "data-cache" / "data-check.json"
    assert record.is_file() and scans == [good, bad, good]
    check_data(cfg)  # a restart: the unchanged .bin is not read again
    assert scans == [good, bad, good]


def test_trainer_refuses_an_empty_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vikhr.cli import main
    from vikhr.data.indexed import write_indexed

    write_indexed(tmp_path / "ru", [[], []], "uint16")
    config = _train_config(tmp_path, str(tmp_path / "ru"))
    _one_error_line(capsys, main(["pretrain", "--config", str(config)]), "ru holds no token", "data.train[0]")
    assert not (tmp_path / "run").exists()


def test_a_full_disk_while_megatron_writes_its_data_cache_is_one_line_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """megatron-core wraps the OSError in a plain Exception (under torch.distributed); the files it
    had written would stop the next run."""
    import errno

    from vikhr.train.index_cache import building_index_cache

    cache = tmp_path / "data-cache"
    cache.mkdir()
    np.save(cache / "earlier-document_index.npy", np.arange(3))
    for wrapped in (True, False):
        with (
            pytest.raises(
                VikhrError, match=r"data cache .*: no space left on the device writing .*index\.npy"
            ),
            building_index_cache(str(cache), builder=True, prefixes=[]),
        ):
            (cache / "new-document_index.npy").write_bytes(b"")
            full = OSError(errno.ENOSPC, "No space left on device", str(cache / "new-document_index.npy"))
            if wrapped:
                raise Exception("Failed to write dataset materials to the data cache directory.") from full
            raise full
        assert sorted(p.name for p in cache.glob("*.npy")) == ["earlier-document_index.npy"]
    with (
        pytest.raises(ValueError, match="unrelated"),
        building_index_cache(str(cache), builder=True, prefixes=[]),
    ):
        raise ValueError("unrelated")
    # A rank of another node that cannot find what rank 0 built: a cache on node-local disk was
    # reported as a failed write ("check the path, its permissions and the free space").
    missing = cache / "built-elsewhere-document_index.npy"
    with (
        pytest.raises(VikhrError, match=r"^reading .*rank 0 built it where this node does not see it; put "),
        building_index_cache(str(cache), builder=False, prefixes=[]),
    ):
        raise Exception("Failed to read") from FileNotFoundError(2, "No such file or directory", str(missing))


class _Noticed(io.StringIO):
    """stderr that tells a waiting thread when something was written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = threading.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)


def _while_another_run_builds(cache: Path, monkeypatch: pytest.MonkeyPatch, action):
    """Run `action()` while another run's builder writes `other-document_index.npy` into `cache`:
    (what action said on stderr, the cache's .npy files when the other run finished, action's result).
    The other run completes its file only once `action` said something (it waits) or after 30 s."""
    from vikhr.train.index_cache import building_index_cache

    holding, left = threading.Event(), []
    stderr = _Noticed()

    def other_run() -> None:
        with building_index_cache(str(cache), builder=True, prefixes=[]):
            partial = cache / "other-document_index.npy"
            np.save(partial, np.arange(1000, dtype=np.int64))
            full = partial.read_bytes()
            partial.write_bytes(full[:300])  # half written
            holding.set()
            stderr.written.wait(timeout=30)
            partial.write_bytes(full)
            left.extend(sorted(p.name for p in cache.glob("*.npy")))

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert holding.wait(timeout=60)
        monkeypatch.setattr(sys, "stderr", stderr)
        result = action()
    finally:
        thread.join()
        monkeypatch.undo()
    return stderr.getvalue(), left, result


def test_a_data_cache_check_waits_for_another_run_writing_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """megatron-core writes its index files in place: a run checking the cache while another run's
    rank 0 writes it was told a half-written file is damaged (and to delete it)."""
    cache = tmp_path / "data-cache"
    cache.mkdir()
    said, _, checked = _while_another_run_builds(cache, monkeypatch, lambda: check_index_cache(cache))
    assert "data cache" in said and "being written by another run (pid" in said, said
    assert checked == 1


def test_a_run_builds_the_data_cache_only_after_another_run_built_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's rank 0 holds the cache while it checks and builds: a second run waits."""
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.config import load_config
    from vikhr.train.data import build_pretrain_datasets
    from vikhr.train.trainer import index_cache_dir, train_samples

    cfg = load_config(_train_config(tmp_path, _write_tokens(tmp_path / "ru")))
    cache = Path(index_cache_dir(cfg))
    cache.mkdir(parents=True)

    def build():
        with distributed_env(tp_size=1, seed=cfg.train.seed, device="cpu"):
            return build_pretrain_datasets(cfg, str(cache), train_samples(cfg))

    said, left, built = _while_another_run_builds(cache, monkeypatch, build)
    assert "in use by another run (pid" in said, said
    assert left == ["other-document_index.npy"]  # nothing of this run's yet when the other finished
    assert len(built.train) == train_samples(cfg) and list(built.valid) == ["ru"]
    assert len(list(cache.glob("*GPTDataset-*.npy"))) > 0


def test_a_dataset_written_again_at_its_prefix_gets_its_index_cache_built_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """megatron-core names its cached indices by the dataset's path, not its contents: a dataset
    rewritten at the same prefix was read through the old indices (new documents never read; an
    IndexError once it shrank)."""
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.config import load_config
    from vikhr.train.data import build_pretrain_datasets
    from vikhr.train.trainer import index_cache_dir, train_samples

    prefix = tmp_path / "ru"
    cfg = load_config(_train_config(tmp_path, _write_tokens(prefix)))

    def documents_read(n_docs: int | None, seed: int = 0) -> int:
        if n_docs is not None:
            _write_tokens(prefix, n_docs=n_docs, seed=seed)
            _date_back(prefix, (seed + 1) * 10**9)  # a dataset of the last seconds is not recorded
        with distributed_env(tp_size=1, seed=cfg.train.seed, device="cpu"):
            built = build_pretrain_datasets(cfg, index_cache_dir(cfg), train_samples(cfg) * 40)
        for i in range(len(built.train)):  # every sample reads (the stale indices: IndexError)
            built.train[i]
        gpt = getattr(built.train, "datasets", [built.train])[0]
        return int(gpt.document_index.max()) + 1

    first = documents_read(40, 0)
    assert "changed since" not in capsys.readouterr().err
    assert documents_read(None) == first  # the same files: the cache is used as it is
    assert "changed since" not in capsys.readouterr().err
    grown = documents_read(120, 1)
    assert grown > 40 and f"note: {prefix} changed since" in capsys.readouterr().err
    assert documents_read(12, 2) <= 12


def _date_back(prefix: Path, stamp_ns: int) -> None:
    for suffix in (".bin", ".idx"):
        os.utime(f"{prefix}{suffix}", ns=(stamp_ns, stamp_ns))


def test_a_dataset_written_again_within_one_clock_tick_gets_its_index_cache_built_again(
    tmp_path: Path,
) -> None:
    """The index cache's record kept a dataset by its files' size and mtime: one written again in
    place with the same sizes within one tick of the file system's clock kept the indices built from
    the old one. A dataset written in the last seconds is not recorded: the next run builds again."""
    import json

    from vikhr.data.indexed import write_indexed
    from vikhr.train.index_cache import forget_changed_datasets

    prefix, cache = tmp_path / "ru", tmp_path / "data-cache"
    cache.mkdir()
    indices = cache / "h-GPTDataset-train-document_index.npy"

    def build_and_forget_changed() -> list[str]:
        """megatron-core's cached indices of the dataset (named as it names them), then a next run's
        look at them."""
        (cache / "h-GPTDataset-train-description.txt").write_text(json.dumps({"dataset_path": str(prefix)}))
        np.save(indices, np.arange(2))
        return forget_changed_datasets(cache, [str(prefix)])

    key = str(prefix.resolve())
    write_indexed(prefix, [[1, 2, 3, 4]], "uint16")
    assert build_and_forget_changed() == [key]
    stamps = {s: Path(f"{prefix}{s}").stat().st_mtime_ns for s in (".bin", ".idx")}
    write_indexed(prefix, [[5, 6, 7, 8]], "uint16")  # the same sizes
    for suffix, stamp in stamps.items():
        os.utime(f"{prefix}{suffix}", ns=(stamp, stamp))  # within the same tick
    assert build_and_forget_changed() == [] and not indices.exists()
    # Recorded without a stamp, its indices are built again without a note (nothing is known to
    # have changed); written a while ago, it is recorded, and its indices are kept from then on.
    _date_back(prefix, 10**9)
    assert build_and_forget_changed() == [] and not indices.exists()
    assert build_and_forget_changed() == [] and indices.exists()


def test_the_index_cache_stats_each_dataset_file_once_to_stamp_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`settled_dataset_stamp` stat'ed the .bin and .idx twice (before and after nothing was read):
    the stamp, settled or not, comes of one stat of each."""
    from vikhr.data.indexed import settled_dataset_stamp, write_indexed

    prefix = tmp_path / "ru"
    write_indexed(prefix, [[1, 2, 3, 4]], "uint16")
    stat, stats = os.stat, collections.Counter()

    def counted(path: os.PathLike[str] | str, *args: object, **kwargs: object) -> os.stat_result:
        stats[str(path)] += 1
        return stat(path, *args, **kwargs)

    for written_ns, settled in ((None, False), (10**9, True)):
        if written_ns is not None:
            _date_back(prefix, written_ns)
        stats.clear()
        with monkeypatch.context() as patched:
            patched.setattr(os, "stat", counted)
            key, stamp = settled_dataset_stamp(str(prefix))
        assert (stamp is not None) == settled and key == str(prefix.resolve())
        assert {stats[f"{prefix}{s}"] for s in (".bin", ".idx")} == {1}


@pytest.mark.parametrize("blend", [False, True])
def test_a_longer_stream_over_as_many_passes_starts_with_the_same_samples(
    tmp_path: Path, blend: bool
) -> None:
    """megatron-core shuffles a last pass apart when it is under 80 % of one: a run given more steps
    (or resumed with more) read other samples from step 1 though it needed no more passes."""
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.config import load_config
    from vikhr.train.data import build_pretrain_datasets
    from vikhr.train.trainer import index_cache_dir

    ru = _write_tokens(tmp_path / "ru", n_docs=80 if blend else 40)
    train = [{"prefix": ru, "name": "ru", "weight": 0.7}]
    if blend:  # the small dataset is read twice in both streams, the large one once
        train.append(
            {"prefix": _write_tokens(tmp_path / "en", n_docs=12, seed=1), "name": "en", "weight": 0.3}
        )
    cfg = load_config(_train_config(tmp_path, ru, data={"train": train}))
    with distributed_env(tp_size=1, seed=cfg.train.seed, device="cpu"):
        streams = [build_pretrain_datasets(cfg, index_cache_dir(cfg), n).train for n in (50, 85)]
    passes = [[len(d.document_index) // len(d.indices) for d in getattr(s, "datasets", [s])] for s in streams]
    assert passes[0] == passes[1] and passes[0][-1] == 2, passes
    for i in range(50):
        assert streams[0][i]["tokens"].tolist() == streams[1][i]["tokens"].tolist(), i


def test_trainer_refuses_a_run_that_would_read_its_data_a_million_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """megatron-core counts the passes one by one: train.steps=10^12 hung silently."""
    from vikhr.cli import main
    from vikhr.data.indexed import write_indexed

    write_indexed(tmp_path / "ru", [[5, 6, 7, EOD]] * 100, "uint16")
    config = _train_config(tmp_path, str(tmp_path / "ru"), train={"steps": 10**12})
    status = main(["pretrain", "--config", str(config)])
    _one_error_line(capsys, status, "data.train[0]", "passes over its train part", "more than 100,000")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 2-step run with a checkpoint after each step (its directory, its dataset prefix)."""
    from vikhr.cli import main

    tmp = tmp_path_factory.mktemp("saved")
    prefix = _write_tokens(tmp / "ru")
    _date_back(tmp / "ru", 10**9)  # its resumed runs keep the index cache (see forget_changed_datasets)
    assert main(["pretrain", "--config", str(_train_config(tmp, prefix))]) == 0
    return tmp / "run", prefix


def _copy_run(saved_run: tuple[Path, str], tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(saved_run[0], tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize(
    "damage",
    [
        "truncated optimizer state",
        "scrambled weights header",
        "missing rng state",
        "latest names a missing dir",
    ],
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    from vikhr.cli import main

    run = _copy_run(saved_run, tmp_path)
    newest = run / "step_000002"
    if damage == "truncated optimizer state":
        optim = newest / "optim_tp00.pt"
        optim.write_bytes(optim.read_bytes()[: optim.stat().st_size // 2])
    elif damage == "scrambled weights header":
        _flip(newest / "model_tp00.safetensors", 8, b"\xff\x00garbage")
    elif damage == "missing rng state":
        (newest / "rng_rank0000.pt").unlink()
    else:  # the newest complete step before the one named is step 2
        (run / "latest").write_text("step_000009\n")
        newest = run / "step_000003"
    capsys.readouterr()
    config = _train_config(tmp_path, saved_run[1], train={"steps": 3})
    assert main(["pretrain", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    # (the other warning: train.steps 2 -> 3 moves the learning rate of the resumed step)
    warnings = [line for line in err.splitlines() if line.startswith("warning: checkpoint")]
    previous = int(newest.name[-6:]) - 1
    assert len(warnings) == 1 and f"resuming from step_00000{previous} instead" in warnings[0], err[-3000:]
    assert f"resumed from {run / f'step_00000{previous}'} at step {previous}" in err
    assert (run / "latest").read_text().strip() == "step_000003"


def test_every_damaged_step_passed_over_is_named(saved_run: tuple[Path, str], tmp_path: Path) -> None:
    """Where the step `latest` names and the one before it are both damaged, the warning named only
    the first: the second was passed over without a word."""
    from vikhr.train.checkpoint import find_resumable

    run = _copy_run(saved_run, tmp_path)
    (run / "latest").write_text("step_000009\n")  # missing
    (run / "step_000002" / "rng_rank0000.pt").unlink()
    found, warning = find_resumable(run)
    assert found == run / "step_000001"
    assert warning is not None and warning.startswith(
        f"checkpoint {run / 'step_000009'} is damaged (is missing)"
    )
    assert "; step_000002 (" in warning and warning.endswith("damaged too; resuming from step_000001 instead")


def test_no_complete_checkpoint_is_one_line(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vikhr.cli import main

    run = _copy_run(saved_run, tmp_path)
    for step in (1, 2):
        (run / f"step_00000{step}" / "rng_rank0000.pt").write_bytes(b"")
    config = _train_config(tmp_path, saved_run[1], train={"steps": 3})
    _one_error_line(
        capsys,
        main(["pretrain", "--config", str(config)]),
        "no complete checkpoint",
        "checkpoint.resume=never",
    )


def test_a_bf16_state_with_fp32_parameters_does_not_move_to_the_cpu(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A GPU checkpoint whose replicated (bf16) optimizer kept some parameters in fp32 has no fp32
    copy of those to match by position: its move to the CPU is refused in one line, with the way to
    start from its weights, before the state is loaded."""
    import json

    import torch

    from vikhr.cli import main

    run = _copy_run(saved_run, tmp_path)
    step = run / "step_000002"
    meta = json.loads((step / "meta.json").read_text())
    assert (meta["device"], meta["params_dtype"], meta["distributed_optimizer"]) == ("cpu", "float32", False)
    (step / "meta.json").write_text(json.dumps({**meta, "device": "cuda", "params_dtype": "bfloat16"}))
    state = torch.load(step / "optim_tp00.pt", weights_only=True)
    copies = [[torch.zeros(1)] * (len(group["params"]) - 1) for group in state["param_groups"]]
    torch.save({"optimizer": state, "fp32_from_fp16_params": copies}, step / "optim_tp00.pt")
    capsys.readouterr()
    config = _train_config(tmp_path, saved_run[1], train={"steps": 3})
    _one_error_line(
        capsys,
        main(["pretrain", "--config", str(config)]),
        "holds fp32 parameters beside bf16 ones",
        f"model.init={step}",
    )


@pytest.mark.parametrize(
    ("key", "overrides", "fragment"),
    [
        ("model.init", ["model.overrides.num_layers=3"], "num_layers 2 (run: 3)"),
        ("kl.reference", ["model.overrides.num_layers=3", "kl.weight=0.5"], "num_layers 2 (run: 3)"),
        # The original model as the reference of its vocabulary-adapted successor: the line said to
        # set the run's shape to the reference's, which the adapted start cannot take.
        (
            "kl.reference",
            [f"model.overrides.vocab_size={VOCAB + 128}", "kl.weight=0.5"],
            "must be in the run's vocabulary, not the original model's: leave kl.reference at init",
        ),
    ],
)
def test_start_or_reference_of_another_shape_is_one_line(
    saved_run: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
    overrides: list[str],
    fragment: str,
) -> None:
    """The line named the checkpoint but not the config key that pointed at it, and came once the data
    cache was built: the refused run left data-cache/ and run.lock in a checkpoint.dir that held neither."""
    from vikhr.cli import main

    config = _train_config(tmp_path, saved_run[1])
    argv = ["pretrain", "--config", str(config), f"{key}={saved_run[0] / 'step_000001'}", *overrides]
    _one_error_line(capsys, main(argv), f"config key {key}: checkpoint ", "step_000001", fragment)
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # made for the run: it stays, as empty as it was
    _one_error_line(capsys, main(argv), f"config key {key}: checkpoint ", fragment)
    assert (tmp_path / "run").is_dir() and not any((tmp_path / "run").iterdir())


def test_a_start_of_another_shape_trains_with_model_preset_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A start whose vocabulary, RoPE theta and norm eps are no preset's was refused until each differing
    field was copied into model.overrides: model.preset init takes them from its meta.json, with
    max_seq_len still the run's to set; the run's checkpoints record that shape, its resume takes it
    from there, and --dry-run sizes it."""
    import json

    from vikhr.cli import main

    shape = {"vocab_size": 600, "rope_theta": 500000.0, "norm_eps": 1e-6}
    prefix = _write_tokens(tmp_path / "ru")
    (tmp_path / "start").mkdir()
    start = _train_config(tmp_path / "start", prefix, model={"overrides": shape}, train={"steps": 1})
    assert main(["pretrain", "--config", str(start)]) == 0
    init = tmp_path / "start" / "run"
    recorded = json.loads((init / "step_000001" / "meta.json").read_text())["model"]
    capsys.readouterr()

    config = _train_config(tmp_path, prefix, model={"preset": "init", "init": str(init)})
    argv = ["pretrain", "--config", str(config), "model.overrides.max_seq_len=512"]
    assert main([*argv, "--dry-run", "--gpus", "1"]) == 0
    assert f"model of {init}: " in capsys.readouterr().out.splitlines()[0]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "run" / "step_000002" / "meta.json").read_text())["model"]
    assert saved == {**recorded, "max_seq_len": 512}
    assert main([*argv, "train.steps=3"]) == 0  # resumed from step 2: its shape
    assert json.loads((tmp_path / "run" / "step_000003" / "meta.json").read_text())["model"] == saved
    capsys.readouterr()

    # A KL reference (model.init's weights, read on a resume) of another shape than the resumed
    # checkpoint's is refused, without offering the preset the run has already, nor a change of
    # shape a resumed run cannot make: a reference of its shape is the way out.
    tiny = saved_run_of_tiny(tmp_path)
    capsys.readouterr()
    refusal = _one_error_line(
        capsys,
        main([*argv, "train.steps=4", f"model.init={tiny}", "kl.weight=0.5"]),
        "config key model.init: checkpoint ",
        "has another model shape: vocab_size 512 (run: 600)",
        "a resumed run keeps its model shape: give model.init a checkpoint of this model",
        "(or set kl.reference to one)",
    )
    assert "model.preset" not in refusal and "model.overrides" not in refusal, refusal
    refusal = _one_error_line(
        capsys,
        main([*argv, "train.steps=4", f"kl.reference={tiny}", "kl.weight=0.5"]),
        "config key kl.reference: checkpoint ",
        "a resumed run keeps its model shape: give kl.reference a checkpoint of this model",
    )
    assert "model.preset" not in refusal and "model.overrides" not in refusal, refusal


def test_a_resume_of_model_preset_init_needs_model_init_only_as_the_kl_reference(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/scaling.md lets a run's start be moved or deleted once the run has saved a step, but with
    model.preset init every resume and --dry-run read model.init's meta.json for the shape and were
    refused ("model.init: checkpoint not found") where it was gone. Now they take the shape the
    resumed checkpoint records; a resume whose KL reference is model.init still needs it."""
    import json
    import shutil

    from vikhr.cli import main

    start = tmp_path / "start"
    shutil.copytree(saved_run[0], start)
    config = _train_config(tmp_path, saved_run[1], model={"preset": "init", "init": str(start)})
    argv = ["pretrain", "--config", str(config)]
    assert main([*argv, "train.steps=1"]) == 0
    shutil.rmtree(start)
    capsys.readouterr()

    # The model is named after the checkpoint its shape comes from: the resumed one, not the start gone.
    resumed = tmp_path / "run" / "step_000001"
    assert main([*argv, "--dry-run", "--gpus", "1"]) == 0
    assert f"model of {resumed}: " in capsys.readouterr().out.splitlines()[0]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"model of {resumed}: " in err and f"resumed from {resumed}" in err, err
    recorded = json.loads((saved_run[0] / "step_000002" / "meta.json").read_text())["model"]
    assert json.loads((tmp_path / "run" / "step_000002" / "meta.json").read_text())["model"] == recorded

    _one_error_line(
        capsys,
        main([*argv, "train.steps=3", "kl.weight=0.5"]),  # kl.reference: init
        f"config key model.init: checkpoint not found: {start}",
    )
    assert not (tmp_path / "run" / "step_000003").exists()
    reference = saved_run[0] / "step_000001"
    assert main([*argv, "train.steps=3", "kl.weight=0.5", f"kl.reference={reference}"]) == 0
    assert (tmp_path / "run" / "step_000003").is_dir()


def saved_run_of_tiny(tmp_path: Path) -> Path:
    """A one-step run of the tiny preset as it is (vocabulary 512)."""
    from vikhr.cli import main

    (tmp_path / "tiny").mkdir()
    config = _train_config(tmp_path / "tiny", _write_tokens(tmp_path / "tiny-ru"), train={"steps": 1})
    assert main(["pretrain", "--config", str(config)]) == 0
    return tmp_path / "tiny" / "run"


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            ["model.overrides.vocab_size=600"],
            [
                "config key model.overrides.vocab_size = 600 differs from the vocab_size 512 of model.init's "
                "checkpoint (",
                "whose shape model.preset = init takes, and a run changes only max_seq_len, init_std: drop",
            ],
        ),
        (["model.init=random"], ["config key model.preset = init takes the model's shape", "model.init is"]),
        (["model.init={missing}"], ["config key model.init: checkpoint not found: ", "reads the model's"]),
        (["model.preset=inti"], ["unknown preset 'inti'", "did you mean 'init'"]),
        (["data.seq_len=4096"], ["data.seq_len = 4096 exceeds the model's max_seq_len 256 (model.init's"]),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_model_preset_init_s_mistakes_are_one_line(
    saved_run: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    fragments: list[str],
    dry_run: bool,
) -> None:
    from vikhr.cli import main

    config = _train_config(tmp_path, saved_run[1], model={"preset": "init", "init": str(saved_run[0])})
    given = [o.format(missing=tmp_path / "nowhere") for o in overrides]
    status = main(["pretrain", "--config", str(config), *given, *(["--dry-run"] if dry_run else [])])
    _one_error_line(capsys, status, *fragments)
    assert not (tmp_path / "run").exists()


def test_model_preset_init_over_a_config_file_s_preset_drops_the_file_s_shape_overrides(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """model.preset=init on the command line over a config file written for a preset (its
    model.overrides.vocab_size the adapted vocabulary, as configs/mistral-7b-v0.1.yaml's) was refused
    until 'model.overrides={}' was added too: the file's overrides of its preset's shape are now
    dropped with one note naming them and the config file that sets them (not the user's command
    line), those a run may change (max_seq_len) kept, and the run takes model.init's shape."""
    import json

    from vikhr.cli import main

    overrides = {"vocab_size": 40000, "rope_theta": 500000.0, "max_seq_len": 512}
    config = _train_config(tmp_path, saved_run[1], model={"preset": "tiny", "overrides": overrides})
    argv = ["pretrain", "--config", str(config), "model.preset=init", f"model.init={saved_run[0]}"]
    capsys.readouterr()
    assert main([*argv, "train.steps=1"]) == 0
    [note] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: model.preset")]
    assert note.startswith(
        "note: model.preset=init takes the model's shape from model.init's checkpoint: the config file "
        f"{config} sets model.overrides for its preset tiny ("
    )
    assert note.endswith("), which are not applied")
    assert "vocab_size=40000" in note and "rope_theta=500000.0" in note and "max_seq_len" not in note
    recorded = json.loads((saved_run[0] / "step_000002" / "meta.json").read_text())["model"]
    saved = json.loads((tmp_path / "run" / "step_000001" / "meta.json").read_text())["model"]
    assert saved == {**recorded, "max_seq_len": 512}
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().err.splitlines() == [note]
    # The command line's own shape override is the user's: one of another value is refused, alone.
    _one_error_line(
        capsys,
        main([*argv, "model.overrides.vocab_size=600", "checkpoint.resume=never"]),
        "config key model.overrides.vocab_size = 600 differs from the vocab_size 512 of model.init's",
    )


def test_model_preset_init_s_overrides_equal_to_the_checkpoint_s_shape_change_nothing(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file of model.preset init that also names the checkpoint's own vocab_size and
    num_layers (a file kept as a record of the model) was refused as if it changed them."""
    from vikhr.cli import main
    from vikhr.train.config import load_config

    same = {"vocab_size": 512, "num_layers": 2}
    model = {"preset": "init", "init": str(saved_run[0]), "overrides": same}
    config = _train_config(tmp_path, saved_run[1], model=model)
    capsys.readouterr()
    assert main(["pretrain", "--config", str(config), "--dry-run"]) == 0
    assert capsys.readouterr().err == ""
    assert load_config(config).model_shape() == load_config(config, ["model.overrides={}"]).model_shape()


def test_a_start_of_another_shape_is_refused_with_model_preset_init_offered(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vikhr.cli import main

    config = _train_config(tmp_path, saved_run[1])
    argv = ["pretrain", "--config", str(config), f"model.init={saved_run[0]}", "model.overrides.vocab_size=6"]
    _one_error_line(
        capsys, main(argv), "vocab_size 512 (run: 6)", "take its shape with model.preset=init, or set"
    )


def test_a_config_error_under_torchrun_is_said_once_per_node(tmp_path: Path) -> None:
    """Every rank printed the same config error (8 lines on 8 GPUs) before torchrun's own report: the
    node's first process says it, the others end with the same status silently."""
    from tests.conftest import launch_torchrun

    config = _train_config(tmp_path, str(tmp_path / "missing" / "ru_text_document"))
    proc = launch_torchrun(REPO / "pretrain_vikhr.py", "--config", str(config), nproc=2, timeout=300)
    said = [line for line in proc.stderr.splitlines() if "dataset file not found" in line]
    assert proc.returncode != 0 and len(said) == 1, proc.stderr[-3000:]
    assert said[0].startswith("pretrain_vikhr.py: error: config key data.train[0].prefix: ")
    # torchrun's report names the process that said it as the first failure.
    cause = proc.stderr[proc.stderr.index("Root Cause") :]
    assert "(local_rank: 0)" in cause and "exitcode  : 2" in cause, cause


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        (
            ["pretrain_vikhr.py", "--no-such-option"],
            "pretrain_vikhr.py: error: unrecognized arguments: --no-such",
        ),
        (["-m", "vikhr", "pretrain", "--config"], "vikhr pretrain: error: argument --config: expected one"),
        (
            ["-m", "vikhr", "sft", "train", "--no-such-option"],
            "vikhr sft train: error: unrecognized arguments",
        ),
    ],
)
def test_a_usage_error_under_torchrun_is_said_once_per_node(command: list[str], fragment: str) -> None:
    """Every rank printed the same usage error (a bad option, --config without its value): the node's
    first process says it, the others end with the same status silently."""
    from tests.conftest import launch_torchrun

    proc = launch_torchrun(command[0], *command[1:], nproc=2, timeout=120)
    said = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(said) == 1 and said[0].startswith(fragment), proc.stderr[-3000:]
    cause = proc.stderr[proc.stderr.index("Root Cause") :]
    assert "(local_rank: 0)" in cause and "exitcode  : 2" in cause, cause


@pytest.mark.parametrize("entry", ["pretrain_vikhr.py", "vikhr pretrain", "vikhr sft train"])
def test_a_usage_error_is_left_to_the_node_s_first_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    """The race the torchrun test above may win by chance (torchrun ends the others once one has
    ended), made certain: a process that is not its node's first waits, silent, for torchrun."""
    import vikhr.errors
    from vikhr.cli import main as vikhr_main
    from vikhr.train.cli import main as pretrain_main

    class EndedByTorchrun(BaseException):
        pass

    def ended_by_torchrun() -> None:
        raise EndedByTorchrun

    monkeypatch.setattr(vikhr.errors, "_await_the_first_process", ended_by_torchrun)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("LOCAL_RANK", "1")
    verb = entry.split()[1:]
    with pytest.raises(EndedByTorchrun):
        if verb:
            vikhr_main([*verb, "--no-such-option"])
        else:
            pretrain_main(["--no-such-option"])
    assert not capsys.readouterr().err


@pytest.mark.parametrize("entry", ["pretrain_vikhr.py", "vikhr pretrain", "vikhr sft train"])
@pytest.mark.parametrize(("local_rank", "said"), [("0", True), ("1", False)])
def test_help_under_torchrun_is_printed_by_the_node_s_first_process(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    entry: str,
    local_rank: str,
    said: bool,
) -> None:
    """Every rank printed the same --help: the node's first prints it, the others exit 0 at once
    (help is no error: nothing to wait for)."""
    from vikhr.cli import main as vikhr_main
    from vikhr.train.cli import main as pretrain_main

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    verb = entry.split()[1:]
    with pytest.raises(SystemExit) as ended:
        if verb:
            vikhr_main([*verb, "--help"])
        else:
            pretrain_main(["--help"])
    assert ended.value.code in (0, None)
    printed = capsys.readouterr()
    assert ("--config" in printed.out) is said and not printed.err, printed


@pytest.mark.parametrize(("local_rank", "said"), [("0", True), ("1", False)])
def test_a_start_refused_alike_on_every_rank_is_said_by_the_node_s_first(
    saved_run: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    local_rank: str,
    said: bool,
) -> None:
    """A checkpoint of another shape is refused on every rank before the process group exists: the
    node's other ranks wait, silent, for torchrun to end them once the first has said it."""
    import vikhr.errors
    from vikhr.cli import main

    class EndedByTorchrun(BaseException):
        pass

    def ended_by_torchrun() -> None:
        raise EndedByTorchrun

    monkeypatch.setattr(vikhr.errors, "_await_the_first_process", ended_by_torchrun)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")  # torchrun's: it ends the others once one has ended
    monkeypatch.setenv("RANK", "3")  # a rank of another node's: the node's own order decides
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    config = _train_config(tmp_path, saved_run[1])
    argv = ["pretrain", "--config", str(config), f"model.init={saved_run[0]}", "model.overrides.num_layers=3"]
    if said:
        _one_error_line(capsys, main(argv), "config key model.init: checkpoint ", "num_layers 2 (run: 3)")
    else:
        with pytest.raises(EndedByTorchrun):
            main(argv)
        assert not capsys.readouterr().err


@pytest.mark.parametrize("where", ["checkpoint.dir", "data.cache_dir", "kl.reference"])
def test_a_place_refused_alike_on_every_rank_is_left_to_the_node_s_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """An output directory that cannot be written, or a KL reference that holds no checkpoint, was said
    by every rank of a node: the node's other processes wait, silent, for torchrun to end them."""
    import vikhr.errors
    from vikhr.cli import main

    class EndedByTorchrun(BaseException):
        pass

    def ended_by_torchrun() -> None:
        raise EndedByTorchrun

    (tmp_path / "a-file").write_text("")
    (tmp_path / "no-checkpoint").mkdir()
    refused = {
        "checkpoint.dir": f"checkpoint.dir={tmp_path / 'a-file'}",
        "data.cache_dir": f"data.cache_dir={tmp_path / 'a-file' / 'cache'}",
        "kl.reference": f"kl.reference={tmp_path / 'no-checkpoint'}",
    }[where]
    monkeypatch.setattr(vikhr.errors, "_await_the_first_process", ended_by_torchrun)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("LOCAL_RANK", "1")
    config = _train_config(tmp_path, _write_tokens(tmp_path / "ru"))
    with pytest.raises(EndedByTorchrun):
        main(["pretrain", "--config", str(config), "kl.weight=0.5", refused])
    assert not capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_error_that_may_differ_by_rank_is_said_by_each(
    saved_run: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """This machine's memory (a GPU's, on a GPU) is each rank's own to measure: its refusal is said by
    every rank that meets it."""
    from vikhr.cli import main

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    config = _train_config(tmp_path, saved_run[1])
    overrides = ["model.overrides.max_seq_len=10000000", "data.seq_len=10000000"]
    _one_error_line(capsys, main(["pretrain", "--config", str(config), *overrides]), "does not fit in memory")


def test_a_start_padded_to_another_vocab_multiple_trains(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """model.vocab_multiple other than the start's (`vikhr convert` pads to 128) at the same TP size
    was refused ("is [512, 64] there and [600, 64] in this run"): the vocabulary rows are re-padded,
    as at another TP size."""
    from safetensors import safe_open

    from vikhr.cli import main

    config = _train_config(tmp_path, saved_run[1], train={"steps": 1})
    argv = ["pretrain", "--config", str(config), f"model.init={saved_run[0] / 'step_000001'}"]
    assert main([*argv, "model.vocab_multiple=100"]) == 0
    with safe_open(str(tmp_path / "run" / "step_000001" / "model_tp00.safetensors"), "pt") as f:
        assert f.get_slice("embedding.word_embeddings.weight").get_shape() == [600, 64]
    # A resume reads the optimizer state as saved: it keeps the padding, in one line.
    capsys.readouterr()
    run = _copy_run(saved_run, tmp_path / "resumed")
    config = _train_config(tmp_path / "resumed", saved_run[1], train={"steps": 3})
    status = main(["pretrain", "--config", str(config), "model.vocab_multiple=100"])
    _one_error_line(capsys, status, "pads the vocabulary to other rows", f"model.init={run / 'step_000002'}")


def test_a_resume_with_another_vocabulary_size_names_the_vocabulary_size(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """model.overrides.vocab_size changed between resumes was blamed on model.vocab_multiple ("pads
    the vocabulary to other rows"), which the user had not touched: it is named as a shape change."""
    from tests.helpers import files_of
    from vikhr.cli import main

    run = _copy_run(saved_run, tmp_path)
    before = files_of(run)
    config = _train_config(tmp_path, saved_run[1], train={"steps": 3})
    status = main(["pretrain", "--config", str(config), "model.overrides.vocab_size=600"])
    line = _one_error_line(
        capsys,
        status,
        "config key checkpoint.resume (auto: the latest step in checkpoint.dir): checkpoint ",
        "has another model shape: vocab_size 512 (run: 600)",
    )
    assert "vocab_multiple" not in line
    assert files_of(run) == before  # refused before megatron-core indexed the longer stream


def test_gpus_without_dry_run_is_refused_not_ignored(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vikhr pretrain --gpus 8` reads as "train on 8 GPUs"; the option sizes only --dry-run's table,
    and the run trained on one process without a word."""
    from vikhr.cli import main

    config = _train_config(tmp_path, saved_run[1])
    status = main(["pretrain", "--config", str(config), "--gpus", "8"])
    # The launch it names runs from an installed vikhr too (pretrain_vikhr.py is in the checkout only).
    _one_error_line(
        capsys,
        status,
        "--gpus sizes the --dry-run's memory table only",
        "--nproc_per_node=N -m vikhr pretrain",
    )
    assert not (tmp_path / "run").exists()


def test_damaged_start_checkpoint_is_one_line(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vikhr.cli import main

    run = _copy_run(saved_run, tmp_path)
    weights = run / "step_000001" / "model_tp00.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    config = _train_config(tmp_path, saved_run[1], checkpoint={"dir": str(tmp_path / "other")})
    argv = ["pretrain", "--config", str(config), f"model.init={run / 'step_000001'}"]
    _one_error_line(capsys, main(argv), "model_tp00.safetensors is damaged", "is truncated")


@pytest.fixture
def unwritable_dir(tmp_path: Path):
    """A directory this process may not write into (root ignores permission bits: /sys refuses it)."""
    import os

    if os.geteuid() == 0:
        yield Path("/sys")
        return
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    yield locked
    locked.chmod(0o755)


def test_unwritable_checkpoint_dir_is_one_line_before_training(
    saved_run: tuple[Path, str], tmp_path: Path, unwritable_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vikhr.cli import main

    run_dir = unwritable_dir / "vikhr-run"
    config = _train_config(tmp_path, saved_run[1], checkpoint={"dir": str(run_dir)})
    _one_error_line(
        capsys, main(["pretrain", "--config", str(config)]), f"checkpoint.dir {run_dir} is not writable"
    )


@pytest.mark.parametrize("where", ["under a file", "read-only"])
def test_an_unusable_vikhr_cache_dir_is_one_line_before_the_run_writes_anything(
    tmp_path: Path,
    unwritable_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    """The ops build failed when the model was built, in a line not naming VIKHR_CACHE_DIR, and
    left checkpoint.dir holding data-cache/ and run.lock."""
    from vikhr.cli import main

    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache" if where == "under a file" else unwritable_dir / "cache"
    monkeypatch.setenv("VIKHR_CACHE_DIR", str(cache))
    config = _train_config(tmp_path, _write_tokens(tmp_path / "ru"))
    _one_error_line(
        capsys,
        main(["pretrain", "--config", str(config)]),
        f"VIKHR_CACHE_DIR {cache} ",
        "(unset VIKHR_CACHE_DIR, or set it to a writable directory)",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("module", "writer", "failure"),
    [
        ("torch", "save", "OSError"),
        # What torch.save and safetensors really raise when the disk fills up.
        (
            "torch",
            "save",
            "RuntimeError: [enforce fail at inline_container.cc:671] . unexpected pos 826176 vs 826064",
        ),
        (
            "safetensors.torch",
            "save_file",
            "SafetensorError: Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
            'message: "No space left on device" })',
        ),
    ],
)
def test_disk_full_during_a_save_is_one_line_and_leaves_no_checkpoint(
    saved_run: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    writer: str,
    failure: str,
) -> None:
    import errno
    import importlib

    from safetensors import SafetensorError

    from vikhr.cli import main

    kind, _, text = failure.partition(": ")
    error = {
        "OSError": OSError(errno.ENOSPC, "No space left on device"),
        "RuntimeError": RuntimeError(text),
        "SafetensorError": SafetensorError(text),
    }[kind]

    def full(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(importlib.import_module(module), writer, full)
    config = _train_config(tmp_path, saved_run[1], train={"steps": 1})
    status = main(["pretrain", "--config", str(config)])
    err = capsys.readouterr().err  # the run's progress lines come first: the failure is one line, the last
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert status == 2 and "Traceback" not in err and errors == [err.strip().splitlines()[-1]], err[-3000:]
    assert "cannot write checkpoint" in errors[0]
    assert ("No space left on device" if kind != "RuntimeError" else "is the disk full?") in errors[0]
    run = tmp_path / "run"
    assert not (run / "latest").exists() and not list(run.glob("step_*"))


def test_keep_last_removes_older_steps_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint.keep_last=2 after saving step 6: step 4 stays (the fallback), steps 1-2 go, and
    step 10 — left by an earlier attempt this run will overwrite — is not touched; a directory
    that cannot be removed is a warning, not the end of the run."""
    from vikhr.train import checkpoint

    for step in (1, 2, 4, 6, 10):
        (tmp_path / checkpoint.step_dir_name(step)).mkdir()
    (tmp_path / "step_000003.tmp").mkdir()  # an interrupted save: not a step, left to save() itself
    removed = checkpoint.prune_step_dirs(tmp_path, 6, keep_last=2)
    assert sorted(p.name for p in removed) == ["step_000001", "step_000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_000003.tmp",
        "step_000004",
        "step_000006",
        "step_000010",
    ]
    assert checkpoint.prune_step_dirs(tmp_path, 6, keep_last=1) == [tmp_path / "step_000004"]

    warnings: list[str] = []
    monkeypatch.setattr(checkpoint, "warn", warnings.append)
    (tmp_path / "step_000005").mkdir()
    monkeypatch.setattr(
        checkpoint.shutil, "rmtree", lambda p: (_ for _ in ()).throw(PermissionError(13, "denied"))
    )
    assert checkpoint.prune_step_dirs(tmp_path, 6, keep_last=1) == []
    assert len(warnings) == 1 and "step_000005" in warnings[0] and "keep_last" in warnings[0]


def test_a_killed_runs_temporary_directory_is_removed_by_the_next(tmp_path: Path) -> None:
    """A process killed while it filled an output directory leaves its hidden temporary directory;
    the next output_dir for that path removes it — not another host's, nor a live process's, nor a
    locked one (a writer in another PID namespace of this host), nor another output's."""
    import fcntl
    import os
    import subprocess
    import sys

    from vikhr.atomic import _host_tag, output_dir

    out = tmp_path / "converted"
    child = (
        "import os, signal, sys\n"
        "from vikhr.atomic import output_dir\n"
        "with output_dir(sys.argv[1]) as work:\n"
        "    (work / 'shard.bin').write_bytes(b'0' * 1024)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", child, str(out)], timeout=60)
    assert killed.returncode == -9
    (left,) = (p for p in tmp_path.glob(".converted.tmp-*") if p.is_dir())
    assert (left / "shard.bin").is_file() and left.with_name(left.name + ".lock").is_file()
    dead = 999_999_999  # above any pid_max: no such process
    kept = [
        tmp_path / f".converted.tmp-{dead}@0123456789@x",  # another host
        tmp_path / f".converted.tmp-{os.getpid()}@{_host_tag()}@y",  # a live process
        tmp_path / f".converted.tmp-{dead}@{_host_tag()}@z",  # locked: alive in another namespace
        tmp_path / f".converted2.tmp-{dead}@{_host_tag()}@w",  # another output's
    ]
    for directory in kept:
        directory.mkdir()
    with open(kept[2].with_name(kept[2].name + ".lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with output_dir(out) as work:
            (work / "config.json").write_text("{}", encoding="utf-8")
    assert not left.exists() and not left.with_name(left.name + ".lock").exists()
    assert all(directory.is_dir() for directory in kept)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert [p.name for p in tmp_path.glob(".converted.tmp-*.lock")] == [kept[2].name + ".lock"]


def test_checkpoint_files_and_directories_are_fsynced_before_the_rename(
    saved_run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file of the step directory, the directory itself and `latest` reach the disk before
    they are renamed into place (a power cut leaves the previous checkpoint, never a hollow one)."""
    import os

    from vikhr.cli import main
    from vikhr.train import checkpoint

    events: list[str] = []
    real_fsync, real_rename, real_replace = checkpoint._fsync, Path.rename, os.replace
    monkeypatch.setattr(
        checkpoint, "_fsync", lambda p: (events.append(f"fsync {Path(p).name}"), real_fsync(p))
    )
    monkeypatch.setattr(
        Path, "rename", lambda s, t: (events.append(f"rename {s.name}"), real_rename(s, t))[1]
    )
    monkeypatch.setattr(
        checkpoint.os,
        "replace",
        lambda s, t: (events.append(f"replace {Path(s).name}"), real_replace(s, t))[1],
    )
    config = _train_config(tmp_path, saved_run[1], train={"steps": 1})
    assert main(["pretrain", "--config", str(config)]) == 0
    step = [e for e in events if "rename step_000001.tmp" in e or "fsync" in e or "replace latest" in e]
    rename = step.index("rename step_000001.tmp")
    for name in (
        "model_tp00.safetensors",
        "optim_tp00.pt",
        "rng_rank0000.pt",
        "meta.json",
        "step_000001.tmp",
    ):
        assert step.index(f"fsync {name}") < rename, step
    assert step.index("fsync latest.tmp") < step.index("replace latest.tmp") and step[-1] == "fsync run", step


# --------------------------------------------------------------------------- every verb, bad inputs

# (argv with {dir}: a folder of bad inputs, {tok}: a good tokenizer, {ru}: a good corpus, {chats},
#  {ds}: a good dataset, {hf}: a config-only HF folder, {ro}: a place nobody may write; the
# expected message fragment; an output that must not exist afterwards, or None)
_BAD_INPUTS = [
    (  # the second archive would have replaced the first
        "eval --model {hf} --tasks bpc --mera-submission {dir}/s.zip --rsg-submission {dir}/s.zip",
        "--mera-submission and --rsg-submission are both",
        "s.zip",
    ),
    (  # failed after the first task: "OUTPUT.json.partial" is longer than a file name may be
        "eval --model {hf} --tasks bpc --output {dir}/" + "r" * 245 + ".json",
        "this filesystem leaves for it beside its temporary name",
        None,
    ),
    (  # trained, then could not name its temporary directory
        "tokenizer train --corpus {ru} --out {dir}/" + "t" * 230,
        "this filesystem leaves for it beside its temporary name",
        None,
    ),
    (  # trained on the file twice, listed twice in the manifest, without a word
        "tokenizer train --corpus {ru} --corpus {ru}@1M --out {dir}/o",
        "--corpus names",
        "o",
    ),
    (  # said "not a character budget: '2024/ru.jsonl'"
        "tokenizer train --corpus {dir}/backup@2024/ru.jsonl --out {dir}/o",
        "corpus file not found: ",
        "o",
    ),
    (  # the whole training ran, then the rename into the dangling link failed
        "tokenizer train --corpus {ru} --vocab-size 1000 --out {dir}/dangling",
        "dangling is a symbolic link to the missing",
        "dangling",
    ),
    (  # measured everything, then "cannot access dangling: File exists"
        "tokenizer compare --tokenizer {tok} --texts {ru} --out {dir}/dangling/report",
        "dangling is a symbolic link to the missing",
        "dangling",
    ),
    (  # --overwrite replaced the link by a directory and left a hidden link behind
        "tokenizer train --corpus {ru} --vocab-size 1000 --out {dir}/linked --overwrite",
        "linked is a symbolic link (to",
        None,
    ),
    ("tokenizer train --corpus {dir}/nope.jsonl --out {dir}/o", "corpus file not found", "o"),
    ("tokenizer train --corpus {dir}/folder --out {dir}/o", "not a regular file", "o"),
    (
        "tokenizer train --corpus {dir}/empty --out {dir}/o",
        "the training split of the corpora has no text",
        "o",
    ),
    ("tokenizer train --corpus {dir}/lines.jsonl --out {dir}/o", "lines.jsonl:1: not valid JSON", "o"),
    (  # a lone surrogate escape: was a traceback in compare and silently accepted by train
        "tokenizer compare --tokenizer {tok} --texts {dir}/surrogate.jsonl --out {dir}/o --split all",
        "surrogate.jsonl:2: not valid JSON (unpaired UTF-16 surrogate escape \\ud800 at column 15",
        "o",
    ),
    ("tokenizer train --corpus {ru} --out {dir}/o --vocab-size 0", "--vocab-size 0 is too small", "o"),
    (  # SentencePiece's ValueError; a byte-level base's trainer aborted the process allocating 141 GB
        "tokenizer train --corpus {ru} --out {dir}/o --vocab-size 3000000000",
        "--vocab-size 3,000,000,000 is above 4,194,304 ids",
        "o",
    ),
    (
        "tokenizer train --corpus {ru} --out {dir}/o --mode extend --base-model {tok} --new-tokens 99999999",
        "--new-tokens 99,999,999 is above",
        "o",
    ),
    (
        "tokenizer train --corpus {ru} --out {dir}/o --pad-to-multiple 0",
        "--pad-to-multiple must be from 1 (no padding) to 65536, got 0",
        "o",
    ),
    ("tokenizer train --corpus {ru} --out {dir}/o --character-coverage 0", "from 0.98 to 1 (Sen", "o"),
    (
        "tokenizer train --corpus {ru} --out {dir}/o --character-coverage nan",
        "to 1 (SentencePiece's range), got nan",
        "o",
    ),
    (  # SentencePiece's internal error after sampling, advising a smaller --vocab-size or more text
        "tokenizer train --corpus {ru} --out {dir}/o --character-coverage 0.9",
        "--character-coverage must be from 0.98 to 1 (SentencePiece's range), got 0.9",
        "o",
    ),
    ("tokenizer train --corpus {ru} --out {dir}/o --threads 0", "--threads must be from 1 to 1024", "o"),
    (  # SentencePiece's internal error after sampling, advising a smaller --vocab-size or more text
        "tokenizer train --corpus {ru} --out {dir}/o --threads 5000",
        "--threads must be from 1 to 1024 (SentencePiece's range), got 5000",
        "o",
    ),
    (  # SentencePiece has no such setting: it was ignored
        "tokenizer train --corpus {ru} --out {dir}/o --min-frequency 5",
        "--min-frequency is for byte-level BPE",
        "o",
    ),
    (  # --vocab-size was ignored
        "tokenizer train --corpus {ru} --out {dir}/o --mode extend --base-model {tok} --vocab-size 33000 "
        "--new-tokens 100",
        "takes --vocab-size (the total) or --new-tokens (how many to add), not both",
        "o",
    ),
    (  # the base was ignored, yet recorded in the manifest
        "tokenizer train --corpus {ru} --out {dir}/o --mode replace --base-model {tok}",
        "would be ignored (leave it out, or use --mode extend / prune-extend)",
        "o",
    ),
    (
        "tokenizer import-tekken {dir}/bad.json {dir}/o --verify-texts {ru} --no-verify",
        "--no-verify skips the check: give one of them",
        "o",
    ),
    (  # checked the built-in edge cases only, exit 0, with the file named as checked in the manifest
        "tokenizer import-tekken {dir}/bad.json {dir}/o --verify-texts {dir}/empty",
        "/empty holds no text to check",
        "o",
    ),
    (  # the bundled samples' field is "text": --text-key alone would be ignored
        "tokenizer import-tekken {dir}/bad.json {dir}/o --text-key content",
        "--text-key names the field of --verify-texts files: give them, or leave it out",
        "o",
    ),
    (  # the same for a file of blank texts
        "tokenizer import-tekken {dir}/bad.json {dir}/o --verify-texts {dir}/blank.jsonl",
        "blank.jsonl holds no text to check (its lines have no non-blank 'text')",
        "o",
    ),
    (  # was an OverflowError from the byte-level trainer
        "tokenizer train --corpus {ru} --out {dir}/o --min-frequency -1",
        "--min-frequency must be from 0 to 2^32-1, got -1",
        "o",
    ),
    ("tokenizer train --corpus {ru}@-3 --out {dir}/o", "character budget must be positive", "o"),
    ("tokenizer train --corpus {ru}@inf --out {dir}/o", "not a character budget: 'inf'", "o"),
    ("tokenizer train --corpus {ru} --max-chars-per-file 1e400 --out {dir}/o", "not a character budget", "o"),
    (
        "tokenizer train --corpus {ru} --out {dir}/o --mode extend --base-model {dir}/x.bin",
        "not a SentencePiece",
        "o",
    ),
    (
        "tokenizer compare --tokenizer {dir}/x.bin --texts {ru} --out {dir}/o",
        "is not a SentencePiece .model",
        "o",
    ),
    ("tokenizer compare --tokenizer {dir}/folder --texts {ru} --out {dir}/o", "holds neither tokenizer", "o"),
    ("tokenizer compare --tokenizer ={tok} --texts {ru} --out {dir}/o", "the label before '=' is empty", "o"),
    (
        "data merge --inputs {dir}/empty_ds --output-prefix {dir}/o",
        "every input of the merge holds no token",
        "o.bin",
    ),
    (
        "tokenizer compare --tokenizer {dir}/bad.json --texts {ru} --out {dir}/o",
        "not an HF tokenizer.json",
        "o",
    ),
    ("tokenizer compare --tokenizer {tok} --texts {dir}/nope --out {dir}/o", "not found", "o"),
    ("tokenizer compare --tokenizer {tok} --texts {ru} --out {dir}/o --max-chars 0", "must be positive", "o"),
    ("tokenizer compare --tokenizer {tok} --texts {ru} --out {dir}/o --max-chars inf", "not a char", "o"),
    (
        "tokenizer compare --tokenizer {tok} --texts {ru} --out {dir}/o --heldout-percent 150",
        "--heldout-percent: expected a percentage between 0 and 100",
        "o",
    ),
    (
        "tokenizer compare --tokenizer {tok} --texts {ru} --out {dir}/o --heldout-percent nan",
        "expected a percentage",
        "o",
    ),
    (
        "tokenizer compare --tokenizer {tok} --texts {ru} --out {dir}/o --heldout-percent 0",
        "(exclusive)",
        "o",
    ),
    ("tokenizer train --corpus {ru} --out {dir}/o --heldout-percent 100", "up to (not including) 100", "o"),
    (
        "tokenizer compare --tokenizer {tok} --texts a={ru} --texts a={ru} --out {dir}/o --max-chars 20k",
        "two text sets have the same name",
        "o",
    ),
    (
        "tokenizer compare --tokenizer {tok} --texts {dir}/empty --split all --out {dir}/o",
        "has no lines in split 'all' (the file has no text under the key)",
        "o",
    ),
    ("tokenizer compare --tokenizer {tok} --texts {ru} --out {ro}/o", "is not writable", None),
    (
        "adapt-vocab --model {dir}/nope --old-tokenizer {tok} --new-tokenizer {tok} --out {dir}/o",
        "not found",
        "o",
    ),
    (
        "adapt-vocab --model {dir}/empty --old-tokenizer {tok} --new-tokenizer {tok} --out {dir}/o",
        "not a direc",
        "o",
    ),
    (
        "adapt-vocab --model {hf} --old-tokenizer {tok} --new-tokenizer {tok} --out {dir}/o",
        "config.json is not val",
        "o",
    ),
    (
        "adapt-vocab --model {hf} --old-tokenizer {tok} --new-tokenizer {tok} --out {ro}/o",
        "is not writable",
        None,
    ),
    (  # said "lines.jsonl is a sentencepiece tokenizer"
        "data preprocess --input {ru} --tokenizer-type HuggingFaceTokenizer --tokenizer-model "
        "{dir}/lines.jsonl --output-prefix {dir}/o",
        "lines.jsonl is not a .json file",
        "o_text_document.bin",
    ),
    (
        "data preprocess --input {dir}/nope.jsonl {pre} --output-prefix {dir}/o",
        "nope.jsonl not found (check --input)",
        "o_text_document.bin",
    ),
    (
        "data preprocess --input {dir}/folder {pre} --output-prefix {dir}/o",
        "folder is a directory (give its files",
        "o_text_document.bin",
    ),
    (
        "data preprocess --input {dir}/empty {pre} --output-prefix {dir}/o",
        "no documents",
        "o_text_document.bin",
    ),
    (
        "data preprocess --input {dir}/lines.jsonl {pre} --output-prefix {dir}/o",
        "not valid JSON",
        "o_text_document.bin",
    ),
    (
        "data preprocess --input {ru} {pre} --output-prefix {dir}/o --workers -1",
        "--workers must be",
        "o_text_document.bin",
    ),
    ("data preprocess --input {ru} {pre} --output-prefix {ro}/o --no-progress", "is not writable", None),
    (
        "data preprocess --input {ru} {pre} --output-prefix {dir}/empty/o --no-progress",
        "is a file, not a directory",
        None,
    ),
    ("data inspect {dir}/nope", "nope.idx not found", None),
    # A folder, or the --output-prefix of preprocess / sft prepare (was: "give the dataset prefix
    # without .bin/.idx", which was given so)
    ("data inspect {dir}/folder", "folder is a directory: give the prefix of a dataset in it", None),
    ("data inspect {dir}/pre", "pre.idx not found (vikhr data preprocess writes ", None),
    ("data inspect {dir}/chat", "_text_document and ", None),
    ("data merge --inputs {dir}/folder --output-prefix {dir}/o", "a folder without datasets", "o.bin"),
    ("pretrain 'data.train=[{{prefix: {dir}/folder}}]'", "folder is a directory: give the prefix of a", None),
    ("sft show {dir}/folder", "folder is a directory: give the --output-prefix of `vikhr sft prepare`", None),
    ("data inspect {ds}.bin", "give the dataset prefix without .bin/.idx", None),
    ("data inspect {ds} --tokens -1", "--tokens must be >= 0", None),
    ("data inspect {dir}/flipped", "points at byte", None),
    (  # ids of a 40k-token tokenizer decoded with Mistral's 32k: was sentencepiece's IndexError
        "data inspect {dir}/ids40k --tokenizer-model {tok}",
        "token id 39999 is outside the vocabulary of",
        None,
    ),
    (  # the same with a tokenizer.json: was an empty string, exit 0
        "data inspect {dir}/ids70k --tokenizer-model {hfjson}",
        "token id 70000 is outside the vocabulary of",
        None,
    ),
    ("data merge --inputs {dir}/nope --output-prefix {dir}/o", "nope.idx not found", "o.bin"),
    ("data merge --inputs {ds} --output-prefix {ro}/o", "is not writable", None),
    ("pretrain --config {dir}/nope.yaml", "config file not found", None),
    ("pretrain --config {dir}/bad.yaml", "is not valid YAML", None),
    ("pretrain --config {dir}/folder", "folder is a directory (give the YAML file)", None),
    ("pretrain --config /dev/null", "config file /dev/null is not a regular file", None),  # "not found"
    (  # PyYAML keeps the last of two `train:` sections: the first's settings would be lost
        "pretrain --config {dir}/twice.yaml",
        "twice.yaml is not valid YAML: duplicate key 'train' (first at line 1) at line 3, column 1",
        None,
    ),
    ("ablate {dir}/twice.yaml", "duplicate key 'train'", None),
    ("pretrain --config {dir}/list.yaml", "top level must be a mapping", None),
    # Another verb's config: the unknown keys of the first were named ("data.eval_docs", "sources")
    ("pretrain --config {configs}/ablate-cpu.yaml", "is an ablation grid: run vikhr ablate ", None),
    (  # named no choice
        "pretrain 'data.train=[{{prefix: {ds}}}]' data.seq_len=128 checkpoint.resume=NEVER",
        "not a checkpoint directory: NEVER (give auto, never or the directory of a run",
        None,
    ),
    ("pretrain --config {configs}/sft-mix-tiny.yaml", "is an SFT data mix: run vikhr sft build ", None),
    ("ablate {configs}/tiny-cpu.yaml", "is a trainer config: run vikhr pretrain --config ", None),
    ("sft build {configs}/sft-tiny-cpu.yaml", "is a trainer config: run vikhr pretrain --config ", None),
    ("pretrain --config {dir}/x.bin", "is not UTF-8 text", None),
    ("pretrain 'data.train=[{{prefix: {ds}}}]' train.steps=0", "train.steps must be positive", None),
    ("pretrain data=5", "config key data: expected a mapping", None),
    (
        "pretrain --dry-run --gpus 0 'data.train=[{{prefix: x}}]' data.seq_len=128",
        "--gpus must be >= 1",
        None,
    ),
    (
        "pretrain --dry-run --gpus -1 'data.train=[{{prefix: x}}]' data.seq_len=128",
        "--gpus must be >= 1",
        None,
    ),
    ("pretrain --dry-run --gpu-memory-gb 0 'data.train=[{{prefix: x}}]' data.seq_len=128", "positive", None),
    (  # every layout "fits: yes" on GPUs "of inf GiB", exit 0
        "pretrain --dry-run --gpu-memory-gb inf 'data.train=[{{prefix: x}}]' data.seq_len=128",
        "--gpu-memory-gb a positive finite number, got 8 and inf",
        None,
    ),
    ("sft prepare --input {dir}/nope --tokenizer {tok} --output-prefix {dir}/o", "not found", "o_sft.json"),
    (
        "sft prepare --input {dir}/empty --tokenizer {tok} --output-prefix {dir}/o",
        "no chats found",
        "o_sft.json",
    ),
    (
        "sft prepare --input {dir}/lines.jsonl --tokenizer {tok} --output-prefix {dir}/o",
        "not valid JSON",
        "o_sft.json",
    ),
    (
        "sft prepare --input {chats} --tokenizer {dir}/x.bin --output-prefix {dir}/o",
        "not a SentencePiece",
        "o_sft.json",
    ),
    (
        "sft prepare --input {chats} --tokenizer {tok} --output-prefix {dir}/o --max-chats 0",
        "must be >= 1",
        "o_sft.json",
    ),
    ("sft prepare --input {chats} --tokenizer {tok} --output-prefix {ro}/o", "is not writable", None),
    (
        "sft prepare --input {chats} --tokenizer {tok} --output-prefix {dir}/",
        "names a directory",
        "_sft.json",
    ),
    ("sft prepare --input {chats} --tokenizer {tok} --output-prefix ''", "names a directory", None),
    ("data preprocess --input {ru} {pre} --output-prefix {dir}/", "names a directory", "_text_document.bin"),
    ("data merge --inputs {ds} --output-prefix {dir}/", "names a directory", ".bin"),
    ("data merge --inputs {ds} --output-prefix {dir}/.", "names a directory", "._text_document.bin"),
    # A prefix given with its suffix wrote m.bin.bin / m.bin_text_document.bin
    ("data merge --inputs {ds} --output-prefix {dir}/m.bin", "ends with .bin: a prefix names", "m.bin.bin"),
    (
        "data preprocess --input {ru} {pre} --output-prefix {dir}/p.idx",
        "ends with .idx: a prefix names the dataset without .bin/.idx (give ",
        "p.idx_text_document.bin",
    ),
    (
        "sft prepare --input {chats} --tokenizer {tok} --output-prefix {dir}/s.bin",
        "without .bin/.idx",
        "s.bin_sft.json",
    ),
    ("sft show {dir}/nope --tokenizer {tok}", "SFT dataset file not found", None),
    # plain JSON was appended under the .gz name, exit 0; the next run failed "Not a gzipped file"
    (
        "sft score --input {chats} --model {dir}/nope --scores {dir}/sc.jsonl.gz",
        "not .gz-compressed",
        "sc.jsonl.gz",
    ),
    ("sft train --config {dir}/bad.yaml", "is not valid YAML", None),
    ("convert hf-to-megatron {dir}/nope {dir}/o", "not found or not a directory", "o"),
    ("convert hf-to-megatron {dir}/empty {dir}/o", "not found or not a directory", "o"),
    ("convert hf-to-megatron {hf} {dir}/o", "config.json is not valid JSON", "o"),
    ("convert hf-to-megatron {hf} {dir}/o --tp -1", "must be at least 1", "o"),
    ("convert hf-to-megatron {hfcfg} {ro}/o", "is not writable", None),
    ("convert megatron-to-hf {dir}/nope {dir}/o", "no vikhr checkpoint: the path does not exist", "o"),
    ("convert megatron-to-hf {dir}/folder {dir}/o", "no vikhr checkpoint", "o"),
    # A directory of the other kind than the verb reads is named as such, with the verb it needs.
    ("convert megatron-to-hf {hfcfg} {dir}/o", "is an HF model directory, not a vikhr checkpoint", "o"),
    ("convert hf-to-megatron {dir}/ckpt {dir}/o", "convert it first (vikhr convert megatron-to-hf", "o"),
    (
        "adapt-vocab --model {dir}/ckpt --old-tokenizer {tok} --new-tokenizer {tok} --out {dir}/o",
        "is a vikhr training checkpoint, not an HF model directory: convert it first",
        "o",
    ),
    ("merge {hfcfg} {dir}/ckpt --out {dir}/o --t 0.5", "is a vikhr training checkpoint, not an HF", "o"),
    ("eval --model {dir}/nope --tasks bpc", "model directory not found", None),
    ("eval --model {dir}/empty --tasks bpc", "not a file", None),
    ("eval --model {hf} --tasks bpc", "has no model.safetensors or model.safetensors.index.json", None),
    ("eval --model {dir}/ckpt --tasks bpc", "is a vikhr training checkpoint, not an HF model", None),
    ("eval --model {hf} --tasks nonsense", "unknown task 'nonsense'", None),
    ("eval --model {hf} --tasks bpc --batch-size 0", "--batch-size", None),
    ("eval --model {hf} --tasks bpc --max-length 0", "--max-length must be positive", None),
    ("eval --model {hf} --tasks bpc --max-length -1", "--max-length must be positive", None),
    ("eval --model {hf} --tasks bpc --limit 0", "--limit must be positive", None),
    # --data-dir {dir} (a directory that exists): the rows hold without the shared data.
    ("eval --model {hf} --tasks terra --data-dir {dir} --num-fewshot -1", "--num-fewshot must be >= 0", None),
    # Where the results go is checked before the run, not after it.
    ("eval --model {hf} --tasks bpc --output {ds}.idx/r.json", "ds.idx/r.json: directory", None),
    ("eval --model {hf} --tasks rsg --data-dir {dir} --rsg-submission {ro}/r.zip", "is not writable", None),
    (
        "adapt-vocab --model {hf} --old-tokenizer {tok} --new-tokenizer {tok} --out {dir}/o "
        "--pad-to-multiple 0",
        "--pad-to-multiple must be from 1 to 65536, got 0",
        "o",
    ),
    (  # was a runaway allocation of a billion rows
        "adapt-vocab --model {hf} --old-tokenizer {tok} --new-tokenizer {tok} --out {dir}/o "
        "--pad-to-multiple 1000000000",
        "--pad-to-multiple must be from 1 to 65536, got 1000000000",
        "o",
    ),
    ("demo --workdir {dir}/demo --steps 0", "--steps must be positive", "demo"),
    ("demo --workdir {dir}/demo --seq-len 0", "--seq-len must be positive", "demo"),
    ("demo --workdir {dir}/demo --lr -1", "--lr must be a positive finite number", "demo"),
    ("demo --workdir {dir}/demo --kl-weight nan", "--kl-weight must be a finite number", "demo"),
    # was refused by the base stage's trainer config, after the tokenizer's stage had written its files
    ("demo --workdir {dir}/demo --seed -1", "--seed must be in [0, 2^32), got -1", "demo"),
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The placeholders of _BAD_INPUTS: a folder of bad inputs beside a few good ones."""
    import json
    import os

    from vikhr.assets import MISTRAL_TOKENIZER, RU_SAMPLE, RU_SEED_CHATS
    from vikhr.data.indexed import write_indexed

    d = tmp_path_factory.mktemp("bad")
    (d / "empty").write_bytes(b"")
    (d / "folder").mkdir()
    (d / "bad.json").write_text("{not json")
    (d / "bad.yaml").write_text("a: [1,\n b")
    (d / "ckpt").mkdir()
    (d / "ckpt" / "latest").write_text("step_000004\n")
    (d / "twice.yaml").write_text("train:\n  steps: 4\ntrain:\n  micro_batch: 4\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "lines.jsonl").write_text("hello\nworld\n")
    (d / "blank.jsonl").write_text('{"text": ""}\n{"text": " \\n "}\n')
    (d / "surrogate.jsonl").write_text('{"text": "пара \\ud83d\\ude00"}\n{"text": "bad \\ud800 half"}\n')
    (d / "x.bin").write_bytes(np.random.default_rng(0).integers(128, 256, 300, dtype=np.uint8).tobytes())
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text("{bad")
    (d / "dangling").symlink_to(d / "nowhere")  # an output on storage that is not mounted
    (d / "linked-target").mkdir()
    (d / "linked").symlink_to(d / "linked-target")
    (d / "hfcfg").mkdir()  # a good config.json, no weights: checks that come before any tensor is read
    from vikhr.convert.mistral import model_config_to_hf_config
    from vikhr.model.config import preset

    (d / "hfcfg" / "config.json").write_text(json.dumps(model_config_to_hf_config(preset("tiny"))))
    write_indexed(d / "ds", [[1, 2, 3], [4, 5]], "uint16")
    write_indexed(d / "pre_text_document", [[1, 2, 3]], "uint16")  # `data preprocess --output-prefix pre`
    (d / "chat_sft.json").write_text("{}")  # beside `sft prepare --output-prefix chat`'s datasets
    write_indexed(d / "flipped", [[1, 2, 3], [4, 5]], "uint16")
    write_indexed(d / "ids40k", [[1, 39999, 3]], "uint16")
    write_indexed(d / "empty_ds", [[]], "uint16")
    write_indexed(d / "ids70k", [[1, 70000, 3]], "int32")
    _flip(d / "flipped.idx", 17, b"\x01")
    return {
        "dir": str(d),
        "configs": str(REPO / "configs"),
        "tok": str(MISTRAL_TOKENIZER),
        "hfjson": str(MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.tokenizer.json"),
        "ru": str(RU_SAMPLE),
        "chats": str(RU_SEED_CHATS),
        "ds": str(d / "ds"),
        "hf": str(d / "hf"),
        "hfcfg": str(d / "hfcfg"),
        "ro": "/sys" if os.geteuid() == 0 else str(_locked(d)),
        "pre": f"--tokenizer-type SentencePieceTokenizer --tokenizer-model {MISTRAL_TOKENIZER}",
    }


def _locked(parent: Path) -> Path:
    locked = parent / "locked"
    locked.mkdir(mode=0o555)
    return locked


@pytest.mark.parametrize(("argv", "fragment", "output"), _BAD_INPUTS, ids=[a for a, _, _ in _BAD_INPUTS])
def test_bad_input_is_one_line_and_leaves_nothing(
    bad_inputs: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    argv: str,
    fragment: str,
    output: str | None,
) -> None:
    from vikhr.cli import main

    args = shlex.split(argv.format(**bad_inputs))
    try:
        status = main(args)
    except SystemExit as e:  # argparse's own usage errors
        status = int(e.code or 0)
    _one_error_line(capsys, status, fragment)
    if output is not None:
        assert not (Path(bad_inputs["dir"]) / output).exists()
        assert not list(Path(bad_inputs["dir"]).glob(f"*{Path(output).stem}*.tmp*"))


@pytest.mark.parametrize(
    ("text_max", "mask_value", "fragment"),
    [(VOCAB, 1, "token id 512 is outside the vocabulary of 512"), (VOCAB - 1, 5, "values other than 0/1")],
)
def test_sft_trainer_checks_text_and_mask_datasets_not_just_the_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text_max: int, mask_value: int, fragment: str
) -> None:
    """The metadata `vikhr sft prepare` writes claims ids below the vocabulary; the data decide."""
    import json

    from vikhr.cli import main
    from vikhr.data.indexed import write_indexed
    from vikhr.sft.layout import sft_datasets, sft_files

    prefix = tmp_path / "chats"
    text, mask = sft_datasets(prefix)
    chats = [[1, 5, 6, 7, 8, EOD] for _ in range(20)]
    chats[3][2] = text_max
    write_indexed(text, chats, "uint16")
    write_indexed(mask, [[0, 0, 1, mask_value if i == 3 else 1, 1, 1] for i in range(20)], "uint8")
    sft_files(prefix)["meta"].write_text(
        json.dumps({"max_token_id": 10, "tokenizer": "t", "template": "mistral"})
    )
    config = _train_config(tmp_path, str(prefix), data={"kind": "sft"})
    _one_error_line(capsys, main(["sft", "train", "--config", str(config)]), "data.train[0] (ru)", fragment)
    assert not (tmp_path / "run").exists()


def test_the_index_cache_a_run_refused_after_building_it_built_is_what_the_next_run_reads(
    saved_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run refused after megatron-core built its indices (here a resume whose checkpoint was saved with
    another optim.distributed) leaves them: they are named by the dataset's path and the run's settings
    (samples, split, window, seed, EOD), dropped once the dataset changes, and whole (a build killed
    mid-write is removed at the next start), so they are entries of the cache, which the next run with
    those settings reads as they are, with the samples a fresh build gives."""
    from vikhr.cli import main
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.config import load_config
    from vikhr.train.data import build_pretrain_datasets
    from vikhr.train.trainer import train_samples

    run = _copy_run(saved_run, tmp_path)
    cache = run / "data-cache"
    earlier = {path.name for path in cache.iterdir()}  # the saved run's, for its 2 steps

    def indices() -> dict[str, tuple[int, int]]:
        """(inode, mtime) of each index built since the saved run: a rebuild writes them again."""
        return {
            path.name: (path.stat().st_ino, path.stat().st_mtime_ns)
            for path in cache.glob("*.npy")
            if path.name not in earlier
        }

    # 30 steps need more passes over the data than the saved run's stream holds: built anew.
    longer = {"steps": 30}
    refused = _train_config(tmp_path, saved_run[1], train=longer, optim={"distributed": True})
    status = main(["pretrain", "--config", str(refused)])
    _one_error_line(capsys, status, "saved with optim.distributed = false; resume with the same setting")
    built = indices()
    assert any(name.endswith("-document_index.npy") for name in built), sorted(built)
    config = _train_config(tmp_path, saved_run[1], train=longer, checkpoint={"save_every": 100})
    assert main(["pretrain", "--config", str(config)]) == 0
    assert "built again" not in capsys.readouterr().err
    assert indices() == built and (run / "latest").read_text().strip() == "step_000030"
    cfg = load_config(config)
    n_train = train_samples(cfg, step=2, consumed=4)  # resumed at the saved run's last step
    with distributed_env(tp_size=1, seed=cfg.train.seed, device="cpu"):
        read = build_pretrain_datasets(cfg, str(cache), n_train).train
        fresh = build_pretrain_datasets(cfg, str(tmp_path / "fresh-cache"), n_train).train
    assert indices() == built
    assert all(read[i]["tokens"].tolist() == fresh[i]["tokens"].tolist() for i in range(n_train))
