"""The `vikhr` command: one sub-command per pipeline stage.

Each stage module exposes `register(subparsers)`, which adds its parser and sets `func`
(called with the parsed namespace, returning an exit status). Heavy imports (torch,
megatron-core) happen inside those functions so that `vikhr --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vikhr import __version__
from vikhr.errors import VikhrError

# Stage modules in the order they appear in `vikhr --help`.
COMMAND_MODULES: list[str] = [
    "vikhr.doctor",
    "vikhr.tokenizer.cli",
    "vikhr.adapt.cli",
    "vikhr.data.cli",
    "vikhr.train.cli",
    "vikhr.sft.cli",
    "vikhr.convert.cli",
    "vikhr.eval.cli",
    "vikhr.demo",
]


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports usage errors as a single line instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="vikhr",
        description="Turn an English-oriented LLM (Mistral-7B and kin) into an efficient Russian model.",
        epilog="Run 'vikhr COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"vikhr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vikhr.runtime.megatron import quiet_megatron_warnings

    quiet_megatron_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VikhrError as e:
        print(f"vikhr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vikhr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
