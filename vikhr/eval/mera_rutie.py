"""MERA ruTiE (Turing-test Interview Emulation): a long dialogue of two-choice questions.

Each question is asked with the dialogue so far in its prompt — the earlier questions, their
options and the model's *own* earlier answers — so the questions must be asked one after another
by `question_id`; lm-eval's evaluator builds every request up front and cannot do that. This module
is the release's loop (`evaluate_rutie` and `tasks/rutie.py` of ai-forever/MERA's lm-evaluation-harness):

* question 0: its instruction formatted with `context` = "", blank lines collapsed, then "\\nОтвет:";
* question k > 0: the dialogue's first instruction formatted with the question's inputs and
  `context` = the earlier questions, each "{question}\\n1. {choice1}\\n2. {choice2}\\nОтвет: {answer}"
  (the model's answer, 1 or 2), joined by newlines; then "\\nОтвет:";
* the answer is the more likely of " 1" and " 2"; accuracy over the dialogue.

A file may hold several dialogues (`meta.dialog_id`); each starts with an empty context. The
submission file `ruTiE.json` lists the dialogues, each a list of
{"outputs": "1"|"2", "meta": {"dialog_id", "question_id"}}.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError
from vikhr.eval.tasks import MeraRecord, most_likely, read_numbered_records, record_location

RUTIE = "mera_rutie"
CHOICES = ("1", "2")


def read_dialogues(path: Path, limit: int | None = None) -> list[list[MeraRecord]]:
    """The dialogues of a ruTiE file, each in `question_id` order, every question with its
    `record_location`; with `limit`, the first `limit` questions in (dialog_id, question_id) order."""
    dialogues: dict[int, list[MeraRecord]] = defaultdict(list)
    keys = ("instruction", "inputs", "outputs", "meta")
    for line, r in read_numbered_records(path, keys, layout="MERA ruTiE"):
        inputs, meta = r["inputs"], r["meta"]
        ids = (
            [(f"meta.{k}", meta.get(k)) for k in ("dialog_id", "question_id")]
            if isinstance(meta, dict)
            else []
        )
        where = record_location(path, line, *ids)
        if (
            not isinstance(inputs, dict)
            or not all(isinstance(inputs.get(k), str) for k in ("question", "choice1", "choice2"))
            or not isinstance(meta, dict)
            or not all(isinstance(meta.get(k), int) for k in ("dialog_id", "question_id"))
        ):
            raise VikhrError(
                f"{where}: the record lacks inputs.question/choice1/choice2 or integer "
                "meta.dialog_id/question_id (MERA ruTiE layout)"
            )
        if isinstance(r["outputs"], int) and not isinstance(r["outputs"], bool):
            r["outputs"] = str(r["outputs"])  # as every MERA reader: numeric answers may be numbers
        if r["outputs"] not in ("", *CHOICES):
            raise VikhrError(f"{where}: outputs {r['outputs']!r} is not 1, 2 or empty (MERA ruTiE layout)")
        dialogues[meta["dialog_id"]].append(MeraRecord(where, r))
    out = []
    for dialog_id in sorted(dialogues):
        questions = sorted(dialogues[dialog_id], key=lambda q: q.record["meta"]["question_id"])
        _require_numbered_in_order(dialog_id, questions)
        out.append(questions)
    if limit is not None:
        kept, left = [], limit
        for questions in out:
            if left <= 0:
                break
            kept.append(questions[:left])
            left -= len(kept[-1])
        out = kept
    return out


def _require_numbered_in_order(dialog_id: int, questions: list[MeraRecord]) -> None:
    """The questions of a dialogue (sorted by `question_id`) are numbered 0, 1, 2, ...: a question
    is asked after those before it, with their answers in its prompt."""
    for position, question in enumerate(questions):
        question_id = question.record["meta"]["question_id"]
        if question_id == position:
            continue
        layout = "a dialogue numbers its questions 0, 1, 2, ... without gaps (MERA ruTiE layout)"
        if question_id < position:  # sorted: it repeats the one before it
            raise VikhrError(
                f"{question.where}: dialog {dialog_id} has question {question_id} twice (first at "
                f"{questions[position - 1].where}); {layout}"
            )
        raise VikhrError(
            f"{question.where}: dialog {dialog_id} has no question {position} before this one; {layout}"
        )


def _format(template: str, fields: dict[str, str], where: str, template_of: str) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise VikhrError(
            f"{where}: {template_of} needs input {e} that the record's inputs lack (MERA ruTiE layout)"
        ) from e


def rutie_prompt(dialogue: list[MeraRecord], position: int, answers: list[str]) -> str:
    """The prompt of question `position` of `dialogue`, after the model answered `answers` to the
    questions before it."""
    doc = dialogue[position]
    inputs = doc.record["inputs"]
    if position == 0:
        text = _format(doc.record["instruction"], {**inputs, "context": ""}, doc.where, "the instruction")
        return text.replace("\n\n", "\n") + "\nОтвет:"
    context = "\n".join(
        f"{q['inputs']['question']}\n1. {q['inputs']['choice1']}\n2. {q['inputs']['choice2']}\nОтвет: {a}"
        for q, a in zip((q.record for q in dialogue[:position]), answers, strict=True)
    )
    # Every question is asked with the dialogue's first instruction, as the release does.
    first = dialogue[0]
    template_of = f"the dialogue's instruction (of {first.where})"
    return _format(first.record["instruction"], {**inputs, "context": context}, doc.where, template_of) + (
        "\nОтвет:"
    )


def evaluate_rutie(
    lm: Any,
    dialogues: list[list[MeraRecord]],
    chat: bool = False,
    system_instruction: str | None = None,
) -> dict[str, Any]:
    """Ask every question of `dialogues` (`read_dialogues` of a file) in order; `chat`: each prompt a
    user turn of the model's chat template (after `system_instruction`), the answer scored as the
    assistant's, as lm-eval does for its tasks. lm-eval-shaped results: {"results": {"acc,none",
    "acc_stderr,none"}, "n": questions, "requests": loglikelihoods, "samples": [...]}.
    Accuracy is n/a (NaN) when any answer is hidden (the public test split)."""
    from lm_eval.api.instance import Instance

    from vikhr.progress_bar import progress_bar

    samples: list[dict[str, Any]] = []
    with progress_bar(total=sum(map(len, dialogues)), desc="mera_rutie (one question at a time)") as bar:
        for dialogue in dialogues:
            answers: list[str] = []
            for position, question in enumerate(dialogue):
                prompt = rutie_prompt(dialogue, position, answers)
                doc = question.record
                delimiter = " "
                if chat:  # lm-eval's multiple choice in a chat: the answer opens the assistant turn
                    system = [{"role": "system", "content": system_instruction}] if system_instruction else []
                    prompt = lm.apply_chat_template([*system, {"role": "user", "content": prompt}])
                    delimiter = ""
                requests = [
                    Instance("loglikelihood", doc, (prompt, delimiter + c), i, (RUTIE, len(samples), 1))
                    for i, c in enumerate(CHOICES)
                ]
                resps = lm.loglikelihood(requests, disable_tqdm=True)
                pred = CHOICES[most_likely(resps)]
                answers.append(pred)
                samples.append(
                    {
                        "doc_id": len(samples),
                        "doc": {"meta": doc["meta"], "outputs": doc["outputs"]},
                        "prompt": prompt,
                        "resps": [list(r) for r in resps],
                        "pred": pred,
                        "acc": math.nan if not doc["outputs"] else float(pred == doc["outputs"]),
                    }
                )
                bar.update(1)
    accs = [s["acc"] for s in samples]
    if any(math.isnan(a) for a in accs):
        acc = stderr = math.nan
    else:
        acc = sum(accs) / len(accs)
        n = len(accs)
        stderr = math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else math.nan
    return {
        "results": {"acc,none": acc, "acc_stderr,none": stderr},
        "n": len(samples),
        "requests": len(samples) * len(CHOICES),
        "samples": samples,
    }


def rutie_submission(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """ruTiE.json of MERA's submission archive: the dialogues, each the list of its answers."""
    dialogues: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        meta = s["doc"]["meta"]
        dialogues[meta["dialog_id"]].append(
            {
                "outputs": s["pred"],
                "meta": {"dialog_id": meta["dialog_id"], "question_id": meta["question_id"]},
            }
        )
    return {"data": {"test": [dialogues[d] for d in sorted(dialogues)]}}
