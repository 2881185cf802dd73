"""Mistral, Llama, Qwen2 and Qwen3-style decoders on megatron-core."""

from vikhr.model.config import PRESETS, ModelConfig, padded_vocab_size, preset
from vikhr.model.gpt import (
    ATTENTION_BACKENDS,
    build_gpt_model,
    layer_spec,
    resolve_attention,
    transformer_config,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "PRESETS",
    "ModelConfig",
    "build_gpt_model",
    "layer_spec",
    "padded_vocab_size",
    "preset",
    "resolve_attention",
    "transformer_config",
]
