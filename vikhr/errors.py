"""User-facing errors: one clear line saying what is wrong, where, and how to fix it."""

from __future__ import annotations

import contextlib
import difflib
import errno
import json
import os
import select
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args


class VikhrError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits with status 2."""

    # Met alike by every process of a node (`same_on_every_process`): said by the node's first only.
    alike_on_every_process = False


@contextlib.contextmanager
def same_on_every_process() -> Iterator[None]:
    """Marks a VikhrError raised inside as one that every process of a torchrun job on a node meets
    alike: it depends only on the config and the files, checked before the processes talk to each
    other. `report_ending` then has the node's first process say it, not every GPU's before torchrun's
    own report. An error that may differ from rank to rank (a GPU's binding, its memory) is not marked."""
    try:
        yield
    except VikhrError as e:
        e.alike_on_every_process = True
        raise


# How long a node's other processes wait for torchrun to end them, once the first has said an error
# all meet alike (torchrun ends a job's processes within a second of one ending: had one of them
# ended first, the first could be ended before it said a word). Then they say it themselves.
ALIKE_ERROR_WAIT_S = 30.0


def _await_the_first_process() -> None:
    time.sleep(ALIKE_ERROR_WAIT_S)


def leave_to_the_first_process() -> None:
    """Before saying an error that every process of a torchrun job on a node meets alike (its
    arguments, its config): on all but the node's first, wait for torchrun to end this process once
    the first has said it."""
    if said_by_another_process():
        _await_the_first_process()


def said_by_another_process() -> bool:
    """Whether this process runs under torchrun, which ends a job's processes once one has ended, and
    is not its node's first (LOCAL_RANK 0), which says what all meet alike (an error, --help). Started
    by srun alone, each process says it."""
    return "TORCHELASTIC_RUN_ID" in os.environ and os.environ.get("LOCAL_RANK", "0") != "0"


class RunStopped(Exception):
    """A run that saved its step and stopped before its end, on a signal it was told to stop on (a
    cluster's notice) or at its time limit; the CLI prints the message (rank 0) and exits with the
    status the stop gives."""

    def __init__(self, message: str, status: int, hint: str = "run the same command again to resume") -> None:
        super().__init__(message)
        self.status = status
        self.hint = hint  # how to continue: the verb that ran the trainer knows best


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C in a verb that another run continues: `hint` says how, on the line that reports it."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `kill`, a job scheduler's stop) in a command that writes its outputs under scratch
    names: raised where the command is, as Ctrl-C is, so that the same clean-up runs (scratch files
    and locks removed, a moved-aside record put back); the CLI ends with the shell's status for it."""

    status = 128 + signal.SIGTERM


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` instead of ending the process at once (which
    left scratch files behind and a moved-aside record lost). Only where the process still has the
    default action for it, in its main thread: a program's own handler is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("terminated (SIGTERM): stopped, what was at its outputs is as it was")


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Within the block (the few renames that put a command's outputs in place together), SIGTERM
    and Ctrl-C wait: one that comes is delivered as the block ends, so a stop lands before the outputs
    are replaced or after, never between (a new dataset beside the old one's mask). In the main
    thread only, where Python runs signal handlers; elsewhere the block runs as it is."""
    held = (signal.SIGINT, signal.SIGTERM)
    before = {signum: signal.getsignal(signum) for signum in held}
    # None: a handler set outside Python, which cannot be put back.
    if threading.current_thread() is not threading.main_thread() or None in before.values():
        yield
        return
    came: list[int] = []
    for signum in held:
        signal.signal(signum, lambda number, frame: came.append(number))
    completed = False
    try:
        yield
        completed = True
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if came and completed:  # the outputs are the new ones: said so, not "as it was"
            if before[came[0]] is _raise_terminated:
                raise Terminated(f"terminated (SIGTERM): {_ONCE_IN_PLACE}")
            if before[came[0]] is signal.default_int_handler:
                raise Interrupted(_ONCE_IN_PLACE)
        if came:
            signal.raise_signal(came[0])  # through the handler put back: as if it came now


_ONCE_IN_PLACE = "stopped once its outputs were in place: they are complete"


def _stdout_closed() -> bool:
    """Whether stdout's reader went away (`vikhr ... | head`): a broken pipe elsewhere is an error."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):  # a pipe without a reader
        return False
    # As the shell's tools end on SIGPIPE: without a message. stdout now points at /dev/null, or
    # Python's own flush at exit would fail once more.
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return True


# The shell's status of a process ended by SIGPIPE.
BROKEN_PIPE_STATUS = 141
# How a command may end early, each told in one line by `report_ending`.
ENDINGS = (VikhrError, OSError, RunStopped, KeyboardInterrupt)


def report_ending(prog: str, e: BaseException) -> int:
    """Print in one line how command `prog` ended on `e` (one of ENDINGS); returns its exit status."""
    if isinstance(e, RunStopped):  # said once (rank 0 under torchrun): every rank stops alike
        if os.environ.get("RANK", "0") == "0":
            print_error_line(f"{prog}: {e}; {e.hint}")
        return e.status
    if isinstance(e, Terminated):
        print_error_line(f"{prog}: {e}")
        return e.status
    if isinstance(e, KeyboardInterrupt):  # Ctrl-C ends the program, whichever verb ran
        how = f"; {e.hint}" if isinstance(e, Interrupted) else ""
        print_error_line(f"{prog.split()[0]}: interrupted{how}")
        return 130
    if isinstance(e, BrokenPipeError) and _stdout_closed():
        return BROKEN_PIPE_STATUS
    if isinstance(e, VikhrError) and e.alike_on_every_process:
        leave_to_the_first_process()
    # OSError: the machine refused a read or write (a read-only place, a full disk).
    print_error_line(f"{prog}: error: {os_error_line(e) if isinstance(e, OSError) else e}")
    return 2


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name where it has none): a library's
    multi-line message quoted in one error line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def os_error_line(e: OSError) -> str:
    """What the machine refused (a read-only place, a full disk), as one line with the way out."""
    if e.errno == errno.ENOSPC:
        where = f" writing {e.filename}" if e.filename else ""
        return f"no space left on the device{where} (free some space, or write elsewhere)"
    where = f" {e.filename}" if e.filename else ""
    return f"cannot access{where}: {e.strerror or e} (check the path, its permissions and the free space)"


def print_error_line(line: str) -> None:
    """Print `line` on stderr in a single write: under torchrun every rank shares one pipe, and
    print()'s separate write of the newline lets two ranks' lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def split_label(spec: str, what: str = "PATH") -> tuple[str | None, str]:
    """A command-line `NAME=PATH` or `PATH` -> (NAME or None, PATH). A path holding "=" (sweep
    directories like ``lr=3e-4``) is taken whole when it exists; else the spec splits at the first
    "=" after which a path exists, or at its first "=" when none does (the error names that path)."""
    if "=" not in spec or Path(spec).exists():
        return None, spec
    cuts = [i for i, c in enumerate(spec) if c == "="]
    cut = next((i for i in cuts if Path(spec[i + 1 :]).exists()), cuts[0])
    name, path = spec[:cut], spec[cut + 1 :]
    if not name.strip():
        raise VikhrError(f"{spec!r}: the label before '=' is empty (give NAME={what}, or the {what} alone)")
    if not path:
        raise VikhrError(f"{spec!r} names no {what.lower()} (give NAME={what}, or the {what} alone)")
    return name, path


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


# Files that mark a directory as a vikhr training checkpoint: a step's description, or a run's
# pointer to its latest step (vikhr.train.checkpoint).
TRAINING_CHECKPOINT_MARKERS = ("meta.json", "latest")


# Mistral's own checkpoint format (mistral-inference): params.json + consolidated.safetensors.
MISTRAL_NATIVE_PARAMS = "params.json"
MISTRAL_NATIVE_WEIGHTS = "consolidated.safetensors"


# What such a directory is, and where the HF files of the same model are.
MISTRAL_NATIVE_FORMAT = (
    f"it holds Mistral's own format ({MISTRAL_NATIVE_PARAMS}, {MISTRAL_NATIVE_WEIGHTS}), which transformers "
    "does not read: download the HF files of the same repository into it (config.json, model*.safetensors, "
    "model.safetensors.index.json and the tokenizer files)"
)


def not_an_hf_model_dir(model_dir: str | Path, what: str = "an HF model directory") -> VikhrError:
    """The error for a directory without `config.json` where an HF model is expected; a vikhr
    training checkpoint (a run or a step directory) is told the conversion it needs first."""
    p = Path(model_dir)
    if any((p / name).is_file() for name in TRAINING_CHECKPOINT_MARKERS):
        return VikhrError(
            f"{p} is a vikhr training checkpoint, not {what}: convert it first "
            f"(vikhr convert megatron-to-hf {p} OUT_DIR)"
        )
    if (p / MISTRAL_NATIVE_PARAMS).is_file():
        return VikhrError(f"{p} has no config.json: {MISTRAL_NATIVE_FORMAT}")
    if (p / PEFT_ADAPTER_CONFIG).is_file():
        return _peft_adapter(p, what)
    return VikhrError(f"{p} has no config.json (give {what})")


# A PEFT (LoRA) adapter's directory: the adapter's weights only, its base model named in this file.
PEFT_ADAPTER_CONFIG = "adapter_config.json"


def _peft_adapter(adapter_dir: Path, what: str) -> VikhrError:
    """The error for a PEFT adapter given where a whole model is expected: the peft command that
    merges it into the base model its adapter_config.json names, writing a model directory."""
    out = adapter_dir.absolute().parent / f"{adapter_dir.absolute().name}-merged"
    where, to = (json.dumps(str(d), ensure_ascii=False) for d in (adapter_dir.absolute(), out))
    code = (
        "from peft import AutoPeftModelForCausalLM as M; "
        f"M.from_pretrained({where}).merge_and_unload().save_pretrained({to})"
    )
    return VikhrError(
        f"{adapter_dir} is a PEFT adapter ({PEFT_ADAPTER_CONFIG}), not {what}: merge it into its base "
        f"model first, python -c {shlex.quote(code)} (it loads the base model its {PEFT_ADAPTER_CONFIG} "
        "names), and give the directory it writes"
    )


def require_writable_dir(path: str | Path, what: str = "output directory", fix: str | None = None) -> Path:
    """Return `path` as a Path, or raise VikhrError if it cannot be written into or created.

    The nearest existing directory on the way is tried with a probe file (removed at once): a
    read-only or foreign-owned place fails here, before any work, not at the first save. `fix`, when
    given, replaces the advice that ends the message (a path set by an environment variable).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise VikhrError(f"{what} {p} is a file, not a directory ({fix or 'choose another path'})")
    existing = p.absolute()
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: creating the directory would fail after the work
            raise VikhrError(
                f"{what} {p}: {existing} is a symbolic link to the missing {os.readlink(existing)} "
                f"({fix or 'create its target, or choose another path'})"
            )
        existing = existing.parent
    if not existing.is_dir():
        raise VikhrError(
            f"{what} {p} cannot be created: {existing} is a file ({fix or 'choose another path'})"
        )
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise VikhrError(
            f"{what} {p} is not writable: {existing}: {e.strerror or e} "
            f"({fix or 'choose a writable path or fix its permissions'})"
        ) from None
    return p


def require_output_dir(
    path: str | Path,
    overwrite: bool,
    inputs: Sequence[str | Path] = (),
    flag: str = "--out",
    what: str = "--out",
) -> Path:
    """`path` as an output directory this run may create, or with `overwrite` replace: writable, not
    an existing one without `overwrite`, and safe to replace whole (see `refuse_to_replace`)."""
    p = require_writable_dir(path, what)
    _require_short_name(p, what)
    if p.exists() and not overwrite:
        raise VikhrError(f"output directory {p} exists (choose another {flag} or pass --overwrite)")
    refuse_to_replace(p, inputs, flag)
    return p


def refuse_to_replace(path: Path, inputs: Sequence[str | Path] = (), flag: str = "--out") -> None:
    """Replacing an output directory removes it whole: refuse, before any work, one that is the
    current directory or above it, the home directory or a filesystem root, or one holding an input,
    or a symbolic link (the link would be replaced, not the directory it names)."""
    if not path.exists():
        return
    if path.is_symlink():
        raise VikhrError(
            f"{flag} {path} is a symbolic link (to {os.readlink(path)}): give the directory itself or a "
            "new path"
        )
    target = path.resolve()
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no password entry (some containers)
        home = None
    if Path.cwd().resolve().is_relative_to(target) or target in (home, Path(target.anchor)):
        raise VikhrError(
            f"{flag} {path} is the current directory, one above it or the home directory: replacing it "
            "would delete everything in it (give a new directory for the output)"
        )
    for item in inputs:
        if overlap(path, Path(item), output_whole=True):
            raise VikhrError(
                f"{flag} {path} holds the input {item}: replacing it would delete the input "
                "(give the output a directory of its own)"
            )


def overlap(
    output: Path, input_path: Path, *, output_whole: bool = False, input_whole: bool = False
) -> Literal["is", "in", "holds"] | None:
    """How writing `output` would touch `input_path`, checked before any work: "is" where the two are one
    file or directory (through symbolic links, relative paths and hard links), "in" where `output`
    lies in `input_path`, a directory read whole (`input_whole`), "holds" where `input_path` lies in
    `output`, a directory replaced whole (`output_whole`); None where the input is left alone."""
    written, read = output.resolve(), input_path.resolve()
    if written == read:
        return "is"
    try:
        if os.path.samefile(written, read):
            return "is"
    except OSError:  # either does not exist
        pass
    if input_whole and written.is_relative_to(read):
        return "in"
    if output_whole and read.is_relative_to(written):
        return "holds"
    return None


def require_output_file(path: str | Path, what: str) -> Path:
    """`path` as a file this run may write: not a directory, in a directory that can be written
    (checked before the work whose result it holds)."""
    p = Path(path)
    if p.is_dir():
        raise VikhrError(f"{what} {p} is a directory (give a file name)")
    require_writable_dir(p.parent, f"{what} {p}: directory")
    _require_short_name(p, what)
    return p


# Bytes a temporary name adds to an output's name: ".NAME.tmp-PID@HOST@XXXXXXXX.SUFFIX.lock",
# or eval's "NAME.partial/" (vikhr.atomic).
TEMPORARY_NAME_ROOM = 48


def _require_short_name(p: Path, what: str) -> None:
    """Refuse a name that fits the filesystem but not with its temporary name around it: the run
    would fail at its first save, or at the end."""
    try:
        limit = os.pathconf(p.parent if p.parent.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    size = len(os.fsencode(p.name))
    if size + TEMPORARY_NAME_ROOM > limit:
        raise VikhrError(
            f"{what} {p}: the name is {size} bytes, longer than the {limit - TEMPORARY_NAME_ROOM} this "
            f"filesystem leaves for it beside its temporary name (choose a shorter name)"
        )


def require_output_prefix(prefix: str | Path, what: str = "--output-prefix") -> Path:
    """`prefix` as a Path, or VikhrError when it names no file — empty, or a directory ("data/"
    would write "data/_text_document.bin") — or its directory cannot be written (see
    require_writable_dir)."""
    text = str(prefix)
    if not text or text.endswith(("/", os.sep, "/.", "/..")) or text in (".", ".."):
        raise VikhrError(
            f"{what} {text!r} names a directory, not files: give a directory and a name, e.g. data/ru"
        )
    # "data/ru.bin" wrote data/ru.bin.bin or data/ru.bin_text_document.bin
    if text.endswith((".bin", ".idx")):
        raise VikhrError(
            f"{what} {text!r} ends with {text[-4:]}: a prefix names the dataset without .bin/.idx "
            f"(give {text[:-4]})"
        )
    require_writable_dir(Path(text).parent, f"{what} directory")
    return Path(text)


def _unique_keys_loader() -> Any:
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last: a
    second `train:` section would silently replace the first) and a key YAML reads as a boolean or
    null (`yes:`, `on:`). Keys a merge (`<<: *base`) brings
    in may be given again: that is how a merge is overridden."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=deep)
            if isinstance(key, bool) or key is None:  # `yes:`, `off:`, `~:` are not names to YAML 1.1
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key_node.value!r} is read as {json.dumps(key)}, not as a name (quote it: "
                    f"'{key_node.value}':)",
                    key_node.start_mark,
                )
            try:
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first_line[key] + 1})",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the safe loader's own error follows
                pass
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return UniqueKeyLoader


# The config files of the verbs that read one, told apart by keys only their kind has.
CONFIG_KINDS = {
    "pretrain": ({"checkpoint", "optim", "kl"}, "a trainer config: run vikhr pretrain --config {}"),
    "ablate": ({"arms"}, "an ablation grid: run vikhr ablate {}"),
    "sft build": ({"sources"}, "an SFT data mix: run vikhr sft build {}"),
}


def read_yaml_mapping(path: str | Path, contents: str = "keys", kind: str | None = None) -> dict[str, Any]:
    """The YAML mapping in the config file `path` (empty file: {}); VikhrError in one line otherwise,
    also where the file is another verb's config than `kind`'s (a key of `CONFIG_KINDS`)."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise VikhrError(f"config file {p} is a directory (give the YAML file)")
    if not p.is_file():
        if p.exists():  # /dev/null, a pipe (<(...)): read again by every rank and at each save
            raise VikhrError(f"config file {p} is not a regular file; give a YAML file (write it out first)")
        raise VikhrError(f"config file not found: {p} ({_where_configs_are(p)})")
    try:
        value = yaml.load(p.read_text(encoding="utf-8"), Loader=_unique_keys_loader()) or {}
    except UnicodeDecodeError as e:
        raise VikhrError(
            f"config file {p} is not UTF-8 text ({e.reason} at byte {e.start}); give a YAML file"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise VikhrError(f"config file {p} is not valid YAML: {problem}{where}") from None
    if not isinstance(value, dict):
        raise VikhrError(f"config file {p}: top level must be a mapping of {contents}")
    if kind is not None and not CONFIG_KINDS[kind][0] & value.keys():
        for other, (keys, what) in CONFIG_KINDS.items():
            if other != kind and keys & value.keys():
                raise VikhrError(
                    f"config file {p} is {what.format(p)} (its {sorted(keys & value.keys())[0]}: key)"
                )
    return value


def _where_configs_are(missing: Path) -> str:
    """The fix for a config file not found: where a `configs/NAME.yaml` the docs name is installed
    (outside a checkout there is no configs/ beside the current directory), else check the path."""
    from vikhr.assets import CONFIGS

    parts = missing.parts
    if len(parts) == 2 and parts[0] == "configs" and (CONFIGS / parts[1]).is_file():
        where = shlex.quote(str(CONFIGS))
        return f"vikhr installs the example configs in {CONFIGS}: copy them here with cp -r {where} ."
    return "check the path"


def _dotted(loc: Sequence[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside a field's annotation (Model, list[Model], Model | None, ...), or None."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        model = _model_in(arg)
        if model is not None:
            return model
    return None


def _keys_at(root: Any, loc: Sequence[str | int]) -> list[str]:
    """The known keys of the section (or list item) at `loc` of the config model `root`."""
    model = root
    for part in loc:  # list indices stay on the list's item model
        if isinstance(part, str):
            model = _model_in(model.model_fields[part].annotation) if model is not None else None
    return list(model.model_fields) if model is not None else []


def close_match(name: str, options: Sequence[str]) -> str | None:
    """The one of `options` closest to `name` (case aside), if any is close, spelt as in `options`."""
    by_lowered: dict[str, str] = {}
    for option in options:
        by_lowered.setdefault(option.lower(), option)
    close = difflib.get_close_matches(name.lower(), list(by_lowered), n=1)
    return by_lowered[close[0]] if close else None


def suggest(name: str, options: Sequence[str]) -> str:
    """ " (did you mean ...?)" with the closest of `options` to `name`, else the known options."""
    if (close := close_match(name, options)) is not None:
        return f" (did you mean {close!r}?)"
    return f" (known: {', '.join(options)})" if options else ""


_EXPECTED = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "string": "str",
    "list": "a list",
    "dict": "a mapping of keys",
    "model": "a mapping of keys",
    "model_attributes": "a mapping of keys",
}


def config_error_line(error: Any, root: Any = None, key_prefix: str = "", prefix: str = "") -> str:
    """One pydantic validation error of a config as the one-line message every vikhr config gives:
    the dotted key (`section.key`, `list[0].key`), what was expected and what was given, and for an
    unknown key the closest known one. `root`: the config's pydantic model (for those suggestions);
    `key_prefix`: where the validated mapping sits in the config; `prefix`: the message's start
    (e.g. the config file's path and ": ")."""
    loc, kind, ctx, got = error["loc"], error["type"], error.get("ctx", {}), error.get("input")
    key = key_prefix + _dotted(loc)
    if kind == "extra_forbidden":
        known = _keys_at(root, loc[:-1])
        # A top-level key of a config made of sections (the trainer's) is a section.
        sections = (
            not key_prefix
            and len(loc) == 1
            and root is not None
            and all(_model_in(f.annotation) for f in root.model_fields.values())
        )
        return (
            f"{prefix}unknown config {'section' if sections else 'key'} {key!r}{suggest(str(loc[-1]), known)}"
        )
    if kind == "missing":
        return f"{prefix}config key {key} is missing"
    if kind == "literal_error":
        return f"{prefix}config key {key} must be {ctx['expected'].replace(chr(39), '')}, got {got!r}"
    if kind == "finite_number":
        return f"{prefix}config key {key} must be a finite number, got {got}"
    if kind == "greater_than" and ctx.get("gt") == 0:
        return f"{prefix}config key {key} must be positive, got {got}"
    bounds = {"greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<=", "greater_than": ">"}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        shown = bound if isinstance(bound, int) else f"{bound:g}"  # a seed's 2^32 in full, 1e-08 short
        return f"{prefix}config key {key} must be {bounds[kind]} {shown}, got {got}"
    if kind in ("too_short", "too_long"):
        n = ctx["min_length"] if kind == "too_short" else ctx["max_length"]
        bound = f"{'at least' if kind == 'too_short' else 'at most'} {n} item{'' if n == 1 else 's'}"
        return f"{prefix}config key {key} must have {bound}, got {got!r}"
    base = kind.removesuffix("_type").removesuffix("_parsing").removesuffix("_from_float")
    if base in _EXPECTED:
        return f"{prefix}config key {key}: expected {_EXPECTED[base]}, got {got!r}"
    if kind == "value_error":  # a validator's own message, which names what it got
        return f"{prefix}config key {key}: {error['msg'].removeprefix('Value error, ')}"
    return f"{prefix}config key {key}: {error['msg']}, got {got!r}"


def read_json_object(
    path: Path, fix: str = "fix or re-export it", parse: Callable[[Path], Any] | None = None
) -> dict[str, Any]:
    """The JSON object in `path`; VikhrError naming the file and `fix` if it is unreadable or no object.
    `parse`: what reads the file's JSON value (a reader that reads a file once per process)."""
    try:
        value = parse(path) if parse is not None else json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise VikhrError(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(value, dict):
        raise VikhrError(f"{path}: expected a JSON object; {fix}")
    return value
