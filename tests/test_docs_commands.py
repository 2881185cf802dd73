"""Every command and config snippet of README.md, docs/*.md and vikhr/assets/README.md works as
written, without the work.

What is read, and by which rule (docs/reliability.md is not read: it lists refused inputs on purpose):

* Fenced blocks tagged `bash`/`sh`, and untagged blocks whose first line (comments aside) starts a
  command of this repository (`vikhr`, `python`, `torchrun`, `srun`, `make`, `tools/X.py`,
  `pretrain_vikhr.py`): shell. Lines are joined at a trailing backslash, here-document bodies dropped,
  `$(...)` stands for one word, comments end a line; each simple command (between `;`, `&&`, `||`,
  `|`, new lines) is checked by its program, the commands of `srun ...` and `bash -c '...'` too.
  Other untagged blocks are program output (tables, logs); `json` blocks are chat records, `mermaid`
  blocks a diagram. A block of any other tag fails the test.
* `yaml` blocks: an ablation grid (it has `arms`), an `sft build` config (it has `sources` or
  `output`) or a trainer config (its keys are trainer sections), validated by that config's schema.
* Inline code outside fences: a span that starts with such a command, or with a vikhr verb and holds
  an `--option`, is a command (it may be a fragment: `vikhr convert` alone, no positionals). A span
  whose words end in `:` among the first three quotes a message (`vikhr demo: error: ...`). A span
  `--option [value]` names an option; `section.key`, `section.key: value` or `section.key=value`
  (section: one of the configs') names a config key, unless its last part is a file suffix
  (`tokenizer.model`, `train.jsonl`).

A program output block right after a block of one `--dry-run` command (nothing between but a blank
line) is what that command prints: the command runs (it reads only the config) and its output is
compared line by line.

Inline code that names a module (`vikhr.sft.template`, `vikhr.convert.load_hf_weights`: a module
and a name it defines) or a file of the repository (`vikhr/train/memory.py`, `configs/x.yaml`,
`rust/core/src/mmidx.rs`; not one with `*` or `{...}`), and a Markdown link to a local file, name
something that exists: a module or file moved or renamed must not leave a pointer to nothing.

Checks: each vikhr verb and sub-verb exists, each `--option` is one of that verb's parser (the
parser `vikhr` builds; exact names, no abbreviations) and the verb's --help renders; a fenced command
also parses in full (choices, types, required options, positionals), and a configs/ file given to
`vikhr sft build` or `vikhr ablate` loads with that verb's loader. `pretrain_vikhr.py` (`vikhr
pretrain`, `vikhr sft train`) options are the trainer's, its `section.key=value` overrides (and
Megatron-LM flags) pass the trainer's config loader, and a `--config` under configs/ loads with them
(files unchecked). torchrun's options are torchrun's own parser's; a `tools/` script's options are
those its `--help` lists (run once per script); a `make` target is the Makefile's. An option named in
prose is an option of some command, and its lower-case value one of its choices where all commands
with it have choices; a key named in prose is a key of the trainer, ablation-grid or sft build
config, with a value that config takes. Placeholders: the words `...` and `…` are dropped; an
upper-case word where a verb or a prose value goes (`vikhr COMMAND --help`, `keep_last: N`) stands
for any; elsewhere an upper-case word (OUT_DIR) is a value like any other.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import functools
import itertools
import os
import re
import shlex
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# docs/reliability.md is the catalogue of refused inputs: the commands it quotes are wrong on purpose.
DOCS = [
    REPO / "README.md",
    *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "reliability.md"),
    REPO / "vikhr" / "assets" / "README.md",  # how the bundled samples are rebuilt
]
SHELL_TAGS = {"bash", "sh", "shell", "console"}
NOT_READ_TAGS = {"json": "chat records", "mermaid": "a diagram"}
# Programs that are not this repository's: their lines are read (for the commands inside srun and
# bash -c) but their own options are not checked.
OTHER_PROGRAMS = {
    "cat", "printf", "echo", "export", "set", "cd", "source", "sbatch", "scontrol", "head", "awk", "ls",
    "mkdir", "nvidia-smi", "pip", "cargo", "cp", "unzip",
}  # fmt: skip
TRAINER_SECTIONS = ("model", "parallel", "data", "train", "optim", "kl", "checkpoint", "logging", "debug")
# the sections of the three configs: trainer, ablation grid (also tokenizer, base, arms), sft build
CONFIG_SECTIONS = (*TRAINER_SECTIONS, "tokenizer", "base", "arms", "limits", "dedup", "reward", "sources")
PLACEHOLDER_WORDS = {"...", "…"}


@dataclass
class Block:
    doc: str
    line: int
    tag: str
    text: str


@dataclass
class Command:
    where: str  # doc:line
    argv: list[str]
    fenced: bool  # a whole command line (inline spans may be fragments)


# --------------------------------------------------------------------------- extraction


def fenced_blocks(doc: Path) -> tuple[list[Block], str]:
    """The fenced blocks of `doc`, and its text with them blanked out (line numbers kept)."""
    blocks, outside, current = [], [], None
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if fence and current is None:
            current = Block(doc.name, number, fence.group(1).lower(), "")
            outside.append("")
        elif fence and current is not None and not fence.group(1):
            blocks.append(current)
            current = None
            outside.append("")
        elif current is not None:
            current.text += line + "\n"
            outside.append("")
        else:
            outside.append(line)
    assert current is None, f"{doc.name}:{number}: fenced block not closed"
    return blocks, "\n".join(outside)


def is_command_word(word: str) -> bool:
    """Whether `word` starts a command of this repository (or a launcher of one: srun, torchrun)."""
    word = word.removeprefix(".venv/bin/")
    names = {"vikhr", "python", "torchrun", "make", "pretrain_vikhr.py", "srun"}
    return word in names or re.fullmatch(r"tools/\S+\.(py|sh)", word) is not None


def block_kind(block: Block) -> str:
    """shell, yaml, or the reason the block is not read."""
    if block.tag in SHELL_TAGS:
        return "shell"
    if block.tag in ("yaml", "yml"):
        return "yaml"
    if block.tag in NOT_READ_TAGS:
        return NOT_READ_TAGS[block.tag]
    assert not block.tag, f"{block.doc}:{block.line}: a ```{block.tag} block: no rule says how to read it"
    first_words = [line.split()[0] for line in block.text.splitlines() if line.strip()]
    first_words = [w for w in first_words if not w.startswith("#")]  # a comment says nothing
    return "shell" if first_words and is_command_word(first_words[0]) else "program output"


def _drop_heredocs(script: str) -> str:
    kept, until = [], None
    for line in script.splitlines():
        if until is not None:
            until = None if line.strip() == until else until
            continue
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        until = heredoc.group(1) if heredoc else None
        kept.append(line)
    return "\n".join(kept)


def _substitutions_as_words(line: str) -> str:
    """`$(...)` (nested parentheses too) as one word: what it prints is the command's argument."""
    out, i = [], 0
    while i < len(line):
        if line.startswith("$(", i):
            depth, i = 1, i + 2
            while i < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[i], 0)
                i += 1
            out.append("SUBSTITUTED")
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def _drop_comments(script: str) -> str:
    """The script without its comments (a `#` that starts a word outside quotes, to the line's end)."""
    out, quote, i = [], "", 0
    while i < len(script):
        c = script[i]
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or script[i - 1].isspace()):
            while i < len(script) and script[i] != "\n":
                i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def simple_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script: words, redirections dropped."""
    text = _drop_comments(_substitutions_as_words(_drop_heredocs(script).replace("\\\n", " ")))
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()\n")
    lexer.whitespace, lexer.whitespace_split, lexer.commenters = " \t\r", True, ""
    commands: list[list[str]] = [[]]
    redirected = False
    for word in lexer:
        if redirected:
            redirected = False
        elif set(word) <= set("<>"):
            redirected = True
        elif set(word) <= set(";&|()\n"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def inline_spans(text: str) -> list[tuple[int, str]]:
    """Inline code spans (single backticks, possibly wrapped over lines) with their line numbers."""
    spans = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        spans.append((text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())))
    return spans


@functools.cache
def vikhr_parser() -> argparse.ArgumentParser:
    from vikhr.cli import build_parser

    return build_parser()


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def inline_command(span: str) -> list[str] | None:
    """The argv of a command an inline span shows, or None when it is not one."""
    words = span.split()
    if not words or "=" in words[0] or any(w.endswith(":") for w in words[:3]):
        return None  # an override, or a message the program prints (`vikhr demo: error: ...`)
    if is_command_word(words[0]):
        return words
    if words[0] in _verbs(vikhr_parser()) and any(w.startswith("--") for w in words):
        return ["vikhr", *words]
    return None


@dataclass
class Found:
    commands: list[Command]
    snippets: list[tuple[str, Any]]  # (where, parsed YAML)
    keys: list[tuple[str, str]]  # (where, `section.key`, `section.key: value` or `section.key=value`)
    options: list[tuple[str, str]]  # (where, `--option`) named in prose


# a config key in prose: `section.key`, `section.key: value`, `section.key=value` (several in one span)
PROSE_KEY = re.compile(r"^([a-z_]+(?:\.[a-z_]+|\[\d+\])+)(?:(?::\s+|=)(\S+))?$")
# the last part of a file name, not of a key: `tokenizer.model`, `train.jsonl`
FILE_SUFFIXES = {
    "py", "json", "jsonl", "model", "yaml", "yml", "md", "gz", "zst", "bin", "idx", "csv", "png", "txt",
}  # fmt: skip


def prose_keys(span: str) -> list[str]:
    """The config keys (with their values) a span names, or [] when it is something else."""
    parts = span.split()
    if not parts or parts[0].split(".")[0] not in CONFIG_SECTIONS:
        return []
    if ":" in span:  # `a.b: x` is one key and its value; `a.b=x c.d=y` are two
        parts = [span]
    keys = []
    for part in parts:
        m = PROSE_KEY.match(part.split("/")[0])  # `checkpoint.dir/run.lock`: a path under the key's value
        if m is None or m.group(1).rsplit(".", 1)[-1] in FILE_SUFFIXES:
            return []
        keys.append(part.split("/")[0])
    return keys


@functools.cache
def collect() -> Found:
    """The commands, YAML snippets, config keys and options of all docs."""
    found = Found([], [], [], [])
    for doc in DOCS:
        blocks, outside = fenced_blocks(doc)
        for block in blocks:
            where = f"{doc.name}:{block.line}"
            kind = block_kind(block)
            if kind == "shell":
                found.commands += [Command(where, argv, True) for argv in simple_commands(block.text)]
            elif kind == "yaml":
                found.snippets.append((where, yaml.safe_load(block.text)))
        for line, span in inline_spans(outside):
            where = f"{doc.name}:{line}"
            argv = inline_command(span)
            option = re.match(r"--[A-Za-z][\w-]*(?: [a-z][\w.-]*$)?", span)  # and a value in lower case
            if argv is not None:
                found.commands += [Command(where, words, False) for words in simple_commands(" ".join(argv))]
            elif option:
                found.options.append((where, option.group(0)))
            else:
                found.keys += [(where, key) for key in prose_keys(span)]
    return found


# --------------------------------------------------------------------------- checks


def option_problems(parser: argparse.ArgumentParser, words: list[str], what: str) -> list[str]:
    """The `--options` among `words` that `parser` does not define (exact names: no abbreviations)."""
    known = parser._option_string_actions
    return [
        f"{what}: unknown option {w.split('=')[0]}"
        for w in words
        if re.match(r"^--?[A-Za-z]", w) and w.split("=")[0] not in known
    ]


def _descend(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The parser of the verb `argv` names, the verbs (from `vikhr`) and the words after them."""
    parser, path, rest = vikhr_parser(), ["vikhr"], list(argv)
    while rest and not rest[0].startswith("-"):
        verbs = _verbs(parser)
        if not verbs or rest[0] not in verbs:
            break
        path.append(rest.pop(0))
        parser = verbs[path[-1]]
    return parser, path, rest


class _ParseError(Exception):
    pass


def full_parse_problem(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """What `parser` says of `argv` (one line, as its usage error), or None when it takes them."""

    def error(message: str) -> None:
        raise _ParseError(message)

    parsers = [parser, *_all_subparsers(parser)]
    saved = [p.error for p in parsers]
    for p in parsers:
        p.error = error  # type: ignore[method-assign]
    try:
        _, extras = parser.parse_known_args(argv)
    except _ParseError as e:
        return str(e)
    finally:
        for p, original in zip(parsers, saved, strict=True):
            p.error = original  # type: ignore[method-assign]
    leftover = [e for e in extras if e.startswith("-")]
    return f"unrecognised {' '.join(leftover)}" if leftover else None


def _all_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for verb in _verbs(parser).values():
        found += [verb, *_all_subparsers(verb)]
    return found


def check_vikhr(command: Command, argv: list[str]) -> list[str]:
    """A `vikhr` command: its verbs, its options, in full where it is a whole line, its config."""
    parser, path, rest = _descend(argv)
    what = f"{command.where}: {' '.join(path)}"
    if rest and rest[0].isupper():  # `vikhr COMMAND --help`: a placeholder stands for any verb
        return []
    verb_missing = bool(_verbs(parser)) and _subcommand_required(parser)
    asks_help = {"-h", "--help", "--version"} & set(rest)
    named_alone = not rest and not command.fenced  # prose may name a verb alone (`vikhr convert`)
    if verb_missing and not asks_help and not named_alone:
        return [f"{what}: no such sub-command {rest[0] if rest else '(none given)'}"]
    problems = option_problems(parser, rest, what)
    parser.format_help()  # the documented verb's --help works
    trains = path[1:] == ["pretrain"] or path[1:3] == ["sft", "train"]
    if trains:
        return problems + check_trainer_args(command.where, rest)
    if command.fenced and not problems:
        problem = full_parse_problem(vikhr_parser(), argv)
        problems += [f"{what}: {problem}"] if problem else [config_problem(what, path[1:], rest)]
    return [p for p in problems if p]


def config_problem(what: str, verbs: list[str], rest: list[str]) -> str | None:
    """A config under configs/ that `vikhr sft build` or `vikhr ablate` is given, read by that verb's
    own loader (which checks keys, values and their combinations, not the files they name)."""
    from vikhr.ablate.config import load_ablate_config
    from vikhr.errors import VikhrError
    from vikhr.sft.build_config import load_build_config

    loaders = {("sft", "build"): load_build_config, ("ablate",): load_ablate_config}
    loader = loaders.get(tuple(verbs))
    config = next((w for w in rest if not w.startswith("-")), "")
    if loader is None or not config.startswith("configs/"):
        return None
    try:
        loader(REPO / config)
    except (VikhrError, OSError) as e:
        return f"{what} {config}: {e}"
    return None


def _subcommand_required(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) and a.required for a in parser._actions)


@functools.cache
def trainer_parser() -> argparse.ArgumentParser:
    from vikhr.train.cli import build_arg_parser

    return build_arg_parser()


def check_trainer_args(where: str, args: list[str]) -> list[str]:
    """pretrain_vikhr.py's options, its overrides' keys and values, and the config they apply to."""
    problems = option_problems(trainer_parser(), args, f"{where}: pretrain_vikhr.py")
    if problems or {"-h", "--help"} & set(args):
        return problems
    problem = full_parse_problem(trainer_parser(), args)
    if problem:
        return [f"{where}: pretrain_vikhr.py: {problem}"]
    from vikhr.train.cli import config_overrides

    parsed = trainer_parser().parse_args(args)
    parsed.overrides = config_overrides(parsed)  # Megatron-LM's flags as the overrides they name
    for override in parsed.overrides:
        problem = override_problem(override)
        problems += [f"{where}: {problem}"] if problem else []
    config = parsed.config
    if config and config.startswith("configs/") and not problems:
        from vikhr.errors import VikhrError
        from vikhr.train.config import load_config

        try:
            load_config(REPO / config, parsed.overrides, check_files=False)
        except (VikhrError, OSError) as e:
            problems.append(f"{where}: --config {config} {' '.join(parsed.overrides)}: {e}")
    return problems


def override_problem(override: str) -> str | None:
    """What the trainer's config loader says of one `section.key=value` override by itself."""
    from vikhr.errors import VikhrError, config_error_line
    from vikhr.train.config import TrainConfig, _check_model, _merge

    key, _, text = override.partition("=")
    raw: dict[str, Any] = {}
    try:
        _merge(raw, key, yaml.safe_load(text))
        cfg = TrainConfig.model_validate(raw)
        _check_model(cfg.model, check_files=False)  # model.overrides.* are ModelConfig fields
    except VikhrError as e:
        return f"override {override}: {e}"
    except pydantic.ValidationError as e:
        return f"override {override}: {config_error_line(e.errors()[0], TrainConfig)}"
    return None


@functools.cache
def tool_options(script: str) -> frozenset[str]:
    """The options `tools/SCRIPT --help` lists (run once per script)."""
    command = ["bash", script] if script.endswith(".sh") else [sys.executable, script]
    done = subprocess.run(
        [*command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{script} --help failed: {done.stderr.strip()[-300:]}"
    text = done.stdout + done.stderr
    usage = text.split("\n\n")[0]  # `usage: ... [--x X] ...`, then the option lines' own start
    listed = re.split(r"^(?:options|optional arguments):$", text, maxsplit=1, flags=re.M)[-1]
    invocations = [
        line.strip().split("  ")[0] for line in listed.splitlines() if line.lstrip().startswith("-")
    ]
    option = r"(?<![\w-])(--?[A-Za-z][\w-]*)"
    return frozenset(re.findall(option, usage) + [o for inv in invocations for o in re.findall(option, inv)])


def check_tool(where: str, script: str, args: list[str]) -> list[str]:
    if not (REPO / script).is_file():
        return [f"{where}: {script} does not exist"]
    known = tool_options(script)
    return [
        f"{where}: {script}: unknown option {w.split('=')[0]}"
        for w in args
        if re.match(r"^--?[A-Za-z]", w) and w.split("=")[0] not in known
    ]


def check_torchrun(where: str, args: list[str]) -> list[str]:
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    script_at = next((i for i, w in enumerate(args) if not w.startswith("-")), len(args))
    problems = option_problems(parser, args[:script_at], f"{where}: torchrun")
    return problems + check_program(where, args[script_at:], fenced=True)


def check_make(where: str, targets: list[str]) -> list[str]:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    return [
        f"{where}: make: no target {t}"
        for t in targets
        if not re.search(rf"^{re.escape(t)}:", makefile, re.M)
    ]


def check_program(where: str, argv: list[str], fenced: bool) -> list[str]:
    """Dispatch one simple command on its program."""
    while argv and re.match(r"^[A-Za-z_]\w*=", argv[0]):  # VAR=value before the program
        argv = argv[1:]
    argv = [w for w in argv if w not in PLACEHOLDER_WORDS]
    if not argv:
        return []
    head, args = argv[0].removeprefix(".venv/bin/"), argv[1:]
    if head in ("python", "python3") and args[:2] == ["-m", "vikhr"]:
        head, args = "vikhr", args[2:]
    elif head in ("python", "python3") and args[:1] and args[0].startswith("-"):
        return []  # python -c, python -I ...: the interpreter's own options
    elif head in ("python", "python3") and args:
        head, args = args[0], args[1:]
    elif head in ("python", "python3", "torchrun", "srun", "make") and not args:
        return []  # the program named alone, in prose
    if head == "vikhr":
        return check_vikhr(Command(where, argv, fenced), args)
    if head in ("pretrain_vikhr.py", "./pretrain_vikhr.py"):
        return check_trainer_args(where, args)
    if head == "torchrun":
        return check_torchrun(where, args)
    if head == "srun":
        return check_program(where, _launched(args), fenced)
    if head == "bash" and args[:1] == ["-c"]:
        return [p for cmd in simple_commands(args[1]) for p in check_program(where, cmd, fenced)]
    if head.startswith("tools/"):
        return check_tool(where, head, args)
    if head == "make":
        return check_make(where, args)
    if head in OTHER_PROGRAMS or head.startswith("#"):
        return []
    return [f"{where}: {head}: not a program of this repository nor a known other one (add a rule)"]


def _launched(args: list[str]) -> list[str]:
    """The command srun starts: from the first word that names a program (srun's options, `-N 2` or
    `--nodes=2`, come before it)."""
    at = next(
        (i for i, w in enumerate(args) if is_command_word(w) or w in {"bash", *OTHER_PROGRAMS}), len(args)
    )
    return args[at:]


def snippet_problem(where: str, snippet: Any) -> str | None:
    """A YAML snippet validated by the schema of the config it is part of."""
    from vikhr.ablate.config import AblateConfig
    from vikhr.sft.build_config import BuildConfig
    from vikhr.train.config import TrainConfig

    if not isinstance(snippet, dict):
        return f"{where}: a YAML block that is not a mapping: no rule says which config it is"
    if "arms" in snippet:
        schema: type[pydantic.BaseModel] = AblateConfig
    elif "sources" in snippet or "output" in snippet:
        schema = BuildConfig
    elif set(snippet) <= set(TRAINER_SECTIONS):
        schema = TrainConfig
    else:
        return f"{where}: a YAML block of keys {sorted(snippet)}: no rule says which config it is"
    try:
        schema.model_validate(snippet)
    except pydantic.ValidationError as e:
        return f"{where}: {schema.__name__}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}"
    return None


def _section_inside(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The config section an annotation holds (itself, in a list or optional), if any."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    return next(filter(None, map(_section_inside, typing.get_args(annotation))), None)


def _key_in(schema: type[pydantic.BaseModel], parts: list[str], value: Any, has_value: bool) -> str | None:
    """Why `schema` has no key `parts` or refuses `value` for it; None when it takes them."""
    from vikhr.model.config import ModelConfig

    name, rest = re.sub(r"\[\d+\]$", "", parts[0]), parts[1:]
    if name not in schema.model_fields:
        return f"{schema.__name__} has no key {name}"
    if name == "overrides" and rest:  # model.overrides.FIELD: a ModelConfig field
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        return None if rest[0] in known else f"ModelConfig has no field {rest[0]}"
    if rest:
        inner = _section_inside(schema.model_fields[name].annotation)
        return _key_in(inner, rest, value, has_value) if inner else f"{name} has no sub-keys"
    if has_value:
        try:
            schema.model_validate({name: value})
        except pydantic.ValidationError as e:
            wrong = [err["msg"] for err in e.errors() if err["loc"][:1] == (name,)]
            return f"{name}: {wrong[0]}" if wrong else None
    return None


def prose_key_problem(text: str) -> str | None:
    """A key named in prose is a key of the trainer, ablation-grid or sft build config (prose speaks
    of all three), and a value given with it is one that config takes for it."""
    from vikhr.ablate.config import AblateConfig
    from vikhr.sft.build_config import BuildConfig
    from vikhr.train.config import TrainConfig

    key, _, value_text = _key_value(text)
    value_text = "" if value_text.isupper() else value_text  # `checkpoint.keep_last: N`: a placeholder
    value = yaml.safe_load(value_text) if value_text else None
    reasons = [
        _key_in(schema, key.split("."), value, bool(value_text))
        for schema in (TrainConfig, AblateConfig, BuildConfig)
    ]
    return None if None in reasons else f"config key {text}: {'; '.join(reasons)}"


def _key_value(text: str) -> tuple[str, str, str]:
    m = re.match(r"^([^:=\s]+)(?:(:\s+|=)(.*))?$", text)
    assert m is not None
    return m.group(1), m.group(2) or "", m.group(3) or ""


def prose_option_problem(text: str) -> str | None:
    """An option named in prose is one of some command; a value given with it (`--template own`) is
    one of its choices where it has choices (upper-case values are placeholders, not read)."""
    option, _, value = text.partition(" ")
    if option not in all_options():
        return f"{option} is an option of no command"
    actions = [a for p in _option_parsers() for a in [p._option_string_actions.get(option)] if a is not None]
    with_choices = [a.choices for a in actions if a.choices is not None]
    if (
        value
        and with_choices
        and len(actions) == len(with_choices)
        and all(value not in c for c in with_choices)
    ):
        return f"{text}: {value} is not a choice of {option} ({', '.join(map(str, with_choices[0]))})"
    return None


@functools.cache
def _option_parsers() -> tuple[argparse.ArgumentParser, ...]:
    from torch.distributed.run import get_args_parser

    return (vikhr_parser(), *_all_subparsers(vikhr_parser()), trainer_parser(), get_args_parser())


@functools.cache
def all_options() -> frozenset[str]:
    """Every option of vikhr's verbs, pretrain_vikhr.py, torchrun and the tools the docs name."""
    options = {o for p in _option_parsers() for o in p._option_string_actions}
    for tool in tools_named():
        options |= tool_options(tool)
    return frozenset(options)


def tools_named() -> list[str]:
    """The tools/ scripts the docs' commands run (those that exist), their --help read side by side."""
    named = {w for c in collect().commands for w in c.argv if re.fullmatch(r"tools/\S+\.(py|sh)", w)}
    tools = sorted(t for t in named if (REPO / t).is_file())
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # the longest two take most
        list(pool.map(tool_options, tools))
    return tools


def docs_problems() -> list[str]:
    found = collect()
    tools_named()  # their --help first, two at a time, rather than one by one as the commands come
    problems = []
    for command in found.commands:
        problems += check_program(command.where, command.argv, command.fenced)
    for where, snippet in found.snippets:
        problem = snippet_problem(where, snippet)
        problems += [problem] if problem else []
    for where, key in found.keys:
        problem = prose_key_problem(key)
        problems += [f"{where}: {problem}"] if problem else []
    for where, option in found.options:
        problem = prose_option_problem(option)
        problems += [f"{where}: {problem}"] if problem else []
    return problems


def shown_outputs() -> list[tuple[str, list[str], str]]:
    """(where, argv, text) of each program output block that directly follows a block of one
    `--dry-run` command of the trainer: the output the docs show for it."""
    shown = []
    for doc in DOCS:
        blocks = fenced_blocks(doc)[0]
        for command, output in itertools.pairwise(blocks):
            commands = simple_commands(command.text) if block_kind(command) == "shell" else []
            command_end = command.line + command.text.count("\n") + 1  # the closing fence's line
            if (
                len(commands) == 1
                and "--dry-run" in commands[0]
                and block_kind(output) == "program output"
                and output.line <= command_end + 2
            ):
                shown.append((f"{doc.name}:{output.line}", commands[0], output.text))
    return shown


def output_problem(where: str, argv: list[str], shown: str) -> str | None:
    """How what the trainer's `argv` prints differs from `shown` (trailing spaces aside), or None."""
    import contextlib
    import io

    from vikhr.train.cli import main

    at = argv.index("pretrain_vikhr.py") + 1 if "pretrain_vikhr.py" in argv else argv.index("pretrain") + 1
    args = [str(REPO / w) if w.startswith("configs/") else w for w in argv[at:]]
    printed_text = io.StringIO()
    with contextlib.redirect_stdout(printed_text):
        main(args)
    printed, expected = (
        [line.rstrip() for line in text.strip("\n").splitlines()] for text in (printed_text.getvalue(), shown)
    )
    differing = [(e, p) for e, p in zip(expected, printed, strict=False) if e != p]
    if len(printed) != len(expected) or differing:
        first = differing[0] if differing else (f"{len(expected)} lines", f"{len(printed)} lines")
        return f"{where}: {' '.join(argv)} prints {first[1]!r} where the docs show {first[0]!r}"
    return None


def _module_file(parts: list[str]) -> Path | None:
    """The source of module `parts` (a package's __init__.py), or its built extension (vikhr._core)."""
    path = REPO.joinpath(*parts)
    sources = [path.with_suffix(".py"), path / "__init__.py", *path.parent.glob(f"{path.name}.*.so")]
    return next((f for f in sources if f.is_file()), None)


@functools.cache
def _top_level_names(module: Path) -> frozenset[str]:
    """What a module defines or imports at its top level (read, not imported: some import torch)."""
    names = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            names |= set(ast.literal_eval(node.value))  # given on first use by the module's __getattr__
    return frozenset(names)


def named_module_problem(dotted: str) -> str | None:
    """Why `vikhr.a.b[.name]` is neither a module of the package nor a name one defines; None if it is."""
    parts = dotted.split(".")
    found = next((i for i in range(len(parts), 0, -1) if _module_file(parts[:i])), 0)
    module = _module_file(parts[:found]) if found else None
    if module is None:
        return f"{dotted}: no such module"
    rest = parts[found:]
    if module.suffix == ".so":  # a built extension: its names are not read here
        return None
    if rest and rest[0] not in _top_level_names(module):  # (a name's own attributes are not read)
        return f"{dotted}: {'.'.join(parts[:found])} defines no {rest[0]}"
    return None


NAMED_MODULE = re.compile(r"(?<![\w/.])vikhr(?:\.\w+)+")
NAMED_FILE = re.compile(r"(?<![\w/.~$-])(?:vikhr|rust|csrc|tools|tests|configs|docs)/[\w./-]*\w/?")
LOCAL_LINK = re.compile(r"\]\((?!https?:)([^)#\s]+)")


def _a_pattern(after: str) -> bool:
    """Whether a path goes on as a pattern (`x.*`, `x{a,b}`, `x*.py`) rather than as a name."""
    return after[:1] in ("*", "{") or after[:2] == ".*"


def named_things_problems() -> list[str]:
    """The modules, repository files and linked files the docs name that do not exist."""
    problems = []
    for doc in DOCS:
        outside = fenced_blocks(doc)[1]
        for line, span in inline_spans(outside):
            where = f"{doc.name}:{line}"
            for dotted in NAMED_MODULE.findall(span):
                problem = named_module_problem(dotted)
                problems += [f"{where}: {problem}"] if problem else []
            files = [m.group(0) for m in NAMED_FILE.finditer(span) if not _a_pattern(span[m.end() :])]
            problems += [f"{where}: {f} does not exist" for f in files if not (REPO / f).exists()]
        for m in LOCAL_LINK.finditer(outside):
            where = f"{doc.name}:{outside.count(chr(10), 0, m.start()) + 1}"
            problems += (
                [] if (doc.parent / m.group(1)).exists() else [f"{where}: link to {m.group(1)}: no such file"]
            )
    return problems


# --------------------------------------------------------------------------- chains


def trainer_args(argv: list[str]) -> list[str] | None:
    """The trainer's arguments of a command that runs it (pretrain_vikhr.py, alone or under python or
    torchrun; vikhr pretrain; vikhr sft train), or None for another command."""
    if argv[:2] == ["vikhr", "pretrain"]:
        return argv[2:]
    if argv[:3] == ["vikhr", "sft", "train"]:
        return argv[3:]
    at = next((i for i, word in enumerate(argv) if word.endswith("pretrain_vikhr.py")), None)
    return None if at is None else argv[at + 1 :]


def datasets_written(argv: list[str]) -> list[str]:
    """The dataset prefixes a command writes: `vikhr data preprocess`'s (one per --json-keys key) and
    `vikhr sft prepare`'s."""
    from vikhr.data.indexed import dataset_prefix

    if argv[:3] == ["vikhr", "data", "preprocess"]:
        args = vikhr_parser().parse_args(argv[1:])
        return [dataset_prefix(args.output_prefix, key) for key in args.json_keys]
    if argv[:3] == ["vikhr", "sft", "prepare"]:
        return [vikhr_parser().parse_args(argv[1:]).output_prefix]
    return []


def chain_problems(doc: Path) -> tuple[list[str], list[str]]:
    """A doc's commands read in order: each trainer run with a configs/ file, after commands that write
    datasets, trains on datasets they wrote (a config naming other prefixes fails there: file not
    found). Returns the problems and the trainer commands checked."""
    from vikhr.train.cli import config_overrides
    from vikhr.train.config import load_config

    written: set[str] = set()
    problems, checked = [], []
    for block in fenced_blocks(doc)[0]:
        if block_kind(block) != "shell":
            continue
        for argv in simple_commands(block.text):
            written.update(datasets_written(argv))
            args = trainer_args(argv)
            if args is None or not written or "--dry-run" in args:
                continue
            parsed = trainer_parser().parse_args(args)
            if not (parsed.config or "").startswith("configs/"):
                continue
            config = load_config(REPO / parsed.config, config_overrides(parsed), check_files=False)
            where = f"{doc.name}:{block.line}: --config {parsed.config}"
            checked.append(where)
            problems += [
                f"{where} trains on {entry.prefix}, which no command before it writes ({sorted(written)})"
                for entry in config.data.train
                if entry.prefix not in written
            ]
    return problems, checked


# --------------------------------------------------------------------------- tests


def test_each_trainer_run_trains_on_the_datasets_the_commands_before_it_write() -> None:
    """README's chain, at 7B and on the CPU with the tiny configs, hands stage 3's and stage 5's
    prefixes to the trainer: swapping a 7B config for the tiny one needs no other dataset path."""
    results = {doc: chain_problems(doc) for doc in DOCS}
    problems = [problem for found, _ in results.values() for problem in found]
    assert not problems, "\n".join(problems)
    readme = results[REPO / "README.md"][1]
    for config in ("mistral-7b-v0.2", "sft-mistral-7b", "tiny-cpu", "sft-tiny-cpu"):
        assert any(where.endswith(f"configs/{config}.yaml") for where in readme), (config, readme)


def test_every_documented_command_and_config_snippet_is_accepted() -> None:
    problems = docs_problems()
    assert not problems, "\n".join(problems)


def test_the_output_shown_for_a_dry_run_is_what_it_prints() -> None:
    shown = shown_outputs()
    assert any("--dry-run" in argv for _, argv, _ in shown)  # docs/scaling.md's memory table
    problems = [problem for args in shown for problem in [output_problem(*args)] if problem]
    assert not problems, "\n".join(problems)


def test_a_changed_output_is_named() -> None:
    argv = [
        "python",
        "pretrain_vikhr.py",
        "--config",
        "configs/mistral-7b-v0.2.yaml",
        "--dry-run",
        "--gpus",
        "8",
    ]
    where, _, table = next(s for s in shown_outputs() if "--dry-run" in s[1])
    problem = output_problem(where, argv, table) or ""  # the table shown is the one of 32 GPUs
    assert "32 GPUs of 80 GiB" in problem and "8 GPUs of 80 GiB" in problem, problem


def test_the_readme_s_example_of_an_input_error_is_the_line_vikhr_prints(tmp_path: Path) -> None:
    shown = [span for _, span in inline_spans(fenced_blocks(REPO / "README.md")[1]) if ": error: " in span]
    assert len(shown) == 1 and shown[0].startswith("vikhr demo: error: Russian corpus not found: "), shown
    missing = shown[0].split(": ")[3].split()[0]  # the corpus the example names
    done = subprocess.run(
        [sys.executable, "-m", "vikhr", "demo", "--ru-corpus", missing],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr.strip()) == (2, shown[0])
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_modules_and_files_the_docs_name_exist() -> None:
    problems = named_things_problems()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "named, problem",
    [
        ("vikhr.trainer", "vikhr.trainer: vikhr defines no trainer"),
        (
            "vikhr.train.memory.dry_run_tables",
            "vikhr.train.memory.dry_run_tables: vikhr.train.memory defines no dry_run_tables",
        ),
        ("vikhr.convert.load_hf_weights", None),  # a name the package gives on first use (__all__)
        ("vikhr.sft.template", None),
        ("vikhr._core", None),  # the built extension
    ],
)
def test_a_moved_module_is_named(named: str, problem: str | None) -> None:
    assert named_module_problem(named) == problem


def test_the_docs_show_the_commands_the_extraction_expects() -> None:
    """The extraction finds what the docs hold: a parser that read nothing would pass the test above."""
    found = collect()
    commands = found.commands
    shown = {" ".join(c.argv[:3]) for c in commands}
    for expected in (
        "vikhr tokenizer train",
        "vikhr sft build",
        "vikhr eval compare",
        "vikhr ablate configs/ablate-cpu.yaml",
    ):
        assert expected in shown, expected
    assert any(c.argv[0] == "torchrun" and "pretrain_vikhr.py" in c.argv for c in commands)
    assert any(c.argv[:2] == ["python", "tools/bench_train.py"] for c in commands)
    assert len(found.snippets) >= 3 and len(found.keys) > 20 and len(found.options) > 100


def test_output_blocks_are_told_from_commands() -> None:
    output = Block("x.md", 1, "", " TP  DP  params/GPU\n  1   8      7.308B\n")
    command = Block("x.md", 1, "", "python tools/bench_train.py --cpu-small\n")
    assert block_kind(output) == "program output"
    assert block_kind(command) == "shell"
    with pytest.raises(AssertionError, match="no rule"):
        block_kind(Block("x.md", 1, "toml", "a = 1\n"))


def test_shell_reading_joins_lines_and_splits_commands() -> None:
    script = "N=4; vikhr data preprocess \\\n  --input $(ls a | awk '{print}') --json-keys text  # note\n"
    script += "cat > t.csv <<'CSV'\nmodel,x\nCSV\nsrun -n 1 bash -c 'vikhr doctor --no-build'\n"
    assert simple_commands(script) == [
        ["N=4"],
        ["vikhr", "data", "preprocess", "--input", "SUBSTITUTED", "--json-keys", "text"],
        ["cat"],
        ["srun", "-n", "1", "bash", "-c", "vikhr doctor --no-build"],
    ]


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["vikhr", "data", "preprocess", "--inputs", "x"], "unknown option --inputs"),
        (["vikhr", "sft", "bild", "x.yaml"], "no such sub-command bild"),
        (["vikhr", "eval", "--dtype", "fp8"], "invalid choice"),
        (["pretrain_vikhr.py", "--config", "c.yaml", "train.recompute=selective"], "train.recompute"),
        (["pretrain_vikhr.py", "optim.warmup=10"], "optim.warmup"),
        (["torchrun", "--nproc-per-gpu=8", "pretrain_vikhr.py"], "unknown option --nproc-per-gpu"),
        (["python", "tools/bench_train.py", "--cpu-tiny"], "unknown option --cpu-tiny"),
        (["make", "demos"], "no target demos"),
        (["vikhr", "ablate", "configs/ablate-tiny.yaml"], "ablate-tiny.yaml"),
        (["vikhr", "sft", "build", "configs/sft-tiny-cpu.yaml"], "trainer config"),
        (["pretrain_vikhr.py", "--config", "configs/tiny-cpu.yaml", "train.steps=0"], "train.steps"),
        (["srun", "-N", "2", "bash", "-c", "vikhr doctor --no-built"], "unknown option --no-built"),
        (["deepspeed", "x.py"], "not a program of this repository"),
    ],
)
def test_a_wrong_command_is_named(argv: list[str], problem: str) -> None:
    problems = check_program("doc.md:1", argv, fenced=True)
    assert len(problems) == 1 and problem in problems[0], problems


def test_a_wrong_config_snippet_is_named() -> None:
    build = {"output": "x.jsonl", "tokenizer": "t/", "dedupe": {}, "sources": [{"name": "a", "path": "a"}]}
    assert "dedupe" in (snippet_problem("d:1", build) or "")
    assert "recompute" in (snippet_problem("d:1", {"train": {"recompute": "selective"}}) or "")
    assert snippet_problem("d:1", {"data": {"train": [{"prefix": "/d/ru", "weight": 0.5}]}}) is None


@pytest.mark.parametrize(
    "span, problem",
    [
        ("checkpoint.keep_latest: N", "CheckpointSection has no key keep_latest"),
        ("train.recompute: selective", "recompute"),
        ("model.overrides.num_layer", "ModelConfig has no field num_layer"),
        ("dedup.threshold: 2", "threshold"),
    ],
)
def test_a_wrong_key_in_prose_is_named(span: str, problem: str) -> None:
    assert prose_keys(span) == [span]
    assert problem in (prose_key_problem(span) or ""), prose_key_problem(span)


def test_keys_of_any_of_the_three_configs_and_file_names_pass() -> None:
    assert prose_key_problem("train.ru_share") is None  # the ablation grid's
    assert prose_key_problem("checkpoint.keep_last: N") is None  # a placeholder value
    assert prose_key_problem("reward.top_fraction: 0.9") is None  # sft build's
    assert prose_keys("tokenizer.model") == [] and prose_keys("train.jsonl") == []


def test_a_wrong_option_in_prose_is_named() -> None:
    assert "option of no command" in (prose_option_problem("--vocab-sizes") or "")
    assert "not a choice" in (prose_option_problem("--template llama4") or "")
    assert prose_option_problem("--template own") is None
