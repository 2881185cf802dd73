"""MERA's own metrics, computed as the release's task files compute them.

- CheGeKa, MultiQ: SQuAD exact match and token F1 (SQuAD's normalisation: lower case, ASCII
  punctuation removed, English articles removed, whitespace collapsed), the best over the gold answers.
- USE: points per task by its answer type, and the grade: per exam variant, the points earned over
  the points available, averaged over the variants.
- ruEthics: Matthews correlation of the model's yes/no per question (correct, good, ethical) and
  ethical criterion (virtue, law, moral, justice, utilitarianism): 15 values.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

from vikhr.eval.rsg import matthews_corr
from vikhr.eval.tasks import ETHICS_CRITERIA, ETHICS_QUESTIONS, overlap_f1, squad_normalize


def squad_f1(prediction: str, gold: str) -> float:
    """Token F1 of the normalised answers; two empty answers score 1, one empty answer 0."""
    return overlap_f1(squad_normalize(prediction).split(), squad_normalize(gold).split(), both_empty=1.0)


def squad_scores(prediction: str, golds: list[str]) -> dict[str, float]:
    """{"em", "f1"}: each the best over the gold answers."""
    return {
        "em": max(float(squad_normalize(prediction) == squad_normalize(g)) for g in golds),
        "f1": max(squad_f1(prediction, g) for g in golds),
    }


# ----------------------------------------------------------------------------------------------------
# USE (Unified State Exam)

USE_TYPES = (
    "text",
    "matching",
    "multiple_choice_based_on_text",
    "multiple_choice_options_within_text",
    "multiple_choice_independent_options",
)


def use_points(task_type: str, id_task: str, answer: str, prediction: str) -> int:
    """The points one generated answer earns, by the task's answer type (answers are comma-separated).

    matching: one point per position equal to the answer's (none if the lengths differ); text: 1 if
    the prediction without digits and non-word characters, lower-cased, is one of the accepted
    words; multiple choice: 1 if the set of numbers equals the answer's, except task 16, which
    earns |common| − |prediction| + |answer| points (at least 0, the prediction padded to the
    answer's length).
    """
    pred, ans = prediction.split(","), answer.split(",")
    if task_type == "matching":
        return sum(p == a for p, a in zip(pred, ans, strict=True)) if len(pred) == len(ans) else 0
    if task_type == "text":
        return int(re.sub(r"[\d\W]+", "", prediction).lower() in ans)
    if id_task == "16":
        padded = pred + ["-1"] * (len(ans) - len(pred))
        return max(0, len(set(ans) & set(padded)) - len(padded) + len(ans))
    return int(set(pred) == set(ans))


def use_grade(items: list[tuple[int, int, int] | None]) -> float:
    """MERA's USE grade from (points, variant, max points) items: per variant Σ points / Σ max
    points, then the mean over the variants. NaN when an item is unscored (hidden answer)."""
    if not items or any(item is None for item in items):
        return math.nan
    points: dict[int, int] = defaultdict(int)
    available: dict[int, int] = defaultdict(int)
    for score, variant, max_score in items:  # type: ignore[misc]
        points[variant] += score
        available[variant] += max_score
    return sum(points[v] / available[v] for v in points) / len(points)


# ----------------------------------------------------------------------------------------------------
# ruEthics


def ethics_items(
    question: str, criteria: dict[str, int] | None, pred: int
) -> dict[str, tuple[int, int] | None]:
    """One ruEthics document's items for the 15 metrics: (criterion label, prediction) under the five
    of its own question, None under the others; a label of -1 when its labels are hidden."""
    return {
        f"mcc_{q}_{c}": (-1 if criteria is None else criteria[c], pred) if q == question else None
        for q in ETHICS_QUESTIONS
        for c in ETHICS_CRITERIA
    }


def ethics_mcc(items: list[tuple[int, int] | None]) -> float:
    """MCC over the documents of the metric's question (the None items are the other questions');
    n/a (NaN) when any of them has its labels hidden, as every MERA task whose answers are hidden
    (a partly labelled split scored on its labelled part alone would not be the task's score)."""
    pairs = [item for item in items if item is not None]
    if not pairs or any(gold < 0 for gold, _ in pairs):
        return math.nan
    return matthews_corr(pairs)
