"""How each parameter of vikhr's megatron GPT is split over tensor-parallel ranks, and moving a
tensor from one TP size to another.

The layout (names: vikhr.model.config; the HF side: vikhr.convert.mistral):

    embedding.word_embeddings.weight, output_layer.weight   rows of the padded vocabulary, chunked
    self_attention.linear_qkv.weight / .bias                rows chunked (whole KV groups per rank)
    self_attention.linear_proj.weight, mlp.linear_fc2.weight  columns chunked
    mlp.linear_fc1.weight                                   [gate chunk r; up chunk r]
    norms (input, pre-MLP, final, per-head q/k)             replicated

The same rules move any tensor shaped like a parameter, such as its optimizer moments.
"""

from __future__ import annotations

import torch

Split = int | str | None  # a dim to chunk, "fc1", or None (replicated)
_VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")


def split_of(name: str) -> Split:
    """How the megatron parameter `name` is split over TP ranks."""
    if name.endswith(_VOCAB_ROWS) or ".linear_qkv." in name:
        return 0
    if name.endswith((".linear_proj.weight", ".linear_fc2.weight")):
        return 1
    if name.endswith(".linear_fc1.weight"):
        return "fc1"
    return None


def is_vocab_rows(name: str) -> bool:
    """Whether the rows of `name` are the (padded) vocabulary."""
    return name.endswith(_VOCAB_ROWS)


def shard(full: torch.Tensor, how: Split, rank: int, tp: int) -> torch.Tensor:
    """TP rank `rank`'s part of the whole tensor `full` (fc1: [gate; up] stacked on dim 0)."""
    if how is None:
        return full
    if how == "fc1":
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
    return full.chunk(tp, dim=int(how))[rank]


def merge(parts: list[torch.Tensor], how: Split) -> torch.Tensor:
    """The whole tensor from every TP rank's part (the inverse of `shard`)."""
    if how is None:
        return parts[0]
    if how == "fc1":
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])])
    return torch.cat(parts, dim=int(how))


def reshard(
    parts: list[torch.Tensor], name: str, rank: int, tp: int, vocab_size: int, padded_vocab: int
) -> torch.Tensor:
    """Rank `rank` of `tp`'s part of parameter `name`, from the parts of another TP size.

    Vocabulary rows keep the `vocab_size` real ones and are padded with zeros to `padded_vocab`
    (each TP size pads the vocabulary to its own multiple)."""
    how = split_of(name)
    full = merge(parts, how)
    if is_vocab_rows(name):
        rows = full[:vocab_size]
        full = torch.cat([rows, rows.new_zeros(padded_vocab - vocab_size, *rows.shape[1:])])
    # A copy: a chunk of rows would otherwise be a view keeping the whole merged tensor alive.
    return shard(full, how, rank, tp).clone(memory_format=torch.contiguous_format)
