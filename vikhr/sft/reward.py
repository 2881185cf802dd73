"""Reward-model scores of chats, kept beside the data so that filtering never scores twice.

The model is an HF sequence classifier with one output (``AutoModelForSequenceClassification``,
``num_labels=1``, safetensors weights). A chat is rendered with its tokenizer's chat template when it
has one (``apply_chat_template(messages, tokenize=False)``), else as "User: …\\n\\nAssistant: …"
turns; a chat with function calls is given as plain turns (`vikhr.sft.template.plain_turns`: each
answer followed by its calls, tool results as user turns, as ``chatml`` writes them; the functions
offered are left out). Padding is on the right and the model reads its score at the last real
token, so a chat's score depends on the batch it is in only through rounding (a tokenizer without a
pad, EOS or UNK token scores one chat at a time). A chat longer than the max length (capped at the
model's context) is scored on its last tokens, which hold the answer.

Scores file: plain JSONL (a compressed name is refused), one ``{"key", "id", "score", "scorer"}`` a
line, appended and flushed after every batch. `key` is a hash of the chat's messages, so the scores
follow the text, not its line number; a run that was stopped resumes with the chats whose key is not
in the file (a last line cut short by the stop is removed, once the lines before it read as
scores). `scorer` identifies the reward model (its config, tokenizer and samples of its weights)
and the max length: a file written by another is refused, not resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError, overlap, read_json_object, require_dir, require_output_file
from vikhr.jsonl import drop_partial_last_line, read_jsonl
from vikhr.locks import exclusive
from vikhr.runtime.device import torch_device
from vikhr.sft.encoded import ChatMessages
from vikhr.sft.own_template import FIXED_DATE
from vikhr.sft.sources import refuse_a_collection_file
from vikhr.sft.template import TRIMMED_UNANSWERED, parse_chat, plain_turns
from vikhr.tokenizer.load import transformers_overrides

ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def chat_key(messages: list[dict[str, str]]) -> str:
    """A hash of the roles and contents of a chat (the scores file's key)."""
    text = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# Suffixes of compressed files: a scores file is appended to line by line, so it is plain JSONL.
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd", ".bz2", ".xz", ".lz4", ".zip", ".7z")
# How every line `score_file` writes begins (json.dumps of a dict whose first key is "key").
_SCORE_LINE_START = b'{"key": '


def check_scores_path(scores_path: str | Path, chats_path: str | Path | None = None) -> Path:
    """`scores_path` as a scores file to append to: plain JSONL, not a directory, not the chats file
    it scores (checked before anything is read or written)."""
    p = require_output_file(scores_path, "scores file")
    suffix = p.suffix.lower()
    if suffix in COMPRESSED_SUFFIXES:
        raise VikhrError(
            f"scores file {p}: scores are appended as plain JSONL, not {suffix}-compressed (give a name "
            f"without {p.suffix}, e.g. {p.with_suffix('')})"
        )
    if chats_path is not None and overlap(p, Path(chats_path)):
        raise VikhrError(
            f"scores file {p} is the chats file {chats_path}: scores would be appended to the chats "
            "(give a scores file of its own)"
        )
    return p


def load_scores(path: str | Path, scorer: str | None = None) -> dict[str, float]:
    """key → score of a scores file; a last line without its newline (a stopped run) is cut off,
    once the complete lines were read as scores (a file that is not one is refused unchanged).
    With `scorer`, every line must come from that scorer (see `reward_scorer`)."""
    p = Path(path)
    if not p.exists():
        return {}
    scores = {}
    for line_no, record in read_jsonl(p, allow_nan=True, complete_only=True):  # written by json.dumps
        key, score = record.get("key"), record.get("score")
        if not isinstance(key, str) or not isinstance(score, (int, float)):
            raise VikhrError(f"{p}:{line_no}: expected {{'key': str, 'score': number}} (a vikhr scores file)")
        if scorer is not None and record.get("scorer") != scorer:
            raise VikhrError(
                f"{p}:{line_no}: a score of another reward model or max length (scorer "
                f"{record.get('scorer')}, this run's {scorer}): give another scores file, or remove this "
                "one to score again"
            )
        scores[key] = float(score)
    tail = _partial_last_line(p)
    if tail and not (_SCORE_LINE_START.startswith(tail) or tail.startswith(_SCORE_LINE_START)):
        raise VikhrError(
            f"{p}: its last line, without a newline, is not the start of a score (a vikhr scores file): "
            "give another scores file"
        )
    if tail:
        drop_partial_last_line(p)
    return scores


def _partial_last_line(path: Path) -> bytes:
    """The bytes after the last newline of `path` (empty when it ends with one)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return b""
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return b""
        f.seek(0)
        data = f.read()
    return data[data.rfind(b"\n") + 1 :]


def _check_reward_model_dir(model_dir: str | Path) -> Path:
    """An HF sequence-classification model with one output, complete safetensors weights and a
    tokenizer: checked from its files, before transformers loads (and reports on) anything."""
    from vikhr.adapt.safetensors_io import checkpoint_headers

    path = require_dir(model_dir, "reward model directory")
    if not (path / "config.json").is_file():
        raise VikhrError(f"{path} has no config.json (give an HF reward model directory)")
    config = read_json_object(path / "config.json")
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise VikhrError(
            f"{path}: config.json's architectures {architectures} are not a reward model's "
            "(an HF *ForSequenceClassification model with num_labels=1)"
        )
    labels = (
        len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels", 2)
    )
    if labels != 1:
        raise VikhrError(f"{path}: a reward model has one output (num_labels=1), this one has {labels}")
    checkpoint_headers(path)  # every shard present and readable; pickled weights refused, never loaded
    return path


def _model_context(config: dict[str, Any]) -> int | None:
    """The positions a model takes, from its config.json (None: it does not say)."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _sample_digest(path: Path, hasher: Any, chunk: int = 1 << 16) -> None:
    """Feed `hasher` a file's size and three `chunk`-byte samples (start, middle, end): two
    fine-tunes of one model share configs and shapes, not weights."""
    size = path.stat().st_size
    hasher.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(size // 2 - chunk // 2, 0), max(size - chunk, 0)}):
            f.seek(offset)
            hasher.update(f.read(chunk))


@dataclass(frozen=True)
class RewardScorer:
    """A checked reward model directory, the max length it scores with, and their identity."""

    path: Path
    max_length: int
    scorer: str
    note: str | None  # the max length was lowered to the model's context


# The files that decide a chat's score besides the weights: the config, the tokenizer and the chat
# template chats are rendered with (transformers saves it apart, in chat_template.jinja). A file
# absent leaves the id what it was without it.
SCORER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "chat_template.jinja",
)


def reward_scorer(model_dir: str | Path, max_length: int = 2048) -> RewardScorer:
    """The reward model `model_dir` checked from its files (nothing loaded), `max_length` capped
    at its context, and the id its scores are written with."""
    if max_length < 1:
        raise VikhrError(f"max length (tokens per chat) must be >= 1, got {max_length}")
    path = _check_reward_model_dir(model_dir)
    context, note = _model_context(read_json_object(path / "config.json")), None
    if context is not None and context < max_length:
        note = f"the reward model takes {context} positions: chats are scored on their last {context} tokens"
        max_length = context
    hasher = hashlib.blake2b(f"max_length={max_length}".encode(), digest_size=8)
    for name in SCORER_FILES:
        if (path / name).is_file():
            hasher.update(name.encode() + (path / name).read_bytes())
    for weights in sorted(path.glob("*.safetensors")):
        _sample_digest(weights, hasher)
    return RewardScorer(path, max_length, hasher.hexdigest(), note)


# A chat far longer than the max length is tokenized from its last max_length × this characters
# (more than a token holds, bar long runs of white space), when those give max_length + the spare.
TAIL_CHARS_PER_TOKEN = 16
TAIL_SPARE_TOKENS = 64
_PROBE = "User: a"  # a text to find where a tokenizer puts its special tokens


class RewardModel:
    """An HF reward model (one output) and its tokenizer, scoring batches of chats."""

    def __init__(self, scorer: RewardScorer, device: str = "auto") -> None:
        """`scorer`: the model directory and max length `reward_scorer` checked."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = scorer.path
        device = torch_device(device, "device")
        self.device, self.max_length = torch.device(device), scorer.max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, **transformers_overrides(path))
        except (OSError, ValueError) as e:
            raise VikhrError(
                f"{path}: its tokenizer does not load ({' '.join(str(e).split())[:200]}); a reward model "
                "directory holds the tokenizer it was trained with"
            ) from None
        if self.tokenizer.pad_token_id is None and (self.tokenizer.eos_token or self.tokenizer.unk_token):
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.cut = 0  # chats scored on their last max_length tokens
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, dtype=dtype
        )
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.added_around = _added_around(self.tokenizer)  # BOS/EOS a chat cut to its end keeps
        self.model.to(self.device).eval()

    def render(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer.chat_template:
            try:
                # date_string: a template writing today's date scores alike on any day
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, date_string=FIXED_DATE)
                return str(text)
            except Exception as e:  # jinja2's errors, e.g. a template that refuses system messages
                raise VikhrError(
                    f"the reward model's chat template fails on a chat with roles "
                    f"{[m['role'] for m in messages]}: {e}".replace("\n", " ")
                ) from None
        return "\n\n".join(f"{ROLE_LABELS[m['role']]}: {m['content']}" for m in messages)

    def score(self, chats: list[list[dict[str, str]]]) -> list[float]:
        special = not self.tokenizer.chat_template
        ids = self._token_ids([self.render(c) for c in chats], special)
        self.cut += sum(len(i) > self.max_length for i in ids)
        ids = [self._last_tokens(i, special) for i in ids]
        if self.tokenizer.pad_token_id is None:  # nothing to pad with: one chat at a time
            return [self._score_batch([i])[0] for i in ids]
        return self._score_batch(ids)

    def _token_ids(self, texts: list[str], special: bool) -> list[list[int]]:
        """Each text's ids, whole (they give its length, and then the model its input: each text is
        tokenized once). A text of more than max_length × TAIL_CHARS_PER_TOKEN characters is cut to
        that many last ones when they still hold well over max_length tokens: only the last
        max_length are kept, far from the cut (a 10 MB chat tokenized whole took 30 s and GBs);
        else the whole text is taken."""
        keep = self.max_length * TAIL_CHARS_PER_TOKEN
        tails = [text[-keep:] if len(text) > keep else text for text in texts]
        ids = list(self.tokenizer(tails, add_special_tokens=special)["input_ids"])
        for i, text in enumerate(texts):
            if len(text) > keep and len(ids[i]) < self.max_length + TAIL_SPARE_TOKENS:
                ids[i] = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return ids

    def _last_tokens(self, ids: list[int], special: bool) -> list[int]:
        """A chat's last max_length ids, those the tokenizer adds around a text (BOS, an EOS) kept:
        what its own truncation on the left gives."""
        if len(ids) <= self.max_length:
            return ids
        before, after = self.added_around if special else (0, 0)
        end = len(ids) - after
        start = max(before, end - (self.max_length - before - after))
        return ids[:before] + ids[start:]

    def _score_batch(self, ids: list[list[int]]) -> list[float]:
        """The scores of chats given by their ids, padded on the right as the tokenizer pads."""
        import torch

        pad_id = self.tokenizer.pad_token_id  # None only for a batch of one: no padding
        input_ids = torch.full((len(ids), max(map(len, ids))), pad_id or 0, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).logits
        return [float(x) for x in logits[:, 0].float().cpu()]


def _added_around(tokenizer: Any) -> tuple[int, int]:
    """How many ids `tokenizer` adds before and after a text's own with its special tokens."""
    own = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(_PROBE, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(own) + 1):
        if full[start : start + len(own)] == own:
            return start, len(full) - len(own) - start
    return len(full) - len(own), 0  # the text's ids changed by the specials (none known does this)


def scored_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The messages a reward model scores of a chats-file record, and whose `chat_key` its score is
    kept under: plain turns (see `vikhr.sft.template.plain_turns`), a chat's function calls written
    into them. VikhrError where `vikhr sft prepare` would refuse the chat."""
    return _plain_messages(parse_chat(record))


def _plain_messages(chat: ChatMessages) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in plain_turns(chat)]


def _chats(path: str | Path) -> Iterator[tuple[str, list[dict[str, str]], bool]]:
    """(id, messages, trimmed) of a chats JSONL file (ids: the "id" field, else file:line; trimmed:
    the chat's user turns after its last answer were left out, as `vikhr sft prepare` leaves them)."""
    for line_no, record in read_jsonl(path):
        try:
            chat = parse_chat(record)
        except VikhrError as e:
            raise VikhrError(f"{path}:{line_no}: {e}") from e
        chat_id = record.get("id")
        place = str(chat_id) if chat_id is not None else f"{Path(path).name}:{line_no}"
        yield place, _plain_messages(chat), chat.trimmed > 0


@dataclass(frozen=True)
class ScoreRun:
    """What `score_file` did."""

    chats: int  # chats of the input, one a line
    trimmed_unanswered: int  # of them, those whose user turns after the last answer were left out
    distinct: int  # of them with different turns (a chat repeated is scored once)
    scored: int  # distinct chats scored now
    before: int  # distinct chats whose score the file held already
    cut: int  # chats scored on their last max-length tokens
    note: str | None  # the max length was lowered to the model's context
    # min, 25%, median, 75%, max of the input's chats' scores (None: no chat)
    spread: tuple[float, float, float, float, float] | None

    def line(self) -> str:
        """What the run did, counting the input's lines and its distinct chats, and how the scores
        of its chats spread (min, quartiles, max): where a reward cut would fall."""
        notes = [f"{self.distinct:,} distinct"] if self.distinct != self.chats else []
        if self.trimmed_unanswered:
            notes.append(f"{self.trimmed_unanswered:,} {TRIMMED_UNANSWERED}")
        chats = f"{self.chats:,} chats" + (f" ({'; '.join(notes)})" if notes else "")
        details = [f"{self.scored:,} scored now"] + (
            [f"{self.before:,} already in the file"] if self.before else []
        )
        if self.cut:
            details.append(f"{self.cut:,} longer than the max length, scored on their last tokens")
        said = f"{chats}: {'; '.join(details)}"
        if self.spread is not None:
            low, q1, median, q3, high = self.spread
            said += f"; scores min {low:.4g}, 25% {q1:.4g}, median {median:.4g}, 75% {q3:.4g}, max {high:.4g}"
        return said


def score_file(
    chats_path: str | Path,
    model_dir: str | Path,
    scores_path: str | Path,
    batch_size: int = 16,
    device: str = "auto",
    max_length: int = 2048,
    progress: bool = True,
) -> ScoreRun:
    """Score every chat of `chats_path` not yet in `scores_path`, appending to it (one run at a time:
    two would score the same chats and could interleave their lines)."""
    if batch_size < 1:
        raise VikhrError(f"batch size must be >= 1, got {batch_size}")
    check_scores_path(scores_path, chats_path)
    refuse_a_collection_file(chats_path, "sft score")
    Path(scores_path).parent.mkdir(parents=True, exist_ok=True)
    busy = (
        f"{scores_path} is being written by another sft score run ({{holder}}); wait for it to end "
        "(a rerun then scores only what it left)"
    )
    with exclusive(Path(f"{scores_path}.lock"), busy, remove=True):
        return _score_file(chats_path, model_dir, scores_path, batch_size, device, max_length, progress)


def _score_file(
    chats_path: str | Path,
    model_dir: str | Path,
    scores_path: str | Path,
    batch_size: int,
    device: str,
    max_length: int,
    progress: bool,
) -> ScoreRun:
    scorer = reward_scorer(model_dir, max_length)
    done = load_scores(scores_path, scorer.scorer)
    keys, trimmed = [], 0
    for _, messages, was_trimmed in _chats(chats_path):
        keys.append(chat_key(messages))
        trimmed += was_trimmed
    distinct = list(dict.fromkeys(keys))  # first occurrences, in order
    before = sum(1 for k in distinct if k in done)
    todo_total = len(distinct) - before

    def run(scored: int, cut: int) -> ScoreRun:
        import numpy as np

        scores = np.fromiter((done[k] for k in distinct), dtype=np.float64, count=len(distinct))
        spread = tuple(np.quantile(scores, [0, 0.25, 0.5, 0.75, 1]).tolist()) if len(scores) else None
        return ScoreRun(len(keys), trimmed, len(distinct), scored, before, cut, scorer.note, spread)

    if todo_total == 0:
        return run(0, 0)
    from vikhr.progress_bar import progress_bar, transformers_bars

    with transformers_bars(progress):
        model = RewardModel(scorer, device)
    bar = progress_bar(desc="reward scores", unit=" chats", total=todo_total, show=progress)
    scored = 0
    pending: list[tuple[str, str, list[dict[str, str]]]] = []
    with open(scores_path, "a", encoding="utf-8") as out:

        def flush() -> None:
            nonlocal scored
            values = model.score([m for _, _, m in pending])
            done.update((k, v) for (k, _, _), v in zip(pending, values, strict=True))
            out.writelines(
                json.dumps({"key": k, "id": i, "score": s, "scorer": scorer.scorer}, ensure_ascii=False)
                + "\n"
                for (k, i, _), s in zip(pending, values, strict=True)
            )
            out.flush()  # a stopped run keeps every finished batch
            scored += len(pending)
            bar.update(len(pending))
            pending.clear()

        for chat_id, messages, _ in _chats(chats_path):
            key = chat_key(messages)
            if key in done:
                continue
            done[key] = float("nan")  # a chat that occurs twice is scored once
            pending.append((key, chat_id, messages))
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
        os.fsync(out.fileno())
    bar.close()
    return run(scored, model.cut)


def keep_mask(scores: Any, threshold: float | None, top_fraction: float | None) -> tuple[Any, float]:
    """Which of `scores` (one source's, in file order) to keep, and the cut score.

    `threshold`: scores >= it. `top_fraction`: the round(fraction·n) highest (ties: the earlier chat).
    """
    import numpy as np

    values = np.asarray(scores, dtype=np.float64)
    if threshold is not None:
        return values >= threshold, float(threshold)
    if top_fraction is None:
        return np.ones(len(values), dtype=bool), float("-inf")
    k = round(top_fraction * len(values))
    order = np.lexsort((np.arange(len(values)), -values))
    keep = np.zeros(len(values), dtype=bool)
    keep[order[:k]] = True
    cut = float(values[order[k - 1]]) if k else float("inf")
    return keep, cut


def scores_figure(per_source: dict[str, Any], cuts: dict[str, float], title: str = "reward scores") -> Any:
    """The figure of `plot_scores`: a histogram of each source's scores with its cut drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(per_source)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * len(names) + 0.6), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        values = per_source[name]
        ax.hist(values, bins=40, color="#4c72b0")
        # Counts of chats: whole numbers from 0 (a small source read 0.25 of a chat, an empty one -0.05).
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, max(ax.get_ylim()[1], 1))
        ax.set_ylabel("chats")
        cut = cuts.get(name)
        if cut is not None and abs(cut) != float("inf"):
            ax.axvline(cut, color="#c44e52", linestyle="--", label=f"cut {cut:.3g}")
            ax.legend(loc="best", fontsize=8)  # where it covers the fewest bars
        ax.set_title(f"{name} ({len(values):,} chat{'' if len(values) == 1 else 's'})", fontsize=9)
    axes[-1, 0].set_xlabel("score")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_scores(
    per_source: dict[str, Any], cuts: dict[str, float], path: str | Path, title: str = "reward scores"
) -> None:
    """`scores_figure` as a PNG."""
    import matplotlib.pyplot as plt

    from vikhr.atomic import temporary_path

    fig = scores_figure(per_source, cuts, title)
    try:
        with temporary_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
