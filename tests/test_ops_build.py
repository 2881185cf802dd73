"""The csrc build: the CUDA kernels compile for Hopper (sm_90) and load on a machine without a GPU,
so a change that breaks them is found before a GPU is at hand. It needs nvcc: a CUDA toolkit, or
the one pip installs (`cuda-toolkit[nvcc,cccl]`, in the `dev` extra on Linux x86-64), whose wheel
layout vikhr.ops.build makes usable."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
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


def _build_while_another_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, while_held: Callable[[io.StringIO], None]
) -> str:
    """Enters the ops' build lock in a thread while "pid 4242 on node07" holds it; `while_held`
    runs (given the stderr so far) before the holder lets go. Returns what was said on stderr."""
    import fcntl
    import threading

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
        while_held(err)
        assert not entered.is_set()  # it waits while the first holds the lock
    waiter.join(timeout=60)
    assert entered.is_set()
    return err.getvalue()


def test_a_build_waiting_for_another_says_whose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process (a rank, a second job) that finds the ops being built waited without a word for
    as long as the compile took; it names the build it waits for."""

    def until_it_says_so(err: io.StringIO) -> None:
        deadline = time.monotonic() + 60
        while "waiting" not in err.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)

    said = _build_while_another_holds_the_lock(tmp_path, monkeypatch, until_it_says_so)
    assert said == f"vikhr: waiting for the build of the ops in {tmp_path} (pid 4242 on node07)\n"


def test_a_rank_waiting_while_another_loads_the_built_ops_says_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rank of a run loads the ops under the build lock. Once they are built, the rank that
    holds it only loads them, and the others printed "waiting for the build of the ops" at every
    start of a run of 2 or more processes, a build that was not happening. They wait silently."""
    (tmp_path / "vikhr_ops_cpu.so").touch()  # the library, built by an earlier run
    said = _build_while_another_holds_the_lock(tmp_path, monkeypatch, lambda err: time.sleep(0.3))
    assert said == ""


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


def _fake_tool(path: Path, version: str, runs: Path, age_s: float = 60.0) -> Path:
    """An executable that prints `version` for --version and counts its runs in `runs`; written
    `age_s` seconds ago (a tool written just now may be written again within its stamp's tick)."""
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho run >> '{runs}'\necho '{version}'\n")
    path.chmod(0o755)
    written = time.time() - age_s
    os.utime(path, (written, written))
    return path


def _runs(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


@pytest.fixture
def fake_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CUDA toolkit whose nvcc only says its release (its runs counted in `runs-nvcc`), no GPU
    visible, no TORCH_CUDA_ARCH_LIST, and no tool versions remembered from before."""
    import torch

    from vikhr.ops import build

    home = tmp_path / "cuda"
    _fake_tool(
        home / "bin" / "nvcc", "Cuda compilation tools, release 13.0, V13.0.88", tmp_path / "runs-nvcc"
    )
    monkeypatch.setattr(build, "cuda_home", lambda: home)
    monkeypatch.setattr(build, "_TOOL_OUTPUTS", build.StampedCache(maxsize=32))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("VIKHR_CACHE_DIR", str(tmp_path / "cache"))
    return home


NO_GPU = (
    "no GPU visible to choose the CUDA architectures to compile the csrc ops for: set TORCH_CUDA_ARCH_LIST "
    '(e.g. "9.0" for H100/H200, "8.0" for A100) and retry'
)


@pytest.mark.parametrize("path", ["ops_build_dir", "compile_ops", "doctor --no-build", "trainer's check"])
@pytest.mark.parametrize("arch_list", ["", "native", "9.5"])
def test_cuda_architectures_torch_cannot_choose_are_one_line_naming_torch_cuda_arch_list(
    fake_cuda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, arch_list: str
) -> None:
    """Compiling the CUDA kernels on a build node without a GPU (nvcc is all the build needs) with
    no TORCH_CUDA_ARCH_LIST (or "native"): torch's choice of architectures raised a bare IndexError,
    a traceback; an architecture torch does not know raised its ValueError (also mid-run, at a GPU
    run's first loss). Each way to the build says what to set, in one line, before writing a thing."""
    from torch.utils import cpp_extension

    from vikhr import doctor
    from vikhr.ops import build

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch_list)
    monkeypatch.setattr(cpp_extension, "load", lambda **_: pytest.fail("nothing is compiled"))
    said = NO_GPU
    if arch_list == "9.5":
        said = (
            "TORCH_CUDA_ARCH_LIST='9.5' names no CUDA architectures torch can compile for (Unknown CUDA arch "
            '(9.5) or GPU not supported): set it to the cards\' compute capabilities (e.g. "9.0" for '
            'H100/H200, "8.0" for A100) and retry'
        )
    root = tmp_path / "ops"
    if path == "doctor --no-build":
        monkeypatch.setattr(build, "cuda_build_possible", lambda: True)
        assert doctor._ops_rows(cuda=True, build=False) == [("csrc ops", f"not checked (--no-build): {said}")]
        return
    with pytest.raises(VikhrError) as raised:
        if path == "ops_build_dir":
            build.ops_build_dir(True, root)
        elif path == "compile_ops":
            build.compile_ops(with_cuda=True, build_root=root)
        else:
            monkeypatch.setattr(build, "cuda_toolkit_found", lambda: True)
            build.require_cuda_toolkit("config key parallel.device = cuda", "set parallel.device=cpu")
    where = "config key parallel.device = cuda: " if path == "trainer's check" else ""
    assert str(raised.value) == where + said
    assert not root.exists() and not (tmp_path / "cache").exists()


def test_nvcc_is_asked_its_release_once_per_process_and_again_once_replaced(
    fake_cuda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every load of the ops and every `vikhr doctor` names the build directory, whose key holds
    nvcc's release: `nvcc --version` ran each time. It runs once for each nvcc (path and file
    stamp), and not from memory for one written within its stamp's clock tick."""
    from vikhr.ops import build

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    runs, nvcc = tmp_path / "runs-nvcc", fake_cuda / "bin" / "nvcc"
    first = build.ops_build_dir(True, tmp_path)
    assert build.ops_build_dir(True, tmp_path) == first and _runs(runs) == 1
    _fake_tool(nvcc, "Cuda compilation tools, release 13.1, V13.1.40", runs)  # upgraded in place
    upgraded = build.ops_build_dir(True, tmp_path)
    assert upgraded != first and _runs(runs) == 2
    _fake_tool(nvcc, "Cuda compilation tools, release 13.2, V13.2.10", runs, age_s=0)  # just written
    assert build.ops_build_dir(True, tmp_path) not in (first, upgraded)
    build.ops_build_dir(True, tmp_path)
    assert _runs(runs) == 4


@pytest.mark.parametrize("tool", ["nvcc", "c++"])
def test_a_tool_that_does_not_answer_its_version_is_one_line_not_a_hang(
    fake_cuda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    """`nvcc --version` and the host compiler's ran without a time limit: a toolkit on a network
    mount that stopped answering hung every process that loads the ops (or runs `vikhr doctor`).
    After PROBE_TIMEOUT_S the tool is stopped and one line names it and what to check."""
    import time

    from vikhr.ops import build

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setattr(build, "PROBE_TIMEOUT_S", 0.5)
    hung = fake_cuda / "bin" / "nvcc" if tool == "nvcc" else tmp_path / "bin" / "g++"
    hung.parent.mkdir(parents=True, exist_ok=True)
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    if tool == "c++":
        monkeypatch.setenv("CXX", str(hung))
    check = "the CUDA toolkit (CUDA_HOME)" if tool == "nvcc" else "the C++ compiler (CXX, CC)"
    started = time.monotonic()
    with pytest.raises(VikhrError) as raised:
        build.ops_build_dir(True, tmp_path / "ops")
    assert time.monotonic() - started < 15
    assert str(raised.value) == f"cannot run {hung} --version (no answer within 0.5 s); check {check}"
    assert not (tmp_path / "ops").exists()


@pytest.mark.parametrize("named_by", ["PATH", "CXX"])
@pytest.mark.parametrize("hung_probe", ["-v", "-dumpfullversion"])
def test_a_compiler_that_answers_its_version_but_not_torchs_probes_is_one_line_not_a_hang(
    fake_cuda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named_by: str, hung_probe: str
) -> None:
    """torch's build asks the C++ compiler `-v` (is a wrapper GCC or clang) and `-dumpfullversion
    -dumpversion` with no time limit, in every process that loads the ops: a wrapper that answers
    --version but waits on a remote cache or a licence server to compile hung vikhr. They run first,
    each stopped after PROBE_TIMEOUT_S, and one line names the compiler and CXX."""
    from torch.utils import cpp_extension

    from vikhr.ops import build

    monkeypatch.setattr(build, "PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(
        cpp_extension, "load", lambda **_: pytest.fail("torch's probes ran, with no time limit")
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / ("c++" if named_by == "PATH" else "cxx-wrapper")
    compiler.write_text(
        f'#!/bin/sh\ncase "$1" in --version) echo "g++ (fake) 13.2.0";; {hung_probe}) exec sleep 60;; esac\n'
    )
    compiler.chmod(0o755)
    if named_by == "PATH":
        monkeypatch.delenv("CXX", raising=False)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        where = "c++ on PATH"
    else:
        monkeypatch.setenv("CXX", str(compiler))
        where = f"CXX={compiler}"
    probe = "-v" if hung_probe == "-v" else "-dumpfullversion -dumpversion"
    started = time.monotonic()
    with pytest.raises(VikhrError) as raised:
        build.compile_ops(False, build_root=tmp_path / "ops")
    assert time.monotonic() - started < 15
    assert str(raised.value) == (
        f"cannot run {compiler} {probe} (no answer within 0.5 s), which torch's build of the csrc ops runs "
        f"first; check the C++ compiler ({where}), or set CXX to one that answers"
    )
    assert not (tmp_path / "ops").exists()


@pytest.mark.parametrize("with_cuda", [False, True], ids=["cpu", "cuda"])
def test_each_host_compiler_keeps_its_own_build(
    fake_cuda: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_cuda: bool
) -> None:
    """torch's build compiles with $CXX or `c++` (and hands $CC to nvcc): another GCC (first on
    PATH, in CXX, or the same path switched to another version) with equal sources reused the
    library the other had built. The compiler's path and version are in the key, its --version run
    once per process."""
    from vikhr.ops import build

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    runs = tmp_path / "runs-cxx"
    gcc12 = _fake_tool(tmp_path / "bin" / "g++-12", "g++-12 (GCC) 12.2.0", runs)
    gcc13 = _fake_tool(tmp_path / "bin" / "g++-13", "g++-13 (GCC) 13.1.0", runs)
    monkeypatch.setenv("CXX", str(gcc12))
    first = build.ops_build_dir(with_cuda, tmp_path)
    assert build.ops_build_dir(with_cuda, tmp_path) == first and _runs(runs) == 1
    monkeypatch.setenv("CXX", str(gcc13))
    assert build.ops_build_dir(with_cuda, tmp_path) != first
    monkeypatch.setenv("CXX", str(gcc12))
    assert build.ops_build_dir(with_cuda, tmp_path) == first and _runs(runs) == 2
    _fake_tool(gcc12, "g++-12 (GCC) 12.4.0", runs)  # the same path, another compiler
    assert build.ops_build_dir(with_cuda, tmp_path) != first
    if with_cuda:  # nvcc's host compiler
        monkeypatch.setenv("CC", str(gcc13))
        with_cc = build.ops_build_dir(True, tmp_path)
        monkeypatch.delenv("CC")
        assert build.ops_build_dir(True, tmp_path) != with_cc


def test_each_build_of_torch_keeps_its_own_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key named torch's release only: a +cpu and a +cu132 wheel of one release (or another
    build of it) installed in turn at one path shared the library built against the other."""
    import torch

    from vikhr.ops import build

    first = build.ops_build_dir(False, tmp_path)
    monkeypatch.setattr(torch.version, "git_version", "0" * 40)
    assert build.ops_build_dir(False, tmp_path) != first


def test_the_pip_toolkit_links_follow_an_upgrade_of_its_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA_HOME made for pip's toolkit links each library's unversioned name to it: once made,
    a link stayed, so a toolkit upgraded at its path (libnvrtc-builtins.so.13.0 -> .13.1) left it
    pointing at nothing, for good."""
    from torch.utils import cpp_extension

    from vikhr.ops import build

    toolkit = tmp_path / "site-packages" / "nvidia" / "cu13"
    for part in ("bin", "include", "lib"):
        (toolkit / part).mkdir(parents=True)
    (toolkit / "bin" / "nvcc").touch()
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.setattr(build, "pip_toolkit", lambda: toolkit)
    monkeypatch.setenv("VIKHR_CACHE_DIR", str(tmp_path / "cache"))
    homes = []
    for minor in ("13.0", "13.1"):
        for old in (toolkit / "lib").iterdir():
            old.unlink()
        (toolkit / "lib" / f"libnvrtc-builtins.so.{minor}").touch()
        build.cuda_home.cache_clear()
        try:
            homes.append(build.cuda_home())
        finally:
            build.cuda_home.cache_clear()
        monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)  # as in the next process
    assert homes[0] == homes[1] is not None
    linked = homes[1] / "lib64" / "libnvrtc-builtins.so"
    assert linked.resolve() == toolkit / "lib" / "libnvrtc-builtins.so.13.1"
    assert not [p for p in (homes[1] / "lib64").iterdir() if p.name.endswith(".tmp")]
