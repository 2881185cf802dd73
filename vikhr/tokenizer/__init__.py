"""Tokenizer training (SentencePiece BPE, replace/extend), HF export and efficiency reports."""

from vikhr.tokenizer.compare import TABLE1_SENTENCE, compare, load_tokenizer, measure
from vikhr.tokenizer.hf_export import build_hf_tokenizer, write_hf_tokenizer
from vikhr.tokenizer.train import TrainSettings, extend_model, train_tokenizer

__all__ = [
    "TABLE1_SENTENCE",
    "TrainSettings",
    "build_hf_tokenizer",
    "compare",
    "extend_model",
    "load_tokenizer",
    "measure",
    "train_tokenizer",
    "write_hf_tokenizer",
]
