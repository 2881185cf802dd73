"""`vikhr eval`: lm-evaluation-harness tasks on an HF model directory, local data only."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path

from vikhr.assets import bundled
from vikhr.cli import StoreDashValue
from vikhr.errors import VikhrError, require_output_file
from vikhr.locks import exclusive
from vikhr.progress_bar import add_no_progress

DEFAULT_DATA_DIR = Path(os.environ.get("VIKHR_SHARED_DATA", "../shared/data")) / "eval"
# The largest batch --batch-size auto may choose when --max-batch-size is not given.
DEFAULT_MAX_BATCH_SIZE = 64
# How the Markdown table vikhr eval writes begins (vikhr.eval.runner.markdown_table).
_TABLE_START = b"Model: `"


def batch_size_arg(value: str) -> int | str:
    """An argparse type: `--batch-size`'s value, a positive integer or 'auto' (tools/bench_eval.py's
    `--batch-sizes` take the same)."""
    if value == "auto":
        return value
    if value.startswith("auto:"):
        # lm-eval's own schedule: it bypasses vikhr's auto (the CPU memory rule, the search at the
        # requests' length) and fails after the model load on "auto:0", "auto:x".
        raise argparse.ArgumentTypeError(
            f"lm-eval's 'auto:N' is not taken, got {value!r}: give 'auto' (sized per task) or a positive "
            "integer"
        )
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    return size


def _seed(value: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2^32-1, got {value!r}")
    return seed


def _positive_int(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return size


def _compare(args: argparse.Namespace, run_options: list[argparse.Action]) -> int:
    from vikhr.assets import PAPER_TABLE6
    from vikhr.eval.compare import compare

    given = [a.option_strings[0] for a in run_options if getattr(args, a.dest) != a.default]
    if given:  # `vikhr eval --tasks x compare ...`: argparse takes them, compare has no use for them
        raise VikhrError(
            f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of the evaluation "
            "('vikhr eval --model MODEL ...'), not of compare: leave "
            f"{'it' if len(given) == 1 else 'them'} out (compare takes RESULTS.json ..., --out, "
            "--reference, --paper)"
        )
    if not args.out.strip():
        raise VikhrError("--out is empty: give the directory for compare.md, compare.csv and compare.png")
    references = [Path(r) for r in args.reference] + ([PAPER_TABLE6] if args.paper else [])
    resolved = [r.resolve() for r in references]
    for i, path in enumerate(resolved):
        first = resolved.index(path)
        if first != i:  # each of its rows would be "named twice"
            by_paper = args.paper and path == resolved[-1]
            paper = " (--paper adds the bundled Table 6: leave out one of the two)" if by_paper else ""
            raise VikhrError(f"--reference {references[first]} is given twice{paper}")
    markdown, paths = compare(args.results, Path(args.out), references)
    print(markdown, end="")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _refuse_empty_paths(args: argparse.Namespace) -> None:
    """`--output ""` (an unset shell variable) read as no --output: a run of hours that wrote no
    results; an empty --model, --data-dir, --tokenizer or --bpc-data stood for the current directory
    or the default."""
    for flag, value in (
        ("--model", args.model),
        ("--data-dir", args.data_dir),
        ("--tokenizer", args.tokenizer),
        ("--bpc-data", args.bpc_data),
        ("--output", args.output),
        ("--mera-submission", args.mera_submission),
        ("--rsg-submission", args.rsg_submission),
    ):
        if value is not None and not value.strip():
            raise VikhrError(f"{flag} is empty: give a path, or leave the option out")


def _output_files(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    """--output, --mera-submission and --rsg-submission, each checked to be writable before the
    (long) run rather than after it."""
    paths = []
    for flag, value, suffix, why in (
        ("--output", args.output, ".json", "the Markdown table goes next to it"),
        ("--mera-submission", args.mera_submission, ".zip", "MERA takes a zip archive"),
        ("--rsg-submission", args.rsg_submission, ".zip", "the leaderboard takes a zip archive"),
    ):
        path = Path(value) if value else None
        if path is not None:
            if path.suffix != suffix:
                raise VikhrError(f"{flag} {path}: use a {suffix} file name ({why})")
            require_output_file(path, flag)
        paths.append(path)
    if paths[0] is not None:
        require_output_file(paths[0].with_suffix(".md"), "--output's table")
        _refuse_to_replace_other_files(paths[0])
        kept = paths[0].with_name(paths[0].name + ".partial")  # vikhr.eval.progress.progress_dir_of
        if kept.exists() and not kept.is_dir():  # found at the first task's end, after the model load
            raise VikhrError(
                f"--output {paths[0]}: {kept} is a file; the run keeps its finished tasks in a directory "
                "of that name (move the file away, or give another --output)"
            )
    if paths[1] is not None and paths[2] is not None and paths[1].absolute() == paths[2].absolute():
        raise VikhrError(f"--mera-submission and --rsg-submission are both {paths[1]}: give two files")
    return paths[0], paths[1], paths[2]


def _refuse_to_replace_other_files(output: Path) -> None:
    """--output X.json replaces X.json and X.md: only when they are an earlier run's results and table,
    not a file of another kind that happens to have the name (MODEL/config.json, docs/eval.json's
    docs/eval.md)."""
    import json

    table = output.with_suffix(".md")
    if output.is_file():
        try:
            earlier = json.loads(output.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            earlier = None
        if not (isinstance(earlier, dict) and "tasks" in earlier and "lm_eval_version" in earlier):
            raise VikhrError(
                f"--output {output} exists and is not the results of a vikhr eval: it would be replaced "
                "(give another --output, or move the file away)"
            )
    if table.is_file():
        with open(table, "rb") as f:
            start = f.read(len(_TABLE_START))
        if start != _TABLE_START:
            raise VikhrError(
                f"--output {output}: {table} exists and is not a table vikhr eval wrote: it would be "
                "replaced (give another --output, or move the file away)"
            )


def _max_batch_size(args: argparse.Namespace) -> int:
    """--max-batch-size, or its default; one warning line when a fixed --batch-size leaves it unused
    (a script that switches between auto and a number may keep passing it, so it is not refused)."""
    if args.max_batch_size is None:
        return DEFAULT_MAX_BATCH_SIZE
    if args.batch_size != "auto":
        print(
            f"warning: --max-batch-size {args.max_batch_size} bounds only --batch-size auto: with "
            f"--batch-size {args.batch_size} it is not used",
            file=sys.stderr,
        )
    return args.max_batch_size


def _output_lock(output: Path) -> contextlib.AbstractContextManager[bool]:
    """Held while a run writes `output` (and keeps its finished tasks beside it)."""
    busy = (
        f"{output} is being written by another vikhr eval ({{holder}}); wait for it to end or give "
        "another --output"
    )
    output.parent.mkdir(parents=True, exist_ok=True)  # the lock sits beside the output
    return exclusive(output.with_name(output.name + ".lock"), busy, remove=True)


def _run(args: argparse.Namespace) -> int:
    from vikhr.assets import RU_SAMPLE
    from vikhr.eval.lm import evaluation_bars
    from vikhr.eval.progress import discard, progress_dir_of
    from vikhr.eval.runner import EvalSettings, markdown_table, run_eval, write_results
    from vikhr.eval.tasks import parse_task_list

    if args.model is None:
        raise VikhrError("--model is required (or use 'vikhr eval compare RESULTS.json ...')")
    _refuse_empty_paths(args)
    tasks = parse_task_list(args.tasks)
    data_dir = Path(args.data_dir)
    if any(t != "bpc" for t in tasks) and not data_dir.is_dir():
        raise VikhrError(
            f"--data-dir {data_dir} not found (it should hold mmlu-en/, mmlu-ru/, terra/, rucola/, chgk/, "
            "xquad-ru/, russian-superglue/, mera/)"
        )
    for flag, value, least in (
        ("--max-length", args.max_length, 1),
        ("--limit", args.limit, 1),
        ("--num-fewshot", args.num_fewshot, 0),
        ("--bootstrap-iters", args.bootstrap_iters, 0),
    ):
        if value is not None and value < least:
            raise VikhrError(f"{flag} must be {'positive' if least else '>= 0'}, got {value}")
    if "mera_ruhumaneval" in tasks and not args.allow_code_execution:
        raise VikhrError(
            "task mera_ruhumaneval runs the Python code the model writes (in a resource-limited "
            "subprocess, not a sandbox); add --allow-code-execution to run it, or leave it out "
            "(e.g. --tasks mera,-mera_ruhumaneval)"
        )
    output, submission, rsg_submission = _output_files(args)
    # On several GPUs (torchrun, accelerate launch: lm-eval's data parallelism) lm-eval gathers the
    # results on rank 0: it alone writes --output (every rank reads its kept tasks, to skip the same).
    first_rank = os.environ.get("RANK", "0") == "0"
    settings = EvalSettings(
        model_dir=Path(args.model),
        tasks=tasks,
        data_dir=data_dir,
        bpc_data=Path(args.bpc_data) if args.bpc_data else RU_SAMPLE,
        bpc_field=args.bpc_field,
        tokenizer=Path(args.tokenizer) if args.tokenizer else None,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        max_batch_size=_max_batch_size(args),
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        bootstrap_iters=args.bootstrap_iters,
        seed=args.seed,
        chat_template=args.chat_template,
        fewshot_as_multiturn=args.fewshot_as_multiturn,
        system_instruction=args.system_instruction,
        log_samples=args.log_samples,
        mera_submission=submission,
        rsg_submission=rsg_submission,
        progress_dir=progress_dir_of(output) if output is not None else None,  # read by every rank
    )
    with contextlib.ExitStack() as held:
        if output is not None and first_rank:  # two runs on one --output would share OUTPUT.partial/
            held.enter_context(_output_lock(output))
        held.enter_context(evaluation_bars(args.progress))
        # lm-eval prints its batch-size search ("Determined Largest batch size: 7"): stdout is the table's.
        with contextlib.redirect_stdout(sys.stderr):
            results = run_eval(settings)
        if not results:  # a rank other than 0: its documents' results went to rank 0
            return 0
        print(markdown_table(results), end="")
        if output is not None and first_rank:
            json_path, md_path = write_results(results, output)
            discard(progress_dir_of(output))
            print(f"wrote {json_path} and {md_path}")
    for archive in (submission, rsg_submission):
        if archive is not None:
            print(f"wrote {archive}")
    return 0


def _add_running_options(p: argparse.ArgumentParser) -> None:
    """How the model runs: batch, device, dtype, context."""
    g = p.add_argument_group("running the model")
    g.add_argument(
        "--batch-size",
        type=batch_size_arg,
        default=1,
        help="batch size or 'auto' (default 1): on a GPU the largest that fits, found by trying; "
        "on a CPU the largest whose forward pass fits in a quarter of the free memory",
    )
    g.add_argument(
        "--max-batch-size",
        type=_positive_int,
        help=f"the largest batch --batch-size auto may choose (default {DEFAULT_MAX_BATCH_SIZE}); a fixed "
        "--batch-size does not use it (a warning says so)",
    )
    g.add_argument("--device", help="auto (CUDA when present, the default), cpu, cuda or cuda:N")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (default auto: as saved; use float32 on CPU)",
    )
    g.add_argument("--max-length", type=int, help="context length in tokens (default: from the model config)")


def register(sub: argparse._SubParsersAction) -> None:
    from vikhr.eval.tasks import DEFAULT_TASKS, TASKS

    p = sub.add_parser(
        "eval",
        help="evaluate an HF model directory (MMLU, Ru-MMLU, Russian SuperGLUE, MERA, RuCoLA, CheGeKa, "
        "XQuAD-ru, bits per character); 'vikhr eval compare' tabulates results",
        description="Run lm-evaluation-harness on local data, offline: "
        + "; ".join(f"{name}: {spec.summary}" for name, spec in TASKS.items())
        + ".",
    )
    p.add_argument(
        "--model", help="HF model directory (from 'vikhr convert' or 'vikhr adapt-vocab'); required"
    )
    p.add_argument(
        "--tasks",
        action=StoreDashValue,
        default=DEFAULT_TASKS,
        help=f"comma-separated tasks: {','.join(TASKS)}; 'rsg' (the nine Russian SuperGLUE tasks), 'mera' "
        f"(MERA's), 'table6' (the paper's) or 'all'; '-name' after them leaves one out, e.g. all,-bpc; "
        f"'-name's alone leave them out of the default, e.g. -bpc (default {DEFAULT_TASKS})",
    )
    p.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help=f"evaluation data directory (default {DEFAULT_DATA_DIR}: $VIKHR_SHARED_DATA/eval when set, "
        "else ../shared/data/eval)",
    )
    p.add_argument(
        "--tokenizer",
        help="SentencePiece .model, HF tokenizer.json, or a directory holding one (default: the model dir)",
    )
    p.add_argument(
        "--bpc-data",
        type=bundled,  # a vikhr/assets/ path (the default's, as docs/eval.md names it) from any directory
        help="text set for bpc: JSONL, one document a line, or plain UTF-8 text named .txt, one document; "
        "plain, .gz or .zst (default: the bundled Russian sample)",
    )
    p.add_argument(
        "--bpc-field", default="text", help="JSON field holding the text (default 'text'; JSONL only)"
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N documents of each task")
    p.add_argument(
        "--num-fewshot",
        type=int,
        help="few-shot examples for every task that takes them "
        "(default per task: mmlu_en, mmlu_ru, mera_rummlu, mera_mathlogicqa, mera_ruopenbookqa, "
        "mera_ruworldtree, mera_simplear, mera_rumultiar 5; chegeka, mera_chegeka 4; mera_lcs, mera_bps 2; "
        "others 0)",
    )
    _add_prompt_options(p)
    _add_running_options(p)
    p.add_argument(
        "--bootstrap-iters",
        type=int,
        default=1000,
        help="bootstrap draws for the stderr of MCC (default 1000; 0: no standard errors at all, lm-eval "
        "then leaves out the means' analytic ones too)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=1234,
        help="seed of what is drawn at random, 0 to 2^32-1 (default 1234): the shots drawn from a train "
        "split (terra, rucola, chegeka, the rsg_* tasks with --num-fewshot) and mera_ruhumaneval's sampled "
        "completions; MMLU's and MERA's shots are fixed, the other generations greedy",
    )
    p.add_argument(
        "--log-samples", action="store_true", help="keep per-document prompts and outputs in the JSON"
    )
    p.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="let mera_ruhumaneval run the generated code to score it (a limited subprocess, no sandbox)",
    )
    _add_output_options(p)
    add_no_progress(p)
    p.set_defaults(func=_run)
    _register_compare(p)


def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chat-template",
        action="store_true",
        help="put each prompt in the model's own chat template (from its tokenizer directory, as "
        "'vikhr convert' writes it after SFT): the prompt, few-shot examples included, as one user "
        "turn, the answer scored or generated as the assistant's (lm-eval's apply_chat_template)",
    )
    p.add_argument(
        "--fewshot-as-multiturn",
        action="store_true",
        help="with --chat-template: each few-shot example lm-eval draws as a user turn and its answer as "
        "an assistant turn (MMLU's and MERA's shots are part of their prompts and stay there)",
    )
    p.add_argument(
        "--system-instruction",
        help="with --chat-template: a system message before every prompt (e.g. 'Ты — полезный ассистент.')",
    )


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        help="results JSON path; the Markdown table is written next to it (.md). Finished tasks are kept "
        "in OUTPUT.partial/ until then: rerunning an interrupted command reuses them",
    )
    p.add_argument(
        "--mera-submission",
        help="write MERA's submission archive (.zip, MERA v1.1's format) of the mera_* tasks' answers here",
    )
    p.add_argument(
        "--rsg-submission",
        help="also run the rsg_* tasks on their test splits and write the Russian SuperGLUE leaderboard's "
        "submission archive (.zip, one <Task>.jsonl each) here",
    )


def _register_compare(p: argparse.ArgumentParser) -> None:
    # The evaluation's options, which argparse also takes before `compare`.
    run_options = [a for a in p._actions if a.option_strings and a.dest != "help"]
    verbs = p.add_subparsers(dest="eval_command", metavar="{compare}")
    c = verbs.add_parser(
        "compare",
        help="models side by side: Markdown + CSV table and a PNG bar chart",
        description="Tabulate 'vikhr eval --output' results: models as rows, benchmarks as columns "
        "(En-MMLU, Ru-MMLU, CheGeKa, Russian SuperGLUE total, then every other task).",
    )
    c.add_argument("results", nargs="+", help="results JSON files, each FILE or NAME=FILE")
    c.add_argument("--out", default="eval-compare", help="output directory (default eval-compare)")
    c.add_argument(
        "--reference",
        metavar="CSV",
        type=bundled,  # vikhr/assets/eval/vikhr-paper-table6.csv (docs/eval.md), from any directory
        action="append",
        default=[],
        help="rows to show beside the models: a CSV 'model,<column>,...' (e.g. published scores, or an "
        "earlier compare.csv); its columns are matched by name, new ones added; a row named like a model "
        "fills that model's row (e.g. its MERA total); repeatable",
    )
    c.add_argument(
        "--paper",
        action="store_true",
        help="add the Vikhr paper's Table 6 rows (eight models and Vikhr-7B-instruct_0.2, as published "
        "in arXiv:2405.13929v1) below the models",
    )
    c.set_defaults(func=functools.partial(_compare, run_options=run_options))
