"""`vikhr tokenizer train|compare|import-tekken` (vikhr.tokenizer.train, .compare, .tekken)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError
from vikhr.progress_bar import add_no_progress
from vikhr.tokenizer.corpus import DEFAULT_HELDOUT_PERCENT, parse_budget


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "tokenizer",
        help="train a BPE tokenizer (SentencePiece or byte-level; replace/extend) and compare tokenizers",
        description="Train a Russian BPE tokenizer (SentencePiece, or byte-level on a Llama-3/Qwen2.5/"
        "tekken base), import Mistral tekken files and measure tokenizer efficiency.",
    )
    tsub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", parser_class=type(parser))
    tsub.required = True

    _register_train(tsub)
    _register_compare(tsub)
    _register_import_tekken(tsub)


def _register_train(tsub: Any) -> None:
    tr = tsub.add_parser(
        "train",
        help="train a tokenizer from JSONL corpora (plain, .gz or .zst)",
        description="Train SentencePiece BPE with byte fallback (writes tokenizer.model, tokenizer.json, "
        "tokenizer_config.json and manifest.json into --out) or, when --base-model is a byte-level "
        "tokenizer.json, byte-level BPE (tokenizer.json, tokenizer_config.json, manifest.json).",
    )
    tr.add_argument(
        "--corpus",
        action="append",
        required=True,
        metavar="FILE[@CHARS]",
        help="JSONL corpus (plain, .gz or .zst), repeatable; '@20M' caps the characters sampled from it",
    )
    tr.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    tr.add_argument(
        "--mode",
        choices=["replace", "extend", "prune-extend"],
        default="replace",
        help="replace: a new vocabulary; extend: base ids kept, Russian pieces appended; prune-extend: the "
        "base's most used pieces kept (they may move: id_map.json), Russian pieces fill up to --vocab-size",
    )
    tr.add_argument("--vocab-size", type=int, help="total vocabulary size (default 40000)")
    tr.add_argument(
        "--new-tokens", type=int, help="extend mode: how many tokens to add (instead of --vocab-size)"
    )
    tr.add_argument(
        "--keep-base-pieces",
        type=int,
        help="prune-extend: base pieces to keep, dependencies included (default: 72%% of the base's)",
    )
    tr.add_argument(
        "--base-model",
        help="SentencePiece .model or its directory (extend, prune-extend), e.g. Mistral's; or a byte-level "
        "tokenizer.json or its directory (Llama-3, Qwen2.5, import-tekken output): byte-level, either mode",
    )
    tr.add_argument("--text-key", default="text", help="JSON field holding the text (default: text)")
    tr.add_argument(
        "--max-chars-per-file",
        type=_budget,
        default=parse_budget("20M"),
        help="default character budget per corpus file, sampled evenly (default 20M)",
    )
    tr.add_argument(
        "--heldout-percent",
        type=_train_percent,
        default=DEFAULT_HELDOUT_PERCENT,
        help=f"documents kept out of training, by id hash (default {DEFAULT_HELDOUT_PERCENT:g}; 0: none)",
    )
    tr.add_argument("--pad-to-multiple", type=int, default=128, help="recorded in the manifest")
    tr.add_argument(
        "--character-coverage",
        type=float,
        help="SentencePiece: share of characters that get their own piece, the rest byte fallback "
        "(0.98 to 1; default 0.9999)",
    )
    tr.add_argument(
        "--no-split-by-script",
        dest="split_by_script",
        action="store_false",
        default=None,
        help="let pieces join letters and punctuation (SentencePiece split_by_unicode_script=false)",
    )
    tr.add_argument(
        "--no-split-by-whitespace",
        dest="split_by_whitespace",
        action="store_false",
        default=None,
        help="let pieces span words ('▁не▁был'; SentencePiece split_by_whitespace=false)",
    )
    tr.add_argument(
        "--min-frequency",
        type=int,
        help="byte-level BPE: fewest occurrences of a pair to merge (default 2)",
    )
    tr.add_argument("--threads", type=int, help="SentencePiece: training threads (default 2)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    tr.set_defaults(func=_train)


def _budget(text: str) -> int:
    """parse_budget for argparse: its error becomes the subcommand's usage line."""
    try:
        return parse_budget(text)
    except VikhrError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _percent(text: str, least_exclusive: bool = True) -> float:
    """A share of documents in percent, below 100 and above 0 (or from 0 when not `least_exclusive`)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < 100 if least_exclusive else 0 <= value < 100):
        low = "between 0 and 100 (exclusive)" if least_exclusive else "from 0 up to (not including) 100"
        raise argparse.ArgumentTypeError(f"expected a percentage {low}, got {text!r}")
    return value


def _train_percent(text: str) -> float:
    """Training may keep no documents out (0: train on all of them)."""
    return _percent(text, least_exclusive=False)


def _register_compare(tsub: Any) -> None:
    cp = tsub.add_parser(
        "compare",
        help="chars/token, tokens/word and ≥3-piece words of tokenizers on text sets",
        description="Writes report.md, report.csv and chars_per_token.png into the new directory --out.",
    )
    cp.add_argument(
        "--tokenizer",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help=".model, tokenizer.json or a directory holding one; repeatable",
    )
    cp.add_argument(
        "--texts",
        action="append",
        required=True,
        metavar="[NAME=]FILE",
        help="JSONL (plain, .gz or .zst); repeatable",
    )
    cp.add_argument("--out", required=True, help="report directory (must not exist unless --overwrite)")
    cp.add_argument("--text-key", default="text", help="JSON field holding the text")
    cp.add_argument(
        "--split",
        choices=["heldout", "all", "auto"],
        default="heldout",
        help="documents measured; auto: held-out ones of sets a compared tokenizer trained on (its "
        "manifest.json), all of the others. The report says per figure whether the tokenizer trained on "
        "the set ('no': a left-out corpus)",
    )
    cp.add_argument(
        "--heldout-percent",
        type=_percent,
        default=DEFAULT_HELDOUT_PERCENT,
        help="share of documents held out (by a hash of their id), as at training time",
    )
    cp.add_argument("--max-chars", type=_budget, default=parse_budget("2M"), help="per text set")
    cp.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    add_no_progress(cp)
    cp.set_defaults(func=_compare)


def _register_import_tekken(tsub: Any) -> None:
    tk = tsub.add_parser(
        "import-tekken",
        help="convert a Mistral tekken.json to an HF byte-level tokenizer.json",
        description="Convert a Mistral tekken.json (Mistral-NeMo and later) with transformers' "
        "MistralConverter into tokenizer.json + tokenizer_config.json (+ manifest.json) in OUT_DIR, and "
        "check on held-out lines that the ids equal mistral-common's Tekkenizer.",
    )
    tk.add_argument("tekken_json", metavar="TEKKEN_JSON", help="Mistral's tekken.json")
    tk.add_argument("out_dir", metavar="OUT_DIR", help="output directory (must not exist unless --overwrite)")
    tk.add_argument(
        "--verify-texts",
        action="append",
        metavar="FILE",
        help="JSONL whose lines are checked (repeatable; default: the held-out lines of the bundled RU/EN "
        "samples)",
    )
    tk.add_argument("--text-key", default="text", help="JSON field of --verify-texts holding the text")
    tk.add_argument("--no-verify", dest="verify", action="store_false", help="skip the mistral-common check")
    tk.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    tk.set_defaults(func=_import_tekken)


def _train(args: argparse.Namespace) -> int:
    from vikhr.errors import VikhrError
    from vikhr.tokenizer.train import TrainSettings, train_tokenizer

    if args.mode == "extend" and args.new_tokens is not None and args.vocab_size is not None:
        raise VikhrError(
            "--mode extend takes --vocab-size (the total) or --new-tokens (how many to add), not both"
        )
    settings = TrainSettings(
        mode=args.mode,
        vocab_size=args.vocab_size if args.vocab_size is not None else TrainSettings.vocab_size,
        base_model=args.base_model,
        text_key=args.text_key,
        max_chars_per_file=args.max_chars_per_file,
        heldout_percent=args.heldout_percent,
        pad_to_multiple=args.pad_to_multiple,
        character_coverage=args.character_coverage,
        split_by_script=args.split_by_script,
        split_by_whitespace=args.split_by_whitespace,
        num_threads=args.threads,
        new_tokens=args.new_tokens,
        min_frequency=args.min_frequency,
        keep_base_pieces=args.keep_base_pieces,
    )
    manifest = train_tokenizer(args.corpus, args.out, settings, overwrite=args.overwrite)
    keys = ("mode", "kind", "vocab_size", "padded_vocab_size", "hf_check", "checks", "extend", "prune")
    summary = {k: manifest[k] for k in keys if k in manifest}
    print(f"wrote {args.out}: {json.dumps(summary, ensure_ascii=False)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from vikhr.tokenizer.compare import REPORT_FILES, compare

    compare(
        args.tokenizer,
        args.texts,
        args.out,
        text_key=args.text_key,
        split=args.split,
        heldout_percent=args.heldout_percent,
        max_chars=args.max_chars,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    out = Path(args.out)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(out / name) for name in REPORT_FILES)}")
    return 0


def _import_tekken(args: argparse.Namespace) -> int:
    from vikhr.errors import VikhrError

    if args.verify_texts and not args.verify:
        raise VikhrError("--verify-texts names texts to check, --no-verify skips the check: give one of them")
    if args.text_key != "text" and not args.verify_texts:  # the bundled samples hold theirs under "text"
        raise VikhrError("--text-key names the field of --verify-texts files: give them, or leave it out")
    from vikhr.tokenizer.tekken import import_tekken

    manifest = import_tekken(
        args.tekken_json,
        args.out_dir,
        args.verify_texts,
        verify=args.verify,
        overwrite=args.overwrite,
        text_key=args.text_key,
    )
    summary = {k: manifest[k] for k in ("vocab_size", "special_tokens", "tekken_check")}
    print(f"wrote {args.out_dir}: {json.dumps(summary, ensure_ascii=False)}")
    return 0
