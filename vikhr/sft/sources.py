"""Instruction collections as they are published → one chat record, the one `vikhr sft prepare` reads.

Formats (`FORMATS`), each recognised by the fields of its records:

* ``messages`` (Saiga, OpenAI style): ``{"messages": [{"role", "content"}, ...]}``; roles user/assistant/
  system, also ``bot`` (Saiga's name for the assistant); a content may be OpenAI's list of content
  parts, whose text parts are joined (another part, an image, makes the record unfit). OpenAI's
  function calls pass through: an assistant's ``tool_calls`` (content then empty or null), ``tool``
  messages (with ``name`` and ``tool_call_id``), the record's ``tools``; and OpenAI's legacy
  function calling in that form: an assistant's ``function_call`` ``{"name", "arguments"}`` (one
  call), a ``"function"`` message (with ``name``) its result, the record's ``functions`` (bare
  schemas). The column layout of an HF dataset
  (``{"messages": {"role": [...], "content": [...]}}``) is read too, and the list under the name
  ``conversation`` (GrandMaster-PRO-MAX, lmsys-chat-1m, WildChat; Capybara's and XTuner's
  list of ``{"input", "output"}`` exchanges is read as user and assistant turns); a list given as
  its JSON text (orca-agentinstruct-1M) is read as the list. The turns' fields tell the format, not
  the list's name: ``{"role", "content"}`` turns under ``conversations`` are ``messages``, ``{"from",
  "value"}`` ones under ``messages`` are ``sharegpt``. Hermes's calls
  written in the text of such messages (Hermes chats converted to roles and contents) are read as in
  ``sharegpt`` (see `_messages_chat`).
* ``sharegpt`` (OpenHermes, Veles): ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}``.
  A ``"system"`` field beside the turns (LLaMA-Factory's layout; also beside ``messages``) opens the
  chat unless it has a system turn. LLaMA-Factory's (and its Glaive conversion's) function calls:
  a ``"function_call"`` turn is an assistant turn calling the functions of its value (the JSON of
  ``{"name", "arguments"}``, or of a list of them), an ``"observation"`` turn a tool result, and the
  record's ``"tools"`` (a list, or its JSON text) the functions offered; written in OpenAI's layout.
  NousResearch's Hermes layout (hermes-function-calling-v1 and the sets in its shape), written in
  that layout too: the functions in the system prompt's ``<tools>`` block, ``<tool_call>`` blocks
  after a gpt turn's text, ``"tool"`` turns of ``<tool_response>`` blocks (see `_sharegpt_chat`
  and vikhr.sft.tool_layouts).

A record's ``"tools"`` (and ``"functions"``) may hold bare function schemas (``{"name",
"description", "parameters"}``, LLaMA-Factory's, Glaive's, OpenAI's legacy ones): each is wrapped as
``{"type": "function", "function": schema}``, as LLaMA-Factory does for Qwen's template. Function
calls in a ``preference`` pair are not read (``bad_role``).
* ``flan`` (ruFLAN, FLAN collections): ``{"inputs", "targets"}`` (or ``"target"``): the inputs, the
  whole prompt, are the user turn and the targets the answer.
* ``alpaca`` (rulm self-instruct, ru_turbo_alpaca): ``{"instruction", "input", "output"}``; the input,
  stripped of surrounding whitespace, follows the instruction after a blank line when it is not empty
  (and stands alone when the instruction is). LLaMA-Factory's ``system`` and ``history``
  (``[[question, answer], ...]``) are the turns before it. The
  self-instruct seed layout ``{"instruction", "instances": [{"input", "output"}, ...]}`` gives one
  chat per instance.
* ``dolly`` (databricks-dolly-15k and its translations): ``{"instruction", "context", "response"}``; the
  context follows the instruction as an Alpaca input does.
* ``orca`` (OpenOrca, SlimOrca-style dumps as columns): ``{"system_prompt", "question", "response"}``;
  the system prompt, when not empty, opens the chat.
* ``oasst`` (OpenAssistant oasst1/oasst2): message rows ``{"message_id", "parent_id", "role":
  "prompter"|"assistant", "text", "rank", "deleted", "review_result", "message_tree_id"}``, read a whole
  file at a time: one chat per tree, its main branch — from the first message, the best-ranked reply
  at each step (rank 0; unranked ones after the ranked, the first of equals), leaving out deleted
  messages and those that failed their review, ending with the last answer; with `max_rank` N, one
  chat per branch through the N best-ranked replies at each step (as Open-Assistant's own SFT data).
* ``nectar``: ``{"prompt": "\\n\\nHuman: …\\n\\nAssistant: …\\n\\nHuman: …\\n\\nAssistant:",
  "answers": [{"answer", "model", "rank"}, ...]}``; the best-ranked answer (rank 1 is best), or one
  chat per answer ranked `max_rank` or better.

* ``preference`` (DPO pairs: UltraFeedback-binarized, Anthropic HH-RLHF, TRL's preference layouts):
  ``{"chosen", "rejected"}`` and an optional ``"prompt"``; the chosen side is the chat, the rejected
  one is not used. ``chosen`` is a whole chat (a messages list opening with a user or system turn,
  or HH-RLHF's ``"\\n\\nHuman: …\\n\\nAssistant: …"`` text) or the answer to ``prompt`` (a string,
  HH-RLHF's text split into its turns, or a messages list).

A system turn that is empty (SlimOrca writes ``{"from": "system", "value": ""}`` where there is no
system prompt) is left out.

Files: JSONL (plain, ``.gz``, ``.zst``, through `vikhr.jsonl`), a ``.json`` file holding one JSON
array of records (OpenHermes-2.5, alpaca_data.json; read one record at a time), and Parquet (read one
row group at a time). A record that fits no chat (bad JSON, a role the chat format lacks, an empty
turn, turns out of order, missing fields) is an `Unfit` with a reason and its place (``file:line``,
``file:item N`` or ``file:row N``); the caller counts it, nothing is dropped silently.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from vikhr.errors import VikhrError
from vikhr.jsonl import (
    MAX_DEPTH,
    BadLine,
    depth_refusal,
    int_or_float,
    not_json_lines,
    open_text,
    parse_record,
    record_lines,
    surrogate_refusal,
)
from vikhr.sft.collection_format import record_format, turn_list_key
from vikhr.sft.encoded import ChatMessages
from vikhr.sft.template import answered_length, message_text, parse_chat, turn_weight, with_reasoning
from vikhr.sft.tool_layouts import (
    MalformedToolText,
    as_call,
    as_tool,
    calls_in_answer,
    tool_results,
    tools_in_system,
)

FORMATS = ("messages", "sharegpt", "flan", "alpaca", "dolly", "orca", "nectar", "oasst", "preference")
ROLE_NAMES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "bot": "assistant",
    "gpt": "assistant",
    "system": "system",
    "developer": "system",  # OpenAI's name of the system turn for its newer models
    "prompter": "user",  # OpenAssistant's
}
RANKED_FORMATS = ("nectar", "oasst")  # the formats a source's max_rank applies to
NOT_KEPT = "not_kept"  # the reason of a record a source's keep_where leaves out
DETECT_RECORDS = 20  # records looked at to recognise a file's format
ARRAY_CHUNK_CHARS = 1 << 20  # a JSON array file is read this much at a time
_HUMAN_ASSISTANT_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")  # Anthropic HH-RLHF's and Nectar's


@dataclass(frozen=True)
class Chat:
    """One chat in `vikhr sft prepare`'s format, with where it came from."""

    # the record's own id (or its place), "#n" for a record's n-th chat; records may share an id (the
    # build writes a repeated one with its place after it and keeps records apart by their places)
    id: str
    group: str  # the record it came from: the chats of one record are not near-duplicates of each other
    messages: tuple[tuple[str, str], ...]  # (role, content), validated by vikhr.sft.template.parse_chat
    untrained: tuple[int, ...] = ()  # the answers (indices into messages) of weight 0: context only
    # (message index, key, value) of what a message holds beside its role and content, in OpenAI's
    # layout: an assistant's "tool_calls", a tool result's "name" and "tool_call_id".
    fields: tuple[tuple[int, str, Any], ...] = ()
    tools: tuple[Any, ...] = ()  # the functions the chat offers ({"type": "function", "function": ...})
    trimmed: int = 0  # user turns after the last answer, which no answer followed, left out

    @functools.cached_property
    def parsed(self) -> ChatMessages:
        """The messages as `vikhr sft prepare` reads them (VikhrError where it would refuse the chat):
        parsed once, for the source's check and the build's encoding."""
        return parse_chat(self.record(""))

    def prompt(self) -> str:
        """Every turn before the last answer but the system turn (user turns, earlier answers and their
        calls, tool results): what near-duplicate removal compares. A collection's shared system prompt
        would make different tasks look alike (a 56-word one dropped 372 of 806 rulm chats)."""
        return "\n\n".join(text for role, text in self._turn_texts()[:-1] if role != "system")

    def text(self) -> str:
        """Every turn, calls included: what exact-duplicate removal compares."""
        return "\n\n".join(text for _, text in self._turn_texts())

    def prose(self) -> str:
        """The user and assistant texts, without function calls and tool results (JSON, mostly Latin),
        and the system prompt of a chat that offers no functions: what the language check reads. A
        function-calling chat's system prompt is mostly the collection's calling instructions, English
        in translated sets (Hermes's alone outweighed a short Russian chat)."""
        left_out = ("tool", "system") if self.tools else ("tool",)
        return "\n\n".join(content for role, content in self.messages if role not in left_out)

    def _turn_texts(self) -> list[tuple[str, str]]:
        calls: dict[int, list[str]] = {}
        for i, key, value in self.fields:
            if key == "tool_calls":
                calls.setdefault(i, []).append(json.dumps(value, ensure_ascii=False))
        return [(r, "\n".join([c, *calls[i]]) if i in calls else c) for i, (r, c) in enumerate(self.messages)]

    def record(self, source: str) -> dict[str, Any]:
        """The JSONL object written for this chat (`vikhr sft prepare` reads "messages" and "tools")."""
        fields: dict[int, dict[str, Any]] = {}
        for i, key, value in self.fields:
            fields.setdefault(i, {})[key] = value
        return {
            "id": f"{source}/{self.id}",
            "source": source,
            "messages": [
                {
                    "role": r,
                    "content": c,
                    **fields.get(i, {}),
                    **({"weight": 0} if i in self.untrained else {}),
                }
                for i, (r, c) in enumerate(self.messages)
            ],
            **({"tools": list(self.tools)} if self.tools else {}),
        }


class Unfit(Exception):
    """A record that gives no chat: `reason` (a short key for the report) and what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------- reading files


def is_parquet(path: Path) -> bool:
    return path.suffix == ".parquet"


def read_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any] | Unfit]]:
    """(place, record or Unfit) of every record of a JSONL, JSON array or Parquet file, in order.

    A JSONL line is read as vikhr.jsonl reads it, NaN and Infinity taken (collections written by
    json.dumps hold them); one it refuses (not a JSON object, a lone surrogate escape, ...) is an
    Unfit("bad_json"). An unreadable file, or a line that is not UTF-8, is a VikhrError.
    """
    p = Path(path)
    if not p.is_file():
        raise VikhrError(f"source file not found: {p} (check the path in the config)")
    if is_parquet(p):
        yield from _parquet_records(p)
        return
    if not_json_lines(p) == "one JSON array":  # a .json file
        with open_text(p) as f:
            while f.read(1) not in ("[", ""):  # past the white space before it
                pass
            yield from _array_records(f, p)
        return
    for line_no, line in record_lines(p):
        try:
            record: dict[str, Any] | Unfit = parse_record(line, allow_nan=True)
        except BadLine as e:
            record = Unfit("bad_json", str(e))
        yield f"{p}:{line_no}", record


def refuse_a_collection_file(path: str | Path, command: str) -> None:
    """VikhrError when `path`, given to `command` as a chats JSONL, is a Parquet file or one JSON
    array: read as JSON Lines it said "not UTF-8 … iconv -f cp1251" or "not valid JSON" on line 1.
    Anything else (a missing file included) is left to the reader to name."""
    p = Path(path)
    try:
        kind = not_json_lines(p)
    except OSError:
        return  # unreadable: the reader names the problem
    if kind is None:
        return
    kinds = "Parquet files" if kind == "a Parquet file" else "JSON arrays"
    raise VikhrError(
        f'{p} is {kind}, not JSON Lines: {command} reads a chats JSONL, one {{"messages": [...]}} a '
        f"line; `vikhr sft build` reads {kinds} of the collections' formats and writes one (docs/sft.md)"
    )


def _array_records(f: TextIO, path: Path) -> Iterator[tuple[str, dict[str, Any] | Unfit]]:
    """The records of a JSON array whose "[" was read from `f`, decoded one at a time (OpenHermes-2.5's
    is 1.9 GB); places are ``file:item N``. Bad JSON ends the file: its one Unfit says where."""
    decoder = json.JSONDecoder(parse_int=int_or_float)  # numbers of any size, as the JSONL readers
    buffer, at, item, ended, after_value = "", 0, 0, False, False

    def more() -> bool:
        nonlocal buffer, at, ended
        chunk = f.read(ARRAY_CHUNK_CHARS)
        buffer, at, ended = buffer[at:] + chunk, 0, not chunk
        return bool(chunk)

    def unfit(message: str) -> tuple[str, Unfit]:
        return f"{path}:item {item}", Unfit("bad_json", message)

    while True:
        while True:  # past white space
            while at < len(buffer) and buffer[at].isspace():
                at += 1
            if at < len(buffer) or not more():
                break
        if at >= len(buffer):
            yield unfit("the JSON array is not closed (a cut file?)")
            return
        if buffer[at] == "]" and (after_value or item == 0):
            rest = buffer[at + 1 :] + f.read()  # the array ends the file (not JSON Lines of arrays)
            if rest.strip():
                yield unfit("more after the JSON array's closing ']' (give one array, or JSON Lines)")
            return
        if buffer[at] == "," and after_value:
            at, after_value = at + 1, False
            continue
        if after_value or buffer[at] in ",]":
            yield unfit(f"not valid JSON (unexpected {buffer[at]!r} between the array's records)")
            return
        try:
            record, end = decoder.raw_decode(buffer, at)
        except json.JSONDecodeError as e:
            if not ended and more():
                continue  # the value goes on in the next chunk
            yield unfit(f"not valid JSON ({e.msg})")
            return
        except RecursionError:  # nested past Python's limit: where the item ends is not known
            yield unfit(f"not valid JSON (arrays and objects nested more than {MAX_DEPTH} deep)")
            return
        text, at, after_value = buffer[at:end], end, True
        refused = depth_refusal(text) or surrogate_refusal(text)
        if refused is not None:
            yield unfit(f"not valid JSON ({refused}); fix or drop the item")
        elif isinstance(record, dict):
            yield f"{path}:item {item}", record
        else:
            yield unfit(f"expected a JSON object, got {type(record).__name__}")
        item += 1


def _parquet_records(path: Path) -> Iterator[tuple[str, dict[str, Any] | Unfit]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a damaged file
        raise VikhrError(f"{path}: not a readable Parquet file ({e})") from None
    row = 0
    for group in range(parquet.num_row_groups):  # one row group in memory at a time
        for record in parquet.read_row_group(group).to_pylist():
            yield f"{path}:row {row}", record
            row += 1


# --------------------------------------------------------------------------- formats


def detect_format(path: str | Path) -> str:
    """The format of the first records of `path` (the one most of them fit), or VikhrError."""
    counts: dict[str, int] = {}
    fields: set[str] = set()
    seen, first_unfit = 0, None
    for where, record in read_records(path):
        if isinstance(record, Unfit):
            first_unfit = first_unfit or f"{where}: {record}"
            continue
        fields.update(record)
        fmt = record_format(record)
        if fmt is not None:
            counts[fmt] = counts.get(fmt, 0) + 1
        seen += 1
        if seen >= DETECT_RECORDS:
            break
    if seen == 0:  # nothing to tell a format by: say why, not "fields of the first records: none"
        if first_unfit is None:
            raise VikhrError(f"{path} holds no records (an empty file: check the download, or leave it out)")
        raise VikhrError(f"{path}: no record of it could be read ({first_unfit})")
    if not counts:
        shown = ", ".join(sorted(fields)[:12]) or "none"
        raise VikhrError(
            f"{path}: unknown chat format (fields of the first records: {shown}); expected one of "
            f"{', '.join(FORMATS)} (docs/sft.md), or set format: in the config"
        )
    return max(FORMATS, key=lambda f: counts.get(f, 0))


def record_chats(record: dict[str, Any], fmt: str, where: str, max_rank: int | None = None) -> list[Chat]:
    """The chats of one record in format `fmt`, or Unfit. `where` names it when it has no id."""
    record_id = _record_id(record, where)
    untrained: tuple[int, ...] = ()  # messages and sharegpt: the answers of weight 0
    fields: tuple[tuple[int, str, Any], ...] = ()  # and what their messages hold beside role and content
    tools: tuple[Any, ...] = ()  # and the functions the chat offers
    if fmt == "messages":
        messages, untrained, fields, tools = _messages_chat(record)
        turns = [messages]
    elif fmt == "sharegpt":
        messages, untrained, fields, tools = _sharegpt_chat(record)
        turns = [messages]
    elif fmt == "alpaca":
        turns = _alpaca_turns(record)
    elif fmt == "flan":
        answer = record["targets"] if "targets" in record else record.get("target")
        turns = [
            [("user", _text(record.get("inputs"), '"inputs"')), ("assistant", _text(answer, '"targets"'))]
        ]
    elif fmt == "dolly":
        instruction = _text(record.get("instruction"), '"instruction"')
        prompt = _alpaca_prompt(instruction, record.get("context"), '"context"')
        turns = [[("user", prompt), ("assistant", _text(record.get("response"), '"response"'))]]
    elif fmt == "orca":
        system = record.get("system_prompt")
        opening = [("system", _text(system, '"system_prompt"'))] if system is not None else []
        question, response = (
            _text(record.get("question"), '"question"'),
            _text(record.get("response"), '"response"'),
        )
        turns = [[*opening, ("user", question), ("assistant", response)]]
    elif fmt == "nectar":
        turns = _nectar_turns(record, max_rank)
    elif fmt == "preference":
        messages, untrained = _preference_turns(record)
        turns = [messages]
    elif fmt == "oasst":
        raise Unfit("bad_record", "an OASST message row is read with its tree (read_chats_of reads the file)")
    else:
        raise VikhrError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    chats = []
    for n, messages in enumerate(turns):
        if messages and messages[0][0] == "system" and not messages[0][1].strip():
            messages = messages[1:]  # "no system prompt", as SlimOrca writes it
            untrained, fields = _moved(untrained, fields, -1)
        answered = answered_length([role for role, _ in messages])
        chat = Chat(
            record_id if len(turns) == 1 else f"{record_id}#{n}",
            record_id,
            tuple(messages[:answered]),
            tuple(i for i in untrained if i < answered),
            tuple(f for f in fields if f[0] < answered),
            tools,
            trimmed=len(messages) - answered,
        )
        _check(chat)
        chats.append(chat)
    return chats


def _moved(
    untrained: tuple[int, ...], fields: tuple[tuple[int, str, Any], ...], by: int
) -> tuple[tuple[int, ...], tuple[tuple[int, str, Any], ...]]:
    """`untrained` and `fields` of turns that moved `by` places (a system turn put before or left out)."""
    return tuple(i + by for i in untrained), tuple((i + by, key, value) for i, key, value in fields)


def _record_id(record: dict[str, Any], where: str) -> str:
    for key in ("id", "conversation_id", "idx"):
        value = record.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    path, _, place = where.rpartition(":")
    return f"{_file_name(path)}:{place}"


@functools.lru_cache(maxsize=64)
def _file_name(path: str) -> str:
    """The name of the file at `path`: one Path per file, not per record without an id."""
    return Path(path).name


def _role(name: Any, i: int, tool_roles: tuple[str, ...]) -> str:
    """The role a turn's `name` stands for; `tool_roles`, the layout's names of function-calling
    turns (read by the caller), are only named in the error."""
    role = ROLE_NAMES.get(name) if isinstance(name, str) else None
    if role is None:
        known = ", ".join(sorted((*ROLE_NAMES, *tool_roles)))
        raise Unfit("bad_role", f"turn {i}: role {name!r} is not one of {known}")
    return role


def _text(value: Any, what: str) -> str:
    """A field's text as `vikhr sft prepare` reads a message's content (`message_text`: a string, a
    number, OpenAI's list of text parts), or Unfit."""
    try:
        return message_text(value, what)
    except VikhrError as e:
        raise Unfit("bad_record", str(e)) from None


def _with_record_system(
    record: dict[str, Any], turns: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], int]:
    """The turns with the record's own ``"system"`` field first (LLaMA-Factory's ShareGPT and OpenAI
    layouts keep the system prompt beside the turns), unless they open with a system turn; and the
    number of turns put before them (0 or 1)."""
    system = record.get("system")
    if system is None or (turns and turns[0][0] == "system"):
        return turns, 0
    return [("system", _text(system, '"system"')), *turns], 1


def _record_tools(record: dict[str, Any]) -> tuple[Any, ...]:
    """The functions a record offers: its ``"tools"`` and OpenAI's legacy ``"functions"`` (each a list,
    or its JSON text: LLaMA-Factory's ShareGPT layout), each in OpenAI's form (see
    `tool_layouts.as_tool`); a function both lists hold is offered once."""
    tools = _tool_list(record, "tools")
    return (*tools, *(f for f in _tool_list(record, "functions") if f not in tools))


def _tool_list(record: dict[str, Any], key: str) -> tuple[Any, ...]:
    raw = record.get(key)
    if isinstance(raw, str):
        if not raw.strip():
            return ()
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise Unfit("bad_record", f'"{key}" is not valid JSON ({e.msg} at column {e.colno})') from None
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise Unfit("bad_record", f'"{key}" must be a list of function schemas, got {type(raw).__name__}')
    tools = []
    for k, schema in enumerate(raw, start=1):
        tool = as_tool(schema)
        if tool is None:
            raise Unfit(
                "bad_record", f'"{key}" item {k}: expected a function schema {{"name", "parameters", ...}}'
            )
        tools.append(tool)
    return tuple(tools)


def _weight(m: dict[str, Any], role: str, i: int) -> bool:
    """Whether turn `i` is trained by its optional "weight" (see template.turn_weight), or Unfit."""
    try:
        return turn_weight(m.get("weight"), role, i)
    except VikhrError as e:
        raise Unfit("bad_weight", str(e).replace("message", "turn", 1)) from None


Fields = tuple[tuple[int, str, Any], ...]  # see Chat.fields
_Read = TypeVar("_Read")


def _message_list(raw: Any) -> list[Any]:
    """A "messages" value as a list of messages: as it is, or made of an HF dataset's column layout
    (``{"role": [...], "content": [...]}``) or of Capybara's and XTuner's exchanges (``[{"input",
    "output"}, ...]``: a user turn and its answer each, after XTuner's ``"system"`` where an exchange
    has one), or the JSON text of one (orca-agentinstruct's); Unfit unless it is a non-empty one."""
    if isinstance(raw, str) and raw.lstrip().startswith("["):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise Unfit("bad_record", f'"messages" is not valid JSON ({e.msg} at column {e.colno})') from None
    if isinstance(raw, dict) and isinstance(raw.get("role"), list) and isinstance(raw.get("content"), list):
        if len(raw["role"]) != len(raw["content"]):  # a column-form record whose columns do not pair up
            raise Unfit(
                "bad_record", f'"messages" has {len(raw["role"])} roles and {len(raw["content"])} contents'
            )
        raw = [{"role": r, "content": c} for r, c in zip(raw["role"], raw["content"], strict=True)]
    if not isinstance(raw, list) or not raw:
        raise Unfit("bad_record", '"messages" must be a non-empty list of {"role", "content"}')
    if all(isinstance(m, dict) and "input" in m and "output" in m and "role" not in m for m in raw):
        return [
            {"role": role, "content": m[key]}
            for m in raw
            for role, key in (("system", "system"), ("user", "input"), ("assistant", "output"))
            if key != "system" or m.get("system")
        ]
    return raw


def _messages_chat(
    record: dict[str, Any],
) -> tuple[list[tuple[str, str]], tuple[int, ...], Fields, tuple[Any, ...]]:
    """`_sharegpt_chat` of a "messages" record: its turns (the record's ``"system"`` first, see
    `_with_record_system`), the answers of weight 0, the calls and tool-result fields, and the
    functions it offers, its own or, as in ShareGPT, those of a Hermes ``<tools>`` block in its
    system prompt. Hermes's text (``<tool_call>`` blocks in an answer without ``tool_calls``,
    ``<tool_response>`` blocks in a tool message) is read on the same terms: in a chat that offers
    functions or holds tool messages (collections convert Hermes chats to roles and contents and
    keep the calls as text) and gives no call in OpenAI's fields."""
    raw = _message_list(record.get(turn_list_key(record) or "messages"))
    opens_with_system = isinstance(raw[0], dict) and ROLE_NAMES.get(raw[0].get("role")) == "system"
    system = raw[0].get("content") if opens_with_system else record.get("system")
    if opens_with_system and isinstance(system, list):
        system = _text(system, "turn 1 content")
    # A chat that gives its calls in OpenAI's fields writes them nowhere else: its text stays text.
    native = any(isinstance(m, dict) and ("tool_calls" in m or "function_call" in m) for m in raw)
    has_results = any(isinstance(m, dict) and m.get("role") == "tool" for m in raw)
    return _chat_offering_tools(
        record, system, lambda reads_calls: _messages_turns(raw, reads_calls), not native, has_results
    )


def _messages_turns(
    raw: Any, reads_calls: bool = False
) -> tuple[list[tuple[str, str]], tuple[int, ...], Fields]:
    """The turns of a "messages" list, the indices of the answers of weight 0, and the messages'
    function calls and tool-result fields (OpenAI's layout, passed on as given; its legacy
    ``function_call`` and ``"function"`` role read as a call and a tool result); where `reads_calls`,
    Hermes's too: the ``<tool_call>`` blocks of an answer without ``tool_calls``, the
    ``<tool_response>`` blocks of a ``"tool"`` message (one tool result each)."""
    turns, untrained, fields = [], [], []
    for i, m in enumerate(_message_list(raw), start=1):
        if not isinstance(m, dict):
            raise Unfit("bad_record", f'turn {i}: expected {{"role", "content"}}, got {type(m).__name__}')
        # OpenAI's legacy "function" role is a tool result too
        role = (
            "tool" if m.get("role") in ("tool", "function") else _role(m.get("role"), i, ("tool", "function"))
        )
        calls = _assistant_calls(m, i) if role == "assistant" else None
        content = m.get("content")
        # A call with no text, and an opening system turn of null ("no system prompt", left out below)
        if content is None and (calls not in (None, []) or (role == "system" and i == 1)):
            content = ""
        content = _text(content, f"turn {i} content")
        if role == "assistant" and reads_calls and calls in (None, []):
            content, calls = _in_text(calls_in_answer, content, i)
        if calls not in (None, []):
            fields.append((len(turns), "tool_calls", calls))
        try:
            content = with_reasoning(content, m.get("reasoning_content"), role, i)
        except VikhrError as e:
            raise Unfit("bad_record", str(e).replace("message", "turn", 1)) from None
        if role == "tool":
            results = _in_text(tool_results, content, i) if reads_calls and m["role"] == "tool" else [content]
            fields += _result_fields(m, i, len(turns), len(results))
            turns += [(role, result) for result in results]
        else:
            turns.append((role, content))
        if not _weight(m, role, i):
            untrained.append(len(turns) - 1)
    return turns, tuple(untrained), tuple(fields)


def _result_fields(m: dict[str, Any], i: int, at: int, results: int) -> list[tuple[int, str, Any]]:
    """The ``name`` and ``tool_call_id`` of tool message `i`, the turn `at` in the chat; Unfit where
    it holds several results (``<tool_response>`` blocks), which one id or name cannot stand for."""
    given = [(at, key, m[key]) for key in ("name", "tool_call_id") if m.get(key) is not None]
    if given and results > 1:
        raise Unfit(
            "bad_record",
            f"turn {i}: a tool message of {results} <tool_response> blocks carries a "
            f"{' and a '.join(key for _, key, _ in given)} (give one message per result)",
        )
    return given


def _assistant_calls(m: dict[str, Any], i: int) -> Any:
    """The calls of assistant message `i`: its ``tool_calls`` as given (checked by prepare's parser),
    or OpenAI's legacy ``function_call`` ``{"name", "arguments"}`` as one call in the current form."""
    calls, legacy = m.get("tool_calls"), m.get("function_call")
    if legacy is None:
        return calls
    if calls not in (None, []):
        raise Unfit("bad_record", f"turn {i}: both tool_calls and function_call (give the calls once)")
    call = as_call(legacy)
    if call is None:
        raise Unfit(
            "bad_record", f'turn {i}: function_call must be {{"name", "arguments"}}, got {legacy!r:.60}'
        )
    return [call]


def _sharegpt_chat(
    record: dict[str, Any],
) -> tuple[list[tuple[str, str]], tuple[int, ...], Fields, tuple[Any, ...]]:
    """The turns of a ShareGPT record (the record's ``"system"`` first, see `_with_record_system`), the
    indices of the answers of weight 0, the messages' calls and tool-result fields, and the functions
    it offers: its ``"tools"``, else those of a Hermes ``<tools>`` block in its system prompt, which
    then loses the block (see `tool_layouts.tools_in_system`). An answer's ``<tool_call>`` blocks are
    read as calls in a chat that offers functions or holds tool turns; elsewhere they stay text."""
    key = turn_list_key(record) or "conversations"
    raw = record.get(key)
    if not isinstance(raw, list) or not raw:
        raise Unfit("bad_record", f'"{key}" must be a non-empty list of {{"from", "value"}}')
    opens_with_system = isinstance(raw[0], dict) and raw[0].get("from") == "system"
    system = raw[0].get("value") if opens_with_system else record.get("system")
    has_results = any(isinstance(m, dict) and m.get("from") == "tool" for m in raw)
    return _chat_offering_tools(
        record, system, lambda reads_calls: _sharegpt_turns(raw, reads_calls), True, has_results
    )


def _chat_offering_tools(
    record: dict[str, Any],
    system: Any,
    turns_of: Callable[[bool], tuple[list[tuple[str, str]], tuple[int, ...], Fields]],
    may_hold_text_calls: bool,
    has_results: bool,
) -> tuple[list[tuple[str, str]], tuple[int, ...], Fields, tuple[Any, ...]]:
    """A chat's turns, answers of weight 0, fields and offered functions (messages and sharegpt
    alike): the functions are the record's own, else a Hermes ``<tools>`` block's of the system
    prompt `system`, which loses the block; `turns_of(reads_calls)` reads the turns, Hermes's text
    calls too where the chat may hold them and offers functions or holds tool results."""
    hermes = tools_in_system(system) if isinstance(system, str) else None
    tools = _record_tools(record) or (hermes[1] if hermes is not None else ())
    turns, untrained, fields = turns_of(may_hold_text_calls and (bool(tools) or has_results))
    turns, added = _with_record_system(record, turns)
    if hermes is not None:  # emptied (the block and its instructions alone): left out as any empty one
        turns[0] = ("system", hermes[0])
    return (turns, *_moved(untrained, fields, added), tools)


def _sharegpt_turns(
    raw: list[Any], reads_calls: bool
) -> tuple[list[tuple[str, str]], tuple[int, ...], Fields]:
    """The turns of a ShareGPT "conversations" list, the indices of the answers of weight 0, and the
    function calls: of ``function_call`` turns (LLaMA-Factory's and Glaive's layout: an assistant
    turn whose value is the JSON of ``{"name", "arguments"}`` or of a list of them, parallel calls;
    an ``observation`` turn is a tool result), and, where `reads_calls`, of the ``<tool_call>``
    blocks of gpt turns (Hermes's layout; its ``tool`` turns hold ``<tool_response>`` blocks, one
    tool result each)."""
    turns, untrained, fields = [], [], []
    for i, m in enumerate(raw, start=1):
        if not isinstance(m, dict):
            raise Unfit("bad_record", f'turn {i}: expected {{"from", "value"}}, got {type(m).__name__}')
        value = _text(m.get("value"), f"turn {i} value")
        given = m.get("from")
        if given == "function_call":
            role = "assistant"
            fields.append((len(turns), "tool_calls", _function_calls(value, i)))
            turns.append((role, ""))
        elif given in ("tool", "observation"):
            role = "tool"
            results = _in_text(tool_results, value, i) if given == "tool" else [value]
            turns += [(role, result) for result in results]
        else:
            role = _role(given, i, ("function_call", "observation", "tool"))
            if role == "assistant" and reads_calls:
                value, calls = _in_text(calls_in_answer, value, i)
                if calls:
                    fields.append((len(turns), "tool_calls", calls))
            turns.append((role, value))
        if not _weight(m, role, i):
            untrained.append(len(turns) - 1)
    return turns, tuple(untrained), tuple(fields)


def _in_text(read: Callable[[str, int], _Read], value: str, i: int) -> _Read:
    """`read`(value, i) of turn `i`'s text (Hermes's tags), its MalformedToolText an Unfit."""
    try:
        return read(value, i)
    except MalformedToolText as e:
        raise Unfit("bad_record", str(e)) from None


def _function_calls(value: str, i: int) -> list[dict[str, Any]]:
    """The calls of ShareGPT function_call turn `i` in OpenAI's form, or Unfit."""
    try:
        given = json.loads(value)
    except json.JSONDecodeError as e:
        raise Unfit(
            "bad_record", f'turn {i}: a function_call value must be JSON {{"name", "arguments"}} ({e.msg})'
        ) from None
    calls = []
    for given_call in given if isinstance(given, list) and given else [given]:
        call = as_call(given_call)
        if call is None:
            raise Unfit(
                "bad_record",
                f'turn {i}: a function_call value must be {{"name", "arguments"}} or a list of them, '
                f"got {value:.60}",
            )
        calls.append(call)
    return calls


def _alpaca_prompt(instruction: str, given: Any, what: str = '"input"') -> str:
    given = "" if given is None else _text(given, what).strip()
    if not instruction.strip():  # the input alone, not after an empty line
        return given or instruction
    return f"{instruction}\n\n{given}" if given else instruction


def _alpaca_history(record: dict[str, Any]) -> list[tuple[str, str]]:
    """LLaMA-Factory's alpaca ``history``: the earlier ``[question, answer]`` pairs, the turns before
    the instruction (none when absent or null)."""
    history = record.get("history")
    turns: list[tuple[str, str]] = []
    if history is None:
        return turns
    if not isinstance(history, list):
        raise Unfit(
            "bad_record",
            f'"history" must be a list of [question, answer] pairs, got {type(history).__name__}',
        )
    for i, pair in enumerate(history, start=1):
        if not isinstance(pair, list) or len(pair) != 2:
            raise Unfit(
                "bad_record", f'"history" item {i}: expected a [question, answer] pair, got {pair!r:.60}'
            )
        turns += [
            ("user", _text(pair[0], f'"history" item {i} question')),
            ("assistant", _text(pair[1], f'"history" item {i} answer')),
        ]
    return turns


def _alpaca_turns(record: dict[str, Any]) -> list[list[tuple[str, str]]]:
    instruction = _text(record.get("instruction"), '"instruction"')
    if "output" in record:
        output = _text(record["output"], '"output"')
        last = [("user", _alpaca_prompt(instruction, record.get("input"))), ("assistant", output)]
        return [_with_record_system(record, [*_alpaca_history(record), *last])[0]]
    instances = record.get("instances")
    if not isinstance(instances, list) or not instances:
        raise Unfit("bad_record", '"instances" must be a non-empty list of {"input", "output"}')
    chats = []
    for i, inst in enumerate(instances, start=1):
        if not isinstance(inst, dict):
            raise Unfit("bad_record", f"instance {i}: expected an object, got {type(inst).__name__}")
        output = _text(inst.get("output"), f'instance {i} "output"')
        chats.append([("user", _alpaca_prompt(instruction, inst.get("input"))), ("assistant", output)])
    return chats


def _human_assistant_prompt(prompt: str) -> list[tuple[str, str]]:
    """The turns of an Anthropic-style prompt (Nectar's, HH-RLHF's), which ends with the "Assistant:"
    of the answer to come."""
    parts = _HUMAN_ASSISTANT_TURN.split(prompt)
    if parts[0].strip() or len(parts) < 5 or parts[-2] != "Assistant" or parts[-1].strip():
        raise Unfit(
            "bad_turns", 'prompt is not "\\n\\nHuman: …\\n\\nAssistant:" turns ending with Assistant:'
        )
    names = parts[1:-2:2]
    contents = parts[2:-2:2]
    return [("user" if n == "Human" else "assistant", c) for n, c in zip(names, contents, strict=True)]


def _nectar_turns(record: dict[str, Any], max_rank: int | None) -> list[list[tuple[str, str]]]:
    prompt = _human_assistant_prompt(_text(record.get("prompt"), '"prompt"'))
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers:
        raise Unfit("bad_record", '"answers" must be a non-empty list of {"answer", "model", "rank"}')
    ranked = []
    for i, a in enumerate(answers, start=1):
        rank = a.get("rank") if isinstance(a, dict) else None
        if not isinstance(rank, (int, float)) or isinstance(rank, bool) or not rank >= 1:
            # ranks count from 1 (the best); 0, negatives and NaN would sort before it
            raise Unfit(
                "bad_record", f'answer {i}: expected {{"answer", "rank"}} with a rank >= 1, got {rank!r}'
            )
        ranked.append((rank, i, _text(a.get("answer"), f'answer {i} "answer"')))
    ranked.sort()
    chosen = ranked[:1] if max_rank is None else [r for r in ranked if r[0] <= max_rank]
    if not chosen:
        raise Unfit("bad_record", f"no answer ranked {max_rank} or better")
    return [[*prompt, ("assistant", answer)] for _, _, answer in chosen]


def _plain_messages_turns(raw: Any) -> tuple[list[tuple[str, str]], tuple[int, ...]]:
    """`_messages_turns` of a preference pair's side, which is read without function calls."""
    turns, untrained, fields = _messages_turns(raw)
    if fields or any(role == "tool" for role, _ in turns):
        raise Unfit(
            "bad_role", "function calls in a preference pair are not read (give the chat as messages)"
        )
    return turns, untrained


def _preference_turns(record: dict[str, Any]) -> tuple[list[tuple[str, str]], tuple[int, ...]]:
    """The chat of a preference pair's chosen side (the rejected one is not trained on), in the
    layouts of TRL's preference datasets: `chosen` a whole chat (a messages list opening with a
    user or system turn: UltraFeedback-binarized; or Anthropic HH-RLHF's "Human: … Assistant: …"
    text), or the answer to `prompt` (a string, HH-RLHF's text, or a messages list)."""
    chosen, prompt = record.get("chosen"), record.get("prompt")
    if isinstance(chosen, list):
        turns, untrained = _plain_messages_turns(chosen)
        if turns[0][0] in ("user", "system") or prompt is None:
            return turns, untrained
        if isinstance(prompt, str):
            return [("user", prompt), *turns], tuple(i + 1 for i in untrained)
        opening, opening_untrained = _plain_messages_turns(prompt)
        return [*opening, *turns], (*opening_untrained, *(i + len(opening) for i in untrained))
    chosen = _text(chosen, '"chosen"')
    if prompt is None:  # HH-RLHF: the turns and the answer in one text, cut at its last "Assistant:"
        last = next(reversed(list(_HUMAN_ASSISTANT_TURN.finditer(chosen))), None)
        if last is None or last.group(1) != "Assistant":
            raise Unfit(
                "bad_turns", '"chosen" without "prompt" must be "\\n\\nHuman: …\\n\\nAssistant: …" turns'
            )
        opening = _human_assistant_prompt(chosen[: last.start()] + "\n\nAssistant:")
        return [*opening, ("assistant", chosen[last.end() :])], ()
    if isinstance(prompt, list):
        opening, untrained = _plain_messages_turns(prompt)
        return [*opening, ("assistant", chosen)], untrained
    if isinstance(prompt, str) and _HUMAN_ASSISTANT_TURN.match(prompt):  # HH-RLHF's explicit prompt
        return [*_human_assistant_prompt(prompt), ("assistant", chosen.lstrip())], ()
    return [("user", _text(prompt, '"prompt"')), ("assistant", chosen)], ()


def _check(chat: Chat) -> None:
    """Unfit unless `vikhr sft prepare` accepts the chat and no turn is empty (an answer that only
    calls functions has no text)."""
    calls = {i for i, key, _ in chat.fields if key == "tool_calls"}
    for i, (role, content) in enumerate(chat.messages, start=1):
        if not content.strip() and i - 1 not in calls:
            raise Unfit("empty_turn", f"turn {i} ({role}) is empty")
    try:
        chat.parsed  # noqa: B018  # parsed (and kept) here, so that a chat prepare refuses is Unfit
    except VikhrError as e:
        raise Unfit("bad_turns", str(e)) from None


def read_chats_of(
    path: str | Path,
    fmt: str | None = None,
    max_rank: int | None = None,
    not_kept: Callable[[dict[str, Any]], str | None] | None = None,
) -> Iterator[tuple[str, list[Chat] | Unfit]]:
    """(place, chats or Unfit) of every record of `path`; `fmt` None: detected from the first records.
    `not_kept`: why a record is left out by its fields (an Unfit "not_kept"), None to keep it."""
    fmt = fmt or detect_format(path)
    messages: list[tuple[str, dict[str, Any]]] = []  # oasst: the file's message rows, for its trees
    for where, record in read_records(path):
        if isinstance(record, Unfit):
            yield where, record
            continue
        why = not_kept(record) if not_kept is not None else None
        if why is not None:
            yield where, Unfit(NOT_KEPT, why)
            continue
        own = record_format(record)
        if own is None:
            fits = f"fields ({_fields(record)}) fit none of {', '.join(FORMATS)}"
            yield where, Unfit("unknown_format", fits)
            continue
        try:
            if fmt == "oasst":
                messages.append((where, _oasst_message(record)))
                continue
            yield where, record_chats(record, fmt, where, max_rank)
        except Unfit as e:
            if own == fmt:
                yield where, e
                continue
            other = (  # a file of two formats: not "a field missing" of the one it is read as
                f"fields ({_fields(record)}) are those of the {own} format; the file is read as {fmt}: "
                "a file holds one format (give the records of each format a file and source of their own)"
            )
            yield where, Unfit("unknown_format", other)
    yield from _oasst_chats(messages, max_rank)


def _fields(record: dict[str, Any]) -> str:
    """A record's first fields by name, for a line saying which format they fit."""
    return ", ".join(sorted(map(str, record))[:8]) or "none"


def _oasst_message(record: dict[str, Any]) -> dict[str, Any]:
    """What of an OASST message row its tree needs, checked (Unfit otherwise)."""
    message_id, parent = record.get("message_id"), record.get("parent_id")
    if not isinstance(message_id, str) or not message_id:
        raise Unfit("bad_record", '"message_id" must be a non-empty string')
    if parent is not None and not isinstance(parent, str):
        raise Unfit("bad_record", f'"parent_id" must be a string or null, got {type(parent).__name__}')
    if record.get("role") not in ("prompter", "assistant"):
        raise Unfit("bad_role", f"role {record.get('role')!r} is not prompter or assistant")
    rank = record.get("rank")
    if rank is not None and (not isinstance(rank, (int, float)) or isinstance(rank, bool) or rank != rank):
        raise Unfit("bad_record", f'"rank" must be a number or null, got {rank!r}')
    tree = record.get("message_tree_id")
    return {
        "id": message_id,
        "parent": parent,
        "role": ROLE_NAMES[record["role"]],
        "text": _text(record.get("text"), '"text"'),
        "rank": rank,
        "tree": tree if isinstance(tree, str) and tree else message_id,
        "usable": record.get("deleted") is not True and record.get("review_result") is not False,
    }


def _oasst_chats(
    messages: list[tuple[str, dict[str, Any]]], max_rank: int | None = None
) -> Iterator[tuple[str, list[Chat] | Unfit]]:
    """The chats of each tree of `messages` (see the module doc), placed at its first message: its
    main branch, or with `max_rank` each branch through the `max_rank` best replies at each step (an
    unfit one reported on its own; the tree is one chat's id, "#n" its n-th where it gives several)."""
    replies: dict[str, list[dict[str, Any]]] = {}
    for _, m in messages:
        if m["parent"] is not None and m["usable"]:
            replies.setdefault(m["parent"], []).append(m)
    for found in replies.values():  # best first: rank 0 first, unranked after the ranked, first of equals
        found.sort(key=lambda m: (m["rank"] is None, m["rank"] or 0))
    for where, root in messages:
        if root["parent"] is not None:
            continue
        if not root["usable"]:
            yield where, Unfit("bad_record", "the tree's first message is deleted or failed its review")
            continue
        try:
            branches = _oasst_branches(root, replies, max_rank or 1)
        except Unfit as e:
            yield where, e
            continue
        chats, unfit = [], []
        for n, branch in enumerate(branches):
            tree = root["tree"] if len(branches) == 1 else f"{root['tree']}#{n}"
            chat = Chat(tree, root["tree"], tuple((m["role"], m["text"]) for m in branch))
            try:
                _check(chat)
                chats.append(chat)
            except Unfit as e:
                unfit.append(e)
        if chats:
            yield where, chats
        for e in unfit:
            yield where, e


def _oasst_branches(
    root: dict[str, Any], replies: dict[str, list[dict[str, Any]]], best: int
) -> list[list[dict[str, Any]]]:
    """The message lists from `root` through the `best` first replies at each step to a message
    without one, each ending with its last answer (a question no answer followed is left out), in
    reply order, without repeats (two unanswered questions after one answer end alike). Unfit where
    a message turns out to be its own ancestor (rows whose parent_id loops back: the walk would
    follow them for ever)."""
    branches: list[list[dict[str, Any]]] = []
    seen: set[tuple[str, ...]] = set()
    stack = [[root]]
    while stack:  # depth first, without recursion: a long chat is a deep tree
        branch = stack.pop()
        found = replies.get(branch[-1]["id"], [])[:best]
        on_branch = {m["id"] for m in branch} if found else set()
        for m in found:
            if m["id"] in on_branch:
                raise Unfit(
                    "bad_record", f"message {m['id']!r} is its own ancestor (its parent_id loops back)"
                )
        if found:
            stack.extend([*branch, m] for m in reversed(found))
            continue
        if branch[-1]["role"] == "user":
            branch = branch[:-1]
        ids = tuple(m["id"] for m in branch)
        if ids not in seen:
            seen.add(ids)
            branches.append(branch)
    return branches
