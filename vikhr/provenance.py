"""What made a record: the vikhr release and checkout, and what decides its numerics.

Training checkpoints (meta.json `provenance`), an ablation grid (work/grid.json `made_with`, and a line
of ablation.md) and `vikhr eval` results record it, so that a figure that no longer reproduces names
the code and libraries that made it; a resume made by other ones says so in one note line.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
PROVENANCE = "provenance"  # the key of a checkpoint's meta.json that holds `provenance()`
# The fields a resume compares, as its note names them.
LABELS = {
    "vikhr": "vikhr",
    "commit": "vikhr commit",
    "torch": "torch",
    "megatron-core": "megatron-core",
    "threads": "threads",
}


@functools.cache
def checkout_commit() -> str | None:
    """`git describe --always --dirty` of the work tree vikhr is imported from; None without git, or
    where vikhr is not the top of a work tree (an installed wheel, or a site-packages that happens to
    lie inside another project's repository, whose commit says nothing about vikhr)."""
    try:
        top = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if not top or Path(top).resolve() != PACKAGE_DIR.parent:
            return None
        described = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return described or None


def provenance() -> dict[str, Any]:
    """vikhr's version and checkout commit (None outside a checkout), the versions of torch and
    megatron-core (None where absent), and torch's intra-op thread count (CPU reductions are split
    by it, so it changes the last bits of CPU figures)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from vikhr import __version__

    try:
        megatron_core: str | None = version("megatron-core")
    except PackageNotFoundError:
        megatron_core = None
    return {
        "vikhr": __version__,
        "commit": checkout_commit(),
        "torch": torch.__version__,
        "megatron-core": megatron_core,
        "threads": torch.get_num_threads(),
    }


def describe(record: dict[str, Any] | None) -> str:
    """The line "vikhr X (commit Y), torch Z, megatron-core W, N threads"; a record older than provenance
    (None) is "a vikhr that recorded no versions", and one of the release alone (a grid.json written
    when the release was a grid setting) "vikhr X (no other versions recorded)"."""
    if record is None:
        return "a vikhr that recorded no versions"
    commit = f" (commit {record['commit']})" if record.get("commit") else ""
    if "torch" not in record:
        return f"vikhr {record.get('vikhr')}{commit} (no other versions recorded)"
    return (
        f"vikhr {record.get('vikhr')}{commit}, torch {record.get('torch')}, "
        f"megatron-core {record.get('megatron-core') or 'absent'}, {record.get('threads')} threads"
    )


def resume_note(recorded: Any, now: dict[str, Any], what: str) -> str | None:
    """The note a resume of `what` prints when `recorded` (its provenance) differs from `now`,
    naming each difference in what it records (an older record may hold the release alone); None when
    they agree or nothing was recorded (an older record)."""
    if not isinstance(recorded, dict):
        return None
    changed = [
        f"{label} {recorded.get(key)} -> {now.get(key)}"
        for key, label in LABELS.items()
        if key in recorded and recorded[key] != now.get(key)
    ]
    if not changed:
        return None
    return (
        f"{what} was made with other code or libraries than this run ({', '.join(changed)}): its figures "
        "may differ from the earlier ones"
    )
