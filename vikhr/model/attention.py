"""Core attention for megatron-core's layer spec on torch `scaled_dot_product_attention`.

megatron-core's local `DotProductAttention` materialises the [b, heads, s, s] score matrix
(and repeats K/V for GQA), which costs several times the memory of a fused kernel. When
Transformer Engine is absent, this module takes its place in the layer spec: same inputs and
output layout, but SDPA picks flash / memory-efficient kernels on GPU and a fused CPU kernel
otherwise. Causal, grouped-query (without repeating K/V) and sliding-window attention.

Sliding window follows Hugging Face Mistral: query i sees keys j with 0 <= i - j < W.
megatron's `window_size = (left, right)` counts keys to the left, so W corresponds to
(W - 1, 0).
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

        `attention_mask` is ignored: masking is causal (plus the window) by construction, and
        megatron passes no padding mask for pre-training.
        """
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPAttention supports neither packed sequences nor attention bias")
        sq, b = query.shape[0], query.shape[1]
        # [s, b, h, d] -> [b, h, s, d]
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        dropout = self.dropout_p if self.training else 0.0
        gqa = self.heads_per_partition != self.groups_per_partition
        if self.window_left is not None and self.window_left + 1 < k.shape[2]:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=self._window_mask(sq, q.device),
                dropout_p=dropout,
                scale=self.softmax_scale,
                enable_gqa=gqa,
            )
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout, scale=self.softmax_scale, enable_gqa=gqa
            )
        # [b, np, sq, hn] -> [sq, b, np·hn]
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
