"""Tokenizer training (replace/extend), HF export equivalence, manifest, compare report and CLI."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
import re
import shutil
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import sentencepiece as spm

from tests.helpers import (
    replace_within_one_tick,
    rewrite_in_place_within_one_tick,
    stderr_of_cli,
    written_an_hour_ago,
)
from vikhr.assets import EN_SAMPLE, MISTRAL_TOKENIZER, RU_SAMPLE
from vikhr.cli import main as cli_main
from vikhr.errors import VikhrError
from vikhr.tokenizer import load
from vikhr.tokenizer.compare import TABLE1_SENTENCE, compare
from vikhr.tokenizer.corpus import (
    MAX_LINE_BYTES,
    CorpusHashes,
    corpus_hashes,
    corpus_sha256,
    first_lines,
    is_heldout,
    iter_documents,
    iter_lines,
    sample_lines,
    write_training_sample,
    write_training_text,
)
from vikhr.tokenizer.hf_export import build_hf_tokenizer, compare_encodings
from vikhr.tokenizer.train import CYRILLIC, TrainSettings, train_tokenizer

ASSET_DIR = Path(__file__).resolve().parent.parent / "vikhr" / "assets" / "tokenizers"
RU40K_MODEL = ASSET_DIR / "vikhr-ru-40k.model"
RU40K_JSON = ASSET_DIR / "vikhr-ru-40k.tokenizer.json"
MISTRAL_TABLE1 = ["▁Ма", "шин", "ное", "▁об", "у", "чение", "▁из", "мен", "я", "ет", "▁ми", "р"]
SMALL = {"max_chars_per_file": 300_000, "num_threads": 2}


@pytest.fixture(scope="module")
def replace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "replace"
    train_tokenizer([RU_SAMPLE, EN_SAMPLE], out, TrainSettings(vocab_size=1500, **SMALL))
    return out


@pytest.fixture(scope="module")
def extend_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "extend"
    settings = TrainSettings(mode="extend", vocab_size=32400, base_model=str(MISTRAL_TOKENIZER), **SMALL)
    train_tokenizer([RU_SAMPLE], out, settings)
    return out


def heldout_lines(shared: Path | None, per_file: int = 400) -> list[str]:
    """Held-out lines of the bundled samples and, when present, of every real corpus file."""
    files = [RU_SAMPLE, EN_SAMPLE]
    if shared is not None:
        files += sorted((shared / "corpus").glob("*/*.jsonl.gz"))
    lines: list[str] = []
    for f in files:
        lines += list(iter_lines(f, split="heldout"))[:per_file]
    return lines


@pytest.fixture(scope="module")
def optional_shared() -> Path | None:
    from tests.conftest import SHARED_DATA

    return SHARED_DATA if SHARED_DATA.is_dir() else None


def test_mistral_splits_table1_sentence_exactly() -> None:
    assert load(MISTRAL_TOKENIZER).pieces(TABLE1_SENTENCE) == MISTRAL_TABLE1
    hf = build_hf_tokenizer(MISTRAL_TOKENIZER)
    assert hf.encode(TABLE1_SENTENCE, add_special_tokens=False).tokens == MISTRAL_TABLE1


def test_shipped_ru40k_tokenizer_beats_mistral_on_table1_sentence() -> None:
    sp = spm.SentencePieceProcessor(model_file=str(RU40K_MODEL))
    assert sp.get_piece_size() == 40000
    pieces = sp.encode(TABLE1_SENTENCE, out_type=str)
    assert "".join(pieces).replace("▁", " ").strip() == TABLE1_SENTENCE
    mistral = load(MISTRAL_TOKENIZER).pieces(TABLE1_SENTENCE)
    assert len(pieces) <= 7 < len(mistral)
    assert "▁мир" in pieces  # whole common words are single pieces


@pytest.fixture(scope="module")
def all_russian_40k(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 40k replace tokenizer trained on every Russian corpus in ../shared (training split) + 6M EN chars.

    Same recipe as `ru40k-replace-all-ru` in tools/bench_tokenizer.py (~15 s on 2 cores).
    """
    corpora = [f"{p}@100M" for p in sorted((shared_data / "corpus" / "ru").glob("*.jsonl.gz"))]
    corpora.append(f"{shared_data / 'corpus' / 'en' / 'english-novels.jsonl.gz'}@6M")
    out = tmp_path_factory.mktemp("tok") / "all-ru-40k"
    settings = TrainSettings(vocab_size=40000, split_by_script=False, verify_lines_per_file=200)
    train_tokenizer(corpora, out, settings)
    return out


def test_trained_ru40k_tokenizer_needs_at_most_6_pieces_for_table1_sentence(all_russian_40k: Path) -> None:
    """The paper's Table 1 must-show, on a 40k tokenizer trained from the real Russian corpora."""
    model = all_russian_40k / "tokenizer.model"
    assert spm.SentencePieceProcessor(model_file=str(model)).get_piece_size() == 40000
    pieces = load(model).pieces(TABLE1_SENTENCE)
    assert "".join(pieces).replace("▁", " ").strip() == TABLE1_SENTENCE
    assert len(pieces) <= 6, pieces
    assert len(load(MISTRAL_TOKENIZER).pieces(TABLE1_SENTENCE)) == 12


def test_trained_ru40k_tokenizer_reaches_target_efficiency_on_heldout(
    all_russian_40k: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Held-out chars/token: Russian (all five sets pooled) >= 4.2, English >= 3.7; Mistral far below."""
    texts = sorted(str(p) for p in (shared_data / "corpus").glob("*/*.jsonl.gz"))
    specs = [f"ru40k={all_russian_40k}", f"mistral={shared_data / 'tokenizers' / 'mistral-7b-v0.1.model'}"]
    results = compare(specs, texts, tmp_path / "report", split="heldout", max_chars=300_000)

    def chars_per_token(tok: str, russian: bool) -> float:
        rows = [r for r in results if r.tokenizer == tok and (r.text_set != "english-novels") == russian]
        return sum(r.chars for r in rows) / sum(r.tokens for r in rows)

    assert chars_per_token("ru40k", russian=True) >= 4.2
    assert chars_per_token("ru40k", russian=False) >= 3.7
    assert chars_per_token("mistral", russian=True) < 2.7


def test_shipped_ru40k_tokenizer_json_matches_model(optional_shared: Path | None) -> None:
    lines = heldout_lines(optional_shared)
    assert len(lines) > 500
    assert compare_encodings(load(RU40K_MODEL), load(RU40K_JSON), lines) == []


def test_mistral_export_matches_reference_vectors(shared_data: Path) -> None:
    """The exporter reproduces the llama.cpp/sentencepiece test vectors (whitespace runs, emoji, CJK)."""
    tests = shared_data / "tokenizers" / "tests"
    texts = (tests / "vocab-test.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    for name in ("mistral-7b-v0.1", "llama-2"):
        expected = [
            [int(x) for x in line.split()] for line in (tests / f"{name}.out").read_text().split("\n")
        ]
        hf = build_hf_tokenizer(shared_data / "tokenizers" / f"{name}.model")
        hf.encode_special_tokens = True
        got = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        assert got == expected[: len(texts)]


def _byte_id(sp: spm.SentencePieceProcessor, value: int) -> int:
    return sp.piece_to_id(f"<0x{value:02X}>")


def _generated_id_sequences(sp: spm.SentencePieceProcessor, count: int, seed: int) -> list[list[int]]:
    """Seeded id sequences as a model may generate them: byte pieces (spaces, newlines, whole
    characters, lone bytes of none), runs of "▁", control ids anywhere, any piece."""
    rng = random.Random(seed)
    controls = [i for i in range(sp.get_piece_size()) if sp.is_control(i)]
    spaces = [sp.piece_to_id(p) for p in ("▁", "▁▁", "▁▁▁▁")]

    def unit() -> list[int]:
        kind = rng.randrange(7)
        if kind == 0:
            return [_byte_id(sp, rng.choice([0x20, 0x20, 0x0A, rng.randrange(0x80)]))]
        if kind == 1:  # one character as its 2-4 UTF-8 bytes
            char = chr(rng.choice([rng.randrange(0x80, 0xD800), rng.randrange(0x10000, 0x1F700)]))
            return [_byte_id(sp, b) for b in char.encode()]
        if kind == 2:  # a lead or continuation byte
            return [_byte_id(sp, rng.randrange(0x80, 0x100))]
        if kind == 3:
            return [rng.choice(spaces)]
        if kind == 4:
            return [rng.choice(controls)]
        return [rng.randrange(sp.get_piece_size())]

    return [[i for _ in range(rng.randint(1, 6)) for i in unit()] for _ in range(count)]


def _decoder_reproduces(sp: spm.SentencePieceProcessor, ids: list[int]) -> bool:
    """False for what no tokenizers decoder decodes as SentencePiece does (docs/tokenizer.md): <unk>,
    byte pieces on both sides of control pieces, a run of non-ASCII byte pieces that holds both a
    valid character and an invalid byte."""
    if sp.unk_id() in ids:
        return False
    kept = [i for i in ids if not sp.is_control(i)]  # as decode(skip_special_tokens=True) sees them
    # SentencePiece ends a byte run at a control piece; transformers drops the control first.
    if any(
        sp.is_byte(a) and sp.is_byte(b) and a_at + 1 < b_at
        for (a_at, a), (b_at, b) in pairwise([(k, i) for k, i in enumerate(ids) if not sp.is_control(i)])
    ):
        return False
    run: list[int] = []
    for i in [*kept, -1]:
        if i >= 0 and sp.is_byte(i) and int(sp.id_to_piece(i)[3:5], 16) >= 0x80:
            run.append(i)
            continue
        if run and sp.decode(run) != "\ufffd" * len(run):
            try:
                bytes(int(sp.id_to_piece(j)[3:5], 16) for j in run).decode("utf-8")
            except UnicodeDecodeError:
                return False
        run = []
    return True


@pytest.mark.parametrize("model", [MISTRAL_TOKENIZER, RU40K_MODEL], ids=["mistral", "ru40k"])
def test_export_decodes_generated_ids_as_sentencepiece(model: Path, tmp_path: Path) -> None:
    """transformers' decode of the export equals SentencePiece's: a <0x20> byte first kept (was
    stripped as the dummy prefix), a newline or other ASCII byte after a broken character kept
    (was a second U+FFFD), spaces after control pieces, real text and pieces of it."""
    from transformers import AutoTokenizer

    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    write_hf_tokenizer(model, tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    word, space, newline, bos, eos = (sp.piece_to_id(p) for p in ("▁world", "▁", "<0x0A>", "<s>", "</s>"))
    by_hand = [
        [_byte_id(sp, 0x20), word],  # "  world": a byte's space is no dummy prefix
        [bos, _byte_id(sp, 0x20), space, word],
        [_byte_id(sp, 0xD0), newline, word],  # "\ufffd\n world"
        [newline, _byte_id(sp, 0xB2)],
        [_byte_id(sp, 0xE2), _byte_id(sp, 0x84)],  # an unfinished character: one U+FFFD a byte
        [space],
        [space, space, word],
        [sp.piece_to_id("▁▁▁▁"), word],
        [bos, word, eos, bos, word, eos],
    ]
    texts = [*first_lines(RU_SAMPLE, "text", "all", 5.0, 60), *first_lines(EN_SAMPLE, "text", "all", 5.0, 30)]
    real = [ids[:200] for ids in sp.encode(texts)]
    rng = random.Random(1)
    windows = [
        ids[a : a + rng.randint(1, 12)] for ids in real if ids for a in rng.choices(range(len(ids)), k=3)
    ]
    cases = by_hand + real + windows + _generated_id_sequences(sp, 3000, seed=0)
    cases = [ids for ids in cases if ids and _decoder_reproduces(sp, ids)]
    assert len(cases) > 2000
    decoded = [(ids, sp.decode(ids), hf.decode(ids, skip_special_tokens=True)) for ids in cases]
    assert [(ids, want, got) for ids, want, got in decoded if want != got] == []


def test_export_decode_limits_are_as_documented(tmp_path: Path) -> None:
    """The cases docs/tokenizer.md lists as decoded otherwise than by SentencePiece, as they are."""
    from transformers import AutoTokenizer

    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    write_hf_tokenizer(MISTRAL_TOKENIZER, tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    word, eos = sp.piece_to_id("▁world"), sp.piece_to_id("</s>")
    smile_and_half = [_byte_id(sp, b) for b in "😀".encode() + b"\xf0\x9f"]
    split_by_eos = [_byte_id(sp, 0xD0), eos, _byte_id(sp, 0xBF)]
    cases = {  # ids: (SentencePiece, transformers)
        (sp.unk_id(), word): (" ⁇  world", "world"),
        tuple(smile_and_half): ("😀\ufffd\ufffd", "\ufffd" * 6),
        tuple(split_by_eos): ("\ufffd\ufffd", "п"),
    }
    for ids, expected in cases.items():
        assert (sp.decode(list(ids)), hf.decode(list(ids), skip_special_tokens=True)) == expected


def test_a_piece_spelled_as_the_decoders_hidden_byte_is_refused(tmp_path: Path) -> None:
    from vikhr.tokenizer.hf_export import load_model_proto

    proto = load_model_proto(MISTRAL_TOKENIZER)
    proto.pieces[1000].piece = "< 0x41>"
    path = tmp_path / "odd.model"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(VikhrError, match=r"piece '< 0x41>' cannot be exported: .* decode it as <0x41>"):
        build_hf_tokenizer(path)


@pytest.mark.parametrize("mode", ["replace", "extend"])
def test_tokenizer_json_ids_equal_model_ids_on_heldout(
    mode: str, replace_dir: Path, extend_dir: Path, optional_shared: Path | None
) -> None:
    out = replace_dir if mode == "replace" else extend_dir
    lines = heldout_lines(optional_shared)
    assert compare_encodings(load(out / "tokenizer.model"), load(out / "tokenizer.json"), lines) == []
    # Through transformers as well (what training code uses): BOS prepended, same ids after it.
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(out))
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    sample = [ln for ln in lines if "<" not in ln][:200]
    assert [hf(t)["input_ids"] for t in sample] == [[1, *ids] for ids in sp.encode(sample)]
    assert hf.decode(hf("Привет, мир!")["input_ids"], skip_special_tokens=True) == "Привет, мир!"


def test_specials_and_byte_fallback_are_mistral_compatible(replace_dir: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(replace_dir / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert [sp.id_to_piece(3 + b) for b in (0, 10, 255)] == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert all(sp.is_byte(3 + b) for b in range(256))
    # A character never seen in training falls back to its UTF-8 bytes, not <unk>.
    assert sp.encode("\u4e2d", out_type=str) == ["▁", "<0xE4>", "<0xB8>", "<0xAD>"]


def test_manifest_records_corpora_settings_and_files(replace_dir: Path) -> None:
    m = json.loads((replace_dir / "manifest.json").read_text(encoding="utf-8"))
    assert m["mode"] == "replace" and m["vocab_size"] == 1500
    assert m["pad_to_multiple"] == 128 and m["padded_vocab_size"] == 1536
    assert [c["sha256"] for c in m["corpora"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (RU_SAMPLE, EN_SAMPLE)
    ]
    # A hash-keyed draw per paragraph (or piece of a long one): the budget give or take a few percent.
    assert all(0 < c["chars"] <= 300_000 * 1.1 for c in m["corpora"])
    assert m["settings"]["vocab_size"] == 1500 and m["settings"]["heldout_percent"] == 5.0
    for name, digest in m["files"].items():
        assert hashlib.sha256((replace_dir / name).read_bytes()).hexdigest() == digest
    # Every corpus had held-out lines: no training line was needed, and no count of 0 says otherwise.
    assert m["hf_check"]["mismatches"] == 0 and m["hf_check"]["heldout_lines_checked"] > 0
    assert "train_lines_checked" not in m["hf_check"]


def test_without_held_out_lines_the_export_is_checked_on_training_lines(tmp_path: Path) -> None:
    """--heldout-percent 0 left no line to compare the .model and tokenizer.json on: 0 were checked."""
    settings = TrainSettings(vocab_size=400, heldout_percent=0, max_chars_per_file=50_000)
    manifest = train_tokenizer([RU_SAMPLE], tmp_path / "tok", settings)
    assert manifest["hf_check"]["train_lines_checked"] > 0
    assert "heldout_lines_checked" not in manifest["hf_check"]


def test_a_base_with_user_defined_pieces_is_checked_around_them(tmp_path: Path) -> None:
    """A base trained with user_defined_symbols (ChatML tokens) and a corpus holding them: the export
    spells them out where SentencePiece matches them (docs/tokenizer.md), so every line holding one
    failed the export check ("please report this as a bug") after the training; the text around
    them is checked."""
    lines = list(iter_lines(RU_SAMPLE, max_chars=200_000))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(tmp_path / "base"), vocab_size=600,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, user_defined_symbols=["<|im_start|>", "@@"], minloglevel=2,
    )  # fmt: skip
    docs = [{"id": str(i), "text": f"<|im_start|>user\n{line} @@ конец"} for i, line in enumerate(lines)]
    corpus = _write_jsonl(tmp_path / "chats.jsonl.gz", docs)
    for mode, size in (("extend", 700), ("prune-extend", 650)):
        settings = TrainSettings(mode=mode, vocab_size=size, base_model=str(tmp_path / "base.model"))
        manifest = train_tokenizer([corpus], tmp_path / mode, settings)
        assert manifest["hf_check"]["mismatches"] == 0 and manifest["hf_check"]["heldout_lines_checked"] > 0
        model = spm.SentencePieceProcessor(model_file=str(tmp_path / mode / "tokenizer.model"))
        assert model.piece_to_id("<|im_start|>") in model.encode("<|im_start|>user")


def test_extend_keeps_base_ids_and_english_encoding(extend_dir: Path, optional_shared: Path | None) -> None:
    base = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    ext = spm.SentencePieceProcessor(model_file=str(extend_dir / "tokenizer.model"))
    assert ext.get_piece_size() == 32400
    assert [ext.id_to_piece(i) for i in range(32000)] == [base.id_to_piece(i) for i in range(32000)]
    new_pieces = [ext.id_to_piece(i) for i in range(32000, 32400)]
    assert all(CYRILLIC.search(p) for p in new_pieces)
    lines = heldout_lines(optional_shared)
    latin = [ln for ln in lines if not CYRILLIC.search(ln)]
    assert len(latin) > 100
    assert ext.encode(latin) == base.encode(latin)
    russian = [ln for ln in lines if CYRILLIC.search(ln)]
    assert sum(map(len, ext.encode(russian))) < 0.95 * sum(map(len, base.encode(russian)))


def test_extend_regrows_the_russian_pool_when_mixed_lines_fill_it_with_latin(tmp_path: Path) -> None:
    """Lines mixing Russian with 3× as much English (like man pages): the first pool has too few new
    Cyrillic pieces, so it is retrained larger until the requested vocabulary size is reached."""
    ru = list(iter_lines(RU_SAMPLE, split="train"))[:3000]
    en = list(iter_lines(EN_SAMPLE, split="train"))
    mixed = tmp_path / "mixed.jsonl"
    with mixed.open("w", encoding="utf-8") as f:
        for i, line in enumerate(ru):
            text = line[:200] + " " + " ".join(en[(3 * i + k) % len(en)] for k in range(3))
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    settings = TrainSettings(mode="extend", vocab_size=33500, base_model=str(MISTRAL_TOKENIZER))
    manifest = train_tokenizer([mixed], tmp_path / "tok", settings)
    assert manifest["vocab_size"] == 33500
    assert manifest["extend"]["added_pieces"] == 1500
    model = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    assert all(CYRILLIC.search(model.id_to_piece(i)) for i in range(32000, 33500))


def test_extend_with_cross_word_pieces_keeps_english_and_hf_equality(
    tmp_path: Path, extend_dir: Path, optional_shared: Path | None
) -> None:
    """split_by_whitespace=false: new pieces may span words; English ids and the HF export still hold."""
    out = tmp_path / "xword"
    settings = TrainSettings(
        mode="extend",
        vocab_size=32400,
        base_model=str(MISTRAL_TOKENIZER),
        split_by_whitespace=False,
        **SMALL,
    )
    train_tokenizer([RU_SAMPLE], out, settings)
    base = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    ext = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert [ext.id_to_piece(i) for i in range(32000)] == [base.id_to_piece(i) for i in range(32000)]
    new_pieces = [ext.id_to_piece(i) for i in range(32000, ext.get_piece_size())]
    assert all(CYRILLIC.search(p) for p in new_pieces)
    assert any("▁" in p.lstrip("▁") for p in new_pieces), "no piece spans words"
    lines = heldout_lines(optional_shared)
    latin = [ln for ln in lines if not CYRILLIC.search(ln)]
    assert ext.encode(latin) == base.encode(latin)
    assert compare_encodings(load(out / "tokenizer.model"), load(out / "tokenizer.json"), lines) == []
    # Spanning words must pay off on held-out Russian against whole-word pieces of the same count.
    words = spm.SentencePieceProcessor(model_file=str(extend_dir / "tokenizer.model"))
    russian = list(iter_lines(RU_SAMPLE, split="heldout"))
    assert sum(map(len, ext.encode(russian))) < sum(map(len, words.encode(russian)))


def test_extend_scores_have_no_ties_so_the_export_encodes_as_sentencepiece(tmp_path: Path) -> None:
    """A Russian pool piece whose score equals an overlapping base piece's ("е." and Mistral's "..",
    both -309): SentencePiece took the leftmost merge, the export the lower merge rank, so "1е.."
    was ['▁', '1', 'е.', '.'] in one and ['▁', '1', 'е', '..'] in the other."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from vikhr.tokenizer.hf_export import load_model_proto, write_hf_tokenizer
    from vikhr.tokenizer.train import extend_model

    base = load_model_proto(MISTRAL_TOKENIZER)
    dots = next(p.score for p in base.pieces if p.piece == "..")
    pool = pb.ModelProto()
    for piece, score in (("е.", dots), ("ж.", dots - 5), ("е", 0.0)):
        pool.pieces.add(piece=piece, score=score, type=pb.ModelProto.SentencePiece.NORMAL)
    merged, stats = extend_model(base, pool, 10)
    assert stats["added_merges"] == 2
    path = tmp_path / "tied.model"
    path.write_bytes(merged.SerializeToString())
    scores = [
        p.score for p in merged.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL and len(p.piece) > 1
    ]
    assert len(set(scores)) == len(scores)
    texts = ["1е..", "(е..)", "xе..", "ж..е.", "Mistral... keeps its ids."]
    exported, _ = write_hf_tokenizer(path, tmp_path / "hf")
    assert compare_encodings(load(path), load(exported), texts) == []
    english = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    assert spm.SentencePieceProcessor(model_file=str(path)).encode(texts[-1]) == english.encode(texts[-1])


def test_an_output_path_with_a_comma_trains(tmp_path: Path) -> None:
    """SentencePiece splits its `input` at commas: "--out runs,1/tok" failed after the sampling with
    'NOT_FOUND: "…runs"'."""
    out = tmp_path / "runs,1" / "tok a,b"
    train_tokenizer([RU_SAMPLE], out, TrainSettings(vocab_size=1000, max_chars_per_file=100_000))
    assert spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).get_piece_size() == 1000


def test_training_is_deterministic_and_thread_independent(tmp_path: Path) -> None:
    kw = {"vocab_size": 800, "max_chars_per_file": 150_000}
    train_tokenizer([RU_SAMPLE], tmp_path / "a", TrainSettings(num_threads=1, **kw))
    train_tokenizer([RU_SAMPLE], tmp_path / "b", TrainSettings(num_threads=2, **kw))
    for name in ("tokenizer.model", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _write_jsonl(path: Path, docs: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


def test_heldout_documents_never_reach_training_text(tmp_path: Path) -> None:
    docs = [{"id": f"doc{i}", "text": f"уникальная строка номер {i}\nвторая строка {i}"} for i in range(400)]
    corpus = _write_jsonl(tmp_path / "c.jsonl.gz", docs)
    held = {d["id"] for d in docs if is_heldout(d["id"])}
    assert 5 <= len(held) <= 45  # about 5 % of 400
    train_ids = {d.doc_id for d in iter_documents(corpus, split="train")}
    assert train_ids.isdisjoint(held) and train_ids | held == {d["id"] for d in docs}
    out = tmp_path / "train.txt"
    write_training_text([corpus], out, "text", None, 5.0)
    written = set(out.read_text(encoding="utf-8").splitlines())
    for d in docs:
        assert (d["text"].split("\n")[0] in written) == (d["id"] not in held)


def test_sampling_budget_is_respected_and_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    stats = write_training_text([RU_SAMPLE], a, "text", 200_000, 5.0)
    write_training_text([RU_SAMPLE], b, "text", 200_000, 5.0)
    assert a.read_bytes() == b.read_bytes()
    chars = stats[str(RU_SAMPLE)]["chars"]
    assert 150_000 < chars < 250_000


def test_a_budget_that_draws_no_paragraph_says_so_not_that_the_file_has_no_text(tmp_path: Path) -> None:
    """`--corpus FILE@10` on a file of text: each paragraph's draw (probability budget/total) missed,
    and training said "the training split of the corpora has no text (check --text-key and the files)";
    a file whose documents were all held out got the same words."""
    docs = [{"id": f"d{i}", "text": f"Длинный абзац номер {i}, в нём слова.\nАбзац {i}."} for i in range(5)]
    corpus = _write_jsonl(tmp_path / "c.jsonl.gz", docs)
    out = tmp_path / "train.txt"
    with pytest.raises(VikhrError, match=r"c\.jsonl\.gz: its budget of 10 characters drew no paragraph of"):
        write_training_sample([corpus], [10], out, "text", 5.0, only_cyrillic=False)
    held_id = next(f"h{i}" for i in range(1000) if is_heldout(f"h{i}"))
    held = _write_jsonl(tmp_path / "held.jsonl.gz", [{"id": held_id, "text": "Привет, мир."}])
    with pytest.raises(
        VikhrError, match=r"held\.jsonl\.gz: its one document is held out \(--heldout-percent"
    ):
        write_training_sample([held], [None], out, "text", 5.0, only_cyrillic=False)
    # A budget that draws something is taken as before.
    stats = write_training_sample([corpus], [100], out, "text", 5.0, only_cyrillic=False)
    assert 0 < stats[str(corpus)]["chars"] < 300


def test_a_budget_ending_in_an_indented_paragraph_stops_at_the_last_word(tmp_path: Path) -> None:
    """`compare --max-chars` (and every reader of lines with a budget) cut the paragraph that crosses
    the budget at white space: one whose first characters up to the budget were all white space (an
    indented man page line) was an IndexError traceback."""
    texts = _write_jsonl(tmp_path / "man.jsonl.gz", [{"id": "a", "text": "Ключи:\n        -a  все файлы"}])
    assert list(iter_lines(texts, max_chars=10)) == ["Ключи:"]
    assert list(iter_lines(texts, max_chars=16)) == ["Ключи:", "-a"]
    [result] = compare(
        [f"m={MISTRAL_TOKENIZER}"], [f"man={texts}"], tmp_path / "r", split="all", max_chars=10
    )
    assert result.chars == len("Ключи:")


def test_long_paragraphs_are_sampled_in_pieces_and_cut_at_any_white_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A paragraph was kept or dropped whole (a 100k budget took 4M characters of one-line
    documents), cut only at ASCII spaces (NBSP-separated text was dropped as one giant word), and
    text without spaces was dropped without a word."""
    words = [f"слово{i}" for i in range(40_000)]
    long_docs = [{"id": f"long{k}", "text": " ".join(words)} for k in range(3)]
    out = tmp_path / "t.txt"
    stats = write_training_text(
        [_write_jsonl(tmp_path / "long.jsonl.gz", long_docs)], out, "text", 100_000, 0.0
    )
    chars = next(iter(stats.values()))["chars"]
    assert 70_000 < chars < 130_000  # about the budget, from pieces of every document
    assert all(len(line.encode()) <= 4000 for line in out.read_text(encoding="utf-8").splitlines())
    nbsp = [{"id": "nbsp", "text": "\u00a0".join(words[:2000])}]
    stats = write_training_text([_write_jsonl(tmp_path / "nbsp.jsonl.gz", nbsp)], out, "text", None, 0.0)
    pieces = out.read_text(encoding="utf-8").splitlines()
    assert len(pieces) > 1 and "\u00a0".join(pieces) == nbsp[0]["text"]  # cut at NBSP, all kept
    capsys.readouterr()
    chinese = [{"id": "zh", "text": "中文" * 1500}]
    stats = write_training_text([_write_jsonl(tmp_path / "zh.jsonl.gz", chinese)], out, "text", None, 0.0)
    assert next(iter(stats.values()))["dropped_chars"] == 3000
    assert "3,000 of 3,000 sampled characters are in runs without white space" in capsys.readouterr().err


def test_the_export_check_reads_only_the_lines_it_checks_in_training_pieces(tmp_path: Path) -> None:
    """The .model / tokenizer.json check took the whole split into memory (GBs for a large corpus)
    and encoded paragraphs of any length whole; it reads its first lines, cut as training cuts them."""
    corpus = tmp_path / "c.jsonl"
    long = " ".join(["слово"] * 2000)  # 24,000 bytes: cut into pieces of at most 4,000
    records = [{"id": "a", "text": f"Первая строка\n{long}"}, {"id": "b", "text": "Ещё одна строка"}]
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "{broken\n")
    lines = first_lines(corpus, "text", "all", 0.0, 4)
    assert lines[0] == "Первая строка"
    assert all(0 < len(piece.encode()) <= MAX_LINE_BYTES for piece in lines[1:])
    assert " ".join(lines[1:]) == " ".join(["слово"] * len(" ".join(lines[1:]).split()))
    with pytest.raises(VikhrError, match=r"c\.jsonl:3"):  # reading on reaches the broken line
        first_lines(corpus, "text", "all", 0.0, 100)


def test_the_split_follows_ids_and_warns_when_they_repeat(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ids, a document's split was keyed by the file name too: a renamed or compressed copy
    of a training corpus had other held-out documents than the one trained on. A repeated id puts
    all its documents on one side, now with a warning."""
    docs = [{"text": f"строка {i}"} for i in range(200)]
    plain = tmp_path / "a.jsonl"
    plain.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    copy = _write_jsonl(tmp_path / "renamed.jsonl.gz", docs)
    held = [d.text for d in iter_documents(plain, split="heldout")]
    assert held and held == [d.text for d in iter_documents(copy, split="heldout")]
    capsys.readouterr()
    same = _write_jsonl(tmp_path / "same.jsonl.gz", [{"id": "gazeta", **d} for d in docs])
    sides = {len(list(iter_documents(same, split=s))) for s in ("train", "heldout")}
    assert sides == {0, 200}
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "id 'gazeta' is also the id of line 1" in err


def test_compare_report_numbers_match_hand_count(tmp_path: Path, replace_dir: Path) -> None:
    lines = ["Машинное обучение изменяет мир.", "Мама мыла раму, а папа читал газету.", "The cat sat."]
    texts = _write_jsonl(tmp_path / "tiny.jsonl.gz", [{"id": "x", "text": "\n\n".join(lines)}])
    out = tmp_path / "report"
    results = compare(
        [f"mistral={MISTRAL_TOKENIZER}", f"ours={replace_dir / 'tokenizer.json'}"],
        [f"tiny={texts}", str(EN_SAMPLE)],
        out,
        split="all",
        max_chars=50_000,
    )
    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    words = [w for ln in lines for w in ln.split()]
    tokens = sum(len(sp.encode(ln)) for ln in lines)
    three = sum(len(sp.encode(w)) >= 3 for w in words)
    r = next(r for r in results if r.tokenizer == "mistral" and r.text_set == "tiny")
    assert (r.chars, r.tokens, r.words, r.words_3plus) == (sum(map(len, lines)), tokens, len(words), three)
    rows = list(csv.DictReader((out / "report.csv").open(encoding="utf-8")))
    assert len(rows) == 4
    row = next(x for x in rows if x["tokenizer"] == "mistral" and x["text_set"] == "tiny")
    assert float(row["chars_per_token"]) == pytest.approx(r.chars / tokens, abs=1e-4)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert " ".join(f"`{p}`" for p in MISTRAL_TABLE1) in md
    assert (out / "chars_per_token.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_holds_out_only_what_the_tokenizers_training_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tokenizer trained with --heldout-percent 2 (or 0) was measured on compare's 5 % "held-out"
    documents, most of which it had trained on."""
    import shutil

    docs = [{"id": f"d{i}", "text": f"Документ номер {i}."} for i in range(400)]
    texts = _write_jsonl(tmp_path / "ru.jsonl.gz", docs)
    tok = tmp_path / "tok"
    tok.mkdir()
    shutil.copy(MISTRAL_TOKENIZER, tok / "tokenizer.model")

    def measured(percent: float) -> int:
        manifest = {"corpora": [{"sha256": corpus_sha256(texts)}], "settings": {"heldout_percent": percent}}
        (tok / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        [result] = compare([f"t={tok}"], [f"ru={texts}"], tmp_path / "report", split="auto", overwrite=True)
        return result.chars

    held_out = [d["text"] for d in docs if is_heldout(d["id"], 2.0)]
    assert 0 < len(held_out) < len([d for d in docs if is_heldout(d["id"], 5.0)])
    assert measured(2.0) == sum(map(len, held_out))
    assert (
        "held-out documents are the 2 % tokenizer t left out of its training (not 5 %)"
        in capsys.readouterr().err
    )
    assert measured(10.0) == sum(len(d["text"]) for d in docs if is_heldout(d["id"], 5.0))
    with pytest.raises(
        VikhrError, match=r"tokenizer t was trained on every document of .*--heldout-percent 0"
    ):
        measured(0.0)


def test_compare_knows_a_training_corpus_by_its_content_in_any_compression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained on a .gz, its decompressed copy is the corpus it trained on; trained on the plain file,
    so are a .gz and a .zst of it (other bytes as stored): "trained on it" yes, measured on the 2 %
    its training left out, held out under --split auto. Each file's hashes are read once."""
    import zstandard

    from vikhr.tokenizer import compare as compare_module

    plain = tmp_path / "ru.jsonl"
    plain.write_bytes(gzip.decompress(RU_SAMPLE.read_bytes()))
    regz = tmp_path / "ru-again.jsonl.gz"
    regz.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1, mtime=0))
    zst = tmp_path / "ru.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    written_an_hour_ago(plain, regz, zst)  # settled: their hashes are cached by their stamps
    assert len({corpus_sha256(p) for p in (RU_SAMPLE, plain, regz, zst)}) == 4
    heldout_chars = sum(map(len, iter_lines(RU_SAMPLE, split="heldout", heldout_percent=2.0)))
    reads: list[str | Path] = []

    def counted(path: str | Path) -> CorpusHashes:
        reads.append(path)
        return corpus_hashes(path)

    monkeypatch.setattr(compare_module, "corpus_hashes", counted)
    for trained_on, copies in ((RU_SAMPLE, [plain]), (plain, [regz, zst, RU_SAMPLE])):
        tok = tmp_path / f"tok-{trained_on.name}"
        argv = ["tokenizer", "train", "--corpus", f"{trained_on}@100k", "--vocab-size", "600"]
        assert cli_main([*argv, "--heldout-percent", "2", "--out", str(tok)]) == 0
        manifest = json.loads((tok / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["corpora"][0]["content_sha256"] == corpus_hashes(plain).content
        capsys.readouterr()
        compare_module._TEXT_HASHES.clear()
        reads.clear()
        texts = [f"{c.name}={c}" for c in copies]
        results = compare(
            [f"t={tok}", f"mistral={MISTRAL_TOKENIZER}"],
            texts,
            tmp_path / "rep",
            split="auto",
            overwrite=True,
        )
        assert len(reads) == len(copies)
        for r in results:
            assert r.split == "heldout" and r.chars == heldout_chars
            assert r.seen == ("yes" if r.tokenizer == "t" else "—")
        err = capsys.readouterr().err
        for c in copies:
            assert f"note: {c}: held-out documents are the 2 % tokenizer t left out" in err


def test_compare_knows_the_corpora_of_a_manifest_without_content_hashes_as_stored(tmp_path: Path) -> None:
    """A tokenizer trained before manifests recorded content hashes keeps its corpus: the file whose
    bytes as stored its manifest names (a decompressed copy it cannot tell from another file)."""
    import shutil

    tok = tmp_path / "tok"
    tok.mkdir()
    shutil.copy(MISTRAL_TOKENIZER, tok / "tokenizer.model")
    (tok / "manifest.json").write_text(
        json.dumps({"corpora": [{"path": "ru.jsonl.gz", "sha256": corpus_sha256(RU_SAMPLE)}]}),
        encoding="utf-8",
    )
    plain = tmp_path / "ru.jsonl"
    plain.write_bytes(gzip.decompress(RU_SAMPLE.read_bytes()))
    results = compare([f"t={tok}"], [f"gz={RU_SAMPLE}", f"plain={plain}"], tmp_path / "rep", split="auto")
    assert [(r.text_set, r.seen, r.split) for r in results] == [
        ("gz", "yes", "heldout"),
        ("plain", "no", "all"),
    ]


@pytest.mark.parametrize("written_again", ["renamed into place", "in place"])
def test_a_text_set_replaced_within_one_clock_tick_is_hashed_anew(written_again: str, tmp_path: Path) -> None:
    """A text set renamed into place with the old file's size and modification time (a coarse clock,
    one tick) is another file: whether a tokenizer trained on it is decided from its new bytes.
    Written again in place it kept its inode too, and compare knew it by the old text's hashes ("trained
    on it: yes"): a file written in the last seconds is not cached by its stamp."""
    write_again = (
        replace_within_one_tick if written_again == "renamed into place" else rewrite_in_place_within_one_tick
    )

    texts = tmp_path / "ru.jsonl"
    texts.write_text(json.dumps({"id": "x", "text": "Mama myla ramu. " * 20}) + "\n", encoding="utf-8")
    tok = tmp_path / "tok"
    tok.mkdir()
    shutil.copy(MISTRAL_TOKENIZER, tok / "tokenizer.model")
    (tok / "manifest.json").write_text(
        json.dumps({"corpora": [{"path": "ru.jsonl", "sha256": corpus_sha256(texts)}]}), encoding="utf-8"
    )
    out = tmp_path / "rep"
    assert [r.seen for r in compare([f"t={tok}"], [f"ru={texts}"], out, split="all")] == ["yes"]
    write_again(texts, texts.read_text(encoding="utf-8").replace("ramu", "ramy"))
    seen = [r.seen for r in compare([f"t={tok}"], [f"ru={texts}"], out, split="all", overwrite=True)]
    assert seen == ["no"]


def test_a_failed_compare_chart_leaves_the_earlier_report_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart is drawn after the table and CSV: when it fails, none of the earlier report's three
    files is replaced (a new table beside an old chart would disagree), and nothing temporary is left."""
    from vikhr.tokenizer import compare as compare_module

    texts = _write_jsonl(tmp_path / "t.jsonl.gz", [{"id": "x", "text": "Мама мыла раму. " * 20}])
    out = tmp_path / "report"
    compare([f"mistral={MISTRAL_TOKENIZER}"], [f"a={texts}"], out, split="all")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def no_chart(results, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(compare_module, "plot_chars_per_token", no_chart)
    with pytest.raises(OSError, match="No space"):
        compare([f"mistral={MISTRAL_TOKENIZER}"], [f"b={texts}"], out, split="all", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "t.jsonl.gz"]


def test_compare_measures_a_crlf_copy_as_the_file_itself(tmp_path: Path) -> None:
    """Training leaves a CRLF document's line ends out of its paragraphs; compare counted each "\r"
    as a character of its paragraph, and with most tokenizers a token (the same text measured a few
    per cent apart)."""
    docs = [{"id": str(i), "text": f"Строка {i}, первая.\nВторая строка {i}.\n\nТретья."} for i in range(50)]
    lf = _write_jsonl(tmp_path / "lf.jsonl.gz", docs)
    crlf_docs = [{**d, "text": d["text"].replace("\n", "\r\n")} for d in docs]
    crlf = _write_jsonl(tmp_path / "crlf.jsonl.gz", crlf_docs)
    lf_result, crlf_result = compare(
        [f"m={MISTRAL_TOKENIZER}"], [f"lf={lf}", f"crlf={crlf}"], tmp_path / "r", split="all"
    )
    measured = ("chars", "words", "tokens", "words_3plus")
    assert [getattr(crlf_result, k) for k in measured] == [getattr(lf_result, k) for k in measured]
    assert crlf_result.chars == sum(len(ln) for d in docs for ln in d["text"].split("\n"))


def test_a_lone_carriage_return_stays_inside_its_training_line(tmp_path: Path) -> None:
    """Training read its sample with Python's universal newlines: a lone "\r" inside a paragraph (an old
    Mac line end) made two training lines of it, where `compare` and the HF check measure one line.
    SentencePiece, prune-extend's piece counts and byte-level extend's word counts read it as written."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel

    from vikhr.tokenizer.prune import piece_use
    from vikhr.tokenizer.train_byte_bpe import count_words

    docs = [
        {"id": str(i), "text": f"Первая часть {i}\rвторая часть.\r\nТретья строка {i}."} for i in range(20)
    ]
    corpus = _write_jsonl(tmp_path / "cr.jsonl.gz", docs)
    sample = tmp_path / "train.txt"
    write_training_text([corpus], sample, "text", None, 0.0)
    measured = list(iter_lines(corpus))
    assert measured[:2] == ["Первая часть 0\rвторая часть.", "Третья строка 0."]
    assert list(sample_lines(sample)) == measured
    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    used = Counter(i for ids in sp.encode(measured) for i in ids)
    assert piece_use(MISTRAL_TOKENIZER, sample) == [used[i] for i in range(sp.get_piece_size())]
    byte_level = Tokenizer(BPE())
    byte_level.pre_tokenizer = ByteLevel(add_prefix_space=False)
    words = Counter(w for line in measured for w, _ in byte_level.pre_tokenizer.pre_tokenize_str(line))
    assert count_words(byte_level, sample) == words


def test_compare_says_a_budget_suffix_or_a_budget_inside_the_first_indent_as_such(tmp_path: Path) -> None:
    """`--texts FILE@2M` (tokenizer train's budget) was "corpus file not found" or "cannot access", and a
    --max-chars that ends inside the indent of the first paragraph said the file has no text."""
    texts = _write_jsonl(tmp_path / "man.jsonl.gz", [{"id": "a", "text": "        -a  все файлы"}])
    with pytest.raises(VikhrError, match=r"--texts .*man\.jsonl\.gz@2M: compare takes no FILE@CHARS budget"):
        compare([f"m={MISTRAL_TOKENIZER}"], [f"{texts}@2M"], tmp_path / "r", split="auto")
    with pytest.raises(VikhrError, match=r"--max-chars 3 ends in the white space opening its first line"):
        compare([f"m={MISTRAL_TOKENIZER}"], [str(texts)], tmp_path / "r", split="all", max_chars=3)
    assert not (tmp_path / "r").exists()


def test_a_label_with_a_bar_or_a_line_break_keeps_the_markdown_tables_whole(tmp_path: Path) -> None:
    """`--tokenizer 'a|b=…'` gave its row an extra column; the CSV keeps the labels as given."""
    texts = _write_jsonl(tmp_path / "t.jsonl.gz", [{"id": "x", "text": "Мама мыла раму. " * 20}])
    out = tmp_path / "report"
    compare([f"a|b={MISTRAL_TOKENIZER}"], [f"ru\nx|y={texts}"], out, split="all")
    rows = [ln for ln in (out / "report.md").read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
    assert len({len(re.split(r"(?<!\\)\|", row)) for row in rows[:3]}) == 1  # header, rule, row: 8 cells
    assert r"| a\|b | ru x\|y | all |" in rows[2]
    assert any(row.startswith(r"| a\|b | `") for row in rows)
    with open(out / "report.csv", encoding="utf-8", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert (row["tokenizer"], row["text_set"]) == ("a|b", "ru\nx|y")


def test_cli_compare_refuses_an_existing_report_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`compare --out` is a new directory, as every verb's output: an existing one (a report, or a
    directory of other files) is refused in one line and left as it was; `--overwrite` replaces it
    whole, and the command says what it wrote."""
    texts = _write_jsonl(tmp_path / "t.jsonl.gz", [{"id": "x", "text": "Мама мыла раму. " * 20}])
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    argv = ["tokenizer", "compare", "--tokenizer", f"m={MISTRAL_TOKENIZER}", "--texts", f"a={texts}"]
    argv += ["--out", str(out), "--split", "all"]
    code, err = _cli(argv, capsys)
    assert code == 2 and "exists" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert cli_main([*argv, "--overwrite"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"wrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'chars_per_token.png'}"
    assert sorted(p.name for p in out.iterdir()) == ["chars_per_token.png", "report.csv", "report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "t.jsonl.gz"]  # no temporary left
    inside = _write_jsonl(out / "t.jsonl.gz", [{"id": "x", "text": "Мама мыла раму. " * 20}])
    code, err = _cli([*argv[:-4], "--texts", f"b={inside}", *argv[-4:], "--overwrite"], capsys)
    assert code == 2 and "holds the input" in err and inside.is_file()


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_train_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--corpus", f"{RU_SAMPLE}@100k", "--vocab-size", "600", "--out", str(out)]
    assert cli_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    # The report names the lines the export was checked on: held-out ones, no "training lines: 0".
    printed = capsys.readouterr().out
    heldout = manifest["hf_check"]["heldout_lines_checked"]
    assert f'"hf_check": {{"heldout_lines_checked": {heldout}, "mismatches": 0}}' in printed
    assert "train_lines_checked" not in printed
    assert manifest["corpora"][0]["max_chars"] == 100_000
    assert manifest["settings"]["split_by_script"] and manifest["settings"]["split_by_whitespace"]
    assert (manifest["settings"]["character_coverage"], manifest["settings"]["num_threads"]) == (0.9999, 2)
    spanning = tmp_path / "tok-spanning"
    argv_spanning = [*argv[:-1], str(spanning), "--no-split-by-script", "--no-split-by-whitespace"]
    assert cli_main(argv_spanning) == 0
    settings = json.loads((spanning / "manifest.json").read_text())["settings"]
    assert not settings["split_by_script"] and not settings["split_by_whitespace"]
    code, err = _cli(argv, capsys)
    assert code == 2 and "exists" in err and len(err.splitlines()) == 1
    report = tmp_path / "rep"
    assert (
        cli_main(
            ["tokenizer", "compare", "--tokenizer", str(out), "--texts", str(RU_SAMPLE), "--out", str(report)]
        )
        == 0
    )
    assert (report / "report.csv").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mode", "extend"], "needs --base-model"),
        (["--mode", "extend", "--base-model", str(MISTRAL_TOKENIZER)], "must exceed the base vocabulary"),
        (["--vocab-size", "100"], "too small"),
    ],
)
def test_cli_train_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    base = ["tokenizer", "train", "--corpus", str(RU_SAMPLE), "--out", str(tmp_path / "o")]
    if "--vocab-size" not in extra:
        base += ["--vocab-size", "1000"]
    code, err = _cli(base + extra, capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bad_corpus_line_is_reported_with_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "body": "no text"}\n', encoding="utf-8")
    code, err = _cli(["tokenizer", "train", "--corpus", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and re.search(r"bad\.jsonl:2: no string field 'text'", err)
    assert list(tmp_path.iterdir()) == [bad]  # nothing half-written next to the output


_CHOOSE_TEXT_KEY = "(choose the field with --text-key)"


@pytest.mark.parametrize(
    "value,said",
    [
        (
            [{"role": "user", "content": "x"}],
            f'field "text" holds a chat (a list of turns), not a string {_CHOOSE_TEXT_KEY}',
        ),
        (None, f'field "text" is null, not a string {_CHOOSE_TEXT_KEY}'),
        (["a", 1], f'field "text" is a list, not a string {_CHOOSE_TEXT_KEY}'),
        (
            ["a", "b"],
            'field "text" is a list of 2 strings, not one string: join them into one string per document, '
            """e.g. jq -c '.text |= join("\\n")' IN.jsonl > OUT.jsonl""",
        ),
        (3, f'field "text" is a number, not a string {_CHOOSE_TEXT_KEY}'),
    ],
)
def test_a_corpus_field_that_is_not_text_is_said_as_what_it_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: object, said: str
) -> None:
    """A field that is there but holds no text was said to be missing ("no string field 'text'"); a
    text kept as a list of strings named another field to choose, where they are to be joined."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n' + json.dumps({"text": value}) + "\n", encoding="utf-8")
    code, err = _cli(["tokenizer", "train", "--corpus", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.splitlines() == [f"vikhr tokenizer train: error: {bad}:2: {said}"]
    assert list(tmp_path.iterdir()) == [bad]


@pytest.mark.parametrize(
    "value,said",
    [
        ("1e400", 'field "text" is a number'),
        ("-" + "9" * 5000, 'field "text" is a number'),  # past int()'s digits: -inf
        ("1" + "0" * 400, 'field "text" is a number'),  # an int past a double
        ("[1, 1e400]", 'field "text" is a list'),
        ('[{"role": "user", "content": "x", "n": 1e400}]', 'field "text" holds a chat (a list of turns)'),
    ],
    ids=["1e400", "int-past-digits", "int-past-double", "list", "chat"],
)
def test_a_corpus_field_holding_a_number_past_a_double_is_said_as_what_it_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, said: str
) -> None:
    """Python's json reads such a number as inf and wrote it back as Infinity for the native reader
    to describe, which refused it: a ValueError traceback from train, compare and ablate."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": ' + value + "}\n", encoding="utf-8")
    out = str(tmp_path / "o")
    for argv in (
        ["tokenizer", "train", "--corpus", str(bad), "--out", out],
        ["tokenizer", "compare", "--tokenizer", str(MISTRAL_TOKENIZER), "--texts", str(bad), "--out", out],
    ):
        code, err = _cli(argv, capsys)
        assert code == 2 and err.splitlines() == [
            f"vikhr {' '.join(argv[:2])}: error: {bad}:2: {said}, not a string (choose the field with "
            "--text-key)"
        ]
    assert list(tmp_path.iterdir()) == [bad]
    config = tmp_path / "ablate.yaml"
    arms = [{"name": "adapted", "group": "vocabulary"}]
    grid = {"out_dir": out, "data": {"ru_corpus": str(bad)}, "arms": arms}
    config.write_text(json.dumps(grid), encoding="utf-8")
    code, err = _cli(["ablate", "--no-progress", str(config)], capsys)
    [line] = err.splitlines()
    assert code == 2 and line.startswith(f"vikhr ablate: error: {bad}:2: {said}, not a string ("), line


def test_cli_train_reads_zst_corpora(tmp_path: Path) -> None:
    import zstandard

    zst = tmp_path / "ru.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(gzip.decompress(RU_SAMPLE.read_bytes())))
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--corpus", f"{zst}@100k", "--vocab-size", "600", "--out", str(out)]
    assert cli_main(argv) == 0
    assert load(out).vocab_size == 600


def test_cp1251_corpus_is_refused_with_location_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "cp1251.jsonl.gz"
    bad.write_bytes(gzip.compress('{"text": "ok"}\n{"text": "Привет"}\n'.encode("cp1251")))
    code, err = _cli(["tokenizer", "train", "--corpus", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{bad}:2: not UTF-8" in err and "re-encode it as UTF-8" in err


def test_cli_sentencepiece_extend_with_new_tokens(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--mode", "extend", "--base-model", str(MISTRAL_TOKENIZER)]
    argv += ["--new-tokens", "100", "--corpus", f"{RU_SAMPLE}@100k", "--out", str(out)]
    assert cli_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["vocab_size"] == 32100 and manifest["settings"]["vocab_size"] == 32100
    assert manifest["extend"]["added_pieces"] == 100


def test_extend_on_a_small_corpus_trains_the_largest_pool_it_supports(tmp_path: Path) -> None:
    """A few thousand characters of Russian support a pool of ~2,000 pieces, fewer than the first pool
    extend mode asks for (the base's 1,600 Cyrillic pieces + room); the 50 new pieces asked for are
    still in it. The run failed with SentencePiece's "Vocabulary size too high"."""
    lines = [ln for ln in iter_lines(RU_SAMPLE, split="train") if CYRILLIC.search(ln)]
    small = _write_jsonl(tmp_path / "small.jsonl.gz", [{"text": ln} for ln in lines[:40]])
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--mode", "extend", "--base-model", str(MISTRAL_TOKENIZER)]
    argv += ["--new-tokens", "50", "--heldout-percent", "0", "--corpus", str(small), "--out", str(out)]
    assert cli_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["vocab_size"] == 32050 and manifest["extend"]["added_pieces"] == 50
    assert manifest["hf_check"]["mismatches"] == 0


def test_sentencepiece_extend_keeps_the_bases_chat_template(tmp_path: Path) -> None:
    """An instruct model's directory (its .model, tokenizer_config.json with a chat template, and a
    chat_template.jinja) as the base: extend keeps every base id, so the template still renders,
    but the export wrote a config without it and no template file (byte-level training kept both)."""
    template = "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}"
    jinja = "{% for m in messages %}<<{{ m.role }}>> {{ m.content }}{% endfor %}"
    base = tmp_path / "instruct"
    base.mkdir()
    shutil.copy(MISTRAL_TOKENIZER, base / "tokenizer.model")
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": template}
    (base / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (base / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--mode", "extend", "--base-model", str(base), "--new-tokens", "50"]
    argv += ["--corpus", f"{RU_SAMPLE}@100k", "--out", str(out)]
    assert cli_main(argv) == 0
    written = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert written["chat_template"] == template and written["eos_token"] == "</s>"
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == jinja
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["files"]) >= {"tokenizer_config.json", "chat_template.jinja"}

    # adapt-vocab given the .model (README's `--new-tokenizer tok/tokenizer.model`) wrote the
    # tokenizer.json and config afresh, dropping both again.
    from tests.helpers import tiny_hf_model
    from vikhr.adapt import adapt_vocab

    tiny_hf_model(tmp_path / "model", 32000)
    adapted = tmp_path / "adapted"
    adapt_vocab(tmp_path / "model", MISTRAL_TOKENIZER, out / "tokenizer.model", adapted, show_progress=False)
    written = json.loads((adapted / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert written["chat_template"] == template
    assert (adapted / "chat_template.jinja").read_text(encoding="utf-8") == jinja


def test_cli_sentencepiece_base_model_may_be_its_directory(tmp_path: Path) -> None:
    """A directory holding the SentencePiece base (an earlier output's `tok/`), as every other
    tokenizer option takes it: it was refused as "not a regular file"."""
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    shutil.copy(MISTRAL_TOKENIZER, base_dir / "tokenizer.model")
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--mode", "extend", "--base-model", str(base_dir)]
    argv += ["--new-tokens", "100", "--corpus", f"{RU_SAMPLE}@100k", "--out", str(out)]
    assert cli_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["vocab_size"] == 32100
    assert manifest["base_model"]["path"] == str(base_dir / "tokenizer.model")


def test_compare_draws_its_bar_on_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar went to stderr wherever it was: a demo's error log and CI logs held `measuring: 0%`."""
    texts = _write_jsonl(tmp_path / "tiny.jsonl.gz", [{"id": "x", "text": "Мама мыла раму."}])

    def argv(out: str) -> list[str]:
        spec = ["--tokenizer", str(MISTRAL_TOKENIZER), "--texts", str(texts), "--split", "all"]
        return ["tokenizer", "compare", *spec, "--out", str(tmp_path / out)]

    assert "measuring" not in stderr_of_cli(argv("log"), terminal=False, monkeypatch=monkeypatch)
    assert "measuring" in stderr_of_cli(argv("terminal"), terminal=True, monkeypatch=monkeypatch)
    quiet = stderr_of_cli([*argv("quiet"), "--no-progress"], terminal=True, monkeypatch=monkeypatch)
    assert "measuring" not in quiet


@pytest.mark.parametrize("count", [3, 12, 20])
def test_the_efficiency_chart_legend_covers_no_bar_and_every_tokenizer_has_its_colour(
    count: int, tmp_path: Path
) -> None:
    """The legend lay on the bars (over a tall bar's value with 3 tokenizers, most of the chart with
    12); from the 11th tokenizer on two shared a colour; a dozen values written level ran together
    (upright, twenty do too unless the figure widens for them)."""
    import matplotlib.image
    import matplotlib.pyplot as plt

    from vikhr.tokenizer.compare import Efficiency, chars_per_token_figure, plot_chars_per_token

    # Neighbouring tokenizers score alike, so their values stand side by side at one height.
    results = [
        Efficiency(f"tokenizer-{k:02d}", s, chars=1000, words=200, tokens=300 + 40 * i + k, words_3plus=10)
        for k in range(count)
        for i, s in enumerate(("ru", "en", "code"))
    ]
    fig = chars_per_token_figure(results)
    try:
        fig.canvas.draw()
        (ax,) = fig.axes
        legend = ax.get_legend().get_window_extent()
        assert legend.x0 >= ax.get_window_extent().x1
        colours = [tuple(container[0].get_facecolor()) for container in ax.containers]
        assert len(colours) == count and len(set(colours)) == count
        values = [t for t in ax.texts]
        assert len(values) == 3 * count
        boxes = [t.get_window_extent() for t in values]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
        assert all(t.get_rotation() == (90 if count > 4 else 0) for t in values)
        drawn_inches = fig.get_tightbbox().width  # the axes, their labels and the legend beside them
    finally:
        plt.close(fig)
    png = tmp_path / "chars_per_token.png"
    plot_chars_per_token(results, png)
    assert matplotlib.image.imread(png).shape[1] >= round(drawn_inches * 120)  # the legend is not cut off
