"""What `pip install .` (a wheel built by maturin, not the editable install of `make setup`) ships:
everything vikhr reads at run time inside the package, and an sdist a wheel can be built from.

The wheel itself needs the Rust build (minutes on 2 cores); maturin packs the same walk of vikhr/
into it as into the sdist, so the sdist's file list stands for the wheel's Python side here, and
README's Development section gives the wheel's manual check.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

import vikhr
from tests.conftest import REPO
from vikhr.assets import CONFIGS
from vikhr.errors import VikhrError, read_yaml_mapping
from vikhr.ops.build import csrc_dir

PACKAGE = Path(vikhr.__file__).resolve().parent
# What an sdist's top level may hold: the build's inputs and the metadata maturin writes.
SDIST_TOP_LEVEL = {
    "PKG-INFO",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "Cargo.toml",
    "Cargo.lock",
    "rust",
    "vikhr",
}


def test_files_read_at_run_time_lie_inside_the_package() -> None:
    """A file outside vikhr/ reaches a wheel only through a maturin `include`, which puts it at the
    top of site-packages (a bare `csrc/` there, shared with any other package that ships one)."""
    assert csrc_dir().is_relative_to(PACKAGE), csrc_dir()
    assert (csrc_dir() / "bindings.cpp").is_file()
    assert CONFIGS.is_relative_to(PACKAGE) and (CONFIGS / "tiny-cpu.yaml").is_file()
    maturin = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["maturin"]
    assert not maturin.get("include"), maturin["include"]
    # The checkout's csrc/ and configs/, which the docs name, are the package's own directories.
    assert (REPO / "csrc").resolve() == csrc_dir()
    assert (REPO / "configs").resolve() == CONFIGS


def test_the_installed_configs_comments_name_commands_an_installed_vikhr_has() -> None:
    """The configs ship in the package, but their comments ran `pretrain_vikhr.py`, a file only a
    checkout has; they name `torchrun ... -m vikhr pretrain` (a checkout runs it too)."""
    checkout_only = [*(p.name for p in REPO.glob("*.py")), "tools/"]
    assert "pretrain_vikhr.py" in checkout_only
    named = [
        (config.name, number, name)
        for config in sorted(CONFIGS.glob("*.yaml"))
        for number, line in enumerate(config.read_text(encoding="utf-8").splitlines(), 1)
        if line.lstrip().startswith("#") or " #" in line
        for name in checkout_only
        if name in line.split("#", 1)[1]
    ]
    assert not named, named


@pytest.mark.skipif(
    shutil.which("maturin", path=str(Path(sys.executable).parent)) is None, reason="no maturin"
)
def test_the_sdist_holds_every_packaged_file_and_the_rust_build(tmp_path: Path) -> None:
    maturin = str(Path(sys.executable).parent / "maturin")
    proc = subprocess.run(
        [maturin, "sdist", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    (sdist,) = tmp_path.glob("vikhr-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {name.split("/")[0] for name in names} <= SDIST_TOP_LEVEL, sorted(names)
    tracked = subprocess.run(
        ["git", "ls-files", "vikhr", "rust", "Cargo.toml", "Cargo.lock"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    missing = [name for name in tracked if name not in names]
    assert not missing, missing
    assert "vikhr/ops/csrc/bindings.cpp" in names and "vikhr/assets/configs/tiny-cpu.yaml" in names


def test_a_config_the_docs_name_outside_a_checkout_points_to_the_installed_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # as a user of the wheel: no configs/ in the current directory
    with pytest.raises(VikhrError) as told:
        read_yaml_mapping("configs/tiny-cpu.yaml")
    assert str(CONFIGS) in str(told.value) and "cp -r" in str(told.value)
    assert "\n" not in str(told.value)
    with pytest.raises(VikhrError, match=r"config file not found: configs/no-such\.yaml \(check the path\)"):
        read_yaml_mapping("configs/no-such.yaml")


def _installed_copy(site: Path) -> Path:
    """What a wheel puts in site-packages: the package's tracked files and its Rust extension, as
    maturin packs them (see the module doc), at `site`/vikhr."""
    from vikhr import _core

    tracked = subprocess.run(
        ["git", "ls-files", "vikhr"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, site / name)
    shutil.copy(_core.__file__, site / "vikhr" / Path(_core.__file__).name)
    return site / "vikhr"


def test_the_bundled_sft_mix_builds_from_an_installed_vikhr_in_any_directory(tmp_path: Path) -> None:
    """configs/sft-mix-tiny.yaml named its tokenizer and samples by their paths in a checkout
    (tests/data/, which no wheel holds): `vikhr sft build` on it failed outside the repository root.
    Run as README says for an installed vikhr (its configs copied into the current directory), and on
    the installed config itself, it reads the package's bundled files."""
    installed = _installed_copy(tmp_path / "site")
    work = tmp_path / "work"
    shutil.copytree(installed / "assets" / "configs", work / "configs")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"}
    for config in ("configs/sft-mix-tiny.yaml", str(installed / "assets" / "configs" / "sft-mix-tiny.yaml")):
        out = work / "runs" / Path(config).parent.name / "chats.jsonl"
        proc = subprocess.run(
            [sys.executable, "-m", "vikhr", "sft", "build", config, "--output", str(out)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(out.with_name(out.name + ".report.json").read_text(encoding="utf-8"))
        assert [s["name"] for s in report["sources"] if s["kept"]] == ["saiga", "ruflan", "veles", "nectar"]
        read = [Path(name) for s in report["sources"] for name in s["formats"]]
        assert read and all(p.is_relative_to(installed / "assets" / "sft" / "formats") for p in read), read
        assert Path(report["tokenizer"]) == installed / "assets" / "tokenizers" / "mistral-7b-v0.1.model"


def _commented_commands(config: Path) -> list[list[str]]:
    """The `vikhr ...` commands a config's comment gives, as a shell splits them."""
    comment = "\n".join(
        line.removeprefix("#").strip()
        for line in config.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    )
    lines = comment.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith("vikhr ")]


def test_the_documented_commands_read_bundled_files_from_an_installed_vikhr_in_any_directory(
    tmp_path: Path,
) -> None:
    """The bundled configs' comments, README and docs/sft.md give `vikhr sft prepare --input
    vikhr/assets/sft/ru-seed-chats.jsonl --tokenizer vikhr/assets/tokenizers/mistral-7b-v0.1.model`:
    outside a checkout's root both paths named nothing (`tokenizer not found`). Run from another
    directory with an installed vikhr, every command reads the package's files; a missing path that is
    no bundled one is refused in the same line as before."""
    installed = _installed_copy(tmp_path / "site")
    work = tmp_path / "work"
    shutil.copytree(installed / "assets" / "configs", work / "configs")  # as README says for a wheel
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"}

    def vikhr(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "vikhr", *args]
        return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)

    def prepared(prefix: str) -> dict:
        return json.loads((work / f"{prefix}_sft.json").read_text(encoding="utf-8"))

    mistral = installed / "assets" / "tokenizers" / "mistral-7b-v0.1.model"
    for command in _commented_commands(installed / "assets" / "configs" / "sft-mix-tiny.yaml"):
        proc = vikhr(*command[1:])
        assert proc.returncode == 0, (command, proc.stderr)
    assert Path(prepared("runs/sft-mix-tiny/sft")["tokenizer"]) == mistral

    # sft-tiny-cpu.yaml's prepare, with the bundled chats it names for a machine without ../shared.
    tiny_cpu = installed / "assets" / "configs" / "sft-tiny-cpu.yaml"
    comment_prepare = next(c for c in _commented_commands(tiny_cpu) if "prepare" in c)
    seed_chats = "vikhr/assets/sft/ru-seed-chats.jsonl"
    assert f"--input {seed_chats}" in tiny_cpu.read_text(encoding="utf-8")
    given_input = comment_prepare.index("--input") + 1
    proc = vikhr(*comment_prepare[1:given_input], seed_chats, *comment_prepare[given_input + 1 :])
    assert proc.returncode == 0, proc.stderr
    summary = prepared(comment_prepare[comment_prepare.index("--output-prefix") + 1])
    assert Path(summary["tokenizer"]) == mistral
    with (installed / "assets" / "sft" / "ru-seed-chats.jsonl").open(encoding="utf-8") as chats:
        assert summary["chats"] == sum(1 for line in chats if line.strip())

    # A tokenizer measured where it is documented: by its vikhr/assets/ path.
    proc = vikhr(
        "tokenizer", "compare", "--tokenizer", "vikhr/assets/tokenizers/vikhr-ru-40k.model",
        "--texts", f"ru={installed / 'assets' / 'corpus' / 'ru-sample.jsonl.gz'}",
        "--max-chars", "20K", "--out", "report", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "vikhr-ru-40k" in (work / "report" / "report.csv").read_text(encoding="utf-8")

    proc = vikhr(
        "sft", "prepare", "--input", seed_chats, "--tokenizer", "no/such.model", "--output-prefix", "x"
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("vikhr sft prepare: error: tokenizer not found: no/such.model (")
    assert proc.stderr.count("\n") == 1 and not list(work.glob("x_*"))


def test_a_bundled_path_in_the_current_directory_wins_and_other_commands_take_bundled_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `vikhr/assets/...` file the current directory holds is the one read (a checkout's root, or
    a user's own copy); where it holds none, `--bpc-data` and `--reference` (as docs/eval.md names
    the bundled files) name the package's."""
    from vikhr.assets import ASSETS, MISTRAL_TOKENIZER, PAPER_TABLE6, RU_SAMPLE
    from vikhr.cli import build_parser
    from vikhr.tokenizer.load import resolve_tokenizer_file

    monkeypatch.chdir(tmp_path)
    named = "vikhr/assets/tokenizers/mistral-7b-v0.1.model"
    assert resolve_tokenizer_file(named) == MISTRAL_TOKENIZER
    (tmp_path / named).parent.mkdir(parents=True)
    shutil.copy(MISTRAL_TOKENIZER, tmp_path / named)
    assert resolve_tokenizer_file(named) == Path(named)

    parser = build_parser()
    bpc = parser.parse_args(
        ["eval", "--model", "m", "--bpc-data", f"vikhr/assets/{RU_SAMPLE.relative_to(ASSETS)}"]
    )
    assert Path(bpc.bpc_data) == RU_SAMPLE
    paper = f"vikhr/assets/{PAPER_TABLE6.relative_to(ASSETS)}"
    assert [
        Path(r) for r in parser.parse_args(["eval", "compare", "r.json", "--reference", paper]).reference
    ] == [PAPER_TABLE6]


def test_a_bundled_path_is_read_as_written_with_dot_slash_and_a_missing_one_is_named_as_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`./vikhr/assets/...` is the same bundled file; a `vikhr/assets/...` path found neither in the
    current directory nor in the package stays as the user typed it, so the error names that path."""
    from vikhr.assets import MISTRAL_TOKENIZER, bundled

    monkeypatch.chdir(tmp_path)
    assert Path(bundled("./vikhr/assets/tokenizers/mistral-7b-v0.1.model")) == MISTRAL_TOKENIZER
    missing = "vikhr/assets/tokenizers/no-such.model"
    assert bundled(missing) == missing
    assert bundled("vikhr/assets/no-such-dir/*.jsonl") == "vikhr/assets/no-such-dir/*.jsonl"
