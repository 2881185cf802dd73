"""`vikhr eval --chat-template`: prompts in the model's own chat template (lm-eval's
apply_chat_template), on the tiny model of test_eval.py with a plain-text chat template beside its
tokenizer and the bundled task fixtures (tests/data/eval_fixtures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_eval import make_tiny_model, settings_for
from tests.test_eval_mera import FIXTURES
from vikhr.cli import main as cli_main
from vikhr.eval.runner import load_tokenizer, make_lm, run_eval

# Markers in plain text: the tiny model's Mistral tokenizer has no chat tokens.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}<</{{ m['role'] }}>>\n"
    "{% endfor %}{% if add_generation_prompt %}<<assistant>>{% endif %}"
)
TASKS = ["mmlu_ru", "mera_parus", "mera_rutie"]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = make_tiny_model(tmp_path_factory.mktemp("chat") / "tiny")
    (directory / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def chat_lm(chat_dir: Path) -> Any:
    settings = settings_for(chat_dir, [], FIXTURES, chat_template=True)
    return make_lm(settings, load_tokenizer(chat_dir, None))


def _contexts(results: dict[str, Any]) -> dict[str, str]:
    """The first prompt of each task as the model was given it."""
    out = {}
    for task, samples in results["samples"].items():
        first = samples[0]
        out[task] = first["prompt"] if "prompt" in first else first["arguments"][0][0]
    return out


def test_prompts_are_user_turns_and_answers_open_the_assistant_turn(chat_dir: Path, chat_lm: Any) -> None:
    settings = settings_for(
        chat_dir, TASKS, FIXTURES, limit=2, num_fewshot=1, chat_template=True, log_samples=True
    )
    results = run_eval(settings, lm=chat_lm)
    assert results["prompt"] == {
        "chat_template": True,
        "fewshot_as_multiturn": False,
        "system_instruction": None,
    }
    for task, context in _contexts(results).items():
        # One user turn (the shot inside it), then the assistant's header; BOS once, from the template.
        assert context.startswith("<s><<user>>") and context.endswith("<</user>>\n<<assistant>>"), task
        assert context.count("<<user>>") == 1 and context.count("<<assistant>>") == 1, task
        ids = chat_lm.tok_encode(context)
        assert ids[0] == chat_lm.tokenizer.bos_token_id and ids.count(ids[0]) == 1, task
    # The answer is the assistant's first text: no space before it (lm-eval's rule in a chat).
    assert [a[1] for a in results["samples"]["mmlu_ru"][0]["arguments"]] == ["A", "B", "C", "D"]
    # Plain prompts (the default) have none of it, and the answer follows a space.
    plain = run_eval(
        settings_for(chat_dir, TASKS, FIXTURES, limit=2, num_fewshot=1, log_samples=True), lm=chat_lm
    )
    assert not any("<<" in context for context in _contexts(plain).values())
    assert [a[1] for a in plain["samples"]["mmlu_ru"][0]["arguments"]] == [" A", " B", " C", " D"]
    assert "prompts in its chat template" not in json.dumps(plain["prompt"])


def test_shots_as_turns_and_a_system_message(chat_dir: Path, chat_lm: Any, capsys: Any) -> None:
    """--fewshot-as-multiturn: the shots lm-eval draws (rsg_terra's) become turns of their own;
    MMLU's and MERA's shots are part of the prompt as their releases write it, and stay there."""
    settings = settings_for(
        chat_dir,
        ["rsg_terra", "mmlu_ru", "mera_rutie"],
        FIXTURES,
        limit=1,
        num_fewshot=2,
        chat_template=True,
        fewshot_as_multiturn=True,
        system_instruction="Ты — полезный ассистент.",
        log_samples=True,
    )
    contexts = _contexts(run_eval(settings, lm=chat_lm))
    for context in contexts.values():  # lm-eval adds a task's description to the system message
        assert context.startswith("<s><<system>>Ты — полезный ассистент."), context
    assert contexts["rsg_terra"].count("<<user>>") == 3 and contexts["rsg_terra"].count("<<assistant>>") == 3
    assert contexts["mmlu_ru"].count("<<user>>") == 1 and contexts["mmlu_ru"].count("Ответ:") == 3
    assert contexts["mera_rutie"].count("<<user>>") == 1  # one question at a time, no shots
    err = capsys.readouterr().err
    assert "note: --fewshot-as-multiturn: mmlu_ru writes its shots into the prompt" in err


def test_cli_records_the_prompt_format_and_compare_labels_it(
    chat_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    argv = ["eval", "--model", str(chat_dir), "--tasks", "mmlu_ru", "--data-dir", str(FIXTURES)]
    argv += ["--limit", "2", "--device", "cpu"]
    assert cli_main([*argv, "--output", str(tmp_path / "plain.json")]) == 0
    assert cli_main([*argv, "--chat-template", "--output", str(tmp_path / "chat.json")]) == 0
    chat = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    assert chat["prompt"]["chat_template"] is True
    assert ", prompts in its chat template" in (tmp_path / "chat.md").read_text(encoding="utf-8")
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert (
        cli_main(
            ["eval", "compare", str(tmp_path / "plain.json"), str(tmp_path / "chat.json"), "--out", str(out)]
        )
        == 0
    )
    rows = (out / "compare.csv").read_text(encoding="utf-8").splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["tiny (limit 2)", "tiny (chat) (limit 2)"]


def test_prompt_options_need_a_template(chat_dir: Path, tmp_path: Path, capsys: Any) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(chat_dir, bare)
    (bare / "chat_template.jinja").unlink()
    base = ["eval", "--tasks", "mera_parus", "--data-dir", str(FIXTURES), "--limit", "1", "--device", "cpu"]
    cases = [
        (["--model", str(bare), "--chat-template"], f"--chat-template: {bare} holds no chat template"),
        (["--model", str(chat_dir), "--fewshot-as-multiturn"], "--fewshot-as-multiturn shapes the chat"),
        (["--model", str(chat_dir), "--system-instruction", "x"], "--system-instruction shapes the chat"),
        (
            ["--model", str(chat_dir), "--chat-template", "--system-instruction", " "],
            "--system-instruction is empty",
        ),
    ]
    for extra, message in cases:
        assert cli_main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)


def _lm_with(template: str, chat_dir: Path, directory: Path) -> Any:
    shutil.copytree(chat_dir, directory)
    (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
    return make_lm(settings_for(directory, [], FIXTURES, chat_template=True), load_tokenizer(directory, None))


def test_an_answer_is_scored_where_the_templates_answers_begin(chat_dir: Path, tmp_path: Path) -> None:
    """The prompt ends with what the template writes before an answer's text: vikhr's mistral a
    space (so " да" is scored as the SFT data trained it, "▁да"), Qwen3 its empty thinking block."""
    from vikhr.sft.hf_chat import HF_CHAT_TEMPLATES
    from vikhr.sft.template import encode_chat, load_chat_tokenizer, parse_chat

    lm = _lm_with(HF_CHAT_TEMPLATES["mistral"], chat_dir, tmp_path / "mistral")
    context = lm.apply_chat_template([{"role": "user", "content": "Вопрос?"}])
    assert context.endswith("[/INST] ")
    tok = load_chat_tokenizer(tmp_path / "mistral", "mistral")
    chat = parse_chat(
        {"messages": [{"role": "user", "content": "Вопрос?"}, {"role": "assistant", "content": "да"}]}
    )
    trained = encode_chat(chat, tok, "mistral")
    answer = [i for i, m in zip(trained.ids, trained.mask, strict=True) if m][:-1]  # without </s>
    context_ids, continuation_ids = lm._encode_pair(context, "да")
    assert continuation_ids == answer and context_ids == trained.ids[: len(context_ids)]

    qwen3 = _lm_with(HF_CHAT_TEMPLATES["qwen3"], chat_dir, tmp_path / "qwen3")
    context = qwen3.apply_chat_template([{"role": "user", "content": "Вопрос?"}])
    assert context.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_a_generation_prompt_gives_the_ids_the_sft_data_trains_before_an_answer(
    chat_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vikhr's mistral writes "[/INST] " before an answer: a generation prompt ended in a lone "▁"
    (SFT trains "▁Пушкин"), and lm-eval's batch encoding added a BOS the template did not write."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from vikhr.sft.hf_chat import HF_CHAT_TEMPLATES
    from vikhr.sft.template import encode_chat, load_chat_tokenizer, parse_chat

    lm = _lm_with(HF_CHAT_TEMPLATES["mistral"], chat_dir, tmp_path / "mistral")
    seen: list[Any] = []
    monkeypatch.setattr(
        HFLM, "generate_until", lambda self, requests, disable_tqdm=False: seen.extend(requests)
    )
    context = lm.apply_chat_template([{"role": "user", "content": "Кто написал «Онегина»?"}])
    lm.generate_until([Instance("generate_until", {}, (context, {"until": ["\n"]}), 0)])
    prompt = seen[0].args[0]
    tok = load_chat_tokenizer(tmp_path / "mistral", "mistral")
    chat = parse_chat(
        {
            "messages": [
                {"role": "user", "content": "Кто написал «Онегина»?"},
                {"role": "assistant", "content": "Пушкин"},
            ]
        }
    )
    trained = encode_chat(chat, tok, "mistral")
    before_answer = trained.ids[: trained.mask.index(1)]
    assert lm.tok_encode(prompt) == before_answer
    batch, _ = lm.tok_batch_encode([prompt])
    assert batch[0].tolist() == before_answer  # one BOS, the template's

    bosless = _lm_with(
        "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<<a>>{% endif %}",
        chat_dir,
        tmp_path / "bosless",
    )
    batch, _ = bosless.tok_batch_encode(["<<user>>Вопрос?<<a>>"])
    assert batch[0].tolist() == bosless.tok_encode("<<user>>Вопрос?<<a>>")
    assert batch[0, 0] != bosless.tokenizer.bos_token_id


@pytest.mark.parametrize("template", ["llama3", "chatml"])
def test_the_templates_text_before_an_answer_is_not_scored(template: str, tmp_path: Path) -> None:
    """Llama-3's "\n\n" after the assistant header (ChatML's "\n") is a token of its own: lm-eval
    moved it into the scored continuation, so every choice was scored on it too (acc_norm shifted).
    The split is now the SFT mask's: context = the template's tokens, continuation = the answer's."""
    from tests.helpers import tiny_hf_model
    from tests.test_sft_templates import byte_level_bpe, write_model_tokenizer
    from vikhr.sft.template import encode_chat, load_chat_tokenizer, parse_chat

    directory = write_model_tokenizer(tmp_path / template, byte_level_bpe("llama3"), template)
    tok = load_chat_tokenizer(directory, template)
    tiny_hf_model(directory, vocab_size=tok.vocab_size, arch="llama")
    lm = make_lm(settings_for(directory, [], FIXTURES, chat_template=True), load_tokenizer(directory, None))
    question = [{"role": "system", "content": "Кратко."}, {"role": "user", "content": "Столица Франции?"}]
    context = lm.apply_chat_template(question)
    trained = encode_chat(
        parse_chat({"messages": [*question, {"role": "assistant", "content": "Париж"}]}), tok, template
    )
    answer_at = trained.mask.index(1)
    context_ids, continuation_ids = lm._encode_pair(context, "Париж")
    assert context_ids == trained.ids[:answer_at]
    assert continuation_ids == trained.ids[answer_at : answer_at + len(continuation_ids)]
    assert all(trained.mask[answer_at : answer_at + len(continuation_ids)])


def test_generation_stops_at_the_templates_end_of_turn(
    chat_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ChatML on a tokenizer without its tokens: <|im_end|> is text, and a stop of its own."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from vikhr.sft.hf_chat import HF_CHAT_TEMPLATES

    lm = _lm_with(HF_CHAT_TEMPLATES["chatml"], chat_dir, tmp_path / "chatml")
    seen: list[Any] = []
    monkeypatch.setattr(
        HFLM, "generate_until", lambda self, requests, disable_tqdm=False: seen.extend(requests)
    )
    request = Instance("generate_until", {}, ("prompt", {"until": ["\n"], "max_gen_toks": 4}), 0)
    lm.generate_until([request])
    assert seen[0].args[1]["until"] == ["\n", "<|im_end|>"]


def test_a_template_without_system_role_gets_the_system_text_in_the_user_turn(
    chat_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    """lm-eval drops a system turn such a template refuses (the task's description with it); here
    it opens the first user turn, and a note says so once. A template without BOS gets none."""
    refuses = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}<<{{ m['role'] }}>>{{ m['content'] }}"
        "{% endfor %}{% if add_generation_prompt %}<<a>>{% endif %}"
    )
    lm = _lm_with(refuses, chat_dir, tmp_path / "gemma-like")
    chat = [{"role": "system", "content": "Будь краток."}, {"role": "user", "content": "Вопрос?"}]
    assert lm.apply_chat_template(chat) == "<<user>>Будь краток.\n\nВопрос?<<a>>"
    lm.apply_chat_template(chat)
    assert capsys.readouterr().err.count("the template refuses a system turn") == 1
    assert lm.tok_encode("<<user>>Вопрос?<<a>>")[0] != lm.tokenizer.bos_token_id  # as the template writes it


def test_a_rerun_with_another_template_beside_the_tokenizer_file_runs_again(
    chat_dir: Path, tmp_path: Path
) -> None:
    from vikhr.eval.progress import TaskProgress

    directory = tmp_path / "model"
    shutil.copytree(chat_dir, directory)
    settings = settings_for(
        directory, ["mmlu_ru"], FIXTURES, chat_template=True, tokenizer=directory / "tokenizer.json"
    )
    before = TaskProgress(tmp_path / "progress", settings)._fingerprint("mmlu_ru", [])
    (directory / "chat_template.jinja").write_text(TEMPLATE.replace("<<user>>", "<<u>>"), encoding="utf-8")
    assert TaskProgress(tmp_path / "progress", settings)._fingerprint("mmlu_ru", []) != before


def test_a_template_that_does_not_render_is_one_line_before_the_model_loads(
    chat_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(chat_dir, broken)
    (broken / "chat_template.jinja").write_text("{{ messages[0]['content'] }", encoding="utf-8")
    argv = [
        "eval",
        "--model",
        str(broken),
        "--tasks",
        "mmlu_ru",
        "--data-dir",
        str(FIXTURES),
        "--chat-template",
    ]
    assert cli_main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chat_template.jinja: the chat template does not render a chat" in err[0], err


def test_a_template_writing_todays_date_gets_the_date_the_model_was_tuned_with(
    chat_dir: Path, tmp_path: Path
) -> None:
    """Llama-3.2's template writes today's date (strftime_now): prompts, and so scores, changed with
    the day of the run, and differed from the SFT data (sft prepare fixes the date)."""
    from vikhr.sft.own_template import FIXED_DATE

    dated = (
        "{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
        "{{ bos_token + 'Today Date: ' + date_string + '\\n' }}{% for m in messages %}<<{{ m['role'] }}>>"
        "{{ m['content'] }}<</{{ m['role'] }}>>\n{% endfor %}{% if add_generation_prompt %}<<assistant>>"
        "{% endif %}"
    )
    lm = _lm_with(dated, chat_dir, tmp_path / "dated")
    context = lm.apply_chat_template([{"role": "user", "content": "Вопрос?"}])
    assert context == f"<s>Today Date: {FIXED_DATE}\n<<user>>Вопрос?<</user>>\n<<assistant>>"
