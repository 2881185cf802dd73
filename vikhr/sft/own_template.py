"""The ``own`` chat template: chats rendered by the Jinja chat template the tokenizer carries.

For models whose template is none of vikhr's (Llama-3.1/3.2/3.3, Mistral-Instruct v0.3,
Mistral-NeMo-Instruct, Gemma, Phi-3, ...): transformers' `apply_chat_template` renders the chat
with the template of the tokenizer's directory (see `vikhr.sft.hf_chat.own_chat_template`), and
the text is encoded as `apply_chat_template(..., tokenize=True)` encodes it (the control strings
the template writes become their ids; nothing else is added), so the ids are those of the
model's own template by construction.

Mask: an answer is what its rendering adds to the prompt for it. The chat up to the answer,
rendered with ``add_generation_prompt=True``, must begin the chat through the answer, which must
begin the whole chat; the answer's characters lie between the two, less any text after their last
control token (the newline ChatML and Gemma write after their end-of-turn token, which a model
never generates). A token holding an answer character is trained (`vikhr.sft.encoded`).

Refused chats (ChatRefused, one line naming the message): those the template itself refuses
(Gemma's has no system role) and those whose earlier turns it renders differently once later
turns follow, which cannot be split that way (Mistral v0.3's puts the system message in the last
user turn only; Qwen3's drops earlier reasoning: train those with ``mistral`` / ``qwen3``).
A message holding the string of one of the tokenizer's special tokens is refused as
TypedControlError: rendered, it would become that control.

Templates that write today's date (Llama-3.2's ``strftime_now``) get ``date_string`` = 26 Jul 2024,
the date Llama-3.1's template writes by default: the tokens do not depend on the day of the run.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError
from vikhr.sft.encoded import EncodedChat, Message, TypedControlError, trained_tokens
from vikhr.sft.hf_chat import own_chat_template
from vikhr.tokenizer.load import Tokenizer

FIXED_DATE = "26 Jul 2024"


class ChatRefused(VikhrError):
    """A chat the tokenizer's own template refuses or cannot be split into prompts and answers."""


@dataclass(frozen=True, eq=False)
class OwnTemplate:
    template: str
    source: Path  # the file holding it
    fast: Any  # transformers' tokenizer of the same tokenizer.json (renders and encodes)
    specials: dict[str, int]  # the tokenizer's special tokens: string -> id
    special_text: re.Pattern[str] | None  # matches any of their strings (None: there are none)

    def render(self, chat: list[dict[str, str]], generation: bool) -> str:
        """The template's text of `chat`; ChatRefused when the template refuses it."""
        try:
            text = self.fast.apply_chat_template(
                chat,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=generation,
                date_string=FIXED_DATE,
            )
        except Exception as e:  # the template's raise_exception, or a template that fails on this chat
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ChatRefused(f"{self.source.name}'s chat template refused the chat: {message}") from e
        return str(text)

    def encode(self, messages: list[Message], for_generation: bool = False) -> EncodedChat:
        """Ids and mask of `messages` (see the module doc); `for_generation`: the prompt for the
        answer to the last user turn, as rendered with ``add_generation_prompt=True``."""
        self._check_typed(messages)
        chat = [{"role": m.role, "content": m.content} for m in messages]
        whole = self.render(chat, for_generation)
        trained = bytearray(len(whole))
        for i, m in enumerate(messages):
            if m.role == "assistant":
                start, end = self._answer(chat, i, whole)
                trained[start:end] = b"\x01" * (end - start)
        encoding = self.fast.backend_tokenizer.encode(whole, add_special_tokens=False)
        return EncodedChat(list(encoding.ids), trained_tokens(encoding.offsets, trained))

    def end_of_turn_id(self, fallback: int | None) -> int | None:
        """The control token that closes an answer (Llama-3.1's ``<|eot_id|>``, Mistral's ``</s>``),
        read off a rendered two-turn chat; `fallback` (EOS) when an answer ends in plain text."""
        probe = [Message("user", "Привет!"), Message("assistant", "Здравствуйте.")]
        enc = self.encode(probe)
        last = max(i for i, m in enumerate(enc.mask) if m)
        return enc.ids[last] if enc.ids[last] in self.specials.values() else fallback

    def _answer(self, chat: list[dict[str, str]], index: int, whole: str) -> tuple[int, int]:
        """The characters of answer `index` in `whole` (see the module doc), or ChatRefused."""
        prompt = self.render(chat[:index], True)
        through = self.render(chat[: index + 1], False)
        if not (through.startswith(prompt) and whole.startswith(through)):
            raise ChatRefused(
                f"message {index + 1}: {self.source.name}'s chat template renders the turns before it "
                "differently once later turns follow (e.g. it moves the system message), so its answer "
                "cannot be told from its prompt; train with one of vikhr's templates (--template NAME)"
            )
        answer = through[len(prompt) :]
        controls = list(self.special_text.finditer(answer)) if self.special_text else []
        return len(prompt), len(prompt) + (controls[-1].end() if controls else len(answer))

    def _check_typed(self, messages: list[Message]) -> None:
        for number, m in enumerate(messages, start=1):
            found = self.special_text.search(m.content) if self.special_text else None
            if found:
                raise TypedControlError(
                    f"message {number} holds the text {found.group()!r}, a special token of the "
                    "tokenizer: the rendered chat would hold that control token; remove it from the chat"
                )


def own_template(tok: Tokenizer) -> OwnTemplate:
    """The tokenizer's own template, ready to render. VikhrError when the tokenizer carries no
    template or is not a tokenizer.json. Built once per tokenizer and state of its files (chats are
    encoded one by one; a file rewritten meanwhile is read anew)."""
    names = (tok.path.name, "chat_template.jinja", "tokenizer_config.json")
    return _own_template(tok, tuple(_stamp(tok.path.with_name(name)) for name in names))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _own_template(tok: Tokenizer, stamps: tuple[tuple[int, int] | None, ...]) -> OwnTemplate:
    del stamps  # the cache key only
    found = own_chat_template(tok)
    if found is None:
        raise VikhrError(
            f"{tok.path.parent} carries no chat template (chat_template.jinja, or chat_template in "
            "tokenizer_config.json) for --template own: add the model's, or choose one with --template NAME"
        )
    if tok.kind != "huggingface":
        raise VikhrError(
            f"{tok.path}: training on the tokenizer's own chat template ({found[1].name}) needs the "
            "model's tokenizer.json, which transformers renders it with: give that file as --tokenizer "
            "(a directory holding both opens the .model), or choose a template with --template NAME"
        )
    fast = tok.to_transformers()
    added = fast.backend_tokenizer.get_added_tokens_decoder()
    specials = {t.content: i for i, t in added.items() if t.special}
    pattern = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    return OwnTemplate(found[0], found[1], fast, specials, re.compile(pattern) if pattern else None)
