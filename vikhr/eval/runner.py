"""Run the vikhr evaluation tasks on a local HF model directory through lm-evaluation-harness."""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.adapt.safetensors_io import checkpoint_headers
from vikhr.atomic import temporary_paths
from vikhr.errors import VikhrError, first_line, not_an_hf_model_dir
from vikhr.eval.mera_rutie import RUTIE, evaluate_rutie, read_dialogues
from vikhr.eval.progress import TaskProgress, as_json, keeps_samples
from vikhr.eval.rsg import rsg_total, submission_split
from vikhr.eval.task_config import build_rsg_test_config, checked_task_files, task_config_of_files
from vikhr.eval.tasks import TASK_GROUPS, TASKS, MeraRecord, effective_fewshot, task_files
from vikhr.provenance import provenance
from vikhr.tokenizer.load import TOKENIZER_FILES, Tokenizer, load

DEFAULT_SEED = 1234
# Rows a model may have beyond its tokenizer's tokens (padding to a multiple, reserved ids).
VOCAB_PADDING = 1024


@dataclass
class EvalSettings:
    """What `vikhr eval` runs: see `vikhr eval --help` for each field."""

    model_dir: Path
    tasks: list[str]
    data_dir: Path
    bpc_data: Path
    bpc_field: str = "text"
    tokenizer: Path | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int | str = 1
    max_batch_size: int = 64  # where `batch_size="auto"` starts its search
    device: str | None = None
    dtype: str = "auto"
    max_length: int | None = None
    bootstrap_iters: int = 1000
    seed: int = DEFAULT_SEED
    # Prompts in the model's own chat template (lm-eval's apply_chat_template): few-shot examples in
    # the one user turn, or (fewshot_as_multiturn) as turns of their own; system_instruction: a
    # system message before every prompt.
    chat_template: bool = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    log_samples: bool = False
    mera_submission: Path | None = None  # write MERA's submission archive (.zip) of the mera_* tasks here
    # Run the rsg_* tasks on their test splits too and write the leaderboard's archive (.zip) here.
    rsg_submission: Path | None = None
    # Keep each finished task here, and take those an interrupted run left whose own settings are
    # unchanged (vikhr.eval.progress); the CLI uses `<--output>.partial`.
    progress_dir: Path | None = None


def _offline() -> None:
    # Evaluation never touches the hub: models, tokenizers and data are local.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # lm-eval bootstraps stderrs in a process pool by default; forking a process holding torch
    # threads is fragile and the serial path gives the same numbers.
    os.environ.setdefault("DISABLE_MULTIPROC", "1")


def check_model_dir(model_dir: Path) -> None:
    if not model_dir.exists():
        raise VikhrError(
            f"model directory not found: {model_dir} "
            "(pass the HF directory written by 'vikhr convert megatron-to-hf' or 'vikhr adapt-vocab')"
        )
    if not model_dir.is_dir():
        raise VikhrError(f"--model must be an HF model directory, not a file: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise not_an_hf_model_dir(model_dir)
    # Every shard present and complete (headers only), so a damaged download is one line, not a
    # traceback from deep inside transformers; pickled weights are refused there, never loaded.
    checkpoint_headers(model_dir)


def load_tokenizer(model_dir: Path, tokenizer: Path | None) -> Tokenizer:
    """The tokenizer to evaluate with: --tokenizer (a file or directory) or the model directory's own."""
    source = tokenizer or model_dir
    if tokenizer is None and not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise VikhrError(f"no {' or '.join(TOKENIZER_FILES)} in {model_dir} (pass --tokenizer FILE_OR_DIR)")
    return load(source)


def check_vocab(
    tokenizer: Tokenizer, model_dir: Path, fix: str = "pass the one the model was trained with as --tokenizer"
) -> None:
    """Refuse a tokenizer that is not the model's: its size must match config.json's vocab_size
    (`fix`: what the message ends with, the caller's way to give the right one).

    The model may have up to `VOCAB_PADDING` more rows than the tokenizer has tokens (padding to a
    multiple, reserved tokens); more than that, or fewer rows than tokens, means another tokenizer.
    """
    config = model_dir / "config.json"
    try:
        rows = json.loads(config.read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise VikhrError(f"{config} is not a readable JSON file ({e})") from e
    if not isinstance(rows, int):
        raise VikhrError(f"{config} has no integer vocab_size (is it an HF causal LM config?)")
    size = tokenizer.vocab_size
    if size > rows or rows - size > VOCAB_PADDING:
        raise VikhrError(
            f"the tokenizer {tokenizer.path} has {size} tokens but the model {model_dir} has a "
            f"{rows}-token vocabulary (config.json vocab_size): it is not this model's tokenizer ({fix})"
        )


def _config_errors() -> tuple[type[Exception], ...]:
    """What loading a model with a malformed config.json raises (huggingface_hub's strict
    dataclasses validate transformers' configs in recent versions)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return (ValueError, TypeError)
    return (ValueError, TypeError, StrictDataclassError)


def make_lm(settings: EvalSettings, tokenizer: Tokenizer, model: Any = None) -> Any:
    """The lm-eval LM of `settings.model_dir`, or of `model` (a transformers causal LM already in
    memory, on its device and in its dtype) when given."""
    from vikhr.eval.lm import VikhrLM
    from vikhr.runtime.device import torch_device

    # lm-eval runs an unknown device string on its own default device: check it first.
    device = torch_device(settings.device)
    fast = tokenizer.to_transformers()
    if settings.chat_template:
        fast.chat_template = chat_template_of(tokenizer)
    try:
        lm = VikhrLM(
            pretrained=str(settings.model_dir) if model is None else model,
            tokenizer=fast,
            device=device,
            dtype=settings.dtype,
            batch_size=settings.batch_size,
            max_batch_size=settings.max_batch_size,
            max_length=settings.max_length,
            trust_remote_code=False,
        )
    except _config_errors() as e:
        if model is not None:
            raise
        # transformers' config checks (a string or null where a number belongs) end in long tracebacks.
        first = " ".join(str(e).split())[:300]
        raise VikhrError(
            f"cannot load the model in {settings.model_dir}: {first} (check its config.json and "
            "generation_config.json)"
        ) from None
    trained = getattr(lm.model.config, "max_position_embeddings", None)
    if settings.max_length is not None and isinstance(trained, int) and settings.max_length > trained:
        print(
            f"warning: --max-length {settings.max_length} is beyond the {trained} positions the model "
            "takes (max_position_embeddings): prompts longer than that are scored at positions it never "
            "saw",
            file=sys.stderr,
        )
    if settings.chat_template:
        lm.use_chat_template()
    return lm


def chat_template_of(tokenizer: Tokenizer) -> str:
    """The chat template beside the tokenizer (for --chat-template), checked to render a one-turn
    chat; a one-line VikhrError otherwise."""
    from vikhr.sft.hf_chat import own_chat_template

    own = own_chat_template(tokenizer)
    if own is None:
        raise VikhrError(
            f"--chat-template: {tokenizer.path.parent} holds no chat template (chat_template.jinja, or "
            "chat_template in tokenizer_config.json; 'vikhr convert megatron-to-hf' writes the SFT "
            "run's): add the model's, or evaluate without --chat-template"
        )
    fast = tokenizer.to_transformers()
    try:
        fast.apply_chat_template([{"role": "user", "content": "?"}], chat_template=own[0], tokenize=False)
    except Exception as e:  # a Jinja syntax error, or a template that refuses the simplest chat
        raise VikhrError(
            f"--chat-template: {own[1]}: the chat template does not render a chat: {first_line(e)}"
        ) from None
    return own[0]


def check_prompt_settings(settings: EvalSettings) -> None:
    """The chat-template options go together: one-line VikhrError otherwise."""
    for flag, given in (
        ("--fewshot-as-multiturn", settings.fewshot_as_multiturn),
        ("--system-instruction", settings.system_instruction is not None),
    ):
        if given and not settings.chat_template:
            raise VikhrError(f"{flag} shapes the chat of --chat-template: add --chat-template")
    if settings.system_instruction is not None and not settings.system_instruction.strip():
        raise VikhrError("--system-instruction is empty: give the system message, or leave the flag out")


def _metric_value(value: Any) -> float | None:
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def _build_tasks(settings: EvalSettings) -> tuple[dict[str, Any], list[list[MeraRecord]] | None]:
    """lm-eval task objects for `settings.tasks`, and ruTiE's dialogues when it is one of them (it
    runs outside lm-eval's evaluator); every task's documents are read and checked here."""
    if settings.limit is not None and settings.limit < 1:
        raise VikhrError(f"--limit must be a positive number of documents, got {settings.limit}")
    if settings.num_fewshot is not None and settings.num_fewshot < 0:
        raise VikhrError(f"--num-fewshot must be >= 0, got {settings.num_fewshot}")
    files = _check_every_task_has_its_data(settings)
    configs = {
        name: task_config_of_files(
            name, paths, settings.num_fewshot, settings.bpc_data, settings.bpc_field, settings.limit
        )
        for name, paths in files.items()
        if name != RUTIE
    }
    rutie = read_dialogues(files[RUTIE][0], settings.limit) if RUTIE in files else None
    _note_capped_shots(settings)
    _note_shots_in_the_prompt(settings, configs)
    return _task_objects(configs, settings.seed, {name: files[name] for name in configs}), rutie


def _check_every_task_has_its_data(settings: EvalSettings) -> dict[str, list[Path]]:
    """Each task's data files, checked to exist (the one check of them). `--tasks all` (or `table6`)
    on a data directory holding some of the sets: every task without its files is named at once, so
    that one rerun leaves them all out rather than one per rerun."""
    found: dict[str, list[Path]] = {}
    missing: dict[str, VikhrError] = {}
    for name in settings.tasks:
        try:
            found[name] = checked_task_files(name, settings.data_dir, settings.bpc_data, settings.num_fewshot)
        except VikhrError as e:
            missing[name] = e
    if len(missing) < 2:
        for error in missing.values():
            raise error
        return found
    # A group whose every task in the run lacks its data is left out by the group's name.
    whole = {g for g in ("rsg", "mera") if set(TASK_GROUPS[g]) & set(settings.tasks) <= set(missing)}
    group_of = {n: g for g in whole for n in TASK_GROUPS[g]}
    leave_out = dict.fromkeys(group_of.get(n, n) for n in missing)
    raise VikhrError(
        f"{len(missing)} tasks lack their data files: {', '.join(missing)} (the first: "
        f"{next(iter(missing.values()))}); add the files, or leave the tasks out "
        f"(--tasks ...,{','.join(f'-{n}' for n in leave_out)})"
    )


def _build_test_split_tasks(settings: EvalSettings) -> dict[str, Any]:
    """With `settings.rsg_submission`, lm-eval task objects of the rsg_* tasks on their test splits
    (documents read and checked here, before the model loads); otherwise none."""
    if settings.rsg_submission is None:
        return {}
    names = [name for name in settings.tasks if name.startswith("rsg_")]
    if not names:
        raise VikhrError(
            f"--rsg-submission {settings.rsg_submission}: no Russian SuperGLUE task is evaluated "
            "(--tasks rsg)"
        )
    configs = {
        name: build_rsg_test_config(name, settings.data_dir, settings.num_fewshot, settings.limit)
        for name in names
    }
    files = {name: [settings.data_dir / submission_split(name)] for name in configs}
    return _task_objects(configs, settings.seed, files)


def _task_objects(
    configs: dict[str, dict[str, Any]], seed: int, files: dict[str, list[Path]]
) -> dict[str, Any]:
    """lm-eval's task objects; building one reads its documents (`files`)."""
    from lm_eval.api.task import ConfigurableTask

    tasks = {}
    task_logger = logging.getLogger("lm_eval.api.task")
    level = task_logger.level
    # lm-eval logs a hint about --metadata for every custom_dataset task; it does not apply here.
    task_logger.setLevel(logging.ERROR)
    try:
        for name, config in configs.items():
            try:
                task = ConfigurableTask(config=config)
            except (TypeError, AttributeError, KeyError) as e:
                # A field of another type than the release's (a number for a text, a list for a mapping).
                raise VikhrError(
                    f"task {name}: a record of {', '.join(map(str, files[name]))} has a field of another "
                    f"type than the release's ({type(e).__name__}: {e}); see docs/eval.md for the layout"
                ) from None
            task.set_fewshot_seed(seed=seed)
            _check_shots(name, task)
            _draw_shots_as_one_process(task)
            tasks[name] = task
    finally:
        task_logger.setLevel(level)
    return tasks


def _draw_shots_as_one_process(task: Any) -> None:
    """Give every document the shots it gets in one process, whatever the number of ranks.

    lm-eval draws the shots of a rank's documents one after another from that rank's generator, so
    with W ranks document i took the (i // W)-th draw instead of the i-th: the prompts and scores
    changed with the number of GPUs. Here a rank first replays the draws of every document in order,
    noting the generator's state before each of its own, and each of its own draws starts there.
    """
    if getattr(task, "sampler", None) is None:  # lm-eval made none: the task has no shots to draw
        return
    all_docs, draw = task.doc_iterator, task.sampler.sample
    seeded = task.sampler.rnd.getstate()  # where one process's first draw starts
    starts: collections.deque[Any] = collections.deque()

    def doc_iterator(
        *, rank: int = 0, limit: int | None = None, world_size: int = 1, samples: list[int] | None = None
    ) -> Iterator[tuple[int, Any]]:
        shots = task.config.num_fewshot or 0
        if world_size == 1 or samples or not shots:
            return all_docs(rank=rank, limit=limit, world_size=world_size, samples=samples)
        from_eval_split = task.fewshot_cfg.split == task.config.test_split  # as fewshot_context draws
        own, starts_of_own = [], []
        # lm-eval iterates the documents again to score them: each replay starts from the seed and
        # leaves the generator as it was.
        before = task.sampler.rnd.getstate()
        task.sampler.rnd.setstate(seeded)
        for doc_id, doc in all_docs(limit=limit):
            if doc_id % world_size == rank:
                own.append((doc_id, doc))
                starts_of_own.append(task.sampler.rnd.getstate())
            draw(n=shots, eval_doc=doc if from_eval_split else None)
        task.sampler.rnd.setstate(before)
        starts.clear()
        starts.extend(starts_of_own)
        return iter(own)

    def sample(*args: Any, **kwargs: Any) -> Any:
        if starts:  # a draw of this rank's next document (fewshot_context takes them in order)
            task.sampler.rnd.setstate(starts.popleft())
        return draw(*args, **kwargs)

    task.doc_iterator, task.sampler.sample = doc_iterator, sample


def _note_capped_shots(settings: EvalSettings) -> None:
    """One line per task that runs with fewer shots than --num-fewshot asks for (its cap, or none)."""
    asked = settings.num_fewshot
    for name in settings.tasks if asked else ():
        used = effective_fewshot(name, asked)
        if used < asked:
            how = f"at most {used} shots" if used else "no shots"
            print(
                f"note: task {name} takes {how}: it runs with {used}, not --num-fewshot {asked}",
                file=sys.stderr,
            )


def _note_shots_in_the_prompt(settings: EvalSettings, configs: dict[str, dict[str, Any]]) -> None:
    """With --fewshot-as-multiturn, one line naming the tasks whose shots are written into the
    prompt itself (MMLU's of the same subject, MERA's fixed ones), not drawn by lm-eval: they stay
    in the one user turn."""
    if not settings.fewshot_as_multiturn:
        return
    inside = [
        name
        for name, config in configs.items()
        if not config.get("num_fewshot") and effective_fewshot(name, settings.num_fewshot) > 0
    ]
    if inside:
        verb = "writes its shots" if len(inside) == 1 else "write their shots"
        print(
            f"note: --fewshot-as-multiturn: {', '.join(inside)} {verb} into the prompt "
            "(as their releases do), which stays one user turn",
            file=sys.stderr,
        )


def _check_shots(name: str, task: Any) -> None:
    """lm-eval draws a task's shots from its few-shot records: asking for more fails in numpy's
    sampler, after the model has loaded."""
    shots = task.config.num_fewshot or 0
    if shots > 0:
        pool = len(task.fewshot_docs() or [])
        if pool < shots:
            raise VikhrError(
                f"task {name}: {shots} shots asked for, but its few-shot file holds {pool} records "
                f"(give --num-fewshot {pool} or fewer, or more few-shot records)"
            )


def _check_generation_fits(tasks: dict[str, Any], max_length: int) -> None:
    """lm-eval keeps a generation's tokens inside the context: a task generating as many tokens as
    the model's context fails in an assertion, after the tasks before it have run. Every such task is
    named at once, so one rerun leaves them all out."""
    too_long = {
        name: int((task.config.generation_kwargs or {}).get("max_gen_toks", 0))
        for name, task in tasks.items()
        if task.config.output_type == "generate_until"
    }
    too_long = {name: generated for name, generated in too_long.items() if generated >= max_length}
    if too_long:
        longest = max(too_long.values())
        names = ", ".join(too_long)
        what = f"task {names} generates" if len(too_long) == 1 else f"tasks {names} generate"
        leave_out = ",".join(f"-{name}" for name in too_long)
        raise VikhrError(
            f"{what} up to {longest} tokens, but the model's context is {max_length} tokens: leave "
            f"{'it' if len(too_long) == 1 else 'them'} out (--tasks ...,{leave_out}), or give "
            f"--max-length above {longest} if the model takes longer inputs"
        )


def task_documents(settings: EvalSettings) -> dict[str, int]:
    """How many documents each task of `settings` evaluates (`settings.limit` applied); ruTiE counts
    questions. Reads and checks every document, loads no model."""
    tasks, rutie = _build_tasks(settings)
    counts = {name: len(task.eval_docs) for name, task in tasks.items()}
    if rutie is not None:
        counts[RUTIE] = sum(map(len, rutie))
    return {name: counts[name] for name in settings.tasks}


def _rutie_path(settings: EvalSettings) -> Path:
    """ruTiE's dialogues (checked to exist when the tasks were built)."""
    return task_files(RUTIE, settings.data_dir, settings.bpc_data, settings.num_fewshot)[0]


def _summary(
    raw: dict[str, Any],
    cost: dict[str, dict[str, Any]],
    settings: EvalSettings,
    tokenizer: str,
    seconds: float,
) -> dict[str, Any]:
    """The results dict of `run_eval` from lm-eval's raw output."""
    import lm_eval

    import vikhr

    model = settings.model_dir
    if model.name in ("", ".."):  # `--model .` / `..`: name the directory, not the way there
        model = model.resolve()
    out: dict[str, Any] = {
        "model": str(model),
        "tokenizer": tokenizer,
        # Prompts and scoring change between versions: a results file says which ones it holds.
        "vikhr_version": vikhr.__version__,
        "lm_eval_version": lm_eval.__version__,
        "provenance": provenance(),  # the checkout and torch build too: a figure names what made it
        "limit": settings.limit,
        "seed": settings.seed,
        "prompt": {
            "chat_template": settings.chat_template,
            "fewshot_as_multiturn": settings.fewshot_as_multiturn,
            "system_instruction": settings.system_instruction,
        },
        "seconds": round(seconds, 1),
        "tasks": {},
    }
    n_samples = raw.get("n-samples", {})
    for name in settings.tasks:
        res = raw["results"][name]
        metrics = {m: _metric_value(res.get(f"{m},none")) for m in TASKS[name].metrics}
        stderr = {m: _metric_value(res.get(f"{m}_stderr,none")) for m in TASKS[name].metrics}
        out["tasks"][name] = {
            "metrics": metrics,
            "stderr": {m: s for m, s in stderr.items() if s is not None},
            "num_fewshot": effective_fewshot(name, settings.num_fewshot),
            "n": n_samples.get(name, {}).get("effective"),
            "data": [
                str(p) for p in task_files(name, settings.data_dir, settings.bpc_data, settings.num_fewshot)
            ],
            **cost[name],
        }
    total = rsg_total({name: task["metrics"] for name, task in out["tasks"].items()})
    if total is not None:
        out["groups"] = {"rsg": total}
    if settings.log_samples:
        out["samples"] = raw.get("samples", {})
    return out


def _check_processes(settings: EvalSettings) -> None:
    """Several processes split the documents over GPUs only (lm-eval's data parallelism): on another
    device each would evaluate every document, and all would write the same archives."""
    from vikhr.runtime.device import torch_device

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch_device(settings.device)
    if processes > 1 and not device.startswith("cuda"):
        raise VikhrError(
            f"vikhr eval was started as {processes} processes on {device}: the documents are split "
            "over GPUs only, so each process would evaluate all of them; start one process"
        )


def run_eval(settings: EvalSettings, lm: Any | None = None) -> dict[str, Any]:
    """Evaluate; returns {"tasks": {name: {"metrics", "stderr", "num_fewshot", "n"}}, "samples"?, ...}.

    `lm` may be a ready lm-eval LM (reused across calls, e.g. in tests); otherwise the model is
    loaded from `settings.model_dir`. Inputs, the tokenizer and every document are checked before
    the (slow) model load.
    """
    _offline()
    tokenizer = _check_settings_and_tokenizer(settings, lm)
    started = time.time()
    tasks, dialogues = _build_tasks(settings)
    test_splits = _build_test_split_tasks(settings)
    if lm is None:
        lm = make_lm(settings, tokenizer)  # type: ignore[arg-type]  # loaded above
    _check_generation_fits(tasks, lm.max_length)
    archives = [
        name
        for name, asked in (
            ("Russian SuperGLUE", test_splits),
            ("MERA", settings.mera_submission is not None),
        )
        if asked
    ]
    if archives and settings.limit is not None:  # said once every check has passed
        print(
            f"note: --limit {settings.limit}: the {' and the '.join(archives)} archive holds the first "
            f"{settings.limit} test documents of each task (the leaderboard scores whole test sets)",
            file=sys.stderr,
        )
    raw: dict[str, Any] = {"results": {}, "n-samples": {}, "samples": {}}
    cost: dict[str, dict[str, Any]] = {}
    progress = TaskProgress(settings.progress_dir, settings)
    # One task at a time, so that each task's time and compute can be told apart.
    for name, task in tasks.items():
        done = _task_result(lm, name, task, settings, progress)
        if done is None:  # only on non-zero ranks of a distributed run
            return {}
        for key in ("results", "n-samples", "samples"):
            raw[key].update(done["part"].get(key, {}))
        cost[name] = done["cost"]
    if dialogues is not None:
        rutie = _rutie_result(lm, dialogues, settings, progress)
        for key in ("results", "n-samples", "samples"):
            raw[key][RUTIE] = rutie["part"][key]
        cost[RUTIE] = rutie["cost"]
    if settings.mera_submission is not None:
        from vikhr.eval.mera import write_submission

        write_submission(raw["samples"], settings.mera_submission)
    test_cost = _run_test_splits(lm, test_splits, raw["samples"], settings, progress)
    if test_cost is None:
        return {}
    if progress.reused:
        print(
            f"note: {len(progress.reused)} task(s) taken from an earlier, interrupted run "
            f"({settings.progress_dir}), none of their settings changed: {', '.join(progress.reused)}",
            file=sys.stderr,
        )
    used = tokenizer.path if tokenizer is not None else settings.tokenizer or settings.model_dir
    out = _summary(raw, cost, settings, str(used), time.time() - started)
    if settings.rsg_submission is not None:
        out["rsg_submission"] = {"archive": str(settings.rsg_submission), "test_splits": test_cost}
    return out


def load_lm(settings: EvalSettings) -> Any:
    """The lm-eval LM of `settings.model_dir`, once the model directory and its tokenizer pass the
    checks `run_eval` makes before its own load: one model for several `run_eval(..., lm=)` calls
    (settings differing only in their tasks and data)."""
    _offline()
    tokenizer = _check_settings_and_tokenizer(settings, None)
    return make_lm(settings, tokenizer)  # type: ignore[arg-type]  # loaded above


def _check_settings_and_tokenizer(settings: EvalSettings, lm: Any | None) -> Any | None:
    """The checks that need no task data; returns the model's tokenizer when `lm` is to be loaded."""
    if settings.mera_submission is not None and not any(t.startswith("mera_") for t in settings.tasks):
        raise VikhrError(
            f"--mera-submission {settings.mera_submission}: no MERA task is evaluated (--tasks mera)"
        )
    check_prompt_settings(settings)
    if lm is not None:
        if settings.chat_template and not getattr(lm.tokenizer, "chat_template", None):
            raise VikhrError("--chat-template: the model's tokenizer has no chat template")
        return None
    _check_processes(settings)
    check_model_dir(settings.model_dir)
    # Numbers from a tokenizer that is not the model's would look plausible: refuse first.
    tokenizer = load_tokenizer(settings.model_dir, settings.tokenizer)
    check_vocab(tokenizer, settings.model_dir)
    if settings.chat_template:
        chat_template_of(tokenizer)
    return tokenizer


def _task_result(
    lm: Any,
    name: str,
    task: Any,
    settings: EvalSettings,
    progress: TaskProgress,
    test_split: bool = False,
) -> dict[str, Any] | None:
    """{"part": lm-eval's results of the task (or of its Russian SuperGLUE test split), "cost": its
    cost}: an earlier run's with the same fingerprint, or run now (None on the non-zero ranks of a
    distributed run)."""
    data = task_files(name, settings.data_dir, settings.bpc_data, settings.num_fewshot)
    key = name
    if test_split:
        key, data = f"{name}.test", [settings.data_dir / submission_split(name), *data]
    done = progress.load(key, data)
    if done is not None:
        return done
    _seed_everything(settings.seed)  # each task alike, whichever ran before it (or were reused)
    start = _task_start(lm)
    if hasattr(lm, "task_name"):  # vikhr's model names the task (and says what a cut drops) in its notes
        lm.task_name, lm.task_shots = name, task.config.num_fewshot or 0
    # Samples where --log-samples asks for them or a submission archive is written from them.
    part = _evaluate(lm, name, task, settings, keeps_samples(key, settings))
    if part is None:
        return None
    done = as_json(
        {
            "part": {field: part.get(field, {}) for field in ("results", "n-samples", "samples")},
            "cost": _task_cost(lm, start, requests=len(task.instances)),
        }
    )
    progress.save(key, data, done)
    return done


def _rutie_result(
    lm: Any, dialogues: list[list[MeraRecord]], settings: EvalSettings, progress: TaskProgress
) -> dict[str, Any]:
    """ruTiE, asked one question at a time (each prompt holds the model's earlier answers)."""
    data = [_rutie_path(settings)]
    done = progress.load(RUTIE, data)
    if done is not None:
        return done
    _seed_everything(settings.seed)
    start = _task_start(lm)
    rutie = evaluate_rutie(lm, dialogues, settings.chat_template, settings.system_instruction)
    part = {"results": rutie["results"], "n-samples": {"effective": rutie["n"]}, "samples": rutie["samples"]}
    done = as_json({"part": part, "cost": _task_cost(lm, start, requests=rutie["requests"])})
    progress.save(RUTIE, data, done)
    return done


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _evaluate(
    lm: Any, name: str, task: Any, settings: EvalSettings, log_samples: bool
) -> dict[str, Any] | None:
    """lm-eval's results of one task (None on the non-zero ranks of a distributed run)."""
    import lm_eval.evaluator

    with warnings.catch_warnings():
        # Bootstrapping MCC on few documents draws resamples with a single label; sklearn warns
        # about each one.
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        return lm_eval.evaluator.evaluate(
            lm=lm,
            task_dict={"tasks": {name: task}, "groups": {}},
            limit=settings.limit,
            bootstrap_iters=settings.bootstrap_iters,
            log_samples=log_samples,
            system_instruction=settings.system_instruction,
            apply_chat_template=settings.chat_template,
            fewshot_as_multiturn=settings.fewshot_as_multiturn,
        )


def _run_test_splits(
    lm: Any,
    tasks: dict[str, Any],
    scored_samples: dict[str, Any],
    settings: EvalSettings,
    progress: TaskProgress,
) -> dict[str, dict[str, Any]] | None:
    """Predict the Russian SuperGLUE test splits and write the submission archive; the cost of each
    split ({} without --rsg-submission, None on the non-zero ranks of a distributed run)."""
    from vikhr.eval.rsg import write_submission

    samples: dict[str, list[dict[str, Any]]] = {}
    cost: dict[str, dict[str, Any]] = {}
    for name, task in tasks.items():
        if name == "rsg_lidirus":
            # LiDiRus is its own test split: the scored run's predictions are the submission's.
            samples[name] = scored_samples[name]
            continue
        done = _task_result(lm, name, task, settings, progress, test_split=True)
        if done is None:
            return None
        samples[name] = done["part"]["samples"][name]
        cost[name] = {"n": len(samples[name]), **done["cost"]}
    if settings.rsg_submission is not None:
        write_submission(samples, settings.rsg_submission)
    return cost


def _task_start(lm: Any) -> tuple[float, int | None, float]:
    return time.perf_counter(), getattr(lm, "model_tokens", None), getattr(lm, "probe_seconds", 0.0)


def _task_cost(lm: Any, start: tuple[float, int | None, float], requests: int) -> dict[str, Any]:
    """Wall seconds (of which `probe_seconds` went to the batch-size search), lm-eval requests and
    model positions (padding included) of one task."""
    began, tokens, probed = start
    now = getattr(lm, "model_tokens", None)
    return {
        "seconds": round(time.perf_counter() - began, 3),
        "probe_seconds": round(getattr(lm, "probe_seconds", 0.0) - probed, 3),
        "requests": requests,
        "model_tokens": None if tokens is None or now is None else now - tokens,
    }


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (one row per task and metric)."""
    prompt = results.get("prompt") or {}
    chat = ", prompts in its chat template" if prompt.get("chat_template") else ""
    limit = results["limit"]
    limited = f" (limit {limit} document{'' if limit == 1 else 's'} per task)" if limit else ""
    lines = [
        f"Model: `{results['model']}`{chat}{limited}",
        "",
        "| Task | Metric | Value | ± stderr | Shots | Documents |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, task in results["tasks"].items():
        for metric, value in task["metrics"].items():
            shown = "n/a" if value is None else f"{value:.4f}"
            err = task["stderr"].get(metric)
            lines.append(
                f"| {name} | {metric} | {shown} | {'' if err is None else f'{err:.4f}'} | "
                f"{task['num_fewshot']} | {task['n'] if task['n'] is not None else ''} |"
            )
    for group, value in results.get("groups", {}).items():
        lines.append(f"| {group} | total | {value['score']:.4f} |  |  |  |")
    timed = {name: task for name, task in results["tasks"].items() if "seconds" in task}
    # The predictions of the Russian SuperGLUE test splits, for the submission archive.
    test_splits = results.get("rsg_submission", {}).get("test_splits", {})
    timed.update({f"{name} (test split)": cost for name, cost in test_splits.items()})
    if timed:
        lines += [
            "",
            f"Time: {results['seconds']:.1f} s in all, the model load included; per task:",
            "",
            "| Task | Seconds | of which batch-size search | Requests | Model tokens | Tokens/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, task in timed.items():
            tokens, seconds, probe = task["model_tokens"], task["seconds"], task.get("probe_seconds", 0.0)
            # The rate of the task's own work: the search's passes are not its tokens.
            working = seconds - probe
            rate = f"{tokens / working:,.0f}" if tokens is not None and working > 0 else ""
            lines.append(
                f"| {name} | {seconds:.2f} | {probe:.2f} | {task['requests']} | "
                f"{'' if tokens is None else f'{tokens:,}'} | {rate} |"
            )
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], output: Path) -> tuple[Path, Path]:
    """Write `output` (JSON) and the Markdown table next to it (same stem, .md), each atomically."""
    output.parent.mkdir(parents=True, exist_ok=True)
    md_path = output.with_suffix(".md")
    if md_path == output:
        raise VikhrError(f"--output {output}: use a .json file name (the Markdown table goes next to it)")
    # Both or neither: a results file never sits beside another run's table.
    with temporary_paths([output, md_path]) as (json_tmp, md_tmp):
        json_tmp.write_text(
            json.dumps(results, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8"
        )
        md_tmp.write_text(markdown_table(results), encoding="utf-8")
    return output, md_path
