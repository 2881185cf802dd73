"""The csrc build: the CUDA kernels compile for Hopper (sm_90) and load on a machine without a GPU,
so a change that breaks them is found before a GPU is at hand. It needs nvcc: a CUDA toolkit, or
the one pip installs (`cuda-toolkit[nvcc,cccl]`, in the `dev` extra on Linux x86-64), whose wheel
layout vikhr.ops.build makes usable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from vikhr.errors import VikhrError

OPS = [
    "logsumexp_rows",
    "cekl_forward",
    "cekl_stats",
    "cekl_rescale",
    "cekl_finish",
    "cekl_backward",
    "cekl_scale_grad",
    "cekl_prepare",
    "cekl_total",
]

_COMPILE = """
import json, sys
from pathlib import Path
import torch
from vikhr.ops.build import compile_ops, cuda_home
library = compile_ops(with_cuda=True, build_root=Path(sys.argv[1]))  # compiles and loads it
has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
ops = sys.argv[2].split(",")
print(json.dumps({
    "cuda_home": str(cuda_home()),
    "library": str(library),
    "kernels": {op: [k for k in ("CPU", "CUDA") if has_kernel(f"vikhr::{op}", k)] for op in ops},
}))
"""


def _nvcc_available() -> bool:
    from vikhr.ops.build import cuda_toolkit_found

    return cuda_toolkit_found()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CUDA build is checked on Linux")
def test_cuda_kernels_compile_for_sm90_and_load_without_a_gpu(tmp_path: Path) -> None:
    if not _nvcc_available():
        pytest.skip("no nvcc: pip install 'cuda-toolkit[nvcc,cccl]' (the dev extra has it on Linux x86-64)")
    env = {
        **os.environ,
        "TORCH_CUDA_ARCH_LIST": "9.0",  # the H100/H200 the kernels are tuned for
        "CUDA_VISIBLE_DEVICES": "",
        "VIKHR_CACHE_DIR": str(tmp_path / "cache"),
        "MAX_JOBS": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE, str(tmp_path / "ops"), ",".join(OPS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "-cuda-" in report["library"] and Path(report["library"]).is_file()
    assert report["kernels"] == {op: ["CPU", "CUDA"] for op in OPS}
    assert (Path(report["cuda_home"]) / "bin" / "nvcc").exists()


@pytest.mark.parametrize("torch_lock", ["file baton", "filelock"])
def test_a_lock_file_left_by_a_killed_build_does_not_block_the_next(
    tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str], torch_lock: str
) -> None:
    """torch's JIT build before its OS-level lock (a FileBaton) waits as long as its lock file
    exists, and a build killed mid-way (a timeout, SIGTERM) leaves it: every later build would wait
    forever. vikhr builds under its own OS lock, so such a file is stale and goes before torch
    looks. With torch's filelock the file always exists and blocks nothing: it stays, unreported."""
    from torch.utils import cpp_extension

    from vikhr.ops.build import compile_ops, ops_build_dir

    if torch_lock == "file baton":
        monkeypatch.delattr(cpp_extension, "FileLock", raising=False)
    else:
        monkeypatch.setattr(cpp_extension, "FileLock", object, raising=False)
    build_dir = ops_build_dir(False, tmp_path)
    build_dir.mkdir(parents=True)
    (build_dir / "lock").touch()

    def load(**kwargs: object) -> str:
        where = Path(str(kwargs["build_directory"]))
        if torch_lock == "file baton":
            assert not (where / "lock").exists(), "the build would wait on the stale lock forever"
        else:
            assert (where / "lock").exists(), "another process's filelock file was removed"
        return str(where / "vikhr_ops_cpu.so")

    monkeypatch.setattr(cpp_extension, "load", load)
    assert compile_ops(with_cuda=False, build_root=tmp_path) == build_dir / "vikhr_ops_cpu.so"
    assert ("left by a build that was killed" in capsys.readouterr().err) == (torch_lock == "file baton")


def test_a_build_waiting_for_another_says_whose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process (a rank, a second job) that finds the ops being built waited without a word for
    as long as the compile took; it names the build it waits for."""
    import fcntl
    import io
    import threading
    import time

    from vikhr.ops.build import _exclusive_build

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    entered = threading.Event()

    def second_build() -> None:
        with _exclusive_build(tmp_path):
            entered.set()

    with (tmp_path / "vikhr-build.lock").open("w") as first:
        fcntl.flock(first, fcntl.LOCK_EX)
        first.write("pid 4242 on node07\n")
        first.flush()
        waiter = threading.Thread(target=second_build)
        waiter.start()
        deadline = time.monotonic() + 60
        while "waiting" not in err.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not entered.is_set()  # it waits while the first build holds the lock
    waiter.join(timeout=60)
    assert entered.is_set()
    assert err.getvalue() == f"vikhr: waiting for the build of the ops in {tmp_path} (pid 4242 on node07)\n"


def test_each_location_of_the_sources_and_of_torch_keeps_its_own_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's build names the sources and torch's headers by absolute path in build.ninja. Two
    checkouts with equal sources (or an installed copy and a source tree) shared one build directory:
    each load from the other rewrote its build.ninja, and ninja recompiled the ops every time."""
    import shutil

    import torch

    import vikhr.ops.build as build

    checkouts = [Path(shutil.copytree(REPO / "csrc", tmp_path / name / "csrc")) for name in ("a", "b")]

    def build_dir_of(csrc: Path) -> Path:
        monkeypatch.setattr(build, "csrc_dir", lambda: csrc)
        return build.ops_build_dir(False, tmp_path / "ops")

    first, second = build_dir_of(checkouts[0]), build_dir_of(checkouts[1])
    assert first != second and first.parent == second.parent == tmp_path / "ops"
    assert build_dir_of(checkouts[0]) == first  # the next load finds its own build again
    monkeypatch.setattr(torch, "__file__", str(tmp_path / "other-env" / "torch" / "__init__.py"))
    assert build_dir_of(checkouts[0]) not in (first, second)


@pytest.mark.parametrize("pip_nvcc", [True, False], ids=["pip-toolkit", "none"])
def test_a_cuda_home_without_nvcc_is_no_toolkit(tmp_path: Path, monkeypatch, pip_nvcc: bool) -> None:
    """torch takes an existing /usr/local/cuda as CUDA_HOME even without nvcc (a runtime-only CUDA
    image has one): the build then failed at the first GPU loss on running its nvcc, the toolkit pip
    installs was never tried, and a GPU run was not refused before its setup. That home counts as no
    toolkit: pip's is made usable where there is one."""
    from torch.utils import cpp_extension

    from vikhr.ops import build

    runtime_only = tmp_path / "usr-local-cuda"
    (runtime_only / "lib64").mkdir(parents=True)
    toolkit = tmp_path / "site-packages" / "nvidia" / "cu13"
    for part in ("bin", "include", "lib"):
        (toolkit / part).mkdir(parents=True)
    (toolkit / "bin" / "nvcc").touch()
    (toolkit / "lib" / "libcudart.so.13").touch()
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(runtime_only))
    monkeypatch.setattr(build, "pip_toolkit", lambda: toolkit if pip_nvcc else None)
    monkeypatch.setenv("VIKHR_CACHE_DIR", str(tmp_path / "cache"))
    build.cuda_home.cache_clear()
    try:
        home = build.cuda_home()
    finally:
        build.cuda_home.cache_clear()  # the next caller looks again, with the real toolkits
    if pip_nvcc:
        assert (
            home is not None and home.is_relative_to(tmp_path / "cache") and (home / "bin" / "nvcc").is_file()
        )
        assert (home / "lib64" / "libcudart.so").resolve() == toolkit / "lib" / "libcudart.so.13"
        assert str(home) == cpp_extension.CUDA_HOME  # what torch's build links against
    else:
        assert home is None
        with pytest.raises(VikhrError, match=r"^config key parallel\.device = cuda: .* none is found here"):
            build.require_cuda_toolkit("config key parallel.device = cuda", "set parallel.device=cpu")
    assert build.cuda_toolkit_found() == pip_nvcc
