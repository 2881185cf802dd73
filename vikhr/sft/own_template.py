"""The ``own`` chat template: chats rendered by the Jinja chat template the tokenizer carries.

For models whose template is none of vikhr's (Llama-3.1/3.2/3.3, Mistral-Instruct v0.2,
Mistral-NeMo-Instruct, Gemma, Phi-3, DeepSeek-R1-Distill, GigaChat3, ...): transformers'
`apply_chat_template` renders the chat with the template of the tokenizer's directory (see
`vikhr.sft.hf_chat.own_chat_template`), and the text is encoded as `apply_chat_template(...,
tokenize=True)` encodes it (the control strings the template writes become their ids; nothing
else is added), so the ids are those of the model's own template by construction.

Mask. An answer begins where the template writes an answer's text: the chat up to it is
rendered with a stand-in answer (a private-use character) and the answer starts where the
stand-in does (DeepSeek-R1-Distill's generation prompt ends in "<think>\\n" that its answers lack,
so the generation prompt alone does not tell it). It ends with the first control token after its
start — the end of turn (`<|eot_id|>`, `</s>`, `<|end|>`), not what follows it (ChatML's and
Gemma's newline, the EOS Phi-3 writes after a finished chat). A template that ends answers in plain
text trains the answer without the whitespace after it, and `load_for_chats` warns that the model
then learns no end of turn. A token holding an answer character is trained (`vikhr.sft.encoded`),
a control token only where it begins in the answer (Phi-3.5's <|assistant|> strips the whitespace
after it, an answer's leading spaces included, and stays the prompt's). The chat up to the answer
must render alike with and without it (up to the last user message's text), and the chat through
the answer must begin the whole chat.

Refused chats (ChatRefused, one line): those the template itself refuses (Gemma-2's has no system
role: the line says so where the chat renders without its system message), those whose turns
before an answer it renders differently once the answer follows (Mistral-NeMo's and Mistral v0.3's
put the system message into the last user turn only: vikhr's ``mistral-v3`` trains them), those
whose answer it renders differently once later turns follow (Qwen3's drops earlier reasoning), and
answers it writes no text for (YandexGPT-5-Lite's drops the last answer): train those with one of
vikhr's templates. A template that cannot train a plain two-turn chat is refused when loaded. A
message holding the string of one of the tokenizer's special tokens is refused as
TypedControlError: rendered, it would become that control.

The tokenizer is transformers' own of the directory (`PreTrainedTokenizerFast.from_pretrained`):
its special tokens are those transformers reads (a template's `bos_token` is undefined where
tokenizer_config.json names none).

A chat with function calls is rendered with ``tools=`` (the functions it offers) and its messages in
OpenAI's layout (``tool_calls`` with arguments as objects, the form transformers' templates expect;
``tool`` messages with their ``name``/``tool_call_id``); an answer that only calls functions is found
as any answer (its calls are its text), and a special token's string in a call or a tool's schema
is refused as in a message. Qwen3's own template is refused for a call followed by results (it
writes the last turn's thinking block only while the call is last): use vikhr's ``qwen3``.

Templates that write today's date (Llama-3.2's ``strftime_now``) get ``date_string`` = 26 Jul 2024,
the date Llama-3.1's template writes by default: the tokens do not depend on the day of the run.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError, first_line
from vikhr.file_stamps import StampedCache
from vikhr.sft.encoded import (
    EncodedChat,
    Message,
    TypedControlError,
    arguments_object,
    tools_of,
    trained_tokens,
)
from vikhr.sft.hf_chat import chat_template_sha256, own_chat_template
from vikhr.tokenizer.load import CHAT_TEMPLATE_FILE, Tokenizer, transformers_overrides

FIXED_DATE = "26 Jul 2024"
STAND_IN = "\ue000"  # a private-use character: the text of a stand-in answer (`OwnTemplate._answer_start`)


class ChatRefused(VikhrError):
    """A chat the tokenizer's own template refuses or cannot be split into prompts and answers, or
    one with function calls given to a template without them (vikhr.sft.template)."""


@dataclass(frozen=True, eq=False)
class OwnTemplate:
    template: str
    source: Path  # the file holding it
    fast: Any  # transformers' tokenizer of the same tokenizer.json (renders and encodes)
    specials: dict[str, int]  # the tokenizer's special tokens: string -> id
    special_text: re.Pattern[str] | None  # matches any of their strings (None: there are none)
    longest_special: int  # characters of the longest of them

    def render(self, chat: list[dict[str, Any]], generation: bool, tools: list[Any] | None = None) -> str:
        """The template's text of `chat` offering `tools`; ChatRefused when the template refuses it."""
        try:
            text = self.fast.apply_chat_template(
                chat,
                tools=tools,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=generation,
                date_string=FIXED_DATE,
            )
        except Exception as e:  # the template's raise_exception, or a template that fails on this chat
            raise ChatRefused(f"{self.source.name}'s chat template refused the chat: {first_line(e)}") from e
        return str(text)

    def encode(self, messages: list[Message], for_generation: bool = False) -> EncodedChat:
        """Ids and mask of `messages` (see the module doc); `for_generation`: the prompt for the
        answer to the last user turn, as rendered with ``add_generation_prompt=True``."""
        self._check_typed(messages)
        chat = [_message_dict(m) for m in messages]
        tools = [json.loads(tool) for tool in tools_of(messages)] or None
        whole = self._render_whole(chat, for_generation, tools)
        trained = bytearray(len(whole))
        for i, m in enumerate(messages):
            if m.role == "assistant" and m.trained:
                try:
                    start, end = self._answer(chat, i, whole, tools)
                except ChatRefused:
                    if not for_generation:
                        raise
                    continue  # a prompt needs its ids; an earlier answer's mask is a nicety
                trained[start:end] = b"\x01" * (end - start)
        encoding = self.fast.backend_tokenizer.encode(whole, add_special_tokens=False)
        mask = trained_tokens(encoding.offsets, trained)
        controls = set(self.specials.values())
        # A control token is the answer's only where it begins in it: a header token with rstrip
        # (Phi-3's <|assistant|>) also takes the whitespace an answer starts with.
        for k, (token, (start, _)) in enumerate(zip(encoding.ids, encoding.offsets, strict=True)):
            if token in controls:
                mask[k] = int(start < len(trained) and trained[start])
        return EncodedChat(list(encoding.ids), mask)

    def _render_whole(self, chat: list[dict[str, Any]], generation: bool, tools: list[Any] | None) -> str:
        """`render`, where the template refuses the chat with what to do about it: a template without
        a system role (Mistral-Instruct v0.1's, Gemma's) refuses every chat that has a system message."""
        try:
            return self.render(chat, generation, tools)
        except ChatRefused as refused:
            fix = "train such chats with one of vikhr's templates (--template NAME)"
            if any(a["role"] == b["role"] == "assistant" for a, b in itertools.pairwise(chat)):
                fix = "join the chat's answers in a row into one message, or " + fix
            if chat[0]["role"] == "system" and len(chat) > 1:
                try:
                    self.render(chat[1:], generation, tools)
                    fix = (
                        "it takes the chat without its system message, so it has no system turn: leave "
                        "system messages out of the chats, or train with one of vikhr's templates "
                        "(--template NAME), which write them"
                    )
                except ChatRefused:
                    pass
            raise ChatRefused(f"{refused}; {fix}") from None

    @functools.cached_property
    def writes_system(self) -> bool:
        """Whether the template writes a system message: False where it renders a chat alike with and
        without one (it drops it; one that refuses system messages says so in its refusal)."""
        chat = [{"role": "user", "content": "Привет!"}, {"role": "assistant", "content": "Здравствуйте."}]
        try:
            with_system = self.render([{"role": "system", "content": "Отвечай кратко."}, *chat], False)
        except ChatRefused:
            return True
        return with_system != self.render(chat, False)

    @property
    def sha256(self) -> str:
        """The template text's SHA-256: what `sft prepare` records and `convert` checks."""
        return chat_template_sha256(self.template)

    def end_of_turn_id(self, fallback: int | None) -> int | None:
        """The control token that closes an answer (Llama-3.1's ``<|eot_id|>``, Mistral's ``</s>``),
        read off a rendered two-turn chat; `fallback` (EOS) when an answer ends in plain text.
        VikhrError when the template cannot be trained on that chat."""
        enc = self.probe()
        last = max(i for i, m in enumerate(enc.mask) if m)
        return enc.ids[last] if enc.ids[last] in self.specials.values() else fallback

    def probe(self) -> EncodedChat:
        """A two-turn chat encoded, or VikhrError saying the template cannot be trained on."""
        try:
            return self.encode([Message("user", "Привет!"), Message("assistant", "Здравствуйте.")])
        except ChatRefused as e:
            raise VikhrError(f"{self.source}: its chat template cannot train a two-turn chat: {e}") from None

    def _answer(
        self, chat: list[dict[str, Any]], index: int, whole: str, tools: list[Any] | None
    ) -> tuple[int, int]:
        """The characters of answer `index` in `whole` (see the module doc), or ChatRefused."""
        prompt = self.render(chat[:index], True, tools)
        through = self.render(chat[: index + 1], False, tools)
        start = self._answer_start(chat, index, prompt, through, tools)
        asked = chat[index - 1]["content"].strip()
        asked_end = prompt.rfind(asked) + len(asked) if asked and asked in prompt else len(prompt)
        if _common_prefix(prompt, through[:start]) < asked_end:  # the turns before it differ
            raise ChatRefused(
                f"message {index + 1}: {self.source.name}'s chat template renders the turns before "
                "this answer differently once it follows (e.g. it moves the system message), so the "
                "answer cannot be told from its prompt; train with one of vikhr's templates (--template NAME)"
            )
        first = self.special_text.search(through, start) if self.special_text else None
        end = first.end() if first else len(through[start:].rstrip()) + start
        if (chat[index]["content"].strip() or "tool_calls" in chat[index]) and not self._has_text(
            through[start:end]
        ):
            raise ChatRefused(
                f"message {index + 1}: {self.source.name}'s chat template writes no text for this "
                "answer (nothing to train on); train with one of vikhr's templates (--template NAME)"
            )
        if not whole.startswith(through[:end]):
            raise ChatRefused(
                f"message {index + 1}: {self.source.name}'s chat template renders this answer "
                "differently once later turns follow, so it cannot be told from the turns after it; "
                "train with one of vikhr's templates (--template NAME)"
            )
        return start, end

    def _answer_start(
        self, chat: list[dict[str, Any]], index: int, prompt: str, through: str, tools: list[Any] | None
    ) -> int:
        """Where answer `index` begins in `through`: where the template writes an answer's text,
        found by rendering a stand-in answer (R1-Distill's generation prompt adds "<think>\\n" that
        its answers lack, and an answer may begin with the same characters). Where the stand-in is
        not written as given, where `through` leaves the generation prompt, not inside a control."""
        stand_in = self.render([*chat[:index], {"role": "assistant", "content": STAND_IN}], False, tools)
        at = stand_in.rfind(STAND_IN)
        if at >= 0 and through.startswith(stand_in[:at]):
            return at
        return self._before_control(through, _common_prefix(prompt, through))

    def _before_control(self, text: str, position: int) -> int:
        """`position`, or the start of the control token of `text` it falls inside (a generation
        prompt "<｜Assistant｜><think>" and an answer "<｜Assistant｜><｜end▁of▁sentence｜>" share a "<")."""
        if self.special_text is None:
            return position
        window = (max(0, position - self.longest_special), position + self.longest_special)
        for found in self.special_text.finditer(text, *window):
            if found.start() < position < found.end():
                return found.start()
        return position

    def _has_text(self, text: str) -> bool:
        bare = self.special_text.sub("", text) if self.special_text else text
        return bool(bare.strip())

    def _check_typed(self, messages: list[Message]) -> None:
        if self.special_text is None:
            return
        texts = [(f"message {n}", m.content) for n, m in enumerate(messages, start=1)]
        texts += [
            (f"message {n}", f"{call.name} {call.arguments}")
            for n, m in enumerate(messages, start=1)
            for call in m.tool_calls
        ]
        texts += [(f"tool {k}", tool) for k, tool in enumerate(tools_of(messages), start=1)]
        for where, text in texts:
            found = self.special_text.search(text)
            if found:
                raise TypedControlError(
                    f"{where} holds the text {found.group()!r}, a special token of the "
                    "tokenizer: the rendered chat would hold that control token; remove it from the chat"
                )


def _message_dict(m: Message) -> dict[str, Any]:
    """`m` as transformers' chat templates read a message: OpenAI's fields, a call's arguments as an
    object (the form those templates expect)."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "type": "function",
                "function": {"name": call.name, "arguments": arguments_object(call)},
                **({"id": call.id} if call.id is not None else {}),
            }
            for call in m.tool_calls
        ]
    out.update({key: value for key in ("name", "tool_call_id") if (value := getattr(m, key)) is not None})
    return out


def own_template(tok: Tokenizer) -> OwnTemplate:
    """The tokenizer's own template, ready to render. VikhrError when the tokenizer carries no
    template or is not a tokenizer.json. Built once per tokenizer and state of its files (chats are
    encoded one by one; a file rewritten meanwhile is read anew)."""
    names = (tok.path.name, CHAT_TEMPLATE_FILE, "tokenizer_config.json")
    return _OWN_TEMPLATES.get(tok, [tok.path.with_name(name) for name in names], lambda: _own_template(tok))


def _transformers_tokenizer(tok: Tokenizer) -> Any:
    """transformers' own tokenizer of the directory (its special tokens as transformers reads them:
    a template's `bos_token` is None where tokenizer_config.json names none), or, for a
    tokenizer.json under another name, vikhr's conversion."""
    if tok.path.name == "tokenizer.json":
        from transformers import PreTrainedTokenizerFast

        directory = tok.path.parent
        return PreTrainedTokenizerFast.from_pretrained(directory, **transformers_overrides(directory))
    return tok.to_transformers()


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of `a` and `b` (a binary search of C comparisons:
    prompts run to thousands of characters)."""
    if b.startswith(a):
        return len(a)
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


_OWN_TEMPLATES: StampedCache[OwnTemplate] = StampedCache(maxsize=8)


def _own_template(tok: Tokenizer) -> OwnTemplate:
    found = own_chat_template(tok)
    if found is None:
        raise VikhrError(
            f"{tok.path.parent} carries no chat template (chat_template.jinja, or chat_template in "
            "tokenizer_config.json) for the own template: add the model's, or choose another template"
        )
    if tok.kind != "huggingface":
        raise VikhrError(
            f"{tok.path}: training on the tokenizer's own chat template ({found[1].name}) needs the "
            "model's tokenizer.json, which transformers renders it with: give that file as --tokenizer "
            "(a directory holding both opens the .model), or choose a template with --template NAME"
        )
    fast = _transformers_tokenizer(tok)
    added = fast.backend_tokenizer.get_added_tokens_decoder()
    specials = {t.content: i for i, t in added.items() if t.special}
    pattern = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    longest = max(map(len, specials), default=0)
    return OwnTemplate(found[0], found[1], fast, specials, re.compile(pattern) if pattern else None, longest)
