"""`vikhr demo` runs every stage of the pipeline on the bundled sample and reports sane numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def _run_demo(work: Path, *extra: str) -> dict:
    """`vikhr demo` with short training into `work`; its summary.json, every stage checked to run."""
    steps = ["--base-steps", "12", "--steps", "12", "--sft-steps", "30"]
    proc = subprocess.run(
        [sys.executable, "-m", "vikhr", "demo", "--workdir", str(work), *steps, *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "it/s" not in proc.stderr and "\r" not in proc.stderr  # no bar where stderr is no terminal
    for n in range(1, 9):
        assert f"[{n}/8]" in proc.stdout
    return json.loads((work / "summary.json").read_text())


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    summary = _run_demo(work)
    cpt = summary["chars_per_token"]
    # The Russian tokenizer packs more Russian characters into a token than Mistral's.
    assert cpt["vikhr/ru"] > 1.3 * cpt["mistral/ru"]
    bpc = summary["bits_per_char"]
    assert all(math.isfinite(v) and v > 0 for m in bpc.values() for v in m.values())
    # Continued pre-training lowers held-out Russian bits per character of the adapted model.
    assert bpc["adapted + continued"]["ru"] < bpc["adapted, before training"]["ru"]
    assert summary["vocab"]["adapted_model"] == summary["vocab"]["new"]
    # Instruction tuning lowers the assistant-token loss on held-out chats; the tuned model answers.
    assert summary["sft_valid_loss"]["after"] < summary["sft_valid_loss"]["before"]
    assert isinstance(summary["sft_answer"]["answer"], str)
    assert (work / "data" / "chats_mask_document.idx").is_file()
    # Every stage left its artefacts: report, tokenizer export, datasets, checkpoints, HF models.
    assert (work / "report" / "chars_per_token.png").is_file()
    assert any((work / "tokenizer").glob("tokenizer.json"))
    assert (work / "data" / "vikhr-ru_text_document.idx").is_file()
    assert (work / "continued" / "latest").is_file()
    assert (work / "continued" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((work / "continued" / "tensorboard").iterdir())
    for hf in ("base-hf", "adapted-hf", "vikhr-hf", "vikhr-instruct-hf"):
        assert (work / hf / "config.json").is_file()
        assert (work / hf / "tokenizer_config.json").is_file()
    # Every export is self-contained: transformers loads its tokenizer from the directory alone,
    # and the instruct export carries the chat template it was tuned with.
    from transformers import AutoTokenizer

    instruct = AutoTokenizer.from_pretrained(str(work / "vikhr-instruct-hf"))
    assert instruct.chat_template
    assert instruct.eos_token == "</s>"
    # The size printed beside the answer is the model's (it was a fixed "1M" whatever --vocab-size)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(work / "vikhr-instruct-hf"))
    assert summary["sft_answer"]["model_parameters"] == model.num_parameters()


@pytest.mark.slow
def test_demo_byte_bpe_end_to_end(tmp_path: Path) -> None:
    """`--family byte-bpe`: a Llama-3-like byte-level base tokenizer extended with Russian tokens, a
    Llama-3-shaped model, Llama-3's chat template — the same chain and the same checks."""
    from transformers import AutoTokenizer, GenerationConfig

    from vikhr.data.indexed import IndexedReader
    from vikhr.sft.template import encode_chat, load_chat_tokenizer, parse_chat

    work = tmp_path / "demo"
    summary = _run_demo(work, "--family", "byte-bpe", "--eval-docs", "4")
    cpt = summary["chars_per_token"]
    assert cpt["vikhr/ru"] > 1.3 * cpt["llama3-like/ru"]
    assert cpt["vikhr/en"] == cpt["llama3-like/en"]  # extend mode: English keeps its ids
    bpc = summary["bits_per_char"]
    assert bpc["adapted + continued"]["ru"] < bpc["adapted, before training"]["ru"]
    assert summary["sft_valid_loss"]["after"] < summary["sft_valid_loss"]["before"]
    assert summary["vocab"]["adapted_model"] == summary["vocab"]["new"] > summary["vocab"]["base"]
    config = json.loads((work / "vikhr-hf" / "config.json").read_text())
    assert (config["architectures"], config["rope_theta"]) == (["LlamaForCausalLM"], 500_000.0)
    # Megatron's HuggingFaceTokenizer: the tokenizer's post-processor starts each document with BOS.
    tok = load_chat_tokenizer(work / "tokenizer", "llama3")
    first = IndexedReader(work / "data" / "vikhr-ru_text_document").document(0)
    assert first[0] == tok.piece_to_id("<|begin_of_text|>") and first[-1] == tok.eos_id
    # The instruct export: Llama-3's template gives vikhr's ids, and generation stops at <|eot_id|>.
    instruct = AutoTokenizer.from_pretrained(work / "vikhr-instruct-hf")
    messages = [{"role": "user", "content": "Столица Франции?"}]
    chat = parse_chat({"messages": messages}, for_generation=True)
    expected = encode_chat(chat, tok, "llama3", for_generation=True).ids
    got = instruct.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert list(getattr(got, "input_ids", got)) == expected
    stops = GenerationConfig.from_pretrained(work / "vikhr-instruct-hf").eos_token_id
    assert tok.piece_to_id("<|eot_id|>") in stops


def test_demo_corpora_are_the_same_bytes_on_every_run(tmp_path: Path, monkeypatch: Any) -> None:
    """The gzip header holds no write time or temporary name: the corpora, and so the sha256 the
    tokenizer's manifest records of them, repeat from run to run."""
    import gzip

    from vikhr.demo import _write_jsonl

    docs = [{"id": "a", "text": "Привет, мир"}, {"id": "b", "text": "Второй документ"}]
    _write_jsonl(tmp_path / "first.jsonl.gz", docs)
    monkeypatch.setattr(gzip.time, "time", lambda: 2_000_000_000.0)  # a later run
    _write_jsonl(tmp_path / "second.jsonl.gz", docs)
    first = (tmp_path / "first.jsonl.gz").read_bytes()
    assert first == (tmp_path / "second.jsonl.gz").read_bytes()
    assert [json.loads(line) for line in gzip.decompress(first).decode().splitlines()] == docs


def test_more_eval_docs_than_held_out_documents_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bits per character were measured on the held-out documents there were (8 of the English
    sample), fewer than --eval-docs asked for, without a word."""
    import argparse

    from vikhr import assets
    from vikhr.demo import Demo

    args = argparse.Namespace(family="sentencepiece", base_tokenizer=None, eval_docs=10)
    Demo(args, tmp_path).split(assets.RU_SAMPLE, assets.EN_SAMPLE)
    err = capsys.readouterr().err
    assert err == (
        "warning: --eval-docs is 10, but the EN corpus keeps 8 held-out document(s): bits per character "
        "are measured on those\n"
    )


def test_a_seq_len_too_short_for_every_chat_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--seq-len 1` ran the split, tokenizer, base, adapt and continued stages for minutes and was
    refused only by the SFT trainer. The chats are now encoded right after the tokenizer stage (a few
    seconds) and the refusal names the smallest --seq-len that works; the work directory goes, with
    the parents it was made in (they stayed behind)."""
    from vikhr.cli import main

    work = tmp_path / "made" / "for" / "demo"
    status = main(["demo", "--workdir", str(work), "--seq-len", "1"])
    captured = capsys.readouterr()
    # The one line: no progress bar where stderr is not a terminal (the tokenizer comparison drew one).
    assert status == 2 and captured.err.count("\n") == 1 and "\r" not in captured.err
    last_line = captured.err.strip()
    assert last_line.startswith("vikhr demo: error: --seq-len 1 is too short for the SFT chats of ")
    assert " pass --seq-len " in last_line and last_line.endswith(" or more")
    assert "[2/8]" in captured.out and "[3/8]" not in captured.out
    assert not (tmp_path / "made").exists()
    # A work directory that was there (emptied by --overwrite) stays, empty.
    work.mkdir(parents=True)
    (work / "earlier-run.txt").write_text("x")
    assert main(["demo", "--workdir", str(work), "--seq-len", "1", "--overwrite"]) == 2
    assert work.is_dir() and not any(work.iterdir())


def test_a_seq_len_too_long_for_this_machine_s_memory_is_refused_before_any_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--seq-len 10000000` ran the split, tokenizer and chat stages, then the base stage's trainer
    ended in a CPU out-of-memory traceback. The figure named is the estimate that refused the stage,
    made once for each stage."""
    from vikhr.cli import main
    from vikhr.train import memory

    at_stage_seq_len: list[float] = []
    real_estimate = memory.run_estimate

    def recorded(cfg: object, world_size: int, seq_len: int | None = None, *, on_cuda: bool) -> object:
        need = real_estimate(cfg, world_size, seq_len, on_cuda=on_cuda)
        if seq_len is None:
            at_stage_seq_len.append(need.total)
        return need

    monkeypatch.setattr(memory, "run_estimate", recorded)
    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--seq-len", "10000000"]) == 2
    captured = capsys.readouterr()
    assert "[1/8]" not in captured.out and not work.exists() and captured.err.count("\n") == 1
    assert captured.err.startswith(
        "vikhr demo: error: --seq-len 10000000 does not fit in memory: the base stage's windows "
        f"(4 × 10000000 tokens) need about {at_stage_seq_len[0] / memory.GIB:,.1f} GiB by the trainer's "
    )
    assert len(at_stage_seq_len) == 3  # base, continue, instruct
    offered = int(captured.err.removesuffix(" or less\n").rsplit(" ", 1)[1])
    assert 0 < offered < 10_000_000
    # what it offers is accepted by every stage's check (the demo stops later, at its --vocab-size)
    assert main(["demo", "--workdir", str(work), "--seq-len", str(offered), "--vocab-size", "100"]) == 2
    assert "--vocab-size" in capsys.readouterr().err


def test_a_vocab_size_the_tokenizer_refuses_leaves_no_half_made_work_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--vocab-size 100` was refused by the tokenizer stage after the split stage had written the
    corpora: the work directory (and the parents made for it) stayed, half made."""
    from vikhr.cli import main

    work = tmp_path / "made" / "demo"
    assert main(["demo", "--workdir", str(work), "--vocab-size", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "vikhr demo: error: --vocab-size 100 is too small: give at least 359 (byte fallback alone takes "
        "259 pieces)"
    )
    assert not (tmp_path / "made").exists()


def test_a_failed_demo_removes_only_the_folders_it_made_and_only_empty_ones(tmp_path: Path) -> None:
    """A parent that was there before, or that something else wrote into meanwhile, stays."""
    from vikhr.atomic import missing_dirs, remove_empty_dirs
    from vikhr.demo import LOCK_FILE, _clear

    (tmp_path / "kept").mkdir()
    work = tmp_path / "kept" / "shared" / "new" / "demo"
    created = missing_dirs(work)
    assert created == [work, work.parent, work.parent.parent]
    work.mkdir(parents=True)
    (work / "stage").mkdir()
    (work / LOCK_FILE).write_text("")
    (work.parent.parent / "someone-else.txt").write_text("x")
    _clear(work)
    assert [p.name for p in work.iterdir()] == [LOCK_FILE]  # the lock stays while its demo runs
    (work / LOCK_FILE).unlink()
    remove_empty_dirs(created)
    assert sorted(p.name for p in (tmp_path / "kept").rglob("*")) == ["shared", "someone-else.txt"]
    # A work directory that was there before keeps itself and loses only what the demo wrote.
    (work.parent.parent / "stage").mkdir()
    _clear(work.parent.parent)
    remove_empty_dirs([])
    assert (tmp_path / "kept" / "shared").is_dir() and not any((tmp_path / "kept" / "shared").iterdir())


def test_a_second_demo_on_a_workdir_in_use_is_refused_and_a_killed_one_s_lock_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two demos on one --workdir were not locked against each other: the second one's --overwrite
    cleared the first's files and both wrote the same stages. The second is now refused in one line
    naming the first, before it touches a file; the lock a killed demo left is taken over."""
    import os
    import subprocess

    from vikhr.cli import main
    from vikhr.demo import LOCK_FILE
    from vikhr.locks import exclusive

    work = tmp_path / "demo"
    work.mkdir()
    (work / "first-run-output.txt").write_text("being written")
    with exclusive(work / LOCK_FILE, "", remove=True) as held:  # the first demo, running
        assert held
        # --vocab-size 100: refused after the split stage, should the demo start at all
        assert main(["demo", "--workdir", str(work), "--overwrite", "--vocab-size", "100"]) == 2
    captured = capsys.readouterr()
    assert "[1/8]" not in captured.out
    assert captured.err == (
        f"vikhr demo: error: --workdir {work} is in use by another vikhr demo (pid {os.getpid()} on "
        f"{os.uname().nodename}); wait for it to end, stop it, or give this demo another --workdir\n"
    )
    assert [p.name for p in work.iterdir()] == ["first-run-output.txt"]
    # A demo killed mid-run leaves its lock file naming a process that is gone: the next one runs (up
    # to the refusal of --vocab-size 100 after the split stage) and removes the lock at its end.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (work / LOCK_FILE).write_text(f"pid {gone.pid} on {os.uname().nodename}\n")
    assert main(["demo", "--workdir", str(work), "--overwrite", "--vocab-size", "100"]) == 2
    captured = capsys.readouterr()
    assert "[1/8]" in captured.out and "--vocab-size 100 is too small" in captured.err
    assert "in use" not in captured.err
    assert work.is_dir() and not any(work.iterdir())


def test_the_smallest_seq_len_of_the_chats_is_the_sft_trainer_s_own_bound(tmp_path: Path) -> None:
    """smallest_sft_seq_len(prefix) is the smallest --seq-len whose SFT stage the trainer accepts: one
    less is refused by the trainer's own check (vikhr.sft.data.train_stream)."""
    from types import SimpleNamespace

    from vikhr.data.indexed import write_indexed
    from vikhr.demo import SFT_SEQ_LEN_FACTOR, SFT_SPLIT, smallest_sft_seq_len
    from vikhr.errors import VikhrError
    from vikhr.sft.data import open_sft_source, split_chats, train_stream
    from vikhr.sft.layout import sft_datasets

    eod, prompts = 2, [9 + 3 * (i % 7) for i in range(20)]  # prompts of 9 to 27 tokens
    prefix = tmp_path / "chats"
    text, mask = sft_datasets(prefix)
    write_indexed(text, [[1] + [5] * (p - 1) + [6, 7, eod] for p in prompts], "uint16")
    write_indexed(mask, [[0] * p + [1, 1, 1] for p in prompts], "uint8")
    smallest = smallest_sft_seq_len(prefix)
    assert smallest is not None

    def trainer_accepts(seq_len: int) -> bool:
        sft_seq_len = SFT_SEQ_LEN_FACTOR * seq_len
        cfg = SimpleNamespace(
            data=SimpleNamespace(seq_len=sft_seq_len, split=SFT_SPLIT, packing="pack", eod_id=eod),
            train=SimpleNamespace(seed=1),
        )
        source = open_sft_source("chats", str(prefix), sft_seq_len + 1)
        try:
            train_stream(source, split_chats(len(prompts), SFT_SPLIT)[0], 4, cfg)
        except VikhrError as e:
            assert "no train chat has an assistant token" in str(e)
            return False
        return True

    assert trainer_accepts(smallest) and not trainer_accepts(smallest - 1)


def test_the_base_tokenizer_may_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--base-tokenizer` given a directory holding the tokenizer (a model's, an earlier `tok/`), as every
    other tokenizer option takes it, was refused: "base tokenizer is not a regular file". Run up to the
    refusal of `--seq-len 1` after the tokenizer stage, which reads the base from the directory."""
    import shutil

    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.cli import main

    base = tmp_path / "mistral"
    base.mkdir()
    shutil.copyfile(MISTRAL_TOKENIZER, base / "tokenizer.model")
    work = tmp_path / "demo"
    argv = ["demo", "--workdir", str(work), "--base-tokenizer", str(base), "--seq-len", "1"]
    status = main([*argv, "--vocab-size", "1000"])
    captured = capsys.readouterr()
    assert status == 2 and "not a regular file" not in captured.err
    assert "[2/8]" in captured.out and "[3/8]" not in captured.out
    assert "vikhr demo: error: --seq-len 1 is too short for the SFT chats of " in captured.err
    assert not work.exists()


def test_a_byte_bpe_base_without_llama3_header_tokens_is_refused_before_any_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--family byte-bpe --base-tokenizer` given a byte-level BPE without Llama-3's header tokens (a
    Qwen-style one, with only <|im_start|>/<|im_end|>) was refused only after the tokenizer stage, by
    the chats' Llama-3 template; now before any stage, the work directory as it was."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from vikhr.cli import main

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["hello world, a tiny byte-level tokenizer"] * 4, trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    base = tmp_path / "qwen-like.json"
    tok.save(str(base))
    work = tmp_path / "demo"
    work.mkdir()
    (work / "earlier.txt").write_text("kept")
    argv = [
        "demo",
        "--family",
        "byte-bpe",
        "--base-tokenizer",
        str(base),
        "--workdir",
        str(work),
        "--overwrite",
    ]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "[1/8]" not in captured.out
    assert captured.err == (
        f"vikhr demo: error: --base-tokenizer {base} has no <|begin_of_text|> / <|start_header_id|> / "
        "<|end_header_id|> / <|eot_id|> tokens: the byte-bpe demo writes its chats with Llama-3's header "
        "template, which needs each as one id; give a Llama-3 tokenizer (or one with those special tokens), "
        "or leave out --base-tokenizer for the Llama-3-like stand-in\n"
    )
    assert [p.name for p in work.iterdir()] == ["earlier.txt"]


def test_a_workdir_that_is_a_file_is_said_to_be_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --workdir that is a file (or lies under one) got the generic "cannot access …: Not a
    directory (check the path, its permissions and the free space)"."""
    from vikhr.cli import main

    file = tmp_path / "notes.txt"
    file.write_text("mine", encoding="utf-8")
    for workdir, said in (
        (file, f"--workdir {file} is a file, not a directory (choose another path)"),
        (
            file / "demo",
            f"--workdir {file / 'demo'} cannot be created: {file} is a file (choose another path)",
        ),
    ):
        assert main(["demo", "--workdir", str(workdir)]) == 2
        captured = capsys.readouterr()
        assert "[1/8]" not in captured.out and captured.err == f"vikhr demo: error: {said}\n"
    assert file.read_text(encoding="utf-8") == "mine"


def test_a_byte_bpe_vocab_size_that_adds_no_tokens_is_refused_before_any_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The byte-bpe demo extends its base: a --vocab-size not above the base's ids (the stand-in's 256
    bytes and 5 special tokens, or a given base's) ran the split stage (and trained the stand-in),
    then the tokenizer stage refused it, naming --new-tokens, which the demo has not got."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from vikhr.cli import main
    from vikhr.demo import LLAMA3_SPECIALS

    work = tmp_path / "demo"
    assert main(["demo", "--family", "byte-bpe", "--workdir", str(work), "--vocab-size", "261"]) == 2
    captured = capsys.readouterr()
    assert "[1/8]" not in captured.out and not work.exists()
    assert captured.err == (
        "vikhr demo: error: --vocab-size 261 adds no tokens to the Llama-3-like stand-in base (261 ids): "
        "the byte-bpe demo extends it with Russian ones; give a --vocab-size above 261\n"
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["hello world, a tiny byte-level tokenizer"] * 4, trainer)
    tok.add_special_tokens(list(LLAMA3_SPECIALS))
    base = tmp_path / "llama3-like.json"
    tok.save(str(base))
    ids = tok.get_vocab_size()
    argv = ["demo", "--family", "byte-bpe", "--base-tokenizer", str(base), "--workdir", str(work)]
    assert main([*argv, "--vocab-size", str(ids)]) == 2
    captured = capsys.readouterr()
    assert "[1/8]" not in captured.out and not work.exists()
    assert f"--vocab-size {ids} adds no tokens to --base-tokenizer {base} ({ids} ids)" in captured.err


def _sentencepiece_demo_bases(tmp: Path) -> list[tuple[Path, str]]:
    """Bases that are no SentencePiece .model, each with what the demo says of it."""
    import shutil

    from tokenizers import Tokenizer

    from vikhr.assets import ASSETS, MISTRAL_TOKENIZER
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    chat, llama3 = tmp / "chat", tmp / "llama3"
    write_hf_tokenizer(MISTRAL_TOKENIZER, chat)  # a chat model's: its json adds <|im_start|>
    shutil.copyfile(MISTRAL_TOKENIZER, chat / "tokenizer.model")
    tok = Tokenizer.from_file(str(chat / "tokenizer.json"))
    tok.add_special_tokens(["<|im_start|>"])
    tok.save(str(chat / "tokenizer.json"))
    llama3.mkdir()  # Llama-3's original layout: a tiktoken tokenizer.model beside the json
    (llama3 / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n", encoding="ascii")
    shutil.copyfile(ASSETS / "tokenizers" / "vikhr-ru-40k.tokenizer.json", llama3 / "tokenizer.json")
    json_needs = "; the sentencepiece demo needs a SentencePiece .model: give "
    return [
        (  # a chat model's directory, resolved to its tokenizer.json
            chat,
            f"is an HF tokenizer.json ({chat / 'tokenizer.json'}: it has tokens its tokenizer.model lacks)"
            f"{json_needs}{chat / 'tokenizer.model'} (or another .model), or --family byte-bpe",
        ),
        (  # Llama-3's original directory
            llama3,
            f"is an HF tokenizer.json ({llama3 / 'tokenizer.json'}: its tokenizer.model is a tiktoken BPE "
            f"file, no SentencePiece model){json_needs}a .model, or --family byte-bpe",
        ),
        (
            llama3 / "tokenizer.json",
            f"is an HF tokenizer.json{json_needs}a .model, or --family byte-bpe",
        ),
        (
            llama3 / "tokenizer.model",
            "is a tiktoken BPE file (as Llama-3's original/tokenizer.model), no SentencePiece model; the "
            "sentencepiece demo needs a SentencePiece .model: give a .model, or --family byte-bpe with the "
            "model's tokenizer.json",
        ),
    ]


def test_a_sentencepiece_demo_base_that_is_no_sentencepiece_model_is_refused_before_any_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sentencepiece demo (the default) given a base that resolves to a tokenizer.json, or a
    tiktoken file, ran the split and tokenizer stages, then stopped at stage 3 ("--tokenizer-type
    SentencePieceTokenizer needs a SentencePiece .model"), leaving corpora/ and tokenizer/ behind."""
    from vikhr.cli import main

    work = tmp_path / "demo"
    work.mkdir()
    (work / "earlier.txt").write_text("kept")
    for base, said in _sentencepiece_demo_bases(tmp_path / "bases"):
        assert main(["demo", "--base-tokenizer", str(base), "--workdir", str(work), "--overwrite"]) == 2
        captured = capsys.readouterr()
        assert "[1/8]" not in captured.out
        assert captured.err == f"vikhr demo: error: --base-tokenizer {base} {said}\n"
        assert [p.name for p in work.iterdir()] == ["earlier.txt"]


@pytest.mark.parametrize("family", ["sentencepiece", "byte-bpe"])
def test_a_base_that_is_no_tokenizer_is_refused_before_any_stage(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `.model` of junk bytes (or a `tokenizer.json` that is no tokenizer) ran the split stage and
    failed in the tokenizer stage; it is loaded, and refused, before any stage now."""
    from vikhr.cli import main

    work = tmp_path / "demo"
    base = tmp_path / ("junk.model" if family == "sentencepiece" else "tokenizer.json")
    base.write_bytes(b"\x00\x17junk\xff" * 40 if family == "sentencepiece" else b'{"not": "a tokenizer"}')
    assert main(["demo", "--family", family, "--base-tokenizer", str(base), "--workdir", str(work)]) == 2
    captured = capsys.readouterr()
    assert "[1/8]" not in captured.out
    assert captured.err.startswith("vikhr demo: error: ") and str(base) in captured.err
    assert captured.err.count("\n") == 1 and not work.exists()


def test_the_demo_s_tokenizer_learns_from_the_corpora_its_help_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vikhr demo --help` said stage 2 trains "a Russian SentencePiece BPE"; it learns from the
    Russian and English training splits, as the README says."""
    import vikhr.demo as demo
    import vikhr.tokenizer.train as train
    from vikhr.cli import build_parser

    learned_from: list[Path] = []

    def recorded(corpora: list[Path], out_dir: Path, settings: Any) -> None:
        learned_from.extend(corpora)
        out_dir.mkdir()
        (out_dir / "tokenizer.model").touch()

    monkeypatch.setattr(train, "train_tokenizer", recorded)
    monkeypatch.setattr(demo.Demo, "compare_tokenizers", lambda self: None)
    args = build_parser().parse_args(["demo", "--workdir", str(tmp_path)])
    stages = demo.Demo(args, tmp_path)
    stages.ru_train, stages.en_train = tmp_path / "ru-train.jsonl", tmp_path / "en-train.jsonl"
    stages.tokenizer()
    assert learned_from == [stages.ru_train, stages.en_train]
    assert (
        "2. tokenizer  train a SentencePiece BPE on the Russian and English training splits" in demo.__doc__
    )
