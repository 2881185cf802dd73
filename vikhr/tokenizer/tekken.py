"""`vikhr tokenizer import-tekken`: a Mistral `tekken.json` as an HF byte-level `tokenizer.json`.

Mistral-NeMo and later Mistral models ship their tokenizer as `tekken.json` (tiktoken-style ranks,
base64 byte strings, special tokens first). The conversion is transformers' own
`MistralConverter(path).converted()`: 1000 special tokens at ids 0-999 (`<unk>` 0, `<s>` 1, `</s>` 2),
then the byte-level vocabulary, `ignore_merges` on. We add a post-processor that prepends `<s>` (as
the model expects and as Mistral's HF releases do) and a `tokenizer_config.json` naming `<s>`/`</s>`.

The result is checked on held-out lines against mistral-common's own `Tekkenizer` (ids without
BOS/EOS must be equal), so a converter change that altered ids would fail the import, not training.
Every other stage (train --base-model, compare, adapt-vocab) then works on the `tokenizer.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from vikhr.atomic import output_dir, write_text
from vikhr.errors import VikhrError, require_file, require_output_dir

MANIFEST_FORMAT = "vikhr-tokenizer/1"
IMPORT_HINT = "run `vikhr tokenizer import-tekken TEKKEN_JSON OUT_DIR` and use OUT_DIR instead"
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
MODEL_MAX_LENGTH = 131072
# Hard cases besides corpus lines: whitespace runs, newlines, digits, emoji, CJK, special-token text.
EDGE_CASES = [
    "",
    " ",
    "   \n\n\t  ",
    "Hello world",
    "  leading and trailing  ",
    "1234567890 3.14159 2025-01-01",
    "emoji 🙂👍🏽 and CJK 中文 日本語",
    "<s>[INST] typed special tokens </s> stay text [/INST]",
    "Привет, мир!\nЁлки-палки, съешь ещё этих мягких французских булок.",
]


def is_tekken(spec: Any) -> bool:
    """True for a parsed Mistral tekken file: a JSON object with a "config" object and a "vocab" list."""
    return (
        isinstance(spec, dict)
        and isinstance(spec.get("config"), dict)
        and isinstance(spec.get("vocab"), list)
    )


def tekken_problem(spec: dict[str, Any]) -> str | None:
    """What makes a parsed tekken file unusable (the rules mistral-common's Tekkenizer asserts), or
    None: checked before converting, so that a damaged file is not imported with --no-verify."""
    config, vocab = spec["config"], spec["vocab"]
    numbers = {}
    for key in ("default_vocab_size", "default_num_special_tokens"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"config.{key} must be a whole number >= 0, got {value!r}"
        numbers[key] = value
    if not isinstance(config.get("pattern"), str):
        return f"config.pattern must be a regular expression string, got {config.get('pattern')!r}"
    specials = spec.get("special_tokens") or []
    names = (
        [t.get("token_str") for t in specials if isinstance(t, dict)] if isinstance(specials, list) else []
    )
    if len(names) != len(specials) or len(set(names)) != len(names):
        return 'special_tokens must be a list of {"rank", "token_str", ...} with distinct token_str'
    if numbers["default_num_special_tokens"] < max(len(specials), 3):
        return (
            f"config.default_num_special_tokens {numbers['default_num_special_tokens']} is below the "
            f"{max(len(specials), 3)} special tokens it must hold"
        )
    inner = numbers["default_vocab_size"] - numbers["default_num_special_tokens"]
    if not 256 <= inner <= len(vocab):
        return (
            f"config.default_vocab_size minus default_num_special_tokens is {inner}: it must be from 256 "
            f"(the bytes) to the {len(vocab)} vocab entries"
        )
    return _vocab_problem(vocab[:inner])


def _vocab_problem(vocab: list[Any]) -> str | None:
    """Ranks 0, 1, 2, ... in order, the 256 single bytes first, no byte string twice."""
    import base64
    import binascii

    seen: set[bytes] = set()
    for i, entry in enumerate(vocab):
        rank = entry.get("rank") if isinstance(entry, dict) else None
        if isinstance(rank, bool) or rank != i:
            return f"vocab entry {i} has rank {rank!r}: the ranks must be 0, 1, 2, ... in order"
        try:
            piece = base64.b64decode(entry["token_bytes"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            return f"vocab entry {i} has no base64 token_bytes"
        if i < 256 and piece != bytes([i]):
            return f"vocab entry {i} is {piece!r}: the first 256 entries must be the single bytes 0-255"
        if piece in seen:
            return f"vocab entry {i} repeats the bytes {piece!r} of an earlier entry"
        seen.add(piece)
    return None


def is_tekken_file(path: str | os.PathLike[str]) -> bool:
    """True if `path` is a tekken file (reads and parses it: call it on error paths only)."""
    try:
        return is_tekken(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def tekken_error(path: str | os.PathLike[str]) -> VikhrError:
    return VikhrError(f"{path} is a Mistral tekken file, not an HF tokenizer.json; {IMPORT_HINT}")


def _converter(path: Path) -> Any:
    try:
        from transformers.integrations.mistral.tokenizer import MistralConverter
    except ImportError as e:
        raise VikhrError(
            f"importing {path} needs transformers' MistralConverter (transformers >= 5): {e}"
        ) from None
    try:
        return MistralConverter(str(path))
    except ImportError as e:  # old tekken files without "special_tokens" need mistral-common's defaults
        hint = "pip install 'vikhr[mistral]'"
        raise VikhrError(f"importing {path} needs mistral-common ({hint}): {e}") from None
    except (KeyError, ValueError, TypeError) as e:
        raise VikhrError(f"{path} is not a valid tekken file ({type(e).__name__}: {e})") from None


def convert_tekken(path: str | os.PathLike[str]) -> Any:
    """The `tokenizers.Tokenizer` of a tekken file (transformers' converter, plus a `<s>` post-processor)."""
    from tokenizers import processors

    path = require_file(path, "tekken file")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        # A value followed by more (a JSON Lines file) is not a cut file: name each as what it is.
        lines = isinstance(e, json.JSONDecodeError) and e.msg == "Extra data"
        why = "a JSON Lines file? give Mistral's tekken.json" if lines else "a truncated download?"
        raise VikhrError(f"{path} is not valid JSON ({e}; {why})") from None
    if not is_tekken(spec):
        raise VikhrError(f"{path} is not a Mistral tekken file (expected top-level 'config' and 'vocab')")
    problem = tekken_problem(spec)
    if problem is not None:
        raise VikhrError(f"{path} is not a valid tekken file: {problem}")
    converter = _converter(path)
    try:
        tok = converter.converted()
    except Exception as e:  # tokenizers raises a plain Exception for a pattern Oniguruma refuses
        raise VikhrError(f"{path} is not a valid tekken file ({' '.join(str(e).split())[:200]})") from None
    bos_id = tok.token_to_id(BOS)
    if bos_id is None or tok.token_to_id(EOS) is None:
        raise VikhrError(
            f"{path}: the converted vocabulary has no {BOS} or {EOS} (not a Mistral tekken file?)"
        )
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tok


def tokenizer_config(
    tokenizer_spec: dict[str, Any], bos: str | None, eos: str | None, unk: str | None
) -> dict:
    """`tokenizer_config.json` for a byte-level `tokenizer.json` (parsed): its added tokens, BOS/EOS."""
    added = {
        str(t["id"]): {
            k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
        }
        for t in tokenizer_spec.get("added_tokens", [])
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bos is not None,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
    }


def _verify_lines(verify_texts: list[Path] | None, lines_per_file: int, text_key: str = "text") -> list[str]:
    from vikhr.assets import EN_SAMPLE, RU_SAMPLE
    from vikhr.tokenizer.corpus import iter_lines

    # The user's texts are checked whole (no tokenizer trained on them: a held-out part of a small
    # file may hold no line); the bundled samples on the documents training leaves out.
    if not verify_texts:
        verify_texts, split, text_key = [RU_SAMPLE, EN_SAMPLE], "heldout", "text"
    else:
        split = "all"
    lines = list(EDGE_CASES)
    for f in verify_texts:
        lines += list(iter_lines(f, text_key, split=split))[:lines_per_file]
    return lines


def _refuse_texts_without_a_line(texts: list[Path], text_key: str) -> None:
    """A --verify-texts file none of whose lines would be checked (empty, or blank texts only)
    passed on the built-in edge cases alone, while the manifest named it as checked."""
    from vikhr.tokenizer.corpus import iter_lines

    for path in texts:
        if next(iter_lines(path, text_key, split="all"), None) is None:
            raise VikhrError(
                f"--verify-texts {path} holds no text to check (its lines have no non-blank {text_key!r}): "
                "give a JSONL with the texts to check, or leave --verify-texts out for the bundled samples"
            )


def verify_against_tekkenizer(tekken_path: Path, tokenizer_json: Path, lines: list[str]) -> int:
    """Check that `tokenizer_json` gives mistral-common's Tekkenizer ids on `lines`; returns lines checked."""
    try:
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    except ImportError:
        raise VikhrError(
            "checking the import needs mistral-common (pip install 'vikhr[mistral]'), or pass --no-verify"
        ) from None
    from tokenizers import Tokenizer

    try:
        reference = Tekkenizer.from_file(str(tekken_path))
    except (AssertionError, ValueError, KeyError, TypeError) as e:  # its checks are bare asserts
        detail = " ".join(f"{type(e).__name__} {e}".split())[:200]
        raise VikhrError(
            f"mistral-common refuses {tekken_path} ({detail}); check the file, or pass --no-verify"
        ) from None
    ours = Tokenizer.from_file(str(tokenizer_json))
    ours.encode_special_tokens = True  # "<s>" typed in a text is text, as for Tekkenizer (and vikhr's load)
    got = [e.ids for e in ours.encode_batch(lines, add_special_tokens=False)]
    for line, ids in zip(lines, got, strict=True):
        expected = reference.encode(line, bos=False, eos=False)
        if ids != expected:
            raise VikhrError(
                f"the converted {tekken_path} encodes {line[:60]!r} as {ids[:8]}… but mistral-common as "
                f"{expected[:8]}…; please report this (transformers/mistral-common versions may disagree)"
            )
    return len(lines)


def import_tekken(
    tekken_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    verify_texts: list[str | os.PathLike[str]] | None = None,
    verify: bool = True,
    lines_per_file: int = 2000,
    overwrite: bool = False,
    text_key: str = "text",
) -> dict[str, Any]:
    """Write `tokenizer.json`, `tokenizer_config.json` and `manifest.json` for a tekken file into `out_dir`.

    `verify_texts`: JSONL files whose lines (field `text_key`) are checked against mistral-common
    (default: the held-out lines of the bundled Russian and English samples); returns the manifest.
    """
    import tokenizers

    from vikhr.tokenizer.corpus import corpus_sha256

    src = require_file(tekken_path, "tekken file")
    texts = [require_file(p, "verification text") for p in verify_texts or []]
    if verify:
        _refuse_texts_without_a_line(texts, text_key)
    out = require_output_dir(out_dir, overwrite, inputs=[src, *texts], flag="OUT_DIR", what="OUT_DIR")
    tok = convert_tekken(src)
    with output_dir(out) as work:
        tok_json = work / "tokenizer.json"
        write_text(tok_json, tok.to_str(pretty=False))
        spec = json.loads(tok_json.read_text(encoding="utf-8"))
        cfg = tokenizer_config(spec, BOS, EOS, UNK)
        write_text(work / "tokenizer_config.json", json.dumps(cfg, ensure_ascii=False, indent=2))
        lines = _verify_lines(texts, lines_per_file, text_key) if verify else []
        checked = verify_against_tekkenizer(src, tok_json, lines) if verify else 0
        manifest = {
            "format": MANIFEST_FORMAT,
            "mode": "import-tekken",
            "kind": "byte-level-bpe",
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "special_tokens": {
                BOS: tok.token_to_id(BOS),
                EOS: tok.token_to_id(EOS),
                UNK: tok.token_to_id(UNK),
            },
            "num_added_tokens": len(spec.get("added_tokens", [])),
            "source": {"path": str(src), "sha256": corpus_sha256(src)},
            "tekken_check": {"lines_checked": checked, "verify_texts": [str(p) for p in texts] or "bundled"},
            "files": {n: corpus_sha256(work / n) for n in ("tokenizer.json", "tokenizer_config.json")},
            "versions": {"tokenizers": tokenizers.__version__, **_versions()},
        }
        write_text(work / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2))
    return manifest


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("transformers", "mistral-common"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out
