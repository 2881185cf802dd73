"""Building the lm-eval config of a task: the one place that knows every task family's builder
(the En/Ru-MMLU, TERRa, RuCoLA, CheGeKa, XQuAD and bpc builders in `vikhr.eval.tasks`, Russian
SuperGLUE in `vikhr.eval.rsg`, MERA in `vikhr.eval.mera`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError
from vikhr.eval.mera import mera_config
from vikhr.eval.rsg import RSG_BUILDERS, submission_split
from vikhr.eval.tasks import TASK_BUILDERS, bpc_config, effective_fewshot, shot_file, task_files


def checked_task_files(name: str, data_dir: Path, bpc_data: Path, num_fewshot: int | None) -> list[Path]:
    """The files task `name` reads at `num_fewshot`, each checked to exist (one line naming the
    missing one)."""
    paths = task_files(name, data_dir, bpc_data, num_fewshot)
    for path in paths:
        if not path.is_file():
            where = "--bpc-data" if name == "bpc" else f"--data-dir {data_dir}"
            if name != "bpc":
                where += _layout_hint(path.relative_to(data_dir), data_dir)
            if path == paths[-1] and len(paths) > 1:  # the shot file: only a run with shots reads it
                k = effective_fewshot(name, num_fewshot)
                where += f"; or give --num-fewshot 0, as the task's {k} shots are drawn from it"
            missing = "is a directory, not a data file" if path.is_dir() else "data file not found:"
            named = f"{path} {missing}" if path.is_dir() else f"{missing} {path}"
            if path.name == "public_test.jsonl":
                named += " (nor train.jsonl, the name MERA's released files give it)"
            raise VikhrError(f"task {name}: {named} (check {where})")
    return paths


def _layout_hint(relative: Path, data_dir: Path) -> str:
    """Why a data file at `relative` under `data_dir` is not found, where the files show it: the
    directory given is a task's own folder, or the task's folder holds its splits under other names."""
    for depth in range(1, len(relative.parts)):
        inside = Path(*relative.parts[depth:])
        if (data_dir / inside).is_file():
            folder = "/".join(relative.parts[:depth])
            above = (
                data_dir.parents[depth - 1]
                if len(data_dir.parts) > depth
                else data_dir.absolute().parents[depth - 1]
            )
            return f": that is the {folder} folder itself, holding {inside}; give the one above it, {above}"
    folder = data_dir / relative.parent
    if folder.is_dir():
        present = sorted(p.name for p in folder.iterdir() if p.is_file())
        listed = ", ".join(present[:8]) + (f" and {len(present) - 8} more" if len(present) > 8 else "")
        return f": {folder} holds {listed or 'no file'}; the task reads {relative.name}"
    return ""


def build_task_config(
    name: str,
    data_dir: Path,
    num_fewshot: int | None,
    bpc_data: Path,
    bpc_field: str = "text",
    limit: int | None = None,
) -> dict[str, Any]:
    """The lm-eval task config dict for task `name` (files checked to exist).

    `limit` keeps the first documents only, as lm-eval's own limit does, so that a short run
    does not prepare prompts for the whole set.
    """
    paths = checked_task_files(name, data_dir, bpc_data, num_fewshot)
    return task_config_of_files(name, paths, num_fewshot, bpc_data, bpc_field, limit)


def task_config_of_files(
    name: str,
    paths: list[Path],
    num_fewshot: int | None,
    bpc_data: Path,
    bpc_field: str = "text",
    limit: int | None = None,
) -> dict[str, Any]:
    """`build_task_config` on `paths`, the files `checked_task_files` gave for the task (not checked
    again)."""
    if name == "bpc":
        return bpc_config(bpc_data, bpc_field, limit)
    eval_path = paths[0]
    fewshot_path = paths[1] if len(paths) > 1 else None  # None: a 0-shot run, which does not read it
    k = effective_fewshot(name, num_fewshot)
    if name.startswith("rsg_"):
        return RSG_BUILDERS[name](eval_path, fewshot_path, k, limit)  # type: ignore[arg-type]
    if name.startswith("mera_"):
        return mera_config(name, eval_path, fewshot_path, k, limit)  # type: ignore[arg-type]
    return TASK_BUILDERS[name](eval_path, fewshot_path, k, limit)


def build_rsg_test_config(
    name: str, data_dir: Path, num_fewshot: int | None, limit: int | None
) -> dict[str, Any]:
    """The lm-eval config of Russian SuperGLUE task `name` on its test split (labels hidden), whose
    predictions make its submission file; shots as in the scored run."""
    test_path = data_dir / submission_split(name)
    if not test_path.is_file():
        raise VikhrError(
            f"task {name}: data file not found: {test_path} (the submission needs the release's test "
            f"split beside val; check --data-dir {data_dir})"
        )
    checked_task_files(name, data_dir, Path(), num_fewshot)  # its shots, as the scored run's
    shots = shot_file(name, num_fewshot)
    k = effective_fewshot(name, num_fewshot)
    return RSG_BUILDERS[name](test_path, data_dir / shots if shots else None, k, limit, hidden=True)
