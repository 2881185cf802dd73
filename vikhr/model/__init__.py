"""Mistral-family models on megatron-core."""

from vikhr.model.config import PRESETS, ModelConfig, padded_vocab_size, preset
from vikhr.model.gpt import build_gpt_model, transformer_config

__all__ = ["PRESETS", "ModelConfig", "build_gpt_model", "padded_vocab_size", "preset", "transformer_config"]
