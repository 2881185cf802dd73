"""Training and validation data from megatron `.bin/.idx` datasets, through megatron-core.

The train stream is megatron-core's `BlendedMegatronDatasetBuilder` over `GPTDataset`s (document
packing into `seq_len + 1` token windows, a seeded shuffle, blending by weight). Sample `i` of
that stream is a pure function of (datasets, split, seq_len, seed), so the data position of a
run is just the number of samples consumed: step `s` reads samples
[s·GB, (s+1)·GB), data-parallel rank r its contiguous GB/DP of them, in micro-batches. Resuming
at step s therefore continues mid-epoch exactly where the run stopped, for any worker count.

Validation: every named dataset of the blend keeps its own held-out documents (the `valid`
part of `data.split`) and is evaluated separately — Russian and English losses side by side.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vikhr.errors import VikhrError

IGNORE_INDEX = -100


class _IdsOnlyTokenizer:
    """The few tokenizer attributes GPTDataset reads: the data are already token ids."""

    def __init__(self, eod_id: int) -> None:
        self.eod = eod_id
        self.eos = eod_id
        self.vocab_size = None  # let the .idx header decide the token dtype
        # Part of the hash megatron names its cached indices by.
        self.unique_identifiers = {"class": "vikhr-token-ids", "eod": eod_id}

    @property
    def pad(self) -> int:
        raise AttributeError("no pad token")  # megatron then uses its own never-occurring pad id


@dataclass
class Datasets:
    train: torch.utils.data.Dataset
    valid: dict[str, torch.utils.data.Dataset]


def _gpt_config(cfg, blend: tuple[list[str], list[float] | None], cache_dir: str):  # -> GPTDatasetConfig
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=cfg.data.seq_len,
        blend=blend,
        split=cfg.data.split,
        path_to_cache=cache_dir,
        tokenizer=_IdsOnlyTokenizer(cfg.data.eod_id),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )


def dataset_entries(cfg) -> list[tuple[str, str, float]]:
    """(name, prefix, weight) of every dataset in the blend."""
    return [
        (str(e.get("name", Path(str(e["prefix"])).name)), str(e["prefix"]), float(e.get("weight", 1.0)))
        for e in cfg.data.train
    ]


def build_datasets(cfg, cache_dir: str) -> Datasets:
    """The blended train stream (steps × global_batch samples) and one valid set per dataset.

    Must be called on every rank (megatron's builder builds on rank 0 first, then the others read
    its cached indices). `data.kind: sft` streams packed chats instead (vikhr.train.sft_data).
    """
    if cfg.data.kind == "sft":
        from vikhr.train.sft_data import build_sft_datasets

        return build_sft_datasets(cfg)
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    entries = dataset_entries(cfg)
    prefixes = [p for _, p, _ in entries]
    weights = [w for _, _, w in entries]
    n_train = cfg.train.steps * cfg.train.global_batch
    train_cfg = _gpt_config(cfg, (prefixes, weights), cache_dir)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [n_train, 0, 0], lambda: True, train_cfg).build()
    if train is None or len(train) < n_train:
        raise VikhrError(f"data.train: could not draw {n_train} training samples from {prefixes}")
    valid: dict[str, torch.utils.data.Dataset] = {}
    for name, prefix, _ in entries:
        one = _gpt_config(cfg, ([prefix], None), cache_dir)
        _, v, _ = BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True, one).build()
        if v is None or len(v) == 0:
            # Too few documents for a held-out part: no validation set for this dataset.
            continue
        valid[name] = v
    return Datasets(train=train, valid=valid)


class Batch(NamedTuple):
    tokens: torch.Tensor  # [b, s]
    labels: torch.Tensor  # [b, s], IGNORE_INDEX where the loss mask is 0
    segments: torch.Tensor | None  # [b, s] document id of each position, when the samples carry it

    def to(self, device: torch.device) -> Batch:
        segments = None if self.segments is None else self.segments.to(device)
        return Batch(self.tokens.to(device), self.labels.to(device), segments)


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> Batch:
    """Stack samples; labels get IGNORE_INDEX where megatron's loss mask is 0."""
    tokens = torch.stack([s["tokens"] for s in samples])
    labels = torch.stack([s["labels"] for s in samples]).clone()
    mask = torch.stack([s["loss_mask"] for s in samples])
    labels[mask == 0] = IGNORE_INDEX
    segments = torch.stack([s["segments"] for s in samples]) if "segments" in samples[0] else None
    return Batch(tokens, labels, segments)


def step_micro_batches(
    dataset: torch.utils.data.Dataset,
    step: int,
    global_batch: int,
    micro_batch: int,
    dp_rank: int,
    dp_size: int,
) -> list[Batch]:
    """This DP rank's micro-batches of 0-based optimizer step `step` (see the module docstring)."""
    per_rank = global_batch // dp_size
    start = step * global_batch + dp_rank * per_rank
    return [
        collate([dataset[i] for i in range(first, first + micro_batch)])
        for first in range(start, start + per_rank, micro_batch)
    ]


# --------------------------------------------------------------------------- writing datasets


def write_indexed_dataset(prefix: str | Path, documents: Iterable[Sequence[int]], dtype=np.uint16) -> int:
    """Write megatron `.bin/.idx` files (via megatron-core's own builder), one item per document.

    Files are written under temporary names and renamed at the end, so a failed run leaves
    nothing that looks valid. Returns the number of documents.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_bin = prefix.with_name(prefix.name + ".tmp.bin")
    tmp_idx = prefix.with_name(prefix.name + ".tmp.idx")
    builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtype)
    count = 0
    for doc in documents:
        builder.add_item(torch.tensor(np.asarray(doc, dtype=np.int64)))
        builder.end_document()
        count += 1
    builder.finalize(str(tmp_idx))
    tmp_bin.replace(prefix.with_name(prefix.name + ".bin"))
    tmp_idx.replace(prefix.with_name(prefix.name + ".idx"))
    return count


def read_jsonl_texts(path: str | Path, key: str = "text") -> Iterator[str]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)[key]


def tokenize_jsonl_to_indexed(
    jsonl: str | Path,
    tokenizer_model: str | Path,
    prefix: str | Path,
    max_docs: int | None = None,
    max_chars: int | None = None,
    append_eod: bool = True,
) -> int:
    """Tokenize a JSONL corpus with a SentencePiece model into `.bin/.idx` (a small convenience;
    the Rust pre-tokenizer `vikhr.data` is the tool for real corpora and writes the same format)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    eod = sp.eos_id()

    def docs() -> Iterator[list[int]]:
        for i, text in enumerate(read_jsonl_texts(jsonl)):
            if max_docs is not None and i >= max_docs:
                return
            ids = sp.encode(text[:max_chars] if max_chars else text)
            yield [*ids, eod] if append_eod else ids

    dtype = np.uint16 if sp.get_piece_size() <= 65536 else np.int32
    return write_indexed_dataset(prefix, docs(), dtype=dtype)
