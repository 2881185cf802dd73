"""`vikhr sft build`: the collections' formats, the mix, duplicates, language and length checks, bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, child_env
from tests.helpers import files_of, run_vikhr_child
from vikhr.assets import SFT_FORMATS
from vikhr.errors import VikhrError
from vikhr.sft.build import build, cyrillic_share
from vikhr.sft.dedup import MinHasher, exact_key, first_occurrences, lsh_params, near_duplicates, normalise
from vikhr.sft.sources import Unfit, detect_format, read_chats_of

FORMATS_DIR = SFT_FORMATS
MISTRAL = REPO / "vikhr" / "assets" / "tokenizers" / "mistral-7b-v0.1.model"


def _chats(path: Path, fmt: str | None = None, max_rank: int | None = None) -> list:
    out = []
    for where, item in read_chats_of(path, fmt, max_rank):
        assert not isinstance(item, Unfit), f"{where}: {item}"
        out.extend(item)
    return out


def _config(tmp_path: Path, sources: list[dict], **keys) -> Path:
    cfg = {
        "output": str(tmp_path / "out" / "chats.jsonl"),
        "tokenizer": str(MISTRAL),
        "limits": {"min_tokens": 4, "max_tokens": 1024},
        "sources": sources,
        **keys,
    }
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _written(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- formats


def test_saiga_messages_with_bot_role_and_system() -> None:
    path = FORMATS_DIR / "saiga.jsonl"
    assert detect_format(path) == "messages"
    chats = _chats(path)
    assert [len(c.messages) for c in chats] == [3, 4, 2]
    assert chats[0].messages[0][0] == "system" and chats[0].messages[2] == (
        "assistant",
        "Столица Франции — Париж.",
    )
    assert [r for r, _ in chats[1].messages] == ["user", "assistant", "user", "assistant"]
    assert chats[0].id == "saiga.jsonl:1"  # no id field: the record's place


def test_reasoning_content_is_kept_in_the_think_form(tmp_path: Path) -> None:
    """An assistant turn's separate reasoning (Qwen3 / DeepSeek-R1 "reasoning_content") goes into
    the content before the answer, not lost; on any other turn it makes the record unfit."""
    path = tmp_path / "r1.jsonl"
    records = [
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "reasoning_content": "Два и два."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "2+2?", "reasoning_content": "?"},
                {"role": "assistant", "content": "4"},
            ]
        },
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    items = [item for _, item in read_chats_of(path, "messages")]
    assert items[0][0].messages[1] == ("assistant", "<think>\nДва и два.\n</think>\n\n4")
    assert isinstance(items[1], Unfit) and items[1].reason == "bad_record"
    # An empty reasoning_content, on any turn, is nothing to keep (converted sets put it everywhere).
    from vikhr.sft.template import with_reasoning

    assert with_reasoning("hi", "", "user", 1) == "hi" and with_reasoning("4", "", "assistant", 2) == "4"
    assert "turn 1: only an assistant message may carry reasoning_content" in str(items[1])


def test_records_that_do_not_pair_up_or_rank_from_one_are_unfit(tmp_path: Path) -> None:
    """Column-form messages with more contents than roles lost the extra text silently; a Nectar
    rank of 0, below 0 or NaN sorted before rank 1 and chose that answer."""
    path = tmp_path / "odd.jsonl"
    columns = {"messages": {"role": ["user", "assistant"], "content": ["2+2?", "4", "лишнее"]}}
    path.write_text(json.dumps(columns, ensure_ascii=False) + "\n", encoding="utf-8")
    [(_, item)] = read_chats_of(path, "messages")
    assert isinstance(item, Unfit) and item.reason == "bad_record" and "2 roles and 3 contents" in str(item)
    for rank in ("0", "-5", "NaN"):
        record = (
            '{"prompt": "\\n\\nHuman: 2+2?\\n\\nAssistant:", "answers": ['
            f'{{"answer": "5", "model": "a", "rank": {rank}}}, {{"answer": "4", "model": "b", "rank": 1}}]}}'
        )
        path.write_text(record + "\n", encoding="utf-8")
        [(_, item)] = read_chats_of(path, "nectar")
        assert isinstance(item, Unfit) and "with a rank >= 1" in str(item), rank


def test_sharegpt_conversations_of_openhermes_and_veles() -> None:
    path = FORMATS_DIR / "veles.jsonl"
    assert detect_format(path) == "sharegpt"
    first, second = _chats(path)
    assert first.messages == (
        ("system", "Вы — полезный помощник."),
        ("user", "Сколько будет 12 умножить на 12?"),
        ("assistant", "12 умножить на 12 равно 144."),
    )
    assert second.id == "8f3a2c1e-veles-2" and second.messages[1][1].endswith("return строка[::-1]")


def test_alpaca_input_follows_the_instruction_after_a_blank_line() -> None:
    path = FORMATS_DIR / "alpaca.jsonl"
    assert detect_format(path) == "alpaca"
    chats = _chats(path)
    assert chats[0].messages == (
        ("user", "Переведи предложение на английский язык.\n\nКошка спит на диване."),
        ("assistant", "The cat is sleeping on the sofa."),
    )
    assert chats[1].messages[0] == ("user", "Назови три основных цвета.")  # empty input: no blank line
    # An empty instruction: the input alone (it began with a blank line).
    from vikhr.sft.sources import record_chats

    [chat] = record_chats({"instruction": "", "input": " Кошка спит. ", "output": "Да."}, "alpaca", "x:1")
    assert chat.messages[0] == ("user", "Кошка спит.")


def test_llama_factory_alpaca_system_and_history_open_the_chat() -> None:
    """LLaMA-Factory's alpaca layout adds `system` and `history`: both were dropped silently."""
    from vikhr.sft.sources import record_chats

    record = {
        "instruction": "А теперь умножь на три.",
        "input": "",
        "output": "Двенадцать.",
        "system": "Отвечай словами.",
        "history": [["Сколько будет 2+2?", "Четыре."]],
    }
    [chat] = record_chats(record, "alpaca", "x:1")
    assert chat.messages == (
        ("system", "Отвечай словами."),
        ("user", "Сколько будет 2+2?"),
        ("assistant", "Четыре."),
        ("user", "А теперь умножь на три."),
        ("assistant", "Двенадцать."),
    )
    [chat] = record_chats({**record, "system": "", "history": None}, "alpaca", "x:2")
    assert chat.messages == (("user", "А теперь умножь на три."), ("assistant", "Двенадцать."))
    for history, problem in [
        ("Q", "must be a list"),
        ([["Q"]], "item 1: expected a [question, answer] pair"),
    ]:
        with pytest.raises(Unfit, match=re.escape(problem)):
            record_chats({**record, "history": history}, "alpaca", "x:3")


def test_preference_pairs_give_their_chosen_chat(tmp_path: Path) -> None:
    """DPO pairs in UltraFeedback-binarized's, HH-RLHF's and TRL's explicit-prompt layouts."""
    user = {"role": "user", "content": "Какого цвета небо?"}
    hh_prompt = "\n\nHuman: Привет\n\nAssistant: Здравствуйте!\n\nHuman: Как дела?\n\nAssistant:"
    records = [
        {  # UltraFeedback-binarized: chosen is the whole chat, prompt repeats its question
            "prompt": user["content"],
            "chosen": [user, {"role": "assistant", "content": "Голубое."}],
            "rejected": [user, {"role": "assistant", "content": "Зелёное."}],
            "score_chosen": 8.0,
        },
        {  # Anthropic HH-RLHF
            "chosen": f"{hh_prompt} Хорошо.",
            "rejected": f"{hh_prompt} Плохо.",
        },
        {"prompt": "Небо", "chosen": "голубое.", "rejected": "зелёное."},  # TRL standard, explicit prompt
        {  # TRL conversational, explicit prompt
            "prompt": [{"role": "system", "content": "Кратко."}, user],
            "chosen": [{"role": "assistant", "content": "Голубое."}],
            "rejected": [{"role": "assistant", "content": "Зелёное."}],
        },
        {"chosen": "Небо голубое.", "rejected": "Небо зелёное."},  # implicit prompt in plain text: no turns
        {"prompt": hh_prompt, "chosen": " Хорошо.", "rejected": " Плохо."},  # HH-RLHF's explicit prompt
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert detect_format(path) == "preference"
    out = [item for _, item in read_chats_of(path)]
    assert [chat.messages for [chat] in out[:4]] == [
        (("user", "Какого цвета небо?"), ("assistant", "Голубое.")),
        (("user", "Привет"), ("assistant", "Здравствуйте!"), ("user", "Как дела?"), ("assistant", "Хорошо.")),
        (("user", "Небо"), ("assistant", "голубое.")),
        (("system", "Кратко."), ("user", "Какого цвета небо?"), ("assistant", "Голубое.")),
    ]
    assert isinstance(out[4], Unfit) and out[4].reason == "bad_turns" and "\n" not in str(out[4])
    assert out[5][0].messages == out[1][0].messages


def test_a_lone_surrogate_is_an_unfit_record_not_a_crash(tmp_path: Path) -> None:
    """JSON decoding accepts "\\ud83d" alone (scraped chat dumps hold it); the tokenizer then raised
    and the whole build was lost."""
    good = {
        "conversations": [{"from": "human", "value": "Привет 😀"}, {"from": "gpt", "value": "Здравствуйте!"}]
    }
    text = json.dumps(good, ensure_ascii=True)  # the emoji as an escaped surrogate pair: fine
    bad = '{"conversations": [{"from": "human", "value": "Привет \\ud83d"}, {"from": "gpt", "value": "Да."}]}'
    jsonl, array = tmp_path / "c.jsonl", tmp_path / "c.json"
    jsonl.write_text(f"{text}\n{bad}\n", encoding="utf-8")
    array.write_text(f"[{text}, {bad}]", encoding="utf-8")
    for path in (jsonl, array):
        [(_, first), (where, second)] = list(read_chats_of(path))
        assert first[0].messages[0] == ("user", "Привет 😀")
        assert isinstance(second, Unfit) and second.reason == "bad_json"
        assert "UTF-16 surrogate" in str(second) and "\\ud83d" in str(second), where
    report = build(_config(tmp_path, [{"name": "s", "path": str(jsonl)}]))
    assert report["kept"] == 1 and report["sources"][0]["dropped"] == {"bad_json": 1}


def test_an_unknown_role_error_names_the_layouts_function_calling_turns() -> None:
    """The error listed only the plain roles: a ShareGPT file with a misspelt "observation" turn was
    told the function-calling turns it could use do not exist."""
    from vikhr.sft.sources import record_chats

    turns = [{"from": "human", "value": "Погода?"}, {"from": "observaton", "value": "{}"}]
    with pytest.raises(Unfit, match=r"not one of .*function_call, gpt, human, observation, .*tool"):
        record_chats({"conversations": turns}, "sharegpt", "x:1")
    messages = [{"role": "user", "content": "Погода?"}, {"role": "tools", "content": "{}"}]
    with pytest.raises(Unfit, match=r"not one of .*bot, developer, function, gpt, .*tool, user"):
        record_chats({"messages": messages}, "messages", "x:2")


def test_a_system_field_beside_the_turns_opens_the_chat() -> None:
    """LLaMA-Factory's ShareGPT layout (and OpenAI-style records) keep the system prompt beside the
    turns: it was dropped silently."""
    from vikhr.sft.sources import record_chats

    turns = [
        {"from": "human", "value": "Привет"},
        {"from": "gpt", "value": "Здравствуйте", "weight": 0},
        {"from": "human", "value": "Как дела?"},
        {"from": "gpt", "value": "Хорошо."},
    ]
    [chat] = record_chats({"conversations": turns, "system": "Будь краток."}, "sharegpt", "x:1")
    assert chat.messages[0] == ("system", "Будь краток.") and chat.untrained == (2,)
    messages = [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте"}]
    [chat] = record_chats({"messages": messages, "system": "Будь краток."}, "messages", "x:2")
    assert chat.messages[0] == ("system", "Будь краток.")
    own = [{"role": "system", "content": "Свой."}, *messages]
    [chat] = record_chats({"messages": own, "system": "Будь краток."}, "messages", "x:3")
    assert [r for r, _ in chat.messages] == ["system", "user", "assistant"] and chat.messages[0][1] == "Свой."
    [chat] = record_chats({"conversations": turns, "system": ""}, "sharegpt", "x:4")
    assert chat.messages[0] == ("user", "Привет") and chat.untrained == (1,)


def test_a_chat_ending_with_an_unanswered_question_is_kept_up_to_its_last_answer(tmp_path: Path) -> None:
    """Many ShareGPT dumps end with a human turn nobody answered: such chats were dropped whole as
    bad_turns. The user turns after the last answer are left out (counted as trimmed_unanswered);
    a chat with no answer before them is still refused. Two answers in a row are a chat too (a long
    answer split, a tool turn dropped between), each answer trained."""
    q1, a1 = {"from": "human", "value": "Сколько будет два плюс два?"}, {"from": "gpt", "value": "Четыре."}
    q2, a2 = {"from": "human", "value": "А три плюс три?"}, {"from": "gpt", "value": "Шесть."}
    open_question = {"from": "human", "value": "А пять плюс пять?"}
    records = {
        "one_left": [q1, a1, open_question],
        "two_left": [q1, a1, q2, a2, open_question, {"from": "human", "value": "Ответь же!"}],
        "blank_left": [q2, a2, {"from": "human", "value": " "}],
        "answered": [open_question, {"from": "gpt", "value": "Десять."}],
        "no_answer": [q1, open_question],
        "two_answers": [q1, a1, a2, open_question],
    }
    data = tmp_path / "sharegpt.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": k, "conversations": v}, ensure_ascii=False) + "\n" for k, v in records.items()
        ),
        encoding="utf-8",
    )
    no_dedup = {"exact": False, "near": False}
    report = build(_config(tmp_path, [{"name": "s", "path": str(data)}], dedup=no_dedup))
    (source,) = report["sources"]
    written = {
        r["id"]: [(m["role"], m["content"]) for m in r["messages"]]
        for r in _written(tmp_path / "out" / "chats.jsonl")
    }
    assert written == {
        "s/one_left": [("user", q1["value"]), ("assistant", a1["value"])],
        "s/two_left": [
            ("user", q1["value"]),
            ("assistant", a1["value"]),
            ("user", q2["value"]),
            ("assistant", a2["value"]),
        ],
        "s/blank_left": [("user", q2["value"]), ("assistant", a2["value"])],
        "s/answered": [("user", open_question["value"]), ("assistant", "Десять.")],
        "s/two_answers": [("user", q1["value"]), ("assistant", a1["value"]), ("assistant", a2["value"])],
    }
    assert source["trimmed_unanswered"] == 4 and source["dropped"] == {"bad_turns": 1}
    assert "expected an assistant turn after a user turn" in source["examples"]["bad_turns"][0]
    md = (tmp_path / "out" / "chats.jsonl.report.md").read_text(encoding="utf-8")
    assert "| kept | kept trimmed of unanswered turns |" in md
    assert "| s | sharegpt | 5 | 5 | 5 | 4 | bad_turns 1 |" in md


def test_trimmed_unanswered_counts_the_kept_chats_only(tmp_path: Path) -> None:
    """`trimmed_unanswered` counted every chat read whose unanswered user turns were left out, also
    those the build then dropped (too long, a duplicate, sampled out): beside `kept` in the report it
    read as a share of the mix. It counts the kept chats now."""
    question, answer = "Сколько будет два плюс два?", "Четыре."
    long_answer = "Очень длинный ответ. " * 200
    chats = [
        [question, answer, "А пять плюс пять?"],  # kept, trimmed
        [question, answer, "А шесть плюс шесть?"],  # trimmed to a duplicate of the first
        ["Расскажи длинно.", long_answer, "Ещё?"],  # trimmed, too long
        ["Привет!", "Здравствуйте."],  # kept, nothing to trim
    ]
    roles = ("human", "gpt", "human")
    data = tmp_path / "sharegpt.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "id": str(n),
                    "conversations": [{"from": r, "value": v} for r, v in zip(roles, turns, strict=False)],
                },
                ensure_ascii=False,
            )
            + "\n"
            for n, turns in enumerate(chats)
        ),
        encoding="utf-8",
    )
    limits = {"min_tokens": 4, "max_tokens": 256}
    report = build(_config(tmp_path, [{"name": "s", "path": str(data)}], limits=limits))
    (source,) = report["sources"]
    assert source["dropped"] == {"duplicate": 1, "too_long": 1} and source["kept"] == 2
    assert source["trimmed_unanswered"] == 1
    md = (tmp_path / "out" / "chats.jsonl.report.md").read_text(encoding="utf-8")
    assert "| s | sharegpt | 4 | 4 | 2 | 1 | duplicate 1, too_long 1 |" in md


def test_flan_inputs_and_targets_of_ruflan() -> None:
    """ruFLAN is published in FLAN's layout (inputs, targets, task_source, task_name, template_type), which
    no reader took ("unknown chat format"); the fixture used to dress it as Alpaca."""
    path = FORMATS_DIR / "ruflan.jsonl"
    assert detect_format(path) == "flan"
    assert [c.messages for c in _chats(path)] == [c.messages for c in _chats(FORMATS_DIR / "alpaca.jsonl")]
    from vikhr.sft.sources import record_chats

    [chat] = record_chats({"inputs": "2+2?", "target": "4"}, "flan", "x:1")  # AlexWortega/flan's "target"
    assert chat.messages == (("user", "2+2?"), ("assistant", "4"))


def test_grandmaster_conversation_and_slimorcas_empty_system(tmp_path: Path) -> None:
    """GrandMaster-PRO-MAX (the Vikhr models' SFT set) keeps its chat under "conversation", and
    SlimOrca writes an empty system turn where there is no system prompt: the first was an unknown
    format, the second dropped the chat as empty_turn."""
    grandmaster = {
        "conversation": [
            {"role": "user", "content": "Привет!"},
            {"role": "assistant", "content": "Здравствуйте."},
        ],
        "prompt_lang": "ru",
        "answer_lang": "ru",
        "cluster": 12,
    }
    slimorca = {
        "conversations": [
            {"from": "system", "value": "", "weight": None},
            {"from": "human", "value": "Translate: cat", "weight": 0.0},
            {"from": "gpt", "value": "кошка", "weight": 1.0},
        ]
    }
    (tmp_path / "gm.jsonl").write_text(json.dumps(grandmaster, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "so.jsonl").write_text(json.dumps(slimorca) + "\n", encoding="utf-8")
    assert detect_format(tmp_path / "gm.jsonl") == "messages"
    assert [c.messages for c in _chats(tmp_path / "gm.jsonl")] == [
        (("user", "Привет!"), ("assistant", "Здравствуйте."))
    ]
    assert [c.messages for c in _chats(tmp_path / "so.jsonl")] == [
        (("user", "Translate: cat"), ("assistant", "кошка"))
    ]


def test_per_turn_weights_are_kept_and_an_answer_of_weight_0_is_not_trained(tmp_path: Path) -> None:
    """ShareGPT's per-turn weight (and OpenAI's on messages): a weight-0 answer was trained."""
    from vikhr.sft.template import encode_chat, load_chat_tokenizer, parse_chat

    turns = [
        {"from": "system", "value": "", "weight": None},
        {"from": "human", "value": "Сколько будет 2+2?", "weight": 0},
        {"from": "gpt", "value": "Пять.", "weight": 0},
        {"from": "human", "value": "Неверно. Сколько?", "weight": 0.0},
        {"from": "gpt", "value": "Четыре.", "weight": 1.0},
    ]
    records = [
        {"id": "w", "conversations": turns},
        {"id": "bad", "conversations": [*turns[1:4], {**turns[4], "weight": 0.5}]},
        {"id": "none", "conversations": [*turns[1:4], {**turns[4], "weight": 0}]},
        {"id": "user1", "conversations": [{**turns[1], "weight": 1}, turns[4]]},
    ]
    path = tmp_path / "weighted.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    out = dict(read_chats_of(path))
    chat = out[f"{path}:1"][0]
    assert chat.untrained == (1,)  # after the empty system turn is left out
    written = chat.record("src")["messages"]
    assert [m.get("weight") for m in written] == [None, 0, None, None]
    reasons = {
        where.rsplit(":", 1)[1]: (e.reason, str(e)) for where, e in out.items() if isinstance(e, Unfit)
    }
    assert reasons == {
        "2": ("bad_weight", "turn 4: weight must be 0, 1 or null, got 0.5"),
        "3": ("bad_turns", "every assistant turn has weight 0 (nothing to train on)"),
        "4": (
            "bad_weight",
            "turn 1: weight 1 on a user turn: only assistant turns are trained (give it weight 0 or none)",
        ),
    }
    tok = load_chat_tokenizer(MISTRAL, "mistral")
    enc = encode_chat(parse_chat({"messages": written}), tok, "mistral")
    trained = tok.decode([t for t, m in zip(enc.ids, enc.mask, strict=True) if m])
    assert trained.strip() == "Четыре."


def test_a_json_array_file_is_read_record_by_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenHermes-2.5 and alpaca_data.json are one JSON array (1.9 GB for OpenHermes): they were an
    unknown format. Read one record at a time across read chunks; a damaged array is one Unfit."""
    import vikhr.sft.sources as sources

    monkeypatch.setattr(sources, "ARRAY_CHUNK_CHARS", 1000)  # records cross the chunks read
    records = [
        {
            "conversations": [
                {"from": "human", "value": f"вопрос {i} " + "х" * (i * 700)},
                {"from": "gpt", "value": "да"},
            ]
        }
        for i in range(12)
    ]
    path = tmp_path / "openhermes2_5.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    read = list(sources.read_records(path))
    assert [r for _, r in read] == records and read[3][0] == f"{path}:item 3"
    assert detect_format(path) == "sharegpt" and len(_chats(path)) == 12
    for text, message in (
        ('[{"a": 1} {"b": 2}]', "unexpected '{' between the array's records"),
        ('[{"a": 1},]', "unexpected ']'"),
        ('[{"a": 1}', "not closed"),
        ('[{"a": 1}]\n[{"b": 2}]', "more after the JSON array's closing ']'"),
    ):
        path.write_text(text, encoding="utf-8")
        *_, (where, last) = sources.read_records(path)
        assert isinstance(last, Unfit) and message in str(last) and where == f"{path}:item 1", text


def test_a_record_of_another_format_than_its_files_is_named_as_such(tmp_path: Path) -> None:
    """Records of two collections concatenated into one file: those of the minority format were
    unfit as '"messages" must be a non-empty list' (a field missing), not as records of another format."""
    chat = {
        "messages": [
            {"role": "user", "content": "Сколько ног у паука?"},
            {"role": "assistant", "content": "8."},
        ]
    }
    alpaca = {"instruction": "Назови столицу Франции.", "input": "", "output": "Париж."}
    sharegpt = {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4."}]}
    path = tmp_path / "mixed.jsonl"
    records = [chat, chat, alpaca, sharegpt]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    for fmt in (None, "messages"):  # detected from the first records, or given
        items = [item for _, item in read_chats_of(path, fmt)]
        assert [type(item) is list for item in items] == [True, True, False, False]
        assert [item.reason for item in items[2:]] == ["unknown_format", "unknown_format"]
        assert str(items[2]).startswith(
            "fields (input, instruction, output) are those of the alpaca format; "
        )
        assert "the file is read as messages: a file holds one format" in str(items[3])
        assert "(conversations) are those of the sharegpt format" in str(items[3])


def test_capybara_and_xtuner_exchanges_are_user_and_assistant_turns(tmp_path: Path) -> None:
    """Capybara's (LDJnr) and XTuner's `{"conversation": [{"input", "output"}, ...]}` records were
    `bad_role` ("role None"); XTuner's `system` of an exchange opens it."""
    records = [
        {
            "source": "Airoboros",
            "conversation": [
                {"input": "Привет!", "output": "Здравствуйте."},
                {"input": "Как дела?", "output": "Хорошо."},
            ],
        },
        {"conversation": [{"system": "Ты помощник.", "input": "Кто ты?", "output": "Помощник."}]},
    ]
    path = tmp_path / "capybara.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert detect_format(path) == "messages"
    assert [c.messages for c in _chats(path)] == [
        (
            ("user", "Привет!"),
            ("assistant", "Здравствуйте."),
            ("user", "Как дела?"),
            ("assistant", "Хорошо."),
        ),
        (("system", "Ты помощник."), ("user", "Кто ты?"), ("assistant", "Помощник.")),
    ]


def test_the_turns_fields_tell_the_format_whatever_the_list_is_called(tmp_path: Path) -> None:
    """unsloth's `standardize_sharegpt` and axolotl's chat_template datasets keep OpenAI's
    `{"role", "content"}` turns under "conversations", and some sets keep ShareGPT's `{"from",
    "value"}` under "messages": every such file stopped the build ("turn 1 value must be a string,
    got NoneType", "role None is not one of …"). The turns are read by their own fields, with the
    features of their layout (OpenAI's content parts, ShareGPT's record-level system)."""
    expected = [(("system", "Ты гид."), ("user", "Расскажи о Москве."), ("assistant", "Столица России."))]
    openai = [
        {"role": "system", "content": "Ты гид."},
        {"role": "user", "content": [{"type": "text", "text": "Расскажи о Москве."}]},
        {"role": "assistant", "content": "Столица России."},
    ]
    sharegpt = [{"from": "human", "value": "Расскажи о Москве."}, {"from": "gpt", "value": "Столица России."}]
    for name, record, fmt in [
        ("standardized.jsonl", {"conversations": openai}, "messages"),
        ("sharegpt_as_messages.jsonl", {"system": "Ты гид.", "messages": sharegpt}, "sharegpt"),
    ]:
        path = tmp_path / name
        path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
        assert detect_format(path) == fmt
        assert [c.messages for c in _chats(path)] == expected, name


def test_messages_given_as_their_json_text_are_read_as_the_list(tmp_path: Path) -> None:
    """orca-agentinstruct-1M stores each chat's `messages` as JSON text: every record was
    `bad_record`. Text that does not parse is `bad_record` naming where it breaks."""
    chat = [{"role": "system", "content": ""}, {"role": "user", "content": "Вопрос?"}]
    chat.append({"role": "assistant", "content": "Ответ."})
    lines = [
        json.dumps({"messages": json.dumps(chat, ensure_ascii=False), "split": "open_domain_qa"}),
        json.dumps({"messages": '[{"role": "user", "content": "Вопрос?"'}),
    ]
    path = tmp_path / "orca.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (_, first), (_, broken) = list(read_chats_of(path))
    assert [c.messages for c in first] == [(("user", "Вопрос?"), ("assistant", "Ответ."))]
    assert isinstance(broken, Unfit) and broken.reason == "bad_record"
    assert str(broken).startswith('"messages" is not valid JSON (')


def test_openais_developer_turn_is_the_system_turn(tmp_path: Path) -> None:
    """OpenAI's newer models name the system turn `developer`: such a record was `bad_role`. An
    empty one is left out as an empty system turn is (and an opening system turn of null, which was
    `bad_record`); with content parts it is their text."""
    records = [
        [{"role": "developer", "content": "Отвечай кратко."}, {"role": "user", "content": "Столица?"}],
        [{"role": "developer", "content": ""}, {"role": "user", "content": "Столица?"}],
        [{"role": "system", "content": None}, {"role": "user", "content": "Столица?"}],
        [
            {"role": "developer", "content": [{"type": "text", "text": "Кратко."}]},
            {"role": "user", "content": "Да?"},
        ],
    ]
    path = tmp_path / "developer.jsonl"
    path.write_text(
        "".join(
            json.dumps({"messages": [*r, {"role": "assistant", "content": "Париж."}]}) + "\n" for r in records
        ),
        encoding="utf-8",
    )
    assert [c.messages for c in _chats(path)] == [
        (("system", "Отвечай кратко."), ("user", "Столица?"), ("assistant", "Париж.")),
        (("user", "Столица?"), ("assistant", "Париж.")),
        (("user", "Столица?"), ("assistant", "Париж.")),
        (("system", "Кратко."), ("user", "Да?"), ("assistant", "Париж.")),
    ]


def test_openai_content_parts_are_joined_text(tmp_path: Path) -> None:
    """OpenAI's content as a list of parts ([{"type": "text", "text": …}]) made every record
    bad_record ("content must be a string, got list"); an image part has no text to train on."""

    def parts(*texts: str) -> list[dict[str, str]]:
        return [{"type": "text", "text": t} for t in texts]

    records = [
        {
            "messages": [
                {"role": "system", "content": parts("Отвечай кратко.")},
                {"role": "user", "content": parts("Столица Франции? ", "Одним словом.")},
                {"role": "assistant", "content": parts("Париж.")},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                {"role": "assistant", "content": "Кот."},
            ]
        },
    ]
    path = tmp_path / "openai.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    (_, first), (_, image) = list(read_chats_of(path))
    assert [c.messages for c in first] == [
        (("system", "Отвечай кратко."), ("user", "Столица Франции? Одним словом."), ("assistant", "Париж."))
    ]
    assert isinstance(image, Unfit) and image.reason == "bad_record"
    assert str(image).startswith('turn 1 content part 1 is \'image_url\', not {"type": "text", ')


def test_dolly_and_orca_columns(tmp_path: Path) -> None:
    """databricks-dolly-15k's instruction/context/response and OpenOrca's system_prompt/question/
    response columns were unknown formats."""
    dolly = [
        {
            "instruction": "Кто написал «Войну и мир»?",
            "context": "",
            "response": "Лев Толстой.",
            "category": "open_qa",
        },
        {
            "instruction": "Сократи текст.",
            "context": " Длинный текст. ",
            "response": "Текст.",
            "category": "summarization",
        },
    ]
    orca = [
        {"id": "niv.1", "system_prompt": "Ты — полезный помощник.", "question": "2+2?", "response": "4."},
        {"id": "cot.2", "system_prompt": "", "question": "3+3?", "response": "6."},
    ]
    for name, records in (("dolly", dolly), ("orca", orca)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        assert detect_format(path) == name
    assert [c.messages for c in _chats(tmp_path / "dolly.jsonl")] == [
        (("user", "Кто написал «Войну и мир»?"), ("assistant", "Лев Толстой.")),
        (("user", "Сократи текст.\n\nДлинный текст."), ("assistant", "Текст.")),
    ]
    assert [c.messages for c in _chats(tmp_path / "orca.jsonl")] == [
        (("system", "Ты — полезный помощник."), ("user", "2+2?"), ("assistant", "4.")),
        (("user", "3+3?"), ("assistant", "6.")),  # an empty system prompt: none
    ]


def test_oasst_trees_give_their_main_branch() -> None:
    """OpenAssistant's message rows (oasst1/oasst2) had no reader: each tree gives the chat of its
    best-ranked replies, without deleted messages or those that failed their review; a tree whose
    first message is deleted, or that has no answer, gives none (counted)."""
    path = FORMATS_DIR / "oasst.jsonl"
    assert detect_format(path) == "oasst"
    items = list(read_chats_of(path))
    chats = [c for _, item in items if not isinstance(item, Unfit) for c in item]
    assert [c.messages for c in chats] == [
        (
            ("user", "Как приготовить борщ?"),
            ("assistant", "Сначала сварите мясной бульон, затем добавьте свёклу, капусту и картофель."),
            ("user", "А сколько варить свёклу?"),
            ("assistant", "Около сорока минут."),
        )
    ]
    assert chats[0].id == "6ab24d72-0181-4594-a9cd-deaf170242fb"
    unfit = [(where.rpartition(":")[2], item.reason) for where, item in items if isinstance(item, Unfit)]
    assert unfit == [("8", "bad_record"), ("10", "bad_turns")]


def test_oasst_max_rank_gives_a_chat_per_branch_through_the_best_replies() -> None:
    """Only a tree's main branch could be read (max_rank was ignored for OASST): Open-Assistant's SFT
    data takes every branch. With max_rank 2 the second-best answer is a chat of its own, a branch
    that ends with an unanswered question ends with the answer before it, and a wider rank adds
    nothing where no step has more replies."""
    path = FORMATS_DIR / "oasst.jsonl"
    tree = "6ab24d72-0181-4594-a9cd-deaf170242fb"
    for max_rank in (2, 5):
        items = list(read_chats_of(path, None, max_rank))
        chats = [c for _, item in items if not isinstance(item, Unfit) for c in item]
        assert [(c.id, c.group, c.messages[1:]) for c in chats] == [
            (
                f"{tree}#0",
                tree,
                (
                    (
                        "assistant",
                        "Сначала сварите мясной бульон, затем добавьте свёклу, капусту и картофель.",
                    ),
                    ("user", "А сколько варить свёклу?"),
                    ("assistant", "Около сорока минут."),
                ),
            ),
            (f"{tree}#1", tree, (("assistant", "Сварите бульон и добавьте свёклу."),)),
        ]
        unfit = [(where.rpartition(":")[2], item.reason) for where, item in items if isinstance(item, Unfit)]
        assert unfit == [("8", "bad_record"), ("10", "bad_turns")]
    assert [
        c.id for _, item in read_chats_of(path, None, 1) if not isinstance(item, Unfit) for c in item
    ] == [tree]


def test_max_rank_on_a_source_without_ranks_is_refused(tmp_path: Path) -> None:
    """max_rank on a messages source was ignored without a word."""
    path = _config(tmp_path, [{"name": "saiga", "path": str(FORMATS_DIR / "saiga.jsonl"), "max_rank": 2}])
    with pytest.raises(
        VikhrError,
        match=r"source saiga: max_rank keeps ranked answers of nectar and oasst records, and "
        r".*saiga.jsonl is read as messages: leave max_rank out of this source",
    ):
        build(path)
    assert list((tmp_path / "out").iterdir()) == []


def test_an_oasst_row_that_is_its_own_ancestor_is_unfit_not_a_hang(tmp_path: Path) -> None:
    """A row whose parent_id loops back (here a copy of the last answer naming itself as parent) made the
    walk down the tree go on for ever, its branch growing until memory ran out."""
    rows = [
        json.loads(line) for line in (FORMATS_DIR / "oasst.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    answer = next(r for r in rows if r["text"] == "Около сорока минут.")  # the main branch's last
    looping = {**answer, "parent_id": answer["message_id"]}
    path = tmp_path / "oasst.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [*rows, looping]), encoding="utf-8"
    )
    code = (
        "import sys; from vikhr.sft.sources import read_chats_of\n"
        "for where, item in read_chats_of(sys.argv[1]):\n"
        "    reason = getattr(item, 'reason', None)\n"
        "    print(where.rpartition(':')[2], reason or 'chat', item if reason else '')"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert run.returncode == 0, run.stderr
    looped = f"1 bad_record message {answer['message_id']!r} is its own ancestor (its parent_id loops back)"
    assert run.stdout.splitlines()[0] == looped


def test_nectar_keeps_the_best_ranked_answer_or_all_up_to_a_rank() -> None:
    path = FORMATS_DIR / "nectar.jsonl"
    assert detect_format(path) == "nectar"
    best = _chats(path)
    # The first record lists its answers worst first: rank 1.0 is chosen, not the first listed.
    assert best[0].messages == (
        ("user", "What is the boiling point of water at sea level?"),
        ("assistant", "Water boils at 100 °C (212 °F) at sea level."),
    )
    assert best[1].messages == (
        ("user", "Give me a synonym for happy."),
        ("assistant", "Joyful."),
        ("user", "Another one, please."),
        ("assistant", "Cheerful."),
    )
    two = _chats(path, max_rank=2)
    assert [c.messages[-1][1] for c in two] == [
        "Water boils at 100 °C (212 °F) at sea level.",
        "It boils at 100 degrees Celsius.",
        "Cheerful.",
        "Content.",
    ]
    assert len({c.group for c in two}) == 2 and len({c.id for c in two}) == 4
    # All seven answers of the second record: its rank-7 answer is empty, an unfit record.
    items = [item for _, item in read_chats_of(path, None, 7)]
    assert isinstance(items[1], Unfit) and items[1].reason == "empty_turn"


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_compressed_and_parquet_files_give_the_same_chats(tmp_path: Path, suffix: str) -> None:
    source = FORMATS_DIR / "saiga.jsonl"
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    path = tmp_path / f"saiga{suffix}"
    if suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress(source.read_bytes()))
    elif suffix == ".jsonl.zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(source.read_bytes()))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # "messages" as a list of structs, two row groups.
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=2)
        assert pq.ParquetFile(path).num_row_groups == 2
    assert [c.messages for c in _chats(path)] == [c.messages for c in _chats(source)]


def test_hf_column_layout_of_messages(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # datasets stores a Sequence of {role, content} as a struct of lists: a dict of lists in Python.
    record = {"messages": {"role": ["user", "bot"], "content": ["Привет", "Здравствуйте!"]}, "id": 7}
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([record]), path)
    assert pq.read_schema(path).field("messages").type == pa.struct(
        [("role", pa.list_(pa.string())), ("content", pa.list_(pa.string()))]
    )
    (chat,) = _chats(path)
    assert chat.messages == (("user", "Привет"), ("assistant", "Здравствуйте!")) and chat.id == "7"


def test_keep_where_filters_records_by_their_quality_fields(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """saiga_scored carries opus_score and is_bad_by_regex, ru_turbo_alpaca a label: those were kept
    whatever they said. keep_where keeps a record by value, list of values or number range; the rest
    are counted as not_kept; a yes/no field matches only true/false (not 0/1)."""
    chat = [{"role": "user", "content": "Привет, как дела?"}, {"role": "bot", "content": "Хорошо, спасибо!"}]
    records = [
        {"messages": chat, "opus_score": 9, "is_bad_by_regex": False, "id": "good"},
        {"messages": chat, "opus_score": 2, "is_bad_by_regex": False, "id": "low"},
        {"messages": chat, "opus_score": 10, "is_bad_by_regex": True, "id": "regex"},
        {"messages": chat, "opus_score": 9, "is_bad_by_regex": 0, "id": "zero"},
        {"messages": chat, "id": "unscored"},
    ]
    path = tmp_path / "saiga_scored.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    keep = {"opus_score": {"min": 8}, "is_bad_by_regex": False}
    cfg = _config(tmp_path, [{"name": "s", "path": str(path), "keep_where": keep}], dedup={"exact": False})
    report = build(cfg)
    assert [r["id"] for r in _written(tmp_path / "out" / "chats.jsonl")] == ["s/good"]
    dropped = report["sources"][0]["dropped"]
    assert dropped == {"not_kept": 4}, dropped

    from vikhr.sft.build_config import load_build_config

    labels = _config(tmp_path, [{"name": "s", "path": str(path), "keep_where": {"opus_score": [9, 10]}}])
    assert load_build_config(labels).sources[0].not_kept({"opus_score": 2}) == (
        "opus_score = 2, not [9, 10] (keep_where)"
    )
    bad = _config(tmp_path, [{"name": "s", "path": str(path), "keep_where": {"opus_score": {"mn": 8}}}])
    rc, _, err = _cli(capfd, "sft", "build", str(bad), "--no-progress")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "keep_where" in err, err


def test_bundled_rulm_seed_tasks_give_the_chats_of_the_chat_file(shared_data: Path) -> None:
    sft = shared_data / "sft"
    seeds = sft / "ru_alpaca_seed_tasks.jsonl"
    assert detect_format(seeds) == "alpaca"
    from_seeds = {c.messages for c in _chats(seeds)}
    chat_file = sft / "rulm-self-instruct.chat.jsonl"
    assert detect_format(chat_file) == "messages"
    chats = _chats(chat_file)
    assert len(chats) == 806
    seed_chats = {c.messages for c in chats if c.id.startswith("rulm/ru_alpaca_seed_tasks/")}
    # The chat file was made from the seed tasks with the same instruction + blank line + input rule.
    assert len(seed_chats) > 100 and seed_chats == from_seeds


# --------------------------------------------------------------------------- build


def test_tiny_config_builds_a_mix_that_prepare_accepts(tmp_path: Path) -> None:
    from vikhr.sft.prepare import prepare_sft

    out = tmp_path / "chats.jsonl"
    report = _in_repo(lambda: build(REPO / "configs" / "sft-mix-tiny.yaml", out))
    by_name = {s["name"]: s for s in report["sources"]}
    assert {n: s["kept"] for n, s in by_name.items()} == {"saiga": 3, "ruflan": 2, "veles": 2, "nectar": 4}
    assert by_name["ruflan"]["dropped"] == {"sampled_out": 1}
    assert by_name["nectar"]["formats"] == {"vikhr/assets/sft/formats/nectar.jsonl": "nectar"}
    written = _written(out)
    assert [r["source"] for r in written] == ["saiga"] * 3 + ["ruflan"] * 2 + ["veles"] * 2 + ["nectar"] * 4
    assert len({r["id"] for r in written}) == len(written)
    summary = prepare_sft(out, MISTRAL, tmp_path / "sft")
    assert summary.chats == 11 and summary.tokens == report["tokens"]
    md = (tmp_path / "chats.jsonl.report.md").read_text(encoding="utf-8")
    assert "| ruflan | ru | 2 | 18.2% |" in md
    assert json.loads((tmp_path / "chats.jsonl.report.json").read_text())["kept"] == 11


def _in_repo(call):
    import os

    old = os.getcwd()
    os.chdir(REPO)  # the shipped config's paths are relative to the repository
    try:
        return call()
    finally:
        os.chdir(old)


def test_sampling_is_seeded_and_deterministic(tmp_path: Path) -> None:
    ruflan = str(FORMATS_DIR / "ruflan.jsonl")
    picks = []
    for seed in (1, 1, 2, 3, 4, 5):
        cfg = _config(tmp_path, [{"name": "ruflan", "path": ruflan, "count": 1}], seed=seed)
        build(cfg)
        picks.append((tmp_path / "out" / "chats.jsonl").read_bytes())
    assert picks[0] == picks[1]
    assert len(set(picks)) > 1  # another seed picks another chat


def test_a_build_does_not_depend_on_the_hash_seed_or_the_thread_count(tmp_path: Path) -> None:
    """Duplicates, near duplicates and the sampling decided in two processes of other string hash
    seeds and thread counts give the same mix and reports, byte for byte (builds in one process
    share both)."""
    seed_chats = REPO / "vikhr" / "assets" / "sft" / "ru-seed-chats.jsonl"
    records = [json.loads(line) for line in seed_chats.read_text(encoding="utf-8").splitlines()][:60]
    variants = tmp_path / "variants.jsonl"
    with open(variants, "w", encoding="utf-8") as f:
        for i, record in enumerate(records):
            prompt = record["messages"][0]["content"]
            # Upper case: an exact duplicate once normalised; words added: a near duplicate; the
            # words reversed: a chat of its own.
            reversed_words = " ".join(prompt.split()[::-1])
            changed = [prompt.upper(), prompt + " Пожалуйста, подробно.", reversed_words][i % 3]
            messages = [{"role": "user", "content": changed}, *record["messages"][1:]]
            f.write(json.dumps({"id": f"v{i}", "messages": messages}, ensure_ascii=False) + "\n")
    sources = [
        {"name": "seeds", "path": str(seed_chats), "count": 90},
        {"name": "variants", "path": str(variants), "fraction": 0.5},
        {"name": "nectar", "path": str(FORMATS_DIR / "nectar.jsonl"), "max_rank": 3, "count": 4},
    ]
    dedup = {"exact": True, "near": True, "threshold": 0.5, "num_perm": 64}
    config = _config(tmp_path, sources, seed=11, dedup=dedup)
    outputs = []
    for seed in (1, 2):
        run_vikhr_child(["sft", "build", str(config), "--no-progress"], hash_seed=seed, threads=seed)
        outputs.append(files_of(tmp_path / "out"))
    assert outputs[0] == outputs[1]
    dropped = json.loads(outputs[0]["chats.jsonl.report.json"])["sources"][1]["dropped"]
    assert {"duplicate", "near_duplicate", "sampled_out"} <= dropped.keys()


def _chat_line(prompt: str, answer: str, **extra) -> str:
    record = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    return json.dumps({**record, **extra}, ensure_ascii=False)


LONG_PROMPT = (
    "Напиши подробное письмо директору школы с просьбой перенести родительское собрание на следующую "
    "неделю, потому что многие родители уезжают на праздники и не смогут прийти вовремя, а вопрос важный"
)


def test_exact_and_near_duplicates_are_removed(tmp_path: Path) -> None:
    lines = [
        _chat_line("Сколько ног у паука?", "Восемь."),
        _chat_line("  сколько НОГ у паука ", "восемь"),  # exact after normalisation
        _chat_line(LONG_PROMPT, "Уважаемый директор, ..."),
        _chat_line(LONG_PROMPT.replace("важный", "очень важный"), "Добрый день, ..."),  # near
        _chat_line(LONG_PROMPT.replace("школы", "гимназии").replace("праздники", "каникулы"), "Здравствуйте"),
        _chat_line("Сколько ног у жука?", "Шесть."),  # a different question
        _chat_line("Назови столицу Италии.", "Рим."),
    ]
    data = tmp_path / "dups.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = build(_config(tmp_path, [{"name": "s", "path": str(data)}]))
    (source,) = report["sources"]
    assert source["dropped"] == {"duplicate": 1, "near_duplicate": 1}
    # The report names each repeat and the chat it repeats.
    assert source["examples"]["duplicate"] == [f"{data}:2: repeats {data}:1 (s/dups.jsonl:1)"]
    assert source["examples"]["near_duplicate"] == [f"{data}:4: repeats {data}:3 (s/dups.jsonl:3)"]
    kept = [r["messages"][0]["content"] for r in _written(tmp_path / "out" / "chats.jsonl")]
    assert kept[0] == "Сколько ног у паука?" and kept[1] == LONG_PROMPT
    assert "Сколько ног у жука?" in kept and "Назови столицу Италии." in kept
    # Two words changed in 30: Jaccard of 3-grams ≈ 0.7, under the 0.8 threshold — kept.
    assert any("гимназии" in k for k in kept)
    off = build(_config(tmp_path, [{"name": "s", "path": str(data)}], dedup={"exact": False, "near": False}))
    assert off["kept"] == 7


def test_a_later_sources_copy_of_a_chat_an_earlier_sources_sampling_left_out_stays(tmp_path: Path) -> None:
    """Duplicates were marked over every source before sampling: a chat of `big` (6 chats, count 1)
    that `small` also holds was dropped from `small` as a duplicate, then sampled out of `big` —
    in neither. A later source's copy is now dropped only when the mix holds the earlier one."""
    questions = [f"Вопрос про число {i}: сколько это будет?" for i in range(6)]
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_text("".join(_chat_line(q, f"Ответ {i}.") + "\n" for i, q in enumerate(questions)), "utf-8")
    small.write_text(
        "".join(_chat_line(q, f"Ответ {i}.") + "\n" for i, q in enumerate(questions[:3])), "utf-8"
    )
    sources = [{"name": "big", "path": str(big), "count": 1}, {"name": "small", "path": str(small)}]
    report = build(_config(tmp_path, sources))
    kept = [r["messages"][0]["content"] for r in _written(tmp_path / "out" / "chats.jsonl")]
    # The seed (1234) draws big's last chat, which small does not hold: all of small's stay.
    assert kept == [questions[5], *questions[:3]]
    assert report["sources"][1]["dropped"] == {}
    # The same with near duplicates (the exact check off): big draws its second chat, so small's
    # near copy of the first stays.
    near_big, near_small = tmp_path / "near" / "big.jsonl", tmp_path / "near" / "small.jsonl"
    near_big.parent.mkdir()
    near_copy = LONG_PROMPT.replace("важный", "очень важный")
    near_big.write_text(
        _chat_line(LONG_PROMPT, "Уважаемый директор")
        + "\n"
        + _chat_line("Назови столицу Италии.", "Рим.")
        + "\n",
        "utf-8",
    )
    near_small.write_text(_chat_line(near_copy, "Добрый день") + "\n", "utf-8")
    sources = [{"name": "big", "path": str(near_big), "count": 1}, {"name": "small", "path": str(near_small)}]
    report = build(_config(tmp_path, sources, dedup={"exact": False, "near": True}))
    kept = [r["messages"][0]["content"] for r in _written(tmp_path / "out" / "chats.jsonl")]
    assert kept == ["Назови столицу Италии.", near_copy]
    assert report["sources"][1]["dropped"] == {}
    # A copy of a chat the mix holds is still dropped.
    sources[0].pop("count")
    report = build(_config(tmp_path, sources, dedup={"exact": False, "near": True}))
    assert report["sources"][1]["dropped"] == {"near_duplicate": 1}


def test_a_shared_system_prompt_does_not_make_different_tasks_near_duplicates(tmp_path: Path) -> None:
    """The system turn was part of the compared prompt: a collection's long shared system prompt made
    short, different tasks look alike (372 of 806 rulm chats dropped)."""
    system = " ".join(["Ты — вежливый и точный русскоязычный ассистент, отвечай по существу и кратко."] * 4)
    tasks = [
        "Напиши хайку о лете.",
        "Ночь : День = Зима : ?",
        "Назови столицу Италии.",
        "Сколько ног у жука?",
    ]
    lines = [
        json.dumps(
            {
                "id": str(i),
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": task},
                    {"role": "assistant", "content": f"Ответ {i}."},
                ],
            },
            ensure_ascii=False,
        )
        for i, task in enumerate(tasks)
    ]
    data = tmp_path / "system.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = build(_config(tmp_path, [{"name": "s", "path": str(data)}]))
    assert report["kept"] == 4 and report["sources"][0]["dropped"] == {}


def test_answers_of_one_nectar_prompt_are_not_near_duplicates(tmp_path: Path) -> None:
    nectar = {"name": "n", "path": str(FORMATS_DIR / "nectar.jsonl"), "max_rank": 3}
    report = build(_config(tmp_path, [nectar]))
    assert report["kept"] == 6 and report["sources"][0]["dropped"] == {}


def test_minhash_estimates_jaccard_and_lsh_params_match_datasketch() -> None:
    datasketch = pytest.importorskip("datasketch")
    from datasketch.lsh import _optimal_param

    for threshold, num_perm in ((0.8, 128), (0.5, 64), (0.9, 256)):
        assert lsh_params(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
    hasher = MinHasher(num_perm=256, threshold=0.8, seed=3)
    a = " ".join(f"слово{i}" for i in range(200))
    b = " ".join(f"слово{i}" for i in range(50, 250))  # 148 of 248 shingles shared
    sa, sb = hasher.signatures([a, b])
    true = 148 / 250
    assert abs(np.mean(sa == sb) - true) < 0.08
    reference = [datasketch.MinHash(num_perm=256, seed=3) for _ in range(2)]
    for m, text in zip(reference, (a, b), strict=True):
        words = normalise(text).split()
        m.update_batch([" ".join(words[i : i + 3]).encode() for i in range(len(words) - 2)])
    assert abs(np.mean(sa == sb) - reference[0].jaccard(reference[1])) < 0.1


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("  Привет,  МИР!! snake_case ﬁle ①² ", "привет мир snake case file 12"),
        ("ё\u0301ж — 3,14\u00a0%", "ё ж 3 14"),  # a combining mark is not a letter
        ("___", ""),
        ("", ""),
        ("ΣΑΣ straße İ", "σασ strasse i"),
    ],
)
def test_normalise_folds_case_and_makes_each_run_of_non_letters_one_space(text: str, normalised: str) -> None:
    assert normalise(text) == normalised


def test_signatures_computed_a_piece_at_a_time_equal_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signature matrix is bounded by `SHINGLES_AT_ONCE` (a batch of long prompts took GBs):
    pieces that cut texts anywhere, one text spanning several, give the same signatures."""
    import vikhr.sft.dedup as dedup

    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{x}" for x in rng.integers(0, 60, size=n)) for n in (1, 2, 3, 40, 7, 130, 5, 0, 64)]
    hasher = MinHasher(num_perm=64, threshold=0.8, seed=5)
    whole = hasher.signatures(texts)
    assert dedup.SHINGLES_AT_ONCE > 300  # the texts above fit in one piece by default
    for piece in (1, 2, 7, 50):
        monkeypatch.setattr(dedup, "SHINGLES_AT_ONCE", piece)
        assert np.array_equal(hasher.signatures(texts), whole), piece


def test_duplicate_marks_on_arrays() -> None:
    keys = np.array([5, 7, 5, 9, 7], dtype=np.uint64)
    assert first_occurrences(keys).tolist() == [0, 1, 0, 3, 1]
    bands = np.array([[1, 2], [3, 4], [5, 2], [1, 9], [6, 7]], dtype=np.uint64)
    groups = np.array([0, 1, 2, 0, 3], dtype=np.uint64)
    # row 2 shares band 1 with row 0 (another group); row 3 shares band 0 with row 0 (same group)
    assert near_duplicates(bands, groups).tolist() == [-1, -1, 0, -1, -1]
    # the earliest match over all bands: row 3 shares band 0 with row 2 and band 1 with row 0
    bands = np.array([[1, 2], [3, 4], [5, 6], [5, 2]], dtype=np.uint64)
    assert near_duplicates(bands, np.arange(4, dtype=np.uint64)).tolist() == [-1, -1, -1, 0]
    assert exact_key("Привет,  МИР!") == exact_key("привет мир")


def test_language_and_length_checks(tmp_path: Path) -> None:
    assert cyrillic_share("Привет") == 1.0 and cyrillic_share("Hello") == 0.0 and cyrillic_share("123") == 0.0
    assert cyrillic_share("Да yes") == pytest.approx(2 / 5)
    data = tmp_path / "mixed.jsonl"
    data.write_text(
        "\n".join(
            [
                _chat_line("Как дела?", "Хорошо, спасибо!"),
                _chat_line("How are you?", "Fine, thanks!"),
                _chat_line("Переведи: good morning", "Доброе утро"),
                _chat_line("Перечисли числа от одного до ста словами.", " ".join(["сто"] * 400)),
                _chat_line("Да?", "Да."),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    src = {"name": "ru", "path": str(data), "language": "ru", "min_cyrillic_share": 0.5}
    report = build(_config(tmp_path, [src], limits={"min_tokens": 14, "max_tokens": 200}))
    assert report["sources"][0]["dropped"] == {"not_russian": 1, "too_long": 1, "too_short": 1}
    kept = [r["messages"][0]["content"] for r in _written(tmp_path / "out" / "chats.jsonl")]
    assert kept == ["Как дела?", "Переведи: good morning"]


# --------------------------------------------------------------------------- bad input


def test_a_dropped_chats_example_names_its_place_once(tmp_path: Path) -> None:
    """A record without an id is named by its place, which the example line then said twice
    ("chats.jsonl:1: chats.jsonl:1: 12 tokens"); a record's id is still given after its place."""
    data = tmp_path / "chats.jsonl"
    chat = [{"role": "user", "content": "Привет!"}, {"role": "assistant", "content": "Здравствуйте."}]
    data.write_text(
        json.dumps({"messages": chat}, ensure_ascii=False)
        + "\n"
        + json.dumps({"id": "c2", "messages": chat}, ensure_ascii=False)
        + "\n"
        + json.dumps(
            {"messages": [chat[0], {"role": "assistant", "content": "Слово. " * 100}]}, ensure_ascii=False
        )
        + "\n",
        encoding="utf-8",
    )
    report = build(_config(tmp_path, [{"name": "s", "path": str(data)}], limits={"min_tokens": 100}))
    shown = report["sources"][0]["examples"]["too_short"]
    assert [re.sub(r"\d+ tokens$", "N tokens", line) for line in shown] == [
        f"{data}:1: N tokens",
        f"{data}:2: c2: N tokens",
    ]


def test_unfit_records_are_counted_and_named(tmp_path: Path) -> None:
    bad = REPO / "tests" / "data" / "sft_bad_records.jsonl"
    report = build(_config(tmp_path, [{"name": "bad", "path": str(bad)}]))
    (source,) = report["sources"]
    assert source["records"] == 1 and source["kept"] == 1
    assert source["dropped"] == {
        "bad_role": 1,
        "empty_turn": 1,
        "unknown_format": 1,
        "bad_turns": 1,
        "bad_json": 1,
    }
    examples = source["examples"]
    assert examples["bad_role"] == [
        f"{bad}:1: turn 2: role 'narrator' is not one of "
        "assistant, bot, developer, function, gpt, human, prompter, system, tool, user"
    ]
    assert examples["empty_turn"][0].startswith(f"{bad}:2: turn 2 (assistant) is empty")
    assert examples["unknown_format"][0].startswith(f"{bad}:3: fields (text) fit none of")
    assert examples["bad_turns"][0].startswith(f"{bad}:4: message 2: expected an assistant turn")
    assert examples["bad_json"][0].startswith(f"{bad}:6: not valid JSON")
    md = (tmp_path / "out" / "chats.jsonl.report.md").read_text(encoding="utf-8")
    assert f"`{bad}:1: turn 2: role 'narrator'" in md


def test_a_relative_source_path_that_names_no_file_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config written to run from one directory, run from another, said only "file not found"."""
    config = _config(tmp_path, [{"name": "saiga", "path": "data/raw/saiga.jsonl"}])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        VikhrError, match=f"; relative to the current directory, {re.escape(str(tmp_path))}\\)$"
    ):
        build(config)
    absolute = _config(tmp_path, [{"name": "saiga", "path": str(tmp_path / "nope.jsonl")}])
    with pytest.raises(VikhrError, match=r"nope\.jsonl \(check sources\[\]\.path in the config\)$"):
        build(absolute)


def _cli(capfd: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from vikhr.cli import main

    capfd.readouterr()
    rc = main(list(args))
    out, err = capfd.readouterr()
    return rc, out, err


def _no_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown_format", "unknown chat format (fields of the first records: text, title)"),
        ("missing_file", "source s: file not found:"),
        ("bad_key", "unknown config key 'sources[0].wieght'"),
        ("count_and_fraction", "source s: give count or fraction, not both"),
        (
            "forced_format",
            "sources[0].format must be messages, sharegpt, flan, alpaca, dolly, orca, nectar, oasst or "
            "preference, got 'csv'",
        ),
        ("no_sources", "config key sources must have at least 1 item, got []"),
        # A format forced on a file of another: every record unfit (was 0 chats, exit 0).
        ("wrong_format", "source s: no record of"),
        ("no_files", "source s: path lists no file"),
        # numpy's traceback from the near-duplicate hashing
        ("bad_seed", "config key seed must be >= 0, got -1"),
        # an empty mix and its reports, exit 0 (vikhr sft prepare refused it later)
        ("nothing_kept", "no chat is left to write (not_russian 2): loosen limits"),
        # every record left out by keep_where: no chat read at all (a numpy TypeError)
        ("none_kept_where", "no chat is left to write (not_kept 3)"),
        # an empty download, or one of broken lines: "unknown chat format (fields of the first records: none)"
        ("empty_file", "empty.jsonl holds no records (an empty file: check the download, or leave it out)"),
        ("bad_json_file", "broken.jsonl: no record of it could be read ("),
    ],
)
def test_bad_input_is_one_line_with_status_2(
    tmp_path: Path, capfd: pytest.CaptureFixture, case: str, message: str
) -> None:
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "a", "title": "b"}\n', encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    (tmp_path / "broken.jsonl").write_text('{"messages": [\n', encoding="utf-8")
    sources = {
        "unknown_format": [{"name": "s", "path": str(texts)}],
        "missing_file": [{"name": "s", "path": str(tmp_path / "nope.jsonl")}],
        "bad_key": [{"name": "s", "path": str(texts), "wieght": 1}],
        "count_and_fraction": [{"name": "s", "path": str(texts), "count": 1, "fraction": 0.5}],
        "forced_format": [{"name": "s", "path": str(texts), "format": "csv"}],
        "no_sources": [],
        "wrong_format": [{"name": "s", "path": str(FORMATS_DIR / "saiga.jsonl"), "format": "alpaca"}],
        "no_files": [{"name": "s", "path": []}],
        "bad_seed": [{"name": "s", "path": str(FORMATS_DIR / "saiga.jsonl")}],
        "nothing_kept": [{"name": "s", "path": str(FORMATS_DIR / "nectar.jsonl"), "min_cyrillic_share": 0.5}],
        "none_kept_where": [
            {"name": "s", "path": str(FORMATS_DIR / "saiga.jsonl"), "keep_where": {"score": 1}}
        ],
        "empty_file": [{"name": "s", "path": str(tmp_path / "empty.jsonl")}],
        "bad_json_file": [{"name": "s", "path": str(tmp_path / "broken.jsonl")}],
    }[case]
    keys = {"seed": -1} if case == "bad_seed" else {}
    rc, out, err = _cli(capfd, "sft", "build", str(_config(tmp_path, sources, **keys)), "--no-progress")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    _no_outputs(tmp_path)


def test_a_failed_build_leaves_nothing_that_looks_valid(tmp_path: Path, monkeypatch) -> None:
    import vikhr.sft.build as build_module

    def fail_on_write(chat, source):
        raise RuntimeError("disk full")

    cfg = _config(tmp_path, [{"name": "s", "path": str(FORMATS_DIR / "saiga.jsonl")}])
    monkeypatch.setattr(build_module.Chat, "record", fail_on_write)
    with pytest.raises(RuntimeError, match="disk full"):
        build(cfg)
    _no_outputs(tmp_path)
    monkeypatch.undo()
    report = build(cfg)
    assert report["kept"] == 3 and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "chats.jsonl",
        "chats.jsonl.report.json",
        "chats.jsonl.report.md",
    ]


def test_a_source_file_with_glob_characters_in_its_name_is_that_file(tmp_path: Path) -> None:
    """A path: "saiga [v2].jsonl" was taken as a pattern (the class [v2]): "file not found"."""
    shutil.copy(FORMATS_DIR / "saiga.jsonl", tmp_path / "saiga [v2].jsonl")
    report = build(_config(tmp_path, [{"name": "saiga", "path": str(tmp_path / "saiga [v2].jsonl")}]))
    assert report["sources"][0]["kept"] > 0


def test_glob_and_several_files_per_source(tmp_path: Path) -> None:
    for name in ("saiga.jsonl", "veles.jsonl"):
        shutil.copy(FORMATS_DIR / name, tmp_path / name)
    report = build(_config(tmp_path, [{"name": "both", "path": str(tmp_path / "*.jsonl")}]))
    (source,) = report["sources"]
    assert source["kept"] == 5 and sorted(set(source["formats"].values())) == ["messages", "sharegpt"]
    with pytest.raises(VikhrError, match=r"source both: file not found: .*\*\.parquet"):
        build(_config(tmp_path, [{"name": "both", "path": str(tmp_path / "*.parquet")}]))


def test_a_file_named_twice_in_a_source_is_read_once(tmp_path: Path) -> None:
    """A list holding a file and a glob matching it read the file twice: without dedup every chat
    was written twice, with it they were reported as duplicates of themselves."""
    shutil.copy(FORMATS_DIR / "saiga.jsonl", tmp_path / "saiga.jsonl")
    shutil.copy(FORMATS_DIR / "veles.jsonl", tmp_path / "veles.jsonl")
    paths = [str(tmp_path / "saiga.jsonl"), str(tmp_path / "*.jsonl"), f"{tmp_path}/./saiga.jsonl"]
    cfg = _config(tmp_path, [{"name": "s", "path": paths}], dedup={"exact": False, "near": False})
    report = build(cfg)
    (source,) = report["sources"]
    assert source["files"] == [str(tmp_path / "saiga.jsonl"), str(tmp_path / "veles.jsonl")]
    assert source["records"] == 5 and source["kept"] == 5 and source["dropped"] == {}
    chats = _written(tmp_path / "out" / "chats.jsonl")
    assert len({json.dumps(c["messages"]) for c in chats}) == len(chats) == 5


def test_a_double_star_glob_reads_files_at_any_depth(tmp_path: Path) -> None:
    """`raw/**/*.jsonl` was read as `raw/*/*.jsonl` (Python's glob without recursive=True): the files
    in raw/ itself and two folders down were left out of the mix without a word."""
    raw = tmp_path / "raw"
    for place in ("x.jsonl", "a/y.jsonl", "a/b/z.jsonl"):
        (raw / place).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FORMATS_DIR / "saiga.jsonl", raw / place)
    cfg = _config(tmp_path, [{"name": "s", "path": str(raw / "**" / "*.jsonl")}], dedup={"exact": False})
    (source,) = build(cfg)["sources"]
    assert source["files"] == [str(raw / p) for p in ("a/b/z.jsonl", "a/y.jsonl", "x.jsonl")]


def test_a_source_path_naming_a_directory_says_so(tmp_path: Path) -> None:
    """A glob matching a subdirectory said "source file not found: DIR" (and a directory given as
    the path "file not found")."""
    shutil.copy(FORMATS_DIR / "saiga.jsonl", tmp_path / "saiga.jsonl")
    (tmp_path / "more").mkdir()
    with pytest.raises(VikhrError, match=r"source s: .*/\* matches the directory .*/more, not a file \("):
        build(_config(tmp_path, [{"name": "s", "path": str(tmp_path / "*")}]))
    with pytest.raises(VikhrError, match=r"source s: .*/more is a directory, not a file \("):
        build(_config(tmp_path, [{"name": "s", "path": str(tmp_path / "more")}]))
    _no_outputs(tmp_path)


def test_the_output_may_not_be_a_source_file_or_a_directory(tmp_path: Path) -> None:
    saiga = tmp_path / "saiga.jsonl"
    shutil.copy(FORMATS_DIR / "saiga.jsonl", saiga)
    cfg = _config(tmp_path, [{"name": "saiga", "path": str(tmp_path / "*.jsonl")}])
    with pytest.raises(VikhrError, match=r"is also a file of source saiga: the build would replace"):
        build(cfg, output=tmp_path / "." / "saiga.jsonl")
    assert saiga.read_bytes() == (FORMATS_DIR / "saiga.jsonl").read_bytes()
    (tmp_path / "mix").mkdir()
    with pytest.raises(VikhrError, match=r"mix is a directory \(give a file name: .*mix.jsonl\)"):
        build(cfg, output=tmp_path / "mix")


@pytest.mark.parametrize(
    ("name", "plain"), [("mix.jsonl.gz", "mix.jsonl"), ("mix.zst", "mix.jsonl"), ("mix.parquet", "mix.jsonl")]
)
def test_an_output_named_as_compressed_or_parquet_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture, name: str, plain: str
) -> None:
    """The build wrote plain JSONL under mix.jsonl.gz; sft prepare then stopped on it with "cannot read
    gzip data ... damaged", a build reading it as a source took it for Parquet."""
    cfg = _config(tmp_path, [{"name": "saiga", "path": str(FORMATS_DIR / "saiga.jsonl")}])
    out = tmp_path / "out" / name
    rc, stdout, err = _cli(capfd, "sft", "build", str(cfg), "--output", str(out), "--no-progress")
    assert rc == 2 and stdout == ""
    assert err.strip().endswith(f"give a .jsonl name, e.g. {out.with_name(plain)}"), err
    assert len(err.strip().splitlines()) == 1 and "the build writes plain JSONL" in err
    _no_outputs(tmp_path)


def test_the_output_may_not_be_the_config_the_tokenizer_or_the_reward_model(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """Only the source files were compared with the output: `--output tok.model` or the config
    itself was replaced by the chats (exit 0), and reports were written beside them."""
    saiga = [{"name": "s", "path": str(FORMATS_DIR / "saiga.jsonl")}]
    (tmp_path / "tok").mkdir()
    shutil.copy(MISTRAL, tmp_path / "tok" / "tokenizer.model")
    shutil.copy(MISTRAL, tmp_path / "tok.model")
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}\n")
    reward = {"model": str(tmp_path / "rm"), "scores": str(tmp_path / "scores.jsonl")}
    dir_config = _config(tmp_path, saiga, tokenizer=str(tmp_path / "tok")).rename(tmp_path / "dir.yaml")
    rm_config = _config(tmp_path, saiga, reward=reward).rename(tmp_path / "rm.yaml")
    config = _config(tmp_path, saiga, tokenizer=str(tmp_path / "tok.model"))
    shutil.copy(config, tmp_path / "mix.jsonl.report.md")  # a config where a report would go
    cases = [
        (config, tmp_path / "tok.model", "is also the tokenizer: the build would replace its input"),
        (config, config, "is also the config file"),
        (config, tmp_path / "tokenizer_config.json", "is also a file of the tokenizer"),
        (tmp_path / "mix.jsonl.report.md", tmp_path / "mix.jsonl", "written beside it, is also the config"),
        (dir_config, tmp_path / "tok" / "mix.jsonl", "is in the tokenizer directory"),
        (rm_config, tmp_path / "rm" / "mix.jsonl", "is in the reward model directory"),
    ]
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    for cfg, output, message in cases:
        rc, out, err = _cli(capfd, "sft", "build", str(cfg), "--output", str(output), "--no-progress")
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err
        assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
        assert {p: p.read_bytes() for p in files} == before


def test_bundled_rulm_chats_and_their_seed_tasks_mix_without_duplicates(
    shared_data: Path, tmp_path: Path
) -> None:
    sft = shared_data / "sft"
    sources = [
        {"name": "rulm", "path": str(sft / "rulm-self-instruct.chat.jsonl")},
        {"name": "seeds", "path": str(sft / "ru_alpaca_seed_tasks.jsonl")},
    ]
    report = build(_config(tmp_path, sources, limits={"min_tokens": 1, "max_tokens": 100_000}))
    rulm, seeds = report["sources"]
    assert (rulm["records"], seeds["records"]) == (806, 137)
    assert seeds["kept"] == 0 and seeds["dropped"] == {"duplicate": 137}  # all already in the chat file
    # The chat file holds 18 prompts twice (answers of two models): one of each pair goes.
    assert rulm["dropped"]["near_duplicate"] >= 18
    prompts = [normalise(r["messages"][0]["content"]) for r in _written(tmp_path / "out" / "chats.jsonl")]
    assert len(prompts) == rulm["kept"] == len(set(prompts))


def test_bundled_rulm_mix_and_report_are_pinned(shared_data: Path, tmp_path: Path) -> None:
    """The written mix and its reports, byte for byte, for the rulm chats and their seed tasks (a
    change meant to be only faster must leave them as they are)."""
    sft = shared_data / "sft"
    sources = [
        {"name": "rulm", "path": str(sft / "rulm-self-instruct.chat.jsonl"), "min_cyrillic_share": 0.3},
        {"name": "seeds", "path": str(sft / "ru_alpaca_seed_tasks.jsonl")},
    ]
    build(_config(tmp_path, sources, limits={"min_tokens": 1, "max_tokens": 100_000}))
    out = tmp_path / "out" / "chats.jsonl"
    digests = {}
    for name in (out.name, f"{out.name}.report.json", f"{out.name}.report.md"):
        text = (out.parent / name).read_text(encoding="utf-8")
        text = text.replace(str(tmp_path), "TMP").replace(str(sft), "SFT").replace(str(MISTRAL), "TOKENIZER")
        digests[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert digests == {
        "chats.jsonl": "c3549bee2ff8b44d",
        "chats.jsonl.report.json": "bad2a3aabf3b78b5",
        "chats.jsonl.report.md": "403327b7d73ad043",  # columns: kept, then trimmed of those
    }


@pytest.mark.parametrize(
    ("keys", "source", "message"),
    [
        ({"dedup": {"near": "yes"}}, {}, "config key dedup.near: expected bool, got 'yes'"),
        ({"dedup": {"exact": "no"}}, {}, "config key dedup.exact: expected bool, got 'no'"),
        ({}, {"count": "2"}, "config key sources[0].count: expected int, got '2'"),
        ({"limits": {"max_tokens": "512"}}, {}, "config key limits.max_tokens: expected int, got '512'"),
        ({"seed": "7"}, {}, "config key seed: expected int, got '7'"),
    ],
)
def test_a_quoted_number_or_yes_no_in_the_config_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture, keys: dict, source: dict, message: str
) -> None:
    """Pydantic's lax mode read near: 'yes' as true and count: "2" as 2, silently."""
    sources = [{"name": "s", "path": str(FORMATS_DIR / "saiga.jsonl"), **source}]
    config = _config(tmp_path, sources, **keys)
    rc, out, err = _cli(capfd, "sft", "build", str(config), "--no-progress")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [f"vikhr sft build: error: {config}: {message}"], err
    _no_outputs(tmp_path)


def test_a_file_read_by_two_sources_is_refused_unless_each_keeps_its_own_records(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """The second source's chats were all duplicates of the first's: it gave 0 chats (its count
    unmet) without a word. Two sources splitting one file by keep_where still may."""
    data = tmp_path / "mixed.jsonl"
    lines = [_chat_line(f"Вопрос номер {i}?", f"Ответ {i}.", lang="ru" if i % 2 else "en") for i in range(6)]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    both = {"name": "b", "path": str(tmp_path / "*.jsonl"), "count": 2}
    cases = {
        "neither with a keep_where": ({}, {}),
        "the same keep_where": ({"lang": "ru"}, {"lang": "ru"}),
        "keep_where in one of them only": ({"lang": "ru"}, {}),
    }
    for how, (first, second) in cases.items():
        sources = [{"name": "a", "path": str(data), "keep_where": first}, {**both, "keep_where": second}]
        rc, out, err = _cli(capfd, "sft", "build", str(_config(tmp_path, sources)), "--no-progress")
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert (
            f"{data} is read by source a and by source b ({how}): a chat both keep counts for a only" in err
        )
        _no_outputs(tmp_path)
    split = [
        {"name": "a", "path": str(data), "keep_where": {"lang": "ru"}},
        {**both, "keep_where": {"lang": "en"}},
    ]
    report = build(_config(tmp_path, split))
    assert [(s["name"], s["kept"]) for s in report["sources"]] == [("a", 3), ("b", 2)]


def test_records_sharing_an_id_are_two_records_with_ids_of_their_own(tmp_path: Path) -> None:
    """Two records with one "id" (each file numbered from 0; id-less records of two files of one name)
    were written with one id, and were taken for one record: a near duplicate between them was kept."""
    for part, (prompt, answer) in {
        "a": (LONG_PROMPT, "Уважаемый директор, ..."),
        "b": (LONG_PROMPT.replace("важный", "очень важный"), "Добрый день, ..."),  # near
    }.items():
        (tmp_path / part).mkdir()
        lines = [_chat_line(prompt, answer, id=0), _chat_line(f"Вопрос {part}?", f"Ответ {part}.", id=1)]
        (tmp_path / part / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp_path / part / "plain" / "x").mkdir(parents=True)
        plain = [_chat_line(f"Сколько будет {part} плюс {n}?", f"{n} {part}") for n in range(2)]
        (tmp_path / part / "plain" / "x" / "chats.jsonl").write_text(
            "\n".join(plain) + "\n", encoding="utf-8"
        )
    paths = [str(tmp_path / "*" / "train.jsonl"), str(tmp_path / "*" / "plain" / "x" / "chats.jsonl")]
    report = build(_config(tmp_path, [{"name": "s", "path": paths}]))
    b = tmp_path / "b" / "train.jsonl"
    assert report["sources"][0]["examples"]["near_duplicate"] == [
        f"{b}:1: repeats {tmp_path / 'a' / 'train.jsonl'}:1 (s/0)"
    ]
    ids = [chat["id"] for chat in _written(tmp_path / "out" / "chats.jsonl")]
    second = tmp_path / "b" / "plain" / "x" / "chats.jsonl"
    assert ids == [
        "s/0",
        "s/1",
        f"s/1@{b}:2",
        "s/chats.jsonl:1",
        "s/chats.jsonl:2",
        f"s/chats.jsonl:1@{second}:1",
        f"s/chats.jsonl:2@{second}:2",
    ]


@pytest.mark.parametrize(
    ("path", "shown"), [(5, "5"), ([str(FORMATS_DIR / "saiga.jsonl"), 7], "7 in the list")]
)
def test_a_source_path_that_is_not_text_is_named_as_such(
    tmp_path: Path, capfd: pytest.CaptureFixture, path: Any, shown: str
) -> None:
    """It said `sources[0].path.str: expected str, got [...]`: pydantic's name of the union's branch."""
    config = _config(tmp_path, [{"name": "s", "path": path}])
    rc, out, err = _cli(capfd, "sft", "build", str(config), "--no-progress")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        f"vikhr sft build: error: {config}: config key sources[0].path: give a file, a glob or a list of "
        f"them (text), got {shown}"
    ], err


def test_a_source_the_mix_holds_no_chat_of_is_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`fraction: 0.5` of one chat rounds to none: the source was left out of the mix with only the
    report's kept count to show it (exit 0, no word)."""
    one = tmp_path / "one.jsonl"
    one.write_text(_chat_line("Сколько ног у паука?", "Восемь.") + "\n", encoding="utf-8")
    ruflan = str(FORMATS_DIR / "ruflan.jsonl")
    sources = [{"name": "ruflan", "path": ruflan}, {"name": "one", "path": str(one), "fraction": 0.5}]
    report = build(_config(tmp_path, sources))
    assert [s["kept"] for s in report["sources"]][1] == 0
    [line] = capsys.readouterr().err.strip().splitlines()
    md = tmp_path / "out" / "chats.jsonl.report.md"
    assert line == (
        "warning: source one: none of its 1 record is in the mix (sampled_out 1) (its fraction × chats "
        f"rounds to 0: raise fraction, or give a count); see {md}"
    )
    build(_config(tmp_path, [sources[0], {**sources[1], "fraction": 1.0}]))
    assert capsys.readouterr().err == ""


def test_the_warning_of_a_source_left_out_counts_its_unfit_records(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A source of one duplicate chat and one record ending with an unanswered question was "none of
    its 1 record is in the mix (duplicate 1, bad_turns 1)": the count left out the unfit records its
    reasons name."""
    line = _chat_line("Сколько ног у паука?", "Восемь.")
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text(line + "\n", encoding="utf-8")
    unanswered = {"messages": [{"role": "user", "content": "Сколько лап у кошки?"}]}
    second.write_text(line + "\n" + json.dumps(unanswered, ensure_ascii=False) + "\n", encoding="utf-8")
    build(_config(tmp_path, [{"name": "first", "path": str(first)}, {"name": "second", "path": str(second)}]))
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("warning: source second: none of its 2 records is in the mix (")
    assert sorted(re.search(r"mix \((.*)\);", warning)[1].split(", ")) == ["bad_turns 1", "duplicate 1"]
