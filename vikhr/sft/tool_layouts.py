"""Function calls as collections publish them → OpenAI's form, the one vikhr's chats hold
(``{"type": "function", "function": schema}`` tools, ``{"type": "function", "function": {"name",
"arguments"}}`` calls).

Besides the schema and call shapes shared by every layout, the calls NousResearch's Hermes layout
writes into the text (hermes-function-calling-v1 and the ShareGPT sets in its shape):

* the system prompt offers the functions in a ``<tools> … </tools>`` block: JSON objects one after
  another (one a line) or a list of them, or Python literals (one a line, or a list);
* an answer calls them after its text, each as ``<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>``;
* a tool turn holds the results, each as ``<tool_response>\\n…\\n</tool_response>``.

Where JSON is expected, the Python literal hermes-function-calling-v1 writes in its place (a dict
printed by Python: single quotes, True/False/None) is read too.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

from vikhr.errors import VikhrError

# the text between a <tools> and the next </tools>, from the last <tools> before it (the prompt may
# name the tag before the block)
_TOOLS_BLOCK = re.compile(r"<tools>((?:(?!<tools>).)*?)</tools>", re.DOTALL)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_TOOL_RESPONSE = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)
_LITERAL_NEWLINE = "\\n"  # a backslash and an n, around some rows' <tool_call> JSON instead of a newline


class MalformedToolText(VikhrError):
    """Function calls or results written into a turn's text that cannot be read (one line)."""


def as_tool(schema: Any) -> dict[str, Any] | None:
    """`schema` in OpenAI's tool form: as it is when it is one, a bare function schema
    ``{"name", "description", "parameters"}`` (LLaMA-Factory's, Glaive's, OpenAI's legacy
    ``functions``) wrapped as ``{"type": "function", "function": schema}``, as LLaMA-Factory does for
    Qwen; None when it is neither."""
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "function" and isinstance(schema.get("function"), dict):
        return schema
    if isinstance(schema.get("name"), str) and "type" not in schema:
        return {"type": "function", "function": schema}
    return None


def as_call(call: Any) -> dict[str, Any] | None:
    """A ``{"name", "arguments"}`` call in OpenAI's form (the arguments as given: an object or its
    JSON text), None when `call` is not one."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or "arguments" not in call:
        return None
    return {"type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}


def tools_in_system(system: str) -> tuple[str, tuple[dict[str, Any], ...]] | None:
    """(the system prompt left, the functions) of a system prompt that offers functions in one
    ``<tools>`` block that parses, each a function schema; None otherwise (the prompt then stays
    as it is). A block with nothing but white space is the prompt naming the tags ("… within
    <tools> </tools> XML tags"), not a block. The text before the block is kept (it may set the
    task); the text after it is left out when it tells how to call (it names ``<tool_call>``):
    the chat templates write their own tool block, which ends with that instruction in the form
    the calls are trained in."""
    blocks = [b for b in _TOOLS_BLOCK.finditer(system) if b.group(1).strip()]
    if len(blocks) != 1:
        return None
    block = blocks[0]
    tools = _tool_schemas(block.group(1))
    if tools is None:
        return None
    before, after = system[: block.start()].strip(), system[block.end() :].strip()
    kept = [before, *([after] if "<tool_call>" not in after else [])]
    return "\n\n".join(text for text in kept if text), tools


def _tool_schemas(text: str) -> tuple[dict[str, Any], ...] | None:
    """The functions of a ``<tools>`` block (a list, or objects one after another: JSON, or Python
    literals one a line), None unless each is a function schema."""
    values = _json_values(text) or _python_literals(text)
    if values is None:
        return None
    tools = [as_tool(item) for value in values for item in (value if isinstance(value, list) else [value])]
    return None if any(tool is None for tool in tools) else tuple(t for t in tools if t is not None)


def _json_values(text: str) -> list[Any] | None:
    """The JSON values `text` holds one after another (white space between), None unless it is
    only those."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return values or None
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _python_literals(text: str) -> list[Any] | None:
    """The value of `text` written as one Python literal, or the values of its lines, each one (a
    printed dict a line); None unless it is either."""
    try:
        return [_python_literal(text)]
    except ValueError:
        pass
    try:
        return [_python_literal(line) for line in text.splitlines() if line.strip()] or None
    except ValueError:
        return None


def _python_literal(text: str) -> Any:
    """The value of `text` written as a Python literal of JSON's kinds (dicts with string keys,
    lists, strings, numbers, True/False/None), or ValueError. Parsed, never run."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("neither JSON nor a Python literal") from None
    if not _is_json_data(value):
        raise ValueError("a Python literal of kinds JSON lacks (a tuple, set, bytes …)")
    return value


def _is_json_data(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_data(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_json_data(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


def _loads(text: str) -> Any:
    """The value of JSON `text`, or of the Python literal written in its place, or ValueError with
    JSON's complaint."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        complaint = f"{e.msg} at column {e.colno}"
    try:
        return _python_literal(text)
    except ValueError:
        raise ValueError(complaint) from None


def calls_in_answer(text: str, turn: int) -> tuple[str, list[dict[str, Any]]]:
    """(the answer's text, its calls in OpenAI's form) of an answer of turn `turn` that writes its
    calls as ``<tool_call>`` blocks after its text (the white space before the first left out);
    `text` and no calls when it holds none. MalformedToolText for a block that is not a
    ``{"name", "arguments"}`` object, one left open, or text after a block (OpenAI's form, and Qwen's
    templates, write an answer's text before its calls)."""
    first = text.find("<tool_call>")
    if first < 0:
        return text, []
    calls, at = [], first
    for k, block in enumerate(_TOOL_CALL.finditer(text, first), start=1):
        if text[at : block.start()].strip():
            break
        calls.append(_tool_call(block.group(1), turn, k))
        at = block.end()
    rest = text[at:].strip()
    if rest.startswith("<tool_call>"):
        raise MalformedToolText(f"turn {turn}: a <tool_call> without its </tool_call>")
    if rest:
        raise MalformedToolText(
            f"turn {turn}: text after a <tool_call> block ({rest:.40}…): an answer's text comes before "
            "its calls"
        )
    return text[:first].rstrip(), calls


def _tool_call(body: str, turn: int, k: int) -> dict[str, Any]:
    """Call `k` of turn `turn`: a ``<tool_call>`` block's JSON (or Python literal), or MalformedToolText."""
    body = body.strip().removeprefix(_LITERAL_NEWLINE).removesuffix(_LITERAL_NEWLINE).strip()
    try:
        given = _loads(body)
    except ValueError as e:
        raise MalformedToolText(
            f'turn {turn}: <tool_call> {k} is not the JSON of {{"name", "arguments"}} ({e})'
        ) from None
    call = as_call(given)
    if call is None:
        raise MalformedToolText(
            f'turn {turn}: <tool_call> {k} must hold {{"name", "arguments"}}, got {body:.60}'
        )
    return call


def tool_results(text: str, turn: int) -> list[str]:
    """The results of tool turn `turn`: each ``<tool_response>`` block's text (without the white
    space around it), or the whole text when it names no such tag. MalformedToolText for text
    outside the blocks or a block left open (a result would be written inside another's tags)."""
    if "<tool_response>" not in text and "</tool_response>" not in text:
        return [text]
    results, at = [], 0
    for block in _TOOL_RESPONSE.finditer(text):
        if text[at : block.start()].strip():
            break
        results.append(block.group(1).strip())
        at = block.end()
    if text[at:].strip():
        raise MalformedToolText(
            f"turn {turn}: a tool turn that writes <tool_response> blocks must hold those alone, each closed"
        )
    return results
