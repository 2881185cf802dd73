"""Byte-level BPE: tekken import, extend/replace training on tekken / Llama-3 / Qwen2.5 layouts, compare."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.helpers import files_of, run_vikhr_child
from vikhr.assets import EN_SAMPLE, RU_SAMPLE
from vikhr.cli import main as cli_main
from vikhr.errors import VikhrError
from vikhr.tokenizer import load
from vikhr.tokenizer.byte_level import LLAMA3_PATTERN, piece_bytes
from vikhr.tokenizer.compare import compare
from vikhr.tokenizer.corpus import iter_lines, read_break_lines, write_training_text
from vikhr.tokenizer.tekken import import_tekken
from vikhr.tokenizer.train import TrainSettings, train_tokenizer

ASSET_DIR = Path(__file__).resolve().parent.parent / "vikhr" / "assets" / "tokenizers"
RU40K_JSON = ASSET_DIR / "vikhr-ru-40k.tokenizer.json"
SPECIALS = {
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}
SMALL = {"max_chars_per_file": 400_000, "verify_lines_per_file": 500}


def tekken_file(name: str = "tekken_240718.json") -> Path:
    mistral_common = pytest.importorskip("mistral_common")
    return Path(mistral_common.__file__).parent / "data" / name


def make_byte_level_base(out: Path, layout: str, vocab_size: int = 1200) -> Path:
    """A small byte-level tokenizer.json laid out like Llama-3 (ignore_merges, BOS template, specials after
    the vocabulary) or Qwen2.5 (NFC, no BOS, three specials after the vocabulary, a tokenizer_config),
    trained on the bundled English sample and a few Russian lines."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(ignore_merges=layout == "llama3"))
    if layout == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    lines = list(iter_lines(EN_SAMPLE, split="train")) + list(iter_lines(RU_SAMPLE, split="train"))[:300]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    specials = SPECIALS[layout]
    tok.add_special_tokens(specials)
    if layout == "llama3":
        bos = specials[0]
        template = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab_size)]
        )
        tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    if layout == "qwen2":
        cfg = {"bos_token": None, "eos_token": "<|endoftext|>", "chat_template": "{{ messages }}"}
        (out / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return out / "tokenizer.json"


def english_lines(shared: Path | None) -> list[str]:
    """Every held-out English line: the bundled sample and, when present, the shared English novels."""
    lines = list(iter_lines(EN_SAMPLE, split="heldout"))
    if shared is not None:
        lines += list(iter_lines(shared / "corpus" / "en" / "english-novels.jsonl.gz", split="heldout"))
    return lines


def russian_lines(shared: Path | None, per_file: int = 300) -> list[str]:
    lines = list(iter_lines(RU_SAMPLE, split="heldout"))
    if shared is not None:
        for f in sorted((shared / "corpus" / "ru").glob("*.jsonl.gz")):
            lines += list(iter_lines(f, split="heldout"))[:per_file]
    return lines


@pytest.fixture(scope="module")
def optional_shared() -> Path | None:
    from tests.conftest import SHARED_DATA

    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture(scope="module")
def tekken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tekken") / "nemo"
    import_tekken(tekken_file(), out)
    return out


@pytest.fixture(scope="module")
def tekken_extended(tekken_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tekken") / "extended"
    settings = TrainSettings(mode="extend", base_model=str(tekken_dir), new_tokens=600, **SMALL)
    train_tokenizer([RU_SAMPLE], out, settings)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {layout: make_byte_level_base(root / layout, layout) for layout in SPECIALS}


# ---------------------------------------------------------------- byte-level pieces


def test_byte_table_and_utf8_runs() -> None:
    from transformers.convert_slow_tokenizer import bytes_to_unicode as reference

    from vikhr.tokenizer.byte_level import bytes_piece, bytes_to_unicode, readable_piece, utf8_runs

    assert bytes_to_unicode() == reference()
    assert bytes_piece(" мир".encode()) == "ĠÐ¼Ð¸ÑĢ" and piece_bytes("ĠÐ¼Ð¸ÑĢ") == " мир".encode()
    assert piece_bytes("<|im_end|>") == b"<|im_end|>" and piece_bytes("[INST]\u4e2d") is None
    assert utf8_runs(" мир".encode()) == [" мир"]
    assert utf8_runs(b" \xd0") == [" ", 0xD0]  # a space and the lead byte of a Cyrillic letter
    assert utf8_runs(b"\xbf\xd1\x80") == [0xBF, "р"]  # the tail of "п", then "р"
    assert readable_piece(bytes_piece(b" \xd0")) == "▁<0xD0>"


# ---------------------------------------------------------------- tekken import


def test_import_tekken_gives_mistral_common_ids(tekken_dir: Path, optional_shared: Path | None) -> None:
    """The imported tokenizer.json encodes held-out Russian and English lines to exactly the ids of
    mistral-common's own Tekkenizer (no BOS/EOS); transformers loads it and prepends <s>."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    from transformers import AutoTokenizer

    reference = Tekkenizer.from_file(str(tekken_file()))
    tok = load(tekken_dir)
    assert (tok.kind, tok.byte_level, tok.vocab_size, tok.bos_id, tok.eos_id) == (
        "huggingface",
        True,
        131072,
        1,
        2,
    )
    lines = russian_lines(optional_shared, per_file=200) + english_lines(None)
    lines += ["<s>[INST] typed </s>", "  spaces\n\n\ttabs 🙂 中文 12345"]
    assert len(lines) > 1500
    assert tok.encode_batch(lines) == [reference.encode(ln, bos=False, eos=False) for ln in lines]

    cfg = json.loads((tekken_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (cfg["bos_token"], cfg["eos_token"], cfg["added_tokens_decoder"]["2"]["content"]) == (
        "<s>",
        "</s>",
        "</s>",
    )
    manifest = json.loads((tekken_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["tekken_check"]["lines_checked"] > 1500 and manifest["vocab_size"] == 131072
    hf = AutoTokenizer.from_pretrained(str(tekken_dir))
    text = "Привет, мир!"
    assert hf(text)["input_ids"] == [1, *reference.encode(text, bos=False, eos=False)]
    assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text


def test_cli_import_tekken_240911(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tekken_file("tekken_240911.json")
    out = tmp_path / "tekken"
    assert cli_main(["tokenizer", "import-tekken", str(src), str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["tekken_check"]["lines_checked"] > 1500
    assert load(out).piece_to_id("[IMG]") == 10
    # --verify-texts checks the file's own lines (its held-out part, which a small file may lack,
    # left only the built-in edge cases checked).
    from vikhr.tokenizer.tekken import EDGE_CASES

    five = tmp_path / "five.jsonl"
    five.write_text("".join(json.dumps({"text": f"Строка номер {i}."}) + "\n" for i in range(5)))
    argv = ["tokenizer", "import-tekken", str(src), str(tmp_path / "t5"), "--verify-texts", str(five)]
    assert cli_main(argv) == 0
    checked = json.loads((tmp_path / "t5" / "manifest.json").read_text(encoding="utf-8"))["tekken_check"]
    assert checked["lines_checked"] == len(EDGE_CASES) + 5
    # A file without a line to check (blank texts) passed on the edge cases, named as checked.
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": " "}) + "\n")
    capsys.readouterr()
    argv = ["tokenizer", "import-tekken", str(src), str(tmp_path / "tb"), "--verify-texts", str(blank)]
    assert cli_main(argv) == 2 and not (tmp_path / "tb").exists()
    assert f"--verify-texts {blank} holds no text to check" in capsys.readouterr().err
    # Texts under another field: the reader's fix named --text-key, which import-tekken lacked.
    content = tmp_path / "content.jsonl"
    content.write_text(json.dumps({"content": "Текст под другим ключом."}) + "\n")
    argv = ["tokenizer", "import-tekken", str(src), str(tmp_path / "tc"), "--verify-texts", str(content)]
    assert cli_main(argv) == 2 and "(choose the field with --text-key)" in capsys.readouterr().err
    assert cli_main([*argv, "--text-key", "content"]) == 0
    checked = json.loads((tmp_path / "tc" / "manifest.json").read_text(encoding="utf-8"))["tekken_check"]
    assert checked["lines_checked"] == len(EDGE_CASES) + 1
    assert cli_main(["tokenizer", "import-tekken", str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists" in err and "--overwrite" in err and len(err.splitlines()) == 1
    # A cut download is named as such, not as "not a tekken file".
    cut = tmp_path / "cut.json"
    cut.write_bytes(src.read_bytes()[:100_000])
    assert cli_main(["tokenizer", "import-tekken", str(cut), str(tmp_path / "cut")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cut.json is not valid JSON" in err and "truncated download" in err and len(err.splitlines()) == 1
    # A JSON Lines file (a corpus given by mistake) is named so, not as a cut download.
    assert cli_main(["tokenizer", "import-tekken", str(five), str(tmp_path / "lines")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Extra data: line 2 column 1" in err and "a JSON Lines file? give Mistral's tekken.json" in err
    assert "truncated" not in err


def test_tekken_file_is_refused_with_the_import_command(tmp_path: Path) -> None:
    from vikhr.adapt import load_vocabulary

    src = tekken_file()
    for call in (lambda: load(src), lambda: load_vocabulary(src)):
        with pytest.raises(VikhrError, match="import-tekken") as e:
            call()
        assert "\n" not in str(e.value) and "tekken" in str(e.value)
    with pytest.raises(VikhrError, match="import-tekken"):
        train_tokenizer([RU_SAMPLE], tmp_path / "o", TrainSettings(mode="extend", base_model=str(src)))
    assert not (tmp_path / "o").exists()


def _damage(spec: dict, damage: str) -> None:
    vocab, config = spec["vocab"], spec["config"]
    if damage == "rank twice":
        vocab[300]["rank"] = 299
    elif damage == "bytes twice":
        vocab[301]["token_bytes"] = vocab[300]["token_bytes"]
    elif damage == "bytes out of order":
        vocab[:256] = list(reversed(vocab[:256]))
        for i, entry in enumerate(vocab[:256]):
            entry["rank"] = i
    elif damage == "rank as text":
        vocab[5]["rank"] = "5"
    elif damage == "no vocab":
        vocab.clear()
    elif damage == "vocab size too large":
        config["default_vocab_size"] = 999_999
    elif damage == "too few specials":
        config["default_num_special_tokens"] = 2
    elif damage == "bad pattern":
        config["pattern"] = "[unclosed"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("rank twice", "vocab entry 300 has rank 299: the ranks must be 0, 1, 2, ... in order"),
        ("bytes twice", "vocab entry 301 repeats the bytes"),
        ("bytes out of order", "vocab entry 0 is b'\\xff': the first 256 entries must be the single bytes"),
        ("rank as text", "vocab entry 5 has rank '5'"),
        ("no vocab", "special_tokens is 3000: it must be from 256 (the bytes) to the 0 vocab entries"),
        ("vocab size too large", "it must be from 256 (the bytes) to the 3000 vocab entries"),
        ("too few specials", "config.default_num_special_tokens 2 is below the 3 special tokens"),
        ("bad pattern", "is not a valid tekken file (Oniguruma error"),
    ],
)
def test_a_damaged_tekken_file_is_one_line_even_without_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, message: str
) -> None:
    """Each of these ended in mistral-common's AssertionError (a traceback), or with --no-verify was
    imported: a vocabulary with holes, text encoded as nothing."""
    spec = json.loads(tekken_file("tekken_240911.json").read_text(encoding="utf-8"))
    del spec["vocab"][3000:]
    spec["config"]["default_vocab_size"] = 3000 + spec["config"]["default_num_special_tokens"]
    small = tmp_path / "small.json"
    small.write_text(json.dumps(spec), encoding="utf-8")
    assert cli_main(["tokenizer", "import-tekken", str(small), str(tmp_path / "ok"), "--no-verify"]) == 0
    _damage(spec, damage)
    small.write_text(json.dumps(spec), encoding="utf-8")
    capsys.readouterr()
    for extra in ([], ["--no-verify"]):
        out = tmp_path / f"out{len(extra)}"
        assert cli_main(["tokenizer", "import-tekken", str(small), str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not out.exists()


# ---------------------------------------------------------------- extend


def test_extend_tekken_keeps_base_ids_and_english_encoding(
    tekken_dir: Path, tekken_extended: Path, optional_shared: Path | None
) -> None:
    base, ext = load(tekken_dir), load(tekken_extended)
    assert ext.vocab_size == 131072 + 600
    base_spec = json.loads((tekken_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ext_spec = json.loads((tekken_extended / "tokenizer.json").read_text(encoding="utf-8"))
    assert ext_spec["model"]["merges"][: len(base_spec["model"]["merges"])] == base_spec["model"]["merges"]
    assert ext_spec["added_tokens"] == base_spec["added_tokens"]
    assert ext_spec["model"]["ignore_merges"] is True
    assert ext_spec["pre_tokenizer"] == base_spec["pre_tokenizer"]
    assert all(ext.id_to_piece(i) == base.id_to_piece(i) for i in range(131072))
    new_bytes = [piece_bytes(ext.id_to_piece(i)) or b"" for i in range(131072, ext.vocab_size)]
    assert all(any(0xD0 <= b <= 0xD4 for b in data) for data in new_bytes)  # Cyrillic lead bytes

    english = english_lines(optional_shared)
    assert len(english) > (5000 if optional_shared else 200)
    assert ext.encode_batch(english) == base.encode_batch(english)

    russian = russian_lines(optional_shared)
    base_tokens = sum(map(len, base.encode_batch(russian)))
    assert sum(map(len, ext.encode_batch(russian))) < 0.97 * base_tokens
    assert all(ext.decode(ids) == ln for ln, ids in zip(russian, ext.encode_batch(russian), strict=True))
    manifest = json.loads((tekken_extended / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "byte-level-bpe" and manifest["extend"]["added_tokens"] == 600
    assert manifest["checks"]["base_ids_kept"]["mismatches"] == 0
    assert manifest["extend"]["new_token_ids"] == [131072, 131671]
    cfg = json.loads((tekken_extended / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg == json.loads((tekken_dir / "tokenizer_config.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("layout", ["llama3", "qwen2"])
def test_extend_llama3_and_qwen2_layouts_keep_specials(
    layout: str, bases: dict[str, Path], tmp_path: Path, optional_shared: Path | None
) -> None:
    """Specials after the vocabulary keep their ids; new tokens come after them; BOS template kept."""
    base_path = bases[layout]
    out = tmp_path / "ext"
    train_tokenizer(
        [RU_SAMPLE], out, TrainSettings(mode="extend", base_model=str(base_path), vocab_size=1600, **SMALL)
    )
    base, ext = load(base_path), load(out)
    assert ext.vocab_size == 1600
    assert [ext.piece_to_id(s) for s in SPECIALS[layout]] == [1200 + k for k in range(len(SPECIALS[layout]))]
    assert all(ext.id_to_piece(i) == base.id_to_piece(i) for i in range(base.vocab_size))
    english = english_lines(optional_shared)
    assert ext.encode_batch(english) == base.encode_batch(english)
    russian = russian_lines(None)
    assert sum(map(len, ext.encode_batch(russian))) < 0.8 * sum(map(len, base.encode_batch(russian)))
    fast = ext.to_transformers()
    if layout == "llama3":
        assert (ext.bos_id, ext.eos_id) == (1200, 1201)
        assert fast("Привет").input_ids == [1200, *ext.encode("Привет")]
    else:
        assert (ext.bos_id, ext.eos_id) == (None, 1200)
        assert fast("Привет").input_ids == ext.encode("Привет")
        cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert (
            cfg["chat_template"] == "{{ messages }}"
            and cfg["added_tokens_decoder"]["1202"]["content"] == "<|im_end|>"
        )


def test_extend_appends_cyrillic_merges_that_fire(bases: dict[str, Path], tmp_path: Path) -> None:
    """Appended merges join existing tokens into Cyrillic ones, and the new tokens are used: being
    learned on the base's own segmentation, nearly all of them occur when encoding the training text."""
    out = tmp_path / "ext"
    settings = TrainSettings(mode="extend", base_model=str(bases["llama3"]), new_tokens=300, **SMALL)
    manifest = train_tokenizer([RU_SAMPLE], out, settings)
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    assert sorted(i for i in vocab.values() if i >= 1202) == list(range(1202, 1502))
    for left, right in spec["model"]["merges"][-manifest["extend"]["added_merges"] :]:
        data = piece_bytes(left + right) or b""
        assert left in vocab and right in vocab and any(0xD0 <= b <= 0xD4 for b in data)
    used = {i for ids in load(out).encode_batch(list(iter_lines(RU_SAMPLE, split="train"))) for i in ids}
    assert len(used & set(range(1202, 1502))) >= 0.95 * 300


def test_cli_extend_with_new_tokens(bases: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--mode", "extend", "--base-model", str(bases["qwen2"].parent)]
    argv += ["--new-tokens", "150", "--corpus", f"{RU_SAMPLE}@200k", "--out", str(out)]
    assert cli_main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["vocab_size"] == 1203 + 150 and manifest["settings"]["new_tokens"] == 150
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


# ---------------------------------------------------------------- replace


@pytest.mark.parametrize("layout", ["tekken", "llama3", "qwen2"])
def test_replace_keeps_pre_tokenizer_and_lays_out_specials(
    layout: str, bases: dict[str, Path], tekken_dir: Path, tmp_path: Path
) -> None:
    base_path = tekken_dir / "tokenizer.json" if layout == "tekken" else bases[layout]
    size = 3000 if layout == "tekken" else 900
    out = tmp_path / "rep"
    train_tokenizer(
        [RU_SAMPLE, EN_SAMPLE], out, TrainSettings(base_model=str(base_path), vocab_size=size, **SMALL)
    )
    base_spec = json.loads(base_path.read_text(encoding="utf-8"))
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    tok = load(out)
    assert tok.vocab_size == size and tok.byte_level
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        assert spec[key] == base_spec[key], key
    assert spec["model"]["ignore_merges"] == base_spec["model"]["ignore_merges"]
    base_added = [(a["content"], a["special"]) for a in base_spec["added_tokens"]]
    assert [(a["content"], a["special"]) for a in spec["added_tokens"]] == base_added
    ids = [a["id"] for a in spec["added_tokens"]]
    if layout == "tekken":  # specials first, at the base's ids
        assert ids == list(range(1000)) and tok.bos_id == 1 and tok.eos_id == 2
    else:  # specials after the new vocabulary, in the base's order
        assert ids == list(range(size - len(ids), size))
    if layout in ("tekken", "llama3"):  # the BOS template names the new BOS id
        assert tok.to_transformers()("мир").input_ids == [tok.bos_id, *tok.encode("мир")]
    text = "Съешь же ещё этих мягких французских булок, да выпей чаю. The quick brown fox 🙂"
    assert tok.decode(tok.encode(text)) == text


def test_replace_learns_the_newline_runs_between_paragraphs(bases: dict[str, Path], tmp_path: Path) -> None:
    """The training sample was one line per paragraph: a replaced vocabulary learned no newline token,
    so every blank line between paragraphs cost two tokens (Llama-3's own vocabulary has "\n\n")."""
    docs = tmp_path / "paras.jsonl.gz"
    with gzip.open(docs, "wt", encoding="utf-8") as f:
        for i in range(300):
            text = f"Первый абзац номер {i}.\n\nВторой абзац {i}.\nТретья строка.\n\n\nКонец {i}.\n"
            f.write(json.dumps({"id": f"d{i}", "text": text}, ensure_ascii=False) + "\n")
    sample = tmp_path / "sample.txt"
    write_training_text([docs], sample, "text", None, 0.0, keep_breaks=True)
    first = list(read_break_lines(sample))[:5]
    assert first == [
        "Первый абзац номер 0.\n\n",
        "Второй абзац 0.\n",
        "Третья строка.\n\n\n",
        "Конец 0.\n",
        "Первый абзац номер 1.\n\n",
    ]
    out = tmp_path / "rep"
    settings = TrainSettings(base_model=str(bases["llama3"]), vocab_size=700, heldout_percent=0.0)
    train_tokenizer([docs, RU_SAMPLE], out, settings)
    tok = load(out)
    ids = tok.encode("Конец.\n\nПервый")
    # Llama-3's pre-tokenizer keeps punctuation with the newlines after it: ".\n\n" is one token
    assert b".\n\n" in [piece_bytes(tok.id_to_piece(i)) for i in ids]
    assert tok.decode(ids) == "Конец.\n\nПервый"


def test_byte_level_training_is_deterministic(bases: dict[str, Path], tmp_path: Path) -> None:
    """Every file, the manifest included, is the same from two processes of other string hash seeds
    and trainer thread counts (two trainings in one process share both)."""
    corpora = ["--corpus", str(RU_SAMPLE), "--corpus", str(EN_SAMPLE), "--max-chars-per-file", "400000"]
    for mode, size in (("extend", ["--new-tokens", "200"]), ("replace", ["--vocab-size", "700"])):
        for seed in (1, 2):
            out = tmp_path / f"{mode}-{seed}"
            argv = ["tokenizer", "train", "--mode", mode, "--base-model", str(bases["llama3"]), *size]
            run_vikhr_child([*argv, *corpora, "--out", str(out)], hash_seed=seed, threads=seed)
        assert files_of(tmp_path / f"{mode}-1") == files_of(tmp_path / f"{mode}-2")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mode", "extend", "--base-model", str(RU40K_JSON)], "is not byte-level BPE"),
        # The manifest beside a tokenizer was "pre-tokenizer None is not byte-level BPE".
        (
            ["--mode", "extend", "--base-model", str(ASSET_DIR / "vikhr-ru-40k.manifest.json")],
            'is not an HF tokenizer.json (it has no "model" section)',
        ),
        (["--mode", "extend", "--vocab-size", "1000"], "adds no tokens"),
        (["--vocab-size", "300"], "too small"),
        (["--new-tokens", "10"], "--new-tokens is for --mode extend"),
        # SentencePiece's settings were recorded in the manifest as if applied, and changed nothing.
        (["--character-coverage", "0.99"], "--character-coverage: SentencePiece's settings"),
        (
            ["--no-split-by-script", "--no-split-by-whitespace", "--threads", "7"],
            "--no-split-by-script, --no-split-by-whitespace, --threads: SentencePiece's settings",
        ),
        # Given at their defaults they were taken silently (and recorded).
        (["--threads", "2"], "--threads: SentencePiece's settings"),
        (["--character-coverage", "0.9999"], "--character-coverage: SentencePiece's settings"),
    ],
)
def test_byte_level_errors_are_one_line(
    extra: list[str], message: str, bases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tokenizer", "train", "--corpus", f"{RU_SAMPLE}@50k", "--out", str(tmp_path / "o")]
    if "--base-model" not in extra:
        argv += ["--base-model", str(bases["llama3"])]
    capsys.readouterr()
    assert cli_main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_byte_level_manifest_records_the_settings_it_used(bases: dict[str, Path], tmp_path: Path) -> None:
    """The manifest recorded SentencePiece's thread count, coverage and script split, none of which a
    byte-level BPE has, and, under --new-tokens, the default --vocab-size 40000 it did not use."""
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--mode", "extend", "--base-model", str(bases["llama3"])]
    assert cli_main([*argv, "--new-tokens", "100", "--corpus", f"{RU_SAMPLE}@100k", "--out", str(out)]) == 0
    settings = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["settings"]
    sentencepiece = {"character_coverage", "max_piece_length", "split_by_script", "split_by_whitespace"}
    sentencepiece |= {"num_threads", "extra_sentencepiece_args", "keep_base_pieces"}
    assert sentencepiece.isdisjoint(settings), settings
    assert (settings["vocab_size"], settings["new_tokens"], settings["min_frequency"]) == (1202 + 100, 100, 2)


def test_extend_without_a_size_names_the_default_it_used(
    tekken_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Extending tekken (131,072 ids) without --vocab-size or --new-tokens named a flag not given."""
    argv = ["tokenizer", "train", "--corpus", f"{RU_SAMPLE}@50k", "--out", str(tmp_path / "o")]
    capsys.readouterr()
    assert cli_main([*argv, "--mode", "extend", "--base-model", str(tekken_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--vocab-size 40000 (the default) adds no tokens" in err and len(err.splitlines()) == 1


def test_checks_read_training_lines_when_nothing_is_held_out(bases: dict[str, Path], tmp_path: Path) -> None:
    """--heldout-percent 0: the Cyrillic counts were all zeros and the base-id check never read the
    corpora; as for SentencePiece, the checks now read training lines."""
    settings = TrainSettings(
        mode="extend", base_model=str(bases["llama3"]), new_tokens=100, heldout_percent=0.0, **SMALL
    )
    manifest = train_tokenizer([RU_SAMPLE, EN_SAMPLE], tmp_path / "o", settings)
    counts = manifest["checks"]["train_cyrillic"]
    assert "heldout_cyrillic" not in manifest["checks"] and all(v > 0 for v in counts.values()), counts
    assert manifest["checks"]["base_ids_kept"]["lines_without_cyrillic_checked"] > 500


# ---------------------------------------------------------------- compare


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n")
    return path


def test_compare_byte_level_pair(tekken_dir: Path, tekken_extended: Path, tmp_path: Path) -> None:
    lines = ["Машинное обучение изменяет мир.", "Мама мыла раму, а папа читал газету.", "The cat sat."]
    tiny = _write_jsonl(tmp_path / "tiny.jsonl.gz", ["\n".join(lines)])
    out = tmp_path / "report"
    results = compare(
        [f"tekken={tekken_dir}", f"tekken-ru={tekken_extended}"],
        [f"tiny={tiny}", str(RU_SAMPLE), str(EN_SAMPLE)],
        out,
        split="all",
        max_chars=100_000,
    )
    base = load(tekken_dir)
    words = [w for ln in lines for w in ln.split()]
    r = next(r for r in results if (r.tokenizer, r.text_set) == ("tekken", "tiny"))
    tokens = sum(len(base.encode(ln)) for ln in lines)
    three = sum(len(base.encode(" " + w)) >= 3 for w in words)  # each word as after a space
    assert (r.chars, r.words, r.tokens, r.words_3plus) == (sum(map(len, lines)), len(words), tokens, three)
    by = {(r.tokenizer, r.text_set): r for r in results}
    assert by[("tekken-ru", "en-sample")].tokens == by[("tekken", "en-sample")].tokens
    ru_ext, ru_base = by[("tekken-ru", "ru-sample")], by[("tekken", "ru-sample")]
    assert (
        ru_ext.chars_per_token > ru_base.chars_per_token and ru_ext.tokens_per_word < ru_base.tokens_per_word
    )
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "`▁мир`" in md and "Ð" not in md  # byte-level pieces are shown as text
    assert (out / "report.csv").is_file() and (out / "chars_per_token.png").is_file()


def _base_with_gaps(bases: dict[str, Path], out: Path, added_in_vocab: bool) -> Path:
    """The Llama-3 layout base with its ids from 1000 on moved up by 5 (a vocabulary with gaps); the
    added tokens listed in the model's vocab at their ids too, or only in "added_tokens"."""
    spec = json.loads(bases["llama3"].read_text(encoding="utf-8"))
    spec["model"]["vocab"] = {p: i if i < 1000 else i + 5 for p, i in spec["model"]["vocab"].items()}
    for a in spec["added_tokens"]:
        a["id"] += 5
        if added_in_vocab:
            spec["model"]["vocab"][a["content"]] = a["id"]
    template = spec["post_processor"]["processors"][1]
    template["special_tokens"]["<|begin_of_text|>"]["ids"] = [spec["added_tokens"][0]["id"]]
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return out / "tokenizer.json"


def test_extend_keeps_the_gaps_of_a_base_vocabulary(bases: dict[str, Path], tmp_path: Path) -> None:
    """A base whose ids have gaps (its added tokens in the model's vocab, so tokenizers keeps their ids)
    failed with "ids of the new vocabulary are not 0..N without gaps; please report this"."""
    base_path = _base_with_gaps(bases, tmp_path / "base", added_in_vocab=True)
    out = tmp_path / "ext"
    train_tokenizer(
        [RU_SAMPLE], out, TrainSettings(mode="extend", base_model=str(base_path), new_tokens=100, **SMALL)
    )
    base, ext = load(base_path), load(out)
    assert base.vocab_size == 1207 and ext.vocab_size == 1307
    assert all(ext.id_to_piece(i) == base.id_to_piece(i) for i in range(base.vocab_size))
    assert [ext.piece_to_id(s) for s in SPECIALS["llama3"]] == [1205, 1206]
    english = english_lines(None)
    assert ext.encode_batch(english) == base.encode_batch(english)


def test_a_base_whose_written_added_token_ids_do_not_load_is_refused(
    bases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Added tokens outside a vocabulary with gaps load at other ids than the file writes (tokenizers
    numbers them from the vocabulary's size): the extension would move them. Refused, naming both ids."""
    base_path = _base_with_gaps(bases, tmp_path / "base", added_in_vocab=False)
    argv = ["tokenizer", "train", "--mode", "extend", "--base-model", str(base_path), "--new-tokens", "100"]
    capsys.readouterr()
    assert cli_main([*argv, "--corpus", f"{RU_SAMPLE}@50k", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'<|begin_of_text|>' is written with id 1205 but tokenizers loads it as id 1200" in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_tokenizer_with_bpe_dropout_is_refused_at_every_stage(
    bases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BPE-dropout makes every encoding draw other merges: training on such a base failed with "please
    report this as a bug", and compare / adapt-vocab measured or averaged random encodings."""
    spec = json.loads(bases["qwen2"].read_text(encoding="utf-8"))
    spec["model"]["dropout"] = 0.1
    (tmp_path / "base").mkdir()
    path = tmp_path / "base" / "tokenizer.json"
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(VikhrError, match=r'model dropout 0.1 makes every encoding random.*"dropout" to null'):
        load(path)
    argv = ["tokenizer", "train", "--mode", "extend", "--base-model", str(path), "--new-tokens", "100"]
    capsys.readouterr()
    assert cli_main([*argv, "--corpus", f"{RU_SAMPLE}@50k", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model dropout 0.1 makes every encoding random" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
