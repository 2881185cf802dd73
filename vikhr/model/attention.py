"""Core attention for megatron-core's layer spec on torch `scaled_dot_product_attention`.

megatron-core's local `DotProductAttention` materialises the [b, heads, s, s] score matrix
(and repeats K/V for GQA), which costs several times the memory of a fused kernel. When
Transformer Engine is absent, this module takes its place in the layer spec: same inputs and
output layout, but SDPA picks flash / memory-efficient kernels on GPU and a fused CPU kernel
otherwise. Causal, grouped-query (without repeating K/V) and sliding-window attention.

Sliding window follows Hugging Face Mistral: query i sees keys j with 0 <= i - j < W.
megatron's `window_size = (left, right)` counts keys to the left, so W corresponds to
(W - 1, 0).

Packed documents: `document_attention_mask(segments)` gives megatron's boolean mask (True =
masked) that keeps each packed document (an SFT chat) to itself. With RoPE, which sees only
relative positions, each document is then computed exactly as if it were alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention
from megatron.core.utils import divide


def document_attention_mask(segments: torch.Tensor, sliding_window: int | None = None) -> torch.Tensor:
    """[b, s] document ids -> [b, 1, s, s] boolean mask in megatron's convention (True = masked):
    query i may attend key j only if both lie in the same document and 0 <= i - j (< sliding_window).

    The window is part of the mask so that the mask alone is the whole rule; SDPAttention applies
    it as given (megatron's local attention cannot combine it with a window: it then drops the mask).
    """
    s = segments.shape[1]
    i = torch.arange(s, device=segments.device).unsqueeze(1)
    j = torch.arange(s, device=segments.device).unsqueeze(0)
    allowed = j <= i
    if sliding_window is not None:
        allowed &= i - j < sliding_window
    same = segments.unsqueeze(2) == segments.unsqueeze(1)
    return ~(same & allowed).unsqueeze(1)


def segments_from_eod(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """Document ids of packed pre-training windows: a document ends with (and includes) its EOD."""
    eod = (tokens == eod_id).long()
    return eod.cumsum(dim=1) - eod


class SDPAttention(MegatronModule):
    """Drop-in for megatron's `DotProductAttention` (causal self-attention only)."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not support context parallelism")
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"SDPAttention supports causal attention only, got {attn_mask_type}")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.layer_number = max(1, layer_number)
        self.heads_per_partition = divide(config.num_attention_heads, tp)
        self.groups_per_partition = divide(config.num_query_groups, tp)
        self.hidden_size_per_partition = self.heads_per_partition * config.kv_channels
        self.softmax_scale = softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.window_left: int | None = None
        if is_layer_window_attention(config.window_size, config.window_attn_skip_freq, self.layer_number):
            left, right = config.window_size
            if right not in (0, -1):
                raise ValueError(f"causal attention needs window_size right = 0, got {config.window_size}")
            self.window_left = None if left < 0 else int(left)
        self._mask_cache: tuple[tuple[int, torch.device], torch.Tensor] | None = None

    def _window_mask(self, s: int, device: torch.device) -> torch.Tensor:
        """Boolean [s, s] mask, True where query i may attend key j (0 <= i - j <= left)."""
        key = (s, device)
        if self._mask_cache is None or self._mask_cache[0] != key:
            i = torch.arange(s, device=device).unsqueeze(1)
            j = torch.arange(s, device=device).unsqueeze(0)
            self._mask_cache = (key, (j <= i) & (i - j <= self.window_left))
        return self._mask_cache[1]

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: object = None,
    ) -> torch.Tensor:
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] -> context [sq, b, np·hn].

        Masking is causal (plus the window); a given `attention_mask` ([b or 1, 1, sq, sk], True =
        masked, e.g. `document_attention_mask`) is applied on top.
        """
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPAttention supports neither packed sequences nor attention bias")
        sq, b = query.shape[0], query.shape[1]
        # [s, b, h, d] -> [b, h, s, d]
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        if not self.config.qk_layernorm and not value.is_contiguous():
            # value is a view of the fused QKV projection's output; SDPA keeps v for backward,
            # which would keep the whole projection alive (q and k are new tensors after RoPE).
            # With q/k norms their inputs, views of it too, keep it anyway.
            v = v.contiguous()
        dropout = self.dropout_p if self.training else 0.0
        gqa = self.heads_per_partition != self.groups_per_partition
        windowed = self.window_left is not None and self.window_left + 1 < k.shape[2]
        if attention_mask is None and not windowed:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout, scale=self.softmax_scale, enable_gqa=gqa
            )
        else:
            # SDPA's boolean mask means "may attend", the opposite of megatron's.
            allowed = self._window_mask(sq, q.device) if windowed else None
            if attention_mask is not None:
                keep = ~attention_mask
                allowed = keep if allowed is None else keep & allowed
            if gqa:
                # With a mask, enable_gqa sends CUDA SDPA to the math kernel ([b, h, s, s] scores);
                # repeated K/V heads (cheap next to that) keep it on the memory-efficient kernel.
                repeats = self.heads_per_partition // self.groups_per_partition
                k = k.repeat_interleave(repeats, dim=1)
                v = v.repeat_interleave(repeats, dim=1)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout, scale=self.softmax_scale
            )
        # [b, np, sq, hn] -> [sq, b, np·hn]
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
