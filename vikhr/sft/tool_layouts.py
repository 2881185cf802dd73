"""Function calls as collections publish them → OpenAI's form, the one vikhr's chats hold
(``{"type": "function", "function": schema}`` tools, ``{"type": "function", "function": {"name",
"arguments"}}`` calls)."""

from __future__ import annotations

from typing import Any


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
