"""The `llama3`, `chatml` and `qwen3` chat templates against the models' own Jinja templates.

For byte-level BPE tokenizers (Llama-3, Qwen), vikhr's ids must be what transformers'
`apply_chat_template(messages, tokenize=True)` gives with the official `chat_template` of
Meta-Llama-3-8B-Instruct, Qwen2.5-7B-Instruct and Qwen3-8B (tests/data/chat_templates, copied from
the models' tokenizer_config.json); `qwen3` prompts for generation against Qwen3's
`enable_thinking=False`. The tokenizer is a small byte-level BPE trained here on the bundled
Russian sample, with the special tokens and the BOS/EOS naming of each model's tokenizer_config.json;
it is built twice, with Llama-3's pre-tokenizer (a Split regex, then ByteLevel without its own regex)
and with plain GPT-2 ByteLevel, so that agreement does not hang on one pre-tokenizer.

Chats: the 135 bundled seed chats, the first 200 of ../shared/data's rulm set when present, and a
few hand-made ones (system message, several turns, whitespace around the content). Qwen's template
inserts "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." when a chat has no
system message and vikhr's `chatml` does not (see vikhr.sft.template), so that message is given to
both sides explicitly, and a separate test pins the difference.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections.abc import Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_DATA
from vikhr.assets import MISTRAL_TOKENIZER, RU_SAMPLE, RU_SEED_CHATS
from vikhr.errors import VikhrError
from vikhr.sft.build import build
from vikhr.sft.prepare import mask_runs, prepare_sft, render_prepared
from vikhr.sft.template import (
    CHATML_END,
    CHATML_START,
    TEMPLATE_TOKENS,
    Message,
    encode_chat,
    load_chat_tokenizer,
    parse_chat,
    read_chats,
)
from vikhr.tokenizer.byte_level import LLAMA3_PATTERN
from vikhr.tokenizer.load import Tokenizer

TEMPLATE_FILES = Path(__file__).parent / "data" / "chat_templates"
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Per vikhr template: the model whose template it follows, and the special tokens its tokenizer has.
MODELS = {
    "llama3": (
        "meta-llama-3-8b-instruct",
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "chatml": ("qwen2.5-7b-instruct", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    "qwen3": ("qwen3-8b", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
}
# Added tokens that are not special (matched in any text, as Qwen3's tokenizer.json has them).
ADDED = {"qwen3": ["<think>", "</think>"]}
END_TOKEN = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>", "qwen3": "<|im_end|>"}
EMPTY_THINKING = "<think>\n\n</think>\n\n"


def _handmade_chats() -> list[list[Message]]:
    chats = [
        [
            ("system", "Ты — полезный ассистент. Отвечай кратко."),
            ("user", "Сколько будет 2+2?"),
            ("assistant", "Четыре."),
            ("user", "А 3+3?\n\nОтветь числом."),
            ("assistant", "6\n\n- это шесть;\n- не пять."),
        ],
        [("user", "  Привет!\n"), ("assistant", "Здравствуйте!  \n")],
        [("user", "Hi"), ("assistant", "Привет! Чем помочь?"), ("user", "Ничем."), ("assistant", "Хорошо.")],
    ]
    return [parse_chat({"messages": [{"role": r, "content": c} for r, c in chat]}) for chat in chats]


def seed_and_real_chats() -> list[list[Message]]:
    """The bundled seed chats, the first 200 of ../shared/data's rulm set when present, hand-made ones."""
    found = [messages for _, messages in read_chats(RU_SEED_CHATS)]
    rulm = SHARED_DATA / "sft" / "rulm-self-instruct.chat.jsonl"
    if rulm.is_file():
        found += [messages for _, messages in islice(read_chats(rulm), 200)]
    return found + _handmade_chats()


@pytest.fixture(scope="module")
def chats() -> list[list[Message]]:
    return seed_and_real_chats()


@functools.cache
def byte_level_bpe(pre_tokenizer: str) -> str:
    """tokenizer.json text of a 2,000-token byte-level BPE trained on the bundled Russian sample,
    special tokens not added yet; `pre_tokenizer`: "llama3" (Split regex + ByteLevel) or "gpt2"."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from vikhr.jsonl import read_texts

    bpe = Tokenizer(models.BPE())
    if pre_tokenizer == "llama3":
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(islice(read_texts(RU_SAMPLE), 60), trainer)
    return bpe.to_str()


def with_bos_eos_only(directory: Path, *controls: str) -> Path:
    """`directory` with a byte-level BPE whose special tokens are BOS, EOS and `controls` (no ChatML
    tokens: chatml and qwen3 then spell them out)."""
    from tokenizers import Tokenizer as HFTokenizer

    directory.mkdir(parents=True)
    bpe = HFTokenizer.from_str(byte_level_bpe("gpt2"))
    bpe.add_special_tokens(["<s>", "</s>", *controls])
    bpe.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return directory


PRE_TOKENIZERS = pytest.mark.parametrize("pre_tokenizer", ["llama3", "gpt2"])


def _official(model: str) -> dict[str, Any]:
    return json.loads((TEMPLATE_FILES / f"{model}.json").read_text(encoding="utf-8"))


def write_model_tokenizer(directory: Path, tokenizer_json: str, template: str) -> Path:
    """`directory` with the BPE plus `template`'s model's special tokens (tokenizer.json) and its
    tokenizer_config.json: the official chat template and BOS/EOS as the real model names them."""
    from tokenizers import Tokenizer as HFTokenizer

    model, specials = MODELS[template]
    official = _official(model)
    directory.mkdir(parents=True, exist_ok=True)
    tok = HFTokenizer.from_str(tokenizer_json)
    tok.add_special_tokens(specials)
    tok.add_tokens(ADDED.get(template, []))
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        **{key: official[key] for key in ("bos_token", "eos_token", "chat_template")},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


@pytest.fixture(
    scope="module",
    params=[(t, p) for t in ("llama3", "chatml", "qwen3") for p in ("llama3", "gpt2")],
    ids=lambda param: f"{param[0]}-{param[1]}-pretok",
)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(vikhr template, directory holding the model-like tokenizer.json + tokenizer_config.json)."""
    template, pre_tokenizer = request.param
    directory = tmp_path_factory.mktemp(f"{template}-{pre_tokenizer}")
    return template, write_model_tokenizer(directory, byte_level_bpe(pre_tokenizer), template)


def _hf_ids(fast: Any, messages: list[Message], generation: bool = False, **template_args: Any) -> list[int]:
    """transformers' ids for `messages` through the tokenizer's own chat template (by default
    Qwen3's prompt for generation without thinking, as vikhr's `qwen3` writes it)."""
    out = fast.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=True,
        add_generation_prompt=generation,
        **{"enable_thinking": False, **template_args},
    )
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def _like_qwen(template: str, messages: list[Message]) -> list[Message]:
    """`messages` with the system message Qwen's template would insert (chatml and no system only)."""
    if template == "chatml" and messages[0].role != "system":
        return [Message("system", QWEN_DEFAULT_SYSTEM), *messages]
    return messages


def _load_both(directory: Path, template: str) -> tuple[Tokenizer, Any]:
    """vikhr's tokenizer and transformers' of the same directory, the latter with the official
    chat template and BOS/EOS."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast.from_pretrained(directory)
    official = _official(MODELS[template][0])
    assert (fast.chat_template, fast.bos_token, fast.eos_token) == (
        official["chat_template"],
        official["bos_token"],
        official["eos_token"],
    )
    return load_chat_tokenizer(directory, template), fast


# --------------------------------------------------------------------------- equal to the models' own


def test_ids_equal_the_official_chat_template(
    model_dir: tuple[str, Path], chats: list[list[Message]]
) -> None:
    template, directory = model_dir
    tok, fast = _load_both(directory, template)
    shared = (SHARED_DATA / "sft" / "rulm-self-instruct.chat.jsonl").is_file()
    assert len(chats) == 135 + 200 * shared + len(_handmade_chats())
    for number, messages in enumerate(chats):
        messages = _like_qwen(template, messages)
        enc = encode_chat(messages, tok, template)
        assert enc.ids == _hf_ids(fast, messages), number
        # The prompt for the last answer: the official template's add_generation_prompt.
        prompt = encode_chat(messages[:-1], tok, template, for_generation=True)
        assert prompt.ids == _hf_ids(fast, messages[:-1], generation=True), number


def test_mask_is_exactly_the_answers_and_their_end_tokens(
    model_dir: tuple[str, Path], chats: list[list[Message]]
) -> None:
    template, directory = model_dir
    tok = load_chat_tokenizer(directory, template)
    for number, messages in enumerate(chats):
        enc = encode_chat(messages, tok, template)
        trained = [
            tok.backend.decode(ids, skip_special_tokens=False)
            for is_trained, ids in mask_runs(enc.ids, enc.mask)
            if is_trained
        ]
        answers = [m.content for m in messages if m.role == "assistant"]
        if template == "llama3":
            answers = [a.strip() for a in answers]  # the official template's `| trim`
        if template == "qwen3":  # the last answer opens with its (empty) thinking block
            answers[-1] = EMPTY_THINKING + answers[-1].lstrip("\n")
        assert trained == [a + END_TOKEN[template] for a in answers], number


def test_answers_in_a_row_are_each_trained_as_the_official_template_renders_them(
    model_dir: tuple[str, Path],
) -> None:
    """Two assistant turns in a row (a long answer split, a tool turn dropped between) were refused.
    Llama-3's and Qwen's own templates write each as a message of its own: the ids are theirs, and the
    trained spans decode to exactly each answer with its end token (the second answer's header is
    context; under `qwen3` the last answer carries the thinking block, the one before it none, as
    Qwen3 renders answers after the last question)."""
    template, directory = model_dir
    tok, fast = _load_both(directory, template)
    messages = parse_chat(
        {
            "messages": [
                {"role": "user", "content": "Расскажи сказку."},
                {"role": "assistant", "content": "Жили-были дед и баба."},
                {"role": "assistant", "content": "И была у них курочка Ряба."},
                {"role": "user", "content": "А дальше?"},
                {"role": "assistant", "content": "Снесла курочка яичко."},
                {"role": "assistant", "content": "Не простое, а золотое."},
            ]
        }
    )
    messages = _like_qwen(template, messages)  # the system message Qwen2.5's template would write
    enc = encode_chat(messages, tok, template)
    assert enc.ids == _hf_ids(fast, messages)
    trained = [
        tok.backend.decode(ids, skip_special_tokens=False)
        for is_trained, ids in mask_runs(enc.ids, enc.mask)
        if is_trained
    ]
    answers = [m.content for m in messages if m.role == "assistant"]
    if template == "qwen3":
        answers[-1] = EMPTY_THINKING + answers[-1]
    assert trained == [a + END_TOKEN[template] for a in answers]


def _first_answer_untrained(tok: Tokenizer, template: str) -> None:
    """A two-answer chat whose first answer has weight 0 gets the same ids, and the mask of the chat
    without weights less the first answer's run."""
    chat = [
        ("user", "Hi"),
        ("assistant", "Привет! Чем помочь?"),
        ("user", "Ничем."),
        ("assistant", "Хорошо."),
    ]
    plain = parse_chat({"messages": [{"role": r, "content": c} for r, c in chat]})
    weighted = parse_chat(
        {
            "messages": [
                {"role": r, "content": c, "weight": 0 if i == 1 else None} for i, (r, c) in enumerate(chat)
            ]
        }
    )
    full, enc = encode_chat(plain, tok, template), encode_chat(weighted, tok, template)
    start = full.mask.index(1)
    end = full.mask.index(0, start)
    expected = [*full.mask[:start], *[0] * (end - start), *full.mask[end:]]
    assert enc.ids == full.ids
    assert enc.mask == expected and 0 < sum(expected) < sum(full.mask)


def test_an_answer_of_weight_0_is_context_only(model_dir: tuple[str, Path]) -> None:
    template, directory = model_dir
    # Qwen3's own template renders an earlier answer apart from the last (no thinking block): `own`
    # refuses its multi-turn chats.
    for name in (template, "own") if template != "qwen3" else (template,):
        _first_answer_untrained(load_chat_tokenizer(directory, name), name)


@pytest.mark.parametrize("template", ["mistral", "chatml"])
def test_an_answer_of_weight_0_is_context_only_with_sentencepiece(template: str) -> None:
    _first_answer_untrained(load_chat_tokenizer(MISTRAL_TOKENIZER, template), template)


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        ((None, 2), "message 2: weight must be 0, 1 or null, got 2"),
        ((None, True), "message 2: weight must be 0, 1 or null, got True"),
        ((1, None), "message 1: weight 1 on a user turn: only assistant turns are trained"),
        ((0, 0.0), "every assistant turn has weight 0 (nothing to train on)"),
    ],
)
def test_bad_weights_are_refused(weights: tuple[Any, Any], problem: str) -> None:
    messages = [
        {"role": "user", "content": "Привет", "weight": weights[0]},
        {"role": "assistant", "content": "Здравствуйте", "weight": weights[1]},
    ]
    with pytest.raises(VikhrError) as e:
        parse_chat({"messages": messages})
    assert str(e.value).startswith(problem)


@pytest.mark.parametrize("template", ["chatml", "qwen3"])
def test_mask_holds_answer_whitespace_when_offsets_are_trimmed(template: str, tmp_path: Path) -> None:
    """A GPT-2 style ByteLevel post-processor with trim_offsets gives whitespace-only tokens empty
    offsets: an answer's trailing spaces went untrained."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    directory = write_model_tokenizer(tmp_path / "trim", byte_level_bpe("gpt2"), template)
    hf = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    hf.post_processor = processors.ByteLevel(trim_offsets=True)
    hf.save(str(directory / "tokenizer.json"))
    tok = load_chat_tokenizer(directory, template)
    answers = ["Привет  ", "  x", "   ", "\n x", "Привет  мир", "да \n"]
    for answer in answers:
        messages = parse_chat(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}
        )
        enc = encode_chat(messages, tok, template)
        trained = [
            tok.backend.decode(ids, skip_special_tokens=False)
            for is_trained, ids in mask_runs(enc.ids, enc.mask)
            if is_trained
        ]
        expected = (EMPTY_THINKING + answer.lstrip("\n")) if template == "qwen3" else answer
        assert trained == [expected + END_TOKEN[template]], answer


def test_bos_follows_the_tokenizer(model_dir: tuple[str, Path], chats: list[list[Message]]) -> None:
    """Qwen names no BOS (bos_token null): chatml starts with <|im_start|>. Llama-3's BOS is
    <|begin_of_text|>, written once, at the start."""
    template, directory = model_dir
    tok = load_chat_tokenizer(directory, template)
    ids = encode_chat(chats[0], tok, template).ids
    if template in ("chatml", "qwen3"):
        assert tok.bos_id is None and tok.eos_id == tok.piece_to_id("<|im_end|>")
        assert ids[0] == tok.piece_to_id("<|im_start|>")
    else:
        assert tok.bos_id == tok.piece_to_id("<|begin_of_text|>") == ids[0]
        assert tok.eos_id == tok.piece_to_id("<|eot_id|>")
        assert ids.count(tok.bos_id) == 1


@PRE_TOKENIZERS
def test_chatml_adds_no_default_system_message(
    pre_tokenizer: str, chats: list[list[Message]], tmp_path: Path
) -> None:
    """Without a system message, Qwen's template writes its default one; vikhr's chatml writes
    nothing there, and the rest of the ids is the same."""
    directory = write_model_tokenizer(tmp_path, byte_level_bpe(pre_tokenizer), "chatml")
    tok, fast = _load_both(directory, "chatml")
    default_block = fast.encode(
        f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n", add_special_tokens=False
    )
    for messages in chats[:20]:
        assert messages[0].role == "user"
        official = _hf_ids(fast, messages)
        assert official[: len(default_block)] == default_block
        assert encode_chat(messages, tok, "chatml").ids == official[len(default_block) :]


def test_answer_starting_with_newlines_gets_the_official_ids(model_dir: tuple[str, Path]) -> None:
    """An answer that starts with "\\n" shares a pre-token with the template's "\\n" before it;
    the ids are still the official ones, and the shared token is trained."""
    template, directory = model_dir
    tok, fast = _load_both(directory, template)
    messages = parse_chat(
        {
            "messages": [
                {"role": "system", "content": "Кратко."},
                {"role": "user", "content": "Список?"},
                {"role": "assistant", "content": "\n\n  - один\n- два"},
            ]
        }
    )
    enc = encode_chat(messages, tok, template)
    assert enc.ids == _hf_ids(fast, messages)
    trained = [i for i, m in zip(enc.ids, enc.mask, strict=True) if m]
    text = tok.backend.decode(trained, skip_special_tokens=False)
    answer = {
        "chatml": messages[-1].content,
        "qwen3": EMPTY_THINKING + messages[-1].content.lstrip("\n"),
        "llama3": messages[-1].content.strip(),
    }[template]
    assert text.endswith(answer + END_TOKEN[template])
    assert set(text[: len(text) - len(answer + END_TOKEN[template])]) <= {"\n"}  # only template "\n"


@PRE_TOKENIZERS
def test_qwen3_answers_with_reasoning_get_the_official_ids(pre_tokenizer: str, tmp_path: Path) -> None:
    """Reasoning written as Qwen3 reads it (``<think>…</think>`` before the answer): the last answer
    keeps it inside its thinking block, an earlier answer loses it; ids equal Qwen3's template (and
    the template of vikhr's HF export), and the thinking block is trained with the answer."""
    directory = write_model_tokenizer(tmp_path, byte_level_bpe(pre_tokenizer), "qwen3")
    tok, fast = _load_both(directory, "qwen3")
    think = tok.piece_to_id("<think>")
    chat = [
        ("system", "Думай по-русски."),
        ("user", "Сколько будет 2+2?"),
        ("assistant", "<think>\nДва плюс два.\n</think>\n\nЧетыре."),
        ("user", "А 3+3?"),
        ("assistant", "\n<think>\n\nТри и три.\n\n</think>\n\n\nШесть."),
    ]
    messages = parse_chat({"messages": [{"role": r, "content": c} for r, c in chat]})
    enc = encode_chat(messages, tok, "qwen3")
    assert enc.ids == _hf_ids(fast, messages)
    assert enc.ids.count(think) == 1  # the earlier answer's reasoning is gone, as Qwen3 renders it
    runs = mask_runs(enc.ids, enc.mask)
    trained = [tok.backend.decode(ids, skip_special_tokens=False) for is_trained, ids in runs if is_trained]
    assert trained == ["Четыре.<|im_end|>", "<think>\nТри и три.\n</think>\n\nШесть.<|im_end|>"]
    prompt = encode_chat(messages[:-1], tok, "qwen3", for_generation=True)
    assert prompt.ids == _hf_ids(fast, messages[:-1], generation=True)
    text = tok.backend.decode(prompt.ids, skip_special_tokens=False)
    assert text.endswith("<|im_start|>assistant\n" + EMPTY_THINKING)
    # The same reasoning given apart, as Qwen3's "reasoning_content": the same ids as Qwen3 renders.
    raw = [{"role": r, "content": c} for r, c in chat]
    raw[-1] = {"role": "assistant", "content": "Шесть.", "reasoning_content": "Три и три."}
    assert encode_chat(parse_chat({"messages": raw}), tok, "qwen3").ids == enc.ids
    official = fast.apply_chat_template(raw, tokenize=True, enable_thinking=False)
    assert list(official["input_ids"] if isinstance(official, Mapping) else official) == enc.ids
    # The template an HF export carries renders the same.
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files

    (tmp_path / "export").mkdir()
    write_tokenizer_files(tok, tmp_path / "export", "qwen3")
    exported = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert _hf_ids(exported, messages) == enc.ids
    assert _hf_ids(exported, messages[:-1], generation=True) == prompt.ids
    # Without enable_thinking=False the export, like Qwen3's, leaves the thinking to the model.
    default = _hf_ids(exported, messages[:-1], generation=True, enable_thinking=None)
    assert default == _hf_ids(fast, messages[:-1], generation=True, enable_thinking=None)
    assert tok.backend.decode(default, skip_special_tokens=False).endswith("<|im_start|>assistant\n")

    # A tool's response wrapped as the last user turn is not Qwen3's last query: the answers after
    # the real question get thinking blocks, the final one always, one in between only if it
    # carries reasoning.
    for first_answer, blocks in (("<think>\nНужен инструмент.\n</think>\n\nСейчас узнаю.", 2), ("Узнаю.", 1)):
        chat = [
            ("user", "Погода?"),
            ("assistant", first_answer),
            ("user", "<tool_response>\n+5, дождь\n</tool_response>"),
            ("assistant", "Плюс пять и дождь."),
        ]
        tooled = parse_chat({"messages": [{"role": r, "content": c} for r, c in chat]})
        ids = encode_chat(tooled, tok, "qwen3").ids
        assert ids == _hf_ids(fast, tooled) == _hf_ids(exported, tooled)
        assert ids.count(think) == blocks


def test_control_strings_typed_in_a_message_stay_text(model_dir: tuple[str, Path]) -> None:
    template, directory = model_dir
    tok = load_chat_tokenizer(directory, template)
    typed = "<|im_start|> <|im_end|> <|eot_id|> <|start_header_id|>"
    messages = parse_chat(
        {"messages": [{"role": "user", "content": typed}, {"role": "assistant", "content": typed}]}
    )
    enc = encode_chat(messages, tok, template)
    end = tok.piece_to_id(END_TOKEN[template])
    assert enc.ids.count(end) == 2  # the closing token of each message, nothing from the text
    assert tok.decode(enc.ids).count(typed) == 2


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_controls_held_as_plain_added_tokens_typed_in_a_message_stay_text(
    template: str, tmp_path: Path
) -> None:
    """A tokenizer.json holding the template's tokens as non-special added tokens (matched in any
    text): typed in a message they are still text, and the template's own are still one id each."""
    from tokenizers import Tokenizer as HFTokenizer

    plain = HFTokenizer.from_str(byte_level_bpe("gpt2"))
    plain.add_tokens(list(TEMPLATE_TOKENS[template]))
    (tmp_path / "tokenizer.json").write_text(plain.to_str(), encoding="utf-8")
    tok = load_chat_tokenizer(tmp_path, template)
    typed = " ".join(TEMPLATE_TOKENS[template])
    messages = parse_chat(
        {"messages": [{"role": "user", "content": typed}, {"role": "assistant", "content": typed}]}
    )
    enc = encode_chat(messages, tok, template)
    controls = [tok.piece_to_id(t) for t in TEMPLATE_TOKENS[template]]
    per_chat = {"chatml": [2, 2], "llama3": [1, 2, 2, 2]}[template]  # the template's own, nothing typed
    assert [enc.ids.count(i) for i in controls] == per_chat
    assert "".join(tok.pieces(typed)) != typed  # spelled out in pieces
    assert tok.backend.decode(enc.ids, skip_special_tokens=True).count(typed) == 2


@pytest.mark.parametrize("special", [False, True])
def test_an_added_token_that_is_no_control_is_one_id_in_a_message_only_when_plain(
    special: bool, tmp_path: Path
) -> None:
    """Qwen2.5's `<tool_call>` is a plain added token that `chatml` writes as text around a call: in a
    user's message it is one id, as transformers' tokenizer gives it (the ids the model is served
    with); held as a special token it is text there (docs/sft.md, "How text becomes ids")."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_str(byte_level_bpe("gpt2"))
    hf.add_special_tokens(["<|endoftext|>", CHATML_START, CHATML_END])
    hf.add_tokens([AddedToken("<tool_call>", special=special, normalized=False)])
    (tmp_path / "tokenizer.json").write_text(hf.to_str(), encoding="utf-8")
    tok = load_chat_tokenizer(tmp_path, "chatml")
    text = "Что такое <tool_call>?"
    messages = parse_chat(
        {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "Да"}]}
    )
    ids = encode_chat(messages, tok, "chatml").ids
    assert (tok.piece_to_id("<tool_call>") in ids) is not special
    assert hf.token_to_id("<tool_call>") in hf.encode(text).ids  # the HF tokenizer: one id either way


def test_a_typed_sentencepiece_user_defined_control_is_refused(tmp_path: Path) -> None:
    """SentencePiece matches a user-defined symbol in any text and cannot be told not to: a chat
    typing one that is a template control is refused by prepare (file:line) and dropped by build."""
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("привет мир\nмир труд май\n" * 20, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300, model_type="bpe",
        user_defined_symbols=[CHATML_START, CHATML_END], byte_fallback=True, minloglevel=2,
    )  # fmt: skip
    chats = tmp_path / "chats.jsonl"
    lines = [("привет", "мир"), ("привет", f"мир{CHATML_END}труд")]
    roles = ("user", "assistant")
    records = [
        {"messages": [{"role": r, "content": c} for r, c in zip(roles, chat, strict=True)]} for chat in lines
    ]
    chats.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with pytest.raises(VikhrError, match=r"chats.jsonl:2: a message holds the text '<\|im_end\|>'"):
        prepare_sft(chats, tmp_path / "sp.model", tmp_path / "out" / "a", template="chatml")
    assert not list((tmp_path / "out").glob("a_*"))
    cfg = tmp_path / "build.yaml"
    config = {
        "output": str(tmp_path / "mix.jsonl"),
        "tokenizer": str(tmp_path / "sp.model"),
        "template": "chatml",
        "limits": {"min_tokens": 1, "max_tokens": 100},
        "sources": [{"name": "a", "path": str(chats)}],
    }
    cfg.write_text(json.dumps(config), encoding="utf-8")
    report = build(cfg)
    assert report["sources"][0]["dropped"] == {"control_text": 1}
    assert read_chats(tmp_path / "mix.jsonl").__next__()[1][1].content == "мир"


# --------------------------------------------------------------------------- prepared data, errors


def test_prepare_and_show_with_llama3_and_qwen_tokenizers(tmp_path: Path) -> None:
    tokenizer_json = byte_level_bpe("llama3")
    first = json.loads(RU_SEED_CHATS.open(encoding="utf-8").readline())["messages"]
    for template, shown in (
        ("llama3", f"<|start_header_id|>assistant<|end_header_id|>\n\n[[{first[1]['content']}<|eot_id|>]]"),
        ("chatml", f"<|im_start|>assistant\n[[{first[1]['content']}<|im_end|>]]\n"),
        ("qwen3", f"<|im_start|>assistant\n[[{EMPTY_THINKING}{first[1]['content']}<|im_end|>]]\n"),
    ):
        directory = write_model_tokenizer(tmp_path / template, tokenizer_json, template)
        summary = prepare_sft(RU_SEED_CHATS, directory, tmp_path / "out" / template, template=template)
        tok = load_chat_tokenizer(directory, template)
        assert (summary.chats, summary.bos_id, summary.eos_id) == (135, tok.bos_id, tok.eos_id)
        meta = json.loads((tmp_path / "out" / f"{template}_sft.json").read_text())
        assert meta["template"] == template and meta["bos_id"] == tok.bos_id  # null for Qwen
        rendered = render_prepared(tmp_path / "out" / template, 0)
        assert shown in rendered, rendered
        start = "<|begin_of_text|><|start_header_id|>user" if template == "llama3" else "<|im_start|>user"
        assert rendered.splitlines()[1].startswith(start), rendered


def test_show_reads_the_datasets_without_torch(tmp_path: Path) -> None:
    """`sft show` prints a chat in a fraction of a second: it imported megatron-core and torch
    (5 s, 800 MB) though the datasets are read natively."""
    import subprocess
    import sys

    from tests.conftest import REPO, child_env
    from vikhr.assets import MISTRAL_TOKENIZER

    prepare_sft(RU_SEED_CHATS, MISTRAL_TOKENIZER, tmp_path / "a")
    code = (
        "import sys\nfrom vikhr.cli import main\n"
        f"assert main(['sft', 'show', {str(tmp_path / 'a')!r}, '--index', '0']) == 0\n"
        "print(sorted(m for m in ('torch', 'megatron', 'transformers') if m in sys.modules))\n"
    )
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, capture_output=True, text=True, env=child_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("--- chat 0 (") and out.stdout.splitlines()[-1] == "[]"


def test_show_refuses_what_is_not_its_prepared_data(tmp_path: Path) -> None:
    """Metadata that is not `vikhr sft prepare`'s, a tokenizer other than the recorded one (given,
    or replaced at the recorded path), and a mask dataset of another run are one line each, not a
    traceback or wrongly decoded text."""
    used = write_model_tokenizer(tmp_path / "used", byte_level_bpe("llama3"), "chatml")
    another = write_model_tokenizer(tmp_path / "another", byte_level_bpe("gpt2"), "chatml")
    prefix = tmp_path / "out" / "a"
    prepare_sft(RU_SEED_CHATS, used, prefix, template="chatml")
    with pytest.raises(VikhrError, match=r"is not the tokenizer .* was prepared with"):
        render_prepared(prefix, 0, tokenizer=another)
    meta = tmp_path / "out" / "a_sft.json"
    good = meta.read_text()
    for bad in ("{bad", "{}", "[1]"):
        meta.write_text(bad)
        with pytest.raises(VikhrError, match=r"a_sft.json is not SFT metadata"):
            render_prepared(prefix, 0)
    meta.write_text(good)
    # The mask of a run on other chats (shorter by one chat and of other lengths).
    other = tmp_path / "out" / "b"
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(RU_SEED_CHATS.read_text(encoding="utf-8").splitlines(keepends=True)[1:]))
    prepare_sft(chats, used, other, template="chatml")
    for suffix in (".bin", ".idx"):
        shutil.copy(f"{other}_mask_document{suffix}", f"{prefix}_mask_document{suffix}")
    with pytest.raises(VikhrError, match="token and mask datasets are not aligned"):
        render_prepared(prefix, 0)
    # The recorded tokenizer replaced in place by another: its ids decoded to other text (exit 0).
    shutil.copy(another / "tokenizer.json", used / "tokenizer.json")
    with pytest.raises(VikhrError, match=r"\(the recorded path\) is not the tokenizer .* was prepared with"):
        render_prepared(other, 0)


def test_show_refuses_metadata_without_its_template_rather_than_guess_mistral(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sft show` read an `_sft.json` without "template" (never written by `vikhr sft prepare`: made
    or edited by hand) as the `mistral` template while the export read it as none: ChatML chats were
    shown as mistral's (its BOS/EOS pieces among them), exit 0, and a byte-level tokenizer without a
    BOS was refused for mistral's needs. Now one line naming the file, exit 2."""
    from vikhr.cli import main

    prefix = tmp_path / "out" / "a"
    prepare_sft(RU_SEED_CHATS, MISTRAL_TOKENIZER, prefix, template="chatml", max_chats=2)
    meta_path = tmp_path / "out" / "a_sft.json"
    meta = json.loads(meta_path.read_text())
    capsys.readouterr()
    assert main(["sft", "show", str(prefix), "--index", "0"]) == 0
    assert "<|im_start|>" in capsys.readouterr().out
    del meta["template"]
    meta_path.write_text(json.dumps(meta))
    assert main(["sft", "show", str(prefix), "--index", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert (
        f"{meta_path} records no chat template" in captured.err and "prepare the chats again" in captured.err
    )


def test_llama3_refuses_a_tokenizer_without_its_header_tokens(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    from vikhr.cli import main
    from vikhr.tokenizer.load import load

    tokenizer_json = byte_level_bpe("llama3")
    qwen = write_model_tokenizer(tmp_path / "qwen", tokenizer_json, "chatml")
    missing = "<|begin_of_text|> / <|start_header_id|> / <|end_header_id|> / <|eot_id|>"
    with pytest.raises(
        VikhrError, match=re.escape(f"{qwen / 'tokenizer.json'} has no {missing} tokens; ")
    ) as e:
        load_chat_tokenizer(qwen, "llama3")
    assert "\n" not in str(e.value)
    # A Llama-3 base-like vocabulary with BOS/EOS but without the header tokens.
    partial = tmp_path / "partial"
    partial.mkdir()
    tok = HFTokenizer.from_str(tokenizer_json)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    tok.save(str(partial / "tokenizer.json"))
    with pytest.raises(VikhrError, match=r"has no <\|start_header_id\|> / <\|end_header_id\|> tokens; "):
        encode_chat(_handmade_chats()[1], load(partial), "llama3")

    out = tmp_path / "out"
    capfd.readouterr()
    argv = ["sft", "prepare", "--input", str(RU_SEED_CHATS), "--tokenizer", str(qwen)]
    rc = main([*argv, "--output-prefix", str(out / "x"), "--template", "llama3", "--no-progress"])
    err = capfd.readouterr().err.strip().splitlines()
    assert (
        rc == 2 and len(err) == 1 and err[0].startswith("vikhr sft prepare: error: ") and missing in err[0]
    ), err
    assert not out.exists()


def test_export_carries_the_template_and_stops_at_its_end_of_turn(
    model_dir: tuple[str, Path], chats: list[list[Message]], tmp_path: Path
) -> None:
    """`vikhr convert megatron-to-hf` of a model tuned with `template` writes a tokenizer whose own
    chat template gives vikhr's ids, and a generation config that stops at the template's end of turn."""
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.sft.template import end_of_turn_id
    from vikhr.tokenizer.load import load

    template, directory = model_dir
    tok = load(directory)
    _, generation = write_tokenizer_files(tok, tmp_path, template)
    exported = AutoTokenizer.from_pretrained(tmp_path)
    for messages in chats[:20]:
        messages = _like_qwen(template, messages)
        assert _hf_ids(exported, messages) == encode_chat(messages, tok, template).ids
        prompt = encode_chat(messages[:-1], tok, template, for_generation=True).ids
        assert _hf_ids(exported, messages[:-1], generation=True) == prompt
    end = tok.piece_to_id(END_TOKEN[template])
    assert end_of_turn_id(tok, template) == end
    stops = generation["eos_token_id"]  # for generation_config.json
    assert end in (stops if isinstance(stops, list) else [stops])


@pytest.mark.parametrize("template", ["chatml", "qwen3"])
def test_chatml_spelled_out_ends_answers_with_eos_the_export_stops_at(
    template: str, chats: list[list[Message]], tmp_path: Path
) -> None:
    """On a tokenizer without <|im_start|>/<|im_end|> tokens ChatML is spelled out as text: answers
    ended with the pieces of "<|im_end|>", EOS never followed, yet the export's generation config
    stopped at EOS only, so generation never stopped. Each answer now closes with EOS after its
    <|im_end|>, in training and in the export's template alike (same ids through transformers)."""
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.eval.lm import chat_answer_frame
    from vikhr.sft.own_template import own_template
    from vikhr.sft.template import end_of_turn_id
    from vikhr.tokenizer.load import load

    source = with_bos_eos_only(tmp_path / "source")
    tok = load_chat_tokenizer(source, template)
    (tmp_path / "export").mkdir()
    _, generation = write_tokenizer_files(load(source), tmp_path / "export", template)
    exported = AutoTokenizer.from_pretrained(tmp_path / "export")
    for number, messages in enumerate(chats[:40] + _handmade_chats()):
        encoded = encode_chat(messages, tok, template)
        assert encoded.ids == _hf_ids(exported, messages), number
        prompt = encode_chat(messages[:-1], tok, template, for_generation=True).ids
        assert prompt == _hf_ids(exported, messages[:-1], generation=True), number
        answers = [ids for trained, ids in mask_runs(encoded.ids, encoded.mask) if trained]
        assert len(answers) == sum(m.role == "assistant" for m in messages), number
        for ids in answers:  # the answer, its <|im_end|> as text, then EOS
            assert ids[-1] == tok.eos_id and tok.decode(ids[:-1]).endswith(CHATML_END), number
    assert end_of_turn_id(tok, template) == tok.eos_id
    assert generation["eos_token_id"] == tok.eos_id  # the export's generation_config.json stops there
    # Read back as a model's own template: it closes an answer with EOS; lm-eval stops at the text.
    assert own_template(load(tmp_path / "export")).end_of_turn_id(None) == tok.eos_id
    assert chat_answer_frame(exported)[1] == CHATML_END


@pytest.mark.parametrize("template", ["chatml", "qwen3"])
@pytest.mark.parametrize(
    "source",
    [
        MISTRAL_TOKENIZER,
        *(MISTRAL_TOKENIZER.parent / f"vikhr-ru-40k.{end}" for end in ("model", "tokenizer.json")),
    ],
    ids=lambda p: p.name,
)
@pytest.mark.parametrize("mixed_runs", ["fast", "offsets"])
def test_chatml_on_sentencepiece_gives_the_ids_of_its_export(
    template: str,
    source: Path,
    mixed_runs: str,
    chats: list[list[Message]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each answer was encoded apart, so with SentencePiece (and a Metaspace tokenizer.json) it opened
    with the dummy-prefix space ("▁Да"), while transformers, rendering the export's template, encodes
    "assistant\n" and the answer in one run ("Д", "а"): every training answer's first token differed
    from what the exported model reads and writes. Text between two control ids is now one run
    whatever the tokenizer, and the mask still covers exactly the answers and their ends, whether a
    run of template text and answer is split where the template text alone ends (`fast`) or by the
    tokens' character offsets."""
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.sft.template import _Encoder
    from vikhr.tokenizer.load import load

    if mixed_runs == "offsets":
        monkeypatch.setattr(_Encoder, "_encode_mixed", _Encoder._encode_by_offsets)

    name = "tokenizer.json" if source.suffix == ".json" else "tokenizer.model"
    shutil.copy(source, tmp_path / name)
    tok = load_chat_tokenizer(tmp_path, template)
    (tmp_path / "export").mkdir()
    write_tokenizer_files(load(tmp_path / name), tmp_path / "export", template)
    exported = AutoTokenizer.from_pretrained(tmp_path / "export")
    for number, messages in enumerate(chats):
        encoded = encode_chat(messages, tok, template)
        assert encoded.ids == _hf_ids(exported, messages), number
        prompt = encode_chat(messages[:-1], tok, template, for_generation=True).ids
        assert prompt == _hf_ids(exported, messages[:-1], generation=True), number
        answers = [m.content for m in messages if m.role == "assistant"]
        if template == "qwen3":
            answers[-1] = EMPTY_THINKING + answers[-1].lstrip("\n")
        trained = [tok.decode(ids) for is_trained, ids in mask_runs(encoded.ids, encoded.mask) if is_trained]
        assert trained == [a + CHATML_END for a in answers], number


def test_chatml_spelled_out_needs_an_eos(tmp_path: Path) -> None:
    """Without its tokens and without EOS a ChatML answer could end with nothing the model stops at."""
    (tmp_path / "tokenizer.json").write_text(byte_level_bpe("gpt2"), encoding="utf-8")
    with pytest.raises(VikhrError, match=r"no <\|im_start\|> / <\|im_end\|> tokens and no EOS token"):
        load_chat_tokenizer(tmp_path, "chatml")


def test_without_template_chats_follow_the_tokenizers_own_chat_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sft prepare` without --template wrote Mistral's [INST] chats whatever the tokenizer: a
    Llama-3 model was then tuned on a format it is never prompted in. The default now renders a
    probe chat with the tokenizer's own template (tokenizer_config.json or chat_template.jinja) and
    takes the vikhr template that renders it alike; mistral where the tokenizer carries none, own
    (the template itself) where none of vikhr's renders alike."""
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.cli import main
    from vikhr.sft.template import AUTO, resolve_template
    from vikhr.tokenizer.load import load

    tokenizer_json = byte_level_bpe("llama3")
    for template in ("llama3", "chatml", "qwen3"):  # the models' official templates
        directory = write_model_tokenizer(tmp_path / template, tokenizer_json, template)
        assert resolve_template(AUTO, load(directory)) == (template, directory / "tokenizer_config.json")
    assert resolve_template(AUTO, load(MISTRAL_TOKENIZER)) == ("mistral", None)
    assert resolve_template("chatml", load(tmp_path / "llama3")) == ("chatml", None)  # as given
    # transformers >= 4.47 saves the template in chat_template.jinja, which wins over the inline one.
    jinja = tmp_path / "jinja"
    shutil.copytree(tmp_path / "qwen3", jinja)
    shutil.copyfile(tmp_path / "chatml" / "tokenizer_config.json", jinja / "tokenizer_config.json")
    official = json.loads((tmp_path / "qwen3" / "tokenizer_config.json").read_text())["chat_template"]
    (jinja / "chat_template.jinja").write_text(official, encoding="utf-8")
    assert resolve_template(AUTO, load(jinja)) == ("qwen3", jinja / "chat_template.jinja")

    argv = ["sft", "prepare", "--input", str(RU_SEED_CHATS), "--no-progress"]
    assert (
        main([*argv, "--tokenizer", str(tmp_path / "llama3"), "--output-prefix", str(tmp_path / "o" / "a")])
        == 0
    )
    assert "template llama3 (the tokenizer's own, in tokenizer_config.json)" in capsys.readouterr().out
    meta = json.loads((tmp_path / "o" / "a_sft.json").read_text())
    assert meta["template"] == "llama3" and meta["template_from"].endswith("tokenizer_config.json")
    rendered = render_prepared(tmp_path / "o" / "a", 0)
    assert rendered.splitlines()[1].startswith("<|begin_of_text|><|start_header_id|>user"), rendered

    # A template none of vikhr's renders alike: the tokenizer's own, rendered (vikhr.sft.own_template).
    (jinja / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert resolve_template(AUTO, load(jinja)) == ("own", jinja / "chat_template.jinja")


@pytest.mark.parametrize(
    ("template", "edit"),
    [
        ("chatml", ("message.content + '<|im_end|>'", "message.content | trim + '<|im_end|>'")),
        ("llama3", ("message['content'] | trim", "message['content']")),
    ],
    ids=["chatml-trimmed", "llama3-untrimmed"],
)
def test_auto_tells_templates_apart_by_how_they_trim_contents(
    template: str, edit: tuple[str, str], tmp_path: Path
) -> None:
    """The probe chats had no whitespace around their contents, so a ChatML template that trims them
    was taken for `chatml` (which keeps it) and Llama-3's without `| trim` for `llama3` (which
    strips): the chats were trained otherwise than the model's own template writes them. Probes now
    have spaces and newlines around every content: such a template is used as it is (`own`)."""
    from transformers import AutoTokenizer

    from vikhr.sft.template import AUTO, OWN, load_for_chats

    directory = write_model_tokenizer(tmp_path, byte_level_bpe("llama3"), template)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    assert edit[0] in config["chat_template"]
    config["chat_template"] = config["chat_template"].replace(*edit)
    config_path.write_text(json.dumps(config), encoding="utf-8")
    tok, chosen, chosen_by = load_for_chats(directory, AUTO)
    assert (chosen, chosen_by) == (OWN, config_path)
    fast = AutoTokenizer.from_pretrained(directory)
    system = [("system", QWEN_DEFAULT_SYSTEM)] if template == "chatml" else []
    turns = [*system, ("user", " Привет!\n"), ("assistant", "Здравствуйте.\n")]
    messages = parse_chat({"messages": [{"role": r, "content": c} for r, c in turns]})
    assert encode_chat(messages, tok, chosen).ids == _hf_ids(fast, messages)


@pytest.mark.parametrize("kind", ["sentencepiece", "byte-level"])
def test_an_empty_mistral_answer_trains_what_the_export_renders(kind: str, tmp_path: Path) -> None:
    """An empty answer: training wrote `[/INST]</s>` (SentencePiece gives an empty text no dummy
    prefix, as in mistral-common's encoding and Mistral's own template), the export's template
    `[/INST] </s>`, one more id than the model was trained on."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.tokenizer.load import load

    source = MISTRAL_TOKENIZER
    if kind == "byte-level":
        source = tmp_path / "source"
        source.mkdir()
        bpe = HFTokenizer.from_str(byte_level_bpe("llama3"))
        bpe.add_special_tokens(["<unk>", "<s>", "</s>"])
        bpe.save(str(source / "tokenizer.json"))
        (source / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    tok = load_chat_tokenizer(source, "mistral")
    (tmp_path / "export").mkdir()
    write_tokenizer_files(load(source), tmp_path / "export", "mistral")
    exported = AutoTokenizer.from_pretrained(tmp_path / "export")
    for answers in (("",), ("", "Хорошо."), ("Да.", ""), (" ", "")):
        turns = [("system", "Будь краток.")]
        for n, answer in enumerate(answers):
            turns += [("user", f"Вопрос {n}?"), ("assistant", answer)]
        messages = parse_chat({"messages": [{"role": r, "content": c} for r, c in turns]})
        enc = encode_chat(messages, tok, "mistral")
        assert enc.ids == _hf_ids(exported, messages), answers
        if answers == ("",):  # the answer trained is its </s> alone, as in Mistral's own rendering
            assert [i for i, trained in zip(enc.ids, enc.mask, strict=True) if trained] == [tok.eos_id]


@pytest.mark.parametrize("inst_tokens", [True, False], ids=["inst-tokens", "no-inst-tokens"])
def test_mistral_on_a_byte_level_tokenizer_gives_the_ids_of_its_export(
    inst_tokens: bool, chats: list[list[Message]], tmp_path: Path
) -> None:
    """Mistral-NeMo's tekken (byte-level) holds [INST]/[/INST] as control tokens: the mistral
    template spelled them out as text, and wrote answers without the space SentencePiece's dummy
    prefix gives them, so the export's template (`[INST] … [/INST] answer</s>`, rendered and
    tokenized by transformers) gave other ids than training. Now they are one id each where the
    tokenizer has both, and the answer opens with its space."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.tokenizer.load import load

    source = tmp_path / "source"
    source.mkdir()
    bpe = HFTokenizer.from_str(byte_level_bpe("llama3"))
    bpe.add_special_tokens(["<unk>", "<s>", "</s>", *(["[INST]", "[/INST]"] if inst_tokens else [])])
    bpe.save(str(source / "tokenizer.json"))
    (source / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    tok = load_chat_tokenizer(source, "mistral")
    (tmp_path / "export").mkdir()
    write_tokenizer_files(load(source), tmp_path / "export", "mistral")
    exported = AutoTokenizer.from_pretrained(tmp_path / "export")
    sample = chats[:50] + _handmade_chats()  # the hand-made ones: a system message, several turns
    for number, messages in enumerate(sample):
        assert encode_chat(messages, tok, "mistral").ids == _hf_ids(exported, messages), number
        prompt = encode_chat(messages[:-1], tok, "mistral", for_generation=True).ids
        assert prompt == _hf_ids(exported, messages[:-1], generation=True), number
    typed = parse_chat(
        {"messages": [{"role": "user", "content": "[INST] x"}, {"role": "assistant", "content": "y"}]}
    )
    inst = tok.piece_to_id("[INST]")
    assert (encode_chat(typed, tok, "mistral").ids.count(inst) == 1) if inst_tokens else inst is None
