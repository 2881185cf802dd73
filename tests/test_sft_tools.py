"""Chats with function calls (tools) against the official Qwen2.5-7B-Instruct and Qwen3-8B templates.

vikhr's ``chatml`` and ``qwen3`` must give the ids of transformers' `apply_chat_template(messages,
tools=..., tokenize=True)` with the official templates (tests/data/chat_templates) on the byte-level
BPE tokenizers of tests/test_sft_templates.py, for hand-made chats: one call, two parallel calls, two
rounds, arguments as JSON text and as an object, Russian text, with and without a system message,
a chat that ends with its call, calls without a tools list. Where vikhr differs from Qwen2.5 on
purpose — no default system message before the tool block, arguments given as text written as they
are rather than as a quoted JSON string — the official side is given the same chat in the form it
renders alike (see `_official_chat`), and the difference itself is pinned. The mask covers exactly the
answers, their calls and their ends; the export's template, the ``own`` template, the refusals of the
templates without tools and the conversion of collections (OpenAI's and LLaMA-Factory's layouts)
are checked too.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.test_sft_templates import (
    EMPTY_THINKING,
    QWEN_DEFAULT_SYSTEM,
    byte_level_bpe,
    with_bos_eos_only,
    write_model_tokenizer,
)
from vikhr.assets import MISTRAL_TOKENIZER
from vikhr.errors import VikhrError
from vikhr.sft.own_template import ChatRefused
from vikhr.sft.prepare import mask_runs
from vikhr.sft.sources import Unfit, record_chats
from vikhr.sft.template import (
    CHATML_END,
    ChatMessages,
    Message,
    ToolCall,
    encode_chat,
    load_chat_tokenizer,
    parse_chat,
    plain_turns,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Текущая погода в городе",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "Город, например Москва"}},
            "required": ["city"],
        },
    },
}
CONVERT = {
    "type": "function",
    "function": {
        "name": "convert_currency",
        "description": "Convert an amount between currencies",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "from": {"type": "string"},
                "to": {"type": "string"},
            },
        },
    },
}


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# Hand-made chats (records as `vikhr sft prepare` reads them). Arguments given as text are in the form
# `tojson` writes, so that Qwen2.5 given them as objects renders the same (see `_official_chat`).
TOOL_CHATS: dict[str, dict[str, Any]] = {
    "one call, system, object arguments": {
        "tools": [WEATHER],
        "messages": [
            {"role": "system", "content": "Ты — полезный ассистент."},
            {"role": "user", "content": "Какая погода в Москве?"},
            {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Москва"})]},
            {"role": "tool", "name": "get_weather", "content": '{"temperature": 21, "sky": "ясно"}'},
            {"role": "assistant", "content": "В Москве ясно, +21 °C."},
        ],
    },
    "two parallel calls, no system, text arguments": {
        "tools": [WEATHER, CONVERT],
        "messages": [
            {"role": "user", "content": "Погода в Казани и в Сочи?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    _call("get_weather", '{"city": "Казань"}'),
                    _call("get_weather", '{"city": "Сочи"}'),
                ],
            },
            {"role": "tool", "content": "+12, дождь"},
            {"role": "tool", "content": "+24, солнце"},
            {"role": "assistant", "content": "В Казани +12 и дождь, в Сочи +24 и солнце."},
        ],
    },
    "two rounds, text before a call, a later question": {
        "tools": [WEATHER, CONVERT],
        "messages": [
            {"role": "system", "content": "Отвечай кратко."},
            {"role": "user", "content": "Привет!"},
            {"role": "assistant", "content": "Здравствуйте! Чем помочь?"},
            {"role": "user", "content": "Сколько будет 100 долларов в рублях? И погода в Омске."},
            {
                "role": "assistant",
                "content": "Сейчас посчитаю.",
                "tool_calls": [_call("convert_currency", {"amount": 100, "from": "USD", "to": "RUB"})],
            },
            {"role": "tool", "content": "9150.5"},
            {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", '{"city": "Омск"}')]},
            {"role": "tool", "content": "-3, снег"},
            {"role": "assistant", "content": "100 $ ≈ 9150,5 ₽. В Омске −3 и снег."},
        ],
    },
    "ends with its call": {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Узнай погоду в Туле"},
            {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Тула"})]},
        ],
    },
    "calls without a tools list, bare call form": {
        "messages": [
            {"role": "user", "content": "What's the weather in Perm?"},
            {"role": "assistant", "content": None, "tool_calls": [{"name": "get_weather", "arguments": {}}]},
            {"role": "tool", "content": "cloudy"},
            {"role": "assistant", "content": "Облачно."},
        ],
    },
}


def _official_chat(
    record: dict[str, Any], template: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[Any] | None]:
    """(vikhr's record, the official template's messages, tools) for the same ids: Qwen2.5's default
    system message given to both where the chat has none and offers no tools (vikhr writes none; with
    tools see `_expected_ids`), and Qwen2.5 given arguments written as text as objects (it writes a
    string as a quoted JSON string; vikhr writes it as it is, as Qwen3 does)."""
    record = copy.deepcopy(record)
    if template == "chatml" and record["messages"][0]["role"] != "system" and not record.get("tools"):
        record["messages"].insert(0, {"role": "system", "content": QWEN_DEFAULT_SYSTEM})
    messages = copy.deepcopy(record["messages"])
    if template == "chatml":
        for m in messages:
            for call in m.get("tool_calls") or []:
                function = call.get("function", call)
                if isinstance(function["arguments"], str):
                    function["arguments"] = json.loads(function["arguments"])
    return record, messages, record.get("tools")


def _official_ids(
    fast: Any, messages: list[dict[str, Any]], tools: Any, generation: bool = False
) -> list[int]:
    out = fast.apply_chat_template(
        messages, tools=tools, tokenize=True, add_generation_prompt=generation, enable_thinking=False
    )
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def _parsed(messages: list[dict[str, Any]], tools: Any, for_generation: bool = False) -> ChatMessages:
    return parse_chat({"messages": messages, **({"tools": tools} if tools else {})}, for_generation)


@pytest.fixture(
    scope="module",
    params=[(t, p) for t in ("chatml", "qwen3") for p in ("llama3", "gpt2")],
    ids=lambda param: f"{param[0]}-{param[1]}-pretok",
)
def qwen_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(vikhr template, directory of a Qwen-like tokenizer with the official chat template)."""
    template, pre_tokenizer = request.param
    directory = tmp_path_factory.mktemp(f"{template}-{pre_tokenizer}")
    return template, write_model_tokenizer(directory, byte_level_bpe(pre_tokenizer), template)


def _fast(directory: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(directory)


# --------------------------------------------------------------------------- equal to the official templates


def test_tool_chats_get_the_official_ids(qwen_dir: tuple[str, Path]) -> None:
    template, directory = qwen_dir
    tok, fast = load_chat_tokenizer(directory, template), _fast(directory)
    for name, record in TOOL_CHATS.items():
        record, messages, tools = _official_chat(record, template)
        enc = encode_chat(parse_chat(record), tok, template)
        assert enc.ids == _expected_ids(fast, messages, tools, template), name
        # The prompt for the last answer (after the tool results, or the user turn).
        prompt = _parsed(record["messages"][:-1], tools, for_generation=True)
        expected = _expected_ids(fast, messages[:-1], tools, template, generation=True)
        assert encode_chat(prompt, tok, template, for_generation=True).ids == expected, name


def _expected_ids(
    fast: Any, messages: list[dict[str, Any]], tools: Any, template: str, generation: bool = False
) -> list[int]:
    """The official template's ids; for ``chatml`` with tools and no system message, those of its text
    without the default system message it writes before the tool block (vikhr writes none)."""
    if template == "qwen3" or messages[0]["role"] == "system" or not tools:
        return _official_ids(fast, messages, tools, generation)
    text = fast.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)
    assert text.startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}\n\n# Tools\n\n")
    return list(
        fast(text.replace(f"{QWEN_DEFAULT_SYSTEM}\n\n", "", 1), add_special_tokens=False)["input_ids"]
    )


def _call_text(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def _expected_answers(record: dict[str, Any], template: str) -> list[str]:
    """The trained text of each answer: its content, its calls (a newline before each but the first of
    an answer without text), its end; ``qwen3``: the final answer with its empty thinking block."""
    answers = []
    assistants = [m for m in record["messages"] if m["role"] == "assistant"]
    for number, m in enumerate(assistants, start=1):
        text = m["content"] or ""
        calls = [c.get("function", c) for c in m.get("tool_calls") or []]
        for k, call in enumerate(calls):
            arguments = call["arguments"]
            arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
            text += ("\n" if k or text else "") + _call_text(call["name"], arguments)
        if template == "qwen3" and number == len(assistants):
            text = EMPTY_THINKING + text
        answers.append(text + CHATML_END)
    return answers


def test_mask_is_the_answers_their_calls_and_ends(qwen_dir: tuple[str, Path]) -> None:
    template, directory = qwen_dir
    tok = load_chat_tokenizer(directory, template)
    for name, record in TOOL_CHATS.items():
        enc = encode_chat(parse_chat(record), tok, template)
        trained = [
            tok.backend.decode(ids, skip_special_tokens=False)
            for is_trained, ids in mask_runs(enc.ids, enc.mask)
            if is_trained
        ]
        assert trained == _expected_answers(record, template), name


def test_chatml_tool_block_writes_no_default_system_message(tmp_path: Path) -> None:
    """Qwen2.5 writes "You are Qwen, created by Alibaba Cloud. …" before the tool block of a chat
    without a system message; vikhr's chatml writes the block alone (as Qwen3 does): the official
    text less that line, and its ids."""
    directory = write_model_tokenizer(tmp_path, byte_level_bpe("gpt2"), "chatml")
    tok, fast = load_chat_tokenizer(directory, "chatml"), _fast(directory)
    record = TOOL_CHATS["two parallel calls, no system, text arguments"]
    _, messages, tools = _official_chat(record, "chatml")
    official = fast.apply_chat_template(messages, tools=tools, tokenize=False)
    assert official.startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}\n\n# Tools\n\n")
    expected = official.replace(f"{QWEN_DEFAULT_SYSTEM}\n\n", "", 1)
    ids = encode_chat(parse_chat(record), tok, "chatml").ids
    assert ids == fast(expected, add_special_tokens=False)["input_ids"]
    assert tok.backend.decode(ids, skip_special_tokens=False) == expected


def test_arguments_given_as_text_are_written_as_given(qwen_dir: tuple[str, Path]) -> None:
    """Qwen3 writes arguments given as text as they are, and so does vikhr's chatml (Qwen2.5's template
    would write them as a quoted JSON string, a form the model would learn to call functions in)."""
    template, directory = qwen_dir
    tok = load_chat_tokenizer(directory, template)
    compact = '{"city":"Москва"}'  # not the form tojson writes
    record = {
        "messages": [
            {"role": "user", "content": "Погода?"},
            {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", compact)]},
        ]
    }
    enc = encode_chat(parse_chat(record), tok, template)
    decoded = tok.backend.decode(enc.ids, skip_special_tokens=False)
    assert f'{{"name": "get_weather", "arguments": {compact}}}' in decoded
    if template == "qwen3":  # Qwen3's own template: the same ids
        assert enc.ids == _official_ids(_fast(directory), record["messages"], None)
    else:  # Qwen2.5's quotes the text
        official = _fast(directory).apply_chat_template(
            [{"role": "system", "content": "s"}, *record["messages"]], tokenize=False
        )
        assert '"arguments": "{\\"city\\":\\"Москва\\"}"' in official


def test_qwen3_tool_call_with_reasoning_keeps_it_as_qwen3_does(tmp_path: Path) -> None:
    """A call after the last user turn that carries reasoning keeps its thinking block though later
    turns follow (Qwen3's rule); a call before that user turn loses it."""
    directory = write_model_tokenizer(tmp_path, byte_level_bpe("llama3"), "qwen3")
    tok, fast = load_chat_tokenizer(directory, "qwen3"), _fast(directory)
    messages = [
        {"role": "user", "content": "Погода в Твери?"},
        {
            "role": "assistant",
            "content": "Нужно вызвать функцию.",
            "reasoning_content": "Пользователь спрашивает о погоде.",
            "tool_calls": [_call("get_weather", {"city": "Тверь"})],
        },
        {"role": "tool", "content": "+5"},
        {"role": "assistant", "content": "В Твери +5."},
    ]
    official = [dict(m) for m in messages]
    official[1]["content"] = "<think>\nПользователь спрашивает о погоде.\n</think>\n\nНужно вызвать функцию."
    del official[1]["reasoning_content"]
    enc = encode_chat(_parsed(messages, [WEATHER]), tok, "qwen3")
    assert enc.ids == _official_ids(fast, official, [WEATHER])
    assert "<think>\nПользователь спрашивает о погоде.\n</think>" in tok.backend.decode(enc.ids)
    later = [
        *messages,
        {"role": "user", "content": "А в Пскове?"},
        {"role": "assistant", "content": "Не знаю."},
    ]
    enc = encode_chat(_parsed(later, [WEATHER]), tok, "qwen3")
    assert enc.ids == _official_ids(fast, [*official, *later[4:]], [WEATHER])
    assert "Пользователь спрашивает" not in tok.backend.decode(enc.ids)


# --------------------------------------------------------------------------- export and own


@pytest.mark.parametrize("template", ["chatml", "qwen3"])
@pytest.mark.parametrize("spelled_out", [False, True, "sentencepiece"], ids=["tokens", "spelled-out", "sp"])
def test_export_renders_tool_chats_with_the_trained_ids(
    template: str, spelled_out: bool | str, tmp_path: Path
) -> None:
    """The template `vikhr convert megatron-to-hf` writes gives, through transformers with tools=,
    the ids vikhr trains on (arguments as text and as objects, as the chats give them), also where
    <|im_start|>/<|im_end|> are spelled out and answers close with EOS, on a byte-level BPE and on
    the bundled Russian SentencePiece model."""
    import shutil

    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.tokenizer.load import load

    if spelled_out == "sentencepiece":
        source = tmp_path / "source" / "tokenizer.model"
        source.parent.mkdir()
        shutil.copy(MISTRAL_TOKENIZER.with_name("vikhr-ru-40k.model"), source)
    elif spelled_out:
        source = with_bos_eos_only(tmp_path / "source")
    else:
        source = write_model_tokenizer(tmp_path / "source", byte_level_bpe("gpt2"), template)
    tok = load_chat_tokenizer(source, template)
    (tmp_path / "export").mkdir()
    write_tokenizer_files(load(source), tmp_path / "export", template)
    exported = AutoTokenizer.from_pretrained(tmp_path / "export")
    for name, record in TOOL_CHATS.items():
        tools = record.get("tools")
        assert (
            _official_ids(exported, record["messages"], tools)
            == encode_chat(parse_chat(record), tok, template).ids
        )
        prompt = _parsed(record["messages"][:-1], tools, for_generation=True)
        expected = _official_ids(exported, record["messages"][:-1], tools, generation=True)
        assert encode_chat(prompt, tok, template, for_generation=True).ids == expected, name


def test_own_template_passes_tools_and_calls_to_the_models_template(tmp_path: Path) -> None:
    """``own`` renders a tool chat with the tokenizer's own template (Qwen2.5's here) given tools= and
    the calls, arguments as objects: its ids (its default system message included), and the answers
    with their calls and ends trained."""
    directory = write_model_tokenizer(tmp_path, byte_level_bpe("gpt2"), "chatml")
    tok, fast = load_chat_tokenizer(directory, "own"), _fast(directory)
    for name, record in TOOL_CHATS.items():
        record, messages, tools = _official_chat(record, "chatml")
        enc = encode_chat(parse_chat(record), tok, "own")
        assert enc.ids == _official_ids(fast, messages, tools), name
        trained = [
            tok.backend.decode(ids, skip_special_tokens=False) for t, ids in mask_runs(enc.ids, enc.mask) if t
        ]
        assert trained == _expected_answers(record, "chatml"), name


# --------------------------------------------------------------------------- refusals


def _inst_tokenizer(directory: Path) -> Path:
    return with_bos_eos_only(directory, "[INST]", "[/INST]")


@pytest.mark.parametrize("template", ["mistral", "mistral-v3", "llama3"])
@pytest.mark.parametrize(
    "record",
    [
        TOOL_CHATS["one call, system, object arguments"],
        {
            "tools": [WEATHER],
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        },
    ],
    ids=["calls", "tools-only"],
)
def test_templates_without_tools_refuse_tool_chats(
    template: str, record: dict[str, Any], tmp_path: Path
) -> None:
    if template == "llama3":
        directory = write_model_tokenizer(tmp_path / "t", byte_level_bpe("gpt2"), "llama3")
    else:
        directory = MISTRAL_TOKENIZER if template == "mistral" else _inst_tokenizer(tmp_path / "t")
    tok = load_chat_tokenizer(directory, template)
    with pytest.raises(ChatRefused) as e:
        encode_chat(parse_chat(record), tok, template)
    assert str(e.value) == (
        f"the {template} chat template has no function calling, and the chat offers or calls functions "
        "(tools, tool_calls or tool messages); templates with tools: chatml, qwen3, own"
    )


def _chat(*messages: dict[str, Any], **record: Any) -> dict[str, Any]:
    return {"messages": list(messages), **record}


USER = {"role": "user", "content": "Погода?"}
CALLING = {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Москва"})]}
RESULT = {"role": "tool", "content": "+20"}
ANSWER = {"role": "assistant", "content": "+20."}
CALLING_WITH_IDS = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {**_call("get_weather", {"city": "Москва"}), "id": "call_1"},
        {**_call("get_weather", {"city": "Тула"}), "id": "call_2"},
    ],
}
CALLING_TWO_FUNCTIONS = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {**_call("get_weather", {"city": "Москва"}), "id": "call_1"},
        {**_call("convert_currency", {"amount": 1, "from": "USD", "to": "RUB"}), "id": "call_2"},
    ],
}


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (
            _chat(USER, RESULT, ANSWER),
            "message 2: a tool result after a user turn (tool results follow an assistant turn with "
            "tool_calls, or another tool result)",
        ),
        (
            _chat(USER, ANSWER, RESULT, ANSWER),
            "message 3: a tool result after an assistant turn without tool calls",
        ),
        (
            _chat(USER, CALLING, USER, ANSWER),
            "message 3: expected a tool result after an assistant turn with tool calls, got user",
        ),
        (
            _chat(USER, CALLING, RESULT, USER, ANSWER),
            "message 4: expected an assistant turn (or another tool result) after a tool result, got user",
        ),
        (_chat(USER, CALLING, RESULT), "message 3: chat ends with a tool result that has no answer"),
        (
            _chat({**USER, "tool_calls": CALLING["tool_calls"]}, ANSWER),
            "message 1: only an assistant message may carry tool_calls, not a user one",
        ),
        (
            _chat(USER, {**CALLING, "tool_calls": [_call("f", "{city: 1}")]}, RESULT, ANSWER),
            "message 2: tool call 1: arguments are not valid JSON",
        ),
        (
            _chat(USER, {**CALLING, "tool_calls": [_call("f", "[1, 2]")]}, RESULT, ANSWER),
            "message 2: tool call 1: arguments must be a JSON object (as an object or as its JSON text), "
            "got list",
        ),
        (
            _chat(USER, {**CALLING, "tool_calls": [{"type": "function", "function": {"arguments": {}}}]}),
            'message 2: tool call 1: expected {"type": "function", "function": {"name": "...", '
            '"arguments": ...}}',
        ),
        (
            _chat(USER, {**CALLING, "tool_calls": [{"type": "code", "function": {"name": "f"}}]}),
            "message 2: tool call 1: type 'code' is not \"function\"",
        ),
        (_chat(USER, {**CALLING, "tool_calls": {"name": "f"}}), "message 2: tool_calls must be a list"),
        (
            _chat(USER, {"role": "assistant", "content": None}),
            "message 2: content must be a string (or a number, or OpenAI's list of text parts), got null",
        ),
        (
            _chat(USER, CALLING, {**RESULT, "tool_call_id": 7}, ANSWER),
            "message 3: tool_call_id must be a string",
        ),
        (_chat(USER, ANSWER, tools={"name": "f"}), '"tools" must be a list of'),
        (_chat(USER, ANSWER, tools=[{"name": "f"}]), 'tool 1: expected {"type": "function", "function"'),
        (
            _chat(USER, CALLING, RESULT, RESULT, ANSWER),
            "message 4: tool result 2 after message 2, which makes 1 tool call (one result per call)",
        ),
        (
            _chat(USER, CALLING_WITH_IDS, {**RESULT, "tool_call_id": "call_7"}, ANSWER),
            "message 3: tool_call_id 'call_7' is none of the ids of the calls of message 2 "
            "('call_1', 'call_2')",
        ),
        (
            _chat(
                USER,
                CALLING_WITH_IDS,
                {**RESULT, "tool_call_id": "call_1"},
                {**RESULT, "tool_call_id": "call_1"},
                ANSWER,
            ),
            "message 4: a second tool result for tool_call_id 'call_1' (message 3 answers it already; "
            "one result per call)",
        ),
        (
            _chat(USER, CALLING, {**RESULT, "name": "convert_currency"}, ANSWER),
            "message 3: tool result name 'convert_currency' is none of the functions it answers (the calls "
            "of message 2: 'get_weather')",
        ),
        (  # the id names the call the result answers: the other call's name is not its
            _chat(USER, CALLING_TWO_FUNCTIONS, {**RESULT, "tool_call_id": "call_2", "name": "get_weather"}),
            "message 3: tool result name 'get_weather' is none of the functions it answers (the call "
            "'call_2' of message 2: 'convert_currency')",
        ),
        (
            _chat(USER, {**CALLING, "tool_calls": [_call("f", '{"x": NaN}')]}, RESULT, ANSWER),
            "message 2: tool call 1: arguments hold NaN or an infinite number, which JSON cannot hold",
        ),
        (
            _chat(USER, {**CALLING, "tool_calls": [_call("f", '{"x": [1e999]}')]}, RESULT, ANSWER),
            "message 2: tool call 1: arguments hold NaN or an infinite number",
        ),
        (
            _chat(USER, {**CALLING, "tool_calls": [_call("f", {"x": {"y": float("-inf")}})]}, RESULT, ANSWER),
            "message 2: tool call 1: arguments hold NaN or an infinite number",
        ),
        (
            _chat(
                USER,
                ANSWER,
                tools=[
                    WEATHER,
                    json.loads(
                        '{"type": "function", "function": {"name": "g", "parameters": {"maximum": Infinity}}}'
                    ),
                ],
            ),
            "tool 2 (g): its schema holds NaN or an infinite number, which JSON cannot hold",
        ),
        (  # one function, two schemas: which one the model learns to call with is unsaid
            _chat(USER, ANSWER, tools=[WEATHER, {**WEATHER, "function": {**WEATHER["function"], "x": 1}}]),
            "tool 2 (get_weather): the chat offers another function of that name before it (two schemas "
            "of one function): keep one",
        ),
        (  # a chat that lists its functions calls one it does not list (one without a list may)
            _chat(USER, CALLING, RESULT, ANSWER, tools=[CONVERT]),
            "message 2: tool call 1 calls 'get_weather', which is none of the functions the chat "
            "offers ('convert_currency'; its \"tools\")",
        ),
    ],
)
def test_malformed_tool_chats_are_one_line_errors(record: dict[str, Any], problem: str) -> None:
    with pytest.raises(VikhrError) as e:
        parse_chat(record)
    assert str(e.value).startswith(problem) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "record",
    [
        _chat(
            USER,
            CALLING_WITH_IDS,
            {**RESULT, "tool_call_id": "call_2"},
            {**RESULT, "tool_call_id": "call_1"},
            ANSWER,
        ),
        _chat(USER, CALLING_WITH_IDS, RESULT, ANSWER),  # LLaMA-Factory: one result turn for parallel calls
        _chat(USER, CALLING, {**RESULT, "tool_call_id": "call_9"}, ANSWER),  # the calls name no ids
        _chat(USER, CALLING_WITH_IDS),  # the chat ends with its calls: no result need follow
        _chat(
            USER,
            CALLING_TWO_FUNCTIONS,
            {**RESULT, "tool_call_id": "call_2", "name": "convert_currency"},
            {**RESULT, "tool_call_id": "call_1", "name": "get_weather"},
            ANSWER,
        ),
        _chat(  # names without ids, in any order
            USER,
            CALLING_TWO_FUNCTIONS,
            {**RESULT, "name": "convert_currency"},
            {**RESULT, "name": "get_weather"},
            ANSWER,
        ),
        _chat(  # the calls name no ids: a result's tool_call_id answers none, twice is no second answer
            USER,
            {**CALLING, "tool_calls": CALLING["tool_calls"] * 2},
            {**RESULT, "tool_call_id": "call_0"},
            {**RESULT, "tool_call_id": "call_0"},
            ANSWER,
        ),
    ],
    ids=[
        "ids-in-any-order",
        "fewer-results-than-calls",
        "calls-without-ids",
        "ends-with-calls",
        "ids-and-names",
        "names-without-ids",
        "same-id-calls-without-ids",
    ],
)
def test_results_that_answer_their_calls_are_read(record: dict[str, Any]) -> None:
    parse_chat(record)


def test_a_call_without_a_content_key_is_read_as_openais_layout_gives_it() -> None:
    """OpenAI's fine-tuning examples leave out the content of an answer that only calls functions:
    `sft prepare` refused it ('expected {"role": ..., "content": ...}') where `sft build` read it."""
    calling = {k: v for k, v in CALLING_WITH_IDS.items() if k != "content"}
    assert parse_chat(_chat(USER, calling, RESULT, ANSWER)) == parse_chat(
        _chat(USER, {**calling, "content": None}, RESULT, ANSWER)
    )
    for message in ({"role": "assistant"}, {"role": "assistant", "tool_calls": []}, {"role": "user"}):
        with pytest.raises(VikhrError, match=r'^message 2: expected \{"role": \.\.\., "content": \.\.\.\}$'):
            parse_chat(_chat(USER, message, ANSWER))


def test_parsed_tool_chat_and_its_plain_turns() -> None:
    chat = parse_chat(TOOL_CHATS["two parallel calls, no system, text arguments"])
    assert chat.tools == tuple(json.dumps(t, ensure_ascii=False) for t in (WEATHER, CONVERT))
    assert chat[1] == Message(
        "assistant",
        "",
        tool_calls=(
            ToolCall("get_weather", '{"city": "Казань"}'),
            ToolCall("get_weather", '{"city": "Сочи"}'),
        ),
    )
    assert chat[:2].tools == chat.tools  # a prompt keeps the functions offered
    assert plain_turns(chat) == [
        ("user", "Погода в Казани и в Сочи?"),
        (
            "assistant",
            _call_text("get_weather", '{"city": "Казань"}')
            + "\n"
            + _call_text("get_weather", '{"city": "Сочи"}'),
        ),
        (
            "user",
            "<tool_response>\n+12, дождь\n</tool_response>\n<tool_response>\n+24, солнце\n</tool_response>",
        ),
        ("assistant", "В Казани +12 и дождь, в Сочи +24 и солнце."),
    ]


# --------------------------------------------------------------------------- collections


GLAIVE = {
    "conversations": [
        {"from": "human", "value": "Переведи 50 евро в рубли."},
        {
            "from": "function_call",
            "value": '{"name": "convert_currency", "arguments": {"amount": 50, "from": "EUR", "to": "RUB"}}',
        },
        {"from": "observation", "value": '{"result": 5100}'},
        {"from": "gpt", "value": "50 евро — это 5100 рублей."},
    ],
    "system": "Ты помощник с доступом к функциям.",
    "tools": json.dumps([CONVERT["function"]], ensure_ascii=False),
}


def test_llama_factory_sharegpt_tool_layout_is_converted(tmp_path: Path) -> None:
    """LLaMA-Factory's (Glaive's) layout: function_call / observation turns, tools as JSON text of bare
    schemas: the chat record holds OpenAI's form, and qwen3 renders it as Qwen3 renders that form."""
    (chat,) = record_chats(GLAIVE, "sharegpt", "glaive.json:item 0")
    record = chat.record("glaive")
    assert record["tools"] == [CONVERT]
    assert record["messages"] == [
        {"role": "system", "content": "Ты помощник с доступом к функциям."},
        {"role": "user", "content": "Переведи 50 евро в рубли."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [_call("convert_currency", {"amount": 50, "from": "EUR", "to": "RUB"})],
        },
        {"role": "tool", "content": '{"result": 5100}'},
        {"role": "assistant", "content": "50 евро — это 5100 рублей."},
    ]
    directory = write_model_tokenizer(tmp_path, byte_level_bpe("gpt2"), "qwen3")
    enc = encode_chat(parse_chat(record), load_chat_tokenizer(directory, "qwen3"), "qwen3")
    assert enc.ids == _official_ids(_fast(directory), record["messages"], record["tools"])
    parallel = {
        **GLAIVE,
        "tools": json.dumps([{"name": "a", "parameters": {}}, {"name": "b", "parameters": {}}]),
        "conversations": [
            *GLAIVE["conversations"][:1],
            {
                "from": "function_call",
                "value": json.dumps([{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]),
            },
            *GLAIVE["conversations"][2:],
        ],
    }
    (chat,) = record_chats(parallel, "sharegpt", "glaive.json:item 1")
    assert [c["function"]["name"] for c in chat.record("s")["messages"][2]["tool_calls"]] == ["a", "b"]


def test_openai_messages_with_tools_pass_through() -> None:
    record = {**TOOL_CHATS["one call, system, object arguments"], "id": "w1"}
    record["messages"][3] = {**record["messages"][3], "tool_call_id": "call_1"}
    (chat,) = record_chats(record, "messages", "tools.jsonl:1")
    written = chat.record("s")
    assert written["tools"] == [WEATHER]
    assert written["messages"][2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call("get_weather", {"city": "Москва"})],
    }
    assert written["messages"][3] == {
        "role": "tool",
        "content": '{"temperature": 21, "sky": "ясно"}',
        "name": "get_weather",
        "tool_call_id": "call_1",
    }
    assert parse_chat(written)[3].tool_call_id == "call_1"
    # What duplicate removal compares holds the calls; the language check reads the prose only.
    other = copy.deepcopy(record)
    other["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"city": "Москва", "days": 2}
    (other_chat,) = record_chats(other, "messages", "tools.jsonl:2")
    assert other_chat.text() != chat.text() and other_chat.prose() == chat.prose()
    assert "get_weather" in chat.prompt() and "temperature" not in chat.prose()


HERMES_PREAMBLE = (
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> "
    "XML tags. You may call one or more functions to assist with the user query. Don't make assumptions "
    "about what values to plug into functions."
)
HERMES_CALL_FORMAT = (
    "For each function call return a json object with function name and arguments within <tool_call> "
    "</tool_call> tags with the following schema:\n<tool_call>\n{'arguments': <args-dict>, 'name': "
    "<function-name>}\n</tool_call>\n"
)


def _hermes_system(tools_text: str) -> str:
    """A system prompt as hermes-function-calling-v1 writes it, offering `tools_text`."""
    return f"{HERMES_PREAMBLE}\n<tools>\n{tools_text}\n</tools>\n{HERMES_CALL_FORMAT}"


# How hermes-function-calling-v1 writes a <tools> block: a list printed by Python; the ShareGPT sets in
# its shape: JSON objects one a line, or dicts printed by Python one a line.
HERMES_TOOLS_TEXTS = {
    "python-list": repr([WEATHER, CONVERT]),
    "json-lines": "\n".join(json.dumps(t, ensure_ascii=False) for t in (WEATHER, CONVERT)),
    "python-lines": "\n".join(repr(t) for t in (WEATHER, CONVERT)),
}
HERMES = {
    "id": "hermes-1",
    "conversations": [
        {"from": "system", "value": _hermes_system(HERMES_TOOLS_TEXTS["python-list"])},
        {"from": "human", "value": "Погода в Казани? И сколько будет 100 долларов в рублях?"},
        {
            "from": "gpt",
            "value": "Сейчас узнаю.\n<tool_call>\n{'arguments': {'city': 'Казань'}, 'name': 'get_weather'}\n"
            '</tool_call>\n<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 100, "from": '
            '"USD", "to": "RUB", "exact": true}}\n</tool_call>\n',
        },
        {
            "from": "tool",
            "value": '<tool_response>\n{"name": "get_weather", "content": "+12, дождь"}\n</tool_response>\n'
            '<tool_response>\n{"name": "convert_currency", "content": 9150.5}\n</tool_response>\n',
        },
        {"from": "gpt", "value": "В Казани +12 и дождь; 100 $ ≈ 9150,5 ₽."},
        {"from": "human", "value": "А в Омске?"},
        {
            "from": "gpt",
            "value": "<tool_call>\n{'arguments': {'city': 'Омск'}, 'name': 'get_weather'}\n</tool_call>",
        },
    ],
}
# The same chat in OpenAI's layout: what the Hermes one is read as.
HERMES_TWIN = {
    "id": "hermes-1",
    "tools": [WEATHER, CONVERT],
    "messages": [
        {"role": "system", "content": HERMES_PREAMBLE},
        {"role": "user", "content": "Погода в Казани? И сколько будет 100 долларов в рублях?"},
        {
            "role": "assistant",
            "content": "Сейчас узнаю.",
            "tool_calls": [
                _call("get_weather", {"city": "Казань"}),
                _call("convert_currency", {"amount": 100, "from": "USD", "to": "RUB", "exact": True}),
            ],
        },
        {"role": "tool", "content": '{"name": "get_weather", "content": "+12, дождь"}'},
        {"role": "tool", "content": '{"name": "convert_currency", "content": 9150.5}'},
        {"role": "assistant", "content": "В Казани +12 и дождь; 100 $ ≈ 9150,5 ₽."},
        {"role": "user", "content": "А в Омске?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Омск"})]},
    ],
}


def _without_id(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "id"}


@pytest.mark.parametrize("tools_text", sorted(HERMES_TOOLS_TEXTS))
def test_hermes_sharegpt_layout_renders_as_its_openai_twin(
    qwen_dir: tuple[str, Path], tools_text: str
) -> None:
    """Hermes's layout (tools in the system prompt's <tools> block, <tool_call> blocks after an
    answer's text, <tool_response> blocks in tool turns) is read as the same chat in OpenAI's layout:
    the same record, the same ids, those of Qwen's own template."""
    record = copy.deepcopy(HERMES)
    record["conversations"][0]["value"] = _hermes_system(HERMES_TOOLS_TEXTS[tools_text])
    (chat,) = record_chats(record, "sharegpt", "hermes.json:item 0")
    (twin,) = record_chats(HERMES_TWIN, "messages", "twin.jsonl:1")
    written = chat.record("s")
    assert _without_id(written) == _without_id(twin.record("s"))
    assert written["messages"][0] == {"role": "system", "content": HERMES_PREAMBLE}
    template, directory = qwen_dir
    tok = load_chat_tokenizer(directory, template)
    ids = encode_chat(chat.parsed, tok, template).ids
    assert ids == encode_chat(twin.parsed, tok, template).ids
    _, messages, tools = _official_chat(HERMES_TWIN, template)
    assert ids == _expected_ids(_fast(directory), messages, tools, template)


def _hermes(*turns: tuple[str, str], **record: Any) -> dict[str, Any]:
    return {"conversations": [{"from": source, "value": value} for source, value in turns], **record}


HERMES_SYSTEM = ("system", _hermes_system(json.dumps([WEATHER])))
ASKS = ("human", "Погода в Москве?")
CALLS = ("gpt", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Москва"}}\n</tool_call>')
RESPONDS = ("tool", "<tool_response>\n+20\n</tool_response>")
ANSWERS = ("gpt", "+20.")


def test_language_check_leaves_out_a_function_calling_chats_system_prompt() -> None:
    """Hermes's English calling instructions, kept before its <tools> block, made a Russian chat
    `not_russian` at min_cyrillic_share 0.5; a chat offering no functions has its system prompt read."""
    from vikhr.sft.build import cyrillic_share

    (chat,) = record_chats(_hermes(HERMES_SYSTEM, ASKS, CALLS, RESPONDS, ANSWERS), "sharegpt", "h:1")
    assert chat.tools and chat.messages[0] == ("system", HERMES_PREAMBLE)
    assert chat.prose() == "Погода в Москве?\n\n\n\n+20." and cyrillic_share(chat.prose()) == 1.0
    (plain,) = record_chats(_hermes(("system", HERMES_PREAMBLE), ASKS, ANSWERS), "sharegpt", "h:2")
    assert not plain.tools and cyrillic_share(plain.prose()) < 0.5


def test_hermes_text_is_kept_where_it_is_not_function_calling() -> None:
    """A <tools> block that does not parse leaves the system prompt as it is (and offers nothing);
    <tool_call> text in a chat that offers no functions and holds no tool turn stays text; the record's
    own tools come before the block's, whose text still goes; text after the block that is not the call
    format is kept; a prompt that was only the block and its call format is left out."""
    broken = ("system", "Be brief.\n<tools>\n[{'name': 'get_weather', broken\n</tools>")
    (chat,) = record_chats(_hermes(broken, ASKS, CALLS), "sharegpt", "h:1")
    assert chat.messages == (("system", broken[1]), ("user", ASKS[1]), ("assistant", CALLS[1]))
    assert chat.tools == () and chat.fields == ()
    # Python literals one a line: each must be a function schema, else the block stays text
    for other_line in (repr({"description": "no name"}), "{'name': 'f', broken"):
        not_all = ("system", _hermes_system(f"{WEATHER!r}\n{other_line}"))
        (chat,) = record_chats(_hermes(not_all, ASKS, CALLS), "sharegpt", "h:1")
        assert chat.messages[0] == not_all and chat.tools == () and chat.fields == ()
    record = _hermes(HERMES_SYSTEM, ASKS, CALLS, tools=[CONVERT, WEATHER])
    (chat,) = record_chats(record, "sharegpt", "h:2")
    assert chat.tools == (CONVERT, WEATHER) and chat.messages[0] == ("system", HERMES_PREAMBLE)
    kept_after = ("system", f"<tools>\n{json.dumps(WEATHER)}\n</tools>\nОтвечай по-русски.")
    (chat,) = record_chats(_hermes(kept_after, ASKS, CALLS), "sharegpt", "h:3")
    assert chat.messages[0] == ("system", "Отвечай по-русски.") and chat.tools == (WEATHER,)
    block_alone = ("system", f"<tools>\n{json.dumps(WEATHER)}\n</tools>\n{HERMES_CALL_FORMAT}")
    (chat,) = record_chats(_hermes(block_alone, ASKS, CALLS, RESPONDS, ANSWERS), "sharegpt", "h:4")
    assert [role for role, _ in chat.messages] == ["user", "assistant", "tool", "assistant"]
    assert chat.fields == ((1, "tool_calls", [_call("get_weather", {"city": "Москва"})]),)
    # tool turns alone make a chat function calling; a plain tool turn is one result; a call wrapped in
    # a literal backslash-n (some rows of hermes-function-calling-v1) is read
    wrapped = ("gpt", '<tool_call>\\n{"name": "get_weather", "arguments": {}}\\n</tool_call>')
    (chat,) = record_chats(_hermes(ASKS, wrapped, ("tool", "+20"), ANSWERS), "sharegpt", "h:5")
    assert chat.messages[2] == ("tool", "+20") and chat.fields == (
        (1, "tool_calls", [_call("get_weather", {})]),
    )


@pytest.mark.parametrize(
    ("turns", "reason", "problem"),
    [
        (
            (HERMES_SYSTEM, ASKS, ("gpt", "<tool_call>\n{name: get_weather}\n</tool_call>")),
            "bad_record",
            'turn 3: <tool_call> 1 is not the JSON of {"name", "arguments"} (Expecting property name',
        ),
        (
            (HERMES_SYSTEM, ASKS, ("gpt", '<tool_call>\n{"arguments": {}}\n</tool_call>')),
            "bad_record",
            'turn 3: <tool_call> 1 must hold {"name", "arguments"}',
        ),
        (
            (HERMES_SYSTEM, ASKS, ("gpt", CALLS[1] + '\n<tool_call>\n{"name": "f", "arguments": {}}')),
            "bad_record",
            "turn 3: a <tool_call> without its </tool_call>",
        ),
        (
            (HERMES_SYSTEM, ASKS, ("gpt", CALLS[1] + "\nГотово.")),
            "bad_record",
            "turn 3: text after a <tool_call> block (Готово.…)",
        ),
        (
            (HERMES_SYSTEM, ASKS, CALLS, ("tool", "Ответ: <tool_response>\n+20\n</tool_response>"), ANSWERS),
            "bad_record",
            "turn 4: a tool turn that writes <tool_response> blocks must hold those alone",
        ),
        (
            (HERMES_SYSTEM, ASKS, CALLS, ("tool", RESPONDS[1] + "\n" + RESPONDS[1]), ANSWERS),
            "bad_turns",
            "message 5: tool result 2 after message 3, which makes 1 tool call",
        ),
        (
            (HERMES_SYSTEM, ASKS, RESPONDS, ANSWERS),
            "bad_turns",
            "message 3: a tool result after a user turn",
        ),
        (  # the <tools> block offers get_weather only: the call is to a function it was not given
            (HERMES_SYSTEM, ASKS, ("gpt", CALLS[1].replace("get_weather", "get_time")), RESPONDS, ANSWERS),
            "bad_turns",
            "message 3: tool call 1 calls 'get_time', which is none of the functions the chat offers "
            "('get_weather'",
        ),
    ],
    ids=[
        "bad-json",
        "no-name",
        "unclosed",
        "text-after-call",
        "text-beside-response",
        "more-results",
        "no-call",
        "undeclared-function",
    ],
)
def test_malformed_hermes_records_are_unfit(
    turns: tuple[tuple[str, str], ...], reason: str, problem: str
) -> None:
    with pytest.raises(Unfit) as e:
        record_chats(_hermes(*turns), "sharegpt", "hermes.json:item 0")
    assert e.value.reason == reason and str(e.value).startswith(problem), (e.value.reason, str(e.value))


# Hermes's roles as collections that convert its chats to messages name them.
HERMES_AS_MESSAGES_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "tool": "tool"}


def _as_messages(record: dict[str, Any]) -> dict[str, Any]:
    """A Hermes ShareGPT record as collections convert it to "messages": roles and contents, the
    calls and results still written in the text."""
    messages = [
        {"role": HERMES_AS_MESSAGES_ROLES[m["from"]], "content": m["value"]} for m in record["conversations"]
    ]
    return {**{k: v for k, v in record.items() if k != "conversations"}, "messages": messages}


@pytest.mark.parametrize("tools_text", sorted(HERMES_TOOLS_TEXTS))
def test_hermes_text_in_messages_renders_as_its_openai_twin(
    qwen_dir: tuple[str, Path], tools_text: str
) -> None:
    """A Hermes chat converted to "messages" with its calls left in the text is read as the ShareGPT
    one is: the record and the ids of its OpenAI twin."""
    record = copy.deepcopy(HERMES)
    record["conversations"][0]["value"] = _hermes_system(HERMES_TOOLS_TEXTS[tools_text])
    (chat,) = record_chats(_as_messages(record), "messages", "hermes.jsonl:1")
    (twin,) = record_chats(HERMES_TWIN, "messages", "twin.jsonl:1")
    assert _without_id(chat.record("s")) == _without_id(twin.record("s"))
    template, directory = qwen_dir
    tok = load_chat_tokenizer(directory, template)
    assert encode_chat(chat.parsed, tok, template).ids == encode_chat(twin.parsed, tok, template).ids


def test_hermes_text_in_messages_is_read_on_sharegpts_terms() -> None:
    """The Hermes text of "messages" is read where ShareGPT's would be: a chat offering no functions
    and holding no tool message keeps its <tool_call> text; the record's own tools come before the
    block's; a chat giving calls in OpenAI's fields keeps all its text as it is (a <tool_call> in
    another answer was read as a call); a tool message of one <tool_response> block keeps its
    tool_call_id and name; the record's "system" field offers too."""
    (chat,) = record_chats(_as_messages(_hermes(ASKS, CALLS)), "messages", "h:1")
    assert chat.messages[1] == ("assistant", CALLS[1]) and chat.fields == () and chat.tools == ()
    record = _as_messages(_hermes(HERMES_SYSTEM, ASKS, CALLS, RESPONDS, ANSWERS, tools=[CONVERT, WEATHER]))
    record["messages"][3].update(name="get_weather", tool_call_id="call_1")
    record["messages"][2]["tool_calls"] = [{**_call("get_weather", {"city": "Москва"}), "id": "call_1"}]
    (chat,) = record_chats(record, "messages", "h:2")
    written = chat.record("s")
    assert written["tools"] == [CONVERT, WEATHER] and written["messages"][0] == {
        "role": "system",
        "content": HERMES_PREAMBLE,
    }
    assert written["messages"][2]["content"] == CALLS[1]  # it has tool_calls: its text is not read
    assert written["messages"][3] == {
        "role": "tool",
        "content": RESPONDS[1],
        "name": "get_weather",
        "tool_call_id": "call_1",
    }
    assert written["messages"][4]["content"] == ANSWERS[1]
    record["messages"][4]["content"] = "Вызов пишется так: " + CALLS[1]  # text, in a chat of native calls
    (chat,) = record_chats(record, "messages", "h:2b")
    assert chat.record("s")["messages"][4]["content"] == record["messages"][4]["content"]
    assert [i for i, key, _ in chat.fields if key == "tool_calls"] == [2]
    # a tool message of one <tool_response> block keeps its tool_call_id and name
    record = _as_messages(_hermes(HERMES_SYSTEM, ASKS, CALLS, RESPONDS, ANSWERS))
    record["messages"][3].update(name="get_weather", tool_call_id="call_1")
    (chat,) = record_chats(record, "messages", "h:2c")
    assert chat.record("s")["messages"][3] == {
        "role": "tool",
        "content": "+20",
        "name": "get_weather",
        "tool_call_id": "call_1",
    }
    # tool messages alone make a chat function calling; the "system" field offers functions too
    (chat,) = record_chats(_as_messages(_hermes(ASKS, CALLS, RESPONDS, ANSWERS)), "messages", "h:3")
    assert chat.fields == ((1, "tool_calls", [_call("get_weather", {"city": "Москва"})]),)
    assert chat.messages[1:3] == (("assistant", ""), ("tool", "+20"))
    record = _as_messages(_hermes(ASKS, CALLS, system=HERMES_SYSTEM[1]))
    (chat,) = record_chats(record, "messages", "h:4")
    assert chat.tools == (WEATHER,) and chat.messages[0] == ("system", HERMES_PREAMBLE)
    assert [key for _, key, _ in chat.fields] == ["tool_calls"]


@pytest.mark.parametrize(
    ("turns", "tool_fields", "problem"),
    [
        (
            (HERMES_SYSTEM, ASKS, ("gpt", CALLS[1] + "\nГотово.")),
            {},
            "turn 3: text after a <tool_call> block (Готово.…)",
        ),
        (
            (HERMES_SYSTEM, ASKS, ("gpt", "<tool_call>\n{name: get_weather}\n</tool_call>")),
            {},
            'turn 3: <tool_call> 1 is not the JSON of {"name", "arguments"}',
        ),
        (
            (HERMES_SYSTEM, ASKS, CALLS, ("tool", "Ответ: " + RESPONDS[1]), ANSWERS),
            {},
            "turn 4: a tool turn that writes <tool_response> blocks must hold those alone",
        ),
        (
            (HERMES_SYSTEM, ASKS, CALLS, ("tool", RESPONDS[1] + "\n" + RESPONDS[1]), ANSWERS),
            {"tool_call_id": "call_1"},
            "turn 4: a tool message of 2 <tool_response> blocks carries a tool_call_id (give one message "
            "per result)",
        ),
    ],
    ids=["text-after-call", "bad-json", "text-beside-response", "one-id-for-two-results"],
)
def test_malformed_hermes_text_in_messages_is_unfit(
    turns: tuple[tuple[str, str], ...], tool_fields: dict[str, Any], problem: str
) -> None:
    record = _as_messages(_hermes(*turns))
    for m in record["messages"]:
        if m["role"] == "tool":
            m.update(tool_fields)
    with pytest.raises(Unfit) as e:
        record_chats(record, "messages", "hermes.jsonl:1")
    assert e.value.reason == "bad_record" and str(e.value).startswith(problem), str(e.value)


LEGACY_FUNCTIONS = {
    "id": "legacy-1",
    "functions": [WEATHER["function"]],
    "messages": [
        {"role": "system", "content": "Ты — полезный ассистент."},
        {"role": "user", "content": "Какая погода в Москве?"},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{"city": "Москва"}'},
        },
        {"role": "function", "name": "get_weather", "content": '{"temperature": 21}'},
        {"role": "assistant", "content": "В Москве +21 °C."},
    ],
}


def test_openai_legacy_function_calling_is_read_as_tool_calls(qwen_dir: tuple[str, Path]) -> None:
    """OpenAI's legacy layout (`functions`, an assistant's `function_call`, a `function` message) is
    written as its current one, and renders as that does."""
    (chat,) = record_chats(LEGACY_FUNCTIONS, "messages", "legacy.jsonl:1")
    twin = copy.deepcopy(LEGACY_FUNCTIONS)
    del twin["functions"]
    twin["tools"] = [WEATHER]
    twin["messages"][2] = {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call("get_weather", '{"city": "Москва"}')],
    }
    twin["messages"][3]["role"] = "tool"
    (twin_chat,) = record_chats(twin, "messages", "current.jsonl:1")
    assert chat.record("s") == twin_chat.record("s")
    assert chat.record("s")["messages"][2:4] == twin["messages"][2:4]
    template, directory = qwen_dir
    tok = load_chat_tokenizer(directory, template)
    assert encode_chat(chat.parsed, tok, template).ids == encode_chat(parse_chat(twin), tok, template).ids
    # a function listed both as a tool and in "functions" is offered once
    both = {**LEGACY_FUNCTIONS, "tools": [WEATHER], "functions": [WEATHER["function"], CONVERT["function"]]}
    (chat,) = record_chats(both, "messages", "legacy.jsonl:2")
    assert chat.tools == (WEATHER, CONVERT)


@pytest.mark.parametrize(
    ("fmt", "record", "reason", "problem"),
    [
        ("sharegpt", {**GLAIVE, "tools": "[{"}, "bad_record", '"tools" is not valid JSON'),
        (
            "sharegpt",
            {**GLAIVE, "tools": '[{"description": "no name"}]'},
            "bad_record",
            '"tools" item 1: expected',
        ),
        (
            "sharegpt",
            {
                **GLAIVE,
                "conversations": [GLAIVE["conversations"][0], {"from": "function_call", "value": "convert"}],
            },
            "bad_record",
            "turn 2: a function_call value must be JSON",
        ),
        (
            "sharegpt",
            {
                **GLAIVE,
                "conversations": [
                    GLAIVE["conversations"][0],
                    {"from": "function_call", "value": '{"name": "f"}'},
                ],
            },
            "bad_record",
            'turn 2: a function_call value must be {"name", "arguments"}',
        ),
        (
            "sharegpt",
            {**GLAIVE, "conversations": [GLAIVE["conversations"][0], *GLAIVE["conversations"][2:]]},
            "bad_turns",
            "message 3: a tool result after a user turn",
        ),
        (
            "messages",
            _chat(USER, {**CALLING, "tool_calls": [_call("f", "{oops")]}, RESULT, ANSWER),
            "bad_turns",
            "message 2: tool call 1: arguments are not valid JSON",
        ),
        (
            "messages",
            _chat(USER, CALLING, {**RESULT, "content": " "}, ANSWER),
            "empty_turn",
            "turn 3 (tool) is empty",
        ),
        (
            "messages",
            _chat(USER, CALLING, RESULT, RESULT, ANSWER),
            "bad_turns",
            "message 4: tool result 2 after message 2, which makes 1 tool call",
        ),
        (
            "messages",
            _chat(USER, CALLING_WITH_IDS, {**RESULT, "tool_call_id": "call_3"}, ANSWER),
            "bad_turns",
            "message 3: tool_call_id 'call_3' is none of the ids of the calls of message 2",
        ),
        (
            "preference",
            {"chosen": [USER, CALLING, RESULT, ANSWER], "rejected": [USER, ANSWER]},
            "bad_role",
            "function calls in a preference pair are not read",
        ),
        (
            "messages",
            _chat(USER, {"role": "assistant", "content": None, "function_call": "get_weather"}),
            "bad_record",
            'turn 2: function_call must be {"name", "arguments"}, got \'get_weather\'',
        ),
        (
            "messages",
            _chat(USER, {**CALLING, "function_call": {"name": "f", "arguments": "{}"}}),
            "bad_record",
            "turn 2: both tool_calls and function_call",
        ),
        (
            "messages",
            {**LEGACY_FUNCTIONS, "functions": [{"description": "no name"}]},
            "bad_record",
            '"functions" item 1: expected a function schema',
        ),
        (
            "messages",
            _chat(USER, {"role": "function", "name": "get_weather", "content": "+20"}, ANSWER),
            "bad_turns",
            "message 2: a tool result after a user turn",
        ),
        (
            "messages",
            {
                **LEGACY_FUNCTIONS,
                "messages": [
                    *LEGACY_FUNCTIONS["messages"][:3],
                    {"role": "function", "name": "get_time", "content": "12:00"},
                    LEGACY_FUNCTIONS["messages"][4],
                ],
            },
            "bad_turns",
            "message 4: tool result name 'get_time' is none of the functions it answers",
        ),
        (
            "messages",
            _chat(
                USER,
                CALLING_WITH_IDS,
                {**RESULT, "tool_call_id": "call_2"},
                {**RESULT, "tool_call_id": "call_2"},
                ANSWER,
            ),
            "bad_turns",
            "message 4: a second tool result for tool_call_id 'call_2'",
        ),
        (  # a record line as JSON gives it: json.loads reads NaN
            "messages",
            json.loads(
                '{"messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": null, '
                '"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": NaN}}}]}]}'
            ),
            "bad_turns",
            "message 2: tool call 1: arguments hold NaN or an infinite number",
        ),
        (
            "sharegpt",
            _hermes(
                HERMES_SYSTEM,
                ASKS,
                ("gpt", '<tool_call>\n{"name": "f", "arguments": {"x": NaN}}\n</tool_call>'),
            ),
            "bad_turns",
            "message 3: tool call 1: arguments hold NaN or an infinite number",
        ),
        (
            "sharegpt",
            _hermes(
                ("system", _hermes_system('{"name": "f", "parameters": {"default": NaN}}')), ASKS, ANSWERS
            ),
            "bad_turns",
            "tool 1 (f): its schema holds NaN or an infinite number",
        ),
        (  # a Parquet row's date (pyarrow gives datetime.date): json.dumps raised, the build was lost
            "messages",
            _chat(
                USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        _call("get_weather", {"city": "Москва", "day": datetime.date(2024, 1, 1)})
                    ],
                },
            ),
            "bad_turns",
            "message 2: tool call 1: arguments hold a value JSON cannot hold (Object of type date",
        ),
    ],
)
def test_malformed_tool_records_are_unfit(
    fmt: str, record: dict[str, Any], reason: str, problem: str
) -> None:
    with pytest.raises(Unfit) as e:
        record_chats(record, fmt, "f.jsonl:1")
    assert e.value.reason == reason and problem in str(e.value), (e.value.reason, str(e.value))


def test_build_keeps_tool_chats_and_tells_their_calls_apart(tmp_path: Path) -> None:
    """`vikhr sft build` encodes tool chats with the target template (duplicate removal and the language
    check read their texts); two chats that differ only in a call's arguments are both kept, and the
    written chats are what `sft prepare` reads; a template without tools counts them as template_refused."""
    import yaml

    from vikhr.sft.build import build

    first = TOOL_CHATS["one call, system, object arguments"]
    second = copy.deepcopy(first)
    second["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"city": "Москва", "days": 3}
    plain = {
        "messages": [
            {"role": "user", "content": "Привет, как дела?"},
            {"role": "assistant", "content": "Хорошо!"},
        ]
    }
    (tmp_path / "openai.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (first, second, plain)), encoding="utf-8"
    )
    (tmp_path / "glaive.json").write_text(json.dumps([GLAIVE], ensure_ascii=False), encoding="utf-8")
    (tmp_path / "hermes.json").write_text(json.dumps([HERMES], ensure_ascii=False), encoding="utf-8")
    for template, kept, refused in (("chatml", 5, 0), ("mistral", 1, 4)):
        output = tmp_path / template / "chats.jsonl"
        cfg = {
            "output": str(output),
            "tokenizer": str(MISTRAL_TOKENIZER),
            "template": template,
            "limits": {"min_tokens": 4, "max_tokens": 4096},
            "sources": [
                *(
                    {"name": name, "path": str(tmp_path / name), "min_cyrillic_share": 0.5}
                    for name in ("openai.jsonl", "glaive.json")
                ),
                # Its system prompt is English, left out of the language check as a function-calling one.
                {"name": "hermes", "path": str(tmp_path / "hermes.json"), "min_cyrillic_share": 0.5},
            ],
        }
        path = tmp_path / f"{template}.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
        report = build(path)
        dropped = sum(s["dropped"].get("template_refused", 0) for s in report["sources"])
        assert (report["kept"], dropped) == (kept, refused), report
    written = [json.loads(line) for line in (tmp_path / "chatml" / "chats.jsonl").read_text().splitlines()]
    tok = load_chat_tokenizer(MISTRAL_TOKENIZER, "chatml")
    for record in written:
        encode_chat(parse_chat(record), tok, "chatml")
    assert written[3]["tools"] == [CONVERT] and "tool_calls" in written[0]["messages"][2]
    (hermes_twin,) = record_chats(HERMES_TWIN, "messages", "twin.jsonl:1")
    assert _without_id(written[4]) == _without_id(hermes_twin.record("hermes"))


def test_a_function_listed_twice_alike_is_offered_once() -> None:
    """`tools: [W, W]` wrote the function twice into the chatml/qwen3 tool block (sft build already
    kept one where a function is in both "tools" and "functions")."""
    twice = parse_chat(_chat(USER, CALLING, RESULT, ANSWER, tools=[WEATHER, CONVERT, WEATHER]))
    once = parse_chat(_chat(USER, CALLING, RESULT, ANSWER, tools=[WEATHER, CONVERT]))
    assert twice.tools == once.tools and len(once.tools) == 2
