"""The finished tasks of an interrupted `vikhr eval`, kept beside its --output so that a rerun skips them.

A full suite on a 7B model runs for hours: a time limit, a preemption or a crash near the end
should not cost the tasks already done. As each task (or Russian SuperGLUE test split) ends, its
lm-eval results, samples and cost go to `<output>.partial/<task>.json`, with a fingerprint of
everything that task's numbers depend on: the settings that change every task (`EVERY_TASK`) and
those that change it alone (`SOME_TASKS`), its number of shots, whether it keeps its samples, the
model directory's files (names, sizes, modification times; not the run's own outputs written
there), the tokenizer given, the task's data files and the library versions. A rerun takes a task
whose fingerprint matches instead of running it, so a setting that concerns other tasks
(`--bpc-field`, `--bpc-data`, `--num-fewshot` for a task without shots) leaves it reusable. The
directory is removed once the output is written. The files are JSON: nothing read back runs code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from vikhr.atomic import write_text
from vikhr.errors import VikhrError
from vikhr.eval.tasks import effective_fewshot
from vikhr.tokenizer.load import CHAT_TEMPLATE_FILE

# What each field of vikhr.eval.runner.EvalSettings changes (docs/eval.md, "Interrupted runs"; a
# test checks that every field is in one of the four). The results of every task (--seed too, though
# it changes only the drawn shots and ruHumanEval's completions: which tasks draw hangs on --num-fewshot):
EVERY_TASK = (
    "model_dir",
    "tokenizer",
    "limit",
    "batch_size",
    "max_batch_size",  # only with batch_size "auto", the one it bounds
    "device",
    "dtype",
    "max_length",
    "bootstrap_iters",
    "seed",
    "chat_template",
    "fewshot_as_multiturn",
    "system_instruction",
)
# The results of the tasks named only.
SOME_TASKS: dict[str, tuple[str, ...]] = {"bpc_field": ("bpc",)}
# Those recorded through what they make of each task: the data directory and --bpc-data through the
# task's data files, --num-fewshot through its number of shots, --log-samples and the submission
# archives through whether it keeps its samples (`keeps_samples`).
PER_TASK = ("data_dir", "bpc_data", "num_fewshot", "log_samples", "mera_submission", "rsg_submission")
# Where results go, not what they are.
NOT_IN_RESULTS = ("tasks", "progress_dir")
# The settings left out of the whole run's fingerprint, which earlier releases gave every task.
_NOT_IN_WHOLE_RUN = ("tasks", "progress_dir", "mera_submission", "rsg_submission")


def _file_stamp(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _files_under(path: Path, skip: tuple[Path, ...] = ()) -> list[list[Any]]:
    """A file's stamp, or those of a directory's files (not below it) other than `skip` and their
    temporaries (`.NAME.tmp-...`, vikhr.atomic's)."""
    if path.is_dir():
        names = {p.name for p in skip if p.parent.resolve() == path.resolve()}
        return [
            _file_stamp(p)
            for p in sorted(path.iterdir())
            if p.is_file() and p.name not in names and not any(p.name.startswith(f".{n}.tmp-") for n in names)
        ]
    return [_file_stamp(path)] if path.is_file() else []


def _run_outputs(settings: Any) -> tuple[Path, ...]:
    """The files the run itself writes: --output's JSON, table and lock, and the archives."""
    paths = [settings.mera_submission, settings.rsg_submission]
    if settings.progress_dir is not None:
        output = settings.progress_dir.with_name(settings.progress_dir.name.removesuffix(".partial"))
        paths += [output, output.with_suffix(".md"), output.with_name(output.name + ".lock")]
    return tuple(Path(p) for p in paths if p is not None)


def _tokenizer_files(path: Path) -> list[list[Any]]:
    """The stamps of a tokenizer (a file or a directory's files) and, for a file, of the files
    beside it that shape its use: its chat template and special tokens."""
    stamps = _files_under(path)
    if path.is_file():
        for name in (CHAT_TEMPLATE_FILE, "tokenizer_config.json", "special_tokens_map.json"):
            if path.with_name(name).is_file() and path.name != name:
                stamps.append(_file_stamp(path.with_name(name)))
    return stamps


def _settings_as_json(settings: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The settings `names` as JSON: paths resolved (`--model ./m` and `--model /abs/m` are one run),
    and the largest batch only when 'auto' may choose it."""
    kept = {name: getattr(settings, name) for name in names}
    if settings.batch_size != "auto":  # a fixed batch size: --max-batch-size is not used
        kept.pop("max_batch_size", None)
    resolved = {k: v.resolve() if isinstance(v, Path) else v for k, v in kept.items()}
    return json.loads(json.dumps(resolved, default=str))


def keeps_samples(key: str, settings: Any) -> bool:
    """Whether task `key` (`<task>.test` for a Russian SuperGLUE test split) keeps its per-document
    samples: with --log-samples, and where a submission archive is written from them (MERA's from
    the mera_* tasks, Russian SuperGLUE's from the test splits and LiDiRus's scored run)."""
    return (
        settings.log_samples
        or key.endswith(".test")
        or (settings.mera_submission is not None and key.startswith("mera_"))
        or (settings.rsg_submission is not None and key == "rsg_lidirus")
    )


def as_json(value: Any) -> Any:
    """`value` as JSON gives it back (numpy scalars as numbers, tuples as lists): a task's results
    are used in this form whether they were just computed or read from an earlier run's file."""

    def plain(o: Any) -> Any:
        return o.item() if hasattr(o, "item") else str(o)

    return json.loads(json.dumps(value, default=plain))


class TaskProgress:
    """Saved and reusable task results of one evaluation (does nothing when `directory` is None)."""

    def __init__(self, directory: Path | None, settings: Any) -> None:
        self.directory = directory
        self.reused: list[str] = []
        if directory is None:
            return
        import lm_eval

        import vikhr

        self._settings = settings
        self._common = {
            "settings": _settings_as_json(settings, EVERY_TASK),
            # An --output inside the model directory (its lock appears and goes with each run) is
            # not the model: stamped, it would make every rerun's fingerprint differ.
            "model": _files_under(settings.model_dir, skip=_run_outputs(settings)),
            "tokenizer": _tokenizer_files(settings.tokenizer) if settings.tokenizer else None,
            "versions": [vikhr.__version__, lm_eval.__version__],
        }

    def _fingerprint(self, key: str, data: list[Path]) -> str:
        name = key.removesuffix(".test")
        own = tuple(setting for setting, tasks in SOME_TASKS.items() if name in tasks)
        task = {
            "task": key,
            "data": [stamp for path in data for stamp in _files_under(path)],
            "shots": effective_fewshot(name, self._settings.num_fewshot),
            "samples": keeps_samples(key, self._settings),
            "task_settings": _settings_as_json(self._settings, own),
        }
        text = json.dumps({**self._common, **task}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _whole_run_fingerprints(self, key: str, data: list[Path]) -> list[str]:
        """The fingerprints earlier releases gave every task, of the whole run's settings: a task such a
        run saved is taken when none of them changed. Those releases wrote the settings as given (paths
        as typed, --max-batch-size always), and then resolved (see `_settings_as_json`)."""
        settings = self._settings
        names = tuple(f.name for f in dataclasses.fields(settings) if f.name not in _NOT_IN_WHOLE_RUN)
        as_given = json.loads(json.dumps({name: getattr(settings, name) for name in names}, default=str))
        archives = (settings.mera_submission, settings.rsg_submission)
        log_samples = settings.log_samples or any(archive is not None for archive in archives)
        stamps = [stamp for path in data for stamp in _files_under(path)]
        fingerprints = []
        for written in (as_given, _settings_as_json(settings, names)):
            common = {**self._common, "settings": written, "log_samples": log_samples}
            text = json.dumps({**common, "task": key, "data": stamps}, sort_keys=True)
            fingerprints.append(hashlib.sha256(text.encode()).hexdigest())
        return fingerprints

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.json"

    def load(self, key: str, data: list[Path]) -> dict[str, Any] | None:
        """What an earlier run saved for `key` with the same fingerprint, else None."""
        if self.directory is None or not self._path(key).is_file():
            return None
        try:
            saved = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None  # a damaged file is run again, not trusted
        if not isinstance(saved, dict) or saved.get("fingerprint") not in (
            self._fingerprint(key, data),
            *self._whole_run_fingerprints(key, data),
        ):
            return None
        self.reused.append(key)
        return saved.get("result")

    def save(self, key: str, data: list[Path], result: dict[str, Any]) -> None:
        """Keep `result` (JSON-ready, see `as_json`) for a rerun; written whole or not at all."""
        if self.directory is None:
            return
        if self.directory.exists() and not self.directory.is_dir():
            raise VikhrError(f"{self.directory} is not a directory (it keeps the finished tasks; remove it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"fingerprint": self._fingerprint(key, data), "result": result}
        write_text(self._path(key), json.dumps(record, ensure_ascii=False))


def progress_dir_of(output: Path) -> Path:
    """Where the finished tasks of a run writing `output` are kept until it is written."""
    return output.with_name(output.name + ".partial")


def discard(directory: Path) -> None:
    """The output is written: the kept tasks are no longer needed."""
    shutil.rmtree(directory, ignore_errors=True)
