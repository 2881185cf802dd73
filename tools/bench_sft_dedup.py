"""Near-duplicate detection of `vikhr sft build` against datasketch, and the whole build, on synthetic chats.

    python tools/bench_sft_dedup.py                  # 100k chats, 3 runs of each dedup, 1 build
    python tools/bench_sft_dedup.py --chats 20000 --runs 1

Synthetic chats: Russian-looking prompts of 8–60 words and answers of 20–200 words drawn from a
Zipf vocabulary of 20,000 words; 5 % are exact copies of an earlier chat (case and punctuation
changed), 10 % near copies of an earlier prompt (one word replaced). Each measurement runs in a
process of its own; peak RSS is that whole process (Python, numpy, the tokenizer included).

* vikhr: `vikhr.sft.dedup.MinHasher.band_keys` on batches of 512 prompts, then `near_duplicates`
  (128 permutations, threshold 0.8).
* datasketch: `MinHash(num_perm=128).update_batch` of the same word 3-grams per prompt, then
  `MinHashLSH(threshold=0.8).query` + `insert` per prompt (keep the first of each bucket).
* build: `vikhr sft build` of one source with the chats in a JSONL file (Mistral tokenizer: every
  chat is encoded with the template for its length), exact + near dedup, report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_cli import BenchParser, positive

REPO = Path(__file__).resolve().parent.parent
LETTERS = "абвгдеёжзийклмнопрстуфхцчшщыэюя"


def make_chats(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 10, size=20_000)
    vocab = ["".join(rng.choice(list(LETTERS), size=k)) for k in lengths]
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()

    def words(k: int) -> list[str]:
        return [vocab[i] for i in rng.choice(len(vocab), size=k, p=weights)]

    prompts: list[str] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            kind = rng.random()
            if i > 10 and kind < 0.05:
                prompt = prompts[rng.integers(0, len(prompts))].upper() + "!"
                answer = "Ответ."
            elif i > 10 and kind < 0.15:
                base = prompts[rng.integers(0, len(prompts))].split()
                base[rng.integers(0, len(base))] = vocab[rng.integers(0, len(vocab))]
                prompt, answer = " ".join(base), " ".join(words(int(rng.integers(20, 200))))
            else:
                prompt, answer = (
                    " ".join(words(int(rng.integers(8, 60)))),
                    " ".join(words(int(rng.integers(20, 200)))),
                )
            prompts.append(prompt)
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def _prompts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["messages"][0]["content"] for line in f]


def run_vikhr(path: Path) -> int:
    from vikhr.sft.dedup import MinHasher, near_duplicates

    prompts = _prompts(path)
    start = time.perf_counter()
    hasher = MinHasher(num_perm=128, threshold=0.8, seed=1)
    keys = np.concatenate([hasher.band_keys(prompts[i : i + 512]) for i in range(0, len(prompts), 512)])
    matched = near_duplicates(keys, np.arange(len(prompts), dtype=np.uint64))
    _report(len(prompts), time.perf_counter() - start, int((matched >= 0).sum()))
    return 0


def run_datasketch(path: Path) -> int:
    from datasketch import MinHash, MinHashLSH

    from vikhr.sft.dedup import normalise

    prompts = _prompts(path)
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    duplicates = 0
    for i, prompt in enumerate(prompts):
        w = normalise(prompt).split()
        shingles = [" ".join(w[j : j + 3]).encode() for j in range(max(1, len(w) - 2))]
        m = MinHash(num_perm=128, seed=1)
        m.update_batch(shingles)
        if lsh.query(m):
            duplicates += 1
        else:
            lsh.insert(str(i), m)
    _report(len(prompts), time.perf_counter() - start, duplicates)
    return 0


def run_build(path: Path) -> int:
    import yaml

    from vikhr.sft.build import build

    config = path.with_suffix(".yaml")
    config.write_text(
        yaml.safe_dump(
            {
                "output": str(path.with_name("out.jsonl")),
                "tokenizer": str(REPO / "vikhr" / "assets" / "tokenizers" / "mistral-7b-v0.1.model"),
                "limits": {"min_tokens": 1, "max_tokens": 4096},
                "sources": [{"name": "synthetic", "path": str(path)}],
            }
        ),
        encoding="utf-8",
    )
    start = time.perf_counter()
    report = build(config)
    (source,) = report["sources"]
    dropped = source["dropped"].get("duplicate", 0) + source["dropped"].get("near_duplicate", 0)
    _report(source["chats"], time.perf_counter() - start, dropped)
    return 0


def _report(n: int, seconds: float, duplicates: int) -> None:
    # VmHWM: this process's own peak (its ru_maxrss would start from the parent's peak: vfork/exec).
    with open("/proc/self/status", encoding="ascii") as f:
        peak_mib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"chats": n, "seconds": seconds, "duplicates": duplicates, "peak_mib": peak_mib}))


def measure(kind: str, path: Path, runs: int) -> dict[str, float]:
    results = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--data", str(path)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        )
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    seconds = statistics.median(r["seconds"] for r in results)
    return {
        "chats": results[0]["chats"],
        "seconds": seconds,
        "chats_per_s": results[0]["chats"] / seconds,
        "duplicates": results[0]["duplicates"],
        "peak_mib": max(r["peak_mib"] for r in results),
    }


def main() -> int:
    parser = BenchParser(description=__doc__)
    parser.add_argument("--chats", type=positive(int), default=100_000)
    parser.add_argument("--runs", type=positive(int), default=3)
    parser.add_argument("--build-runs", type=positive(int), default=1, help="runs of the whole build (slow)")
    parser.add_argument("--child", choices=["vikhr", "datasketch", "build"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], choices=["vikhr", "datasketch", "build"])
    args = parser.parse_args()
    if {"vikhr", "datasketch", "build"} <= set(args.skip):
        parser.error("argument --skip: every measurement skipped, nothing to time (leave one out of --skip)")
    if args.child:
        return {"vikhr": run_vikhr, "datasketch": run_datasketch, "build": run_build}[args.child](args.data)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chats.jsonl"
        make_chats(data, args.chats)
        runs = {"vikhr": args.runs, "datasketch": args.runs, "build": args.build_runs}
        rows = {k: measure(k, data, n) for k, n in runs.items() if k not in args.skip}
    base = rows.get("datasketch")
    print(
        f"{args.chats:,} synthetic chats, median of {args.runs} run(s) ({args.build_runs} of the build), "
        "one process each"
    )
    print(f"{'':<28}{'seconds':>9}{'chats/s':>11}{'vs datasketch':>15}{'dups found':>12}{'peak RSS MiB':>14}")
    names = {
        "vikhr": "near dedup: vikhr (numpy)",
        "datasketch": "near dedup: datasketch",
        "build": "vikhr sft build (all)",
    }
    for kind, r in rows.items():
        # The build does more than dedup: no ratio for it.
        ratio = f"{r['chats_per_s'] / base['chats_per_s']:.1f}x" if base and kind != "build" else "—"
        print(
            f"{names[kind]:<28}{r['seconds']:>9.2f}{r['chats_per_s']:>11,.0f}{ratio:>15}{r['duplicates']:>12,}"
            f"{r['peak_mib']:>14,.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
