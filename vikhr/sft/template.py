"""Chat templates: messages → token ids plus a loss mask that covers the assistant turns only.

A chat is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`: an
optional system message first, then user turns each followed by its answer — one assistant turn, or
several in a row (a long answer split, a tool turn dropped between), each trained — starting with a
user turn and ending with an answer (function calls and their results between: see the end); user
turns after the last answer, which nobody answered, are left out (`ChatMessages.trimmed`). Every
message but an answer holds some text (an empty or blank one is refused). A content is a string, a
number (its JSON text) or OpenAI's list of text parts (joined).
An assistant message may carry its reasoning apart, as ``"reasoning_content"`` (Qwen3's and
DeepSeek-R1's field): it is written into the content as
``<think>\n{reasoning}\n</think>\n\n{answer}``, the form every template trains on (``qwen3``
turns it into its thinking block).

Templates (`<s>`/`</s>` are the tokenizer's BOS/EOS ids, never parsed from text):

* ``mistral`` (default), Mistral-7B-Instruct v0.1 as mistral-common's v1 instruct tokenizer
  encodes it: ``<s>[INST] {user} [/INST]{answer}</s>[INST] {user} [/INST]{answer}</s>``. A
  system message is put before the first user message, separated by a blank line (Mistral has
  no system role). Each ``[INST] … [/INST]`` and each answer is encoded on its own, so with
  SentencePiece every segment starts with the dummy-prefix space (``▁[``, ``▁Да``) exactly as
  mistral-common produces it. HF's jinja template applied to the whole string tokenizes the
  answer's first word differently (no space after ``[/INST]``); this module follows mistral-common.
  With a byte-level tokenizer (Mistral-NeMo's tekken) the answer opens with an explicit space (what
  the dummy prefix writes), and ``[INST]``/``[/INST]`` are one id each where the tokenizer has both
  (tekken's control tokens), so the ids equal those of the export's Jinja template tokenized by
  transformers. Needs a tokenizer with BOS and EOS.
* ``mistral-v3``, Mistral's v3 instruct format as mistral-common's v3 tokenizer encodes it (Mistral-7B-
  Instruct-v0.3 on SentencePiece, Mistral-NeMo-Instruct-2407 and Ministral on tekken):
  ``<s>[INST]{user}[/INST]{answer}</s>``, ``[INST]``/``[/INST]`` one id each (required), each text
  encoded on its own (SentencePiece gives it its dummy-prefix space, tekken none). A system message
  goes before the last user message of the chat, followed by a blank line: where mistral-common puts
  it, in training chats too (Nemo's Jinja drops it from a chat that ends with an answer, so ``own``
  refuses such chats). Needs BOS and EOS.
  Both Mistral formats write answers in a row as one answer, their texts joined by a blank line, as
  mistral-common joins consecutive assistant messages (answers of different weights are refused).
* ``chatml``, Qwen2.5-Instruct's template: ``{bos}<|im_start|>{role}\\n{content}<|im_end|>\\n``
  per message, ``{bos}`` being the tokenizer's BOS when it has one (``<s>`` for Mistral) and
  nothing when it has none (Qwen: ``bos_token`` null). Unlike Qwen's template, no system message
  is invented when the chat has none (Qwen's adds "You are Qwen, created by Alibaba Cloud. You
  are a helpful assistant."): ChatML is a format shared by many models, and a Russian model
  should not learn to call itself Qwen; put that system message into the chats to train with it.
  ``<|im_start|>`` and ``<|im_end|>`` become single ids when the tokenizer has both as tokens,
  otherwise they are encoded as text and each answer's ``<|im_end|>`` is followed by EOS (``</s>``),
  the one token there generation can stop at (the export's template writes it too; a tokenizer
  without EOS is refused). The answer and its closing ``<|im_end|>`` (and EOS) are trained.
* ``qwen3``, Qwen3's hybrid-thinking template: ``chatml`` (no default system message
  either; Qwen3 has none), except that the answer to the last user turn opens with its thinking
  block, ``<think>\n{reasoning}\n</think>\n\n{answer}``, empty (``<think>\n\n</think>\n\n``)
  when the answer carries no reasoning. An answer may carry it as Qwen3's template reads it:
  ``<think>…</think>`` in the content, split off there; earlier answers lose theirs (as Qwen3
  renders a history). The thinking block is trained with the answer, so a model tuned on answers
  without reasoning learns to answer without thinking. For generation the prompt ends with
  ``<|im_start|>assistant\n<think>\n\n</think>\n\n`` (Qwen3's ``enable_thinking=False``).
  ``<think>``/``</think>`` are text to vikhr: Qwen3's tokenizer makes each one id (added tokens).
* ``llama3``, Meta-Llama-3-8B-Instruct's (and 3.1's without its system-header lines):
  ``<|begin_of_text|>`` then ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``
  per message, content stripped of surrounding whitespace as that template's ``| trim`` does. The
  four control tokens must be single ids of the tokenizer (else VikhrError naming the missing
  ones); EOS is not used. Llama-3.1/3.2's template differs: it always writes a system header with
  "Cutting Knowledge Date: December 2023" and "Today Date: …" lines, which a training set should
  not depend on. The answer and its ``<|eot_id|>`` are trained.
* ``own``, the tokenizer's own Jinja chat template, whatever it is, rendered by transformers (for
  Llama-3.1, Mistral-NeMo, Gemma ...): see vikhr.sft.own_template. The rest of this doc is about
  the four templates above.

``for_generation``: the prompt ends with the header of the answer to come (``[/INST]``,
``<|im_start|>assistant\\n``, ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``).

How text is encoded: the control tokens are single ids wherever the template names them, and text
typed in a message ("</s>", "<|im_end|>") always stays text (an HF tokenizer holding a control as a
plain added token gets it marked special; a chat typing a SentencePiece user-defined symbol that is
a control is refused with TypedControlError, as that tokenizer cannot encode it as text).
``chatml``, ``qwen3``, ``llama3`` and ``mistral-v3`` encode each run of text between two control ids
in one call, as transformers' ``apply_chat_template(..., tokenize=True)`` does — a byte-level
pre-tokenizer may split ``\\n\\n`` + an answer differently from the two parts encoded apart, and
SentencePiece (or a Metaspace tokenizer.json) gives an answer encoded apart its dummy-prefix space
(``▁Да`` where the rendered template has ``Д``, ``а`` after ``assistant\\n``) — so the ids equal
those of the model's own Jinja template and of vikhr's export (tests/test_sft_templates.py).
``mistral`` encodes every segment on its own, as mistral-common does.

Mask: 1 on every token of an assistant answer including its closing token (``</s>``,
``<|im_end|>``, ``<|eot_id|>``), 0 on BOS, system, user and template tokens. A token that spans
template text and the start of an answer (a byte-level merge of ``\\n`` + an answer's leading
``\\n``) is trained. An answer whose message has ``"weight": 0`` (OpenAI's fine-tuning format and
ShareGPT's per-turn weight; absent or null trains it) is context only, masked like a user turn.

Function calls (OpenAI's layout). An assistant message may carry ``"tool_calls": [{"type": "function",
"function": {"name": str, "arguments": JSON text of an object | object}}, ...]`` (content then empty
or null); ``{"role": "tool", "content": str}`` messages (optional ``name``, ``tool_call_id``) hold the
results; the record's optional ``"tools": [{"type": "function", "function": {...}}, ...]`` lists the
functions offered. An assistant turn with calls is followed by one or more tool results, then an
assistant turn; the chat ends with an assistant turn (one that only calls functions too: the calls
are trained, no result need follow). A result answers a call of the answer before it: no more
results than calls (fewer is read: LLaMA-Factory's layout gives parallel calls one result); where
every call has an ``id``, a result's ``tool_call_id`` is one of them, answered once; a result's
``name``, where given, is the function of a call it answers. Arguments and tools holding NaN or an
infinite number (which json.loads reads, and json.dumps would write as no JSON), or a value JSON
has no kind for (a Parquet row's date), are refused.
``chatml`` and ``qwen3`` render them as Qwen2.5-7B-Instruct's and Qwen3-8B's templates do: the tools, each as
``tojson`` writes it (json.dumps with ensure_ascii=False, keys in the chat's order), in the system
turn after the system message and a blank line, with Qwen's wording (``# Tools`` … ``<tools>`` …
``</tools>`` …); each call after its answer's text as
``<tool_call>\\n{"name": "…", "arguments": …}\\n</tool_call>``, a newline before each but the
first of an answer without text; consecutive tool results as one user turn of
``\\n<tool_response>\\n{result}\\n</tool_response>`` blocks. Trained: each answer with its calls and
its end; the tool block and the results are context. Two differences from Qwen2.5's template, both
Qwen3's behaviour: a chat with tools and no system message gets the tool block alone (Qwen2.5 writes
its default system message before it), and arguments given as JSON text are written as they are
(Qwen2.5's ``tojson`` writes them as a quoted JSON string, ``"arguments": "{\\"city\\": …}"``, a
form a model would learn to call functions in); arguments given as an object are written as
``tojson`` writes them by both. ``mistral``, ``mistral-v3`` and ``llama3`` have no function calls:
a chat with tools, calls or tool results is refused (ChatRefused, one line). ``own`` passes the
tools and the calls (arguments as objects, the form transformers' templates expect) to the
tokenizer's template.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError
from vikhr.jsonl import record_at, record_lines
from vikhr.sft.collection_format import record_format
from vikhr.sft.encoded import (
    ChatMessages,
    EncodedChat,
    Message,
    ToolCall,
    TypedControlError,
    tools_of,
    trained_tokens,
    uses_tools,
)
from vikhr.sft.hf_chat import (
    CHATML_END,
    CHATML_START,
    TOOLS_INTRO,
    TOOLS_OUTRO,
    chatml_as_text,
    hf_chat_template,
    mistral_v3_spaced,
    own_chat_template,
)
from vikhr.sft.own_template import ChatRefused, own_template
from vikhr.tokenizer.load import Tokenizer, load

ROLES = ("system", "user", "assistant", "tool")
TEMPLATES = ("mistral", "mistral-v3", "chatml", "qwen3", "llama3")  # vikhr's own, written out in this module
# How `sft prepare`, `sft score` (and the build's report) name the chats whose user turns after the
# last answer were left out.
TRIMMED_UNANSWERED = "trimmed of unanswered user turns after the last answer"
OWN = "own"  # the tokenizer's own Jinja template, whatever it is (vikhr.sft.own_template)
TOOL_TEMPLATES = ("chatml", "qwen3")  # vikhr's templates that render function calls (and `own`)
MISTRAL_INST, MISTRAL_INST_END = "[INST]", "[/INST]"
LLAMA3_BEGIN, LLAMA3_EOT = "<|begin_of_text|>", "<|eot_id|>"
LLAMA3_HEADER_START, LLAMA3_HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
# The control-token strings of each template (Mistral's are the tokenizer's BOS/EOS ids).
TEMPLATE_TOKENS: dict[str, tuple[str, ...]] = {
    "mistral": (MISTRAL_INST, MISTRAL_INST_END),  # ids only on a byte-level tokenizer having both
    "mistral-v3": (MISTRAL_INST, MISTRAL_INST_END),  # always ids
    "chatml": (CHATML_START, CHATML_END),
    "qwen3": (CHATML_START, CHATML_END),
    "llama3": (LLAMA3_BEGIN, LLAMA3_HEADER_START, LLAMA3_HEADER_END, LLAMA3_EOT),
}


def template_token_ids(tok: Tokenizer, template: str) -> dict[str, int]:
    """The control tokens of `template` that `tok` encodes as single ids, by string.

    VikhrError (one line) when `tok` lacks what the template needs: BOS and EOS for ``mistral``,
    those and ``[INST]``/``[/INST]`` for ``mistral-v3``, the four header/turn tokens for ``llama3``.
    ``chatml`` and ``qwen3`` need EOS only where the tokenizer lacks one of their tokens: they then
    spell both out as text (and get an empty dict; see `chatml_as_text`). ``own``: the tokenizer's
    special tokens (VikhrError when it carries no chat template; see `own_template`).
    """
    if template == OWN:
        return dict(own_template(tok).specials)
    if template not in TEMPLATES:
        raise VikhrError(f"unknown chat template {template!r} (choose from {', '.join((*TEMPLATES, OWN))})")
    if template in ("mistral", "mistral-v3"):
        for name, value in (("BOS", tok.bos_id), ("EOS", tok.eos_id)):
            if value is None:
                raise VikhrError(
                    f"{tok.path} has no {name} token; the {template} chat template needs one "
                    "(name it as bos_token/eos_token in the tokenizer_config.json beside a tokenizer.json)"
                )
        if template == "mistral" and not tok.byte_level:
            if _has_inst_tokens(tok):
                raise VikhrError(
                    f"{tok.path} has [INST] / [/INST] as tokens of their own (Mistral v0.3's control "
                    "tokens): the mistral template (v0.1) spells them out as text, which the model's HF "
                    "export would read as those tokens; use --template mistral-v3"
                )
            return {}  # spelled out, as mistral-common's v1 tokenizer encodes it
    if template in ("chatml", "qwen3") and chatml_as_text(tok) and tok.eos_id is None:
        raise VikhrError(
            f"{tok.path} has no {CHATML_START} / {CHATML_END} tokens and no EOS token; the {template} chat "
            "template spells them out as text and ends each answer with EOS, the token the model learns to "
            "stop at (add both as special tokens, or name eos_token in the tokenizer_config.json beside a "
            "tokenizer.json)"
        )
    found = {s: tok.piece_to_id(s) for s in TEMPLATE_TOKENS[template]}
    ids = {s: i for s, i in found.items() if i is not None}
    if template in ("llama3", "mistral-v3") and len(ids) < len(found):
        missing = [s for s, i in found.items() if i is None]
        model = "a Llama-3" if template == "llama3" else "Mistral v0.3's or Mistral-NeMo's"
        raise VikhrError(
            f"{tok.path} has no {' / '.join(missing)} token{'s' if len(missing) > 1 else ''}; the {template} "
            f"chat template needs each of its control tokens as one id (use {model} tokenizer, or add "
            f"{', '.join(TEMPLATE_TOKENS[template])} to the tokenizer as special tokens)"
        )
    return ids if len(ids) == len(found) else {}


def _has_inst_tokens(tok: Tokenizer) -> bool:
    return all(tok.piece_to_id(s) is not None for s in TEMPLATE_TOKENS["mistral-v3"])


def end_of_turn_id(tok: Tokenizer, template: str) -> int | None:
    """The id that ends an answer under `template` (generation stops there): EOS for ``mistral``,
    ``<|eot_id|>`` for ``llama3``, ``<|im_end|>`` for ``chatml`` and ``qwen3`` (EOS, which then follows
    the spelled-out ``<|im_end|>``, where it is text); for ``own``, the control token its template
    closes an answer with."""
    if template == OWN:
        return own_template(tok).end_of_turn_id(tok.eos_id)
    controls = template_token_ids(tok, template)
    end = {"llama3": LLAMA3_EOT, "chatml": CHATML_END, "qwen3": CHATML_END}.get(template)
    return controls.get(end, tok.eos_id) if end is not None else tok.eos_id


AUTO = "auto"
# Chats the templates are told apart by: with a system turn (Qwen2.5's adds a default system turn
# to a chat without one), and without (Mistral's refuses a system turn). Every content has spaces and
# newlines around it, so that a template which trims contents (Llama-3's `| trim`) and one which keeps
# them (ChatML's) render differently: a chat is trained as the model's own template writes it.
_PROBES = (
    [
        {"role": "system", "content": " \nОтвечай кратко. \n"},
        {"role": "user", "content": " \nПривет! \n"},
        {"role": "assistant", "content": " \nЗдравствуйте. \n"},
        {"role": "user", "content": " \nКак дела? \n"},
        {"role": "assistant", "content": " \nХорошо. \n"},
    ],
    [
        {"role": "user", "content": " \nПривет! \n"},
        {"role": "assistant", "content": " \nЗдравствуйте. \n"},
        {"role": "user", "content": " \nКак дела? \n"},
        {"role": "assistant", "content": " \nХорошо. \n"},
    ],
)


def resolve_template(template: str, tok: Tokenizer) -> tuple[str, Path | None]:
    """`template`, or for AUTO the template whose chats render as the tokenizer's own chat template
    renders them (see `own_chat_template`), OWN where it renders as none of vikhr's; where it carries
    none, mistral-v3 for a tokenizer with [INST] / [/INST] tokens (Mistral v0.3's, NeMo's tekken: the
    format of their instruct models), else mistral; with the file the choice came from."""
    if template != AUTO:
        return template, None
    own = own_chat_template(tok)
    if own is None:
        return ("mistral-v3" if _has_inst_tokens(tok) else "mistral"), None
    fast = tok.to_transformers()

    def render(chat_template: str, chat: list[dict[str, str]]) -> str | None:
        try:
            return str(fast.apply_chat_template(chat, chat_template=chat_template, tokenize=False))
        except Exception:  # a template may refuse a chat (a system turn): it tells nothing then
            return None

    for chat in _PROBES:
        theirs = render(own[0], chat)
        if theirs is None:
            continue
        for name in TEMPLATES:
            if render(hf_chat_template(name, tok), chat) == theirs:
                return name, own[1]
    return OWN, own[1]


def load_chat_tokenizer(path: str | Path, template: str = "mistral") -> Tokenizer:
    """The tokenizer at `path` (see vikhr.tokenizer.load), refused unless `template` can use it
    (see `template_token_ids`), with the template's control tokens marked special (see
    `_controls_made_special`)."""
    return load_for_chats(path, template)[0]


def load_for_chats(path: str | Path, template: str) -> tuple[Tokenizer, str, Path | None]:
    """`load_chat_tokenizer` for `template`, which may be AUTO (see `resolve_template`): the
    tokenizer, the template, and the tokenizer's file that chose it (None when one was given)."""
    tok = load(path)
    template, chosen_by = resolve_template(template, tok)
    _controls_made_special(tok, template_token_ids(tok, template))
    if template == OWN and own_template(tok).end_of_turn_id(None) is None:  # VikhrError if untrainable
        print(
            f"warning: {own_template(tok).source}: its chat template ends an answer in plain text, with "
            "no control token: the model learns no end of turn, and stops only at EOS, which the "
            "chats do not hold",
            file=sys.stderr,
        )
    return tok, template, chosen_by


def load_for_template(path: str | Path, template: str) -> Tokenizer:
    """The tokenizer `load_for_chats` gave for `template`, which it chose (not AUTO), loaded again
    without its checks and warnings (an encoding process's own copy)."""
    tok = load(path)
    _controls_made_special(tok, template_token_ids(tok, template))
    return tok


def control_ids(tok: Tokenizer, controls: dict[str, int]) -> set[int]:
    """The ids a chat's text must never produce: `controls` (see `template_token_ids`), BOS and EOS."""
    return set(controls.values()) | {i for i in (tok.bos_id, tok.eos_id) if i is not None}


def _controls_made_special(tok: Tokenizer, controls: dict[str, int]) -> None:
    """Marks `controls`, BOS and EOS special in an HF tokenizer that holds them as plain added tokens.

    Some tokenizer.json files hold ``<|im_start|>``/``<|im_end|>`` as non-special added tokens, which
    `Tokenizer.encode` matches in any text: typed in a message they would become control ids. A special
    one typed in a text is encoded as text (vikhr.tokenizer.load), as a chat's text must be.
    """
    if tok.kind != "huggingface":
        return  # SentencePiece: see `_Encoder._check_no_control`
    wanted = control_ids(tok, controls)
    added = tok.backend.get_added_tokens_decoder()
    plain = [t.content for i, t in added.items() if i in wanted and not t.special]
    if plain:
        tok.backend.add_special_tokens(plain)  # the same ids, now special


# --------------------------------------------------------------------------- validation


def _a(word: str) -> str:
    return "an" if word == "assistant" else "a"  # the roles: a system, a user, an assistant


def with_reasoning(content: str, reasoning: Any, role: str, number: int) -> str:
    """`content` with an assistant message's separate reasoning (``reasoning_content``; None when
    absent) written before it in the ``<think>`` form, or VikhrError saying what is wrong. An empty
    one, on any message (converted datasets put it on every turn), is nothing to keep."""
    if reasoning is None or reasoning == "":
        return content
    if role != "assistant":
        raise VikhrError(f"message {number}: only an assistant message may carry reasoning_content")
    if not isinstance(reasoning, str):
        raise VikhrError(
            f"message {number}: reasoning_content must be a string, got {type(reasoning).__name__}"
        )
    if "</think>" in reasoning + content:
        # Written together, the text around that tag would be split as reasoning and answer anew.
        where = "reasoning_content" if "</think>" in reasoning else "content"
        raise VikhrError(
            f"message {number}: a </think> in the {where} "
            "of a message with reasoning_content (give the reasoning in one place: the field, or "
            "<think>…</think> in the content)"
        )
    return f"<think>\n{reasoning}\n</think>\n\n{content}"


def turn_weight(weight: Any, role: str, number: int) -> bool:
    """Whether message `number` is trained, by its optional per-turn ``"weight"`` (ShareGPT's, as
    axolotl reads it): absent or null keeps the default (answers trained), 0 makes an answer context
    only; 1 on another role is refused (only answers are trained). VikhrError on another value."""
    if weight is None:
        return True
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
        raise VikhrError(f"message {number}: weight must be 0, 1 or null, got {weight!r}")
    if weight == 1 and role != "assistant":
        raise VikhrError(
            f"message {number}: weight 1 on a {role} turn: only assistant turns are trained "
            "(give it weight 0 or none)"
        )
    return bool(weight) or role != "assistant"


def parse_chat(record: Any, for_generation: bool = False) -> ChatMessages:
    """The messages of one chat record (with the functions it offers, see `ChatMessages`), or
    VikhrError saying what is wrong (without a location).

    `for_generation`: the chat ends with the user turn (or the tool results) to be answered instead
    of an answer.
    """
    if not isinstance(record, dict) or "messages" not in record:
        raise VikhrError('expected an object with a "messages" list' + _collection_hint(record))
    raw = record["messages"]
    if not isinstance(raw, list) or not raw:
        raise VikhrError('"messages" must be a non-empty list')
    kept = len(raw) if for_generation else answered_length([_raw_role(m) for m in raw])
    messages = ChatMessages(
        (_message(m, i) for i, m in enumerate(raw[:kept], start=1)),
        _tools(record.get("tools")),
        trimmed=len(raw) - kept,
    )
    turns = messages[1:] if messages[0].role == "system" else messages
    offset = len(messages) - len(turns)
    for i, m in enumerate(turns):
        _check_turn(m, turns[i - 1] if i else None, i + 1 + offset)
    _check_results(messages)
    _check_calls_offered(messages)
    if for_generation:
        if not turns or turns[-1].role not in ("user", "tool"):
            raise VikhrError("a prompt for generation must end with a user turn (or tool results)")
    elif not any(m.role == "assistant" for m in turns):
        raise VikhrError(
            "chat has no assistant turn: nothing to train on (an SFT chat needs an answer after its user "
            "turn; give it, or leave the chat out)"
        )
    elif not any(m.role == "assistant" and m.trained for m in turns):
        raise VikhrError("every assistant turn has weight 0 (nothing to train on)")
    elif turns[-1].role != "assistant":  # trailing user turns after an answer were left out above
        raise VikhrError(
            f"message {len(messages)}: chat ends with a tool result that has no answer (give its answer, "
            "or leave the turn out)"
        )
    return messages


def answered_length(roles: Sequence[Any]) -> int:
    """How many of a chat's messages (given by their roles) to keep: all but the user turns after its
    last answer. Many ShareGPT dumps end with a question nobody answered; the chat up to its last
    answer is still one. Trailing user turns after no answer (or after a tool result) are kept, and
    the chat is refused as such."""
    end = len(roles)
    while end and roles[end - 1] == "user":
        end -= 1
    return end if end < len(roles) and end and roles[end - 1] == "assistant" else len(roles)


def _raw_role(m: Any) -> Any:
    return m.get("role") if isinstance(m, dict) else None


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (`null`, not NoneType)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def message_text(value: Any, what: str) -> str:
    """The text of a message's content (`what` names it in errors): a string; a number as its JSON text
    (exports write ``"content": 42``); OpenAI's list of content parts, its ``{"type": "text", "text"}``
    parts joined one after another, as chat templates write them. VikhrError for anything else: null,
    true/false, an object, a part of another type (an image: there is no text of it to train on)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise VikhrError(f"{what} is {_NON_FINITE}")
        return json.dumps(value)  # the JSON text of the number (1.5, 1e+20)
    if isinstance(value, list):
        texts = []
        for k, part in enumerate(value, start=1):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = repr(part.get("type")) if isinstance(part, dict) else _json_kind(part)
                raise VikhrError(
                    f'{what} part {k} is {kind}, not {{"type": "text", "text": …}} (only text parts are read)'
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise VikhrError(f"{what} part {k} text must be a string, got {_json_kind(text)}")
            texts.append(text)
        return "".join(texts)
    raise VikhrError(
        f"{what} must be a string (or a number, or OpenAI's list of text parts), got {_json_kind(value)}"
    )


# What is wrong with a turn of each role but the answer's that is empty or blank (`sft build` drops
# such chats as empty_turn; an empty answer is kept: it teaches the model to end at once).
_BLANK_TURN = {
    "system": "the system message is empty or blank (leave it out: a chat may have none)",
    "user": "the user turn is empty or blank: there is nothing to answer (give its text, or leave the "
    "chat out)",
    "tool": 'the tool result is empty or blank (give the function\'s output as text, e.g. "null")',
}


def _collection_hint(record: Any) -> str:
    """What to do with a record of a published collection's format (a ShareGPT or Alpaca file given
    to `sft prepare`): `vikhr sft build` reads those; "" for anything else."""
    fmt = record_format(record) if isinstance(record, dict) else None
    if fmt is None:
        return ""
    fields = ", ".join(sorted(record)[:6])
    return f" (fields {fields}: the {fmt} format, which `vikhr sft build` reads and writes as chats)"


def _message(m: Any, number: int) -> Message:
    """Message `number` of a chat record, or VikhrError saying what is wrong."""
    # OpenAI's layout may leave out the content of a message that only calls functions
    if not isinstance(m, dict) or "role" not in m or ("content" not in m and not m.get("tool_calls")):
        sharegpt = isinstance(m, dict) and "from" in m and "value" in m
        hint = " (a ShareGPT turn: `vikhr sft build` reads those, writing role/content)" if sharegpt else ""
        raise VikhrError(f'message {number}: expected {{"role": ..., "content": ...}}{hint}')
    role, content = m["role"], m.get("content")
    if role not in ROLES:
        raise VikhrError(
            f"message {number}: unknown role {role!r} (expected system, user, assistant or tool)"
        )
    calls = _tool_calls(m.get("tool_calls"), role, number)
    if content is None and calls:
        content = ""  # OpenAI's form of a message that only calls functions
    content = message_text(content, f"message {number}: content")
    if role != "assistant" and not content.strip():
        raise VikhrError(f"message {number}: {_BLANK_TURN[role]}")
    content = with_reasoning(content, m.get("reasoning_content"), role, number)
    trained = turn_weight(m.get("weight"), role, number)
    if role != "tool":
        return Message(role, content, trained, calls)
    name, call_id = (_optional_text(m.get(key), key, number) for key in ("name", "tool_call_id"))
    return Message(role, content, trained, name=name, tool_call_id=call_id)


def _optional_text(value: Any, key: str, number: int) -> str | None:
    if value is not None and not isinstance(value, str):
        raise VikhrError(f"message {number}: {key} must be a string or null, got {type(value).__name__}")
    return value


def _tool_calls(raw: Any, role: str, number: int) -> tuple[ToolCall, ...]:
    """The function calls of message `number` (OpenAI's ``tool_calls``; null or [] for none)."""
    if raw is None or raw == []:
        return ()
    if role != "assistant":
        raise VikhrError(
            f"message {number}: only an assistant message may carry tool_calls, not a {role} one"
        )
    if not isinstance(raw, list):
        raise VikhrError(
            f'message {number}: tool_calls must be a list of {{"type": "function", "function": '
            f'{{"name", "arguments"}}}}, got {type(raw).__name__}'
        )
    return tuple(_tool_call(item, k, number) for k, item in enumerate(raw, start=1))


def _tool_call(item: Any, k: int, number: int) -> ToolCall:
    """Call `k` of message `number`: ``{"type": "function", "function": {"name", "arguments"}}`` (the
    bare ``{"name", "arguments"}`` too, as Qwen's templates read it), or VikhrError."""
    where = f"message {number}: tool call {k}"
    if isinstance(item, dict) and item.get("type", "function") != "function":
        raise VikhrError(f'{where}: type {item.get("type")!r} is not "function"')
    function = item.get("function", item) if isinstance(item, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise VikhrError(
            f'{where}: expected {{"type": "function", "function": {{"name": "...", "arguments": ...}}}}'
        )
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise VikhrError(f"{where}: arguments are not valid JSON ({e.msg} at column {e.colno})") from None
        text = arguments  # written as given, as Qwen3's template writes a string
    else:
        parsed, text = arguments, None
    if not isinstance(parsed, dict):
        raise VikhrError(
            f"{where}: arguments must be a JSON object (as an object or as its JSON text), "
            f"got {type(parsed).__name__}"
        )
    as_json = _json_text(parsed, f"{where}: arguments hold")  # the templates' `tojson`
    text = as_json if text is None else text
    call_id = item.get("id") if isinstance(item, dict) and item is not function else None
    if call_id is not None and not isinstance(call_id, str):
        raise VikhrError(f"{where}: id must be a string or null, got {type(call_id).__name__}")
    return ToolCall(function["name"], text, call_id)


def _tools(raw: Any) -> tuple[str, ...]:
    """The functions a chat offers (its ``tools``; null or [] for none), each as the templates'
    `tojson` writes it, or VikhrError."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise VikhrError(
            f'"tools" must be a list of {{"type": "function", "function": ...}}, got {type(raw).__name__}'
        )
    texts: dict[str, str] = {}  # name -> schema text; a function listed twice alike is offered once
    for k, tool in enumerate(raw, start=1):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise VikhrError(
                f'tool {k}: expected {{"type": "function", "function": {{"name": "...", ...}}}} '
                "(a function's JSON schema)"
            )
        name = function["name"]
        text = _json_text(tool, f"tool {k} ({name}): its schema holds")
        if texts.setdefault(name, text) != text:
            raise VikhrError(
                f"tool {k} ({name}): the chat offers another function of that name before it (two "
                "schemas of one function): keep one"
            )
    return tuple(texts.values())


# json.loads reads NaN, Infinity (and 1e999 as infinity); json.dumps would write them into the
# training text as it reads them, which is not JSON: a model would learn to call with them. Records
# read from Parquet may hold values JSON has no kind for (dates, bytes).
_NON_FINITE = "NaN or an infinite number, which JSON cannot hold"


def _json_text(value: Any, holds: str) -> str:
    """`value` (parsed JSON, or a Parquet row's values) as the templates' `tojson` writes it
    (json.dumps, ensure_ascii=False), or VikhrError "`holds` …" naming what of it JSON cannot hold."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise VikhrError(f"{holds} {_NON_FINITE}") from None
    except TypeError as e:  # "Object of type date is not JSON serializable"
        raise VikhrError(f"{holds} a value JSON cannot hold ({e})") from None


def _check_turn(m: Message, previous: Message | None, number: int) -> None:
    """VikhrError unless message `number` may follow `previous` (None: it opens the turns): the turns
    start with a user turn, each user turn is followed by its answer (one assistant turn or several in
    a row); an assistant turn with tool calls is followed by one or more tool results, then an
    assistant turn."""
    before = previous.role if previous is not None else None
    calls = previous is not None and bool(previous.tool_calls)
    if m.role == "system":
        raise VikhrError(f"message {number}: a system message may only come first")
    if m.role == "tool":
        if before == "tool" or calls:
            return
        after = "the start" if before is None else f"{_a(before)} {before} turn"
        raise VikhrError(
            f"message {number}: a tool result after {after}{' without tool calls' * (before == 'assistant')} "
            "(tool results follow an assistant turn with tool_calls, or another tool result)"
        )
    if calls:
        raise VikhrError(
            f"message {number}: expected a tool result after an assistant turn with tool calls, got "
            f"{m.role} (the result of each call follows as a tool message)"
        )
    if before == "tool":
        if m.role != "assistant":
            raise VikhrError(
                f"message {number}: expected an assistant turn (or another tool result) after a tool "
                f"result, got {m.role}"
            )
        return
    if before == "assistant":
        return  # a user turn, or another answer (a long answer split, a tool turn dropped between)
    expected = "user" if before is None else "assistant"
    if m.role != expected:
        after = "the start" if before is None else f"{_a(before)} {before} turn"
        raise VikhrError(
            f"message {number}: expected {_a(expected)} {expected} turn after {after}, got {m.role} "
            "(the turns start with a user turn, and each user turn is followed by its answer)"
        )


def _check_calls_offered(messages: ChatMessages) -> None:
    """VikhrError where a chat that lists the functions it offers (``tools``) calls another: trained
    on it, a model learns to call functions it was not given. A chat without a list may call any."""
    if not messages.tools:
        return
    offered = [json.loads(tool)["function"]["name"] for tool in messages.tools]
    for number, m in enumerate(messages, start=1):
        for k, call in enumerate(m.tool_calls, start=1):
            if call.name not in offered:
                raise VikhrError(
                    f"message {number}: tool call {k} calls {call.name!r}, which is none of the "
                    f'functions the chat offers ({", ".join(map(repr, offered))}; its "tools")'
                )


def _check_results(messages: list[Message]) -> None:
    """VikhrError unless the tool results after each answer with calls answer those calls: no more
    results than calls; where every call has an ``id``, a result's ``tool_call_id`` one of them and
    no two results naming the same one; a result's ``name``, where given, the name of a call it
    answers. (A call may go without a result: the chat may end with it, and LLaMA-Factory's layout
    gives parallel calls one result turn.)"""
    calls: tuple[ToolCall, ...] = ()
    asked_by, answered = 0, 0  # the message that made the calls, and the results since
    answered_ids: dict[str, int] = {}  # the tool_call_ids answered since, with the result naming each
    for number, m in enumerate(messages, start=1):
        if m.role == "assistant":
            calls, asked_by, answered, answered_ids = m.tool_calls, number, 0, {}
        elif m.role == "tool":  # `_check_turn` saw that calls came before
            answered += 1
            if answered > len(calls):
                raise VikhrError(
                    f"message {number}: tool result {answered} after message {asked_by}, which makes "
                    f"{len(calls)} tool call{'s' * (len(calls) != 1)} (one result per call)"
                )
            _check_result(m, number, calls, asked_by, answered_ids)


def _check_result(
    m: Message, number: int, calls: tuple[ToolCall, ...], asked_by: int, answered_ids: dict[str, int]
) -> None:
    """VikhrError unless tool result `m` (message `number`) names a call of message `asked_by` by its
    id (where every call has one) that no earlier result named (`answered_ids`, which it joins), and
    by its function's name (where it gives one)."""
    ids = [call.id for call in calls]
    answers = calls  # the calls the result may answer: the one its id names, where the calls have ids
    if m.tool_call_id is not None and None not in ids:
        if m.tool_call_id not in ids:
            raise VikhrError(
                f"message {number}: tool_call_id {m.tool_call_id!r} is none of the ids of the calls "
                f"of message {asked_by} ({', '.join(map(repr, ids))})"
            )
        if m.tool_call_id in answered_ids:
            raise VikhrError(
                f"message {number}: a second tool result for tool_call_id {m.tool_call_id!r} (message "
                f"{answered_ids[m.tool_call_id]} answers it already; one result per call)"
            )
        answered_ids[m.tool_call_id] = number
        answers = tuple(call for call in calls if call.id == m.tool_call_id)
    if m.name is not None and all(call.name != m.name for call in answers):
        which = f"call {m.tool_call_id!r}" if len(answers) < len(calls) else "calls"
        names = ", ".join(dict.fromkeys(repr(call.name) for call in answers))
        raise VikhrError(
            f"message {number}: tool result name {m.name!r} is none of the functions it answers "
            f"(the {which} of message {asked_by}: {names})"
        )


def read_chats(path: str | Path) -> Iterator[tuple[int, list[Message]]]:
    """(line number, messages) of every non-blank line of a JSONL file (plain, .gz or .zst).

    VikhrError "path:line: problem" on a bad line.
    """
    for line_no, line in record_lines(path):
        yield line_no, chat_at(path, line_no, line)


def chat_at(path: str | Path, line_no: int, line: str) -> ChatMessages:
    """The chat on line `line_no` of `path` (a line `record_lines` gave), as `read_chats` reads it."""
    record = record_at(path, line_no, line)
    try:
        return parse_chat(record)
    except VikhrError as e:
        raise VikhrError(f"{path}:{line_no}: {e}") from e


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Control:
    """A control token of a template: its single id when the tokenizer has it, else its text."""

    token: str | None  # None: the tokenizer's EOS id (the mistral template)


EOS = Control(None)
# A template's output before encoding: (parts, trained) segments in order. Message content is always
# a plain-text part, so a control string typed in a message is never made a control id.
Segments = list[tuple[list[str | Control], bool]]


def _mistral_segments(messages: list[Message], for_generation: bool) -> Segments:
    del for_generation  # the prompt ends with the user's [INST] … [/INST] either way
    return _inst_segments(messages, system_in_last=False, pad=" ")


def _mistral_v3_segments(messages: list[Message], for_generation: bool) -> Segments:
    del for_generation
    return _inst_segments(messages, system_in_last=True, pad="")


def _inst_segments(messages: list[Message], system_in_last: bool, pad: str) -> Segments:
    """Mistral's ``[INST]{pad}{user}{pad}[/INST]{answer}</s>`` turns, the system message (Mistral has no
    system role) put before the first user message (v1) or the last one (v2 and later, mistral-common's
    placement in training chats too), followed by a blank line."""
    system = messages[0].content if messages[0].role == "system" else None
    turns = messages[1:] if system is not None else messages
    with_system = max(i for i, m in enumerate(turns) if m.role == "user") if system_in_last else 0
    out: Segments = []
    for i, m in enumerate(turns):
        if m.role == "user":
            content = f"{system}\n\n{m.content}" if i == with_system and system else m.content
            out.append(([Control(MISTRAL_INST), f"{pad}{content}{pad}", Control(MISTRAL_INST_END)], False))
        else:
            out.append(([m.content, EOS], True))
    return out


def _joined_answers(messages: list[Message], template: str) -> list[Message]:
    """`messages` with each run of answers in a row as one answer, their texts joined by a blank line:
    the Mistral formats have no place for an answer after an answer, and mistral-common joins
    consecutive assistant messages so. ChatRefused for a run of answers of different weights (the one
    answer they make is trained or not)."""
    out: list[Message] = []
    for number, m in enumerate(messages, start=1):
        if m.role == "assistant" and out and out[-1].role == "assistant":
            if m.trained != out[-1].trained:
                raise ChatRefused(
                    f"message {number}: an answer of weight {int(m.trained)} right after one of weight "
                    f"{int(out[-1].trained)}, which the {template} template writes as one answer (as "
                    "mistral-common joins them), trained or not: give them one weight, or train with "
                    "chatml, qwen3 or llama3, which write each answer apart"
                )
            out[-1] = replace(out[-1], content=f"{out[-1].content}\n\n{m.content}")
        else:
            out.append(m)
    return out


def _spaced_answers(segments: Segments) -> Segments:
    """`mistral` segments for a byte-level tokenizer: each answer opens with the space that
    SentencePiece's dummy prefix writes as "▁" (and the template's Jinja as ' ' + answer); an empty
    answer none, as SentencePiece writes no prefix for an empty text."""
    return [([" ", *parts] if trained and parts[0] else parts, trained) for parts, trained in segments]


def _spaced_texts(segments: Segments) -> Segments:
    """`mistral-v3` segments for a tokenizer.json whose Metaspace writes no "▁" after a control token
    (Mistral v0.3's own): every text opens with the space SentencePiece's dummy prefix stands for, as
    the export's template writes it (and Metaspace then prepends no other, also to a text that starts
    with spaces, where it would prepend none to the text alone: SentencePiece's ids either way)."""
    return [
        ([p if isinstance(p, Control) else f" {p}" for p in parts], trained) for parts, trained in segments
    ]


def _eos_after_answers(segments: Segments) -> Segments:
    """`chatml`/`qwen3` segments for a tokenizer that spells their tokens out: each answer closes with
    EOS after its textual <|im_end|>, as the export's template writes it (see `chatml_as_text`)."""
    return [([*parts, EOS] if trained else parts, trained) for parts, trained in segments]


def _chatml_segments(messages: list[Message], for_generation: bool) -> Segments:
    return _im_segments(messages, for_generation, thinking=False)


def _qwen3_segments(messages: list[Message], for_generation: bool) -> Segments:
    return _im_segments(messages, for_generation, thinking=True)


def split_reasoning(content: str) -> tuple[str, str]:
    """(reasoning, answer) of an answer as Qwen3's template splits it: the text before the first
    ``</think>`` (after the last ``<think>`` there) and the text after the last ``</think>``, each
    without the newlines next to the tags."""
    if "</think>" not in content:
        return "", content
    parts = content.split("</think>")
    return parts[0].rstrip("\n").split("<think>")[-1].lstrip("\n"), parts[-1].lstrip("\n")


def _last_query(messages: list[Message]) -> int:
    """The index of the user turn Qwen3's template answers with a thinking block: the last one that
    is not a tool's response wrapped as a user turn; the last message when there is none."""
    for i in range(len(messages) - 1, -1, -1):
        content = messages[i].content
        tool_response = content.startswith("<tool_response>") and content.endswith("</tool_response>")
        if messages[i].role == "user" and not tool_response:
            return i
    return len(messages) - 1


def _im_segments(messages: list[Message], for_generation: bool, thinking: bool) -> Segments:
    """ChatML turns; `thinking`: Qwen3's, with the thinking block on the answers after its last query.
    A chat with functions: Qwen's tool block in the system turn, calls closing their answers, tool
    results as user turns (see `tools_system_text`, `_answer_text`, `_tool_result_parts`)."""
    start, end = Control(CHATML_START), Control(CHATML_END)
    last_query = _last_query(messages) if thinking else -1
    tools = tools_of(messages)
    out: Segments = []
    prompt: list[str | Control] = []  # untrained parts gathered up to the next answer
    if tools:
        system = messages[0].content if messages[0].role == "system" else None
        prompt += [start, f"system\n{tools_system_text(system, tools)}", end, "\n"]
    for i, m in enumerate(messages):
        if m.role == "assistant":
            # Qwen3 writes the block on the final answer, and on earlier answers after its last
            # query only when they carry reasoning.
            out.append(([*prompt, start, "assistant\n"], False))
            out.append(([_answer_text(m, thinking, i > last_query, i == len(messages) - 1), end], True))
            prompt = ["\n"]
        elif m.role == "tool":
            prompt += _tool_result_parts(messages, i)
        elif not (tools and i == 0 and m.role == "system"):  # it went into the tool block
            prompt += [start, f"{m.role}\n{m.content}", end, "\n"]
    if for_generation:
        prompt += [start, "assistant\n<think>\n\n</think>\n\n" if thinking else "assistant\n"]
    # A training chat ends with the "\n" after its last <|im_end|>, as Qwen's template renders it.
    return [*out, (prompt, False)] if prompt else out


def tools_system_text(system: str | None, tools: tuple[str, ...]) -> str:
    """The system turn of a chat offering `tools` (JSON texts) under ``chatml``/``qwen3``: its system
    message (if any) and a blank line, then Qwen's tool block. Qwen2.5's template writes its default
    system message where the chat has none; vikhr's writes none, as Qwen3's."""
    opening = f"{system}\n\n" if system is not None else ""
    return opening + TOOLS_INTRO + "".join(f"\n{tool}" for tool in tools) + TOOLS_OUTRO


def tool_call_text(call: ToolCall) -> str:
    """A function call as Qwen's templates write it (the arguments' JSON text as the chat gives it)."""
    return f'<tool_call>\n{{"name": "{call.name}", "arguments": {call.arguments}}}\n</tool_call>'


def _answer_text(m: Message, thinking: bool, after_last_query: bool, last: bool) -> str:
    """The trained text of an assistant message under ``chatml``/``qwen3``: its content (``qwen3``:
    with the thinking block where Qwen3 writes one), then its calls, each after a newline but the
    first of a message without content (Qwen's rule, which reads the content without reasoning)."""
    content = text = m.content
    if thinking:
        reasoning, content = split_reasoning(m.content)
        text = content
        if after_last_query and (last or reasoning):
            text = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    for k, call in enumerate(m.tool_calls):
        text += ("\n" if k or content else "") + tool_call_text(call)
    return text


def plain_turns(messages: list[Message]) -> list[tuple[str, str]]:
    """(role, text) of a chat as system, user and assistant turns, functions written as ``chatml`` writes
    them: each answer followed by its calls, consecutive tool results one user turn of
    <tool_response> blocks (the tools offered left out). For readers of plain turns (reward models)."""
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if m.role == "assistant":
            turns.append((m.role, _answer_text(m, thinking=False, after_last_query=False, last=False)))
        elif m.role == "tool":
            result = _tool_response(m.content)
            if i and messages[i - 1].role == "tool":
                turns[-1] = ("user", f"{turns[-1][1]}\n{result}")
            else:
                turns.append(("user", result))
        else:
            turns.append((m.role, m.content))
    return turns


def _tool_response(content: str) -> str:
    """A tool result as Qwen's templates wrap it."""
    return f"<tool_response>\n{content}\n</tool_response>"


def _tool_result_parts(messages: list[Message], i: int) -> list[str | Control]:
    """Tool result `i` as Qwen's templates write it: consecutive results in one user turn, each
    wrapped in <tool_response>."""
    parts: list[str | Control] = []
    if i == 0 or messages[i - 1].role != "tool":
        parts += [Control(CHATML_START), "user"]
    parts.append("\n" + _tool_response(messages[i].content))
    if i == len(messages) - 1 or messages[i + 1].role != "tool":
        parts += [Control(CHATML_END), "\n"]
    return parts


def _llama3_segments(messages: list[Message], for_generation: bool) -> Segments:
    header_start, header_end, eot = (
        Control(LLAMA3_HEADER_START),
        Control(LLAMA3_HEADER_END),
        Control(LLAMA3_EOT),
    )
    out: Segments = []
    prompt: list[str | Control] = [Control(LLAMA3_BEGIN)]
    for m in messages:
        header = [header_start, m.role, header_end, "\n\n"]
        content = m.content.strip()  # the official template's `| trim` (Python's str.strip)
        if m.role == "assistant":
            out.append(([*prompt, *header], False))
            out.append(([content, eot], True))
            prompt = []
        else:
            prompt += [*header, content, eot]
    if for_generation:
        prompt += [header_start, "assistant", header_end, "\n\n"]
    return [*out, (prompt, False)] if prompt else out


def _weighted(segments: Segments, messages: list[Message]) -> Segments:
    """`segments` with the answers of weight-0 messages untrained: every template writes each
    assistant message as one trained segment, in order."""
    answers = iter([m.trained for m in messages if m.role == "assistant"])
    return [(parts, trained and next(answers)) for parts, trained in segments]


_SEGMENTS: dict[str, Callable[[list[Message], bool], Segments]] = {
    "mistral": _mistral_segments,
    "mistral-v3": _mistral_v3_segments,
    "chatml": _chatml_segments,
    "qwen3": _qwen3_segments,
    "llama3": _llama3_segments,
}


class _Encoder:
    """Ids and mask of a chat's segments: text is gathered into runs that end at a control id
    (and, unless `across_segments`, at the end of each segment), each run encoded in one call."""

    def __init__(self, tok: Tokenizer, controls: dict[str, int], across_segments: bool) -> None:
        self.tok, self.controls, self.across_segments = tok, controls, across_segments
        self.control_ids = control_ids(tok, controls)
        self.out = EncodedChat([], [])
        self.run: list[tuple[str, bool]] = []  # (text, trained) since the last cut

    def encode(self, segments: Segments) -> EncodedChat:
        for parts, trained in segments:
            for part in parts:
                token_id = self._id_of(part) if isinstance(part, Control) else None
                if token_id is not None:
                    self._flush()
                    self.out.ids.append(token_id)
                    self.out.mask.append(int(trained))
                    continue
                text = part if isinstance(part, str) else part.token or ""
                if text:
                    self.run.append((text, trained))
            if not self.across_segments:
                self._flush()
        self._flush()
        return self.out

    def _id_of(self, control: Control) -> int | None:
        """The id of `control`, or None when the tokenizer lacks it (it is then encoded as text)."""
        if control.token is None:
            return self.tok.eos_id  # template_token_ids checked that there is one
        return self.controls.get(control.token)

    def _flush(self) -> None:
        text = "".join(part for part, _ in self.run)
        flags = {trained for _, trained in self.run}
        if len(flags) == 1:  # one kind of text: no need to know where each token came from
            ids = self.tok.encode(text)
            self._check_no_control(ids)
            self.out.ids.extend(ids)
            self.out.mask.extend([int(flags.pop())] * len(ids))
        elif flags:  # template text and an answer in one run: a token is trained if it holds answer text
            ids, mask = self._encode_mixed(text)
            self._check_no_control(ids)
            self.out.ids.extend(ids)
            self.out.mask.extend(mask)
        self.run.clear()

    def _encode_mixed(self, text: str) -> tuple[list[int], list[int]]:
        """Ids and mask of a run holding template text and an answer. The usual run, template text
        then the answer, is encoded twice, whole and up to the answer: where the whole starts with
        the ids of the part before the answer, no token crosses into the answer (several times faster
        than offsets, which sentencepiece gives through a protobuf)."""
        untrained = 0
        while not self.run[untrained][1]:
            untrained += 1
        if untrained and all(trained for _, trained in self.run[untrained:]):
            before = self.tok.encode("".join(part for part, _ in self.run[:untrained]))
            ids = self.tok.encode(text)
            if ids[: len(before)] == before:
                return ids, [0] * len(before) + [1] * (len(ids) - len(before))
        return self._encode_by_offsets(text)

    def _encode_by_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Ids and mask of any run: a token is trained if its characters hold answer text."""
        trained_chars = [trained for part, trained in self.run for _ in part]
        ids, offsets = self.tok.encode_with_offsets(text)
        return ids, trained_tokens(offsets, trained_chars)

    def _check_no_control(self, ids: list[int]) -> None:
        """VikhrError when text was encoded to a control id: a SentencePiece user-defined symbol (or a
        plain added token of a tokenizer not loaded by `load_chat_tokenizer`) typed in a message,
        which the model would read as the template's own token."""
        typed = self.control_ids.intersection(ids)
        if typed:
            piece = self.tok.id_to_piece(min(typed))
            raise TypedControlError(
                f"a message holds the text {piece!r}, which {self.tok.path} encodes as that control token "
                "(it is matched in any text, e.g. a SentencePiece user-defined symbol): the model would "
                "read it as the template's own; remove it from the chat or make it a control symbol"
            )


def encode_chat(
    messages: list[Message], tok: Tokenizer, template: str = "mistral", for_generation: bool = False
) -> EncodedChat:
    """Token ids and the assistant-only loss mask of a validated chat (see the module doc).

    The ids start with the tokenizer's BOS when it has one (``llama3``: with ``<|begin_of_text|>``).
    ChatRefused for a chat with function calls under a template without them (see the module doc).
    `for_generation`: the prompt to feed a model for the next answer (earlier answers still marked 1).
    """
    if template == OWN:
        return own_template(tok).encode(messages, for_generation)
    controls = template_token_ids(tok, template)
    if template not in TOOL_TEMPLATES and uses_tools(messages):
        raise ChatRefused(
            f"the {template} chat template has no function calling, and the chat offers or calls functions "
            f"(tools, tool_calls or tool messages); templates with tools: {', '.join((*TOOL_TEMPLATES, OWN))}"
        )
    # Text runs go across segments, as transformers encodes a rendered template (mistral: each
    # segment apart, as mistral-common encodes).
    across_segments = template != "mistral"
    if template in ("mistral", "mistral-v3"):
        messages = _joined_answers(messages, template)
    segments = _SEGMENTS[template](messages, for_generation)
    if template == "mistral" and tok.byte_level:
        segments = _spaced_answers(segments)
    if template == "mistral-v3" and mistral_v3_spaced(tok):
        segments = _spaced_texts(segments)
    if template in ("chatml", "qwen3") and chatml_as_text(tok):
        segments = _eos_after_answers(segments)
    segments = _weighted(segments, messages)
    body = _Encoder(tok, controls, across_segments).encode(segments)
    if template == "llama3" or tok.bos_id is None:  # llama3 writes its <|begin_of_text|> itself
        return body
    return EncodedChat([tok.bos_id, *body.ids], [0, *body.mask])
