"""The Mistral-shaped megatron-core GPTModel: presets and forward/backward (TP/DP equivalence of
training it is tested through the real entry point in tests/test_train.py)."""

from __future__ import annotations

import pytest
import torch

from vikhr.errors import VikhrError
from vikhr.model import build_gpt_model, padded_vocab_size, preset
from vikhr.runtime.distributed import distributed_env


def test_padded_vocab() -> None:
    assert padded_vocab_size(32000, 1) == 32000
    assert padded_vocab_size(40000, 1) == 40064
    assert padded_vocab_size(40000, 2) == 40192
    assert padded_vocab_size(1, 8) == 1024


def test_tp_must_divide_heads() -> None:
    cfg = preset("tiny")  # 4 heads, 2 KV heads
    cfg.validate(2)
    with pytest.raises(VikhrError, match="num_kv_heads"):
        cfg.validate(4)
    with pytest.raises(VikhrError, match="unknown model preset"):
        preset("gpt-5")


def test_mistral_presets_are_the_published_shapes() -> None:
    v1, v2 = preset("mistral-7b-v0.1"), preset("mistral-7b-v0.2")
    assert (v1.num_layers, v1.hidden_size, v1.ffn_hidden_size) == (32, 4096, 14336)
    assert (v1.num_attention_heads, v1.num_kv_heads, v1.head_dim) == (32, 8, 128)
    assert v1.rope_theta == 10000.0 and v1.sliding_window == 4096
    assert v2.rope_theta == 1e6 and v2.sliding_window is None


def test_tiny_model_forward_backward_on_cpu() -> None:
    with distributed_env(tp_size=1, seed=1, device="cpu"):
        cfg = preset("tiny")
        model = build_gpt_model(cfg)
        names = {n for n, _ in model.named_parameters()}
        assert "output_layer.weight" in names and "embedding.word_embeddings.weight" in names  # untied
        assert model.embedding.word_embeddings.weight.shape == (
            padded_vocab_size(cfg.vocab_size),
            cfg.hidden_size,
        )
        qkv = model.decoder.layers[0].self_attention.linear_qkv.weight
        assert qkv.shape[0] == (cfg.num_attention_heads + 2 * cfg.num_kv_heads) * cfg.head_dim  # GQA
        fc1 = model.decoder.layers[0].mlp.linear_fc1.weight
        assert fc1.shape[0] == 2 * cfg.ffn_hidden_size  # SwiGLU: gate and up
        tokens = torch.randint(0, cfg.vocab_size, (2, 16))
        pos = torch.arange(16).expand(2, -1)
        loss = model(tokens, pos, attention_mask=None, labels=tokens)
        assert loss.shape == (2, 16) and torch.isfinite(loss).all()
        loss.mean().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        # Causality: changing the last token must not change the loss at earlier positions.
        with torch.no_grad():
            t2 = tokens.clone()
            t2[:, -1] = (t2[:, -1] + 1) % cfg.vocab_size
            logits1 = model(tokens, pos, attention_mask=None)
            logits2 = model(t2, pos, attention_mask=None)
        torch.testing.assert_close(logits1[:, :-1], logits2[:, :-1])
