"""Instruction tuning: chat templates + assistant-only mask, prepared datasets, SFT on the trainer.

Real data: the rulm self-instruct chats of ../shared/data (806 single-turn chats), tokenized with
the bundled Mistral SentencePiece model; the model is the tiny preset with the Mistral
vocabulary (32,000 ids) so that the prepared ids are used unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import numpy as np
import psutil
import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.helpers import varied_chat_lines, written_an_hour_ago
from vikhr.assets import ASSETS, MISTRAL_TOKENIZER
from vikhr.errors import VikhrError
from vikhr.sft.data import PackedSFTDataset, SFTSource, pack_windows, split_chats
from vikhr.sft.prepare import mask_runs, prepare_sft
from vikhr.sft.template import Message, encode_chat, load_chat_tokenizer, parse_chat
from vikhr.train.monitor import read_metrics

RU40K = ASSETS / "tokenizers" / "vikhr-ru-40k"


def _msgs(*pairs: tuple[str, str]) -> list[Message]:
    return parse_chat({"messages": [{"role": r, "content": c} for r, c in pairs]})


@pytest.fixture(scope="module")
def mistral():
    return load_chat_tokenizer(MISTRAL_TOKENIZER)


def _decoded_runs(tok, enc) -> list[tuple[bool, str]]:
    out = []
    for trained, ids in mask_runs(enc.ids, enc.mask):
        text = tok.decode([i for i in ids if i not in (tok.bos_id, tok.eos_id)])
        marks = ("<s>" if ids[0] == tok.bos_id else "", "</s>" if ids[-1] == tok.eos_id else "")
        out.append((trained, marks[0] + text + marks[1]))
    return out


# --------------------------------------------------------------------------- template and mask


def test_mistral_single_turn_is_mistral_commons_encoding(mistral) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    enc = encode_chat(_msgs(("user", "Привет, как дела?"), ("assistant", "Хорошо, спасибо!")), mistral)
    # mistral-common v1: BOS, encode("[INST] {user} [/INST]"), encode(answer), EOS.
    prompt, answer = sp.encode("[INST] Привет, как дела? [/INST]"), sp.encode("Хорошо, спасибо!")
    assert enc.ids == [1, *prompt, *answer, 2]
    assert enc.mask == [0] * (1 + len(prompt)) + [1] * (len(answer) + 1)
    assert sp.id_to_piece(answer[0]).startswith("▁")  # the answer's own dummy-prefix space
    assert _decoded_runs(mistral, enc) == [
        (False, "<s>[INST] Привет, как дела? [/INST]"),
        (True, "Хорошо, спасибо!</s>"),
    ]


def test_mistral_template_equals_mistral_common(mistral) -> None:
    """vikhr's `mistral` template gives mistral-common's own token ids for the same chats.

    mistral-common (v1 instruct tokenizer) loads the same bundled SentencePiece file
    (vikhr/assets/tokenizers/mistral-7b-v0.1.model, byte-identical to its own tokenizer.model.v1)
    and encodes every bundled seed chat plus multi-turn chats with a system message.
    """
    pytest.importorskip("mistral_common")
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from vikhr.assets import RU_SEED_CHATS
    from vikhr.sft.template import read_chats

    reference = MistralTokenizer.from_file(MISTRAL_TOKENIZER, mode=ValidationMode.finetuning)
    message_class = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    chats = [messages for _, messages in read_chats(RU_SEED_CHATS)]
    chats.append(
        _msgs(
            ("system", "Отвечай кратко."),
            ("user", "Сколько будет 2+2?"),
            ("assistant", "Четыре."),
            ("user", "А [INST] 3+3? </s>"),
            ("assistant", "Шесть.\n\nВсё."),
        )
    )
    chats.append(
        _msgs(("user", "Hi"), ("assistant", "Привет!"), ("user", "Как дела?"), ("assistant", "Хорошо."))
    )
    chats.append(_answers_in_a_row())  # joined into one answer, as mistral-common joins them
    assert len(chats) > 100
    for messages in chats:
        request = ChatCompletionRequest(messages=[message_class[m.role](content=m.content) for m in messages])
        assert encode_chat(messages, mistral).ids == reference.encode_chat_completion(request).tokens


def _answers_in_a_row() -> list[Message]:
    return _msgs(
        ("user", "Расскажи сказку."),
        ("assistant", "Жили-были дед и баба."),
        ("assistant", "И была у них курочка Ряба."),
        ("user", "А дальше?"),
        ("assistant", "Снесла курочка яичко."),
    )


def test_mistral_writes_answers_in_a_row_as_one_trained_answer(mistral) -> None:
    """Two assistant turns in a row (a long answer split, a tool turn dropped between) were refused.
    The Mistral format has no place for an answer right after an answer: mistral-common joins them
    with a blank line (ids equal: `test_mistral_template_equals_mistral_common`), and the joined
    answer is trained with its one </s>. Answers of different weights cannot make one answer."""
    assert _decoded_runs(mistral, encode_chat(_answers_in_a_row(), mistral)) == [
        (False, "<s>[INST] Расскажи сказку. [/INST]"),
        (True, "Жили-были дед и баба.\n\nИ была у них курочка Ряба.</s>"),
        (False, "[INST] А дальше? [/INST]"),
        (True, "Снесла курочка яичко.</s>"),
    ]
    weighted = parse_chat(
        {
            "messages": [
                {"role": m.role, "content": m.content, "weight": 0 if i == 1 else None}
                for i, m in enumerate(_answers_in_a_row())
            ]
        }
    )
    with pytest.raises(VikhrError) as refused:
        encode_chat(weighted, mistral)
    assert str(refused.value).startswith(
        "message 3: an answer of weight 1 right after one of weight 0, which the mistral template writes "
        "as one answer (as mistral-common joins them), trained or not: give them one weight, or train "
        "with chatml, qwen3 or llama3"
    )


def test_mistral_multi_turn_with_system_masks_exactly_the_answers(mistral) -> None:
    chat = _msgs(
        ("system", "Ты — полезный ассистент."),
        ("user", "Сколько будет 2+2?"),
        ("assistant", "Четыре."),
        ("user", "А 3+3?"),
        ("assistant", "Шесть. [INST] </s> это просто текст"),
    )
    enc = encode_chat(chat, mistral)
    assert _decoded_runs(mistral, enc) == [
        (False, "<s>[INST] Ты — полезный ассистент.\n\nСколько будет 2+2? [/INST]"),
        (True, "Четыре.</s>"),
        (False, "[INST] А 3+3? [/INST]"),
        (True, "Шесть. [INST] </s> это просто текст</s>"),
    ]
    # Text that looks like a control token stays text: EOS only closes the two answers.
    assert [i for i, t in enumerate(enc.ids) if t == mistral.eos_id] == [
        i for i in range(1, len(enc.ids)) if enc.mask[i] and (i + 1 == len(enc.ids) or not enc.mask[i + 1])
    ]
    assert enc.ids.count(mistral.bos_id) == 1


def test_chatml_with_and_without_special_tokens(mistral, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    chat = _msgs(("system", "Кратко."), ("user", "Столица России?"), ("assistant", "Москва."))
    # Mistral's vocabulary has no <|im_*|> tokens: they are spelled out as text, and EOS closes the answer.
    runs = _decoded_runs(mistral, encode_chat(chat, mistral, "chatml"))
    assert [(t, s.strip()) for t, s in runs] == [
        (
            False,
            "<s><|im_start|>system\nКратко.<|im_end|>\n<|im_start|>user\nСтолица России?<|im_end|>\n"
            "<|im_start|>assistant",
        ),
        (True, "Москва.<|im_end|></s>"),
        (False, ""),  # the "\n" after the last <|im_end|>, as Qwen's template ends a chat
    ]
    # An HF tokenizer that has them as added tokens: each is one id, and <|im_end|> is trained.
    tok = Tokenizer.from_file(str(RU40K.with_suffix(".tokenizer.json")))
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    hf = load_chat_tokenizer(tmp_path)
    enc = encode_chat(chat, hf, "chatml")
    start, end = hf.piece_to_id("<|im_start|>"), hf.piece_to_id("<|im_end|>")
    assert enc.ids.count(start) == 3 and enc.ids.count(end) == 3
    trained = [i for i, m in zip(enc.ids, enc.mask, strict=True) if m]
    assert trained[-1] == end and trained.count(end) == 1
    assert hf.decode(trained[:-1]).strip() == "Москва."


def test_chatml_on_mistrals_sentencepiece_model_learns_to_stop(tmp_path: Path) -> None:
    """`sft prepare --template chatml` on Mistral's `.model` (no <|im_*|> tokens) trained answers
    ending in the spelled-out "<|im_end|>" and never EOS, where the export's generation stops: every
    answer now closes with EOS, which the export's template writes too."""
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.data.indexed import IndexedReader
    from vikhr.tokenizer.load import load

    prefix = tmp_path / "chatml"
    prepare_sft(ASSETS / "sft" / "ru-seed-chats.jsonl", MISTRAL_TOKENIZER, prefix, template="chatml")
    ids, masks = IndexedReader(f"{prefix}_text_document"), IndexedReader(f"{prefix}_mask_document")
    tok = load(MISTRAL_TOKENIZER)
    for i in range(len(ids)):
        answers = [run for trained, run in mask_runs(ids.document(i), masks.document(i)) if trained]
        assert answers and all(run[-1] == tok.eos_id for run in answers), i
        assert all(tok.decode(run[:-1]).endswith("<|im_end|>") for run in answers), i
    _, generation = write_tokenizer_files(tok, tmp_path, "chatml")
    assert generation["eos_token_id"] == tok.eos_id  # the export's generation_config.json stops there
    chat = [{"role": "user", "content": "Столица России?"}, {"role": "assistant", "content": "Москва."}]
    rendered = AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(chat, tokenize=False)
    assert rendered.endswith("assistant\nМосква.<|im_end|></s>\n")


def test_sentencepiece_and_hf_tokenizer_json_encode_chats_identically(shared_data: Path) -> None:
    from vikhr.sft.template import read_chats

    sp = load_chat_tokenizer(RU40K.with_suffix(".model"))
    hf = load_chat_tokenizer(RU40K.with_suffix(".tokenizer.json"))
    chats = read_chats(shared_data / "sft" / "rulm-self-instruct.chat.jsonl")
    for _, (_, messages) in zip(range(60), chats, strict=False):
        for template in ("mistral", "chatml"):
            a, b = encode_chat(messages, sp, template), encode_chat(messages, hf, template)
            assert a.ids == b.ids and a.mask == b.mask


def _prepared_chats(prefix: Path) -> list[list[int]]:
    from vikhr.data import indexed
    from vikhr.sft.layout import sft_datasets

    text = indexed.IndexedReader(sft_datasets(prefix)[0])
    return [list(text.document(i)) for i in range(len(text))]


def _chat_line(*turns: tuple[str, object]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}, ensure_ascii=False)


def _prepare_cli(capfd: pytest.CaptureFixture, chats: Path, prefix: Path, *more: str) -> tuple[int, str, str]:
    """`vikhr sft prepare` of CHATS with Mistral's tokenizer into PREFIX, in this process."""
    argv = ["--input", str(chats), "--tokenizer", str(MISTRAL_TOKENIZER), "--output-prefix", str(prefix)]
    return _cli(capfd, "sft", "prepare", *argv, "--no-progress", *more)


def test_prepare_leaves_out_user_turns_nobody_answered_and_counts_the_chats(
    capfd: pytest.CaptureFixture, tmp_path: Path, mistral
) -> None:
    """`sft prepare` refused a chat ending with a user turn nobody answered (many ShareGPT dumps end
    so), which `sft build` keeps up to its last answer. Prepare does the same now, and says how many
    chats it trimmed in its summary line and `_sft.json`, as the build's report counts them."""
    answered = (("user", "Сколько будет два плюс два?"), ("assistant", "Четыре."))
    chats = tmp_path / "chats.jsonl"
    lines = [
        _chat_line(*answered, ("user", "А пять плюс пять?")),
        _chat_line(*answered, ("user", "А пять плюс пять?"), ("user", " ")),  # a blank one goes too
        _chat_line(*answered),
    ]
    chats.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix = tmp_path / "out" / "chats"
    rc, out, err = _prepare_cli(capfd, chats, prefix)
    assert rc == 0, err
    assert f"{prefix}: 3 chats (2 trimmed of unanswered user turns after the last answer), " in out
    meta = json.loads(Path(f"{prefix}_sft.json").read_text(encoding="utf-8"))
    assert meta["chats"] == 3 and meta["trimmed_unanswered"] == 2
    assert _prepared_chats(prefix) == [encode_chat(_msgs(*answered), mistral).ids] * 3


def test_numbers_and_text_parts_as_content_are_their_text(
    capfd: pytest.CaptureFixture, tmp_path: Path, mistral
) -> None:
    """A content that is a number (JSON exports write `"content": 42`) stopped `sft prepare`; so did
    OpenAI's list of text parts, which only `sft build` read. A number is its JSON text, the text
    parts are joined; null, true/false, objects and other parts stay refused (`test_bad_chat_…`)."""
    question = ("user", "Сколько будет 6 × 7?")
    chats = tmp_path / "chats.jsonl"
    given = [
        _chat_line(question, ("assistant", 42)),
        _chat_line(question, ("assistant", 2.5)),
        _chat_line(question, ("assistant", -1e20)),
        _chat_line(
            ("user", [{"type": "text", "text": "Сколько будет "}, {"type": "text", "text": "6 × 7?"}]),
            ("assistant", [{"type": "text", "text": "42"}]),
        ),
    ]
    chats.write_text("\n".join(given) + "\n", encoding="utf-8")
    prefix = tmp_path / "chats"
    rc, _, err = _prepare_cli(capfd, chats, prefix)
    assert rc == 0, err
    as_text = [_msgs(question, ("assistant", text)) for text in ("42", "2.5", "-1e+20", "42")]
    assert _prepared_chats(prefix) == [encode_chat(chat, mistral).ids for chat in as_text]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (  # a chat of questions alone: nothing is left to train on once they are trimmed
            '{"messages": [{"role": "user", "content": "Привет"}]}',
            "chat has no assistant turn: nothing to train on (an SFT chat needs an answer after its user "
            "turn",
        ),
        (
            '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, '
            '{"role": "user", "content": "b"}]}',
            "message 3: expected an assistant turn after a user turn, got user",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}',
            "message 2: unknown role 'bot' (expected system, user, assistant or tool)",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
            "message 2: expected an assistant turn after a user turn, got user",
        ),
        (
            '{"messages": [{"role": "assistant", "content": "a"}]}',
            "message 1: expected a user turn after the start",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}',
            "message 2: a system message may only come first",
        ),
        (
            '{"messages": [{"role": "user", "content": true}, {"role": "assistant", "content": "b"}]}',
            "message 1: content must be a string (or a number, or OpenAI's list of text parts), got "
            "true/false",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null}]}',
            "message 2: content must be a string (or a number, or OpenAI's list of text parts), got null",
        ),
        (
            '{"messages": [{"role": "user", "content": {"text": "a"}}, '
            '{"role": "assistant", "content": "b"}]}',
            "message 1: content must be a string (or a number, or OpenAI's list of text parts), got an "
            "object",
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, '
            '{"role": "assistant", "content": "b"}]}',
            'message 1: content part 1 is \'image_url\', not {"type": "text", "text": …} (only text parts',
        ),
        (
            '{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}, '
            '{"role": "assistant", "content": "b"}]}',
            "message 1: content part 1 text must be a string, got int",
        ),
        (
            '{"messages": [{"role": "user", "content": "a", "reasoning_content": "r"}, '
            '{"role": "assistant", "content": "b"}]}',
            "message 1: only an assistant message may carry reasoning_content",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, '
            '{"role": "assistant", "content": "b", "reasoning_content": ["r"]}]}',
            "message 2: reasoning_content must be a string, got list",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, '
            '{"role": "assistant", "content": "X</think>Y", "reasoning_content": "r"}]}',
            "message 2: a </think> in the content of a message with reasoning_content",
        ),
        (
            '{"messages": [{"role": "user", "content": " \\n\\t"}, {"role": "assistant", "content": "b"}]}',
            "message 1: the user turn is empty or blank: there is nothing to answer",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, '
            '{"role": "user", "content": ""}, {"role": "assistant", "content": "c"}]}',
            "message 3: the user turn is empty or blank",
        ),
        (
            '{"messages": [{"role": "system", "content": " "}, {"role": "user", "content": "a"}, '
            '{"role": "assistant", "content": "b"}]}',
            "message 1: the system message is empty or blank (leave it out",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null, '
            '"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}, '
            '{"role": "tool", "content": ""}, {"role": "assistant", "content": "b"}]}',
            "message 3: the tool result is empty or blank",
        ),
        ('{"text": "no chat"}', 'expected an object with a "messages" list'),
        (  # a ShareGPT file given to prepare said only 'expected an object with a "messages" list'
            '{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}',
            'expected an object with a "messages" list (fields conversations: the sharegpt format, '
            "which `vikhr sft build` reads and writes as chats",
        ),
        (
            '{"instruction": "a", "input": "", "output": "b"}',
            "(fields input, instruction, output: the alpaca format, which `vikhr sft build` reads",
        ),
        (
            '{"messages": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}',
            'message 1: expected {"role": ..., "content": ...} (a ShareGPT turn: `vikhr sft build` reads',
        ),
        ('{"messages": [', "not valid JSON"),
    ],
)
def test_bad_chat_is_one_error_line_naming_file_and_line(
    capfd: pytest.CaptureFixture, tmp_path: Path, line: str, message: str
) -> None:
    good = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
    chats = tmp_path / "chats.jsonl"
    chats.write_text(f"{good}\n\n{good}\n{line}\n{good}\n", encoding="utf-8")
    rc, _, err = _prepare_cli(capfd, chats, tmp_path / "out" / "sft")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vikhr sft prepare: error: {chats}:4: "), err
    assert message in lines[0]
    assert not list((tmp_path / "out").iterdir())  # nothing half-written


@pytest.mark.parametrize("layout", ["parquet", "json_array"])
def test_a_parquet_or_json_array_file_is_named_as_such_by_prepare_and_score(
    capfd: pytest.CaptureFixture, tmp_path: Path, layout: str
) -> None:
    """Chats as a Parquet file said 'not UTF-8 (byte 0x..); re-encode it ... iconv -f cp1251', as one
    JSON array 'not valid JSON' on line 1: neither says that prepare and score read JSON Lines."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [
        {
            "messages": [
                {"role": "user", "content": "Привет"},
                {"role": "assistant", "content": "Здравствуйте"},
            ]
        }
    ]
    if layout == "parquet":
        chats = tmp_path / "chats.parquet"
        pq.write_table(pa.Table.from_pylist(records), chats)
        kind = "a Parquet file"
    else:
        chats = tmp_path / "chats.json"
        chats.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        kind = "one JSON array"
    prepare = ["--tokenizer", str(MISTRAL_TOKENIZER), "--output-prefix", str(tmp_path / "out" / "sft")]
    score = ["--model", str(tmp_path / "rm"), "--scores", str(tmp_path / "out" / "scores.jsonl")]
    for command, args in (("prepare", prepare), ("score", score)):
        rc, _, err = _cli(capfd, "sft", command, "--input", str(chats), *args, "--no-progress")
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, err
        said = f"vikhr sft {command}: error: {chats} is {kind}, not JSON Lines: sft {command} reads a"
        assert lines[0].startswith(said + " chats JSONL"), err
        assert "`vikhr sft build` reads" in lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_chats_are_read_compressed_and_other_encodings_refused(
    capfd: pytest.CaptureFixture, tmp_path: Path
) -> None:
    import gzip

    import zstandard

    from vikhr.assets import RU_SEED_CHATS
    from vikhr.sft.template import read_chats

    raw = RU_SEED_CHATS.read_bytes()
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    plain = list(read_chats(RU_SEED_CHATS))
    assert list(read_chats(tmp_path / "c.jsonl.gz")) == plain == list(read_chats(tmp_path / "c.jsonl.zst"))
    cp1251 = tmp_path / "cp1251.jsonl"
    cp1251.write_bytes(raw.decode("utf-8").encode("cp1251", errors="replace"))
    rc, _, err = _prepare_cli(capfd, cp1251, tmp_path / "out" / "sft")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert (
        lines[0].startswith(f"vikhr sft prepare: error: {cp1251}:1: not UTF-8")
        and "re-encode it as UTF-8" in lines[0]
    )


# --------------------------------------------------------------------------- encoding processes


def test_prepare_writes_the_same_bytes_with_any_number_of_workers(
    capfd: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two and three encoding processes write the token and mask datasets and the metadata one
    process writes, byte for byte, and print the same summary and warning."""
    import vikhr.sft.cli as sft_cli
    import vikhr.sft.prepare as prepare

    monkeypatch.setattr(prepare, "BATCH_CHATS", 16)  # 19 batches: the processes finish out of step
    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join(varied_chat_lines(300)) + "\n", encoding="utf-8")
    monkeypatch.setattr(sft_cli, "cores_here", lambda: 3)  # --workers 0: one process per core
    written = {}
    for workers in (1, 2, 0):
        out = tmp_path / f"w{workers}"
        rc, stdout, stderr = _prepare_cli(capfd, chats, out / "sft", "--workers", str(workers))
        assert rc == 0, stderr
        files = {f.name: f.read_bytes().replace(str(out).encode(), b"OUT") for f in sorted(out.iterdir())}
        written[workers] = (files, stdout.replace(str(out), "OUT"), stderr)
    files, stdout, stderr = written[1]
    assert sorted(files) == sorted(
        [
            "sft_sft.json",
            *(f"sft_{kind}_document.{ext}" for kind in ("mask", "text") for ext in ("bin", "idx")),
        ]
    )
    assert stdout.startswith("OUT/sft: 300 chats,") and "warning: 34 of 300 chats" in stderr
    assert written[2] == written[1] and written[0] == written[1]


_NOT_UTF8 = b'{"messages": "\xff"}'
_ROLE_BOT = b'{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}'
_TOOL_CALL = (
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "tool_calls": '
    b'[{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": '
    b'"1"}, {"role": "assistant", "content": "b"}]}'
)


@pytest.mark.parametrize(
    ("bad_lines", "said"),
    [
        ({40: _ROLE_BOT, 55: _TOOL_CALL, 60: _NOT_UTF8}, "message 2: unknown role 'bot'"),
        ({40: _TOOL_CALL, 41: b'{"messages": ['}, "the mistral chat template has no function calling"),
        ({40: _NOT_UTF8, 290: _ROLE_BOT}, "not UTF-8 (byte 0xff)"),
    ],
    ids=["bad_chat", "template_refusal", "not_utf8"],
)
def test_a_bad_chat_encoded_by_a_worker_is_the_error_one_process_gives(
    capfd: pytest.CaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bad_lines: dict[int, bytes],
    said: str,
) -> None:
    """Line 40 is in the third batch of 16, which neither process starts with; a later bad line, in
    its batch or in one encoded or read ahead of it, does not take its place; nothing is left."""
    import vikhr.sft.prepare as prepare

    monkeypatch.setattr(prepare, "BATCH_CHATS", 16)
    lines = [line.rstrip("\n").encode() for line in varied_chat_lines(300)]  # line n is chat n
    for number, line in bad_lines.items():
        lines[number - 1] = line
    chats = tmp_path / "chats.jsonl"
    chats.write_bytes(b"\n".join(lines) + b"\n")
    errors = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        rc, _, err = _prepare_cli(capfd, chats, out / "sft", "--workers", str(workers))
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert not out.exists() or not list(out.iterdir())  # nothing half-written
        errors.append(err.strip())
    assert errors[0] == errors[1], errors
    assert errors[0].startswith(f"vikhr sft prepare: error: {chats}:40: ") and said in errors[0], errors


@pytest.mark.parametrize("workers", ["-1", "1025"])
def test_prepare_refuses_a_number_of_workers_it_cannot_start(
    capfd: pytest.CaptureFixture, tmp_path: Path, workers: str
) -> None:
    chats = tmp_path / "chats.jsonl"
    chats.write_text(varied_chat_lines(1)[0] + "\n", encoding="utf-8")
    rc, _, err = _prepare_cli(capfd, chats, tmp_path / "out" / "sft", "--workers", workers)
    assert rc == 2 and err.strip().splitlines() == [
        f"vikhr sft prepare: error: --workers must be from 0 (one per core) to 1024 (encoding processes), "
        f"got {workers}"
    ]
    assert not (tmp_path / "out").exists()


def _exit_abruptly(*_: object) -> None:
    """An encoding process killed in its task (as the kernel kills one for lack of memory)."""
    import os

    os._exit(9)


def test_an_encoding_process_killed_is_one_error_line(
    capfd: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vikhr.sft.prepare as prepare

    monkeypatch.setattr(prepare, "_encode_in_worker", _exit_abruptly)
    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join(varied_chat_lines(20)) + "\n", encoding="utf-8")
    rc, _, err = _prepare_cli(capfd, chats, tmp_path / "out" / "sft", "--workers", "2")
    assert rc == 2 and err.strip().splitlines() == [
        "vikhr sft prepare: error: an encoding process ended abruptly (killed, e.g. for lack of memory, or "
        "it could not start): run again with fewer --workers"
    ]
    assert not list((tmp_path / "out").iterdir())


# Run as `python -c` with a folder holding `encoding_on_hold.py` on PYTHONPATH: `vikhr ARGS[1:]` whose
# encoding processes each wait at ARGS[0] until the file `release` is in that folder: "starting" (before
# their initializer, `_start_worker`) or "encoding" (their first batch); each says so with a file
# `<ARGS[0]>-<pid>` there.
_HELD_ENCODING = """
import sys
import encoding_on_hold
from vikhr.cli import main
from vikhr.sft import prepare
if sys.argv[1] == "starting":
    prepare._start_worker = encoding_on_hold.start
else:
    prepare._encode_in_worker = encoding_on_hold.encode
sys.exit(main(sys.argv[2:]))
"""
_ENCODING_ON_HOLD = """
import os
import time
from pathlib import Path
from vikhr.sft import prepare
RELEASE = Path(__file__).with_name("release")
def hold(where):
    RELEASE.with_name(f"{where}-{os.getpid()}").touch()
    while not RELEASE.exists():
        time.sleep(0.05)
def start(*args):
    hold("starting")
    prepare._start_worker(*args)
def encode(input_path, lines):
    hold("encoding")
    return prepare._encode_in_worker(input_path, lines)
"""


@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["sigterm_to_the_run", "sigterm_to_its_process_group", "ctrl_c"],
)
@pytest.mark.parametrize("held", ["starting", "encoding"])
def test_a_stop_mid_run_stops_cleanly_and_keeps_the_dataset_written_there_before(
    tmp_path: Path, signum: signal.Signals, group: bool, held: str
) -> None:
    """A SIGTERM (kill, a job scheduler's stop, sent to the run or to its whole process group) ended
    the run at once: its scratch files and locks stayed, and its encoding processes lived on, waiting
    for work. Now it stops as Ctrl-C does: one line, status 143, the encoding processes ended with it
    (within their batch), the dataset already at the prefix as it was. A SIGTERM or Ctrl-C sent to the
    group while the encoding processes started, before they set it aside, ended them (the run said "an
    encoding process ended abruptly", or each printed a KeyboardInterrupt traceback): it now waits in
    them until they have."""

    prefix = tmp_path / "out" / "sft"
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join(varied_chat_lines(20)) + "\n", encoding="utf-8")
    prepare_sft(old, MISTRAL_TOKENIZER, prefix)
    before = {f.name: f.read_bytes() for f in prefix.parent.iterdir()}
    hooks = tmp_path / "hooks"
    # To a file: an encoding process left running would hold a pipe open, and reading it would not end.
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err_file:
        proc = _start_held_prepare(tmp_path, prefix, hooks, err_file, held=held)
    started: list[psutil.Process] = []
    deadline = time.monotonic() + 120
    try:
        while len(list(hooks.glob(f"{held}-*"))) < 2:  # both encoding processes on hold
            assert proc.poll() is None, stderr.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, "the encoding processes never started"
            time.sleep(0.1)
        started = _encoding_processes(proc.pid)
        assert list(prefix.parent.glob("*.partial"))  # the datasets are being written
        if group:  # a scheduler's stop, or Ctrl-C, reaches every process of the job
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        time.sleep(1)
        assert all(_running(p) for p in started), "the signal ended an encoding process"
        (hooks / "release").touch()  # the batches under way end; the run waits for them
        proc.wait(timeout=60)
        err = stderr.read_text(encoding="utf-8")
        assert proc.returncode == 128 + signum, err
        said = {
            signal.SIGTERM: "vikhr sft prepare: terminated (SIGTERM): stopped, what was at its outputs is "
            "as it was",
            signal.SIGINT: "vikhr: interrupted",
        }
        assert err == said[signum] + "\n"
        while any(_running(p) for p in started):
            assert time.monotonic() < deadline, f"encoding processes left running: {started}"
            time.sleep(0.1)
        assert {f.name: f.read_bytes() for f in prefix.parent.iterdir()} == before  # no lock, no scratch
    finally:
        _end_held_prepare(proc, hooks, started)


def _start_held_prepare(
    tmp_path: Path,
    prefix: Path,
    hooks: Path,
    stderr: int | IO[bytes],
    chat_lines: list[str] | None = None,
    held: str = "encoding",
) -> subprocess.Popen:
    """`vikhr sft prepare --workers 2` of `chat_lines` (2,000 varied chats unless given) to `prefix`, in
    a session of its own, its encoding processes each on hold until the file `release` is in the folder
    `hooks`: `held` "encoding" their first batch, or "starting", before their initializer."""
    from tests.conftest import child_env

    chats = tmp_path / "chats.jsonl"
    lines = varied_chat_lines(2000) if chat_lines is None else chat_lines
    chats.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hooks.mkdir()
    (hooks / "encoding_on_hold.py").write_text(_ENCODING_ON_HOLD, encoding="utf-8")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env["PYTHONPATH"]])
    cmd = [
        sys.executable, "-c", _HELD_ENCODING, held, "sft", "prepare", "--input", str(chats), "--tokenizer",
        str(MISTRAL_TOKENIZER), "--output-prefix", str(prefix), "--workers", "2", "--no-progress",
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
    )


def _end_held_prepare(proc: subprocess.Popen, hooks: Path, started: list[psutil.Process]) -> None:
    """Ends what a run of `_start_held_prepare` may have left running, whatever its test asserted:
    releases its encoding processes, kills them (`started`) and the run, and waits for the run."""
    (hooks / "release").touch()
    for p in started + ([psutil.Process(proc.pid)] if proc.poll() is None else []):
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait()


def test_encoding_processes_end_when_the_run_is_killed(tmp_path: Path) -> None:
    """`kill -9` of `vikhr sft prepare --workers 2` (the out-of-memory killer, a scheduler's hard
    stop) left its encoding processes running, waiting for work: they held memory, and the run's
    stderr open, so a reader of it never saw the end. Now they end with the run, and so does the pipe."""
    hooks = tmp_path / "hooks"
    proc = _start_held_prepare(tmp_path, tmp_path / "out" / "sft", hooks, subprocess.PIPE)
    assert proc.stderr is not None
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while len(_encoding_processes(proc.pid)) < 2:  # both encoding processes, on hold
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the encoding processes never started"
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True)  # multiprocessing's helper too
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_running(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in children if _running(p)], "processes of the run left running"
        # The run's stderr ends (multiprocessing's helper may say it freed what the run left): no
        # process holds it open any more.
        deadline = time.monotonic() + 10
        while select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))[0]:
            if not os.read(proc.stderr.fileno(), 1 << 16):
                break
        else:
            raise AssertionError("the run's stderr was left open")
    finally:
        (hooks / "release").touch()
        for p in children:
            with contextlib.suppress(psutil.Error):
                p.kill()
        proc.kill()
        proc.wait()
        proc.stderr.close()


# Run as `python -c SIGNUM ARGS`: `vikhr ARGS`, which sends itself SIGNUM as soon as a token-id
# dataset has been moved to its final names, before the mask dataset and the metadata are.
_STOP_AFTER_THE_IDS = """
import os, sys
from vikhr.cli import main
from vikhr.data import indexed
finish = indexed.IndexedWriter.finish
def finish_then_stop(self):
    info = finish(self)
    if self.prefix.endswith("_text_document"):
        os.kill(os.getpid(), int(sys.argv[1]))
    return info
indexed.IndexedWriter.finish = finish_then_stop
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl_c"])
def test_a_stop_while_the_datasets_are_put_in_place_leaves_one_whole_dataset(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A SIGTERM or Ctrl-C between the renames that put a new dataset in place left the new token
    ids beside the old mask and no `_sft.json` (the old metadata removed first): neither dataset.
    The stop now waits for the renames: the prefix holds the new dataset, whole, and the run says so."""
    from tests.conftest import child_env

    prefix = tmp_path / "out" / "sft"
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join(varied_chat_lines(20)) + "\n", encoding="utf-8")
    prepare_sft(old, MISTRAL_TOKENIZER, prefix)
    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join(varied_chat_lines(30)) + "\n", encoding="utf-8")
    cmd = [
        sys.executable, "-c", _STOP_AFTER_THE_IDS, str(int(signum)), "sft", "prepare", "--input", str(chats),
        "--tokenizer", str(MISTRAL_TOKENIZER), "--output-prefix", str(prefix), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signum, proc.stderr
    from vikhr.data.indexed import IndexedReader
    from vikhr.sft.layout import read_prepared_sft, sft_datasets, sft_files

    meta = read_prepared_sft(prefix)
    text, mask = (IndexedReader(p) for p in sft_datasets(prefix))
    assert meta["chats"] == len(text) == len(mask) == 30
    assert [len(text.document(i)) for i in range(30)] == [len(mask.document(i)) for i in range(30)]
    # No scratch file, no lock:
    assert sorted(f.name for f in prefix.parent.iterdir()) == sorted(
        f.name for f in sft_files(prefix).values()
    )
    stop = {signal.SIGTERM: "vikhr sft prepare: terminated (SIGTERM):", signal.SIGINT: "vikhr: interrupted;"}
    said = f"{stop[signum]} stopped once its outputs were in place: they are complete"
    assert proc.stderr.splitlines()[-1] == said, proc.stderr


def test_a_killed_encoding_process_ends_the_run_with_one_line(tmp_path: Path) -> None:
    """The out-of-memory killer ending one encoding process of `vikhr sft prepare --workers 2`: the run
    said so, then hung for good (the pool stopped the other process with SIGTERM, which encoding
    processes ignore, and waited for it). Now the run ends with that line; nothing is left running."""
    hooks = tmp_path / "hooks"
    out = tmp_path / "out"
    stderr_path = tmp_path / "stderr"
    # Batches larger than a pipe holds: the next one waits in the pipe to the encoding processes.
    long_chat = {
        "messages": [{"role": "user", "content": "Вопрос " * 100}, {"role": "assistant", "content": "Ответ"}]
    }
    with stderr_path.open("wb") as stderr:
        proc = _start_held_prepare(tmp_path, out / "sft", hooks, stderr, [json.dumps(long_chat)] * 2000)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        # Both encoding processes on hold, and the run waiting to hand them the next batch.
        while len(list(hooks.glob("encoding-*"))) < 2 or not _writing_to_a_full_pipe(proc.pid):
            assert proc.poll() is None, stderr_path.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, "the encoding processes never started"
            time.sleep(0.1)
        started = _encoding_processes(proc.pid)
        started[0].kill()
        proc.wait(timeout=60)
        assert proc.returncode == 2
        assert stderr_path.read_text(encoding="utf-8").splitlines() == [
            "vikhr sft prepare: error: an encoding process ended abruptly (killed, e.g. for lack of memory, "
            "or it could not start): run again with fewer --workers"
        ]
        assert not [p for p in started if _running(p)]
        assert not list(out.iterdir())
    finally:
        _end_held_prepare(proc, hooks, started)


def _writing_to_a_full_pipe(pid: int) -> bool:
    """Whether a thread of process `pid` waits to write to a pipe (where Linux says what threads wait on)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if "pipe_write" in (task / "wchan").read_text():
                return True
    return False


def _encoding_processes(pid: int) -> list[psutil.Process]:
    """The encoding processes (`multiprocessing` spawn children) of process `pid`."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
    return found


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------- prepared datasets


@pytest.fixture(scope="module")
def rulm(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SFT set prepared with the CLI (Mistral template and tokenizer), in a subprocess."""
    prefix = tmp_path_factory.mktemp("sft") / "rulm"
    proc = _vikhr(
        "sft",
        "prepare",
        "--input",
        str(shared_data / "sft" / "rulm-self-instruct.chat.jsonl"),
        "--tokenizer",
        str(MISTRAL_TOKENIZER),
        "--output-prefix",
        str(prefix),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"{prefix}: 806 chats,")
    return prefix


def test_prepared_files_read_back_by_megatron(
    rulm: Path, shared_data: Path, mistral, capfd: pytest.CaptureFixture
) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from vikhr.sft.template import read_chats

    text = IndexedDataset(f"{rulm}_text_document")
    mask = IndexedDataset(f"{rulm}_mask_document")
    assert len(text) == len(mask) == 806
    assert text.index.dtype == np.uint16 and mask.index.dtype == np.uint8
    assert list(text.document_indices) == list(range(807))  # one document per chat
    total = loss = 0
    for i, (_, messages) in enumerate(read_chats(shared_data / "sft" / "rulm-self-instruct.chat.jsonl")):
        enc = encode_chat(messages, mistral)
        assert text[i].tolist() == enc.ids and mask[i].tolist() == enc.mask, i
        total, loss = total + len(enc.ids), loss + sum(enc.mask)
    meta = json.loads(Path(f"{rulm}_sft.json").read_text())
    assert (meta["chats"], meta["tokens"], meta["loss_tokens"]) == (806, total, loss)
    assert meta["eos_id"] == 2 and meta["template"] == "mistral"
    assert meta["max_token_id"] == max(int(text[i].max()) for i in range(806))

    rc, out, err = _cli(capfd, "sft", "show", str(rulm), "--index", "0")
    assert rc == 0, err
    first = json.loads((shared_data / "sft" / "rulm-self-instruct.chat.jsonl").open().readline())
    assert f"[/INST][[{first['messages'][1]['content']}</s>]]" in out


# --------------------------------------------------------------------------- packing


def _toy_source(lengths: list[int], answer_from: int = 2) -> SFTSource:
    """Chat c = tokens 1000c+0.., mask 1 from position `answer_from` on (a fake reader)."""

    class Reader:
        def get(self, chat: int, offset: int, n: int, *, mask: bool = False) -> np.ndarray:
            pos = np.arange(offset, offset + n)
            return (pos >= answer_from).astype(np.int64) if mask else 1000 * chat + pos

    class MaskReader(Reader):
        def get(self, chat: int, offset: int, n: int) -> np.ndarray:  # type: ignore[override]
            return super().get(chat, offset, n, mask=True)

    ls = np.array(lengths, dtype=np.int64)
    return SFTSource("toy", Reader(), MaskReader(), ls, np.maximum(ls - answer_from, 0), 0)


def test_packing_keeps_chats_whole_and_shifts_the_mask_onto_labels() -> None:
    source = _toy_source([5, 4, 3, 7, 2])
    order = np.array([0, 1, 2, 3, 4])
    bounds = pack_windows(order, source.lengths, 9, "pack")
    assert bounds.tolist() == [0, 2, 3, 5]  # [5+4], [3] (7 does not fit after it), [7+2]
    assert pack_windows(order, source.lengths, 9, "pad").tolist() == [0, 1, 2, 3, 4, 5]
    ds = PackedSFTDataset(source, order, bounds, window=9, pad_id=2)
    s = ds[0]
    window = [0, 1, 2, 3, 4, 1000, 1001, 1002, 1003]
    assert s["tokens"].tolist() == window[:-1] and s["labels"].tolist() == window[1:]
    # A label counts exactly when it is an answer token (position >= 2 of its chat).
    assert s["loss_mask"].tolist() == [0, 1, 1, 1, 0, 0, 1, 1]
    s = ds[1]
    assert s["tokens"].tolist() == [2000, 2001, 2002, 2, 2, 2, 2, 2]
    assert s["loss_mask"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]  # padding never counts


def test_split_is_fixed_and_disjoint() -> None:
    train, valid = split_chats(806, "90,10,0")
    assert len(train) + len(valid) == 806 and not set(train) & set(valid)
    assert len(valid) == 81
    assert np.array_equal(split_chats(806, "90,10,0")[1], valid)


# --------------------------------------------------------------------------- training


def _config(path: Path, rulm: Path, run_dir: Path, **sections: dict) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "sft-tiny-cpu.yaml").read_text())
    cfg["data"].update(train=[{"prefix": str(rulm), "name": "rulm"}], seq_len=128, valid_samples=16)
    cfg["train"].update(steps=20, micro_batch=2, global_batch=8)
    cfg["checkpoint"].update(dir=str(run_dir), save_every=8)
    cfg["logging"].update(log_every=1, eval_every=10)
    for section, values in sections.items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _vikhr(*args: str) -> subprocess.CompletedProcess:
    from tests.conftest import child_env

    return subprocess.run(
        [sys.executable, "-m", "vikhr", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=600,
    )


def _cli(capfd: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """`vikhr ARGS` in this process (the same main() as the console script): rc, stdout, stderr."""
    from vikhr.cli import main

    capfd.readouterr()
    rc = main(list(args))
    out, err = capfd.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def sft_run(rulm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sft-run")
    config = _config(tmp / "c.yaml", rulm, tmp / "run", logging={"tensorboard": True})
    proc = _vikhr("sft", "train", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sft data: rulm: 806 chats (725 train, 81 valid)" in proc.stderr
    (tmp / "stdout.txt").write_text(proc.stdout, encoding="utf-8")  # what the run said, for the tests
    (tmp / "stderr.txt").write_text(proc.stderr, encoding="utf-8")
    return tmp / "run"


def test_each_step_reports_the_assistant_tokens_its_loss_was_taken_over(sft_run: Path, rulm: Path) -> None:
    """The step line, metrics.jsonl and TensorBoard give each step's loss tokens: the loss mask
    (shifted onto the labels) summed over the step's micro-batches; the run's summary their total."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vikhr.sft.data import build_sft_datasets
    from vikhr.train.config import load_config
    from vikhr.train.data import IGNORE_INDEX, step_micro_batches
    from vikhr.train.trainer import train_samples

    cfg = load_config(sft_run.parent / "c.yaml")
    data = build_sft_datasets(cfg, train_samples(cfg))
    g, m = cfg.train.global_batch, cfg.train.micro_batch
    expected = {}
    for step in range(1, cfg.train.steps + 1):
        first = (step - 1) * g
        masked = sum(int(data.train[i]["loss_mask"].sum()) for i in range(first, first + g))
        labelled = sum(
            int((b.labels != IGNORE_INDEX).sum()) for b in step_micro_batches(data.train, first, g, m, 0, 1)
        )
        assert masked == labelled > 0, step
        expected[step] = masked
    assert len(set(expected.values())) > 1  # steps differ: a constant would not pass for a count
    train, _ = read_metrics(sft_run)
    assert {step: row["loss_tokens"] for step, row in train.items()} == expected
    stdout = (sft_run.parent / "stdout.txt").read_text(encoding="utf-8")
    lines = [line for line in stdout.splitlines() if line.startswith("step ")]
    assert [int(re.search(r"\| loss-tokens ([\d,]+) \|", line)[1].replace(",", "")) for line in lines] == [
        expected[step] for step in sorted(expected)
    ]
    events = EventAccumulator(str(sft_run / "tensorboard"))
    events.Reload()
    scalars = {e.step: e.value for e in events.Scalars("train/loss_tokens")}
    assert scalars == {step: float(n) for step, n in expected.items()}
    stderr = (sft_run.parent / "stderr.txt").read_text(encoding="utf-8")
    total = sum(expected.values())
    assert f"trained: the loss was taken over {total:,} assistant tokens in 20 steps" in stderr


def test_sft_lowers_the_loss_on_held_out_assistant_tokens(sft_run: Path) -> None:
    train, valid = read_metrics(sft_run)
    assert sorted(train) == list(range(1, 21)) and sorted(valid) == [0, 10, 20]
    assert valid[0]["loss_rulm"] == pytest.approx(np.log(32000), abs=0.3)  # an untrained model
    assert valid[10]["loss_rulm"] < valid[0]["loss_rulm"]
    assert valid[20]["loss_rulm"] < valid[0]["loss_rulm"] - 1.5


def test_kill_and_resume_gives_the_same_losses(rulm: Path, sft_run: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", rulm, tmp_path / "run")
    killed = _vikhr("sft", "train", "--config", str(config), "debug.kill_at_step=12")
    assert killed.returncode != 0
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_000008"
    resumed = _vikhr("sft", "train", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr and "step_000008" in resumed.stderr
    train, valid = read_metrics(tmp_path / "run")
    reference, reference_valid = read_metrics(sft_run)
    assert sorted(train) == sorted(reference)
    for step, row in reference.items():
        for key in ("loss", "ce", "lr", "grad_norm", "loss_tokens"):
            assert train[step][key] == row[key], (step, key)
    assert valid[20] == reference_valid[20]
    # the checkpoint keeps the count: the resumed run's total is the uninterrupted run's
    total = sum(row["loss_tokens"] for row in reference.values())
    assert f"trained: the loss was taken over {total:,} assistant tokens in 20 steps" in resumed.stderr


def test_a_run_copied_without_its_data_exports_its_chat_template(sft_run: Path, tmp_path: Path) -> None:
    """The export found an SFT run's chat template only in its datasets' _sft.json: a run copied to
    another machine without its data exported a tokenizer without one, silently. Each checkpoint
    records what its datasets recorded when it trained."""
    import shutil

    from vikhr.convert.mistral import megatron_to_hf

    step = sft_run / (sft_run / "latest").read_text().strip()
    meta = json.loads((step / "meta.json").read_text())
    assert meta["data_tokenizer"]["template"] == "mistral"
    assert meta["data_tokenizer"]["path"] == str(MISTRAL_TOKENIZER)
    assert meta["data_tokenizer"]["recorded_by"].endswith("rulm_sft.json")
    here = megatron_to_hf(step, tmp_path / "here")
    # Elsewhere: the same checkpoint, its datasets not there.
    copied = shutil.copytree(step, tmp_path / "copied" / step.name)
    for entry in meta["config"]["data"]["train"]:
        entry["prefix"] = str(tmp_path / "not-copied" / "rulm")
    (copied / "meta.json").write_text(json.dumps(meta))
    elsewhere = megatron_to_hf(copied, tmp_path / "elsewhere")
    exported = [json.loads((out / "tokenizer_config.json").read_text()) for out in (here, elsewhere)]
    assert exported[0]["chat_template"] and exported[1] == exported[0]
    # A checkpoint of an older version records nothing: with a random start, no tokenizer at all.
    del meta["data_tokenizer"]
    (copied / "meta.json").write_text(json.dumps(meta))
    older = megatron_to_hf(copied, tmp_path / "older")
    assert (older / "config.json").is_file() and not (older / "tokenizer_config.json").exists()


def test_data_prepared_again_after_training_leaves_the_export_as_trained(
    sft_run: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """The export read the template and tokenizer from the datasets' _sft.json as they are now: chats
    prepared again at the run's prefix after training (another --template, or another tokenizer of
    the same vocabulary size) gave the model an export of that template or tokenizer, silently. It
    now carries what the checkpoint records it trained on, with one warning line."""
    import shutil

    from tests.helpers import sentencepiece_with_other_ids
    from vikhr.convert.mistral import megatron_to_hf
    from vikhr.tokenizer.corpus import corpus_sha256

    step = sft_run / (sft_run / "latest").read_text().strip()
    trained = json.loads((megatron_to_hf(step, tmp_path / "trained") / "tokenizer_config.json").read_text())
    copied = shutil.copytree(step, tmp_path / "run" / step.name)
    meta = json.loads((copied / "meta.json").read_text())
    prefix = tmp_path / "again" / "rulm"
    meta["config"]["data"]["train"] = [{"prefix": str(prefix), "name": "rulm", "weight": 1.0}]
    (copied / "meta.json").write_text(json.dumps(meta))
    chats = ASSETS / "sft" / "ru-seed-chats.jsonl"
    other = sentencepiece_with_other_ids(tmp_path / "other" / "tokenizer.model")
    for tokenizer, template, now in (
        (MISTRAL_TOKENIZER, "chatml", "chat template chatml"),
        (other, "mistral", f"tokenizer {other}"),
    ):
        prepare_sft(chats, tokenizer, prefix, template=template, max_chats=4)
        capfd.readouterr()
        out = megatron_to_hf(copied, tmp_path / template)
        [line] = capfd.readouterr().err.strip().splitlines()
        was = "chat template mistral" if template == "chatml" else f"tokenizer {MISTRAL_TOKENIZER}"
        assert line == (
            f"warning: {prefix}_sft.json now records {now}, but {copied} was trained on data of {was} "
            "(its meta.json records it): the export carries that"
        )
        assert json.loads((out / "tokenizer_config.json").read_text()) == trained
        assert corpus_sha256(out / "tokenizer.model") == corpus_sha256(MISTRAL_TOKENIZER)
    # Prepared again alike (a copy of the tokenizer elsewhere: the same file by its sha256): no warning.
    copy = shutil.copyfile(MISTRAL_TOKENIZER, tmp_path / "copy.model")
    prepare_sft(chats, copy, prefix, template="mistral", max_chats=4)
    capfd.readouterr()
    megatron_to_hf(copied, tmp_path / "alike")
    assert capfd.readouterr().err == ""


def test_a_resume_on_chats_prepared_again_compares_them_with_what_it_trained_on(
    sft_run: Path, tmp_path: Path
) -> None:
    """A run resumed after its chats were prepared again with another tokenizer of the same
    vocabulary size trained on, silently: the ids meant other pieces than those its embeddings had
    learnt (a pre-training checkpoint given as checkpoint.resume, likewise). It is refused in one
    line naming the tokenizer to prepare them with; another chat template is a warning line."""
    import shutil

    from tests.helpers import sentencepiece_with_other_ids

    run = shutil.copytree(sft_run, tmp_path / "run")
    prefix = tmp_path / "again" / "rulm"
    config = _config(tmp_path / "c.yaml", prefix, run, train={"steps": 21})
    chats = ASSETS / "sft" / "ru-seed-chats.jsonl"
    prepare_sft(chats, sentencepiece_with_other_ids(tmp_path / "other.model"), prefix)
    refused = _vikhr("sft", "train", "--config", str(config))
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith(
        f"vikhr sft train: error: config key data.train[0] (rulm) was tokenized with {tmp_path}/other.model, "
        f"but the checkpoint resumed ({run}/step_000020) was trained with {MISTRAL_TOKENIZER} (recorded in "
    )
    assert line.endswith(f"in the data's): prepare the chats with {MISTRAL_TOKENIZER}")
    assert (run / "latest").read_text().strip() == "step_000020"
    prepare_sft(chats, MISTRAL_TOKENIZER, prefix, template="chatml")
    resumed = _vikhr("sft", "train", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"warning: resuming from {run}/step_000020, trained on chats of chat template mistral: "
        f"{prefix}_sft.json now records chatml, so the model learns both from here, and the export of "
        "the steps to come carries chatml\n"
    ) in resumed.stderr
    assert (run / "latest").read_text().strip() == "step_000021"


@pytest.mark.distributed
def test_two_data_parallel_ranks_match_one(rulm: Path, sft_run: Path, tmp_path: Path) -> None:
    """DP=2 splits each global batch of packed chats between the ranks: same losses as 1 rank
    (the first 6 steps; the run is then killed, which also spares the remaining steps), and each
    step's loss tokens are both ranks' assistant tokens, as 1 rank counts them (one rank's count
    would be about half)."""
    from tests.conftest import launch_torchrun

    config = _config(tmp_path / "c.yaml", rulm, tmp_path / "run")
    launch_torchrun(REPO / "pretrain_vikhr.py", "--config", str(config), "debug.kill_at_step=6", nproc=2)
    train, valid = read_metrics(tmp_path / "run")
    reference, reference_valid = read_metrics(sft_run)
    assert sorted(train) == list(range(1, 7))
    for step, row in train.items():
        for key in ("loss", "ce", "lr"):
            assert row[key] == pytest.approx(reference[step][key], rel=2e-5), (step, key)
        assert row["loss_tokens"] == reference[step]["loss_tokens"] > 0, step
    assert valid[0]["loss_rulm"] == pytest.approx(reference_valid[0]["loss_rulm"], rel=2e-5)


@pytest.fixture
def megatron_cpu():
    from vikhr.runtime.distributed import distributed_env

    with distributed_env(tp_size=1, seed=5, device="cpu"):
        yield


class _KeepLogits(torch.nn.Module):
    """Runs a model and keeps its logits with their gradient."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self.logits = self.inner(*args, **kwargs)
        self.logits.retain_grad()
        return self.logits


def test_only_assistant_tokens_reach_the_loss(
    rulm: Path, shared_data: Path, mistral, tmp_path: Path, megatron_cpu: None
) -> None:
    """On real packed windows: (1) the trainer's labels are exactly the assistant tokens of the
    chats in the window, re-encoded from the JSONL; (2) the gradient reaches the logits at those
    positions and nowhere else; (3) changing every non-assistant target leaves loss and parameter
    gradients bit-identical; (4) the loss is the float64 mean CE over those positions."""
    from megatron.core import parallel_state

    from vikhr.model import build_gpt_model
    from vikhr.model.attention import document_attention_mask
    from vikhr.ops.reference import cross_entropy_kl_reference
    from vikhr.sft.data import build_sft_datasets
    from vikhr.sft.template import read_chats
    from vikhr.train.config import load_config
    from vikhr.train.data import IGNORE_INDEX, collate
    from vikhr.train.trainer import CrossEntropyKL, attention_mask_for, forward_loss, train_samples

    cfg = load_config(_config(tmp_path / "c.yaml", rulm, tmp_path / "run"))
    data = build_sft_datasets(cfg, train_samples(cfg))
    chats = [m for _, m in read_chats(shared_data / "sft" / "rulm-self-instruct.chat.jsonl")]
    samples = [data.train[i] for i in range(4)]

    for i, sample in enumerate(samples):  # (1)
        expected = torch.full((cfg.data.seq_len,), IGNORE_INDEX)
        at = 0
        for chat in data.train.placements[data.train.bounds[i] : data.train.bounds[i + 1]].tolist():
            enc = encode_chat(chats[chat], mistral)
            n = min(len(enc.ids), cfg.data.seq_len + 1)
            for p in range(1, n):
                if enc.mask[p]:
                    expected[at + p - 1] = enc.ids[p]
            at += n
        assert torch.equal(collate([sample]).labels[0], expected), i

    mcfg = cfg.model.shape()
    model = build_gpt_model(mcfg, 1, vocab_multiple=128, attention="sdpa")
    loss_fn = CrossEntropyKL(mcfg.vocab_size, parallel_state.get_tensor_model_parallel_group(), cfg.kl)

    def loss_and_grads(
        batch: list[dict],
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        model.zero_grad(set_to_none=True)
        spy = _KeepLogits(model)
        collated = collate(batch)
        mask = attention_mask_for(collated, cfg.data, mcfg.sliding_window)
        out = forward_loss(spy, collated, loss_fn, attention_mask=mask)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        return out.loss.detach(), spy.logits.grad, grads, collated.labels

    loss, logit_grad, grads, labels = loss_and_grads(samples)
    reaches = logit_grad.abs().sum(-1) > 0  # (2)
    assert torch.equal(reaches, labels != IGNORE_INDEX)
    assert 0 < int(reaches.sum()) < reaches.numel()

    generator = torch.Generator().manual_seed(0)
    changed = []
    for s in samples:  # (3): every target outside the answers replaced by a random token
        other = torch.randint(3, mcfg.vocab_size, s["labels"].shape, generator=generator)
        changed.append({**s, "labels": torch.where(s["loss_mask"] == 0, other, s["labels"])})
    assert all(not torch.equal(c["labels"], s["labels"]) for c, s in zip(changed, samples, strict=True))
    loss2, _, grads2, _ = loss_and_grads(changed)
    assert torch.equal(loss, loss2) and all(torch.equal(a, b) for a, b in zip(grads, grads2, strict=True))

    tokens, labels, segments = collate(samples)  # (4), each chat attending only to itself
    with torch.no_grad():
        b, s = tokens.shape
        mask = document_attention_mask(segments)
        z = model(tokens, torch.arange(s).expand(b, s), attention_mask=mask).reshape(b * s, -1)
    ref = cross_entropy_kl_reference(z, None, labels.reshape(-1), valid_vocab_size=mcfg.vocab_size)
    assert float(loss) == pytest.approx(float(ref.ce), rel=1e-5)


def test_packed_chats_train_as_if_each_were_alone(rulm: Path, tmp_path: Path, megatron_cpu: None) -> None:
    """With data.isolate_documents (the SFT default) the loss of a window packing several chats is
    exactly the assistant-token CE of each chat run through the model on its own; without it the
    later chats see the earlier ones and the loss changes."""
    from megatron.core import parallel_state

    from vikhr.model import build_gpt_model
    from vikhr.ops.reference import cross_entropy_kl_reference
    from vikhr.sft.data import build_sft_datasets
    from vikhr.train.config import load_config
    from vikhr.train.data import IGNORE_INDEX, collate
    from vikhr.train.trainer import CrossEntropyKL, attention_mask_for, forward_loss, train_samples

    cfg = load_config(_config(tmp_path / "c.yaml", rulm, tmp_path / "run", data={"seq_len": 256}))
    assert cfg.data.documents_isolated()
    data = build_sft_datasets(cfg, train_samples(cfg))
    window = next(i for i in range(len(data.train)) if int(data.train[i]["segments"].max()) >= 3)
    batch = collate([data.train[window]])
    mcfg = cfg.model.shape()
    model = build_gpt_model(mcfg, 1, vocab_multiple=128, attention="sdpa").eval()
    loss_fn = CrossEntropyKL(mcfg.vocab_size, parallel_state.get_tensor_model_parallel_group(), cfg.kl)

    def ce(data_cfg) -> torch.Tensor:
        mask = attention_mask_for(batch, data_cfg, mcfg.sliding_window)
        return forward_loss(model, batch, loss_fn, attention_mask=mask).metrics["ce"]

    with torch.no_grad():
        packed_ce = ce(cfg.data)
        total, count = 0.0, 0
        segments = batch.segments[0]
        for chat in range(1, int(segments.max()) + 1):
            where = torch.nonzero(segments == chat).flatten()
            start, n = int(where[0]), len(where)
            assert torch.equal(where, torch.arange(start, start + n))  # chats are contiguous
            labels = batch.labels[0, start : start + n]
            labelled = int((labels != IGNORE_INDEX).sum())
            if labelled == 0:
                continue
            z = model(batch.tokens[:, start : start + n], torch.arange(n)[None], attention_mask=None)
            ref = cross_entropy_kl_reference(z[0], None, labels, valid_vocab_size=mcfg.vocab_size)
            total += float(ref.ce) * labelled
            count += labelled
        assert float(packed_ce) == pytest.approx(total / count, rel=1e-5)
        leaky_ce = ce(cfg.data.model_copy(update={"isolate_documents": False}))
    assert abs(float(leaky_ce) - float(packed_ce)) > 1e-4


def test_chats_cut_before_their_answer_are_counted(rulm: Path, tmp_path: Path, capsys) -> None:
    """A chat whose first answer token lies past data.seq_len trains nothing: the trainer left such
    chats out without saying how many."""
    from vikhr.data.indexed import IndexedReader
    from vikhr.sft.data import build_sft_datasets
    from vikhr.train.config import load_config
    from vikhr.train.trainer import train_samples

    cfg = load_config(_config(tmp_path / "c.yaml", rulm, tmp_path / "run", data={"seq_len": 64}))
    masks = IndexedReader(f"{rulm}_mask_document")
    window = cfg.data.seq_len + 1
    unused = sum(not any(masks.document(i)[1:window]) for i in range(len(masks)))
    assert unused > 0
    capsys.readouterr()
    build_sft_datasets(cfg, train_samples(cfg))
    assert f"({unused} with no answer token left: not used)" in capsys.readouterr().err


def test_two_sft_datasets_blend_by_weight(rulm: Path, shared_data: Path, tmp_path: Path) -> None:
    from vikhr.sft.data import build_sft_datasets
    from vikhr.train.config import load_config
    from vikhr.train.trainer import train_samples

    chatml = tmp_path / "chatml"
    source = shared_data / "sft" / "rulm-self-instruct.chat.jsonl"
    prepare_sft(source, MISTRAL_TOKENIZER, chatml, template="chatml", max_chats=200)
    blend = [
        {"prefix": str(rulm), "name": "a", "weight": 3},
        {"prefix": str(chatml), "name": "b", "weight": 1},
    ]
    cfg = load_config(_config(tmp_path / "c.yaml", rulm, tmp_path / "run", data={"train": blend}))
    data = build_sft_datasets(cfg, train_samples(cfg))
    assert len(data.train) == 20 * 8 and sorted(data.valid) == ["a", "b"]
    assert np.bincount(data.train.dataset_index).tolist() == [120, 40]
    im_start = torch.tensor(load_chat_tokenizer(MISTRAL_TOKENIZER).encode("<|im_start|>")[1:])
    for i in range(len(data.train)):  # sample i is the next unused window of its dataset
        d, j = int(data.train.dataset_index[i]), int(data.train.sample_index[i])
        assert j == int((data.train.dataset_index[:i] == d).sum())
        tokens = data.train[i]["tokens"]
        assert torch.equal(tokens, data.train.parts[d][j]["tokens"])
        has_chatml = bool(tokens.unfold(0, len(im_start), 1).eq(im_start).all(1).any())
        assert has_chatml == (d == 1), i


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.kind=chat", "config key data.kind must be pretrain or sft, got 'chat'"),
        ("data.packing=tight", "config key data.packing must be pack or pad"),
        ("model.overrides.vocab_size=512", "the SFT data holds token id"),
    ],
)
def test_bad_sft_config_is_one_line_before_allocation(
    rulm: Path, tmp_path: Path, capfd: pytest.CaptureFixture, override: str, message: str
) -> None:
    config = _config(tmp_path / "c.yaml", rulm, tmp_path / "run")
    rc, _, err = _cli(capfd, "sft", "train", "--config", str(config), override)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vikhr sft train: error: ") and message in lines[0], err
    assert not (tmp_path / "run").exists()


def test_a_blend_of_datasets_from_two_tokenizers_is_refused(
    rulm: Path, shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """Llama-2's tokenizer has Mistral's 32,000 ids, other pieces: the blend trained (exit 0) on
    two id spaces."""
    llama = tmp_path / "llama"
    source = shared_data / "sft" / "rulm-self-instruct.chat.jsonl"
    prepare_sft(source, shared_data / "tokenizers" / "llama-2.model", llama, max_chats=20)
    blend = [{"prefix": str(rulm), "name": "a"}, {"prefix": str(llama), "name": "b"}]
    config = _config(tmp_path / "c.yaml", rulm, tmp_path / "run", data={"train": blend})
    rc, _, err = _cli(capfd, "sft", "train", "--config", str(config))
    assert rc == 2
    [line] = err.strip().splitlines()
    assert "config key data.train[1].prefix: prepared with tokenizer " in line and "llama-2.model" in line
    assert "the datasets of one run share one tokenizer" in line
    assert not (tmp_path / "run").exists()


def test_a_split_that_leaves_training_no_chat_says_so(
    rulm: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """It said that no train chat had an assistant token, sending one to the chats, not the split."""
    config = _config(tmp_path / "c.yaml", rulm, tmp_path / "run")
    rc, _, err = _cli(capfd, "sft", "train", "--config", str(config), "data.split=0.001,100,0")
    assert rc == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            "data.train 'rulm': the train part of data.split '0.001,100,0' gets none of its 806 chats: "
            "give the train part a larger share"
        )
    )


def test_a_seq_len_shorter_than_every_prompt_names_the_key_to_raise(
    rulm: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """It said "no train chat has an assistant token in seq_len": which length, and what to do,
    went unsaid (the demo's --seq-len 1 ended so after four stages)."""
    config = _config(tmp_path / "c.yaml", rulm, tmp_path / "run")
    rc, _, err = _cli(capfd, "sft", "train", "--config", str(config), "data.seq_len=2")
    assert rc == 2
    assert err.strip().splitlines()[-1] == (
        "vikhr sft train: error: data.train 'rulm': no train chat has an assistant token within "
        "data.seq_len = 2 tokens (every prompt is longer): raise data.seq_len"
    )


def test_missing_mask_dataset_is_named(rulm: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    for suffix in ("_text_document.bin", "_text_document.idx", "_sft.json"):
        (tmp_path / f"half{suffix}").symlink_to(f"{rulm}{suffix}")
    config = _config(tmp_path / "c.yaml", tmp_path / "half", tmp_path / "run")
    rc, _, err = _cli(capfd, "sft", "train", "--config", str(config))
    assert rc == 2
    assert err.strip().splitlines() == [
        f"vikhr sft train: error: config key data.train[0].prefix: SFT dataset file not found: "
        f"{tmp_path}/half_mask_document.bin (write it with `vikhr sft prepare`)"
    ]


def test_a_dataset_file_prefix_or_a_pretraining_dataset_is_named(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """`sft show` / `sft train` given a file prefix of a prepared dataset (`chats_text_document`,
    `chats_sft.json`) or a `data preprocess` dataset said only that a file was missing, with the
    suffix appended twice."""
    from vikhr.assets import RU_SEED_CHATS
    from vikhr.data.indexed import write_indexed

    prefix = tmp_path / "chats"
    prepare_sft(RU_SEED_CHATS, MISTRAL_TOKENIZER, prefix, max_chats=4)
    write_indexed(tmp_path / "ru_text_document", [[1, 5, 6, 2]], "uint16")
    fix = f"(give the --output-prefix of `vikhr sft prepare`: {prefix})"
    for given in ("chats_text_document", "chats_mask_document.idx", "chats_sft.json"):
        rc, _, err = _cli(capfd, "sft", "show", str(tmp_path / given))
        assert rc == 2 and err.strip().endswith(fix), err
    for given in ("ru", "ru_text_document"):
        rc, _, err = _cli(capfd, "sft", "show", str(tmp_path / given))
        assert rc == 2 and f"{tmp_path}/ru is a pre-training dataset of `vikhr data preprocess`" in err, err
    config = _config(tmp_path / "c.yaml", tmp_path / "chats_text_document", tmp_path / "run")
    rc, _, err = _cli(capfd, "sft", "train", "--config", str(config))
    assert rc == 2 and err.strip().endswith(fix), err
    rc, out, _ = _cli(capfd, "sft", "show", str(prefix))
    assert rc == 0 and out.startswith("--- chat 0")


def test_prepare_warns_of_chats_with_an_empty_answer(tmp_path: Path, capsys) -> None:
    """An empty assistant turn trains the model to end its answer at once: prepare keeps the chat
    (the data are the user's) and says how many there are, once."""
    chats = tmp_path / "c.jsonl"
    turns = [("a", "b"), ("c", ""), ("d", "  ")]
    records = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in turns
    ]
    # An empty answer of weight 0 is not trained: nothing is learnt from it.
    untrained = [{"role": "user", "content": "e"}, {"role": "assistant", "content": "", "weight": 0}]
    records.append(
        {"messages": [*untrained, {"role": "user", "content": "f"}, {"role": "assistant", "content": "g"}]}
    )
    chats.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = prepare_sft(chats, MISTRAL_TOKENIZER, tmp_path / "x")
    assert summary.chats == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"warning: 2 of 4 chats of {chats} have an empty assistant turn: the model learns to end its answer "
        "at once there (vikhr sft build drops such chats)"
    ]


def test_prepare_refuses_an_output_prefix_whose_files_are_its_input(tmp_path: Path) -> None:
    """Chats named `mix_sft.json` prepared with the prefix `mix`: the metadata replaced them."""
    chats = tmp_path / "mix_sft.json"
    line = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    chats.write_text(line, encoding="utf-8")
    with pytest.raises(
        VikhrError, match=r"--output-prefix .*mix writes .*mix_sft\.json, which is the --input "
    ):
        prepare_sft(chats, MISTRAL_TOKENIZER, tmp_path / "mix")
    assert chats.read_text(encoding="utf-8") == line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix_sft.json"]


def test_prepare_records_the_tokenizer_as_it_was_when_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer file was hashed after the chats were encoded: one replaced meanwhile (a tokenizer
    trained again into the same place) was recorded as the dataset's tokenizer."""
    import shutil

    from vikhr.sft import prepare
    from vikhr.tokenizer.corpus import corpus_sha256

    tok = tmp_path / "tok" / "tokenizer.model"
    tok.parent.mkdir()
    shutil.copy(MISTRAL_TOKENIZER, tok)
    write = prepare._write_chats

    def replaced_meanwhile(*args: object, **kwargs: object) -> object:
        counts = write(*args, **kwargs)
        shutil.copy(MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.model", tok)
        return counts

    monkeypatch.setattr(prepare, "_write_chats", replaced_meanwhile)
    chats = tmp_path / "c.jsonl"
    chats.write_text("\n".join(varied_chat_lines(5)) + "\n", encoding="utf-8")
    summary = prepare_sft(chats, tok, tmp_path / "x")
    recorded = json.loads((tmp_path / "x_sft.json").read_text(encoding="utf-8"))
    assert summary.tokenizer_sha256 == recorded["tokenizer_sha256"] == corpus_sha256(MISTRAL_TOKENIZER)


def test_prepare_records_a_hub_snapshots_tokenizer_by_its_name(tmp_path: Path) -> None:
    """The files of a hub snapshot are links to blobs named by their hash: prepare recorded the blob,
    which the export then read as a SentencePiece .model (an error for a tokenizer.json), away from
    the tokenizer_config.json and chat template beside the link."""
    from tests.helpers import hub_snapshot, sentencepiece_with_added_tokens
    from vikhr.convert.hf_tokenizer import load_for_model
    from vikhr.sft.hf_chat import own_chat_template

    snapshot = hub_snapshot(sentencepiece_with_added_tokens(tmp_path / "tok"), tmp_path / "hub")
    chats = tmp_path / "c.jsonl"
    chats.write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    )
    summary = prepare_sft(chats, snapshot, tmp_path / "x")  # the template: the tokenizer's own
    assert summary.tokenizer == str(snapshot.resolve() / "tokenizer.json")
    assert summary.template_from == str(snapshot.resolve() / "tokenizer_config.json")
    tok = load_for_model(Path(summary.tokenizer), 32002, "_sft.json")
    assert tok.eos_id == 32000 and own_chat_template(tok) is not None


def test_prepare_rejects_unknown_template_and_missing_tokenizer(tmp_path: Path) -> None:
    chats = tmp_path / "c.jsonl"
    chats.write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    )
    with pytest.raises(VikhrError, match="unknown chat template 'alpaca'"):
        prepare_sft(chats, MISTRAL_TOKENIZER, tmp_path / "x", template="alpaca")
    with pytest.raises(VikhrError, match="tokenizer not found"):
        prepare_sft(chats, tmp_path / "nope.model", tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


@pytest.mark.parametrize("template", ["chatml", "mistral"])
def test_data_prepared_with_an_earlier_chatml_encoding_is_a_warning(template: str, tmp_path: Path) -> None:
    """chatml/qwen3 data prepared before the current chat encoding (SentencePiece answers opened with the
    dummy-prefix space; no EOS after a spelled-out <|im_end|>) trains ids the export's template never
    gives: the run says so once it starts (`doubtful_settings`); other templates' data is unaffected."""
    from vikhr.assets import RU_SEED_CHATS
    from vikhr.train.config import doubtful_settings, load_config

    prefix = tmp_path / "data" / "seed"
    prepare_sft(RU_SEED_CHATS, MISTRAL_TOKENIZER, prefix, template=template, max_chats=4)
    cfg = load_config(_config(tmp_path / "c.yaml", prefix, tmp_path / "run"))
    assert doubtful_settings(cfg) == []  # prepared now
    meta_path = Path(f"{prefix}_sft.json")
    meta = json.loads(meta_path.read_text())
    assert meta.pop("chat_encoding") == 2
    meta_path.write_text(json.dumps(meta))  # as an earlier vikhr wrote it
    doubts = doubtful_settings(cfg)
    if template == "mistral":
        assert doubts == []
    else:
        assert len(doubts) == 1 and "data.train[0].prefix" in doubts[0] and "prepare it again" in doubts[0]


def test_a_run_s_start_up_checks_read_each_sft_metadata_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks before the first step (the config's, the blend's, model.init's tokenizer, the chat
    encoding, what the checkpoints record) each read the datasets' `_sft.json` from disk again. It is
    read once; a file prepared again (renamed into place) is read anew."""
    from vikhr.atomic import write_text
    from vikhr.convert.hf_tokenizer import data_tokenizer
    from vikhr.train.config import doubtful_settings, load_config, validate
    from vikhr.train.trainer import _dataset_tokenizers

    prefix = tmp_path / "chats"
    prepare_sft(ASSETS / "sft" / "ru-seed-chats.jsonl", MISTRAL_TOKENIZER, prefix, max_chats=4)
    meta = Path(f"{prefix}_sft.json")
    reads: list[Path] = []
    read_text = Path.read_text

    def counted(self: Path, *args: object, **kwargs: object) -> str:
        reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    config = _config(tmp_path / "c.yaml", prefix, tmp_path / "run")

    def start_up_checks() -> str | None:
        """The template sha256 a checkpoint of the run would record."""
        cfg = load_config(config, [])
        validate(cfg)
        assert list(_dataset_tokenizers(cfg))
        assert doubtful_settings(cfg) == []
        recorded = data_tokenizer(cfg.to_dict(), Path.cwd(), warn=False)
        assert recorded is not None
        return recorded.template_sha256

    written_an_hour_ago(meta)  # a file written in the last seconds is read on each call
    assert start_up_checks() is None  # the Mistral template is vikhr's own: no sha256
    assert reads.count(meta) == 1
    prepared = json.loads(read_text(meta))
    write_text(meta, json.dumps({**prepared, "template_sha256": "0" * 64}))
    written_an_hour_ago(meta)
    assert start_up_checks() == "0" * 64
    assert reads.count(meta) == 2


def test_sft_metadata_written_again_within_a_time_stamp_s_tick_is_read_anew(tmp_path: Path) -> None:
    """The cached `_sft.json` was keyed on inode, size and mtime: a file written again in place (or
    renamed onto a freed inode) with the same size within one tick of the file system's clock kept
    its identity, and the start-up checks read the old metadata."""
    import os

    from vikhr.sft.layout import read_sft_json

    meta = tmp_path / "chats_sft.json"
    meta.write_text('{"max_token_id": 100}', encoding="utf-8")
    stamp = meta.stat().st_mtime_ns
    assert read_sft_json(meta) == {"max_token_id": 100}
    meta.write_text('{"max_token_id": 999}', encoding="utf-8")  # the same size, in place
    os.utime(meta, ns=(stamp, stamp))  # and within the same tick
    assert read_sft_json(meta) == {"max_token_id": 999}
