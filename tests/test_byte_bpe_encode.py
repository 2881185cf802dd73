"""vikhr's own byte-level BPE encoder, through `vikhr data preprocess`, against HF `tokenizers`.

Every id written by `preprocess(..., tokenizer_type="HuggingFaceTokenizer")` must equal
`tokenizers.Tokenizer.from_file(path).encode(text).ids` (special tokens added, as Megatron's
HuggingFaceTokenizer does) on: the real tekken vocabulary converted to tokenizer.json, the same
vocabulary with Llama-3's split pattern and BOS template and with Qwen2's pattern and NFC, a GPT-2
style ByteLevel tokenizer trained here on the bundled corpus sample, and an unknown Split regex with
ByteLevel's prefix space (the generic path). Texts: a bundled list of edge cases and sample
paragraphs and, when ../shared/data is present, every held-out document of its corpora, its
tokenizer test strings and the texts of its evaluation sets (all of them with tekken, half each
with the two other layouts of its vocabulary). Unsupported tokenizer.json parts must be refused in
one line with no output written.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from vikhr.assets import EN_SAMPLE, RU_SAMPLE
from vikhr.cli import main as vikhr_main
from vikhr.data import indexed, preprocess
from vikhr.tokenizer.byte_level import LLAMA3_PATTERN, QWEN2_PATTERN

pytestmark = pytest.mark.slow

# Not one of the patterns vikhr scans by hand: split by fancy-regex.
CUSTOM_PATTERN = r"\p{Lu}?\p{Ll}+|\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]+|\s+"

EDGE_CASES = [
    "",
    " ",
    "Hello world! It's what we'd say; they'LL see, I'M sure, you'Re 'S 'ſ.",
    "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "ПРИВЕТмир приветМИР ЁЛКА ёлка Ёлка HeLLo WORLD",
    "Ударе\u0301ние: за\u0301мок и замо\u0301к; cafe\u0301 vs café; A\u030a Å; е\u0308 ё",
    "def f(x):\n\treturn {'a': [1, 2, 3]}  # comment\r\n\r\nif x >= 10_000: print(f'{x:,}')\n",
    'fn main() { let v: Vec<u8> = vec![0x1f, 0xff]; println!("{:?}", v); } // a/b//c',
    "   leading spaces, trailing spaces   ",
    "\n\n\nparagraphs\n\n\n\nwith\r\n\r\nCRLF\r\rand CR\t\ttabs \t \n mixed",
    "NBSP\u00a0here \u00a0 and\u202fnarrow, ideographic\u3000space, line\u2028separator\u2029para",
    "Emoji 😀😀 👍🏻 🇷🇺 👨‍👩‍👧 and 日本語のテキスト、漢字。 한국어",
    "Numbers 1234567890 3.14159 1,000,000 ٣٤٥ Ⅻ ½ ²",
    "<s>[INST] Привет [/INST]</s> <|begin_of_text|>text<|end_of_text|> <|im_start|>user\nhi<|im_end|>",
    "<s><s></s> <unk><pad> <|begin_of_text|<|begin_of_text|>> [INST][/INST]",
    "url: https://example.com/path?q=1&x=2#frag, email a.b@c.d, path C:\\Windows\\x.dll",
    "a" * 500 + " " + "б" * 300 + " " + "-" * 200 + " " * 100 + "x",
    "\u0000\u0001\u001f\u007f control \ufeff BOM \ufffd replacement",
]


@functools.cache
def _hf(path: Path) -> Any:
    """The HF tokenizers reference (loaded once per file: tekken's takes a second)."""
    import tokenizers

    return tokenizers.Tokenizer.from_file(str(path))


def _split_then_byte_level(pattern: str, add_prefix_space: bool = False) -> dict:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {
                "type": "ByteLevel",
                "add_prefix_space": add_prefix_space,
                "trim_offsets": True,
                "use_regex": False,
            },
        ],
    }


def _added(token_id: int, content: str) -> dict:
    return {
        "id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
        "normalized": False, "special": True,
    }  # fmt: skip


def _tekken_variants(tekken: dict) -> dict[str, dict]:
    """tekken as converted, and its vocabulary laid out as Llama-3 and Qwen2 tokenizers are (new
    dicts sharing tekken's unchanged parts)."""
    bos = len(tekken["model"]["vocab"])
    template = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}
        },
    }
    llama3 = {
        **tekken,
        "pre_tokenizer": _split_then_byte_level(LLAMA3_PATTERN),
        "added_tokens": [
            *tekken["added_tokens"],
            _added(bos, "<|begin_of_text|>"),
            _added(bos + 1, "<|end_of_text|>"),
        ],
        "post_processor": template,
    }
    qwen2 = {
        **tekken,
        "pre_tokenizer": _split_then_byte_level(QWEN2_PATTERN),
        "normalizer": {"type": "NFC"},
        "added_tokens": [*tekken["added_tokens"], _added(bos, "<|im_start|>"), _added(bos + 1, "<|im_end|>")],
    }
    return {"tekken": tekken, "llama3": llama3, "qwen2-nfc": qwen2}


def _sample_texts(limit_bytes: int) -> list[str]:
    """Paragraphs of the bundled Russian and English corpus samples, up to `limit_bytes` of each."""
    texts = []
    for path in (RU_SAMPLE, EN_SAMPLE):
        size = 0
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                for paragraph in json.loads(line)["text"].split("\n\n"):
                    texts.append(paragraph)
                    size += len(paragraph.encode())
                if size >= limit_bytes:
                    break
    return texts


def _gpt2_variants() -> dict[str, dict]:
    """A GPT-2 style tokenizer trained on the bundled sample, and the same vocabulary behind an
    unknown Split regex with ByteLevel's prefix space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(_sample_texts(1_000_000), trainer)
    gpt2 = json.loads(tok.to_str())
    custom = {**gpt2, "pre_tokenizer": _split_then_byte_level(CUSTOM_PATTERN, add_prefix_space=True)}
    return {"gpt2-trained": gpt2, "custom-regex": custom}


@pytest.fixture(scope="module")
def tokenizers_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Name -> tokenizer.json of every variant under test."""
    mistral_common = pytest.importorskip("mistral_common")
    from transformers.integrations.mistral.tokenizer import MistralConverter

    out = tmp_path_factory.mktemp("byte-bpe")
    tekken_file = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    tekken = json.loads(MistralConverter(str(tekken_file)).converted().to_str())
    paths = {}
    for name, spec in {**_tekken_variants(tekken), **_gpt2_variants()}.items():
        paths[name] = out / f"{name}.json"
        paths[name].write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return paths


def vikhr_ids(tokenizer_json: Path, texts: list[str], work: Path) -> list[list[int]]:
    """The ids `vikhr data preprocess` writes for each text (one document per text)."""
    src = work / "texts.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    preprocess([src], work / "out", tokenizer_json, tokenizer_type="HuggingFaceTokenizer", workers=2)
    reader = indexed.IndexedReader(work / "out_text_document")
    return [reader.document(i) for i in range(len(reader))]


def assert_same_ids(name: str, tokenizer_json: Path, texts: list[str], work: Path) -> None:
    hf = _hf(tokenizer_json)
    want = [e.ids for e in hf.encode_batch_fast(texts, add_special_tokens=True)]
    got = vikhr_ids(tokenizer_json, texts, work)
    assert len(got) == len(texts)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g != w:
            k = next((j for j, (a, b) in enumerate(zip(g, w, strict=False)) if a != b), min(len(g), len(w)))
            theirs = [hf.id_to_token(t) for t in w[max(0, k - 3) : k + 4]]
            ours = [hf.id_to_token(t) for t in g[max(0, k - 3) : k + 4]]
            where = f"{name}: text {i} differs at token {k}"
            pytest.fail(f"{where}: vikhr {ours}, tokenizers {theirs}: {texts[i][:200]!r}")


VARIANTS = ["tekken", "llama3", "qwen2-nfc", "gpt2-trained", "custom-regex"]


@pytest.mark.parametrize("name", VARIANTS)
def test_edge_cases_and_bundled_samples_match_tokenizers(
    name: str, tokenizers_json: dict[str, Path], tmp_path: Path
) -> None:
    texts = EDGE_CASES + _sample_texts(50_000)
    assert_same_ids(name, tokenizers_json[name], texts, tmp_path)


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.fixture(scope="module")
def shared_texts(shared_data: Path) -> dict[str, list[str]]:
    """The shared data's texts: "corpus", every held-out document of its corpora; "eval", every
    distinct string of every record of its evaluation sets (all but the train splits); "tests",
    its tokenizer test strings."""
    from vikhr.tokenizer.corpus import is_heldout

    corpus: list[str] = []
    for path in sorted((shared_data / "corpus").glob("*/*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs = (json.loads(line) for line in f)
            corpus += [d["text"] for d in docs if is_heldout(d["id"])]
    evals: dict[str, None] = {}
    for path in sorted((shared_data / "eval").glob("*/*.jsonl")):
        if path.stem != "train":
            # Lines end at "\n" only (texts hold U+2028 and friends, which splitlines() cuts at).
            for line in path.read_text(encoding="utf-8").split("\n"):
                if line.strip():
                    evals.update(dict.fromkeys(_strings(json.loads(line))))
    tests = shared_data / "tokenizers" / "tests"
    ru_lines = (tests / "ru-test.jsonl").read_text("utf-8").split("\n")
    ru_test = [json.loads(line)["text"] for line in ru_lines if line.strip()]
    vocab_test = (tests / "vocab-test.inp").read_text("utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    return {"corpus": corpus, "eval": list(evals), "tests": ru_test + vocab_test}


# The evaluation texts each variant encodes: tekken all of them, the two other layouts of its
# vocabulary half each, the small trained vocabulary none (the reference, HF tokenizers, encodes
# about 1 MB/s on 2 cores: every text for every variant would take minutes).
EVAL_SHARE = {"tekken": slice(None), "llama3": slice(0, None, 2), "qwen2-nfc": slice(1, None, 2)}


@pytest.mark.parametrize("name", VARIANTS)
def test_heldout_and_eval_texts_match_tokenizers(
    name: str, tokenizers_json: dict[str, Path], shared_texts: dict[str, list[str]], tmp_path: Path
) -> None:
    """Every held-out document and tokenizer test string; the evaluation texts of EVAL_SHARE."""
    evals = shared_texts["eval"][EVAL_SHARE.get(name, slice(0))]
    texts = shared_texts["corpus"] + shared_texts["tests"] + evals
    assert len(texts) > (100_000 if name == "tekken" else 200)
    assert_same_ids(name, tokenizers_json[name], texts, tmp_path)


UNSUPPORTED = {
    "normalizer": (
        lambda s: s.update(normalizer={"type": "Lowercase"}),
        'normalizer "Lowercase" is not supported by vikhr\'s byte-level encoder',
    ),
    "pre_tokenizer": (
        lambda s: s.update(
            pre_tokenizer={
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": True}, s["pre_tokenizer"]],
            }
        ),
        'pre_tokenizer "Digits" is not supported',
    ),
    "split behavior": (
        lambda s: (
            s.update(pre_tokenizer=_split_then_byte_level(r"\s+"))
            or s["pre_tokenizer"]["pretokenizers"][0].update(behavior="Removed")
        ),
        'pre_tokenizer Split behavior "Removed" is not supported',
    ),
    "added token flag": (
        lambda s: s["added_tokens"][0].update(lstrip=True),
        'added token "<|endoftext|>" has lstrip true',
    ),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_parts_are_refused_in_one_line_without_output(
    case: str, tokenizers_json: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    edit, message = UNSUPPORTED[case]
    spec = json.loads(tokenizers_json["gpt2-trained"].read_text(encoding="utf-8"))
    edit(spec)
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(spec), encoding="utf-8")
    _hf(bad)  # the tokenizers library itself loads it
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "Привет, мир!"}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = [
        "data", "preprocess", "--input", str(src), "--output-prefix", str(out),
        "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(bad),
    ]  # fmt: skip
    assert vikhr_main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("out*"))


@functools.cache
def _gpt2_trained_text() -> str:
    """The GPT-2 style tokenizer.json of `_gpt2_variants` (trained once per process), as text."""
    return json.dumps(_gpt2_variants()["gpt2-trained"], ensure_ascii=False)


def _with_byte_fallback(tmp_path: Path, drop_byte_zero: bool) -> Path:
    """The trained GPT-2 style tokenizer with `byte_fallback` on and the 256 `<0xXX>` tokens of a
    SentencePiece conversion; `drop_byte_zero`: byte 0x00 ("Ā", U+0100) left out of the vocab."""
    spec = json.loads(_gpt2_trained_text())
    spec["model"]["byte_fallback"] = True
    vocab = spec["model"]["vocab"]
    if drop_byte_zero:
        del vocab["Ā"]
    first = max(vocab.values()) + 1
    vocab.update({f"<0x{b:02X}>": first + b for b in range(256)})
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return path


def test_byte_fallback_with_every_byte_in_the_vocab_encodes_as_tokenizers(tmp_path: Path) -> None:
    """`"byte_fallback": true` was refused whatever the vocabulary, though with all 256 bytes in it
    nothing of a ByteLevel word falls back: such files now encode, with the ids of `tokenizers`."""
    tokenizer_json = _with_byte_fallback(tmp_path, drop_byte_zero=False)
    texts = [*EDGE_CASES, *_sample_texts(20_000), "Привет 👋 мир 🇷🇺! Hello, world — 😀😀 ok"]
    assert_same_ids("byte-fallback", tokenizer_json, texts, tmp_path)


def test_byte_fallback_that_changes_ids_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A byte missing from the vocab whose UTF-8 `<0xXX>` tokens are there is encoded as those by
    `tokenizers` (byte_fallback changes its ids): refused, naming the byte, no output written."""
    bad = _with_byte_fallback(tmp_path, drop_byte_zero=True)
    hf = _hf(bad)
    assert hf.encode("\x00", add_special_tokens=False).tokens == ["<0xC4>", "<0x80>"]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "Привет,\x00 мир!"}) + "\n", encoding="utf-8")
    args = [
        "data", "preprocess", "--input", str(src), "--output-prefix", str(tmp_path / "out"),
        "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(bad),
    ]  # fmt: skip
    assert vikhr_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "byte 0x00 ('Ā') is not in the vocab, and byte_fallback encodes it as <0xC4> <0x80>" in err
    assert not list(tmp_path.glob("out*"))


def test_other_tokenizer_json_files_still_encode(tmp_path: Path) -> None:
    """A tokenizer.json that is not byte-level (here Metaspace) is encoded by the tokenizers crate."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={"▁a": 0, "▁": 1, "a": 2}, merges=[("▁", "a")]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.save(str(tmp_path / "tokenizer.json"))
    assert vikhr_ids(tmp_path / "tokenizer.json", ["a a"], tmp_path) == [[0, 0]]
