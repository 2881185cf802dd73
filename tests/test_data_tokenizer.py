"""vikhr's Rust SentencePiece-BPE encoder produces exactly the ids of the `sentencepiece` package."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import pytest
import sentencepiece
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHARED_DATA
from vikhr.assets import EN_SAMPLE, MISTRAL_TOKENIZER, RU_SAMPLE
from vikhr.data import preprocess
from vikhr.data.indexed import IndexedReader, dataset_prefix

EDGE_CASES = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\n\n\n",
    " \n ",
    "a",
    " leading space",
    "trailing space ",
    "multiple   inner    spaces",
    "  two leading and two trailing  ",
    "tabs\tand\t\ttabs",
    "line\nbreaks\r\nand CRLF\r\n",
    "Привет, мир! Как дела?",
    "  Ёлка  ёжик\tщука\n\nЪ",
    "emoji 😀🙈👩‍👩‍👧‍👦 and flags 🇷🇺🇬🇧",
    "unknown scripts: ⴰⵣⵓⵍ 𒀀𒀁 𐀀𐀁 ꦲꦏ᭄ ᚠᚢᚦ",
    "CJK 中文字符 日本語 한국어",
    "byte fallback \U0010ffff \ue000 \x00 \x7f",
    "literal ▁ symbol ▁▁ and ▁word",
    "combining: й (и + ◌̆) ударе́ние",
    "digits 1234567890 3.14159 1,000,000",
    "URL https://example.com/path?q=1&x=ü#frag",
    "code: def f(x):\n    return x ** 2\n",
    "a" * 300,
    " " * 200 + "x",
    "x" + " " * 200,
    "ааааааааааааааааааааааааааааааааааааааааааааааааааааааааааааааааааа",
    "Съешь же ещё этих мягких французских булок, да выпей чаю." * 20,
    "".join(chr(c) for c in range(0x400, 0x500)),
    "".join(chr(c) for c in range(0x20, 0x7F)),
]


def _models(shared_dir: Path | None) -> list[Path]:
    models = [MISTRAL_TOKENIZER]
    if shared_dir is not None and (shared_dir / "tokenizers" / "llama-2.model").is_file():
        models.append(shared_dir / "tokenizers" / "llama-2.model")
    return models


def _read_texts(path: Path, limit: int | None = None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][:limit]


def _encode(model: Path, texts: list[str]) -> list[list[int]]:
    """The ids vikhr's Rust encoder gives each text, through the pre-tokenization pipeline."""
    with tempfile.TemporaryDirectory(prefix="vikhr-enc-") as tmp:
        src = Path(tmp) / "in.jsonl"
        # A last document with text: a dataset without any token is refused.
        lines = [json.dumps({"text": t}, ensure_ascii=False) for t in [*texts, "end"]]
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        preprocess([src], Path(tmp) / "out", model, workers=1)
        reader = IndexedReader(dataset_prefix(Path(tmp) / "out", "text"))
        return [reader.document(i) for i in range(len(texts))]


def _assert_same(model: Path, texts: list[str]) -> None:
    ours = _encode(model, texts)
    ref = sentencepiece.SentencePieceProcessor(model_file=str(model)).encode(texts)
    bad = [i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b]
    assert not bad, f"{len(bad)} mismatches, first: {texts[bad[0]][:200]!r}: {ours[bad[0]]} != {ref[bad[0]]}"


def test_edge_cases_match_sentencepiece() -> None:
    _assert_same(MISTRAL_TOKENIZER, EDGE_CASES)


def test_edge_cases_match_sentencepiece_llama2(shared_data: Path) -> None:
    _assert_same(shared_data / "tokenizers" / "llama-2.model", EDGE_CASES)


def test_published_vectors(shared_data: Path) -> None:
    tests = shared_data / "tokenizers" / "tests"
    inputs = (tests / "vocab-test.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    rows = [json.loads(line) for line in (tests / "ru-test.jsonl").read_text(encoding="utf-8").splitlines()]
    for name in ("mistral-7b-v0.1", "llama-2"):
        expected = (tests / f"{name}.out").read_text(encoding="utf-8").split("\n")
        ours = _encode(shared_data / "tokenizers" / f"{name}.model", inputs + [r["text"] for r in rows])
        for i, text in enumerate(inputs):
            assert ours[i] == [int(x) for x in expected[i].split()], (name, text)
        for row, ids in zip(rows, ours[len(inputs) :], strict=True):
            assert ids == row[name], (name, row["text"])


def test_bundled_samples_match_sentencepiece() -> None:
    _assert_same(MISTRAL_TOKENIZER, _read_texts(RU_SAMPLE, 200) + _read_texts(EN_SAMPLE, 50))


_ALPHABET = st.one_of(
    st.sampled_from(list(" \t\n\r▁.,!?-'\"«»…—0123456789")),
    st.characters(min_codepoint=0x410, max_codepoint=0x44F),  # Cyrillic
    st.characters(min_codepoint=0x61, max_codepoint=0x7A),
    st.characters(codec="utf-8", exclude_categories=("Cs",)),  # anything, incl. unknown scripts
    st.sampled_from(["😀", "👩", "\u200d", "\U0010ffff", "中", "й", "\u0301", "\x00"]),
)


# Many texts an example: each example loads the 32,000-piece model twice (most of its time).
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet=_ALPHABET, max_size=80), min_size=8, max_size=48))
def test_random_strings_match_sentencepiece(texts: list[str]) -> None:
    _assert_same(MISTRAL_TOKENIZER, texts)


def _train(tmp_dir: Path, name: str, **options: object) -> Path:
    sentences = [
        p for t in _read_texts(RU_SAMPLE, 150) + _read_texts(EN_SAMPLE, 20) for p in t.split("\n") if p
    ]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        **{"model_type": "bpe", "vocab_size": 1200, "byte_fallback": True, "num_threads": 1, "minloglevel": 2}
        | options,
    )
    path = tmp_dir / f"{name}.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("spm")
    return {
        # sentencepiece's defaults: nmt_nfkc charsmap, extra whitespace removed.
        "nfkc": _train(d, "nfkc"),
        # Mistral-like normalization plus user-defined symbols.
        "identity": _train(
            d,
            "identity",
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            user_defined_symbols=["<code>", "@@", "ёж"],
        ),
        # Pieces may span words: no chunking shortcut possible.
        "no-split": _train(d, "nosplit", split_by_whitespace=False, split_digits=True),
    }


@pytest.mark.parametrize("kind", ["nfkc", "identity", "no-split"])
def test_vikhr_trained_models_match_sentencepiece(trained_models: dict[str, Path], kind: str) -> None:
    extra = ["ёжик <code>x</code> @@ ёж", "ＦＵＬＬＷＩＤＴＨ ① ﬁ ㎏ Å", "  many   spaces  "]
    _assert_same(trained_models[kind], EDGE_CASES + extra + _read_texts(RU_SAMPLE, 60)[-30:])


@pytest.mark.parametrize("normalization", ["nmt_nfkc", "identity"])
def test_models_without_byte_fallback_match_sentencepiece(tmp_path: Path, normalization: str) -> None:
    """Without byte fallback sentencepiece makes a run of unknown characters one <unk>; vikhr wrote
    one per character. Both of vikhr's ways to cut a text (on the normalized text; on the raw text,
    when the normalizer only escapes spaces) are checked on real text."""
    identity = normalization == "identity"
    model = _train(
        tmp_path,
        normalization,
        byte_fallback=False,
        character_coverage=0.99,  # rarer characters (and other scripts) are unknown
        normalization_rule_name=normalization,
        remove_extra_whitespaces=not identity,
    )
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    texts = EDGE_CASES + _read_texts(RU_SAMPLE, 300) + _read_texts(EN_SAMPLE, 100)
    for corpus in sorted((SHARED_DATA / "corpus" / "ru").glob("*.jsonl.gz")):  # docs, code, plays, verse
        texts += _read_texts(corpus, 40)
    runs = [
        p
        for t in texts
        for p, i in zip(sp.encode(t, out_type=str), sp.encode(t), strict=True)
        if i == sp.unk_id()
    ]
    assert sum(len(p) > 1 for p in runs) > 20  # the texts do hold runs of unknown characters
    _assert_same(model, texts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=_ALPHABET, max_size=60), min_size=1, max_size=5))
def test_random_strings_match_trained_nfkc(trained_models: dict[str, Path], texts: list[str]) -> None:
    _assert_same(trained_models["nfkc"], texts)


def _paragraph_documents(shared_data: Path, target: int) -> list[str]:
    """≥ `target` documents: paragraphs of every shared corpus, plus whole debian-docs pages."""
    files = sorted((shared_data / "corpus").glob("*/*.jsonl.gz"))
    per_source: list[list[str]] = []
    for f in files:
        texts = _read_texts(f)
        paragraphs = [p for t in texts for p in t.split("\n\n") if p.strip()]
        per_source.append(paragraphs)
    quota = target // len(per_source) + 1
    docs: list[str] = []
    for paragraphs in per_source:
        step = max(1, len(paragraphs) // quota)
        docs.extend(paragraphs[::step][:quota])
    whole = _read_texts(shared_data / "corpus" / "ru" / "debian-docs-ru.jsonl.gz", 500)
    return docs + whole


@pytest.mark.slow
def test_twenty_thousand_shared_documents_through_the_pipeline(shared_data: Path, tmp_path: Path) -> None:
    docs = _paragraph_documents(shared_data, 20_000)
    assert len(docs) >= 20_000
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs))
    for model in _models(shared_data):
        prefix = tmp_path / model.stem
        summary = preprocess([src], prefix, model, workers=2)
        assert summary.documents == len(docs)
        reader = IndexedReader(dataset_prefix(prefix, "text"))
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        ref = sp.encode(docs, num_threads=2)
        mismatches = sum(reader.document(i) != ids for i, ids in enumerate(ref))
        assert mismatches == 0, f"{model.name}: {mismatches} of {len(docs)} documents differ"
