"""The evaluation tasks as lm-evaluation-harness task configs over local JSONL files.

Every task reads its documents itself (`custom_dataset`: our own JSONL reader, no hub access, no
datasets cache) and hands lm-eval a config dict with Python callables for prompts and scoring.
Prompts are in the language of the task. Layout of the data directory (`../shared/data/eval`):

    mmlu-en/{dev,test}.jsonl   terra/{train,val}.jsonl   rucola/{train,dev}.jsonl
    chgk/{train,test}.jsonl    xquad-ru/validation.jsonl

`bpc` reads any JSONL(.gz) file with a "text" field (default: the bundled Russian sample).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError
from vikhr.jsonl import read_jsonl, read_texts

LN2 = math.log(2.0)


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task: its files (relative to the data directory) and defaults."""

    name: str
    summary: str
    eval_file: str
    fewshot_file: str | None
    default_fewshot: int
    max_fewshot: int  # 0: the task takes no few-shot examples (a --num-fewshot override is ignored)
    metrics: tuple[str, ...]


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "mmlu_en",
            "MMLU (English), k-shot from the same subject's dev questions, loglikelihood of A-D",
            "mmlu-en/test.jsonl",
            "mmlu-en/dev.jsonl",
            5,
            5,
            ("acc",),
        ),
        TaskSpec(
            "terra",
            "TERRa (Russian SuperGLUE) entailment, loglikelihood of да/нет",
            "terra/val.jsonl",
            "terra/train.jsonl",
            0,
            64,
            ("acc",),
        ),
        TaskSpec(
            "rucola",
            "RuCoLA acceptability (in- and out-of-domain dev), loglikelihood of да/нет",
            "rucola/dev.jsonl",
            "rucola/train.jsonl",
            0,
            64,
            ("acc", "mcc"),
        ),
        TaskSpec(
            "chegeka",
            "CheGeKa-style open QA ('Своя игра'), greedy generation, EM/F1 against all accepted answers",
            "chgk/test.jsonl",
            "chgk/train.jsonl",
            4,
            64,
            ("exact_match", "f1"),
        ),
        TaskSpec(
            "xquad_ru",
            "XQuAD Russian extractive QA, greedy generation, EM/F1",
            "xquad-ru/validation.jsonl",
            None,
            0,
            0,
            ("exact_match", "f1"),
        ),
        TaskSpec(
            "bpc",
            "bits per character of a JSONL text set (tokenizer-independent)",
            "",  # given by --bpc-data
            None,
            0,
            0,
            ("bpc", "bits_per_byte"),
        ),
    )
}


def parse_task_list(tasks: str) -> list[str]:
    """Task names from a comma-separated list ('all' = every task); VikhrError for unknown names."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise VikhrError(f"--tasks is empty; choose from {', '.join(TASKS)} (or 'all')")
    if names == ["all"]:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise VikhrError(f"unknown task {unknown[0]!r} in --tasks; choose from {', '.join(TASKS)} (or 'all')")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------------------------------
# Reading data


def _field(record: dict[str, Any], key: str, path: Path, line_no: int) -> Any:
    if key not in record or record[key] is None:
        raise VikhrError(f"{path}:{line_no}: no {key!r} field (is this the right file?)")
    return record[key]


def _records(path: Path, keys: tuple[str, ...], limit: int | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line_no, r in read_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        for k in keys:
            _field(r, k, path, line_no)
        out.append(r)
    if not out:
        raise VikhrError(f"{path} has no records")
    return out


def _to_dataset_dict(splits: dict[str, list[dict[str, Any]]]) -> Any:
    import datasets

    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


# ----------------------------------------------------------------------------------------------------
# Answer normalisation and EM/F1 (SQuAD-style, adapted to Russian: ё = е, no English articles)

_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, ё→е, punctuation and symbols → space, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text).lower().replace("ё", "е")
    chars = [
        " " if (c in _PUNCT or unicodedata.category(c)[0] in "PS") else c for c in text
    ]  # « » — … are category P
    return " ".join("".join(chars).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_scores(prediction: str, golds: list[str]) -> dict[str, float]:
    """Best exact match and F1 of `prediction` over the gold answers."""
    # Generation stops at a newline; a model may still emit leading spaces or a trailing period.
    prediction = prediction.strip()
    return {
        "exact_match": max(exact_match(prediction, g) for g in golds),
        "f1": max(token_f1(prediction, g) for g in golds),
    }


_BRACKETED = re.compile(r"\[([^\]]*)\]")
# "зачет" notes that instruct a human judge instead of listing an answer.
_JUDGE_NOTE = re.compile(r"по смыслу|синоним|ответ|смысл|любой|упоминани|зач[её]т|по логике", re.IGNORECASE)


def chgk_golds(answer: str, accepted: list[str] | None) -> list[str]:
    """All acceptable answers: optional [bracketed] parts both kept and dropped, plus the 'зачет' list."""
    golds: list[str] = []
    for text in [answer, *(a for a in (accepted or []) if not _JUDGE_NOTE.search(a))]:
        with_optional = " ".join(_BRACKETED.sub(r"\1", text).split())
        without_optional = " ".join(_BRACKETED.sub(" ", text).split())
        for g in (with_optional, without_optional):
            if normalize_answer(g) and g not in golds:
                golds.append(g)
    return golds or [answer]


# ----------------------------------------------------------------------------------------------------
# Aggregations


def bits_per_character(items: list[tuple[float, int]]) -> float:
    """-Σ loglikelihood / (Σ characters · ln 2) over all documents."""
    total_ll = sum(ll for ll, _ in items)
    total_chars = sum(n for _, n in items)
    return -total_ll / (total_chars * LN2)


# ----------------------------------------------------------------------------------------------------
# Task configs


def _mmlu_prompt(subject: str, shots: list[dict[str, Any]], doc: dict[str, Any]) -> str:
    def block(d: dict[str, Any]) -> str:
        options = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", d["choices"], strict=True))
        return f"{d['question'].strip()}{options}\nAnswer:"

    header = (
        f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    )
    return header + "".join(f"{block(s)} {s['answer']}\n\n" for s in shots) + block(doc)


def _mmlu_config(eval_path: Path, fewshot_path: Path, k: int, limit: int | None) -> dict[str, Any]:
    def load(**_: Any) -> Any:
        keys = ("subject", "question", "choices", "answer")
        dev: dict[str, list[dict[str, Any]]] = {}
        for r in _records(fewshot_path, keys):
            dev.setdefault(r["subject"], []).append(r)
        rows = []
        for r in _records(eval_path, keys, limit):
            if len(r["choices"]) != 4 or r["answer"] not in ("A", "B", "C", "D"):
                raise VikhrError(
                    f"{eval_path}: {r.get('id', r['question'][:40])!r} is not a 4-way A-D question"
                )
            # The original MMLU protocol: the first k dev questions of the same subject.
            shots = dev.get(r["subject"], [])[:k]
            rows.append(
                {
                    "subject": r["subject"],
                    "prompt": _mmlu_prompt(r["subject"], shots, r),
                    "label": "ABCD".index(r["answer"]),
                }
            )
        return _to_dataset_dict({"test": rows})

    return {
        "task": "mmlu_en",
        "custom_dataset": load,
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": lambda doc: doc["prompt"],
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": lambda doc: doc["label"],
        "num_fewshot": 0,  # the shots are in the prompt (same subject), not drawn by lm-eval
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def _choice_task_with_shots(
    task: str,
    rows: Callable[..., list[dict[str, Any]]],
    eval_path: Path,
    fewshot_path: Path,
    k: int,
    limit: int | None,
    *,
    description: str,
    doc_to_text: Callable[[dict[str, Any]], str],
    choices: list[str],
    metrics: list[dict[str, Any]],
) -> dict[str, Any]:
    """A loglikelihood multiple-choice task whose k shots lm-eval draws from the train file."""
    return {
        "task": task,
        "custom_dataset": lambda **_: _to_dataset_dict(
            {"test": rows(eval_path, limit), "train": rows(fewshot_path)}
        ),
        "test_split": "test",
        "fewshot_split": "train",
        "output_type": "multiple_choice",
        "description": description,
        "doc_to_text": doc_to_text,
        "doc_to_choice": choices,
        "doc_to_target": lambda doc: doc["label"],
        "num_fewshot": k,
        "metric_list": metrics,
    }


def clean_terra_text(text: str) -> str:
    """Undo the CSV quoting left in some TERRa premises: a quoted field with doubled inner quotes."""
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return text[1:-1].replace('""', '"')
    return text


def _terra_config(eval_path: Path, fewshot_path: Path, k: int, limit: int | None) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        out = []
        for r in _records(path, ("premise", "hypothesis", "label"), limit):
            if r["label"] not in ("entailment", "not_entailment"):
                raise VikhrError(f"{path}: label {r['label']!r} is not entailment/not_entailment")
            out.append(
                {
                    "premise": clean_terra_text(r["premise"]).strip(),
                    "hypothesis": clean_terra_text(r["hypothesis"]).strip(),
                    "label": 0 if r["label"] == "entailment" else 1,
                }
            )
        return out

    return _choice_task_with_shots(
        "terra",
        rows,
        eval_path,
        fewshot_path,
        k,
        limit,
        description="Определите, следует ли утверждение из текста.\n\n",
        doc_to_text=lambda doc: (
            f"Текст: {doc['premise']}\nУтверждение: {doc['hypothesis']}\n"
            "Вопрос: следует ли утверждение из текста? Ответьте «да» или «нет».\nОтвет:"
        ),
        choices=["да", "нет"],
        metrics=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    )


def _rucola_config(eval_path: Path, fewshot_path: Path, k: int, limit: int | None) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        out = []
        for r in _records(path, ("sentence", "label"), limit):
            if r["label"] not in (0, 1):
                raise VikhrError(f"{path}: label {r['label']!r} is not 0 or 1")
            out.append({"sentence": r["sentence"].strip(), "label": int(r["label"])})
        return out

    return _choice_task_with_shots(
        "rucola",
        rows,
        eval_path,
        fewshot_path,
        k,
        limit,
        description="Определите, является ли предложение правильным предложением русского языка.\n\n",
        doc_to_text=lambda doc: (
            f"Предложение: {doc['sentence']}\n"
            "Вопрос: является ли это предложение грамматически правильным и осмысленным?\nОтвет:"
        ),
        choices=["нет", "да"],  # label 1 = acceptable
        metrics=[
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "mcc", "aggregation": "matthews_corrcoef", "higher_is_better": True},
        ],
    )


_QA_METRICS = [
    {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
    {"metric": "f1", "aggregation": "mean", "higher_is_better": True},
]
_GENERATION = {"until": ["\n"], "max_gen_toks": 32, "do_sample": False}


def _chegeka_config(eval_path: Path, fewshot_path: Path, k: int, limit: int | None) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        out = []
        for r in _records(path, ("question", "answer"), limit):
            golds = chgk_golds(r["answer"], r.get("accepted"))
            out.append(
                {
                    "topic": (r.get("topic") or "").strip(),
                    "question": " ".join(r["question"].split()),
                    "answer": golds[0],  # optional parts spelled out: what a few-shot example shows
                    "golds": golds,
                }
            )
        return out

    def doc_to_text(doc: dict[str, Any]) -> str:
        topic = f"Тема: {doc['topic']}\n" if doc["topic"] else ""
        return f"{topic}Вопрос: {doc['question']}\nОтвет:"

    return {
        "task": "chegeka",
        "custom_dataset": lambda **_: _to_dataset_dict(
            {"test": rows(eval_path, limit), "train": rows(fewshot_path)}
        ),
        "test_split": "test",
        "fewshot_split": "train",
        "output_type": "generate_until",
        "description": "Ответьте коротко на вопросы интеллектуальной игры «Своя игра».\n\n",
        "doc_to_text": doc_to_text,
        "doc_to_target": lambda doc: doc["answer"],
        "process_results": lambda doc, results: qa_scores(results[0], doc["golds"]),
        "generation_kwargs": dict(_GENERATION),
        "num_fewshot": k,
        "metric_list": [dict(m) for m in _QA_METRICS],
    }


def _xquad_config(eval_path: Path, _fewshot_path: Path | None, _k: int, limit: int | None) -> dict[str, Any]:
    def rows() -> list[dict[str, Any]]:
        out = []
        for r in _records(eval_path, ("context", "question", "answers"), limit):
            golds = [a for a in r["answers"].get("text", []) if a.strip()]
            if not golds:
                raise VikhrError(f"{eval_path}: question {r.get('id')!r} has no answer text")
            out.append({"context": r["context"].strip(), "question": r["question"].strip(), "golds": golds})
        return out

    return {
        "task": "xquad_ru",
        "custom_dataset": lambda **_: _to_dataset_dict({"test": rows()}),
        "test_split": "test",
        "output_type": "generate_until",
        "description": "Прочитайте текст и ответьте на вопрос словами из текста.\n\n",
        "doc_to_text": lambda doc: f"Текст: {doc['context']}\nВопрос: {doc['question']}\nОтвет:",
        "doc_to_target": lambda doc: doc["golds"][0],
        "process_results": lambda doc, results: qa_scores(results[0], doc["golds"]),
        "generation_kwargs": dict(_GENERATION),
        "num_fewshot": 0,
        "metric_list": [dict(m) for m in _QA_METRICS],
    }


def _bpc_config(text_path: Path, text_field: str, limit: int | None) -> dict[str, Any]:
    def load(**_: Any) -> Any:
        rows = []
        for text in read_texts(text_path, text_field):
            if text:
                rows.append({"text": text})
            if limit is not None and len(rows) >= limit:
                break
        if not rows:
            raise VikhrError(f"{text_path} has no non-empty {text_field!r} texts")
        return _to_dataset_dict({"test": rows})

    def process_results(doc: dict[str, Any], results: list[float]) -> dict[str, tuple[float, int]]:
        (loglikelihood,) = results
        text = doc["text"]
        return {
            "bpc": (loglikelihood, len(text)),
            "bits_per_byte": (loglikelihood, len(text.encode("utf-8"))),
        }

    return {
        "task": "bpc",
        "custom_dataset": load,
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": lambda doc: "",
        "doc_to_target": lambda doc: doc["text"],
        "process_results": process_results,
        "num_fewshot": 0,
        "metric_list": [
            {"metric": "bpc", "aggregation": bits_per_character, "higher_is_better": False},
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
        ],
    }


_BUILDERS: dict[str, Callable[[Path, Path | None, int, int | None], dict[str, Any]]] = {
    "mmlu_en": _mmlu_config,  # type: ignore[dict-item]
    "terra": _terra_config,  # type: ignore[dict-item]
    "rucola": _rucola_config,  # type: ignore[dict-item]
    "chegeka": _chegeka_config,  # type: ignore[dict-item]
    "xquad_ru": _xquad_config,
}


def task_files(name: str, data_dir: Path, bpc_data: Path) -> list[Path]:
    """The files task `name` reads."""
    spec = TASKS[name]
    if name == "bpc":
        return [bpc_data]
    return [data_dir / f for f in (spec.eval_file, spec.fewshot_file) if f]


def effective_fewshot(name: str, num_fewshot: int | None) -> int:
    """The number of few-shot examples task `name` uses for a --num-fewshot value (None = its default)."""
    spec = TASKS[name]
    if spec.max_fewshot == 0:
        return 0
    k = spec.default_fewshot if num_fewshot is None else num_fewshot
    return min(k, spec.max_fewshot)


def build_task_config(
    name: str,
    data_dir: Path,
    num_fewshot: int | None,
    bpc_data: Path,
    bpc_field: str = "text",
    limit: int | None = None,
) -> dict[str, Any]:
    """The lm-eval task config dict for task `name` (files checked to exist).

    `limit` keeps the first documents only, as lm-eval's own limit does, so that a short run
    does not prepare prompts for the whole set.
    """
    for path in task_files(name, data_dir, bpc_data):
        if not path.is_file():
            where = "--bpc-data" if name == "bpc" else f"--data-dir {data_dir}"
            raise VikhrError(f"task {name}: data file not found: {path} (check {where})")
    if name == "bpc":
        return _bpc_config(bpc_data, bpc_field, limit)
    spec = TASKS[name]
    fewshot_path = data_dir / spec.fewshot_file if spec.fewshot_file else None
    return _BUILDERS[name](
        data_dir / spec.eval_file, fewshot_path, effective_fewshot(name, num_fewshot), limit
    )
