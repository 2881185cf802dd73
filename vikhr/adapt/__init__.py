"""Vocabulary adaptation of HF Mistral/Llama/Qwen2/Qwen3 safetensors checkpoints (see vikhr.adapt.vocab)."""

from vikhr.adapt.vocab import adapt_vocab, build_matrix, plan_rows
from vikhr.adapt.vocab_source import Vocabulary, load_vocabulary

__all__ = ["Vocabulary", "adapt_vocab", "build_matrix", "load_vocabulary", "plan_rows"]
