"""User-facing errors: one clear line saying what is wrong, where, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class VikhrError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits with status 2."""


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path, or raise VikhrError if it is not an existing regular file."""
    p = Path(path)
    if not p.exists():
        raise VikhrError(f"{what} not found: {p} (check the path)")
    if not p.is_file():
        raise VikhrError(f"{what} is not a regular file: {p}")
    return p


def require_dir(path: str | Path, what: str = "directory") -> Path:
    """Return `path` as a Path, or raise VikhrError if it is not an existing directory."""
    p = Path(path)
    if not p.is_dir():
        raise VikhrError(f"{what} not found or not a directory: {p} (check the path)")
    return p
