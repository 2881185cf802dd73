"""Chat templates: messages → token ids plus a loss mask that covers the assistant turns only.

A chat is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`: an
optional system message first, then user and assistant turns alternating, starting with a user
turn and ending with an assistant turn.

Templates (`<s>`/`</s>` are the tokenizer's BOS/EOS ids, never parsed from text):

* ``mistral`` (default), Mistral-7B-Instruct v0.1 as mistral-common's v1 instruct tokenizer
  encodes it: ``<s>[INST] {user} [/INST]{answer}</s>[INST] {user} [/INST]{answer}</s>``. A
  system message is put before the first user message, separated by a blank line (Mistral has
  no system role). Each ``[INST] … [/INST]`` and each answer is encoded on its own, so with
  SentencePiece every segment starts with the dummy-prefix space (``▁[``, ``▁Да``) exactly as
  mistral-common produces it. HF's jinja template applied to the whole string tokenizes the
  answer's first word differently (no space after ``[/INST]``); this module follows mistral-common.
* ``chatml``: ``<s><|im_start|>{role}\\n{content}<|im_end|>\\n`` per message. ``<|im_start|>`` and
  ``<|im_end|>`` become single ids when the tokenizer has them as tokens, otherwise they are
  encoded as text. The answer and its closing ``<|im_end|>`` are trained.

Mask: 1 on every token of an assistant answer including its closing token(s) (``</s>`` or
``<|im_end|>``), 0 on BOS, system, user and template tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError
from vikhr.jsonl import read_jsonl
from vikhr.tokenizer.load import Tokenizer, load

ROLES = ("system", "user", "assistant")
TEMPLATES = ("mistral", "chatml")
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass
class EncodedChat:
    ids: list[int]
    mask: list[int]  # 1 = assistant token (the loss is taken on it), 0 = context only


def load_chat_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer at `path` (see vikhr.tokenizer.load), refused unless it has BOS and EOS ids."""
    tok = load(path)
    for name, value in (("BOS", tok.bos_id), ("EOS", tok.eos_id)):
        if value is None:
            raise VikhrError(
                f"{tok.path} has no {name} token; the chat templates need one "
                "(name it as bos_token/eos_token in the tokenizer_config.json beside a tokenizer.json)"
            )
    return tok


# --------------------------------------------------------------------------- validation


def _a(word: str) -> str:
    return "an" if word == "assistant" else "a"  # the roles: a system, a user, an assistant


def parse_chat(record: Any, for_generation: bool = False) -> list[Message]:
    """The messages of one chat record, or VikhrError saying what is wrong (without a location).

    `for_generation`: the chat ends with the user turn to be answered instead of an answer.
    """
    if not isinstance(record, dict) or "messages" not in record:
        raise VikhrError('expected an object with a "messages" list')
    raw = record["messages"]
    if not isinstance(raw, list) or not raw:
        raise VikhrError('"messages" must be a non-empty list')
    messages = []
    for i, m in enumerate(raw, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise VikhrError(f'message {i}: expected {{"role": ..., "content": ...}}')
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise VikhrError(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
        if not isinstance(content, str):
            raise VikhrError(f"message {i}: content must be a string, got {type(content).__name__}")
        messages.append(Message(role, content))
    turns = messages[1:] if messages[0].role == "system" else messages
    for i, m in enumerate(turns):
        number = i + 1 + (len(messages) - len(turns))
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role == "system":
            raise VikhrError(f"message {number}: a system message may only come first")
        if m.role != expected:
            previous = "the start" if i == 0 else f"{_a(turns[i - 1].role)} {turns[i - 1].role} turn"
            raise VikhrError(
                f"message {number}: expected {_a(expected)} {expected} turn after {previous}, got {m.role} "
                "(turns must alternate user/assistant, starting with user)"
            )
    if for_generation:
        if not turns or turns[-1].role != "user":
            raise VikhrError("a prompt for generation must end with a user turn")
    elif not any(m.role == "assistant" for m in turns):
        raise VikhrError("chat has no assistant turn (nothing to train on)")
    elif turns[-1].role != "assistant":
        raise VikhrError(f"message {len(messages)}: chat ends with a user turn that has no answer")
    return messages


def read_chats(path: str | Path) -> Iterator[tuple[int, list[Message]]]:
    """(line number, messages) of every non-blank line of a JSONL file (plain, .gz or .zst).

    VikhrError "path:line: problem" on a bad line.
    """
    for line_no, record in read_jsonl(path):
        try:
            yield line_no, parse_chat(record)
        except VikhrError as e:
            raise VikhrError(f"{path}:{line_no}: {e}") from e


# --------------------------------------------------------------------------- templates


def _segments(messages: list[Message], template: str, for_generation: bool) -> list[tuple[str | None, bool]]:
    """(text, trained) pieces of the template, in order; text None stands for the EOS id."""
    out: list[tuple[str | None, bool]] = []
    if template == "mistral":
        system = messages[0].content if messages[0].role == "system" else None
        turns = messages[1:] if system is not None else messages
        for i, m in enumerate(turns):
            if m.role == "user":
                content = f"{system}\n\n{m.content}" if i == 0 and system else m.content
                out.append((f"[INST] {content} [/INST]", False))
            else:
                out.append((m.content, True))
                out.append((None, True))
        return out
    if template == "chatml":
        prompt = ""  # untrained text is gathered up to the next answer
        for m in messages:
            if m.role == "assistant":
                out.append((prompt + f"{CHATML_START}assistant\n", False))
                out.append((m.content + CHATML_END, True))
                prompt = "\n"
            else:
                prompt += f"{CHATML_START}{m.role}\n{m.content}{CHATML_END}\n"
        if for_generation:
            out.append((prompt + f"{CHATML_START}assistant\n", False))
        return out
    raise VikhrError(f"unknown chat template {template!r} (choose from {', '.join(TEMPLATES)})")


def _encode_piece(tok: Tokenizer, text: str | None, template: str) -> list[int]:
    if text is None:
        return [tok.eos_id]  # type: ignore[list-item]  # load_chat_tokenizer checked it
    if template == "chatml":
        specials = {s: tok.piece_to_id(s) for s in (CHATML_START, CHATML_END)}
        if all(v is not None for v in specials.values()):
            ids: list[int] = []
            for part in re.split(f"({re.escape(CHATML_START)}|{re.escape(CHATML_END)})", text):
                if part in specials:
                    ids.append(specials[part])  # type: ignore[arg-type]
                elif part:
                    ids.extend(tok.encode(part))
            return ids
    return tok.encode(text) if text else []


def encode_chat(
    messages: list[Message], tok: Tokenizer, template: str = "mistral", for_generation: bool = False
) -> EncodedChat:
    """Token ids (starting with BOS) and the assistant-only loss mask of a validated chat.

    `for_generation`: the prompt to feed a model for the next answer (mask all zero).
    """
    ids, mask = [tok.bos_id], [0]  # type: ignore[list-item]  # load_chat_tokenizer checked it
    for text, trained in _segments(messages, template, for_generation):
        piece = _encode_piece(tok, text, template)
        ids.extend(piece)
        mask.extend([int(trained)] * len(piece))
    return EncodedChat(ids, mask)
