"""Russian SuperGLUE: the nine tasks of the official release, their metrics and the leaderboard total.

Files are read in the layout of the official archive (russiansuperglue.com, `combined.zip`), one
directory per task under `russian-superglue/`:

    LiDiRus/LiDiRus.jsonl   RCB/ PARus/ MuSeRC/ TERRa/ RUSSE/ RWSD/ DaNetQA/ RuCoS/  {train,val,test}.jsonl

The labelled `val` split is evaluated; shots come from `train` (LiDiRus, a diagnostic set without a
train split, takes TERRa's). The `test` split's labels are hidden: its predictions go into the
leaderboard's submission archive (`write_submission`). Metrics are computed as the official
(jiant-russian) scorer does: MCC for LiDiRus, macro-F1 over the three classes and accuracy for RCB,
F1a and EM for MuSeRC, ReCoRD's token F1 and EM (SQuAD's normalisation, best over the gold answers)
for RuCoS, accuracy for the rest. A task's score is the mean of its metrics and the total is the
mean of the nine task scores (the leaderboard's formula).
"""

from __future__ import annotations

import contextlib
import json
import math
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from vikhr.atomic import temporary_path
from vikhr.errors import VikhrError
from vikhr.eval.tasks import (
    TASKS,
    TERRA_DESCRIPTION,
    WHERE,
    choice_task_with_shots,
    json_spelling,
    most_likely,
    overlap_f1,
    read_numbered_records,
    record_location,
    require_text,
    require_unique,
    shot_splits,
    squad_normalize,
    terra_config,
    terra_prompt,
)

# Task name -> the metrics whose mean is its leaderboard score.
RSG_SCORE_METRICS: dict[str, tuple[str, ...]] = {
    "rsg_lidirus": ("mcc",),
    "rsg_rcb": ("f1", "acc"),
    "rsg_parus": ("acc",),
    "rsg_muserc": ("f1a", "em"),
    "rsg_terra": ("acc",),
    "rsg_russe": ("acc",),
    "rsg_rwsd": ("acc",),
    "rsg_danetqa": ("acc",),
    "rsg_rucos": ("f1", "em"),
}


# ----------------------------------------------------------------------------------------------------
# Metrics (items are (gold, prediction) pairs, as lm-eval hands them to an aggregation)


def matthews_corr(items: list[tuple[int, int]]) -> float:
    """Matthews correlation of binary labels: (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)).

    0 when a factor of the denominator is 0 (one class only), as scikit-learn returns.
    """
    tp = sum(1 for g, p in items if g == 1 and p == 1)
    tn = sum(1 for g, p in items if g == 0 and p == 0)
    fp = sum(1 for g, p in items if g == 0 and p == 1)
    fn = sum(1 for g, p in items if g == 1 and p == 0)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def binary_f1(items: list[tuple[int, int]]) -> float:
    """F1 of the positive class (1): 2·TP / (2·TP + FP + FN); 0 without positives on either side."""
    tp = sum(1 for g, p in items if g == 1 and p == 1)
    wrong = sum(1 for g, p in items if g != p)
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def macro_f1(items: list[tuple[int, int]], classes: Sequence[int] | None = None) -> float:
    """Unweighted mean of each class's one-vs-rest F1 over `classes` (a class never gold nor
    predicted scores 0), by default over the classes seen (gold or predicted), as scikit-learn's."""
    if classes is None:
        classes = sorted({g for g, _ in items} | {p for _, p in items})
    scores = []
    for c in classes:
        tp = sum(1 for g, p in items if g == c and p == c)
        fp = sum(1 for g, p in items if g != c and p == c)
        fn = sum(1 for g, p in items if g == c and p != c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def rcb_macro_f1(items: list[tuple[int, int]]) -> float:
    """RCB's macro-F1 as the official scorer (jiant's) computes it: over all three classes, even
    when a run (a small --limit) has none of one."""
    return macro_f1(items, range(3))


def grouped_exact_match(items: list[tuple[str, bool]]) -> float:
    """MuSeRC EM: the share of questions all of whose answer options are classified correctly."""
    all_right: dict[str, bool] = defaultdict(lambda: True)
    for question, right in items:
        all_right[question] &= bool(right)
    return sum(all_right.values()) / len(all_right)


def rucos_scores(prediction: str, golds: list[str]) -> dict[str, float]:
    """RuCoS EM and token F1 of the chosen entity, the best over the gold answers, as the official
    scorer (ReCoRD's) computes them: SQuAD's normalisation, F1 0 without a shared token."""
    pred = squad_normalize(prediction)
    return {
        "em": max(float(pred == squad_normalize(g)) for g in golds),
        "f1": max(overlap_f1(pred.split(), squad_normalize(g).split()) for g in golds),
    }


def task_score(name: str, metrics: dict[str, float | None]) -> float | None:
    """A task's leaderboard score: the mean of its leaderboard metrics (None when one is missing)."""
    values = [metrics.get(m) for m in RSG_SCORE_METRICS[name]]
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def rsg_total(task_metrics: dict[str, dict[str, float | None]]) -> dict[str, Any] | None:
    """{"score": mean of the nine task scores, "tasks": {name: score}}; None unless all nine are there."""
    scores = {
        name: task_score(name, task_metrics[name]) for name in RSG_SCORE_METRICS if name in task_metrics
    }
    if len(scores) != len(RSG_SCORE_METRICS) or any(s is None for s in scores.values()):
        return None
    return {"score": sum(scores.values()) / len(scores), "tasks": scores}  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# Readers and configs
#
# Every builder takes `hidden`: the evaluated file is the test split, whose labels the release
# withholds. Its records are read without labels (each must carry the `idx` the submission names it
# by) and every document gets label 0, which only the submission's predictions ignore.


def _label(where: str, record: dict[str, Any], allowed: dict[Any, int]) -> int:
    """The class of `record`'s label; `where` is its `record_location`."""
    if "label" not in record:  # a nested record (a MuSeRC answer option) is not checked on reading
        raise VikhrError(f"{where}: the record has no 'label' (use the labelled split)")
    label = record["label"]
    # JSON true/false must not match 1/0 (Python's True == 1): compare types too.
    for key, value in allowed.items():
        if type(key) is type(label) and key == label:
            return value
    raise VikhrError(
        f"{where}: label {json_spelling(label)} is not one of "
        f"{', '.join(map(json_spelling, allowed))} (is this the official Russian SuperGLUE file?)"
    )


class _Located(NamedTuple):
    """A record of a file, with the line it is on (1-based) and its `record_location`."""

    line: int
    where: str
    record: dict[str, Any]


def _records(
    path: Path, keys: tuple[str, ...], limit: int | None, task: str, hide: bool, texts: tuple[str, ...] = ()
) -> list[_Located]:
    """The file's records, checked to have `keys` and one text in each of `texts` (nested texts are
    checked where read); a file whose labels are hidden needs no `label` but an `idx` in every record."""
    if hide:
        keys = (*(k for k in keys if k != "label"), "idx")
    records = [
        _Located(line, record_location(path, line, ("idx", r.get("idx"))), r)
        for line, r in read_numbered_records(path, keys, limit, _layout(task), texts, ids=("idx",))
    ]
    if hide:  # the leaderboard matches predictions by idx
        require_unique(path, [(line, r["idx"]) for line, _, r in records], "idx")
    return records


def _layout(task: str) -> str:
    return f"Russian SuperGLUE {task}"


def _gold(where: str, record: dict[str, Any], allowed: dict[Any, int], hide: bool) -> int:
    return 0 if hide else _label(where, record, allowed)


_BOOL = {False: 0, True: 1}
_ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]


def _lidirus_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, hidden: bool = False
) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        # LiDiRus names the pair sentence1/sentence2; its TERRa shots name it premise/hypothesis.
        first, second = ("sentence1", "sentence2") if path == eval_path else ("premise", "hypothesis")
        labels = {"entailment": 0, "not_entailment": 1}  # TERRa's encoding (MCC does not depend on it)
        hide = hidden and path == eval_path
        return [
            {
                "premise": r[first].strip(),
                "hypothesis": r[second].strip(),
                "label": _gold(where, r, labels, hide),
                "idx": r.get("idx"),
                WHERE: where,
            }
            for _, where, r in _records(
                path, (first, second, "label"), limit, "LiDiRus/TERRa", hide, (first, second)
            )
        ]

    return choice_task_with_shots(
        "rsg_lidirus",
        rows,
        eval_path,
        fewshot_path,
        k,
        limit,
        description=TERRA_DESCRIPTION,
        doc_to_text=terra_prompt,
        choices=["да", "нет"],
        metrics=[{"metric": "mcc", "aggregation": matthews_corr, "higher_is_better": True}],
    )


def _rcb_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, hidden: bool = False
) -> dict[str, Any]:
    labels = {"entailment": 0, "contradiction": 1, "neutral": 2}

    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        hide = hidden and path == eval_path
        return [
            {
                "premise": r["premise"].strip(),
                "hypothesis": r["hypothesis"].strip(),
                "label": _gold(where, r, labels, hide),
                "idx": r.get("idx"),
                WHERE: where,
            }
            for _, where, r in _records(
                path, ("premise", "hypothesis", "label"), limit, "RCB", hide, ("premise", "hypothesis")
            )
        ]

    return choice_task_with_shots(
        "rsg_rcb",
        rows,
        eval_path,
        fewshot_path,
        k,
        limit,
        description="Определите, следует ли гипотеза из ситуации, противоречит ей или ни то ни другое.\n\n",
        doc_to_text=lambda doc: (
            f"Ситуация: {doc['premise']}\nГипотеза: {doc['hypothesis']}\n"
            "Вопрос: верна ли гипотеза? Ответьте «да», «нет» или «возможно».\nОтвет:"
        ),
        choices=["да", "нет", "возможно"],
        metrics=[
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "f1", "aggregation": rcb_macro_f1, "higher_is_better": True},
        ],
    )


def _parus_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, hidden: bool = False
) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        hide = hidden and path == eval_path
        out = []
        keys = ("premise", "choice1", "choice2", "question", "label")
        for _, where, r in _records(path, keys, limit, "PARus", hide, keys[:4]):
            if r["question"] not in ("cause", "effect"):
                raise VikhrError(
                    f'{where}: question {json_spelling(r["question"])} is not "cause" or "effect"'
                )
            out.append(
                {
                    "premise": r["premise"].strip().rstrip("."),
                    "connector": "потому что" if r["question"] == "cause" else "поэтому",
                    "choices": [_lower_first(r["choice1"].strip()), _lower_first(r["choice2"].strip())],
                    "label": _gold(where, r, {0: 0, 1: 1}, hide),
                    "idx": r.get("idx"),
                    WHERE: where,
                }
            )
        return out

    # COPA-style: the premise and its connector, then the more likely continuation.
    return choice_task_with_shots(
        "rsg_parus",
        rows,
        eval_path,
        fewshot_path,
        k,
        limit,
        description="",
        doc_to_text=lambda doc: f"{doc['premise']}, {doc['connector']}",
        choices=lambda doc: doc["choices"],
        metrics=_ACC,
    )


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _russe_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, hidden: bool = False
) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        hide = hidden and path == eval_path
        return [
            {
                "word": r["word"].strip(),
                "sentence1": r["sentence1"].strip(),
                "sentence2": r["sentence2"].strip(),
                "label": _gold(where, r, _BOOL, hide),
                "idx": r.get("idx"),
                WHERE: where,
            }
            for _, where, r in _records(
                path,
                ("word", "sentence1", "sentence2", "label"),
                limit,
                "RUSSE",
                hide,
                ("word", "sentence1", "sentence2"),
            )
        ]

    return choice_task_with_shots(
        "rsg_russe",
        rows,
        eval_path,
        fewshot_path,
        k,
        limit,
        description="Определите, в одном ли значении употреблено слово в двух предложениях.\n\n",
        doc_to_text=lambda doc: (
            f"Предложение 1: {doc['sentence1']}\nПредложение 2: {doc['sentence2']}\n"
            f"Вопрос: в одном ли значении употреблено слово «{doc['word']}» в обоих предложениях?\nОтвет:"
        ),
        choices=["нет", "да"],
        metrics=_ACC,
    )


def _rwsd_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, hidden: bool = False
) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        hide = hidden and path == eval_path
        out = []
        for _, where, r in _records(path, ("text", "target", "label"), limit, "RWSD", hide, ("text",)):
            target = r["target"]
            if not isinstance(target, dict) or not {"span1_text", "span2_text"} <= set(target):
                raise VikhrError(f"{where}: field 'target' has no span1_text/span2_text (RWSD layout)")
            for span in ("span1_text", "span2_text"):
                require_text(where, f"target.{span}", target[span], _layout("RWSD"))
            out.append(
                {
                    "text": r["text"].strip(),
                    "span1": target["span1_text"],
                    "span2": target["span2_text"],
                    "label": _gold(where, r, _BOOL, hide),
                    "idx": r.get("idx"),
                    WHERE: where,
                }
            )
        return out

    return choice_task_with_shots(
        "rsg_rwsd",
        rows,
        eval_path,
        fewshot_path,
        k,
        limit,
        description="",
        doc_to_text=lambda doc: (
            f"Текст: {doc['text']}\n"
            f"Вопрос: в этом тексте «{doc['span2']}» относится к «{doc['span1']}»?\nОтвет:"
        ),
        choices=["нет", "да"],
        metrics=_ACC,
    )


def _danetqa_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, hidden: bool = False
) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        hide = hidden and path == eval_path
        return [
            {
                "passage": r["passage"].strip(),
                "question": r["question"].strip(),
                "label": _gold(where, r, _BOOL, hide),
                "idx": r.get("idx"),
                WHERE: where,
            }
            for _, where, r in _records(
                path, ("question", "passage", "label"), limit, "DaNetQA", hide, ("question", "passage")
            )
        ]

    return choice_task_with_shots(
        "rsg_danetqa",
        rows,
        eval_path,
        fewshot_path,
        k,
        limit,
        description="Прочитайте текст и ответьте на вопрос «да» или «нет».\n\n",
        doc_to_text=lambda doc: f"Текст: {doc['passage']}\nВопрос: {doc['question']}\nОтвет:",
        choices=["нет", "да"],
        metrics=_ACC,
    )


@contextlib.contextmanager
def _nested_layout(where: str, task: str) -> Iterator[None]:
    """A missing or mistyped nested field of the record at `where`, reported as one line naming the
    record and the layout."""
    try:
        yield
    except (KeyError, TypeError, AttributeError) as e:
        raise VikhrError(
            f"{where}: the record lacks {e} or has it of another type "
            f"(expected the Russian SuperGLUE {task} layout)"
        ) from e


def _muserc_rows(path: Path, limit: int | None = None, hide: bool = False) -> list[dict[str, Any]]:
    """One document per (passage, question, answer option); `limit` counts options, in file order.
    Exact match groups a question's options by their place in the file (ids may repeat or lack)."""
    out: list[dict[str, Any]] = []
    lines: list[int] = []  # the line of each document's passage, to name a repeated idx
    for p_no, (line, where, r) in enumerate(_records(path, ("passage",), None, "MuSeRC", hide)):
        with _nested_layout(where, "MuSeRC"):
            passage = r["passage"]
            if not isinstance(passage, dict) or "text" not in passage or "questions" not in passage:
                raise VikhrError(f"{where}: field 'passage' has no text/questions (MuSeRC layout)")
            require_text(where, "passage.text", passage["text"], _layout("MuSeRC"))
            for q_no, q in enumerate(passage["questions"]):
                at_question = record_location(
                    path, line, ("passage idx", r.get("idx")), ("question idx", q.get("idx"))
                )
                require_text(at_question, "question", q["question"], _layout("MuSeRC"))
                for a in q["answers"]:
                    if limit is not None and len(out) >= limit:
                        return out
                    at_answer = record_location(
                        path,
                        line,
                        ("passage idx", r.get("idx")),
                        ("question idx", q.get("idx")),
                        ("answer idx", a.get("idx")),
                    )
                    require_text(at_answer, "answers.text", a["text"], _layout("MuSeRC"))
                    out.append(
                        {
                            "passage": passage["text"].strip(),
                            "question": q["question"].strip(),
                            "answer": a["text"].strip(),
                            "question_key": f"{p_no}/{q_no}",
                            "label": _gold(at_answer, a, {0: 0, 1: 1}, hide),
                            # The submission nests answers by question and passage.
                            "idx": [r["idx"], q["idx"], a["idx"]]
                            if hide
                            else [r.get("idx"), q.get("idx"), a.get("idx")],
                            WHERE: at_answer,
                        }
                    )
                    lines.append(line)
    if not out:
        raise VikhrError(f"{path}: no passage has a question with answer options (MuSeRC layout)")
    if hide:
        require_unique(
            path, [(n, d["idx"]) for n, d in zip(lines, out, strict=True)], "passage/question/answer idx"
        )
    return out


def _muserc_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, hidden: bool = False
) -> dict[str, Any]:
    def process_results(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, Any]:
        pred = most_likely(results)
        return {"f1a": (doc["label"], pred), "em": (doc["question_key"], pred == doc["label"])}

    return {
        **choice_task_with_shots(
            "rsg_muserc",
            lambda path, limit=None: _muserc_rows(path, limit, hidden and path == eval_path),
            eval_path,
            fewshot_path,
            k,
            limit,
            description="Прочитайте текст и определите, верен ли предложенный ответ на вопрос.\n\n",
            doc_to_text=lambda doc: (
                f"Текст: {doc['passage']}\nВопрос: {doc['question']}\nПредложенный ответ: {doc['answer']}\n"
                "Верен ли этот ответ?\nОтвет:"
            ),
            choices=["нет", "да"],
            metrics=[
                {"metric": "f1a", "aggregation": binary_f1, "higher_is_better": True},
                {"metric": "em", "aggregation": grouped_exact_match, "higher_is_better": True},
            ],
        ),
        "process_results": process_results,
    }


def _entity_end(where: str, passage: str, answers: list[dict[str, Any]]) -> int:
    """1 if the file's spans end inclusively (ReCoRD's convention), 0 if exclusively: read off the answers."""
    for a in answers:
        if not a.get("text", "").strip():  # matches anywhere: it tells nothing
            continue
        if passage[a["start"] : a["end"] + 1] == a["text"]:
            return 1
        if passage[a["start"] : a["end"]] == a["text"]:
            return 0
    raise VikhrError(f"{where}: answer spans do not match the passage text (RuCoS layout: start/end offsets)")


def _rucos_rows(path: Path, limit: int | None = None, hide: bool = False) -> list[dict[str, Any]]:
    """One document per query: the passage, the query and every passage entity filled in."""
    out: list[dict[str, Any]] = []
    lines: list[int] = []  # the line of each query's passage, to name a repeated idx
    for line, where, r in _records(path, ("passage", "qas"), None, "RuCoS", hide):
        with _nested_layout(where, "RuCoS"):
            passage = r["passage"]
            if not isinstance(passage, dict) or "text" not in passage or "entities" not in passage:
                raise VikhrError(f"{where}: field 'passage' has no text/entities (RuCoS layout)")
            text = passage["text"]
            require_text(where, "passage.text", text, _layout("RuCoS"))
            for qa in r["qas"]:
                if limit is not None and len(out) >= limit:
                    return out
                at_query = record_location(
                    path, line, ("passage idx", r.get("idx")), ("query idx", qa.get("idx"))
                )
                require_text(at_query, "query", qa["query"], _layout("RuCoS"))
                for a in qa.get("answers", []):  # a blank answer is skipped: it matches anywhere
                    require_text(
                        at_query, "answers.text", a.get("text", ""), _layout("RuCoS"), may_be_blank=True
                    )
                golds = [a["text"] for a in qa.get("answers", []) if a.get("text", "").strip()]
                if not golds and not hide:
                    raise VikhrError(f"{at_query}: the query has no answers (use the labelled val split)")
                # Without answers to tell, the release's own convention: exclusive ends.
                inclusive = _entity_end(at_query, text, qa["answers"]) if golds else 0
                entities = _entities(where, text, passage["entities"], inclusive)
                query = qa["query"]
                if "@placeholder" not in query:
                    raise VikhrError(f"{at_query}: the query has no @placeholder")
                out.append(
                    {
                        # Summary bullets are marked "@highlight", subheadings "@header".
                        "passage": text.replace("@highlight\n", "- ").replace("@header ", "").strip(),
                        "query": query,
                        "entities": entities,
                        "golds": golds,
                        "label": next((i for i, e in enumerate(entities) if e in golds), 0),
                        "idx": qa["idx"] if hide else qa.get("idx"),
                        WHERE: at_query,
                    }
                )
                lines.append(line)
    if not out:
        raise VikhrError(f"{path}: no passage has a query (RuCoS layout)")
    if hide:
        require_unique(path, [(n, d["idx"]) for n, d in zip(lines, out, strict=True)], "query idx")
    return out


def _entities(where: str, text: str, spans: list[dict[str, Any]], inclusive: int) -> list[str]:
    """The distinct candidate entities of a passage, every span checked to lie in its text."""
    entities = []
    for e in spans:
        start, end = e["start"], e["end"] + inclusive
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise VikhrError(
                f"{where}: the passage has an entity span {e['start']}-{e['end']} outside its "
                f"{len(text)} characters (RuCoS layout: start/end offsets into passage.text)"
            )
        entities.append(text[start:end])
    if not entities:
        raise VikhrError(f"{where}: the passage has no entities to choose from (RuCoS layout)")
    return list(dict.fromkeys(entities))


def _rucos_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, hidden: bool = False
) -> dict[str, Any]:
    def process_results(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, float]:
        if not doc["golds"]:  # the test split: nothing to score, only the prediction is kept
            return {"f1": math.nan, "em": math.nan}
        return rucos_scores(doc["entities"][most_likely(results)], doc["golds"])

    return {
        "task": "rsg_rucos",
        **shot_splits(
            lambda: _rucos_rows(eval_path, limit, hidden),
            None if fewshot_path is None else lambda: _rucos_rows(fewshot_path, k * 20),
        ),
        "output_type": "multiple_choice",
        "doc_to_text": lambda doc: f"{doc['passage']}\n",
        "doc_to_choice": lambda doc: [doc["query"].replace("@placeholder", e) for e in doc["entities"]],
        "doc_to_target": lambda doc: doc["label"],
        "target_delimiter": "",
        "process_results": process_results,
        "num_fewshot": k,
        "metric_list": [
            {"metric": "f1", "aggregation": "mean", "higher_is_better": True},
            {"metric": "em", "aggregation": "mean", "higher_is_better": True},
        ],
    }


RSG_BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "rsg_lidirus": _lidirus_config,
    "rsg_rcb": _rcb_config,
    "rsg_parus": _parus_config,
    "rsg_muserc": _muserc_config,
    "rsg_terra": lambda e, f, k, limit, hidden=False: {
        **terra_config(e, f, k, limit, hidden),
        "task": "rsg_terra",
    },
    "rsg_russe": _russe_config,
    "rsg_rwsd": _rwsd_config,
    "rsg_danetqa": _danetqa_config,
    "rsg_rucos": _rucos_config,
}


# ----------------------------------------------------------------------------------------------------
# The leaderboard's submission archive

# The label each choice stands for in a submission file, in the official encodings (as the
# jiant-russian baselines write them in their strict format: note RWSD's capitalised strings).
SUBMISSION_LABELS: dict[str, list[Any]] = {
    "rsg_lidirus": ["entailment", "not_entailment"],
    "rsg_rcb": ["entailment", "contradiction", "neutral"],
    "rsg_parus": [0, 1],
    "rsg_muserc": [0, 1],
    "rsg_terra": ["entailment", "not_entailment"],
    "rsg_russe": ["false", "true"],
    "rsg_rwsd": ["False", "True"],
    "rsg_danetqa": ["false", "true"],
}


def submission_lines(name: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of task `name`'s submission file from lm-eval's logged samples of its test split:
    {"idx", "label"} per document (RuCoS: per query, the chosen entity), MuSeRC's options nested
    as {"idx": passage, "passage": {"questions": [{"idx", "answers": [{"idx", "label"}]}]}}."""
    samples = sorted(samples, key=lambda s: s["doc_id"])
    if name == "rsg_rucos":
        return [
            {
                "idx": _submission_idx(s["doc"]["idx"]),
                "label": s["doc"]["entities"][most_likely(s["filtered_resps"])],
            }
            for s in samples
        ]
    labels = SUBMISSION_LABELS[name]
    if name != "rsg_muserc":
        return [
            {"idx": _submission_idx(s["doc"]["idx"]), "label": labels[most_likely(s["filtered_resps"])]}
            for s in samples
        ]
    passages: list[dict[str, Any]] = []
    for s in samples:
        passage_idx, question_idx, answer_idx = map(_submission_idx, s["doc"]["idx"])
        if not passages or passages[-1]["idx"] != passage_idx:
            passages.append({"idx": passage_idx, "passage": {"questions": []}})
        questions = passages[-1]["passage"]["questions"]
        if not questions or questions[-1]["idx"] != question_idx:
            questions.append({"idx": question_idx, "answers": []})
        questions[-1]["answers"].append(
            {"idx": answer_idx, "label": labels[most_likely(s["filtered_resps"])]}
        )
    return passages


def _submission_idx(idx: Any) -> Any:
    """An idx as the leaderboard's files give it, a JSON integer: the release's LiDiRus.jsonl spells
    its idx as a string ("0"), the example submission (`sample_submission.zip` in
    RussianNLP/RussianSuperGLUE) and the baselines' writers as a number (0)."""
    return int(idx) if isinstance(idx, str) and idx.isdigit() else idx


def submission_file(name: str) -> str:
    """The task's file name in the archive: its directory in the release (`TERRa.jsonl`, ...)."""
    return f"{Path(TASKS[name].eval_file).parent.name}.jsonl"


# The folder the archive holds the task files in: the leaderboard's own example submission
# (`sample_submission.zip` in RussianNLP/RussianSuperGLUE) has them in `submission/`, its TF-IDF
# baseline notebook zips its output folder whole; neither puts them at the archive's root.
SUBMISSION_FOLDER = "submission/"


def write_submission(samples: dict[str, list[dict[str, Any]]], out_zip: Path) -> Path:
    """The Russian SuperGLUE leaderboard's submission archive (zip): per task one
    `submission/<Task>.jsonl` of `submission_lines`, from the logged samples of each task's test split."""
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with temporary_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.mkdir(SUBMISSION_FOLDER, mode=0o755)  # dated 1980-01-01, as the files are
        for name in sorted(samples):
            lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in submission_lines(name, samples[name]))
            info = zipfile.ZipInfo(SUBMISSION_FOLDER + submission_file(name), date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, "".join(lines), compress_type=zipfile.ZIP_DEFLATED)
    return out_zip


def submission_split(name: str) -> str:
    """The task's test split, relative to --data-dir (LiDiRus, a diagnostic, is its own test)."""
    eval_file = Path(TASKS[name].eval_file)
    return str(eval_file if name == "rsg_lidirus" else eval_file.parent / "test.jsonl")
