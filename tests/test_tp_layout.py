"""vikhr.model.tp_layout: each parameter kind's split over TP ranks, and moving parts between TP sizes."""

from __future__ import annotations

import pytest
import torch

from vikhr.model.tp_layout import merge, reshard, shard, split_of

LAYER = "decoder.layers.0."
# name -> whole shape (hidden 8, ffn 12, qkv rows 16, vocab rows padded to 24)
KINDS = {
    "embedding.word_embeddings.weight": (24, 8),
    "output_layer.weight": (24, 8),
    LAYER + "self_attention.linear_qkv.weight": (16, 8),
    LAYER + "self_attention.linear_qkv.bias": (16,),
    LAYER + "self_attention.linear_proj.weight": (8, 16),
    LAYER + "mlp.linear_fc1.weight": (24, 8),
    LAYER + "mlp.linear_fc2.weight": (8, 12),
    LAYER + "input_layernorm.weight": (8,),
    LAYER + "self_attention.q_layernorm.weight": (4,),
    "decoder.final_layernorm.weight": (8,),
}


def test_each_kind_is_split_as_megatron_splits_it() -> None:
    assert [split_of(n) for n in KINDS] == [0, 0, 0, 0, 1, "fc1", 1, None, None, None]
    # fc1: each rank holds its rows of gate, then its rows of up
    full = torch.arange(24.0)[:, None].expand(24, 8)
    part = shard(full, "fc1", 1, 2)
    assert part[:, 0].tolist() == [6.0, 7, 8, 9, 10, 11, 18, 19, 20, 21, 22, 23]


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize(("old_tp", "new_tp"), [(1, 2), (2, 1), (2, 4), (4, 2)])
def test_reshard_equals_sharding_the_whole_tensor(name: str, old_tp: int, new_tp: int) -> None:
    """Parts of TP=old_tp moved to TP=new_tp are what sharding the whole tensor at new_tp gives;
    vocabulary rows keep the 20 real ones and are padded with zeros to the new padded size (28)."""
    torch.manual_seed(0)
    whole = torch.randn(KINDS[name])
    how = split_of(name)
    parts = [shard(whole, how, r, old_tp) for r in range(old_tp)]
    assert torch.equal(merge(parts, how), whole)
    vocab_rows = name.endswith(("embedding.word_embeddings.weight", "output_layer.weight"))
    expected_whole = torch.cat([whole[:20], torch.zeros(8, 8)]) if vocab_rows else whole
    for r in range(new_tp):
        got = reshard(parts, name, r, new_tp, vocab_size=20, padded_vocab=28)
        assert torch.equal(got, shard(expected_whole, how, r, new_tp)), (name, r)
