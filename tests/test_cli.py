"""The `vikhr` command line: help, one-line errors, doctor, a light start-up."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from vikhr.cli import COMMAND_MODULES, build_parser


def run_vikhr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vikhr", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command() -> None:
    proc = run_vikhr("--help")
    assert proc.returncode == 0
    sub = build_parser()._subparsers._group_actions[0]  # the COMMAND sub-parsers
    assert len(sub.choices) >= len(COMMAND_MODULES)
    for name in sub.choices:
        assert name in proc.stdout


def test_every_verb_describes_itself_and_shows_its_defaults() -> None:
    """Each verb's --help has a description (its one-line help when it has no other) and ends an
    option's help with the default, unless there is none or the help already names it."""

    def verbs(parser, path=()):
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, verb in action.choices.items():
                    yield (*path, name), verb
                    yield from verbs(verb, (*path, name))

    found = dict(verbs(build_parser()))
    assert ("data", "merge") in found and ("sft", "score") in found
    for path, verb in found.items():
        assert verb.description, " ".join(path)
    text = " ".join(found[("sft", "score")].format_help().split())
    assert "--batch-size BATCH_SIZE default: 16 --" in text  # no help string: the default alone
    assert "tokens per chat (longer ones are cut) (default: 2048)" in text
    assert "--no-progress no progress bar --" not in text and "default: False" not in text
    text = " ".join(found[("data", "merge")].format_help().split())
    assert text.count("default") == 0  # required options and flags: nothing to show
    assert "--gpus GPUS cluster size for --dry-run (default 8) --" in " ".join(
        found[("pretrain",)].format_help().split()
    )  # the help names its default: not repeated
    for path, verb in found.items():  # a repeatable option starts empty, a flag says what it does
        assert "(default: )" not in verb.format_help(), " ".join(path)
    text = " ".join(found[("tokenizer", "train")].format_help().split())
    assert "--no-split-by-whitespace" in text and "default: True" not in text


def test_every_argument_without_a_default_to_show_says_what_it_is() -> None:
    """A required option or a positional argument with no help was a bare name in --help
    (`sft prepare --output-prefix`, `data preprocess --tokenizer-type`, import-tekken's paths)."""
    from vikhr.cli import _has_default_to_show

    def bare(parser, path=()):
        for action in parser._actions:
            if isinstance(action.choices, dict):  # the sub-commands
                for name, verb in action.choices.items():
                    yield from bare(verb, (*path, name))
            elif action.help is None and not _has_default_to_show(action):
                yield " ".join((*path, action.option_strings[0] if action.option_strings else action.dest))

    assert list(bare(build_parser())) == []


def test_registering_the_verbs_imports_no_heavy_library() -> None:
    code = (
        "import sys, vikhr.cli; vikhr.cli.build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'torch', 'megatron', 'transformers', 'matplotlib'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"imported while registering the verbs: {proc.stdout}"


def test_data_preprocess_help_stays_small() -> None:
    # Children of this process so far: measure the one run below by its own peak RSS.
    code = (
        "import resource, subprocess, sys; "
        "subprocess.run([sys.executable, '-m', 'vikhr', 'data', 'preprocess', '--help'], check=True, "
        "stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak_mib = int(proc.stdout.strip()) / 1024  # ru_maxrss is in KiB on Linux
    assert peak_mib < 200, f"vikhr data preprocess --help peaked at {peak_mib:.0f} MiB"


def test_unknown_command_is_one_line_and_nonzero() -> None:
    proc = run_vikhr("frobnicate")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "frobnicate" in lines[0] and "vikhr --help" in lines[0]


def test_error_line_is_one_write_so_ranks_sharing_a_pipe_do_not_interleave(monkeypatch) -> None:
    from vikhr.errors import print_error_line

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            self.writes.append("<flush>")

    recorder = Recorder()
    monkeypatch.setattr(sys, "stderr", recorder)
    print_error_line("vikhr x: error: what, where, how to fix")
    assert recorder.writes == ["vikhr x: error: what, where, how to fix\n", "<flush>"]


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("llama", "LLaMA"), ("Mera", "MERA"), ("MERA_", "MERA"), ("Terra", "terra")],
)
def test_a_suggestion_sets_case_aside_on_both_sides_and_keeps_the_options_spelling(
    typed: str, meant: str
) -> None:
    """Only the typed name was lowercased: an option spelt with capitals was never suggested."""
    from vikhr.errors import close_match

    assert close_match(typed, ["LLaMA", "MERA", "terra"]) == meant


def test_missing_file_is_one_line_and_nonzero(tmp_path) -> None:
    missing = tmp_path / "nope.jsonl.gz"
    proc = run_vikhr("demo", "--ru-corpus", str(missing), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(missing) in lines[0] and "not found" in lines[0]
    assert not (tmp_path / "w").exists()


def test_doctor_reports_versions_devices_and_native_parts() -> None:
    proc = run_vikhr("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for key in (
        "torch",
        "megatron-core",
        "transformers",
        "sentencepiece",
        "tokenizers",
        "CUDA available",
        "GPU",
        "Transformer Engine",
        "flash-attn",
    ):
        assert key in out, key
    assert "vikhr._core (Rust)" in out and "loads" in out
    assert "csrc op logsumexp_rows" in out and "compiled for cpu" in out
    assert re.search(r"^vikhr modules +all \d+ import$", out, re.M), out
    # An installed vikhr has no configs/ beside the user: doctor names where its example configs are.
    configs = re.search(r"^example configs +(\S+) ", out, re.M)
    assert configs and (Path(configs[1]) / "tiny-cpu.yaml").is_file(), out


def _doctor_without(package: str, tmp_path: Path) -> str:
    """`vikhr doctor --no-build`'s report (it must exit 1) in an environment put together by hand
    without `package`: a stand-in that fails as a missing package does, ahead of the real one."""
    (tmp_path / f"{package}.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{package}'\", name='{package}')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    command = [sys.executable, "-m", "vikhr", "doctor", "--no-build"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stdout


def test_doctor_names_a_missing_package_and_the_modules_it_stops(tmp_path: Path) -> None:
    out = _doctor_without("pydantic", tmp_path)
    line = next(x for x in out.splitlines() if x.startswith("missing package pydantic"))
    assert "FAILED" in line and "vikhr." in line and "cannot be imported" in line
    # The rest of the report is still there: doctor reports, it does not stop at the first problem.
    assert "vikhr._core (Rust)" in out and "csrc ops" in out
    assert "vikhr modules" not in out


def test_doctor_names_a_dependency_that_only_a_function_imports(tmp_path: Path) -> None:
    """sentencepiece (like zstandard, matplotlib, pyarrow) is imported where it is used: every vikhr
    module imported without it, and doctor said all was well (exit 0)."""
    out = _doctor_without("sentencepiece", tmp_path)
    line = next(x for x in out.splitlines() if x.startswith("missing package sentencepiece"))
    assert "FAILED: vikhr needs it (pip install sentencepiece)" in line


def test_doctor_names_a_module_an_installed_package_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A megatron-core release without a module vikhr imports was reported as "missing package
    megatron", beside the megatron-core row giving its installed version."""
    import importlib

    from vikhr.doctor import module_import_problems

    real = importlib.import_module
    gone = "megatron.core.process_groups_config"

    def import_module(name: str, package: str | None = None) -> Any:
        if name == "vikhr.model.attention":
            raise ModuleNotFoundError(f"No module named '{gone}'", name=gone)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    _, problems = module_import_problems()
    assert problems == {f"missing module {gone}": ["vikhr.model.attention"]}


def test_doctor_checks_every_dependency_of_pyproject() -> None:
    import tomllib

    from vikhr.doctor import REQUIRED_IMPORTS

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    assert names == set(REQUIRED_IMPORTS)


def test_doctor_without_build_reports_what_the_build_cache_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--no-build said "not built" even where the ops were built (device_check.sh's log)."""
    from vikhr.doctor import _ops_rows
    from vikhr.ops.build import ops_build_dir

    monkeypatch.setenv("VIKHR_CACHE_DIR", str(tmp_path))
    [(_, status)] = _ops_rows(cuda=False, build=False)
    assert status == "not built yet (--no-build skips the first build)"
    built = ops_build_dir(False)
    built.mkdir(parents=True)
    (built / "vikhr_ops_cpu.so").write_bytes(b"")
    [(_, status)] = _ops_rows(cuda=False, build=False)
    assert status == f"built in {built}, not loaded (--no-build)"


def test_doctor_names_an_unusable_vikhr_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row said only "[Errno 20] Not a directory: '.../ops/torch…'", without VIKHR_CACHE_DIR."""
    from vikhr.doctor import _ops_rows

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("VIKHR_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    [(_, status)] = _ops_rows(cuda=False, build=True)
    assert status == (
        f"FAILED to build/load: VIKHR_CACHE_DIR {tmp_path}/a-file/cache cannot be created: {tmp_path}/a-file "
        "is a file (unset VIKHR_CACHE_DIR, or set it to a writable directory)"
    )


def test_doctor_reports_a_megatron_core_that_fails_on_import(tmp_path: Path) -> None:
    """A megatron-core whose import raises other than ImportError (one built against another torch)
    ended doctor in a traceback before its first row about vikhr's modules."""
    core = tmp_path / "megatron" / "core"
    core.mkdir(parents=True)
    (tmp_path / "megatron" / "__init__.py").write_text("")
    (core / "__init__.py").write_text(
        "raise AttributeError(\"module 'torch' has no attribute 'float8_e4m3fn'\")\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    command = [sys.executable, "-m", "vikhr", "doctor", "--no-build"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("AttributeError: module 'torch' has"))
    assert "FAILED: " in line and "megatron.core" in line and line.endswith("cannot be imported")
    assert re.search(r"^Transformer Engine +absent: ", proc.stdout, re.M)


@pytest.mark.parametrize("installed", ["checkout", "wheel"])
def test_doctor_says_how_to_build_a_missing_rust_extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: str
) -> None:
    """Without vikhr._core (a checkout never built, or one built for another Python) the row gave
    only Python's "cannot import name '_core'", not how to get it; an installed wheel's user was then
    told to run `make setup` in a repository they do not have: they reinstall, or build from source."""
    import vikhr
    from vikhr import doctor

    monkeypatch.delattr(vikhr, "_core", raising=False)
    monkeypatch.setitem(sys.modules, "vikhr._core", None)  # as an extension that is not there
    site_packages = tmp_path / "lib" / "python3" / "site-packages"
    if installed == "wheel":  # a package directory with no pyproject.toml or Rust crate beside it
        (site_packages / "vikhr").mkdir(parents=True)
        monkeypatch.setattr(doctor, "PACKAGE_DIR", site_packages / "vikhr", raising=False)
    rows = dict(doctor.collect(build=False))
    status = rows["vikhr._core (Rust)"]
    assert "(--no-build" in rows["csrc ops"]  # the row's text does not turn --no-build into a build
    assert status.startswith("FAILED to import: ")
    if installed == "checkout":
        assert status.endswith(
            f"(build it: `make setup`, or `pip install -e .` in {REPO}, with a Rust toolchain)"
        )
    else:
        python = f"Python {sys.version_info.major}.{sys.version_info.minor}"
        assert status.endswith(
            f"(vikhr in {site_packages / 'vikhr'} is an installed wheel without it for this platform and "
            f"{python}: reinstall it (pip install --force-reinstall --no-deps vikhr), or build it from "
            "source with a Rust toolchain (pip install --no-binary vikhr vikhr runs maturin))"
        )
        assert "make setup" not in status and "\n" not in status


def test_doctor_says_which_attention_runs_where_te_or_flash_attn_is_installed_but_unused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a machine without CUDA, an installed Transformer Engine was reported as "present: TE layer
    spec" (the CPU runs vikhr's SDPA spec), and flash-attn as "present" wherever it was installed,
    though only TE's attention calls it."""
    import torch

    import vikhr.model.gpt
    from vikhr import doctor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(vikhr.model.gpt, "have_transformer_engine", lambda: True)
    monkeypatch.setattr(doctor, "_present", lambda module: module == "flash_attn")
    rows = dict(doctor.collect(build=False))
    assert rows["Transformer Engine"] == (
        "present, unused on the CPU: vikhr's SDPA layer spec (megatron-core local layers)"
    )
    assert rows["flash-attn"] == "present, unused without TE on a GPU: torch SDPA (math kernel on CPU)"
    gpu_without_te = dict(doctor._attention_rows(cuda=True, te=False, flash_attn=True))
    assert (
        gpu_without_te["flash-attn"]
        == "present, unused without TE on a GPU: torch SDPA (flash kernels on GPU)"
    )
    assert doctor._attention_rows(cuda=True, te=True, flash_attn=True) == [
        ("Transformer Engine", "present: TE layer spec"),
        ("flash-attn", "present: TE's attention can use it"),
    ]


def test_an_os_error_mid_run_is_one_line(monkeypatch, capsys) -> None:
    """An OSError a verb did not foresee (a full disk, a place that turned read-only) ends the run
    with one line naming the path, exit status 2, not a traceback."""
    import errno

    from vikhr import cli
    from vikhr.eval import compare

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/compare.md")

    monkeypatch.setattr(compare, "compare", full_disk)
    assert cli.main(["eval", "compare", "x.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "vikhr eval compare: error: no space left on the device writing /data/out/compare.md "
        "(free some space, or write elsewhere)"
    ]

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/data/out/compare.md")

    monkeypatch.setattr(compare, "compare", read_only)
    assert cli.main(["eval", "compare", "x.json"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "vikhr eval compare: error: cannot access /data/out/compare.md: Read-only file system "
        "(check the path, its permissions and the free space)"
    ]


def test_the_torchrun_entry_reports_an_os_error_in_one_line(monkeypatch, capsys) -> None:
    """pretrain_vikhr.py ends a run the machine refused as `vikhr pretrain` does."""
    import errno
    import runpy

    import vikhr.train.cli

    def refused(*args, **kwargs):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", "/cache/afile/ops")

    monkeypatch.setattr(vikhr.train.cli, "main", refused)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "pretrain_vikhr.py"), run_name="__main__")
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "pretrain_vikhr.py: error: cannot access /cache/afile/ops: Not a directory "
        "(check the path, its permissions and the free space)"
    ]


def test_the_torchrun_entry_ends_a_ctrl_c_in_one_line(monkeypatch, capsys) -> None:
    """As `vikhr pretrain`: exit 130 and one line (each rank printed a traceback)."""
    import runpy

    import vikhr.train.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vikhr.train.cli, "main", interrupted)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "pretrain_vikhr.py"), run_name="__main__")
    assert e.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["pretrain_vikhr.py: interrupted"]


@pytest.mark.parametrize(
    "entry",
    [
        "from vikhr.cli import run\nsys.exit(run(['tokenizer', '--help']))\n",  # the `vikhr` script
        # `python -m vikhr.cli` (it ran `main`, without the guard)
        "import runpy\nsys.argv = ['vikhr', 'tokenizer', '--help']\n"
        "runpy.run_module('vikhr.cli', run_name='__main__')\n",
    ],
    ids=["vikhr", "python-m-vikhr.cli"],
)
def test_a_ctrl_c_after_the_verb_ended_changes_nothing(entry: str) -> None:
    """A Ctrl-C while the interpreter shut down (torch's exit handlers take 0.3 s) printed a
    traceback from an exit handler, or turned a reported success into status 130 (and a script's
    rerun then failed on the output that was there): once the verb has ended, it is ignored."""
    code = (
        "import atexit, os, signal, sys\n"
        "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))  # as if Ctrl-C came at exit\n" + entry
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert (
        done.returncode == 0 and "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    ), (
        done.returncode,
        done.stderr[-2000:],
    )
    assert "usage: vikhr tokenizer" in done.stdout


def test_a_ctrl_c_while_the_options_are_set_up_is_one_line(monkeypatch, capsys) -> None:
    from vikhr import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["data", "inspect", "x"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["vikhr: interrupted"]


def test_files_left_over_by_an_unquoted_glob_are_named_as_such(tmp_path, capsys) -> None:
    """`--corpus ru/*.jsonl.gz` unquoted: the shell's second file and on were "unrecognized
    arguments" with no word on why; an option naming a file takes one."""
    from vikhr import cli

    shards = [tmp_path / f"ru-{i}.jsonl" for i in range(3)]
    for shard in shards:
        shard.write_text('{"text": "привет"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        cli.main(["tokenizer", "train", "--corpus", *map(str, shards), "--out", str(tmp_path / "tok")])
    assert e.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"vikhr tokenizer train: error: unrecognized arguments: {shards[1]} {shards[2]}; ")
    assert "they are files: an option naming a file takes one, repeat it per file (an unquoted glob" in line
    assert not (tmp_path / "tok").exists()


def test_errors_name_the_verb_they_belong_to(capsys) -> None:
    """An error line starts with the whole verb (`vikhr sft prepare`), and an option a verb does
    not know points at that verb's --help, not at `vikhr --help`."""
    from vikhr import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["convert", "hf-to-megatron", "a", "--out", "b"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "vikhr convert hf-to-megatron: error: unrecognized arguments: --out "
        "(see 'vikhr convert hf-to-megatron --help')"
    )
    assert (
        cli.main(["sft", "prepare", "--input", "nope.jsonl", "--tokenizer", "nope", "--output-prefix", "o/x"])
        == 2
    )
    assert capsys.readouterr().err.startswith("vikhr sft prepare: error: ")


@pytest.mark.parametrize("entry", ["vikhr pretrain", "pretrain_vikhr.py"])
def test_output_read_by_a_reader_that_stops_early_ends_quietly(entry: str) -> None:
    """`... --dry-run | head -2`: the reader leaves before the output ends; the command ends as the
    shell's tools do (status 141, no message), not with "cannot access: Broken pipe"."""
    program = ["-m", "vikhr", "pretrain"] if entry == "vikhr pretrain" else [str(REPO / entry)]
    cmd = [sys.executable, *program]
    cmd += ["--config", str(REPO / "configs" / "mistral-7b-v0.2.yaml"), "--dry-run"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) as proc:
        proc.stdout.close()  # long before the table: importing megatron-core takes seconds
        err = proc.stderr.read()
        proc.wait(timeout=300)
    assert (proc.returncode, err) == (141, "")


def _verbs(parser: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (sub)command's parser, by its words (`("sft", "build")`)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _verbs(sub, (*path, name))


def test_every_verb_with_a_progress_bar_takes_no_progress_the_same_way() -> None:
    """`--no-progress` was `store_false` into `progress` in some verbs and `store_true` into
    `no_progress` (with the verb's own terminal check) in others, and `--quiet` in ablate."""
    with_bars = {
        ("convert", "hf-to-megatron"), ("convert", "megatron-to-hf"), ("data", "preprocess"),
        ("tokenizer", "compare"), ("adapt-vocab",), ("merge",), ("ablate",),
        ("sft", "build"), ("sft", "score"), ("sft", "prepare"), ("eval",),
    }  # fmt: skip
    found = {}
    for path, parser in _verbs(build_parser()):
        for action in parser._actions:
            if "--no-progress" in action.option_strings:
                found[path] = action
            assert action.dest != "no_progress", path
    assert set(found) == with_bars
    for path, action in found.items():
        assert isinstance(action, argparse._StoreFalseAction), path
        assert (action.dest, action.default) == ("progress", True), path
    parse = build_parser().parse_args
    assert parse(["ablate", "grid.yaml"]).progress
    assert not parse(["ablate", "grid.yaml", "--no-progress"]).progress
    assert not parse(["ablate", "grid.yaml", "--quiet"]).progress  # kept: earlier grids' scripts use it
    ablate_help = dict(_verbs(build_parser()))[("ablate",)].format_help()
    assert "--no-progress" in ablate_help and "--quiet" not in ablate_help  # one name shown
    assert not parse(["sft", "build", "mix.yaml", "--no-progress"]).progress
