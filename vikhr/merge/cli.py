"""`vikhr merge` (see vikhr.merge.checkpoint)."""

from __future__ import annotations

import argparse
from typing import Any

from vikhr.errors import VikhrError
from vikhr.merge.schedule import Gradient, parse_gradient
from vikhr.progress_bar import add_no_progress


def t_arg(value: str) -> Gradient:
    """An argparse type: `--t`'s value, one t in [0, 1] or a gradient over the layers (tools/bench_merge.py
    takes its single t by this rule too)."""
    try:
        return parse_gradient(value, what="")
    except VikhrError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: Any) -> None:
    p = sub.add_parser(
        "merge",
        help="SLERP or linear interpolation of two HF checkpoints (same architecture and vocabulary)",
        description="Merge two HF safetensors checkpoints tensor by tensor, as mergekit's slerp and linear "
        "methods do: t = 0 keeps model A, t = 1 takes model B. t is one value or a gradient over the "
        "layers (0,0.5,1: layer 0 at 0, the last at 1; the embedding takes the first value, the final "
        "norm and LM head the last); --t-for gives other values to tensors whose name contains a filter. "
        "A model that ties its LM head to the embedding merges with one that does not: its head is its "
        "embedding and the merge is untied. Streams one tensor pair at a time; config.json comes from "
        "model A (from B where A has none), with the longer of the two contexts. The chat files (the "
        "chat template, tokenizer_config.json, special_tokens_map.json, generation_config.json) and the "
        "tokenizer files read with them come "
        "from the model that has a chat template where only one has (a base model and its "
        "instruction-tuned successor), else from A; two different templates need --chat-template-from. "
        "The generation config and config.json stop at the EOS ids of both models.",
    )
    p.add_argument(
        "model_a", help="HF model directory A (t = 0; its dtype, shard layout and config are kept)"
    )
    p.add_argument("model_b", help="HF model directory B (t = 1)")
    p.add_argument(
        "--out",
        required=True,
        help="output directory, outside both models' directories (must not exist unless --overwrite)",
    )
    p.add_argument("--method", choices=["slerp", "linear"], default="slerp", help="default slerp")
    p.add_argument(
        "--t", type=t_arg, required=True, help="t in [0, 1], or a gradient over the layers: 0,0.5,1"
    )
    p.add_argument(
        "--t-for",
        action="append",
        default=[],
        metavar="FILTER=T",
        help="t for tensors whose name contains FILTER (e.g. self_attn=0,0.5,1 mlp=1,0.5,0); repeatable, "
        "the first match wins (give the narrower filter first), others use --t",
    )
    p.add_argument(
        "--chat-template-from",
        choices=["a", "b"],
        default=None,
        help="the model whose chat template (and tokenizer_config.json, special_tokens_map.json, "
        "generation_config.json and tokenizer files) the merge takes; needed where both carry different "
        "templates, and the model named must have one",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    add_no_progress(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vikhr.convert.tied import TIE_WORD_EMBEDDINGS
    from vikhr.merge.checkpoint import (
        CONTEXT_KEY,
        NO_TEMPLATE,
        SAME_TEMPLATE,
        UNTIED_FROM,
        merge_checkpoints,
    )
    from vikhr.merge.schedule import Schedule, parse_filter

    schedule = Schedule(args.t, tuple(parse_filter(f) for f in args.t_for))
    summary = merge_checkpoints(
        args.model_a,
        args.model_b,
        args.out,
        schedule,
        method=args.method,
        overwrite=args.overwrite,
        show_progress=args.progress,
        chat_template_from=args.chat_template_from,
    )
    ts = summary["t"].values()
    print(f"wrote {args.out}: {len(ts)} tensors merged by {args.method}, t from {min(ts):g} to {max(ts):g}")
    if CONTEXT_KEY in summary:
        print(f"  {CONTEXT_KEY}: the models' differ; the merge keeps the longer, {summary[CONTEXT_KEY]}")
    if UNTIED_FROM in summary:
        tied, untied = ("A", "B") if summary[UNTIED_FROM] == "model_a" else ("B", "A")
        print(
            f"  lm_head: model {tied} ties it to its embedding, model {untied} does not: the merge takes "
            f"{tied}'s embedding for its head and writes an untied model ({TIE_WORD_EMBEDDINGS}: false)"
        )
    chat = summary["chat_files"]
    model = "A" if chat["from"] == "model_a" else "B"
    if chat["why"] == SAME_TEMPLATE:
        configs = f"model {model}'s tokenizer and generation configs"
        print(f"  chat template: both models' (the same), with {configs}")
    elif chat["why"] == NO_TEMPLATE:
        print(f"  chat template: none ({NO_TEMPLATE})")
    else:
        print(f"  chat template: model {model}'s ({chat['why']}), with its tokenizer and generation configs")
    if "eos_token_id" in summary:
        print(f"  eos_token_id: {summary['eos_token_id']} (both models' stop ids)")
    return 0
