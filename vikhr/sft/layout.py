"""The files of a prepared SFT dataset (`vikhr sft prepare` writes them, the trainer reads them).

For an output prefix P: `P_text_document.bin/.idx` (token ids, one document per chat),
`P_mask_document.bin/.idx` (one uint8 per token, 1 on assistant tokens) and `P_sft.json`
(the tokenizer, template and counts). This module only names and checks them: it imports
neither torch nor megatron-core, so preparing data stays light.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

from vikhr.data.indexed import dataset_prefix
from vikhr.errors import VikhrError
from vikhr.file_stamps import StampedCache

# data.packing: whole chats back to back in a window (pack), or one chat per window (pad).
Packing = Literal["pack", "pad"]

META_SUFFIX = "_sft.json"
# How `vikhr sft prepare` encodes chats, recorded in `_sft.json` (absent: 1). 2: chatml and qwen3 encode
# template text and answer in one run on every tokenizer (SentencePiece answers had opened with the
# dummy-prefix space), and close answers with EOS where <|im_start|>/<|im_end|> are spelled out.
CHAT_ENCODING = 2


def sft_datasets(prefix: str | Path) -> tuple[str, str]:
    """The token-id and loss-mask dataset prefixes `vikhr sft prepare` writes for `prefix`."""
    return dataset_prefix(prefix, "text"), dataset_prefix(prefix, "mask")


def sft_files(prefix: str | Path) -> dict[str, Path]:
    """The files `vikhr sft prepare` writes for one dataset."""
    text, mask = sft_datasets(prefix)
    return {
        "text_bin": Path(text + ".bin"),
        "text_idx": Path(text + ".idx"),
        "mask_bin": Path(mask + ".bin"),
        "mask_idx": Path(mask + ".idx"),
        "meta": Path(str(prefix) + META_SUFFIX),
    }


def missing_sft_file(prefix: str | Path) -> str | None:
    """What is wrong with a prefix whose files `vikhr sft prepare` did not all write (None when they
    are all there): the first missing file, and what the prefix most likely names instead."""
    missing = next((path for path in sft_files(prefix).values() if not path.is_file()), None)
    if missing is None:
        return None
    # The prefix given to prepare, where a dataset's own file prefix or one of its files was given.
    base = str(prefix)
    for ending in (".bin", ".idx", META_SUFFIX, "_text_document", "_mask_document"):
        base = base.removesuffix(ending)
    hint = "write it with `vikhr sft prepare`"
    if base and Path(base).is_dir():
        found = sorted(Path(base).glob(f"*{META_SUFFIX}"))
        example = f", e.g. {str(found[0]).removesuffix(META_SUFFIX)}" if found else ""
        hint = f"{base} is a directory: give the --output-prefix of `vikhr sft prepare`{example}"
    elif base != str(prefix) and base and missing_sft_file(base) is None:
        hint = f"give the --output-prefix of `vikhr sft prepare`: {base}"
    elif Path(dataset_prefix(base, "text") + ".bin").is_file() and not sft_files(base)["meta"].is_file():
        hint = (
            f"{base} is a pre-training dataset of `vikhr data preprocess`: an SFT dataset also needs the "
            "loss mask `vikhr sft prepare` writes"
        )
    return f"SFT dataset file not found: {missing} ({hint})"


# The `_sft.json` files this process has read, by the file's identity: a trainer's start-up checks
# (config, blend, model.init's tokenizer, the chat encoding, what its checkpoints record) each look
# at every dataset's metadata, which is read from disk once.
_READ: StampedCache[Any] = StampedCache(maxsize=4096)


def read_sft_json(meta_path: Path) -> Any:
    """The JSON value of an `_sft.json`, parsed once per process while the file is the same (its
    inode, size and mtime: `vikhr sft prepare` renames a new file into place); a copy, which the
    caller may change. A file modified in the last seconds, or while it was read, is read anew on
    each call. OSError or ValueError where it cannot be read or parsed."""
    path = os.path.abspath(meta_path)
    return copy.deepcopy(_READ.get(path, [path], lambda: json.loads(Path(path).read_text(encoding="utf-8"))))


def recorded_template(meta: dict, meta_path: Path) -> str:
    """The chat template the `_sft.json` at `meta_path` (its content `meta`) records. Every `vikhr sft
    prepare` has written one, so a file without it was made or edited by hand: VikhrError, rather than
    a guess that would show and train the chats in one template and export another to serve them."""
    template = meta.get("template")
    if not isinstance(template, str):
        found = "no chat template" if template is None else f"the chat template as {template!r}, not a name"
        raise VikhrError(
            f"{meta_path} records {found}, which vikhr sft prepare always writes: prepare the chats "
            'again, or set "template" to the name of the one they were encoded with'
        )
    return template


def read_sft_meta(meta_path: Path) -> dict:
    """The `_sft.json` `vikhr sft prepare` wrote; VikhrError for anything else."""
    try:
        meta = read_sft_json(meta_path)
        if not isinstance(meta, dict) or not isinstance(meta["tokenizer"], str):
            raise TypeError("not an object with a tokenizer path")
        int(meta["max_token_id"])
    except (ValueError, KeyError, TypeError) as e:
        raise VikhrError(f"{meta_path} is not SFT metadata ({e}; re-run vikhr sft prepare)") from e
    recorded_template(meta, meta_path)
    return meta


def read_prepared_sft(prefix: str | Path) -> dict:
    """The `_sft.json` of the SFT dataset `prefix`, every file `vikhr sft prepare` writes there being
    present; VikhrError naming the first missing file (see `missing_sft_file`) or the unreadable
    metadata."""
    missing = missing_sft_file(prefix)
    if missing is not None:
        raise VikhrError(missing)
    return read_sft_meta(sft_files(prefix)["meta"])


def prepared_sft_meta(dataset: str | Path, documents: int, tokens: int) -> tuple[Path, dict] | None:
    """`(P_sft.json, its content)` where `dataset` is the `P_text_document` or `P_mask_document` that
    `vikhr sft prepare` wrote (its `_sft.json` counts `documents` chats of `tokens` tokens); None for
    any other dataset, or beside the metadata of another preparation."""
    name = str(dataset)
    endings = ("_text_document", "_mask_document")
    base = next((name.removesuffix(e) for e in endings if name.endswith(e)), None)
    if base is None or not Path(base + META_SUFFIX).is_file():
        return None
    meta_path = Path(base + META_SUFFIX)
    meta = read_sft_meta(meta_path)
    if (meta.get("chats"), meta.get("tokens")) != (documents, tokens):
        return None
    return meta_path, meta


def check_sft_dataset(prefix: str, key: str, vocab_size: int) -> dict:
    """Config-time check (no allocation): the files exist and the token ids fit the model; the
    dataset's `_sft.json`."""
    try:
        meta = read_prepared_sft(prefix)
    except VikhrError as e:
        raise VikhrError(f"config key {key}: {e}") from e
    if int(meta["max_token_id"]) >= vocab_size:
        raise VikhrError(
            f"config key {key}: the SFT data holds token id {meta['max_token_id']} but the model's "
            f"vocab_size is {vocab_size} (tokenizer {meta.get('tokenizer')})"
        )
    return meta


def check_sft_blend(metas: list[tuple[str, dict]]) -> None:
    """The datasets of one SFT run (config key, `_sft.json`) share a tokenizer: a blend of two
    would train one model on two id spaces (their templates may differ). Two files of one tokenizer
    (a `.model` and its `tokenizer.json`) are one (vikhr.data.tokenization.compare_tokenizers)."""
    from vikhr.data.tokenization import compare_tokenizers

    first_key, first = metas[0]
    for key, meta in metas[1:]:
        shas = first.get("tokenizer_sha256"), meta.get("tokenizer_sha256")
        if shas[0] == shas[1]:
            continue
        why = "their sha256 differ"
        if all(isinstance(sha, str) for sha in shas):  # an older prepare's metadata may lack one
            compared = compare_tokenizers(first["tokenizer"], shas[0], meta["tokenizer"], shas[1])
            if compared.same:
                continue
            why = compared.difference(first_key, key)
        raise VikhrError(
            f"config key {key}: prepared with tokenizer {meta.get('tokenizer')} but {first_key} with "
            f"{first.get('tokenizer')} ({why}): the datasets of one run share one tokenizer (prepare "
            "them again with the same --tokenizer)"
        )


def stale_chat_encoding(prefix: str, key: str) -> str | None:
    """A warning when the dataset at `prefix` was prepared with an earlier chat encoding whose ids differ
    from those the export's template gives (`CHAT_ENCODING`): chatml/qwen3 on a SentencePiece or
    Metaspace tokenizer, or on one without the ChatML tokens. None otherwise, or where it cannot tell."""
    try:
        meta = read_sft_meta(Path(prefix + META_SUFFIX))
    except VikhrError:
        return None  # the config checks report it
    if meta.get("chat_encoding", 1) >= CHAT_ENCODING or meta.get("template") not in ("chatml", "qwen3"):
        return None
    from vikhr.tokenizer.load import load

    try:
        tok = load(meta["tokenizer"])
    except VikhrError:
        tok = None
    if (
        tok is not None
        and tok.byte_level
        and None not in map(tok.piece_to_id, ("<|im_start|>", "<|im_end|>"))
    ):
        return None  # byte-level with the ChatML tokens: encoded as now
    return (
        f"config key {key}: {prefix} was prepared by an earlier vikhr sft prepare, whose "
        f"{meta['template']} ids differ from the exported chat template's on this tokenizer (each "
        "answer's first token, or no EOS after a spelled-out <|im_end|>): prepare it again so that the "
        "tuned model answers as served"
    )
