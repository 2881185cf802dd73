"""Just-in-time, cached build of the C++/CUDA ops in `csrc/`, registered as `torch.ops.vikhr.*`.

The CPU sources always build (a C++20 compiler is all they need). The `.cu` sources are
added when torch sees a CUDA device and a CUDA toolkit (nvcc) is found; then one extension
holds both. Builds are cached per torch version, variant and a hash of sources and flags (and,
with CUDA, of the nvcc release and the target architectures), of the host compilers (path and
version), of torch's exact build and of where the sources, torch and nvcc are, under
`$VIKHR_CACHE_DIR` (default `~/.cache/vikhr`), so only the first use pays the compile time (CPU:
~40 s on 2 cores). The library is loaded with `torch.ops.load_library` (no Python module); loading
it registers the ops' kernels with the dispatcher and their fake kernels (`vikhr.ops.fake`) for
torch.compile.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from vikhr.errors import VikhrError, require_writable_dir
from vikhr.file_stamps import StampedCache
from vikhr.locks import exclusive
from vikhr.ops.autograd_formulas import register_backward_formulas
from vikhr.ops.fake import register_fake_kernels


def csrc_dir() -> Path:
    """Where the C++/CUDA sources are: inside the package (`vikhr/ops/csrc`, which the repository's
    `csrc` links to), so a wheel ships them within vikhr, not as a top-level `csrc` in site-packages."""
    candidate = Path(__file__).resolve().parent / "csrc"
    if not (candidate / "bindings.cpp").exists():
        raise VikhrError(f"csrc/ sources not found at {candidate}; reinstall vikhr (pip install .)")
    return candidate


def cache_dir() -> Path:
    return Path(os.environ.get("VIKHR_CACHE_DIR", Path.home() / ".cache" / "vikhr"))


def require_writable_cache_dir() -> Path:
    """cache_dir(), or VikhrError (one line) where it cannot be written: the ops build takes its lock
    there even when the library is already built, so a run checks this before it writes anything."""
    if "VIKHR_CACHE_DIR" in os.environ:
        return require_writable_dir(
            cache_dir(), "VIKHR_CACHE_DIR", fix="unset VIKHR_CACHE_DIR, or set it to a writable directory"
        )
    return require_writable_dir(
        cache_dir(), "ops build cache", fix="set VIKHR_CACHE_DIR to a writable directory"
    )


def cuda_build_possible() -> bool:
    """True when a CUDA device and a CUDA toolkit with nvcc are both present."""
    return torch.cuda.is_available() and cuda_home() is not None


def cuda_toolkit_found() -> bool:
    """Whether `cuda_home` finds a toolkit with nvcc (torch's CUDA_HOME, else pip's). Only looked
    for; nothing is written."""
    from torch.utils import cpp_extension

    return _has_nvcc(cpp_extension.CUDA_HOME) or pip_toolkit() is not None


def require_cuda_toolkit(where: str, alternative: str) -> None:
    """VikhrError (one line, naming `where` and offering `alternative`) when no CUDA toolkit is found,
    or torch cannot choose the CUDA architectures to compile for: a run on the GPU needs the ops' CUDA
    kernels, built on its first loss, after its whole setup. Nothing is written."""
    if not cuda_toolkit_found():
        raise VikhrError(
            f"{where}: the run is on the GPU, whose csrc kernels (the CE+KL loss) are built on first use "
            f"with a CUDA toolkit (nvcc), and none is found here: install one and set CUDA_HOME, "
            f"{pip_toolkit_command()}, or {alternative}"
        )
    try:  # nor of a TORCH_CUDA_ARCH_LIST that torch cannot compile for
        _cuda_arch_flags()
    except VikhrError as e:
        raise VikhrError(f"{where}: {e}") from e


@functools.cache
def cuda_home() -> Path | None:
    """The CUDA toolkit torch builds with: CUDA_HOME, nvcc on PATH or /usr/local/cuda (torch's own
    search), else the toolkit pip installs (`pip_toolkit_command`), made usable; None where neither
    holds nvcc. torch takes an existing /usr/local/cuda without one (a runtime-only CUDA image has
    it): pip's nvcc is then the one to build with."""
    from torch.utils import cpp_extension

    if not _has_nvcc(cpp_extension.CUDA_HOME):
        shim = _pip_cuda_home()
        if shim is not None:
            cpp_extension.CUDA_HOME = str(shim)  # the one place torch's build reads it from
    return Path(cpp_extension.CUDA_HOME) if _has_nvcc(cpp_extension.CUDA_HOME) else None


def _has_nvcc(home: str | None) -> bool:
    return bool(home) and (Path(str(home)) / "bin" / "nvcc").is_file()


def pip_toolkit_command() -> str:
    """The pip command that adds nvcc matching torch's own CUDA libraries (their versions must agree)."""
    import importlib.metadata as md

    try:
        pin = "==" + md.version("cuda-toolkit")  # what torch's wheel requires
    except md.PackageNotFoundError:
        pin = ""
    return f"pip install 'cuda-toolkit[nvcc,cccl]{pin}'"


def pip_toolkit() -> Path | None:
    """The CUDA toolkit pip installs (`pip_toolkit_command`): `site-packages/nvidia/cu<N>/` holding
    bin/nvcc, or None. Only looked for; nothing is written."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    found = sorted(d for root in roots for d in root.glob("cu[0-9]*") if (d / "bin" / "nvcc").is_file())
    return found[-1] if found else None


def _pip_cuda_home() -> Path | None:
    """pip's CUDA wheels hold `lib/libcudart.so.<N>` only, while torch's build links
    `-L$CUDA_HOME/lib64 -lcudart`: a directory of links in the build cache gives that layout (None
    when pip installed no nvcc)."""
    toolkit = pip_toolkit()
    if toolkit is None:
        return None
    shim = cache_dir() / "cuda-home" / hashlib.sha256(str(toolkit).encode()).hexdigest()[:12]
    lib64 = shim / "lib64"
    lib64.mkdir(parents=True, exist_ok=True)
    links = {shim / name: toolkit / name for name in ("bin", "include", "nvvm") if (toolkit / name).exists()}
    for lib in sorted((toolkit / "lib").glob("*.so*")):
        links[lib64 / lib.name] = lib
        # The unversioned name: the shortest file of that name (the SONAME), the same one each time.
        links.setdefault(lib64 / (lib.name.split(".so")[0] + ".so"), lib)
    for link, target in links.items():
        _link(link, target)
    return shim


def _link(link: Path, target: Path) -> None:
    """`link` -> `target`, in place of a link to anything else: a toolkit upgraded at its path renames
    libraries (libnvrtc-builtins.so.13.0 -> .13.1), and the link made for the old one dangled for
    good. Atomic (a new link renamed over it): another process sees the old link or the new."""
    with contextlib.suppress(OSError):  # none yet, or not a link
        if os.readlink(link) == str(target):
            return
    fresh = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    fresh.unlink(missing_ok=True)
    fresh.symlink_to(target)
    os.replace(fresh, link)


def _sources(with_cuda: bool) -> list[Path]:
    root = csrc_dir()
    srcs = sorted(root.glob("*.cpp"))
    if with_cuda:
        srcs += sorted(root.glob("*.cu"))
    return srcs


def _source_hash(paths: list[Path], flags_key: str) -> str:
    h = hashlib.sha256(flags_key.encode())
    for p in paths + sorted(csrc_dir().glob("*.h")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _flags(with_cuda: bool) -> tuple[list[str], list[str], list[str]]:
    """(C++ flags, nvcc flags, linker flags); torch adds the C++ standard it needs (C++20 for >= 2.10)."""
    # -fno-trapping-math lets GCC if-convert the clamps of the vectorised exp in csrc/cekl_math.h
    # (nothing here reads floating-point exception flags).
    cflags = ["-O3", "-fno-trapping-math"]
    ldflags: list[str] = []
    if sys.platform.startswith("linux"):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    cuda_cflags = ["-O3", "--use_fast_math", "-lineinfo"]
    if with_cuda:
        cflags.append("-DVIKHR_WITH_CUDA")
        cuda_cflags.append("-DVIKHR_WITH_CUDA")
    return cflags, cuda_cflags, ldflags


def _cuda_key() -> str:
    """The nvcc release and the architectures torch compiles for (TORCH_CUDA_ARCH_LIST or the
    visible cards): a cache shared between machines must not serve sm_80 code to an sm_90 card."""
    nvcc = (cuda_home() or Path()) / "bin" / "nvcc"
    try:
        version = _tool_output(nvcc, "--version")
    except (OSError, subprocess.CalledProcessError) as e:
        raise VikhrError(f"cannot run {nvcc} --version ({e}); check the CUDA toolkit (CUDA_HOME)") from e
    release = next((line for line in version.splitlines() if "release" in line), version.strip())
    # torch's own -gencode flags (cannot drift), and the nvcc command it runs where one is set
    # (PYTORCH_NVCC, e.g. a ccache wrapper).
    return f"{release}|{' '.join(_cuda_arch_flags())}|{os.environ.get('PYTORCH_NVCC', '')}"


_ARCH_EXAMPLE = 'e.g. "9.0" for H100/H200, "8.0" for A100'


def _cuda_arch_flags() -> list[str]:
    """The -gencode flags torch's build passes to nvcc: TORCH_CUDA_ARCH_LIST, else the visible
    cards'. VikhrError (one line) where torch cannot choose: no GPU visible and no list (a build node
    without one; torch's function raised a bare IndexError), or a list it does not know (ValueError)."""
    from torch.utils import cpp_extension

    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if arch_list in ("", "native") and torch.cuda.device_count() == 0:  # torch's own test for its default
        raise VikhrError(
            "no GPU visible to choose the CUDA architectures to compile the csrc ops for: set "
            f"TORCH_CUDA_ARCH_LIST ({_ARCH_EXAMPLE}) and retry"
        )
    try:
        return cpp_extension._get_cuda_arch_flags()
    except (ValueError, IndexError) as e:
        raise VikhrError(
            f"TORCH_CUDA_ARCH_LIST={arch_list!r} names no CUDA architectures torch can compile for ({e}): "
            f"set it to the cards' compute capabilities ({_ARCH_EXAMPLE}) and retry"
        ) from e


def _compilers_key(with_cuda: bool) -> str:
    """The host compilers torch's build runs, by path and version: $CXX or `c++` (found on PATH) for
    the C++ sources and, with CUDA, $CC where set (torch passes it to nvcc as -ccbin). Another
    compiler (a newer GCC first on PATH, or in CXX) with equal sources reused the library the other
    had built."""
    from torch.utils import cpp_extension

    compilers = [cpp_extension.get_cxx_compiler()]
    if with_cuda and os.environ.get("CC"):
        compilers.append(os.environ["CC"])
    return "|" + "|".join(_compiler_identity(name) for name in compilers)


def _compiler_identity(name: str) -> str:
    """`name`'s path on PATH and the first line of its --version; the bare name where it is not
    found (the build then fails, naming it)."""
    path = shutil.which(name)
    if path is None:
        return name
    try:
        version = _tool_output(Path(path), "--version")
    except (OSError, subprocess.CalledProcessError) as e:
        raise VikhrError(f"cannot run {path} --version ({e}); check the C++ compiler (CXX, CC)") from e
    return f"{path} {next(iter(version.splitlines()), '')}"


# A tool's answer to a probe (`--version`, `-v`) by the tool's path, file stamp and the probe's
# arguments: asked each time the build directory is named (every load, doctor), run once per process
# for each build of a tool.
_TOOL_OUTPUTS: StampedCache[str] = StampedCache(maxsize=32)

# How long a probe of a tool may take: a toolkit on a network mount that stopped answering, or a
# compiler wrapper waiting on a remote cache or a licence server, hung every process that loads the
# ops (a cold one answers in seconds).
PROBE_TIMEOUT_S = 60.0


def _tool_output(tool: Path, *args: str) -> str:
    """`tool ARGS`'s standard output, run once per process for each file stamp of `tool` (a tool
    replaced, or a link switched to another, runs again; stat follows links); OSError (TimeoutError
    after PROBE_TIMEOUT_S) or CalledProcessError where it cannot be run."""
    return _TOOL_OUTPUTS.get((str(tool), args), [tool], lambda: _run_tool(tool, args))


def _run_tool(tool: Path, args: tuple[str, ...]) -> str:
    try:
        return subprocess.run(
            [str(tool), *args], capture_output=True, text=True, check=True, timeout=PROBE_TIMEOUT_S
        ).stdout
    except subprocess.TimeoutExpired:  # run() has killed it
        raise TimeoutError(f"no answer within {PROBE_TIMEOUT_S:g} s") from None


# What torch's build asks the C++ compiler, with no time limit, in every process that loads the ops:
# whether a wrapper is GCC or clang (`-v`), and its version.
_TORCH_COMPILER_PROBES = (("-v",), ("-dumpfullversion", "-dumpversion"))


def require_answering_cxx_compiler() -> None:
    """VikhrError (one line naming the compiler and CXX) where the C++ compiler does not answer one of
    torch's probes within PROBE_TIMEOUT_S: torch would wait on it forever. A probe that fails is left
    to torch, which copes (it asks --version instead, or warns)."""
    from torch.utils import cpp_extension

    name = cpp_extension.get_cxx_compiler()
    path = shutil.which(name)
    if path is None:  # torch's build fails, naming it
        return
    for args in _TORCH_COMPILER_PROBES:
        try:
            _tool_output(Path(path), *args)
        except TimeoutError as e:
            where = f"CXX={name}" if os.environ.get("CXX") else "c++ on PATH"
            raise VikhrError(
                f"cannot run {path} {' '.join(args)} ({e}), which torch's build of the csrc ops runs first; "
                f"check the C++ compiler ({where}), or set CXX to one that answers"
            ) from None
        except (OSError, subprocess.CalledProcessError):
            continue


def _put_ninja_on_path() -> None:
    """torch's JIT build runs `ninja` from PATH; a venv used without activation lacks it there."""
    if shutil.which("ninja") is None:
        import ninja  # the PyPI package ships the binary

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def load_ops(verbose: bool = False) -> Path:
    """Build (first time) and load the ops library: registers `torch.ops.vikhr.*` and their fake
    kernels and backward formulas; returns the path of the loaded shared library."""
    library = compile_ops(with_cuda=cuda_build_possible(), verbose=verbose)
    register_fake_kernels()
    register_backward_formulas()
    return library


def compile_ops(with_cuda: bool, verbose: bool = False, build_root: Path | None = None) -> Path:
    """Compile (or find in the build cache, or under `build_root`) and load the ops library: CPU
    kernels, and CUDA kernels with `with_cuda`, which needs nvcc but no GPU. Returns its path. The
    CUDA architectures are torch's choice: TORCH_CUDA_ARCH_LIST, else the visible cards (so without
    a GPU, the list is needed)."""
    from torch.utils import cpp_extension

    _put_ninja_on_path()
    if with_cuda and cuda_home() is None:
        raise VikhrError(f"no CUDA toolkit found: install one and set CUDA_HOME, or {pip_toolkit_command()}")
    sources = _sources(with_cuda)
    variant = "cuda" if with_cuda else "cpu"
    build_dir = ops_build_dir(with_cuda, build_root)
    require_answering_cxx_compiler()
    build_dir.mkdir(parents=True, exist_ok=True)
    if not _built(build_dir):
        print(f"vikhr: compiling csrc ops for {variant} (first use only)...", file=sys.stderr)
    cflags, cuda_cflags, ldflags = _flags(with_cuda)
    try:
        # A plain library (torch.ops.load_library), not a Python module: no pybind11 to compile.
        with _exclusive_build(build_dir):
            library = cpp_extension.load(
                name=f"vikhr_ops_{variant}",
                sources=[str(s) for s in sources],
                extra_include_paths=[str(csrc_dir())],
                extra_cflags=cflags,
                extra_cuda_cflags=cuda_cflags,
                extra_ldflags=ldflags,
                build_directory=str(build_dir),
                with_cuda=with_cuda,
                is_python_module=False,
                verbose=verbose,
            )
    except (RuntimeError, OSError, ImportError) as e:
        raise VikhrError(f"building the csrc ops failed in {build_dir}: {e}") from e
    return Path(library)


def ops_build_dir(with_cuda: bool, build_root: Path | None = None) -> Path:
    """Where the ops library of this torch, variant, sources and flags is built and cached."""
    variant = "cuda" if with_cuda else "cpu"
    flags_key = (
        repr(_flags(with_cuda))
        + (_cuda_key() if with_cuda else "")
        + _compilers_key(with_cuda)
        + _locations_key(with_cuda)
        # The whole build of torch, not only the release the directory is named by: a +cpu and a
        # +cu132 wheel of one release (or two nightlies) installed in turn at one path differ.
        + f"|{torch.__version__}|{torch.version.git_version}"
    )
    tag = f"torch{torch.__version__.split('+')[0]}-{variant}-{_source_hash(_sources(with_cuda), flags_key)}"
    return (build_root or cache_dir() / "ops") / tag


def _locations_key(with_cuda: bool) -> str:
    """The directories torch's build names by absolute path in build.ninja: the sources and their
    headers, torch's headers and libraries, and nvcc. Two checkouts (or environments) with equal
    sources sharing one build directory rewrote its build.ninja in turn, and ninja recompiled the
    ops each time they alternated; each location keeps its own build instead."""
    locations = [str(csrc_dir()), os.path.dirname(os.path.abspath(torch.__file__))]
    if with_cuda:
        locations.append(str(cuda_home()))
    return "|" + "|".join(locations)


def _built(build_dir: Path) -> bool:
    """Whether `build_dir` (named by the sources, flags and toolchain) holds the built library."""
    return any(build_dir.glob("*.so"))


@contextlib.contextmanager
def _exclusive_build(build_dir: Path) -> Iterator[None]:
    """One vikhr build at a time in `build_dir`, under an OS lock that dies with its process.
    Before torch took an OS-level lock (filelock) too, its lock was a file whose existence blocks:
    a build killed mid-way (SIGTERM, SIGKILL, a timeout) left it behind, and every later build
    waited on it forever. Holding this lock, such a file can only be stale, and is removed; torch's
    filelock file stays (it always exists, and blocks nothing)."""
    from torch.utils import cpp_extension

    # A compile takes minutes: say whose build this process waits for. Once the library is built, the
    # holder (another rank of the same run, as a rule) only finds it up to date and loads it: a
    # moment, and no build to announce.
    waiting = (
        "" if _built(build_dir) else f"vikhr: waiting for the build of the ops in {build_dir} ({{holder}})"
    )
    with exclusive(build_dir / "vikhr-build.lock", waiting, wait=True):
        stale = build_dir / "lock"
        if not hasattr(cpp_extension, "FileLock") and stale.exists():
            print(f"vikhr: removing {stale}, left by a build that was killed", file=sys.stderr)
            stale.unlink(missing_ok=True)
        yield


# An op family -> the op whose kernels stand for it (every op of a family is registered together).
_OP_FAMILIES = {"logsumexp_rows": "logsumexp_rows", "cross_entropy_kl": "cekl_forward"}


@functools.cache  # fixed once the ops are loaded; asked on every op call (require_kernels)
def compiled_ops() -> dict[str, list[str]]:
    """Op name -> devices it is compiled for, as the dispatcher reports after loading the ops."""
    load_ops()
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    return {
        family: [d for d in ("cpu", "cuda") if has_kernel(f"vikhr::{op}", d.upper())]
        for family, op in _OP_FAMILIES.items()
    }


def _assume_constant_result(fn: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compiler.assume_constant_result without its import of torch._dynamo (~1.5 s of every
    process's start-up) when nothing has imported it yet: it only sets this flag on `fn`.
    tests/test_ops_cross_entropy_kl.py's fullgraph compile fails if the flag stops being honoured."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


# Run when torch.compile traces a caller, which then sees a constant: the op's build is fixed
# for the life of the process.
@_assume_constant_result
def kernels_compiled_for(op: str, device_type: str) -> bool:
    """Whether `op` (a key of `compiled_ops`) has kernels for `device_type`; builds on first use."""
    return device_type in compiled_ops()[op]


def require_kernels(op: str, device: torch.device) -> None:
    """Loads the ops (building them on first use); one clear error when `device` has no kernel."""
    if not kernels_compiled_for(op, device.type):
        raise VikhrError(
            f"{op}: the csrc ops were built without {device.type} kernels (no CUDA toolkit found); "
            f"install the CUDA toolkit and set CUDA_HOME (or {pip_toolkit_command()}) and rerun"
        )
