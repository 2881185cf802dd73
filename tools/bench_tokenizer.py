"""Benchmark: train the 40k Russian tokenizers and measure them against Mistral-7B v0.1 and Llama 2.

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
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

from vikhr.tokenizer import load
from vikhr.tokenizer.compare import compare, load_text_set
from vikhr.tokenizer.train import TrainSettings, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("../shared/data")  # relative, so the manifest does not record this machine's layout
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-tokenizer"))
    ap.add_argument("--reuse", action="store_true", help="reuse tokenizers already trained in --out")
    ap.add_argument("--ship", action="store_true", help="copy ru40k-replace to vikhr/assets/tokenizers")
    ap.add_argument("--byte-bpe", action="store_true", help="the byte-level BPE (tekken) benchmark instead")
    ap.add_argument("--byte-bpe-report", type=Path, default=Path("/tmp/bench_byte_bpe_efficiency.md"))
    args = ap.parse_args()
    if args.byte_bpe:
        byte_bpe_main(args.out, args.byte_bpe_report, args.reuse)
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
    results = compare(specs, TEXT_SETS, args.out / "report", split="heldout", max_chars=1_000_000)
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
    results = compare(specs, TEXT_SETS, out / "report", split="heldout", max_chars=1_000_000)
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
