"""What `pip install .` (a wheel built by maturin, not the editable install of `make setup`) ships:
everything vikhr reads at run time inside the package, and an sdist a wheel can be built from.

The wheel itself needs the Rust build (minutes on 2 cores); maturin packs the same walk of vikhr/
into it as into the sdist, so the sdist's file list stands for the wheel's Python side here, and
README's Development section gives the wheel's manual check.
"""

from __future__ import annotations

import os
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
    import json

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
