"""The evaluation tasks as lm-evaluation-harness task configs over local JSONL files.

Every task reads its documents itself (`custom_dataset`: our own JSONL reader, no hub access, no
datasets cache) and hands lm-eval a config dict with Python callables for prompts and scoring.
Prompts are in the language of the task. Layout of the data directory (`../shared/data/eval`):

    mmlu-en/{dev,test}.jsonl   terra/{train,val}.jsonl   rucola/{train,dev}.jsonl
    chgk/{train,test}.jsonl    xquad-ru/validation.jsonl mmlu-ru/{dev,test}.jsonl
    russian-superglue/<Task>/  (vikhr.eval.rsg)          mera/<task>/  (vikhr.eval.mera)

`bpc` reads any JSONL(.gz) file with a "text" field (default: the bundled Russian sample), or a
plain text file named `.txt` (`.txt.gz`, `.txt.zst`) as one document.
"""

from __future__ import annotations

import json
import math
import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from vikhr.errors import VikhrError, close_match
from vikhr.jsonl import is_compressed, read_jsonl, read_text_file, read_texts

LN2 = math.log(2.0)
# MERA ruEthics: one MCC per (question, ethical criterion), scored in vikhr.eval.mera_metrics.
ETHICS_QUESTIONS = ("correct", "good", "ethical")
ETHICS_CRITERIA = ("virtue", "law", "moral", "justice", "utilitarianism")
ETHICS_METRICS = tuple(f"mcc_{q}_{c}" for q in ETHICS_QUESTIONS for c in ETHICS_CRITERIA)


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
            "mmlu_ru",
            "Ru-MMLU (MMLU translated into Russian, NLPCoreTeam/mmlu_ru layout), k-shot from the same "
            "subject's dev questions, loglikelihood of A-D",
            "mmlu-ru/test.jsonl",
            "mmlu-ru/dev.jsonl",
            5,
            5,
            ("acc",),
        ),
        *(
            TaskSpec(
                f"rsg_{task.lower()}",
                f"Russian SuperGLUE {task} ({summary})",
                f"russian-superglue/{task}/{'LiDiRus.jsonl' if task == 'LiDiRus' else 'val.jsonl'}",
                f"russian-superglue/{'TERRa' if task == 'LiDiRus' else task}/train.jsonl",
                0,
                64 if task not in ("MuSeRC", "RuCoS") else 2,  # long passages: few shots fit
                metrics,
            )
            for task, summary, metrics in (
                ("LiDiRus", "diagnostic entailment, shots from TERRa train", ("mcc",)),
                ("RCB", "3-way entailment", ("acc", "f1")),
                ("PARus", "cause/effect choice", ("acc",)),
                (
                    "MuSeRC",
                    "multi-sentence reading comprehension, each answer option true/false",
                    ("f1a", "em"),
                ),
                ("TERRa", "entailment", ("acc",)),
                ("RUSSE", "word in context", ("acc",)),
                ("RWSD", "Winograd schema", ("acc",)),
                ("DaNetQA", "yes/no questions", ("acc",)),
                ("RuCoS", "cloze over passage entities", ("f1", "em")),
            )
        ),
        *(
            TaskSpec(
                f"mera_{task}",
                f"MERA {task} ({summary}), the release's instructions, {shots}-shot",
                f"mera/{task}/test.jsonl",
                f"mera/{task}/{shot_split}.jsonl" if shot_split else None,
                shots,
                64 if shot_split else 0,
                metrics,
            )
            # The release's shot counts and shot splits (the diagnostic ruHHH and ruHateSpeech have none).
            for task, summary, shots, shot_split, metrics in (
                ("rummlu", "ruMMLU, A-D, shots from the same subject", 5, "public_test", ("acc",)),
                ("mathlogicqa", "MathLogicQA, A-D", 5, "train", ("acc",)),
                ("parus", "PARus", 0, "train", ("acc",)),
                ("rcb", "RCB", 0, "train", ("acc", "f1")),
                ("rwsd", "RWSD", 0, "train", ("acc",)),
                ("lcs", "LCS, length of the longest common subsequence 0-9", 2, "public_test", ("acc",)),
                ("bps", "BPS, balanced bracket sequences 0/1", 2, "train", ("acc",)),
                ("simplear", "SimpleAr, arithmetic, generated, exact match", 5, "train", ("em",)),
                (
                    "rumultiar",
                    "ruMultiAr, multi-step arithmetic, generated, exact match",
                    5,
                    "train",
                    ("em",),
                ),
                (
                    "rumodar",
                    "ruModAr, modified arithmetic, generated, exact match",
                    0,
                    "public_test",
                    ("em",),
                ),
                ("ruhhh", "ruHHH, the more helpful/harmless/honest reply 1/2", 0, None, ("acc",)),
                ("ruhatespeech", "ruHateSpeech, the non-toxic reply 1/2", 0, None, ("acc",)),
                ("ruopenbookqa", "ruOpenBookQA, A-D", 5, "train", ("acc", "f1")),
                ("ruworldtree", "ruWorldTree, A-D", 5, "train", ("acc", "f1")),
                ("chegeka", "CheGeKa, open questions, generated, SQuAD EM/F1", 4, "train", ("f1", "em")),
                ("multiq", "MultiQ, multi-hop questions over two texts, generated", 0, "train", ("f1", "em")),
                (
                    "use",
                    "USE, Unified State Exam tasks, generated, MERA's grade",
                    0,
                    "train",
                    ("grade_norm",),
                ),
                (
                    "rudetox",
                    "ruDetox, detoxification, generated; J needs MERA's classifiers: submission only",
                    0,
                    "train",
                    ("j",),
                ),
                (
                    "ruhumaneval",
                    "ruHumanEval, Python functions, 10 samples each, pass@k by running the tests",
                    0,
                    None,
                    ("pass@1", "pass@5", "pass@10"),
                ),
                (
                    "ruethics",
                    "ruEthics, 0/1 per question, MCC per ethical criterion",
                    0,
                    None,
                    ETHICS_METRICS,
                ),
                (
                    "rutie",
                    "ruTiE, one dialogue of 1/2 questions asked in order, the model's own answers in context",
                    0,
                    None,
                    ("acc",),
                ),
            )
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


# Names that stand for several tasks in --tasks.
TASK_GROUPS: dict[str, list[str]] = {
    "rsg": [n for n in TASKS if n.startswith("rsg_")],
    "mera": [n for n in TASKS if n.startswith("mera_")],
}
# The tasks behind the paper's Table 6 columns (MERA's total is scored by its site from the submission).
TASK_GROUPS["table6"] = ["mmlu_en", "mmlu_ru", "chegeka", *TASK_GROUPS["rsg"], *TASK_GROUPS["mera"]]
# --tasks' default: the tasks whose data the default data directory holds. A list of '-name's only
# leaves them out of it ("-bpc").
DEFAULT_TASKS = "mmlu_en,terra,rucola,chegeka,xquad_ru,bpc"


def parse_task_list(tasks: str) -> list[str]:
    """Task names from a comma-separated list: names, groups ('all' and TASK_GROUPS), and names or
    groups after a '-' to leave out ("table6,-mera_ruhumaneval"); '-name's alone leave them out of
    DEFAULT_TASKS ("-bpc")."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    groups = {"all": list(TASKS), **TASK_GROUPS}
    choices = (
        f"choose from {', '.join(TASKS)} (or {', '.join(map(repr, groups))}; "
        "'-name' after them leaves one out, e.g. all,-bpc; alone, out of the default, e.g. -bpc)"
    )
    if not names:
        raise VikhrError(f"--tasks is empty; {choices}")
    if all(n.startswith("-") for n in names):
        names = [*DEFAULT_TASKS.split(","), *names]
    chosen = [t for n in names if not n.startswith("-") for t in groups.get(n, [n])]
    left_out = {t for n in names if n.startswith("-") for t in groups.get(n[1:], [n[1:]])}
    unknown = [n for n in [*chosen, *left_out] if n not in TASKS]
    if unknown:
        close = close_match(unknown[0], [*TASKS, *groups])
        hint = "" if close is None else f" (did you mean {close!r}?)"
        raise VikhrError(f"unknown task {unknown[0]!r} in --tasks{hint}; {choices}")
    kept = [t for t in dict.fromkeys(chosen) if t not in left_out]
    if not kept:
        raise VikhrError(f"--tasks {tasks!r} leaves no task; {choices}")
    return kept


# ----------------------------------------------------------------------------------------------------
# Reading data


def read_numbered_records(
    path: Path,
    keys: tuple[str, ...],
    limit: int | None = None,
    layout: str | None = None,
    texts: tuple[str, ...] = (),
    ids: tuple[str, ...] = (),
) -> list[tuple[int, dict[str, Any]]]:
    """The first `limit` records of a JSONL file, each with its line number (for errors found later,
    to name `file:line`: blank lines are skipped, so a record's position is not its line), each
    checked to have `keys` (`layout` names the release whose layout the file should have, for the
    error message) and one text in each of `texts` (`require_text`); a message about a text names
    the record by its line and the fields in `ids` (`record_location`)."""
    out: list[tuple[int, dict[str, Any]]] = []
    for line_no, r in read_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        for k in keys:
            if r.get(k) is None:
                expected = f"the {layout} layout" if layout else "records"
                what = f"field {k!r} is null" if k in r else f"no {k!r} field"
                raise VikhrError(
                    f"{path}:{line_no}: {what} (expected {expected} with {', '.join(keys)}"
                    f"{_another_release(r, layout)})"
                )
        where = record_location(path, line_no, *((k, r.get(k)) for k in ids))
        for k in texts:
            require_text(where, k, r.get(k), layout)
        out.append((line_no, r))
    if not out:
        raise VikhrError(f"{path} has no records")
    return out


def _another_release(record: dict[str, Any], layout: str | None) -> str:
    """ "; it is ..." where `record` is plainly another release's layout than `layout`: the official
    SQuAD/XQuAD .json file (one document holding "data"), or a MERA task file."""
    if isinstance(record.get("data"), list):
        return (
            "; the file is one JSON document holding \"data\", as SQuAD's and XQuAD's .json files are: "
            "give one question per line, as Hugging Face datasets exports them"
        )
    if {"instruction", "inputs", "outputs"} <= record.keys() and not (layout or "").startswith("MERA"):
        return "; it is a MERA task file, which the mera_* tasks read (mera/<task>/test.jsonl)"
    return ""


def require_text(
    where: str, field: str, value: Any, layout: str | None, *, may_be_blank: bool = False
) -> None:
    """VikhrError naming `where` unless `value` is a string: a list, an object, a number or a boolean
    where one text belongs failed later, in lm-eval, naming no record. A blank one is refused too
    (the item would be scored without its text) unless `may_be_blank`. `layout` names the release."""
    if not isinstance(value, str):
        expected = f"the {layout} layout" if layout else "the release's layout, see docs/eval.md"
        raise VikhrError(
            f"{where}: field {field!r} must be a string, got {json_kind(value)} {json_spelling(value)[:40]} "
            f"({expected} has one text there: fix or drop the record)"
        )
    if not may_be_blank and not value.strip():
        raise VikhrError(
            f"{where}: field {field!r} is blank: the item would be scored without its text "
            "(fill it in or drop the record)"
        )


def json_kind(value: Any) -> str:
    """What JSON calls the type of `value`, with its article: "a list", "an object", "a number"."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", dict: "an object", str: "a string"}.get(type(value), "null")


def require_strings(where: str, field: str, value: Any, expected: str) -> list[str]:
    """`value`, a list of strings, else VikhrError naming `where` (a string where the list belongs
    would be read as one answer per character)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise VikhrError(
            f"{where}: field {field!r} must be a list of strings, got {type(value).__name__} "
            f"{json.dumps(value, ensure_ascii=False)[:60]} (expected {expected})"
        )
    return value


def json_spelling(value: Any) -> str:
    """`value` as a JSON file spells it, so that a message tells "1" from 1 and true from "true"."""
    return json.dumps(value, ensure_ascii=False)


def record_location(path: Path, line: int, *ids: tuple[str, Any]) -> str:
    """Where a record is, for a message about it: `FILE:LINE` (1-based, what an editor jumps to),
    then the ids the release names it by, those the record has: `val.jsonl:12 (idx 11)`,
    `m.jsonl:3 (passage idx 2, question idx 0)`. An id alone is no place: a user opening the file
    looks for a line."""
    named = ", ".join(f"{name} {json_spelling(value)}" for name, value in ids if value is not None)
    return f"{path}:{line}" + (f" ({named})" if named else "")


class MeraRecord(NamedTuple):
    """A record of a MERA task file and its `record_location` (`file:line (meta.id N)`), which
    errors found after reading (a prompt's template, a field's type across records) name."""

    where: str
    record: dict[str, Any]


def require_unique(path: Path, ids: list[tuple[int, Any]], what: str) -> None:
    """The ids (with the line of the record holding each) a submission tells the records of a scored
    file apart by occur once each."""
    first_line: dict[str, int] = {}
    for line, value in ids:
        key = json.dumps(value, sort_keys=True)
        if key in first_line:
            raise VikhrError(
                f"{path}:{line}: {what} {json_spelling(value)} occurs twice (first on line "
                f"{first_line[key]}; a submission tells records apart by it)"
            )
        first_line[key] = line


def warn_of_short_shots(task: str, shot_path: Path, short: int, documents: int, k: int, group: str) -> None:
    """A warning on stderr when `short` of `documents` got fewer than `k` shots because their `group`
    (an MMLU subject, a MERA domain) has fewer in `shot_path`: the prompt holds what there is, as
    the original protocols build it, but the run is not quite the k-shot its results name."""
    if short:
        print(
            f"warning: {task}: {short} of {documents} documents got fewer than {k} shots: their {group} "
            f"has fewer in {shot_path} (the prompt holds those there are)",
            file=sys.stderr,
        )


def most_likely(results: list[tuple[float, bool]]) -> int:
    """The index of the most likely choice of a multiple-choice document's (loglikelihood, is_greedy)
    results; the first of equal ones, as lm-eval's `acc` takes it."""
    return max(range(len(results)), key=lambda i: results[i][0])


# The key under which a row built from a file's record carries its `record_location`, for a field
# whose type differs between records, found only when the rows become a table; not in the table.
WHERE = "_where"


def to_dataset_dict(splits: dict[str, list[dict[str, Any]]]) -> Any:
    """The splits as an HF DatasetDict; VikhrError naming the field whose records disagree on its type
    and the two records (Arrow wants one type per column), else TypeError (the runner names the file)."""
    import datasets
    import pyarrow

    out = {}
    for name, rows in splits.items():
        try:
            out[name] = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != WHERE} for r in rows])
        except pyarrow.ArrowException as e:
            mixed = _mixed_field(rows)
            if mixed is None:
                raise TypeError(f"its records do not form one table ({e})") from None
            raise VikhrError(f"{mixed} (give it one type in every record, as the release does)") from None
    return datasets.DatasetDict(out)


def _mixed_field(rows: list[dict[str, Any]]) -> str | None:
    """Which field of `rows` holds values of two JSON types (null aside), and the records (their
    `WHERE`: every reader's rows carry it; bpc's, texts without lines, are all of one type)."""
    first: dict[str, tuple[str, str]] = {}
    for row in rows:
        for key, value in row.items():
            if value is None or key == WHERE:
                continue
            kind = (
                "number"
                if isinstance(value, (int, float)) and not isinstance(value, bool)
                else type(value).__name__
            )
            seen = first.setdefault(key, (kind, row[WHERE]))
            if seen[0] != kind:
                return f"field {key!r} is a {seen[0]} in {seen[1]} and a {kind} in {row[WHERE]}"
    return None


# ----------------------------------------------------------------------------------------------------
# Answer normalisation and EM/F1 (SQuAD-style, adapted to Russian: see docs/eval.md, "EM/F1")

_PUNCT = set(string.punctuation)


# Stress marks (combining acute and grave: "Пу́шкин") and the invisible format characters a copied
# text carries (soft hyphen, zero-width space, U+FEFF) are not part of the answer's spelling.
_STRESS_MARKS = {"\u0300", "\u0301"}


def normalize_answer(text: str) -> str:
    """NFC, lower case, ё→е, stress marks and format characters removed, punctuation and symbols →
    space, whitespace (non-breaking spaces too) collapsed."""
    decomposed = unicodedata.normalize("NFD", text)
    text = unicodedata.normalize("NFC", "".join(c for c in decomposed if c not in _STRESS_MARKS))
    text = text.lower().replace("ё", "е")
    return " ".join("".join(_answer_char(c) for c in text).split())


def _answer_char(c: str) -> str:
    """A character of a normalised answer: format characters dropped, punctuation and symbols
    (« » „ “ — – … are category P, № ° category S) a space."""
    category = unicodedata.category(c)
    if category == "Cf":
        return ""
    return " " if c in _PUNCT or category[0] in "PS" else c


# A number's digit groups apart ("1 000", the space no-break, narrow or thin as typeset Russian
# has it): joined before punctuation turns "3,141" (a decimal comma) into two tokens.
_DIGIT_GROUPS = re.compile(r"(?<!\d)\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?!\d)")
# Lower-case letters of the two scripts that look alike (upper-case A B C E H K M O P T X Y, lowered).
_LATIN_TO_CYRILLIC = dict(zip("abcehkmoptxy", "авсенкмортху", strict=True))
_CYRILLIC_TO_LATIN = {c: latin for latin, c in _LATIN_TO_CYRILLIC.items()}


def chgk_normalize(text: str) -> str:
    """`normalize_answer`, and what a CheGeKa-style answer spells two ways: a number's digit groups
    joined ("1 000" is "1000") and, in a word mixing Latin and Cyrillic letters, the look-alikes read
    in the word's script ("Mocквa" typed with Latin M, o, a is "москва")."""
    joined = _DIGIT_GROUPS.sub(lambda m: re.sub(r"\D", "", m[0]), text)
    return " ".join(_one_script(word) for word in normalize_answer(joined).split())


def _one_script(word: str) -> str:
    """A word of Latin and Cyrillic letters in one script where look-alikes allow it: Latin where its
    letters without a look-alike are all Latin, else Cyrillic (the set is Russian)."""
    latin = [c for c in word if "a" <= c <= "z"]
    cyrillic = [c for c in word if "\u0400" <= c <= "\u04ff"]
    if not latin or not cyrillic:
        return word
    to_latin = any(c not in _LATIN_TO_CYRILLIC for c in latin) and all(
        c in _CYRILLIC_TO_LATIN for c in cyrillic
    )
    table = _CYRILLIC_TO_LATIN if to_latin else _LATIN_TO_CYRILLIC
    return "".join(table.get(c, c) for c in word)


def exact_match(prediction: str, gold: str, normalize: Callable[[str], str] = normalize_answer) -> float:
    return float(normalize(prediction) == normalize(gold))


def overlap_f1(pred: list[str], gold: list[str], both_empty: float = 0.0) -> float:
    """F1 of two token lists' overlap; 0 when they share no token, except `both_empty` for two empty
    lists (SQuAD's scorer gives them 1, ReCoRD's 0)."""
    if not pred and not gold:
        return both_empty
    overlap = sum((Counter(pred) & Counter(gold)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str, normalize: Callable[[str], str] = normalize_answer) -> float:
    return overlap_f1(normalize(prediction).split(), normalize(gold).split(), both_empty=1.0)


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation, which MERA (CheGeKa, MultiQ) and Russian SuperGLUE's RuCoS
    scorer use: lower case, ASCII punctuation and English articles removed, whitespace collapsed
    (ё stays ё, «» stay)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def qa_scores(
    prediction: str, golds: list[str], normalize: Callable[[str], str] = normalize_answer
) -> dict[str, float]:
    """Best exact match and F1 of `prediction` over the gold answers, both normalised by `normalize`."""
    # Generation stops at a newline; a model may still emit leading spaces or a trailing period.
    prediction = prediction.strip()
    return {
        "exact_match": max(exact_match(prediction, g, normalize) for g in golds),
        "f1": max(token_f1(prediction, g, normalize) for g in golds),
    }


_BRACKETED = re.compile(r"\[([^\]]*)\]")
# "зачет" notes that instruct a human judge instead of listing an answer.
# "любой" in every form ("в любом порядке", "любое прилагательное"), not "любовь" or "любимый".
_JUDGE_NOTE = re.compile(
    r"по смыслу|синоним|ответ|смысл|упоминани|зач[её]т|по логике"
    r"|\bлюб(?:ой|ая|ое|ые|ого|ому|ом|ую|ых|ым|ыми)\b",
    re.IGNORECASE,
)


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


_MMLU_HEADER = {
    "en": "The following are multiple choice questions (with answers) about {subject}.\n\n",
    "ru": "Ниже приведены вопросы с выбором ответа (с ответами) по теме «{subject}».\n\n",
}
_MMLU_ANSWER = {"en": "Answer:", "ru": "Ответ:"}


def _mmlu_prompt(subject: str, shots: list[dict[str, Any]], doc: dict[str, Any], language: str = "en") -> str:
    def block(d: dict[str, Any]) -> str:
        options = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", d["choices"], strict=True))
        return f"{d['question'].strip()}{options}\n{_MMLU_ANSWER[language]}"

    header = _MMLU_HEADER[language].format(subject=subject.replace("_", " "))
    return header + "".join(f"{block(s)} {s['answer']}\n\n" for s in shots) + block(doc)


def _mmlu_record(where: str, r: dict[str, Any], russian: bool, layout: str) -> dict[str, Any]:
    """A record of either MMLU layout as {subject, question, choices, answer letter}; `where` is its
    `file:line`, named with what is wrong.

    En-MMLU: question/choices/answer "A"-"D". Ru-MMLU (NLPCoreTeam/mmlu_ru): question_ru/choices_ru
    and answer 0-3 (question_en/choices_en alongside).
    """
    question, choices = (r["question_ru"], r["choices_ru"]) if russian else (r["question"], r["choices"])
    answer = r["answer"]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < 4:
        answer = "ABCD"[answer]
    field = "choices_ru" if russian else "choices"
    expected = f"expected the {layout} layout: {field} a list of 4 choices, answer A-D or 0-3"
    if not isinstance(choices, list) or len(choices) != 4:
        got = f"{len(choices)} choices" if isinstance(choices, list) else f"a {type(choices).__name__}"
        raise VikhrError(f"{where}: field {field!r} holds {got}, not 4 ({expected}; fix or drop the record)")
    other = next((c for c in choices if not isinstance(c, str)), "")
    if not isinstance(other, str):  # a null or a list would be shown in the prompt as "None", "['b']"
        raise VikhrError(
            f"{where}: field {field!r} holds {json.dumps(other, ensure_ascii=False)[:40]}, not a choice's "
            f"text ({expected}, each a string; fix or drop the record)"
        )
    for choice in choices:
        require_text(where, field, choice, layout)
    if answer not in ("A", "B", "C", "D"):
        raise VikhrError(
            f"{where}: field 'answer' is {json.dumps(r['answer'], ensure_ascii=False)}, not A-D or 0-3 "
            f"({expected}; fix or drop the record)"
        )
    return {"subject": r["subject"], "question": question, "choices": choices, "answer": answer}


def _mmlu_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, language: str = "en"
) -> dict[str, Any]:
    russian = language == "ru"
    keys = (
        ("subject", "question_ru", "choices_ru", "answer")
        if russian
        else ("subject", "question", "choices", "answer")
    )
    layout = "Ru-MMLU (NLPCoreTeam/mmlu_ru)" if russian else "MMLU"

    def load(**_: Any) -> Any:
        dev: dict[str, list[dict[str, Any]]] = {}
        shots = read_numbered_records(fewshot_path, keys, None, layout, keys[:2]) if fewshot_path else []
        for line, r in shots:
            dev.setdefault(r["subject"], []).append(
                _mmlu_record(f"{fewshot_path}:{line}", r, russian, layout)
            )
        rows, short = [], 0
        for line, raw in read_numbered_records(eval_path, keys, limit, layout, texts=keys[:2]):
            r = _mmlu_record(f"{eval_path}:{line}", raw, russian, layout)
            # The original MMLU protocol: the first k dev questions of the same subject.
            shots = dev.get(r["subject"], [])[:k]
            short += len(shots) < k
            rows.append(
                {
                    "subject": r["subject"],
                    "prompt": _mmlu_prompt(r["subject"], shots, r, language),
                    "label": "ABCD".index(r["answer"]),
                    WHERE: f"{eval_path}:{line}",
                }
            )
        if fewshot_path is not None:
            warn_of_short_shots(f"mmlu_{language}", fewshot_path, short, len(rows), k, "subject")
        return to_dataset_dict({"test": rows})

    return {
        "task": f"mmlu_{language}",
        "custom_dataset": load,
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": lambda doc: doc["prompt"],
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": lambda doc: doc["label"],
        "num_fewshot": 0,  # the shots are in the prompt (same subject), not drawn by lm-eval
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def shot_splits(
    test_rows: Callable[[], list[dict[str, Any]]], shot_rows: Callable[[], list[dict[str, Any]]] | None
) -> dict[str, Any]:
    """The dataset part of a task config whose shots lm-eval draws: the scored split and, unless
    `shot_rows` is None (a 0-shot run, which neither needs nor reads the shot file), the shots'."""

    def load(**_: Any) -> Any:
        splits = {"test": test_rows()}
        if shot_rows is not None:
            splits["train"] = shot_rows()
        return to_dataset_dict(splits)

    return {"custom_dataset": load, "test_split": "test", **({"fewshot_split": "train"} if shot_rows else {})}


def choice_task_with_shots(
    task: str,
    rows: Callable[..., list[dict[str, Any]]],
    eval_path: Path,
    fewshot_path: Path | None,
    k: int,
    limit: int | None,
    *,
    description: str,
    doc_to_text: Callable[[dict[str, Any]], str],
    choices: list[str] | Callable[[dict[str, Any]], list[str]],
    metrics: list[dict[str, Any]],
) -> dict[str, Any]:
    """A loglikelihood multiple-choice task whose k shots lm-eval draws from the train file (None: a
    0-shot run)."""
    return {
        "task": task,
        **shot_splits(
            lambda: rows(eval_path, limit), None if fewshot_path is None else lambda: rows(fewshot_path)
        ),
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


TERRA_DESCRIPTION = "Определите, следует ли утверждение из текста.\n\n"


def terra_prompt(doc: dict[str, Any]) -> str:
    """The TERRa (and LiDiRus) prompt; the choices are " да" (entailment, label 0) and " нет"."""
    return (
        f"Текст: {doc['premise']}\nУтверждение: {doc['hypothesis']}\n"
        "Вопрос: следует ли утверждение из текста? Ответьте «да» или «нет».\nОтвет:"
    )


def terra_config(
    eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None, hidden: bool = False
) -> dict[str, Any]:
    """TERRa; `hidden`: the evaluated file is the test split, without labels (each record has an `idx`)."""

    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        hide = hidden and path == eval_path
        out = []
        keys = ("premise", "hypothesis", "idx" if hide else "label")
        for line, r in read_numbered_records(path, keys, limit, "TERRa", texts=keys[:2], ids=("idx",)):
            where = record_location(path, line, ("idx", r.get("idx")))
            if not hide and r["label"] not in ("entailment", "not_entailment"):
                raise VikhrError(
                    f"{where}: label "
                    f'{json_spelling(r["label"])} is not "entailment" or "not_entailment" (the TERRa '
                    "layout's strings)"
                )
            out.append(
                {
                    "premise": clean_terra_text(r["premise"]).strip(),
                    "hypothesis": clean_terra_text(r["hypothesis"]).strip(),
                    "label": 0 if hide or r["label"] == "entailment" else 1,
                    "idx": r.get("idx"),
                    WHERE: where,
                }
            )
        return out

    return choice_task_with_shots(
        "terra",
        rows,
        eval_path,
        fewshot_path,
        k,
        limit,
        description=TERRA_DESCRIPTION,
        doc_to_text=terra_prompt,
        choices=["да", "нет"],
        metrics=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    )


def _rucola_config(eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        out = []
        for line, r in read_numbered_records(
            path, ("sentence", "label"), limit, "RuCoLA", texts=("sentence",)
        ):
            if type(r["label"]) is not int or r["label"] not in (0, 1):  # true and 1.0 equal 1 in Python
                raise VikhrError(
                    f"{path}:{line}: label {json_spelling(r['label'])} is not 0 or 1 (the RuCoLA layout: "
                    "a JSON integer, 1 = acceptable)"
                )
            out.append({"sentence": r["sentence"].strip(), "label": int(r["label"]), WHERE: f"{path}:{line}"})
        return out

    return choice_task_with_shots(
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


def _chegeka_config(eval_path: Path, fewshot_path: Path | None, k: int, limit: int | None) -> dict[str, Any]:
    def rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
        out = []
        records = read_numbered_records(
            path, ("question", "answer"), limit, "CheGeKa-style", texts=("question",)
        )
        for line_no, r in records:
            layout = 'the CheGeKa layout: "answer" a string, "accepted" a list of strings'
            if not isinstance(r["answer"], str):
                raise VikhrError(f"{path}:{line_no}: field 'answer' must be a string (expected {layout})")
            accepted = r.get("accepted")
            if accepted is not None:
                accepted = require_strings(f"{path}:{line_no}", "accepted", accepted, layout)
            topic = r.get("topic")  # optional: a theme the question belongs to
            if topic is not None:
                require_text(f"{path}:{line_no}", "topic", topic, "CheGeKa-style", may_be_blank=True)
            golds = chgk_golds(r["answer"], accepted)
            if not normalize_answer(golds[0]):  # scored against nothing, an empty generation matched it
                raise VikhrError(f"{path}:{line_no}: the record has no answer text")
            out.append(
                {
                    "topic": (topic or "").strip(),
                    "question": " ".join(r["question"].split()),
                    "answer": golds[0],  # optional parts spelled out: what a few-shot example shows
                    "golds": golds,
                    WHERE: f"{path}:{line_no}",
                }
            )
        return out

    def doc_to_text(doc: dict[str, Any]) -> str:
        topic = f"Тема: {doc['topic']}\n" if doc["topic"] else ""
        return f"{topic}Вопрос: {doc['question']}\nОтвет:"

    return {
        "task": "chegeka",
        **shot_splits(
            lambda: rows(eval_path, limit), None if fewshot_path is None else lambda: rows(fewshot_path)
        ),
        "output_type": "generate_until",
        "description": "Ответьте коротко на вопросы интеллектуальной игры «Своя игра».\n\n",
        "doc_to_text": doc_to_text,
        "doc_to_target": lambda doc: doc["answer"],
        # Our own set: a number or a word is one answer however it is typed (see chgk_normalize).
        "process_results": lambda doc, results: qa_scores(results[0], doc["golds"], chgk_normalize),
        "generation_kwargs": dict(_GENERATION),
        "num_fewshot": k,
        "metric_list": [dict(m) for m in _QA_METRICS],
    }


def _xquad_config(eval_path: Path, _fewshot_path: Path | None, _k: int, limit: int | None) -> dict[str, Any]:
    def rows() -> list[dict[str, Any]]:
        out = []
        keys = ("context", "question", "answers")
        for line, r in read_numbered_records(
            eval_path, keys, limit, "SQuAD (Hugging Face datasets)", texts=keys[:2], ids=("id",)
        ):
            answers = r["answers"]
            where = record_location(eval_path, line, ("id", r.get("id")))
            layout = 'the SQuAD layout: "answers": {"text": [...], "answer_start": [...]}'
            if not isinstance(answers, dict):
                raise VikhrError(f"{where}: field 'answers' must be an object (expected {layout})")
            texts = require_strings(where, "answers.text", answers.get("text", []), layout)
            # A gold of only punctuation normalises to "": an empty generation would match it.
            golds = [a for a in texts if normalize_answer(a)]
            if not golds:
                raise VikhrError(f"{where}: the question has no answer text")
            out.append(
                {
                    "context": r["context"].strip(),
                    "question": r["question"].strip(),
                    "golds": golds,
                    WHERE: where,
                }
            )
        return out

    return {
        "task": "xquad_ru",
        "custom_dataset": lambda **_: to_dataset_dict({"test": rows()}),
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


def _suffix_under_compression(path: Path) -> str:
    """The suffix of `path` that says its content, in lower case: `.txt` of `book.txt.gz`."""
    return (path.with_suffix("") if is_compressed(path) else path).suffix.lower()


def bpc_config(text_path: Path, text_field: str, limit: int | None) -> dict[str, Any]:
    """The bpc task over `text_path`: JSON Lines, one document per record's `text_field`, or plain
    text — a file named `.txt` (`.txt.gz`, `.txt.zst`) — that is one document, the whole file: its
    paragraphs split apart would each be scored from BOS alone, without the text before them, and
    lose the blank lines between them from the characters counted."""
    suffix = _suffix_under_compression(text_path)
    plain = suffix == ".txt"
    layout = (
        f"--bpc-data takes JSON Lines, one {{{json.dumps(text_field)}: ...}} object per document "
        "(--bpc-field names another field)"
    )
    if plain and text_field != "text":
        raise VikhrError(
            f"--bpc-field {text_field!r} names a JSON field, and {text_path} is read as plain text (its "
            "name ends in .txt): leave --bpc-field out, or give JSON Lines"
        )
    if suffix not in (".jsonl", ".json"):  # a book under another name: the way to have it read
        layout += ", or plain text in a file named .txt"

    def load(**_: Any) -> Any:
        rows = []
        try:
            texts = [read_text_file(text_path)] if plain else read_texts(text_path, text_field)
            for text in texts:
                if text.strip():  # an empty document has no characters to score; white space alone is no text
                    rows.append({"text": text})
                if limit is not None and len(rows) >= limit:
                    break
        except VikhrError as e:  # the reader's words know no option: say which one reads the file
            raise VikhrError(f"task bpc: {e}" + ("" if plain else f"; {layout}")) from None
        if not rows:
            what = "no text (empty or white space only)" if plain else f"no non-empty {text_field!r} texts"
            raise VikhrError(f"task bpc: {text_path} has {what}" + ("" if plain else f"; {layout}"))
        return to_dataset_dict({"test": rows})

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


TASK_BUILDERS: dict[str, Callable[[Path, Path | None, int, int | None], dict[str, Any]]] = {
    "mmlu_en": _mmlu_config,  # type: ignore[dict-item]
    "mmlu_ru": lambda e, f, k, limit: _mmlu_config(e, f, k, limit, "ru"),  # type: ignore[arg-type]
    "terra": terra_config,  # type: ignore[dict-item]
    "rucola": _rucola_config,  # type: ignore[dict-item]
    "chegeka": _chegeka_config,  # type: ignore[dict-item]
    "xquad_ru": _xquad_config,
}


def task_files(name: str, data_dir: Path, bpc_data: Path, num_fewshot: int | None) -> list[Path]:
    """The files task `name` reads at `num_fewshot` (None: its default): the shot file only when the
    task runs with shots (a 0-shot run neither needs nor reads it)."""
    spec = TASKS[name]
    if name == "bpc":
        return [bpc_data]
    shots = shot_file(name, num_fewshot)
    return [data_dir / spec.eval_file, *([_released_shot_path(data_dir / shots)] if shots else [])]


def _released_shot_path(path: Path) -> Path:
    """`path`, or the name MERA's release gives it: the labelled public test of ruMMLU, LCS and
    ruModAr is `train.jsonl` in the released files ("public test (train split)", its dataset cards),
    which its lm-eval port loads as the split `public_test`."""
    if path.name == "public_test.jsonl" and not path.exists() and (path.parent / "train.jsonl").is_file():
        return path.parent / "train.jsonl"
    return path


def shot_file(name: str, num_fewshot: int | None) -> str | None:
    """The shot file of task `name` (relative to the data directory) when it runs with shots."""
    return TASKS[name].fewshot_file if effective_fewshot(name, num_fewshot) > 0 else None


def effective_fewshot(name: str, num_fewshot: int | None) -> int:
    """The number of few-shot examples task `name` uses for a --num-fewshot value (None = its default)."""
    spec = TASKS[name]
    if spec.max_fewshot == 0:
        return 0
    k = spec.default_fewshot if num_fewshot is None else num_fewshot
    return min(k, spec.max_fewshot)
