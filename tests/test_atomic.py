"""Replacing an output directory (--overwrite) removes it whole: never the directory one works in,
one above it, or one holding an input. Checked on the helpers and through the commands that take
--overwrite, each refusing before any work and leaving every file in place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import tiny_hf_model
from vikhr.ablate.runner import GRID_STATE, _check_is_grid_work
from vikhr.assets import MISTRAL_TOKENIZER, RU_SAMPLE
from vikhr.atomic import output_dir, write_text
from vikhr.cli import main as cli_main
from vikhr.errors import VikhrError, overlap, refuse_to_replace, require_output_dir


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_the_working_directory_and_those_above_it_are_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (inner / "notes.txt").write_text("keep")
    monkeypatch.chdir(inner)
    for target in (Path("."), Path(".."), inner, tmp_path):
        with pytest.raises(VikhrError, match="current directory, one above it"):
            refuse_to_replace(target)
        with pytest.raises(VikhrError, match="current directory"), output_dir(target) as work:
            (work / "x").write_text("new")
    with pytest.raises(VikhrError, match="home directory"):
        refuse_to_replace(Path.home())
    assert (inner / "notes.txt").read_text() == "keep"
    assert not list(tmp_path.rglob("*tmp*"))
    # A sibling is an ordinary output: replaced.
    sibling = tmp_path / "a" / "out"
    sibling.mkdir()
    (sibling / "old").write_text("old")
    with output_dir(sibling) as work:
        (work / "new").write_text("new")
    assert _files(sibling) == {"new"}


def test_overlap_tells_how_an_output_touches_an_input(tmp_path: Path) -> None:
    """Commands compared an output with their inputs each their own way (resolved paths equal, a
    resolved path under another, os.path.samefile): one path given through a link, a relative path
    or a hard link was the input to one command and not to another. Now one rule serves them all."""
    (tmp_path / "tok").mkdir()
    chats = tmp_path / "chats.jsonl"
    chats.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(chats)
    os.link(chats, tmp_path / "hard.jsonl")
    for same in (tmp_path / "link.jsonl", tmp_path / "hard.jsonl", tmp_path / "tok" / ".." / "chats.jsonl"):
        assert overlap(same, chats) == "is" and overlap(chats, same) == "is"
    assert overlap(tmp_path / "new.jsonl", tmp_path / "new.jsonl") == "is"  # not written yet
    assert overlap(tmp_path / "tok" / "mix.jsonl", tmp_path / "tok") is None  # a directory named only
    assert overlap(tmp_path / "tok" / "mix.jsonl", tmp_path / "tok", input_whole=True) == "in"
    assert overlap(tmp_path, chats) is None
    assert overlap(tmp_path, chats, output_whole=True) == "holds"
    assert overlap(tmp_path / "other.jsonl", chats, output_whole=True, input_whole=True) is None


def test_an_output_holding_an_input_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    corpus = data / "corpus.jsonl"
    corpus.write_text("{}\n")
    for out in (data, tmp_path):
        with pytest.raises(VikhrError, match=r"holds the input .*corpus.jsonl: replacing it would delete"):
            require_output_dir(out, overwrite=True, inputs=[corpus])
    # Without --overwrite an existing directory is refused as before; a new one is fine.
    with pytest.raises(VikhrError, match=r"exists .*--overwrite"):
        require_output_dir(data, overwrite=False, inputs=[corpus])
    assert require_output_dir(tmp_path / "new", overwrite=True, inputs=[corpus]) == tmp_path / "new"


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_commands_refuse_to_replace_their_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    a, b = models / "a", models / "b"
    tiny_hf_model(a, 32000, seed=0)
    tiny_hf_model(b, 32000, seed=1)
    data = tmp_path / "data"
    data.mkdir()
    corpus = data / "ru.jsonl.gz"
    shutil.copy(RU_SAMPLE, corpus)
    tokenizer = data / "tokenizer.model"
    shutil.copy(MISTRAL_TOKENIZER, tokenizer)
    before = _files(tmp_path)
    capsys.readouterr()  # the models' saving progress bars

    _refused(
        ["merge", str(a), str(b), "--out", str(models), "--t", "0.5", "--overwrite"],
        capsys,
        "holds the input",
    )
    _refused(
        [
            "tokenizer",
            "train",
            "--corpus",
            str(corpus),
            "--out",
            str(data),
            "--vocab-size",
            "400",
            "--overwrite",
        ],
        capsys,
        "holds the input",
    )
    argv = ["adapt-vocab", "--model", str(a), "--old-tokenizer", str(MISTRAL_TOKENIZER)]
    _refused(
        [*argv, "--new-tokenizer", str(tokenizer), "--out", str(data), "--overwrite"],
        capsys,
        "holds the input",
    )
    _refused(["convert", "hf-to-megatron", str(a), str(models), "--overwrite"], capsys, "holds the input")
    monkeypatch.chdir(data)
    _refused(
        ["tokenizer", "train", "--corpus", "ru.jsonl.gz", "--out", ".", "--vocab-size", "400", "--overwrite"],
        capsys,
        "is the current directory",
    )
    _refused(["demo", "--workdir", "..", "--overwrite"], capsys, "is the current directory")
    assert _files(tmp_path) == before


def test_a_fresh_ablation_removes_only_a_grids_work_directory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for name in (GRID_STATE, "corpora", "runs"):
        (work / name).mkdir()
    _check_is_grid_work(work)  # an earlier grid's (or a killed one's): removed
    (work / "thesis.tex").write_text("mine")
    with pytest.raises(VikhrError, match=r"holds thesis.tex, not written by an ablation"):
        _check_is_grid_work(work)


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "r.json").mkdir()
    with pytest.raises(OSError):
        write_text(tmp_path / "r.json", "{}")
    assert _files(tmp_path) == {"r.json"}


@pytest.mark.parametrize("exchange", [True, False], ids=["exchanged", "renamed-aside"])
def test_an_interrupt_while_the_old_output_is_deleted_leaves_the_new_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    """--overwrite of a large output: the old one is swapped out (or, where the file system cannot
    exchange two names, renamed aside) and deleted after the new one is in place (it was deleted
    first, so a Ctrl-C mid-deletion left part of it under the final name and removed the finished
    new one); what is left aside is a temporary a later run removes."""
    import vikhr.atomic as atomic

    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "model"
    out.mkdir()
    for name in ("config.json", "model-1.safetensors", "model-2.safetensors", "index.json"):
        (out / name).write_text("old")
    real_rmtree = shutil.rmtree

    def interrupted_rmtree(path: Path, ignore_errors: bool = False) -> None:
        victim = sorted(Path(path).iterdir())[0] if Path(path).is_dir() else None
        if victim is not None:
            victim.unlink()  # part of the directory is gone when the interrupt comes
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt), output_dir(out) as work:
        (work / "config.json").write_text("new")
        (work / "model.safetensors").write_text("new")
    monkeypatch.setattr(atomic.shutil, "rmtree", real_rmtree)
    new = {"config.json": "new", "model.safetensors": "new"}
    assert {p.name: p.read_text() for p in out.iterdir()} == new
    (aside,) = [p for p in tmp_path.glob(".model.tmp-*") if p.is_dir()]
    assert {p.name for p in aside.iterdir()} < {
        "config.json",
        "model-1.safetensors",
        "model-2.safetensors",
        "index.json",
    }
    pid = aside.name.removeprefix(".model.tmp-").partition("@")[0]
    dead = aside.with_name(aside.name.replace(f"tmp-{pid}@", "tmp-999999999@"))  # as if this run was killed
    aside.rename(dead)
    assert atomic.remove_stale_temporaries(out) == [dead] and not dead.exists()


def test_a_reader_never_finds_an_output_missing_while_overwrite_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--overwrite renamed the old output aside and then the new one in: a reader (a serving process
    loading the model, another job's eval) between the two renames found no directory at all. The
    two are exchanged in one step; every rename this leaves is checked to leave the output there."""
    import os

    import vikhr.atomic as atomic

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("old")
    missing = []
    real_replace, real_rename = os.replace, os.rename

    def watched(real):
        def rename(src, dst):
            real(src, dst)
            missing.extend([] if out.is_dir() else [(src, dst)])

        return rename

    monkeypatch.setattr(atomic.os, "replace", watched(real_replace))
    monkeypatch.setattr(atomic.os, "rename", watched(real_rename))
    with output_dir(out) as work:
        (work / "config.json").write_text("new")
    assert missing == [] and (out / "config.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the old one is deleted


def test_an_output_another_run_wrote_meanwhile_is_kept(tmp_path: Path) -> None:
    """Two runs writing one new output (no --overwrite: it did not exist) both reported success, the
    later silently replacing the earlier. The later is refused in one line; the earlier's stays."""
    from vikhr.atomic import WrittenMeanwhile

    out = tmp_path / "tok"
    refused = pytest.raises(WrittenMeanwhile, match=r"tok was written by another run while this one worked")
    with refused, output_dir(out) as work:
        (work / "mine.txt").write_text("late")
        with output_dir(out) as other:  # the other run, which finishes first
            (other / "theirs.txt").write_text("early")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # the refused run's work is removed
    # An output that existed when the run began (the caller checked --overwrite) is replaced.
    with output_dir(out) as work:
        (work / "new.txt").write_text("replaced")
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_scratch_files_a_killed_run_left_are_removed_by_the_next(tmp_path: Path) -> None:
    """Files written under a temporary name (a report, `sft build`'s candidate chats: GBs) carried
    only the pid: a kill left them beside the output for good. Now named like the temporary
    directories, they are removed by the next run writing that output, unless their process is
    alive, on another host, or holds the file's lock (a writer in another container of this host)."""
    import fcntl
    import os

    from vikhr.atomic import _host_tag, scratch_file, temporary_paths

    target = tmp_path / "mix.jsonl"
    with scratch_file(target) as mine:
        assert mine.parent == tmp_path and mine.name.startswith(".mix.jsonl.tmp-") and mine.suffix == ".jsonl"
        assert mine.is_file()
    assert not mine.exists()
    host = _host_tag()
    dead = tmp_path / f".mix.jsonl.tmp-999999999@{host}@.jsonl"
    alive = tmp_path / f".mix.jsonl.tmp-{os.getppid()}@{host}@.jsonl"
    elsewhere = tmp_path / ".mix.jsonl.tmp-999999999@0123456789@.jsonl"
    locked = tmp_path / f".mix.jsonl.tmp-999999998@{host}@.jsonl"
    for left in (dead, alive, elsewhere, locked):
        left.write_text("partial")
    with open(locked, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with temporary_paths([target]) as (tmp,):
            tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, alive.name, elsewhere.name, locked.name]
    )
