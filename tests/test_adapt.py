"""Vocabulary adaptation of tiny random HF Mistral/Llama checkpoints (sharded/unsharded, tied/untied)."""

from __future__ import annotations

import functools
import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.helpers import stderr_of_cli, tiny_hf_model
from vikhr.adapt import adapt_vocab, load_vocabulary, plan_rows
from vikhr.adapt.vocab import EMBED, INIT_LOG, LM_HEAD, SUMMARY
from vikhr.assets import EN_SAMPLE, MISTRAL_TOKENIZER, RU_SAMPLE
from vikhr.cli import main as cli_main
from vikhr.errors import VikhrError
from vikhr.tokenizer.hf_export import write_hf_tokenizer
from vikhr.tokenizer.load import Tokenizer as LoadedTokenizer
from vikhr.tokenizer.load import load
from vikhr.tokenizer.train import TrainSettings, train_tokenizer

OLD_VOCAB = 32000
NEW_VOCAB = 2500


@pytest.fixture(scope="module")
def new_tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Russian+English tokenizer: about half of its pieces exist in Mistral's vocabulary."""
    out = tmp_path_factory.mktemp("tok") / "new"
    train_tokenizer(
        [RU_SAMPLE, EN_SAMPLE], out, TrainSettings(vocab_size=NEW_VOCAB, max_chars_per_file=300_000)
    )
    return out / "tokenizer.model"


def make_checkpoint(
    path: Path, arch: str = "mistral", tied: bool = False, shard: bool = False, seed: int = 0
) -> torch.nn.Module:
    model = tiny_hf_model(
        path,
        vocab_size=OLD_VOCAB,
        arch=arch,
        tied=tied,
        seed=seed,
        max_shard_size="800KB" if shard else "1GB",
    )
    assert (path / "model.safetensors.index.json").is_file() == shard
    return model


def tensors_of(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                out[k] = st.get_tensor(k)
    return out


CASES = [
    ("mistral", False, True),
    ("mistral", True, False),
    ("llama", False, False),
    ("llama", True, True),
]


@pytest.mark.parametrize("arch, tied, shard", CASES)
def test_copied_rows_bit_identical_and_averaged_rows_are_means(
    tmp_path: Path, new_tok: Path, arch: str, tied: bool, shard: bool
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_checkpoint(src, arch, tied, shard)
    summary = adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, out, show_progress=False)
    old_t, new_t = tensors_of(src), tensors_of(out)
    old_sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    new_sp = spm.SentencePieceProcessor(model_file=str(new_tok))
    names = [EMBED] if tied else [EMBED, LM_HEAD]
    assert sorted(summary["adapted_tensors"]) == sorted(names)
    assert (LM_HEAD in new_t) == (LM_HEAD in old_t)
    copied = averaged = 0
    for new_id in range(new_sp.get_piece_size()):
        piece = new_sp.id_to_piece(new_id)
        old_id = old_sp.piece_to_id(piece)
        known = old_sp.id_to_piece(old_id) == piece
        for name in names:
            new_row, old = new_t[name][new_id], old_t[name]
            if known:
                assert torch.equal(new_row.view(torch.int32), old[old_id].view(torch.int32)), piece
            elif piece.startswith("▁") and "▁" not in piece[1:]:
                # Independent route to the old pieces: a word-initial piece is the word after a space.
                ids = old_sp.encode(piece[1:])
                torch.testing.assert_close(new_row, old[ids].mean(0), rtol=1e-6, atol=1e-8)
        copied += known
        averaged += not known and piece.startswith("▁") and "▁" not in piece[1:]
    assert copied > 1000 and averaged > 40  # the checks above really ran on both kinds
    assert summary["counts"]["copied"] == copied


def test_word_internal_pieces_use_old_pieces_without_dummy_prefix(tmp_path: Path, new_tok: Path) -> None:
    old = load_vocabulary(MISTRAL_TOKENIZER)
    new = load_vocabulary(new_tok)
    plan = plan_rows(old, new)
    by_token = {s.token: s for s in plan}
    internal = [s for s in plan if s.method == "averaged" and not s.token.startswith("▁")]
    assert internal
    for step in internal:
        # The old pieces spell the new piece exactly (no added "▁" in front).
        assert "".join(old.pieces[i] for i in step.old_ids) == step.token
    assert by_token["<0x0A>"].method == "copied" and by_token["<s>"].old_ids == (1,)


def test_shared_token_text_gives_identical_logits(tmp_path: Path, new_tok: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    old_model = make_checkpoint(src, "mistral", tied=False, shard=True)
    adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, out, show_progress=False)
    from transformers import AutoModelForCausalLM

    new_model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    old_sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    new_sp = spm.SentencePieceProcessor(model_file=str(new_tok))
    shared_new = [i for i in range(new_sp.get_piece_size()) if old_sp.piece_to_id(new_sp.id_to_piece(i)) != 0]
    shared_old = [old_sp.piece_to_id(new_sp.id_to_piece(i)) for i in shared_new]
    sentence = "The old man and the sea, he said. Он сказал, что старый дом стоит там, где река."
    shared = set(shared_new)
    words = [w for w in sentence.split() if all(i in shared for i in new_sp.encode(w))]
    assert len(words) >= 8
    new_ids = new_sp.encode(" ".join(words))
    assert all(i in set(shared_new) for i in new_ids)  # the text is made only of shared tokens
    old_ids = [old_sp.piece_to_id(new_sp.id_to_piece(i)) for i in new_ids]
    with torch.no_grad():
        a = old_model(torch.tensor([[1, *old_ids]]), output_hidden_states=True)
        b = new_model(torch.tensor([[1, *new_ids]]), output_hidden_states=True)
    assert torch.equal(a.hidden_states[-1], b.hidden_states[-1])
    torch.testing.assert_close(b.logits[..., shared_new], a.logits[..., shared_old], rtol=0, atol=1e-6)


def test_output_loads_offline_and_generates(
    tmp_path: Path, new_tok: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src, out = tmp_path / "src", tmp_path / "out"
    make_checkpoint(src, "llama", tied=True, shard=False)
    adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, out, pad_to_multiple=64, show_progress=False)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert model.config.vocab_size == 2560 and model.get_input_embeddings().weight.shape[0] == 2560
    text = "Привет, мир!"
    enc = tok(text, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == [
        1,
        *spm.SentencePieceProcessor(model_file=str(new_tok)).encode(text),
    ]
    gen = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, enc["input_ids"].shape[1] + 4)
    assert (out / "tokenizer.model").read_bytes() == new_tok.read_bytes()


def test_other_tensors_copied_through_and_index_rewritten(tmp_path: Path, new_tok: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_checkpoint(src, "mistral", tied=False, shard=True)
    adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, out, show_progress=False)
    old_t, new_t = tensors_of(src), tensors_of(out)
    assert old_t.keys() == new_t.keys()
    for name in old_t.keys() - {EMBED, LM_HEAD}:
        assert torch.equal(old_t[name], new_t[name]), name
    old_index = json.loads((src / "model.safetensors.index.json").read_text())
    new_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert new_index["weight_map"] == old_index["weight_map"]
    sizes = sum(t.numel() * t.element_size() for t in new_t.values())
    assert new_index["metadata"]["total_size"] == sizes
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(
        p.name for p in src.glob("*.safetensors")
    )


@pytest.mark.parametrize("tied", [False, True])
def test_the_index_counts_the_parameters_of_the_adapted_model(
    tmp_path: Path, new_tok: Path, tied: bool
) -> None:
    """transformers writes the model's parameter count into the shard index: the adapted model's
    index kept the old count (32,000 rows per matrix, where it has 2,500)."""
    from transformers import AutoModelForCausalLM

    src, out = tmp_path / "src", tmp_path / "out"
    make_checkpoint(src, "llama", tied=tied, shard=True)
    assert "total_parameters" in json.loads((src / "model.safetensors.index.json").read_text())["metadata"]
    adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, out, show_progress=False)
    metadata = json.loads((out / "model.safetensors.index.json").read_text())["metadata"]
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert metadata["total_parameters"] == model.num_parameters()


def test_init_log_summary_padding_and_random_init(tmp_path: Path, new_tok: Path) -> None:
    src = tmp_path / "src"
    make_checkpoint(src, "mistral", tied=False, shard=False)
    s = adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, tmp_path / "m", pad_to_multiple=128, show_progress=False)
    log = json.loads((tmp_path / "m" / INIT_LOG).read_text(encoding="utf-8"))
    assert len(log) == s["padded_vocab_size"] == 2560 and s["counts"]["padding"] == 60
    assert sum(s["counts"].values()) == 2560
    assert json.loads((tmp_path / "m" / SUMMARY).read_text()) == s
    old_t, new_t = tensors_of(src), tensors_of(tmp_path / "m")
    torch.testing.assert_close(new_t[EMBED][2550], old_t[EMBED].mean(0))
    entry = next(e for e in log if e["method"] == "averaged")
    assert entry["source_pieces"] and "".join(entry["source_pieces"]).replace("▁", "") in entry[
        "token"
    ].replace("▁", "")

    r1 = adapt_vocab(
        src, MISTRAL_TOKENIZER, new_tok, tmp_path / "r1", init="random", seed=3, show_progress=False
    )
    adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, tmp_path / "r2", init="random", seed=3, show_progress=False)
    a, b = tensors_of(tmp_path / "r1"), tensors_of(tmp_path / "r2")
    assert torch.equal(a[EMBED], b[EMBED]) and torch.equal(a[LM_HEAD], b[LM_HEAD])
    assert r1["counts"]["random"] == s["counts"]["averaged"] + s["counts"]["byte-fallback"]
    rand_ids = [
        e["id"] for e in json.loads((tmp_path / "r1" / INIT_LOG).read_text()) if e["method"] == "random"
    ]
    assert not torch.allclose(a[EMBED][rand_ids], new_t[EMBED][rand_ids])


@pytest.mark.parametrize("init", ["mean-of-all", "random"])
def test_new_rows_leave_out_the_spare_rows_of_a_padded_checkpoint(
    tmp_path: Path, new_tok: Path, init: str
) -> None:
    """A checkpoint padded past its tokenizer (Qwen2.5: 271 spare rows) holds rows of no token, zero
    or untrained: the mean of "mean-of-all" and padding rows, and the N(mean, std) "random" rows are
    drawn from, counted them."""
    spare = 64

    def untrained_spare_rows(model: torch.nn.Module) -> None:
        model.get_input_embeddings().weight[OLD_VOCAB:] = 50.0
        model.get_output_embeddings().weight[OLD_VOCAB:] = -50.0

    src, out = tmp_path / "src", tmp_path / "out"
    tiny_hf_model(src, vocab_size=OLD_VOCAB + spare, arch="llama", weights=untrained_spare_rows)
    adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, out, init=init, pad_to_multiple=128, show_progress=False)
    log = json.loads((out / INIT_LOG).read_text(encoding="utf-8"))
    old_t, new_t = tensors_of(src), tensors_of(out)
    for name, seed in ((EMBED, 0), (LM_HEAD, 1)):
        tokens = old_t[name][:OLD_VOCAB].to(torch.float64)
        mean, std = tokens.mean(0).to(torch.float32), tokens.std(0).to(torch.float32)
        draws = torch.Generator().manual_seed(seed)  # the rows are drawn in id order, one row a draw
        checked = [e for e in log if e["method"] in ("mean-of-all", "padding", "random")]
        assert {e["method"] for e in checked} == {init, "padding"}
        for entry in checked:
            random = entry["method"] == "random"
            expected = mean + std * torch.randn(mean.shape[0], generator=draws) if random else mean
            torch.testing.assert_close(new_t[name][entry["id"]], expected, msg=name)


def test_a_tied_model_storing_its_head_stays_tied_under_random_init(tmp_path: Path, new_tok: Path) -> None:
    """The stored head drew other random rows than the embedding: the output said tied but was not
    (transformers untied it; vikhr's convert refused it)."""
    src = tmp_path / "src"
    make_checkpoint(src, "llama", tied=True, shard=False)
    t = tensors_of(src)
    save_file({**t, LM_HEAD: t[EMBED].clone()}, str(src / "model.safetensors"), metadata={"format": "pt"})
    adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, tmp_path / "out", init="random", show_progress=False)
    out = tensors_of(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    assert torch.equal(out[LM_HEAD], out[EMBED])


def test_old_tokenizer_json_gives_same_plan_as_model(tmp_path: Path, new_tok: Path) -> None:
    write_hf_tokenizer(MISTRAL_TOKENIZER, tmp_path)
    from_model = plan_rows(load_vocabulary(MISTRAL_TOKENIZER), load_vocabulary(new_tok))
    from_json = plan_rows(load_vocabulary(tmp_path / "tokenizer.json"), load_vocabulary(new_tok))
    assert [(s.method, s.old_ids) for s in from_json] == [(s.method, s.old_ids) for s in from_model]


def _assert_nothing_written(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


def test_clear_errors_and_no_half_written_output(
    tmp_path: Path, new_tok: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_checkpoint(src, "mistral", tied=False, shard=False)

    # Old tokenizer that does not match the model's 32000 rows.
    with pytest.raises(VikhrError, match="has 2500 tokens but the model's embedding has 32000 rows"):
        adapt_vocab(src, new_tok, new_tok, out)
    _assert_nothing_written(tmp_path, out)

    # Output exists (the CLI prints one line and exits 2).
    out.mkdir()
    argv = ["adapt-vocab", "--model", str(src), "--old-tokenizer", str(MISTRAL_TOKENIZER)]
    argv += ["--new-tokenizer", str(new_tok), "--out", str(out)]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "exists" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert cli_main([*argv, "--overwrite"]) == 0 and (out / "config.json").is_file()

    # A missing tensor: drop lm_head from an untied checkpoint.
    broken = tmp_path / "broken"
    make_checkpoint(broken, "mistral", tied=False, shard=False)
    t = tensors_of(broken)
    del t[LM_HEAD]
    save_file(t, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(VikhrError, match=r"implies tensor lm_head\.weight, which the weights lack"):
        adapt_vocab(broken, MISTRAL_TOKENIZER, new_tok, tmp_path / "o2")
    _assert_nothing_written(tmp_path, tmp_path / "o2")
    # ... or a layer's weight, which was copied on without it (exit 0).
    t = tensors_of(src)
    layer = next(name for name in t if name.endswith("mlp.down_proj.weight"))
    del t[layer]
    save_file(t, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(VikhrError, match=f"implies tensor {re.escape(layer)}, which the weights lack"):
        adapt_vocab(broken, MISTRAL_TOKENIZER, new_tok, tmp_path / "o2")
    _assert_nothing_written(tmp_path, tmp_path / "o2")

    # A missing shard listed in the index.
    sharded = tmp_path / "sharded"
    make_checkpoint(sharded, "mistral", tied=False, shard=True)
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(VikhrError, match=r"listed in the index .* is missing"):
        adapt_vocab(sharded, MISTRAL_TOKENIZER, new_tok, tmp_path / "o3")
    _assert_nothing_written(tmp_path, tmp_path / "o3")


def test_a_tie_word_embeddings_string_is_refused(tmp_path: Path, new_tok: Path) -> None:
    """An untied model whose config.json says "false" in quotes was adapted as tied (a non-empty string
    is true to Python): its own LM head was replaced by the embedding's rows."""
    src = tmp_path / "src"
    make_checkpoint(src, "mistral", tied=False, shard=False)
    written = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**written, "tie_word_embeddings": "false"}))
    with pytest.raises(VikhrError, match=r'tie_word_embeddings must be true or false, got "false"'):
        adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, tmp_path / "out")
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_a_missing_head_is_told_by_where_the_untying_comes_from(tmp_path: Path, new_tok: Path) -> None:
    """A config the converter does not read (here a GELU model) that leaves tie_word_embeddings out, of
    a family untied by default, whose shards lack lm_head.weight: the refusal said config.json "has
    tie_word_embeddings=false", a key not in the file."""
    src = tmp_path / "src"
    make_checkpoint(src, "mistral", tied=False, shard=False)
    t = tensors_of(src)
    del t[LM_HEAD]
    save_file(t, str(src / "model.safetensors"), metadata={"format": "pt"})
    written = json.loads((src / "config.json").read_text())
    del written["tie_word_embeddings"]
    (src / "config.json").write_text(json.dumps({**written, "hidden_act": "gelu"}))
    with pytest.raises(VikhrError) as refusal:
        adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, tmp_path / "out")
    assert str(refusal.value) == (
        f"tensor {LM_HEAD} not found in {src} and its config.json leaves tie_word_embeddings out, which "
        "model_type 'mistral' reads as false: set tie_word_embeddings to true there if the model ties its "
        "head to the embedding"
    )
    _assert_nothing_written(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    "content, reason",
    [
        # A tokenizer_config.json given for the tokenizer.json beside it ("only BPE tokenizer.json
        # files are supported (got None)").
        ({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>"}, 'it has no "model" section'),
        # A JSON array: AttributeError traceback.
        ([{"text": "привет"}], "not a JSON object"),
    ],
)
def test_a_json_file_that_is_not_a_tokenizer_is_refused_in_one_line(
    content: Any, reason: str, tmp_path: Path, new_tok: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_checkpoint(src)
    not_a_tokenizer = tmp_path / "tokenizer_config.json"
    not_a_tokenizer.write_text(json.dumps(content), encoding="utf-8")
    for old, new in [(MISTRAL_TOKENIZER, not_a_tokenizer), (not_a_tokenizer, new_tok)]:
        argv = ["adapt-vocab", "--model", str(src), "--old-tokenizer", str(old)]
        argv += ["--new-tokenizer", str(new), "--out", str(out)]
        capsys.readouterr()
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert f"{not_a_tokenizer} is not an HF tokenizer.json ({reason})" in err, err
        assert len(err.splitlines()) == 1
        _assert_nothing_written(tmp_path, out)


def test_an_old_tokenizer_of_the_right_size_but_not_the_models_is_refused(
    tmp_path: Path, new_tok: Path
) -> None:
    """A tokenizer of the model's size that is not its own (Llama 2's for Mistral: 32,000 pieces
    each) passed the size check and copied every row for another token, exit 0. The tokenizer kept
    in the model's directory is compared with it; a few renamed pieces are still taken."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from vikhr.tokenizer.hf_export import load_model_proto

    src = tmp_path / "src"
    make_checkpoint(src)
    shutil.copyfile(MISTRAL_TOKENIZER, src / "tokenizer.model")
    proto = load_model_proto(MISTRAL_TOKENIZER)
    pieces = [p.piece for p in proto.pieces]
    for i in range(1000, 2000):  # another tokenizer: the same pieces, other ids
        proto.pieces[i].piece = pieces[i + 1000]
        proto.pieces[i + 1000].piece = pieces[i]
    other = tmp_path / "other.model"
    other.write_bytes(proto.SerializeToString())
    with pytest.raises(VikhrError) as e:
        adapt_vocab(src, other, new_tok, tmp_path / "out")
    message = str(e.value)
    assert f"--old-tokenizer {other} is not the model's tokenizer {src / 'tokenizer.model'}" in message
    assert f"2000 of their first 32000 ids are other pieces (id 1000: {pieces[2000]!r}" in message
    assert f"(--old-tokenizer {src})" in message
    _assert_nothing_written(tmp_path, tmp_path / "out")

    renamed = load_model_proto(MISTRAL_TOKENIZER)
    renamed.pieces[31999].piece, renamed.pieces[31999].type = (
        "<|im_start|>",
        pb.ModelProto.SentencePiece.CONTROL,
    )
    (tmp_path / "renamed.model").write_bytes(renamed.SerializeToString())
    for old in (src, MISTRAL_TOKENIZER, tmp_path / "renamed.model"):  # its own, a copy, a renamed piece
        summary = adapt_vocab(src, old, new_tok, tmp_path / "ok", overwrite=True)
        assert summary["old_vocab_size"] == 32000


def test_a_damaged_generation_config_is_refused_before_the_shards(tmp_path: Path, new_tok: Path) -> None:
    """generation_config.json is rewritten after every shard was written: a damaged one was a
    JSONDecodeError traceback at the very end (an AttributeError for a JSON list)."""
    src = tmp_path / "src"
    make_checkpoint(src)
    for text in ('{"bos_token_id": 1,', "[1, 2]"):
        (src / "generation_config.json").write_text(text, encoding="utf-8")
        with pytest.raises(VikhrError, match=r"generation_config\.json"):
            adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, tmp_path / "o", show_progress=False)
        _assert_nothing_written(tmp_path, tmp_path / "o")


def test_an_output_inside_the_model_directory_gets_no_hidden_files(tmp_path: Path, new_tok: Path) -> None:
    """Every file of the model directory is carried over: with --out inside it, the run's own lock
    file (hidden, beside the output) was copied into the result."""
    src = tmp_path / "src"
    make_checkpoint(src)
    (src / ".gitattributes").write_text("*.safetensors filter=lfs\n", encoding="utf-8")
    (src / "README.md").write_text("model card\n", encoding="utf-8")
    adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, src / "adapted", show_progress=False)
    names = {p.name for p in (src / "adapted").iterdir()}
    assert "README.md" in names and not [n for n in names if n.startswith(".")], names


def test_old_tokenizer_that_cannot_encode_a_piece(tmp_path: Path, new_tok: Path) -> None:
    """An English-only old tokenizer without byte fallback maps Cyrillic to <unk>: a clear error."""
    import sentencepiece as spm_mod

    lines = tmp_path / "en.txt"
    lines.write_text("\n".join(f"the cat number {i} sat on the mat" for i in range(300)), encoding="utf-8")
    spm_mod.SentencePieceTrainer.train(
        input=str(lines), model_prefix=str(tmp_path / "en"), model_type="bpe", vocab_size=60,
        byte_fallback=False, minloglevel=2, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    )  # fmt: skip
    old = load_vocabulary(tmp_path / "en.model")
    with pytest.raises(VikhrError, match=r"cannot encode new piece .* <unk>"):
        plan_rows(old, load_vocabulary(new_tok))
    assert all(
        s.method in ("copied", "random") for s in plan_rows(old, load_vocabulary(new_tok), init="random")
    )


# ---------------------------------------------------------------- byte-level BPE (Llama-3, Qwen2.5, tekken)


@pytest.fixture(scope="module")
def byte_level_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per layout: a small byte-level base trained from the bundled text and its Russian extension."""
    from tests.test_tokenizer_byte_bpe import make_byte_level_base

    root = tmp_path_factory.mktemp("byte-level")
    out = {}
    for layout in ("llama3", "qwen2"):
        base = make_byte_level_base(root / layout, layout)
        settings = TrainSettings(
            mode="extend",
            base_model=str(base),
            new_tokens=300,
            max_chars_per_file=300_000,
            verify_lines_per_file=200,
        )
        train_tokenizer([RU_SAMPLE], root / f"{layout}-ru", settings)
        out[layout] = (base, root / f"{layout}-ru" / "tokenizer.json")
    return out


@functools.cache
def _hf_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def byte_level_source_ids(old_tokenizer_json: Path, piece: str) -> tuple[list[int], bool]:
    """The old ids of a new byte-level piece, computed here without vikhr: the piece's bytes, the old
    encoding of their longest valid UTF-8 prefix, then the single-byte token of the next byte, and again
    on what is left. Also whether the bytes were valid UTF-8."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    old = _hf_tokenizer(old_tokenizer_json)
    char_of = bytes_to_unicode()
    byte_of = {c: b for b, c in char_of.items()}
    data = bytes(byte_of[c] for c in piece)
    ids: list[int] = []
    valid = True
    while data:
        cut = len(data)
        while True:
            try:
                text = data[:cut].decode("utf-8")
                break
            except UnicodeDecodeError:
                cut -= 1
        if text:
            ids += old.encode(text, add_special_tokens=False).ids
        if cut < len(data):
            ids.append(old.token_to_id(char_of[data[cut]]))
            valid = False
        data = data[cut + 1 :]
    return ids, valid


@pytest.mark.parametrize(
    "layout, arch, tied", [("llama3", "llama", False), ("qwen2", "qwen2", True), ("qwen2", "qwen3", True)]
)
def test_byte_level_extension_copies_old_rows_and_averages_token_bytes(
    tmp_path: Path, byte_level_tokenizers: dict[str, tuple[Path, Path]], layout: str, arch: str, tied: bool
) -> None:
    """Old ids keep their rows bit for bit; a new token's row is the mean of the old rows of its bytes'
    pieces (stray bytes of a partial character as single-byte tokens); a tied head stays tied."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    old_json, new_json = byte_level_tokenizers[layout]
    old_size = Tokenizer.from_file(str(old_json)).get_vocab_size()
    src, out = tmp_path / "src", tmp_path / "out"
    tiny_hf_model(src, vocab_size=old_size, arch=arch, tied=tied, max_shard_size="300KB")
    summary = adapt_vocab(src, old_json, new_json, out, pad_to_multiple=64, show_progress=False)
    new_tok = Tokenizer.from_file(str(new_json))
    new_size = new_tok.get_vocab_size()
    assert new_size == old_size + 300 and summary["padded_vocab_size"] == -(-new_size // 64) * 64
    old_t, new_t = tensors_of(src), tensors_of(out)
    names = [EMBED] if tied else [EMBED, LM_HEAD]
    assert (LM_HEAD in new_t) == (LM_HEAD in old_t) == (not tied)
    invalid = 0
    for name in names:
        old, new = old_t[name], new_t[name]
        assert torch.equal(new[:old_size].view(torch.int32), old.view(torch.int32))
        for i in range(old_size, new_size):
            ids, valid = byte_level_source_ids(old_json, new_tok.id_to_token(i))
            torch.testing.assert_close(new[i], old[ids].mean(0), rtol=1e-6, atol=1e-8)
            invalid += not valid
    assert invalid > 0  # pieces ending in half a Cyrillic letter (" Ð") were among them
    assert summary["counts"]["copied"] == old_size
    assert summary["counts"]["byte-fallback"] == invalid // len(names)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert (
        model.config.tie_word_embeddings == tied and model.config.vocab_size == summary["padded_vocab_size"]
    )
    same = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert same == tied


def _extended_base_with_gaps(
    tmp_path: Path,
    byte_level_tokenizers: dict[str, tuple[Path, Path]],
    new_tokens: int,
    chars: int,
    lines: int,
) -> tuple[Path, LoadedTokenizer, list[int]]:
    """A Llama-3-style base tokenizer.json with 5 gaps in its ids, extended into tmp_path/ext: the
    base's path, the base loaded, and its gap ids."""
    from tests.test_tokenizer_byte_bpe import _base_with_gaps

    base_json = _base_with_gaps(
        {"llama3": byte_level_tokenizers["llama3"][0]}, tmp_path / "base", added_in_vocab=True
    )
    settings = TrainSettings(
        mode="extend", base_model=str(base_json), new_tokens=new_tokens, max_chars_per_file=chars,
        verify_lines_per_file=lines,
    )  # fmt: skip
    train_tokenizer([RU_SAMPLE], tmp_path / "ext", settings)
    base = load(base_json)
    gaps = [i for i in range(base.vocab_size) if base.backend.id_to_token(i) is None]
    assert len(gaps) == 5
    return base_json, base, gaps


def test_the_unused_ids_of_a_vocabulary_with_gaps_keep_their_rows_and_are_counted_apart(
    tmp_path: Path, byte_level_tokenizers: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A base tokenizer.json whose ids have gaps (ids with no token), extended (the gaps stay): the
    report counted the gap rows as "copied", each copied from the last gap's row. Each keeps its own
    row, and they are counted apart ("5 unused ids keep their rows")."""
    base_json, base, gaps = _extended_base_with_gaps(tmp_path, byte_level_tokenizers, 100, 300_000, 200)
    src, out = tmp_path / "src", tmp_path / "out"
    tiny_hf_model(src, vocab_size=base.vocab_size, arch="llama")
    argv = ["adapt-vocab", "--model", str(src), "--old-tokenizer", str(base_json)]
    capsys.readouterr()
    assert cli_main([*argv, "--new-tokenizer", str(tmp_path / "ext"), "--out", str(out)]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith("; 5 unused ids keep their rows"), line
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["counts"]["copied"] == base.vocab_size - 5 and summary["counts"]["unused"] == 5
    old_t, new_t = tensors_of(src), tensors_of(out)
    for name in (EMBED, LM_HEAD):
        assert torch.equal(new_t[name][gaps].view(torch.int32), old_t[name][gaps].view(torch.int32))


@pytest.mark.parametrize("init", ["mean-of-all", "random"])
def test_new_rows_leave_out_the_gap_rows_of_a_vocabulary_with_gaps(
    tmp_path: Path, byte_level_tokenizers: dict[str, tuple[Path, Path]], init: str
) -> None:
    """The rows of the gaps in a base tokenizer.json's ids belong to no token (zero or untrained): the
    mean of "mean-of-all" and padding rows, and the N(mean, std) "random" rows are drawn from, counted
    them. They come from the rows of the base's tokens only."""
    base_json, base, gaps = _extended_base_with_gaps(tmp_path, byte_level_tokenizers, 20, 100_000, 50)
    tokens = [i for i in range(base.vocab_size) if i not in gaps]

    def untrained_gap_rows(model: torch.nn.Module) -> None:
        model.get_input_embeddings().weight[gaps] = 1e3
        model.get_output_embeddings().weight[gaps] = -1e3

    src, out = tmp_path / "src", tmp_path / "out"
    tiny_hf_model(src, vocab_size=base.vocab_size, arch="llama", weights=untrained_gap_rows)
    adapt_vocab(src, base_json, tmp_path / "ext", out, init=init, pad_to_multiple=64, show_progress=False)
    log = json.loads((out / INIT_LOG).read_text(encoding="utf-8"))
    checked = [e for e in log if e["method"] in ("mean-of-all", "padding", "random")]
    assert {e["method"] for e in checked} == {init, "padding"}
    old_t, new_t = tensors_of(src), tensors_of(out)
    for name, seed in ((EMBED, 0), (LM_HEAD, 1)):
        rows = old_t[name][tokens].to(torch.float64)
        mean, std = rows.mean(0).to(torch.float32), rows.std(0).to(torch.float32)
        draws = torch.Generator().manual_seed(seed)  # the rows are drawn in id order, one row a draw
        for entry in checked:
            random = entry["method"] == "random"
            expected = mean + std * torch.randn(mean.shape[0], generator=draws) if random else mean
            torch.testing.assert_close(new_t[name][entry["id"]], expected, msg=name)


def test_an_extended_tokenizer_as_the_old_one_of_a_padded_checkpoint_is_refused(
    tmp_path: Path, byte_level_tokenizers: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A Qwen-style checkpoint has spare rows past its tokenizer (Qwen2.5: 271). The Russian extension
    given as --old-tokenizer (or as both tokenizers) fitted in them: exit 0, every new token "copied"
    from an untrained padding row. The model's own tokenizer, kept in its directory, has fewer tokens."""
    from tokenizers import Tokenizer

    base_json, extended_json = byte_level_tokenizers["qwen2"]
    base_size = Tokenizer.from_file(str(base_json)).get_vocab_size()
    src, out = tmp_path / "src", tmp_path / "out"
    tiny_hf_model(src, vocab_size=base_size + 320, arch="qwen2", tied=True)  # 300 new tokens fit
    shutil.copyfile(base_json, src / "tokenizer.json")
    argv = ["adapt-vocab", "--model", str(src), "--old-tokenizer", str(extended_json)]
    argv += ["--new-tokenizer", str(extended_json), "--out", str(out)]
    capsys.readouterr()  # transformers' progress bar of the save above
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--old-tokenizer {extended_json} has 300 more tokens than the model's tokenizer" in err, err
    assert f"({base_size + 300} vs {base_size}; id {base_size}: " in err
    assert f"(--old-tokenizer {src})" in err
    _assert_nothing_written(tmp_path, out)
    summary = adapt_vocab(src, src, extended_json, out, show_progress=False)
    assert summary["counts"]["copied"] == base_size


def test_the_bases_tokenizer_as_the_old_one_of_an_adapted_checkpoint_is_refused(
    tmp_path: Path, byte_level_tokenizers: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    """An adapted checkpoint (its directory holding the extended tokenizer) given with the base's
    tokenizer as --old-tokenizer: its 300 Russian rows passed the row check as padding and were
    replaced by means of the base's rows, exit 0."""
    base_json, extended_json = byte_level_tokenizers["llama3"]
    base_size = load_vocabulary(base_json).size
    src, adapted, out = tmp_path / "src", tmp_path / "adapted", tmp_path / "out"
    tiny_hf_model(src, vocab_size=base_size, arch="llama")
    adapt_vocab(src, base_json, extended_json, adapted, show_progress=False)
    argv = ["adapt-vocab", "--model", str(adapted), "--old-tokenizer", str(base_json)]
    argv += ["--new-tokenizer", str(extended_json), "--out", str(out)]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--old-tokenizer {base_json} has 300 fewer tokens than the model's tokenizer" in err, err
    assert f"({base_size} vs {base_size + 300}; id {base_size}: " in err
    assert f"(--old-tokenizer {adapted})" in err
    _assert_nothing_written(tmp_path, out)
    summary = adapt_vocab(adapted, adapted, extended_json, out, show_progress=False)
    assert summary["counts"]["copied"] == base_size + 300


def _with_added_tokens(tokenizer_json: Path, tokens: list[str], out: Path) -> Path:
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


def _slow_tokenizer_chat_model(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A tiny chat model saved by a slow tokenizer: tokenizer.model plus added_tokens.json giving
    <|im_start|>/<|im_end|> the two ids after it (with rows); its source, an output path, the base
    tokenizer.json and the tokenizer.json with the two chat tokens."""
    chat = ["<|im_start|>", "<|im_end|>"]
    src = tmp_path / "src"
    tiny_hf_model(src, vocab_size=OLD_VOCAB + 2, arch="mistral")
    shutil.copyfile(MISTRAL_TOKENIZER, src / "tokenizer.model")
    (src / "added_tokens.json").write_text(json.dumps({chat[0]: OLD_VOCAB, chat[1]: OLD_VOCAB + 1}))
    base_json, _ = write_hf_tokenizer(MISTRAL_TOKENIZER, tmp_path / "base")
    chat_json = _with_added_tokens(base_json, chat, tmp_path / "chat" / "tokenizer.json")
    return src, tmp_path / "out", base_json, chat_json


def _assert_chat_rows_kept(src: Path, out: Path) -> None:
    before, after = tensors_of(src), tensors_of(out)
    for name in (EMBED, LM_HEAD):
        assert torch.equal(after[name][OLD_VOCAB : OLD_VOCAB + 2], before[name][OLD_VOCAB : OLD_VOCAB + 2])


def test_a_chat_models_tokens_listed_in_its_added_tokens_json_count_as_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chat model saved by a slow tokenizer keeps <|im_start|>/<|im_end|> in added_tokens.json,
    past its tokenizer.model, with trained rows. Its tokenizer.json as --old-tokenizer was refused as
    "2 more tokens than the model's tokenizer": the .model alone took those rows for padding."""
    src, out, base_json, old_json = _slow_tokenizer_chat_model(tmp_path)
    summary = adapt_vocab(src, old_json, old_json, out, show_progress=False)
    assert summary["old_vocab_size"] == OLD_VOCAB + 2 and summary["counts"]["copied"] == OLD_VOCAB + 2
    _assert_chat_rows_kept(src, out)
    # Other tokens at those ids are still refused, with what added_tokens.json gives the first one.
    other_json = _with_added_tokens(base_json, ["<tool_call>", "</tool_call>"], tmp_path / "o" / "t.json")
    argv = ["adapt-vocab", "--model", str(src), "--old-tokenizer", str(other_json)]
    argv += ["--new-tokenizer", str(old_json), "--out", str(tmp_path / "out2")]
    capsys.readouterr()
    assert cli_main(argv) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    own = src / "tokenizer.model"
    assert (
        f"--old-tokenizer {other_json} has 2 more tokens than the model's tokenizer {own} "
        f"({OLD_VOCAB + 2} vs {OLD_VOCAB}; id {OLD_VOCAB}: '<tool_call>'; its added_tokens.json gives that "
        "id to '<|im_start|>')"
    ) in err, err
    _assert_nothing_written(tmp_path, tmp_path / "out2")


def test_a_slow_tokenizers_model_with_its_added_tokens_json_keeps_their_trained_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chat model saved by a slow tokenizer: tokenizer.model and added_tokens.json, whose chat tokens
    have trained rows past the .model. Given as --old-tokenizer, its directory (or its .model) was the
    .model alone and those rows were taken for padding: replaced by the mean row, without a word. It is
    the .model with the added tokens now, as transformers loads it; a copy of the .model without them
    is refused, naming the directory."""
    src, _, _, new_json = _slow_tokenizer_chat_model(tmp_path)
    before = tensors_of(src)
    for n, old in enumerate([src, src / "tokenizer.model"]):
        out = tmp_path / f"out{n}"
        summary = adapt_vocab(src, old, new_json, out, show_progress=False)
        assert summary["old_vocab_size"] == OLD_VOCAB + 2 and summary["counts"]["copied"] == OLD_VOCAB + 2
        after = tensors_of(out)
        for name in (EMBED, LM_HEAD):
            assert torch.equal(after[name], before[name])
    bare = tmp_path / "bare" / "tokenizer.model"
    bare.parent.mkdir()
    shutil.copyfile(MISTRAL_TOKENIZER, bare)
    argv = [
        "adapt-vocab",
        "--model",
        str(src),
        "--old-tokenizer",
        str(bare),
        "--new-tokenizer",
        str(new_json),
    ]
    capsys.readouterr()
    assert cli_main([*argv, "--out", str(tmp_path / "refused")]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert err.endswith(
        f"--old-tokenizer {bare} has {OLD_VOCAB} tokens, but the model's added_tokens.json gives id "
        f"{OLD_VOCAB} to '<|im_start|>' (2 such ids among its {OLD_VOCAB + 2} rows), whose trained rows "
        f"would be taken for padding; pass the tokenizer the model was trained with (--old-tokenizer {src}: "
        "its tokenizer.model and the 2 tokens its added_tokens.json adds)"
    ), err
    _assert_nothing_written(tmp_path, tmp_path / "refused")
    # A token listed past the model's rows has no row to keep: the rows are the .model's.
    (src / "added_tokens.json").write_text(json.dumps({"<|im_start|>": OLD_VOCAB + 2}))
    summary = adapt_vocab(src, src, new_json, tmp_path / "past", show_progress=False)
    assert summary["old_vocab_size"] == OLD_VOCAB and summary["counts"]["copied"] == OLD_VOCAB


def test_byte_level_replaced_vocabulary_copies_specials_by_name(
    tmp_path: Path, byte_level_tokenizers: dict[str, tuple[Path, Path]]
) -> None:
    """A replace-mode vocabulary moves the specials after its own tokens: their rows follow them."""
    old_json, _ = byte_level_tokenizers["llama3"]
    settings = TrainSettings(base_model=str(old_json), vocab_size=700, max_chars_per_file=200_000)
    train_tokenizer([RU_SAMPLE, EN_SAMPLE], tmp_path / "rep", settings)
    plan = plan_rows(load_vocabulary(old_json), load_vocabulary(tmp_path / "rep"))
    assert [(s.token, s.method, s.old_ids) for s in plan[698:]] == [
        ("<|begin_of_text|>", "copied", (1200,)),
        ("<|end_of_text|>", "copied", (1201,)),
    ]
    for step in plan[:698]:
        if step.method != "copied":
            assert list(step.old_ids) == byte_level_source_ids(old_json, step.token)[0]
    methods = {s.method for s in plan}
    assert {"copied", "averaged"} <= methods <= {"copied", "averaged", "byte-fallback"}


def _standing_for(piece: str, byte_level: bool) -> bytes | str:
    """The bytes a normal or byte piece stands for, computed here without vikhr (specials: the piece)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    if byte_level:
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        return bytes(byte_of[c] for c in piece) if all(c in byte_of for c in piece) else piece
    if m := re.fullmatch(r"<0x([0-9A-F]{2})>", piece):
        return bytes([int(m.group(1), 16)])
    return piece if piece in ("<unk>", "<s>", "</s>") else piece.replace("\u2581", " ").encode()


@pytest.mark.parametrize("direction", ["sentencepiece-to-byte-level", "byte-level-to-sentencepiece"])
def test_across_tokenizer_families_rows_are_copied_by_the_bytes_a_piece_stands_for(
    byte_level_tokenizers: dict[str, tuple[Path, Path]], direction: str
) -> None:
    """Byte-level "Ð" is the byte 0xD0 (a Cyrillic lead byte), SentencePiece "Ð" the Latin letter: the
    rows were matched by string, so ~95 byte tokens took the rows of Latin-1 letters, and SentencePiece
    <0xXX> pieces never took the old byte tokens' rows."""
    byte_json, _ = byte_level_tokenizers["llama3"]
    old_path, new_path = (MISTRAL_TOKENIZER, byte_json)
    if direction == "byte-level-to-sentencepiece":
        old_path, new_path = new_path, old_path
    old, new = load_vocabulary(old_path), load_vocabulary(new_path)
    plan = plan_rows(old, new)
    copied = {new_id: step.old_ids[0] for new_id, step in enumerate(plan) if step.method == "copied"}
    for new_id, old_id in copied.items():
        assert _standing_for(new.pieces[new_id], new.byte_level) == _standing_for(
            old.pieces[old_id], old.byte_level
        ), (new.pieces[new_id], old.pieces[old_id])
    sp, bl = (old, new) if old_path == MISTRAL_TOKENIZER else (new, old)
    lead_byte = (sp.pieces.index("<0xD0>"), bl.pieces.index("Ð"))  # 0xD0 in both
    space = (sp.pieces.index("\u2581"), bl.pieces.index("Ġ"))
    for sp_id, bl_id in (lead_byte, space):
        assert (copied[bl_id] == sp_id) if sp is old else (copied[sp_id] == bl_id)
    if sp is new:  # "»" is the two bytes C2 BB: the mean of their tokens, not a copy of 0xBB's ("»")
        step = plan[sp.pieces.index("»")]
        assert (step.method, step.old_ids) == ("averaged", (bl.pieces.index("Â"), bl.pieces.index("»")))


@pytest.fixture(scope="module")
def qwen2_replaced(tmp_path_factory: pytest.TempPathFactory, byte_level_tokenizers: dict) -> Path:
    """A replace-mode vocabulary of 700 tokens trained from the Qwen2-layout base (names no BOS; EOS
    and the chat tokens <|endoftext|>, <|im_start|>, <|im_end|> move from ids 1200-1202 to 697-699)."""
    old_json, _ = byte_level_tokenizers["qwen2"]
    out = tmp_path_factory.mktemp("qwen2-replaced") / "rep"
    settings = TrainSettings(base_model=str(old_json), vocab_size=700, max_chars_per_file=200_000)
    train_tokenizer([RU_SAMPLE, EN_SAMPLE], out, settings)
    return out


def test_a_replaced_vocabulary_moves_the_config_ids_and_drops_the_old_tokenizer_files(
    tmp_path: Path, byte_level_tokenizers: dict[str, tuple[Path, Path]], qwen2_replaced: Path
) -> None:
    """Qwen2.5 names no BOS but its config's bos/pad ids are <|endoftext|>: after a replaced
    vocabulary they pointed past the new matrices (generate() failed). Old tokenizer files beside the
    weights (vocab.json/merges.txt, Mistral-NeMo's tekken.json, tokenizer.model.v3) were copied into
    the output, where transformers loads them instead of the new tokenizer.json."""
    from tokenizers import Tokenizer

    old_json, _ = byte_level_tokenizers["qwen2"]
    old_tok, new_tok = (
        Tokenizer.from_file(str(old_json)),
        Tokenizer.from_file(str(qwen2_replaced / "tokenizer.json")),
    )
    end_old, end_new = old_tok.token_to_id("<|endoftext|>"), new_tok.token_to_id("<|endoftext|>")
    assert end_old != end_new and end_old >= new_tok.get_vocab_size()
    src, out = tmp_path / "src", tmp_path / "out"
    tiny_hf_model(src, vocab_size=old_tok.get_vocab_size(), arch="qwen2", tied=True)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "bos_token_id": end_old, "pad_token_id": end_old}))
    generation = {"bos_token_id": end_old, "eos_token_id": end_old, "pad_token_id": end_old}
    (src / "generation_config.json").write_text(json.dumps(generation))
    old_files = ["vocab.json", "merges.txt", "tekken.json", "tokenizer.model.v3", "params.json"]
    for name in [*old_files, "README.md"]:
        (src / name).write_text("{}")
    adapt_vocab(src, old_json, qwen2_replaced, out, show_progress=False)
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert (config["bos_token_id"], config["pad_token_id"]) == (end_new, end_new)
    assert generation == {"bos_token_id": end_new, "eos_token_id": end_new, "pad_token_id": end_new}
    assert not [name for name in old_files if (out / name).exists()] and (out / "README.md").is_file()


def _qwen2_chat_model(src: Path, config: dict[str, Any], generation: dict[str, Any]) -> None:
    """A tiny Qwen2 model of the Qwen2-layout base's 1203 rows with these config.json entries (None
    removes one) and this generation_config.json."""
    tiny_hf_model(src, vocab_size=1203, arch="qwen2", tied=True)
    merged = {**json.loads((src / "config.json").read_text()), **config}
    (src / "config.json").write_text(json.dumps({k: v for k, v in merged.items() if v is not None}))
    (src / "generation_config.json").write_text(json.dumps(generation))


def _assert_transformers_finds_the_tokenizers_ids(out: Path) -> None:
    """The Trainer's alignment of a model's configs with its tokenizer (what it would rewrite, and
    warn about) finds nothing to change, and generate() starts from the BOS of generation_config.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import align_special_tokens

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    before = (model.config.to_dict(), model.generation_config.to_dict())
    align_special_tokens(model, tokenizer)
    assert (model.config.to_dict(), model.generation_config.to_dict()) == before
    generated = model.generate(max_new_tokens=2, do_sample=False)
    assert generated[0, 0] == model.generation_config.bos_token_id


def test_the_generation_config_names_the_new_tokenizers_special_tokens(
    tmp_path: Path, byte_level_tokenizers: dict[str, tuple[Path, Path]], qwen2_replaced: Path
) -> None:
    """generate() reads generation_config.json alone. Its BOS was kept from the old model where
    config.json named none (an id past the new matrices: generate() without a prompt failed), its EOS
    where the new tokenizer names none (the model stopped on whatever token took the old id), and
    neither file took the PAD the new tokenizer names."""
    old_json, _ = byte_level_tokenizers["qwen2"]
    end, im_end = 697, 699  # <|endoftext|>, <|im_end|> in the new vocabulary (1200, 1202 in the old)
    src = tmp_path / "src"
    # transformers' Qwen2 tokenizer pads with <|endoftext|> where its tokenizer_config.json names no PAD
    pad = {"pad_token_id": 1200}
    _qwen2_chat_model(src, {"bos_token_id": None, **pad}, {"bos_token_id": 1200, "eos_token_id": 1200, **pad})
    adapt_vocab(src, old_json, qwen2_replaced, tmp_path / "out", show_progress=False)
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": end, "eos_token_id": end, "pad_token_id": end}
    _assert_transformers_finds_the_tokenizers_ids(tmp_path / "out")

    # A tokenizer naming no EOS and <|endoftext|> as its PAD (Qwen2.5's tokenizer_config.json does).
    tok = tmp_path / "tok"
    shutil.copytree(qwen2_replaced, tok)
    tok_config = json.loads((tok / "tokenizer_config.json").read_text())
    tok_config.update(eos_token=None, pad_token="<|endoftext|>")
    (tok / "tokenizer_config.json").write_text(json.dumps(tok_config))
    src = tmp_path / "src2"
    stops = {"eos_token_id": [1202, 1200], "pad_token_id": 1202}
    _qwen2_chat_model(src, stops, {"bos_token_id": 1200, **stops})
    adapt_vocab(src, old_json, tok / "tokenizer.json", tmp_path / "out2", show_progress=False)
    for name in ("config.json", "generation_config.json"):
        written = json.loads((tmp_path / "out2" / name).read_text())
        assert (written["eos_token_id"], written["pad_token_id"]) == ([im_end, end], end), name
    _assert_transformers_finds_the_tokenizers_ids(tmp_path / "out2")

    tok_config["pad_token"] = "<pad>"  # not in the vocabulary: refused before anything is written
    (tok / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with pytest.raises(
        VikhrError, match=r"tokenizer_config\.json: pad_token '<pad>' is not in .*tokenizer\.json"
    ):
        adapt_vocab(src, old_json, tok / "tokenizer.json", tmp_path / "out3", show_progress=False)
    _assert_nothing_written(tmp_path, tmp_path / "out3")


def test_a_header_whose_offsets_do_not_fit_the_shape_is_refused(tmp_path: Path, new_tok: Path) -> None:
    """A safetensors header whose data offsets hold another number of bytes than dtype × shape:
    adapt-vocab copied the short tensor into an output that looked complete (exit 0)."""
    src = tmp_path / "src"
    make_checkpoint(src, "mistral", tied=False, shard=False)
    weights = src / "model.safetensors"
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k.endswith("mlp.down_proj.weight"))
    header[name]["data_offsets"][1] -= 4  # one element short
    text = json.dumps(header).encode()  # data offsets count from the header's end
    weights.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    shape = r"F32 \[64, 176\] is 45056 bytes but its offsets"
    message = rf"is not a readable safetensors file \(tensor {re.escape(name)}: {shape}"
    with pytest.raises(VikhrError, match=message):
        adapt_vocab(src, MISTRAL_TOKENIZER, new_tok, tmp_path / "out")
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_stop_tokens_and_a_chat_template_file_survive_extension_adaptation_and_conversion(
    tmp_path: Path, byte_level_tokenizers: dict[str, tuple[Path, Path]]
) -> None:
    """A Qwen/Llama-3 instruct model stops on several tokens (config and generation config list
    them) and transformers >= 4.47 keeps its chat template in chat_template.jinja: adapt-vocab and
    convert wrote the single EOS id, and the template was lost at tokenizer training, adapt-vocab
    and convert alike (an exported chat model then ran on past its turns, untemplated)."""
    import shutil

    from transformers import AutoTokenizer

    from vikhr.convert import hf_to_megatron, megatron_to_hf

    template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    base_json, _ = byte_level_tokenizers["qwen2"]
    base = tmp_path / "base"
    shutil.copytree(base_json.parent, base)
    (base / "chat_template.jinja").write_text(template, encoding="utf-8")
    settings = TrainSettings(
        mode="extend",
        base_model=str(base),
        new_tokens=100,
        max_chars_per_file=100_000,
        verify_lines_per_file=50,
    )
    train_tokenizer([RU_SAMPLE], tmp_path / "tok", settings)
    assert (tmp_path / "tok" / "chat_template.jinja").read_text(encoding="utf-8") == template

    stops = [1202, 1200]  # <|im_end|>, <|endoftext|> (the EOS)
    src = tmp_path / "src"
    tiny_hf_model(src, vocab_size=1203, arch="qwen2", tied=True)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "eos_token_id": stops}))
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": stops, "bos_token_id": None}))
    adapted = tmp_path / "adapted"
    adapt_vocab(
        src, base / "tokenizer.json", tmp_path / "tok" / "tokenizer.json", adapted, show_progress=False
    )
    assert json.loads((adapted / "config.json").read_text())["eos_token_id"] == stops
    assert json.loads((adapted / "generation_config.json").read_text())["eos_token_id"] == stops
    assert (adapted / "chat_template.jinja").read_text(encoding="utf-8") == template

    back = megatron_to_hf(hf_to_megatron(adapted, tmp_path / "meg"), tmp_path / "back")
    assert json.loads((back / "config.json").read_text())["eos_token_id"] == stops
    assert json.loads((back / "generation_config.json").read_text())["eos_token_id"] == stops
    assert AutoTokenizer.from_pretrained(back).chat_template == template


def test_bar_is_drawn_on_a_terminal_only(
    tmp_path: Path, new_tok: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bar went to stderr wherever it was: a log held `writing shards` lines beside the result."""
    src = tmp_path / "src"
    make_checkpoint(src, "mistral", tied=False, shard=False)

    def argv(out: str) -> list[str]:
        return [
            "adapt-vocab",
            "--model",
            str(src),
            "--old-tokenizer",
            str(MISTRAL_TOKENIZER),
            "--new-tokenizer",
            str(new_tok),
            "--out",
            str(tmp_path / out),
        ]

    assert "writing shards" not in stderr_of_cli(argv("log"), terminal=False, monkeypatch=monkeypatch)
    assert "writing shards: 100%" in stderr_of_cli(argv("terminal"), terminal=True, monkeypatch=monkeypatch)
    quiet = stderr_of_cli([*argv("quiet"), "--no-progress"], terminal=True, monkeypatch=monkeypatch)
    assert "writing shards" not in quiet


def test_streamed_shards_keep_their_bytes(tmp_path: Path) -> None:
    """The shard writer of adapt-vocab (one safetensors writer for every command): the header keeps
    the metadata and the tensor order, the replaced embedding takes its new rows, and every other
    tensor's bytes are copied as they are, a float8 and a sub-byte dtype vikhr cannot load among
    them. The bytes are those the shards had before the writers were one (sha256 below)."""
    import hashlib

    from vikhr.adapt.safetensors_io import SafetensorsWriter, read_header
    from vikhr.adapt.vocab import _write_shards

    tensors = {  # name -> (dtype, shape, data), in file order
        "model.embed_tokens.weight": ("BF16", [4, 3], bytes(range(24))),
        "model.norm.weight": ("F8_E4M3", [3], b"\x01\x02\x03"),
        "model.packed.weight": ("F4", [4], b"\xab\xcd"),
        "model.layers.0.mlp.weight": ("F32", [2], struct.pack("<2f", 1.5, -2.25)),
    }
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    src = tmp_path / "src" / "model.safetensors"
    src.parent.mkdir()
    src.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(data for _, _, data in tensors.values()))
    work = tmp_path / "out"
    work.mkdir()
    rows = torch.arange(15, dtype=torch.float32).reshape(5, 3).to(torch.bfloat16)
    sizes = _write_shards([read_header(src)], {EMBED: lambda: rows}, 5, work, show_progress=False)
    written = (work / src.name).read_bytes()
    assert sizes == {src.name: 30 + 3 + 2 + 8}
    before = "7df28c255c9a576773cc4adfbcf97eb09808ffbbf4dc3491fc9ea09922ca9906"
    assert hashlib.sha256(written).hexdigest() == before
    with safe_open(str(work / src.name), framework="pt") as st:
        assert torch.equal(st.get_tensor(EMBED), rows)
        assert st.metadata() == {"format": "pt"}
    # A tensor copied out of the header's order is the caller's bug.
    entries = read_header(src).tensors
    with (
        open(src, "rb") as fin,
        SafetensorsWriter(tmp_path / "x.safetensors", entries, None) as out,
        pytest.raises(RuntimeError, match=r"copying model.norm.weight, but the header says model.embed"),
    ):
        out.copy(entries["model.norm.weight"], fin)
