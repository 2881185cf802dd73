"""`vikhr tokenizer train`: SentencePiece BPE (byte fallback) in `replace`, `extend` or `prune-extend` mode.

A byte-level `tokenizer.json` as `--base-model` (Llama-3, Qwen2.5, an imported Mistral tekken) trains
byte-level BPE instead, with the same modes and guarantees: see vikhr.tokenizer.train_byte_bpe.

* replace: a new vocabulary trained on the given corpora (the paper's setting).
* extend: the base tokenizer (e.g. Mistral-7B v0.1) keeps every piece at its id; pieces containing
  Cyrillic that a Russian BPE learned are appended. Only pieces that contain Cyrillic are added or
  re-scored, so any text without Cyrillic letters is encoded exactly as by the base tokenizer.
* prune-extend: the base tokenizer's pieces that the training text uses most are kept, with every
  piece their merges depend on, the bytes and the specials; the rest are dropped and Russian pieces
  learned as in extend mode fill the vocabulary to exactly `vocab_size` (vikhr.tokenizer.prune).
  Kept pieces move to the freed ids; `id_map.json` records where every base id went.

The output directory holds the `.model`, an HF `tokenizer.json` + `tokenizer_config.json` (checked to
encode identically on held-out lines of every corpus) and `manifest.json`. It is written to a temporary
directory that is renamed into place at the end, so a failed run leaves nothing that looks complete.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from vikhr.atomic import output_dir
from vikhr.errors import VikhrError, require_file, require_output_dir
from vikhr.tokenizer.byte_level import CYRILLIC
from vikhr.tokenizer.corpus import (
    DEFAULT_HELDOUT_PERCENT,
    corpus_sha256,
    first_lines,
    manifest_corpora,
    sample_lines,
    split_corpus_spec,
    write_training_sample,
)
from vikhr.tokenizer.hf_export import (
    compare_encodings,
    load_model_proto,
    user_defined_texts,
    write_hf_tokenizer,
)
from vikhr.tokenizer.load import CHAT_TEMPLATE_FILE, carry_chat_template, load, resolve_tokenizer_file
from vikhr.tokenizer.prune import ID_MAP_FILE, id_map, piece_use, prune_base, write_id_map
from vikhr.tokenizer.train_byte_bpe import byte_level_base, train_byte_level

Mode = Literal["replace", "extend", "prune-extend"]
MODES = ("replace", "extend", "prune-extend")
MODEL_FILE = "tokenizer.model"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "vikhr-tokenizer/1"
NUM_BYTE_PIECES = 256
NUM_SPECIALS = 3  # <unk> <s> </s>
MIN_REPLACE_VOCAB = NUM_BYTE_PIECES + NUM_SPECIALS + 100  # a replace tokenizer: at least 100 learned pieces
DEFAULT_MIN_FREQUENCY = 2  # byte-level BPE: BpeTrainer's fewest occurrences of a pair to merge
# SentencePiece's ranges of character coverage (up to 1) and of threads (from 1)
MIN_CHARACTER_COVERAGE = 0.98
MAX_THREADS = 1024
MAX_PAD_MULTIPLE = 65536  # padding is for alignment (typically 64 or 128): more is a mistake
# The largest vocabularies in use hold ~256k ids; SentencePiece takes no size above 2^31 and the
# byte-level trainer allocates ~50 bytes an id up front (3e9 aborted the process).
MAX_VOCAB_SIZE = 1 << 22
POOL_ATTEMPTS = 4  # extend mode: Russian pool trainings before settling for fewer new pieces


def _sentencepiece_only(flag: str, default: Any) -> dict[str, Any]:
    """The field metadata of a SentencePiece-only setting, None (not given) until SentencePiece training
    takes `default`. A byte-level BPE has no such setting: given for one it is refused, named by `flag`,
    and its manifest leaves it out."""
    return {"sentencepiece_flag": flag, "sentencepiece_default": default}


@dataclass
class TrainSettings:
    """Everything that determines the trained tokenizer (recorded in the manifest, as used)."""

    mode: Mode = "replace"
    vocab_size: int = 40000
    base_model: str | None = None
    text_key: str = "text"
    max_chars_per_file: int | None = 20_000_000
    heldout_percent: float = DEFAULT_HELDOUT_PERCENT
    pad_to_multiple: int = 128  # at most MAX_PAD_MULTIPLE
    character_coverage: float | None = field(
        default=None, metadata=_sentencepiece_only("--character-coverage", 0.9999)
    )
    max_piece_length: int | None = field(default=None, metadata=_sentencepiece_only("max_piece_length", 16))
    # False lets pieces join letters and punctuation ("мир."): better compression than Mistral's setting.
    split_by_script: bool | None = field(
        default=None, metadata=_sentencepiece_only("--no-split-by-script", True)
    )
    # False lets pieces span words (",▁что▁он", "▁не▁был"); SentencePiece and tokenizer.json still
    # encode identically (neither splits at spaces when encoding). Mistral's own pieces never span
    # words, so this is off by default; in extend mode it buys ~3.4 % fewer Russian tokens at 40k.
    split_by_whitespace: bool | None = field(
        default=None, metadata=_sentencepiece_only("--no-split-by-whitespace", True)
    )
    num_threads: int | None = field(default=None, metadata=_sentencepiece_only("--threads", 2))
    verify_lines_per_file: int = 2000
    extra_sentencepiece_args: dict[str, Any] | None = field(
        default=None, metadata=_sentencepiece_only("extra_sentencepiece_args", None)
    )
    # extend mode: how many tokens to add (instead of giving the total as vocab_size).
    new_tokens: int | None = None
    # Byte-level BPE (a tokenizer.json base) only: the fewest occurrences of a pair that BpeTrainer
    # merges (None: 2); SentencePiece has no such setting.
    min_frequency: int | None = None
    # prune-extend: how many of the base's normal pieces to keep (dependencies included); None keeps
    # DEFAULT_KEEP_SHARE of them.
    keep_base_pieces: int | None = field(
        default=None, metadata=_sentencepiece_only("--keep-base-pieces", None)
    )


# prune-extend default share of the base's normal pieces kept (Mistral: 22,854 of 31,741): with 8M
# characters of English novels in the sample it keeps English within 3 % of the base on novels and on
# exam questions of many subjects (docs/tokenizer.md).
DEFAULT_KEEP_SHARE = 0.72


def _round_up(n: int, multiple: int) -> int:
    return n if multiple <= 1 else -(-n // multiple) * multiple


def _sentencepiece_bpe(text_file: Path, model_prefix: Path, vocab_size: int, s: TrainSettings) -> Path:
    """Train a Mistral-compatible SentencePiece BPE model; returns the `.model` path."""
    import sentencepiece as spm

    args: dict[str, Any] = {
        # lines given one by one: SentencePiece splits an `input` path at commas ("--out runs,1/")
        "sentence_iterator": sample_lines(text_file),
        "model_prefix": str(model_prefix),
        "model_type": "bpe",
        "vocab_size": vocab_size,
        "byte_fallback": True,
        "character_coverage": s.character_coverage,
        "split_digits": True,
        "split_by_unicode_script": s.split_by_script,
        "split_by_whitespace": s.split_by_whitespace,
        "allow_whitespace_only_pieces": True,
        "max_sentencepiece_length": s.max_piece_length,
        "max_sentence_length": 4192,
        "normalization_rule_name": "identity",
        "add_dummy_prefix": True,
        "remove_extra_whitespaces": False,
        "unk_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "pad_id": -1,
        "unk_surface": " \u2047 ",
        "input_sentence_size": 0,  # use every sampled line: the sample is already deterministic
        "shuffle_input_sentence": False,
        "num_threads": s.num_threads,
        "hard_vocab_limit": True,
        "minloglevel": 2,
        **(s.extra_sentencepiece_args or {}),
    }
    try:
        spm.SentencePieceTrainer.train(**args)
    except RuntimeError as e:
        raise VikhrError(
            f"SentencePiece training failed: {e} (try a smaller --vocab-size or more text)"
        ) from e
    model_path = model_prefix.with_suffix(".model")
    # The proto records the temporary paths and thread count; drop them so that the same corpus and
    # settings give a byte-identical file (the manifest keeps the real provenance).
    proto = load_model_proto(model_path)
    del proto.trainer_spec.input[:]
    proto.trainer_spec.input.append("train.txt")
    proto.trainer_spec.model_prefix = "tokenizer"
    proto.trainer_spec.ClearField("num_threads")
    model_path.write_bytes(proto.SerializeToString())
    return model_path


def extend_model(base_proto: Any, ru_proto: Any, num_new: int) -> tuple[Any, dict[str, int]]:
    """The base model with up to `num_new` Cyrillic pieces of `ru_proto` appended (ids of base kept).

    Scores: Cyrillic pieces follow the Russian model's merge order (its scores), base Cyrillic pieces
    the Russian model does not know are moved after every other merge, and all other base pieces keep
    their order, which leaves the encoding of text without Cyrillic unchanged (scores are then
    renumbered without ties, `_unique_merge_scores`). A new piece is added only if some split of it
    into two known pieces exists, so the merge that builds it can fire.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    normal = pb.ModelProto.SentencePiece.NORMAL
    ru_scores = {p.piece: p.score for p in ru_proto.pieces if p.type == normal}
    base_index = {p.piece: i for i, p in enumerate(base_proto.pieces)}
    lowest = min(min(ru_scores.values(), default=0.0), min(p.score for p in base_proto.pieces))
    out = pb.ModelProto()
    out.CopyFrom(base_proto)
    demoted = rescored = 0
    for p in out.pieces:
        if p.type != normal or not CYRILLIC.search(p.piece) or len(p.piece) == 1:
            continue
        if p.piece in ru_scores:
            p.score = ru_scores[p.piece]
            rescored += 1
        else:
            p.score = lowest - 1.0 - (-p.score)  # keep their relative order, after everything else
            demoted += 1
    known = {p.piece for p in out.pieces if p.type == normal}
    # Single characters first (they are initial symbols, never merge results), then merges by rank.
    candidates = sorted(
        (p for p in ru_proto.pieces if p.type == normal and CYRILLIC.search(p.piece)),
        key=lambda p: (len(p.piece) != 1, -p.score),
    )
    added_chars = added_merges = skipped_unreachable = 0
    for p in candidates:
        if added_chars + added_merges >= num_new:
            break
        if p.piece in base_index or p.piece in known:
            continue
        if len(p.piece) > 1 and not any(
            p.piece[:k] in known and p.piece[k:] in known for k in range(1, len(p.piece))
        ):
            skipped_unreachable += 1
            continue
        new = out.pieces.add()
        new.piece, new.score, new.type = p.piece, p.score, normal
        known.add(p.piece)
        if len(p.piece) == 1:
            added_chars += 1
        else:
            added_merges += 1
    out.trainer_spec.vocab_size = len(out.pieces)
    _unique_merge_scores(out)
    stats = {
        "base_pieces": len(base_proto.pieces),
        "added_pieces": added_chars + added_merges,
        "added_characters": added_chars,
        "added_merges": added_merges,
        "rescored_base_cyrillic": rescored,
        "demoted_base_cyrillic": demoted,
        "skipped_unreachable": skipped_unreachable,
    }
    return out, stats


def _unique_merge_scores(proto: Any) -> None:
    """Renumber the scores of the multi-character pieces -0, -1, … in their order (score, then id), in
    place. The Russian pool's scores fall on the base's (``е.`` and ``..`` both -309): SentencePiece
    breaks such a tie by position (leftmost), a `tokenizers` BPE (the export) by merge rank, so "1е.."
    encoded differently. With no ties both follow one order, and the base's pieces keep theirs."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    normal = pb.ModelProto.SentencePiece.NORMAL
    pieces = proto.pieces
    merged = [i for i, p in enumerate(pieces) if p.type == normal and len(p.piece) > 1]
    for rank, i in enumerate(sorted(merged, key=lambda i: (-pieces[i].score, i))):
        pieces[i].score = -float(rank)


def _extend_from_corpus(
    text_file: Path, work: Path, base_proto: Any, num_new: int, s: TrainSettings
) -> tuple[Any, dict[str, int], Any]:
    """Train a Russian BPE pool on `text_file` and append `num_new` of its Cyrillic pieces to the base;
    returns the merged model, its statistics and the pool.

    The pool also learns Latin, digit and punctuation pieces from mixed lines (man pages, code in docs),
    and those are never added; when too few Cyrillic pieces remain, the pool is retrained larger.
    """
    base_cyrillic = sum(1 for p in base_proto.pieces if CYRILLIC.search(p.piece))
    pool_size = num_new + base_cyrillic + NUM_BYTE_PIECES + NUM_SPECIALS + 500
    best: tuple[Any, dict[str, int]] | None = None
    ru_proto = None
    for _ in range(POOL_ATTEMPTS):
        try:
            ru_model = _sentencepiece_bpe(text_file, work / "ru", pool_size, s)
        except VikhrError as e:
            # SentencePiece names the largest pool this corpus supports ("... a value <= 58873"): a small
            # corpus trains that pool, which may still hold the few pieces asked for.
            largest = re.search(r"<= (\d+)", str(e))
            if largest is None or int(largest[1]) >= pool_size:
                if best is None:
                    raise
                break
            pool_size = int(largest[1])
            continue
        ru_proto = load_model_proto(ru_model)
        best = extend_model(base_proto, ru_proto, num_new)
        added = best[1]["added_pieces"]
        if added >= num_new:
            break
        # Grow the pool by the shortfall divided by the share of the pool that was usable.
        usable = max(added / pool_size, 0.05)
        pool_size += int((num_new - added) / usable) + 500
    if best is None:
        raise VikhrError(
            f"the corpora's Cyrillic lines are too few for a Russian pool (SentencePiece refused "
            f"{POOL_ATTEMPTS} sizes, the last {pool_size}); add Russian text"
        )
    return (*best, ru_proto)


def _prune_and_extend(
    sample: Path, work: Path, base_proto: Any, s: TrainSettings
) -> tuple[Any, dict[str, int], dict[str, int]]:
    """The base pruned to its most used pieces on `sample` plus Russian pieces, exactly `s.vocab_size`.

    When the Russian pool yields fewer Cyrillic pieces than the freed room, more base pieces are kept
    instead, so the size is always the one asked for.
    """
    assert s.base_model is not None  # _check_mode requires it
    use = piece_use(s.base_model, sample)
    russian = work / "ru.txt"
    with open(russian, "w", encoding="utf-8", newline="\n") as dst:
        dst.writelines(line + "\n" for line in sample_lines(sample) if CYRILLIC.search(line))
    if russian.stat().st_size == 0:
        raise VikhrError("the training split of the corpora has no lines with Cyrillic letters")
    keep = _keep_count(base_proto, s)
    pruned = prune_base(base_proto, use, keep)
    merged, extend_stats, ru_proto = _extend_from_corpus(
        russian, work, pruned.proto, s.vocab_size - len(pruned.proto.pieces), s
    )
    for _ in range(POOL_ATTEMPTS):
        shortfall = s.vocab_size - len(merged.pieces)
        if shortfall == 0:
            break
        keep += shortfall
        pruned = prune_base(base_proto, use, keep)
        merged, extend_stats = extend_model(pruned.proto, ru_proto, s.vocab_size - len(pruned.proto.pieces))
    russian.unlink()
    if len(merged.pieces) != s.vocab_size:
        raise VikhrError(
            f"could not fill {s.vocab_size} ids ({len(merged.pieces)} reached); add Russian text or "
            "lower --vocab-size"
        )
    return merged, pruned.stats, extend_stats


def _keep_count(base_proto: Any, s: TrainSettings) -> int:
    """How many normal base pieces prune-extend keeps; VikhrError when that leaves no room."""
    num_normal = sum(1 for p in base_proto.pieces if p.type == 1)
    fixed = len(base_proto.pieces) - num_normal  # specials and byte pieces, always kept
    keep = s.keep_base_pieces if s.keep_base_pieces is not None else round(DEFAULT_KEEP_SHARE * num_normal)
    if not 0 <= keep <= num_normal:
        raise VikhrError(
            f"--keep-base-pieces {keep} is out of range (the base has {num_normal} normal pieces)"
        )
    if s.vocab_size <= fixed + keep:
        raise VikhrError(
            f"--vocab-size {s.vocab_size} leaves no room for Russian pieces: the kept set is {keep} base "
            f"pieces + {fixed} specials and bytes (raise --vocab-size or lower --keep-base-pieces)"
        )
    return keep


def check_base_specials(proto: Any, where: str) -> None:
    """VikhrError unless the SentencePiece `proto` is one extend mode builds on: <unk> <s> </s> at 0-2,
    byte fallback (`where`: its path, for the message)."""
    spec = proto.trainer_spec
    if (spec.unk_id, spec.bos_id, spec.eos_id) != (0, 1, 2) or not spec.byte_fallback:
        raise VikhrError(
            f"{where}: the base tokenizer must have <unk>=0, <s>=1, </s>=2 and byte fallback "
            "(as Mistral/Llama do)"
        )


def verify_hf_export(
    model_path: Path, tokenizer_json: Path, corpora: list[Path], s: TrainSettings
) -> dict[str, int]:
    """Compare `.model` and `tokenizer.json` ids on held-out lines of every corpus (on training lines
    of a corpus too small for a held-out part: the two must agree on any text); the lines checked.
    Lines holding a user-defined piece are checked on the text around it, which is all the two
    encode alike (docs/tokenizer.md)."""
    expected, got = load(model_path), load(tokenizer_json)
    texts = sorted(user_defined_texts(load_model_proto(model_path)), key=len, reverse=True)
    user_defined = re.compile("|".join(map(re.escape, texts))) if texts else None
    checked = {"heldout": 0, "train": 0}
    for path in corpora:
        for split in ("heldout", "train"):
            lines = first_lines(path, s.text_key, split, s.heldout_percent, s.verify_lines_per_file)
            if lines:
                break
        if user_defined is not None:
            lines = [part for line in lines for part in user_defined.split(line) if part.strip()]
        bad = compare_encodings(expected, got, lines)
        if bad:
            raise VikhrError(
                f"tokenizer.json encodes {len(bad)} of {len(lines)} {split} lines of {path} differently "
                f"from the .model (first: {lines[bad[0]][:80]!r}); please report this as a bug"
            )
        checked[split] += len(lines)
    return checked


def _lines_checked(checked: dict[str, int]) -> dict[str, int]:
    """`verify_hf_export`'s counts as the manifest records them: one per kind of line checked. Training
    lines are read only for a corpus without held-out lines, so a count of 0 read as a check that
    did not run."""
    counts = {f"{split}_lines_checked": n for split, n in checked.items() if n}
    return counts or {"heldout_lines_checked": 0}


def _check_mode(s: TrainSettings) -> Any:
    """Refuse settings that cannot work; returns the base model's proto in extend mode (else None)."""
    if s.mode not in MODES:
        raise VikhrError(f"unknown mode {s.mode!r} (choose {', '.join(MODES)})")
    if s.mode == "replace":
        if s.vocab_size < MIN_REPLACE_VOCAB:
            raise VikhrError(
                f"--vocab-size {s.vocab_size} is too small: give at least {MIN_REPLACE_VOCAB} (byte "
                f"fallback alone takes {NUM_BYTE_PIECES + NUM_SPECIALS} pieces)"
            )
        if s.base_model:  # a byte-level base was taken before this point: this one would be ignored
            raise VikhrError(
                f"--mode replace trains a SentencePiece tokenizer from scratch: --base-model {s.base_model} "
                "would be ignored (leave it out, or use --mode extend / prune-extend)"
            )
        return None
    if not s.base_model:
        raise VikhrError(f"--mode {s.mode} needs --base-model (the tokenizer to extend, e.g. Mistral's)")
    base_proto = load_model_proto(s.base_model)
    check_base_specials(base_proto, s.base_model)
    if s.mode == "prune-extend":
        _keep_count(base_proto, s)
        return base_proto
    if s.new_tokens is not None and s.new_tokens <= 0:
        raise VikhrError(f"--new-tokens must be positive, got {s.new_tokens}")
    if s.new_tokens is None and s.vocab_size <= len(base_proto.pieces):
        raise VikhrError(
            f"--vocab-size {s.vocab_size} must exceed the base vocabulary ({len(base_proto.pieces)}) "
            "in extend mode"
        )
    return base_proto


def _check_numbers(s: TrainSettings) -> None:
    """The numeric settings in their ranges (the trainers report these as internal errors)."""
    if not 1 <= s.pad_to_multiple <= MAX_PAD_MULTIPLE:
        raise VikhrError(
            f"--pad-to-multiple must be from 1 (no padding) to {MAX_PAD_MULTIPLE}, got {s.pad_to_multiple}"
        )
    for flag, size in (("--vocab-size", s.vocab_size), ("--new-tokens", s.new_tokens)):
        if size is not None and size > MAX_VOCAB_SIZE:
            raise VikhrError(
                f"{flag} {size:,} is above {MAX_VOCAB_SIZE:,} ids, far more than any tokenizer uses "
                "(the largest hold ~256k)"
            )
    # SentencePiece refuses a lower coverage (and NaN) only when it trains, as an internal error.
    coverage = s.character_coverage
    if coverage is not None and not MIN_CHARACTER_COVERAGE <= coverage <= 1:
        raise VikhrError(
            f"--character-coverage must be from {MIN_CHARACTER_COVERAGE} to 1 (SentencePiece's range), got "
            f"{coverage}"
        )
    if s.num_threads is not None and not 1 <= s.num_threads <= MAX_THREADS:
        raise VikhrError(
            f"--threads must be from 1 to {MAX_THREADS} (SentencePiece's range), got {s.num_threads}"
        )
    if s.min_frequency is not None and not 0 <= s.min_frequency < 2**32:
        raise VikhrError(f"--min-frequency must be from 0 to 2^32-1, got {s.min_frequency}")


def _check_inputs(
    corpora: list[str | Path], out_dir: str | Path, s: TrainSettings, overwrite: bool
) -> tuple[list[Path], list[int | None], Path]:
    """Corpus paths, their character budgets and the output directory; VikhrError for bad inputs."""
    specs = [split_corpus_spec(c) for c in corpora]
    paths = [require_file(p, "corpus file") for p, _ in specs]
    budgets: list[int | None] = [b if b is not None else s.max_chars_per_file for _, b in specs]
    if not paths:
        raise VikhrError("no corpus given (pass one or more JSONL files with --corpus)")
    seen: dict[Path, Path] = {}
    for p in paths:
        if (first := seen.setdefault(p.resolve(), p)) is not p:
            raise VikhrError(
                f"--corpus names {first} twice ({p}): give each file once (FILE@20M sets how much of a "
                "file is sampled)"
            )
    _check_numbers(s)
    base = [s.base_model] if s.base_model and Path(s.base_model).exists() else []
    out = require_output_dir(out_dir, overwrite, inputs=[*paths, *base])
    if s.new_tokens is not None and s.mode != "extend":
        raise VikhrError(f"--new-tokens is for --mode extend (--mode {s.mode} takes --vocab-size)")
    if s.keep_base_pieces is not None and s.mode != "prune-extend":
        raise VikhrError("--keep-base-pieces is for --mode prune-extend")
    return paths, budgets, out


def _train_model(
    text_file: Path, work: Path, model_path: Path, base_proto: Any, s: TrainSettings
) -> tuple[dict[str, int] | None, dict[str, int] | None]:
    """Train the `.model` of `s.mode` from `text_file` into `model_path`; (extend, prune) stats."""
    if s.mode == "replace":
        os.replace(_sentencepiece_bpe(text_file, work / "sp", s.vocab_size, s), model_path)
        return None, None
    if s.mode == "prune-extend":
        merged, prune_stats, extend_stats = _prune_and_extend(text_file, work, base_proto, s)
        model_path.write_bytes(merged.SerializeToString())
        base_path = Path(str(s.base_model))
        write_id_map(work / ID_MAP_FILE, base_path, id_map(base_proto, merged), len(merged.pieces))
        return extend_stats, prune_stats
    assert base_proto is not None
    num_new = s.vocab_size - len(base_proto.pieces)
    merged, extend_stats, _ = _extend_from_corpus(text_file, work, base_proto, num_new, s)
    model_path.write_bytes(merged.SerializeToString())
    if extend_stats["added_pieces"] < num_new:
        print(
            f"warning: the corpus yields only {extend_stats['added_pieces']} new Cyrillic pieces; "
            f"vocabulary size is {len(merged.pieces)} instead of {s.vocab_size} (add Russian text "
            "or ask for a smaller --vocab-size)"
        )
    return extend_stats, None


def _refuse_sentencepiece_settings(s: TrainSettings) -> None:
    """VikhrError naming the SentencePiece trainer's settings given (whatever their values) for a
    byte-level BPE: they would change nothing."""
    given = [
        f.metadata["sentencepiece_flag"]
        for f in fields(s)
        if "sentencepiece_flag" in f.metadata and getattr(s, f.name) is not None
    ]
    if given:
        raise VikhrError(
            f"{', '.join(given)}: SentencePiece's settings; a byte-level BPE (a tokenizer.json --base-model) "
            "has no such setting (leave them out; --min-frequency is its own)"
        )


def _with_sentencepiece_defaults(s: TrainSettings) -> TrainSettings:
    """`s` with SentencePiece's defaults for its settings not given (the manifest records those used)."""
    unset = [f for f in fields(s) if "sentencepiece_flag" in f.metadata and getattr(s, f.name) is None]
    return replace(s, **{f.name: f.metadata["sentencepiece_default"] for f in unset})


# Files an output may hold besides the .model, tokenizer.json and its config (manifest "files").
OUTPUT_SIDE_FILES = (ID_MAP_FILE, CHAT_TEMPLATE_FILE)


def train_tokenizer(
    corpora: list[str | Path], out_dir: str | Path, settings: TrainSettings, overwrite: bool = False
) -> dict[str, Any]:
    """Train a tokenizer into `out_dir` (see module doc); returns the manifest.

    `corpora` are JSONL paths (plain, .gz or .zst), optionally with a per-file character budget:
    `file.jsonl.gz@20M` (otherwise `settings.max_chars_per_file` applies).
    """
    import sentencepiece as spm
    import tokenizers

    s = settings
    paths, budgets, out_dir = _check_inputs(corpora, out_dir, s, overwrite)
    byte_base = byte_level_base(s.base_model)
    if byte_base is not None:
        if s.mode == "prune-extend":
            raise VikhrError(
                "--mode prune-extend needs a SentencePiece .model as --base-model (byte-level bases: "
                "replace or extend)"
            )
        _refuse_sentencepiece_settings(s)
        min_frequency = DEFAULT_MIN_FREQUENCY if s.min_frequency is None else s.min_frequency
        return train_byte_level(paths, budgets, out_dir, byte_base, replace(s, min_frequency=min_frequency))
    if s.min_frequency is not None:
        raise VikhrError(
            "--min-frequency is for byte-level BPE (a tokenizer.json --base-model); SentencePiece has "
            "no such setting (leave it out)"
        )
    if s.base_model:  # a directory's tokenizer.model (a byte-level tokenizer.json was taken above)
        s = replace(s, base_model=str(resolve_tokenizer_file(s.base_model)))
    s = _with_sentencepiece_defaults(s)
    base_proto = _check_mode(s)
    if base_proto is not None and s.new_tokens is not None:
        s = replace(s, vocab_size=len(base_proto.pieces) + s.new_tokens)

    with output_dir(out_dir) as work:
        text_file = work / "train.txt"
        sample_stats = write_training_sample(
            paths, budgets, text_file, s.text_key, s.heldout_percent, only_cyrillic=s.mode == "extend"
        )
        model_path = work / MODEL_FILE
        extend_stats, prune_stats = _train_model(text_file, work, model_path, base_proto, s)
        for leftover in [text_file, *work.glob("*.vocab"), *work.glob("ru.model")]:
            leftover.unlink()
        tok_json, tok_cfg = write_hf_tokenizer(model_path, work)
        carry_chat_template(Path(s.base_model).parent if s.base_model else None, work)
        checked = verify_hf_export(model_path, tok_json, paths, s)
        vocab_size = load(model_path).vocab_size
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "mode": s.mode,
            "vocab_size": vocab_size,
            "pad_to_multiple": s.pad_to_multiple,
            "padded_vocab_size": _round_up(vocab_size, s.pad_to_multiple),
            "special_tokens": {"<unk>": 0, "<s>": 1, "</s>": 2},
            "byte_fallback_ids": [3, 3 + NUM_BYTE_PIECES - 1],
            "base_model": (
                {"path": str(s.base_model), "sha256": corpus_sha256(s.base_model)} if s.base_model else None
            ),
            "corpora": manifest_corpora(paths, budgets, sample_stats),
            "settings": asdict(s),
            "extend": extend_stats,
            "prune": prune_stats,
            "hf_check": {**_lines_checked(checked), "mismatches": 0},
            "files": {
                path.name: corpus_sha256(path)
                for path in (work / MODEL_FILE, tok_json, tok_cfg, *(work / n for n in OUTPUT_SIDE_FILES))
                if path.is_file()
            },
            "versions": {"sentencepiece": spm.__version__, "tokenizers": tokenizers.__version__},
        }
        (work / MANIFEST_FILE).write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8"
        )
    return manifest
