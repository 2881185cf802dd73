"""Russian SuperGLUE, Ru-MMLU and MERA tasks: metrics on hand-checked cases, the readers on the
official layouts (tests/data/eval_fixtures), every task end to end through lm-eval on a tiny model,
MERA's prompts and submission archive, and one-line errors for bad input.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.test_eval import last_token, make_tiny_model, rig, settings_for
from vikhr.cli import main as cli_main
from vikhr.errors import VikhrError
from vikhr.eval.mera import MERA_TASKS, MeraRecord, mera_prompt
from vikhr.eval.mera_metrics import squad_scores, use_grade, use_points
from vikhr.eval.mera_rutie import read_dialogues
from vikhr.eval.rsg import (
    RSG_SCORE_METRICS,
    _muserc_rows,
    _rucos_rows,
    binary_f1,
    grouped_exact_match,
    macro_f1,
    matthews_corr,
    rcb_macro_f1,
    rsg_total,
    rucos_scores,
    task_score,
)
from vikhr.eval.runner import load_tokenizer, make_lm, markdown_table, run_eval
from vikhr.eval.task_config import build_task_config
from vikhr.eval.tasks import TASK_GROUPS, TASKS, parse_task_list
from vikhr.jsonl import read_jsonl

pytest.importorskip("lm_eval")

FIXTURES = Path(__file__).parent / "data" / "eval_fixtures"
RSG = FIXTURES / "russian-superglue"
MERA_SAMPLE_SUBMISSION = FIXTURES / "mera-sample-submission"
RSG_SAMPLE_SUBMISSION = FIXTURES / "rsg-sample-submission"
NEW_TASKS = parse_task_list("rsg,mmlu_ru,mera")


# ----------------------------------------------------------------------------------------------------
# Metrics on hand-checked cases


def test_matthews_correlation() -> None:
    # TP 3, TN 2, FP 1, FN 1: (3·2 − 1·1) / √(4·4·3·3) = 5/12
    items = [(1, 1)] * 3 + [(0, 0)] * 2 + [(0, 1), (1, 0)]
    assert matthews_corr(items) == pytest.approx(5 / 12)
    assert matthews_corr([(1, 0), (0, 1)]) == pytest.approx(-1.0)
    assert matthews_corr([(1, 1), (0, 1)]) == 0.0  # always one answer: undefined, reported as 0
    from sklearn.metrics import matthews_corrcoef

    golds, preds = zip(*items, strict=True)
    assert matthews_corr(items) == pytest.approx(matthews_corrcoef(golds, preds))


def test_macro_f1_and_binary_f1() -> None:
    # gold 0 0 1 2 2 2, pred 0 1 1 2 0 2: F1(0) = 2·1/(2+1+1) = 1/2, F1(1) = 2/(2+1) = 2/3,
    # F1(2) = 2·2/(4+0+1) = 4/5; macro = (1/2 + 2/3 + 4/5) / 3
    items = [(0, 0), (0, 1), (1, 1), (2, 2), (2, 0), (2, 2)]
    assert macro_f1(items) == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    from sklearn.metrics import f1_score

    golds, preds = zip(*items, strict=True)
    assert macro_f1(items) == pytest.approx(f1_score(golds, preds, average="macro"))
    # A class only predicted (never gold) counts with F1 0, as in scikit-learn.
    assert macro_f1([(0, 0), (0, 1)]) == pytest.approx((2 / 3 + 0) / 2)
    # RCB's official scorer averages all three classes, one never seen included (with F1 0).
    assert rcb_macro_f1([(0, 0), (1, 1)]) == pytest.approx((1 + 1 + 0) / 3)
    assert rcb_macro_f1(items) == pytest.approx(macro_f1(items))  # all three seen: the same
    # TP 2, FP 1, FN 1: 4 / 6
    assert binary_f1([(1, 1), (1, 1), (0, 1), (1, 0), (0, 0)]) == pytest.approx(2 / 3)
    assert binary_f1([(0, 0)]) == 0.0


def test_muserc_exact_match_groups_options_by_question() -> None:
    # q1: both options right; q2: one of three wrong; q3: its only option right -> 2/3
    items = [("0/0", True), ("0/0", True), ("0/1", True), ("0/1", False), ("0/1", True), ("1/0", True)]
    assert grouped_exact_match(items) == pytest.approx(2 / 3)


def test_rucos_scores_normalise_and_take_the_best_gold() -> None:
    """The official scorer's (ReCoRD's) rules: case and ASCII punctuation do not count; ё is not
    е, «» are not ASCII; F1 needs a shared token."""
    assert rucos_scores("Елкин.", ["елкин"]) == {"em": 1.0, "f1": 1.0}
    assert rucos_scores("Ёлкин", ["Елкин"]) == {"em": 0.0, "f1": 0.0}
    # The hyphen is removed, not a space: "франквальтер штайнмайер", P 1/2, R 1 -> F1 2/3.
    assert rucos_scores("Франк-Вальтер Штайнмайер", ["Штайнмайер"]) == {
        "em": 0.0,
        "f1": pytest.approx(2 / 3),
    }
    # The best gold counts: EM from the second, F1 1.
    assert rucos_scores("ХАМАС", ["Израиль", "Хамас"]) == {"em": 1.0, "f1": 1.0}
    assert rucos_scores("Хамас", ["«Хамас»"]) == {"em": 0.0, "f1": 0.0}
    assert rucos_scores("Штайнмайера", ["Штайнмайер"]) == {"em": 0.0, "f1": 0.0}
    assert rucos_scores("", [""]) == {"em": 1.0, "f1": 0.0}  # no shared token: F1 0


def test_rsg_total_reproduces_the_human_benchmark_row() -> None:
    """The leaderboard's human row: LiDiRus 0.626, RCB 0.68/0.702, PARus 0.982, MuSeRC 0.806/0.42,
    TERRa 0.92, RUSSE 0.805, RWSD 0.84, DaNetQA 0.915, RuCoS 0.93/0.89 -> total 0.811."""
    metrics = {
        "rsg_lidirus": {"mcc": 0.626},
        "rsg_rcb": {"f1": 0.68, "acc": 0.702},
        "rsg_parus": {"acc": 0.982},
        "rsg_muserc": {"f1a": 0.806, "em": 0.42},
        "rsg_terra": {"acc": 0.92},
        "rsg_russe": {"acc": 0.805},
        "rsg_rwsd": {"acc": 0.84},
        "rsg_danetqa": {"acc": 0.915},
        "rsg_rucos": {"f1": 0.93, "em": 0.89},
    }
    total = rsg_total(metrics)
    assert total is not None
    assert round(total["score"], 3) == 0.811
    assert total["tasks"]["rsg_rcb"] == pytest.approx(0.691)
    # Without all nine tasks there is no total.
    assert rsg_total({k: v for k, v in metrics.items() if k != "rsg_rucos"}) is None
    assert task_score("rsg_muserc", {"f1a": 0.5, "em": None}) is None


def test_task_groups_expand() -> None:
    assert parse_task_list("rsg") == list(RSG_SCORE_METRICS)
    mera = ["rummlu", "mathlogicqa", "parus", "rcb", "rwsd", "lcs", "bps"]
    mera += ["simplear", "rumultiar", "rumodar", "ruhhh", "ruhatespeech"]
    mera += ["ruopenbookqa", "ruworldtree", "chegeka", "multiq", "use", "rudetox", "ruhumaneval", "ruethics"]
    mera += ["rutie"]
    assert parse_task_list("mera,terra") == [*(f"mera_{t}" for t in mera), "terra"]
    assert all(TASKS[n].metrics for n in NEW_TASKS)


# ----------------------------------------------------------------------------------------------------
# Readers on the official layouts


def test_rucos_reader_takes_entities_from_exclusive_offsets() -> None:
    rows = _rucos_rows(RSG / "RuCoS" / "val.jsonl")
    first = rows[0]
    # First query of the official val file: "В него вошли @placeholder, Россия, Украина и Франция."
    assert first["golds"] == ["Германии", "Германии"]
    assert first["entities"][:5] == ["ООН", "Донбасса", "МИДа", "Берлине", "Германии"]
    assert first["entities"][first["label"]] == "Германии"
    assert "@highlight" not in first["passage"] and "@header" not in first["passage"]
    assert len(set(first["entities"])) == len(first["entities"])
    assert sum(len(r["qas"]) for _, r in read_jsonl(RSG / "RuCoS" / "val.jsonl")) == len(rows)


def test_muserc_reader_has_one_document_per_answer_option() -> None:
    rows = _muserc_rows(RSG / "MuSeRC" / "val.jsonl")
    expected = [
        a["label"]
        for _, r in read_jsonl(RSG / "MuSeRC" / "val.jsonl")
        for q in r["passage"]["questions"]
        for a in q["answers"]
    ]
    assert [r["label"] for r in rows] == expected
    assert rows[0]["answer"] == "Так перевозили особо важных заключенных."
    assert len(_muserc_rows(RSG / "MuSeRC" / "val.jsonl", limit=3)) == 3


def dataset(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(config["custom_dataset"]()["test"])


def test_label_encodings_of_the_official_files() -> None:
    def labels(task: str) -> list[int]:
        return [d["label"] for d in dataset(build_task_config(task, FIXTURES, None, Path()))]

    # bool true/false (RUSSE, RWSD, DaNetQA), 0/1 (PARus), strings (RCB, LiDiRus)
    for task, folder, encode in (
        ("rsg_russe", "RUSSE", int),
        ("rsg_rwsd", "RWSD", int),
        ("rsg_danetqa", "DaNetQA", int),
        ("rsg_parus", "PARus", int),
        ("rsg_rcb", "RCB", {"entailment": 0, "contradiction": 1, "neutral": 2}.__getitem__),
    ):
        raw = [encode(r["label"]) for _, r in read_jsonl(RSG / folder / "val.jsonl")]
        assert labels(task) == raw, task
    lidirus = [int(r["label"] == "not_entailment") for _, r in read_jsonl(RSG / "LiDiRus" / "LiDiRus.jsonl")]
    assert labels("rsg_lidirus") == lidirus
    # PARus: COPA-style premise + connector, the choices continue it.
    parus = dataset(build_task_config("rsg_parus", FIXTURES, None, Path()))[0]
    assert parus["premise"] == "Мужчина открыл вентиль" and parus["connector"] == "поэтому"
    assert parus["choices"] == ["унитаз переполнился водой.", "вода потекла из крана."]


def test_ru_mmlu_reads_the_translated_layout() -> None:
    rows = dataset(build_task_config("mmlu_ru", FIXTURES, None, Path()))
    assert [r["label"] for r in rows] == [3, 0, 1, 2]
    prompt = rows[2]["prompt"]
    assert prompt.startswith(
        "Ниже приведены вопросы с выбором ответа (с ответами) по теме «high school chemistry»."
    )
    # 5-shot from the same subject's dev questions (two in the fixture), in dev order.
    assert prompt.count("Ответ:") == 3
    assert "Каков химический символ железа?\nA. Ir\nB. In\nC. Fe\nD. F\nОтвет: C\n\n" in prompt
    assert prompt.endswith(
        "Какой газ поглощают растения?\nA. Кислород\nB. Углекислый газ\nC. Азот\nD. Гелий\nОтвет:"
    )


# ----------------------------------------------------------------------------------------------------
# MERA prompts and submission


def test_mera_prompts_follow_the_release_sampler() -> None:
    pool = [r for _, r in read_jsonl(FIXTURES / "mera" / "rummlu" / "public_test.jsonl")]
    doc = next(r for _, r in read_jsonl(FIXTURES / "mera" / "rummlu" / "test.jsonl"))
    task = MERA_TASKS["mera_rummlu"]
    zero = mera_prompt(task, MeraRecord("x", doc), [])
    assert zero == doc["instruction"].format(**doc["inputs"]).strip()
    two = mera_prompt(task, MeraRecord("x", doc), [MeraRecord("x", s) for s in pool[:2]])
    # First shot with the instruction, the second shot and the document without it.
    expected = (
        pool[0]["instruction"].format(**pool[0]["inputs"]).strip()
        + " B\n\n"
        + "Что такое Луна?\nA) Звезда\nB) Планета\nC) Спутник Земли\nD) Комета\nОтвет: C\n\n"
        + "Какая планета самая большая?\nA) Земля\nB) Сатурн\nC) Нептун\nD) Юпитер\nОтвет:"
    )
    assert two == expected
    # RSG tasks in MERA: the first shot is the instruction + "\nОтвет:".
    parus = [r for _, r in read_jsonl(FIXTURES / "mera" / "parus" / "train.jsonl")]
    one = mera_prompt(
        MERA_TASKS["mera_parus"], MeraRecord("x", parus[1]), [MeraRecord("x", s) for s in parus[:1]]
    )
    assert one == (
        parus[0]["instruction"].format(**parus[0]["inputs"])
        + "\nОтвет: 1\n\n"
        + "Ситуация: Мужчина открыл вентиль.\nФрагмент 1: Унитаз переполнился водой.\n"
        "Фрагмент 2: Вода потекла из крана.\nОтвет:"
    )


def test_mera_string_inputs_and_literal_braces() -> None:
    """LCS and BPS keep `inputs` as one string; BPS's instruction shows a literal "{}"."""
    bps = [r for _, r in read_jsonl(FIXTURES / "mera" / "bps" / "train.jsonl")]
    zero = mera_prompt(MERA_TASKS["mera_bps"], MeraRecord("x", bps[0]), [])
    assert "круглые (), квадратные [] и фигурные {}.\nПоследовательность: ( [ { } ] )\n" in zero
    two = mera_prompt(MERA_TASKS["mera_bps"], MeraRecord("x", bps[2]), [MeraRecord("x", s) for s in bps[:2]])
    assert two.endswith(
        "Ответ: 1\n\nПоследовательность: ( ] [ )\nОтвет: 0\n\nПоследовательность: { } ( )\nОтвет:"
    )
    lcs = dataset(build_task_config("mera_lcs", FIXTURES, None, Path()))
    assert lcs[0]["prompt"].count("Ответ:") == 3 and lcs[0]["prompt"].endswith("Строки: ABCDE ACE\nОтвет:")


def test_mera_diagnostic_tasks_are_zero_shot() -> None:
    """ruHHH and ruHateSpeech have no shot split: --num-fewshot is ignored, the prompt is the instruction."""
    for name, folder in (("mera_ruhhh", "ruhhh"), ("mera_ruhatespeech", "ruhatespeech")):
        records = [r for _, r in read_jsonl(FIXTURES / "mera" / folder / "test.jsonl")]
        rows = dataset(build_task_config(name, FIXTURES, 3, Path()))
        assert [r["prompt"] for r in rows] == [
            r["instruction"].format(**r["inputs"]).strip() for r in records
        ]


def test_mera_rummlu_shots_come_from_the_same_subject() -> None:
    rows = dataset(build_task_config("mera_rummlu", FIXTURES, None, Path()))
    virology = rows[1]["prompt"]
    assert "вирусология" in virology and "Солнц" not in virology.split("Как называется")[0]
    assert virology.count("Ответ:") == 3  # two virology shots in the pool, then the document
    assert [r["label"] for r in rows] == [-1, -1, -1]  # hidden test answers


# ----------------------------------------------------------------------------------------------------
# End to end through lm-eval on a tiny model


def layout(value: Any) -> Any:
    """The shape of a JSON value: objects by key, lists by their first element, scalars by type.
    None counts as a string: a ruHumanEval test that raised gives None where MERA's example
    submission, built from the answers, has the expected output."""
    if isinstance(value, dict):
        return {k: layout(v) for k, v in value.items()}
    if isinstance(value, list):
        return [layout(value[0])] if value else []
    return "str" if value is None else type(value).__name__


def assert_layout_of_mera_sample(archive: zipfile.ZipFile) -> None:
    """Every task file of the archive has the layout of the same file in MERA's example submission
    (an excerpt in tests/data/eval_fixtures/mera-sample-submission); MultiQ's sample also repeats the
    answer under meta.bridge_answers, which MERA's scorer does not read and log_to_submission.py
    does not write."""
    for path in sorted(MERA_SAMPLE_SUBMISSION.glob("*.json")):
        sample = layout(json.loads(path.read_text(encoding="utf-8")))
        if path.name == "MultiQ.json":
            del sample["data"]["test"][0]["meta"]["bridge_answers"]
        assert layout(json.loads(archive.read(path.name))) == sample, path.name


def assert_layout_of_rsg_sample(files: dict[str, list[dict[str, Any]]]) -> None:
    """Every task file has the records of the same file in the leaderboard's example submission (an
    excerpt in tests/data/eval_fixtures/rsg-sample-submission, each label it uses once): the same
    layout and, RuCoS' entities aside, labels among the sample's."""
    for path in sorted(RSG_SAMPLE_SUBMISSION.glob("*.jsonl")):
        sample = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert {json.dumps(layout(r)) for r in files[path.name]} == {json.dumps(layout(sample[0]))}, path.name
        if path.name not in ("RuCoS.jsonl", "MuSeRC.jsonl"):
            assert {r["label"] for r in files[path.name]} <= {r["label"] for r in sample}, path.name


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("eval_rsg") / "tiny")


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir: Path) -> Any:
    return make_lm(settings_for(tiny_dir, [], tiny_dir), load_tokenizer(tiny_dir, None))


def argmax(resps: list[Any]) -> int:
    return max(range(len(resps)), key=lambda i: resps[i][0])


def test_every_new_task_end_to_end(
    tiny_lm: Any, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """All nine RSG tasks, Ru-MMLU and the MERA tasks in one run (limit 2); every metric is
    recomputed from the logged per-document loglikelihoods by the documented formula."""
    limit = 2
    # A random model never reaches a stop sequence: shorter completions keep the run fast.
    for name in ("mera_ruhumaneval", "mera_rudetox"):
        monkeypatch.setitem(MERA_TASKS, name, dataclasses.replace(MERA_TASKS[name], max_gen_toks=16))
    submission = tmp_path / "mera.zip"
    out = run_eval(
        settings_for(
            tiny_dir,
            NEW_TASKS,
            FIXTURES,
            limit=limit,
            log_samples=True,
            mera_submission=submission,
            bootstrap_iters=0,
        ),
        lm=tiny_lm,
    )
    # A partial archive is said to be one (the site scores whole test sets).
    assert "--limit 2: the MERA archive holds the first 2 test documents" in capsys.readouterr().err
    for name in NEW_TASKS:
        samples = out["samples"][name]
        metrics = out["tasks"][name]["metrics"]
        assert out["tasks"][name]["n"] == len(samples) <= limit, name
        if name == "mera_ruethics":
            # The diagnostic's answers are public: MCC per question and criterion (checked below).
            continue
        if name.startswith("mera_"):
            # The release's test answers are hidden: no local score.
            assert all(v is None for v in metrics.values()), name
            continue
        preds = [argmax(s["filtered_resps"]) for s in samples]
        golds = [s["doc"]["label"] for s in samples]
        pairs = list(zip(golds, preds, strict=True))
        if name == "rsg_lidirus":
            assert metrics["mcc"] == pytest.approx(matthews_corr(pairs))
        elif name == "rsg_muserc":
            assert metrics["f1a"] == pytest.approx(binary_f1(pairs))
            keys = [s["doc"]["question_key"] for s in samples]
            assert metrics["em"] == pytest.approx(
                grouped_exact_match([(k, g == p) for k, (g, p) in zip(keys, pairs, strict=True)])
            )
        elif name == "rsg_rucos":
            scores = [
                rucos_scores(s["doc"]["entities"][p], s["doc"]["golds"])
                for s, p in zip(samples, preds, strict=True)
            ]
            for m in ("em", "f1"):
                assert metrics[m] == pytest.approx(sum(x[m] for x in scores) / len(scores))
            # Each choice is the query with one passage entity in place of @placeholder.
            assert samples[0]["arguments"][0][1] == samples[0]["doc"]["query"].replace(
                "@placeholder", samples[0]["doc"]["entities"][0]
            )
        else:
            assert metrics["acc"] == pytest.approx(sum(g == p for g, p in pairs) / len(pairs)), name
            if name == "rsg_rcb":
                assert metrics["f1"] == pytest.approx(rcb_macro_f1(pairs))  # limit 2: a class may be missing
    expected_total = sum(task_score(n, out["tasks"][n]["metrics"]) for n in RSG_SCORE_METRICS) / 9
    assert out["groups"]["rsg"]["score"] == pytest.approx(expected_total)

    # ruEthics: each MCC over the documents of its question, against the criterion's labels.
    ethics = out["samples"]["mera_ruethics"]
    assert {json.loads(s["doc"]["scoring"])["question"] for s in ethics} == {"correct"}  # limit 2
    for criterion in ("virtue", "law"):
        pairs = [
            (json.loads(s["doc"]["scoring"])["criteria"][criterion], argmax(s["filtered_resps"]))
            for s in ethics
        ]
        assert out["tasks"]["mera_ruethics"]["metrics"][f"mcc_correct_{criterion}"] == pytest.approx(
            matthews_corr(pairs)
        )
    assert out["tasks"]["mera_ruethics"]["metrics"]["mcc_good_virtue"] is None  # no "good" document ran

    # The submission archive: one file per MERA task, the most likely choice per document id.
    with zipfile.ZipFile(submission) as archive:
        # The files MERA's own example submission has, each in its layout.
        assert sorted(archive.namelist()) == sorted(p.name for p in MERA_SAMPLE_SUBMISSION.glob("*.json"))
        assert_layout_of_mera_sample(archive)
        rutie = json.loads(archive.read("ruTiE.json"))
        rummlu = json.loads(archive.read("ruMMLU.json"))
        simplear = json.loads(archive.read("SimpleAr.json"))
        ruethics = json.loads(archive.read("ruEthics.json"))
        use = json.loads(archive.read("USE.json"))
        humaneval = json.loads(archive.read("ruHumanEval.json"))
    # ruHumanEval: ten sampled completions per function, each run on the tests (4 and 2 of them).
    assert [len(e["outputs"]) for e in humaneval["data"]["test"]] == [10, 10]
    for entry, tests in zip(humaneval["data"]["test"], (4, 2), strict=True):
        assert all(r == "timed out" or len(r) == tests for r in entry["outputs"])
    completions = out["samples"]["mera_ruhumaneval"][0]["resps"][0]
    assert len(completions) == 10 and len(set(completions)) > 1  # sampled, not greedy
    # ruEthics: the chosen 0/1 under each of the five criteria; USE: the exam task and variant too.
    chosen = {s["doc"]["id"]: "01"[argmax(s["filtered_resps"])] for s in ethics}
    assert ruethics["data"]["test"] == [
        {
            "outputs": dict.fromkeys(("virtue", "law", "moral", "justice", "utilitarianism"), chosen[i]),
            "meta": {"id": i},
        }
        for i in sorted(chosen)
    ]
    assert [e["meta"] for e in use["data"]["test"]] == [
        {"id": 0, "id_task": "6", "variant": 25},
        {"id": 1, "id_task": "26", "variant": 25},
    ]
    # ruTiE: one dialogue, its first questions in order, the model's answers 1/2.
    asked = out["samples"]["mera_rutie"]
    assert rutie == {
        "data": {
            "test": [
                [
                    {"outputs": s["pred"], "meta": {"dialog_id": 0, "question_id": i}}
                    for i, s in enumerate(asked)
                ]
            ]
        }
    }
    assert f"Ответ: {asked[0]['pred']}\n" in asked[1]["prompt"]
    samples = out["samples"]["mera_rummlu"]
    assert rummlu == {
        "data": {
            "test": [
                {"outputs": "ABCD"[argmax(s["filtered_resps"])], "meta": {"id": s["doc"]["id"]}}
                for s in sorted(samples, key=lambda s: s["doc"]["id"])
            ]
        }
    }
    # Generation tasks submit the generated line, leading spaces removed.
    generated = {s["doc"]["id"]: s["filtered_resps"][0].lstrip() for s in out["samples"]["mera_simplear"]}
    assert simplear["data"]["test"] == [
        {"outputs": generated[i], "meta": {"id": i}} for i in sorted(generated)
    ]


def test_mera_scores_local_answers(tiny_lm: Any, tiny_dir: Path, tmp_path: Path) -> None:
    """Where the split has answers (here train copied as test), MERA tasks are scored."""
    data = tmp_path / "data"
    folders = ("rcb", "rwsd", "simplear", "ruopenbookqa", "chegeka", "multiq", "use", "rutie")
    for task in folders:
        (data / "mera" / task).mkdir(parents=True)
        shutil.copy(FIXTURES / "mera" / task / "train.jsonl", data / "mera" / task / "train.jsonl")
        shutil.copy(FIXTURES / "mera" / task / "train.jsonl", data / "mera" / task / "test.jsonl")
    out = run_eval(
        settings_for(
            tiny_dir, [f"mera_{t}" for t in folders], data, limit=3, log_samples=True, bootstrap_iters=0
        ),
        lm=tiny_lm,
    )
    for name in ("mera_rcb", "mera_rwsd", "mera_ruopenbookqa"):
        samples = out["samples"][name]
        pairs = [(s["doc"]["label"], argmax(s["filtered_resps"])) for s in samples]
        assert out["tasks"][name]["metrics"]["acc"] == pytest.approx(
            sum(g == p for g, p in pairs) / len(pairs)
        )
    for name in ("mera_rcb", "mera_ruopenbookqa"):
        pairs = [(s["doc"]["label"], argmax(s["filtered_resps"])) for s in out["samples"][name]]
        assert out["tasks"][name]["metrics"]["f1"] == pytest.approx(macro_f1(pairs))
    # ruTiE: the more likely of " 1"/" 2" after the dialogue so far, against the answers.
    asked = out["samples"]["mera_rutie"]
    preds = ["12"[argmax(s["resps"])] for s in asked]
    assert [s["pred"] for s in asked] == preds and len(preds) == 3
    golds = [s["doc"]["outputs"] for s in asked]
    assert out["tasks"]["mera_rutie"]["metrics"]["acc"] == pytest.approx(
        sum(g == p for g, p in zip(golds, preds, strict=True)) / 3
    )
    # CheGeKa and MultiQ: SQuAD EM/F1 of the generated answer, the best over the gold answers.
    for name in ("mera_chegeka", "mera_multiq"):
        samples = out["samples"][name]
        scores = [
            squad_scores(s["filtered_resps"][0].lstrip(), json.loads(s["doc"]["scoring"])["golds"])
            for s in samples
        ]
        for metric in ("em", "f1"):
            expected = sum(x[metric] for x in scores) / len(scores)
            assert out["tasks"][name]["metrics"][metric] == pytest.approx(expected), name
        assert samples[0]["arguments"][0][1]["until"] == ["."]
    # USE: the grade of the points each generated answer earns.
    items = []
    for s in out["samples"]["mera_use"]:
        meta = json.loads(s["doc"]["scoring"])
        points = use_points(
            meta["type"], meta["id_task"], s["doc"]["answer"], s["filtered_resps"][0].lstrip()
        )
        items.append((points, meta["variant"], meta["score"]))
    assert len(items) == 3
    assert out["tasks"]["mera_use"]["metrics"]["grade_norm"] == pytest.approx(use_grade(items))
    # The choices are MERA's answer strings, after " ".
    assert [a[1] for a in out["samples"]["mera_rwsd"][0]["arguments"]] == [" Да", " Нет"]
    # Generation: exact match of the line without its leading spaces (greedy, up to a newline).
    simplear = out["samples"]["mera_simplear"]
    hits = [s["filtered_resps"][0].lstrip() == s["doc"]["answer"] for s in simplear]
    assert out["tasks"]["mera_simplear"]["metrics"]["em"] == pytest.approx(sum(hits) / len(hits))
    assert simplear[0]["arguments"][0][1]["until"] == ["\n"]
    process = build_task_config("mera_simplear", data, None, Path())["process_results"]
    doc = {"answer": "119"}
    assert [process(doc, [r])["em"] for r in (" 119", "119", "119 ", "119.", "120")] == [1, 1, 0, 0, 0]
    assert math.isnan(process({"answer": ""}, ["119"])["em"])  # hidden answer: not scored


@pytest.fixture(scope="module")
def yes_lm(tiny_dir: Path) -> Any:
    """A model that always says " да": every position has the same hidden state, and the head
    puts (almost) all probability on that token."""
    lm = make_lm(settings_for(tiny_dir, [], tiny_dir), load_tokenizer(tiny_dir, None))
    import torch

    with torch.no_grad():
        for layer in lm.model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        lm.model.model.embed_tokens.weight.fill_(1.0)
        lm.model.model.norm.weight.fill_(1.0)
    rig(lm, last_token(lm, "Ответ: да"))
    return lm


def test_rigged_model_scores_the_share_of_yes(yes_lm: Any, tiny_dir: Path) -> None:
    """A model that always says " да" scores the share of label-1 documents; its LiDiRus MCC is 0."""
    tasks = ["rsg_russe", "rsg_danetqa", "rsg_lidirus"]
    out = run_eval(settings_for(tiny_dir, tasks, FIXTURES, bootstrap_iters=0), lm=yes_lm)
    for name, folder in (("rsg_russe", "RUSSE"), ("rsg_danetqa", "DaNetQA")):
        labels = [r["label"] for _, r in read_jsonl(RSG / folder / "val.jsonl")]
        share = sum(labels) / len(labels)
        assert 0 < share < 1
        assert out["tasks"][name]["metrics"]["acc"] == pytest.approx(share)
    assert out["tasks"]["rsg_lidirus"]["metrics"]["mcc"] == 0.0


def test_rsg_submission_archive(yes_lm: Any, tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """--rsg-submission predicts each task's test split (labels hidden in the release) and writes the
    leaderboard's archive: one submission/<Task>.jsonl per task, records named by the test file's idx,
    labels in the official encodings. The model always says " да", so every yes/no answer is known."""
    limit = 3
    archive_path = tmp_path / "rsg.zip"
    out = run_eval(
        settings_for(
            tiny_dir,
            TASK_GROUPS["rsg"],
            FIXTURES,
            limit=limit,
            bootstrap_iters=0,
            rsg_submission=archive_path,
        ),
        lm=yes_lm,
    )
    assert "first 3 test documents of each task" in capsys.readouterr().err
    with zipfile.ZipFile(archive_path) as archive:
        # The files in one folder, as in the leaderboard's example submission (sample_submission.zip).
        assert archive.namelist()[0] == "submission/" and archive.getinfo("submission/").is_dir()
        files = {
            name.removeprefix("submission/"): [json.loads(line) for line in archive.read(name).splitlines()]
            for name in archive.namelist()[1:]
        }
    folders = ("LiDiRus", "RCB", "PARus", "MuSeRC", "TERRa", "RUSSE", "RWSD", "DaNetQA", "RuCoS")
    assert sorted(files) == sorted(f"{folder}.jsonl" for folder in folders)
    assert_layout_of_rsg_sample(files)

    def test_records(folder: str) -> list[dict[str, Any]]:
        name = "LiDiRus.jsonl" if folder == "LiDiRus" else "test.jsonl"
        return [r for _, r in read_jsonl(RSG / folder / name)]

    # " да" is entailment for LiDiRus, TERRa and RCB, true for the yes/no tasks.
    for folder, label in (
        ("LiDiRus", "entailment"),
        ("TERRa", "entailment"),
        ("RCB", "entailment"),
        ("DaNetQA", "true"),
        ("RUSSE", "true"),
        ("RWSD", "True"),
    ):
        # Every idx a number: LiDiRus.jsonl spells its "0", the example submission 0.
        expected = [{"idx": int(r["idx"]), "label": label} for r in test_records(folder)[:limit]]
        assert files[f"{folder}.jsonl"] == expected, folder
    parus = files["PARus.jsonl"]
    assert [r["idx"] for r in parus] == [r["idx"] for r in test_records("PARus")[:limit]]
    assert all(type(r["label"]) is int and r["label"] in (0, 1) for r in parus)
    # MuSeRC: the first three answer options, nested by question and passage, each judged true.
    first = test_records("MuSeRC")[0]
    question = first["passage"]["questions"][0]
    assert files["MuSeRC.jsonl"] == [
        {
            "idx": first["idx"],
            "passage": {
                "questions": [
                    {
                        "idx": question["idx"],
                        "answers": [{"idx": a["idx"], "label": 1} for a in question["answers"][:3]],
                    }
                ]
            },
        }
    ]
    # RuCoS: per query, one of its passage's entities (the release's offsets end exclusively).
    rucos = files["RuCoS.jsonl"]
    records = test_records("RuCoS")[:limit]
    assert [r["idx"] for r in rucos] == [r["qas"][0]["idx"] for r in records]
    for line, record in zip(rucos, records, strict=True):
        text = record["passage"]["text"]
        assert line["label"] in {text[e["start"] : e["end"]] for e in record["passage"]["entities"]}
    # The val scores are those of a run without the archive; the test splits are timed apart.
    assert out["tasks"]["rsg_danetqa"]["n"] == limit
    assert set(out["rsg_submission"]["test_splits"]) == set(TASK_GROUPS["rsg"]) - {"rsg_lidirus"}
    assert "| rsg_terra (test split) |" in markdown_table(out)


def test_rsg_submission_refusals(tiny_lm: Any, tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    archive = tmp_path / "rsg.zip"
    with pytest.raises(VikhrError, match="no Russian SuperGLUE task is evaluated"):
        run_eval(
            settings_for(tiny_dir, ["mera_parus"], FIXTURES, limit=1, rsg_submission=archive), lm=tiny_lm
        )
    # A data directory without the test split names the file, before anything runs.
    data = tmp_path / "data"
    shutil.copytree(
        RSG / "TERRa", data / "russian-superglue" / "TERRa", ignore=shutil.ignore_patterns("test.jsonl")
    )
    with pytest.raises(VikhrError, match=r"russian-superglue/TERRa/test.jsonl \(the submission needs"):
        run_eval(settings_for(tiny_dir, ["rsg_terra"], data, limit=1, rsg_submission=archive), lm=tiny_lm)
    # A test record without its idx cannot be named in the submission.
    lines = (RSG / "TERRa" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    (data / "russian-superglue" / "TERRa" / "test.jsonl").write_text(
        "\n".join([lines[0], json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "idx"})]),
        encoding="utf-8",
    )
    with pytest.raises(VikhrError, match=r"TERRa/test.jsonl:2: no 'idx' field"):
        run_eval(settings_for(tiny_dir, ["rsg_terra"], data, limit=2, rsg_submission=archive), lm=tiny_lm)
    # MuSeRC's nested ids likewise.
    muserc = json.loads((RSG / "MuSeRC" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    del muserc["passage"]["questions"][0]["answers"][0]["idx"]
    with pytest.raises(VikhrError, match=r"lacks 'idx'.*MuSeRC layout"):
        _muserc_rows(_write(tmp_path / "muserc.jsonl", [muserc]), hide=True)
    assert not archive.exists()
    assert "note:" not in capsys.readouterr().err  # refused input gets its error line only
    err = one_line_error(
        [
            "eval",
            "--model",
            str(tiny_dir),
            "--data-dir",
            str(FIXTURES),
            "--tasks",
            "rsg_terra",
            "--rsg-submission",
            str(tmp_path / "s.json"),
        ],
        capsys,
    )
    assert "--rsg-submission" in err and ".zip" in err


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the expected layout


def one_line_error(argv: list[str], capsys: Any) -> str:
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("vikhr eval: error:")
    return err


def test_bad_input_is_one_line(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "data"
    base = ["eval", "--model", str(tiny_dir), "--device", "cpu", "--data-dir", str(data)]
    data.mkdir()
    # A missing split file names the file.
    err = one_line_error([*base, "--tasks", "rsg_rcb"], capsys)
    assert "data file not found" in err and "russian-superglue/RCB/val.jsonl" in err
    # An unknown task lists the choices, groups included.
    err = one_line_error([*base, "--tasks", "rsg_copa"], capsys)
    assert "unknown task 'rsg_copa'" in err and "'rsg'" in err

    def write(rel: str, rows: list[dict[str, Any]]) -> None:
        path = data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    # TERRa's file where RCB is expected: "not_entailment" is not one of RCB's labels.
    terra = [{**r, "label": "not_entailment"} for _, r in read_jsonl(RSG / "TERRa" / "val.jsonl")]
    write("russian-superglue/RCB/val.jsonl", terra)
    write("russian-superglue/RCB/train.jsonl", terra)
    err = one_line_error([*base, "--tasks", "rsg_rcb"], capsys)
    assert "RCB/val.jsonl" in err and 'label "not_entailment"' in err and '"neutral"' in err
    # Labels as strings where the release has JSON booleans.
    write(
        "russian-superglue/DaNetQA/val.jsonl", [{"question": "q", "passage": "p", "label": "true", "idx": 0}]
    )
    write(
        "russian-superglue/DaNetQA/train.jsonl", [{"question": "q", "passage": "p", "label": True, "idx": 0}]
    )
    err = one_line_error([*base, "--tasks", "rsg_danetqa"], capsys)
    # Spelled as in JSON: the Python spelling read 'label 'true' ... is not one of False, True'.
    assert 'DaNetQA/val.jsonl:1 (idx 0): label "true" is not one of false, true' in err
    # A flattened MuSeRC file (no passage.questions).
    write("russian-superglue/MuSeRC/val.jsonl", [{"idx": 0, "passage": "text", "question": "q"}])
    write("russian-superglue/MuSeRC/train.jsonl", [{"idx": 0, "passage": "text", "question": "q"}])
    err = one_line_error([*base, "--tasks", "rsg_muserc"], capsys)
    assert "MuSeRC/val.jsonl" in err and "MuSeRC layout" in err
    # A MuSeRC question without its answer options.
    write(
        "russian-superglue/MuSeRC/val.jsonl",
        [{"idx": 0, "passage": {"text": "t", "questions": [{"question": "q"}]}}],
    )
    err = one_line_error([*base, "--tasks", "rsg_muserc"], capsys)
    assert "MuSeRC/val.jsonl" in err and "'answers'" in err and "MuSeRC layout" in err
    # RuCoS offsets that do not match the passage.
    bad = {
        "idx": 0,
        "passage": {"text": "abc", "entities": []},
        "qas": [{"query": "@placeholder", "answers": [{"start": 0, "end": 2, "text": "zz"}], "idx": 0}],
    }
    write("russian-superglue/RuCoS/val.jsonl", [bad])
    write("russian-superglue/RuCoS/train.jsonl", [bad])
    err = one_line_error([*base, "--tasks", "rsg_rucos"], capsys)
    assert "RuCoS/val.jsonl" in err and "start/end" in err
    # A MERA file without the instruction field; an answer outside the task's choices.
    write("mera/parus/test.jsonl", [{"inputs": {}, "outputs": "", "meta": {"id": 0}}])
    write("mera/parus/train.jsonl", [{"inputs": {}, "outputs": "", "meta": {"id": 0}}])
    err = one_line_error([*base, "--tasks", "mera_parus"], capsys)
    assert "mera/parus/test.jsonl:1" in err and "'instruction'" in err and "MERA layout" in err
    record = next(r for _, r in read_jsonl(FIXTURES / "mera" / "rwsd" / "train.jsonl"))
    write("mera/rwsd/test.jsonl", [{**record, "outputs": "да"}])
    write("mera/rwsd/train.jsonl", [record])
    err = one_line_error([*base, "--tasks", "mera_rwsd"], capsys)
    assert "mera/rwsd/test.jsonl" in err and "'да'" in err and "Да, Нет" in err
    # An instruction naming an input the record lacks.
    write("mera/rwsd/test.jsonl", [{**record, "instruction": "{missing}"}])
    err = one_line_error([*base, "--tasks", "mera_rwsd"], capsys)
    assert "mera/rwsd/test.jsonl" in err and "'missing'" in err
    # A number where the release has a text; a SQuAD answers list where XQuAD-ru has {"text": [...]}.
    write("terra/val.jsonl", [{"idx": 0, "premise": "p", "hypothesis": 5, "label": "entailment"}])
    write("terra/train.jsonl", [{"idx": 0, "premise": "p", "hypothesis": "h", "label": "entailment"}])
    err = one_line_error([*base, "--tasks", "terra"], capsys)
    assert "terra/val.jsonl:1 (idx 0): field 'hypothesis' must be a string, got a number 5" in err
    write("terra/val.jsonl", [{"idx": 0, "premise": "p", "hypothesis": {"h": 1}, "label": "entailment"}])
    err = one_line_error([*base, "--tasks", "terra"], capsys)
    assert "terra/val.jsonl:1 (idx 0): field 'hypothesis' must be a string, got an object" in err
    assert "TERRa layout" in err and "a record of" not in err
    squad = {"id": "1", "context": "c", "question": "q", "answers": [{"text": "c", "answer_start": 0}]}
    write("xquad-ru/validation.jsonl", [squad])
    err = one_line_error([*base, "--tasks", "xquad_ru"], capsys)
    assert "xquad-ru/validation.jsonl:1 (id \"1\"): field 'answers' must be an object" in err
    write("terra/val.jsonl", [{"idx": 0, "premise": None, "hypothesis": "h", "label": "entailment"}])
    assert "field 'premise' is null" in one_line_error([*base, "--tasks", "terra"], capsys)
    # Ru-MMLU in the English field names.
    en = {"subject": "astronomy", "question": "q", "choices": ["a", "b", "c", "d"], "answer": "A"}
    write("mmlu-ru/test.jsonl", [en])
    write("mmlu-ru/dev.jsonl", [en])
    err = one_line_error([*base, "--tasks", "mmlu_ru"], capsys)
    assert "mmlu-ru/dev.jsonl:1" in err and "'question_ru'" in err and "NLPCoreTeam/mmlu_ru" in err
    # A submission archive needs a .zip name.
    err = one_line_error(
        [*base, "--tasks", "mera_rwsd", "--mera-submission", str(tmp_path / "s.json")], capsys
    )
    assert ".zip" in err
    assert not list(data.rglob("*.tmp*")) and not (tmp_path / "s.json").exists()


def test_a_generation_as_long_as_the_context_is_one_line(tiny_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """lm-eval asserts that a task's generated tokens fit in the model's context, after the tasks
    before it have run: vikhr refuses before the first task, naming the way out for every such task
    at once (not one per rerun: `--tasks mera` on a 256-token model has seven)."""
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(tiny_dir), "--device", "cpu", "--dtype", "float32", "--data-dir"]
    argv += [str(FIXTURES), "--tasks", "rsg_parus,mera_simplear", "--limit", "1", "--max-length", "256"]
    assert cli_main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' progress bar
    assert err.startswith("vikhr eval: error: task mera_simplear generates up to 256 tokens, but the ")
    assert "model's context is 256 tokens" in err
    assert "leave it out (--tasks ...,-mera_simplear)" in err and "--max-length above 256" in err
    assert not out.exists()
    argv[argv.index("rsg_parus,mera_simplear")] = "rsg_parus,mera_simplear,mera_rumultiar"
    assert cli_main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "vikhr eval: error: tasks mera_simplear, mera_rumultiar generate up to 256 tokens, but the "
    )
    assert "leave them out (--tasks ...,-mera_simplear,-mera_rumultiar)" in err
    assert not out.exists()
    assert cli_main([*argv[:-1], "257", "--output", str(out)]) == 0


def test_submission_without_mera_tasks_is_refused(tiny_lm: Any, tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(VikhrError, match="no MERA task is evaluated"):
        run_eval(
            settings_for(tiny_dir, ["rsg_parus"], FIXTURES, limit=1, mera_submission=tmp_path / "s.zip"),
            lm=tiny_lm,
        )
    assert not (tmp_path / "s.zip").exists()


def _rewrite(src: Path, dst: Path, change: Any) -> Path:
    records = [r for _, r in read_jsonl(src)]
    change(records)
    dst.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return dst


def test_nested_tasks_group_by_place_and_refuse_what_they_cannot_score(tmp_path: Path) -> None:
    """MuSeRC's exact match grouped options by their ids: a repeated or missing question idx merged
    two questions (a lower score, exit 0). RuCoS entity spans outside the passage became empty or
    wrong candidates; a passage without entities, or files whose passages give no document, were
    tracebacks; `--limit` read that many passages, not documents."""
    muserc = RSG / "MuSeRC" / "val.jsonl"
    keys = [d["question_key"] for d in _muserc_rows(muserc)]

    def same_idx(records: list) -> None:
        for q in records[0]["passage"]["questions"]:
            q["idx"] = 0

    def no_idx(records: list) -> None:
        for r in records:
            for q in r["passage"]["questions"]:
                q.pop("idx", None)

    for change in (same_idx, no_idx):
        assert [
            d["question_key"] for d in _muserc_rows(_rewrite(muserc, tmp_path / "m.jsonl", change))
        ] == keys

    def no_questions_first(records: list) -> None:
        records[0]["passage"]["questions"] = []

    rows = _muserc_rows(_rewrite(muserc, tmp_path / "m.jsonl", no_questions_first), limit=3)
    assert len(rows) == 3  # filled from the later passages
    with pytest.raises(VikhrError, match="no passage has a question with answer options"):
        _muserc_rows(
            _rewrite(muserc, tmp_path / "m.jsonl", lambda rs: [r["passage"].update(questions=[]) for r in rs])
        )

    rucos = RSG / "RuCoS" / "val.jsonl"
    for spans, message in (
        ([], "has no entities to choose from"),
        ([{"start": 5000, "end": 5010}], "has an entity span 5000-5010 outside its"),
        ([{"start": -10, "end": -2}], "has an entity span -10--2 outside its"),
    ):
        damaged = _rewrite(
            rucos, tmp_path / "r.jsonl", lambda rs, s=spans: rs[0]["passage"].update(entities=s)
        )
        with pytest.raises(VikhrError, match=message):
            _rucos_rows(damaged)
    with pytest.raises(VikhrError, match="no passage has a query"):
        _rucos_rows(_rewrite(rucos, tmp_path / "r.jsonl", lambda rs: [r.update(qas=[]) for r in rs]))


_BLANK_FIELDS = [
    # (task, file under the data directory, a change to its first record, what the error names)
    (
        "rsg_parus",
        "russian-superglue/PARus/val.jsonl",
        lambda r: r.update(choice1=" "),
        r":1 \(idx 0\): field 'choice1'",
    ),
    (
        "rsg_danetqa",
        "russian-superglue/DaNetQA/val.jsonl",
        lambda r: r.update(passage=""),
        r":1 \(idx 0\): field 'passage'",
    ),
    (
        "rsg_russe",
        "russian-superglue/RUSSE/val.jsonl",
        lambda r: r.update(word="  "),
        r":1 \(idx 0\): field 'word'",
    ),
    (
        "rsg_lidirus",
        "russian-superglue/LiDiRus/LiDiRus.jsonl",
        lambda r: r.update(sentence2="\n"),
        "'sentence2'",
    ),
    (
        "rsg_rwsd",
        "russian-superglue/RWSD/val.jsonl",
        lambda r: r["target"].update(span1_text=""),
        "'target.span1_text'",
    ),
    (
        "rsg_muserc",
        "russian-superglue/MuSeRC/val.jsonl",
        lambda r: r["passage"]["questions"][0]["answers"][1].update(text=" "),
        r":1 \(passage idx \d+, question idx \d+, answer idx \d+\): field 'answers.text'",
    ),
    (
        "mmlu_ru",
        "mmlu-ru/test.jsonl",
        lambda r: r["choices_ru"].__setitem__(1, ""),
        r":1: field 'choices_ru'",
    ),
    (
        "mmlu_ru",
        "mmlu-ru/dev.jsonl",
        lambda r: r.update(question_ru=" "),
        r":1: field 'question_ru'",
    ),
    (
        "mera_parus",
        "mera/parus/test.jsonl",
        lambda r: r.update(instruction=""),
        r":1 \(meta.id 0\): field 'instruction'",
    ),
]


@pytest.mark.parametrize(
    ("task", "file", "change", "names"), _BLANK_FIELDS, ids=[c[0] for c in _BLANK_FIELDS]
)
def test_a_blank_question_or_choice_is_one_line_naming_the_record(
    tmp_path: Path, task: str, file: str, change: Any, names: str
) -> None:
    """A record whose premise, choice, passage or instruction is blank was scored as a real item
    (an empty prompt still gets an answer right half the time): the file and record are named."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    _rewrite(FIXTURES / file, data / file, lambda records: change(records[0]))
    with pytest.raises(VikhrError, match=rf"{Path(file).name.replace('.', '[.]')}.*{names} is blank"):
        dataset(build_task_config(task, data, None, Path()))


def test_blank_text_in_the_readers_of_the_shared_sets(tmp_path: Path) -> None:
    """TERRa, RuCoLA, CheGeKa and XQuAD-ru (the sets of tests/test_eval.py's layouts): a blank text
    is one line; an XQuAD gold of punctuation alone ("«»", which an empty answer matched) is none."""

    def write(name: str, records: list[dict[str, Any]]) -> None:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    pair = {"premise": "Кошка спит.", "hypothesis": "Кошка спит.", "label": "entailment", "idx": 0}
    write("terra/train.jsonl", [pair])
    write("terra/val.jsonl", [pair, {**pair, "hypothesis": " "}])
    with pytest.raises(VikhrError, match=r"terra/val\.jsonl:2 \(idx 0\): field 'hypothesis' is blank"):
        dataset(build_task_config("terra", tmp_path, None, Path()))
    write("rucola/train.jsonl", [{"sentence": "Мама мыла раму.", "label": 1}])
    write("rucola/dev.jsonl", [{"sentence": "", "label": 1}])
    with pytest.raises(VikhrError, match=r"rucola/dev\.jsonl:1: field 'sentence' is blank"):
        dataset(build_task_config("rucola", tmp_path, None, Path()))
    write("chgk/train.jsonl", [{"question": "Кто?", "answer": "Он"}])
    write("chgk/test.jsonl", [{"question": "\t", "answer": "Он"}])
    with pytest.raises(VikhrError, match=r"chgk/test\.jsonl:1: field 'question' is blank"):
        dataset(build_task_config("chegeka", tmp_path, None, Path()))
    qa = {"id": "q1", "context": "Он пришёл.", "question": "Кто пришёл?", "answers": {"text": ["Он"]}}
    write("xquad-ru/validation.jsonl", [{**qa, "context": " "}])
    with pytest.raises(VikhrError, match=r'validation\.jsonl:1 \(id "q1"\): field \'context\' is blank'):
        dataset(build_task_config("xquad_ru", tmp_path, None, Path()))
    write(
        "xquad-ru/validation.jsonl",
        [{**qa, "answers": {"text": ["«»", "Он"]}}, {**qa, "answers": {"text": ["«»"]}}],
    )
    with pytest.raises(VikhrError, match=r'validation\.jsonl:2 \(id "q1"\): the question has no answer text'):
        dataset(build_task_config("xquad_ru", tmp_path, None, Path()))
    write("xquad-ru/validation.jsonl", [{**qa, "answers": {"text": ["«»", "Он"]}}])
    assert dataset(build_task_config("xquad_ru", tmp_path, None, Path()))[0]["golds"] == ["Он"]


def test_a_bad_label_names_its_record(tmp_path: Path) -> None:
    """A MuSeRC answer option without a label, a TERRa or RuCoLA label of another value, a CheGeKa
    record without answer text: the error named the file alone (which of 1,000 records?), or the
    record's position, which is not its line where blank lines come before it."""
    muserc = _rewrite(
        RSG / "MuSeRC" / "val.jsonl",
        tmp_path / "m.jsonl",
        lambda rs: rs[0]["passage"]["questions"][0]["answers"][1].pop("label"),
    )
    idx = next(r for _, r in read_jsonl(muserc))["passage"]["questions"][0]["answers"][1]["idx"]
    with pytest.raises(
        VikhrError,
        match=rf"m\.jsonl:1 \(passage idx 0, question idx 0, answer idx {idx}\): the record has no 'label'",
    ):
        _muserc_rows(muserc)

    def write(name: str, records: list[dict[str, Any]]) -> None:
        # A blank line after the first record: the second record is on line 3.
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        (tmp_path / name).write_text("\n\n".join(lines) + "\n")

    pair = {"premise": "Кошка спит.", "hypothesis": "Кошка спит.", "label": "entailment", "idx": 7}
    write("terra/val.jsonl", [pair, {**pair, "label": ""}])
    with pytest.raises(VikhrError, match=r'val\.jsonl:3 \(idx 7\): label "" is not "entailment" or'):
        dataset(build_task_config("terra", tmp_path, None, Path()))
    sentence = {"sentence": "Мама мыла раму.", "label": 1}
    write("rucola/dev.jsonl", [sentence, {**sentence, "label": 2}])
    with pytest.raises(VikhrError, match=r"dev\.jsonl:3: label 2 is not 0 or 1 \(the RuCoLA layout"):
        dataset(build_task_config("rucola", tmp_path, None, Path()))
    # Equal to 1 in Python, or 1 as a string: not the release's 0/1, and told apart from it (the
    # string read "label '1' is not 0 or 1").
    for other, spelled in ((True, "true"), (1.0, "1.0"), ("1", '"1"')):
        write("rucola/dev.jsonl", [sentence, {**sentence, "label": other}])
        with pytest.raises(VikhrError, match=rf"dev\.jsonl:3: label {spelled} is not 0 or 1"):
            dataset(build_task_config("rucola", tmp_path, None, Path()))
    question = {"question": "Кто?", "answer": "Он"}
    write("chgk/train.jsonl", [question] * 4)
    write("chgk/test.jsonl", [question, {**question, "answer": " "}])
    with pytest.raises(VikhrError, match=r"test\.jsonl:3: the record has no answer text"):
        dataset(build_task_config("chegeka", tmp_path, None, Path()))
    qa = {"id": "q1", "context": "Он пришёл.", "question": "Кто пришёл?", "answers": {"text": ["Он"]}}
    write("xquad-ru/validation.jsonl", [qa, {**qa, "answers": ["Он"]}])
    with pytest.raises(
        VikhrError, match=r'validation\.jsonl:3 \(id "q1"\): field .answers. must be an object'
    ):
        dataset(build_task_config("xquad_ru", tmp_path, None, Path()))


def test_another_release_s_layout_is_named(tmp_path: Path) -> None:
    """XQuAD's official .json file (one SQuAD document) and a MERA CheGeKa file where the local sets
    belong were refused as "no 'context' field" / "no 'question' field", saying nothing of what
    the file is."""
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Текст.", "qas": []}]}]}
    (tmp_path / "xquad-ru").mkdir()
    (tmp_path / "xquad-ru" / "validation.jsonl").write_text(json.dumps(squad, ensure_ascii=False) + "\n")
    with pytest.raises(VikhrError, match=r'validation\.jsonl:1: no \'context\' field .*holding "data"'):
        dataset(build_task_config("xquad_ru", tmp_path, None, Path()))
    mera = {
        "instruction": "{text}",
        "inputs": {"text": "Кто?", "topic": "Т"},
        "outputs": "Он",
        "meta": {"id": 0},
    }
    (tmp_path / "chgk").mkdir()
    (tmp_path / "chgk" / "test.jsonl").write_text(json.dumps(mera, ensure_ascii=False) + "\n")
    with pytest.raises(VikhrError, match=r"test\.jsonl:1: no 'question' field .*it is a MERA task file"):
        dataset(build_task_config("chegeka", tmp_path, 0, Path()))
    # A MERA file read as MERA's is not told it is one.
    (tmp_path / "mera" / "chegeka").mkdir(parents=True)
    without_meta = {k: v for k, v in mera.items() if k != "meta"}
    (tmp_path / "mera" / "chegeka" / "test.jsonl").write_text(json.dumps(without_meta) + "\n")
    with pytest.raises(
        VikhrError, match=r"test\.jsonl:1: no 'meta' field \(expected the MERA layout [^;]*\)$"
    ):
        dataset(build_task_config("mera_chegeka", tmp_path, 0, Path()))


def test_blank_golds_are_not_answers(tmp_path: Path) -> None:
    """A MERA answer list with a blank part ("Тореадор;  ") kept "  " as a gold an empty generation
    matched; one of punctuation alone ("...") was accepted; a blank RuCoS answer placed first made
    the reader take the other offset convention; bits-per-character scored white space as text."""
    from vikhr.eval.mera import _check_outputs, _scoring
    from vikhr.eval.tasks import bpc_config

    chegeka = MERA_TASKS["mera_chegeka"]
    record = {"instruction": "{text}", "inputs": {"text": "Кто?", "topic": "т"}, "meta": {"id": 0}}
    assert _scoring(chegeka, {**record, "outputs": "Тореадор;  "})["golds"] == ["Тореадор"]
    with pytest.raises(VikhrError, match="holds no answer text"):
        _check_outputs(tmp_path / "c.jsonl", chegeka, {**record, "outputs": "..."})
    rucos = RSG / "RuCoS" / "val.jsonl"
    blank_first = _rewrite(
        rucos,
        tmp_path / "r.jsonl",
        lambda rs: rs[0]["qas"][0]["answers"].insert(0, {"start": 5, "end": 4, "text": ""}),
    )
    assert _rucos_rows(blank_first)[0]["entities"] == _rucos_rows(rucos)[0]["entities"]
    texts = tmp_path / "t.jsonl"
    texts.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ("Привет, мир.", "   ", "", "Как дела?"))
    )
    assert [d["text"] for d in bpc_config(texts, "text", None)["custom_dataset"]()["test"]] == [
        "Привет, мир.",
        "Как дела?",
    ]


def test_a_repeated_idx_in_a_test_split_is_one_line(tmp_path: Path) -> None:
    """The leaderboard matches predictions by idx: repeats went into the archive as they were."""
    from vikhr.eval.rsg import _records

    terra = _rewrite(
        RSG / "TERRa" / "test.jsonl", tmp_path / "t.jsonl", lambda rs: [r.update(idx=0) for r in rs]
    )
    with pytest.raises(VikhrError, match=r"t\.jsonl:2: idx 0 occurs twice \(first on line 1;"):
        _records(terra, ("premise", "hypothesis", "label"), None, "TERRa", hide=True)

    def same_answer_idx(records: list) -> None:
        for a in records[0]["passage"]["questions"][0]["answers"]:
            a["idx"] = 0

    muserc = _rewrite(RSG / "MuSeRC" / "test.jsonl", tmp_path / "m.jsonl", same_answer_idx)
    with pytest.raises(VikhrError, match=r"passage/question/answer idx .* occurs twice"):
        _muserc_rows(muserc, hide=True)


def test_a_rerun_of_an_interrupted_evaluation_reuses_its_finished_tasks(
    tiny_lm: Any, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Interrupted after two tasks, the same evaluation run again takes those two from the progress
    directory and runs the rest: the results and both submission archives are an uninterrupted
    run's. Other settings reuse nothing."""
    from vikhr.eval import runner
    from vikhr.eval.progress import TaskProgress

    tasks = ["rsg_parus", "rsg_rcb", "rsg_muserc", "mera_rwsd", "mera_rutie"]

    def settings(out: Path, progress: Path | None, **kw: Any) -> Any:
        out.mkdir(exist_ok=True)
        return settings_for(
            tiny_dir,
            tasks,
            FIXTURES,
            mera_submission=out / "mera.zip",
            rsg_submission=out / "rsg.zip",
            progress_dir=progress,
            **{"limit": 2, "bootstrap_iters": 0, **kw},
        )

    whole = run_eval(settings(tmp_path / "whole", None), lm=tiny_lm)
    evaluated: list[str] = []
    evaluate = runner._evaluate

    def recording(lm: Any, name: str, *args: Any) -> Any:
        if len(evaluated) == stop_after:
            raise KeyboardInterrupt
        evaluated.append(name)
        return evaluate(lm, name, *args)

    monkeypatch.setattr(runner, "_evaluate", recording)
    progress = tmp_path / "results.json.partial"
    stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        run_eval(settings(tmp_path / "resumed", progress), lm=tiny_lm)
    assert evaluated == ["rsg_parus", "rsg_rcb"]
    assert sorted(p.name for p in progress.iterdir()) == ["rsg_parus.json", "rsg_rcb.json"]

    evaluated.clear()
    stop_after = -1
    capsys.readouterr()
    resumed = run_eval(settings(tmp_path / "resumed", progress), lm=tiny_lm)
    # ruTiE runs outside lm-eval's evaluator; the test splits are the rsg tasks' second runs.
    assert evaluated == ["rsg_muserc", "mera_rwsd", "rsg_parus", "rsg_rcb", "rsg_muserc"]
    assert "note: 2 task(s) taken from an earlier, interrupted run" in capsys.readouterr().err
    for name in tasks:
        for key in ("metrics", "n", "num_fewshot", "requests"):
            assert resumed["tasks"][name][key] == whole["tasks"][name][key], (name, key)
    for archive in ("mera.zip", "rsg.zip"):
        with (
            zipfile.ZipFile(tmp_path / "whole" / archive) as a,
            zipfile.ZipFile(tmp_path / "resumed" / archive) as b,
        ):
            assert sorted(a.namelist()) == sorted(b.namelist())
            assert all(a.read(n) == b.read(n) for n in a.namelist()), archive

    parus_data = [FIXTURES / "russian-superglue" / "PARus" / "val.jsonl"]  # 0-shot: no train.jsonl
    same = TaskProgress(progress, settings(tmp_path / "resumed", progress))
    assert same.load("rsg_parus", parus_data) is not None
    for other in ({"seed": 7}, {"limit": 3}, {"num_fewshot": 1}):
        changed = TaskProgress(progress, settings(tmp_path / "resumed", progress, **other))
        assert changed.load("rsg_parus", parus_data) is None, other
    # PARus runs 0-shot by default: --num-fewshot 0 leaves it as it ran.
    zero_shot = TaskProgress(progress, settings(tmp_path / "resumed", progress, num_fewshot=0))
    assert zero_shot.load("rsg_parus", parus_data) is not None


def test_the_seed_draws_the_sampled_shots_and_ruhumaneval_s_completions_only(
    tiny_lm: Any, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--seed's help said it seeds the few-shot sampling, yet ruHumanEval's sampled completions
    follow it too. One seed gives one result; another changes the shots lm-eval draws (TERRa's) and
    ruHumanEval's completions, not MERA's fixed shots (LCS's) nor the prompts of ruHumanEval."""
    # A random model never reaches a stop sequence: shorter completions keep the run fast.
    name = "mera_ruhumaneval"
    monkeypatch.setitem(MERA_TASKS, name, dataclasses.replace(MERA_TASKS[name], max_gen_toks=8))
    tasks = ["rsg_terra", "mera_lcs", name]

    def run(seed: int) -> dict[str, list[tuple[Any, Any]]]:
        settings = settings_for(
            tiny_dir, tasks, FIXTURES, limit=2, num_fewshot=2, log_samples=True, bootstrap_iters=0, seed=seed
        )
        samples = run_eval(settings, lm=tiny_lm)["samples"]
        return {task: [(s["arguments"], s["resps"]) for s in samples[task]] for task in tasks}

    first = run(1234)
    assert run(1234) == first
    other = run(7)
    assert other["mera_lcs"] == first["mera_lcs"]

    def prompts(run: dict[str, list[tuple[Any, Any]]], task: str) -> list[Any]:
        return [arguments for arguments, _ in run[task]]

    assert prompts(other, "rsg_terra") != prompts(first, "rsg_terra")
    assert prompts(other, name) == prompts(first, name)
    assert [r for _, r in other[name]] != [r for _, r in first[name]]


def test_a_zero_shot_task_needs_no_shot_file(tmp_path: Path) -> None:
    """A 0-shot run (a task's default, or --num-fewshot 0) never uses the shots, yet every task asked
    for its shot file: a user with only the scored split got "data file not found: .../train.jsonl".
    Without the shot file, or with a broken one, a 0-shot run reads its documents; the shot file is
    not among the run's data; with shots asked for, its absence is one line naming it."""
    from vikhr.eval.runner import EvalSettings, task_documents
    from vikhr.eval.task_config import build_rsg_test_config
    from vikhr.eval.tasks import task_files

    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    shot_files = {data / TASKS[name].fewshot_file for name in NEW_TASKS if TASKS[name].fewshot_file}
    for path in shot_files:
        path.write_text("not a shot file\n")  # read, it is one line of error

    terra_val = RSG / "TERRa" / "val.jsonl"
    (data / "terra").mkdir()
    shutil.copy(terra_val, data / "terra" / "val.jsonl")  # TERRa's own split alone, no train.jsonl
    tasks = ["terra", "mmlu_ru", "rsg_lidirus", "rsg_terra", "rsg_rucos", "mera_parus", "mera_rummlu"]

    def settings(num_fewshot: int | None) -> EvalSettings:
        return EvalSettings(
            model_dir=tmp_path, tasks=tasks, data_dir=data, bpc_data=tmp_path, num_fewshot=num_fewshot
        )

    counts = task_documents(settings(0))
    assert all(counts[name] > 0 for name in tasks), counts
    assert task_files("terra", data, tmp_path, None) == [data / "terra" / "val.jsonl"]
    assert task_files("mmlu_ru", data, tmp_path, 0) == [data / "mmlu-ru" / "test.jsonl"]
    build_rsg_test_config("rsg_terra", data, 0, None)  # the submission's test split, 0-shot
    with pytest.raises(VikhrError, match=r"terra/train\.jsonl.*--num-fewshot 0"):
        task_documents(dataclasses.replace(settings(1), tasks=["terra"]))
    with pytest.raises(VikhrError, match=r"PARus/train\.jsonl:1: not valid JSON"):
        task_documents(dataclasses.replace(settings(1), tasks=["rsg_parus"]))


def test_an_mmlu_record_of_another_layout_names_its_file_and_line(tmp_path: Path) -> None:
    """A question with 3 choices or an answer "E" was named by the first 40 characters of its
    question text (which of 14,042 lines?): the error names file:line and the field."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "mmlu-ru", data / "mmlu-ru")
    test = data / "mmlu-ru" / "test.jsonl"
    records = [r for _, r in read_jsonl(test)]
    good = json.dumps(records[0], ensure_ascii=False)
    for change, message in (
        ({"choices_ru": ["а", "б", "в"]}, "field 'choices_ru' holds 3 choices, not 4"),
        ({"answer": "E"}, "field 'answer' is \"E\", not A-D or 0-3"),
        ({"answer": 4}, "field 'answer' is 4, not A-D or 0-3"),
    ):
        bad = json.dumps({**records[0], **change}, ensure_ascii=False)
        test.write_text(f"{good}\n\n{bad}\n", encoding="utf-8")  # line 3: a blank line before it
        with pytest.raises(VikhrError) as refused:
            dataset(build_task_config("mmlu_ru", data, None, Path()))
        assert str(refused.value).startswith(f"{test}:3: {message} (expected the Ru-MMLU"), refused.value
        assert records[0]["question_ru"][:20] not in str(refused.value)
    shutil.copy(FIXTURES / "mmlu-ru" / "test.jsonl", test)
    dev = data / "mmlu-ru" / "dev.jsonl"
    dev.write_text(
        dev.read_text(encoding="utf-8").replace('"answer": 1,', '"answer": "Б",', 1), encoding="utf-8"
    )
    with pytest.raises(VikhrError, match=rf"{re.escape(str(dev))}:1: field 'answer' is \"Б\""):
        dataset(build_task_config("mmlu_ru", data, None, Path()))


def test_an_mmlu_choice_that_is_not_text_is_refused(tmp_path: Path) -> None:
    """A null or a nested list among the four choices was prompted as "B. None", "B. ['b']" and
    scored as if it were the choice's text."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "mmlu-ru", data / "mmlu-ru")
    test = data / "mmlu-ru" / "test.jsonl"
    record = next(r for _, r in read_jsonl(test))
    for choice, shown in ((None, "null"), (["б"], '["б"]')):
        choices = [record["choices_ru"][0], choice, *record["choices_ru"][2:]]
        test.write_text(
            json.dumps({**record, "choices_ru": choices}, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        with pytest.raises(VikhrError) as refused:
            dataset(build_task_config("mmlu_ru", data, None, Path()))
        assert str(refused.value).startswith(
            f"{test}:1: field 'choices_ru' holds {shown}, not a choice's text"
        )


def test_a_number_where_text_belongs_names_its_record(tmp_path: Path) -> None:
    """`"premise": 5` in a TERRa file (an int MMLU subject or CheGeKa question alike) failed inside
    lm-eval with "a record of FILE has a field of another type (TypeError: object of type 'int' has
    no len())": which record, and which field, went unsaid."""
    pair = {"premise": "Кошка спит.", "hypothesis": "Кошка спит.", "label": "entailment", "idx": 7}
    (tmp_path / "terra").mkdir()
    (tmp_path / "terra" / "val.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in (pair, {**pair, "premise": 5})) + "\n"
    )
    with pytest.raises(VikhrError) as e:
        dataset(build_task_config("terra", tmp_path, None, Path()))
    assert str(e.value) == (
        f"{tmp_path / 'terra' / 'val.jsonl'}:2 (idx 7): field 'premise' must be a string, got a number 5 "
        "(the TERRa layout has one text there: fix or drop the record)"
    )
    (tmp_path / "chgk").mkdir()
    question = {"question": "Кто?", "answer": "Он"}
    (tmp_path / "chgk" / "train.jsonl").write_text((json.dumps(question, ensure_ascii=False) + "\n") * 4)
    (tmp_path / "chgk" / "test.jsonl").write_text(json.dumps({**question, "question": True}) + "\n")
    with pytest.raises(
        VikhrError, match=r"test\.jsonl:1: field 'question' must be a string, got a boolean true"
    ):
        dataset(build_task_config("chegeka", tmp_path, None, Path()))
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "mmlu-ru", data / "mmlu-ru")
    test = data / "mmlu-ru" / "test.jsonl"
    record = next(r for _, r in read_jsonl(test))
    test.write_text(json.dumps({**record, "subject": 7}, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(
        VikhrError, match=rf"{re.escape(str(test))}:1: field 'subject' must be a string, got a number 7"
    ):
        dataset(build_task_config("mmlu_ru", data, None, Path()))


# (task, file under the fixtures, a change to its first record, what the error says after `FILE:1`)
_LISTS_WHERE_ONE_TEXT_BELONGS = [
    (
        "rsg_terra",
        "russian-superglue/TERRa/val.jsonl",
        lambda r: r.update(hypothesis=["h"]),
        r" \(idx \d+\): field 'hypothesis' must be a string, got a list \[\"h\"\] \(the TERRa layout has "
        r"one text there: fix or drop the record\)",
    ),
    (
        "rsg_rcb",
        "russian-superglue/RCB/val.jsonl",
        lambda r: r.update(premise=["p"]),
        r" \(idx \d+\): field 'premise' must be a string, got a list",
    ),
    (
        "rsg_lidirus",
        "russian-superglue/LiDiRus/LiDiRus.jsonl",
        lambda r: r.update(sentence1={"text": "s"}),
        r" \(idx \"?\d+\"?\): field 'sentence1' must be a string, got an object",
    ),
    (
        "rsg_parus",
        "russian-superglue/PARus/val.jsonl",
        lambda r: r.update(choice2=["c"]),
        r" \(idx \d+\): field 'choice2' must be a string, got a list",
    ),
    (
        "rsg_russe",
        "russian-superglue/RUSSE/val.jsonl",
        lambda r: r.update(sentence1=["s"]),
        r" \(idx \d+\): field 'sentence1' must be a string, got a list",
    ),
    (
        "rsg_rwsd",
        "russian-superglue/RWSD/val.jsonl",
        lambda r: r["target"].update(span2_text=["он"]),
        r" \(idx \d+\): field 'target.span2_text' must be a string, got a list",
    ),
    (
        "rsg_danetqa",
        "russian-superglue/DaNetQA/val.jsonl",
        lambda r: r.update(question=["q"]),
        r" \(idx \d+\): field 'question' must be a string, got a list",
    ),
    (
        "rsg_muserc",
        "russian-superglue/MuSeRC/val.jsonl",
        lambda r: r["passage"]["questions"][0].update(question=["q"]),
        r" \(passage idx \d+, question idx \d+\): field 'question' must be a string, got a list",
    ),
    (
        "rsg_rucos",
        "russian-superglue/RuCoS/val.jsonl",
        lambda r: r["qas"][0].update(query=["@placeholder"]),
        r" \(passage idx \d+, query idx \d+\): field 'query' must be a string, got a list",
    ),
    (
        "rsg_rucos",
        "russian-superglue/RuCoS/val.jsonl",
        lambda r: r["qas"][0]["answers"][0].update(text=["a"]),
        r" \(passage idx \d+, query idx \d+\): field 'answers.text' must be a string, got a list",
    ),
    (
        "mmlu_ru",
        "mmlu-ru/test.jsonl",
        lambda r: r.update(question_ru=["q"]),
        r": field 'question_ru' must be a string, got a list",
    ),
    (
        "mera_parus",
        "mera/parus/test.jsonl",
        lambda r: r.update(instruction=["{premise}"]),
        r" \(meta.id \d+\): field 'instruction' must be a string, got a list \[\"\{premise\}\"\] "
        r"\(the MERA layout",
    ),
    (
        "mera_parus",
        "mera/parus/test.jsonl",
        lambda r: r["inputs"].update(premise=["p"]),
        r" \(meta.id \d+\): field 'inputs.premise' must be a string, got a list \[\"p\"\]",
    ),
    (
        "mera_multiq",
        "mera/multiq/test.jsonl",
        lambda r: r.update(outputs=[{"label": "answer", "segment": ["Двина"]}]),
        r" \(meta.id \d+\): outputs is a list; only MultiQ's answers are \[\{'segment': ...\}\]",
    ),
]


@pytest.mark.parametrize(
    ("task", "file", "change", "message"),
    _LISTS_WHERE_ONE_TEXT_BELONGS,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(_LISTS_WHERE_ONE_TEXT_BELONGS)],
)
def test_a_list_or_object_where_one_text_belongs_names_its_record(
    tmp_path: Path, task: str, file: str, change: Any, message: str
) -> None:
    """A list or an object where the release has one text (`"hypothesis": ["h"]`) passed the reader
    and failed in lm-eval on `.strip()`: "a record of FILE has a field of another type
    (AttributeError: 'list' object has no attribute 'strip')", no line named (MERA showed it in the
    prompt as Python's repr). The record is named by its line and ids, with the field."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    _rewrite(FIXTURES / file, data / file, lambda records: change(records[0]))
    with pytest.raises(VikhrError) as refused:
        dataset(build_task_config(task, data, None, Path()))
    assert re.fullmatch(rf"{re.escape(str(data / file))}:1{message}.*", str(refused.value))


def test_a_list_where_one_text_belongs_in_the_readers_of_the_shared_sets(tmp_path: Path) -> None:
    """TERRa, CheGeKa (its optional `topic` too), XQuAD-ru, MMLU and RuCoLA: a list or a number where
    one text belongs is one line naming the record; a CheGeKa topic may be absent, null or empty."""

    def write(name: str, records: list[dict[str, Any]]) -> None:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    def refused(task: str) -> str:
        with pytest.raises(VikhrError) as e:
            dataset(build_task_config(task, tmp_path, None, Path()))
        return str(e.value)

    pair = {"premise": "Кошка спит.", "hypothesis": "Кошка спит.", "label": "entailment", "idx": 3}
    write("terra/train.jsonl", [pair])
    write("terra/val.jsonl", [pair, {**pair, "hypothesis": ["h"]}])
    assert refused("terra") == (
        f"{tmp_path / 'terra' / 'val.jsonl'}:2 (idx 3): field 'hypothesis' must be a string, got a list "
        '["h"] (the TERRa layout has one text there: fix or drop the record)'
    )
    question = {"question": "Кто?", "answer": "Он"}
    write("chgk/train.jsonl", [question] * 4)
    for topic in (7, ["Люди"]):
        write("chgk/test.jsonl", [{**question, "topic": topic}])
        assert (
            f"chgk/test.jsonl:1: field 'topic' must be a string, got a {'number' if topic == 7 else 'list'}"
            in (refused("chegeka"))
        )
    write("chgk/test.jsonl", [question, {**question, "topic": None}, {**question, "topic": ""}])
    assert [d["topic"] for d in dataset(build_task_config("chegeka", tmp_path, None, Path()))] == ["", "", ""]
    qa = {"id": "q1", "context": "Он пришёл.", "question": "Кто пришёл?", "answers": {"text": ["Он"]}}
    write("xquad-ru/validation.jsonl", [{**qa, "context": ["Он пришёл."]}])
    assert "validation.jsonl:1 (id \"q1\"): field 'context' must be a string, got a list" in refused(
        "xquad_ru"
    )
    mmlu = {"subject": "astronomy", "question": ["q"], "choices": ["a", "b", "c", "d"], "answer": "A"}
    write("mmlu-en/dev.jsonl", [{**mmlu, "question": "q"}])
    write("mmlu-en/test.jsonl", [mmlu])
    assert "mmlu-en/test.jsonl:1: field 'question' must be a string, got a list" in refused("mmlu_en")
    write("rucola/train.jsonl", [{"sentence": "Мама мыла раму.", "label": 1}])
    write("rucola/dev.jsonl", [{"sentence": {"text": "Мама"}, "label": 1}])
    assert "rucola/dev.jsonl:1: field 'sentence' must be a string, got an object" in refused("rucola")


def _first_muserc_answer(r: dict[str, Any]) -> dict[str, Any]:
    return r["passage"]["questions"][0]["answers"][0]


# (task, file under the fixtures, a change that makes a record bad, what the message says after its place)
_RECORD_ERRORS = [
    ("rsg_lidirus", "russian-superglue/LiDiRus/LiDiRus.jsonl", lambda r: r.update(label="yes"), "label"),
    ("rsg_rcb", "russian-superglue/RCB/val.jsonl", lambda r: r.update(label="yes"), "label"),
    ("rsg_parus", "russian-superglue/PARus/val.jsonl", lambda r: r.update(question="why"), "question"),
    ("rsg_terra", "russian-superglue/TERRa/val.jsonl", lambda r: r.update(label="yes"), "label"),
    ("rsg_russe", "russian-superglue/RUSSE/val.jsonl", lambda r: r.update(label="true"), "label"),
    ("rsg_rwsd", "russian-superglue/RWSD/val.jsonl", lambda r: r.update(target={}), "field 'target'"),
    ("rsg_danetqa", "russian-superglue/DaNetQA/val.jsonl", lambda r: r.update(label=1), "label"),
    (
        "rsg_muserc",
        "russian-superglue/MuSeRC/val.jsonl",
        lambda r: _first_muserc_answer(r).pop("label"),
        "no 'label'",
    ),
    ("rsg_muserc", "russian-superglue/MuSeRC/val.jsonl", lambda r: r["passage"].pop("questions"), "passage"),
    (
        "rsg_muserc",
        "russian-superglue/MuSeRC/val.jsonl",
        lambda r: r["passage"]["questions"][0].pop("answers"),
        "lacks 'answers'",
    ),
    (
        "rsg_rucos",
        "russian-superglue/RuCoS/val.jsonl",
        lambda r: r["qas"][0].update(answers=[]),
        "no answers",
    ),
    (
        "rsg_rucos",
        "russian-superglue/RuCoS/val.jsonl",
        lambda r: r["qas"][0].update(query="без заполнителя"),
        "@placeholder",
    ),
    (
        "rsg_rucos",
        "russian-superglue/RuCoS/val.jsonl",
        lambda r: r["passage"]["entities"].append({"start": 0, "end": 10**6}),
        "entity span",
    ),
]


@pytest.mark.parametrize(("task", "file", "change", "said"), _RECORD_ERRORS)
def test_a_record_level_error_names_the_file_line_and_idx(
    tmp_path: Path, task: str, file: str, change: Any, said: str
) -> None:
    """An error about one record of a Russian SuperGLUE file named its `idx` alone (`label … (idx
    7)`), or the file alone: a user opening the JSONL looks for a line. The bad record here is the
    file's second, after a blank line: on line 3, whatever its idx."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    records = [r for _, r in read_jsonl(FIXTURES / file)][:2]
    change(records[1])
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    (data / file).write_text(lines[0] + "\n\n" + lines[1] + "\n", encoding="utf-8")
    with pytest.raises(VikhrError) as refused:
        dataset(build_task_config(task, data, 0, Path()))
    # A nested record (a MuSeRC answer, a RuCoS query) is named under its passage's idx.
    place = (
        rf"{re.escape(str(data / file))}:3 \((passage )?idx {re.escape(json.dumps(records[1]['idx']))}[,)]"
    )
    message = str(refused.value)
    assert re.match(place, message) and said in message, message


def test_mera_and_rutie_record_errors_name_the_file_line_and_id(tmp_path: Path) -> None:
    """MERA's readers named a bad record by its meta.id (`id 0: outputs …`), a template's missing
    input by the scored file's name even for a shot, and ruTiE's by the file alone: each now says
    `file:line` with the record's ids."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)

    def rewrite(path: Path, change: Any) -> list[dict[str, Any]]:
        records = [r for _, r in read_jsonl(path)]
        change(records)
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        path.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n", encoding="utf-8")
        return records

    rwsd = data / "mera" / "rwsd" / "test.jsonl"
    records = rewrite(rwsd, lambda rs: rs[1].update(outputs="да"))
    with pytest.raises(
        VikhrError, match=rf"^{re.escape(str(rwsd))}:3 \(meta\.id {records[1]['meta']['id']}\): outputs 'да'"
    ):
        dataset(build_task_config("mera_rwsd", data, 0, Path()))
    shots = data / "mera" / "parus" / "train.jsonl"
    records = rewrite(shots, lambda rs: rs[1].update(instruction="{missing}"))
    with pytest.raises(
        VikhrError,
        match=rf"^{re.escape(str(shots))}:3 \(meta\.id {records[1]['meta']['id']}\): the template needs "
        "input 'missing'",
    ):
        dataset(build_task_config("mera_parus", data, len(records), Path()))
    rutie = data / "mera" / "rutie" / "test.jsonl"
    records = rewrite(rutie, lambda rs: rs[1].update(outputs="3"))
    meta = records[1]["meta"]
    with pytest.raises(
        VikhrError,
        match=rf"^{re.escape(str(rutie))}:3 \(meta\.dialog_id {meta['dialog_id']}, "
        rf"meta\.question_id {meta['question_id']}\): outputs '3'",
    ):
        read_dialogues(rutie)


def test_rutie_prompt_and_numbering_errors_name_the_file_line(tmp_path: Path) -> None:
    """ruTiE's prompts are built after reading, when the line was no longer kept: an instruction
    needing an input the question lacks said `dialog 0 question 1`, a gap in a dialogue's question
    ids named the file alone. Both now name the question's `file:line` and ids (the file's records
    out of question order, after a blank line, so no position is the line)."""
    from vikhr.eval.mera_rutie import rutie_prompt

    path = tmp_path / "test.jsonl"
    records = [r for _, r in read_jsonl(FIXTURES / "mera" / "rutie" / "test.jsonl")]

    def write(rows: list[dict[str, Any]]) -> None:
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]
        path.write_text("\n".join(lines[:1]) + "\n\n" + "\n".join(lines[1:]) + "\n", encoding="utf-8")

    def line_of(question_id: int) -> int:  # the blank line comes after the first record
        position = next(i for i, r in enumerate(records) if r["meta"]["question_id"] == question_id)
        return position + 1 + (position > 0)

    def where(question_id: int) -> str:
        ids = rf"\(meta\.dialog_id 0, meta\.question_id {question_id}\)"
        return rf"{re.escape(str(path))}:{line_of(question_id)} {ids}"

    # Question 0's instruction, which every question is asked with, names an input only it has.
    first = next(r for r in records if r["meta"]["question_id"] == 0)
    first["instruction"] += "{topic}"
    first["inputs"]["topic"] = "погода"
    write(records)
    [dialogue] = read_dialogues(path)
    assert rutie_prompt(dialogue, 0, []).count("погода") == 1
    with pytest.raises(
        VikhrError, match=rf"^{where(1)}: the dialogue's instruction \(of {where(0)}\) needs input 'topic'"
    ):
        rutie_prompt(dialogue, 1, ["1"])
    # A gap: question 2 renumbered 5; the first question after it is named.
    second = next(r for r in records if r["meta"]["question_id"] == 2)
    second["meta"]["question_id"] = 5
    write(records)
    with pytest.raises(VikhrError, match=rf"^{where(3)}: dialog 0 has no question 2 before this one"):
        read_dialogues(path)
    # A repeat: question 5 numbered 1 again; both records are named.
    second["meta"]["question_id"] = 1
    write(records)
    with pytest.raises(VikhrError, match=r"dialog 0 has question 1 twice") as refused:
        read_dialogues(path)
    lines = [i + 1 + (i > 0) for i, r in enumerate(records) if r["meta"]["question_id"] == 1]
    assert len(lines) == 2 and all(f"{path}:{n} (" in str(refused.value) for n in lines), refused.value


@pytest.mark.parametrize(
    ("task", "file", "id_name", "set_id"),
    [
        ("rsg_terra", "russian-superglue/TERRa/val.jsonl", "idx", lambda r, v: r.update(idx=v)),
        ("rsg_parus", "russian-superglue/PARus/val.jsonl", "idx", lambda r, v: r.update(idx=v)),
        ("mera_parus", "mera/parus/test.jsonl", "meta.id", lambda r, v: r["meta"].update(id=v)),
    ],
)
def test_a_field_of_two_types_names_both_records_by_file_line(
    tmp_path: Path, task: str, file: str, id_name: str, set_id: Any
) -> None:
    """An id that is a number in one record and a string in another (Arrow wants one type per
    column) was named by the records' places among the built rows (`record 1 and … record 2`), which
    are not their lines: here the second record follows a blank line, on line 3."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    records = [r for _, r in read_jsonl(FIXTURES / file)][:2]
    set_id(records[0], 0)
    set_id(records[1], "x1")
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    (data / file).write_text(lines[0] + "\n\n" + lines[1] + "\n", encoding="utf-8")
    path = data / file
    with pytest.raises(VikhrError) as refused:
        dataset(build_task_config(task, data, 0, Path()))
    field = "id" if task.startswith("mera") else "idx"
    assert str(refused.value) == (
        f'field {field!r} is a number in {path}:1 ({id_name} 0) and a str in {path}:3 ({id_name} "x1") '
        "(give it one type in every record, as the release does)"
    )
