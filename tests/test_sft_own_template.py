"""``--template own``: chats rendered by the tokenizer's own Jinja chat template.

The official templates of Llama-3.1-8B-Instruct and Mistral-Nemo-Instruct-2407
(tests/data/chat_templates), which render as none of vikhr's templates, on byte-level BPE
tokenizers trained in the test (vikhr.sft.own_template), and Nemo's on Mistral's SentencePiece
vocabulary as a Metaspace tokenizer.json: ids equal transformers' `apply_chat_template(...,
tokenize=True)`, the mask covers each answer as the template writes it and its end-of-turn token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.test_sft_templates import TEMPLATE_FILES, byte_level_bpe, seed_and_real_chats
from vikhr.assets import RU_SEED_CHATS
from vikhr.sft.build import build
from vikhr.sft.encoded import Message, TypedControlError
from vikhr.sft.own_template import ChatRefused, own_template
from vikhr.sft.prepare import mask_runs
from vikhr.sft.template import (
    AUTO,
    OWN,
    encode_chat,
    end_of_turn_id,
    load_chat_tokenizer,
    parse_chat,
    read_chats,
)

# Per model: its template file, BOS, EOS as its tokenizer_config.json names them, its special tokens.
MODELS = {
    "llama3.1": (
        "meta-llama-3.1-8b-instruct",
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|python_tag|>",
        ],
    ),
    "nemo": ("mistral-nemo-instruct-2407", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]),
    # Phi-3.5's headers and end token strip the whitespace after them (rstrip), as its tokenizer.json has it.
    "phi3.5": (
        "phi-3.5-mini-instruct",
        ["<unk>", "<s>", "<|endoftext|>", *(("rstrip", t) for t in ("<|assistant|>", "<|end|>", "<|user|>"))],
    ),
    # DeepSeek-R1-Distill: the role markers are plain added tokens, only BOS/EOS are special.
    "r1": (
        "deepseek-r1-distill-qwen-32b",
        [
            "<｜begin▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            *(("plain", t) for t in ("<｜User｜>", "<｜Assistant｜>")),
        ],
    ),
}
END = {"llama3.1": "<|eot_id|>", "nemo": "</s>", "phi3.5": "<|end|>", "r1": "<｜end▁of▁sentence｜>"}


def write_tokenizer(directory: Path, model: str, tokenizer_json: str, template: str | None = None) -> Path:
    """`directory` with `tokenizer_json` plus `model`'s special tokens and a tokenizer_config.json
    holding its official chat template (or `template`) and BOS/EOS."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    name, specials = MODELS[model]
    official = json.loads((TEMPLATE_FILES / f"{name}.json").read_text(encoding="utf-8"))
    directory.mkdir(parents=True, exist_ok=True)
    tok = HFTokenizer.from_str(tokenizer_json)
    for token in specials:
        kind, text = token if isinstance(token, tuple) else ("special", token)
        added = AddedToken(text, special=kind != "plain", normalized=False, rstrip=kind == "rstrip")
        (tok.add_tokens if kind == "plain" else tok.add_special_tokens)([added])
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "bos_token": official["bos_token"],
        "eos_token": official["eos_token"],
        "chat_template": template if template is not None else official["chat_template"],
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def _metaspace_json() -> str:
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.tokenizer.hf_export import build_hf_tokenizer

    return build_hf_tokenizer(MISTRAL_TOKENIZER).to_str()


CASES = {
    "llama3.1-bytelevel": ("llama3.1", lambda: byte_level_bpe("llama3")),
    "nemo-bytelevel": ("nemo", lambda: byte_level_bpe("llama3")),
    "nemo-metaspace": ("nemo", _metaspace_json),
    "phi3.5-bytelevel": ("phi3.5", lambda: byte_level_bpe("llama3")),
    "r1-bytelevel": ("r1", lambda: byte_level_bpe("llama3")),
}


@pytest.fixture(scope="module", params=list(CASES))
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    model, tokenizer_json = CASES[request.param]
    return model, write_tokenizer(tmp_path_factory.mktemp(request.param), model, tokenizer_json())


@pytest.fixture(scope="module")
def chats() -> list[list[Message]]:
    return seed_and_real_chats()


def _hf_ids(fast: Any, messages: list[Message], generation: bool = False) -> list[int]:
    out = fast.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=True,
        add_generation_prompt=generation,
    )
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def _trained_texts(tok: Any, ids: list[int], mask: list[int]) -> list[str]:
    return [tok.backend.decode(run, skip_special_tokens=False) for on, run in mask_runs(ids, mask) if on]


def test_ids_and_mask_follow_the_official_template(
    model_dir: tuple[str, Path],
    chats: list[list[Message]],
) -> None:
    from transformers import AutoTokenizer

    model, directory = model_dir
    fast = AutoTokenizer.from_pretrained(directory)
    tok = load_chat_tokenizer(directory, OWN)
    encoded = refused = 0
    for number, messages in enumerate(chats):
        has_system = messages[0].role == "system"
        if model == "nemo" and has_system:
            # Nemo's template writes the system message into the last user turn only (and drops
            # it from a chat ending in an answer): a prompt would not begin its chat.
            with pytest.raises(ChatRefused, match="renders the turns before this answer differently"):
                encode_chat(messages, tok, OWN)
            refused += 1
            # A prompt for generation needs no answer told apart: it is the template's, whole.
            prompt = encode_chat(messages[:-1], tok, OWN, for_generation=True)
            assert prompt.ids == _hf_ids(fast, messages[:-1], generation=True), number
            continue
        enc = encode_chat(messages, tok, OWN)
        assert enc.ids == _hf_ids(fast, messages), number
        prompt = encode_chat(messages[:-1], tok, OWN, for_generation=True)
        assert prompt.ids == _hf_ids(fast, messages[:-1], generation=True), number
        answers = [m.content for m in messages if m.role == "assistant"]
        if model == "llama3.1":
            answers = [a.strip() for a in answers]  # the template's `| trim`
        if model == "phi3.5":  # <|assistant|> takes the whitespace after it: "\n" and the answer's own
            answers = [a.lstrip() for a in answers]
        expected = [a + END[model] for a in answers]
        trained = _trained_texts(tok, enc.ids, enc.mask)
        if model == "nemo" and directory.name.startswith("nemo-metaspace"):
            # SentencePiece pieces: an answer's first piece carries the space Metaspace puts before
            # "▁"-led words, which decoding a run on its own drops or keeps as one space.
            trained = [t.lstrip(" ") for t in trained]
            expected = [e.lstrip(" ") for e in expected]
        assert trained == expected, number
        encoded += 1
    assert encoded > 100 and (refused > 0) == (model == "nemo")


def test_end_of_turn_and_auto_choice(model_dir: tuple[str, Path]) -> None:
    from vikhr.sft.template import resolve_template
    from vikhr.tokenizer.load import load

    model, directory = model_dir
    tok = load(directory)
    # Nemo's renders as vikhr's mistral-v3 (which keeps system messages; see test_sft_mistral_v3.py).
    chosen = "mistral-v3" if model == "nemo" else OWN
    assert resolve_template(AUTO, tok) == (chosen, directory / "tokenizer_config.json")
    assert end_of_turn_id(tok, OWN) == tok.piece_to_id(END[model])


def _chat(*turns: str) -> list[Message]:
    roles = ["user", "assistant"] * len(turns)
    return parse_chat({"messages": [{"role": r, "content": c} for r, c in zip(roles, turns, strict=False)]})


def test_chatml_newline_after_the_end_token_is_not_trained(tmp_path: Path) -> None:
    """An answer is its rendering up to its last control token: ChatML's "\\n" after <|im_end|>
    is template text (a model never generates it)."""
    chatml = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    directory = write_tokenizer(tmp_path, "nemo", byte_level_bpe("gpt2"), template=chatml)
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    hf.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    hf.save(str(directory / "tokenizer.json"))
    tok = load_chat_tokenizer(directory, OWN)
    enc = encode_chat(_chat("Привет", "Здравствуйте", "Как дела?", "Хорошо"), tok, OWN)
    assert _trained_texts(tok, enc.ids, enc.mask) == ["Здравствуйте<|im_end|>", "Хорошо<|im_end|>"]
    assert tok.backend.decode(enc.ids, skip_special_tokens=False).endswith("Хорошо<|im_end|>\n")
    assert end_of_turn_id(tok, OWN) == tok.piece_to_id("<|im_end|>")


def test_the_date_is_fixed_and_a_template_rewritten_is_read_anew(tmp_path: Path) -> None:
    """Llama-3.2's template writes today's date through strftime_now: vikhr fixes it, so the
    tokens do not depend on the day of the run."""
    dated = (
        "{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
        "{{ 'Today Date: ' + date_string + '\\n' }}"
        "{% for m in messages %}{{ m['role'] + ':\\n' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
    )
    directory = write_tokenizer(tmp_path, "nemo", byte_level_bpe("gpt2"), template=dated)
    tok = load_chat_tokenizer(directory, OWN)
    enc = encode_chat(_chat("вопрос", "ответ"), tok, OWN)
    text = tok.backend.decode(enc.ids, skip_special_tokens=False)
    assert text.startswith("Today Date: 26 Jul 2024\nuser:\nвопрос</s>"), text
    assert _trained_texts(tok, enc.ids, enc.mask) == ["ответ</s>"]
    # A template changed on disk (same process, same tokenizer) is used from then on.
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = dated.replace(":\\n", ">\\n")
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    text = tok.backend.decode(encode_chat(_chat("вопрос", "ответ"), tok, OWN).ids, skip_special_tokens=False)
    assert "user>\nвопрос" in text


@pytest.mark.parametrize("written_again", ["renamed into place", "in place"])
def test_a_template_replaced_within_one_clock_tick_is_read_anew(written_again: str, tmp_path: Path) -> None:
    """A chat_template.jinja renamed into place with the old one's size and modification time (a
    coarse clock, one tick) is another file: its template is used from then on. Written again in
    place it kept its inode too, and the old template rendered the chats: a file written in the
    last seconds is not cached by its stamp."""
    from tests.helpers import replace_within_one_tick, rewrite_in_place_within_one_tick

    write_again = (
        replace_within_one_tick if written_again == "renamed into place" else rewrite_in_place_within_one_tick
    )

    template = (
        "{% for m in messages %}{{ m['role'] + ':\\n' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
    )
    directory = write_tokenizer(tmp_path, "nemo", byte_level_bpe("gpt2"), template=template)
    (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
    tok = load_chat_tokenizer(directory, OWN)
    text = tok.backend.decode(encode_chat(_chat("вопрос", "ответ"), tok, OWN).ids, skip_special_tokens=False)
    assert "user:\nвопрос" in text
    write_again(directory / "chat_template.jinja", template.replace(":\\n", ">\\n"))
    text = tok.backend.decode(encode_chat(_chat("вопрос", "ответ"), tok, OWN).ids, skip_special_tokens=False)
    assert "user>\nвопрос" in text


def test_refusals_name_the_problem(model_dir: tuple[str, Path]) -> None:
    model, directory = model_dir
    tok = load_chat_tokenizer(directory, OWN)
    control = MODELS[model][1][1]  # a special token of the tokenizer, typed in a message
    with pytest.raises(TypedControlError, match=r"message 2 holds the text .*a special token"):
        encode_chat(_chat("вопрос", f"ответ {control}"), tok, OWN)
    if model == "nemo":  # its template refuses a role order it does not know
        bad = [Message("user", "a"), Message("assistant", "b"), Message("assistant", "c")]
        with pytest.raises(ChatRefused, match="chat template refused the chat: After the optional"):
            own_template(tok).encode(bad)


# Mistral-7B-Instruct-v0.1's own template: no system role (a system message fails its role order).
MISTRAL_V01_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def test_a_template_without_a_system_role_says_so_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chat with a system message on a template that has no system turn stopped `sft prepare` with
    the template's own words only ("Conversation roles must alternate ..."), which name neither the
    system message nor a way out. The line now says both; other refusals say what to train them with."""
    from vikhr.cli import main

    directory = write_tokenizer(tmp_path / "v01", "nemo", _metaspace_json(), MISTRAL_V01_TEMPLATE)
    chats = tmp_path / "chats.jsonl"
    lines = [
        {"messages": [{"role": r, "content": c} for r, c in turns]}
        for turns in (
            [("user", "Привет!"), ("assistant", "Здравствуйте.")],
            [("system", "Отвечай кратко."), ("user", "Привет!"), ("assistant", "Здравствуйте.")],
        )
    ]
    chats.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    argv = ["sft", "prepare", "--input", str(chats), "--tokenizer", str(directory), "--no-progress"]
    capsys.readouterr()
    assert main([*argv, "--output-prefix", str(tmp_path / "out" / "a")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"vikhr sft prepare: error: {chats}:2: tokenizer_config.json's chat template refused the chat: "
        "Conversation roles must alternate user/assistant/user/assistant/...; it takes the chat without its "
        "system message, so it has no system turn: leave system messages out of the chats, or train with one "
        "of vikhr's templates (--template NAME), which write them"
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    tok = load_chat_tokenizer(directory, OWN)
    with pytest.raises(ChatRefused) as refused:  # answers in a row, which it cannot render: say how
        encode_chat([Message("user", "a"), Message("assistant", "b"), Message("assistant", "c")], tok, OWN)
    assert str(refused.value) == (
        "tokenizer_config.json's chat template refused the chat: Conversation roles must alternate "
        "user/assistant/user/assistant/...; join the chat's answers in a row into one message, or train "
        "such chats with one of vikhr's templates (--template NAME)"
    )
    assert main([*argv, "--output-prefix", str(tmp_path / "out" / "a"), "--template", "chatml"]) == 0


def test_system_messages_a_template_drops_are_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A template that writes only user and assistant turns renders a chat alike with and without
    its system message: `sft prepare` trained such chats without their system prompts, silently
    (and the export serves them so). It now counts them in one warning line; a template that writes
    system messages, or chats without one, give none."""
    from vikhr.cli import main

    drops = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'user' %}{{ '### User: ' + m['content'] + '\\n' }}"
        "{% elif m['role'] == 'assistant' %}{{ '### Assistant: ' + m['content'] + eos_token + '\\n' }}"
        "{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant: ' }}{% endif %}"
    )
    writes = drops.replace("{% if m['role'] == 'user' %}", "{% if m['role'] != 'assistant' %}")
    chats = tmp_path / "chats.jsonl"
    plain = tmp_path / "plain.jsonl"
    system = {"role": "system", "content": "Отвечай кратко."}
    turns = [{"role": "user", "content": "Привет!"}, {"role": "assistant", "content": "Здравствуйте."}]
    chats.write_text("".join(json.dumps({"messages": m}) + "\n" for m in ([system, *turns], turns, turns)))
    plain.write_text(json.dumps({"messages": turns}) + "\n")
    for name, template, given, warned in (
        ("drops", drops, chats, True),
        ("drops", drops, plain, False),
        ("writes", writes, chats, False),
    ):
        directory = write_tokenizer(tmp_path / name, "nemo", _metaspace_json(), template)
        capsys.readouterr()
        argv = ["sft", "prepare", "--input", str(given), "--tokenizer", str(directory), "--no-progress"]
        assert main([*argv, "--output-prefix", str(tmp_path / "out" / name)]) == 0
        err = capsys.readouterr().err
        assert err == (
            f"warning: 1 of 3 chats of {chats} have a system message, which tokenizer_config.json's chat "
            "template does not write: the model is trained (and its export serves) without them; put such "
            "instructions into the first user message, or train with one of vikhr's templates "
            "(--template NAME), which write them\n"
            if warned
            else ""
        )


def test_own_needs_a_template_and_a_tokenizer_json(tmp_path: Path) -> None:
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.errors import VikhrError

    bare = write_tokenizer(tmp_path / "bare", "nemo", byte_level_bpe("gpt2"))
    config = json.loads((bare / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(VikhrError, match=r"carries no chat template .* for the own template"):
        load_chat_tokenizer(bare, OWN)
    sp = tmp_path / "sp"
    sp.mkdir()
    (sp / "tokenizer.model").write_bytes(MISTRAL_TOKENIZER.read_bytes())
    (sp / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(VikhrError, match=r"\(chat_template\.jinja\) needs the model's tokenizer\.json"):
        load_chat_tokenizer(sp / "tokenizer.model", OWN)


def test_own_template_prepared_by_two_workers_is_what_one_writes(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each encoding process renders with transformers and its own HF tokenizer: the datasets, the
    metadata and what the run prints are those of one process, byte for byte."""
    import vikhr.sft.prepare as prepare
    from tests.helpers import varied_chat_lines
    from vikhr.cli import main

    monkeypatch.setattr(prepare, "BATCH_CHATS", 16)
    llama = write_tokenizer(tmp_path / "llama", "llama3.1", byte_level_bpe("llama3"))
    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join(varied_chat_lines(120)) + "\n", encoding="utf-8")
    written = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        argv = ["sft", "prepare", "--input", str(chats), "--tokenizer", str(llama), "--no-progress"]
        capfd.readouterr()
        assert main([*argv, "--output-prefix", str(out / "a"), "--workers", workers]) == 0
        said = "".join(capfd.readouterr()).replace(str(out), "OUT")
        files = {f.name: f.read_bytes().replace(str(out).encode(), b"OUT") for f in sorted(out.iterdir())}
        written.append((files, said))
    assert len(written[0][0]) == 5 and "OUT/a: 120 chats" in written[0][1] and "template own" in written[0][1]
    assert written[1] == written[0]


def test_prepare_and_build_with_the_own_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sft prepare` without --template on a Llama-3.1 tokenizer: the summary names the own template
    and its file; `sft build` with it on a Nemo tokenizer drops (and reports) the chat its template
    cannot split (without --template, Nemo's gets mistral-v3, which keeps it)."""
    from vikhr.cli import main
    from vikhr.sft.prepare import render_prepared

    llama = write_tokenizer(tmp_path / "llama", "llama3.1", byte_level_bpe("llama3"))
    argv = ["sft", "prepare", "--input", str(RU_SEED_CHATS), "--no-progress"]
    assert main([*argv, "--tokenizer", str(llama), "--output-prefix", str(tmp_path / "o" / "a")]) == 0
    assert "template own (the tokenizer's own, in tokenizer_config.json)" in capsys.readouterr().out
    meta = json.loads((tmp_path / "o" / "a_sft.json").read_text())
    assert meta["template"] == OWN and meta["template_from"].endswith("tokenizer_config.json")
    shown = render_prepared(tmp_path / "o" / "a", 0)
    assert shown.splitlines()[1] == "<|begin_of_text|><|start_header_id|>system<|end_header_id|>", shown
    assert "Today Date: 26 Jul 2024" in shown

    nemo = write_tokenizer(tmp_path / "nemo", "nemo", byte_level_bpe("llama3"))
    chats_file = tmp_path / "chats.jsonl"
    records = [
        [("user", "Привет!"), ("assistant", "Здравствуйте.")],
        [("system", "Отвечай кратко."), ("user", "Привет!"), ("assistant", "Здравствуйте.")],
    ]
    chats_file.write_text(
        "".join(
            json.dumps({"messages": [{"role": r, "content": c} for r, c in chat]}) + "\n" for chat in records
        ),
        encoding="utf-8",
    )
    config = {
        "output": str(tmp_path / "mix.jsonl"),
        "tokenizer": str(nemo),
        "template": OWN,
        "limits": {"min_tokens": 1, "max_tokens": 100},
        "dedup": {"near": False},
        "sources": [{"name": "a", "path": str(chats_file)}],
    }
    (tmp_path / "build.yaml").write_text(json.dumps(config), encoding="utf-8")
    report = build(tmp_path / "build.yaml")
    assert report["template"] == OWN and report["sources"][0]["dropped"] == {"template_refused": 1}
    assert [len(m) for _, m in read_chats(tmp_path / "mix.jsonl")] == [2]


def test_export_keeps_the_own_template_and_stops_at_its_end_of_turn(
    model_dir: tuple[str, Path], chats: list[list[Message]], tmp_path: Path
) -> None:
    """`vikhr convert megatron-to-hf` of a model tuned with ``own``: the exported tokenizer renders
    the training ids, and generation stops at the template's end-of-turn token."""
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files

    model, directory = model_dir
    tok = load_chat_tokenizer(directory, OWN)
    _, generation = write_tokenizer_files(tok, tmp_path, OWN)
    exported = AutoTokenizer.from_pretrained(tmp_path)
    plain = [messages for messages in chats if messages[0].role != "system"][:20]
    for messages in plain:
        assert _hf_ids(exported, messages) == encode_chat(messages, tok, OWN).ids
    stops = generation["eos_token_id"]  # for generation_config.json
    assert tok.piece_to_id(END[model]) in (stops if isinstance(stops, list) else [stops])


def _config(directory: Path, **changes: Any) -> None:
    """tokenizer_config.json of `directory` with `changes` (a None value removes the key)."""
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        config.pop(key, None) if value is None else config.__setitem__(key, value)
    path.write_text(json.dumps(config), encoding="utf-8")


def test_named_templates_a_missing_bos_and_plain_text_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Templates as transformers reads them: a list of named templates renders its "default"
    (Hermes-3, Command-R ship such lists), a tokenizer_config.json naming no bos_token gives the
    template none; a template ending answers in plain text trains no separator and says that the
    model learns no end of turn; one that writes no answer cannot be trained on."""
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.errors import VikhrError
    from vikhr.sft.template import resolve_template
    from vikhr.tokenizer.load import load

    bpe = byte_level_bpe("gpt2")
    chat = _chat("вопрос", "ответ", "ещё", "второй")
    plain = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] + ':\\n' + m['content'] + '\\n\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
    )
    named = write_tokenizer(tmp_path / "named", "nemo", bpe)
    official = json.loads((named / "tokenizer_config.json").read_text())["chat_template"]
    _config(
        named,
        chat_template=[{"name": "default", "template": official}, {"name": "tool_use", "template": plain}],
    )
    # The "default" one is read: Nemo's official template, which renders as vikhr's mistral-v3.
    assert resolve_template(AUTO, load(named)) == ("mistral-v3", named / "tokenizer_config.json")
    tok = load_chat_tokenizer(named, OWN)
    assert encode_chat(chat, tok, OWN).ids == _hf_ids(AutoTokenizer.from_pretrained(named), chat)
    (tmp_path / "export").mkdir()
    write_tokenizer_files(tok, tmp_path / "export", OWN)
    exported = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())
    assert [t["name"] for t in exported["chat_template"]] == ["default", "tool_use"]  # kept whole

    no_bos = write_tokenizer(tmp_path / "no_bos", "nemo", bpe, template=plain)
    _config(no_bos, bos_token=None)
    tok = load_chat_tokenizer(no_bos, OWN)
    enc = encode_chat(chat, tok, OWN)
    assert enc.ids == _hf_ids(AutoTokenizer.from_pretrained(no_bos), chat)
    assert tok.backend.decode(enc.ids, skip_special_tokens=False).startswith("user:\n")  # no "<s>"
    assert "ends an answer in plain text" in capsys.readouterr().err
    assert _trained_texts(tok, enc.ids, enc.mask) == ["ответ", "второй"]  # not the "\n\n" after
    assert end_of_turn_id(tok, OWN) == tok.eos_id

    # Like YandexGPT-5-Lite's: the last answer is never written, a fixed header is.
    drops_the_answer = (
        "{% for m in messages %}{% if m['role'] == 'user' or not loop.last %}"
        "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endif %}{% endfor %}{{ 'assistant:' }}"
    )
    dropping = write_tokenizer(tmp_path / "drops", "nemo", bpe, template=drops_the_answer)
    with pytest.raises(
        VikhrError, match=r"cannot train a two-turn chat: message 2: .* writes no text for this answer"
    ):
        load_chat_tokenizer(dropping, OWN)


def test_a_header_that_takes_the_answers_whitespace_is_not_trained(tmp_path: Path) -> None:
    """Phi-3.5's <|assistant|> strips the whitespace after it (rstrip), an answer's leading
    whitespace included: the header token covers answer characters but is still the prompt's."""
    directory = write_tokenizer(tmp_path, "phi3.5", byte_level_bpe("llama3"))
    tok = load_chat_tokenizer(directory, OWN)
    for answer in (" ответ", "\n  ответ", "ответ"):
        enc = encode_chat(_chat("вопрос", answer), tok, OWN)
        assert _trained_texts(tok, enc.ids, enc.mask) == ["ответ<|end|>"], answer


def test_convert_warns_of_a_changed_template_and_stops_at_a_kept_ones_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sft prepare` records the own template's SHA-256; `convert` warns when the tokenizer's
    template is no longer that one. An export that keeps a tokenizer's own template without an SFT
    record (`--tokenizer`) still stops at its end of turn (Phi-3.5: <|end|>, not only EOS)."""
    from vikhr.convert.hf_tokenizer import _sft_tokenizer, warn_of_changed_template, write_tokenizer_files
    from vikhr.sft.prepare import prepare_sft
    from vikhr.tokenizer.load import load

    directory = write_tokenizer(tmp_path / "tok", "llama3.1", byte_level_bpe("llama3"))
    prepare_sft(
        RU_SEED_CHATS, directory, tmp_path / "data" / "a", template="auto", max_chats=3, progress=False
    )
    config = {"data": {"kind": "sft", "train": [{"prefix": str(tmp_path / "data" / "a")}]}}
    recorded = _sft_tokenizer(config, tmp_path)
    assert recorded is not None and recorded.template == OWN and recorded.template_sha256
    tok = load(directory)
    warn_of_changed_template(tok, recorded)
    assert "warning" not in capsys.readouterr().err
    # The same template moved to chat_template.jinja, ending with a newline as editors save files:
    # Jinja reads it alike (it warned).
    template = json.loads((directory / "tokenizer_config.json").read_text())["chat_template"]
    (directory / "chat_template.jinja").write_text(template + "\n", encoding="utf-8")
    warn_of_changed_template(load(directory), recorded)
    assert "warning" not in capsys.readouterr().err
    (directory / "chat_template.jinja").unlink()
    _config(
        directory,
        chat_template=json.loads((directory / "tokenizer_config.json").read_text())["chat_template"] + " ",
    )
    warn_of_changed_template(load(directory), recorded)
    err = capsys.readouterr().err
    assert "the chat template is not the one the model was tuned with" in err and err.count("\n") == 1

    phi = write_tokenizer(tmp_path / "phi", "phi3.5", byte_level_bpe("llama3"))
    (tmp_path / "export").mkdir()
    _, generation = write_tokenizer_files(load(phi), tmp_path / "export", None)
    stops = generation["eos_token_id"]  # for generation_config.json
    tok = load(phi)
    assert tok.piece_to_id("<|end|>") in stops and tok.eos_id in stops
