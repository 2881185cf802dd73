"""`vikhr data preprocess|inspect|merge`: pre-tokenize corpora into Megatron indexed datasets."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from vikhr.errors import VikhrError
from vikhr.progress_bar import add_no_progress

if TYPE_CHECKING:
    from vikhr.data.tokenization import TokenizationRecord

MAX_WORKERS = 1024  # threads: more is a typo (each is a real OS thread)

_REFUSED = "not supported (rejected)"
_NO_BENCHMARK = "vikhr does not benchmark worker counts; drop it (--workers 0, the default, uses every core)"
_SPACES = "vikhr encodes runs of spaces as the .model's normalizer says (Megatron-LM's default); drop it"
_PADDING = "the ids do not depend on it (the trainer pads the embedding table itself); drop it"
# Flags of recent Megatron-LM releases asking for what vikhr does not do: why, and what to give instead.
MEGATRON_FLAGS_REFUSED: dict[str, str] = {
    "--tokenizer-hf-no-include-special-tokens": "HuggingFaceTokenizer applies the tokenizer.json's "
    'post-processor (its BOS/EOS); for none, give a copy of the tokenizer.json with "post_processor": null',
    "--trust-remote-code": "vikhr runs no code from a model repository; give the tokenizer's local "
    "tokenizer.json or .model as --tokenizer-model and drop it",
    "--tokenizer-special-tokens": "vikhr encodes with the tokenizer's own special tokens (a tokenizer.json's "
    "added_tokens, a .model's control pieces); add them to the tokenizer and drop it",
    "--find-optimal-num-workers": _NO_BENCHMARK,
    "--workers-to-check": f"it goes with --find-optimal-num-workers: {_NO_BENCHMARK}",
    "--max-documents": f"it goes with --find-optimal-num-workers: {_NO_BENCHMARK}",
    "--tokenizer-hf-no-use-fast": "vikhr encodes with the tokenizer.json, the fast tokenizer (Megatron-LM's "
    "default); drop it",
    "--no-tokenizer-sentencepiece-ignore-extra-whitespaces": _SPACES,
    "--disable-tokenizer-sentencepiece-ignore-extra-whitespaces": _SPACES,
    "--tokenizer-metadata": "vikhr takes the tokenizer's kind from --tokenizer-type and its files from "
    "--tokenizer-model; drop it",
    "--chat-template": "pre-tokenization encodes plain text and applies no chat template; chats go "
    "through vikhr sft prepare --template (see docs/sft.md); drop it",
    "--padded-vocab-size": _PADDING,
    "--no-pad-vocab-size": _PADDING,
    "--disable-pad-vocab-size": _PADDING,
}
# Flags that go with a Megatron-LM tokenizer type vikhr lacks: refused with that type's advice.
MEGATRON_FLAGS_OF_TYPES: dict[str, str] = {
    "--tiktoken-pattern": "TikTokenizer",
    "--tiktoken-num-special-tokens": "TikTokenizer",
    "--null-tokenizer-eod-id": "NullTokenizer",
    "--null-tokenizer-pad-id": "NullTokenizer",
    "--tiktoken-special-tokens": "TikTokenizer",  # megatron-core 0.10 to 0.17
}
# The refused flags that take values (as Megatron-LM's: `+` several, None one); the others are switches.
_REFUSED_VALUES: dict[str, str | None] = {
    "--tokenizer-special-tokens": "+",
    "--workers-to-check": "+",
    "--max-documents": None,
    "--tokenizer-metadata": None,
    "--chat-template": None,
    "--padded-vocab-size": None,
    **dict.fromkeys(MEGATRON_FLAGS_OF_TYPES),
    "--tiktoken-special-tokens": "+",
}
# Flags of recent Megatron-LM releases that change no id here: accepted and ignored.
MEGATRON_FLAGS_ACCEPTED: dict[str, str] = {
    "--tokenizer-hf-include-special-tokens": "accepted; HuggingFaceTokenizer always applies the "
    "post-processor",
    "--use-gigatoken": "accepted; a faster encoder in Megatron-LM, the same ids (vikhr's own is in Rust)",
    "--tokenizer-hf-use-fast": "accepted; vikhr encodes with the tokenizer.json, the fast tokenizer",
}
_SENTENCEPIECE_LEGACY = (
    "the legacy mode of Megatron-LM's SentencePiece wrapper: accepted with a SentencePiece type, the same "
    "ids (it reads only the special tokens of --tokenizer-special-tokens, refused); refused with "
    "--append-eod (that mode has no EOD then) but under --legacy-tokenizer (which does not read it), and "
    "with HuggingFaceTokenizer"
)
_LEGACY_TOKENIZER = (
    "the ids of Megatron-LM's legacy tokenizers (its only ones up to core_v0.14, this flag in core_v0.15 "
    "and 0.16): Llama2Tokenizer prepends BOS to every document; the other types write the same ids "
    "(SentencePieceTokenizer's legacy ids are refused)"
)
_LOG_INTERVAL = (
    "print Megatron-LM's 'Processed N documents (... docs/s, ... MB/s).' line on stderr each N documents "
    "(at most one line per 0.2 s), in place of the progress bar: a job's log shows progress"
)
# Megatron-LM's --dataset-impl (releases before megatron-core 0.5): vikhr writes the one it kept.
DATASET_IMPL = "mmap"


def _tokenizer_type(value: str) -> str:
    """--tokenizer-type: one of Megatron-LM's that vikhr lacks is refused while the command line is
    read, before a flag that type needs is missed (GPT2BPETokenizer has no --tokenizer-model)."""
    from vikhr.data.preprocess import MEGATRON_ONLY_TOKENIZER_TYPES, unsupported_tokenizer_type

    if value in MEGATRON_ONLY_TOKENIZER_TYPES:
        raise argparse.ArgumentTypeError(unsupported_tokenizer_type(value).removeprefix("--tokenizer-type "))
    return value


def add_preprocess_arguments(p: argparse.ArgumentParser) -> None:
    """Megatron-LM's tools/preprocess_data.py flags (those vikhr cannot honour are rejected)."""
    from vikhr.data.preprocess import TOKENIZER_TYPES

    g = p.add_argument_group("input data")
    g.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="JSONL files (.jsonl, .jsonl.gz, .jsonl.zst) or globs; a file named twice is written twice "
        "(with a warning)",
    )
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract (one dataset each)")
    g.add_argument("--skip-invalid", action="store_true", help="skip and count bad lines instead of failing")
    g.add_argument("--split-sentences", action="store_true", help=_REFUSED)
    g.add_argument("--keep-newlines", action="store_true", help="accepted; newlines are always kept")
    g.add_argument("--lang", default=None, help="accepted and ignored (only used for sentence splitting)")
    g = p.add_argument_group("tokenizer")
    g.add_argument(
        "--tokenizer-type",
        required=True,
        type=_tokenizer_type,
        choices=sorted(TOKENIZER_TYPES),
        help="as Megatron-LM's (megatron.core.tokenizers, core_v0.17 on): the SentencePiece types write the "
        ".model's pieces, no BOS; HuggingFaceTokenizer applies the tokenizer.json's post-processor; "
        "--append-eod ends each document with EOS (Megatron-LM's other types are refused, saying what to "
        "give instead)",
    )
    g.add_argument(
        "--tokenizer-model", required=True, help="SentencePiece .model, or tokenizer.json / its dir"
    )
    g.add_argument("--vocab-file", default=None, help="not supported (rejected)")
    g.add_argument("--merge-file", default=None, help="not supported (rejected)")
    g.add_argument("--vocab-size", type=int, default=None, help="not supported (rejected)")
    g.add_argument(
        "--vocab-extra-ids",
        type=int,
        default=0,
        help="accepted and ignored, as Megatron-LM's preprocess_data.py does (it sets 0)",
    )
    g.add_argument("--append-eod", action="store_true", help="append the EOS id to every non-empty document")
    g.add_argument("--legacy-tokenizer", action="store_true", help=_LEGACY_TOKENIZER)
    g.add_argument("--tokenizer-sentencepiece-legacy", action="store_true", help=_SENTENCEPIECE_LEGACY)
    for flag, said in MEGATRON_FLAGS_ACCEPTED.items():
        g.add_argument(flag, action="store_true", help=said)
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="writes PREFIX_{key}_document.bin/.idx")
    g.add_argument(
        "--dataset-impl",
        default=None,
        help=f"accepted as {DATASET_IMPL}, the format written (the only one megatron-core reads); "
        "lazy and cached are refused",
    )
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=0, help="tokenizer threads (0 = all cores)")
    g.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="accepted with --keep-sequential-samples (the documents stay in input order; the inputs are "
        "streamed in one pass, --workers sets the parallelism)",
    )
    g.add_argument(
        "--chunk-size", type=int, default=None, help="accepted; the threads take their work in batches"
    )
    g.add_argument("--log-interval", type=int, default=None, metavar="N", help=_LOG_INTERVAL)
    g.add_argument(
        "--keep-sequential-samples", action="store_true", help="accepted; output is always in order"
    )
    add_no_progress(g)
    g = p.add_argument_group("Megatron-LM flags vikhr refuses, saying what to do instead")
    for flag in (*MEGATRON_FLAGS_REFUSED, *MEGATRON_FLAGS_OF_TYPES):
        if flag in _REFUSED_VALUES:
            g.add_argument(flag, nargs=_REFUSED_VALUES[flag], metavar="VALUE", help=_REFUSED)
        else:
            g.add_argument(flag, action="store_true", help=_REFUSED)


def _given(args: argparse.Namespace, flag: str) -> bool:
    return getattr(args, flag.removeprefix("--").replace("-", "_")) not in (None, False)


def _check_runtime_flags(args: argparse.Namespace) -> None:
    """Megatron-LM's flags of its output format and of how its processes share the work: taken where
    its output with them is vikhr's, refused in one line where it is not."""
    if args.dataset_impl not in (None, DATASET_IMPL):
        raise VikhrError(
            f"--dataset-impl {args.dataset_impl} is not supported: vikhr writes the {DATASET_IMPL} format "
            f"(.bin/.idx), the only one megatron-core reads; give --dataset-impl {DATASET_IMPL} or drop it"
        )
    if args.vocab_extra_ids < 0:
        raise VikhrError(f"--vocab-extra-ids must be 0 or more, got {args.vocab_extra_ids}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise VikhrError(f"--chunk-size must be 1 or more, got {args.chunk_size}")
    if args.log_interval is not None and args.log_interval < 1:
        raise VikhrError(f"--log-interval must be 1 or more documents, got {args.log_interval}")
    if args.partitions < 1:
        raise VikhrError(f"--partitions must be 1 or more, got {args.partitions}")
    if args.partitions > 1 and not args.keep_sequential_samples:
        raise VikhrError(
            f"--partitions {args.partitions} without --keep-sequential-samples interleaves the documents "
            "in Megatron-LM; vikhr keeps them in input order, streaming the inputs in one pass: add "
            "--keep-sequential-samples, or drop --partitions (--workers sets the parallelism)"
        )


def _check_sentencepiece_legacy(args: argparse.Namespace) -> None:
    """--tokenizer-sentencepiece-legacy, as Megatron-LM's tools/preprocess_data.py reads it: the
    `legacy` switch of megatron.core.tokenizers' SentencePiece wrapper, for the SentencePiece types only
    (its legacy tokenizers, --legacy-tokenizer, do not read it). Legacy mode only reads the special
    tokens of --tokenizer-special-tokens (refused): without them the ids are the same, but the wrapper
    then has no EOS and its --append-eod run fails at the first document."""
    if not args.tokenizer_sentencepiece_legacy:
        return
    from vikhr.data.preprocess import TOKENIZER_TYPES

    if TOKENIZER_TYPES.get(args.tokenizer_type) != "sentencepiece":
        raise VikhrError(
            f"--tokenizer-sentencepiece-legacy is not read with --tokenizer-type {args.tokenizer_type}: "
            "it switches the legacy mode of Megatron-LM's SentencePiece wrapper (the SentencePiece types "
            "only); drop it"
        )
    if args.append_eod and not args.legacy_tokenizer:
        raise VikhrError(
            "--tokenizer-sentencepiece-legacy with --append-eod: Megatron-LM's SentencePiece wrapper in "
            "its legacy mode takes EOD only from --tokenizer-special-tokens (refused), so its run fails at "
            "the first document; drop --tokenizer-sentencepiece-legacy (the ids are the same, each "
            "document ending with the .model's EOS)"
        )


def progress_lines(interval: int) -> Callable[[int, int, int, int], None]:
    """Megatron-LM's --log-interval progress: its line on stderr once `interval` more documents are
    done. The tokenizer threads report every 0.2 s (and once at the end), so a line may pass several
    multiples at once and names the count it reached."""
    started = time.perf_counter()
    next_at = interval

    def log(documents: int, nbytes: int, tokens: int, skipped: int) -> None:
        nonlocal next_at
        if documents < next_at:
            return
        elapsed = max(time.perf_counter() - started, 1e-9)
        print(
            f"Processed {documents} documents ({documents / elapsed:.1f} docs/s, "
            f"{nbytes / elapsed / 1024 / 1024:.2f} MB/s).",
            file=sys.stderr,
            flush=True,
        )
        next_at = (documents // interval + 1) * interval

    return log


def run_preprocess(args: argparse.Namespace) -> int:
    from vikhr.data.preprocess import preprocess

    if args.split_sentences:
        raise VikhrError(
            "--split-sentences is not supported: vikhr writes each document as one sequence, as GPT "
            "pre-training reads it (Megatron-LM splits sentences with NLTK for BERT-style data); drop it"
        )
    for flag, advice in MEGATRON_FLAGS_REFUSED.items():
        if _given(args, flag):
            raise VikhrError(f"{flag} is not supported: {advice}")
    for flag, tokenizer_type in MEGATRON_FLAGS_OF_TYPES.items():
        if _given(args, flag):
            from vikhr.data.preprocess import unsupported_tokenizer_type

            why = unsupported_tokenizer_type(tokenizer_type).removeprefix(
                f"--tokenizer-type {tokenizer_type} "
            )
            raise VikhrError(
                f"{flag} is not supported: it goes with --tokenizer-type {tokenizer_type}, which {why}"
            )
    # Megatron reads these for its GPT-2 BPE, TikTokenizer and NullTokenizer, refused above.
    for flag, value in {
        "--vocab-file": args.vocab_file,
        "--merge-file": args.merge_file,
        "--vocab-size": args.vocab_size,
    }.items():
        if value:
            raise VikhrError(
                f"{flag} is not read: the vocabulary comes from --tokenizer-model (a tokenizer.json holds "
                "the vocabulary and merges); drop it"
            )
    _check_runtime_flags(args)
    _check_sentencepiece_legacy(args)
    if not 0 <= args.workers <= MAX_WORKERS:
        raise VikhrError(f"--workers must be from 0 (all cores) to {MAX_WORKERS}, got {args.workers}")
    summary = preprocess(
        args.input,
        args.output_prefix,
        args.tokenizer_model,
        tokenizer_type=args.tokenizer_type,
        json_keys=args.json_keys,
        append_eod=args.append_eod,
        legacy_tokenizer=args.legacy_tokenizer,
        workers=args.workers,
        skip_invalid=args.skip_invalid,
        progress=progress_lines(args.log_interval) if args.log_interval is not None else args.progress,
    )
    print(summary.line())
    return 0


def _key_and_eod(record: TokenizationRecord) -> str:
    """The key and EOD a record names; a merge of inputs that differ in them records None for each."""
    key = "keys of the merged inputs differ" if record.json_key is None else f"key {record.json_key}"
    if record.append_eod is None:  # some inputs end their documents with EOD, some not
        return f"{key}, EOD appended in some merged inputs only"
    return f"{key}, " + (f"EOD {record.eod_id} appended" if record.append_eod else "no EOD appended")


def _convention(record: TokenizationRecord) -> str:
    """The Megatron-LM tokenizer code whose ids the dataset holds, as the record names it."""
    from vikhr.data.tokenization import CONVENTIONS

    if record.convention is None:
        return "not one convention (merged from datasets of different tokenizer types or conventions)"
    return CONVENTIONS.get(record.convention, record.convention)


def run_inspect(args: argparse.Namespace) -> int:
    from vikhr.data.preprocess import inspect

    if args.tokens < 0:
        raise VikhrError(f"--tokens must be >= 0, got {args.tokens}")
    s = inspect(args.prefix, args.tokenizer_model, args.tokens)
    print(f"{s.prefix}: valid MMIDIDX v1, dtype {s.dtype}")
    print(f"  documents {s.documents:,} (empty {s.empty_documents:,}), sequences {s.sequences:,}")
    print(f"  tokens {s.tokens:,}, .bin {s.bin_bytes:,} bytes")
    record = s.tokenization
    if s.sft_meta is not None and s.dtype == "uint8":
        print(f"  loss mask of vikhr sft prepare ({s.sft_meta}): 1 on the tokens trained on")
    elif s.sft_meta is not None:
        tokenizer = record.tokenizer_line() if record is not None else "recorded without its sha256"
        print(f"  tokenizer: {tokenizer}, chats of vikhr sft prepare ({s.sft_meta})")
    elif record is None:
        print("  tokenizer: not recorded (written by Megatron-LM's tools or an older vikhr)")
    else:
        print(f"  tokenizer: {record.tokenizer_line()}, {_key_and_eod(record)}")
        print(f"  ids follow: {_convention(record)}")
    print(f"  first tokens: {s.first_tokens}")
    if s.first_text is not None:
        print(f"  decoded: {s.first_text!r}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from vikhr.data.preprocess import merge, merge_inputs

    s = merge(args.inputs, args.output_prefix)
    n, docs = len(merge_inputs(args.inputs, args.output_prefix).prefixes), s.documents
    print(
        f"merged {n} dataset{'s' * (n != 1)} -> {s.prefix}: "
        f"{docs:,} document{'s' * (docs != 1)}, {s.tokens:,} tokens"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="pre-tokenize corpora into Megatron indexed datasets; inspect; merge")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    data_sub.required = True

    pp = data_sub.add_parser("preprocess", help="JSONL -> PREFIX_{key}_document.bin/.idx (Megatron flags)")
    add_preprocess_arguments(pp)
    pp.set_defaults(func=run_preprocess)

    pi = data_sub.add_parser("inspect", help="validate a .bin/.idx pair and show counts and first tokens")
    pi.add_argument("prefix", help="dataset prefix (without .bin/.idx)")
    pi.add_argument("--tokenizer-model", default=None, help="decode the first tokens with this tokenizer")
    pi.add_argument("--tokens", type=int, default=32, help="how many first tokens to show")
    pi.set_defaults(func=run_inspect)

    pm = data_sub.add_parser("merge", help="concatenate datasets into one (Megatron's merge_datasets)")
    pm.add_argument(
        "--inputs",
        "--input",
        nargs="+",
        required=True,
        help="dataset prefixes, in order; a folder gives the datasets in it in name order (Megatron-LM's "
        "merge_datasets.py --input DIR), but for --output-prefix's own",
    )
    pm.add_argument(
        "--output-prefix", required=True, help="writes PREFIX.bin/.idx (no _{key}_document is appended)"
    )
    pm.set_defaults(func=run_merge)
