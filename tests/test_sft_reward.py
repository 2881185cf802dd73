"""Reward-model scores: batched = one by one, resumable, kept beside the data; threshold/top-fraction cuts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO
from vikhr.sft.build import build
from vikhr.sft.reward import RewardModel, chat_key, keep_mask, load_scores, reward_scorer, score_file

MISTRAL = REPO / "vikhr" / "assets" / "tokenizers" / "mistral-7b-v0.1.model"
QUESTIONS = [
    "Как называется столица Франции?",
    "Сколько ног у паука?",
    "Назови три основных цвета.",
    "Что такое фотосинтез?",
    "Переведи на английский: кошка спит.",
    "Сколько будет дважды два?",
    "Кто написал «Войну и мир»?",
    "Какая самая длинная река в Европе?",
    "Придумай название для кофейни.",
    "Объясни, зачем нужен иммунитет.",
    "Почему небо голубое?",
    "Назови любой простой делитель числа 91.",
    "Как по-русски будет hello?",
]
ANSWERS = [
    "Париж.",
    "Восемь.",
    "Красный, синий, жёлтый.",
    "Это процесс, при котором растения на свету делают сахар.",
    "The cat is sleeping.",
    "Четыре.",
    "Лев Толстой.",
    "Волга.",
    "«Зерно».",
    "Чтобы защищать организм от болезней.",
    "Из-за рассеяния света.",
    "7 или 13.",
    "Привет.",
]


def _reward_model(
    path: Path,
    chat_template: str | None = None,
    seed: int = 0,
    specials: bool = True,
    gpt2_positions: int = 0,
    bos_eos: bool = False,
) -> Path:
    """A random tiny Llama reward model (num_labels=1) with a small BPE tokenizer trained here
    (`specials`: with BOS/EOS/UNK tokens; `gpt2_positions`: a GPT-2 of that many positions instead;
    `bos_eos`: the tokenizer writes BOS and EOS around a text, as its special tokens)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
    backend.train_from_iterator(QUESTIONS + ANSWERS + ["User Assistant System"], trainer)
    if bos_eos:
        specials_ids = [("<s>", backend.token_to_id("<s>")), ("</s>", backend.token_to_id("</s>"))]
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=specials_ids
        )
    names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"} if specials else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **names)
    if chat_template is not None:
        tok.chat_template = chat_template
    torch.manual_seed(seed)
    if gpt2_positions:
        from transformers import GPT2Config, GPT2ForSequenceClassification

        gpt2 = GPT2Config(
            vocab_size=backend.get_vocab_size(), n_embd=32, n_layer=1, n_head=2, n_positions=gpt2_positions
        )
        gpt2.num_labels = 1
        GPT2ForSequenceClassification(gpt2).save_pretrained(path)
        tok.save_pretrained(path)
        return path
    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=1,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _reward_model(tmp_path_factory.mktemp("rm") / "model")


def _write_chats(path: Path, n: int = len(QUESTIONS), source: str = "s") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            messages = [
                {"role": "user", "content": QUESTIONS[i]},
                {"role": "assistant", "content": ANSWERS[i]},
            ]
            f.write(
                json.dumps(
                    {"id": f"{source}/{i}", "source": source, "messages": messages}, ensure_ascii=False
                )
            )
            f.write("\n")
    return path


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i]}, {"role": "assistant", "content": ANSWERS[i]}]


@pytest.mark.parametrize(
    "template", [None, "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"]
)
def test_batched_scores_equal_one_by_one_and_repeat(tmp_path: Path, template: str | None) -> None:
    model_dir = _reward_model(tmp_path / "rm", template)
    chats = _write_chats(tmp_path / "chats.jsonl")
    assert score_file(chats, model_dir, tmp_path / "a.jsonl", batch_size=4, progress=False).scored == len(
        QUESTIONS
    )
    assert score_file(chats, model_dir, tmp_path / "b.jsonl", batch_size=4, progress=False).scored == len(
        QUESTIONS
    )
    a, b = load_scores(tmp_path / "a.jsonl"), load_scores(tmp_path / "b.jsonl")
    assert a == b  # deterministic
    model = RewardModel(reward_scorer(model_dir), "cpu")
    if template is not None:
        assert model.render(_messages(0)) == f"<s>user: {QUESTIONS[0]}</s><s>assistant: {ANSWERS[0]}</s>"
    one_by_one = [model.score([_messages(i)])[0] for i in range(len(QUESTIONS))]
    batched = [a[chat_key(_messages(i))] for i in range(len(QUESTIONS))]
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-5)
    assert np.std(batched) > 0  # the chats get different scores
    # Every line names the chat.
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"s/{i}" for i in range(len(QUESTIONS))]


def test_a_stopped_scoring_run_resumes_without_rescoring(
    tmp_path: Path, reward_dir: Path, monkeypatch
) -> None:
    chats = _write_chats(tmp_path / "chats.jsonl")
    full = tmp_path / "full.jsonl"
    score_file(chats, reward_dir, full, batch_size=3, progress=False)
    calls: list[int] = []
    original = RewardModel.score

    def stop_after_two_batches(self, batch):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the run were killed while scoring the third batch
        calls.append(len(batch))
        return original(self, batch)

    resumed = tmp_path / "resumed.jsonl"
    monkeypatch.setattr(RewardModel, "score", stop_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        score_file(chats, reward_dir, resumed, batch_size=3, progress=False)
    assert len(load_scores(resumed)) == 6
    with open(resumed, "a", encoding="utf-8") as f:
        f.write('{"key": "half a li')  # a line cut short by the kill
    scored: list[list[str]] = []

    def counting(self, batch):
        scored.append([m[0]["content"] for m in batch])
        return original(self, batch)

    monkeypatch.setattr(RewardModel, "score", counting)
    assert score_file(chats, reward_dir, resumed, batch_size=3, progress=False).scored == len(QUESTIONS) - 6
    assert sorted(q for batch in scored for q in batch) == sorted(QUESTIONS[6:])
    final, reference = load_scores(resumed), load_scores(full)
    assert final.keys() == reference.keys()
    np.testing.assert_allclose([final[k] for k in reference], list(reference.values()), atol=1e-5)
    assert score_file(chats, reward_dir, resumed, batch_size=3, progress=False).scored == 0  # nothing left


def test_a_second_scoring_run_on_one_scores_file_is_refused(tmp_path: Path, reward_dir: Path) -> None:
    """Two runs appending to one scores file scored every chat twice and could interleave their
    lines; the second is refused in one line naming the first, before loading anything."""
    import os

    from vikhr.errors import VikhrError
    from vikhr.locks import exclusive

    chats = _write_chats(tmp_path / "chats.jsonl")
    scores = tmp_path / "scores.jsonl"
    first_run = exclusive(Path(f"{scores}.lock"), "held by {holder}", remove=True)
    refused = pytest.raises(VikhrError, match=rf"written by another sft score run \(pid {os.getpid()} on")
    with first_run, refused:
        score_file(chats, reward_dir, scores, batch_size=3, progress=False)
    assert not scores.exists()
    assert score_file(chats, reward_dir, scores, batch_size=3, progress=False).scored == len(QUESTIONS)
    assert not Path(f"{scores}.lock").exists()


def test_keep_mask_threshold_and_top_fraction() -> None:
    scores = [0.5, -1.0, 2.0, 0.5, 0.1]
    keep, cut = keep_mask(scores, 0.5, None)
    assert keep.tolist() == [True, False, True, True, False] and cut == 0.5
    keep, cut = keep_mask(scores, None, 0.4)  # 2 of 5: 2.0 and the earlier 0.5
    assert keep.tolist() == [True, False, True, False, False] and cut == 0.5
    keep, _ = keep_mask(scores, None, None)
    assert keep.all()


def test_build_cuts_each_source_by_its_reward_scores(tmp_path: Path, reward_dir: Path, monkeypatch) -> None:
    (tmp_path / "a").mkdir()
    a = _write_chats(tmp_path / "a" / "a.jsonl", 8, "a")
    b = tmp_path / "b.jsonl"
    with open(b, "w", encoding="utf-8") as f:  # the remaining questions, Alpaca layout
        for i in range(8, len(QUESTIONS)):
            f.write(json.dumps({"instruction": QUESTIONS[i], "input": "", "output": ANSWERS[i]}) + "\n")
    scores = tmp_path / "scores.jsonl"
    cfg = {
        "output": str(tmp_path / "out" / "chats.jsonl"),
        "tokenizer": str(MISTRAL),
        "limits": {"min_tokens": 1, "max_tokens": 512},
        "reward": {"model": str(reward_dir), "scores": str(scores), "top_fraction": 0.5, "batch_size": 4},
        "sources": [{"name": "a", "path": str(a)}, {"name": "b", "path": str(b), "reward_threshold": -1e9}],
    }
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    report = build(config)
    values = load_scores(scores)
    assert len(values) == len(QUESTIONS)
    a_scores = [values[chat_key(_messages(i))] for i in range(8)]
    best_four = set(np.argsort(a_scores)[::-1][:4].tolist())
    written = [json.loads(x) for x in (tmp_path / "out" / "chats.jsonl").read_text().splitlines()]
    assert {int(r["id"].rsplit("/", 1)[1]) for r in written if r["source"] == "a"} == best_four
    assert sum(r["source"] == "b" for r in written) == len(QUESTIONS) - 8  # its own threshold keeps all
    by_name = {s["name"]: s for s in report["sources"]}
    assert by_name["a"]["kept"] == 4 and by_name["a"]["dropped"] == {"reward": 4}
    assert report["reward"]["sources"]["a"] == {"scored": 8, "cut": sorted(a_scores)[4], "kept": 4}
    png = tmp_path / "out" / "chats.jsonl.scores.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![scores](chats.jsonl.scores.png)" in (tmp_path / "out" / "chats.jsonl.report.md").read_text()
    # A second build with another cut reads the scores instead of scoring again.
    monkeypatch.setattr(RewardModel, "__init__", lambda *a, **k: pytest.fail("scored again"))
    cfg["reward"]["top_fraction"] = 0.25
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    assert {s["name"]: s["kept"] for s in build(config)["sources"]} == {"a": 2, "b": 5}


def test_a_later_sources_copy_of_a_chat_the_reward_cut_drops_stays_a_duplicate(
    tmp_path: Path, reward_dir: Path
) -> None:
    """Duplicates are removed before the reward cut: a later source's copy of a chat that the cut
    then drops is not in the mix either: it is counted as a duplicate of that chat, which its report
    example names (docs/sft.md, "What happens, in order")."""
    a = _write_chats(tmp_path / "a.jsonl", 8, "a")
    scores = tmp_path / "scores.jsonl"
    cfg = {
        "output": str(tmp_path / "out" / "chats.jsonl"),
        "tokenizer": str(MISTRAL),
        "limits": {"min_tokens": 1, "max_tokens": 512},
        "reward": {"model": str(reward_dir), "scores": str(scores), "top_fraction": 0.5, "batch_size": 4},
        "sources": [{"name": "a", "path": str(a)}],
    }
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    build(config)
    values = load_scores(scores)
    order = np.argsort([values[chat_key(_messages(i))] for i in range(8)])
    cut, kept = int(order[0]), int(order[-1])  # the worst chat of a, and its best
    b = tmp_path / "b.jsonl"
    with open(b, "w", encoding="utf-8") as f:  # a's two chats again, upper-cased: exact duplicates
        for i in (cut, kept):
            record = {"instruction": QUESTIONS[i].upper(), "input": "", "output": ANSWERS[i].upper()}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    cfg["sources"].append({"name": "b", "path": str(b), "reward_threshold": -1e9})
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    report = build(config)
    written = [json.loads(x) for x in (tmp_path / "out" / "chats.jsonl").read_text().splitlines()]
    assert {r["id"] for r in written} == {f"a/a/{i}" for i in order[4:].tolist()}
    by_name = {s["name"]: s for s in report["sources"]}
    assert by_name["a"]["dropped"] == {"reward": 4}
    assert by_name["b"]["kept"] == 0 and by_name["b"]["dropped"] == {"duplicate": 2}
    assert by_name["b"]["examples"]["duplicate"][0] == f"{b}:1: repeats {a}:{cut + 1} (a/a/{cut})"


def test_build_cuts_function_calling_chats_by_the_scores_of_their_plain_turns(
    tmp_path: Path, reward_dir: Path
) -> None:
    """A build with `reward:` looked a chat's score up under the key of its raw messages, which for a
    chat with function calls is not the key `score_file` wrote (its plain turns): a KeyError after
    scoring, the build lost."""
    from vikhr.sft.reward import scored_messages

    chats = _write_chats(tmp_path / "a.jsonl", 4, "a")
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Москва"}'}}
    weather = {"name": "get_weather", "parameters": {"type": "object"}}
    tool_chat = {
        "tools": [{"type": "function", "function": weather}],
        "messages": [
            {"role": "user", "content": "Какая погода в Москве?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "+21, ясно"},
            {"role": "assistant", "content": "В Москве +21 и ясно."},
        ],
    }
    tools = tmp_path / "tools.jsonl"
    tools.write_text(json.dumps(tool_chat, ensure_ascii=False) + "\n", encoding="utf-8")
    scores = tmp_path / "scores.jsonl"
    cfg = {
        "output": str(tmp_path / "out" / "chats.jsonl"),
        "tokenizer": str(MISTRAL),
        "template": "chatml",
        "limits": {"min_tokens": 1, "max_tokens": 512},
        "reward": {"model": str(reward_dir), "scores": str(scores), "threshold": -1e9},
        "sources": [{"name": "a", "path": str(chats)}, {"name": "t", "path": str(tools)}],
    }
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    report = build(config)
    assert {s["name"]: s["kept"] for s in report["sources"]} == {"a": 4, "t": 1}
    written = [json.loads(x) for x in (tmp_path / "out" / "chats.jsonl").read_text().splitlines()]
    assert written[-1]["messages"][1]["tool_calls"] == [call]
    turns = scored_messages(written[-1])
    assert [m["role"] for m in turns] == ["user", "assistant", "user", "assistant"]
    assert "get_weather" in turns[1]["content"] and chat_key(turns) in load_scores(scores)


def test_a_reward_cut_that_keeps_no_chat_is_one_line_and_writes_no_mix(
    tmp_path: Path, reward_dir: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A threshold above every score wrote an empty mix, exit 0 (a build keeping no chat before the cut
    is one line); the scores stay, so a build with another cut does not score again."""
    from vikhr.cli import main

    source = _write_chats(tmp_path / "a.jsonl", 6, "a")
    scores, out = tmp_path / "scores.jsonl", tmp_path / "out"
    cfg = {
        "output": str(out / "chats.jsonl"),
        "tokenizer": str(MISTRAL),
        "limits": {"min_tokens": 1, "max_tokens": 512},
        "reward": {"model": str(reward_dir), "scores": str(scores), "threshold": 1e9},
        "sources": [{"name": "a", "path": str(source)}],
    }
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    capfd.readouterr()
    assert main(["sft", "build", str(config), "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert (
        len(err.strip().splitlines()) == 1 and "the reward cut leaves no chat to write (reward 6;" in err
    ), err
    assert not out.exists() or not any(out.iterdir())
    assert len(load_scores(scores)) == 6
    monkeypatch.setattr(RewardModel, "__init__", lambda *a, **k: pytest.fail("scored again"))
    cfg["reward"]["threshold"] = -1e9
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert build(config)["kept"] == 6


def test_build_refuses_reward_scores_that_are_a_file_it_reads_or_writes(
    tmp_path: Path, reward_dir: Path, capfd: pytest.CaptureFixture
) -> None:
    """reward.scores naming a source (its last line without a newline) cost the source its last chat."""
    from vikhr.cli import main

    source = _write_chats(tmp_path / "a.jsonl", 6, "a")
    source.write_bytes(source.read_bytes().rstrip(b"\n"))
    config, output = tmp_path / "build.yaml", tmp_path / "out" / "chats.jsonl"
    cases = [
        (source, "is a file of source a: scores would be appended"),
        (config, "is the config file"),
        (output, "is the output"),
        (tmp_path / "scores.jsonl.gz", "not .gz-compressed"),
    ]
    for scores, message in cases:
        cfg = {
            "output": str(output),
            "tokenizer": str(MISTRAL),
            "limits": {"min_tokens": 1, "max_tokens": 512},
            "reward": {"model": str(reward_dir), "scores": str(scores), "top_fraction": 0.5},
            "sources": [{"name": "a", "path": str(source)}],
        }
        config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        before = {p: p.read_bytes() for p in (source, config)}
        capfd.readouterr()
        assert main(["sft", "build", str(config), "--no-progress"]) == 2
        out, err = capfd.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
        assert {p: p.read_bytes() for p in before} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "build.yaml"]


def test_a_model_with_several_outputs_is_refused(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from vikhr.errors import VikhrError

    model_dir = _reward_model(tmp_path / "rm")
    config = LlamaConfig.from_pretrained(model_dir)
    config.num_labels = 2
    LlamaForSequenceClassification(config).save_pretrained(model_dir)
    with pytest.raises(VikhrError, match="one output"):
        RewardModel(reward_scorer(model_dir), "cpu")


def test_a_directory_that_is_not_a_reward_model_is_one_line(
    tmp_path: Path, reward_dir: Path, capfd: pytest.CaptureFixture
) -> None:
    """Checked from the files before transformers loads anything (and prints its load report)."""
    from tests.test_eval import make_tiny_model
    from vikhr.cli import main
    from vikhr.errors import VikhrError

    causal = make_tiny_model(tmp_path / "causal")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(reward_dir / f, no_tokenizer / f)
    truncated = tmp_path / "truncated"
    shutil.copytree(reward_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cases = [
        (causal, "cpu", 2048, "are not a reward model's"),
        (no_tokenizer, "cpu", 2048, "its tokenizer does not load"),
        (truncated, "cpu", 2048, "model.safetensors"),
        (reward_dir, "tpu", 2048, "device 'tpu' is not one of auto, cpu, cuda, cuda:N"),
        (reward_dir, "cpu", 0, "max length (tokens per chat) must be >= 1"),
    ]
    for model_dir, device, max_length, message in cases:
        with pytest.raises(VikhrError, match=re.escape(message)):
            RewardModel(reward_scorer(model_dir, max_length), device)
    chats = _write_chats(tmp_path / "chats.jsonl", 2)
    scores = tmp_path / "scores.jsonl"
    capfd.readouterr()
    args = ["sft", "score", "--input", str(chats), "--scores", str(scores), "--no-progress"]
    assert main([*args, "--model", str(causal)]) == 2
    out, err = capfd.readouterr()
    assert len(err.strip().splitlines()) == 1 and "are not a reward model's" in err and out == ""
    assert main([*args, "--model", str(reward_dir), "--max-length", "0"]) == 2
    assert "max length" in capfd.readouterr()[1] and not scores.exists()


def test_score_command_and_its_errors(tmp_path: Path, reward_dir: Path, capfd: pytest.CaptureFixture) -> None:
    from vikhr.cli import main

    chats = _write_chats(tmp_path / "chats.jsonl", 5)
    scores = tmp_path / "scores.jsonl"
    args = ["sft", "score", "--input", str(chats), "--model", str(reward_dir), "--scores", str(scores)]
    capfd.readouterr()
    assert main([*args, "--batch-size", "2", "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert out.startswith(f"{scores}: 5 chats: 5 scored now; scores min ") and len(load_scores(scores)) == 5
    assert "it/s" not in err  # transformers' bar over the weights it loads: none either
    assert main([*args, "--no-progress"]) == 0
    # a second run resumes: nothing left, and it says why
    assert capfd.readouterr()[0].startswith(f"{scores}: 5 chats: 0 scored now; 5 already in the file; ")
    _write_chats(tmp_path / "more.jsonl", 7)
    missing = ["sft", "score", "--input", str(tmp_path / "more.jsonl"), "--model", str(tmp_path / "nope")]
    assert main([*missing, "--scores", str(scores), "--no-progress"]) == 2
    err = capfd.readouterr()[1].strip().splitlines()
    assert len(err) == 1 and "reward model directory not found" in err[0]
    assert len(load_scores(scores)) == 5  # nothing appended


def _spread_said(line: str) -> list[float]:
    said = re.search(r"; scores min (\S+), 25% (\S+), median (\S+), 75% (\S+), max (\S+)$", line.strip())
    assert said is not None, line
    return [float(v) for v in said.groups()]


def test_the_score_summary_counts_lines_and_distinct_chats_and_gives_the_spread(
    tmp_path: Path, reward_dir: Path, capfd: pytest.CaptureFixture
) -> None:
    """The summary said "0 chats scored (N already in the file)" of an input with repeated chats or of
    a file holding other inputs' scores: it counts the input's lines and distinct chats, those of them
    the file held, and gives min / quartiles / max of their scores (each distinct chat once)."""
    from vikhr.cli import main

    chats = _write_chats(tmp_path / "chats.jsonl", 8)
    lines = chats.read_text(encoding="utf-8").splitlines(keepends=True)
    chats.write_text("".join(lines + lines[:3]), encoding="utf-8")  # 11 lines, 8 distinct chats
    scores = tmp_path / "scores.jsonl"
    args = ["sft", "score", "--model", str(reward_dir), "--scores", str(scores), "--no-progress"]
    capfd.readouterr()
    assert main([*args, "--input", str(chats)]) == 0
    first = capfd.readouterr()[0]
    assert first.startswith(f"{scores}: 11 chats (8 distinct): 8 scored now; scores min ")
    assert main([*args, "--input", str(chats)]) == 0
    again = capfd.readouterr()[0]
    assert again.startswith(f"{scores}: 11 chats (8 distinct): 0 scored now; 8 already in the file; ")
    stored = load_scores(scores)
    values = np.array([stored[chat_key(_messages(i))] for i in range(8)])
    assert len(set(values.tolist())) == 8
    expected = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
    assert _spread_said(first) == _spread_said(again) == pytest.approx(expected, rel=1e-3)
    fewer = _write_chats(tmp_path / "fewer.jsonl", 3)  # the file holds 5 scores of other chats
    assert main([*args, "--input", str(fewer)]) == 0
    out = capfd.readouterr()[0]
    assert out.startswith(f"{scores}: 3 chats: 0 scored now; 3 already in the file; ")
    assert _spread_said(out) == pytest.approx(np.quantile(values[:3], [0, 0.25, 0.5, 0.75, 1]), rel=1e-3)


def test_a_scores_file_that_is_no_scores_file_is_refused_unchanged(
    tmp_path: Path, reward_dir: Path, capfd: pytest.CaptureFixture
) -> None:
    """The last line of a file without its newline was cut before the file was found to hold no
    scores: --scores naming the chats lost the last chat, a .gz file lost its end; a new .gz name
    got plain JSON that the next run could not read."""
    import gzip

    from vikhr.cli import main
    from vikhr.errors import VikhrError

    chats = _write_chats(tmp_path / "chats.jsonl", 5)
    chats.write_bytes(chats.read_bytes().rstrip(b"\n"))  # the last chat without its newline
    packed = tmp_path / "en.jsonl.gz"
    packed.write_bytes(gzip.compress(chats.read_bytes()))
    hidden = tmp_path / "hidden.jsonl"  # gzip data under a plain name
    hidden.write_bytes(packed.read_bytes())
    note = tmp_path / "note.txt"
    note.write_bytes(b"one line without a newline")
    cases = [
        (chats, "is the chats file"),
        (packed, "not .gz-compressed (give a name without .gz"),
        (tmp_path / "new.jsonl.zst", "not .zst-compressed"),
        (hidden, "holds gzip-compressed data"),
        (note, "its last line, without a newline, is not the start of a score"),
        (tmp_path, "is a directory"),
    ]
    before = {p: p.read_bytes() for p, _ in cases if p.is_file()}
    base = ["sft", "score", "--input", str(chats), "--model", str(reward_dir), "--device", "cpu"]
    for scores, message in cases:
        capfd.readouterr()
        assert main([*base, "--scores", str(scores), "--no-progress"]) == 2
        out, err = capfd.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "new.jsonl.zst").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in before)
    with pytest.raises(VikhrError, match=r"chats\.jsonl:1: expected \{'key': str"):
        load_scores(chats)
    assert chats.read_bytes() == before[chats]


def test_a_long_chat_is_scored_on_its_answer(tmp_path: Path, reward_dir: Path) -> None:
    """Cut on the right, two chats with one long prompt got the same score whatever the answer."""
    prompt = " ".join(QUESTIONS)
    chats = tmp_path / "long.jsonl"
    chats.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": a}]}
            )
            + "\n"
            for a in (ANSWERS[0], ANSWERS[3])
        ),
        encoding="utf-8",
    )
    run = score_file(chats, reward_dir, tmp_path / "s.jsonl", max_length=24, progress=False)
    assert (run.scored, run.cut, run.before) == (2, 2, 0)
    first, second = load_scores(tmp_path / "s.jsonl").values()
    assert first != second


def test_a_very_long_chat_is_tokenized_from_its_tail_with_the_same_score(
    tmp_path: Path, reward_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the last max_length × TAIL_CHARS_PER_TOKEN characters of a huge chat are tokenized (the
    whole text was, for 30 s and GBs at 10 MB), and its score is the one of the whole text."""
    import vikhr.sft.reward as reward

    model = RewardModel(reward_scorer(reward_dir, max_length=32), "cpu")
    long = [
        {"role": "user", "content": " ".join(QUESTIONS * 40)},
        {"role": "assistant", "content": ANSWERS[2]},
    ]
    short = [
        {"role": "user", "content": QUESTIONS[1]},
        {"role": "assistant", "content": " ".join(ANSWERS * 3)},
    ]
    spaced = _messages(3)  # long in characters, not in tokens: tokenized whole
    spaced[0]["content"] = QUESTIONS[3] + " " * 3000
    seen: list[int] = []
    tokenize = model.tokenizer.__class__.__call__

    def spy(tok, texts, *args, **kwargs):
        seen.extend(len(t) for t in ([texts] if isinstance(texts, str) else texts))
        return tokenize(tok, texts, *args, **kwargs)

    monkeypatch.setattr(model.tokenizer.__class__, "__call__", spy)
    tail_scores = model.score([long, short, spaced])
    whole_spaced = len(model.render(spaced))
    assert max(n for n in seen if n != whole_spaced) <= 32 * reward.TAIL_CHARS_PER_TOKEN
    assert whole_spaced in seen and len(model.render(long)) > 32 * reward.TAIL_CHARS_PER_TOKEN
    monkeypatch.setattr(reward, "TAIL_CHARS_PER_TOKEN", 10**9)  # every text whole
    seen.clear()
    assert model.score([long, short, spaced]) == tail_scores
    assert max(seen) == len(model.render(long))


@pytest.mark.parametrize(
    "template", [None, "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"]
)
def test_each_chat_is_tokenized_once_and_scored_on_the_tokenizers_own_cut_and_padding(
    tmp_path: Path, template: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chat was tokenized twice, once for its length and once for the model. The ids of the one
    pass, cut and padded by vikhr, are those the tokenizer's own left truncation (its BOS and EOS
    kept) and right padding give, and so are the scores."""
    import torch

    model_dir = _reward_model(tmp_path / "rm", template, bos_eos=True)
    model = RewardModel(reward_scorer(model_dir, max_length=12), "cpu")
    chats = [_messages(i) for i in range(6)]
    chats.append(
        [{"role": "user", "content": " ".join(QUESTIONS[:4])}, {"role": "assistant", "content": ANSWERS[1]}]
    )
    texts = [model.render(c) for c in chats]
    tok = model.tokenizer
    tok.padding_side, tok.truncation_side = "right", "left"
    expected = tok(
        texts,
        padding=True,
        truncation=True,
        max_length=12,
        add_special_tokens=template is None,
        return_tensors="pt",
    )
    if template is None:
        assert (
            expected["input_ids"][-1, 0] == tok.bos_token_id and tok.eos_token_id in expected["input_ids"][-1]
        )
    with torch.inference_mode():
        logits = model.model(
            input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]
        ).logits
    calls: list[int] = []
    tokenize = tok.__class__.__call__

    def counted(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return tokenize(self, texts, *args, **kwargs)

    monkeypatch.setattr(tok.__class__, "__call__", counted)
    assert model.score(chats) == [float(x) for x in logits[:, 0]]
    assert calls == [len(chats)]  # one call, every chat once
    long_ones = sum(len(ids) > 12 for ids in tok(texts, add_special_tokens=template is None)["input_ids"])
    assert model.cut == long_ones > 0


def test_scores_of_another_reward_model_or_max_length_are_refused(tmp_path: Path, reward_dir: Path) -> None:
    """A scores file is a cache of one model's scores: another model (or max length) resumed it,
    keeping the first model's scores for every chat already there."""
    from vikhr.errors import VikhrError

    chats, scores = _write_chats(tmp_path / "chats.jsonl", 3), tmp_path / "scores.jsonl"
    assert score_file(chats, reward_dir, scores, progress=False).scored == 3
    other = _reward_model(tmp_path / "other", seed=1)  # same shapes and tokenizer, other weights
    for model_dir, max_length in ((other, 2048), (reward_dir, 100)):
        with pytest.raises(
            VikhrError, match=r"scores\.jsonl:1: a score of another reward model or max length"
        ):
            score_file(chats, model_dir, scores, max_length=max_length, progress=False)
    assert score_file(chats, reward_dir, scores, progress=False).before == 3  # the same: resumed


def test_scores_of_the_model_with_another_chat_template_are_refused(tmp_path: Path) -> None:
    """transformers keeps a tokenizer's template in chat_template.jinja: a model that differs only
    there renders (and scores) chats differently, and resumed the first model's scores."""
    from vikhr.errors import VikhrError

    chats, scores = _write_chats(tmp_path / "chats.jsonl", 3), tmp_path / "scores.jsonl"
    plain = _reward_model(tmp_path / "plain")
    templated = _reward_model(tmp_path / "templated", "{% for m in messages %}{{ m.content }}\n{% endfor %}")
    assert (templated / "chat_template.jinja").is_file()
    assert score_file(chats, plain, scores, progress=False).scored == 3
    before = scores.read_bytes()
    with pytest.raises(VikhrError, match=r"scores\.jsonl:1: a score of another reward model or max length"):
        score_file(chats, templated, scores, progress=False)
    assert scores.read_bytes() == before
    assert score_file(chats, templated, tmp_path / "templated.jsonl", progress=False).scored == 3


def test_a_tokenizer_with_nothing_to_pad_with_scores_one_chat_at_a_time(tmp_path: Path) -> None:
    """No pad, EOS or UNK token: transformers refused to pad a batch (a traceback)."""
    model_dir = _reward_model(tmp_path / "rm", specials=False)
    chats = _write_chats(tmp_path / "chats.jsonl", 5)
    assert score_file(chats, model_dir, tmp_path / "s.jsonl", batch_size=4, progress=False).scored == 5
    model = RewardModel(reward_scorer(model_dir), "cpu")
    one_by_one = [model.score([_messages(i)])[0] for i in range(5)]
    scores = load_scores(tmp_path / "s.jsonl")
    np.testing.assert_allclose(
        [scores[chat_key(_messages(i))] for i in range(5)], one_by_one, rtol=0, atol=1e-6
    )


def test_max_length_is_capped_at_the_models_context(tmp_path: Path) -> None:
    """A GPT-2 reward model of 32 positions under the default max length of 2048: an IndexError."""
    model_dir = _reward_model(tmp_path / "rm", gpt2_positions=32)
    chats = tmp_path / "long.jsonl"
    long = [{"role": "user", "content": " ".join(QUESTIONS)}, {"role": "assistant", "content": ANSWERS[0]}]
    chats.write_text(json.dumps({"messages": long}) + "\n", encoding="utf-8")
    run = score_file(chats, model_dir, tmp_path / "s.jsonl", progress=False)
    assert (run.scored, run.cut) == (1, 1)
    assert run.note == "the reward model takes 32 positions: chats are scored on their last 32 tokens"


def test_a_chat_template_that_fails_is_one_line(tmp_path: Path) -> None:
    from vikhr.errors import VikhrError

    refuses_system = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    model = RewardModel(reward_scorer(_reward_model(tmp_path / "rm", refuses_system)), "cpu")
    with pytest.raises(VikhrError, match=r"chat template fails on a chat with roles \['system', 'user'"):
        model.score([[{"role": "system", "content": "x"}, *_messages(0)]])


def test_a_template_writing_todays_date_renders_the_same_on_any_day(tmp_path: Path) -> None:
    """A reward model with Llama-3.2's dated template scored each chat with the day of the run in it."""
    from vikhr.sft.own_template import FIXED_DATE

    dated = (
        "{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
        "{{ 'Today Date: ' + date_string }}{% for m in messages %} {{ m['content'] }}{% endfor %}"
    )
    model = RewardModel(reward_scorer(_reward_model(tmp_path / "rm", dated)), "cpu")
    assert model.render(_messages(0)) == f"Today Date: {FIXED_DATE} {QUESTIONS[0]} {ANSWERS[0]}"


def test_the_score_histogram_counts_whole_chats_and_its_cut_label_covers_no_bar() -> None:
    """The count axis is labelled and reads whole chats from 0 (0.25 of a chat on a small source,
    -0.05 on an empty one before); the cut's label goes where it covers no bar (pinned to the upper
    left, it covered the lowest scores' bars); one chat is "1 chat"."""
    import matplotlib.pyplot as plt

    from vikhr.sft.reward import scores_figure

    low_heavy = [-2.0] * 30 + [-1.9] * 25 + [-1.5] * 10 + [0.5, 1.0, 2.0]
    per_source = {"many": low_heavy, "small": [0.1, 0.3, 0.4], "one": [0.2], "empty": []}
    cuts = {"many": -1.0, "small": 0.2, "one": 0.0}
    fig = scores_figure(per_source, cuts)
    try:
        fig.canvas.draw()
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["many (68 chats)", "small (3 chats)", "one (1 chat)", "empty (0 chats)"]
        for ax in fig.axes:
            ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
            assert ax.get_ylabel() == "chats" and ax.get_ylim()[0] == 0
            assert ticks and all(float(t).is_integer() and t >= 0 for t in ticks), (ax.get_title(), ticks)
        labelled = [ax for ax in fig.axes if ax.get_legend() is not None]
        assert len(labelled) == len(cuts)
        for ax in labelled:
            legend = ax.get_legend().get_window_extent()
            bars = [p.get_window_extent() for p in ax.patches if p.get_height() > 0]
            assert bars and not any(legend.overlaps(bar) for bar in bars), ax.get_title()
    finally:
        plt.close(fig)


def test_score_scores_a_chat_without_its_unanswered_user_turns_and_counts_them(
    tmp_path: Path, reward_dir: Path, capfd: pytest.CaptureFixture
) -> None:
    """`sft score` refused a chat ending with a user turn nobody answered, which `sft prepare` and
    `sft build` keep up to its last answer: it scores that chat (under the key of the chat without
    them, as prepare trains it) and its summary counts such chats as prepare's does."""
    from vikhr.cli import main

    chats = _write_chats(tmp_path / "chats.jsonl", 3)
    lines = chats.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[1])
    record["messages"].append({"role": "user", "content": "А ещё?"})
    lines[1] = json.dumps(record, ensure_ascii=False) + "\n"
    chats.write_text("".join(lines), encoding="utf-8")
    scores = tmp_path / "scores.jsonl"
    capfd.readouterr()
    args = ["sft", "score", "--model", str(reward_dir), "--scores", str(scores), "--no-progress"]
    assert main([*args, "--input", str(chats)]) == 0
    out = capfd.readouterr()[0]
    assert out.startswith(
        f"{scores}: 3 chats (1 trimmed of unanswered user turns after the last answer): 3 scored now; "
    )
    assert set(load_scores(scores)) == {chat_key(_messages(i)) for i in range(3)}


def test_a_reward_model_naming_its_special_tokens_as_plain_objects_loads(tmp_path: Path) -> None:
    """A reward model's tokenizer_config.json naming EOS and UNK as {"content": ...} objects without
    `"__type": "AddedToken"` (a hand-made config, an older writer's): transformers 5 refused them with a
    TypeError traceback. They load as AddedTokens of the object's flags, at the tokenizer.json's ids."""
    from tokenizers import Tokenizer

    model_dir = _reward_model(tmp_path / "rm")
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(eos_token={"content": "</s>", "special": True}, unk_token={"content": "<unk>"})
    config_path.write_text(json.dumps(config), encoding="utf-8")
    model = RewardModel(reward_scorer(model_dir), "cpu")
    own = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert (model.tokenizer.eos_token, model.tokenizer.eos_token_id) == ("</s>", own.token_to_id("</s>"))
    assert (model.tokenizer.unk_token, model.tokenizer.unk_token_id) == ("<unk>", own.token_to_id("<unk>"))
    assert len(model.score([_messages(0), _messages(1)])) == 2
