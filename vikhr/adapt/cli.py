"""`vikhr adapt-vocab` (see vikhr.adapt.vocab)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vikhr.progress_bar import add_no_progress


def register(sub: Any) -> None:
    p = sub.add_parser(
        "adapt-vocab",
        help="give an HF Mistral/Llama/Qwen2/Qwen3 checkpoint a new vocabulary (copied/averaged rows)",
        description="Rebuild the input embedding and LM head of an HF safetensors checkpoint for a new "
        "tokenizer: rows of tokens known to the old vocabulary are copied, new tokens start as the mean "
        "of the rows of their pieces under the old tokenizer. Streams the other tensors shard by shard.",
    )
    p.add_argument("--model", required=True, help="HF model directory (safetensors, sharded or not)")
    p.add_argument(
        "--old-tokenizer", required=True, help="tokenizer the model was trained with (.model/.json/dir)"
    )
    p.add_argument("--new-tokenizer", required=True, help="the new tokenizer (.model/.json/dir)")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument(
        "--init",
        choices=["mean", "random", "mean-of-all"],
        default="mean",
        help="rows of new tokens: the mean of their old pieces (default), random (N(mean, std) of the old "
        "tokens' rows, seeded by --seed) or mean-of-all (the mean of the old tokens' rows)",
    )
    p.add_argument(
        "--pad-to-multiple",
        type=int,
        default=None,
        help="pad the vocabulary rows to a multiple of this with the mean of the old tokens' rows "
        "(default: no padding)",
    )
    p.add_argument(
        "--whitespace-pieces",
        choices=["mean", "space"],
        default="mean",
        help="new pieces made only of spaces ('▁', byte-level 'Ġ'): mean of their old pieces, or a copy of "
        "the old single-space row",
    )
    p.add_argument(
        "--id-map",
        help="old → new id map of a prune-extend tokenizer (default: id_map.json beside --new-tokenizer)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --init random")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    add_no_progress(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vikhr.adapt.vocab import adapt_vocab
    from vikhr.errors import VikhrError
    from vikhr.tokenizer.train import MAX_PAD_MULTIPLE

    if args.pad_to_multiple is not None and not 1 <= args.pad_to_multiple <= MAX_PAD_MULTIPLE:
        raise VikhrError(
            f"--pad-to-multiple must be from 1 to {MAX_PAD_MULTIPLE}, got {args.pad_to_multiple}"
        )
    summary = adapt_vocab(
        args.model,
        args.old_tokenizer,
        args.new_tokenizer,
        args.out,
        init=args.init,
        pad_to_multiple=args.pad_to_multiple,
        whitespace=args.whitespace_pieces,
        seed=args.seed,
        overwrite=args.overwrite,
        show_progress=args.progress,
        id_map_path=args.id_map,
    )
    counts = dict(summary["counts"])
    unused = counts.pop("unused")
    kept = f"; {unused} unused ids keep their rows" if unused else ""
    print(f"wrote {args.out}: {json.dumps(counts)}{kept}")
    return 0
