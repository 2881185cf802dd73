"""Tokenizers: loading (`load`, here), training (`.train`; byte-level BPE in `.train_byte_bpe`), HF export
(`.hf_export`), Mistral tekken import (`.tekken`), reports (`.compare`).

Only the loader is imported here: training, export and reports pull in heavier code and are
imported from their own modules.
"""

from vikhr.tokenizer.load import Tokenizer, load

__all__ = ["Tokenizer", "load"]
