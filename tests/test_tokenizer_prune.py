"""prune-and-extend: exact size, kept dependencies, .model = tokenizer.json = Rust ids, the id map in
adapt-vocab, leave-one-corpus-out figures in `compare`, and one-line errors."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from tests.helpers import tiny_hf_model
from tests.test_data_tokenizer import EDGE_CASES, _assert_same
from vikhr.adapt import adapt_vocab
from vikhr.assets import EN_SAMPLE, MISTRAL_TOKENIZER, RU_SAMPLE
from vikhr.cli import main as cli_main
from vikhr.errors import VikhrError
from vikhr.tokenizer import load
from vikhr.tokenizer.byte_level import CYRILLIC
from vikhr.tokenizer.compare import compare
from vikhr.tokenizer.corpus import iter_documents, iter_lines
from vikhr.tokenizer.hf_export import build_hf_tokenizer, compare_encodings, load_model_proto
from vikhr.tokenizer.load import load_without_dummy_prefix
from vikhr.tokenizer.prune import ID_MAP_FILE, derivation, kept_with_dependencies, read_id_map
from vikhr.tokenizer.train import TrainSettings, train_tokenizer

SMALL = {"max_chars_per_file": 300_000, "num_threads": 2}
KEEP, TARGET = 3000, 3700  # base pieces kept; the vocabulary asked for (3000 + 259 + 441 Russian)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prune") / "tok"
    settings = TrainSettings(
        mode="prune-extend",
        vocab_size=TARGET,
        base_model=str(MISTRAL_TOKENIZER),
        keep_base_pieces=KEEP,
        **SMALL,
    )
    train_tokenizer([RU_SAMPLE, EN_SAMPLE], out, settings)
    return out


def test_exact_size_layout_and_id_map(pruned: Path) -> None:
    base, final = load_model_proto(MISTRAL_TOKENIZER), load_model_proto(pruned / "tokenizer.model")
    assert len(final.pieces) == TARGET == load(pruned / "tokenizer.json").vocab_size
    # Specials and the 256 byte-fallback pieces stay where Mistral has them.
    assert [p.piece for p in final.pieces[:259]] == [p.piece for p in base.pieces[:259]]
    manifest = json.loads((pruned / "manifest.json").read_text())
    assert manifest["mode"] == "prune-extend" and manifest["prune"]["kept_base_pieces"] == KEEP
    assert manifest["extend"]["added_pieces"] == TARGET - 259 - KEEP
    id_map = read_id_map(pruned / ID_MAP_FILE)
    assert len(id_map.old_to_new) == len(base.pieces) and id_map.new_vocab_size == TARGET
    for old, new in enumerate(id_map.old_to_new):
        if new is not None:
            assert final.pieces[new].piece == base.pieces[old].piece
    final_pieces = {p.piece: i for i, p in enumerate(final.pieces)}
    assert all(id_map.old_to_new[i] == final_pieces.get(p.piece) for i, p in enumerate(base.pieces))
    # The kept pieces are the most used ones: they cover more of the base's tokens on held-out text than
    # the same number of pieces in the base's own (merge) order would.
    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    for sample, at_least in ((EN_SAMPLE, 0.75), (RU_SAMPLE, 0.95)):
        ids = [i for ln in list(iter_lines(sample, split="heldout"))[:200] for i in sp.encode(ln)]
        kept = sum(id_map.old_to_new[i] is not None for i in ids) / len(ids)
        first = sum(i < 259 + KEEP for i in ids) / len(ids)
        assert kept > at_least and kept > first + 0.15


def test_kept_pieces_keep_their_dependencies_and_stay_reachable(pruned: Path) -> None:
    base, final = load_model_proto(MISTRAL_TOKENIZER), load_model_proto(pruned / "tokenizer.model")
    assert kept_with_dependencies(base, final) == []
    # Against sentencepiece itself: every kept piece without Cyrillic (their scores are the base's)
    # encodes, alone, to its own id.
    raw = load_without_dummy_prefix(pruned / "tokenizer.model")
    kept = [(i, p.piece) for i, p in enumerate(final.pieces) if p.type == 1 and not CYRILLIC.search(p.piece)]
    assert len(kept) > 1500
    for i, piece in kept:
        assert raw.encode(piece.replace("▁", " ")) == [i], piece


def _without(base: object, dropped: set[str]) -> object:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.CopyFrom(base)  # type: ignore[arg-type]
    del proto.pieces[:]
    for p in base.pieces:  # type: ignore[attr-defined]
        if p.piece not in dropped:
            proto.pieces.add().CopyFrom(p)
    return proto


def test_derivation_predicts_sentencepiece_reachability_after_pruning() -> None:
    """`derivation` replays sentencepiece exactly: on a vocabulary with a fifth of Mistral's pieces
    dropped at random (characters included), a piece's text alone encodes to that one piece exactly
    when `derivation` says so, and the base derivation's pieces suffice to keep it."""
    import random

    base = load_model_proto(MISTRAL_TOKENIZER)
    normal = [p.piece for p in base.pieces if p.type == 1]
    rng = random.Random(0)
    dropped = {p for p in normal if rng.random() < 0.2}
    proto = _without(base, dropped)
    proto.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    scores = {p.piece: p.score for p in proto.pieces if p.type == 1}
    base_scores = {p.piece: p.score for p in base.pieces if p.type == 1}
    sample = rng.sample([p for p in normal if p not in dropped and len(p) > 1], 3000)
    agree = reachable = 0
    for piece in sample:
        alone = sp.encode(piece.replace("▁", " "), out_type=str) == [piece]
        predicted = derivation(piece, scores) is not None
        assert alone == predicted, piece
        reachable += alone
        chain = derivation(piece, base_scores)
        if chain is not None and not set(chain) & dropped:
            assert alone, piece  # the dependency rule is sufficient
            agree += 1
    assert 500 < reachable < len(sample) - 500  # both outcomes really occur
    assert agree > 300


def test_a_dropped_character_splits_sentencepiece_from_tokenizers(tmp_path: Path) -> None:
    """Why characters count as dependencies: sentencepiece merges a character outside the vocabulary as
    text, `tokenizers` turns it into byte tokens first, so the two exports stop agreeing."""
    path = tmp_path / "no-h.model"
    path.write_bytes(_without(load_model_proto(MISTRAL_TOKENIZER), {"h"}).SerializeToString())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.encode("the", out_type=str) == ["▁the"]
    assert build_hf_tokenizer(path).encode("the", add_special_tokens=False).ids != sp.encode("the")


def _heldout_mix() -> list[str]:
    lines = [
        *list(iter_lines(RU_SAMPLE, split="heldout"))[:300],
        *list(iter_lines(EN_SAMPLE, split="heldout")),
    ]
    code = ["def f(x):\n    return {'ключ': x ** 2}  # комментарий", "for (let i = 0; i < n; i++) {}"]
    emoji = ["Привет 😀🙈👩‍👩‍👧‍👦 мир 🇷🇺", "CJK 中文字符 и ёжик", "naïve café — «ёлки»"]
    return [*lines, *code, *emoji, *EDGE_CASES]


def test_model_json_and_rust_give_identical_ids(pruned: Path) -> None:
    lines = _heldout_mix()
    model, tok_json = pruned / "tokenizer.model", pruned / "tokenizer.json"
    assert compare_encodings(load(model), load(tok_json), lines) == []
    _assert_same(model, lines)  # vikhr's Rust encoder, through `vikhr data preprocess`


def test_real_corpora_identical_ids(shared_data: Path, pruned: Path) -> None:
    lines = []
    for path in sorted((shared_data / "corpus").glob("*/*.jsonl.gz")):
        lines += list(iter_lines(path, split="heldout"))[:300]
    model, tok_json = pruned / "tokenizer.model", pruned / "tokenizer.json"
    assert compare_encodings(load(model), load(tok_json), lines) == []
    _assert_same(model, lines)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny HF model with Mistral's 32,000-token vocabulary."""
    src = tmp_path_factory.mktemp("base") / "model"
    return src, tiny_hf_model(src, 32000)


def test_adapt_vocab_keeps_kept_rows_at_their_new_ids(
    tmp_path: Path, pruned: Path, base_model: tuple[Path, torch.nn.Module]
) -> None:
    (src, old_model), out = base_model, tmp_path / "out"
    summary = adapt_vocab(src, MISTRAL_TOKENIZER, pruned, out, show_progress=False)
    assert summary["id_map"] == str(pruned / ID_MAP_FILE)
    id_map = read_id_map(pruned / ID_MAP_FILE)
    assert summary["counts"]["copied"] == sum(n is not None for n in id_map.old_to_new)
    from transformers import AutoModelForCausalLM

    new_model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    old_sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    new_sp = spm.SentencePieceProcessor(model_file=str(pruned / "tokenizer.model"))
    text = "The old man said that the house was there, and he would go to the sea at night."
    old_ids = old_sp.encode(text)
    new_ids = new_sp.encode(text)
    # The text is made only of kept pieces, and the pruned tokenizer segments it the same way.
    assert new_ids == [id_map.old_to_new[i] for i in old_ids]
    moved = sum(o != n for o, n in zip(old_ids, new_ids, strict=True))
    assert moved > len(old_ids) // 2  # the ids really moved: copying by id would have failed
    kept_old = [o for o, n in enumerate(id_map.old_to_new) if n is not None]
    kept_new = [id_map.old_to_new[o] for o in kept_old]
    with torch.no_grad():
        a = old_model(torch.tensor([[1, *old_ids]]), output_hidden_states=True)
        b = new_model(torch.tensor([[1, *new_ids]]), output_hidden_states=True)
    assert torch.equal(a.hidden_states[-1], b.hidden_states[-1])
    torch.testing.assert_close(b.logits[..., kept_new], a.logits[..., kept_old], rtol=0, atol=1e-6)


def _copy_tokenizer(pruned: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "manifest.json", ID_MAP_FILE):
        (dst / name).write_bytes((pruned / name).read_bytes())
    return dst


def _edit_map(path: Path, change: object) -> None:
    doc = json.loads(path.read_text())
    change(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))


def _swap_two(doc: dict) -> None:
    m = doc["old_to_new"]
    m[300], m[301] = m[301], m[300]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / ID_MAP_FILE).unlink(), "is missing"),
        (lambda p: (p / ID_MAP_FILE).write_text("{not json"), "is not valid JSON"),
        (lambda p: _edit_map(p / ID_MAP_FILE, lambda d: d.update(format="x")), "not a valid id map"),
        (lambda p: _edit_map(p / ID_MAP_FILE, lambda d: d["old_to_new"].__setitem__(5, 10**6)), "not an id"),
        (lambda p: _edit_map(p / ID_MAP_FILE, lambda d: d["old_to_new"].__setitem__(6, 3)), "two old ids"),
        (lambda p: _edit_map(p / ID_MAP_FILE, _swap_two), "does not belong"),
    ],
)
def test_bad_or_missing_id_map_is_one_line(
    tmp_path: Path,
    pruned: Path,
    base_model: tuple[Path, torch.nn.Module],
    damage: object,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tok = _copy_tokenizer(pruned, tmp_path / "tok")
    damage(tok)  # type: ignore[operator]
    src = base_model[0]
    argv = ["adapt-vocab", "--model", str(src), "--old-tokenizer", str(MISTRAL_TOKENIZER)]
    code = cli_main([*argv, "--new-tokenizer", str(tok), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_id_map_for_another_base_is_refused(
    tmp_path: Path, pruned: Path, base_model: tuple[Path, torch.nn.Module]
) -> None:
    tok = _copy_tokenizer(pruned, tmp_path / "tok")
    src = base_model[0]
    _edit_map(tok / ID_MAP_FILE, lambda d: d.update(old_vocab_size=31999, old_to_new=d["old_to_new"][:-1]))
    with pytest.raises(VikhrError, match="is for a base of 31999 tokens"):
        adapt_vocab(src, MISTRAL_TOKENIZER, tok, tmp_path / "out", show_progress=False)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--vocab-size", "3000", "--keep-base-pieces", "2800"], "leaves no room for Russian pieces"),
        (["--vocab-size", "40000", "--keep-base-pieces", "40000"], "out of range"),
        (["--vocab-size", "3000", "--keep-base-pieces", "-1"], "out of range"),
        (["--vocab-size", "20000"], "leaves no room"),  # the default keeps 72 % of 31,741
        (["--vocab-size", "33000", "--new-tokens", "10"], "--new-tokens is for --mode extend"),
    ],
)
def test_bad_prune_settings_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--mode", "prune-extend", "--base-model", str(MISTRAL_TOKENIZER)]
    code = cli_main([*argv, "--corpus", str(RU_SAMPLE), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_prune_needs_a_sentencepiece_base_and_keep_needs_prune(tmp_path: Path) -> None:
    with pytest.raises(VikhrError, match="needs --base-model"):
        train_tokenizer([RU_SAMPLE], tmp_path / "a", TrainSettings(mode="prune-extend"))
    with pytest.raises(VikhrError, match="--keep-base-pieces is for --mode prune-extend"):
        train_tokenizer([RU_SAMPLE], tmp_path / "b", TrainSettings(keep_base_pieces=10))


def _split_corpus(tmp_path: Path) -> tuple[Path, Path]:
    """Two Russian corpora from the bundled sample (alternate documents), each with its own ids."""
    docs = list(iter_documents(RU_SAMPLE))
    paths = []
    for k in (0, 1):
        path = tmp_path / f"part{k}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for d in docs[k::2]:
                f.write(json.dumps({"id": d.doc_id, "text": d.text}, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def test_compare_reports_figures_on_the_left_out_corpus(tmp_path: Path) -> None:
    part0, part1 = _split_corpus(tmp_path)
    settings = TrainSettings(vocab_size=700, max_chars_per_file=100_000)
    train_tokenizer([part1, EN_SAMPLE], tmp_path / "wo-part0", settings)
    train_tokenizer([part0, EN_SAMPLE], tmp_path / "wo-part1", settings)
    specs = [f"mistral={MISTRAL_TOKENIZER}", f"wo0={tmp_path / 'wo-part0'}", f"wo1={tmp_path / 'wo-part1'}"]
    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text(json.dumps({"id": "u", "text": "Совсем новый текст.\nЕщё строка."}, ensure_ascii=False))
    results = compare(specs, [str(part0), str(part1), str(unseen)], tmp_path / "rep", split="auto")
    by = {(r.tokenizer, r.text_set): r for r in results}
    assert by[("wo0", "part0")].trained_on_set is False and by[("wo0", "part1")].trained_on_set is True
    assert by[("wo1", "part0")].trained_on_set is True and by[("mistral", "part0")].trained_on_set is None
    # auto: held-out documents of the corpora some tokenizer trained on, all of a set none did.
    assert by[("wo0", "part0")].split == "heldout" and by[("wo0", "unseen")].split == "all"
    heldout0 = list(iter_lines(part0, split="heldout", max_chars=2_000_000))
    sp = load(tmp_path / "wo-part0" / "tokenizer.model")
    assert by[("wo0", "part0")].tokens == sum(len(ids) for ids in sp.encode_batch(heldout0))
    rows = list(csv.DictReader((tmp_path / "rep" / "report.csv").open(encoding="utf-8")))
    seen = {(r["tokenizer"], r["text_set"]): r["text_set_in_training"] for r in rows}
    assert seen[("wo0", "part0")] == "no" and seen[("wo1", "part0")] == "yes"
    assert seen[("mistral", "part1")] == "unknown"
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "| wo1 | part1 | heldout | no |" in md and "| wo1 | part0 | heldout | yes |" in md
