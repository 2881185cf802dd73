"""`vikhr eval`: lm-evaluation-harness tasks on local data with tiny random HF Mistral models.

Exactness: bits per character and per-choice loglikelihoods equal a direct transformers
computation; a model rigged to always say one answer scores exactly that answer's share.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import logging
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import vikhr
from tests.helpers import run_vikhr_child, running_versions, stderr_of_cli, tiny_hf_model
from vikhr.assets import ASSETS, MISTRAL_TOKENIZER, RU_SAMPLE
from vikhr.cli import main as cli_main
from vikhr.errors import VikhrError
from vikhr.eval import EvalSettings, parse_task_list, run_eval
from vikhr.eval.runner import (
    _build_tasks,
    _task_cost,
    _task_start,
    load_tokenizer,
    make_lm,
    markdown_table,
    task_documents,
)
from vikhr.eval.tasks import (
    TASK_BUILDERS,
    TASKS,
    bits_per_character,
    chgk_golds,
    chgk_normalize,
    clean_terra_text,
    normalize_answer,
    qa_scores,
    squad_normalize,
    task_files,
    token_f1,
)
from vikhr.jsonl import read_jsonl, read_texts
from vikhr.tokenizer import load
from vikhr.tokenizer.hf_export import write_hf_tokenizer

pytest.importorskip("lm_eval")

DATA_TASKS = ["mmlu_en", "terra", "rucola", "chegeka", "xquad_ru"]


def make_tiny_model(path: Path, seed: int = 0) -> Path:
    """A random tiny-preset Mistral with the real Mistral tokenizer (32k vocabulary)."""

    def spread(model: torch.nn.Module) -> None:
        # Random init with std 0.02 gives near-uniform predictions; larger weights make the
        # log-probabilities vary, so that comparisons below are not trivially equal.
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)

    tiny_hf_model(path, vocab_size=32000, seed=seed, weights=spread, max_seq_len=4096)
    write_hf_tokenizer(MISTRAL_TOKENIZER, path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("eval") / "tiny")


def settings_for(model_dir: Path, tasks: list[str], data_dir: Path, **kw: Any) -> EvalSettings:
    return EvalSettings(
        model_dir=model_dir,
        tasks=tasks,
        data_dir=data_dir,
        bpc_data=kw.pop("bpc_data", RU_SAMPLE),
        device="cpu",
        dtype="float32",
        **kw,
    )


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir: Path) -> Any:
    return make_lm(settings_for(tiny_dir, [], tiny_dir), load_tokenizer(tiny_dir, None))


def test_a_max_length_beyond_the_models_positions_is_warned_of(tiny_dir: Path, capsys: Any) -> None:
    """--max-length 8192 on a model of 4096 positions was taken without a word: longer prompts were
    scored at positions the model never saw."""
    tok = load_tokenizer(tiny_dir, None)
    lm = make_lm(settings_for(tiny_dir, [], tiny_dir, max_length=8192), tok)
    assert lm.max_length == 8192
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("warning: --max-length 8192 is beyond the 4096 positions the model takes")
    make_lm(settings_for(tiny_dir, [], tiny_dir, max_length=4096), tok)
    assert "warning" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def rigged_lm(tiny_dir: Path) -> Any:
    """A second copy whose every position has the same hidden state (see `rig`)."""
    lm = make_lm(settings_for(tiny_dir, [], tiny_dir), load_tokenizer(tiny_dir, None))
    model = lm.model
    with torch.no_grad():
        # Attention and MLP add nothing, every embedding is the same vector: the final hidden
        # state is a constant, so the logits are the same after any context.
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
    return lm


def rig(lm: Any, preferred_token: int) -> None:
    """Make `lm` put (almost) all probability on `preferred_token` after any context."""
    with torch.no_grad():
        head = lm.model.lm_head.weight
        head.zero_()
        head[preferred_token] = 10.0


def last_token(lm: Any, text: str) -> int:
    return lm.tokenizer(text, add_special_tokens=False).input_ids[-1]


# ----------------------------------------------------------------------------------------------------
# Pure helpers


def test_answer_normalisation_and_scores() -> None:
    assert normalize_answer("  «Ёжик»   в тумане! ") == "ежик в тумане"
    assert qa_scores(" Ёжик в тумане.", ["ежик в тумане"]) == {"exact_match": 1.0, "f1": 1.0}
    assert token_f1("ежик в тумане", "ежик") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    # precision 1, recall 1/3 against the best gold
    assert qa_scores("Ромул", ["Рем", "Ромул и Рем"])["f1"] == pytest.approx(0.5)
    assert qa_scores("", ["Углич"]) == {"exact_match": 0.0, "f1": 0.0}


# Hand-checked: (answer, vikhr's normalisation, the SQuAD v1.1 evaluate script's). SQuAD deletes
# ASCII punctuation and English articles; vikhr keeps articles, turns every punctuation mark and
# symbol into a space, and reads ё as е.
NORMALISATION_CASES = [
    ("Ёжик в тумане", "ежик в тумане", "ёжик в тумане"),
    ("ЁЛКА", "елка", "ёлка"),
    ("е\u0308лка", "елка", "е\u0308лка"),  # ё spelled as е + combining diaeresis
    ("«Война и мир»", "война и мир", "«война и мир»"),
    ("„Война и мир“", "война и мир", "„война и мир“"),
    ("1941—1945", "1941 1945", "1941—1945"),  # em dash
    ("1941–1945", "1941 1945", "1941–1945"),  # en dash
    ("северо-запад", "северо запад", "северозапад"),
    ("Лев\u00a0Толстой", "лев толстой", "лев толстой"),  # non-breaking space
    ("Лев\u202fТолстой", "лев толстой", "лев толстой"),  # narrow non-breaking space
    ("Лев\u2009Толстой", "лев толстой", "лев толстой"),  # thin space
    ("Пу\u0301шкин", "пушкин", "пу\u0301шкин"),  # a stress mark
    ("Йошкар-Ола", "йошкар ола", "йошкарола"),  # й keeps its breve
    ("Café", "cafe", "café"),  # an acute accent goes as a stress mark does
    ("Пуш\u00adкин", "пушкин", "пуш\u00adкин"),  # a soft hyphen
    ("\ufeffМосква\u200b", "москва", "\ufeffмосква\u200b"),  # BOM, zero-width space
    ("The Beatles", "the beatles", "beatles"),
    ("д'Артаньян", "д артаньян", "дартаньян"),
    ("№ 5", "5", "№ 5"),
    ("т.е.", "т е", "те"),
    ("  Москва.  ", "москва", "москва"),
]


@pytest.mark.parametrize(("answer", "ours", "squad"), NORMALISATION_CASES)
def test_answer_normalisation_against_squad_v1_1(answer: str, ours: str, squad: str) -> None:
    """Stress marks and invisible format characters kept a generated answer from matching its gold
    ("Пу́шкин" scored 0 against "Пушкин")."""
    assert normalize_answer(answer) == ours
    assert squad_normalize(answer) == squad  # the formula MERA's scorer and RuCoS keep
    assert qa_scores(answer, [ours]) == {"exact_match": 1.0, "f1": 1.0}


def test_chegeka_reads_digit_groups_and_look_alike_letters_as_one_answer(tmp_path: Path) -> None:
    """ "1 000" (a space, no-break, narrow or thin) and "1000", or "Mocквa" typed with Latin look-alikes
    and "Москва", scored 0 against each other on our CheGeKa-style set. The official scorers of the
    released sets (SQuAD v1.1's for XQuAD, ReCoRD's for RuCoS, transformers' squad_metrics for MERA)
    keep them apart, and so do xquad_ru and their formula here; white space of any kind is one."""
    question = {"question": "Сколько?", "answer": "1 000 рублей"}
    chgk = tmp_path / "chgk.jsonl"
    chgk.write_text(json.dumps(question, ensure_ascii=False) + "\n", encoding="utf-8")
    chegeka = TASK_BUILDERS["chegeka"](chgk, None, 0, None)
    (doc,) = chegeka["custom_dataset"]()["test"]
    for typed in ("1000 рублей", "1\u00a0000 рублей", "1\u202f000 рублей", "1\u2009000 рублей"):
        assert chegeka["process_results"](doc, [typed]) == {"exact_match": 1.0, "f1": 1.0}, typed
    city = {**doc, "golds": ["Москва"]}
    for typed in ("Mocквa", "MOсква"):  # Latin M, o, c, a / M, O among Cyrillic letters
        assert chegeka["process_results"](city, [typed]) == {"exact_match": 1.0, "f1": 1.0}, typed
    # Not joined: a decimal comma, years, a number of more than three digits; a Latin word keeps its
    # script, one with a Cyrillic look-alike typed in it reads as Latin.
    assert chgk_normalize("3,141") == "3 141"
    assert chgk_normalize("1941—1945 12345 678") == "1941 1945 12345 678"
    assert chgk_normalize("Canon") == chgk_normalize("C\u0430non") == "canon"
    assert chgk_normalize("Лев\u00a0Толстой") == "лев толстой"

    xquad = tmp_path / "xquad.jsonl"
    record = {"id": "1", "context": "Цена: 1 000 рублей.", "question": "Сколько?"}
    xquad.write_text(json.dumps({**record, "answers": {"text": ["1 000"]}}, ensure_ascii=False) + "\n")
    xquad_ru = TASK_BUILDERS["xquad_ru"](xquad, None, 0, None)
    (doc,) = xquad_ru["custom_dataset"]()["test"]
    assert xquad_ru["process_results"](doc, ["1000"])["exact_match"] == 0.0
    assert xquad_ru["process_results"](doc, ["1\u00a0000"])["exact_match"] == 1.0
    assert squad_normalize("1 000") != squad_normalize("1000")
    assert squad_normalize("Mocквa") != squad_normalize("Москва")
    assert squad_normalize("1\u2009000") == squad_normalize("1\u00a0000") == squad_normalize("1 000")


def test_chgk_gold_variants() -> None:
    golds = chgk_golds(
        "Принцип неопределенности [Гейзенберга]", ["соотношение неопределенностей", "по смыслу"]
    )
    assert golds == [
        "Принцип неопределенности Гейзенберга",
        "Принцип неопределенности",
        "соотношение неопределенностей",
    ]
    assert qa_scores("принцип неопределённости", golds)["exact_match"] == 1.0
    # Notes to the judge in any form of "любой" (real test records) are no answers; "Любовь" is one.
    assert chgk_golds("Минамото и Тайра соответственно", ["в любом порядке"]) == [
        "Минамото и Тайра соответственно"
    ]
    assert chgk_golds("Юра", ['Юлик, любое другое мужское имя на "Ю"', "Любовь"]) == ["Юра", "Любовь"]


def test_terra_csv_leftovers_are_cleaned() -> None:
    raw = '"""Решение носит символический характер"", - отмечается в сообщении."'
    assert clean_terra_text(raw) == '"Решение носит символический характер", - отмечается в сообщении.'
    assert clean_terra_text("Обычный текст.") == "Обычный текст."


def test_task_list_parsing() -> None:
    assert parse_task_list("all") == list(TASKS)
    assert parse_task_list("terra, bpc,terra") == ["terra", "bpc"]
    table6 = parse_task_list("table6")
    assert table6[:3] == ["mmlu_en", "mmlu_ru", "chegeka"] and len(table6) == 3 + 9 + 21
    assert parse_task_list("rsg,table6") == parse_task_list("rsg") + ["mmlu_en", "mmlu_ru", "chegeka"] + [
        t for t in table6 if t.startswith("mera_")
    ]
    with pytest.raises(VikhrError, match="unknown task 'mmlu'"):
        parse_task_list("terra,mmlu")
    # 'all' mixes with names; '-name' (or '-group') leaves tasks out.
    assert parse_task_list("all,bpc") == list(TASKS)
    mera = [t for t in TASKS if t.startswith("mera_")]
    assert parse_task_list("mera,-mera_ruhumaneval") == [t for t in mera if t != "mera_ruhumaneval"]
    assert parse_task_list("table6,-mera,-rsg") == ["mmlu_en", "mmlu_ru", "chegeka"]
    with pytest.raises(VikhrError, match="unknown task 'nope'"):
        parse_task_list("terra,-nope")
    with pytest.raises(VikhrError, match="leaves no task"):
        parse_task_list("terra,-terra")
    # '-name's alone leave them out of the default (the tasks the default data directory holds).
    assert parse_task_list("-bpc") == ["mmlu_en", "terra", "rucola", "chegeka", "xquad_ru"]
    assert parse_task_list("-bpc,-terra") == ["mmlu_en", "rucola", "chegeka", "xquad_ru"]
    assert parse_task_list("-bpc,terra") == ["terra"]  # a name given: the list is its own


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("tera", "terra"),
        ("xquad", "xquad_ru"),
        ("rsg_tera", "rsg_terra"),
        ("MERA", "mera"),
        ("Terra", "terra"),
    ],
)
def test_an_unknown_task_name_suggests_the_closest(typed: str, meant: str) -> None:
    """A misspelt task got the list of all 37 names and 4 groups to search by eye."""
    with pytest.raises(
        VikhrError, match=rf"unknown task '{typed}' in --tasks \(did you mean '{meant}'\?\); "
    ):
        parse_task_list(f"bpc,{typed}")


def test_tasks_left_out_of_the_default_may_be_the_options_next_word(
    tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """`--tasks -bpc`, as the help's '-name' reads: argparse took '-bpc' for an unknown option
    ("argument --tasks: expected one argument")."""
    from vikhr.eval import runner

    taken: list[EvalSettings] = []
    monkeypatch.setattr(runner, "run_eval", lambda settings: taken.append(settings) or {})
    base = ["eval", "--model", str(tmp_path), "--data-dir", str(tmp_path)]
    assert cli_main([*base, "--tasks", "-bpc", "--limit", "3"]) == 0
    assert taken[-1].tasks == ["mmlu_en", "terra", "rucola", "chegeka", "xquad_ru"]
    assert taken[-1].limit == 3  # the options after it are read as before
    assert cli_main(["eval", "--tasks", "-bpc,-mera", "--model", str(tmp_path), "--data-dir", "."]) == 0
    assert taken[-1].tasks == ["mmlu_en", "terra", "rucola", "chegeka", "xquad_ru"]
    # argparse takes `--task bpc` for --tasks: `--task -terra` alike (it said --task lacked its value).
    assert cli_main([*base, "--task", "-terra"]) == 0
    assert taken[-1].tasks == ["mmlu_en", "rucola", "chegeka", "xquad_ru", "bpc"]
    assert "unknown task 'mera_x'" in _one_line_error([*base, "--tasks", "-bpc,-mera_x"], capsys)
    # An option where the value should be still means the value is missing.
    with pytest.raises(SystemExit) as e:
        cli_main([*base, "--tasks", "--limit", "3"])
    assert e.value.code == 2
    assert "argument --tasks: expected one argument" in capsys.readouterr().err
    assert len(taken) == 3


# ----------------------------------------------------------------------------------------------------
# Every task end to end on the real data


@pytest.mark.parametrize("task", DATA_TASKS)
def test_task_runs_end_to_end(task: str, tiny_lm: Any, tiny_dir: Path, shared_data: Path) -> None:
    limit = 3
    out = run_eval(
        settings_for(tiny_dir, [task], shared_data / "eval", limit=limit, log_samples=True), lm=tiny_lm
    )
    result = out["tasks"][task]
    assert result["n"] == limit
    assert set(result["metrics"]) == set(TASKS[task].metrics)
    samples = out["samples"][task]
    assert len(samples) == limit
    if TASKS[task].metrics[0] == "acc":
        # Accuracy is the share of documents whose gold choice has the highest loglikelihood.
        correct = [
            max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0]) == s["target"]
            for s in samples
        ]
        assert result["metrics"]["acc"] == pytest.approx(sum(correct) / limit)
    else:
        # EM/F1 are the means of qa_scores over the generated answers (CheGeKa's own normalisation).
        golds = [s["doc"]["golds"] for s in samples]
        normalize = chgk_normalize if task == "chegeka" else normalize_answer
        scores = [
            qa_scores(s["filtered_resps"][0], g, normalize) for s, g in zip(samples, golds, strict=True)
        ]
        for metric in ("exact_match", "f1"):
            assert result["metrics"][metric] == pytest.approx(sum(x[metric] for x in scores) / limit)
        assert all(isinstance(s["filtered_resps"][0], str) for s in samples)
    assert all(v is not None for v in result["metrics"].values())
    # The prompts are in the task's language and hold the document.
    prompt = samples[0]["arguments"][0][0]
    if task == "mmlu_en":
        assert (
            prompt.startswith("The following are multiple choice questions") and prompt.count("Answer:") == 6
        )
    else:
        assert "Ответ:" in prompt


def direct_logprob(model: Any, ids: list[int], n_scored: int) -> float:
    """Σ log p(ids[i] | ids[:i]) over the last `n_scored` tokens, straight from transformers."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    positions = range(len(ids) - n_scored, len(ids))
    return float(sum(logp[i - 1, ids[i]] for i in positions))


@pytest.mark.parametrize("task", ["terra", "mmlu_en"])
def test_loglikelihoods_equal_direct_transformers(
    task: str, tiny_lm: Any, tiny_dir: Path, shared_data: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run_eval(
        settings_for(tiny_dir, [task], shared_data / "eval", limit=2, log_samples=True), lm=tiny_lm
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    checked = 0
    for sample in out["samples"][task]:
        for (context, continuation), resp in zip(sample["arguments"], sample["filtered_resps"], strict=True):
            # BOS + context + continuation, scoring the continuation's tokens.
            whole = tok(context + continuation).input_ids
            n_context = len(tok(context).input_ids)
            assert whole[0] == tok.bos_token_id and n_context < len(whole)
            expected = direct_logprob(model, whole, len(whole) - n_context)
            assert resp[0] == pytest.approx(expected, rel=1e-5, abs=1e-4)
            checked += 1
    assert checked == 2 * (4 if task == "mmlu_en" else 2)


def test_bits_per_char_of_several_texts_loads_the_model_once(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vikhr ablate` and `vikhr demo` loaded each HF model twice, once per held-out text (RU, EN):
    now once for both, the values those of a separate evaluation of each text."""
    from vikhr.assets import EN_SAMPLE
    from vikhr.demo import bits_per_char
    from vikhr.eval import runner

    held = {}
    for name, source in (("ru", RU_SAMPLE), ("en", EN_SAMPLE)):
        held[name] = tmp_path / f"{name}.jsonl.gz"
        with gzip.open(held[name], "wt", encoding="utf-8") as f:
            for t in list(read_texts(source))[:3]:
                f.write(json.dumps({"text": t[:600]}, ensure_ascii=False) + "\n")
    separate = {
        name: run_eval(
            settings_for(
                tiny_dir,
                ["bpc"],
                path.parent,
                bpc_data=path,
                tokenizer=MISTRAL_TOKENIZER,
                limit=3,
                max_length=64,
            )
        )["tasks"]["bpc"]["metrics"]["bpc"]
        for name, path in held.items()
    }
    loads: list[Path] = []
    make_lm = runner.make_lm

    def counted(settings: EvalSettings, *args: Any, **kwargs: Any) -> Any:
        loads.append(settings.model_dir)
        return make_lm(settings, *args, **kwargs)

    monkeypatch.setattr(runner, "make_lm", counted)
    together = bits_per_char(tiny_dir, MISTRAL_TOKENIZER, held, docs=3, seq_len=64)
    assert loads == [tiny_dir]
    assert together == separate and separate["ru"] != separate["en"]


def test_bpc_equals_direct_transformers(tiny_lm: Any, tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = [t[:1500] for t in list(read_texts(RU_SAMPLE))[:3]]
    texts += [
        "A short English line.",
        "Смешанный текст: ёлка, 2024 год, emoji 🙂 и\tтабуляция\nс переводом строки.",
    ]
    data = tmp_path / "texts.jsonl.gz"
    with gzip.open(data, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    out = run_eval(settings_for(tiny_dir, ["bpc"], tmp_path, bpc_data=data), lm=tiny_lm)

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    total_nll = 0.0
    for t in texts:
        ids = tok(t, add_special_tokens=False).input_ids
        assert len(ids) < 4096  # one window: the whole text is scored after BOS
        total_nll -= direct_logprob(model, [tok.bos_token_id, *ids], len(ids))
    total_chars = sum(len(t) for t in texts)
    expected_bpc = total_nll / (total_chars * math.log(2))
    assert out["tasks"]["bpc"]["metrics"]["bpc"] == pytest.approx(expected_bpc, rel=1e-6)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert out["tasks"]["bpc"]["metrics"]["bits_per_byte"] == pytest.approx(
        total_nll / (total_bytes * math.log(2)), rel=1e-6
    )
    assert out["tasks"]["bpc"]["n"] == len(texts)


def test_bpc_of_a_text_longer_than_the_context_scores_every_token_once(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """One line of 160+ tokens at --max-length 16: lm-eval's disjoint rolling windows, each token
    predicted once with the (at most 16) tokens before it; none dropped, none counted twice."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "Очень длинная строка без переводов: " + " ".join(f"слово{i}" for i in range(40))
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    context = 16
    out = run_eval(settings_for(tiny_dir, ["bpc"], tmp_path, bpc_data=data, max_length=context))

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) > 8 * context and len(ids) % context != 0  # several windows, the last one short
    sequence = [tok.bos_token_id, *ids]  # ids[i] is sequence[i + 1]
    total_nll, scored = 0.0, []
    for start in range(0, len(ids), context):
        end = min(start + context, len(ids))
        # Window inputs: the `context` tokens before ids[end - 1]; the last window reaches back.
        window = sequence[max(0, end - context) : end + 1]
        total_nll -= direct_logprob(model, window, end - start)
        scored += range(start, end)
    assert scored == list(range(len(ids)))
    assert out["tasks"]["bpc"]["metrics"]["bpc"] == pytest.approx(
        total_nll / (len(text) * math.log(2)), rel=1e-6
    )


@pytest.mark.parametrize("name", ["book.txt", "book.TXT.gz"])
def test_bpc_of_a_plain_text_file_scores_the_whole_file_as_one_document(
    tiny_lm: Any, tiny_dir: Path, tmp_path: Path, name: str
) -> None:
    """A .txt file was read as JSON Lines ("not valid JSON" on line 1): it is one document, its whole
    text after a BOM with CRLF read as LF, scored after BOS as a JSONL record of that text is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "Глава первая.\n\nЁлка стояла у окна, 2024 год.\nВторая строка\tс табуляцией.\n\nКонец.\n"
    raw = ("\ufeff" + text.replace("\n", "\r\n")).encode("utf-8")
    book = tmp_path / name
    book.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    out = run_eval(settings_for(tiny_dir, ["bpc"], tmp_path, bpc_data=book, bootstrap_iters=0), lm=tiny_lm)

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tok(text, add_special_tokens=False).input_ids
    nll = -direct_logprob(model, [tok.bos_token_id, *ids], len(ids))
    metrics = out["tasks"]["bpc"]["metrics"]
    assert metrics["bpc"] == pytest.approx(nll / (len(text) * math.log(2)), rel=1e-6)
    assert metrics["bits_per_byte"] == pytest.approx(
        nll / (len(text.encode("utf-8")) * math.log(2)), rel=1e-6
    )
    assert out["tasks"]["bpc"]["n"] == 1
    record = tmp_path / "book.jsonl"
    record.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    as_jsonl = run_eval(
        settings_for(tiny_dir, ["bpc"], tmp_path, bpc_data=record, bootstrap_iters=0), lm=tiny_lm
    )
    assert as_jsonl["tasks"]["bpc"]["metrics"] == metrics


def test_bits_per_character_aggregation() -> None:
    assert bits_per_character([(-math.log(2) * 3, 2), (-math.log(2) * 5, 2)]) == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------------
# A model rigged to prefer one answer scores exactly that answer's share


def test_rigged_model_mmlu_accuracy(rigged_lm: Any, tiny_dir: Path, shared_data: Path) -> None:
    limit = 20
    answers = [r["answer"] for _, r in read_jsonl(shared_data / "eval/mmlu-en/test.jsonl")][:limit]
    for letter in "BD":
        rig(rigged_lm, last_token(rigged_lm, f"Answer: {letter}"))
        out = run_eval(settings_for(tiny_dir, ["mmlu_en"], shared_data / "eval", limit=limit), lm=rigged_lm)
        share = sum(a == letter for a in answers) / limit
        assert 0 < share < 1
        assert out["tasks"]["mmlu_en"]["metrics"]["acc"] == pytest.approx(share)


def test_rigged_model_terra_and_rucola(rigged_lm: Any, tiny_dir: Path, shared_data: Path) -> None:
    limit = 30
    rig(rigged_lm, last_token(rigged_lm, "Ответ: да"))
    out = run_eval(
        settings_for(tiny_dir, ["terra", "rucola"], shared_data / "eval", limit=limit, bootstrap_iters=0),
        lm=rigged_lm,
    )
    terra = [r["label"] for _, r in read_jsonl(shared_data / "eval/terra/val.jsonl")][:limit]
    rucola = [r["label"] for _, r in read_jsonl(shared_data / "eval/rucola/dev.jsonl")][:limit]
    assert out["tasks"]["terra"]["metrics"]["acc"] == pytest.approx(terra.count("entailment") / limit)
    assert out["tasks"]["rucola"]["metrics"]["acc"] == pytest.approx(rucola.count(1) / limit)
    # Always answering "acceptable" carries no information: MCC is 0.
    assert out["tasks"]["rucola"]["metrics"]["mcc"] == 0.0


# ----------------------------------------------------------------------------------------------------
# CLI


def test_cli_writes_json_and_markdown(tiny_dir: Path, shared_data: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "res" / "results.json"
    rc = cli_main(
        [
            "eval",
            "--model",
            str(tiny_dir),
            "--tasks",
            "terra,bpc",
            "--data-dir",
            str(shared_data / "eval"),
            "--limit",
            "2",
            "--num-fewshot",
            "1",
            "--device",
            "cpu",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert set(results["tasks"]) == {"terra", "bpc"}
    assert results["vikhr_version"] == vikhr.__version__  # scores change between versions
    assert results["provenance"] == running_versions()  # so do the checkout's and torch's
    assert results["tasks"]["terra"]["num_fewshot"] == 1 and results["tasks"]["bpc"]["num_fewshot"] == 0
    assert 0.0 <= results["tasks"]["terra"]["metrics"]["acc"] <= 1.0
    assert results["tasks"]["bpc"]["metrics"]["bpc"] > 0
    table = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "| terra | acc |" in table and "| bpc | bpc |" in table
    assert not list(out.parent.glob("*.tmp"))
    captured = capsys.readouterr()
    assert "| terra | acc |" in captured.out
    # Told, not silently ignored: bpc takes no shots; terra's one is within its cap.
    assert "note: task bpc takes no shots: it runs with 0, not --num-fewshot 1" in captured.err
    assert "note: task terra" not in captured.err


@pytest.mark.parametrize("given", [".", ".."])
def test_a_model_given_as_dot_is_named_by_its_directory(
    given: str, tiny_dir: Path, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """`--model .` (or `..`) was recorded as "." (the table said Model: `.`, compare named the row
    after the results file): the results name the directory itself."""
    model = tmp_path / "my-model"
    (model / "sub").mkdir(parents=True)
    for f in tiny_dir.iterdir():
        (model / f.name).symlink_to(f)
    monkeypatch.chdir(model if given == "." else model / "sub")
    out = tmp_path / "results.json"
    argv = ["eval", "--model", given, "--tasks", "bpc", "--limit", "1", "--device", "cpu"]
    assert cli_main([*argv, "--output", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"Model: `{model.resolve()}`")
    assert json.loads(out.read_text(encoding="utf-8"))["model"] == str(model.resolve())
    assert cli_main(["eval", "compare", str(out), "--out", str(tmp_path / "cmp")]) == 0
    assert "| my-model (limit 1) |" in capsys.readouterr().out


def test_lm_eval_s_bars_show_only_on_a_terminal_and_not_with_no_progress(
    tiny_dir: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-eval drew its bars (building the requests, running them) into every stderr, logs included,
    and `vikhr eval` had no --no-progress."""
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "terra,bpc", "--data-dir", str(shared_data / "eval")]
    argv += ["--limit", "2", "--num-fewshot", "0", "--device", "cpu"]
    on_a_terminal = stderr_of_cli(argv, terminal=True, monkeypatch=monkeypatch)
    assert "2/2 [" in on_a_terminal  # lm-eval's bars over terra's two documents
    assert "it/s" not in stderr_of_cli(argv, terminal=False, monkeypatch=monkeypatch)
    assert "it/s" not in stderr_of_cli([*argv, "--no-progress"], terminal=True, monkeypatch=monkeypatch)
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # as it was before the command


def test_prompts_cut_to_the_context_are_noted(
    tiny_dir: Path, shared_data: Path, capsys: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """lm-eval keeps a request's last max_length + 1 tokens: with shots, a model of a short context
    was scored on prompts that had lost their start, with no word but a log line per request among
    other output. One note per task says it; lm-eval's lines for each request are left out."""
    data = shared_data / "eval"
    with caplog.at_level(logging.WARNING):
        run_eval(settings_for(tiny_dir, ["terra"], data, limit=3, num_fewshot=2, max_length=48))
    [note] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: task")]
    assert note.startswith("note: task terra: 6 of 6 requests are longer than the model's context (48 tokens")
    assert not [m for m in caplog.messages if "Truncating" in m], caplog.messages  # said 6 more times
    assert "cut from the left, shots first; give fewer shots (--num-fewshot) or a longer --max-length" in note
    run_eval(settings_for(tiny_dir, ["terra"], data, limit=3, num_fewshot=2))
    assert "longer than the model's context" not in capsys.readouterr().err
    # Without shots, fewer shots cannot help: the advice named --num-fewshot all the same.
    run_eval(settings_for(tiny_dir, ["terra"], data, limit=3, num_fewshot=0, max_length=24))
    [note] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: task")]
    assert "requests are longer than the model's context (24 tokens" in note, note
    assert "--num-fewshot" not in note and "the task has no shots" in note, note


def test_only_lm_eval_s_lines_on_cut_requests_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """Leaving out lm-eval's line for each request cut to the context (vikhr notes them once) keeps
    lm-eval's other warnings, and only while vikhr's note stands for them."""
    from vikhr.eval.lm import lm_eval_cut_warnings_silenced

    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    cut = "Combined length of context (870) and continuation (2) exceeds model's maximum length (48)."
    with caplog.at_level(logging.WARNING):
        with lm_eval_cut_warnings_silenced():
            hf_logger.warning(cut)
            hf_logger.warning("another lm-eval warning")
        hf_logger.warning(cut)
    assert caplog.messages == ["another lm-eval warning", cut]


def test_an_outer_bars_off_turns_lm_eval_s_bars_off_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluation_bars asked only whether stderr was a terminal: code running an evaluation inside
    `bars_off` (one rule for every bar) still got lm-eval's task bars."""
    import lm_eval.api.task

    from vikhr.eval.lm import evaluation_bars
    from vikhr.progress_bar import bars_off

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    task_bar = lm_eval.api.task.tqdm
    with evaluation_bars(show=True):
        assert lm_eval.api.task.tqdm is task_bar
    with bars_off(), evaluation_bars(show=True):
        assert lm_eval.api.task.tqdm is not task_bar
        assert lm_eval.api.task.tqdm.keywords == {"disable": True}
    assert lm_eval.api.task.tqdm is task_bar


def test_cli_rerun_after_an_interrupt_reuses_finished_tasks(
    tiny_dir: Path, shared_data: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """The tasks an interrupted `vikhr eval --output X` finished wait in X.partial/; the same
    command again runs only the others, writes X and removes X.partial/."""
    from vikhr.eval import runner

    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "terra,bpc", "--data-dir", str(shared_data / "eval")]
    argv += ["--limit", "2", "--device", "cpu", "--output", str(out)]
    evaluate, evaluated = runner._evaluate, []
    kept = tmp_path / "results.json.partial"

    def interrupted_at_the_first_bpc(lm: Any, name: str, *args: Any) -> Any:
        evaluated.append(name)
        if evaluated == ["terra", "bpc"]:
            raise KeyboardInterrupt
        return evaluate(lm, name, *args)

    monkeypatch.setattr(runner, "_evaluate", interrupted_at_the_first_bpc)
    assert cli_main(argv) == 130
    assert not out.exists() and [p.name for p in kept.iterdir()] == ["terra.json"]
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert evaluated == ["terra", "bpc", "bpc"]  # terra only before the interrupt
    assert "note: 1 task(s) taken from an earlier, interrupted run" in capsys.readouterr().err
    assert set(json.loads(out.read_text(encoding="utf-8"))["tasks"]) == {"terra", "bpc"}
    assert not kept.exists()


def test_a_rerun_reuses_finished_tasks_when_the_output_is_inside_the_model_directory(
    tiny_dir: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """`--output MODEL/eval.json`: the output's lock, there during each run, is not part of the model's
    fingerprint, so the rerun takes the finished task instead of running everything again."""
    import shutil

    from vikhr.eval import runner

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    out = model / "eval.json"
    fixtures = Path(__file__).parent / "data" / "eval_fixtures"
    argv = ["eval", "--model", str(model), "--tasks", "mmlu_ru,bpc", "--data-dir", str(fixtures)]
    argv += ["--limit", "1", "--device", "cpu", "--output", str(out)]
    evaluate, evaluated = runner._evaluate, []

    def interrupted_at_the_first_bpc(lm: Any, name: str, *args: Any) -> Any:
        evaluated.append(name)
        if evaluated == ["mmlu_ru", "bpc"]:
            raise KeyboardInterrupt
        return evaluate(lm, name, *args)

    monkeypatch.setattr(runner, "_evaluate", interrupted_at_the_first_bpc)
    assert cli_main(argv) == 130
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert evaluated == ["mmlu_ru", "bpc", "bpc"]  # mmlu_ru only before the interrupt
    assert "note: 1 task(s) taken from an earlier, interrupted run" in capsys.readouterr().err
    assert set(json.loads(out.read_text(encoding="utf-8"))["tasks"]) == {"mmlu_ru", "bpc"}


def test_a_rerun_reuses_finished_tasks_whichever_way_its_paths_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--model ./m` and `--model /abs/m` (the data, text set and tokenizer likewise) are one run: a
    rerun spelled the other way took none of the finished tasks."""
    from vikhr.eval.progress import TaskProgress

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "data").mkdir()
    (tmp_path / "texts.jsonl").write_text('{"text": "а"}\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    def fingerprint(where: Path) -> str:
        settings = settings_for(
            where / "m", ["bpc"], where / "data", bpc_data=where / "texts.jsonl", tokenizer=where / "m"
        )
        return TaskProgress(tmp_path / "progress", settings)._fingerprint("bpc", [])

    typed = fingerprint(Path("."))
    assert fingerprint(tmp_path) == typed
    assert fingerprint(Path("..") / tmp_path.name) == typed
    assert fingerprint(Path("data")) != typed  # other directories: another run


def _kept_settings(tmp_path: Path, tasks: list[str]) -> EvalSettings:
    """Settings of a run on a stand-in model directory (the fingerprint reads no weights)."""
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "texts.jsonl").write_text('{"text": "а"}\n', encoding="utf-8")
    return settings_for(tmp_path / "m", tasks, tmp_path / "data", bpc_data=tmp_path / "texts.jsonl")


def test_a_finished_task_runs_again_only_when_a_setting_of_its_own_changed(tmp_path: Path) -> None:
    """The rerun fingerprint was one for the whole run: --bpc-field, --bpc-data, --num-fewshot or
    --mera-submission, which concern some tasks only, made every finished task run again."""
    from vikhr.eval.progress import TaskProgress

    names = ["terra", "xquad_ru", "chegeka", "mera_rwsd", "bpc"]
    base = _kept_settings(tmp_path, names)
    (tmp_path / "other.jsonl").write_text('{"text": "б"}\n', encoding="utf-8")

    def data(settings: EvalSettings, name: str) -> list[Path]:
        return task_files(name, settings.data_dir, settings.bpc_data, settings.num_fewshot)

    kept = TaskProgress(tmp_path / "progress", base)
    for name in names:
        kept.save(name, data(base, name), {"task": name})

    def reused(**changed: Any) -> list[str]:
        settings = dataclasses.replace(base, **changed)
        progress = TaskProgress(tmp_path / "progress", settings)
        return [name for name in names if progress.load(name, data(settings, name)) == {"task": name}]

    assert reused() == names
    assert reused(bpc_field="body") == names[:-1]
    assert reused(bpc_data=tmp_path / "other.jsonl") == names[:-1]
    # Only CheGeKa runs with shots by default (4): 0 changes it alone.
    assert reused(num_fewshot=0) == ["terra", "xquad_ru", "mera_rwsd", "bpc"]
    # MERA's archive is written from the mera_* tasks' samples, which the first run did not keep.
    assert reused(mera_submission=tmp_path / "mera.zip") == ["terra", "xquad_ru", "chegeka", "bpc"]
    assert reused(log_samples=True) == []
    for every_task in ({"seed": 7}, {"limit": 3}, {"dtype": "bfloat16"}, {"chat_template": True}):
        assert reused(**every_task) == [], every_task


def test_every_setting_has_its_place_in_the_rerun_fingerprint() -> None:
    """A setting in none of the lists would be left out of every task's fingerprint: a rerun that
    changed it would take results it does not give."""
    from vikhr.eval import progress

    placed = [*progress.EVERY_TASK, *progress.SOME_TASKS, *progress.PER_TASK, *progress.NOT_IN_RESULTS]
    assert sorted(placed) == sorted(f.name for f in dataclasses.fields(EvalSettings))


@pytest.mark.parametrize("resolved", [False, True])
def test_a_task_kept_with_the_whole_runs_fingerprint_is_reused_by_the_same_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resolved: bool
) -> None:
    """Earlier releases kept each finished task with one fingerprint of the whole run's settings: an
    interrupted run of theirs, resumed by this one, takes those tasks while no setting changed. The
    first wrote the settings as given (`--model m`, --max-batch-size with a fixed batch); only the
    later form, paths resolved, was taken."""
    import hashlib

    import lm_eval

    from vikhr.eval.progress import TaskProgress, _files_under, _run_outputs

    _kept_settings(tmp_path, ["terra", "bpc"])
    monkeypatch.chdir(tmp_path)
    settings = settings_for(Path("m"), ["terra", "bpc"], Path("data"), bpc_data=Path("texts.jsonl"))
    settings.mera_submission = tmp_path / "mera.zip"

    def whole_run_fingerprint(settings: EvalSettings, key: str, data: list[Path]) -> str:
        # As those releases computed it (vikhr/eval/progress.py before per-task fingerprints).
        left_out = ("tasks", "progress_dir", "mera_submission", "rsg_submission")
        kept = {k: v for k, v in dataclasses.asdict(settings).items() if k not in left_out}
        if resolved:
            if kept["batch_size"] != "auto":
                del kept["max_batch_size"]
            kept = {k: v.resolve() if isinstance(v, Path) else v for k, v in kept.items()}
        common = {
            "settings": json.loads(json.dumps(kept, default=str)),
            "log_samples": True,  # the MERA archive's samples: every task kept its own
            "model": _files_under(settings.model_dir, skip=_run_outputs(settings)),
            "tokenizer": None,
            "versions": [vikhr.__version__, lm_eval.__version__],
        }
        stamps = [stamp for path in data for stamp in _files_under(path)]
        text = json.dumps({**common, "task": key, "data": stamps}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    kept = tmp_path / "progress"
    kept.mkdir()
    record = {"fingerprint": whole_run_fingerprint(settings, "bpc", [settings.bpc_data]), "result": {"n": 1}}
    (kept / "bpc.json").write_text(json.dumps(record), encoding="utf-8")
    assert TaskProgress(kept, settings).load("bpc", [settings.bpc_data]) == {"n": 1}
    changed = dataclasses.replace(settings, seed=7)
    assert TaskProgress(kept, changed).load("bpc", [settings.bpc_data]) is None


def test_the_largest_batch_counts_for_a_rerun_only_when_auto_chooses_the_batch(tmp_path: Path) -> None:
    """--max-batch-size bounds only --batch-size auto: with a fixed batch size another value made a
    rerun run every finished task again."""
    from vikhr.eval.progress import TaskProgress

    def fingerprint(**kw: Any) -> str:
        settings = settings_for(tmp_path, ["bpc"], tmp_path, **kw)
        return TaskProgress(tmp_path / "progress", settings)._fingerprint("bpc", [])

    assert fingerprint(batch_size=4, max_batch_size=8) == fingerprint(batch_size=4, max_batch_size=64)
    assert fingerprint(batch_size="auto", max_batch_size=8) != fingerprint(
        batch_size="auto", max_batch_size=64
    )
    assert fingerprint(batch_size=4) != fingerprint(batch_size=8)


@pytest.mark.parametrize(
    ("options", "largest", "warned"),
    [
        ([], 64, False),
        (["--batch-size", "auto"], 64, False),
        (["--batch-size", "auto", "--max-batch-size", "8"], 8, False),
        (["--batch-size", "4", "--max-batch-size", "8"], 8, True),
        (["--max-batch-size", "64"], 64, True),  # the default's value, given: with the default batch of 1
    ],
)
def test_a_largest_batch_given_with_a_fixed_batch_size_is_warned_of(
    options: list[str], largest: int, warned: bool, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """--max-batch-size bounds only --batch-size auto: given with a fixed batch size it was ignored
    without a word."""
    from vikhr.eval import runner

    taken: list[EvalSettings] = []
    monkeypatch.setattr(runner, "run_eval", lambda settings: taken.append(settings) or {})
    assert cli_main(["eval", "--model", str(tmp_path), "--tasks", "bpc", *options]) == 0
    assert taken[0].max_batch_size == largest
    lines = capsys.readouterr().err.splitlines()
    if warned:
        size = options[options.index("--batch-size") + 1] if "--batch-size" in options else "1"
        assert lines == [
            f"warning: --max-batch-size {largest} bounds only --batch-size auto: with --batch-size {size} "
            "it is not used"
        ]
    else:
        assert lines == []


def test_the_seeds_help_names_what_it_draws() -> None:
    """--seed's help said it seeds the few-shot sampling, yet ruHumanEval's sampled completions follow
    it too."""
    from vikhr.cli import build_parser

    verbs = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    [seed] = [action for action in verbs["eval"]._actions if action.dest == "seed"]
    assert "mera_ruhumaneval's sampled completions" in seed.help
    assert "terra, rucola, chegeka, the rsg_* tasks with --num-fewshot" in seed.help


def test_an_output_over_a_file_of_another_kind_is_refused(
    tiny_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    """--output X.json replaces X.json and X.md: a model's config.json, or notes in X.md, were
    overwritten by the results after the run; an earlier run's results and table still are."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    config = (model / "config.json").read_bytes()
    base = ["eval", "--model", str(model), "--tasks", "bpc", "--limit", "1", "--device", "cpu"]
    err = _one_line_error([*base, "--output", str(model / "config.json")], capsys)
    assert "config.json exists and is not the results of a vikhr eval" in err
    assert (model / "config.json").read_bytes() == config and not (model / "config.md").exists()
    notes = tmp_path / "eval.md"
    notes.write_text("# My notes\n", encoding="utf-8")
    err = _one_line_error([*base, "--output", str(tmp_path / "eval.json")], capsys)
    assert f"{notes} exists and is not a table vikhr eval wrote" in err
    assert notes.read_text(encoding="utf-8") == "# My notes\n" and not (tmp_path / "eval.json").exists()
    out = tmp_path / "results.json"
    assert cli_main([*base, "--output", str(out)]) == 0
    assert cli_main([*base, "--output", str(out)]) == 0  # a rerun replaces its own earlier results


def test_a_file_where_the_finished_tasks_go_is_refused_before_any_task(
    tiny_dir: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """OUTPUT.json.partial as a file was found when the first task ended, after the model load."""
    from vikhr.eval import runner

    evaluated: list[str] = []
    monkeypatch.setattr(runner, "_evaluate", lambda lm, name, *args: evaluated.append(name))
    (tmp_path / "results.json.partial").write_text("x", encoding="utf-8")
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--limit", "1", "--device", "cpu"]
    err = _one_line_error([*argv, "--output", str(tmp_path / "results.json")], capsys)
    assert "results.json.partial is a file" in err and evaluated == []


def test_two_runs_on_one_output_are_refused(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """Two `vikhr eval --output X` at once shared X.partial/, and the first to end deleted it under the
    second: the second is refused in one line while the first holds X's lock, and no lock is left."""
    from vikhr.locks import exclusive

    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--limit", "1", "--device", "cpu"]
    argv += ["--output", str(out)]
    with exclusive(tmp_path / "results.json.lock", "held", remove=True):
        assert cli_main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"{out} is being written by another vikhr eval (pid" in line
    assert not out.exists() and not (tmp_path / "results.json.partial").exists()
    assert cli_main(argv) == 0 and out.is_file() and not (tmp_path / "results.json.lock").exists()


def test_a_non_zero_rank_of_a_data_parallel_run_leaves_the_output_to_rank_0(
    tiny_dir: Path, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """On several GPUs (torchrun, accelerate launch) every rank took --output's lock, so all but one
    were refused as "another vikhr eval"; without --output the other ranks, which lm-eval hands no
    results, ended in a KeyError after the whole evaluation."""
    from vikhr.eval import runner
    from vikhr.locks import exclusive

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(runner, "_evaluate", lambda *args: None)  # lm-eval's answer on ranks other than 0
    out = tmp_path / "results.json"
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--limit", "1", "--device", "cpu"]
    with exclusive(tmp_path / "results.json.lock", "held by rank 0", remove=True):
        assert cli_main([*argv, "--output", str(out)]) == 0
    assert cli_main(argv) == 0
    assert capsys.readouterr().out == "" and sorted(p.name for p in tmp_path.iterdir()) == []


def test_several_processes_on_a_cpu_are_refused(tiny_dir: Path, monkeypatch: Any, capsys: Any) -> None:
    """`torchrun --nproc_per_node=2 -m vikhr eval --device cpu`: lm-eval splits documents over GPUs
    only, so each process evaluated everything, printed its own table and wrote the same archives."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--limit", "1", "--device", "cpu"]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "vikhr eval: error: vikhr eval was started as 2 processes on cpu: the documents are split over "
        "GPUs only, so each process would evaluate all of them; start one process"
    )


def test_each_task_records_its_time_requests_and_model_tokens(
    tiny_lm: Any, tiny_dir: Path, shared_data: Path, monkeypatch: Any
) -> None:
    seen: list[int] = []  # positions of every forward pass, read at the model itself
    forward = tiny_lm.model.forward

    def counting_forward(input_ids: Any = None, *args: Any, **kwargs: Any) -> Any:
        seen.append(input_ids.numel())
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(tiny_lm.model, "forward", counting_forward)
    out = run_eval(settings_for(tiny_dir, ["terra", "bpc"], shared_data / "eval", limit=3), lm=tiny_lm)
    terra, bpc = out["tasks"]["terra"], out["tasks"]["bpc"]
    assert terra["requests"] == 3 * 2  # one loglikelihood per choice (entailment / not_entailment)
    assert bpc["requests"] == 3  # one rolling loglikelihood per text
    # Every position the model ran is counted against exactly one task.
    assert terra["model_tokens"] > 0 and bpc["model_tokens"] > 0
    assert terra["model_tokens"] + bpc["model_tokens"] == sum(seen)
    assert all(task["seconds"] > 0 for task in (terra, bpc))
    assert terra["seconds"] + bpc["seconds"] <= out["seconds"] + 0.1
    assert terra["probe_seconds"] == bpc["probe_seconds"] == 0.0  # a fixed batch size: no search
    table = markdown_table(out)
    assert f"| terra | {terra['seconds']:.2f} | 0.00 | 6 | {terra['model_tokens']:,} |" in table


def test_a_tasks_cost_counts_the_batch_size_search_it_triggered() -> None:
    """lm-eval searches for the batch size again on each call: each task is charged the search
    seconds spent while it ran (and its rate in the table leaves them out)."""
    lm = types.SimpleNamespace(model_tokens=100, probe_seconds=2.0)
    start = _task_start(lm)
    lm.model_tokens, lm.probe_seconds = 1100, 2.75
    cost = _task_cost(lm, start, requests=4)
    assert cost["probe_seconds"] == 0.75 and cost["model_tokens"] == 1000 and cost["requests"] == 4
    task = {"seconds": 2.75, "probe_seconds": 0.75, "requests": 4, "model_tokens": 1000}
    results = {
        "model": "m",
        "limit": 4,
        "seconds": 3.0,
        "tasks": {"bpc": {**task, "metrics": {}, "stderr": {}, "num_fewshot": 0, "n": 4}},
    }
    assert "| bpc | 2.75 | 0.75 | 4 | 1,000 | 500 |" in markdown_table(results)  # 1000 tokens / 2 s


def test_task_documents_counts_what_a_run_evaluates(tiny_dir: Path, shared_data: Path) -> None:
    data = shared_data / "eval"
    in_file = len(list(read_jsonl(data / "terra" / "val.jsonl")))
    texts = len(list(read_texts(RU_SAMPLE, "text")))
    assert task_documents(settings_for(tiny_dir, ["terra", "bpc"], data)) == {"terra": in_file, "bpc": texts}
    assert task_documents(settings_for(tiny_dir, ["bpc", "terra"], data, limit=4)) == {"bpc": 4, "terra": 4}


def test_cpu_batch_size_fits_a_quarter_of_free_memory() -> None:
    from vikhr.eval.lm import cpu_batch_size

    gib = 1 << 30
    # 1000 tokens of a 32k-vocabulary, 4096-wide model: 1000·4·(3·32000 + 16·4096) = 646,144,000 bytes.
    assert cpu_batch_size(1000, 32000, 4096, available=16 * gib, cap=64) == 6  # 4 GiB / 646 MB = 6.6
    assert cpu_batch_size(1000, 32000, 4096, available=1024 * gib, cap=64) == 64
    assert cpu_batch_size(32768, 32000, 4096, available=gib, cap=64) == 1


@pytest.mark.parametrize("task_name", ["terra", "chegeka"])
def test_a_documents_shots_do_not_depend_on_the_number_of_ranks(task_name: str, shared_data: Path) -> None:
    """lm-eval draws the shots of a rank's documents one after another from that rank's generator:
    with 2 ranks document 2 got the second draw instead of the third, so the prompts (and the scores)
    of TERRa, RuCoLA and CheGeKa with shots changed with the number of GPUs."""
    settings = settings_for(Path("unused"), [task_name], shared_data / "eval", limit=7, num_fewshot=2)

    def prompts(world_size: int) -> dict[int, Any]:
        found = {}
        for rank in range(world_size):  # each rank its own process: its own tasks, seeded alike
            task = _build_tasks(settings)[0][task_name]
            task.build_all_requests(limit=settings.limit, rank=rank, world_size=world_size)
            found.update({request.doc_id: request.arguments[0] for request in task.instances})
        return found

    one = prompts(1)
    assert sorted(one) == list(range(7)) and len(set(one.values())) == 7
    assert prompts(2) == one and prompts(3) == one


def test_stdout_holds_the_table_alone_with_an_auto_batch_size(tiny_dir: Path, capsys: Any) -> None:
    """lm-eval prints its batch-size search ("Determined Largest batch size: 7") to stdout: it went
    into the Markdown table of `vikhr eval ... > table.md`."""
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--limit", "1", "--device", "cpu"]
    assert cli_main([*argv, "--batch-size", "auto"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"Model: `{tiny_dir}`")
    assert "Determined" not in captured.out and "Determined Largest batch size: " in captured.err


def test_auto_batch_size_on_cpu_batches_without_probing_and_scores_the_same(
    tiny_lm: Any, tiny_dir: Path, shared_data: Path, monkeypatch: Any
) -> None:
    settings = settings_for(tiny_dir, ["terra", "xquad_ru", "bpc"], shared_data / "eval", limit=4)
    one = run_eval(settings, lm=tiny_lm)
    auto_settings = dataclasses.replace(settings, batch_size="auto", max_batch_size=3)
    auto_lm = make_lm(auto_settings, load_tokenizer(tiny_dir, None))
    batches: list[tuple[int, int]] = []
    forward = auto_lm.model.forward

    def counting_forward(input_ids: Any = None, *args: Any, **kwargs: Any) -> Any:
        batches.append((input_ids.shape[0], input_ids.numel()))
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(auto_lm.model, "forward", counting_forward)
    auto = run_eval(auto_settings, lm=auto_lm)
    assert max(b for b, _ in batches) == 3  # batched, and never beyond --max-batch-size
    # No probing passes: every position run is one a task asked for.
    assert sum(t["model_tokens"] for t in auto["tasks"].values()) == sum(n for _, n in batches)
    assert auto["tasks"]["terra"]["metrics"] == one["tasks"]["terra"]["metrics"]
    assert auto["tasks"]["bpc"]["metrics"]["bpc"] == pytest.approx(
        one["tasks"]["bpc"]["metrics"]["bpc"], rel=1e-5
    )
    assert auto["tasks"]["xquad_ru"]["n"] == 4


def test_a_run_repeats_bit_for_bit_in_a_process_of_another_hash_seed(tiny_dir: Path, tmp_path: Path) -> None:
    """Shots, prompts, log-likelihoods, bpc and scores of two runs in processes of other string hash
    seeds are equal bit for bit, wall times aside (runs in one process share the seed)."""
    fixtures = Path(__file__).parent / "data" / "eval_fixtures"
    texts = tmp_path / "texts.jsonl"
    first = itertools.islice(read_texts(RU_SAMPLE), 3)
    texts.write_text("".join(json.dumps({"text": t[:600]}) + "\n" for t in first), encoding="utf-8")
    runs = []
    for seed in (1, 2):
        out = tmp_path / f"seed{seed}.json"
        argv = ["eval", "--model", str(tiny_dir), "--tasks", "rsg_parus,bpc", "--num-fewshot", "2"]
        argv += ["--data-dir", str(fixtures), "--bpc-data", str(texts), "--limit", "3", "--device", "cpu"]
        argv += ["--dtype", "float32", "--log-samples", "--output", str(out)]
        run_vikhr_child(argv, hash_seed=seed, threads=1)
        result = json.loads(out.read_text(encoding="utf-8"))
        for part in (result, *result["tasks"].values()):
            for key in ("seconds", "probe_seconds"):  # wall times
                part.pop(key, None)
        runs.append(result)
    assert runs[0] == runs[1]
    assert runs[0]["tasks"]["rsg_parus"]["num_fewshot"] == 2 and len(runs[0]["samples"]["rsg_parus"]) == 3


@pytest.mark.gpu
def test_auto_batch_size_on_gpu_probes_at_the_length_the_requests_need(
    tiny_dir: Path, monkeypatch: Any
) -> None:
    fixtures = Path(__file__).parent / "data" / "eval_fixtures"
    settings = settings_for(tiny_dir, ["mera_chegeka", "bpc"], fixtures, limit=4)
    settings = dataclasses.replace(settings, device="cuda", batch_size="auto")
    lm = make_lm(settings, load_tokenizer(tiny_dir, None))
    probes: list[int] = []
    forward = lm.model.forward

    def spying_forward(input_ids: Any = None, *args: Any, **kwargs: Any) -> Any:
        if lm._probing:
            probes.append(input_ids.shape[1])
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", spying_forward)
    out = run_eval(settings, lm=lm)
    # lm-eval alone would probe generation and rolling requests at the whole context (4096 here).
    assert probes and max(probes) < lm.max_length == 4096
    assert out["tasks"]["mera_chegeka"]["n"] == 2  # the fixture's two questions
    assert out["tasks"]["bpc"]["metrics"]["bpc"] > 0
    # Each task was charged the search it ran (none where an earlier, longer probe found the largest
    # batch): the first task searched.
    assert 0 < out["tasks"]["mera_chegeka"]["probe_seconds"] < out["tasks"]["mera_chegeka"]["seconds"]
    assert all(0 <= task["probe_seconds"] < task["seconds"] for task in out["tasks"].values())


def test_a_search_that_found_the_largest_batch_spares_shorter_probes(tiny_lm: Any, monkeypatch: Any) -> None:
    """On a GPU lm-eval searches for the batch size on every task (5 passes per size tried): once a
    probe of length L found --max-batch-size, a later probe no longer than L takes it without
    passes; a longer one, or one with several ranks (which agree in a collective), searches."""
    from lm_eval.models.huggingface import HFLM

    searched: list[int] = []
    answers = {100: tiny_lm.max_batch_size, 120: 16, 90: tiny_lm.max_batch_size}

    def search(self: Any, requests: Any = None, pos: int = 0) -> int:
        _, context, continuation = requests[pos]
        searched.append(len(context + continuation) - 1)
        return answers[searched[-1]]

    def request(length: int) -> tuple[Any, list[int], list[int]]:
        return (None, [1] * (length - 1), [2, 3])  # the probe's length: context + continuation - 1

    monkeypatch.setattr(HFLM, "_detect_batch_size", search)
    monkeypatch.setattr(tiny_lm, "_device", torch.device("cuda"))  # the GPU branch (search stubbed)
    monkeypatch.setattr(tiny_lm, "_largest_fits_at", 0)
    assert tiny_lm._detect_batch_size([request(100)]) == tiny_lm.max_batch_size
    assert tiny_lm._detect_batch_size([request(80)]) == tiny_lm.max_batch_size  # no search
    assert tiny_lm._detect_batch_size([request(120)]) == 16
    assert searched == [100, 120]
    monkeypatch.setattr(tiny_lm, "_world_size", 2)
    assert tiny_lm._detect_batch_size([request(90)]) == tiny_lm.max_batch_size
    assert searched == [100, 120, 90]


def _one_line_error(argv: list[str], capsys: Any) -> str:
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("vikhr eval: error:")
    return err


def test_a_data_dir_of_another_layout_is_told_where_the_files_are(
    tiny_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    """--data-dir given as a task's own folder, or a folder holding the split under another name
    (`validation.jsonl`, as the HF export names it), gave only "data file not found"."""
    data = tmp_path / "eval"
    (data / "terra").mkdir(parents=True)
    (data / "terra" / "validation.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": 0}\n')
    (data / "russian-superglue" / "RCB").mkdir(parents=True)
    (data / "russian-superglue" / "RCB" / "val.jsonl").write_text("")
    base = ["eval", "--model", str(tiny_dir), "--device", "cpu"]
    err = _one_line_error([*base, "--tasks", "terra", "--data-dir", str(data)], capsys)
    assert err.endswith(
        f"(check --data-dir {data}: {data / 'terra'} holds validation.jsonl; the task reads val.jsonl)"
    )
    for inside, depth in ((data / "russian-superglue", 1), (data / "russian-superglue" / "RCB", 2)):
        err = _one_line_error([*base, "--tasks", "rsg_rcb", "--data-dir", str(inside)], capsys)
        folder = "/".join(["russian-superglue", "RCB"][:depth])
        assert f"that is the {folder} folder itself" in err and err.endswith(
            f"give the one above it, {data})"
        )


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("Привет, мир.\r\nВторая строка.\r\n", "my.jsonl:1: not valid JSON"),  # a plain text file
        ('{"content": "Привет"}\n', "my.jsonl:1: field 'text' is missing"),
        # A text kept as its sentences: the field is the right one, its pieces are to be joined.
        (
            '{"text": ["Привет.", "Мир."]}\n',
            'my.jsonl:1: field "text" is a list of 2 strings, not one string: join them into one string per '
            """document, e.g. jq -c '.text |= join("\\n")' IN.jsonl > OUT.jsonl;""",
        ),
        ("\ufeff\r\n", "my.jsonl has no non-empty 'text' texts"),  # a BOM and an empty line
    ],
)
def test_a_bpc_text_file_of_another_layout_names_the_options(
    content: str, said: str, tiny_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    """A plain text file, a field of another name or no text at all were told in the JSONL reader's
    words, which name no option (not --bpc-data, nor --bpc-field)."""
    text_file = tmp_path / "my.jsonl"
    text_file.write_text(content, encoding="utf-8", newline="")
    argv = [
        "eval",
        "--model",
        str(tiny_dir),
        "--tasks",
        "bpc",
        "--bpc-data",
        str(text_file),
        "--device",
        "cpu",
    ]
    err = _one_line_error(argv, capsys)
    assert f"task bpc: {tmp_path / said}" in err
    assert err.endswith(
        '--bpc-data takes JSON Lines, one {"text": ...} object per document (--bpc-field names another field)'
    )


@pytest.mark.parametrize(
    ("name", "content", "options", "said"),
    [
        ("book.txt", "\ufeff \r\n\r\n", [], "task bpc: {path} has no text (empty or white space only)"),
        ("book.txt", "Глава первая.\n".encode("cp1251"), [], "task bpc: {path}:1: not UTF-8 (byte 0xc3)"),
        (
            "book.txt",
            "Глава первая.\n",
            ["--bpc-field", "content"],
            "--bpc-field 'content' names a JSON field, and {path} is read as plain text",
        ),
        # Another name: still JSON Lines, and the error says how a plain text file is read.
        ("book.text", "Глава первая.\n", [], "or plain text in a file named .txt"),
    ],
)
def test_a_plain_text_bpc_file_that_cannot_be_scored_is_one_line(
    name: str,
    content: str | bytes,
    options: list[str],
    said: str,
    tiny_dir: Path,
    tmp_path: Path,
    capsys: Any,
) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--bpc-data", str(path), "--device", "cpu"]
    err = _one_line_error([*argv, *options], capsys)
    assert said.format(path=path) in err, err
    assert ("JSON Lines" in err) == (name != "book.txt" or bool(options)), err


def test_cli_bad_inputs_give_one_line(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "eval"
    (data / "terra").mkdir(parents=True)
    base = ["eval", "--data-dir", str(data), "--device", "cpu"]
    err = _one_line_error([*base, "--model", str(tmp_path / "nope"), "--tasks", "terra"], capsys)
    assert "model directory not found" in err
    err = _one_line_error([*base, "--model", str(tiny_dir), "--tasks", "terra,squad"], capsys)
    assert "unknown task 'squad'" in err
    err = _one_line_error([*base, "--model", str(tiny_dir), "--tasks", "terra"], capsys)
    assert "data file not found" in err and "terra/val.jsonl" in err
    err = _one_line_error(
        [*base, "--model", str(tiny_dir), "--tasks", "bpc", "--bpc-data", str(tmp_path / "x.jsonl")], capsys
    )
    assert "data file not found" in err and "--bpc-data" in err
    err = _one_line_error(
        [*base, "--model", str(tiny_dir), "--tasks", "bpc", "--bpc-data", str(data)], capsys
    )
    assert f"task bpc: {data} is a directory, not a data file (check --bpc-data)" in err  # it exists
    err = _one_line_error([*base, "--model", str(tiny_dir), "--tasks", "bpc", "--output", "r.txt"], capsys)
    assert ".json" in err
    no_config = tmp_path / "empty_model"
    no_config.mkdir()
    err = _one_line_error([*base, "--model", str(no_config), "--tasks", "bpc"], capsys)
    assert "no config.json" in err
    # A model directory without a tokenizer ('vikhr convert megatron-to-hf' when none is known).
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).symlink_to(tiny_dir / f)
    err = _one_line_error([*base, "--model", str(bare), "--tasks", "bpc"], capsys)
    assert "--tokenizer" in err
    # More shots than the few-shot file holds (numpy's traceback after the model had loaded).
    record = '{"premise": "Кот спит.", "hypothesis": "Кот не бодрствует.", "label": "entailment"}\n'
    (data / "terra" / "val.jsonl").write_text(record * 3, encoding="utf-8")
    (data / "terra" / "train.jsonl").write_text(record * 2, encoding="utf-8")
    terra = [*base, "--model", str(tiny_dir), "--tasks", "terra"]
    err = _one_line_error([*terra, "--num-fewshot", "10"], capsys)
    assert "task terra: 10 shots asked for, but its few-shot file holds 2 records" in err
    assert "--bootstrap-iters must be >= 0" in _one_line_error([*terra, "--bootstrap-iters", "-1"], capsys)
    for seed in ("-1", str(2**32)):  # numpy's seeding traceback, after the model had loaded
        with pytest.raises(SystemExit) as e:
            cli_main([*terra, "--seed", seed])
        assert e.value.code == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert "argument --seed: expected an integer from 0 to 2^32-1" in line
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    err = _one_line_error(
        [*base, "--model", str(tiny_dir), "--tasks", "bpc", "--bpc-data", str(bad_jsonl)],
        capsys,
    )
    assert "bad.jsonl:2" in err
    # A CheGeKa answer of white space only: scored against nothing (an empty generation matched it).
    (data / "chgk").mkdir()
    question = '{"question": "Столица Франции?", "answer": "Париж"}\n'
    (data / "chgk" / "train.jsonl").write_text(question * 4, encoding="utf-8")
    (data / "chgk" / "test.jsonl").write_text(question + '{"question": "?", "answer": "   "}\n')
    chegeka = [*base, "--model", str(tiny_dir), "--tasks", "chegeka"]
    assert "chgk/test.jsonl:2: the record has no answer text" in _one_line_error(chegeka, capsys)


def test_each_tasks_data_files_are_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files of every task were checked to exist for the one line naming every task without its
    data, then again as each task's config was built (ruTiE's as its dialogues were read)."""
    from vikhr.eval import runner, task_config

    fixtures = Path(__file__).parent / "data" / "eval_fixtures"
    checked: list[str] = []
    check = task_config.checked_task_files

    def counted(name: str, *args: Any) -> list[Path]:
        checked.append(name)
        return check(name, *args)

    monkeypatch.setattr(runner, "checked_task_files", counted)
    monkeypatch.setattr(task_config, "checked_task_files", counted)
    tasks = ["mmlu_ru", "mera_chegeka", "mera_rutie", "rsg_parus", "bpc"]
    built, dialogues = runner._build_tasks(settings_for(fixtures, tasks, fixtures, limit=2))
    assert checked == tasks
    assert list(built) == ["mmlu_ru", "mera_chegeka", "rsg_parus", "bpc"] and dialogues


@pytest.mark.parametrize(
    "flag", ["--model", "--data-dir", "--tokenizer", "--bpc-data", "--output", "--mera-submission"]
)
def test_an_empty_path_is_refused(flag: str, tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """`--output ""` (an unset shell variable) ran without writing any results; an empty --model,
    --data-dir, --tokenizer or --bpc-data stood for the current directory or the default."""
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--limit", "1", "--device", "cpu", flag, " "]
    assert _one_line_error(argv, capsys).endswith(f"{flag} is empty: give a path, or leave the option out")


def test_every_task_without_its_data_is_named_at_once(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """`--tasks table6` on a data directory holding some of the sets named the first task without its
    files, then the next on each rerun (30 reruns for the shared data)."""
    data = tmp_path / "eval"
    (data / "terra").mkdir(parents=True)
    record = '{"premise": "Кот спит.", "hypothesis": "Кот не бодрствует.", "label": "entailment"}\n'
    (data / "terra" / "val.jsonl").write_text(record, encoding="utf-8")
    tasks = "terra,mmlu_ru,rsg,mera_parus"
    argv = ["eval", "--model", str(tiny_dir), "--data-dir", str(data), "--device", "cpu", "--tasks", tasks]
    err = _one_line_error(argv, capsys)
    assert "11 tasks lack their data files: mmlu_ru, rsg_lidirus," in err and "rsg_rucos, mera_parus (" in err
    assert f"(the first: task mmlu_ru: data file not found: {data / 'mmlu-ru' / 'test.jsonl'}" in err
    assert err.endswith("(--tasks ...,-mmlu_ru,-rsg,-mera)")
    assert parse_task_list(f"{tasks},-mmlu_ru,-rsg,-mera") == ["terra"]  # the advice leaves what has data
    # One task alone keeps its own line.
    err = _one_line_error([*argv[:-1], "terra,mmlu_ru"], capsys)
    assert err.endswith(
        f"task mmlu_ru: data file not found: {data / 'mmlu-ru' / 'test.jsonl'} (check --data-dir {data})"
    )


@pytest.mark.parametrize("size", ["auto:0", "auto:x", "auto:", "auto:4", "0", "-3", "big"])
def test_a_bad_batch_size_is_one_line_before_the_model_loads(tiny_dir: Path, size: str, capsys: Any) -> None:
    """lm-eval's "auto:N" (it failed after the model load: ZeroDivisionError for "auto:0", a
    config.json complaint for "auto:x") and non-positive sizes are refused by the argument parser."""
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--limit", "1", "--device", "cpu"]
    argv.append(f"--batch-size={size}")
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("vikhr eval: error: argument --batch-size:") and repr(size) in line


def test_answers_and_fields_of_another_type_are_one_line(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """A string where a list of gold answers belongs was read as one gold per character (answering
    "а" scored 1.0); a field that is a number in one record and a string in another was Arrow's
    traceback, then a message naming the file three times."""
    data = tmp_path / "eval"
    for task in ("chgk", "xquad-ru", "terra"):
        (data / task).mkdir(parents=True)
    base = ["eval", "--data-dir", str(data), "--device", "cpu", "--model", str(tiny_dir), "--tasks"]
    question = {"question": "Кого называют матадором?", "answer": "Тореадор"}
    (data / "chgk" / "train.jsonl").write_text(json.dumps(question) + "\n", encoding="utf-8")
    (data / "chgk" / "test.jsonl").write_text(json.dumps({**question, "accepted": "Матадор"}) + "\n")
    err = _one_line_error([*base, "chegeka"], capsys)
    assert "chgk/test.jsonl:1: field 'accepted' must be a list of strings, got str" in err
    squad = {"id": "q1", "context": "Текст о Париже.", "question": "Какой город?"}
    flattened = {**squad, "answers": {"text": "Париж", "answer_start": 8}}
    (data / "xquad-ru" / "validation.jsonl").write_text(json.dumps(flattened) + "\n", encoding="utf-8")
    err = _one_line_error([*base, "xquad_ru"], capsys)
    assert "xquad-ru/validation.jsonl:1 (id \"q1\"): field 'answers.text' must be a list of strings" in err
    record = {"premise": "Кот спит.", "hypothesis": "Кот не бодрствует.", "label": "entailment"}
    rows = [{**record, "idx": 0}, {**record, "idx": "x1"}]
    (data / "terra" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (data / "terra" / "train.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    err = _one_line_error([*base, "terra", "--num-fewshot", "0"], capsys)
    val = data / "terra" / "val.jsonl"
    assert f"field 'idx' is a number in {val}:1 (idx 0) and a str in {val}:2 (idx \"x1\")" in err
    assert err.count(str(val)) == 2  # once per record: no "a record of FILE" around the message


def test_tokenizer_from_sentencepiece_model(tiny_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).symlink_to(tiny_dir / f)
    tok = load_tokenizer(bare, MISTRAL_TOKENIZER).to_transformers()
    reference = load_tokenizer(tiny_dir, None).to_transformers()
    text = "Привет, мир! Hello"
    assert tok(text).input_ids == reference(text).input_ids == [1, *load(MISTRAL_TOKENIZER).encode(text)]


def test_tokenizer_that_is_not_the_models_is_refused(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """A 600-token tokenizer on the 32k-vocabulary model, and a 40k one, are refused before scoring."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    small = tmp_path / "small"
    small.mkdir()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 600)}}
    HFTokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(small / "tokenizer.json"))
    base = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--device", "cpu", "--tokenizer"]
    for tokenizer, size in ((small, 600), (ASSETS / "tokenizers" / "vikhr-ru-40k.model", 40000)):
        err = _one_line_error([*base, str(tokenizer)], capsys)
        assert f"has {size} tokens but the model" in err and "32000-token vocabulary" in err


def test_truncated_weights_are_one_line(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """A damaged safetensors file is named before transformers tries to load it."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    err = _one_line_error(["eval", "--model", str(broken), "--tasks", "bpc", "--device", "cpu"], capsys)
    assert weights.name in err and "truncated" in err


def test_a_malformed_config_or_device_is_one_line(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """A string where config.json has a number: transformers' config check raised a long traceback."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "rms_norm_eps": "1e-05"}))
    argv = ["eval", "--model", str(broken), "--tasks", "bpc", "--device", "cpu", "--limit", "1"]
    err = _one_line_error(argv, capsys)
    assert f"cannot load the model in {broken}" in err and "rms_norm_eps" in err and "config.json" in err
    # lm-eval ran an unknown device on its default one.
    argv = ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--limit", "1", "--device", "gpu"]
    assert "--device 'gpu' is not one of auto, cpu, cuda, cuda:N" in _one_line_error(argv, capsys)


@pytest.mark.parametrize("name", ["texts.jsonl.gz", "texts.jsonl.zst"])
def test_bpc_reads_compressed_text_sets(tiny_lm: Any, tiny_dir: Path, tmp_path: Path, name: str) -> None:
    import zstandard

    lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ("Первый текст.", "Второй."))
    compress = gzip.compress if name.endswith(".gz") else zstandard.ZstdCompressor().compress
    plain, packed = tmp_path / "texts.jsonl", tmp_path / name
    plain.write_text(lines, encoding="utf-8")
    packed.write_bytes(compress(lines.encode("utf-8")))
    results = [
        run_eval(settings_for(tiny_dir, ["bpc"], tmp_path, bpc_data=p, bootstrap_iters=0), lm=tiny_lm)
        for p in (plain, packed)
    ]
    assert results[0]["tasks"]["bpc"]["metrics"] == results[1]["tasks"]["bpc"]["metrics"]


def test_bpc_refuses_cp1251_in_one_line(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "cp1251.jsonl"
    data.write_bytes('{"text": "ok"}\n{"text": "Привет"}\n'.encode("cp1251"))
    err = _one_line_error(
        ["eval", "--model", str(tiny_dir), "--tasks", "bpc", "--device", "cpu", "--bpc-data", str(data)],
        capsys,
    )
    assert f"{data}:2: not UTF-8" in err and "re-encode it as UTF-8" in err


def test_the_tables_limit_line_counts_documents_in_english() -> None:
    """`--limit 1` was said as "limit 1 documents per task"."""
    heads = [markdown_table({"model": "m", "limit": n, "tasks": {}}).splitlines()[0] for n in (1, 3, None)]
    assert heads == [
        "Model: `m` (limit 1 document per task)",
        "Model: `m` (limit 3 documents per task)",
        "Model: `m`",
    ]
