"""The `vikhr` command: one sub-command per pipeline stage.

Each stage module exposes `register(subparsers)`, which adds its parser and sets `func`
(called with the parsed namespace, returning an exit status). Registering imports only
argparse-level modules: torch, megatron-core, transformers and matplotlib are imported inside the
`func`s that need them (which also quiet megatron-core's import warnings), so `vikhr --help` and
the verbs that do not train (`vikhr data preprocess`) start fast and small (tests/test_cli.py).
"""

from __future__ import annotations

import argparse
import importlib
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from vikhr.errors import (
    ENDINGS,
    VikhrError,
    leave_to_the_first_process,
    report_ending,
    said_by_another_process,
    same_on_every_process,
)

# Stage modules in the order they appear in `vikhr --help`.
COMMAND_MODULES: list[str] = [
    "vikhr.doctor",
    "vikhr.tokenizer.cli",
    "vikhr.adapt.cli",
    "vikhr.data.cli",
    "vikhr.train.cli",
    "vikhr.sft.cli",
    "vikhr.merge.cli",
    "vikhr.convert.cli",
    "vikhr.eval.cli",
    "vikhr.ablate.cli",
    "vikhr.demo",
]


class _VersionAction(argparse.Action):
    """`--version`, with the version looked up only when asked for (it costs start-up time)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        import vikhr

        print(f"vikhr {vikhr.__version__}")
        parser.exit()


class HelpWithDefaults(argparse.HelpFormatter):
    """An option's help ends with its default, unless the help names one or there is none to name
    (no value, an empty list, or a flag: its help says what giving it does)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not _has_default_to_show(action) or "default" in text:
            return text
        return f"{text} ({_default_text(action)})"


def _default_text(action: argparse.Action) -> str:
    shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else "%(default)s"
    return f"default: {shown}"


def _has_default_to_show(action: argparse.Action) -> bool:
    default = action.default
    return bool(action.option_strings) and not (
        action.nargs == 0 or default is None or default == [] or default == argparse.SUPPRESS
    )


class RawDescriptionHelpWithDefaults(argparse.RawDescriptionHelpFormatter, HelpWithDefaults):
    """HelpWithDefaults for a verb whose description is laid out by hand."""


class StoreDashValue(argparse.Action):
    """An option whose value may begin with '-' (`--tasks -bpc`): argparse takes such a word for an
    unknown option and fails with "expected one argument", so OneLineErrorParser joins it to the
    option first (`--tasks=-bpc`)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports usage errors as a single line instead of the usage block, and shows the
    options' defaults in help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if args is not None:  # a verb's parser gets its words as a list
            args = self._join_dash_values(list(args))
        return super().parse_known_args(args, namespace)

    def _join_dash_values(self, args: list[str]) -> list[str]:
        """`OPTION -word` as `OPTION=-word` for a StoreDashValue option, unless the word (before
        a comma) is an option of this parser: `--tasks --model M` still says --tasks lacks its value."""
        options = {s for a in self._actions for s in a.option_strings}
        takes_dash = {s for a in self._actions if isinstance(a, StoreDashValue) for s in a.option_strings}
        joined: list[str] = []
        i = 0
        while i < len(args):
            if args[i] == "--":  # what follows is positional
                return [*joined, *args[i:]]
            named = self._named_option(args[i], options)
            if named in takes_dash and i + 1 < len(args) and _is_dash_value(args[i + 1], options):
                joined.append(f"{args[i]}={args[i + 1]}")
                i += 2
            else:
                joined.append(args[i])
                i += 1
        return joined

    def _named_option(self, word: str, options: set[str]) -> str | None:
        """The option `word` names: itself, or the one long option it abbreviates (`--task` for
        `--tasks`, as argparse reads it); None where it names none or several."""
        if word in options:
            return word
        if not (self.allow_abbrev and word.startswith("--")) or "=" in word:
            return None
        found = [option for option in options if option.startswith(word)]
        return found[0] if len(found) == 1 else None

    def format_help(self) -> str:
        for action in self._actions:
            # argparse lists an option without help bare, without asking the formatter
            if action.help is None and _has_default_to_show(action):
                action.help = _default_text(action)
        return super().format_help()

    def print_help(self, file: IO[str] | None = None) -> None:
        # Under torchrun every process parses the same words: the node's first prints the help, the
        # others exit 0 at once (argparse's --help exits after this; help is no error to wait on).
        if not said_by_another_process():
            super().print_help(file)

    def error(self, message: str) -> None:  # type: ignore[override]
        leave_to_the_first_process()  # under torchrun every process parses the same words
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _is_dash_value(word: str, options: set[str]) -> bool:
    """A word that begins with one '-' and names no option: a value, not an option."""
    return word.startswith("-") and not word.startswith("--") and word.split(",")[0] not in options


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="vikhr",
        description="Turn an English-oriented LLM (Mistral-7B and kin) into an efficient Russian model.",
        epilog="Run 'vikhr COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _describe_by_help(parser)
    return parser


def _describe_by_help(parser: argparse.ArgumentParser) -> None:
    """A verb registered with a one-line help only gets that line as its --help description too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for listed in action._choices_actions:
                verb = action.choices[listed.dest]
                if verb.description is None:
                    verb.description = listed.help
                _describe_by_help(verb)


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub-)parser of the verb `args` chose, e.g. the one of `vikhr sft prepare`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and action.dest:
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                return _chosen_parser(chosen, args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        with same_on_every_process():  # under torchrun every process parses the same words
            args, extras = parser.parse_known_args(argv)
    # An argument's own parser may raise VikhrError (e.g. a character budget); a Ctrl-C may come at
    # once, while the verbs' options are set up.
    except (VikhrError, KeyboardInterrupt) as e:
        return report_ending("vikhr", e)
    verb = _chosen_parser(parser, args)
    if hasattr(args, "overrides"):  # `section.key=value` after an option: argparse leaves it over
        args.overrides = [*args.overrides, *(e for e in extras if not e.startswith("-"))]
        extras = [e for e in extras if e.startswith("-")]
    if extras:  # named by the verb they were given to, with its --help
        files = [e for e in extras if not e.startswith("-")]
        hint = ""
        if files and all(Path(f).exists() for f in files):  # `--corpus ru/*.jsonl.gz`, unquoted
            hint = (
                "; they are files: an option naming a file takes one, repeat it per file (an unquoted "
                "glob gives the shell's list of files)"
            )
        verb.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    try:
        return int(args.func(args) or 0)
    except ENDINGS as e:
        return report_ending(verb.prog, e)


def run(argv: Sequence[str] | None = None) -> int:
    """The `vikhr` command: `main`, then Ctrl-C ignored. The verb has ended and said how; an
    interrupt while the interpreter shuts down (torch takes 0.3 s) printed a traceback from an exit
    handler or turned a reported success into status 130."""
    try:
        return main(argv)
    finally:  # also after argparse's own exit (--help, a usage error)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    raise SystemExit(run())
