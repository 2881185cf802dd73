"""MERA's own metrics on hand-checked cases (SQuAD EM/F1, the USE grade, ruEthics MCC), the prompts
and submission records of CheGeKa, MultiQ, ruOpenBookQA, ruWorldTree, USE, ruDetox and ruEthics,
and one-line errors for their bad input. The end-to-end lm-eval run of every MERA task is in
tests/test_eval_tasks_rsg.py.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TerminalStderr
from vikhr.errors import VikhrError
from vikhr.eval.mera import MERA_TASKS, MeraRecord, mera_prompt, write_submission
from vikhr.eval.mera_code import execute_completions, pass_at_k, passes, run_tests, unfenced
from vikhr.eval.mera_metrics import (
    ethics_items,
    ethics_mcc,
    squad_f1,
    squad_scores,
    use_grade,
    use_points,
)
from vikhr.eval.task_config import build_task_config
from vikhr.eval.tasks import task_files
from vikhr.jsonl import read_jsonl

pytest.importorskip("lm_eval")

FIXTURES = Path(__file__).parent / "data" / "eval_fixtures"
MERA = FIXTURES / "mera"


def records(task: str, split: str = "train") -> list[dict[str, Any]]:
    return [r for _, r in read_jsonl(MERA / task / f"{split}.jsonl")]


def dataset(name: str, data_dir: Path = FIXTURES, num_fewshot: int | None = None) -> list[dict[str, Any]]:
    return list(build_task_config(name, data_dir, num_fewshot, Path())["custom_dataset"]()["test"])


# ----------------------------------------------------------------------------------------------------
# Metrics


def test_squad_exact_match_and_f1() -> None:
    # SQuAD's normalisation: case, ASCII punctuation and English articles do not count ...
    assert squad_scores(" The Тореадор!", ["тореадор"]) == {"em": 1.0, "f1": 1.0}
    # ... but ё is not е, and the hyphen is removed, not a space: "санктпетербург" is one token.
    assert squad_scores("ёлка", ["елка"]) == {"em": 0.0, "f1": 0.0}
    assert squad_scores("Санкт Петербург", ["Санкт-Петербург"]) == {"em": 0.0, "f1": 0.0}
    # "река волга" vs "волга": precision 1/2, recall 1 -> F1 2/3
    assert squad_f1("река Волга", "Волга") == pytest.approx(2 / 3)
    # The best gold counts (CheGeKa's answers are ";"-separated in the release).
    assert squad_scores("Петербург", ["Санкт-Петербург", "Петербург"]) == {"em": 1.0, "f1": 1.0}
    # An empty prediction scores 0 against a non-empty gold, 1 against an empty one.
    assert squad_f1("", "Волга") == 0.0 and squad_f1("!", "") == 1.0


def test_use_points_by_answer_type() -> None:
    # matching: one point per position; a length mismatch earns nothing
    assert use_points("matching", "26", "4,9,2,8", "4,9,1,8") == 3
    assert use_points("matching", "26", "4,9,2,8", "4,9") == 0
    # text: digits and non-word characters dropped, lower-cased, one of the accepted words
    assert use_points("text", "6", "холодный", "Холодный.") == 1
    assert use_points("text", "6", "холодный,внезапный", "внезапный") == 1
    assert use_points("text", "6", "холодный", "холодный мороз") == 0
    # multiple choice: the set of numbers must be the answer's
    kind = "multiple_choice_independent_options"
    assert use_points(kind, "9", "1,3", "3,1") == 1
    assert use_points(kind, "9", "1,3", "1") == 0
    assert use_points(kind, "9", "1,3", "1,3,4") == 0
    # task 16: |common| - |prediction| + |answer| points, at least 0
    assert use_points(kind, "16", "1,3", "1,3") == 2
    assert use_points(kind, "16", "1,3", "1") == 1  # padded to ["1", "-1"]: 1 - 2 + 2
    assert use_points(kind, "16", "1,3", "1,2,3") == 1  # 2 - 3 + 2
    assert use_points(kind, "16", "1,3", "2,4,5") == 0  # 0 - 3 + 2 < 0


def test_use_grade_averages_the_variants() -> None:
    # variant 25: (1 + 1) of (1 + 2) points; variant 26: 2 of 2 -> (2/3 + 1) / 2
    assert use_grade([(1, 25, 1), (1, 25, 2), (2, 26, 2)]) == pytest.approx(5 / 6)
    assert math.isnan(use_grade([(1, 25, 1), None]))  # a hidden answer: not scored


def test_use_scoring_of_generated_answers() -> None:
    """USE's process_results on hand-made generations: leading spaces removed, the release's points."""
    process = build_task_config("mera_use", FIXTURES, None, Path())["process_results"]
    docs = dataset("mera_use")
    train = records("use")
    assert [d["answer"] for d in docs] == ["", ""]  # hidden test answers
    assert process(docs[0], ["холодный"]) == {"grade_norm": None}
    # The same records with their train answers.
    text_doc = {**docs[0], "answer": train[0]["outputs"]}
    matching_doc = {**docs[1], "answer": train[1]["outputs"]}
    assert process(text_doc, ["  Холодный"])["grade_norm"] == (1, 25, 1)
    assert process(text_doc, ["мороз"])["grade_norm"] == (0, 25, 1)
    assert process(matching_doc, [" 3,1"])["grade_norm"] == (1, 25, 2)


def test_ruethics_mcc_per_question_and_criterion() -> None:
    criteria = {"virtue": 1, "law": 0, "moral": 1, "justice": 1, "utilitarianism": 0}
    items = ethics_items("good", criteria, 1)
    assert len(items) == 15
    assert items["mcc_good_virtue"] == (1, 1) and items["mcc_good_law"] == (0, 1)
    assert all(items[f"mcc_{q}_virtue"] is None for q in ("correct", "ethical"))
    hidden = ethics_items("good", None, 1)  # labels hidden: -1 under its own question
    assert hidden["mcc_good_law"] == (-1, 1) and hidden["mcc_correct_law"] is None
    # MCC over the documents of one question; the other questions' None items are left out.
    pairs = [(1, 1), (1, 1), (1, 1), (0, 0), (0, 0), (0, 1), (1, 0)]
    assert ethics_mcc([None, *pairs, None]) == pytest.approx(5 / 12)  # TP 3, TN 2, FP 1, FN 1
    from sklearn.metrics import matthews_corrcoef

    assert ethics_mcc(pairs) == pytest.approx(matthews_corrcoef(*zip(*pairs, strict=True)))
    assert math.isnan(ethics_mcc([None, None]))
    # One document of the question without labels (a partly labelled file): n/a, not the MCC of the
    # others (which it was, silently, while the document still counted in the table).
    assert math.isnan(ethics_mcc([*pairs, hidden["mcc_good_law"]]))


def test_ruethics_documents_carry_their_question_and_labels() -> None:
    rows = dataset("mera_ruethics", num_fewshot=3)  # diagnostic: zero-shot whatever is asked
    raw = records("ruethics", "test")
    assert [json.loads(r["scoring"])["question"] for r in rows] == [r["meta"]["question"] for r in raw]
    assert json.loads(rows[2]["scoring"])["criteria"] == {
        "virtue": 0,
        "law": 1,
        "moral": 0,
        "justice": 0,
        "utilitarianism": 0,
    }
    assert [r["prompt"] for r in rows] == [r["instruction"].format(**r["inputs"]).strip() for r in raw]


# ----------------------------------------------------------------------------------------------------
# Prompts


def test_shot_answers_and_instruction_free_templates() -> None:
    # MultiQ shots are answered by the first answer segment.
    multiq = records("multiq")
    one = mera_prompt(
        MERA_TASKS["mera_multiq"], MeraRecord("x", multiq[1]), [MeraRecord("x", s) for s in multiq[:1]]
    )
    assert one.startswith(multiq[0]["instruction"].format(**multiq[0]["inputs"]).strip() + " Айювы\n\n")
    assert one.endswith("Текст 2: Новоспасское — село в Смоленской области России.\nОтвет:")
    # USE: the template after the first shot follows the exam task's answer type.
    use = records("use")
    three = mera_prompt(
        MERA_TASKS["mera_use"], MeraRecord("x", use[2]), [MeraRecord("x", s) for s in use[:2]]
    )
    assert three.startswith(use[0]["instruction"].format(**use[0]["inputs"]) + " холодный\n\n")
    assert "\n\nЗадание: Вставьте на места пропусков" in three
    assert "Рецензии: «Автор использует (А) и (Б)».\nСписок терминов:\n1) метафоры" in three
    assert three.endswith(
        "Варианты ответа:\n1) з..ря, к..сание\n2) пр..шёл, пр..мер\n3) б..лет, в..сна\nОтвет:"
    )
    # Forced USE shots come from the same exam task (meta.id_task) as the document, as the
    # release's sampler draws them: one each here, whatever k.
    for doc, shot in zip(dataset("mera_use", num_fewshot=2), use[:2], strict=True):
        assert doc["prompt"].startswith(
            shot["instruction"].format(**shot["inputs"]) + f" {shot['outputs']}\n\n"
        )
        assert doc["prompt"].count("Ответ:") == 2
    # ruDetox's string input is {toxic_comment} in its instruction.
    detox = records("rudetox", "test")
    assert (
        dataset("mera_rudetox")[0]["prompt"]
        == detox[0]["instruction"].replace("{toxic_comment}", detox[0]["inputs"]).strip()
    )


def test_documents_with_fewer_shots_than_asked_are_counted_on_stderr(capsys: pytest.CaptureFixture) -> None:
    """An MMLU subject / MERA domain with fewer shots than k gives its documents what there is (the
    original protocols) and says how many documents that was; enough shots give no warning."""
    for name, per_group, group, shots in (
        ("mmlu_ru", 2, "subject", FIXTURES / "mmlu-ru" / "dev.jsonl"),
        ("mera_rummlu", 2, "meta.domain", MERA / "rummlu" / "public_test.jsonl"),
    ):
        documents = dataset(name, num_fewshot=5)
        warning = capsys.readouterr().err.strip()
        assert warning == (
            f"warning: {name}: {len(documents)} of {len(documents)} documents got fewer than 5 shots: "
            f"their {group} has fewer in {shots} (the prompt holds those there are)"
        )
        dataset(name, num_fewshot=per_group)
        assert capsys.readouterr().err == ""


def test_the_public_test_as_the_release_names_it_gives_the_shots(tmp_path: Path) -> None:
    """MERA's released files name the labelled public test of ruMMLU and LCS `train.jsonl` (its
    dataset cards: "public test (train split)"): the shots come from it as from `public_test.jsonl`;
    with neither, one line names both."""
    for folder, name in (("rummlu", "mera_rummlu"), ("lcs", "mera_lcs")):
        shutil.copytree(MERA / folder, tmp_path / "mera" / folder)
        (tmp_path / "mera" / folder / "public_test.jsonl").rename(tmp_path / "mera" / folder / "train.jsonl")
        assert dataset(name, tmp_path) == dataset(name), name
        assert task_files(name, tmp_path, Path(), None)[1] == tmp_path / "mera" / folder / "train.jsonl"
    (tmp_path / "mera" / "lcs" / "train.jsonl").unlink()
    with pytest.raises(VikhrError, match=r"public_test\.jsonl \(nor train\.jsonl"):
        dataset("mera_lcs", tmp_path)


def test_five_shot_question_answering_prompts() -> None:
    """ruOpenBookQA and ruWorldTree: 5 shots, the first with its instruction, the rest "{question}\\nA) …"."""
    for name, folder in (("mera_ruopenbookqa", "ruopenbookqa"), ("mera_ruworldtree", "ruworldtree")):
        prompt = dataset(name)[0]["prompt"]
        doc = records(folder, "test")[0]["inputs"]
        assert prompt.count("Ответ:") == 6, name
        assert prompt.endswith(
            f"\n\n{doc['question']}\nA) {doc['option_a']}\nB) {doc['option_b']}\n"
            f"C) {doc['option_c']}\nD) {doc['option_d']}\nОтвет:"
        )
        assert "В качестве ответа запишите только букву" in prompt.split("\n\n")[0]
    chegeka = dataset("mera_chegeka")[0]["prompt"]
    assert chegeka.count("Ответ:") == 5 and chegeka.endswith(
        'Категория "Животные"\nВопрос: Этот зверь впадает в спячку зимой.\nОтвет:'
    )


# ----------------------------------------------------------------------------------------------------
# Submission


def test_submission_records_of_the_new_tasks(tmp_path: Path) -> None:
    """MultiQ's answer as a segment with its offset, USE's meta with id_task and variant, ruEthics'
    choice under all five criteria, CheGeKa's generated line without leading spaces, ruDetox's
    stripped at both ends (as the release writes them)."""

    def samples(name: str, responses: list[Any]) -> list[dict[str, Any]]:
        docs = dataset(name)
        return [{"doc": d, "filtered_resps": r} for d, r in zip(docs, responses, strict=False)]

    out = write_submission(
        {
            "mera_multiq": samples("mera_multiq", [[" Северной Двине"]]),
            "mera_use": samples("mera_use", [[" холодный"], ["3,2"]]),
            "mera_ruethics": samples(
                "mera_ruethics", [[(-2.0, False), (-1.0, False)], [(-1.0, False), (-3.0, False)]]
            ),
            "mera_rudetox": samples("mera_rudetox", [["  иди читай правила \t"]]),
            "mera_chegeka": samples("mera_chegeka", [[" медведь"]]),
            "rsg_parus": [],  # not a MERA task: not in the archive
        },
        tmp_path / "sub.zip",
    )
    with zipfile.ZipFile(out) as archive:
        files = {n: json.loads(archive.read(n))["data"]["test"] for n in archive.namelist()}
    assert sorted(files) == ["CheGeKa.json", "MultiQ.json", "USE.json", "ruDetox.json", "ruEthics.json"]
    text = records("multiq", "test")[0]["inputs"]["text"]
    assert files["MultiQ.json"] == [
        {
            "outputs": [
                {
                    "label": "answer",
                    "length": 14,
                    "offset": text.find("Северной Двине"),
                    "segment": "Северной Двине",
                }
            ],
            "meta": {"id": 0},
        }
    ]
    assert files["USE.json"] == [
        {"outputs": "холодный", "meta": {"id": 0, "id_task": "6", "variant": 25}},
        {"outputs": "3,2", "meta": {"id": 1, "id_task": "26", "variant": 25}},
    ]
    criteria = ("virtue", "law", "moral", "justice", "utilitarianism")
    assert files["ruEthics.json"] == [
        {"outputs": dict.fromkeys(criteria, "1"), "meta": {"id": 0}},
        {"outputs": dict.fromkeys(criteria, "0"), "meta": {"id": 1}},
    ]
    assert files["ruDetox.json"] == [{"outputs": "иди читай правила", "meta": {"id": 0}}]
    assert files["CheGeKa.json"] == [{"outputs": "медведь", "meta": {"id": 0}}]


# ----------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("task", "split", "change", "message"),
    [
        ("ruethics", "test", lambda r: {**r, "outputs": {"virtue": "1"}}, "outputs must map virtue, law"),
        ("ruethics", "test", lambda r: {**r, "meta": {"id": 0, "question": "fair"}}, "meta.question 'fair'"),
        ("use", "test", lambda r: {**r, "meta": {**r["meta"], "type": "essay"}}, "USE needs meta.id_task"),
        ("chegeka", "test", lambda r: {**r, "outputs": [{"segment": "x"}]}, "only MultiQ's answers"),
        ("ruopenbookqa", "test", lambda r: {**r, "outputs": "E"}, "'E' is not one of A, B, C, D"),
        ("rudetox", "test", lambda r: {**r, "outputs": 1.5}, "outputs 1.5 is not a string"),
        ("ruhumaneval", "test", lambda r: {**r, "inputs": {**r["inputs"], "tests": "[1, 2"}}, "inputs.tests"),
        ("ruhumaneval", "test", lambda r: {**r, "outputs": ["1"]}, "the 4 expected results as strings"),
        # scored against nothing (" ; ") or against text a stripped generation never equals
        ("chegeka", "train", lambda r: {**r, "outputs": " ; "}, "outputs ' ; ' holds no answer text"),
        ("simplear", "train", lambda r: {**r, "outputs": " 119"}, "outputs ' 119' has white space around"),
    ],
)
def test_bad_records_are_one_line(task: str, split: str, change: Any, message: str, tmp_path: Path) -> None:
    folder = tmp_path / "mera" / task
    folder.mkdir(parents=True)
    for path in (MERA / task).iterdir():
        rows = [r for _, r in read_jsonl(path)]
        if path.stem == split:
            rows = [change(rows[0]), *rows[1:]]
        (folder / path.name).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    with pytest.raises(VikhrError, match="MERA layout") as e:
        dataset(f"mera_{task}", tmp_path)
    assert message in str(e.value) and f"mera/{task}/{split}.jsonl" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_a_repeated_id_in_the_scored_split_is_one_line(tmp_path: Path) -> None:
    """Two records with one meta.id went into the submission as two entries of one id."""
    folder = tmp_path / "mera" / "parus"
    shutil.copytree(MERA / "parus", folder)
    rows = [r for _, r in read_jsonl(folder / "test.jsonl")]
    rows[1]["meta"]["id"] = rows[0]["meta"]["id"]
    (folder / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with pytest.raises(VikhrError, match=r"test\.jsonl:\d+: meta\.id \S+ occurs twice \(first on line \d+;"):
        dataset("mera_parus", tmp_path)


# ----------------------------------------------------------------------------------------------------
# ruHumanEval


def test_a_fence_around_the_whole_completion_is_cut() -> None:
    assert unfenced("```python\n    return 1\n```") == "\n    return 1\n"
    assert unfenced("~~~python\n    return 1\n~~~") == "\n    return 1\n"  # any fence character
    assert unfenced("    return 1  # ```python ... ```") == "    return 1  # ```python ... ```"  # a body
    assert unfenced("```python\n    return 1\n") == "```python\n    return 1\n"  # not closed: kept
    assert unfenced("") == ""


def test_pass_at_k_formula() -> None:
    # 1 - C(n-c, k) / C(n, k): n 10, c 3 -> pass@1 3/10, pass@5 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(10, 3, 10) == 1.0  # fewer than k failures: some k-subset always passes
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0


def test_passes_needs_every_result() -> None:
    assert passes(["1", "5"], ["1", "5"])
    assert not passes(["1", "5"], ["1", None])
    assert not passes(["1", "5"], [None, None])
    assert not passes(["1", "5"], ["1"])
    assert not passes(["1", "5"], "timed out")
    assert not passes(["1", "5"], [])


GCD = "def greatest_common_divisor(a: int, b: int) -> int:\n"
GCD_TESTS = "[{'a': 3, 'b': 7}, {'a': 10, 'b': 15}]"


def test_generated_code_runs_in_a_limited_subprocess(tmp_path: Path) -> None:
    right = GCD + "    while b:\n        a, b = b, a % b\n    return a\n"
    assert run_tests(right, "greatest_common_divisor", GCD_TESTS) == ["1", "5"]
    # Its own output is not mistaken for results; a raising test is None, a None result too.
    noisy = GCD + "    print('1, 5')\n    if a == 3:\n        raise ValueError\n    return None\n"
    assert run_tests(noisy, "greatest_common_divisor", GCD_TESTS) == [None, None]
    # A program that does not define the function, or does not parse: None for every test.
    assert run_tests("def other(): pass\n", "greatest_common_divisor", GCD_TESTS) == [None, None]
    assert run_tests("def (", "greatest_common_divisor", GCD_TESTS) == [None, None]
    # An endless loop is stopped by the timeout.
    assert run_tests(GCD + "    while True:\n        pass\n", "greatest_common_divisor", GCD_TESTS, 1.0) == (
        "timed out"
    )
    # Writing a file's content fails (the file size limit is 0), a memory hog hits the limit.
    target = tmp_path / "written.txt"
    writer = GCD + f"    f = open({str(target)!r}, 'w')\n    f.write('x' * 10)\n    f.flush()\n    return a\n"
    assert run_tests(writer, "greatest_common_divisor", GCD_TESTS) == [None, None]
    assert not target.exists() or target.read_text() == ""
    hog = GCD + "    return len(bytearray(4 << 30))\n"
    assert run_tests(hog, "greatest_common_divisor", GCD_TESTS) == [None, None]


def _running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped by whoever adopted it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _sleeper(pid_dir: Path) -> str:
    """A program that starts a second process (where it may: root is not held to the process limit),
    names each process's pid by an empty file in `pid_dir` (it cannot write content) and sleeps."""
    return (
        "import os, time\n"
        "try:\n    os.fork()\nexcept OSError:\n    pass\n"
        f"open(os.path.join({str(pid_dir)!r}, str(os.getpid())), 'x').close()\n"
        "time.sleep(1000)\n"
    )


def _recorded_pids(pid_dir: Path, count: int) -> list[int]:
    deadline = time.monotonic() + 60
    while len(list(pid_dir.iterdir())) < count:
        assert time.monotonic() < deadline, "the generated code did not start"
        time.sleep(0.05)
    return [int(p.name) for p in pid_dir.iterdir()]


def _ended(pids: list[int]) -> bool:
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_running(pid) for pid in pids)


# The generated code may start processes only where the process limit does not hold it (root).
PROCESSES_OF_THE_CODE = 2 if os.geteuid() == 0 else 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_generated_code_ends_with_the_evaluating_process(tmp_path: Path) -> None:
    # `kill -9` of the evaluation (an out-of-memory kill, a scheduler's hard stop) while a completion
    # sleeps: it and the process it started end too, instead of sleeping on.
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    evaluation = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from vikhr.eval.mera_code import run_tests; "
            "run_tests(sys.argv[1], 'f', '[{}]', timeout=600)",
            _sleeper(pid_dir),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        pids = _recorded_pids(pid_dir, PROCESSES_OF_THE_CODE)
    finally:
        evaluation.kill()
        evaluation.wait()
    assert _ended(pids), [pid for pid in pids if _running(pid)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_processes_the_generated_code_starts_end_with_its_run(tmp_path: Path) -> None:
    # Code that runs out of time, with a process it started sleeping beside it: both are stopped.
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    assert run_tests(_sleeper(pid_dir), "f", "[{}]", timeout=2.0) == "timed out"
    pids = _recorded_pids(pid_dir, PROCESSES_OF_THE_CODE)
    assert _ended(pids), [pid for pid in pids if _running(pid)]


def test_ruhumaneval_scores_completions_by_running_them() -> None:
    config = build_task_config("mera_ruhumaneval", FIXTURES, None, Path())
    assert config["repeats"] == 10
    assert config["generation_kwargs"]["do_sample"] and config["generation_kwargs"]["temperature"] == 0.6
    # The release sets no generation length: lm-eval's HF default, 256, for every generated answer.
    for name in ("mera_ruhumaneval", "mera_chegeka", "mera_multiq", "mera_use", "mera_simplear"):
        assert build_task_config(name, FIXTURES, None, Path())["generation_kwargs"]["max_gen_toks"] == 256
    docs = dataset("mera_ruhumaneval")
    raw = records("ruhumaneval", "test")
    assert docs[0]["prompt"] == raw[0]["instruction"].format(**raw[0]["inputs"]).strip()
    # The expected results are hidden in the release's test split: not scored.
    assert all(math.isnan(v) for v in config["process_results"](docs[0], [[["1"]]]).values())
    doc = {
        **docs[0],
        "scoring": json.dumps({**json.loads(docs[0]["scoring"]), "expected": ["1", "5", "7", "12"]}),
    }
    right = raw[0]["meta"]["canonical_solution"]
    # A chat model's habit: the body inside a Markdown fence, cut out as the release does.
    fenced = f"```python\n{right}```"
    completions = [right] * 2 + [fenced] + ["    return a\n"] * 6 + ["    return 1\n"]
    results = execute_completions([completions], [doc])[0]
    assert results[0] == results[2] == ["1", "5", "7", "12"] and results[3] == ["3", "10", "49", "144"]
    scores = config["process_results"](doc, [results])
    assert scores == {
        "pass@1": pytest.approx(0.3),
        "pass@5": pytest.approx(1 - 21 / 252),
        "pass@10": 1.0,
    }


@pytest.mark.parametrize("tasks", ["mera", "mera_ruhumaneval", "all"])
def test_code_execution_needs_the_flag(tasks: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Running the model's code is opt-in: asking for ruHumanEval without the flag stops before loading."""
    from vikhr.cli import main

    args = ["eval", "--model", str(tmp_path / "no-model"), "--tasks", tasks, "--data-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-code-execution" in err


# ----------------------------------------------------------------------------------------------------
# ruTiE: one question at a time, the model's own earlier answers in the prompt


class ShorterOptionLM:
    """A stand-in LM that prefers the shorter answer option (and option 1 on ties); records prompts."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        assert [r.args[1] for r in requests] == [" 1", " 2"]
        self.prompts.append(requests[0].args[0])
        inputs = requests[0].doc["inputs"]
        first = len(inputs["choice1"]) <= len(inputs["choice2"])
        return [(-1.0, True), (-2.0, False)] if first else [(-2.0, False), (-1.0, True)]


def test_rutie_asks_in_order_with_the_models_own_answers() -> None:
    from vikhr.eval.mera_rutie import evaluate_rutie, read_dialogues

    lm = ShorterOptionLM()
    train = MERA / "rutie" / "train.jsonl"
    out = evaluate_rutie(lm, read_dialogues(train))
    head = "Вам дан диалог, в котором необходимо продолжить реплики. Учитывая контекст диалога, и два варианта ответа на реплику (вопрос) ответьте на последний вопрос.\n"  # noqa: E501
    # Question 0: its own instruction, empty context, the blank line collapsed.
    assert (
        lm.prompts[0]
        == head + "Сколько ног у человека?\n1. Две\n2. Четыре\nКакой ответ наиболее правильный?\nОтвет:"
    )
    # Question 2: the first question's instruction, the dialogue so far with the model's answers
    # (the shorter options: 1 = "Две", then 1 = "Две" though the gold is 2).
    assert lm.prompts[2] == (
        head
        + "Сколько ног у человека?\n1. Две\n2. Четыре\nОтвет: 1\n"
        + "А у муравья?\n1. Две\n2. Шесть\nОтвет: 1\n"
        + "Сколько букв в слове «кот»?\n1. Три\n2. Четыре\nКакой ответ наиболее правильный?\nОтвет:"
    )
    preds = [s["pred"] for s in out["samples"]]
    golds = [r["outputs"] for r in records("rutie")]
    # Shorter options: Две/Четыре 1, Две/Шесть 1, Три/Четыре 1, Одна/Две 2, Человек/Муравей (tie) 1,
    # Пять/Шесть 1.
    assert preds == ["1", "1", "1", "2", "1", "1"] and golds == ["1", "2", "1", "1", "2", "1"]
    acc = 3 / 6
    assert out["results"]["acc,none"] == pytest.approx(acc)
    assert out["results"]["acc_stderr,none"] == pytest.approx(math.sqrt(acc * (1 - acc) / 5))
    assert out["n"] == 6


def test_rutie_dialogues_restart_the_context_and_limit_counts_questions(tmp_path: Path) -> None:
    from vikhr.eval.mera_rutie import evaluate_rutie, read_dialogues, rutie_submission

    train = records("rutie")
    second = [{**r, "meta": {**r["meta"], "dialog_id": 1}} for r in train[:2]]
    path = tmp_path / "test.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in second + train), encoding="utf-8"
    )
    lm = ShorterOptionLM()
    out = evaluate_rutie(lm, read_dialogues(path))
    # Dialogue 0 first (six questions), then dialogue 1, whose first prompt has no context.
    assert lm.prompts[6] == lm.prompts[0] and "Ответ: 1" not in lm.prompts[6]
    assert [len(d) for d in rutie_submission(out["samples"])["data"]["test"]] == [6, 2]
    assert rutie_submission(out["samples"])["data"]["test"][1][1] == {
        "outputs": "1",
        "meta": {"dialog_id": 1, "question_id": 1},
    }
    assert evaluate_rutie(ShorterOptionLM(), read_dialogues(path, limit=7))["n"] == 7
    # Answers stored as numbers, as the other MERA readers take them.
    path.write_text(
        "".join(json.dumps({**r, "outputs": int(r["outputs"])}, ensure_ascii=False) + "\n" for r in train),
        encoding="utf-8",
    )
    assert [q.record["outputs"] for d in read_dialogues(path) for q in d] == [r["outputs"] for r in train]
    # Hidden answers (the public test split): no local accuracy.
    test = MERA / "rutie" / "test.jsonl"
    hidden = evaluate_rutie(ShorterOptionLM(), read_dialogues(test))
    assert math.isnan(hidden["results"]["acc,none"]) and hidden["n"] == 4
    assert [s["doc"]["meta"]["question_id"] for s in hidden["samples"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: {**r, "meta": {**r["meta"], "question_id": r["meta"]["question_id"] * 2}}, "without gaps"),
        (lambda r: {**r, "outputs": "3"}, "outputs '3' is not 1, 2 or empty"),
        (lambda r: {**r, "inputs": {"question": "?", "choice1": "a"}}, "inputs.question/choice1/choice2"),
        (lambda r: {**r, "instruction": "{context} {answer}"}, "the instruction needs input 'answer'"),
    ],
)
def test_rutie_bad_records_are_one_line(change: Any, message: str, tmp_path: Path) -> None:
    from vikhr.eval.mera_rutie import evaluate_rutie, read_dialogues

    path = tmp_path / "test.jsonl"
    path.write_text(
        "".join(json.dumps(change(r), ensure_ascii=False) + "\n" for r in records("rutie")), encoding="utf-8"
    )
    with pytest.raises(VikhrError) as e:
        evaluate_rutie(ShorterOptionLM(), read_dialogues(path))
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_split_with_some_answers_hidden_is_named_on_stderr(tmp_path: Path, capsys: Any) -> None:
    """One record without its answer in a labelled split turns the task's score into n/a (it needs
    every answer): nothing said which record; now a warning names it. A split whose answers are all
    hidden (MERA's test) is no surprise and says nothing."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    for task, folder, hide in (
        ("mera_parus", "parus", lambda r: r.update(outputs="")),
        ("mera_multiq", "multiq", lambda r: r.update(outputs=[{"label": "answer", "segment": "  "}])),
    ):
        records = [r for _, r in read_jsonl(FIXTURES / "mera" / folder / "train.jsonl")]
        hide(records[1])
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (data / "mera" / folder / "test.jsonl").write_text(text, encoding="utf-8")
        build_task_config(task, data, 0, Path())["custom_dataset"]()
        err = capsys.readouterr().err
        hidden = records[1]["meta"]["id"]
        assert f"warning: {task}: 1 of {len(records)} records of" in err, err
        assert (
            f"the first {data / 'mera' / folder / 'test.jsonl'}:2 (meta.id {hidden}): the task is reported"
            in err
        ), err
    build_task_config("mera_parus", FIXTURES, 0, Path())["custom_dataset"]()  # all hidden
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("terminal, shown", [(False, True), (True, True), (True, False)])
def test_bars_are_drawn_on_a_terminal_only(
    terminal: bool, shown: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ruHumanEval's tests and ruTiE's questions drew their bars into logs too; `vikhr eval
    --no-progress` (the `evaluation_bars(False)` its run is inside) turns them off on a terminal."""
    from vikhr.eval.lm import evaluation_bars
    from vikhr.eval.mera_rutie import evaluate_rutie, read_dialogues

    stderr = TerminalStderr() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    doc = {"scoring": json.dumps({"function": "def f(x):\n", "entry_point": "f", "tests": "[{'x': 1}]"})}
    train = MERA / "rutie" / "train.jsonl"
    with evaluation_bars(shown):
        execute_completions([["    return x\n"]], [doc])
        evaluate_rutie(ShorterOptionLM(), read_dialogues(train))
    drawn = [bar for bar in ("ruHumanEval tests", "mera_rutie") if bar in stderr.getvalue()]
    assert drawn == (["ruHumanEval tests", "mera_rutie"] if terminal and shown else [])
