"""`vikhr sft build|score|prepare|train|show`: instruction data and training (the pre-training loop)."""

from __future__ import annotations

import argparse
import os
import sys

from vikhr.assets import bundled
from vikhr.errors import VikhrError
from vikhr.progress_bar import add_no_progress
from vikhr.sft.template import AUTO, OWN, TEMPLATES

MAX_WORKERS = 1024  # `sft prepare`'s encoding processes: more is a typo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="instruction tuning: chat data with an assistant-only loss, same trainer")
    sft_sub = p.add_subparsers(dest="sft_command", metavar="ACTION", parser_class=type(p))
    sft_sub.required = True

    pb = sft_sub.add_parser(
        "build",
        help="raw instruction collections (messages, ShareGPT, Alpaca, Nectar; JSONL or Parquet) -> one "
        "mixed, deduplicated, filtered chats JSONL for `vikhr sft prepare` (see docs/sft.md)",
    )
    pb.add_argument("config", help="the build's YAML config (configs/sft-mix.example.yaml)")
    pb.add_argument(
        "--output", default=None, help="the chats JSONL to write (default: output: of the config)"
    )
    add_no_progress(pb)
    pb.set_defaults(func=_build)

    pr = sft_sub.add_parser(
        "score",
        help="reward-model scores of every chat of a chats JSONL, appended to a scores JSONL (resumes)",
    )
    pr.add_argument("--input", required=True, help="chats JSONL (the output of `vikhr sft build`)")
    pr.add_argument("--model", required=True, help="HF reward model directory (num_labels=1, safetensors)")
    pr.add_argument("--scores", required=True, help="scores JSONL: read, then appended to")
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cpu")
    pr.add_argument("--max-length", type=int, default=2048, help="tokens per chat (longer ones are cut)")
    add_no_progress(pr)
    pr.set_defaults(func=_score)

    _add_prepare(sft_sub)

    pt = sft_sub.add_parser(
        "train",
        help="the pre-training loop with data.kind=sft (one process; `torchrun -m vikhr sft train` for more)",
    )
    from vikhr.train.cli import build_arg_parser

    build_arg_parser(pt)
    pt.set_defaults(func=_train)

    ps = sft_sub.add_parser("show", help="decode prepared chats with the trained spans marked [[like this]]")
    ps.add_argument("prefix", help="the --output-prefix of `vikhr sft prepare`")
    ps.add_argument("--index", type=int, nargs="+", default=[0], help="chat numbers (0-based)")
    ps.add_argument("--tokenizer", default=None, help="default: the tokenizer recorded at prepare time")
    ps.set_defaults(func=_show)


def _add_prepare(sft_sub: argparse._SubParsersAction) -> None:
    pp = sft_sub.add_parser(
        "prepare",
        help="chats JSONL -> PREFIX_text_document + PREFIX_mask_document (.bin/.idx) + PREFIX_sft.json",
    )
    pp.add_argument(
        "--input",
        required=True,
        type=bundled,  # the documented vikhr/assets/sft/ru-seed-chats.jsonl, from any directory
        help='JSONL, one {"messages": [{"role", "content"}, ...]} a line',
    )
    pp.add_argument(
        "--tokenizer", required=True, help="SentencePiece .model, tokenizer.json, or its directory"
    )
    pp.add_argument(
        "--output-prefix",
        required=True,
        help="writes PREFIX_text_document and PREFIX_mask_document (.bin/.idx) and PREFIX_sft.json; "
        "the trainer's data.train and `sft show` take PREFIX",
    )
    pp.add_argument(
        "--template",
        default=AUTO,
        choices=(AUTO, *TEMPLATES, OWN),
        help="chat template: auto (default: the vikhr template rendering chats as the tokenizer's own "
        "chat template does, else own; if it has none, mistral-v3 where it has [INST] tokens, else mistral), "
        "mistral (Mistral-7B-Instruct v0.1), "
        "mistral-v3 (mistral-common's v3: Mistral v0.3, Mistral-NeMo-Instruct; system in the last "
        "user turn), chatml "
        "(Qwen2.5-Instruct's, BOS only if the tokenizer has one; a tokenizer without <|im_start|>/<|im_end|> "
        "gets them as text and EOS after each answer), qwen3 (chatml with Qwen3's thinking "
        "block), llama3 (Llama-3-8B-Instruct's header template; the tokenizer needs its "
        "<|start_header_id|>-style special tokens), own (the tokenizer's own Jinja chat template, "
        "rendered by transformers: Llama-3.1, Gemma, Phi-3 ...); see docs/sft.md",
    )
    pp.add_argument("--max-chats", type=int, default=None, help="stop after this many chats")
    pp.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes encoding the chats (default 1: this one alone; 0: one per core; more start "
        "that many, each loading the tokenizer once); the output does not depend on it",
    )
    add_no_progress(pp)
    pp.set_defaults(func=_prepare)


def cores_here() -> int:
    """The cores this process may run on (`--workers 0`, as `data preprocess` takes it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _prepare(args: argparse.Namespace) -> int:
    from vikhr.sft.prepare import prepare_sft

    if args.max_chats is not None and args.max_chats < 1:
        raise VikhrError(f"--max-chats must be >= 1, got {args.max_chats}")
    if not 0 <= args.workers <= MAX_WORKERS:
        raise VikhrError(
            f"--workers must be from 0 (one per core) to {MAX_WORKERS} (encoding processes), got "
            f"{args.workers}"
        )
    summary = prepare_sft(
        args.input,
        args.tokenizer,
        args.output_prefix,
        template=args.template,
        max_chats=args.max_chats,
        progress=args.progress,
        workers=args.workers or cores_here(),
    )
    print(summary.line())
    return 0


def _build(args: argparse.Namespace) -> int:
    from vikhr.sft.build import build, summary_line

    report = build(args.config, args.output, progress=args.progress)
    print(summary_line(report))
    return 0


def _score(args: argparse.Namespace) -> int:
    from vikhr.sft.reward import score_file

    run = score_file(
        args.input,
        args.model,
        args.scores,
        batch_size=args.batch_size,
        device=args.device,
        max_length=args.max_length,
        progress=args.progress,
    )
    if run.note:
        print(f"note: {run.note}", file=sys.stderr)
    print(f"{args.scores}: {run.line()}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from vikhr.runtime.megatron import import_megatron_core
    from vikhr.train.cli import run_from_args

    import_megatron_core()  # the trainer imports megatron-core
    args.overrides = ["data.kind=sft", *args.overrides]
    return run_from_args(args)


def _show(args: argparse.Namespace) -> int:
    from vikhr.sft.prepare import render_prepared

    for index in args.index:
        print(render_prepared(args.prefix, index, args.tokenizer))
    return 0
