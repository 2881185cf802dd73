"""Corpus pre-tokenization: JSONL corpora → megatron-core indexed datasets (`.bin/.idx`).

The work happens in Rust (`vikhr._core`): streaming reads of `.jsonl`, `.jsonl.gz` and `.jsonl.zst`,
parallel tokenization with output in input order, and MMIDIDX files byte-identical to what
megatron-core's `IndexedDatasetBuilder` writes. Outputs follow Megatron's naming,
`{output_prefix}_{key}_document.bin/.idx`, and appear only once complete.

Empty documents are kept as Megatron keeps them: a document entry with no sequence (and no EOD),
so document numbering stays aligned with the input lines.
"""

from vikhr.data.preprocess import (
    TOKENIZER_TYPES,
    IndexSummary,
    PreprocessSummary,
    expand_inputs,
    inspect,
    merge,
    preprocess,
)

__all__ = [
    "TOKENIZER_TYPES",
    "IndexSummary",
    "PreprocessSummary",
    "expand_inputs",
    "inspect",
    "merge",
    "preprocess",
]
