#!/usr/bin/env python3
"""Benchmark corpus pre-tokenization: vikhr vs a Megatron-style Python pipeline, gigatoken and raw
sentencepiece, on the shared Russian corpus with the Mistral v0.1 tokenizer.

    python tools/bench_preprocess.py --mb 100 --threads 1 2 --repeats 3 --slow-repeats 1
    python tools/bench_preprocess.py --mb 1000 --tools vikhr --repeats 1   # peak RSS on 1 GB

Before anything is timed, every tool encodes the first `--check-mb` MB of the corpus (whole
documents) and its ids must equal vikhr's (one sha256 of each document's ids, EOD left out; vikhr's
and the Megatron-style datasets are read back): a difference ends the script with status 1. So
does a tool whose runs count different tokens, or one counting other tokens than vikhr.

Every measurement runs in a fresh subprocess (so peak RSS is its own); the runs of the tools are
interleaved (one run of each, then the next round), so a busy moment on a shared machine hits
them alike. The table shows the median of `--repeats` runs (`--slow-repeats` for the two slow
baselines) and each tool's speed relative to vikhr with the same thread count. Every tool's clock
starts at the same point, after its imports (megatron-core's among them), and includes loading its
tokenizer (gigatoken's and the Megatron-style conversion of the .model included); the table says so.
  vikhr            JSONL -> .bin/.idx (tools/preprocess_data.py)
  megatron-style   json.loads + HF `tokenizers` in a multiprocessing.Pool (imap, chunksize 32), the
                   main process writing with megatron-core's IndexedDatasetBuilder -- what
                   Megatron-LM's tools/preprocess_data.py does. Peak RSS: the main process's plus
                   each worker's (pages shared after fork counted in each: an upper bound)
  gigatoken        gigatoken.Tokenizer.from_sentencepiece(...).encode_files(JsonlFileSource) (ids in
                   memory, nothing written; RAYON_NUM_THREADS = threads)
  sentencepiece    SentencePieceProcessor.encode(texts, num_threads=threads) on texts already in
                   memory (no JSON, no writing; the texts are read before the clock)

A second table measures whole processes, as a user runs them: wall time from the start of the
process to its exit (interpreter start-up, imports and model loading included) and its peak RSS:
  vikhr data preprocess   the command line (`python -m vikhr data preprocess ... --append-eod`)
  gigatoken encode_files  a Python process that loads the .model and runs encode_files
(`--process-repeats 0` skips it.)

Byte-level BPE mode (`--family byte-bpe`: Mistral's tekken vocabulary converted to tokenizer.json
with transformers' MistralConverter; or `--tokenizer-json PATH`), same corpus, these tools:
  vikhr            JSONL -> .bin/.idx with --tokenizer-type HuggingFaceTokenizer (vikhr's own
                   byte-level encoder), the whole `preprocess()` call: loading the file included
  tokenizers       HF `tokenizers` Tokenizer.from_file(...).encode_batch(texts) on texts already in
                   memory (RAYON_NUM_THREADS = threads; loading timed, as vikhr's)
  tiktoken         tiktoken.Encoding built from the file's byte vocabulary (rank = id) and split
                   pattern, encode_ordinary_batch(texts, num_threads=threads); building it timed.
                   Its ids equal the file's only for tiktoken-derived vocabularies (tekken, Llama-3)
  gigatoken        gigatoken.Tokenizer.from_json(...).encode_files(JsonlFileSource) (loading timed)
After each thread count the table names the fastest peer and vikhr's speed relative to it.

    python tools/bench_preprocess.py --family byte-bpe --mb 50 --threads 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from bench_cli import BenchParser, check_input, positive

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VIKHR_SHARED_DATA", REPO.parent / "shared" / "data"))
TOOLS = ("vikhr", "megatron-style", "gigatoken", "sentencepiece")
BYTE_TOOLS = ("vikhr", "tokenizers", "tiktoken", "gigatoken")
PROCESSES = ("vikhr data preprocess", "gigatoken encode_files")
_GIGATOKEN_PROCESS = """
import os, sys
os.environ["RAYON_NUM_THREADS"] = sys.argv[3]
import gigatoken
path = sys.argv[1]
if path.endswith(".json"):
    tok = gigatoken.Tokenizer.from_json(open(path, "rb").read())
else:
    tok = gigatoken.Tokenizer.from_sentencepiece(path)
tok.encode_files(gigatoken.JsonlFileSource([sys.argv[2]]), parallel=int(sys.argv[3]) > 1)
"""


def build_corpus(path: Path, megabytes: int) -> tuple[int, int]:
    """corpus/ru/*.jsonl.gz decompressed in name order (cycling) into one plain JSONL of about
    `megabytes` MB: whole lines, each ending in a newline (a file's last line may lack one), the last
    one the first to reach the size; the same bytes on every run. Returns (bytes, documents)."""
    sources = sorted((SHARED / "corpus" / "ru").glob("*.jsonl.gz"))  # some: parse_args checked
    written = docs = 0
    limit = megabytes * 1_000_000
    with open(path, "wb") as out:
        while True:
            for src in sources:
                with gzip.open(src, "rb") as f:
                    for line in f:
                        if not line.endswith(b"\n"):  # else the next file's first document joins it
                            line += b"\n"
                        out.write(line)
                        written += len(line)
                        docs += 1
                        if written >= limit:
                            return written, docs
            if not written:  # cycling empty files would never reach the size
                raise SystemExit(f"bench_preprocess: {SHARED}/corpus/ru/*.jsonl.gz hold no lines")


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


def build_tekken_json(path: Path) -> Path:
    """Mistral's tekken vocabulary (mistral-common's tekken_240911.json) as a tokenizer.json."""
    import mistral_common
    from transformers.integrations.mistral.tokenizer import MistralConverter

    tekken = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    MistralConverter(str(tekken)).converted().save(str(path))
    return path


def _tiktoken_encoding(tokenizer_json: Path):  # -> tiktoken.Encoding
    """A tiktoken Encoding with the byte vocabulary (rank = id) and split pattern of a byte-level
    tokenizer.json."""
    import tiktoken
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {}
    for piece, i in spec["model"]["vocab"].items():
        if all(c in byte_of for c in piece):
            ranks[bytes(byte_of[c] for c in piece)] = i
    pre = spec["pre_tokenizer"]
    splits = [p for p in pre.get("pretokenizers", [pre]) if p["type"] == "Split"]
    gpt2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    pattern = splits[0]["pattern"]["Regex"] if splits else gpt2
    return tiktoken.Encoding("bench", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def run_byte_level_peer(tool: str, corpus: Path, tokenizer_json: Path, threads: int) -> dict:
    """One measurement of a peer byte-level encoder (clock: after its imports and reading the texts
    into memory, tokenizer load included): seconds, documents, tokens (ids + one EOD per non-empty
    document, as vikhr writes them)."""
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["RAYON_RS_NUM_CPUS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    if tool == "gigatoken":
        import gigatoken

        start = time.perf_counter()
        tok = gigatoken.Tokenizer.from_json(tokenizer_json.read_bytes())
        result = tok.encode_files(gigatoken.JsonlFileSource([str(corpus)]), parallel=threads > 1)
        lengths = [len(r) for r in result]
    else:
        texts = _texts(corpus)
        if tool == "tokenizers":
            import tokenizers

            start = time.perf_counter()
            tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
            lengths = [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=True)]
        elif tool == "tiktoken":
            import tiktoken  # noqa: F401  (imported before the clock, like the other tools)

            start = time.perf_counter()
            enc = _tiktoken_encoding(tokenizer_json)
            lengths = [len(ids) for ids in enc.encode_ordinary_batch(texts, num_threads=threads)]
        else:
            raise SystemExit(f"unknown tool {tool}")
    seconds = time.perf_counter() - start
    tokens = sum(n + bool(n) for n in lengths)
    return {"seconds": seconds, "documents": len(lengths), "tokens": tokens}


# Where every tool's clock starts: the same point for all, printed with the table.
CLOCK = (
    "clock: from after the tool's imports to the end of its work, its tokenizer load (and conversion) "
    "included; sentencepiece, tokenizers and tiktoken encode texts read into memory before the clock"
)


def run_one(tool: str, corpus: Path, model: Path, threads: int, out_dir: Path) -> dict:
    """One measurement, in this (fresh) process: seconds (clock: CLOCK), documents, tokens, peak RSS."""
    if model.suffix != ".json" and tool in ("vikhr", "megatron-style"):
        return _run_writer(tool, corpus, model, threads, out_dir)
    if tool == "vikhr":
        from vikhr.data import preprocess

        start = time.perf_counter()
        s = preprocess(
            [corpus], out_dir / "vikhr", model, tokenizer_type="HuggingFaceTokenizer",
            append_eod=True, workers=threads,
        )  # fmt: skip
        result = {"seconds": time.perf_counter() - start, "documents": s.documents, "tokens": s.tokens}
        return {**result, "rss_mib": _peak_rss_mib()}
    if model.suffix == ".json":
        return {**run_byte_level_peer(tool, corpus, model, threads), "rss_mib": _peak_rss_mib()}
    if tool == "gigatoken":
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        import gigatoken

        start = time.perf_counter()
        tok = gigatoken.Tokenizer.from_sentencepiece(model)  # converts the model
        result = tok.encode_files(gigatoken.JsonlFileSource([str(corpus)]), parallel=threads > 1)
        docs = len(result)
        tokens = int(sum(len(r) for r in result)) + docs  # + EOD, as the others count it
    elif tool == "sentencepiece":
        import sentencepiece

        texts = _texts(corpus)
        start = time.perf_counter()
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        docs = tokens = 0
        for i in range(0, len(texts), 256):
            for ids in sp.encode(texts[i : i + 256], num_threads=threads):
                docs += 1
                tokens += len(ids) + bool(ids)
    else:
        raise SystemExit(f"unknown tool {tool}")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "documents": docs, "tokens": tokens, "rss_mib": _peak_rss_mib()}


def _run_writer(tool: str, corpus: Path, model: Path, threads: int, out_dir: Path) -> dict:
    """vikhr or the Megatron-style pipeline on a SentencePiece model, writing `.bin/.idx` under
    `out_dir` (vikhr_text_document, meg). The Megatron-style RSS is the main process's peak plus
    the sum of its pool workers' peaks (pages shared after fork counted in each: an upper bound)."""
    if tool == "vikhr":
        from vikhr.data import preprocess

        start = time.perf_counter()
        s = preprocess([corpus], out_dir / "vikhr", model, append_eod=True, workers=threads)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "documents": s.documents, "tokens": s.tokens, "rss_mib": _peak_rss_mib()}
    import multiprocessing

    from gigatoken._load.sentencepiece import sentencepiece_to_tokenizer_json
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    start = time.perf_counter()
    tj = sentencepiece_to_tokenizer_json(model.read_bytes())
    tj = tj if isinstance(tj, str) else tj.decode()
    builder = IndexedDatasetBuilder(str(out_dir / "meg.bin"), dtype=DType.optimal_dtype(32000))
    docs = tokens = 0
    with open(corpus, encoding="utf-8") as f, multiprocessing.Pool(threads, _megatron_init, (tj,)) as pool:
        for ids in pool.imap(_megatron_encode, f, chunksize=32):
            builder.add_document(ids, [len(ids)] if ids else [])
            docs += 1
            tokens += len(ids)
        workers_kib = sum(_peak_rss_kib(p.pid) for p in pool._pool)  # before the pool's exit ends them
    builder.finalize(str(out_dir / "meg.idx"))
    seconds = time.perf_counter() - start
    rss = _peak_rss_kib(os.getpid()) + workers_kib
    return {"seconds": seconds, "documents": docs, "tokens": tokens, "rss_mib": rss / 1024}


def _peak_rss_kib(pid: int) -> int:
    """The peak RSS (VmHWM) of a live process, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM: its ru_maxrss would start from its parent's peak, which
    vfork/exec hands on, e.g. the transformers import of --family byte-bpe)."""
    return _peak_rss_kib(os.getpid()) / 1024


def _digest(documents: Iterable[Sequence[int]]) -> dict:
    """One sha256 of the documents' ids (each document's length, then its ids, as int64), with the
    number of documents and ids."""
    import numpy as np

    h, docs, tokens = hashlib.sha256(), 0, 0
    for ids in documents:
        a = np.asarray(ids, dtype=np.int64)
        h.update(np.int64(len(a)).tobytes() + a.tobytes())
        docs, tokens = docs + 1, tokens + len(a)
    return {"sha256": h.hexdigest(), "documents": docs, "tokens": tokens}


def _written_documents(prefix: Path) -> Iterator[list[int]]:
    """The documents of a written dataset, each without the EOD the writer appended."""
    from vikhr.data.indexed import IndexedReader

    reader = IndexedReader(prefix)
    for i in range(len(reader)):
        ids = reader.document(i)
        yield ids[:-1] if ids else ids


def sample_ids(tool: str, corpus: Path, model: Path, threads: int, out_dir: Path) -> dict:
    """`_digest` of the ids `tool` gives each document of `corpus` (EOD left out). vikhr and the
    Megatron-style pipeline run their timed code and their datasets are read back; the others run
    the calls they are timed with, keeping the ids."""
    if tool == "vikhr" or (tool == "megatron-style" and model.suffix != ".json"):
        run_one(tool, corpus, model, threads, out_dir)
        return _digest(_written_documents(out_dir / ("vikhr_text_document" if tool == "vikhr" else "meg")))
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    if tool == "gigatoken":
        import gigatoken

        if model.suffix == ".json":
            tok = gigatoken.Tokenizer.from_json(model.read_bytes())
        else:
            tok = gigatoken.Tokenizer.from_sentencepiece(model)
        return _digest(tok.encode_files(gigatoken.JsonlFileSource([str(corpus)]), parallel=threads > 1))
    texts = _texts(corpus)
    if tool == "sentencepiece" and model.suffix != ".json":
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        return _digest(sp.encode(texts, num_threads=threads))
    if tool == "tokenizers" and model.suffix == ".json":
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(model))
        return _digest(e.ids for e in tok.encode_batch(texts, add_special_tokens=True))
    if tool == "tiktoken" and model.suffix == ".json":
        enc = _tiktoken_encoding(model)
        return _digest(enc.encode_ordinary_batch(texts, num_threads=threads))
    raise SystemExit(f"no {tool} for {model.name}")


def check_ids(tools: list[str], corpus: Path, megabytes: int, model: Path, threads: int, work: Path) -> None:
    """Before anything is timed: every tool's ids on the first `megabytes` MB of the corpus (whole
    documents) equal vikhr's, else exit 1."""
    sample = work / "sample.jsonl"
    with open(corpus, "rb") as src, open(sample, "wb") as out:
        for line in src:
            out.write(line)
            if out.tell() >= megabytes * 1_000_000:
                break
    results = {}
    for tool in ["vikhr", *(t for t in tools if t != "vikhr")]:
        out_dir = work / "check" / tool
        out_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--ids", tool, "--corpus", str(sample), "--model", str(model)]
        proc = subprocess.run(
            [*cmd, "--threads", str(threads), "--work", str(out_dir)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if proc.returncode != 0:
            raise SystemExit(f"bench_preprocess: {tool} failed on the sample: {proc.stderr.strip()[-500:]}")
        results[tool] = json.loads(proc.stdout.strip().splitlines()[-1])
    want = results["vikhr"]
    lines = [
        f"  {t}: {r['documents']:,} documents, {r['tokens']:,} ids, sha256 {r['sha256'][:16]}"
        for t, r in results.items()
    ]
    print(
        f"ids on a {sample.stat().st_size / 1e6:.1f} MB sample ({threads} thread(s)), EOD left out:\n"
        + "\n".join(lines)
    )
    differ = [t for t, r in results.items() if r != want]
    if differ:
        raise SystemExit(f"bench_preprocess: ids differ from vikhr's for {', '.join(differ)}: nothing timed")


def process_command(process: str, corpus: Path, model: Path, threads: int, work: Path) -> list[str]:
    if process == "vikhr data preprocess":
        kind = "HuggingFaceTokenizer" if model.suffix == ".json" else "SentencePieceTokenizer"
        return [
            sys.executable, "-m", "vikhr", "data", "preprocess", "--input", str(corpus),
            "--output-prefix", str(work / "cli"), "--tokenizer-type", kind,
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


# The two tables' columns (docs/benchmarks.md shows the same headers; a test compares them).
TOOL_COLUMNS = (
    "tool",
    "threads",
    "runs",
    "MB/s",
    "MB/s range",
    "docs/s",
    "tokens/s",
    "peak RSS MiB",
    "vikhr speed-up",
    "tokens",
)
PROCESS_COLUMNS = (
    "process",
    "threads",
    "runs",
    "wall s (median)",
    "wall range s",
    "MB/s incl. start-up",
    "peak RSS MiB",
)


def process_table(
    processes: list[str],
    corpus: Path,
    nbytes: int,
    model: Path,
    threads_list: list[int],
    repeats: int,
    work: Path,
) -> None:
    """Rows of the whole-process table of `processes` (interleaved runs, median wall time, max
    peak RSS)."""
    print("\n| " + " | ".join(PROCESS_COLUMNS) + " |")
    print("|---|" + "---:|" * (len(PROCESS_COLUMNS) - 1))
    ratios = []
    for threads in threads_list:
        runs: dict[str, list[dict]] = {p: [] for p in processes}
        for _ in range(repeats):
            for process in processes:
                runs[process].append(measure_process(process, corpus, model, threads, work))
        medians = {}
        for process in processes:
            ok = [r for r in runs[process] if "error" not in r]
            if not ok:
                print(f"| {process} | {threads} | | failed: {runs[process][0]['error']} | | | |")
                continue
            sec = medians[process] = statistics.median(r["seconds"] for r in ok)
            spread = f"{min(r['seconds'] for r in ok):.2f}-{max(r['seconds'] for r in ok):.2f}"
            rss = max(r["rss_mib"] for r in ok)
            print(
                f"| {process} | {threads} | {len(ok)} | {sec:.2f} | {spread} | {nbytes / 1e6 / sec:.1f} "
                f"| {rss:.0f} |"
            )
        if len(medians) == len(PROCESSES):
            vikhr, peer = (medians[p] for p in PROCESSES)
            speed = f"vikhr at {peer / vikhr:.2f}x gigatoken's speed"
            ratios.append(f"{threads} thread(s), whole processes: {speed}")
    print("\n" + "\n".join(ratios))


def measure(tool: str, corpus: Path, model: Path, threads: int, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--one", tool, "--corpus", str(corpus), "--model", str(model)]
    cmd += ["--threads", str(threads), "--work", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_tool_table(rows: list[tuple[str, int, dict | str]]) -> None:
    print(f"\n{CLOCK}.")
    print(
        "peak RSS: the measuring process's own; megatron-style: its main process's peak plus each pool "
        "worker's, summed (pages shared after fork counted in each: an upper bound)."
    )
    print("| " + " | ".join(TOOL_COLUMNS) + " |")
    print("|---|" + "---:|" * (len(TOOL_COLUMNS) - 1))
    for tool, threads, row in rows:
        if isinstance(row, str):
            print(f"| {tool} | {threads} | | failed: {row} | | | | | | |")
            continue
        print(
            f"| {tool} | {threads} | {row['n']} | {row['mb_s']:.1f} | {row['range']} | "
            f"{row['docs_s']:,.0f} | {row['tok_s']:,.0f} | {row['rss']:.0f} | {row['vs']} | "
            f"{row['tokens']:,} |"
        )


def non_negative(value: str) -> int:
    """An argparse type: an integer from 0 (0 runs of the whole processes leaves their table out)."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer from 0, got {value!r}")
    return int(value)


def parse_args() -> argparse.Namespace:
    ap = BenchParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--mb",
        type=positive(int),
        default=100,
        help="corpus size in MB (uncompressed JSONL, whole documents: the last reaches the size)",
    )
    ap.add_argument("--threads", type=positive(int), nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=positive(int), default=3)
    ap.add_argument(
        "--slow-repeats",
        type=positive(int),
        default=None,
        help="runs of megatron-style and sentencepiece (default: --repeats)",
    )
    ap.add_argument(
        "--tools", nargs="+", default=None, choices=sorted({*TOOLS, *BYTE_TOOLS}), help="default: all"
    )
    ap.add_argument(
        "--process-repeats",
        type=non_negative,
        default=None,
        help="runs of each whole process (default: --repeats; 0: none)",
    )
    ap.add_argument("--model", type=Path, default=SHARED / "tokenizers" / "mistral-7b-v0.1.model")
    ap.add_argument(
        "--family",
        choices=["sentencepiece", "byte-bpe"],
        default="sentencepiece",
        help="byte-bpe: benchmark the byte-level encoders on Mistral's tekken tokenizer.json",
    )
    ap.add_argument("--tokenizer-json", type=Path, help="benchmark the byte-level encoders on this file")
    ap.add_argument(
        "--check-mb",
        type=positive(int),
        default=2,
        help="sample on which every tool's ids are checked first (MB)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--run-process", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one or args.ids or args.run_process:
        return args
    if not any((SHARED / "corpus" / "ru").glob("*.jsonl.gz")):
        # was a bare "no corpus" line, exit status 1, after the tekken conversion
        ap.error(f"no corpus in {SHARED}/corpus/ru (set VIKHR_SHARED_DATA to the shared data directory)")
    byte_level = args.family == "byte-bpe" or args.tokenizer_json is not None
    if byte_level and args.tokenizer_json:
        check_input(ap, "--tokenizer-json", args.tokenizer_json)
    elif not byte_level:
        check_input(ap, "--model", args.model)
    family = BYTE_TOOLS if byte_level else TOOLS
    # Another family's tool failed as "unknown tool" after the corpus was built.
    foreign = [t for t in args.tools or () if t not in family]
    if foreign:
        ap.error(
            f"argument --tools: {', '.join(foreign)} not in the "
            f"{'byte-bpe' if byte_level else 'sentencepiece'} benchmark (choose from {', '.join(family)})"
        )
    # A baseline that is not installed would only show as a "failed" row after the corpus is built.
    tools = args.tools or family
    missing = [t for t in ("gigatoken", "tiktoken") if t in tools and importlib.util.find_spec(t) is None]
    if missing:
        install = "pip install -e '.[bench]' (or leave them out of --tools)"
        ap.error(f"{', '.join(missing)} not installed: {install}")
    return args


def tool_rows(runs: dict[str, list[dict]], nbytes: int, threads: int) -> list[tuple[str, int, dict | str]]:
    """The table rows of one thread count: medians, ranges, and each tool's speed relative to vikhr."""
    rows: list[tuple[str, int, dict | str]] = []
    base = None
    for tool, tool_runs in runs.items():
        ok = [r for r in tool_runs if "error" not in r]
        if not ok:
            rows.append((tool, threads, tool_runs[0]["error"]))
            continue
        counts = {(r["documents"], r["tokens"]) for r in ok}
        if len(counts) > 1:
            rows.append((tool, threads, f"runs disagree on (documents, tokens): {sorted(counts)}"))
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
    return rows


def token_count_problems(rows: list[tuple[str, int, dict | str]]) -> list[str]:
    """Rows whose runs disagreed, failed, or counted other tokens than vikhr with the same threads."""
    problems = [f"{t} ({n} thread(s)): {r}" for t, n, r in rows if isinstance(r, str)]
    vikhr = {n: r["tokens"] for t, n, r in rows if t == "vikhr" and isinstance(r, dict)}
    for tool, threads, row in rows:
        if isinstance(row, dict) and threads in vikhr and row["tokens"] != vikhr[threads]:
            problems.append(
                f"{tool} ({threads} thread(s)): {row['tokens']:,} tokens, vikhr {vikhr[threads]:,}"
            )
    return problems


def fastest_peer_line(rows: list[tuple[str, int, dict | str]], threads: int) -> str:
    """vikhr's speed relative to the fastest other tool with `threads` threads."""
    speeds = {t: r["mb_s"] for t, n, r in rows if n == threads and isinstance(r, dict)}
    peers = {t: v for t, v in speeds.items() if t != "vikhr"}
    if "vikhr" not in speeds or not peers:
        return f"{threads} thread(s): no comparison"
    best = max(peers, key=lambda t: peers[t])
    line = (
        f"{threads} thread(s): fastest peer {best} {peers[best]:.1f} MB/s; "
        f"vikhr {speeds['vikhr']:.1f} MB/s = {speeds['vikhr'] / peers[best]:.2f}x the fastest peer"
    )
    return line


def main() -> int:
    args = parse_args()
    if args.run_process:
        print(json.dumps(run_process(json.loads(args.run_process))))
        return 0
    if args.one:
        print(json.dumps(run_one(args.one, args.corpus, args.model, args.threads[0], args.work)))
        return 0
    if args.ids:
        print(json.dumps(sample_ids(args.ids, args.corpus, args.model, args.threads[0], args.work)))
        return 0

    byte_level = args.family == "byte-bpe" or args.tokenizer_json is not None
    tools = args.tools or list(BYTE_TOOLS if byte_level else TOOLS)
    with tempfile.TemporaryDirectory(prefix="vikhr-bench-") as tmp:
        work = Path(tmp)
        model = args.model
        if byte_level:
            model = args.tokenizer_json or build_tekken_json(work / "tekken.json")
        corpus = work / "corpus.jsonl"
        nbytes, ndocs = build_corpus(corpus, args.mb)
        print(f"corpus: {nbytes / 1e6:.1f} MB, {ndocs:,} documents (corpus/ru, cycled); model {model.name}")
        check_ids(tools, corpus, args.check_mb, model, max(args.threads), work)
        slow = args.repeats if args.slow_repeats is None else args.slow_repeats
        rows = []
        for threads in args.threads:
            runs: dict[str, list[dict]] = {tool: [] for tool in tools}
            for round_ in range(max(args.repeats, slow)):
                for tool in tools:
                    if round_ < (slow if tool in ("megatron-style", "sentencepiece") else args.repeats):
                        runs[tool].append(measure(tool, corpus, model, threads, work))
            rows += tool_rows(runs, nbytes, threads)
        print_tool_table(rows)
        print()
        for threads in args.threads:
            print(fastest_peer_line(rows, threads))
        problems = token_count_problems(rows)
        process_repeats = args.repeats if args.process_repeats is None else args.process_repeats
        processes = [p for p in PROCESSES if p.split()[0] in tools]  # each process runs one tool
        if process_repeats > 0 and processes:
            process_table(processes, corpus, nbytes, model, args.threads, process_repeats, work)
    if problems:
        print("bench_preprocess: token counts disagree: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
