"""Chat JSONL → two aligned megatron indexed datasets: token ids and the assistant loss mask.

    {prefix}_text_document.bin/.idx   token ids, one document per chat (uint16, or int32 past 65,536 ids)
    {prefix}_mask_document.bin/.idx   one uint8 per token: 1 = assistant token (trained), 0 = context
    {prefix}_sft.json                 template, tokenizer (path, sha256, BOS/EOS), counts, max token id

Both datasets are written by megatron-core's own `IndexedDatasetBuilder`, under temporary names
renamed only when every chat has been encoded: a failed run leaves nothing that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vikhr.errors import VikhrError
from vikhr.sft.template import TEMPLATES, encode_chat, load_chat_tokenizer, read_chats
from vikhr.train.sft_data import sft_files


@dataclass
class PrepareSummary:
    prefix: str
    template: str
    tokenizer: str
    tokenizer_sha256: str
    bos_id: int
    eos_id: int
    vocab_size: int
    chats: int
    tokens: int
    loss_tokens: int
    max_token_id: int

    def line(self) -> str:
        share = self.loss_tokens / max(self.tokens, 1)
        return (
            f"{self.prefix}: {self.chats:,} chats, {self.tokens:,} tokens, "
            f"{self.loss_tokens:,} assistant tokens ({100 * share:.1f}%), template {self.template}"
        )


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare_sft(
    input_path: str | Path,
    tokenizer: str | Path,
    output_prefix: str | Path,
    template: str = "mistral",
    max_chats: int | None = None,
    progress: bool = False,
) -> PrepareSummary:
    """Encode every chat of `input_path` and write the SFT dataset at `output_prefix`.

    A malformed chat stops the run with "file:line: problem" (see `vikhr.sft.template.parse_chat`).
    """
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tok = load_chat_tokenizer(tokenizer)
    if template not in TEMPLATES:
        raise VikhrError(f"unknown chat template {template!r} (choose from {', '.join(TEMPLATES)})")
    paths = sft_files(output_prefix)
    paths["meta"].parent.mkdir(parents=True, exist_ok=True)
    tmp = {k: v.with_name(v.name + f".tmp{os.getpid()}") for k, v in paths.items()}
    token_dtype = np.uint16 if tok.vocab_size <= 65536 else np.int32
    text_builder = IndexedDatasetBuilder(str(tmp["text_bin"]), dtype=token_dtype)
    mask_builder = IndexedDatasetBuilder(str(tmp["mask_bin"]), dtype=np.uint8)
    chats = tokens = loss_tokens = max_id = 0
    try:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc="sft prepare", unit=" chats", total=max_chats)
        for _, messages in read_chats(input_path):
            if max_chats is not None and chats >= max_chats:
                break
            enc = encode_chat(messages, tok, template)
            text_builder.add_item(torch.tensor(enc.ids, dtype=torch.int64))
            text_builder.end_document()
            mask_builder.add_item(torch.tensor(enc.mask, dtype=torch.int64))
            mask_builder.end_document()
            chats += 1
            tokens += len(enc.ids)
            loss_tokens += sum(enc.mask)
            max_id = max(max_id, max(enc.ids))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        if chats == 0:
            raise VikhrError(f"{input_path}: no chats found")
        text_builder.finalize(str(tmp["text_idx"]))
        mask_builder.finalize(str(tmp["mask_idx"]))
        summary = PrepareSummary(
            prefix=str(output_prefix),
            template=template,
            tokenizer=str(Path(tok.path).resolve()),
            tokenizer_sha256=_sha256(tok.path),
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
            vocab_size=tok.vocab_size,
            chats=chats,
            tokens=tokens,
            loss_tokens=loss_tokens,
            max_token_id=max_id,
        )
        tmp["meta"].write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
        # The metadata goes last: a dataset without it is incomplete (the trainer refuses it).
        paths["meta"].unlink(missing_ok=True)
        for key in ("text_bin", "text_idx", "mask_bin", "mask_idx", "meta"):
            tmp[key].replace(paths[key])
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return summary


def mask_runs(ids: list[int], mask: list[int]) -> list[tuple[bool, list[int]]]:
    """(trained, ids) of each maximal run of equal mask values, in order."""
    runs: list[tuple[bool, list[int]]] = []
    for token, m in zip(ids, mask, strict=True):
        if runs and runs[-1][0] == bool(m):
            runs[-1][1].append(token)
        else:
            runs.append((bool(m), [token]))
    return runs


def render_prepared(prefix: str | Path, index: int, tokenizer: str | Path | None = None) -> str:
    """Chat `index` of a prepared dataset, decoded, with the trained spans as [[...]]."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    files = sft_files(prefix)
    for path in files.values():
        if not path.is_file():
            raise VikhrError(f"SFT dataset file not found: {path} (write it with `vikhr sft prepare`)")
    meta = json.loads(files["meta"].read_text(encoding="utf-8"))
    tok = load_chat_tokenizer(tokenizer or meta["tokenizer"])
    text = IndexedDataset(str(files["text_bin"])[: -len(".bin")])
    mask = IndexedDataset(str(files["mask_bin"])[: -len(".bin")])
    if not 0 <= index < len(text):
        raise VikhrError(f"--index {index} is outside the dataset's {len(text)} chats")
    parts = []
    for trained, ids in mask_runs(text[index].tolist(), mask[index].tolist()):
        shown = tok.decode(ids)
        if ids[-1] == tok.eos_id:
            shown += "</s>"
        parts.append(f"[[{shown}]]" if trained else shown)
    return f"--- chat {index} ({len(text[index])} tokens)\n" + "".join(parts)
