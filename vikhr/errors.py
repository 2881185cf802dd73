"""User-facing errors: one clear line saying what is wrong, where, and how to fix it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


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


def require_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Return `path` as a Path, or raise VikhrError if it cannot be written into or created.

    The nearest existing directory on the way is tried with a probe file (removed at once): a
    read-only or foreign-owned place fails here, before any work, not at the first save.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise VikhrError(f"{what} {p} is a file, not a directory (choose another path)")
    existing = p.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise VikhrError(f"{what} {p} cannot be created: {existing} is a file (choose another path)")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise VikhrError(
            f"{what} {p} is not writable: {existing}: {e.strerror or e} (choose a writable path or fix its "
            "permissions)"
        ) from None
    return p


def read_yaml_mapping(path: str | Path, contents: str = "keys") -> dict[str, Any]:
    """The YAML mapping in the config file `path` (empty file: {}); VikhrError in one line otherwise."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise VikhrError(f"config file not found: {p} (check the path)")
    try:
        value = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise VikhrError(
            f"config file {p} is not UTF-8 text ({e.reason} at byte {e.start}); give a YAML file"
        ) from None
    except yaml.YAMLError as e:
        raise VikhrError(f"config file {p} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(value, dict):
        raise VikhrError(f"config file {p}: top level must be a mapping of {contents}")
    return value


def read_json_object(path: Path, fix: str = "fix or re-export it") -> dict[str, Any]:
    """The JSON object in `path`; VikhrError naming the file and `fix` if it is unreadable or no object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise VikhrError(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(value, dict):
        raise VikhrError(f"{path}: expected a JSON object; {fix}")
    return value
