"""Loading a tokenizer: the one way every stage opens a SentencePiece `.model` or an HF `tokenizer.json`.

Which file: a file path is loaded as it is (`.json` → HF `tokenizers`, anything else → SentencePiece).
A directory is searched for `TOKENIZER_FILES` in order: `tokenizer.model` first, then
`tokenizer.json` (an HF export written by vikhr holds both, and the `.model` is the original) —
unless its `tokenizer.json` holds ids past the end of its `tokenizer.model` (tokens added to a
SentencePiece base, such as a chat model's `<|im_start|>`/`<|im_end|>`), or its `tokenizer.model` is a
tiktoken BPE file (Llama-3's original/tokenizer.model): that `tokenizer.json` is then the
directory's tokenizer, the one transformers loads.

A Mistral `tekken.json` is refused with a pointer to `vikhr tokenizer import-tekken`, which
converts it to a `tokenizer.json` (vikhr.tokenizer.tekken).

BOS/EOS, one rule:

* `.model`: the model's own `bos_id` / `eos_id` (SentencePiece's -1, "none", becomes None);
* `tokenizer.json`: the `bos_token` / `eos_token` of the `tokenizer_config.json` beside it, when that
  file names one (an explicit null means "none"); otherwise the first well-known token present in
  the vocabulary: EOS `</s>`, `<|end_of_text|>`, `<|endoftext|>`, `<|im_end|>`; BOS `<s>`,
  `<|begin_of_text|>`.

`Tokenizer.encode` adds no BOS/EOS and never turns special-token strings typed in the text ("</s>")
into special ids; `decode` drops special tokens. Importing this module imports neither
sentencepiece, tokenizers nor transformers: `load` does, when called.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vikhr.assets import bundled
from vikhr.errors import VikhrError, read_json_object
from vikhr.file_stamps import StampedCache

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")  # precedence when a directory is given
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.47 saves a tokenizer's template
EOS_CANDIDATES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>")
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>")
_GIVE = "give a SentencePiece .model, a tokenizer.json or a directory holding one"


def recorded_path(path: str | os.PathLike[str]) -> Path:
    """The absolute path under which a tokenizer file is recorded for a later stage: its directory
    resolved, its own name kept. A file of an HF hub snapshot is a link to a blob named by its hash:
    the blob's path would lose the name (which says what the file is) and the files beside it
    (tokenizer_config.json, the chat template, the stop ids)."""
    p = Path(path)
    return p.parent.resolve() / p.name


def carry_chat_template(src_dir: Path | None, out_dir: Path) -> None:
    """The chat template of the tokenizer in `src_dir` into the one written to `out_dir` from a
    SentencePiece .model (whose export has none): `src_dir`'s chat_template.jinja, and its
    tokenizer_config.json's `chat_template` into `out_dir`'s. For a tokenizer that keeps the source's
    special pieces at their ids (extend, prune-extend, that tokenizer itself), so the template renders."""
    import shutil

    from vikhr.atomic import write_text

    if src_dir is None:
        return
    if (src_dir / CHAT_TEMPLATE_FILE).is_file():
        shutil.copy2(src_dir / CHAT_TEMPLATE_FILE, out_dir / CHAT_TEMPLATE_FILE)
    src_cfg = src_dir / "tokenizer_config.json"
    template = (
        read_json_object(src_cfg, "fix or remove it").get("chat_template") if src_cfg.is_file() else None
    )
    if template is not None:
        cfg = read_json_object(out_dir / "tokenizer_config.json")
        cfg["chat_template"] = template
        write_text(out_dir / "tokenizer_config.json", json.dumps(cfg, ensure_ascii=False, indent=2))


def require_tokenizer_json(spec: Any, path: Path) -> None:
    """VikhrError unless parsed JSON `spec` has the "model" section of every tokenizer.json: the
    tokenizer_config.json, config.json or manifest.json beside one is easily given in its place."""
    if not isinstance(spec, dict):
        raise VikhrError(f"{path} is not an HF tokenizer.json (not a JSON object); {_GIVE}")
    if not isinstance(spec.get("model"), dict):
        raise VikhrError(f'{path} is not an HF tokenizer.json (it has no "model" section); {_GIVE}')


def resolve_tokenizer_file(path: str | os.PathLike[str]) -> Path:
    """`path` itself if it is a file, else the tokenizer file of the directory `path` (module doc). A
    `vikhr/assets/...` path that names nothing from the current directory is the installed package's
    (vikhr.assets.bundled): the documented commands that name a bundled tokenizer run from any directory."""
    p = Path(bundled(os.fspath(path)))
    if p.is_dir():
        found = [p / name for name in TOKENIZER_FILES if (p / name).is_file()]
        if not found and holds_vocab_and_merges(p):
            raise VikhrError(vocab_and_merges_advice(p))
        if not found:
            raise VikhrError(f"{p} holds neither {' nor '.join(TOKENIZER_FILES)} ({_GIVE})")
        if len(found) == 2 and (is_tiktoken_file(found[0]) or _adds_tokens(found[1], found[0])):
            return found[1]
        return found[0]
    if not p.exists():
        raise VikhrError(f"tokenizer not found: {p} ({_GIVE})")
    if not p.is_file():
        raise VikhrError(f"tokenizer is not a regular file: {p} ({_GIVE})")
    if p.name in VOCAB_AND_MERGES and holds_vocab_and_merges(p.parent):
        if (p.parent / "tokenizer.json").is_file():
            raise VikhrError(f"{p} is half of a GPT-2-style BPE: give the tokenizer.json beside it")
        raise VikhrError(vocab_and_merges_advice(p.parent))
    return p


VOCAB_AND_MERGES = ("vocab.json", "merges.txt")  # a GPT-2-style BPE as transformers' slow tokenizers save it


def holds_vocab_and_merges(directory: Path) -> bool:
    return all((directory / name).is_file() for name in VOCAB_AND_MERGES)


def vocab_and_merges_advice(directory: Path) -> str:
    """Why a directory of a GPT-2-style vocab.json and merges.txt without a tokenizer.json is not
    loaded, and the command that writes its tokenizer.json: the two files do not say how text is cut
    into words before the merges nor which special tokens frame it (GPT-2, RoBERTa and Qwen2 differ),
    which the tokenizer class of the model they come from knows, so vikhr does not guess it."""
    named_dir = directory if directory.name not in ("", "..") else directory.resolve()  # "." has no name
    out = named_dir.parent / f"{named_dir.name}-hf"
    return (
        f"{directory} holds a GPT-2-style vocab.json and merges.txt but no tokenizer.json: they do not say "
        "how text is cut into words before the merges nor which special tokens frame it (GPT-2, RoBERTa "
        f"and Qwen2 differ), so vikhr does not guess; write a tokenizer.json "
        f"{tokenizer_json_command(directory, out)}, then give {out}"
    )


def tokenizer_json_command(directory: Path, out: Path) -> str:
    """How to write the tokenizer.json of `directory`'s vocab.json and merges.txt into `out`: with
    transformers, and which tokenizer class where the directory does not name one that reads them."""
    import shlex

    # AutoTokenizer serves where the directory names a tokenizer class (tokenizer_config.json), or a
    # model type whose class reads these two files (Qwen2's, GPT-2's). Mistral's and Llama's read a
    # tokenizer.model: AutoTokenizer then fails on these files (transformers 4 and 5 alike), and the
    # user names the class (GPT-2's files in the example).
    model_type = _json_key(directory / "config.json", "model_type")
    reads = _auto_class_reads_vocab_and_merges(model_type) if model_type is not None else None
    named = _json_key(directory / "tokenizer_config.json", "tokenizer_class") is not None or reads is True
    cls = "AutoTokenizer" if named else "GPT2TokenizerFast"
    code = (
        f"from transformers import {cls} as T; "
        f"T.from_pretrained({json.dumps(str(directory))}).save_pretrained({json.dumps(str(out))})"
    )
    unread = ""
    if reads is False:
        unread = f": AutoTokenizer's for model type {model_type} reads no vocab.json and merges.txt"
    elif model_type is not None:
        unread = f": model type {model_type} is unknown to the installed transformers"
    which = "" if named else f" (for GPT-2's files; for another model's, its tokenizer class{unread})"
    return f"with transformers{which}: python -c {shlex.quote(code)}"


def _json_key(path: Path, key: str) -> str | None:
    """The non-empty text `key` of JSON file `path`; None where the file or the key is missing."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _auto_class_reads_vocab_and_merges(model_type: str) -> bool | None:
    """Whether the tokenizer class transformers' AutoTokenizer takes for `model_type` reads a
    vocab.json and merges.txt; None where the installed transformers does not know the type."""
    try:
        import transformers
        from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
    except ImportError:
        return None
    if model_type not in TOKENIZER_MAPPING_NAMES:
        return None
    names = TOKENIZER_MAPPING_NAMES[model_type]
    # transformers 4 maps a type to (slow class, fast class), 5 to one class (None: none of its own).
    for name in names if isinstance(names, tuple) else (names,):
        try:
            files = getattr(getattr(transformers, name), "vocab_files_names", {}) if name else {}
        except (ImportError, AttributeError, RuntimeError):  # a class needing a package not installed
            continue
        if "merges_file" in files:
            return True
    return False


def json_over_model_reason(directory: Path) -> str:
    """Why `resolve_tokenizer_file` chose the directory's tokenizer.json over its tokenizer.model."""
    if is_tiktoken_file(directory / "tokenizer.model"):
        return "its tokenizer.model is a tiktoken BPE file, no SentencePiece model"
    return "it has tokens its tokenizer.model lacks"


def is_tiktoken_file(model_path: Path) -> bool:
    """Whether the file is a tiktoken BPE file (Llama-3's original/tokenizer.model, often copied beside
    its tokenizer.json), which is no SentencePiece model: a directory's tokenizer is then the json."""
    from vikhr.tokenizer.hf_export import is_tiktoken

    try:
        return is_tiktoken(_head(model_path))
    except OSError:  # unreadable: loading it says why
        return False


def _adds_tokens(json_path: Path, model_path: Path) -> bool:
    """Whether the `tokenizer.json` holds ids past the end of the `.model` beside it (tokens added to
    it); False where either cannot be read (the `.model` is then loaded, and its load says why).
    Cached by the files' stamps: stages resolve one directory several times, and a 128k-token
    tokenizer.json takes a tenth of a second to parse."""
    json_path, model_path = json_path.resolve(), model_path.resolve()
    return _ADDS_TOKENS.get(
        (json_path, model_path), (json_path, model_path), lambda: _adds_tokens_of(json_path, model_path)
    )


_ADDS_TOKENS: StampedCache[bool] = StampedCache(maxsize=16)


def _adds_tokens_of(json_path: Path, model_path: Path) -> bool:
    import sentencepiece as spm

    try:
        size = spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()
        spec = json.loads(json_path.read_text(encoding="utf-8"))
    except (RuntimeError, OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(spec, dict):
        return False
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    vocab = model.get("vocab")
    if isinstance(vocab, dict):  # BPE, WordPiece: piece -> id
        ids = list(vocab.values())
    else:  # Unigram: [piece, score] pairs in id order
        ids = list(range(len(vocab))) if isinstance(vocab, list) else []
    ids += [a.get("id") for a in spec.get("added_tokens") or [] if isinstance(a, dict)]
    return max((i for i in ids if type(i) is int), default=-1) >= size


@dataclass(frozen=True)
class Tokenizer:
    """A loaded tokenizer (see the module doc for the file precedence and the BOS/EOS rule)."""

    path: Path  # the file actually loaded
    kind: str  # "sentencepiece" | "huggingface"
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    backend: Any = field(repr=False, compare=False)  # SentencePieceProcessor | tokenizers.Tokenizer
    # Byte-level BPE (GPT-2 style pieces: "Ġ" is a space; vikhr.tokenizer.byte_level).
    byte_level: bool = False

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS/EOS added, special-token strings encoded as text."""
        if self.kind == "sentencepiece":
            return list(self.backend.encode(text))
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode` of `text` and each token's (start, end) character offsets in it (empty for a
        token that holds no character of the text, such as SentencePiece's dummy-prefix "▁")."""
        if self.kind != "sentencepiece":
            encoding = self.backend.encode(text, add_special_tokens=False)
            return list(encoding.ids), list(encoding.offsets)
        return self._sentencepiece_offsets(text)

    def _sentencepiece_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """sentencepiece's pieces with their UTF-8 byte offsets turned into character offsets. A
        character spelled in byte pieces is given to the last of them (the others are empty): each
        one holds it here, as tokenizers reports them."""
        data = text.encode("utf-8")
        pieces = self.backend.encode(text, return_type="proto").pieces
        ids, spans = [], []
        chars_before = bytes_before = 0  # a non-empty span is whole characters: decode piece by piece
        for p in pieces:
            if p.begin > bytes_before:
                chars_before += len(data[bytes_before : p.begin].decode("utf-8"))
                bytes_before = p.begin
            start = chars_before
            if p.end > bytes_before:
                chars_before += len(data[bytes_before : p.end].decode("utf-8"))
                bytes_before = p.end
            ids.append(p.id)
            spans.append((start, chars_before))
        is_byte = self.backend.is_byte
        for i in range(len(spans) - 2, -1, -1):
            empty, next_start = spans[i][0] == spans[i][1], spans[i + 1][0]
            if empty and next_start == spans[i][0] and is_byte(ids[i]) and is_byte(ids[i + 1]):
                spans[i] = spans[i + 1]
        return ids, spans

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text (in one native call)."""
        if self.kind == "sentencepiece":
            return [list(ids) for ids in self.backend.encode(texts)]
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def pieces(self, text: str) -> list[str]:
        """The vocabulary pieces `encode` gives for `text`."""
        if self.kind == "sentencepiece":
            return list(self.backend.encode(text, out_type=str))
        return list(self.backend.encode(text, add_special_tokens=False).tokens)

    def readable_pieces(self, text: str) -> list[str]:
        """`pieces` for people: byte-level pieces as text ("▁мир" for "ĠÐ¼Ð¸ÑĢ", stray bytes as <0xD0>)."""
        pieces = self.pieces(text)
        if not self.byte_level:
            return pieces
        from vikhr.tokenizer.byte_level import readable_piece

        return [readable_piece(p) for p in pieces]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; special tokens (BOS, EOS, …) are dropped. An id outside the vocabulary
        (ids written with another tokenizer) is an error, not a crash or an empty string."""
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        if self.kind == "sentencepiece":
            return str(self.backend.decode(ids))
        return str(self.backend.decode(ids, skip_special_tokens=True))

    def _check_ids(self, ids: list[int]) -> None:
        """VikhrError for an id outside the vocabulary (ids written with another tokenizer): the
        backends crash (sentencepiece) or give an empty string (tokenizers) instead."""
        outside = [i for i in ids if not 0 <= i < self.vocab_size]
        if outside:
            raise VikhrError(
                f"token id {max(outside, key=abs)} is outside the vocabulary of {self.path} (size "
                f"{self.vocab_size}): the ids were written with another tokenizer (give that one)"
            )

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of id `i` (e.g. "▁мир", "<0x0A>", "</s>")."""
        self._check_ids([i])
        if self.kind == "sentencepiece":
            return str(self.backend.id_to_piece(i))
        piece = self.backend.id_to_token(i)
        return "" if piece is None else str(piece)

    def first_other_piece(self, other: Tokenizer) -> int | None:
        """The first id whose piece differs between this tokenizer and `other` (an id only one of
        them has counts); None where they are the same pieces at the same ids, as a `.model` and its
        exported `tokenizer.json` are."""
        for i in range(max(self.vocab_size, other.vocab_size)):
            mine = self.id_to_piece(i) if i < self.vocab_size else None
            if mine != (other.id_to_piece(i) if i < other.vocab_size else None):
                return i
        return None

    def piece_to_id(self, piece: str) -> int | None:
        """The id of a whole vocabulary piece, or None if `piece` is not one."""
        if self.kind == "sentencepiece":
            i = self.backend.piece_to_id(piece)
            return int(i) if self.backend.id_to_piece(i) == piece else None
        i = self.backend.token_to_id(piece)
        return None if i is None else int(i)

    def to_transformers(self) -> Any:
        """A transformers `PreTrainedTokenizerFast` encoding like this tokenizer (adds BOS like the original).

        A `.model` is converted with `vikhr.tokenizer.hf_export` (SentencePiece BPE only).
        """
        from transformers import PreTrainedTokenizerFast

        if self.kind == "sentencepiece":
            from vikhr.tokenizer.hf_export import build_hf_tokenizer

            fast = build_hf_tokenizer(self.path)
        else:
            from tokenizers import Tokenizer as HFTokenizer

            fast = HFTokenizer.from_str(self.backend.to_str())  # a copy: the wrapper's flags stay as set
            fast.encode_special_tokens = False
        specials = {
            f"{name}_token": self.id_to_piece(i)
            for name, i in (("bos", self.bos_id), ("eos", self.eos_id))
            if i is not None
        }
        return PreTrainedTokenizerFast(
            tokenizer_object=fast, clean_up_tokenization_spaces=False, **specials, **_config_extras(self)
        )


def _config_extras(tok: Tokenizer) -> dict[str, Any]:
    """unk_token and model_max_length for `to_transformers`, from the tokenizer or its config file."""
    out: dict[str, Any] = {}
    if tok.kind == "sentencepiece":
        unk = tok.backend.unk_id()
        if unk >= 0:
            out["unk_token"] = tok.id_to_piece(unk)
        return out
    cfg = _tokenizer_config(tok.path) or {}
    unk = token_name(cfg.get("unk_token"))
    if unk is not None and tok.piece_to_id(unk) is not None:
        out["unk_token"] = unk
    if isinstance(cfg.get("model_max_length"), int):
        out["model_max_length"] = cfg["model_max_length"]
    return out


def token_name(value: Any) -> str | None:
    """A token in tokenizer_config.json: a string or {"content": str, ...} (None: not a token)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


# The fields of an added token in tokenizer_config.json (`added_tokens_decoder`, a special token's object),
# as transformers writes them.
ADDED_TOKEN_FIELDS = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
# tokenizer_config.json keys that list special tokens; transformers also takes every `*_token` key
# naming a token (pad_token, unk_token, mask_token, a model's own image_token) as a special token.
SPECIAL_TOKEN_LISTS = ("additional_special_tokens", "extra_special_tokens")
# What `map_special_tokens`'s function returns for a token to leave out.
LEAVE_OUT = object()


def map_special_tokens(config: dict[str, Any], fn: Callable[[str, Any], Any]) -> dict[str, Any]:
    """A copy of tokenizer_config.json `config` with each special token passed through `fn(label,
    token)`: every `*_token` key's value, each entry of a `SPECIAL_TOKEN_LISTS` list, and each named
    one of such a mapping (labelled `key.name`); a token `fn` returns `LEAVE_OUT` for is left out (a
    `*_token` key with it). Other keys are kept as they are."""
    mapped: dict[str, Any] = {}
    for key, value in config.items():
        if key.endswith("_token"):
            new = fn(key, value)
            if new is not LEAVE_OUT:
                mapped[key] = new
        elif key in SPECIAL_TOKEN_LISTS and isinstance(value, list):
            mapped[key] = [new for t in value if (new := fn(key, t)) is not LEAVE_OUT]
        elif key in SPECIAL_TOKEN_LISTS and isinstance(value, dict):  # named ones: {"image_token": ...}
            named = ((name, fn(f"{key}.{name}", t)) for name, t in value.items())
            mapped[key] = {name: new for name, new in named if new is not LEAVE_OUT}
        else:
            mapped[key] = value
    return mapped


def as_transformers_loads(config: dict[str, Any]) -> dict[str, Any]:
    """The special tokens of tokenizer_config.json `config` that transformers 5 refuses ("Special token
    mask_token has to be either str or AddedToken"), in the form it loads: a {"content": ...} object
    without `"__type": "AddedToken"` (a hand-made config, an older writer's) becomes one with it and the
    object's flags. Only the keys that change; for writing a config, and (`transformers_overrides`)
    as `from_pretrained`'s arguments when loading one."""

    def typed(_: str, value: Any) -> Any:
        if isinstance(value, dict) and "__type" not in value and isinstance(value.get("content"), str):
            return {"__type": "AddedToken", **{f: value[f] for f in ADDED_TOKEN_FIELDS if f in value}}
        return value

    typed_config = map_special_tokens(config, typed)
    return {key: new for key, new in typed_config.items() if new is not config[key] and new != config[key]}


def transformers_overrides(directory: Path) -> dict[str, Any]:
    """The arguments for transformers' `from_pretrained(directory)` that let it load a tokenizer_config.json
    naming special tokens as plain objects (`as_transformers_loads`), as AddedTokens of their flags."""
    from transformers import PreTrainedTokenizerBase

    config = _tokenizer_config(directory / "tokenizer_config.json") or {}
    return dict(PreTrainedTokenizerBase.convert_added_tokens(as_transformers_loads(config)))


def _tokenizer_config(path: Path) -> dict[str, Any] | None:
    config = path.with_name("tokenizer_config.json")
    if not config.is_file():
        return None
    return read_json_object(config, "fix or remove it")


def hf_special_ids(path: Path, token_to_id: Callable[[str], int | None]) -> tuple[int | None, int | None]:
    """(BOS id, EOS id) of the tokenizer.json at `path` by the module's rule; `token_to_id` answers
    for its vocabulary (the Python `tokenizers` object, or the pre-tokenizer's native one)."""
    cfg = _tokenizer_config(path)
    return _special_id(token_to_id, path, cfg, "bos"), _special_id(token_to_id, path, cfg, "eos")


def pad_id(tok: Tokenizer) -> int | None:
    """The PAD id transformers gives `tok`: a `.model`'s own pad_id (its export's tokenizer_config.json
    names it); a `tokenizer.json`'s the `pad_token` of the tokenizer_config.json beside it, None when
    that names none. VikhrError when the named token is not in the vocabulary."""
    if tok.kind == "sentencepiece":
        i = int(tok.backend.pad_id())
        return i if i >= 0 else None
    name = token_name((_tokenizer_config(tok.path) or {}).get("pad_token"))
    if name is None:
        return None
    i = tok.piece_to_id(name)
    if i is None:
        raise VikhrError(
            f"{tok.path.with_name('tokenizer_config.json')}: pad_token {name!r} is not in {tok.path} "
            "(fix the config or the tokenizer)"
        )
    return i


def _special_id(
    token_to_id: Callable[[str], int | None], path: Path, cfg: dict[str, Any] | None, which: str
) -> int | None:
    """The BOS or EOS id of an HF tokenizer by the module's rule."""
    key = f"{which}_token"
    if cfg is not None and key in cfg:
        name = token_name(cfg[key])
        if name is None:
            return None  # the config says there is none
        i = token_to_id(name)
        if i is None:
            raise VikhrError(
                f"{path.with_name('tokenizer_config.json')}: {key} {name!r} is not in {path} "
                "(fix the config or the tokenizer)"
            )
        return int(i)
    for name in EOS_CANDIDATES if which == "eos" else BOS_CANDIDATES:
        i = token_to_id(name)
        if i is not None:
            return int(i)
    return None


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(1024)


def _sentencepiece(path: Path, model_proto: bytes | None = None) -> Tokenizer:
    import sentencepiece as spm

    try:
        if model_proto is None:
            sp = spm.SentencePieceProcessor(model_file=str(path))
        else:
            sp = spm.SentencePieceProcessor(model_proto=model_proto)
    except (RuntimeError, OSError) as e:
        from vikhr.tokenizer.hf_export import refuse_tiktoken

        with contextlib.suppress(OSError):  # unreadable: the parser's own message below says so
            refuse_tiktoken(path, model_proto[:1024] if model_proto is not None else _head(path))
        raise VikhrError(f"{path} is not a SentencePiece .model ({str(e).splitlines()[0]}); {_GIVE}") from e
    bos, eos = sp.bos_id(), sp.eos_id()
    return Tokenizer(
        path=path,
        kind="sentencepiece",
        vocab_size=sp.get_piece_size(),
        bos_id=bos if bos >= 0 else None,
        eos_id=eos if eos >= 0 else None,
        backend=sp,
    )


def _huggingface(path: Path, spec: dict[str, Any] | None = None) -> Tokenizer:
    tok = hf_backend(path, spec)
    bos_id, eos_id = hf_special_ids(path, tok.token_to_id)
    return Tokenizer(
        path=path,
        kind="huggingface",
        # The largest id + 1: added tokens may leave gaps, and an embedding needs a row for each id.
        vocab_size=max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1,
        bos_id=bos_id,
        eos_id=eos_id,
        backend=tok,
        byte_level=_is_byte_level(tok),
    )


def hf_backend(path: Path, spec: dict[str, Any] | None = None) -> Any:
    """The `tokenizers.Tokenizer` of the file `path` (or of `spec`, read from it), encoding special-token
    text as text; VikhrError in one line for a file it cannot load or that encodes at random."""
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(str(path)) if spec is None else HFTokenizer.from_str(json.dumps(spec))
    except BaseException as e:  # tokenizers raises a bare Exception on malformed files, or panics
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit
        from vikhr.tokenizer.tekken import is_tekken, is_tekken_file, tekken_error

        if is_tekken(spec) if spec is not None else is_tekken_file(path):
            raise tekken_error(path) from None
        reason = str(e).replace("\n", " ")
        raise VikhrError(f"{path} is not an HF tokenizer.json ({reason}); {_GIVE}") from e
    dropout = getattr(tok.model, "dropout", None)
    if dropout:  # BPE-dropout: each encoding of a text draws other merges
        raise VikhrError(
            f"{path}: model dropout {dropout:g} makes every encoding random (BPE-dropout, a training-time "
            'augmentation); set "dropout" to null in the file'
        )
    tok.encode_special_tokens = True  # "</s>" typed in a text is text, as with SentencePiece
    return tok


def _is_byte_level(tok: Any) -> bool:
    from vikhr.tokenizer.byte_level import is_byte_level

    pre = tok.pre_tokenizer
    spec = {
        "model": {"type": type(tok.model).__name__},
        "pre_tokenizer": None if pre is None else json.loads(pre.__getstate__()),
    }
    return is_byte_level(spec)


def load(path: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer at `path`: a `.model`, a `tokenizer.json`, or a directory (see the module doc)."""
    file = resolve_tokenizer_file(path)
    return _huggingface(file) if file.suffix == ".json" else _sentencepiece(file)


def load_without_dummy_prefix(path: str | os.PathLike[str]) -> Tokenizer:
    """Like `load`, but text is encoded as it occurs inside a word: no dummy-prefix space is prepended.

    Vocabulary adaptation encodes a new piece's text ("ение") this way. For a `tokenizer.json`, the
    `Prepend` normaliser (Llama/Mistral layout), Metaspace's prepend and ByteLevel's
    `add_prefix_space` are dropped.
    """
    file = resolve_tokenizer_file(path)
    if file.suffix == ".json":
        try:
            spec = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise VikhrError(f"{file} is not an HF tokenizer.json ({e}); {_GIVE}") from e
        if not isinstance(spec, dict):
            raise VikhrError(f"{file} is not an HF tokenizer.json (not a JSON object); {_GIVE}")
        from vikhr.tokenizer.byte_level import drop_prefix_space

        drop_prefix_space(spec)  # byte-level (GPT-2 style) counterpart of the dummy prefix
        norm = spec.get("normalizer")
        if norm and norm.get("type") == "Sequence":
            norm["normalizers"] = [n for n in norm["normalizers"] if n.get("type") != "Prepend"]
        elif norm and norm.get("type") == "Prepend":
            spec["normalizer"] = None
        pre = spec.get("pre_tokenizer")
        if pre and pre.get("type") == "Metaspace":
            pre["prepend_scheme"] = "never"
        return _huggingface(file, spec)
    from vikhr.tokenizer.hf_export import load_model_proto

    proto = load_model_proto(file)
    proto.normalizer_spec.add_dummy_prefix = False
    return _sentencepiece(file, proto.SerializeToString())
