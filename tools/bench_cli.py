"""The benchmark scripts' command-line checks: a bad option is one line on stderr and exit status 2,
before anything is built, measured or written (not a traceback, a ZeroDivisionError or an empty
table after the header)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the scripts run from a checkout, vikhr installed or not
    sys.path.insert(0, str(REPO))

from vikhr.errors import VikhrError  # noqa: E402


class BenchParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, `SCRIPT: error: ... (see 'SCRIPT --help')`, exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a finite number of `kind` above 0 (a count of 0 left the medians empty, a
    size of 0 divided by zero)."""

    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            number = 0
        if not number > 0 or math.isinf(number):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {value!r}")
        return number

    return parse


def check_cuda(parser: argparse.ArgumentParser, device: str | None, option: str = "--device") -> None:
    """Refuse a CUDA device torch does not see (torch's own error came as a traceback after the header)."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        parser.error(f"{option} {device}: not a torch device (give cpu or cuda)")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"{option} {device}: torch sees no CUDA device here (run with {option} cpu)")


def check_input(parser: argparse.ArgumentParser, option: str, path: Path, directory_ok: bool = False) -> None:
    """`path` must be a readable file (or, with `directory_ok`, a directory)."""
    if not path.exists():
        parser.error(f"{option} {path}: no such file (check the path)")
    if path.is_dir() and not directory_ok:
        parser.error(f"{option} {path}: is a directory, not a file (give the file inside it)")
    if not os.access(path, os.R_OK):
        parser.error(f"{option} {path}: not readable (check its permissions)")


def check_output_dir(parser: argparse.ArgumentParser, option: str, path: Path) -> None:
    """`path` must be a directory that exists or can be made: its nearest existing ancestor a
    writable directory (a file there, or a read-only place, failed after the long part)."""
    if path.exists() and not path.is_dir():
        parser.error(f"{option} {path}: is a file, not a directory (give a directory)")
    _check_writable_ancestor(parser, option, path)


def check_output_file(parser: argparse.ArgumentParser, option: str, path: Path) -> None:
    """`path` must be a file that can be written: not a directory, its directory existing and writable."""
    if path.is_dir():
        parser.error(f"{option} {path}: is a directory (give a file name)")
    if not path.parent.is_dir():
        parser.error(f"{option} {path}: no directory {path.parent} (create it, or give another path)")
    _check_writable_ancestor(parser, option, path.parent)


def _check_writable_ancestor(parser: argparse.ArgumentParser, option: str, path: Path) -> None:
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        parser.error(f"{option} {path}: {existing} is a file, not a directory (give another path)")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"{option} {path}: {existing} is not writable (give a writable place)")


def vikhr_error_as_usage(parser: argparse.ArgumentParser, main: Callable[[], Any]) -> Any:
    """Run `main`; a VikhrError (a bad model, task, data file or tokenizer named by an option) is one
    line and exit status 2, as in the vikhr commands, not a traceback."""
    try:
        return main()
    except VikhrError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
