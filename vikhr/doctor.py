"""`vikhr doctor`: what is installed, what compiled, and what vikhr will use."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import platform


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


def collect() -> list[tuple[str, str]]:
    """Rows of (item, status) for the doctor table."""
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
        rows.append(("vikhr._core (Rust)", f"FAILED to import: {e}"))

    try:
        from vikhr.ops.build import compiled_ops

        for op, devices in compiled_ops().items():
            rows.append((f"csrc op {op}", "compiled for " + ", ".join(devices)))
        if cuda and not any("cuda" in d for d in compiled_ops().values()):
            rows.append(("csrc CUDA kernels", "not compiled: no CUDA toolkit (nvcc) found; CPU kernels only"))
    except Exception as e:  # doctor reports, it does not stop
        rows.append(("csrc ops", f"FAILED to build/load: {e}"))

    te = _present("transformer_engine.pytorch")
    rows.append(
        (
            "Transformer Engine",
            "present: TE layer spec"
            if te
            else "absent: vikhr's SDPA layer spec (megatron-core local layers)",
        )
    )
    fa = _present("flash_attn")
    sdpa = "torch SDPA (flash kernels on GPU)" if cuda else "torch SDPA (math kernel on CPU)"
    rows.append(("flash-attn", "present" if fa else f"absent: {sdpa}"))
    rows.append(("megatron-core supported", MEGATRON_CORE_REQUIREMENT.removeprefix("megatron-core")))
    return rows


def run(args: argparse.Namespace) -> int:
    rows = collect()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    failed = [k for k, v in rows if "FAILED" in v or "!!" in v]
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="report versions, devices and which native parts load",
        description="Report library versions, CUDA and GPU, whether vikhr._core and the csrc ops load "
        "(building the ops on first use), and which optional accelerators are present.",
    )
    p.set_defaults(func=run)
