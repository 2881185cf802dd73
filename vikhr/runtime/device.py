"""The one reading of a single-process device flag (`auto`, `cpu`, `cuda`, `cuda:N`).

Evaluation and reward scoring run one model on one device; training chooses its devices through
`vikhr.runtime.distributed` instead (one per local rank).
"""

from __future__ import annotations

import re

from vikhr.errors import VikhrError

DEVICE_PATTERN = r"auto|cpu|cuda(?::(\d+))?"


def torch_device(spec: str | None, flag: str = "--device") -> str:
    """`spec` checked and resolved to a torch device string: `auto` (or None) is `cuda` when a GPU
    is visible, else `cpu`; a CUDA device must exist here."""
    import torch

    spec = spec or "auto"
    match = re.fullmatch(DEVICE_PATTERN, spec)
    if match is None:
        raise VikhrError(f"{flag} {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise VikhrError(f"{flag} {spec}: no CUDA device is available (use {flag} cpu or auto)")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise VikhrError(f"{flag} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return spec
