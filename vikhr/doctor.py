"""`vikhr doctor`: what is installed, what compiled, and what vikhr will use.

It also imports every module of vikhr and every package vikhr depends on (many are imported only
where used, so a module imports without them), so that a Python environment put together by hand
(a cluster image, packages on PYTHONPATH) that lacks one is found at once, with the missing package
named, rather than minutes into a run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata as md
import pkgutil
import platform
import sys
from pathlib import Path

# pyproject.toml's dependencies (distribution name -> the module vikhr imports); a test keeps the two equal.
REQUIRED_IMPORTS = {
    "torch": "torch",
    "megatron-core": "megatron.core",
    "transformers": "transformers",
    "sentencepiece": "sentencepiece",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "numpy": "numpy",
    "pyyaml": "yaml",
    "pydantic": "pydantic",
    "tqdm": "tqdm",
    "tensorboard": "tensorboard",
    "matplotlib": "matplotlib",
    "psutil": "psutil",
    "zstandard": "zstandard",
    "ninja": "ninja",
    "lm-eval": "lm_eval",
    "pyarrow": "pyarrow",
}


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _present(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # an optional extra that is absent or broken counts as absent
        return False
    return True


def module_import_problems() -> tuple[int, dict[str, list[str]]]:
    """Import every vikhr module; (modules tried, {problem: modules it stops}).

    A missing package is the problem "missing package NAME" (grouped, as one absent package stops
    many modules), a package without a module vikhr imports (another release) "missing module NAME";
    any other failure by its error (grouped too: a package that fails on import stops many modules).
    """
    import vikhr
    from vikhr.runtime.megatron import import_megatron_core

    with contextlib.suppress(Exception):  # a megatron-core that fails on import: its modules say so below
        import_megatron_core()  # as the entry points do: megatron-core's import-time warnings hidden
    problems: dict[str, list[str]] = {}
    names = [
        m.name
        for m in pkgutil.walk_packages(vikhr.__path__, "vikhr.", onerror=lambda _name: None)
        if not m.name.endswith("__main__")  # running the CLI is not importing it
    ]
    for name in [*names, *REQUIRED_IMPORTS.values()]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            missing = e.name or str(e)
            top = missing.split(".")[0]
            # A package that is there but lacks a module (another release of it) is not missing.
            what = (
                f"missing module {missing}" if top != missing and _present(top) else f"missing package {top}"
            )
            problems.setdefault(what, []).append(name)
        except Exception as e:  # doctor reports, it does not stop; one broken package stops many modules
            problems.setdefault(f"{type(e).__name__}: {e}", []).append(name)
    return len(names), problems


def _module_rows() -> list[tuple[str, str]]:
    tried, problems = module_import_problems()
    if not problems:
        return [("vikhr modules", f"all {tried} import")]
    rows = []
    for problem, modules in problems.items():
        shown = ", ".join(modules[:3]) + (f" and {len(modules) - 3} more" if len(modules) > 3 else "")
        stopped = [m for m in modules if m.startswith("vikhr")]
        what = (
            f"{shown} cannot be imported"
            if stopped
            else f"vikhr needs it (pip install {_dist_of(modules[0])})"
        )
        rows.append((problem, f"FAILED: {what}"))
    return rows


def _dist_of(module: str) -> str:
    return next((d for d, m in REQUIRED_IMPORTS.items() if m == module), module)


# Where vikhr is imported from: a source tree (a checkout, editable or on PYTHONPATH) or an installed wheel.
PACKAGE_DIR = Path(__file__).resolve().parent


def rust_extension_fix(package_dir: Path) -> str:
    """How to get a missing `vikhr._core`: a source tree (pyproject.toml and the Rust crate beside the
    package) builds it in place; an installed wheel (site-packages) was made for another platform or
    Python, or lost the file, and is installed again, or built from the sdist with a Rust toolchain."""
    source_tree = package_dir.parent
    if (source_tree / "pyproject.toml").is_file() and (source_tree / "rust").is_dir():
        return f"build it: `make setup`, or `pip install -e .` in {source_tree}, with a Rust toolchain"
    python = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    return (
        f"vikhr in {package_dir} is an installed wheel without it for this platform and {python}: "
        "reinstall it (pip install --force-reinstall --no-deps vikhr), or build it from source with a "
        "Rust toolchain (pip install --no-binary vikhr vikhr runs maturin)"
    )


def _ops_rows(cuda: bool, build: bool) -> list[tuple[str, str]]:
    if not build:  # what the build cache holds, without building or loading
        try:
            from vikhr.ops.build import cuda_build_possible, ops_build_dir

            built = ops_build_dir(cuda_build_possible())
        except Exception as e:  # doctor reports, it does not stop
            return [("csrc ops", f"not checked (--no-build): {e}")]
        if any(built.glob("*.so")):
            return [("csrc ops", f"built in {built}, not loaded (--no-build)")]
        return [("csrc ops", "not built yet (--no-build skips the first build)")]
    try:
        from vikhr.ops.build import compiled_ops, pip_toolkit_command, require_writable_cache_dir

        require_writable_cache_dir()
        ops = compiled_ops()
    except Exception as e:  # doctor reports, it does not stop
        return [("csrc ops", f"FAILED to build/load: {e}")]
    rows = [(f"csrc op {op}", "compiled for " + ", ".join(devices)) for op, devices in ops.items()]
    if cuda and not any("cuda" in d for d in ops.values()):
        hint = f"install the CUDA toolkit and set CUDA_HOME, or {pip_toolkit_command()}"
        rows.append(
            ("csrc CUDA kernels", f"not compiled: no CUDA toolkit (nvcc) found; CPU kernels only ({hint})")
        )
    return rows


def _attention_rows(cuda: bool, te: bool, flash_attn: bool) -> list[tuple[str, str]]:
    """What runs attention (model.attention: auto): TE's layer spec where it is installed and there is
    a GPU, else vikhr's SDPA spec; flash-attn is called by TE's attention only, never by vikhr."""
    sdpa = "vikhr's SDPA layer spec (megatron-core local layers)"
    kernel = "torch SDPA (flash kernels on GPU)" if cuda else "torch SDPA (math kernel on CPU)"
    if te and cuda:
        rows = [("Transformer Engine", "present: TE layer spec")]
        flash = "present: TE's attention can use it" if flash_attn else "absent: TE's own fused attention"
    else:
        rows = [("Transformer Engine", f"present, unused on the CPU: {sdpa}" if te else f"absent: {sdpa}")]
        flash = f"present, unused without TE on a GPU: {kernel}" if flash_attn else f"absent: {kernel}"
    return [*rows, ("flash-attn", flash)]


def collect(build: bool = True) -> list[tuple[str, str]]:
    """Rows of (item, status) for the doctor table; `build=False` leaves the csrc ops unbuilt."""
    import torch

    from vikhr import __version__
    from vikhr.runtime.megatron import MEGATRON_CORE_REQUIREMENT, megatron_version_problem

    rows: list[tuple[str, str]] = [
        ("vikhr", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
    ]
    problem = megatron_version_problem()
    rows.append(("megatron-core", _version("megatron-core") + (f"  (!! {problem})" if problem else "")))
    for dist in ("transformers", "sentencepiece", "tokenizers", "safetensors", "lm-eval"):
        rows.append((dist, _version(dist)))
    cuda = torch.cuda.is_available()
    rows.append(("CUDA available", "yes" if cuda else "no"))
    rows.append(("GPU", torch.cuda.get_device_name(0) if cuda else "none"))
    rows.append(
        ("distributed backend", "nccl" if cuda else "gloo (CPU runs through vikhr.runtime.cpu_compat)")
    )

    try:
        from vikhr import _core

        rows.append(("vikhr._core (Rust)", f"loads, version {_core.__version__}"))
    except ImportError as e:
        rows.append(("vikhr._core (Rust)", f"FAILED to import: {e} ({rust_extension_fix(PACKAGE_DIR)})"))

    rows.extend(_module_rows())
    rows.extend(_ops_rows(cuda, build))
    from vikhr.assets import CONFIGS

    rows.append(("example configs", f"{CONFIGS} (the docs' configs/: copy it where you run)"))

    try:  # the trainer's own test (megatron's import of TE), where megatron-core imports at all
        from vikhr.model.gpt import have_transformer_engine

        te = have_transformer_engine()
    except Exception:  # megatron-core absent or broken (the rows above say so): doctor reports
        te = False
    rows.extend(_attention_rows(cuda, te, _present("flash_attn")))
    rows.append(("megatron-core supported", MEGATRON_CORE_REQUIREMENT.removeprefix("megatron-core")))
    return rows


def run(args: argparse.Namespace) -> int:
    rows = collect(build=not args.no_build)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    failed = [k for k, v in rows if "FAILED" in v or "!!" in v]
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="report versions, devices and which native parts load",
        description="Report library versions, CUDA and GPU, whether every vikhr module imports (naming "
        "any missing package), whether vikhr._core and the csrc ops load (building the ops on first "
        "use), and which optional accelerators are present. Exits 1 when something is broken.",
    )
    p.add_argument(
        "--no-build",
        action="store_true",
        help="do not build the csrc ops (a first build takes about 40 s on CPU, more with CUDA)",
    )
    p.set_defaults(func=run)
