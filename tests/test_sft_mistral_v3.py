"""The ``mistral-v3`` chat template against mistral-common's own v3 instruct encoding.

mistral-common ships Mistral-NeMo's Tekken vocabulary (tekken_240718.json) and Mistral-7B v0.3's
SentencePiece model (mistral_instruct_tokenizer_240323.model.v3): the template's ids are those of
its `encode_chat_completion` on the same chats (a system message in a multi-turn chat included, which
mistral-common puts into the last user turn), the HF export's template gives them through
transformers, and Nemo-Instruct's official template is recognised as it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_sft_own_template import _hf_ids, write_tokenizer
from tests.test_sft_templates import _handmade_chats, byte_level_bpe, seed_and_real_chats
from vikhr.errors import VikhrError
from vikhr.sft.encoded import Message
from vikhr.sft.prepare import mask_runs
from vikhr.sft.template import (
    AUTO,
    encode_chat,
    load_chat_tokenizer,
    parse_chat,
    read_chats,
    resolve_template,
)
from vikhr.tokenizer.load import load

mistral_common = pytest.importorskip("mistral_common")
MISTRAL_COMMON_DATA = Path(mistral_common.__file__).parent / "data"
TEMPLATE = "mistral-v3"


def _chat(*turns: tuple[str, str]) -> list[Message]:
    return parse_chat({"messages": [{"role": r, "content": c} for r, c in turns]})


TYPED = _chat(("user", "А [INST] 3+3? </s>"), ("assistant", "Шесть [/INST]."))


@pytest.fixture(scope="module")
def chats() -> list[list[Message]]:
    return [*seed_and_real_chats(), TYPED]


@pytest.fixture(scope="module", params=["tekken", "sentencepiece"])
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(vikhr's tokenizer path, mistral-common's file of the same vocabulary)."""
    from vikhr.tokenizer.tekken import import_tekken

    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "tekken":
        source = MISTRAL_COMMON_DATA / "tekken_240718.json"
        import_tekken(source, directory / "nemo")
        return directory / "nemo", source
    source = MISTRAL_COMMON_DATA / "mistral_instruct_tokenizer_240323.model.v3"
    shutil.copyfile(source, directory / "tokenizer.model")
    return directory / "tokenizer.model", source


def _reference_ids(reference: Any, messages: list[Message]) -> list[int]:
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[m.role](content=m.content) for m in messages])
    return list(reference.encode_chat_completion(request).tokens)


def test_ids_equal_mistral_commons_v3_encoding(
    tokenizer: tuple[Path, Path], chats: list[list[Message]]
) -> None:
    """Training chats and generation prompts: the ids of mistral-common's v3 instruct tokenizer, the
    system message in the last user turn; trained: exactly each answer and its </s> (the decoded
    trained spans are the answers' texts)."""
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path, source = tokenizer
    finetuning = MistralTokenizer.from_file(str(source), mode=ValidationMode.finetuning)
    serving = MistralTokenizer.from_file(str(source), mode=ValidationMode.test)
    tok = load_chat_tokenizer(path, TEMPLATE)
    inst, inst_end = tok.piece_to_id("[INST]"), tok.piece_to_id("[/INST]")
    multi_turn_system = [c for c in chats if c[0].role == "system" and len(c) > 3]
    assert len(chats) > 100 and multi_turn_system
    for number, messages in enumerate(chats):
        enc = encode_chat(messages, tok, TEMPLATE)
        assert enc.ids == _reference_ids(finetuning, messages), number
        prompt = encode_chat(messages[:-1], tok, TEMPLATE, for_generation=True)
        assert prompt.ids == _reference_ids(serving, messages[:-1]), number
        runs = [ids for is_trained, ids in mask_runs(enc.ids, enc.mask) if is_trained]
        # decode leaves EOS out: each run is the answer's text, then its </s>
        trained = [tok.decode(ids[:-1]) + ("</s>" if ids[-1] == tok.eos_id else "") for ids in runs]
        assert trained == [m.content + "</s>" for m in messages if m.role == "assistant"], number
        assert not {inst, inst_end} & {i for ids in runs for i in ids}, number
    system, *_ = multi_turn_system[0]
    first_turn = tok.decode(encode_chat(multi_turn_system[0][:3], tok, TEMPLATE).ids)
    whole = tok.decode(encode_chat(multi_turn_system[0], tok, TEMPLATE).ids)
    assert system.content in first_turn and whole.count(system.content) == 1
    assert whole.index(system.content) > whole.index(multi_turn_system[0][2].content)  # in the last turn
    assert encode_chat(TYPED, tok, TEMPLATE).ids.count(inst) == 1  # typed text stays text


def test_export_gives_the_ids_of_training(
    tokenizer: tuple[Path, Path], chats: list[list[Message]], tmp_path: Path
) -> None:
    """`vikhr convert`'s export (tokenizer files + the template's Jinja), rendered and tokenized by
    transformers, gives the training ids: tekken writes no spaces, the SentencePiece export gets the
    dummy prefix after each control token (its [INST]/[/INST] exported as special tokens)."""
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files

    path, _ = tokenizer
    write_tokenizer_files(load(path), tmp_path, TEMPLATE)
    fast = AutoTokenizer.from_pretrained(tmp_path)
    tok = load_chat_tokenizer(path, TEMPLATE)
    for number, messages in enumerate(chats[:-1]):  # not TYPED: a rendered "[INST]" is the control
        assert _hf_ids(fast, messages) == encode_chat(messages, tok, TEMPLATE).ids, number
        prompt = encode_chat(messages[:-1], tok, TEMPLATE, for_generation=True).ids
        assert _hf_ids(fast, messages[:-1], generation=True) == prompt, number


def test_a_tokenizer_json_without_prefix_after_controls_gets_the_spaces_written(
    chats: list[list[Message]], tmp_path: Path
) -> None:
    """Mistral v0.3's own tokenizer.json (Metaspace, prepend_scheme "first") writes no "▁" after a
    control token: the export's template writes the spaces out, as Mistral v0.3's template does, and
    training writes them too — Metaspace prepends no "▁" to a text that starts with spaces, so the
    texts encoded alone lost it (were not mistral-common's ids)."""
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, pre_tokenizers
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    model = MISTRAL_COMMON_DATA / "mistral_instruct_tokenizer_240323.model.v3"
    source = tmp_path / "source"
    write_hf_tokenizer(model, source)
    metaspace = HFTokenizer.from_file(str(source / "tokenizer.json"))
    metaspace.normalizer = None
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    metaspace.decoder = decoders.Metaspace(prepend_scheme="first", split=False)
    metaspace.save(str(source / "tokenizer.json"))
    tok = load_chat_tokenizer(source, TEMPLATE)
    (tmp_path / "export").mkdir()
    write_tokenizer_files(load(source), tmp_path / "export", TEMPLATE)
    exported = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "'[INST] ' + message['content']" in exported["chat_template"]
    fast = AutoTokenizer.from_pretrained(tmp_path / "export")
    reference = MistralTokenizer.from_file(str(model), mode=ValidationMode.finetuning)
    spaced = [c for c in chats if any(m.content[:1].isspace() for m in c)]
    assert spaced  # the hand-made "  Привет!\n"
    for number, messages in enumerate(chats[:-1]):
        ids = encode_chat(messages, tok, TEMPLATE).ids
        assert ids == _hf_ids(fast, messages) == _reference_ids(reference, messages), number


def test_auto_and_the_mistral_template_on_inst_tokens(tokenizer: tuple[Path, Path]) -> None:
    """A tokenizer with [INST] / [/INST] tokens and no chat template (Mistral v0.3's, NeMo base's) gets
    mistral-v3, its instruct models' format. `mistral` (v0.1) spelled them out on a SentencePiece
    model, which its export then read as the controls (other ids than training): refused."""
    path, _ = tokenizer
    tok = load(path)
    assert resolve_template(AUTO, tok) == (TEMPLATE, None)
    if tok.byte_level:  # tekken: `mistral` uses the ids (test_sft_templates.py)
        assert load_chat_tokenizer(path, "mistral").piece_to_id("[INST]") == 3
        return
    with pytest.raises(VikhrError, match=r"has \[INST\] / \[/INST\] as tokens .* use --template mistral-v3"):
        load_chat_tokenizer(path, "mistral")


def test_nemo_instruct_is_recognised_and_keeps_system_chats(tmp_path: Path) -> None:
    """A tokenizer carrying Mistral-Nemo-Instruct-2407's template gets mistral-v3 by default: its
    prompts are the template's own (via transformers), and `sft build` keeps a system chat, which
    that template drops from a chat ending in an answer (the own template has to refuse it)."""
    from transformers import AutoTokenizer

    from vikhr.sft.build import build

    nemo = write_tokenizer(tmp_path / "nemo", "nemo", byte_level_bpe("llama3"))
    assert resolve_template(AUTO, load(nemo)) == (TEMPLATE, nemo / "tokenizer_config.json")
    fast, tok = AutoTokenizer.from_pretrained(nemo), load_chat_tokenizer(nemo, TEMPLATE)
    for messages in _handmade_chats():
        prompt = encode_chat(messages[:-1], tok, TEMPLATE, for_generation=True).ids
        assert _hf_ids(fast, messages[:-1], generation=True) == prompt
        if messages[0].role != "system":
            assert _hf_ids(fast, messages) == encode_chat(messages, tok, TEMPLATE).ids
    chats_file = tmp_path / "chats.jsonl"
    chat = [("system", "Отвечай кратко."), ("user", "Привет!"), ("assistant", "Здравствуйте.")]
    chats_file.write_text(json.dumps({"messages": [{"role": r, "content": c} for r, c in chat]}) + "\n")
    config = {
        "output": str(tmp_path / "mix.jsonl"),
        "tokenizer": str(nemo),
        "limits": {"min_tokens": 1, "max_tokens": 100},
        "dedup": {"near": False},
        "sources": [{"name": "a", "path": str(chats_file)}],
    }
    (tmp_path / "build.yaml").write_text(json.dumps(config), encoding="utf-8")
    report = build(tmp_path / "build.yaml")
    assert report["template"] == TEMPLATE and report["sources"][0]["dropped"] == {}
    assert [len(m) for _, m in read_chats(tmp_path / "mix.jsonl")] == [3]


def test_a_tokenizer_without_inst_tokens_is_refused() -> None:
    """Mistral-7B v0.1's vocabulary has no [INST] control tokens: one line naming them."""
    from tests.test_sft import MISTRAL_TOKENIZER

    with pytest.raises(VikhrError, match=r"no \[INST\] / \[/INST\] tokens; the mistral-v3 chat template"):
        load_chat_tokenizer(MISTRAL_TOKENIZER, TEMPLATE)
