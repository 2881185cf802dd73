"""Training and validation data from megatron `.bin/.idx` datasets, through megatron-core.

The train stream is megatron-core's `BlendedMegatronDatasetBuilder` over `GPTDataset`s (document
packing into `seq_len + 1` token windows, a seeded shuffle, blending by weight). Sample `i` of
that stream is a pure function of (datasets, split, seq_len, seed), so the data position of a
run is just the number of samples consumed, c: the next step reads samples [c, c + GB),
data-parallel rank r its contiguous GB/DP of them, in micro-batches. Resuming therefore continues
mid-epoch exactly where the run stopped, for any worker count, and with another global batch GB.
Each dataset of the blend is drawn in whole passes (`WholePassGPTDataset`): megatron-core shuffles
all the passes a stream needs together, and shuffles a last pass apart when it is under 80 % of one,
so a stream's order depended on its exact length — a run given more steps read other samples from
step 1 though it needed no more passes. Rounded up to whole passes, the order depends on the number
of passes only. (A stream long enough to need more passes than the one it was cut from is another
permutation.)

Validation: every named dataset of the blend keeps its own held-out documents (the `valid`
part of `data.split`) and is evaluated separately — Russian and English losses side by side.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from vikhr.errors import VikhrError
from vikhr.train.index_cache import building_index_cache

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
    """What the trainer reads: one train stream, and a validation set per named dataset."""

    train: torch.utils.data.Dataset
    valid: dict[str, torch.utils.data.Dataset]


def _gpt_config(cfg, blend: tuple[list[str], list[float] | None], cache_dir: str, part: int):
    """megatron's dataset config for one part of data.split (0 train, 1 valid): the other parts are
    left out, so megatron builds no index for them (an empty one would make it loop forever)."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    config = GPTDatasetConfig(
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
    config.split_matrix = [bounds if i == part else None for i, bounds in enumerate(config.split_matrix)]
    return config


def split_part_tokens(prefix: str, split: str) -> tuple[list[int], list[int]]:
    """(documents, tokens) in each part (train, valid, test) of data.split for one dataset, as
    megatron-core cuts it: part i holds documents [round(a·n), round(b·n)) of its split bounds."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)  # held while its lengths are read: they are a view of its mmap
    lengths = dataset.sequence_lengths
    n = len(lengths)
    documents, tokens = [], []
    for bounds in convert_split_vector_to_split_matrix(parse_and_normalize_split(split)):
        begin, end = (0, 0) if bounds is None else (round(bounds[0] * n), round(bounds[1] * n))
        documents.append(end - begin)
        tokens.append(int(lengths[begin:end].sum(dtype=np.int64)))
    del lengths, dataset
    return documents, tokens


def dataset_entries(cfg) -> list[tuple[str, str, float]]:
    """(name, prefix, weight) of every dataset in the blend."""
    return [(e.name, e.prefix, e.weight) for e in cfg.data.train]


def whole_pass_samples(num_samples: int, tokens_per_pass: int, seq_len: int, extra_token: int) -> int:
    """The samples of the fewest whole passes over a dataset of `tokens_per_pass` tokens that hold
    `num_samples` windows of `seq_len` (+ `extra_token`) tokens, as megatron-core counts them."""
    needed = num_samples * seq_len + extra_token
    passes = max(1, -(-needed // tokens_per_pass))
    return (passes * tokens_per_pass - extra_token) // seq_len


@functools.cache
def whole_pass_dataset_class() -> Any:
    """GPTDataset drawing a train stream in whole passes (module doc); built on first use, as
    megatron-core takes seconds to import."""
    from megatron.core.datasets.gpt_dataset import GPTDataset

    class WholePassGPTDataset(GPTDataset):
        def __init__(  # megatron-core's signature
            self, indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config
        ) -> None:
            if num_samples is not None and len(indexed_indices):
                tokens = int(np.sum(indexed_dataset.sequence_lengths[indexed_indices], dtype=np.int64))
                extra = int(config.add_extra_token_to_sequence)
                num_samples = whole_pass_samples(num_samples, tokens, config.sequence_length, extra)
            super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)

    return WholePassGPTDataset


def build_pretrain_datasets(cfg, cache_dir: str, n_train: int) -> Datasets:  # cfg: TrainConfig
    """The blended train stream (`n_train` samples) and one valid set per dataset.

    Must be called on every rank (megatron's builder builds on rank 0 first, then the others read
    its cached indices). `data.kind: sft` streams packed chats instead (vikhr.sft.data).
    """
    # megatron-core takes seconds to import; config checks and `vikhr sft prepare` import this
    # module without building datasets.
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    entries = dataset_entries(cfg)
    prefixes = [p for _, p, _ in entries]
    weights = [w for _, _, w in entries]
    train_cfg = _gpt_config(cfg, (prefixes, weights), cache_dir, part=0)
    # megatron-core builds on rank 0, the others read what it built.
    builder = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    valid: dict[str, torch.utils.data.Dataset] = {}
    with building_index_cache(cache_dir, builder, prefixes):
        train, _, _ = BlendedMegatronDatasetBuilder(
            whole_pass_dataset_class(), [n_train, 0, 0], lambda: True, train_cfg
        ).build()
        if train is None or len(train) < n_train:
            raise VikhrError(f"data.train: could not draw {n_train} training samples from {prefixes}")
        for name, prefix, _ in entries:
            if split_part_tokens(prefix, cfg.data.split)[1][1] == 0:
                continue  # too few documents for a held-out part: no validation set for this dataset
            one = _gpt_config(cfg, ([prefix], None), cache_dir, part=1)
            _, v, _ = BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True, one).build()
            if v is not None and len(v) > 0:
                valid[name] = v
    return Datasets(train=train, valid=valid)


class Batch(NamedTuple):
    """One micro-batch as the model takes it."""

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
    consumed: int,
    global_batch: int,
    micro_batch: int,
    dp_rank: int,
    dp_size: int,
) -> list[Batch]:
    """This DP rank's micro-batches of the step after `consumed` samples (see the module docstring)."""
    per_rank = global_batch // dp_size
    start = consumed + dp_rank * per_rank
    return [
        collate([dataset[i] for i in range(first, first + micro_batch)])
        for first in range(start, start + per_rank, micro_batch)
    ]
