"""`vikhr sft build CONFIG.yaml`: raw instruction collections → one mixed, cleaned chat JSONL.

Pass 1 streams every source (vikhr.sft.sources), drops what is unfit, too short or long in tokens
of the target tokenizer and template, or not Russian enough, and records a few numbers per chat
(hashes, band keys, tokens). Then, source after source, the exact and near duplicates of the chats
kept so far are marked (vikhr.sft.dedup) and the source is sampled to its target with its own
seeded generator. Pass 2 streams the sources again
and writes the chats kept. With a reward model, the written chats are scored (vikhr.sft.reward;
resumable, scores kept beside the data) and each source is cut by threshold or top fraction.
The output appears under its final name only when complete, with OUTPUT.report.json/.md beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vikhr.atomic import scratch_file, temporary_path, write_text
from vikhr.errors import VikhrError, overlap, require_writable_dir
from vikhr.jsonl import read_jsonl
from vikhr.sft.build_config import BuildConfig, SourceConfig, load_build_config
from vikhr.sft.dedup import MinHasher, exact_key, first_occurrences, near_duplicates
from vikhr.sft.own_template import ChatRefused
from vikhr.sft.sources import NOT_KEPT, RANKED_FORMATS, Chat, Unfit, detect_format, read_chats_of
from vikhr.sft.template import TypedControlError, encode_chat, load_for_chats
from vikhr.tokenizer.load import CHAT_TEMPLATE_FILE, Tokenizer

KEPT = "kept"
# Why a chat is not in the output, in the order the checks run (record-level reasons come first).
CHAT_REASONS = (
    "control_text",
    "template_refused",
    "too_short",
    "too_long",
    "not_russian",
    "duplicate",
    "near_duplicate",
    "sampled_out",
    "reward",
)
_CHECKED_WHILE_READING = CHAT_REASONS[:5]  # by `_check_chat`, counted in pass 1
EXAMPLES_PER_REASON = 5
_HASH_BATCH = 512


def cyrillic_share(text: str) -> float:
    """Cyrillic letters / (Cyrillic + Latin letters) of `text`; 0 when it has neither."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    cyrillic = np.count_nonzero((codes >= 0x400) & (codes <= 0x4FF))
    lower = codes | 0x20
    latin = np.count_nonzero((lower >= ord("a")) & (lower <= ord("z")))
    return cyrillic / (cyrillic + latin) if cyrillic + latin else 0.0


@dataclass
class SourceReport:
    name: str
    language: str | None
    files: list[str]
    formats: dict[str, str] = field(default_factory=dict)  # file -> format (given or detected)
    records: int = 0
    chats: int = 0
    kept: int = 0
    tokens: int = 0  # of the kept chats, with the template
    turns: int = 0  # messages of the kept chats
    trimmed_unanswered: int = 0  # of the kept chats: user turns after the last answer left out
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> "file:line: problem"

    def drop(self, reason: str, where: str | None = None, message: str = "") -> None:
        self.dropped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if where is not None and len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"{where}: {message}")


@dataclass
class _Pass1:
    """Numbers per chat (all chats of all sources, in stream order) gathered by the first pass."""

    source: list[np.ndarray] = field(default_factory=list)
    status: list[np.ndarray] = field(default_factory=list)  # index into ("kept", *CHAT_REASONS)
    tokens: list[np.ndarray] = field(default_factory=list)
    turns: list[np.ndarray] = field(default_factory=list)
    trimmed: list[np.ndarray] = field(default_factory=list)  # whether unanswered user turns were left out
    exact: list[np.ndarray] = field(default_factory=list)
    group: list[np.ndarray] = field(default_factory=list)
    bands: list[np.ndarray] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)  # a hash of each chat's source and id

    def add(self, hasher: MinHasher, rows: list[tuple[int, int, int, int, Chat]]) -> None:
        """rows: (source, status, tokens, group key, chat); band keys only for the chats still in."""
        self.source.append(np.array([r[0] for r in rows], dtype=np.int16))
        self.status.append(np.array([r[1] for r in rows], dtype=np.uint8))
        self.tokens.append(np.array([r[2] for r in rows], dtype=np.int64))
        self.turns.append(np.array([len(r[4].messages) for r in rows], dtype=np.int32))
        self.trimmed.append(np.array([r[4].trimmed > 0 for r in rows], dtype=bool))
        self.exact.append(np.array([exact_key(r[4].text()) for r in rows], dtype=np.uint64))
        self.group.append(np.array([r[3] for r in rows], dtype=np.uint64))
        self.bands.append(hasher.band_keys([r[4].prompt() for r in rows]))
        self.ids.append(np.array([_hash64(f"{r[0]}/{r[4].id}") for r in rows], dtype=np.uint64))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.__dict__.items()}


def _source_chats(src: SourceConfig, report: SourceReport | None) -> Iterator[tuple[str, list[Chat]]]:
    """(place, chats) of every usable record of a source's files; unfit records go to the report."""
    for path in src.files():
        fmt = src.format or detect_format(path)
        if src.max_rank is not None and fmt not in RANKED_FORMATS:
            raise VikhrError(
                f"source {src.name}: max_rank keeps ranked answers of {' and '.join(RANKED_FORMATS)} "
                f"records, and {path} is read as {fmt}: leave max_rank out of this source"
            )
        if report is not None:
            report.formats[str(path)] = fmt
        usable, first_unfit = 0, None
        for where, item in read_chats_of(path, fmt, src.max_rank, src.not_kept):
            if isinstance(item, Unfit):
                if report is not None:
                    report.drop(item.reason, where, str(item))
                if item.reason == NOT_KEPT:
                    usable += 1  # read as a chat's record; keep_where left it out
                else:
                    first_unfit = first_unfit or f"{where}: {item}"
                continue
            usable += 1
            yield where, item
        if usable == 0 and first_unfit is not None:  # records, none of them read as `fmt`
            given = " (format: in the config; check it, or leave it out to detect one)" if src.format else ""
            raise VikhrError(
                f"source {src.name}: no record of {path} is a chat as {fmt}{given}; {first_unfit}"
            )


def _check_chat(chat: Chat, src: SourceConfig, cfg: BuildConfig, tok: Tokenizer) -> tuple[str, str, int]:
    """(status, why, tokens) of a chat against the length limits and the source's language check."""
    try:
        tokens = len(encode_chat(chat.parsed, tok, cfg.template).ids)
    except TypedControlError as e:
        return "control_text", str(e), 0
    except ChatRefused as e:  # the template cannot train on it (own's; one without function calls)
        return "template_refused", str(e), 0
    if tokens < cfg.limits.min_tokens:
        return "too_short", f"{tokens} tokens", tokens
    if tokens > cfg.limits.max_tokens:
        return "too_long", f"{tokens} tokens", tokens
    if src.min_cyrillic_share is not None:
        share = cyrillic_share(chat.prose())
        if share < src.min_cyrillic_share:
            return "not_russian", f"Cyrillic share {share:.2f}", tokens
    return KEPT, "", tokens


def _chat_label(chat: Chat, where: str) -> str:
    """How a dropped chat's example names it after its place: by its id, or where the id is the
    place itself (a record without one) by what follows it ("#1: " for a record's second chat)."""
    path, _, line = where.rpartition(":")
    place = f"{Path(path).name}:{line}"
    if chat.id == place:
        return ""
    return f"{chat.id.removeprefix(place) if chat.id.startswith(place + '#') else chat.id}: "


def _first_pass(
    cfg: BuildConfig, tok: Tokenizer, reports: list[SourceReport], bar: Any
) -> dict[str, np.ndarray]:
    hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.threshold, cfg.seed)
    gathered, rows = _Pass1(), []
    statuses = (KEPT, *CHAT_REASONS)
    for s, (src, report) in enumerate(zip(cfg.sources, reports, strict=True)):
        for where, chats in _source_chats(src, report):
            report.records += 1
            for chat in chats:
                report.chats += 1
                reason, why, tokens = _check_chat(chat, src, cfg, tok)
                if reason != KEPT:
                    report.drop(reason, where, f"{_chat_label(chat, where)}{why}")
                # the record's place, not its id: two records sharing an "id" (files numbered
                # from 0 each) are two records, whose prompts may be near duplicates of each other
                group = _hash64(f"{s}/{where}")
                rows.append((s, statuses.index(reason), tokens, group, chat))
                if len(rows) == _HASH_BATCH:
                    gathered.add(hasher, rows)
                    rows = []
            if bar is not None:
                bar.update()
    if rows:
        gathered.add(hasher, rows)
    return gathered.arrays()


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())


def _repeated_ids(a: dict[str, np.ndarray]) -> np.ndarray:
    """Whether each chat's id was a chat's of its source before (records sharing an "id": files
    numbered from 0 each, a set that repeats ids): pass 2 writes it with its place after it."""
    return first_occurrences(a["ids"]) != np.arange(len(a["ids"])) if len(a["ids"]) else np.zeros(0, bool)


def _dedup_and_sample(cfg: BuildConfig, a: dict[str, np.ndarray]) -> None:
    """Source after source: its chats that repeat a chat the mix keeps from an earlier source, or an
    earlier chat of its own, are marked duplicate / near_duplicate (in a["match"] the chat each one
    repeats); then the source is sampled to its target. A chat of an earlier source that its
    sampling left out is not in the mix, so a later source's copy of it stays; one the reward cut
    drops later was in the mix here, so its copies stay out (docs/sft.md)."""
    a["match"] = np.full(len(a["status"]), -1, dtype=np.int64)
    kept_before = np.zeros(0, dtype=np.int64)
    for s, src in enumerate(cfg.sources):
        own = np.flatnonzero((a["source"] == s) & (a["status"] == 0))
        _mark_duplicates(cfg, a, kept_before, own)
        _sample(cfg, a, s, src)
        kept_before = np.concatenate([kept_before, own[a["status"][own] == 0]])


def _mark_duplicates(
    cfg: BuildConfig, a: dict[str, np.ndarray], kept_before: np.ndarray, own: np.ndarray
) -> None:
    """Status duplicate / near_duplicate for the chats `own` that repeat one of `kept_before` (the
    earlier sources' chats in the mix) or an earlier one of `own`."""
    statuses = (KEPT, *CHAT_REASONS)
    live = np.concatenate([kept_before, own])  # in stream order: the earlier sources' come first
    if cfg.dedup.exact and len(own):
        first = live[first_occurrences(a["exact"][live])]
        repeated = first != live
        a["status"][live[repeated]] = statuses.index("duplicate")
        a["match"][live[repeated]] = first[repeated]
        live = live[~repeated]
    if cfg.dedup.near and len(own):
        matched = near_duplicates(a["bands"][live], a["group"][live])
        near = matched >= 0
        a["status"][live[near]] = statuses.index("near_duplicate")
        a["match"][live[near]] = live[matched[near]]


def _sample(cfg: BuildConfig, a: dict[str, np.ndarray], s: int, src: SourceConfig) -> None:
    """Source `s` down to its `count` or `fraction`, uniformly, with a generator of its own."""
    live = np.flatnonzero((a["source"] == s) & (a["status"] == 0))
    if src.count is not None:
        target = min(src.count, len(live))
    elif src.fraction is not None:
        target = round(src.fraction * len(live))
    else:
        return
    rng = np.random.default_rng([cfg.seed, s])
    chosen = np.zeros(len(live), dtype=bool)
    chosen[rng.choice(len(live), size=target, replace=False)] = True
    a["status"][live[~chosen]] = (KEPT, *CHAT_REASONS).index("sampled_out")


def _shown_duplicates(a: dict[str, np.ndarray], n_sources: int) -> dict[int, int]:
    """The first EXAMPLES_PER_REASON duplicates of each source and reason → the chat each repeats."""
    shown = {}
    for s in range(n_sources):
        for reason in ("duplicate", "near_duplicate"):
            code = (KEPT, *CHAT_REASONS).index(reason)
            for n in np.flatnonzero((a["source"] == s) & (a["status"] == code))[:EXAMPLES_PER_REASON]:
                shown[int(n)] = int(a["match"][n])
    return shown


def _write_kept(
    cfg: BuildConfig, a: dict[str, np.ndarray], reports: list[SourceReport], out_path: Path, bar: Any
) -> None:
    """Pass 2: the chats whose status is kept, in stream order, as `vikhr sft prepare` reads them;
    the places of a few duplicates and of the chats they repeat go to the report."""
    status, n = a["status"], 0
    repeated = _repeated_ids(a)
    shown = _shown_duplicates(a, len(cfg.sources))
    places = dict.fromkeys(shown.values(), "")
    with open(out_path, "w", encoding="utf-8") as out:
        for src, report in zip(cfg.sources, reports, strict=True):
            for where, chats in _source_chats(src, None):
                for chat in chats:
                    record = chat.record(src.name)
                    if repeated[n]:
                        record["id"] += f"@{where}"
                    if status[n] == 0:
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    if n in places:
                        places[n] = f"{where} ({record['id']})"
                    if n in shown:
                        reason = (KEPT, *CHAT_REASONS)[status[n]]
                        report.examples.setdefault(reason, []).append(f"{where}: repeats {places[shown[n]]}")
                    n += 1
                if bar is not None:
                    bar.update()
    if n != len(status):
        raise VikhrError("the sources changed while the build was reading them (run it again)")


def _progress(enabled: bool, desc: str, total: int | None = None) -> Any:
    if not enabled:
        return None
    from vikhr.progress_bar import progress_bar

    return progress_bar(desc=desc, unit=" records", total=total)


def _check_a_chat_is_kept(a: dict[str, np.ndarray], reports: list[SourceReport]) -> None:
    """A build that keeps no chat stops with why (it wrote an empty mix, exit 0)."""
    if (a["status"] == 0).any():
        return
    statuses = (KEPT, *CHAT_REASONS)
    counts: Counter[str] = Counter()
    for report in reports:  # unfit records; the chats' own reasons are counted in a["status"]
        counts.update({k: v for k, v in report.dropped.items() if k not in CHAT_REASONS})
    for code, n in enumerate(np.bincount(a["status"].astype(np.intp), minlength=len(statuses))):
        if code and n:
            counts[statuses[code]] += int(n)
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in counts.most_common()) or "no record"
    raise VikhrError(
        f"no chat is left to write ({reasons}): loosen limits, min_cyrillic_share or the dedup "
        "threshold, or check the sources"
    )


# What the build writes beside OUTPUT, under OUTPUT's name and these suffixes.
_REPORT_SUFFIXES = (".report.json", ".report.md")
_HISTOGRAM_SUFFIX = ".scores.png"
# Files beside a tokenizer file that its loading reads (chat template, special tokens).
_TOKENIZER_COMPANIONS = (
    "tokenizer_config.json",
    CHAT_TEMPLATE_FILE,
    "special_tokens_map.json",
    "added_tokens.json",
)


def _written_files(cfg: BuildConfig, out_path: Path) -> list[Path]:
    """The output and the files written beside it."""
    suffixes = (*_REPORT_SUFFIXES, _HISTOGRAM_SUFFIX) if cfg.reward is not None else _REPORT_SUFFIXES
    return [out_path, *(out_path.with_name(out_path.name + s) for s in suffixes)]


def _read_places(cfg: BuildConfig) -> list[tuple[str, Path]]:
    """(what, path) of every file the build reads, and of the directories read as a whole."""
    places = [(f"a file of source {src.name}", f) for src in cfg.sources for f in src.files()]
    places.append(("the config file", cfg.path))
    tokenizer = Path(cfg.tokenizer)
    if tokenizer.is_dir():
        places.append(("the tokenizer directory", tokenizer))
    else:
        places.append(("the tokenizer", tokenizer))
        places += [("a file of the tokenizer", tokenizer.with_name(n)) for n in _TOKENIZER_COMPANIONS]
    if cfg.reward is not None:
        places.append(("the reward model directory", Path(cfg.reward.model)))
    return places


def _refuse_overlaps(cfg: BuildConfig, out_path: Path) -> None:
    """Every file named before any work: the output and its reports replace their files, and
    reward.scores is appended to, so none may be a file the build reads (nor lie in a directory
    it reads whole: a tokenizer's, a reward model's)."""
    read = _read_places(cfg)
    written = _written_files(cfg, out_path)
    if cfg.reward is not None:
        from vikhr.sft.reward import check_scores_path

        scores = check_scores_path(cfg.reward.scores)
        outputs = [("the output", f) if f == out_path else (f"the output's {f.name}", f) for f in written]
        for what, f in [*read, *outputs]:
            if overlap(scores, f):
                raise VikhrError(
                    f"{cfg.path}: reward.scores {scores} is {what}: scores would be appended to it (give a "
                    "scores file of its own)"
                )
    for f in written:
        who = f"output {out_path}" if f == out_path else f"output {out_path}: {f.name}, written beside it,"
        for what, place in read:
            how = overlap(f, place, input_whole=place.is_dir())
            if how == "is":
                raise VikhrError(
                    f"{who} is also {what}: the build would replace its input (choose another output)"
                )
            if how == "in":
                raise VikhrError(
                    f"{who} is in {what} {place.resolve()}: the build would write among its files (give the "
                    "output a directory of its own)"
                )


def _refuse_a_file_read_by_two_sources(cfg: BuildConfig) -> None:
    """A file two sources read gives the second source none of the chats the first also keeps: they
    are its duplicates (without dedup, written twice). Allowed only where each source keeps records of
    its own by their fields (keep_where: lang ru in one, en in the other)."""
    first_reader: dict[str, SourceConfig] = {}
    for src in cfg.sources:
        for path in src.files():
            other = first_reader.setdefault(os.path.realpath(path), src)
            if other is src or (other.keep_where and src.keep_where and other.keep_where != src.keep_where):
                continue
            if other.keep_where != src.keep_where:
                how = "keep_where in one of them only"
            else:
                how = "the same keep_where" if src.keep_where else "neither with a keep_where"
            raise VikhrError(
                f"{cfg.path}: {path} is read by source {other.name} and by source {src.name} ({how}): a "
                f"chat both keep counts for {other.name} only, dropped from {src.name} as a duplicate; name "
                "the file in one source, or give each source a keep_where that keeps its own records"
            )


def _refuse_a_name_read_as_another_format(out_path: Path) -> None:
    """The output is plain JSONL: a name that `sft prepare`, `sft score` and a build's source reader
    take for compressed data or Parquet (mix.jsonl.gz) would be refused by them as damaged."""
    from vikhr.sft.reward import COMPRESSED_SUFFIXES

    suffix = out_path.suffix.lower()
    if suffix in (*COMPRESSED_SUFFIXES, ".parquet"):
        kind = "Parquet" if suffix == ".parquet" else f"{suffix}-compressed"
        stem = out_path.with_suffix("")
        plain = stem if stem.suffix == ".jsonl" else stem.with_suffix(".jsonl")
        raise VikhrError(
            f"output {out_path}: the build writes plain JSONL, not the {kind} data a {suffix} name stands "
            f"for (read back as such, it is refused as damaged): give a .jsonl name, e.g. {plain}"
        )


def build(config: str | Path, output: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the build described by `config` (see docs/sft.md); the report (also written beside the output)."""
    cfg = load_build_config(config, output)
    out_path = Path(cfg.output)
    require_writable_dir(out_path.parent, "output directory")
    if out_path.is_dir():
        raise VikhrError(f"output {out_path} is a directory (give a file name: {out_path / 'mix.jsonl'})")
    _refuse_a_name_read_as_another_format(out_path)
    _refuse_a_file_read_by_two_sources(cfg)
    _refuse_overlaps(cfg, out_path)
    tok, template, _ = load_for_chats(cfg.tokenizer, cfg.template)
    cfg = cfg.model_copy(update={"template": template})
    reports = [SourceReport(s.name, s.language, [str(p) for p in s.files()]) for s in cfg.sources]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bar = _progress(progress, "sft build: read")
    a = _first_pass(cfg, tok, reports, bar)
    if bar is not None:
        bar.close()
    _dedup_and_sample(cfg, a)
    _check_a_chat_is_kept(a, reports)
    with (
        scratch_file(out_path.with_name(out_path.name + ".candidates")) as candidates,
        temporary_path(out_path) as tmp,
    ):
        bar = _progress(progress, "sft build: write", sum(r.records for r in reports))
        _write_kept(cfg, a, reports, candidates if cfg.reward else tmp, bar)
        if bar is not None:
            bar.close()
        reward = None
        if cfg.reward is not None:
            reward = _filter_by_reward(cfg, candidates, tmp, progress)
            _apply_reward(a, reward.pop("dropped_positions"))
        report = _report(cfg, reports, a, reward)
    _write_report(out_path, report)  # after the output, which it describes
    _warn_of_sources_left_out(report, out_path)
    return report


def _warn_of_sources_left_out(report: dict[str, Any], out_path: Path) -> None:
    """One warning line for each source the mix holds no chat of (the build goes on with the others):
    a `fraction` or `count` that rounds to none, a source all duplicates of another, all too long."""
    md_path = out_path.with_name(out_path.name + _REPORT_SUFFIXES[1])
    for source in report["sources"]:
        if source["kept"] or not source["records"]:
            continue
        reasons = ", ".join(f"{k} {n:,}" for k, n in Counter(source["dropped"]).most_common()) or "none read"
        hint = ""
        if "sampled_out" in source["dropped"]:
            hint = " (its fraction × chats rounds to 0: raise fraction, or give a count)"
        # every record read: those that gave chats and the unfit ones the reasons count too
        read = source["records"] + sum(n for k, n in source["dropped"].items() if k not in CHAT_REASONS)
        print(
            f"warning: source {source['name']}: none of its {read:,} "
            f"record{'s' if read != 1 else ''} is in the mix "
            f"({reasons}){hint}; see {md_path}",
            file=sys.stderr,
        )


def _filter_by_reward(cfg: BuildConfig, candidates: Path, out_tmp: Path, progress: bool) -> dict[str, Any]:
    """Score the candidate chats (resuming), cut each source, write the rest to `out_tmp`."""
    from vikhr.sft.reward import chat_key, keep_mask, load_scores, plot_scores, score_file, scored_messages

    r = cfg.reward
    assert r is not None
    run = score_file(candidates, r.model, r.scores, r.batch_size, r.device, r.max_length, progress)
    scores = load_scores(r.scores)
    names = [s.name for s in cfg.sources]
    values: dict[str, list[float]] = {n: [] for n in names}
    lines_of: dict[str, list[int]] = {n: [] for n in names}
    for line, (_, record) in enumerate(read_jsonl(candidates)):
        # the key score_file gave the chat: of its plain turns, a tool chat's calls written in
        values[record["source"]].append(scores[chat_key(scored_messages(record))])
        lines_of[record["source"]].append(line)
    keep = np.zeros(sum(len(v) for v in values.values()), dtype=bool)
    result: dict[str, Any] = {
        "model": r.model,
        "scores": r.scores,
        "scored_now": run.scored,
        "scored_on_last_tokens": run.cut,  # of those scored now: longer than the max length
        "max_length_note": run.note,
        "sources": {},
    }
    cuts = {}
    for src in cfg.sources:
        threshold, fraction = r.threshold, r.top_fraction
        if src.reward_threshold is not None or src.reward_top_fraction is not None:  # the source's own cut
            threshold, fraction = src.reward_threshold, src.reward_top_fraction
        mask, cuts[src.name] = keep_mask(values[src.name], threshold, fraction)
        keep[np.asarray(lines_of[src.name], dtype=np.int64)[mask]] = True
        cut = cuts[src.name] if np.isfinite(cuts[src.name]) else None  # None: no cut (JSON has no inf)
        result["sources"][src.name] = {"scored": len(mask), "cut": cut, "kept": int(mask.sum())}
    if not keep.any():  # an empty mix, exit 0, as a build keeping no chat before the cut was
        best = max(max(v) for v in values.values() if v)
        raise VikhrError(
            f"the reward cut leaves no chat to write (reward {len(keep):,}; the best score is {best:.4g}): "
            f"lower the threshold or raise top_fraction; the scores stay in {r.scores}, so the next build "
            "does not score again"
        )
    with open(candidates, encoding="utf-8") as f, open(out_tmp, "w", encoding="utf-8") as out:
        out.writelines(line for line, kept in zip(f, keep, strict=True) if kept)
    histogram = Path(cfg.output).with_name(Path(cfg.output).name + _HISTOGRAM_SUFFIX)
    plot_scores(values, cuts, histogram, title=f"reward scores: {Path(r.model).name}")
    result["histogram"] = str(histogram)
    result["dropped_positions"] = np.flatnonzero(~keep)
    return result


def _apply_reward(a: dict[str, np.ndarray], dropped_positions: np.ndarray) -> None:
    """Mark as dropped by the reward cut the written chats at `dropped_positions` (line numbers)."""
    written = np.flatnonzero(a["status"] == 0)
    a["status"][written[dropped_positions]] = (KEPT, *CHAT_REASONS).index("reward")


def _report(
    cfg: BuildConfig, reports: list[SourceReport], a: dict[str, np.ndarray], reward: dict[str, Any] | None
) -> dict[str, Any]:
    statuses = (KEPT, *CHAT_REASONS)
    for s, report in enumerate(reports):
        mine = a["source"] == s
        kept = mine & (a["status"] == 0)
        report.kept = int(kept.sum())
        report.tokens = int(a["tokens"][kept].sum())
        report.turns = int(a["turns"][kept].sum())
        report.trimmed_unanswered = int(a["trimmed"][kept].sum())
        for code, reason in enumerate(statuses):
            if code and reason not in _CHECKED_WHILE_READING:
                n = int((mine & (a["status"] == code)).sum())
                if n:
                    report.dropped[reason] = n
    total = sum(r.kept for r in reports)
    return {
        "config": str(cfg.path),
        "output": str(cfg.output),
        "tokenizer": str(cfg.tokenizer),
        "template": cfg.template,
        "seed": cfg.seed,
        "limits": {"min_tokens": cfg.limits.min_tokens, "max_tokens": cfg.limits.max_tokens},
        "dedup": cfg.dedup.model_dump(),
        "kept": total,
        "tokens": sum(r.tokens for r in reports),
        "sources": [
            {**r.__dict__, "dropped": dict(r.dropped), "share": r.kept / total if total else 0.0}
            for r in reports
        ],
        "reward": None if reward is None else {k: v for k, v in reward.items() if k != "dropped_positions"},
    }


def _write_report(out_path: Path, report: dict[str, Any]) -> None:
    json_path, md_path = (out_path.with_name(out_path.name + s) for s in _REPORT_SUFFIXES)
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    write_text(md_path, report_markdown(report))


def report_markdown(report: dict[str, Any]) -> str:
    """The build report for people: the mix (as the paper's Table 4), then what was dropped and why."""
    lines = [
        f"# SFT mix: {report['output']}",
        "",
        f"{report['kept']:,} chats, {report['tokens']:,} tokens ({report['template']} template, "
        f"{report['tokenizer']}), seed {report['seed']}.",
        "",
        "| source | language | chats | share | tokens | mean turns |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in report["sources"]:
        turns = s["turns"] / s["kept"] if s["kept"] else 0.0
        lines.append(
            f"| {s['name']} | {s['language'] or '—'} | {s['kept']:,} | {100 * s['share']:.1f}% | "
            f"{s['tokens']:,} | {turns:.1f} |"
        )
    lines += ["", "## Read and dropped", ""]
    lines += ["| source | format | records | chats | kept | kept trimmed of unanswered turns | dropped |"]
    lines.append("|---|---|---:|---:|---:|---:|---|")
    for s in report["sources"]:
        dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(s["dropped"].items())) or "—"
        formats = ", ".join(sorted(set(s["formats"].values())))
        lines.append(
            f"| {s['name']} | {formats} | {s['records']:,} | {s['chats']:,} | {s['kept']:,} "
            f"| {s['trimmed_unanswered']:,} | {dropped} |"
        )
    problems = [
        (s["name"], r, ex) for s in report["sources"] for r, exs in s["examples"].items() for ex in exs
    ]
    if problems:
        lines += ["", "## Examples of dropped records", ""]
        lines += [f"- {name}, {reason}: `{example}`" for name, reason, example in problems]
    if report["reward"]:
        r = report["reward"]
        lines += ["", "## Reward model", "", f"model `{r['model']}`, scores `{r['scores']}`", ""]
        lines += ["| source | scored | cut | kept |", "|---|---:|---:|---:|"]
        for name, v in r["sources"].items():
            cut = "—" if v["cut"] is None else f"{v['cut']:.4g}"
            lines.append(f"| {name} | {v['scored']:,} | {cut} | {v['kept']:,} |")
        lines += ["", f"![scores]({Path(r['histogram']).name})"]
    return "\n".join(lines) + "\n"


def summary_line(report: dict[str, Any]) -> str:
    parts = ", ".join(f"{s['name']} {s['kept']:,}" for s in report["sources"])
    return f"{report['output']}: {report['kept']:,} chats, {report['tokens']:,} tokens ({parts})"
