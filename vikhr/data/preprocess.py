"""Python API of the pre-tokenizer (the work itself is in `vikhr._core`)."""

from __future__ import annotations

import glob
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vikhr.data import indexed, tokenization
from vikhr.errors import VikhrError, overlap, require_output_prefix, sigterm_as_interrupt
from vikhr.jsonl import check_compression_name, refuse_what_is_not_json_lines

# Megatron's --tokenizer-type values that vikhr implements, and the tokenizer file each one reads.
# Ids follow Megatron-LM's tokenizer library megatron.core.tokenizers (its tools/preprocess_data.py's
# default since core_v0.15.0, its only one since core_v0.17.0): every SentencePiece type writes the
# .model's pieces alone, no BOS, with EOS as EOD; HuggingFaceTokenizer applies the tokenizer's
# post-processor (add_special_tokens=True). With --legacy-tokenizer they follow its older classes
# (megatron.training.tokenizer: the only ones up to core_v0.14, that flag's in core_v0.15 and 0.16),
# which differ in Llama2Tokenizer, prepending BOS to every document, and in SentencePieceTokenizer,
# adding an <EOD> id after the vocabulary and reading special-token strings in the text, which vikhr
# does not implement (see the README).
TOKENIZER_TYPES: dict[str, str] = {
    "SentencePieceTokenizer": "sentencepiece",
    "GPTSentencePieceTokenizer": "sentencepiece",
    "Llama2Tokenizer": "sentencepiece",
    "HuggingFaceTokenizer": "huggingface",
}
_GPT_TOKENIZERS = (
    "give a GPT-style model's tokenizer: a SentencePiece .model (--tokenizer-type "
    "GPTSentencePieceTokenizer) or a tokenizer.json (HuggingFaceTokenizer)"
)
_BERT = f"BERT's WordPiece serves Megatron's BERT and T5, models vikhr does not train; {_GPT_TOKENIZERS}"
# Megatron-LM's other --tokenizer-type values: what a user of each gives vikhr instead.
MEGATRON_ONLY_TOKENIZER_TYPES: dict[str, str] = {
    "GPT2BPETokenizer": "a vocab.json with its merges.txt is one tokenizer.json (GPT-2's is in the gpt2 "
    "model's directory): give that file or its directory as --tokenizer-model with --tokenizer-type "
    "HuggingFaceTokenizer",
    "BertWordPieceLowerCase": _BERT,
    "BertWordPieceCase": _BERT,
    "TikTokenizer": "its vocabulary is in Mistral's tekken format: convert the model's tekken.json with "
    "vikhr tokenizer import-tekken TEKKEN_JSON OUT_DIR, then give --tokenizer-type HuggingFaceTokenizer "
    "--tokenizer-model OUT_DIR",
    "NullTokenizer": "it reads token ids written as text; write ids you hold with "
    "vikhr.data.indexed.write_indexed",
    "MultimodalTokenizer": f"vikhr trains text-only models; {_GPT_TOKENIZERS}",
    "NullMultimodalTokenizer": f"vikhr trains text-only models; {_GPT_TOKENIZERS}",
    "SFTTokenizer": "chats are encoded with vikhr sft prepare (see docs/sft.md), not pre-tokenized as text",
}


def unsupported_tokenizer_type(tokenizer_type: str) -> str:
    """Why vikhr refuses `--tokenizer-type tokenizer_type`, and what to give instead (one line)."""
    advice = MEGATRON_ONLY_TOKENIZER_TYPES.get(tokenizer_type)
    if advice is None:
        return f"--tokenizer-type {tokenizer_type} is not supported; use one of {', '.join(TOKENIZER_TYPES)}"
    return f"--tokenizer-type {tokenizer_type} is not implemented in vikhr: {advice}"


@dataclass
class PreprocessSummary:
    """What one pre-tokenization run wrote."""

    documents: int
    empty_documents: int
    skipped: int
    bytes: int
    tokens: int
    seconds: float
    threads: int
    dtype: str
    outputs: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (
            f"documents {self.documents:,}, tokens {self.tokens:,}, skipped {self.skipped:,}, "
            f"empty {self.empty_documents:,}, {self.mb_per_s:.1f} MB/s, {self.tokens_per_s:,.0f} tokens/s, "
            f"{self.seconds:.1f} s, {self.threads} threads -> {', '.join(self.outputs)}"
        )


@dataclass(frozen=True)
class IndexSummary(indexed.IndexInfo):
    """`vikhr data inspect`'s view of a dataset: its validated counts and its first tokens."""

    first_tokens: list[int] = field(default_factory=list)
    first_text: str | None = None
    tokenization: tokenization.TokenizationRecord | None = None  # what data preprocess recorded
    sft_meta: Path | None = None  # the `_sft.json` of the chats `vikhr sft prepare` wrote as this dataset


def expand_inputs(patterns: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named by paths or glob patterns, in the given order (each glob sorted); an existing
    file whose name holds glob characters is that file."""
    if isinstance(patterns, (str, os.PathLike)):  # one path, not a sequence of its characters
        patterns = [patterns]
    files: list[Path] = []
    for pattern in patterns:
        p = str(pattern)
        if glob.has_magic(p) and not Path(p).exists():  # "corpus [1].jsonl" is a file's own name
            # Folders are skipped: 'corpus/*' or 'corpus/**' means the files in them.
            matches = sorted(m for m in glob.glob(p, recursive=True) if not os.path.isdir(m))
            if not matches:
                raise VikhrError(f"--input pattern matches no file: {p}")
            files.extend(Path(m) for m in matches)
        else:
            path = Path(p)
            # Any readable non-directory will do (a named pipe, /dev/stdin).
            if not path.exists() or path.is_dir():
                why = "is a directory (give its files, e.g. 'dir/*.jsonl')" if path.is_dir() else "not found"
                raise VikhrError(f"input file {p} {why} (check --input)")
            files.append(path)
    for path in files:
        check_compression_name(path)
        refuse_what_is_not_json_lines(path)
    if not files:
        raise VikhrError("no input files (give --input)")
    # Overlapping globs (data/*.jsonl data/ru*.jsonl) repeat a file without a word: say so, but
    # keep it, as a repeat may be meant as upsampling.
    named = Counter(f.resolve() for f in files)
    for path, count in named.items():
        if count > 1:
            print(
                f"warning: --input names {path} {count} times: its documents are written {count} times "
                "(drop the repeat unless that is meant)",
                file=sys.stderr,
            )
    return files


@dataclass(frozen=True)
class _Encoder:
    """The tokenizer a run encodes with: the native core's, and its BOS/EOS by vikhr's one rule."""

    path: Path
    sha256: str  # of the file as loaded: the record names it, not the file as it is after the run
    native: Any  # vikhr._core.Tokenizer
    bos_id: int | None
    eos_id: int | None


def _load_tokenizer(tokenizer_model: str | os.PathLike[str], tokenizer_type: str) -> _Encoder:
    """The tokenizer `tokenizer_type` names, loaded once by the native core.

    BOS/EOS follow `vikhr.tokenizer.load`'s rule: a `.model`'s own ids; for a tokenizer.json the
    native tokenizer answers the vocabulary look-ups (building the Python `tokenizers` object
    only for them costs more than a second on a 131k vocabulary).
    """
    from vikhr import _core
    from vikhr.tokenizer.corpus import corpus_sha256
    from vikhr.tokenizer.load import hf_special_ids, json_over_model_reason, load, resolve_tokenizer_file

    if tokenizer_type not in TOKENIZER_TYPES:
        raise VikhrError(unsupported_tokenizer_type(tokenizer_type))
    kind = TOKENIZER_TYPES[tokenizer_type]
    path = Path(tokenizer_model)
    # Megatron's HuggingFaceTokenizer reads a directory's tokenizer.json, even beside a .model.
    if kind == "huggingface" and path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    file = resolve_tokenizer_file(path)
    file_kind = "huggingface" if file.suffix == ".json" else "sentencepiece"
    if file_kind != kind:
        wanted = "a SentencePiece .model" if kind == "sentencepiece" else "a tokenizer.json"
        found = "an HF tokenizer.json" if file_kind == "huggingface" else "not a .json file"
        if path.is_dir() and (path / "tokenizer.model").is_file():  # the .json was chosen over it
            found += f", the tokenizer of {path} ({json_over_model_reason(path)})"
        if file_kind == "huggingface":
            fix = (
                "give --tokenizer-type HuggingFaceTokenizer for it, or a SentencePiece .model as "
                "--tokenizer-model"
            )
        else:
            fix = (
                "give a SentencePiece type for it (--tokenizer-type GPTSentencePieceTokenizer, "
                "Llama2Tokenizer or SentencePieceTokenizer), or a tokenizer.json as --tokenizer-model"
            )
        raise VikhrError(f"--tokenizer-type {tokenizer_type} needs {wanted}, but {file} is {found}: {fix}")
    # sentencepiece first: its error for a file that is not a .model is the clear one.
    spm = load(file) if kind == "sentencepiece" else None
    sha256 = corpus_sha256(file)
    try:
        # Megatron's HuggingFaceTokenizer applies the post-processor (add_special_tokens=True).
        native = _core.Tokenizer(kind, str(file), add_special_tokens=kind == "huggingface")
    except ValueError as e:
        from vikhr.tokenizer.tekken import is_tekken_file, tekken_error

        if kind == "huggingface" and is_tekken_file(file):
            raise tekken_error(file) from None
        raise VikhrError(str(e)) from None
    bos_id, eos_id = (spm.bos_id, spm.eos_id) if spm else hf_special_ids(file, native.token_to_id)
    return _Encoder(path=file, sha256=sha256, native=native, bos_id=bos_id, eos_id=eos_id)


def _first_record(files: Sequence[Path]) -> tuple[Path, int, dict[str, Any]] | None:
    """The first record of the inputs (file, line, record): files without one (empty, blank lines)
    are passed over; None where a bad line or a file that cannot be read ahead (a pipe) comes first,
    which the reader names in its turn."""
    from vikhr.jsonl import read_jsonl

    for path in files:
        try:
            line_no, record = next(read_jsonl(path))
        except StopIteration:
            continue
        except VikhrError:
            return None
        return path, line_no, record
    return None


def _check_json_keys(files: Sequence[Path], json_keys: Sequence[str], skip_invalid: bool) -> None:
    """--json-keys: one key at least, none twice, and (unless bad lines are to be skipped) each a
    string field of the first record: a key it lacks is most likely the wrong one, said so with the
    fields it has, before any work (the reader's hint for a bad line, --skip-invalid, would skip
    every line)."""
    from vikhr.jsonl import said_not_text

    if not json_keys:
        raise VikhrError("--json-keys needs at least one key")
    if len(set(json_keys)) != len(json_keys):
        raise VikhrError(f"--json-keys has duplicates: {' '.join(json_keys)}")
    first = None if skip_invalid else _first_record(files)
    if first is None:
        return
    path, line_no, record = first
    missing = [key for key in json_keys if not isinstance(record.get(key), str)]
    if not missing:
        return
    key, fields = missing[0], ", ".join(record) or "none"
    choose = f"choose the field with --json-keys; the record's fields: {fields}"
    if key not in record:
        raise VikhrError(f"{path}:{line_no}: no string field {key!r} ({choose})")
    # The reader's own words for the value (a chat names the commands that read chats; a list of
    # strings, how to join them).
    field = said_not_text(key, record[key])
    raise VikhrError(f"{path}:{line_no}: {field.said}" + ("" if field.says_its_fix else f" ({choose})"))


def _encoder_for(
    tokenizer_model: str | os.PathLike[str], tokenizer_type: str, append_eod: bool, legacy_tokenizer: bool
) -> tuple[_Encoder, int | None]:
    """The tokenizer of a run, and the BOS id to begin each document with (None: none)."""
    if legacy_tokenizer and tokenizer_type == "SentencePieceTokenizer":
        raise VikhrError(
            "--legacy-tokenizer --tokenizer-type SentencePieceTokenizer is not implemented in vikhr: "
            "Megatron-LM's legacy SentencePieceTokenizer adds <CLS>, <SEP>, <EOD> and <MASK> ids after the "
            "vocabulary and reads those strings in the text; drop --legacy-tokenizer (its current "
            "SentencePieceTokenizer), or give --tokenizer-type GPTSentencePieceTokenizer"
        )
    tok = _load_tokenizer(tokenizer_model, tokenizer_type)
    if append_eod and tok.eos_id is None:
        raise VikhrError(f"--append-eod: {tok.path} has no EOS token (add tokenizer_config.json naming one)")
    # Megatron-LM's legacy Llama2Tokenizer prepends BOS; none of its other types here add one.
    if not (legacy_tokenizer and tokenizer_type == "Llama2Tokenizer"):
        return tok, None
    if tok.bos_id is None:
        raise VikhrError(
            f"--legacy-tokenizer --tokenizer-type {tokenizer_type} prepends BOS, but {tok.path} has no BOS "
            "token: drop --legacy-tokenizer"
        )
    return tok, tok.bos_id


def preprocess(
    inputs: Sequence[str | os.PathLike[str]],
    output_prefix: str | os.PathLike[str],
    tokenizer_model: str | os.PathLike[str],
    *,
    tokenizer_type: str = "SentencePieceTokenizer",
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    legacy_tokenizer: bool = False,
    workers: int = 0,
    skip_invalid: bool = False,
    progress: bool | Callable[[int, int, int, int], None] = False,
    batch_bytes: int = 1 << 20,
) -> PreprocessSummary:
    """Tokenize JSONL `inputs` into `{output_prefix}_{key}_document.bin/.idx`, one pair per key.

    `workers` tokenizer threads (0 = all cores); the output does not depend on it. A bad line
    (invalid JSON or UTF-8, key missing or not a string) raises VikhrError naming file and line,
    unless `skip_invalid`, which skips and counts it. `progress=True` shows a tqdm bar. The ids are
    those Megatron-LM's tools/preprocess_data.py writes with the same flags (`legacy_tokenizer`: its
    --legacy-tokenizer; see `TOKENIZER_TYPES`).
    """
    from vikhr import _core

    files = expand_inputs(inputs)
    if isinstance(json_keys, str):  # one key, not its characters
        json_keys = [json_keys]
    # Refused now rather than after the corpus has been tokenized (the Rust writer makes the parents).
    require_output_prefix(output_prefix)
    tok, bos_id = _encoder_for(tokenizer_model, tokenizer_type, append_eod, legacy_tokenizer)
    _check_json_keys(files, json_keys, skip_invalid)

    bar = None
    callback: Callable[[int, int, int, int], None] | None = None
    if callable(progress):
        callback = progress
    elif progress:
        from vikhr.progress_bar import progress_bar

        bar = progress_bar(unit=" docs", desc="tokenizing", smoothing=0.1, dynamic_ncols=True)
        started = time.perf_counter()

        def callback(documents: int, nbytes: int, tokens: int, skipped: int) -> None:
            bar.update(documents - bar.n)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{nbytes / 1e6 / elapsed:.1f} MB/s, skipped {skipped}", refresh=False)

        if bar.disable:  # stderr is no terminal: the tokenizer threads need not call back into Python
            callback = None

    prefixes = {key: indexed.dataset_prefix(output_prefix, key) for key in json_keys}
    written = list(prefixes.values())
    try:
        with sigterm_as_interrupt(), indexed.writing(written), indexed.replacing_records(written):
            raw = _core.preprocess(
                [str(f) for f in files],
                str(output_prefix),
                list(json_keys),
                tok.native,
                eod_id=tok.eos_id if append_eod else None,
                bos_id=bos_id,
                threads=workers,
                skip_invalid=skip_invalid,
                batch_bytes=batch_bytes,
                progress=callback,
            )
            convention = tokenization.MEGATRON_LEGACY if legacy_tokenizer else tokenization.MEGATRON_CORE
            _record_tokenization(prefixes, tok, tokenizer_type, append_eod, convention)
    except ValueError as e:
        raise VikhrError(str(e)) from None
    except OSError as e:
        raise VikhrError(f"{e} (check the input and output paths)") from None
    finally:
        if bar is not None:
            bar.close()
    return PreprocessSummary(**raw)


def _record_tokenization(
    prefixes: dict[str, str], tok: _Encoder, tokenizer_type: str, append_eod: bool, convention: str
) -> None:
    """Write the tokenization record of each dataset just written (see `vikhr.data.tokenization`)."""
    from vikhr.tokenizer.load import recorded_path

    records = {}
    for key, prefix in prefixes.items():
        info = indexed.inspect(prefix)
        records[prefix] = tokenization.TokenizationRecord(
            tokenizer=str(recorded_path(tok.path)),
            tokenizer_sha256=tok.sha256,
            tokenizer_type=tokenizer_type,
            vocab_size=tok.native.vocab_size,
            json_key=key,
            append_eod=append_eod,
            eod_id=tok.eos_id,
            dtype=info.dtype,
            documents=info.documents,
            tokens=info.tokens,
            convention=convention,
        )
    tokenization.write_records(records)


def inspect(
    prefix: str | os.PathLike[str],
    tokenizer_model: str | os.PathLike[str] | None = None,
    n_tokens: int = 32,
) -> IndexSummary:
    """Validate `{prefix}.idx` against `{prefix}.bin`; counts, and the first tokens of the first
    non-empty document (decoded with `tokenizer_model` when given)."""
    reader = indexed.IndexedReader(prefix)
    first_tokens: list[int] = []
    if reader.info.tokens:
        first = next(doc for doc in map(reader.document, range(len(reader))) if doc)
        first_tokens = first[:n_tokens]
    first_text = None
    if tokenizer_model is not None and reader.info.dtype == "uint8":  # token ids are uint16 or int32
        text = str(prefix).removesuffix("_mask_document") + "_text_document"
        raise VikhrError(
            f"{prefix} holds a loss mask (0/1 per token, from vikhr sft prepare), not token ids: decode "
            f"{text}, or leave out --tokenizer-model"
        )
    from vikhr.sft.layout import prepared_sft_meta  # vikhr.sft.layout imports this package

    record = tokenization.read_record(prefix, reader.info)
    sft = None if record is not None else prepared_sft_meta(prefix, reader.info.documents, reader.info.tokens)
    if sft is not None and reader.info.dtype != "uint8":
        record = _sft_record(sft[1], reader.info)
    if tokenizer_model is not None and first_tokens:
        from vikhr.tokenizer.load import load

        tok = load(tokenizer_model)
        _check_decoding_tokenizer(prefix, tok, record)
        first_text = tok.decode(first_tokens)
    return IndexSummary(
        **reader.info.__dict__,
        first_tokens=first_tokens,
        first_text=first_text,
        tokenization=record,
        sft_meta=sft[0] if sft is not None else None,
    )


def _sft_record(meta: dict, info: indexed.IndexInfo) -> tokenization.TokenizationRecord | None:
    """The tokenizer `vikhr sft prepare` recorded in `_sft.json`, as a tokenization record of its
    text dataset `info` (None from an older prepare that recorded no sha256)."""
    if not isinstance(meta.get("tokenizer_sha256"), str):
        return None
    return tokenization.TokenizationRecord(
        tokenizer=meta["tokenizer"],
        tokenizer_sha256=meta["tokenizer_sha256"],
        tokenizer_type=None,
        vocab_size=meta.get("vocab_size", 0),
        json_key=None,
        append_eod=None,
        eod_id=meta.get("eos_id"),
        dtype=info.dtype,
        documents=info.documents,
        tokens=info.tokens,
    )


def _check_decoding_tokenizer(prefix: str | os.PathLike[str], tok: Any, record: Any) -> None:
    """VikhrError where `tok` is not the tokenizer the dataset records (or it cannot be told): its
    ids would decode to other text, shown as if it were the dataset's."""
    if record is None:
        return
    compared = tokenization.compare_tokenizers(record.tokenizer, record.tokenizer_sha256, tok)
    if not compared.same:
        raise VikhrError(
            f"{prefix} was tokenized with {record.tokenizer_line()}, not {tok.path} "
            f"({compared.difference('that one', 'this one')}): its ids would decode to other text (give "
            f"--tokenizer-model {record.tokenizer})"
        )


@dataclass(frozen=True)
class MergeInputs:
    """The datasets a merge reads (`prefixes`), and those of its input folders it leaves out (`left_out`):
    the merge's own output, written there by an earlier run, which the merge replaces."""

    prefixes: list[str]
    left_out: list[str]


def merge_inputs(
    names: Sequence[str | os.PathLike[str]], output_prefix: str | os.PathLike[str]
) -> MergeInputs:
    """The dataset prefixes `names` give: a folder stands for the datasets in it in name order, as
    in Megatron-LM's tools/merge_datasets.py (--input DIR), but for the merge's output in it (a merge
    run again into DIR/merged does the first run's merge); a file without its pair is named by the
    merge's check of each input."""
    if isinstance(names, (str, os.PathLike)):  # one name, not a sequence of its characters
        names = [names]
    prefixes: list[str] = []
    left_out: list[str] = []
    for name in map(str, names):
        folder = Path(name)
        if not folder.is_dir():
            prefixes.append(name)
            continue
        stems = {f.stem for f in folder.iterdir() if f.suffix in (".bin", ".idx") and f.is_file()}
        output = [stem for stem in stems if overlap(Path(output_prefix), folder / stem) == "is"]
        left_out.extend(str(folder / stem) for stem in output)
        if not stems - set(output):
            but = f" but the merge's output {output_prefix}" if output else ""
            raise VikhrError(
                f"{name} is a folder without datasets (.bin/.idx){but}: give it datasets or their prefixes"
            )
        prefixes.extend(str(folder / stem) for stem in sorted(stems - set(output)))
    return MergeInputs(prefixes, left_out)


def merge(prefixes: Sequence[str | os.PathLike[str]], output_prefix: str | os.PathLike[str]) -> IndexSummary:
    """Concatenate indexed datasets (same dtype; a folder gives those in it, see `merge_inputs`) into
    one, as Megatron's merge tool does; the output's tokenization record is written when every input
    has one of one tokenizer, with a note on stderr for each field it leaves None (the inputs differ in
    it), or saying why there is none where every input has one. Inputs whose records name different
    tokenizers, or documents ending with different EOD ids, are refused before anything is written."""
    inputs = merge_inputs(prefixes, output_prefix)
    names = inputs.prefixes
    records = {name: tokenization.read_record(name, indexed.merge_input(name)) for name in names}
    by_pieces = tokenization.refuse_mixed_tokenizers(
        records, "the merged ids would mean different pieces; pre-tokenize them all with one tokenizer"
    )
    tokenization.refuse_mixed_eod_ids(
        records, "the merged documents would end with two ids; pre-tokenize them all with one tokenizer file"
    )
    notes = [
        f"{left} is this merge's output, written by an earlier merge: it is left out of the datasets of "
        f"{Path(left).parent}, and replaced"
        for left in inputs.left_out
    ]

    def write_record(info: indexed.IndexInfo) -> None:
        record, why_none = tokenization.merged_record(list(records.values()), info, by_pieces)
        if record is not None:
            tokenization.write_records({str(output_prefix): record})
            # All have a record: merged_record. A blend of the output is not told these apart.
            notes.extend(
                f"{difference.line()}: the merged record names no {difference.field}"
                for difference in tokenization.dropped_fields(records)
            )
        elif why_none:
            notes.append(f"{output_prefix} is written without a tokenization record: {why_none}")

    with sigterm_as_interrupt():
        indexed.merge(names, output_prefix, on_written=write_record)
    for told in notes:  # once merged: an error stays the only line
        print(f"note: {told}", file=sys.stderr)
    return inspect(output_prefix)
