"""The Rust extension module loads and is the crate it claims to be."""

from __future__ import annotations

import os
import re
from pathlib import Path

import vikhr._core as core

REPO = Path(__file__).resolve().parent.parent


def test_core_version_matches_workspace() -> None:
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert core.__version__ == version


def test_default_threads_matches_os() -> None:
    assert core.default_threads() == len(os.sched_getaffinity(0)) or core.default_threads() == os.cpu_count()
