"""The files of a prepared SFT dataset (`vikhr sft prepare` writes them, the trainer reads them).

For an output prefix P: `P_text_document.bin/.idx` (token ids, one document per chat),
`P_mask_document.bin/.idx` (one uint8 per token, 1 on assistant tokens) and `P_sft.json`
(the tokenizer, template and counts). This module only names and checks them: it imports
neither torch nor megatron-core, so preparing data stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from vikhr.data.indexed import dataset_prefix
from vikhr.errors import VikhrError

# data.packing: whole chats back to back in a window (pack), or one chat per window (pad).
Packing = Literal["pack", "pad"]

META_SUFFIX = "_sft.json"


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


def read_sft_meta(meta_path: Path) -> dict:
    """The `_sft.json` `vikhr sft prepare` wrote; VikhrError for anything else."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta["tokenizer"], str):
            raise TypeError("not an object with a tokenizer path")
        int(meta["max_token_id"])
    except (ValueError, KeyError, TypeError) as e:
        raise VikhrError(f"{meta_path} is not SFT metadata ({e}; re-run vikhr sft prepare)") from e
    return meta


def check_sft_dataset(prefix: str, key: str, vocab_size: int) -> dict:
    """Config-time check (no allocation): the files exist and the token ids fit the model; the
    dataset's `_sft.json`."""
    for path in sft_files(prefix).values():
        if not path.is_file():
            raise VikhrError(f"config key {key}: SFT dataset file not found: {path} (see vikhr sft prepare)")
    try:
        meta = read_sft_meta(Path(prefix + META_SUFFIX))
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
    would train one model on two id spaces (their templates may differ)."""
    first_key, first = metas[0]
    for key, meta in metas[1:]:
        if meta.get("tokenizer_sha256") != first.get("tokenizer_sha256"):
            raise VikhrError(
                f"config key {key}: prepared with tokenizer {meta.get('tokenizer')} but {first_key} with "
                f"{first.get('tokenizer')} (their sha256 differ): the datasets of one run share one "
                "tokenizer (prepare them again with the same --tokenizer)"
            )
