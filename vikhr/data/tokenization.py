"""The record of how a pre-training dataset was tokenized: `{dataset}.tokenization.json`.

`vikhr data preprocess` writes one beside each `{prefix}_{key}_document.bin/.idx` it writes (and
`vikhr data merge` beside its output when its inputs agree): the tokenizer (path, sha256 of its file,
vocabulary size), the JSON key, whether each document ends with EOD and its id, which Megatron-LM
tokenizer code the ids follow (`convention`: whether a Llama2Tokenizer dataset begins each document
with BOS), and the dataset's counts. The `.bin/.idx` pair alone says nothing of its tokenizer, so a
blend or a merge of datasets of two tokenizers (same token dtype) would train on ids that mean other
pieces, silently.

The name ends neither in `tokenizer.json` nor in `.model`, so nothing takes it for a tokenizer; the
`.bin/.idx` are untouched (Megatron-LM reads them as before). The record is written after the dataset
is published and holds the dataset's counts: a record beside another dataset (a `.bin/.idx` copied
over) does not match them and is taken as no record. A writer of a dataset moves its old record aside
while it writes (`vikhr.data.indexed.replacing_records`), so a run that publishes a dataset and then
fails or is killed before its record is written leaves no record, never the old one beside the new
dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vikhr import atomic
from vikhr.data import indexed
from vikhr.data.indexed import record_path
from vikhr.errors import VikhrError

if TYPE_CHECKING:
    from vikhr.tokenizer.load import Tokenizer

RECORD_FORMAT = 1
# The Megatron-LM tokenizer code whose ids a dataset holds (a record's `convention`), as inspect says it.
MEGATRON_CORE = "megatron-core"
MEGATRON_LEGACY = "megatron-legacy"
CONVENTIONS: dict[str, str] = {
    MEGATRON_CORE: "Megatron-LM's megatron.core.tokenizers, core_v0.17 on (SentencePiece types add no BOS)",
    MEGATRON_LEGACY: "Megatron-LM's legacy tokenizers (--legacy-tokenizer; its only ones up to core_v0.14: "
    "Llama2Tokenizer prepends BOS)",
}


@dataclass(frozen=True)
class TokenizationRecord:
    """How one dataset was tokenized, and the counts of the dataset it describes."""

    tokenizer: str  # the file, as `vikhr.tokenizer.load.recorded_path` records it
    tokenizer_sha256: str
    tokenizer_type: str | None  # None: merged from inputs that differ in it
    vocab_size: int
    json_key: str | None  # None: merged from inputs of different keys
    append_eod: bool | None
    eod_id: int | None  # the id --append-eod ends a document with (the tokenizer's EOS)
    dtype: str
    documents: int
    tokens: int
    # The Megatron-LM tokenizer code whose ids these are: a key of `CONVENTIONS`
    # (None: merged from inputs that differ in it, or not pre-tokenized text).
    convention: str | None = None
    format: int = RECORD_FORMAT

    def describes(self, info: indexed.IndexInfo) -> bool:
        """Whether this is the record of the dataset `info` counts (not of one written before it)."""
        return indexed.describes(asdict(self), info)

    def tokenizer_line(self) -> str:
        """The tokenizer, as an error names it."""
        return f"{self.tokenizer} (sha256 {self.tokenizer_sha256[:12]}…)"


def write_records(records: dict[str, TokenizationRecord]) -> None:
    """Write the records of datasets `{prefix: record}`, all renamed into place together."""
    paths = [record_path(prefix) for prefix in records]
    with atomic.temporary_paths(paths) as temps:
        for tmp, record in zip(temps, records.values(), strict=True):
            tmp.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")


def read_record(prefix: indexed.PathLike, info: indexed.IndexInfo | None = None) -> TokenizationRecord | None:
    """The record of dataset `prefix`; None where there is none (a dataset of an older vikhr, or of
    Megatron-LM's tools) or where it describes another dataset than the one at `prefix` now. A
    record that cannot be read raises VikhrError naming it."""
    record = load_record(prefix)
    if record is None:
        return None
    info = info if info is not None else indexed.inspect(str(prefix))
    return record if record.describes(info) else None


def load_record(prefix: indexed.PathLike) -> TokenizationRecord | None:
    """The record of dataset `prefix` as it is, whether or not the dataset is still there (None: none)."""
    path = record_path(prefix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise VikhrError(f"{path}: unreadable ({e}); write {prefix} again, or delete the record") from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise VikhrError(
            f"{path}: not a tokenization record of format {RECORD_FORMAT}; write {prefix} again, or "
            "delete the record"
        )
    if "convention" not in data:
        data["convention"] = _convention_before_it_was_recorded(data.get("tokenizer_type"))
    try:
        return TokenizationRecord(**data)
    except TypeError as e:
        raise VikhrError(f"{path}: {e}; write {prefix} again, or delete the record") from None


def _convention_before_it_was_recorded(tokenizer_type: str | None) -> str | None:
    """The convention of a record written before records named it: vikhr then prepended BOS for
    Llama2Tokenizer, as Megatron-LM's legacy tokenizers do, and wrote the ids of its current ones
    for the other types (the same ids in both, but for SentencePieceTokenizer, current only)."""
    if tokenizer_type is None:  # merged from inputs of different types, or the chats of sft prepare
        return None
    return MEGATRON_LEGACY if tokenizer_type == "Llama2Tokenizer" else MEGATRON_CORE


@dataclass(frozen=True)
class TokenizerComparison:
    """How a tokenizer compares with the one a record names: `same` is True (the same file, or
    another of the same pieces at the same ids), False (`differing_id` is the first id whose piece
    differs, `pieces` its piece in the recorded tokenizer and in the other), or None where it
    cannot be told (`why`: a file gone or changed since it was recorded)."""

    same: bool | None
    differing_id: int | None = None
    pieces: tuple[str | None, str | None] = (None, None)
    why: str = ""

    def difference(self, recorded: str = "the recorded one", other: str = "the other") -> str:
        """What differs (or why it cannot be told), for a message naming the two tokenizers so."""
        if self.same is None:
            return self.why
        in_recorded, in_other = self.pieces
        return f"id {self.differing_id} is {in_other!r} in {other} but {in_recorded!r} in {recorded}"


def compare_tokenizers(
    recorded: str | Path,
    recorded_sha256: str,
    other: str | Path | Tokenizer,
    other_sha256: str | None = None,
) -> TokenizerComparison:
    """Whether tokenizer `other` is the one recorded as file `recorded` with `recorded_sha256`:
    the same file by sha256, or, where the recorded file is still there as recorded, the same pieces
    at the same ids (a `.model` and its `tokenizer.json`: other files, one tokenizer). With
    `other_sha256` (the other side is itself a record), the other file must be as recorded too.
    Each caller decides what "cannot tell" means: refuse, or let it pass."""
    from vikhr.tokenizer.corpus import corpus_sha256
    from vikhr.tokenizer.load import Tokenizer, load

    other_path = other.path if isinstance(other, Tokenizer) else Path(other)
    if not other_path.is_file():
        return TokenizerComparison(None, why=f"{other_path} is no longer there")
    other_now = corpus_sha256(other_path)
    if other_sha256 is not None and other_now != other_sha256:
        return TokenizerComparison(None, why=f"{other_path} has changed since it was recorded")
    if other_now == recorded_sha256:
        return TokenizerComparison(True)
    recorded = Path(recorded)
    why = _not_as_recorded(recorded, recorded_sha256, " to compare pieces with")
    if why:
        return TokenizerComparison(None, why=why)
    own = load(recorded)
    given = other if isinstance(other, Tokenizer) else load(other_path)
    differing = own.first_other_piece(given)
    if differing is None:
        return TokenizerComparison(True)
    pieces = tuple(t.id_to_piece(differing) if differing < t.vocab_size else None for t in (own, given))
    return TokenizerComparison(False, differing, pieces)


def _not_as_recorded(path: Path, sha256: str, gone: str = "") -> str:
    """Why tokenizer file `path` is not the one recorded with `sha256` ("" where it is); `gone` follows
    "no longer there"."""
    from vikhr.tokenizer.corpus import corpus_sha256

    if not path.is_file():
        return f"{path} is no longer there{gone}"
    if corpus_sha256(path) != sha256:
        return f"{path} has changed since it was recorded"
    return ""


def recorded_pieces(record: TokenizationRecord, ids: tuple[int, ...]) -> list[str | None]:
    """The pieces of `ids` in the tokenizer `record` names, for a message; None for each where that
    file is no longer there as recorded, or for an id outside its vocabulary."""
    from vikhr.tokenizer.corpus import corpus_sha256
    from vikhr.tokenizer.load import load

    path = Path(record.tokenizer)
    try:
        if not path.is_file() or corpus_sha256(path) != record.tokenizer_sha256:
            return [None] * len(ids)
        tok = load(path)
    except (OSError, VikhrError):  # only a message's detail: it is said without
        return [None] * len(ids)
    return [tok.id_to_piece(i) if 0 <= i < tok.vocab_size else None for i in ids]


Labelled = tuple[str, TokenizationRecord]  # a dataset's record, and how a message names the dataset
# Two records of other files told to be one tokenizer by their pieces (the first dataset's, another's).
PiecesCompared = tuple[TokenizationRecord, TokenizationRecord]


def _another_tokenizer(
    records: list[Labelled],
) -> tuple[tuple[Labelled, Labelled, TokenizerComparison] | None, list[PiecesCompared]]:
    """The first of `records`, the first whose tokenizer is not told to be the first's (the same file,
    or `compare_tokenizers`' same pieces; where it cannot tell, another), and how the two compare (None
    where all name one tokenizer); and the records before it told to be the first's by their pieces."""
    by_pieces: list[PiecesCompared] = []
    for labelled in records[1:]:
        first, record = records[0][1], labelled[1]
        if record.tokenizer_sha256 == first.tokenizer_sha256:
            continue
        compared = compare_tokenizers(
            first.tokenizer, first.tokenizer_sha256, record.tokenizer, record.tokenizer_sha256
        )
        if not compared.same:
            return (records[0], labelled, compared), by_pieces
        by_pieces.append((first, record))
    return None, by_pieces


def refuse_mixed_tokenizers(records: dict[str, TokenizationRecord | None], fix: str) -> list[PiecesCompared]:
    """VikhrError naming two of the datasets `{label: record}` whose records name different
    tokenizers (`compare_tokenizers`; where it cannot tell, different), with `fix`; datasets
    without a record are not compared. Returns the pairs of records of other files told to be one
    tokenizer by their pieces (what `merged_record` needs to know, without loading them again)."""
    other, by_pieces = _another_tokenizer([(label, r) for label, r in records.items() if r is not None])
    if other is not None:
        (label, first), (other_label, record), compared = other
        raise VikhrError(
            f"{label} was tokenized with {first.tokenizer_line()} but {other_label} with "
            f"{record.tokenizer_line()} ({compared.difference('the first', 'the second')}): {fix}"
        )
    return by_pieces


# The fields of a record that datasets of one tokenizer may differ in; a merge records None for each
# its inputs differ in.
MERGED_FIELDS = ("tokenizer_type", "json_key", "append_eod", "eod_id", "convention")
# Those a blend's datasets may differ in on purpose (SFT data without EOD, a legacy dataset's BOS),
# but seldom do: said in a warning. A differing EOD id is refused (`refuse_mixed_eod_ids`).
BLEND_FIELDS = ("append_eod", "convention")


def _begins_with_bos(record: TokenizationRecord) -> bool | None:
    """Whether each document of the dataset begins with BOS (Megatron-LM's legacy Llama2Tokenizer);
    None where the record cannot tell (merged from datasets that differ in it)."""
    if record.convention is None or (record.convention == MEGATRON_LEGACY and record.tokenizer_type is None):
        return None
    return record.convention == MEGATRON_LEGACY and record.tokenizer_type == "Llama2Tokenizer"


def _compared_value(record: TokenizationRecord, field: str) -> object:
    """What two records must share in `field` to tokenize alike: for `convention`, whether documents
    begin with BOS (the other tokenizer types give the same ids in both conventions)."""
    return _begins_with_bos(record) if field == "convention" else getattr(record, field)


def _what_it_has(record: TokenizationRecord, field: str) -> str:
    """What a dataset's record says in `field`, as a difference names it."""
    value = getattr(record, field)
    if field == "append_eod":
        if value is None:
            return "ends the documents of only some of its merged inputs with EOD"
        return f"ends each document with EOD {record.eod_id}" if value else "has no EOD between documents"
    if field == "convention":
        if value is None:
            return "holds ids of several conventions (merged)"
        bos = {True: "BOS before every document", False: "no BOS", None: "BOS in some merged inputs only"}
        return f"holds {value} ids ({bos[_begins_with_bos(record)]})"
    if field == "eod_id":
        return "records no EOD id (merged)" if value is None else f"ends documents with EOD id {value}"
    if field == "json_key":
        return "holds several JSON keys (merged)" if value is None else f"holds JSON key {value!r}"
    return "holds several tokenizer types (merged)" if value is None else f"was tokenized as {value}"


@dataclass(frozen=True)
class FieldDifference:
    """Two datasets whose records differ in `field` (a field of `MERGED_FIELDS`), by their labels."""

    field: str
    first: tuple[str, TokenizationRecord]
    other: tuple[str, TokenizationRecord]

    def line(self) -> str:
        """The two datasets and what each has, for a note, a warning or an error."""
        (label, record), (other_label, other) = self.first, self.other
        return (
            f"{self.field} differs: {label} {_what_it_has(record, self.field)}, but {other_label} "
            f"{_what_it_has(other, self.field)}"
        )


def ends_with_eod(record: TokenizationRecord) -> bool:
    """Whether the dataset's documents end with an EOD id its record names (all or, merged, some: a
    dataset without EOD holds no EOD id to compare)."""
    return record.append_eod is not False and record.eod_id is not None


def differing_fields(
    records: dict[str, TokenizationRecord | None], fields: tuple[str, ...] = BLEND_FIELDS
) -> list[FieldDifference]:
    """For each of `fields` the datasets `{label: record}` of one blend differ in, the first dataset
    and the first that differs from it (datasets without a record are not compared). `convention`
    compares whether documents begin with BOS; EOD ids are compared only among datasets whose
    documents end with EOD (a dataset without it holds no EOD id)."""
    found = []
    for field in fields:
        compared = [
            (label, r)
            for label, r in records.items()
            if r is not None and (field != "eod_id" or ends_with_eod(r))
        ]
        found += _first_difference(compared, field, _compared_value)
    return found


def dropped_fields(records: dict[str, TokenizationRecord]) -> list[FieldDifference]:
    """The fields `merged_record` records as None for the merge of datasets `{label: record}`, each
    with the first dataset and the first that differs from it."""
    found = []
    for field in MERGED_FIELDS:
        found += _first_difference(list(records.items()), field, getattr)
    return found


def _first_difference(
    records: list[tuple[str, TokenizationRecord]],
    field: str,
    value: Callable[[TokenizationRecord, str], object],
) -> list[FieldDifference]:
    """[the difference of the first of `records` and the first whose `value` of `field` differs], or []."""
    for label, record in records[1:]:
        if value(record, field) != value(records[0][1], field):
            return [FieldDifference(field, records[0], (label, record))]
    return []


def refuse_mixed_eod_ids(records: dict[str, TokenizationRecord | None], fix: str) -> None:
    """VikhrError naming two of the datasets `{label: record}` (of one tokenizer: see
    `refuse_mixed_tokenizers`) whose documents end with different EOD ids, with `fix`: the ids one
    tokenizer gives would then end documents in one dataset and be text in the other."""
    for difference in differing_fields(records, ("eod_id",)):
        raise VikhrError(f"{difference.line()}: {fix}")


def merged_record(
    records: list[TokenizationRecord | None], info: indexed.IndexInfo, by_pieces: list[PiecesCompared]
) -> tuple[TokenizationRecord | None, str]:
    """The record of the merge of datasets with `records` into the dataset `info` counts, and why
    there is none where every input has one (else ""). The inputs were told to name one tokenizer
    (`refuse_mixed_tokenizers`, which gave `by_pieces`: the records of other files of the same pieces
    at the same ids; the record names the first input's file). None unless every input has one, and
    where a file of `by_pieces` is gone or changed since (their sha256 compared, no tokenizer loaded):
    then that cannot be told. A field the inputs differ in is None."""
    present = [r for r in records if r is not None]
    if not present or len(present) != len(records):
        return None, ""
    first = present[0]
    for one, other in by_pieces:
        why = _not_as_recorded(Path(other.tokenizer), other.tokenizer_sha256) or _not_as_recorded(
            Path(one.tokenizer), one.tokenizer_sha256, " to compare pieces with"
        )
        if why:
            return None, (
                f"its inputs were tokenized with {one.tokenizer_line()} and {other.tokenizer_line()}, "
                f"not told to be one tokenizer ({why})"
            )
    agreed = {
        name: getattr(first, name) if all(getattr(r, name) == getattr(first, name) for r in present) else None
        for name in MERGED_FIELDS
    }
    counts = {"dtype": info.dtype, "documents": info.documents, "tokens": info.tokens}
    return TokenizationRecord(**{**asdict(first), **agreed, **counts}), ""
