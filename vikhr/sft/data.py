"""SFT data for the trainer (`data.kind: sft`): prepared chats packed into `seq_len + 1` windows.

Input: datasets written by `vikhr sft prepare` (`{prefix}_text_document`, `{prefix}_mask_document`,
`{prefix}_sft.json`). Each chat is one document; its mask is 1 on assistant tokens.

Windows. A chat longer than `seq_len + 1` tokens is cut to that length (its tail is lost; a
chat whose cut leaves no assistant token is not used). With `data.packing: pack` whole chats are
laid back to back in a seeded order (next-fit: a chat that does not fit starts a new window)
and the rest of a window is padded; with `pad` every window holds one chat. A chat is never
split across windows, so every trained token sees its whole prompt. Padding is `data.eod_id`
with mask 0. Each sample also carries `segments`, the chat number of every position (padding
0): with `data.isolate_documents` (on by default for SFT) the trainer turns it into a
block-diagonal causal mask, so a chat attends only to itself and — RoPE being relative — is
computed exactly as if it were alone in the window. With it off, later chats also see the
earlier ones, as in pre-training packing.

Sample = {"tokens": w[:-1], "labels": w[1:], "loss_mask": mask[1:], "segments": seg[:-1]}: the
label of position t is token t+1 and counts only if token t+1 is an assistant token. The trainer
turns mask 0 into IGNORE_INDEX and averages the loss over the assistant tokens of the global batch.

Determinism and resume: the train stream is epoch after epoch of the train chats, each epoch in
the order `permutation(seed, epoch)`, packed; sample `i` is a pure function of (data, split,
seq_len, packing, seed) — and does not depend on the stream's length — so the trainer's position
is again just the number of samples consumed.
Several datasets are blended by weight with megatron-core's own blending index.

Split: `data.split` divides the chats of each dataset into train/valid/test through a fixed
permutation (independent of train.seed, so the held-out chats do not move with the seed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from vikhr.errors import VikhrError
from vikhr.sft.layout import Packing, sft_datasets
from vikhr.train.data import Datasets, dataset_entries

SPLIT_SEED = 20_240_601  # fixed: the train/valid split does not depend on train.seed


@dataclass
class SFTSource:
    """One prepared dataset, with every chat's length and assistant-token count within a window."""

    name: str
    text: object  # megatron IndexedDataset of token ids
    mask: object  # megatron IndexedDataset of 0/1
    lengths: np.ndarray  # tokens of each chat used (cut to the window)
    loss_tokens: np.ndarray  # labelled positions of each chat within its window
    truncated: int


def open_sft_source(name: str, prefix: str, window: int) -> SFTSource:
    """One prepared dataset with its chats' lengths and loss-token counts within `window`."""
    # megatron-core takes seconds to import: config checks import this module without it.
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    text_prefix, mask_prefix = sft_datasets(prefix)
    text = IndexedDataset(text_prefix)
    mask = IndexedDataset(mask_prefix)
    full = np.asarray(text.sequence_lengths, dtype=np.int64)
    if len(full) != len(mask) or not np.array_equal(full, mask.sequence_lengths):
        raise VikhrError(f"{prefix}: token and mask datasets are not aligned (re-run `vikhr sft prepare`)")
    if len(full) == 0:
        raise VikhrError(f"{prefix}: the SFT dataset holds no chats")
    # Every mask value is one byte: read the whole mask .bin flat and sum per chat in one go.
    flat = np.memmap(mask_prefix + ".bin", dtype=np.uint8, mode="r")
    starts = np.asarray(mask.index.sequence_pointers, dtype=np.int64)
    loss = np.add.reduceat(flat, starts, dtype=np.int64) - flat[starts]  # position 0 is never a label
    lengths = np.minimum(full, window)
    for i in np.flatnonzero(full > window):
        loss[i] = int(flat[starts[i] + 1 : starts[i] + window].sum(dtype=np.int64))
    return SFTSource(name, text, mask, lengths, loss, int((full > window).sum()))


def split_chats(n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, valid ids) of n chats under a megatron-style "train,valid,test" weight string."""
    weights = np.array([float(x) for x in split.split(",")], dtype=np.float64)
    bounds = np.round(np.cumsum(weights / weights.sum()) * n).astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[: bounds[0]]), np.sort(order[bounds[0] : bounds[1]])


def pack_windows(order: np.ndarray, lengths: np.ndarray, window: int, packing: Packing) -> np.ndarray:
    """Start offsets into `order` of each window (+ the end): next-fit packing, or one chat each."""
    if packing == "pad":
        return np.arange(len(order) + 1, dtype=np.int64)
    starts = [0]
    used = 0
    for k, length in enumerate(lengths[order].tolist()):
        if used + length > window and k > starts[-1]:
            starts.append(k)
            used = 0
        used += length
    starts.append(len(order))
    return np.asarray(starts, dtype=np.int64)


class PackedSFTDataset(torch.utils.data.Dataset):
    """Windows of whole chats: window i holds chats placements[bounds[i]:bounds[i+1]]."""

    def __init__(
        self, source: SFTSource, placements: np.ndarray, bounds: np.ndarray, window: int, pad_id: int
    ) -> None:
        self.source, self.placements, self.bounds = source, placements, bounds
        self.window, self.pad_id = window, pad_id

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        tokens = np.full(self.window, self.pad_id, dtype=np.int64)
        mask = np.zeros(self.window, dtype=np.int64)
        segments = np.zeros(self.window, dtype=np.int64)
        at = 0
        chats = self.placements[self.bounds[i] : self.bounds[i + 1]].tolist()
        for number, chat in enumerate(chats, start=1):
            n = int(self.source.lengths[chat])
            tokens[at : at + n] = self.source.text.get(chat, 0, n)
            mask[at : at + n] = self.source.mask.get(chat, 0, n)
            segments[at : at + n] = number
            at += n
        return {
            "tokens": torch.from_numpy(tokens[:-1].copy()),
            "labels": torch.from_numpy(tokens[1:].copy()),
            "loss_mask": torch.from_numpy(mask[1:].copy()),
            "segments": torch.from_numpy(segments[:-1].copy()),
        }

    def token_fill(self) -> float:
        """Share of window positions holding chat tokens (not padding)."""
        used = int(self.source.lengths[self.placements].sum())
        return used / max(1, len(self) * self.window)


def train_stream(source: SFTSource, train_ids: np.ndarray, n_samples: int, cfg) -> PackedSFTDataset:
    """At least `n_samples` windows: epochs of the train chats, each in its own seeded order."""
    window, usable = cfg.data.seq_len + 1, train_ids[source.loss_tokens[train_ids] > 0]
    if len(train_ids) == 0:
        raise VikhrError(
            f"data.train {source.name!r}: the train part of data.split {cfg.data.split!r} gets none of its "
            f"{len(source.lengths)} chats: give the train part a larger share"
        )
    if len(usable) == 0:
        raise VikhrError(
            f"data.train {source.name!r}: no train chat has an assistant token within data.seq_len = "
            f"{cfg.data.seq_len} tokens (every prompt is longer): raise data.seq_len"
        )
    placements, bounds = [], [np.zeros(1, dtype=np.int64)]
    count = offset = epoch = 0
    while count < n_samples:
        order = usable[np.random.default_rng([cfg.train.seed, epoch]).permutation(len(usable))]
        starts = pack_windows(order, source.lengths, window, cfg.data.packing)
        placements.append(order)
        bounds.append(starts[1:] + offset)
        offset += len(order)
        count += len(starts) - 1
        epoch += 1
    return PackedSFTDataset(
        source, np.concatenate(placements), np.concatenate(bounds), window, cfg.data.eod_id
    )


def blend_index(weights: list[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset of sample i, its number within that dataset): megatron-core's blending order."""
    from megatron.core.datasets import helpers

    dataset_index = np.zeros(size, dtype=np.int16)
    sample_index = np.zeros(size, dtype=np.int64)
    total = sum(weights)
    helpers.build_blending_indices(
        dataset_index, sample_index, [w / total for w in weights], len(weights), size, False
    )
    return dataset_index, sample_index


class BlendedSFTDataset(torch.utils.data.Dataset):
    """Sample i is sample `sample_index[i]` of part `dataset_index[i]` (see blend_index)."""

    def __init__(
        self, parts: list[PackedSFTDataset], dataset_index: np.ndarray, sample_index: np.ndarray
    ) -> None:
        self.parts, self.dataset_index, self.sample_index = parts, dataset_index, sample_index

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.parts[int(self.dataset_index[i])][int(self.sample_index[i])]


def build_sft_datasets(cfg, n_train: int) -> Datasets:  # cfg: vikhr.train.config.TrainConfig
    """The blended, packed train stream (`n_train` samples) and one packed valid set per dataset
    (every rank builds the same, cheaply: only lengths and mask sums are read up front)."""
    window = cfg.data.seq_len + 1
    entries = dataset_entries(cfg)
    dataset_index, sample_index = blend_index([w for _, _, w in entries], n_train)
    needed = np.bincount(dataset_index, minlength=len(entries))  # each stream is made this long
    parts, valid, report = [], {}, []
    for (name, prefix, _), n in zip(entries, needed, strict=True):
        source = open_sft_source(name, prefix, window)
        train_ids, valid_ids = split_chats(len(source.lengths), cfg.data.split)
        parts.append(train_stream(source, train_ids, max(int(n), 1), cfg))
        kept = valid_ids[source.loss_tokens[valid_ids] > 0]
        if len(kept):
            bounds = pack_windows(kept, source.lengths, window, cfg.data.packing)
            valid[name] = PackedSFTDataset(source, kept, bounds, window, cfg.data.eod_id)
        # A chat cut before its first answer token trains nothing: say how many (a longer data.seq_len
        # or a shorter max length in `sft build` keeps them).
        unused = int((source.loss_tokens == 0).sum())
        report.append(
            f"{name}: {len(source.lengths)} chats ({len(train_ids)} train, {len(valid_ids)} valid), "
            f"{source.truncated} cut to {window} tokens"
            + (f" ({unused} with no answer token left: not used)" if unused else "")
            + f", window fill {100 * parts[-1].token_fill():.0f}%"
        )
    train = parts[0] if len(parts) == 1 else BlendedSFTDataset(parts, dataset_index, sample_index)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print("sft data: " + "; ".join(report), file=sys.stderr, flush=True)
    return Datasets(train=train, valid=valid)
