"""`vikhr tokenizer compare`: tokenizer efficiency on text sets (the paper's Figure 1 and Table 1).

Metrics per (tokenizer, text set), measured line by line (paragraphs; BOS/EOS not counted):
chars/token, tokens/word (words = whitespace-separated), and the share of word occurrences that the
tokenizer splits into three or more pieces (each word encoded on its own, as after a space).
Works for SentencePiece `.model`s and any `tokenizer.json`; byte-level pieces are shown as text.

Each figure says whether the text set's file was among the tokenizer's training corpora (by the sha256
of its content, so a renamed, decompressed or compressed copy counts, as the `manifest.json` that
`vikhr tokenizer train` writes beside it records them): "yes" figures are on held-out
documents of a corpus the tokenizer learned from, "no" figures on a file it did not train on (a
corpus — a domain — it never saw, or documents set apart in a file of their own, as the demo's
held-out files), "—" when the tokenizer has no manifest (e.g. Mistral's own). `split="auto"`
measures a text set on its held-out documents when some compared tokenizer trained on it and on all
its documents otherwise.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vikhr.atomic import output_dir
from vikhr.charts import legend_beside, markdown_cell, series_colours
from vikhr.errors import VikhrError, require_output_dir, split_label
from vikhr.file_stamps import StampedCache
from vikhr.tokenizer.corpus import DEFAULT_HELDOUT_PERCENT, Split, corpus_hashes, iter_lines
from vikhr.tokenizer.load import Tokenizer, load

TABLE1_SENTENCE = "Машинное обучение изменяет мир"
REPORT_FILES = ("report.md", "report.csv", "chars_per_token.png")  # what `compare` writes into its --out


@dataclass(frozen=True)
class NamedTokenizer:
    name: str  # the label in the report
    tokenizer: Tokenizer
    # the hashes of every corpus it was trained on (its manifest.json); None without a manifest
    training_corpora: frozenset[str] | None = None
    heldout_percent: float | None = None  # the share of documents its training left out (manifest)


def _manifest_path(tok_path: Path) -> Path:
    """`manifest.json` beside `tokenizer.*`, or `NAME.manifest.json` beside `NAME.model` (bundled assets)."""
    if tok_path.name.startswith("tokenizer."):
        return tok_path.parent / "manifest.json"
    return tok_path.parent / f"{tok_path.name.split('.')[0]}.manifest.json"


def training_corpora(tok_path: Path) -> tuple[frozenset[str] | None, float | None]:
    """(the hashes of the corpora a tokenizer was trained on, the percentage of their documents
    training left out), from its manifest; (None, None) when it has none or the manifest lists no
    corpora (an imported tokenizer: `import-tekken`)."""
    path = _manifest_path(tok_path)
    if not path.is_file():
        return None, None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        corpora = manifest.get("corpora")
        percent = (manifest.get("settings") or {}).get("heldout_percent")
    except (OSError, ValueError, AttributeError) as e:
        raise VikhrError(f"{path} is not a tokenizer manifest ({e}); remove or regenerate it") from None
    if not isinstance(corpora, list):
        return None, None
    if isinstance(percent, bool) or not isinstance(percent, (int, float)):
        percent = None  # an older manifest: the default was used
    # A corpus's content hash, and its file's as stored: a manifest written before content hashes
    # has only that one (such a tokenizer knows its corpora as stored, not their copies).
    keys = ("content_sha256", "sha256")
    hashes = frozenset(str(c[k]) for c in corpora if isinstance(c, dict) for k in keys if k in c)
    return hashes, percent


def named_tokenizer(spec: str) -> NamedTokenizer:
    """NAME=PATH or PATH (a `.model`, a `tokenizer.json` or a directory, see vikhr.tokenizer.load)."""
    name, path = split_label(spec)
    tok = load(path)
    if name is None:
        name = tok.path.parent.name if tok.path.stem == "tokenizer" else tok.path.stem
    return NamedTokenizer(name, tok, *training_corpora(tok.path))


@dataclass
class TextSet:
    name: str
    path: str
    lines: list[str]
    split: Split = "heldout"
    hashes: frozenset[str] = frozenset()  # _file_hashes


def text_set_name(spec: str) -> str:
    """`NAME=FILE`'s NAME, or FILE's name without its JSONL/compression suffixes."""
    name, path = split_label(spec)
    return (
        name
        if name is not None
        else Path(path).name.removesuffix(".gz").removesuffix(".zst").removesuffix(".jsonl")
    )


def _file_hashes(path: str | Path) -> frozenset[str]:
    """The content and stored sha256 of a text set (corpus_hashes), read once per state of the file:
    choosing its split, its held-out share and recording it each ask (a corpus may be GBs)."""
    resolved = str(Path(path).resolve())
    return _TEXT_HASHES.get(resolved, [resolved], lambda: _hashes_now(resolved))


_TEXT_HASHES: StampedCache[frozenset[str]] = StampedCache(maxsize=64)


def _hashes_now(path: str) -> frozenset[str]:
    hashes = corpus_hashes(path)
    return frozenset((hashes.content, hashes.stored))


def _trained_on(named: NamedTokenizer, hashes: frozenset[str]) -> bool:
    """Whether `named` was trained on the text set of these hashes (by its content, or as stored)."""
    return not hashes.isdisjoint(named.training_corpora or ())


def load_text_set(
    spec: str, text_key: str, split: Split, heldout_percent: float, max_chars: int | None
) -> TextSet:
    name, path = text_set_name(spec), split_label(spec)[1]
    lines = list(iter_lines(path, text_key, split, heldout_percent, max_chars))
    if not lines:
        if max_chars is not None and next(iter_lines(path, text_key, split, heldout_percent), None):
            hint = f"--max-chars {max_chars:,} ends in the white space opening its first line: give more"
        else:
            hint = "the file has no text under the key" if split == "all" else "try --split all"
        raise VikhrError(f"text set {path} has no lines in split '{split}' ({hint})")
    return TextSet(name, path, lines, split, _file_hashes(path))


def _refuse_a_budget_suffix(path: str) -> None:
    """VikhrError for `--texts FILE@2M`, `tokenizer train`'s budget suffix: compare has one budget."""
    head, at, _ = path.rpartition("@")
    if at and not Path(path).exists() and Path(head).is_file():
        raise VikhrError(
            f"--texts {path}: compare takes no FILE@CHARS budget (tokenizer train's); give --texts {head} "
            "and --max-chars, the characters measured of each text set"
        )


def _heldout_percent_for(spec: str, toks: list[NamedTokenizer], asked: float) -> float:
    """The held-out share to measure `spec` on: `asked`, or less where a tokenizer that trained on
    the file left out fewer of its documents (its training documents are not held out)."""
    path = split_label(spec)[1]
    if not any(t.training_corpora for t in toks) or not Path(path).is_file():
        return asked  # nothing to compare with (a missing file is named when the set is read)
    hashes = _file_hashes(path)
    left_out = [
        (t.heldout_percent if t.heldout_percent is not None else DEFAULT_HELDOUT_PERCENT, t.name)
        for t in toks
        if _trained_on(t, hashes)
    ]
    percent, name = min(left_out, default=(asked, None))
    if name is None or percent >= asked:
        return asked
    if percent <= 0:
        raise VikhrError(
            f"tokenizer {name} was trained on every document of {path} (--heldout-percent 0): no held-out "
            "text to measure it on; give other --texts, or --split all (reported as trained on)"
        )
    print(
        f"note: {path}: held-out documents are the {percent:g} % tokenizer {name} left out of its training "
        f"(not {asked:g} %)",
        file=sys.stderr,
    )
    return percent


@dataclass
class Efficiency:
    tokenizer: str
    text_set: str
    chars: int
    words: int
    tokens: int
    words_3plus: int
    trained_on_set: bool | None = None  # the set's file was a training corpus (None: unknown)
    split: Split = "heldout"

    @property
    def seen(self) -> str:
        return {True: "yes", False: "no", None: "—"}[self.trained_on_set]

    @property
    def chars_per_token(self) -> float:
        return self.chars / self.tokens if self.tokens else float("nan")

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words if self.words else float("nan")

    @property
    def share_words_3plus(self) -> float:
        return self.words_3plus / self.words if self.words else float("nan")


def measure(named: NamedTokenizer, texts: TextSet, batch: int = 512) -> Efficiency:
    """Efficiency of a tokenizer on `texts` (see module doc)."""
    tok = named.tokenizer
    chars = tokens = 0
    for i in range(0, len(texts.lines), batch):
        chunk = texts.lines[i : i + batch]
        chars += sum(len(t) for t in chunk)
        tokens += sum(len(ids) for ids in tok.encode_batch(chunk))
    word_counts = Counter(w for line in texts.lines for w in line.split())
    unique = list(word_counts)
    # "As after a space": SentencePiece adds its dummy prefix itself; byte-level BPE needs the space.
    prefix = " " if tok.byte_level else ""
    words_3plus = 0
    for i in range(0, len(unique), 4096):
        chunk = unique[i : i + 4096]
        for word, ids in zip(chunk, tok.encode_batch([prefix + w for w in chunk]), strict=True):
            if len(ids) >= 3:
                words_3plus += word_counts[word]
    seen = None if named.training_corpora is None else _trained_on(named, texts.hashes)
    return Efficiency(
        named.name, texts.name, chars, sum(word_counts.values()), tokens, words_3plus, seen, texts.split
    )


CSV_FIELDS = [
    "tokenizer",
    "text_set",
    "chars",
    "words",
    "tokens",
    "chars_per_token",
    "tokens_per_word",
    "share_words_3plus_pieces",
    "text_set_in_training",
    "split",
]


def _row(e: Efficiency) -> list[str]:
    return [
        e.tokenizer,
        e.text_set,
        str(e.chars),
        str(e.words),
        str(e.tokens),
        f"{e.chars_per_token:.4f}",
        f"{e.tokens_per_word:.4f}",
        f"{e.share_words_3plus:.4f}",
        {"yes": "yes", "no": "no"}.get(e.seen, "unknown"),
        e.split,
    ]


def render_markdown(
    results: list[Efficiency], tokenizers: list[NamedTokenizer], sentence: str = TABLE1_SENTENCE
) -> str:
    out = io.StringIO()
    out.write("# Tokenizer efficiency\n\n")
    out.write(
        "Trained on it: whether the text set's file was a training corpus of the tokenizer (no = a "
        "file it did not train on: a left-out corpus, or documents set apart in a file of their own; "
        "— = no manifest).\n\n"
    )
    out.write(
        "| tokenizer | text set | split | trained on it | chars/token | tokens/word | words in ≥3 pieces "
        "| tokens |\n"
    )
    out.write("|---|---|---|---|---:|---:|---:|---:|\n")
    for e in results:
        out.write(
            f"| {markdown_cell(e.tokenizer)} | {markdown_cell(e.text_set)} | {e.split} | {e.seen} "
            f"| {e.chars_per_token:.3f} "
            f"| {e.tokens_per_word:.3f} | {100 * e.share_words_3plus:.1f} % | {e.tokens:,} |\n"
        )
    out.write(f"\n## «{sentence}»\n\n| tokenizer | pieces | count |\n|---|---|---:|\n")
    for named in tokenizers:
        pieces = named.tokenizer.readable_pieces(sentence)
        shown = " ".join(f"`{p}`" for p in pieces)
        out.write(f"| {markdown_cell(named.name)} | {shown} | {len(pieces)} |\n")
    return out.getvalue()


def render_csv(results: list[Efficiency]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for e in results:
        writer.writerow(_row(e))
    return buf.getvalue()


def chars_per_token_figure(results: list[Efficiency]) -> Any:
    """The figure of chars_per_token.png: one group per text set, one bar per tokenizer (the paper's
    Figure 1), the legend beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(e.text_set for e in results))
    toks = list(dict.fromkeys(e.tokenizer for e in results))
    value = {(e.tokenizer, e.text_set): e.chars_per_token for e in results}
    width = 0.8 / max(1, len(toks))
    # Beyond four bars a group's values, written level, would run into each other: they stand
    # upright, and each bar gets room for its label.
    upright = len(toks) > 4
    group_inches = max(1.6, 0.28 * len(toks)) if upright else 1.6
    fig, ax = plt.subplots(figsize=(max(6.0, group_inches * len(sets) + 2), 4.5))
    for k, (t, colour) in enumerate(zip(toks, series_colours(len(toks)), strict=True)):
        xs = [i + (k - (len(toks) - 1) / 2) * width for i in range(len(sets))]
        bars = ax.bar(xs, [value[(t, s)] for s in sets], width, label=t, color=colour)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, rotation=90 if upright else 0, padding=2)
    ax.margins(y=0.15)  # room above the tallest bar for its value
    ax.set_xticks(range(len(sets)), sets, rotation=15)
    ax.set_ylabel("characters per token (higher is better)")
    ax.set_title("Tokenizer efficiency")
    legend_beside(ax, fontsize=8)
    fig.tight_layout()
    return fig


def plot_chars_per_token(results: list[Efficiency], path: Path) -> None:
    """`chars_per_token_figure` as a PNG (widened for the legend beside the axes)."""
    import matplotlib.pyplot as plt

    fig = chars_per_token_figure(results)
    try:
        fig.savefig(path, dpi=120, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def compare(
    tokenizer_specs: list[str],
    text_specs: list[str],
    out_dir: str | Path,
    text_key: str = "text",
    split: Split | Literal["auto"] = "heldout",
    heldout_percent: float = DEFAULT_HELDOUT_PERCENT,
    max_chars: int | None = 2_000_000,
    sentence: str = TABLE1_SENTENCE,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Efficiency]:
    """Measure every tokenizer on every text set; write report.md, report.csv and chars_per_token.png
    into the new directory `out_dir` (an existing one is replaced whole with `overwrite`, else refused).
    `progress`: a bar over the pairs measured, on a terminal only.

    `split="auto"`: held-out documents of a set some tokenizer trained on, all documents of the others."""
    from vikhr.progress_bar import progress_bar

    if not tokenizer_specs or not text_specs:
        raise VikhrError("give at least one --tokenizer and one --texts")
    inputs = [split_label(s)[1] for s in [*tokenizer_specs, *text_specs]]
    # Before minutes of measuring; replacing a directory that holds an input would delete it.
    out = require_output_dir(out_dir, overwrite, inputs=inputs, what="report directory --out")
    toks = [named_tokenizer(s) for s in tokenizer_specs]
    if len({t.name for t in toks}) != len(toks):
        raise VikhrError("two tokenizers have the same name; label them as NAME=PATH")

    def split_of(spec: str) -> Split:
        if split != "auto":
            return split
        hashes = _file_hashes(split_label(spec)[1])
        return "heldout" if any(_trained_on(t, hashes) for t in toks) else "all"

    for spec in text_specs:
        _refuse_a_budget_suffix(split_label(spec)[1])
    if len({text_set_name(s) for s in text_specs}) != len(text_specs):
        raise VikhrError("two text sets have the same name; label them as NAME=FILE")
    sets = []
    for spec in text_specs:
        split_here = split_of(spec)
        percent = (
            _heldout_percent_for(spec, toks, heldout_percent) if split_here == "heldout" else heldout_percent
        )
        sets.append(load_text_set(spec, text_key, split_here, percent, max_chars))
    results = [
        measure(t, s)
        for t, s in progress_bar(
            [(t, s) for t in toks for s in sets], show=progress, desc="measuring", unit="pair", leave=False
        )
    ]
    # Filled beside `out` and renamed into place: an earlier report is replaced whole or not at all.
    with output_dir(out) as work:
        (work / REPORT_FILES[0]).write_text(render_markdown(results, toks, sentence), encoding="utf-8")
        (work / REPORT_FILES[1]).write_text(render_csv(results), encoding="utf-8")
        plot_chars_per_token(results, work / REPORT_FILES[2])
    return results
