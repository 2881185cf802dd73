"""vikhr.tokenizer.load: file precedence, the BOS/EOS rule, encoding, errors and a light import."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vikhr.assets import ASSETS, MISTRAL_TOKENIZER
from vikhr.errors import VikhrError
from vikhr.tokenizer import Tokenizer, load
from vikhr.tokenizer.load import TOKENIZER_FILES, resolve_tokenizer_file

RU40K_JSON = ASSETS / "tokenizers" / "vikhr-ru-40k.tokenizer.json"
TEXT = "Машинное обучение изменяет мир. Hello </s> world"


def hf_tokenizer_json(path: Path, specials: list[str]) -> Path:
    """A tiny word-level tokenizer.json whose first tokens are `specials` (ids 0, 1, …)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {t: i for i, t in enumerate([*specials, "[UNK]", "привет", "мир"])}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


def test_directory_precedence(tmp_path: Path) -> None:
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    assert TOKENIZER_FILES == ("tokenizer.model", "tokenizer.json")
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(MISTRAL_TOKENIZER, both / "tokenizer.model")
    write_hf_tokenizer(both / "tokenizer.model", both)  # the same vocabulary: the .model is the original
    assert resolve_tokenizer_file(both) == both / "tokenizer.model"
    assert load(both).kind == "sentencepiece"
    # A file is taken as given, whatever else lies beside it.
    assert resolve_tokenizer_file(both / "tokenizer.json") == both / "tokenizer.json"
    assert load(str(both / "tokenizer.json")).kind == "huggingface"
    # A tokenizer.json with ids past the .model's end is the directory's tokenizer (transformers').
    shutil.copy(RU40K_JSON, both / "tokenizer.json")
    assert load(both).path == both / "tokenizer.json"
    (both / "tokenizer.json").write_text("{")  # unreadable: the .model, as before
    assert load(both).path == both / "tokenizer.model"
    shutil.copy(RU40K_JSON, both / "tokenizer.json")
    (both / "tokenizer.model").unlink()
    assert load(both).path == both / "tokenizer.json"


def test_a_directory_whose_tokenizer_json_adds_tokens_is_that_json_at_every_stage(tmp_path: Path) -> None:
    """A chat model's directory (a SentencePiece .model, and a tokenizer.json adding <|im_end|> and
    <|im_start|>): every stage loaded the .model, without the chat tokens and with </s> as EOS, where
    transformers loads the tokenizer.json."""
    from tests.helpers import sentencepiece_with_added_tokens
    from vikhr.adapt.vocab_source import load_vocabulary
    from vikhr.data.preprocess import _load_tokenizer
    from vikhr.sft.template import load_for_chats
    from vikhr.tokenizer.load import load_without_dummy_prefix

    d = sentencepiece_with_added_tokens(tmp_path / "hermes")
    json_file = d / "tokenizer.json"
    tok = load(d)
    assert (tok.path, tok.kind, tok.vocab_size) == (json_file, "huggingface", 32002)
    assert (tok.bos_id, tok.eos_id) == (1, 32000)
    assert load_without_dummy_prefix(d).path == json_file  # adapt-vocab encodes new pieces with it
    assert load_vocabulary(d).size == 32002  # adapt-vocab's --old-tokenizer / --new-tokenizer
    chat, _, _ = load_for_chats(d, "chatml")  # sft prepare
    assert chat.path == json_file and chat.piece_to_id("<|im_start|>") == 32001
    encoder = _load_tokenizer(d, "HuggingFaceTokenizer")  # data preprocess
    assert (encoder.path, encoder.eos_id) == (json_file, 32000)
    with pytest.raises(VikhrError, match=r"the tokenizer of .* has tokens its tokenizer\.model lacks"):
        _load_tokenizer(d, "SentencePieceTokenizer")
    assert _load_tokenizer(d / "tokenizer.model", "SentencePieceTokenizer").eos_id == 2  # the file itself


def test_which_file_of_a_directory_is_decided_once_per_version_of_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stages resolve one directory several times: the tokenizer.json is parsed once, and again only
    when a file changes."""
    import importlib
    import json as json_module

    from tests.helpers import sentencepiece_with_added_tokens, written_an_hour_ago

    load_module = importlib.import_module("vikhr.tokenizer.load")  # the package's `load` is the function

    d = sentencepiece_with_added_tokens(tmp_path / "hermes")
    written_an_hour_ago(d / "tokenizer.json", d / "tokenizer.model")  # settled: cached by its stamps
    decided: list[Path] = []
    decide = load_module._adds_tokens_of

    def counted(json_path: Path, model_path: Path) -> bool:
        decided.append(json_path)
        return decide(json_path, model_path)

    monkeypatch.setattr(load_module, "_adds_tokens_of", counted)
    assert resolve_tokenizer_file(d) == resolve_tokenizer_file(d) == d / "tokenizer.json"
    assert len(decided) == 1
    spec = json_module.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["id"] < 32000]
    (d / "tokenizer.json").write_text(json_module.dumps(spec), encoding="utf-8")
    assert resolve_tokenizer_file(d) == d / "tokenizer.model"  # the rewritten file is read again


@pytest.mark.parametrize("written_again", ["renamed into place", "in place"])
def test_a_tokenizer_json_replaced_within_one_clock_tick_is_read_again(
    written_again: str, tmp_path: Path
) -> None:
    """A tokenizer.json renamed into place with the old one's size and modification time (a coarse
    clock, one tick) is another file: the directory's choice is made again. Written again in place it
    kept its inode too, and the choice made on the old file stood: a file written in the last seconds
    is not cached by its stamp."""
    from tests.helpers import (
        replace_within_one_tick,
        rewrite_in_place_within_one_tick,
        sentencepiece_with_added_tokens,
    )

    write_again = (
        replace_within_one_tick if written_again == "renamed into place" else rewrite_in_place_within_one_tick
    )

    d = sentencepiece_with_added_tokens(tmp_path / "hermes")
    assert resolve_tokenizer_file(d) == d / "tokenizer.json"
    text = (d / "tokenizer.json").read_text(encoding="utf-8")
    spec = json.loads(text)
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["id"] < 32000]
    smaller = json.dumps(spec)  # ASCII; the trailing spaces JSON allows keep the old size
    write_again(d / "tokenizer.json", smaller.ljust(len(text.encode("utf-8"))))
    assert resolve_tokenizer_file(d) == d / "tokenizer.model"


def test_sentencepiece_model_uses_its_own_bos_eos() -> None:
    import sentencepiece as spm

    tok = load(MISTRAL_TOKENIZER)
    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    assert (tok.path, tok.kind, tok.vocab_size) == (MISTRAL_TOKENIZER, "sentencepiece", 32000)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.encode(TEXT) == sp.encode(TEXT)  # no BOS/EOS, "</s>" in the text stays text
    assert tok.encode_batch([TEXT, "мир"]) == [sp.encode(TEXT), sp.encode("мир")]
    assert tok.decode([1, *tok.encode("Привет, мир"), 2]) == "Привет, мир"
    assert tok.id_to_piece(2) == "</s>"
    assert tok.piece_to_id("</s>") == 2
    assert tok.piece_to_id("no such piece") is None


def test_sentencepiece_model_without_bos_gives_none(tmp_path: Path) -> None:
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("привет мир\nмир труд май\n" * 20, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "nobos"), vocab_size=30, model_type="bpe",
        bos_id=-1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    tok = load(tmp_path / "nobos.model")
    assert (tok.bos_id, tok.eos_id) == (None, 2)


def test_tokenizer_json_without_config_uses_well_known_tokens(tmp_path: Path) -> None:
    shutil.copy(RU40K_JSON, tmp_path / "tokenizer.json")
    tok = load(tmp_path)
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id) == ("huggingface", 40000, 1, 2)
    reference = load(ASSETS / "tokenizers" / "vikhr-ru-40k.model")
    assert tok.encode(TEXT) == reference.encode(TEXT)  # "</s>" typed in the text is not the EOS id
    assert tok.decode([1, *tok.encode("Привет, мир"), 2]) == "Привет, мир"
    assert tok.id_to_piece(2) == "</s>"

    llama = load(hf_tokenizer_json(tmp_path / "llama", ["<|begin_of_text|>", "<|end_of_text|>"]))
    assert (llama.bos_id, llama.eos_id) == (0, 1)
    qwen = load(hf_tokenizer_json(tmp_path / "qwen", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]))
    assert (qwen.bos_id, qwen.eos_id) == (None, 0)  # the first well-known EOS present


def test_offsets_of_sentencepiece_equal_those_of_its_tokenizer_json() -> None:
    """encode_with_offsets (the chat templates' mask comes from it): character offsets, a character
    spelled in byte pieces held by each of them, on both backends alike; the dummy-prefix "▁" holds no
    character of the text on sentencepiece."""
    sp, hf = load(ASSETS / "tokenizers" / "vikhr-ru-40k.model"), load(RU40K_JSON)
    for text in (TEXT, "рапсодия № 2 😀!", "№№\nx", "  two spaces", "ё"):
        sp_ids, sp_offsets = sp.encode_with_offsets(text)
        hf_ids, hf_offsets = hf.encode_with_offsets(text)
        assert sp_ids == hf_ids == sp.encode(text), text
        if sp_offsets[0] == (0, 0):
            sp_offsets, hf_offsets = sp_offsets[1:], hf_offsets[1:]
        assert sp_offsets == hf_offsets, text
        assert all(text[start:end] for start, end in sp_offsets), text


def test_tokenizer_json_with_config_uses_its_tokens(tmp_path: Path) -> None:
    path = hf_tokenizer_json(tmp_path / "qwen", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    config = path.with_name("tokenizer_config.json")
    config.write_text(json.dumps({"bos_token": None, "eos_token": {"content": "<|im_end|>"}}))
    assert (load(path).bos_id, load(path).eos_id) == (None, 2)
    config.write_text(json.dumps({"bos_token": "<|im_start|>"}))  # EOS not named: well-known rule
    assert (load(path).bos_id, load(path).eos_id) == (1, 0)
    config.write_text(json.dumps({"eos_token": "<eos>"}))
    with pytest.raises(VikhrError, match=r"eos_token '<eos>' is not in"):
        load(path)
    config.write_text("{not json")
    with pytest.raises(VikhrError, match=r"tokenizer_config\.json is not valid JSON"):
        load(path)


def test_to_transformers_encodes_like_the_tokenizer() -> None:
    for path in (MISTRAL_TOKENIZER, RU40K_JSON):
        tok = load(path)
        fast = tok.to_transformers()
        assert fast(TEXT.replace("</s>", ""), add_special_tokens=True).input_ids == [
            tok.bos_id,
            *tok.encode(TEXT.replace("</s>", "")),
        ]
        assert (fast.bos_token_id, fast.eos_token_id, len(fast)) == (tok.bos_id, tok.eos_id, tok.vocab_size)


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    cases = {
        tmp_path / "missing.model": "tokenizer not found",
        tmp_path: "holds neither tokenizer.model nor tokenizer.json",
    }
    (tmp_path / "junk.model").write_bytes(b"\x00not a model")
    cases[tmp_path / "junk.model"] = "is not a SentencePiece .model"
    (tmp_path / "junk.json").write_text('{"model": 1}')
    cases[tmp_path / "junk.json"] = "is not an HF tokenizer.json"
    for path, message in cases.items():
        with pytest.raises(VikhrError, match=message) as e:
            load(path)
        assert "\n" not in str(e.value)


def test_a_tokenizer_json_that_makes_tokenizers_panic_is_a_one_line_error(tmp_path: Path) -> None:
    """A continuing_subword_prefix longer than the right part of a merge makes the tokenizers library
    panic while loading; the panic (not an Exception) went past the error handling as a traceback."""
    vocab = {"a": 0, "b": 1, "ab": 2}
    spec = {"model": {"type": "BPE", "vocab": vocab, "merges": ["a b"], "continuing_subword_prefix": "##"}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(VikhrError, match=r"is not an HF tokenizer.json \(slice index") as e:
        load(path)
    assert "\n" not in str(e.value)


def test_a_gpt2_style_vocab_and_merges_directory_is_told_how_to_write_its_tokenizer_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory of only vocab.json + merges.txt (GPT-2's layout, no tokenizer.json) got "holds
    neither tokenizer.model nor tokenizer.json", and its vocab.json "missing field `model`". Both now
    say that the pre-tokenizer is not in those files, with a transformers command that writes the
    tokenizer.json; that command's output loads."""
    from vikhr.cli import main

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    vocab = {"<|endoftext|>": 0, "h": 1, "i": 2, "hi": 3, "Ġ": 4, "Ġhi": 5}
    (gpt2 / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (gpt2 / "merges.txt").write_text("#version: 0.2\nh i\nĠ hi\n", encoding="utf-8")
    said = f"{gpt2} holds a GPT-2-style vocab.json and merges.txt but no tokenizer.json"
    for given in (gpt2, gpt2 / "vocab.json", gpt2 / "merges.txt"):
        with pytest.raises(VikhrError, match=re.escape(said)) as e:
            load(given)
        assert "from transformers import GPT2TokenizerFast as T;" in str(e.value)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "hi hi"}\n', encoding="utf-8")
    argv = ["data", "preprocess", "--input", str(corpus), "--output-prefix", str(tmp_path / "d")]
    assert main([*argv, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(gpt2)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert said in line and line.endswith(f", then give {tmp_path / 'gpt2-hf'}")
    command = line.split("python -c ", 1)[1].removesuffix(f", then give {tmp_path / 'gpt2-hf'}")
    subprocess.run(f"{sys.executable} -c {command}", shell=True, check=True, capture_output=True)
    assert load(tmp_path / "gpt2-hf").encode("hi hi") == [3, 5]
    (gpt2 / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}', encoding="utf-8")
    with pytest.raises(VikhrError, match="from transformers import AutoTokenizer as T;"):
        load(gpt2)


@pytest.mark.parametrize(
    ("model_type", "cls", "why"),
    [
        ("mistral", "GPT2TokenizerFast", "AutoTokenizer's for model type mistral reads no vocab.json"),
        ("qwen2", "AutoTokenizer", None),
        (
            "rubert-bpe-x",
            "GPT2TokenizerFast",
            "model type rubert-bpe-x is unknown to the installed transformers",
        ),
    ],
)
def test_the_tokenizer_json_command_for_vocab_and_merges_runs_whatever_config_json_s_model_type(
    tmp_path: Path, model_type: str, cls: str, why: str | None
) -> None:
    """A model directory whose config.json names a model type was told to run AutoTokenizer on its
    vocab.json + merges.txt; for a mistral one (a byte-level BPE on Mistral's architecture) that
    command fails under transformers 4 ("No tokenizer file found") and 5 ("You need to have
    sentencepiece or tiktoken installed"): Mistral's tokenizer class reads a tokenizer.model. The
    command now names AutoTokenizer only where its class for the model type reads those files (Qwen2's,
    whose own pre-tokenizer then cuts the text), GPT-2's class otherwise; what it writes decodes
    Russian and English text back, and GPT-2's encodes it to the ids of the BPE the files came from.
    A model type transformers does not know was said to have an AutoTokenizer class reading no
    vocab.json and merges.txt; it is now said to be unknown to the installed transformers."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, pre_tokenizers, trainers
    from tokenizers import models as hf_models

    from vikhr.assets import EN_SAMPLE, RU_SAMPLE
    from vikhr.jsonl import read_texts

    texts = [t[:1500] for sample in (RU_SAMPLE, EN_SAMPLE) for t in itertools.islice(read_texts(sample), 20)]
    bpe = HFTokenizer(hf_models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=800, initial_alphabet=alphabet))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    bpe.model.save(str(model_dir))  # vocab.json, merges.txt
    (model_dir / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    with pytest.raises(VikhrError) as e:
        load(model_dir)
    assert f"from transformers import {cls} as T;" in str(e.value)
    if why is not None:
        assert f"for another model's, its tokenizer class: {why}" in str(e.value)
    command = str(e.value).split("python -c ", 1)[1].removesuffix(f", then give {tmp_path / 'model-hf'}")
    subprocess.run(f"{sys.executable} -c {command}", shell=True, check=True, capture_output=True)
    written = load(tmp_path / "model-hf")
    assert [written.decode(written.encode(t)) for t in texts] == texts
    if cls == "GPT2TokenizerFast":
        assert [written.encode(t) for t in texts] == [bpe.encode(t).ids for t in texts]


def test_a_tiktoken_file_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Llama-3's original/tokenizer.model is a tiktoken BPE file (base64 token, rank, a line each): as a
    tokenizer (or a directory holding it) it was "not a SentencePiece .model (… could not parse
    ModelProto …)" or "Wire format was corrupt". Every stage now says what it is and what to give."""
    from vikhr.cli import main
    from vikhr.tokenizer.hf_export import load_model_proto

    original = tmp_path / "original"
    original.mkdir()
    (original / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n", encoding="ascii")
    said = "original/tokenizer.model is a tiktoken BPE file (as Llama-3's original/tokenizer.model), not a "
    for parse in (load, load_model_proto):
        with pytest.raises(VikhrError, match="is a tiktoken BPE file") as e:
            parse(original / "tokenizer.model")
        assert said in str(e.value) and "give the model's HF tokenizer.json" in str(e.value)
    corpus = tmp_path / "ru.jsonl"
    corpus.write_text('{"text": "Привет, мир"}\n', encoding="utf-8")
    argv = ["tokenizer", "train", "--mode", "extend", "--base-model", str(original), "--new-tokens", "10"]
    assert main([*argv, "--corpus", str(corpus), "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1
    assert not (tmp_path / "tok").exists()


def test_a_directory_with_a_tiktoken_model_beside_its_tokenizer_json_is_the_json(tmp_path: Path) -> None:
    """`tokenizer.model` comes first in a directory; a tiktoken one (Llama-3's original/tokenizer.model
    copied beside the tokenizer.json) made every stage refuse the directory, whose tokenizer.json works."""
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n", encoding="ascii")
    shutil.copyfile(RU40K_JSON, tmp_path / "tokenizer.json")
    assert resolve_tokenizer_file(tmp_path) == tmp_path / "tokenizer.json"
    assert load(tmp_path).encode(TEXT) == load(RU40K_JSON).encode(TEXT)


def test_preprocess_says_a_directorys_json_was_chosen_over_its_tiktoken_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`data preprocess --tokenizer-type SentencePieceTokenizer` on such a directory said its json was
    chosen because "it has tokens its tokenizer.model lacks": a false reason, pointing at the .model."""
    from tokenizers import Tokenizer as HFTokenizer

    from vikhr.cli import main
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    llama3, chat = tmp_path / "llama3", tmp_path / "chat"
    llama3.mkdir()
    (llama3 / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n", encoding="ascii")
    shutil.copyfile(RU40K_JSON, llama3 / "tokenizer.json")
    write_hf_tokenizer(MISTRAL_TOKENIZER, chat)  # a SentencePiece base with a token added in its json
    shutil.copyfile(MISTRAL_TOKENIZER, chat / "tokenizer.model")
    added = HFTokenizer.from_file(str(chat / "tokenizer.json"))
    added.add_special_tokens(["<|im_start|>"])
    added.save(str(chat / "tokenizer.json"))
    corpus = tmp_path / "ru.jsonl"
    corpus.write_text('{"text": "Привет, мир"}\n', encoding="utf-8")
    for directory, reason in [
        (llama3, "its tokenizer.model is a tiktoken BPE file, no SentencePiece model"),
        (chat, "it has tokens its tokenizer.model lacks"),
    ]:
        argv = ["data", "preprocess", "--input", str(corpus), "--output-prefix", str(tmp_path / "out")]
        argv += ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(directory)]
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            "vikhr data preprocess: error: --tokenizer-type SentencePieceTokenizer needs a SentencePiece "
            f".model, but {directory / 'tokenizer.json'} is an HF tokenizer.json, the tokenizer of "
            f"{directory} ({reason}): give --tokenizer-type HuggingFaceTokenizer for it, or a SentencePiece "
            ".model as --tokenizer-model\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat", "llama3", "ru.jsonl"]


def test_tokenizer_is_frozen() -> None:
    tok = load(MISTRAL_TOKENIZER)
    assert isinstance(tok, Tokenizer)
    with pytest.raises(AttributeError):
        tok.vocab_size = 1  # type: ignore[misc]


def test_import_is_light() -> None:
    heavy = ["torch", "transformers", "matplotlib", "sentencepiece", "tokenizers", "zstandard"]
    code = (
        "import sys, vikhr.tokenizer, vikhr.tokenizer.load, vikhr.jsonl; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tekken_file_is_refused_with_the_import_command(tmp_path: Path) -> None:
    """A Mistral tekken.json (top-level "config" and a "vocab" list) is not a tokenizer.json: one line
    that names `vikhr tokenizer import-tekken`."""
    from vikhr.tokenizer.load import load_without_dummy_prefix

    tekken = tmp_path / "tekken.json"
    vocab = [{"rank": i, "token_bytes": "AA==", "token_str": None} for i in range(3)]
    tekken.write_text(json.dumps({"config": {"pattern": "."}, "vocab": vocab}), encoding="utf-8")
    for call in (load, load_without_dummy_prefix):
        with pytest.raises(VikhrError, match=r"tekken\.json is a Mistral tekken file.*import-tekken") as e:
            call(tekken)
        assert "\n" not in str(e.value)


def test_byte_level_tokenizer_json_is_flagged_and_shows_readable_pieces(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    hf.train_from_iterator(["привет мир, привет всем"] * 50, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load(tmp_path)
    assert tok.byte_level and not load(RU40K_JSON).byte_level and not load(MISTRAL_TOKENIZER).byte_level
    assert "".join(tok.pieces(" мир")) == "ĠÐ¼Ð¸ÑĢ"  # GPT-2 byte characters
    assert "".join(tok.readable_pieces(" мир")) == "▁мир"
    assert tok.decode(tok.encode("привет, мир")) == "привет, мир"
