"""vikhr's chat templates as Jinja for transformers' `apply_chat_template` (an HF export carries
one), and the chat template a tokenizer's own directory carries."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from vikhr.errors import read_json_object
from vikhr.file_stamps import StampedCache
from vikhr.tokenizer.load import CHAT_TEMPLATE_FILE, Tokenizer

CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
# Qwen2.5's and Qwen3's wording around the functions a chat offers, in its system turn: the text before
# the functions' JSON schemas (each on a line of its own) and after them.
TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)


def _mistral_v3(spaced: bool) -> str:
    """Jinja of the ``mistral-v3`` template; `spaced`: the spaces SentencePiece's dummy prefix writes
    before each user text and answer written out (as Mistral-7B-Instruct-v0.3's template does)."""
    pad = " " if spaced else ""
    return (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
        "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
        "{% set ns = namespace(last_user=-1) %}"
        "{% for message in turns %}{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}"
        "{% endif %}{% endfor %}"
        "{% for message in turns %}"
        "{% if message['role'] == 'user' %}"
        f"{{% if loop.index0 == ns.last_user and system %}}{{{{ '[INST]{pad}' + system + '\\n\\n' "
        "+ message['content'] + '[/INST]' }}"
        f"{{% else %}}{{{{ '[INST]{pad}' + message['content'] + '[/INST]' }}}}{{% endif %}}"
        f"{{% else %}}{{{{ '{pad}' + message['content'] + eos_token }}}}{{% endif %}}"
        "{% endfor %}"
    )


def _jinja_text(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# Qwen's rendering of functions, shared by ``chatml`` and ``qwen3``: the tool block in the system turn
# (the chat's system message before it, no default one), each call after its answer's text (a newline
# before each but the first of an answer without text; arguments given as a string written as they
# are, as Qwen3's template does), consecutive tool results wrapped in one user turn.
_TOOLS_SYSTEM = (
    "{% if tools %}{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    f"{{{{ {_jinja_text(TOOLS_INTRO)} }}}}"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}"
    f"{{{{ {_jinja_text(TOOLS_OUTRO + CHATML_END)} + '\\n' }}}}{{% endif %}}"
)
_TOOL_CALLS = (
    "{% for call in message['tool_calls'] or [] %}"
    "{% if content or not loop.first %}{{ '\\n' }}{% endif %}"
    "{% if call['function'] is defined %}{% set call = call['function'] %}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{% if call['arguments'] is string %}{{ call['arguments'] }}{% else %}{{ call['arguments'] | tojson }}"
    "{% endif %}{{ '}\\n</tool_call>' }}{% endfor %}"
)
_TOOL_RESULT = (
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
)
# A chat's first system message goes into the tool block when the chat offers functions.
_SYSTEM_IN_TOOLS = "loop.first and message['role'] == 'system' and tools"


def _chatml(eos_after_answers: bool) -> str:
    """Jinja of ``chatml``; `eos_after_answers`: EOS after each answer's <|im_end|> (see `chatml_as_text`)."""
    end = "'<|im_end|>' + eos_token + '\\n'" if eos_after_answers else "'<|im_end|>\\n'"
    return (
        "{{ bos_token }}" + _TOOLS_SYSTEM + "{% for message in messages %}"
        f"{{% if {_SYSTEM_IN_TOOLS} %}}{{% elif message['role'] == 'tool' %}}{_TOOL_RESULT}"
        "{% elif message['role'] == 'assistant' %}"
        "{% set content = message['content'] if message['content'] is string else '' %}"
        f"{{{{ '<|im_start|>assistant\\n' + content }}}}{_TOOL_CALLS}{{{{ {end} }}}}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def _qwen3(eos_after_answers: bool) -> str:
    """Jinja of ``qwen3``; `eos_after_answers`: EOS after each answer's <|im_end|> (see `chatml_as_text`)."""
    end = "'<|im_end|>' + eos_token + '\\n'" if eos_after_answers else "'<|im_end|>\\n'"
    return (
        "{{ bos_token }}"
        + _TOOLS_SYSTEM
        + "{% set ns = namespace(last_user=messages|length - 1, found=false) %}"
        "{% for message in messages[::-1] %}{% set c = message['content'] %}"
        "{% if not ns.found and message['role'] == 'user' and not (c.startswith('<tool_response>') "
        "and c.endswith('</tool_response>')) %}"
        "{% set ns.last_user = messages|length - 1 - loop.index0 %}{% set ns.found = true %}"
        "{% endif %}{% endfor %}"
        "{% for message in messages %}"
        f"{{% if {_SYSTEM_IN_TOOLS} %}}{{% elif message['role'] == 'tool' %}}{_TOOL_RESULT}"
        "{% elif message['role'] == 'assistant' %}"
        "{% set content = message['content'] if message['content'] is string else '' %}"
        "{% set reasoning = '' %}{% if '</think>' in content %}"
        "{% set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
        "{% set content = content.split('</think>')[-1].lstrip('\\n') %}"
        "{% endif %}"
        "{% if loop.index0 > ns.last_user and (loop.last or reasoning) %}"
        "{{ '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' "
        "+ content.lstrip('\\n') }}"
        "{% else %}{{ '<|im_start|>assistant\\n' + content }}{% endif %}"
        f"{_TOOL_CALLS}{{{{ {end} }}}}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
        "{% endif %}{% endif %}"
    )


# Jinja chat templates for transformers' `apply_chat_template`, one per vikhr.sft.template template.
HF_CHAT_TEMPLATES = {
    "mistral": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
        "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
        "{% for message in turns %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system %}{{ '[INST] ' + system + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        # an empty answer gets no space: SentencePiece writes no dummy prefix for an empty text
        "{% else %}{% if message['content'] %}{{ ' ' + message['content'] }}{% endif %}{{ eos_token }}"
        "{% endif %}{% endfor %}"
    ),
    # Mistral's v3 format as a byte-level (tekken) tokenizer writes it, Mistral-NeMo-Instruct's template
    # without tools; the system message goes into the last user turn of any chat (NeMo's drops it from
    # a chat that ends with an answer), where mistral-common puts it.
    "mistral-v3": _mistral_v3(spaced=False),
    "chatml": _chatml(eos_after_answers=False),
    # Qwen3's rendering: the thinking block on the answer to the last user turn (a wrapped
    # <tool_response> does not count), the reasoning split off at </think>; the generation prompt
    # honours enable_thinking as Qwen3's does; functions as `_TOOLS_SYSTEM` and the rest say.
    "qwen3": _qwen3(eos_after_answers=False),
    # Meta-Llama-3-8B-Instruct's own template, verbatim.
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
}


def hf_chat_template(template: str, tok: Tokenizer) -> str:
    """The Jinja of vikhr's `template` for `tok` (``mistral-v3``: see `mistral_v3_spaced`; ``chatml``
    and ``qwen3``: see `chatml_as_text`)."""
    if template == "mistral-v3" and mistral_v3_spaced(tok):
        return _mistral_v3(spaced=True)
    if template in ("chatml", "qwen3") and chatml_as_text(tok):
        return (_chatml if template == "chatml" else _qwen3)(eos_after_answers=True)
    return HF_CHAT_TEMPLATES[template]


def chatml_as_text(tok: Tokenizer) -> bool:
    """Whether ``chatml`` and ``qwen3`` spell <|im_start|> / <|im_end|> out as text: `tok` lacks one of
    them as a token (Mistral's vocabulary). Each answer then closes with EOS after its <|im_end|>: a
    spelled-out end is several ordinary pieces, on which no generation stops, so the model learns to
    stop at EOS, where an export's generation config stops."""
    return any(tok.piece_to_id(s) is None for s in (CHATML_START, CHATML_END))


def mistral_v3_spaced(tok: Tokenizer) -> bool:
    """Whether ``mistral-v3`` writes out the spaces of SentencePiece's dummy prefix before each text:
    for a tokenizer.json whose Metaspace prepends no "▁" after a control token (Mistral v0.3's own,
    prepend_scheme "first"), as Mistral v0.3's template does. Not for byte-level tokenizers (none to
    write) nor for a `.model`, whose export writes it after every control token."""
    if tok.kind == "sentencepiece" or tok.byte_level:
        return False
    inst = tok.piece_to_id("[INST]")
    if inst is None:
        return False  # mistral-v3 refuses such a tokenizer anyway
    return _NO_PREFIX_AFTER_CONTROL.get((tok, inst), [tok.path], lambda: _no_prefix_after_control(tok, inst))


_NO_PREFIX_AFTER_CONTROL: StampedCache[bool] = StampedCache(maxsize=8)


def _no_prefix_after_control(tok: Tokenizer, inst: int) -> bool:
    """Whether transformers' tokenizer of `tok` encodes "Да" after [INST] otherwise than alone (once per
    tokenizer and state of its file, `mistral_v3_spaced`)."""
    ids = tok.to_transformers()("[INST]Да", add_special_tokens=False)["input_ids"]
    return list(ids) != [inst, *tok.encode("Да")]


def own_chat_template(tok: Tokenizer) -> tuple[str, Path] | None:
    """The chat template the tokenizer's directory carries (see `chat_template_in`)."""
    return chat_template_in(tok.path.parent)


def chat_template_in(directory: Path) -> tuple[str, Path] | None:
    """The chat template an HF model or tokenizer directory carries, and the file holding it:
    `chat_template.jinja` (where transformers >= 4.47 saves it; it wins, as there) or
    tokenizer_config.json's `chat_template`: a string, or of a list of named templates (Hermes-3,
    Command-R) the one named "default", which transformers renders when no name is given."""
    jinja = directory / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), jinja
    path = directory / "tokenizer_config.json"
    template = read_json_object(path, "fix or remove it").get("chat_template") if path.is_file() else None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return (template, path) if isinstance(template, str) else None


def as_jinja_reads(template: str) -> str:
    """`template` as Jinja reads it in transformers' environment (keep_trailing_newline off): line
    ends made "\\n" and one newline at the very end dropped. Two templates equal so render alike: a
    chat_template.jinja saved with a final newline is the tokenizer_config.json string without one."""
    return "\n".join(re.split(r"\r\n|\r|\n", template)).removesuffix("\n")


def chat_template_sha256(template: str) -> str:
    """The SHA-256 of a chat template's text: what `sft prepare` records for ``own`` and
    `convert` checks."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()
