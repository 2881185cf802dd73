#!/usr/bin/env python3
r"""Megatron-LM's `tools/preprocess_data.py` command line, backed by vikhr's Rust pre-tokenizer.

    python tools/preprocess_data.py --input corpus.jsonl.gz --output-prefix out/ru \
        --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model mistral.model --append-eod --workers 8

writes out/ru_text_document.bin/.idx (one pair per --json-keys key), byte-identical to what
megatron-core's IndexedDatasetBuilder writes for the same ids. Same as `vikhr data preprocess`.
"""

from __future__ import annotations

from collections.abc import Sequence

from vikhr.cli import OneLineErrorParser
from vikhr.data.cli import add_preprocess_arguments, run_preprocess
from vikhr.errors import ENDINGS, report_ending


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="preprocess_data.py", description=__doc__.split("\n\n")[0])
    add_preprocess_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_preprocess(args)
    except ENDINGS as e:
        return report_ending(parser.prog, e)


if __name__ == "__main__":
    raise SystemExit(main())
