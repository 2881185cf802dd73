"""The Rust extension module loads and is the crate it claims to be."""

from __future__ import annotations

import os
import re
from pathlib import Path

import vikhr._core as core

REPO = Path(__file__).resolve().parent.parent


def test_core_version_matches_workspace() -> None:
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert core.__version__ == version


def test_default_threads_matches_os() -> None:
    assert core.default_threads() == len(os.sched_getaffinity(0)) or core.default_threads() == os.cpu_count()


ASSETS = REPO / "vikhr" / "assets" / "tokenizers"


def test_native_tokenizer_answers_like_the_python_tokenizers() -> None:
    """`_core.Tokenizer` (what `vikhr data preprocess` encodes with) looks tokens up as
    sentencepiece and HF `tokenizers` do; BOS/EOS are found through it."""
    import sentencepiece as spm
    from tokenizers import Tokenizer as HFTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(ASSETS / "mistral-7b-v0.1.model"))
    native = core.Tokenizer("sentencepiece", str(ASSETS / "mistral-7b-v0.1.model"))
    assert native.vocab_size == sp.get_piece_size()
    for i in (0, 1, 2, 3, 100, 7203, 31999):
        assert native.token_to_id(sp.id_to_piece(i)) == i
    assert native.token_to_id("no such piece") is None

    path = ASSETS / "vikhr-ru-40k.tokenizer.json"
    hf = HFTokenizer.from_file(str(path))
    native = core.Tokenizer("huggingface", str(path), add_special_tokens=True)
    assert native.vocab_size == hf.get_vocab_size(with_added_tokens=True)
    for piece, i in list(hf.get_vocab(with_added_tokens=True).items())[::97]:
        assert native.token_to_id(piece) == i
    assert native.token_to_id("no such piece") is None
    assert native.token_to_id("</s>") == hf.token_to_id("</s>") is not None


def test_native_tokenizer_refuses_bad_files_with_a_reason(tmp_path: Path) -> None:
    import pytest

    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        core.Tokenizer("huggingface", str(bad))
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        core.Tokenizer("wordpiece", str(bad))
