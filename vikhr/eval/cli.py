"""`vikhr eval`: lm-evaluation-harness tasks on an HF model directory, local data only."""

from __future__ import annotations

import argparse
from pathlib import Path

from vikhr.errors import VikhrError

DEFAULT_DATA_DIR = Path("../shared/data/eval")


def _batch_size(value: str) -> int | str:
    if value == "auto" or value.startswith("auto:"):
        return value
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    return size


def _run(args: argparse.Namespace) -> int:
    from vikhr.assets import RU_SAMPLE
    from vikhr.eval.runner import EvalSettings, markdown_table, run_eval, write_results
    from vikhr.eval.tasks import parse_task_list

    tasks = parse_task_list(args.tasks)
    data_dir = Path(args.data_dir)
    if any(t != "bpc" for t in tasks) and not data_dir.is_dir():
        raise VikhrError(
            f"--data-dir {data_dir} not found (it should hold mmlu-en/, terra/, rucola/, chgk/, xquad-ru/)"
        )
    for flag, value in (("--max-length", args.max_length), ("--num-fewshot", args.num_fewshot)):
        if value is not None and value < (1 if flag == "--max-length" else 0):
            raise VikhrError(
                f"{flag} must be {'positive' if flag == '--max-length' else '>= 0'}, got {value}"
            )
    output = Path(args.output) if args.output else None
    if output is not None and output.suffix != ".json":
        raise VikhrError(f"--output {output}: use a .json file name (the Markdown table goes next to it)")
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
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        bootstrap_iters=args.bootstrap_iters,
        seed=args.seed,
        log_samples=args.log_samples,
    )
    results = run_eval(settings)
    print(markdown_table(results), end="")
    if output is not None:
        json_path, md_path = write_results(results, output)
        print(f"wrote {json_path} and {md_path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from vikhr.eval.tasks import TASKS

    p = sub.add_parser(
        "eval",
        help="evaluate an HF model directory (MMLU, TERRa, RuCoLA, CheGeKa, XQuAD-ru, bits per character)",
        description="Run lm-evaluation-harness on local data, offline: "
        + "; ".join(f"{name}: {spec.summary}" for name, spec in TASKS.items())
        + ".",
    )
    p.add_argument(
        "--model", required=True, help="HF model directory (from 'vikhr convert' or 'vikhr adapt-vocab')"
    )
    p.add_argument(
        "--tasks", default="all", help=f"comma-separated tasks: {','.join(TASKS)} or 'all' (default)"
    )
    p.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help=f"evaluation data directory (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--tokenizer", help="HF tokenizer directory or SentencePiece .model (default: the model dir)"
    )
    p.add_argument("--bpc-data", help="JSONL(.gz) text set for bpc (default: the bundled Russian sample)")
    p.add_argument("--bpc-field", default="text", help="JSON field holding the text (default 'text')")
    p.add_argument("--limit", type=int, help="evaluate only the first N documents of each task")
    p.add_argument(
        "--num-fewshot",
        type=int,
        help="few-shot examples for every task that takes them "
        "(default per task: mmlu_en 5, chegeka 4, others 0)",
    )
    p.add_argument("--batch-size", type=_batch_size, default=1, help="batch size or 'auto' (default 1)")
    p.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (default auto: as saved; use float32 on CPU)",
    )
    p.add_argument("--max-length", type=int, help="context length in tokens (default: from the model config)")
    p.add_argument("--bootstrap-iters", type=int, default=1000, help="bootstrap draws for MCC/BPC stderr")
    p.add_argument("--seed", type=int, default=1234, help="seed of the few-shot sampling (default 1234)")
    p.add_argument(
        "--log-samples", action="store_true", help="keep per-document prompts and outputs in the JSON"
    )
    p.add_argument("--output", help="results JSON path; the Markdown table is written next to it (.md)")
    p.set_defaults(func=_run)
