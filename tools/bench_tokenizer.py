r"""Benchmark: train the 40k Russian tokenizers and measure them against Mistral-7B v0.1 and Llama 2.

Trains (on the training split only; measurement is on the held-out split, 5 % of documents by id hash):
  ru40k-replace           replace mode, 40k, RusLit + RusDraCor (all) + English novels (6M chars),
                          split_by_unicode_script=false  ← shipped as vikhr/assets/tokenizers/vikhr-ru-40k.*
  ru40k-replace-mistral   the same with Mistral's split_by_unicode_script=true
  ru40k-replace-all-ru    ru40k-replace trained on all five Russian corpora (adds the GPL/MPL/GFDL/CC-BY
                          technical docs and fortunes, which keep it out of the shipped asset)
  extend-40k/48k/56k      Mistral v0.1 + Cyrillic pieces learned on RusLit + RusDraCor
  extend-40k-xword        extend-40k whose new pieces may span words (split_by_whitespace=false)
  extend-52k-all-ru       Mistral + 20k Cyrillic pieces learned on all five Russian corpora

Then prints chars/token, tokens/word and the share of words in ≥3 pieces per held-out text set, checks
the efficiency targets, times encoding (.model vs tokenizer.json, median of 3), and writes the report
(Markdown, CSV, PNG) to --out. `--ship` copies ru40k-replace into vikhr/assets/tokenizers.

    .venv/bin/python tools/bench_tokenizer.py --out /tmp/bench-tokenizer [--ship]

`--byte-bpe` benchmarks byte-level BPE instead: imports Mistral-NeMo's tekken (mistral-common's
tekken_240718.json, 131k), extends it with +16k and +32k Russian tokens learned on all five Russian
corpora (training split), and compares RU/EN chars/token and tokens/word on the held-out split against
tekken itself and Mistral-7B v0.1's SentencePiece; the table goes to --byte-bpe-report.

    .venv/bin/python tools/bench_tokenizer.py --byte-bpe --out /tmp/bench-byte-bpe \
        --byte-bpe-report /tmp/bench_byte_bpe_efficiency.md

`--leave-one-out` measures each mode on a Russian corpus it never saw: for every one of the five
Russian corpora, replace, extend and prune-extend tokenizers (--sizes, default 40k) are trained on the
other four (training split, LOO_RU_CHARS each) and measured on the left-out one (held-out split), on
Russian text of other domains (TERRa news-like, XQuAD Wikipedia, RuCoLA grammar sentences, ChGK quiz
questions: all documents) and on two English domains (novels held-out, MMLU exam questions); ratios
against Mistral-7B v0.1 measured on the same lines. The table goes to --loo-report.

    .venv/bin/python tools/bench_tokenizer.py --leave-one-out --out /tmp/bench-loo \
        --loo-report /tmp/bench_loo.md [--sizes 40000 48000]

`--loo-scripts` (after --leave-one-out, same --out) splits each left-out corpus's held-out lines into
runs of Cyrillic words, Latin/code words, mixed words and other tokens (digits, punctuation), encodes
each run on its own, and prints every mode's token ratio to Mistral per kind of run, and what the
Cyrillic runs would need for 1.6× overall: where the Russian gain on a technical corpus goes.

    .venv/bin/python tools/bench_tokenizer.py --loo-scripts --out /tmp/bench-loo
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

from bench_cli import BenchParser, check_output_dir, check_output_file, positive

from vikhr.tokenizer import load
from vikhr.tokenizer.compare import compare, load_text_set
from vikhr.tokenizer.train import TrainSettings, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
# relative by default, so the manifest does not record this machine's layout
DATA = Path(os.environ.get("VIKHR_SHARED_DATA", "../shared/data"))
CORPUS = DATA / "corpus"
MISTRAL = DATA / "tokenizers" / "mistral-7b-v0.1.model"
LLAMA = DATA / "tokenizers" / "llama-2.model"
RU_PD = [f"{CORPUS}/ru/ruslit.jsonl.gz@100M", f"{CORPUS}/ru/rusdracor.jsonl.gz@100M"]
RU_ALL = [f"{p}@100M" for p in sorted((CORPUS / "ru").glob("*.jsonl.gz"))]
EN_6M = f"{CORPUS}/en/english-novels.jsonl.gz@6M"
TEXT_SETS = [
    *(str(p) for p in sorted((CORPUS / "ru").glob("*.jsonl.gz"))),
    str(CORPUS / "en" / "english-novels.jsonl.gz"),
]
ASSET = ROOT / "vikhr" / "assets" / "tokenizers" / "vikhr-ru-40k"


def train_all(work: Path) -> dict[str, Path]:
    jobs = {
        "ru40k-replace": ([*RU_PD, EN_6M], TrainSettings(vocab_size=40000, split_by_script=False)),
        "ru40k-replace-mistral": ([*RU_PD, EN_6M], TrainSettings(vocab_size=40000, split_by_script=True)),
        "ru40k-replace-all-ru": ([*RU_ALL, EN_6M], TrainSettings(vocab_size=40000, split_by_script=False)),
    }
    for size in (40000, 48000, 56000):
        jobs[f"extend-{size // 1000}k"] = (
            RU_PD,
            TrainSettings(mode="extend", vocab_size=size, base_model=str(MISTRAL), split_by_script=False),
        )
    jobs["extend-40k-xword"] = (
        RU_PD,
        TrainSettings(
            mode="extend",
            vocab_size=40000,
            base_model=str(MISTRAL),
            split_by_script=False,
            split_by_whitespace=False,
        ),
    )
    jobs["extend-52k-all-ru"] = (
        RU_ALL,
        TrainSettings(mode="extend", vocab_size=52000, base_model=str(MISTRAL), split_by_script=False),
    )
    out = {}
    for name, (corpora, settings) in jobs.items():
        t0 = time.perf_counter()
        train_tokenizer(corpora, work / name, settings, overwrite=True)
        print(f"trained {name:24s} in {time.perf_counter() - t0:6.1f} s")
        out[name] = work / name
    return out


def encode_timing(text_spec: str) -> list[tuple[str, float, float]]:
    """Median-of-3 encode time of one held-out text set: SentencePiece .model vs tokenizer.json."""
    texts = load_text_set(text_spec, "text", "heldout", 5.0, 1_000_000)
    rows = []
    for name, path in (("mistral", MISTRAL), ("vikhr-ru-40k", ASSET.with_suffix(".model"))):
        json_path = ASSET.parent / f"{path.stem}.tokenizer.json"
        if name == "mistral":
            from vikhr.tokenizer.hf_export import write_hf_tokenizer

            write_hf_tokenizer(MISTRAL, Path("/tmp/bench-tok-mistral-json"))
            json_path = Path("/tmp/bench-tok-mistral-json/tokenizer.json")
        timings = []
        for spec in (str(path), str(json_path)):
            tok = load(spec)
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                tok.encode_batch(texts.lines)
                runs.append(time.perf_counter() - t0)
            timings.append(statistics.median(runs))
        rows.append((name, *timings))
    return rows


def parse_args() -> argparse.Namespace:
    ap = BenchParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-tokenizer"))
    ap.add_argument("--reuse", action="store_true", help="reuse tokenizers already trained in --out")
    ap.add_argument("--ship", action="store_true", help="copy ru40k-replace to vikhr/assets/tokenizers")
    # One benchmark per run: given together, all but the first were silently left out.
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--byte-bpe", action="store_true", help="the byte-level BPE (tekken) benchmark instead")
    mode.add_argument(
        "--leave-one-out", action="store_true", help="the leave-one-corpus-out benchmark instead"
    )
    mode.add_argument("--loo-scripts", action="store_true", help="per-script breakdown of --leave-one-out")
    ap.add_argument("--byte-bpe-report", type=Path, default=Path("/tmp/bench_byte_bpe_efficiency.md"))
    ap.add_argument("--loo-report", type=Path, default=Path("/tmp/bench_loo.md"))
    ap.add_argument(
        "--sizes", type=positive(int), nargs="+", default=[40000], help="--leave-one-out vocab sizes"
    )
    ap.add_argument("--threads", type=positive(int), default=1, help="--leave-one-out training threads")
    args = ap.parse_args()
    if args.ship and (args.byte_bpe or args.leave_one_out or args.loo_scripts):
        ap.error("argument --ship: only with the default benchmark (it ships ru40k-replace)")
    if not any((CORPUS / "ru").glob("*.jsonl.gz")):
        ap.error(f"no corpus in {CORPUS}/ru (set VIKHR_SHARED_DATA to the shared data directory)")
    check_output_dir(ap, "--out", args.out)
    if args.byte_bpe:
        check_output_file(ap, "--byte-bpe-report", args.byte_bpe_report)
    if args.leave_one_out:
        check_output_file(ap, "--loo-report", args.loo_report)
    trained = args.out / "tokenizers"
    if args.loo_scripts and not any(trained.glob("*-wo-*")):
        ap.error(
            f"--loo-scripts: no leave-one-out tokenizers in {trained} (run --leave-one-out with this --out)"
        )
    if args.reuse and not args.byte_bpe and not args.leave_one_out and not trained.is_dir():
        ap.error(f"--reuse: no {trained} (run once without --reuse)")
    return args


def main() -> None:
    args = parse_args()
    if args.loo_scripts:
        loo_scripts_main(args.out)
        return
    if args.byte_bpe:
        byte_bpe_main(args.out, args.byte_bpe_report, args.reuse)
        return
    if args.leave_one_out:
        loo_main(args.out, args.loo_report, args.sizes, args.threads, args.reuse)
        return
    work = args.out / "tokenizers"
    if args.reuse:
        trained = {p.name: p for p in sorted(work.iterdir())}
    else:
        trained = train_all(work)
    if args.ship:
        src = trained["ru40k-replace"]
        shutil.copy2(src / "tokenizer.model", ASSET.with_suffix(".model"))
        shutil.copy2(src / "tokenizer.json", ASSET.parent / f"{ASSET.name}.tokenizer.json")
        shutil.copy2(src / "manifest.json", ASSET.parent / f"{ASSET.name}.manifest.json")
        print(f"shipped {src} → {ASSET}.*")
    specs = [f"mistral-7b-v0.1={MISTRAL}", f"llama-2={LLAMA}", *(f"{n}={p}" for n, p in trained.items())]
    results = compare(
        specs, TEXT_SETS, args.out / "report", split="heldout", max_chars=1_000_000, overwrite=True
    )
    print((args.out / "report" / "report.md").read_text(encoding="utf-8"))

    cpt = {(r.tokenizer, r.text_set): r.chars_per_token for r in results}
    ru_sets = [s for s in dict.fromkeys(r.text_set for r in results) if s != "english-novels"]

    def ru_all(tok: str) -> float:
        rs = [r for r in results if r.tokenizer == tok and r.text_set in ru_sets]
        return sum(r.chars for r in rs) / sum(r.tokens for r in rs)

    print("\n| tokenizer | RU literature (ruslit) | RU all held-out sets | EN novels | vs Mistral RU-all |")
    print("|---|---:|---:|---:|---:|")
    base = ru_all("mistral-7b-v0.1")
    for tok in dict.fromkeys(r.tokenizer for r in results):
        print(
            f"| {tok} | {cpt[(tok, 'ruslit')]:.3f} | {ru_all(tok):.3f} | {cpt[(tok, 'english-novels')]:.3f} "
            f"| {ru_all(tok) / base:.2f}x |"
        )
    en_mistral = cpt[("mistral-7b-v0.1", "english-novels")]
    print("\nTargets:")
    for n in ("ru40k-replace", "ru40k-replace-all-ru"):
        print(
            f"  {n}: RU >= 4.2: ruslit {cpt[(n, 'ruslit')]:.3f}, all sets {ru_all(n):.3f}; "
            f"EN >= 3.7: {cpt[(n, 'english-novels')]:.3f}"
        )
    for n in ("extend-40k", "extend-48k", "extend-56k", "extend-40k-xword", "extend-52k-all-ru"):
        print(
            f"  {n}: RU >= 4.0: ruslit {cpt[(n, 'ruslit')]:.3f}, all sets {ru_all(n):.3f}; EN unchanged: "
            f"{cpt[(n, 'english-novels')]:.4f} vs Mistral {en_mistral:.4f}"
        )
    print("\nEncode time, held-out ruslit (1M chars), median of 3:")
    print("| tokenizer | .model (sentencepiece) s | tokenizer.json (tokenizers) s |\n|---|---:|---:|")
    for name, t_sp, t_hf in encode_timing(str(CORPUS / "ru" / "ruslit.jsonl.gz")):
        print(f"| {name} | {t_sp:.3f} | {t_hf:.3f} |")


# ---------------------------------------------------------------- leave one Russian corpus out

LOO_RU_CHARS = "2M"  # per Russian training corpus: a few M characters per training run in all
LOO_EN_REPLACE = "2M"  # English novels mixed into replace mode (about 1/4 of its training text)
LOO_EN_PRUNE = "8M"  # English novels in the prune-extend sample (only counts base-piece use)
EVAL = DATA / "eval"
# Russian and English text of domains none of the training corpora covers: (name, file, fields joined).
EVAL_SETS = [
    ("terra (news-like)", EVAL / "terra" / "train.jsonl", ("premise", "hypothesis")),
    ("xquad-ru (Wikipedia)", EVAL / "xquad-ru" / "validation.jsonl", ("context", "question")),
    ("rucola (grammar sentences)", EVAL / "rucola" / "train.jsonl", ("sentence",)),
    ("chgk (quiz questions)", EVAL / "chgk" / "dev.jsonl", ("question", "answer")),
    ("mmlu-en (exam questions)", EVAL / "mmlu-en" / "test.jsonl", ("question", "choices")),
]
EN_NOVELS = "english-novels"
MMLU = "mmlu-en (exam questions)"


def eval_texts(out: Path) -> list[str]:
    """The eval sets as `text` JSONL (fields joined by newlines; repeated contexts once) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    specs = []
    for name, path, fields in EVAL_SETS:
        dst = out / (path.parent.name + ".jsonl")
        seen: set[str] = set()
        with open(path, encoding="utf-8") as src, open(dst, "w", encoding="utf-8") as f:
            for n, line in enumerate(src):
                rec = json.loads(line)
                parts = []
                for key in fields:
                    value = rec.get(key)
                    for text in value if isinstance(value, list) else [value]:
                        if isinstance(text, str) and text not in seen:
                            parts.append(text)
                            if key == "context":
                                seen.add(text)
                f.write(
                    json.dumps({"id": f"{name}#{n}", "text": "\n".join(parts)}, ensure_ascii=False) + "\n"
                )
        specs.append(f"{name}={dst}")
    return specs


def loo_jobs(size: int, threads: int) -> dict[tuple[str, str], tuple[list[str], TrainSettings]]:
    """(left-out corpus, tokenizer name) → (corpora, settings) for every fold and mode at `size`."""
    ru = sorted((CORPUS / "ru").glob("*.jsonl.gz"))
    en = CORPUS / "en" / "english-novels.jsonl.gz"
    common = {"vocab_size": size, "split_by_script": False, "num_threads": threads}
    jobs = {}
    for left_out in ru:
        rest = [f"{p}@{LOO_RU_CHARS}" for p in ru if p != left_out]
        fold = left_out.name.removesuffix(".jsonl.gz")
        k = f"{size // 1000}k"
        jobs[(fold, f"replace-{k}")] = ([*rest, f"{en}@{LOO_EN_REPLACE}"], TrainSettings(**common))
        jobs[(fold, f"extend-{k}")] = (rest, TrainSettings(mode="extend", base_model=str(MISTRAL), **common))
        jobs[(fold, f"prune-extend-{k}")] = (
            [*rest, f"{en}@{LOO_EN_PRUNE}"],
            TrainSettings(mode="prune-extend", base_model=str(MISTRAL), **common),
        )
    return jobs


def loo_table(results: list, folds: list[str], modes: list[str], base: str) -> str:
    """Per mode: chars/token on each left-out corpus, other-domain Russian, English, ratios vs `base`."""
    by = {(r.tokenizer, r.text_set): r for r in results}
    eval_ru = [name for name, _, _ in EVAL_SETS if name != MMLU]

    def pooled(tok: str, sets: list[str]) -> float:
        rows = [by[(tok, s)] for s in sets]
        return sum(r.chars for r in rows) / sum(r.tokens for r in rows)

    lines = [
        "| mode | " + " | ".join(f"left out: {f}" for f in folds) + " | RU other domains (pooled) "
        "| EN novels | EN mmlu |",
        "|---|" + "---:|" * (len(folds) + 3),
    ]
    base_cells = [f"{by[(base, f)].chars_per_token:.3f}" for f in folds]
    base_cells += [f"{pooled(base, eval_ru):.3f}", f"{by[(base, EN_NOVELS)].chars_per_token:.3f}"]
    lines.append(f"| {base} | " + " | ".join([*base_cells, f"{by[(base, MMLU)].chars_per_token:.3f}"]) + " |")
    for mode in modes:
        cells = []
        for f in folds:
            r = by[(f"{mode} w/o {f}", f)]
            assert not r.trained_on_set  # the left-out corpus really was left out
            cells.append(
                f"{r.chars_per_token:.3f} ({r.chars_per_token / by[(base, f)].chars_per_token:.2f}×)"
            )
        toks = [f"{mode} w/o {f}" for f in folds]
        for sets in (eval_ru, [EN_NOVELS], [MMLU]):
            vals = [pooled(t, sets) / pooled(base, sets) for t in toks]
            mean = statistics.mean(pooled(t, sets) for t in toks)
            cells.append(f"{mean:.3f} ({min(vals):.2f}–{max(vals):.2f}×)")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "prune-extend goal (EN ≥ 0.97× Mistral on novels and mmlu, RU ≥ 1.6× on the left-out corpus):",
        "",
    ]
    for mode in (m for m in modes if m.startswith("prune-extend")):
        toks = [f"{mode} w/o {f}" for f in folds]
        en = min(pooled(t, sets) / pooled(base, sets) for t in toks for sets in ([EN_NOVELS], [MMLU]))
        ru = {f: by[(f"{mode} w/o {f}", f)].chars_per_token / by[(base, f)].chars_per_token for f in folds}
        missed = [f"{f} {r:.3f}×" for f, r in ru.items() if r < 1.6]
        lines.append(
            f"- {mode}: EN worst {en:.3f}× ({'met' if en >= 0.97 else 'NOT met'}); RU on the left-out corpus "
            f"≥ 1.6× for {len(folds) - len(missed)} of {len(folds)}"
            + (f" (short: {', '.join(missed)})" if missed else "")
        )
    lines += [
        "",
        "Same corpus seen in training (held-out documents; mean over the four folds that include it):",
        "",
    ]
    lines += ["| mode | " + " | ".join(folds) + " |", "|---|" + "---:|" * len(folds)]
    for mode in modes:
        cells = []
        for f in folds:
            seen = [by[(f"{mode} w/o {g}", f)].chars_per_token for g in folds if g != f]
            cells.append(f"{statistics.mean(seen):.3f}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_CYRILLIC, _LATIN = re.compile(r"[а-яА-ЯёЁ]"), re.compile(r"[A-Za-z]")
RUN_KINDS = ("cyrillic", "latin/code", "mixed", "other")


def run_kind(word: str) -> str:
    cyrillic, latin = bool(_CYRILLIC.search(word)), bool(_LATIN.search(word))
    return {(True, False): "cyrillic", (False, True): "latin/code", (True, True): "mixed"}.get(
        (cyrillic, latin), "other"
    )


def tokens_by_run_kind(tok: object, lines: list[str]) -> tuple[Counter, Counter]:
    """(chars, tokens) per kind of run: each line cut into maximal runs of words of one kind, each run
    encoded on its own with a leading space (pieces spanning the words of a run still count)."""
    runs = [
        (kind, " " + " ".join(words))
        for line in lines
        for kind, words in itertools.groupby(line.split(), key=run_kind)
    ]
    chars, tokens = Counter(), Counter()
    for kind, ids in zip((k for k, _ in runs), tok.encode_batch([t for _, t in runs]), strict=True):
        tokens[kind] += len(ids)
    for kind, text in runs:
        chars[kind] += len(text) - 1
    return chars, tokens


def loo_scripts_main(out: Path) -> None:
    folds = [p.name.removesuffix(".jsonl.gz") for p in sorted((CORPUS / "ru").glob("*.jsonl.gz"))]
    work = out / "tokenizers"
    names = {p.name.split("-wo-")[0] for p in work.glob("*-wo-*") if not p.name.startswith(".")}
    order = {"replace": 0, "extend": 1, "prune-extend": 2}
    modes = sorted(names, key=lambda m: (int(m.rsplit("-", 1)[1].rstrip("k")), order[m.rsplit("-", 1)[0]]))
    base = load(MISTRAL)
    for fold in folds:
        lines = load_text_set(str(CORPUS / "ru" / f"{fold}.jsonl.gz"), "text", "heldout", 5.0, 1_000_000)
        chars, base_tokens = tokens_by_run_kind(base, lines.lines)
        all_chars, all_base = sum(chars.values()), sum(base_tokens.values())
        shares = [f"{k} {chars[k] / all_chars:.1%} / {base_tokens[k] / all_base:.1%}" for k in RUN_KINDS]
        print(f"\n{fold} left out; share of characters / of Mistral's tokens: {', '.join(shares)}\n")
        print("| mode | " + " | ".join(RUN_KINDS) + " | all | Cyrillic runs needed for 1.6× |")
        print("|---|" + "---:|" * (len(RUN_KINDS) + 2))
        for mode in modes:
            _, tokens = tokens_by_run_kind(load(work / f"{mode}-wo-{fold}" / "tokenizer.model"), lines.lines)
            budget = all_base / 1.6 - sum(tokens[k] for k in RUN_KINDS if k != "cyrillic")
            need = f"{base_tokens['cyrillic'] / budget:.2f}×" if budget > 0 else "unreachable"
            ratios = [f"{base_tokens[k] / tokens[k]:.2f}×" if tokens[k] else "—" for k in RUN_KINDS]
            print(
                f"| {mode} | " + " | ".join(ratios) + f" | {all_base / sum(tokens.values()):.2f}× | {need} |"
            )
    print(f"\nMachine: {_machine_note()}.")


def loo_main(out: Path, report: Path, sizes: list[int], threads: int, reuse: bool) -> None:
    work = out / "tokenizers"
    folds = [p.name.removesuffix(".jsonl.gz") for p in sorted((CORPUS / "ru").glob("*.jsonl.gz"))]
    specs, modes, seconds = [f"mistral-7b-v0.1={MISTRAL}"], [], {}
    for size in sizes:
        for (fold, mode), (corpora, settings) in loo_jobs(size, threads).items():
            path = work / f"{mode}-wo-{fold}"
            if not (reuse and (path / "manifest.json").is_file()):
                t0 = time.perf_counter()
                train_tokenizer(corpora, path, settings, overwrite=True)
                seconds[(mode, fold)] = time.perf_counter() - t0
                print(f"trained {mode} without {fold} in {seconds[(mode, fold)]:.1f} s", flush=True)
            specs.append(f"{mode} w/o {fold}={path}")
            modes.append(mode)
    modes = list(dict.fromkeys(modes))
    corpora_sets = [*(str(p) for p in sorted((CORPUS / "ru").glob("*.jsonl.gz"))), TEXT_SETS[-1]]
    results = compare(
        specs, corpora_sets, out / "report-corpora", split="heldout", max_chars=1_000_000, overwrite=True
    )
    results += compare(
        specs, eval_texts(out / "eval"), out / "report-eval", split="all", max_chars=1_000_000, overwrite=True
    )
    text = (
        "Chars/token (ratio to Mistral-7B v0.1 on the same lines). Left-out columns: held-out documents of "
        "the Russian corpus that tokenizer never saw; other columns: mean over the five fold tokenizers of "
        "a mode (min–max ratio). RU other domains = TERRa + XQuAD-ru + RuCoLA + ChGK pooled (all documents); "
        "EN novels = held-out English novels; EN mmlu = MMLU test questions with their choices.\n\n"
        + loo_table(results, folds, modes, "mistral-7b-v0.1")
    )
    if seconds:
        by_size: dict[str, list[float]] = {}
        for (mode, _), took in seconds.items():
            by_size.setdefault(mode.rsplit("-", 1)[1], []).append(took)
        medians = ", ".join(f"{statistics.median(v):.0f} s at {size}" for size, v in by_size.items())
        text += f"\nTraining: median per tokenizer {medians} ({threads} thread(s), shared machine).\n"
    text += f"\nMachine: {_machine_note()}.\n"
    report.write_text(text, encoding="utf-8")
    print(text)


# ---------------------------------------------------------------- byte-level BPE: tekken + Russian tokens

BYTE_BPE_EXTENSIONS = (16000, 32000)


def train_byte_bpe(work: Path, reuse: bool) -> tuple[dict[str, Path], dict[str, float]]:
    """Import tekken and extend it; returns the tokenizers by name and the seconds each took."""
    import mistral_common

    from vikhr.tokenizer.tekken import import_tekken

    tekken_json = Path(mistral_common.__file__).parent / "data" / "tekken_240718.json"
    tekken = work / "tekken-nemo"
    out, seconds = {"tekken (Mistral-NeMo)": tekken}, {}
    if not (reuse and tekken.is_dir()):
        t0 = time.perf_counter()
        import_tekken(tekken_json, tekken, overwrite=True)
        seconds["tekken (Mistral-NeMo)"] = time.perf_counter() - t0
    for n in BYTE_BPE_EXTENSIONS:
        name = f"tekken +{n // 1000}k RU"
        path = work / f"tekken-plus-{n // 1000}k-ru"
        out[name] = path
        if reuse and path.is_dir():
            continue
        t0 = time.perf_counter()
        settings = TrainSettings(mode="extend", base_model=str(tekken), new_tokens=n)
        train_tokenizer(RU_ALL, path, settings, overwrite=True)
        seconds[name] = time.perf_counter() - t0
        print(f"trained {name} in {seconds[name]:.1f} s")
    return out, seconds


def _pooled(results: list, tok: str, russian: bool) -> tuple[float, float]:
    """Chars/token and tokens/word of `tok` over the Russian (all five) or the English held-out sets."""
    rows = [r for r in results if r.tokenizer == tok and (r.text_set != "english-novels") == russian]
    chars, tokens, words = (sum(getattr(r, k) for r in rows) for k in ("chars", "tokens", "words"))
    return chars / tokens, tokens / words


def byte_bpe_table(results: list, vocab: dict[str, int], seconds: dict[str, float]) -> str:
    toks = list(dict.fromkeys(r.tokenizer for r in results))
    by = {(r.tokenizer, r.text_set): r for r in results}
    sets = list(dict.fromkeys(r.text_set for r in results))
    base_ru = _pooled(results, "tekken (Mistral-NeMo)", True)
    lines = [
        "| tokenizer | vocab | RU chars/token | RU tokens/word | EN chars/token | EN tokens/word "
        "| RU tokens vs tekken | build time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in toks:
        (ru_cpt, ru_tpw), (en_cpt, en_tpw) = _pooled(results, t, True), _pooled(results, t, False)
        took = f"{seconds[t]:.0f} s" if t in seconds else "—"
        lines.append(
            f"| {t} | {vocab[t]:,} | {ru_cpt:.3f} | {ru_tpw:.3f} | {en_cpt:.3f} | {en_tpw:.3f} "
            f"| {base_ru[0] / ru_cpt:.3f}× | {took} |"
        )
    en_same = [
        t
        for t in toks
        if t.startswith("tekken +")
        and by[(t, "english-novels")].tokens == by[(toks[0], "english-novels")].tokens
    ]
    lines += ["", f"English held-out token counts identical to tekken for: {', '.join(en_same) or 'none'}."]
    lines += ["", "Chars/token per held-out text set:", ""]
    lines += ["| tokenizer | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    for t in toks:
        lines.append(f"| {t} | " + " | ".join(f"{by[(t, s)].chars_per_token:.3f}" for s in sets) + " |")
    return "\n".join(lines) + "\n"


def _machine_note() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}"


def byte_bpe_main(out: Path, report: Path, reuse: bool) -> None:
    import tokenizers

    trained, seconds = train_byte_bpe(out / "tokenizers", reuse)
    specs = [f"{name}={path}" for name, path in trained.items()] + [
        f"Mistral-7B v0.1 (SentencePiece)={MISTRAL}"
    ]
    results = compare(specs, TEXT_SETS, out / "report", split="heldout", max_chars=1_000_000, overwrite=True)
    vocab = {name: load(path).vocab_size for name, path in trained.items()}
    vocab["Mistral-7B v0.1 (SentencePiece)"] = load(MISTRAL).vocab_size
    text = (
        "### Byte-level BPE: Mistral-NeMo tekken + Russian tokens (`tools/bench_tokenizer.py --byte-bpe`)\n\n"
        "tekken_240718.json (mistral-common) imported with `vikhr tokenizer import-tekken`, extended with "
        "`vikhr tokenizer train --mode extend --new-tokens N` on the training split of all five Russian "
        "corpora; measured on the held-out split (5 % of documents by id hash, up to 1M chars per set). "
        "RU = the five Russian sets pooled, EN = English novels; tokens/word = tokens per "
        "whitespace-separated word; build time = import with the mistral-common check, or training "
        "including the writes and the base-id checks.\n\n"
        + byte_bpe_table(results, vocab, seconds)
        + f"\nMachine: {_machine_note()}, tokenizers {tokenizers.__version__}; the 2 cores were shared with "
        "other jobs, so the training times are upper bounds.\n"
    )
    report.write_text(text, encoding="utf-8")
    print(text)
    print((out / "report" / "report.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
