"""The tokenizer side of an HF export, so that the directory loads with no other arguments.

    tokenizer.model          the SentencePiece model, when the tokenizer is one, or when the tokenizer is
                             a tokenizer.json that adds tokens to the `.model` beside it (ChatML's
                             <|im_start|>/<|im_end|> on a Mistral base): llama.cpp's GGUF converter
                             reads it first (`_model_file_extended_by`; a `.model` of other pieces,
                             or none SentencePiece reads, is left out with a warning line)
    tokenizer.json           the fast tokenizer (exported from the `.model` by vikhr.tokenizer.hf_export)
    tokenizer_config.json    BOS/EOS/UNK tokens, where known the chat template, the added tokens of a
                             tokenizer.json (`_added_tokens_decoder`), the source's other special
                             tokens that its vocabulary has (`_without_missing_specials`; in the form
                             transformers 5 loads, `as_transformers_loads`), and the class
                             `PreTrainedTokenizerFast`, which reads tokenizer.json whole (where
                             transformers picks another class, `other_transformers_ids`)
    special_tokens_map.json  the same special tokens, for loaders that read only this file

and the ids megatron_to_hf writes into config.json and generation_config.json (BOS/EOS, the stop
tokens for `generate()` and serving engines, and the pad id) over those of the source model. The pad
id is the tokenizer's pad token; without one the source's stays only where it is the same token in
the exported tokenizer as in the source's (`keep_source_ids`; likewise the BOS id of a tokenizer
without a BOS).

Which tokenizer a checkpoint was trained with (`recorded_in_lineage`), first found of:
  1. meta.json `tokenizer`: `hf-to-megatron` copies the HF directory's tokenizer file (the one
     vikhr.tokenizer.load loads from it: with tokens added to a `.model`, the `tokenizer.json`) and
     its companions into the checkpoint's `tokenizer/` and records it relative to the checkpoint
     (checkpoints of older versions: the absolute path of the file in the HF directory);
  2. what the run recorded of its datasets when it trained this step (meta.json `data_tokenizer`):
     for an SFT run (config `data.kind: sft`) the tokenizer and chat template that `vikhr sft
     prepare` wrote into each dataset's `_sft.json`, for a pre-training run the tokenizer that
     `vikhr data preprocess` recorded beside each dataset (`{dataset}.tokenization.json`). Those
     records as they are now, where the checkpoint holds none (an older version) or they still say
     the same; a dataset prepared again since with another template or tokenizer does not change
     what the model was trained with (`Recorded.data_now` keeps it for the export's warning). A
     file gone from where they record it is read from the checkpoint's copy of its start's
     tokenizer (3.) where that is the same file by sha256 (`_or_its_copy`);
  3. what the run recorded at its start of the checkpoint it started from (meta.json `inherited`,
     `Recorded`; each checkpoint keeps a copy of that tokenizer, vikhr.convert.lineage.carry_tokenizers),
     or for a checkpoint of an older version that checkpoint (config `model.init`), by the same
     rules: training keeps the vocabulary of its starting point (vikhr.convert.lineage).

The chat templates render the strings of vikhr.sft.template; with a SentencePiece tokenizer (dummy
prefix on) `apply_chat_template` then gives the ids that the SFT data was trained on for the
`mistral` template.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.convert.lineage import Ancestor, HFSource, hf_source, lineage, recorded_in
from vikhr.errors import VikhrError, read_json_object
from vikhr.sft.hf_chat import (
    HF_CHAT_TEMPLATES,
    as_jinja_reads,
    chat_template_sha256,
    hf_chat_template,
    own_chat_template,
)
from vikhr.tokenizer.load import (
    ADDED_TOKEN_FIELDS,
    LEAVE_OUT,
    Tokenizer,
    as_transformers_loads,
    load,
    map_special_tokens,
    token_name,
)

# meta.json key of a trained checkpoint: what its datasets recorded of their tokenizer (`data_tokenizer`).
DATA_TOKENIZER = "data_tokenizer"


@dataclass(frozen=True)
class RecordedTokenizer:
    """The tokenizer a checkpoint records, and what records it (for messages)."""

    path: Path
    recorded_by: str
    template: str | None = None  # the vikhr.sft.template chat template the model was tuned with
    template_sha256: str | None = None  # for ``own``: the SHA-256 of the Jinja text it was tuned with
    sha256: str | None = None  # of the tokenizer file, where the record holds it

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path)}

    @classmethod
    def from_json(cls, record: Any) -> RecordedTokenizer | None:
        """The tokenizer of a `to_json` record (None: no usable one)."""
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            return None
        texts = {f.name: record.get(f.name) for f in dataclasses.fields(cls) if f.name != "path"}
        return cls(Path(record["path"]), **{k: v if isinstance(v, str) else None for k, v in texts.items()})


@dataclass(frozen=True)
class Recorded:
    """What the export of a checkpoint finds along its lineage; a run records it of its start in
    each checkpoint (meta.json `inherited`, `to_json`)."""

    tokenizer: RecordedTokenizer | None
    source: HFSource | None  # what `hf-to-megatron` recorded of the HF model at the lineage's root
    missing_start: Path | None = None  # the model.init, not found, where the lineage ended short of both
    # The longest max_seq_len of the lineage (the HF source's max_position_embeddings, each run's):
    # a run on shorter windows leaves the model's position range as it was.
    max_seq_len: int | None = None
    # What the datasets of the checkpoint's run record now, where it is not what the run recorded of
    # them when it trained (`tokenizer`): they were prepared again since (never part of `to_json`).
    data_now: RecordedTokenizer | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if self.tokenizer is not None:
            record["tokenizer"] = self.tokenizer.to_json()
        if self.source is not None:
            record["hf_source"] = self.source.to_json()
        if self.max_seq_len is not None:
            record["max_seq_len"] = self.max_seq_len
        if self.missing_start is not None:
            record["missing_start"] = str(self.missing_start)
        return record


def _read_json(path: Path, parse: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    return read_json_object(path, "fix or remove it", parse)


def _sft_tokenizer(config: dict[str, Any], cwd: Path, warn: bool = True) -> RecordedTokenizer | None:
    """The tokenizer and template that the `_sft.json` files of an SFT run's datasets record
    (relative dataset prefixes are relative to `cwd`, where the run trained); `warn`: say which
    template the export carries of a blend of several."""
    from vikhr.sft.layout import read_sft_json, recorded_template, sft_files

    found: list[tuple[dict[str, Any], Path, str]] = []
    for entry in config.get("data", {}).get("train") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("prefix"), str):
            continue
        meta_path = sft_files(str(cwd / entry["prefix"]))["meta"]
        if meta_path.is_file():
            sft = _read_json(meta_path, read_sft_json)  # read once with the start-up checks of a run
            if isinstance(sft.get("tokenizer"), str):
                found.append((sft, meta_path, recorded_template(sft, meta_path)))
    if not found:
        return None
    # One tokenizer (by its contents: a copy elsewhere is the same), as training checked.
    tokenizers = {sft.get("tokenizer_sha256") or sft["tokenizer"] for sft, _, _ in found}
    if len(tokenizers) > 1:
        raise VikhrError(
            "the SFT datasets of this run record different tokenizers "
            f"({', '.join(str(p) for _, p, _ in found)}): the run mixed data of several tokenizers"
        )
    first, first_path, template = found[0]
    sha = first.get("template_sha256") if isinstance(first.get("template_sha256"), str) else None
    others = sorted({t for _, _, t in found} - {template})
    if others and warn:  # a blend of two formats: the model knows both, the export carries one
        print(
            f"warning: the SFT datasets of this run were prepared with chat templates {template} "
            f"({first_path}) and {', '.join(others)}: the export carries {template}, the first dataset's",
            file=sys.stderr,
        )
    tokenizer_sha = first.get("tokenizer_sha256") if isinstance(first.get("tokenizer_sha256"), str) else None
    return RecordedTokenizer(Path(first["tokenizer"]), str(first_path), template, sha, tokenizer_sha)


def _pretrain_tokenizer(config: dict[str, Any], cwd: Path) -> RecordedTokenizer | None:
    """The tokenizer that the records of a pre-training run's datasets name (`data preprocess`
    writes them, see vikhr.data.tokenization); relative prefixes are relative to `cwd`."""
    from vikhr.data import indexed
    from vikhr.data.tokenization import load_record, read_record, record_path

    found = []
    for entry in config.get("data", {}).get("train") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("prefix"), str):
            continue
        prefix = str(cwd / entry["prefix"])
        try:  # a dataset still there: its record, if it is the dataset's own
            record = read_record(prefix, indexed.inspect(prefix))
        except VikhrError:  # gone since (or damaged): the record stands for what was trained on
            record = load_record(prefix)
        if record is not None:
            found.append((record, record_path(prefix)))
    if not found:
        return None
    if len({record.tokenizer_sha256 for record, _ in found}) > 1:  # a run from before the check
        raise VikhrError(
            "the datasets of this run record different tokenizers "
            f"({', '.join(str(p) for _, p in found)}): the run mixed data of several tokenizers"
        )
    record, path = found[0]
    return RecordedTokenizer(Path(record.tokenizer), str(path), sha256=record.tokenizer_sha256)


def warn_of_changed_template(tok: Tokenizer, recorded: RecordedTokenizer) -> None:
    """One warning line when the tokenizer's own chat template is no longer the one an ``own``
    SFT run was tuned with (the export carries the one there now)."""
    if recorded.template != "own" or recorded.template_sha256 is None:
        return
    own = own_chat_template(tok)
    now = chat_template_sha256(own[0]) if own is not None else None
    # The forms of the template Jinja reads alike: one moved to chat_template.jinja by an editor that
    # ends files with a newline is the one tuned with.
    alike = {as_jinja_reads(own[0]) + end for end in ("", "\n")} if own is not None else set()
    if now != recorded.template_sha256 and recorded.template_sha256 not in map(chat_template_sha256, alike):
        where = own[1] if own is not None else tok.path.parent
        print(
            f"warning: {where}: the chat template is not the one the model was tuned with "
            f"({recorded.recorded_by} records sha256 {recorded.template_sha256[:12]}…, now "
            f"{now[:12] + '…' if now else 'none'}); the export carries the one there now",
            file=sys.stderr,
        )


def data_tokenizer(config: dict[str, Any], cwd: Path, warn: bool = True) -> RecordedTokenizer | None:
    """The tokenizer (and an SFT run's chat template) that the datasets of a run's config record;
    relative prefixes are relative to `cwd`. A run records it in each checkpoint (meta.json
    `DATA_TOKENIZER`) for an export that no longer finds the datasets."""
    if config.get("data", {}).get("kind") == "sft":
        return _sft_tokenizer(config, cwd, warn)
    return _pretrain_tokenizer(config, cwd)


def _tokenizer_of(
    ancestor: Ancestor, warn: bool = True
) -> tuple[RecordedTokenizer | None, RecordedTokenizer | None]:
    """The tokenizer one checkpoint of a lineage records, directly or through its datasets' records
    (what the run recorded of them when it trained, else those of the run); and the datasets' record
    now where it is another one (prepared again since: the checkpoint was not trained on that).
    `warn`: say which template the export carries of datasets of several (see `_sft_tokenizer`)."""
    meta = ancestor.meta
    here = ancestor.step_dir / "meta.json"
    if isinstance(meta.get("tokenizer"), str):
        return RecordedTokenizer(recorded_in(ancestor.step_dir, meta["tokenizer"]), str(here)), None
    config = meta.get("config") or {}
    kept = RecordedTokenizer.from_json(meta.get(DATA_TOKENIZER))
    if kept is None:  # a checkpoint of an older version: its datasets' records as they are now
        return data_tokenizer(config, ancestor.cwd, warn), None
    # The datasets now, read only to say what was prepared again since: their templates' blend is not
    # what the export carries, and datasets of two tokenizers now do not undo what was trained.
    try:
        now = data_tokenizer(config, ancestor.cwd, warn=False)
    except VikhrError:
        now = None
    if now is not None and _same_data(now, kept):
        return now, None
    return dataclasses.replace(kept, recorded_by=f"{here}, as recorded from {kept.recorded_by}"), now


def _same_tokenizer(a: RecordedTokenizer, b: RecordedTokenizer) -> bool:
    """Whether two records name one tokenizer (by sha256 where both hold it: a copy is the same)."""
    return a.sha256 == b.sha256 if a.sha256 and b.sha256 else a.path == b.path


def same_template(a: RecordedTokenizer, b: RecordedTokenizer) -> bool:
    """Whether two records of SFT datasets name one chat template (``own``: by its text's sha256)."""
    return (a.template, a.template_sha256) == (b.template, b.template_sha256)


def template_label(record: RecordedTokenizer) -> str:
    """The chat template a record names, for messages: its name, and for ``own`` (one name, the text of
    any tokenizer) the start of its text's sha256."""
    sha = f" (sha256 {record.template_sha256[:12]}…)" if record.template_sha256 else ""
    return f"{record.template}{sha}"


def _same_data(a: RecordedTokenizer, b: RecordedTokenizer) -> bool:
    """Whether two records of a run's datasets name one tokenizer and one chat template."""
    return _same_tokenizer(a, b) and same_template(a, b)


def _described(record: RecordedTokenizer, other: RecordedTokenizer) -> str:
    """What `record` names that `other` does not: its chat template, its tokenizer, or both."""
    parts = []
    if not same_template(record, other):
        parts.append(f"chat template {template_label(record)}")
    if not _same_tokenizer(record, other):
        parts.append(f"tokenizer {record.path}")
    return " and ".join(parts)


def warn_of_data_prepared_again(found: Recorded, step_dir: Path) -> None:
    """One warning line when the datasets of `step_dir`'s run were prepared again since it was
    trained, with another chat template or tokenizer: the export carries what it was trained with."""
    now, trained = found.data_now, found.tokenizer
    if now is None or trained is None:
        return
    print(
        f"warning: {now.recorded_by} now records {_described(now, trained)}, but {step_dir} was trained "
        f"on data of {_described(trained, now)} (its meta.json records it): the export carries that",
        file=sys.stderr,
    )


def _inherited_tokenizer(ancestor: Ancestor, inherited: dict[str, Any]) -> RecordedTokenizer | None:
    """The tokenizer a checkpoint records of its start's lineage (messages name both records: the
    first may be gone)."""
    tok = RecordedTokenizer.from_json(inherited.get("tokenizer"))
    if tok is None:
        return None
    here = ancestor.step_dir / "meta.json"
    path = recorded_in(ancestor.step_dir, str(tok.path))
    return dataclasses.replace(tok, path=path, recorded_by=f"{here}, inherited from {tok.recorded_by}")


def _longest(lengths: Iterable[Any]) -> int | None:
    """The longest of the position ranges a lineage records (what is not a positive int is no record)."""
    valid = [n for n in lengths if isinstance(n, int) and not isinstance(n, bool) and n > 0]
    return max(valid, default=None)


def recorded_in_lineage(step_dir: Path, warn: bool = True) -> Recorded:
    """The tokenizer a checkpoint step directory records, directly or through its run (see module
    doc), and what `hf-to-megatron` recorded of the HF model its lineage was converted from: the
    first of each found along one walk of the lineage (vikhr.convert.lineage), which ends at a
    checkpoint recording what it inherits; and the longest max_seq_len of the checkpoints walked
    and of what they inherit. `warn`: the export's warning on a blend of chat templates (training,
    which exports nothing, passes False)."""
    tokenizer, data_now, source, missing, lengths = None, None, None, None, []
    copy = None  # the copy of the start's tokenizer that the checkpoint holds
    for ancestor in lineage(step_dir):
        if tokenizer is None:
            tokenizer, data_now = _tokenizer_of(ancestor, warn)
        source = source or hf_source(ancestor)
        missing = ancestor.missing_start
        model = ancestor.meta.get("model")
        lengths.append(model.get("max_seq_len") if isinstance(model, dict) else None)
        if (inherited := ancestor.inherited) is not None:
            copy = copy or _inherited_tokenizer(ancestor, inherited)
            tokenizer = tokenizer or copy
            start = inherited.get("missing_start")
            missing = Path(start) if isinstance(start, str) else None
            lengths.append(inherited.get("max_seq_len"))  # absent from records of older versions
        if tokenizer is not None and source is not None:
            missing = None
            break
    if source is not None:
        lengths.append(source.config.get("max_position_embeddings"))
    return Recorded(_or_its_copy(tokenizer, copy), source, missing, _longest(lengths), data_now)


def _or_its_copy(
    recorded: RecordedTokenizer | None, copy: RecordedTokenizer | None
) -> RecordedTokenizer | None:
    """The tokenizer a dataset's record names, or where that file is gone (read from the HF directory
    converted, deleted since) the checkpoint's copy of its start's tokenizer when it is that file by
    sha256."""
    from vikhr.tokenizer.corpus import corpus_sha256

    if recorded is None or copy is None or recorded.sha256 is None or recorded.path.exists():
        return recorded
    if not copy.path.is_file() or corpus_sha256(copy.path) != recorded.sha256:
        return recorded
    return dataclasses.replace(
        recorded, path=copy.path, recorded_by=f"{recorded.recorded_by}, read from its copy"
    )


def warn_of_cut_lineage(
    found: Recorded, step_dir: Path, given_tokenizer: bool, written: dict[str, Any]
) -> None:
    """One warning line when the export of `step_dir` lacks the HF source's configs, or the tokenizer
    (none given), because a starting point of its lineage is gone (`written`: the config.json it
    writes instead)."""
    if found.missing_start is None:
        return
    lacking = []
    if found.source is None:
        arch = (written.get("architectures") or ["?"])[0]
        lacking.append(
            f"the HF source's config.json and generation_config.json (config.json is {arch}'s, "
            "from the model's shape alone)"
        )
    if found.tokenizer is None and not given_tokenizer:
        lacking.append("the tokenizer (--tokenizer gives one)")
    if lacking:
        print(
            f"warning: {found.missing_start}, a starting point (model.init) in the lineage of {step_dir}, "
            f"is not found: the export has no record of {' nor of '.join(lacking)}; put that checkpoint "
            "back at that path to export what it records",
            file=sys.stderr,
        )


def load_for_model(path: Path, vocab_size: int, given_by: str) -> Tokenizer:
    """The tokenizer at `path` (a file or directory); VikhrError if the model cannot use it."""
    if not path.exists():
        raise VikhrError(
            f"tokenizer {path} (from {given_by}) not found; pass --tokenizer PATH "
            "(a .model, a tokenizer.json or a directory with one)"
        )
    tok = load(path)
    if tok.vocab_size > vocab_size:
        raise VikhrError(
            f"tokenizer {tok.path} has {tok.vocab_size} tokens but the model's vocabulary has {vocab_size} "
            "(give the tokenizer the model was trained with)"
        )
    return tok


def tokenizer_to_export(
    found: Recorded, step_dir: Path, given: str | Path | None, vocab_size: int
) -> Tokenizer | None:
    """The tokenizer the export of `step_dir` writes: `given` (--tokenizer; it must be the recorded
    one), else the one its lineage records (`found`), else None; with the warnings on what the
    records say of it."""
    recorded, tok = found.tokenizer, None
    if given is not None:
        tok = load_for_model(Path(given), vocab_size, "--tokenizer")
        check_given_tokenizer(tok, recorded)
    elif recorded is not None:
        tok = load_for_model(recorded.path, vocab_size, recorded.recorded_by)
    warn_of_data_prepared_again(found, step_dir)
    if tok is not None and recorded is not None:
        warn_of_changed_template(tok, recorded)
    return tok


def check_given_tokenizer(tok: Tokenizer, recorded: RecordedTokenizer | None) -> None:
    """--tokenizer must be the tokenizer the checkpoint records, where the record holds its sha256
    (vikhr.data.tokenization.compare_tokenizers; where it cannot tell, refused). Another model's
    tokenizer no larger than the vocabulary would load, and the export would decode to other text."""
    from vikhr.data.tokenization import compare_tokenizers

    if recorded is None or recorded.sha256 is None:
        return
    compared = compare_tokenizers(recorded.path, recorded.sha256, tok)
    if not compared.same:
        raise VikhrError(
            f"--tokenizer {tok.path} is not the tokenizer the model was trained with ({recorded.path}, "
            f"recorded in {recorded.recorded_by}): {compared.difference('that one', 'it')}: give that "
            "tokenizer with --tokenizer, or leave --tokenizer out"
        )


def _source_tokenizer_config(tok: Tokenizer) -> dict[str, Any]:
    """tokenizer_config.json beside the tokenizer file, if there is one, with its own chat template
    (chat_template.jinja's, which wins; a list of named templates is kept whole)."""
    path = tok.path.with_name("tokenizer_config.json")
    config = _read_json(path) if path.is_file() else {}
    own = own_chat_template(tok)
    if own is not None and own[1] != path:
        config["chat_template"] = own[0]
    return config


def _added_tokens_decoder(tok: Tokenizer, source: Any) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json's `added_tokens_decoder` for the tokenizer.json `tok`: its added tokens, and
    those of the source's `added_tokens_decoder` that name the vocabulary piece at their id. transformers
    adds a token the entries name that the tokenizer.json lacks (one renumbered after an extension, a
    hand-made file) as a new one past the model's vocabulary, and takes their flags over the json's:
    where the source's entries say otherwise than the json, the tokenizer the model was trained with,
    one warning line names the first and the json's are written."""
    added = {
        i: {name: getattr(token, name) for name in ADDED_TOKEN_FIELDS}
        for i, token in sorted(tok.backend.get_added_tokens_decoder().items())
    }
    entries = source if isinstance(source, dict) else {}
    disagreeing = [] if isinstance(source, dict) or source is None else ["it is not a JSON object"]
    kept = {}
    for key, entry in entries.items():
        why = _disagreement(tok, added, key, entry)
        if why is None and key.isdigit() and int(key) not in added:
            kept[int(key)] = entry  # a vocabulary piece transformers also marks as an added token
        elif why is not None:
            disagreeing.append(why)
    if disagreeing:
        config_path = tok.path.with_name("tokenizer_config.json")
        more = f" (and {len(disagreeing) - 1} more)" if len(disagreeing) > 1 else ""
        print(
            f"warning: {config_path}: its added_tokens_decoder disagrees with {tok.path.name}: "
            f"{disagreeing[0]}{more}; the export's is written from {tok.path.name}, the tokenizer the "
            "model was trained with",
            file=sys.stderr,
        )
    return {str(i): entry for i, entry in sorted({**kept, **added}.items())}


def _without_missing_specials(tok: Tokenizer, config: dict[str, Any]) -> dict[str, Any]:
    """The source's tokenizer_config.json `config` without the special tokens it names that the
    tokenizer.json `tok` lacks (a hand-made config, one of another tokenizer): transformers adds each
    as a new token past the vocabulary, whose id the model has no trained row for (text holding it, or
    padding with it, indexes past the embedding). One warning line names them; vikhr's `pad_id` refuses
    such a pad token, and the export's pad id is then the source's where it still fits
    (`keep_source_ids`)."""
    missing: list[str] = []

    def in_vocabulary(key: str, value: Any) -> Any:
        name = token_name(value)
        if name is None or tok.piece_to_id(name) is not None:  # not a token (add_bos_token), or present
            return value
        missing.append(f"{key} {name!r}")
        return LEAVE_OUT

    written = map_special_tokens(config, in_vocabulary)
    if missing:
        added = (
            f"it as a new id, {tok.vocab_size}"
            if len(missing) == 1
            else f"them as new ids from {tok.vocab_size} on"
        )
        print(
            f"warning: {tok.path.with_name('tokenizer_config.json')}: {', '.join(missing)} not in "
            f"{tok.path.name}: left out of the export; transformers would add {added}, past the model's "
            "trained rows",
            file=sys.stderr,
        )
    return written


def _disagreement(tok: Tokenizer, added: dict[int, dict[str, Any]], key: str, entry: Any) -> str | None:
    """What the source's `added_tokens_decoder` entry `key` says otherwise than the tokenizer.json `tok`
    (None: nothing; a field the entry lacks says nothing)."""
    if not key.isdigit() or not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
        return f"entry {key!r} is not an id with a token's content"
    i, content = int(key), entry["content"]
    if i in added:
        theirs = added[i]
        other = [f for f in ADDED_TOKEN_FIELDS if f in entry and entry[f] != theirs[f]]
        if not other:
            return None
        if "content" in other:
            return f"id {i} is {content!r} there, {theirs['content']!r} in {tok.path.name}"
        field = other[0]
        return f"id {i} ({content!r}) has {field} {entry[field]} there, {theirs[field]} in {tok.path.name}"
    piece = tok.id_to_piece(i) if i < tok.vocab_size else None
    if piece == content:
        return None
    found = tok.piece_to_id(content)
    where = f"id {found}" if found is not None else "no id"
    return f"id {i} is {content!r} there, which has {where} in {tok.path.name}"


def _model_file_extended_by(tok: Tokenizer) -> Path | None:
    """The SentencePiece tokenizer.model beside a tokenizer.json `tok` that is that model with tokens
    added after its own (the same piece at each of the `.model`'s ids, and only added tokens past
    them); None where there is none, or it is another vocabulary (another model's) or no SentencePiece
    model (a tiktoken or tekken file, corrupt bytes). A `.model` left out is one warning line: loaders
    that read it will find none."""
    model_file = tok.path.with_name("tokenizer.model")
    if tok.kind == "sentencepiece" or not model_file.is_file():
        return None
    why = _why_left_out(model_file, tok)
    if why is not None:
        print(
            f"warning: {model_file} is left out of the export, which has {tok.path.name} only: {why}; "
            "slow tokenizers and converters that read tokenizer.model (sentencepiece, llama.cpp's GGUF "
            "converter) will not load it",
            file=sys.stderr,
        )
        return None
    return model_file


def _why_left_out(model_file: Path, tok: Tokenizer) -> str | None:
    """Why the tokenizer.model beside the tokenizer.json `tok` is not the vocabulary `tok` extends
    (None: it is)."""
    try:
        base = load(model_file)
    except VikhrError:  # nothing that tokenizes as the export does
        return f"it is not a SentencePiece model vikhr can read ({_not_sentencepiece(model_file)})"
    differing = base.first_other_piece(tok)
    if differing is not None and differing < base.vocab_size:  # past its end: tokens the json adds
        theirs = tok.id_to_piece(differing) if differing < tok.vocab_size else None
        return (
            f"its pieces differ from {tok.path.name}'s at id {differing} "
            f"({base.id_to_piece(differing)!r}, not {theirs!r})"
        )
    added = set(tok.backend.get_added_tokens_decoder())
    past = next((i for i in range(base.vocab_size, tok.vocab_size) if i not in added), None)
    if past is not None:
        return f"id {past}, past its {base.vocab_size} pieces, is a vocabulary piece, not an added token"
    return None


def _not_sentencepiece(model_file: Path) -> str:
    """What a tokenizer.model that SentencePiece cannot parse is, where its format tells."""
    from vikhr.tokenizer.load import is_tiktoken_file
    from vikhr.tokenizer.tekken import is_tekken_file

    if is_tiktoken_file(model_file):  # Llama-3's original/tokenizer.model, copied beside its json
        return "a tiktoken BPE file"
    if is_tekken_file(model_file):
        return "a Mistral tekken file"
    return "corrupt, or of another format"


# Texts on which pre-tokenizers and normalizers disagree: digit runs (GPT-2 keeps them whole, Llama-3
# cuts them in threes, Qwen in ones), a letter with a combining accent (NFC), apostrophes, whitespace
# runs and line breaks, a leading space (a SentencePiece dummy prefix), Russian and English.
_PROBE_TEXTS = (
    "Привет, мир! Hello world.\nВторая строка",
    "В 2024 году 1234567 руб., i.e. 3.14159 and 42",
    "Ещё раз: й, и\u0306, e\u0301 — it's, I'M, we'll",
    "  indented   code(x)\n\n\tdef f():  return {'a': 1}",
    " leading space",
)


def probe_ids(tok: Tokenizer, written: Path) -> dict[str, list[int]]:
    """The ids the tokenizer.json written in `written` gives the probe texts (`other_transformers_ids`):
    a tokenizer.json's from `tok`, already parsed (a 150k-token one takes most of a second to parse
    again), with special-token strings read as transformers reads them; a `.model`'s from its export."""
    from tokenizers import Tokenizer as HFTokenizer

    own = tok.backend if tok.kind == "huggingface" else HFTokenizer.from_file(str(written / "tokenizer.json"))
    as_text = own.encode_special_tokens
    own.encode_special_tokens = False
    try:
        return {text: own.encode(text, add_special_tokens=False).ids for text in _PROBE_TEXTS}
    finally:
        own.encode_special_tokens = as_text


def other_transformers_ids(written: Path, out: Path, expected: dict[str, list[int]]) -> str | None:
    """The warning line where transformers' AutoTokenizer, loading the export written in `written` (to
    be renamed to `out`), encodes other ids than its tokenizer.json (`expected`, `probe_ids`), the
    tokenizer the model was trained with: transformers 5 loads a config.json of model_type qwen2 as
    Qwen2Tokenizer whatever tokenizer_config.json names, and that class builds Qwen's normalizer and
    pre-tokenizer around the vocabulary rather than reading tokenizer.json's (docs/tokenizer.md).
    Loading transformers takes seconds: megatron_to_hf runs this while it writes the weights."""
    from transformers import AutoTokenizer

    try:
        loaded = AutoTokenizer.from_pretrained(written)
        differing = next(
            (t for t, ids in expected.items() if loaded(t, add_special_tokens=False).input_ids != ids), None
        )
    except Exception as e:  # what transformers raises varies; a check, it leaves the export whole
        return (
            f"warning: transformers cannot load or use the tokenizer of {out} ({type(e).__name__}: {e}); "
            f"load it with tokenizers.Tokenizer.from_file('{out / 'tokenizer.json'}')"
        )
    if differing is None:
        return None
    model_type = _read_json(written / "config.json").get("model_type")
    return (
        f"warning: transformers' AutoTokenizer loads {out} (model_type {model_type}) as "
        f"{type(loaded).__name__}, which encodes {differing!r} to other ids than its tokenizer.json, the "
        f"tokenizer the model was trained with: load it with "
        f"PreTrainedTokenizerFast.from_pretrained('{out}')"
    )


def _own_end_of_turn(tok: Tokenizer) -> int | None:
    """The end-of-turn token of the chat template kept with the tokenizer (a model exported with it
    stops there), None where it cannot be found (a bare .model, a template that writes no answer)."""
    from vikhr.sft.own_template import own_template

    try:
        return own_template(tok).end_of_turn_id(None)
    except VikhrError:
        return None


def _source_stop_ids(tok: Tokenizer) -> tuple[list[int], list[int]]:
    """The EOS ids that config.json and generation_config.json beside the tokenizer list (empty
    where they give one id or none): Llama-3 instruct models stop on several tokens."""
    found = []
    for name in ("config.json", "generation_config.json"):
        path = tok.path.with_name(name)
        value = _read_json(path).get("eos_token_id") if path.is_file() else None
        ids = value if isinstance(value, list) else []
        found.append([i for i in ids if type(i) is int and 0 <= i < tok.vocab_size])
    return found[0], found[1]


def _own_pad_id(tok: Tokenizer, config: dict[str, Any]) -> int | None:
    """The id of the pad token that the written tokenizer_config.json names (None: it names none; one
    the vocabulary lacks is not written, `_without_missing_specials`)."""
    name = token_name(config.get("pad_token"))
    return tok.piece_to_id(name) if name is not None else None


def _means_the_same(i: Any, source: Tokenizer, tok: Tokenizer) -> bool:
    """Whether id `i` is the same piece in `tok` as in the source's tokenizer."""
    if type(i) is not int or not (0 <= i < source.vocab_size and i < tok.vocab_size):
        return False
    piece = tok.id_to_piece(i)
    return piece != "" and piece == source.id_to_piece(i)


def keep_source_ids(
    tok: Tokenizer, source_tokenizer: Path | None, keys: list[str], *configs: dict[str, Any]
) -> None:
    """For the special ids `keys` (``bos_token_id``, ``pad_token_id``) the exported tokenizer `tok`
    has no token for: each config's id, the HF source's, is kept where it is the same piece in `tok`
    as in `source_tokenizer` (the tokenizer the source was converted with), else set to null. Another
    tokenizer (--tokenizer, or one an SFT run recorded) may give that id to another token, or not
    have it; with no source tokenizer to compare with, the id is dropped."""
    if all(c.get(key) is None for c in configs for key in keys):
        return
    source = None
    if source_tokenizer is not None:
        try:
            same_file = source_tokenizer.resolve() == tok.path.resolve()
            source = tok if same_file else load(source_tokenizer)
        except (OSError, VikhrError):  # gone or unreadable since the conversion: nothing to compare with
            source = None
    for config in configs:
        for key in keys:
            i = config.get(key)
            if i is not None and (source is None or not _means_the_same(i, source, tok)):
                config[key] = None


def _with(ids: list[int], *more: int | None) -> list[int]:
    return [*ids, *(i for i in dict.fromkeys(more) if i is not None and i not in ids)]


def write_tokenizer_files(
    tok: Tokenizer, out_dir: Path, template: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the tokenizer files into `out_dir` (see module doc).

    `template`: a vikhr.sft.template name; without one (or with ``own``), a chat template of the
    tokenizer's own (tokenizer_config.json or chat_template.jinja beside it) is kept. Returns the
    BOS/EOS ids for config.json (EOS a list where the config.json beside the tokenizer lists several)
    and for generation_config.json (EOS a list of every stop token where there are several), and
    for both the pad id where the tokenizer has a pad token (tokenizer_config.json's `pad_token`, a
    SentencePiece model's pad piece); where it has none, `keep_source_ids` decides.
    """
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    source_config = _source_tokenizer_config(tok)
    if tok.kind == "sentencepiece":
        shutil.copyfile(tok.path, out_dir / "tokenizer.model")
        write_hf_tokenizer(tok.path, out_dir)
        config = _read_json(out_dir / "tokenizer_config.json")
    else:
        shutil.copyfile(tok.path, out_dir / "tokenizer.json")
        extended = _model_file_extended_by(tok)
        if extended is not None:
            shutil.copyfile(extended, out_dir / "tokenizer.model")
        config = {"clean_up_tokenization_spaces": False, **_without_missing_specials(tok, source_config)}
        config.update(as_transformers_loads(config))
        config["added_tokens_decoder"] = _added_tokens_decoder(tok, source_config.get("added_tokens_decoder"))
        # Loaded as tokenizer.json is: a model-specific class named beside the tokenizer (LlamaTokenizer,
        # Qwen2Tokenizer) makes transformers 5 build its own pre-tokenizer around the vocabulary.
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    ids: dict[str, Any] = {}
    for name, i in (("bos", tok.bos_id), ("eos", tok.eos_id)):
        if i is not None:
            config[f"{name}_token"] = tok.id_to_piece(i)
            ids[f"{name}_token_id"] = i
    pad_id = _own_pad_id(tok, config)
    if pad_id is not None:
        ids["pad_token_id"] = pad_id
    generation: dict[str, Any] = dict(ids)
    # A model that stopped on several tokens keeps stopping on them (the EOS among them).
    config_stops, generation_stops = _source_stop_ids(tok)
    if config_stops and tok.eos_id is not None:
        ids["eos_token_id"] = _with(config_stops, tok.eos_id)
    stops = _with(generation_stops or config_stops, tok.eos_id)
    if template is not None:
        from vikhr.sft.template import OWN, end_of_turn_id

        if template != OWN:  # the tokenizer's own template is kept below
            if template not in HF_CHAT_TEMPLATES:
                known = ", ".join((*HF_CHAT_TEMPLATES, OWN))
                raise VikhrError(f"unknown chat template {template!r} (known: {known})")
            config["chat_template"] = hf_chat_template(template, tok)
        # A tuned model ends its answers with the template's end-of-turn token (<|eot_id|>, <|im_end|>).
        stops = _with(stops, end_of_turn_id(tok, template))
    elif own_chat_template(tok) is not None:
        stops = _with(stops, _own_end_of_turn(tok))
    if len(stops) > 1:
        generation["eos_token_id"] = stops
    if template not in HF_CHAT_TEMPLATES and isinstance(source_config.get("chat_template"), str):
        config["chat_template"] = source_config["chat_template"]
    specials = {
        key: config[key]
        for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        if config.get(key) is not None
    }
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
    return ids, generation
