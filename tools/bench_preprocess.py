#!/usr/bin/env python3
"""Benchmark corpus pre-tokenization: vikhr vs a Megatron-style Python pipeline, gigatoken and raw
sentencepiece, on the shared Russian corpus with the Mistral v0.1 tokenizer.

    python tools/bench_preprocess.py --mb 100 --threads 1 2 --repeats 3 --slow-repeats 1
    python tools/bench_preprocess.py --mb 1000 --tools vikhr --repeats 1   # peak RSS on 1 GB

Every measurement runs in a fresh subprocess (so peak RSS is its own); the runs of the tools are
interleaved (one run of each, then the next round), so a busy moment on a shared machine hits
them alike. The table shows the median of `--repeats` runs (`--slow-repeats` for the two slow
baselines) and each tool's speed relative to vikhr with the same thread count.
  vikhr            JSONL -> .bin/.idx (tools/preprocess_data.py)
  megatron-style   json.loads + HF `tokenizers` in a multiprocessing.Pool (imap, chunksize 32), the
                   main process writing with megatron-core's IndexedDatasetBuilder -- what
                   Megatron-LM's tools/preprocess_data.py does
  gigatoken        gigatoken.Tokenizer.from_sentencepiece(...).encode_files(JsonlFileSource) (ids in
                   memory, nothing written; RAYON_NUM_THREADS = threads)
  sentencepiece    SentencePieceProcessor.encode(texts, num_threads=threads) on texts already in
                   memory (no JSON, no writing)

A second table measures whole processes, as a user runs them: wall time from the start of the
process to its exit (interpreter start-up, imports and model loading included) and its peak RSS:
  vikhr data preprocess   the command line (`python -m vikhr data preprocess ... --append-eod`)
  gigatoken encode_files  a Python process that loads the .model and runs encode_files
(`--process-repeats 0` skips it.)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VIKHR_SHARED_DATA", REPO.parent / "shared" / "data"))
TOOLS = ("vikhr", "megatron-style", "gigatoken", "sentencepiece")
PROCESSES = ("vikhr data preprocess", "gigatoken encode_files")
_GIGATOKEN_PROCESS = """
import os, sys
os.environ["RAYON_NUM_THREADS"] = sys.argv[3]
import gigatoken
tok = gigatoken.Tokenizer.from_sentencepiece(sys.argv[1])
tok.encode_files(gigatoken.JsonlFileSource([sys.argv[2]]), parallel=int(sys.argv[3]) > 1)
"""


def build_corpus(path: Path, megabytes: int) -> tuple[int, int]:
    """Concatenate corpus/ru/*.jsonl.gz (cycling) into one plain JSONL of >= `megabytes` MB."""
    sources = sorted((SHARED / "corpus" / "ru").glob("*.jsonl.gz"))
    if not sources:
        raise SystemExit(f"no corpus in {SHARED}/corpus/ru")
    written = docs = 0
    with open(path, "wb") as out:
        while written < megabytes * 1_000_000:
            for src in sources:
                with gzip.open(src, "rb") as f:
                    for line in f:
                        out.write(line)
                        written += len(line)
                        docs += 1
                if written >= megabytes * 1_000_000:
                    break
    return written, docs


def _texts(corpus: Path) -> list[str]:
    with open(corpus, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def _megatron_encode(line: str) -> list[int]:
    text = json.loads(line)["text"]
    ids = _HF.encode(text, add_special_tokens=False).ids if text else []
    return [*ids, 2] if ids else ids


def _megatron_init(tokenizer_json: str) -> None:
    global _HF
    import tokenizers

    _HF = tokenizers.Tokenizer.from_str(tokenizer_json)


def run_one(tool: str, corpus: Path, model: Path, threads: int, out_dir: Path) -> dict:
    """One measurement, in this (fresh) process: seconds, documents, tokens."""
    start = time.perf_counter()
    if tool == "vikhr":
        from vikhr.data import preprocess

        s = preprocess([corpus], out_dir / "vikhr", model, append_eod=True, workers=threads)
        docs, tokens = s.documents, s.tokens
    elif tool == "megatron-style":
        import multiprocessing

        from gigatoken._load.sentencepiece import sentencepiece_to_tokenizer_json
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

        tj = sentencepiece_to_tokenizer_json(model.read_bytes())
        tj = tj if isinstance(tj, str) else tj.decode()
        builder = IndexedDatasetBuilder(str(out_dir / "meg.bin"), dtype=DType.optimal_dtype(32000))
        docs = tokens = 0
        with (
            open(corpus, encoding="utf-8") as f,
            multiprocessing.Pool(threads, _megatron_init, (tj,)) as pool,
        ):
            for ids in pool.imap(_megatron_encode, f, chunksize=32):
                builder.add_document(ids, [len(ids)] if ids else [])
                docs += 1
                tokens += len(ids)
        builder.finalize(str(out_dir / "meg.idx"))
    elif tool == "gigatoken":
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        import gigatoken

        tok = gigatoken.Tokenizer.from_sentencepiece(model)
        start = time.perf_counter()  # loading converts the model; time the encoding
        result = tok.encode_files(gigatoken.JsonlFileSource([str(corpus)]), parallel=threads > 1)
        docs = len(result)
        tokens = int(sum(len(r) for r in result)) + docs  # + EOD, as the others count it
    elif tool == "sentencepiece":
        import sentencepiece

        texts = _texts(corpus)
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        start = time.perf_counter()
        docs = tokens = 0
        for i in range(0, len(texts), 256):
            for ids in sp.encode(texts[i : i + 256], num_threads=threads):
                docs += 1
                tokens += len(ids) + bool(ids)
    else:
        raise SystemExit(f"unknown tool {tool}")
    seconds = time.perf_counter() - start
    rss_kb = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return {"seconds": seconds, "documents": docs, "tokens": tokens, "rss_mib": rss_kb / 1024}


def process_command(process: str, corpus: Path, model: Path, threads: int, work: Path) -> list[str]:
    if process == "vikhr data preprocess":
        return [
            sys.executable, "-m", "vikhr", "data", "preprocess", "--input", str(corpus),
            "--output-prefix", str(work / "cli"), "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", str(model), "--append-eod", "--workers", str(threads), "--no-progress",
        ]  # fmt: skip
    return [sys.executable, "-c", _GIGATOKEN_PROCESS, str(model), str(corpus), str(threads)]


def run_process(command: list[str]) -> dict:
    """Run `command` as this (fresh) process's only child: wall seconds and its peak RSS."""
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else "failed"}
    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "rss_mib": rss_kb / 1024}


def measure_process(process: str, corpus: Path, model: Path, threads: int, work: Path) -> dict:
    command = process_command(process, corpus, model, threads, work)
    proc = subprocess.run(
        [sys.executable, __file__, "--run-process", json.dumps(command)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {"error": "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def process_table(
    corpus: Path, nbytes: int, model: Path, threads_list: list[int], repeats: int, work: Path
) -> None:
    """Rows of the whole-process table (interleaved runs, median wall time, max peak RSS)."""
    print(
        "\n| process | threads | runs | wall s (median) | wall range s | MB/s incl. start-up | peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for threads in threads_list:
        runs: dict[str, list[dict]] = {p: [] for p in PROCESSES}
        for _ in range(repeats):
            for process in PROCESSES:
                runs[process].append(measure_process(process, corpus, model, threads, work))
        for process in PROCESSES:
            ok = [r for r in runs[process] if "error" not in r]
            if not ok:
                print(f"| {process} | {threads} | | failed: {runs[process][0]['error']} | | | |")
                continue
            sec = statistics.median(r["seconds"] for r in ok)
            spread = f"{min(r['seconds'] for r in ok):.2f}-{max(r['seconds'] for r in ok):.2f}"
            rss = max(r["rss_mib"] for r in ok)
            print(
                f"| {process} | {threads} | {len(ok)} | {sec:.2f} | {spread} | {nbytes / 1e6 / sec:.1f} "
                f"| {rss:.0f} |"
            )


def measure(tool: str, corpus: Path, model: Path, threads: int, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--one", tool, "--corpus", str(corpus), "--model", str(model)]
    cmd += ["--threads", str(threads), "--work", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_tool_table(rows: list[tuple[str, int, dict | str]]) -> None:
    header = (
        "| tool | threads | runs | MB/s | MB/s range | docs/s | tokens/s | peak RSS MiB "
        "| vikhr speed-up | tokens |"
    )
    print("\n" + header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tool, threads, row in rows:
        if isinstance(row, str):
            print(f"| {tool} | {threads} | | failed: {row} | | | | | | |")
            continue
        print(
            f"| {tool} | {threads} | {row['n']} | {row['mb_s']:.1f} | {row['range']} | "
            f"{row['docs_s']:,.0f} | {row['tok_s']:,.0f} | {row['rss']:.0f} | {row['vs']} | "
            f"{row['tokens']:,} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=100, help="corpus size in MB (uncompressed JSONL)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--slow-repeats",
        type=int,
        default=None,
        help="runs of megatron-style and sentencepiece (default: --repeats)",
    )
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    ap.add_argument(
        "--process-repeats", type=int, default=None, help="runs of each whole process (default: --repeats)"
    )
    ap.add_argument("--model", type=Path, default=SHARED / "tokenizers" / "mistral-7b-v0.1.model")
    ap.add_argument("--one", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--run-process", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_process:
        print(json.dumps(run_process(json.loads(args.run_process))))
        return 0
    if args.one:
        print(json.dumps(run_one(args.one, args.corpus, args.model, args.threads[0], args.work)))
        return 0

    with tempfile.TemporaryDirectory(prefix="vikhr-bench-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus.jsonl"
        nbytes, ndocs = build_corpus(corpus, args.mb)
        print(
            f"corpus: {nbytes / 1e6:.1f} MB, {ndocs:,} documents (corpus/ru, cycled); model {args.model.name}"
        )
        slow = args.repeats if args.slow_repeats is None else args.slow_repeats
        rows = []
        for threads in args.threads:
            runs: dict[str, list[dict]] = {tool: [] for tool in args.tools}
            for round_ in range(max(args.repeats, slow)):
                for tool in args.tools:
                    if round_ < (slow if tool in ("megatron-style", "sentencepiece") else args.repeats):
                        runs[tool].append(measure(tool, corpus, args.model, threads, work))
            base = None
            for tool in args.tools:
                ok = [r for r in runs[tool] if "error" not in r]
                if not ok:
                    rows.append((tool, threads, runs[tool][0]["error"]))
                    continue
                sec = statistics.median(r["seconds"] for r in ok)
                row = {
                    "mb_s": nbytes / 1e6 / sec,
                    "docs_s": ok[0]["documents"] / sec,
                    "tok_s": ok[0]["tokens"] / sec,
                    "rss": max(r["rss_mib"] for r in ok),
                    "tokens": ok[0]["tokens"],
                    "n": len(ok),
                    "range": f"{nbytes / 1e6 / max(r['seconds'] for r in ok):.1f}-"
                    f"{nbytes / 1e6 / min(r['seconds'] for r in ok):.1f}",
                }
                if tool == "vikhr":
                    base = row["mb_s"]
                row["vs"] = f"{base / row['mb_s']:.2f}x" if base else "-"
                rows.append((tool, threads, row))
        print_tool_table(rows)
        process_repeats = args.repeats if args.process_repeats is None else args.process_repeats
        if process_repeats > 0:
            process_table(corpus, nbytes, args.model, args.threads, process_repeats, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
