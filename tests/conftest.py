"""Shared fixtures: the ../shared/data folder, GPU skipping, and a torchrun launcher."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VIKHR_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The slow tests first (otherwise in collection order): with two xdist workers a minute-long
    # test collected last keeps one worker busy while the other has nothing left to run.
    items.sort(key=lambda item: "slow" not in item.keywords)
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _ctrl_c_handler_restored():
    """Entry points run in-process ignore Ctrl-C once they end (vikhr.cli.run): the test process and
    the children it starts later (which inherit an ignored SIGINT) must keep theirs."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real corpora, tokenizers, eval sets); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int) -> list[str]:
    """torchrun on this machine with `nproc` ranks. `--standalone`: its store binds a port the OS
    picks, so tests running side by side never race for one (a port found free and taken by
    another test's ranks before this launch bound it failed the launch)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def launch_torchrun(
    script: Path | str, *args: str, nproc: int = 2, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `script` under torchrun with `nproc` CPU ranks (gloo); its output, whatever the exit status."""
    cmd = [*torchrun_command(nproc), str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=REPO)


def child_env() -> dict[str, str]:
    """The environment of a child process: one thread per process, the repository on PYTHONPATH
    ahead of whatever was there (a GPU machine's extra packages stay visible)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run_torchrun(script: Path | str, *args: str, nproc: int = 2, timeout: float = 600) -> None:
    """`launch_torchrun`, failing the test with its output unless it succeeds."""
    proc = launch_torchrun(script, *args, nproc=nproc, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"torchrun {script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
