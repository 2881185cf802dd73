"""`vikhr tokenizer train` for byte-level BPE bases (Llama-3, Qwen2.5, Mistral tekken via import-tekken).

`vikhr.tokenizer.train` calls this when `--base-model` is a byte-level `tokenizer.json`. Both modes
keep the base's normalizer, pre-tokenizer (its Split regex + ByteLevel), decoder and
`ignore_merges`, and every vocabulary holds all 256 byte tokens, so any text can be encoded.

* extend: the base vocabulary, its merges and its added/special tokens keep their ids and order; new
  tokens get the ids after the largest base id and new merges are appended after the base merges.
  The new merges are learned *on top of the base segmentation*: the Russian training words are
  first split by the base tokenizer, each base token becomes one symbol, and HF `tokenizers`'
  BpeTrainer learns merges of those symbols. The extended tokenizer applies every base merge before
  any new one, so this is exactly the state its new merges meet when encoding. (Training a byte-level
  BPE from scratch and appending its merges gives merges that often never fire behind the base
  segmentation: +4000 tokens on tekken gave 3.28 instead of 3.48 RU chars/token.)

  A learned merge is kept only if its bytes hold a Cyrillic character's lead byte (0xD0-0xD3, or
  0xD4 followed by 0x80-0xAF: in valid UTF-8 these occur only in U+0400-U+052F) and both parts are
  already in the vocabulary. No new merge or token can then match text without such characters, so
  **every text without Cyrillic letters encodes to exactly the base ids**; this is checked on the
  held-out lines without Cyrillic of every corpus before the result is written.

* replace: a new byte-level BPE of `vocab_size` tokens (added tokens included) trained with
  BpeTrainer on the corpora, each paragraph with the newlines that followed it in its document (so
  "\n\n" between paragraphs becomes one token, as in the base). Special-token layout: the base's
  added tokens keep their order and flags; those that come before the base's first vocabulary id
  (tekken: ids 0-999) keep their ids and the vocabulary follows them; the others (Llama-3, Qwen2.5:
  after the vocabulary) follow the new vocabulary, contiguously. Post-processor ids (BOS templates)
  are renumbered to match.

BpeTrainer is deterministic here (its alphabet is sorted and ties go to the smaller pair id), and
the input is fed in a fixed order, so the same corpora and settings give identical files.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vikhr.atomic import output_dir, write_text
from vikhr.errors import VikhrError, read_json_object
from vikhr.tokenizer.byte_level import (
    CYRILLIC,
    bytes_piece,
    has_cyrillic_bytes,
    is_byte_level,
    piece_bytes,
)
from vikhr.tokenizer.corpus import (
    corpus_sha256,
    first_lines,
    iter_lines,
    manifest_corpora,
    read_break_lines,
    sample_lines,
    write_training_sample,
)
from vikhr.tokenizer.load import (
    CHAT_TEMPLATE_FILE,
    hf_backend,
    load,
    require_tokenizer_json,
    resolve_tokenizer_file,
)
from vikhr.tokenizer.tekken import EDGE_CASES, is_tekken, tekken_error, tokenizer_config

if TYPE_CHECKING:  # train.py imports this module; the settings type is only an annotation here
    from vikhr.tokenizer.train import TrainSettings

MANIFEST_FORMAT = "vikhr-tokenizer/1"
SYMBOL_BASE = 0x10000  # base token id i is the character chr(SYMBOL_BASE + i) for the trainer
POOL_ATTEMPTS = 4  # extend mode: trainings before settling for fewer new tokens
MIN_NEW_VOCAB = 256 + 100  # replace mode: bytes plus a few merges
WORD_BATCH = 1000  # words per line fed to the trainer


@dataclass
class ByteLevelBase:
    """A parsed byte-level `tokenizer.json` used as the base of training."""

    path: Path
    spec: dict[str, Any]
    vocab: dict[str, int]  # the BPE model's vocabulary
    merges: list[tuple[str, str]]
    added: list[dict[str, Any]]  # added_tokens entries, by id
    _backend: Any = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """Largest id + 1 (the embedding rows the vocabulary needs)."""
        return max([*self.vocab.values(), *(a["id"] for a in self.added)]) + 1

    def backend(self, spec: dict[str, Any] | None = None) -> Any:
        """A `tokenizers.Tokenizer` of `spec` (default: the base, built once) that encodes special-token
        text as text."""
        if spec is None and self._backend is not None:
            return self._backend
        tok = hf_backend(self.path, spec if spec is not None else self.spec)
        if spec is None:
            self._backend = tok
        return tok

    def with_model(self, **model_fields: Any) -> dict[str, Any]:
        """A copy of the base spec with some fields of its model replaced (the rest is shared, not copied)."""
        return {**self.spec, "model": {**self.spec["model"], **model_fields}}


def _merge_pairs(raw: list[Any]) -> list[tuple[str, str]]:
    """Merges as pairs: tokenizer.json stores ["a", "b"] (tokenizers >= 0.20) or "a b" (older files)."""
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in raw]  # type: ignore[misc]


def byte_level_base(base_model: str | Path | None) -> ByteLevelBase | None:
    """The base's byte-level `tokenizer.json` if `base_model` names one (file or directory), else None.

    A `tokenizer.json` that is not byte-level BPE, and a tekken file, are refused (one line each).
    """
    if not base_model:
        return None
    path = resolve_tokenizer_file(base_model)
    if path.suffix != ".json":
        return None
    spec = read_json_object(path, "give a byte-level tokenizer.json or a SentencePiece .model")
    if is_tekken(spec):
        raise tekken_error(path)
    require_tokenizer_json(spec, path)
    if not is_byte_level(spec):
        pre = (spec.get("pre_tokenizer") or {}).get("type")
        raise VikhrError(
            f"--base-model {path}: pre-tokenizer {pre!r} is not byte-level BPE; give a byte-level "
            "tokenizer.json (Llama-3, Qwen2.5, an imported tekken) or, for a SentencePiece tokenizer, "
            "its .model"
        )
    model = spec["model"]
    added = sorted(spec.get("added_tokens", []), key=lambda a: a["id"])
    base = ByteLevelBase(path, spec, dict(model["vocab"]), _merge_pairs(model["merges"]), added)
    loaded = base.backend()
    for a in added:
        # tokenizers gives an added token outside the model's vocabulary the next id after the
        # vocabulary's size, whatever the file says: in a vocabulary with gaps that is another id.
        if (got := loaded.token_to_id(a["content"])) != a["id"]:
            raise VikhrError(
                f"--base-model {path}: added token {a['content']!r} is written with id {a['id']} but "
                f"tokenizers loads it as id {got} (its vocabulary has {len(base.vocab)} entries with ids up "
                f"to {max(base.vocab.values())}); list the added tokens in the model's vocab at their ids"
            )
    missing = [b for b in range(256) if bytes_piece(bytes([b])) not in base.vocab]
    if missing:
        raise VikhrError(
            f"{path}: the vocabulary lacks byte tokens {missing[:5]} (not a full byte-level BPE)"
        )
    return base


# ---------------------------------------------------------------- extend: merges on the base segmentation


def count_words(tok: Any, text_file: Path) -> Counter[str]:
    """Pre-tokenized words of `text_file` (the base's normalizer and pre-tokenizer) with their counts."""
    counts: Counter[str] = Counter()
    normalizer, pre = tok.normalizer, tok.pre_tokenizer
    for line in sample_lines(text_file):
        if normalizer is not None:
            line = normalizer.normalize_str(line)
        counts.update(w for w, _ in pre.pre_tokenize_str(line))
    return counts


def base_segmentations(tok: Any, counts: Counter[str]) -> dict[str, list[int]]:
    """Base token ids of every word the base splits into two or more tokens (only those can merge)."""
    segs = {}
    for word in sorted(counts):
        ids = [t.id for t in tok.model.tokenize(word)]
        if len(ids) > 1:
            segs[word] = ids
    return segs


def _symbol_lines(segs: dict[str, list[int]], counts: Counter[str]) -> Iterator[str]:
    """Each word as its base-token symbols, repeated by its count, WORD_BATCH words a line."""
    for word, ids in segs.items():
        symbols = "".join(chr(SYMBOL_BASE + i) for i in ids)
        left = counts[word]
        while left > 0:
            n = min(left, WORD_BATCH)
            left -= n
            yield " ".join([symbols] * n)


def learn_merges(
    segs: dict[str, list[int]],
    counts: Counter[str],
    id_to_piece: dict[int, str],
    pool: int,
    min_frequency: int,
) -> list[tuple[str, str]]:
    """Up to `pool` merges BpeTrainer learns on the base segmentation, as pairs of byte-level pieces."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    alphabet = {i for ids in segs.values() for i in ids}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + pool, min_frequency=min_frequency, show_progress=False
    )
    tok.train_from_iterator(_symbol_lines(segs, counts), trainer)

    def piece(symbols: str) -> str:
        return "".join(id_to_piece[ord(c) - SYMBOL_BASE] for c in symbols)

    return [(piece(a), piece(b)) for a, b in _merge_pairs(json.loads(tok.to_str())["model"]["merges"])]


@dataclass
class Extension:
    """New tokens and merges chosen from learned merges, and why the others were left out."""

    tokens: list[str] = field(default_factory=list)
    merges: list[tuple[str, str]] = field(default_factory=list)
    candidates: int = 0
    skipped_without_cyrillic: int = 0
    skipped_unreachable: int = 0
    merges_to_known_tokens: int = 0  # another way to build a token already in the vocabulary


def select_merges(candidates: list[tuple[str, str]], base: ByteLevelBase, num_new: int) -> Extension:
    """Learned merges, in order, that keep text without Cyrillic on the base ids (module doc)."""
    ext = Extension(candidates=len(candidates))
    known = set(base.vocab)
    taken = set(base.merges)
    for left, right in candidates:
        if (left, right) in taken:
            continue
        merged = left + right
        data = piece_bytes(merged)
        if data is None or not has_cyrillic_bytes(data):
            ext.skipped_without_cyrillic += 1
            continue
        if left not in known or right not in known:
            ext.skipped_unreachable += 1
            continue
        if merged in known:
            ext.merges_to_known_tokens += 1
        elif len(ext.tokens) >= num_new:
            break
        else:
            ext.tokens.append(merged)
            known.add(merged)
        ext.merges.append((left, right))
        taken.add((left, right))
    return ext


def extend_from_corpus(base: ByteLevelBase, text_file: Path, num_new: int, s: TrainSettings) -> Extension:
    """Learn merges on the base segmentation of `text_file` and keep `num_new` new tokens' worth.

    Learned merges without Cyrillic (Latin words and punctuation in Russian lines) are left out;
    when too few remain, the trainer runs again with a larger pool.
    """
    tok = base.backend()
    counts = count_words(tok, text_file)
    segs = base_segmentations(tok, counts)
    id_to_piece = {i: p for p, i in base.vocab.items()}
    pool = int(num_new * 1.2) + 200
    best = Extension()
    for _ in range(POOL_ATTEMPTS):
        candidates = learn_merges(segs, counts, id_to_piece, pool, s.min_frequency)
        best = select_merges(candidates, base, num_new)
        if len(best.tokens) >= num_new or len(candidates) < pool:  # done, or the corpus has no more pairs
            break
        usable = max(len(best.tokens) / max(len(candidates), 1), 0.05)
        pool = len(candidates) + int((num_new - len(best.tokens)) / usable) + 500
    return best


def extended_spec(base: ByteLevelBase, ext: Extension) -> dict[str, Any]:
    """The base `tokenizer.json` with the new tokens after the largest base id and the merges appended."""
    first = base.size
    vocab = {**base.vocab, **{piece: first + k for k, piece in enumerate(ext.tokens)}}
    vocab = _with_added_tokens(vocab, base.added)
    return base.with_model(vocab=vocab, merges=[list(m) for m in [*base.merges, *ext.merges]])


def _with_added_tokens(vocab: dict[str, int], added: list[dict[str, Any]]) -> dict[str, int]:
    """`vocab` with the added tokens at their ids, sorted by id.

    `tokenizers` ignores the ids written in "added_tokens" when it loads a file: an added token gets
    its id from the model's vocabulary if it is there, else the next id after the model's vocabulary
    size. Vocabulary ids after the added tokens (Llama-3, Qwen2.5 layout extended), before them at
    an offset (tekken's layout) or gaps in a base's ids would shift them, so the model's vocabulary
    holds them too, as transformers' tekken converter does. No merge produces them, so encoding is
    unchanged. A base's gaps stay unused ids.
    """
    merged = {**vocab, **{a["content"]: a["id"] for a in added}}
    if len(set(merged.values())) != len(merged):
        raise VikhrError("two tokens of the new vocabulary share an id; please report this")
    return dict(sorted(merged.items(), key=lambda kv: kv[1]))


# ---------------------------------------------------------------- replace: a new byte-level BPE


def _trainer_tokenizer(base: ByteLevelBase) -> Any:
    """An empty BPE tokenizer with the base's normalizer and pre-tokenizer (what BpeTrainer splits by)."""
    spec = base.with_model(vocab={}, merges=[])
    spec["added_tokens"], spec["post_processor"] = [], None
    return base.backend(spec)


def _special_layout(base: ByteLevelBase, vocab_len: int) -> tuple[list[dict[str, Any]], int]:
    """The base's added tokens renumbered for a new vocabulary of `vocab_len`; returns (added, offset).

    Those before the base's first vocabulary id keep their ids and shift the vocabulary by `offset`;
    the others follow the vocabulary in the base's order (module doc).
    """
    added_ids = {a["id"] for a in base.added}
    first_vocab_id = min((i for i in base.vocab.values() if i not in added_ids), default=0)
    leading = [a for a in base.added if a["id"] < first_vocab_id]
    trailing = [a for a in base.added if a["id"] >= first_vocab_id]
    out = [dict(a) for a in leading]
    offset = max((a["id"] for a in leading), default=-1) + 1
    for k, a in enumerate(trailing):
        out.append({**a, "id": offset + vocab_len + k})
    return out, offset


def _renumber_post_processor(proc: dict[str, Any] | None, ids: dict[str, int]) -> None:
    """Set the special-token ids a post-processor names (BOS templates, cls/sep) to `ids` (in place)."""
    if not proc:
        return
    for part in proc.get("processors", []):
        _renumber_post_processor(part, ids)
    for special in (proc.get("special_tokens") or {}).values():
        special["ids"] = [ids[t] for t in special["tokens"]]
    for key in ("cls", "sep"):
        if isinstance(proc.get(key), list):
            proc[key] = [proc[key][0], ids[proc[key][0]]]


def replaced_spec(base: ByteLevelBase, text_file: Path, vocab_size: int, s: TrainSettings) -> dict[str, Any]:
    """A new byte-level BPE of `vocab_size` tokens (added tokens included) in the base's layout."""
    from tokenizers import pre_tokenizers, trainers

    target = vocab_size - len(base.added)
    tok = _trainer_tokenizer(base)
    trainer = trainers.BpeTrainer(
        vocab_size=target,
        min_frequency=s.min_frequency,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(read_break_lines(text_file), trainer)
    trained = json.loads(tok.to_str())["model"]
    if len(trained["vocab"]) < target:
        raise VikhrError(
            f"the corpora yield only {len(trained['vocab'])} byte-level BPE tokens, fewer than the "
            f"{target} asked for (--vocab-size {vocab_size} minus {len(base.added)} added tokens); add text "
            "or ask for a smaller --vocab-size"
        )
    added, offset = _special_layout(base, len(trained["vocab"]))
    spec = base.with_model(
        vocab=_with_added_tokens({p: i + offset for p, i in trained["vocab"].items()}, added),
        merges=[list(m) for m in _merge_pairs(trained["merges"])],
    )
    spec["added_tokens"] = added
    spec["post_processor"] = copy.deepcopy(base.spec.get("post_processor"))
    _renumber_post_processor(spec["post_processor"], {a["content"]: a["id"] for a in added})
    return spec


def _check_settings(base: ByteLevelBase, s: TrainSettings) -> int:
    """How many tokens to add (extend) or the total size (replace); VikhrError for impossible sizes."""
    if s.mode == "replace":
        if s.vocab_size < len(base.added) + MIN_NEW_VOCAB:
            raise VikhrError(
                f"--vocab-size {s.vocab_size} is too small: the 256 byte tokens, {len(base.added)} added "
                f"tokens of {base.path} and some merges need at least {len(base.added) + MIN_NEW_VOCAB}"
            )
        return s.vocab_size
    num_new = s.new_tokens if s.new_tokens is not None else s.vocab_size - base.size
    if num_new <= 0:
        unset = next(f.default for f in fields(s) if f.name == "vocab_size")
        default = " (the default)" if s.vocab_size == unset else ""
        what = (
            f"--new-tokens {s.new_tokens}"
            if s.new_tokens is not None
            else f"--vocab-size {s.vocab_size}{default}"
        )
        raise VikhrError(
            f"{what} adds no tokens to {base.path} ({base.size} ids); in extend mode ask for a "
            f"--vocab-size above {base.size} or a positive --new-tokens"
        )
    return num_new


# ---------------------------------------------------------------- checks, config, manifest


def _heldout_lines(paths: list[Path], s: TrainSettings) -> tuple[list[str], str]:
    """Held-out lines of every corpus for the checks, and "heldout"; training lines ("train") when
    no corpus has a held-out part (--heldout-percent 0, a tiny corpus): the checks hold on any text."""
    for split in ("heldout", "train"):
        lines: list[str] = []
        for path in paths:
            lines += first_lines(path, s.text_key, split, s.heldout_percent, s.verify_lines_per_file)
        if lines:
            return lines, split
    return [], "heldout"


def check_base_ids_kept(base: ByteLevelBase, new_tok: Any, lines: list[str], where: str) -> int:
    """VikhrError unless every base id is the same token in `new_tok` and `new_tok` gives the base ids on
    each line without Cyrillic; returns the lines checked."""
    from vikhr.assets import EN_SAMPLE

    base_tok = base.backend()
    for i in range(base.size):
        if new_tok.id_to_token(i) != base_tok.id_to_token(i):
            raise VikhrError(
                f"{where}: id {i} is {new_tok.id_to_token(i)!r} in the extended tokenizer but "
                f"{base_tok.id_to_token(i)!r} in the base; please report this as a bug"
            )
    latin = [
        ln for ln in [*EDGE_CASES, *lines, *iter_lines(EN_SAMPLE, split="heldout")] if not CYRILLIC.search(ln)
    ]
    expected = base_tok.encode_batch(latin, add_special_tokens=False)
    got = new_tok.encode_batch(latin, add_special_tokens=False)
    for line, a, b in zip(latin, expected, got, strict=True):
        if a.ids != b.ids:
            raise VikhrError(
                f"{where}: the extended tokenizer encodes {line[:60]!r} differently from the base; "
                "please report this as a bug"
            )
    return len(latin)


def _check_added_token_ids(tok: Any, spec: dict[str, Any]) -> None:
    """The loaded tokenizer gives every added token the id the spec says (see `_with_added_tokens`)."""
    for a in spec.get("added_tokens", []):
        if tok.token_to_id(a["content"]) != a["id"]:
            raise VikhrError(
                f"added token {a['content']!r} would load with id {tok.token_to_id(a['content'])} instead of "
                f"{a['id']}; please report this as a bug"
            )


def _token_counts(base: ByteLevelBase, new_tok: Any, lines: list[str]) -> dict[str, int]:
    """Characters and tokens (base and new) of the held-out lines with Cyrillic letters."""
    russian = [ln for ln in lines if CYRILLIC.search(ln)]
    return {
        "lines": len(russian),
        "chars": sum(map(len, russian)),
        "base_tokens": sum(
            len(e.ids) for e in base.backend().encode_batch(russian, add_special_tokens=False)
        ),
        "tokens": sum(len(e.ids) for e in new_tok.encode_batch(russian, add_special_tokens=False)),
    }


def _write_config(base: ByteLevelBase, spec: dict[str, Any], work: Path) -> None:
    """tokenizer_config.json: the base's (added-token ids updated) or a new one (BOS/EOS by load's
    rule); the base's chat_template.jinja, if it has one."""
    base_cfg = base.path.with_name("tokenizer_config.json")
    added = tokenizer_config(spec, None, None, None)["added_tokens_decoder"]
    if base_cfg.is_file():
        cfg = read_json_object(base_cfg, "fix or remove it")
        cfg["added_tokens_decoder"] = added
    else:
        tok = load(base.path)
        bos, eos = (None if i is None else tok.id_to_piece(i) for i in (tok.bos_id, tok.eos_id))
        cfg = tokenizer_config(spec, bos, eos, (base.spec.get("model") or {}).get("unk_token"))
    path = work / "tokenizer_config.json"
    write_text(path, json.dumps(cfg, ensure_ascii=False, indent=2))
    template = base.path.with_name(CHAT_TEMPLATE_FILE)
    if template.is_file():
        shutil.copy2(template, work / template.name)


def _train_spec(
    base: ByteLevelBase, text_file: Path, size: int, s: TrainSettings
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The trained `tokenizer.json` contents and, in extend mode, the extension's statistics."""
    if s.mode == "replace":
        return replaced_spec(base, text_file, size, s), None
    ext = extend_from_corpus(base, text_file, size, s)
    if len(ext.tokens) < size:
        print(
            f"warning: the corpus yields only {len(ext.tokens)} new Cyrillic tokens instead of {size} (add "
            "Russian text or ask for fewer)"
        )
    stats = {k: v for k, v in asdict(ext).items() if k not in ("tokens", "merges")}
    stats |= {
        "base_vocab_size": base.size,
        "added_tokens": len(ext.tokens),
        "added_merges": len(ext.merges),
        "new_token_ids": [base.size, base.size + len(ext.tokens) - 1] if ext.tokens else None,
    }
    return extended_spec(base, ext), stats


def _settings_used(s: TrainSettings) -> dict[str, Any]:
    """The manifest's settings: all but SentencePiece's, which a byte-level BPE has not."""
    sentencepiece = {f.name for f in fields(s) if "sentencepiece_flag" in f.metadata}
    return {k: v for k, v in asdict(s).items() if k not in sentencepiece}


def train_byte_level(
    paths: list[Path], budgets: list[int | None], out_dir: Path, base: ByteLevelBase, s: TrainSettings
) -> dict[str, Any]:
    """Train a byte-level BPE on `paths` from `base` (see `byte_level_base`) into `out_dir`; returns the
    manifest."""
    import tokenizers

    size = _check_settings(base, s)
    if s.mode == "extend":  # the total asked for (base + --new-tokens), as SentencePiece's extend records
        s = replace(s, vocab_size=base.size + size)
    with output_dir(out_dir) as work:
        text_file = work / "train.txt"
        sample_stats = write_training_sample(
            paths,
            budgets,
            text_file,
            s.text_key,
            s.heldout_percent,
            only_cyrillic=s.mode == "extend",
            keep_breaks=s.mode == "replace",  # a new vocabulary learns newline runs (extend: Cyrillic only)
        )
        spec, extend_stats = _train_spec(base, text_file, size, s)
        text_file.unlink()
        new_tok = base.backend(spec)
        _check_added_token_ids(new_tok, spec)
        tok_json = work / "tokenizer.json"
        write_text(tok_json, new_tok.to_str(pretty=False))
        _write_config(base, spec, work)
        heldout, split = _heldout_lines(paths, s)
        checks: dict[str, Any] = {f"{split}_cyrillic": _token_counts(base, new_tok, heldout)}
        if s.mode == "extend":
            checks["base_ids_kept"] = {
                "lines_without_cyrillic_checked": check_base_ids_kept(base, new_tok, heldout, str(out_dir)),
                "mismatches": 0,
            }
        loaded = load(tok_json)
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "mode": s.mode,
            "kind": "byte-level-bpe",
            "vocab_size": loaded.vocab_size,
            "pad_to_multiple": s.pad_to_multiple,
            "padded_vocab_size": -(-loaded.vocab_size // s.pad_to_multiple) * s.pad_to_multiple,
            "special_tokens": {
                loaded.id_to_piece(i): i for i in (loaded.bos_id, loaded.eos_id) if i is not None
            },
            "num_added_tokens": len(spec.get("added_tokens", [])),
            "base_model": {
                "path": str(base.path),
                "sha256": corpus_sha256(base.path),
                "vocab_size": base.size,
            },
            "corpora": manifest_corpora(paths, budgets, sample_stats),
            "settings": _settings_used(s),
            "extend": extend_stats,
            "checks": checks,
            "files": {p.name: corpus_sha256(p) for p in sorted(work.iterdir()) if p.name != "manifest.json"},
            "versions": {"tokenizers": tokenizers.__version__},
        }
        write_text(work / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2))
    return manifest
