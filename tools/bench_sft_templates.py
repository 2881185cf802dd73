"""`vikhr sft prepare` with vikhr's `llama3` template against `own` (the tokenizer's Jinja template).

    python tools/bench_sft_templates.py              # 2,000 chats, 3 runs each
    python tools/bench_sft_templates.py --chats 500 --runs 1 --workers 4

The chats: the rulm chats of ../shared/data/sft (or $VIKHR_SHARED_DATA/sft; the bundled seed chats
where absent), repeated to
`--chats`. The tokenizer: the demo's 8,000-token Llama-3-like byte-level BPE
(`vikhr.demo.llama3_like_tokenizer`, trained here on the bundled Russian sample, Llama-3's control
tokens), its tokenizer_config.json holding an official chat template (tests/data/chat_templates).
Each run is a whole `vikhr sft prepare` process (start-up, tokenizer load, writing the indexed
dataset); peak RSS is that process's, taken by a small wrapper process (a direct child's
ru_maxrss would start from this script's own peak), which also reads how many cores the rest of
the machine kept busy during the run (from /proc/stat, less the run's own CPU time).

* llama3: `--template llama3` (vikhr's segments, encoded run by run) with Meta-Llama-3-8B-Instruct's
  template beside it;
* own, same template: `--template own` on the same files: transformers renders each chat (3k+1
  renders for k answers, to tell answers from prompts) and the text is encoded once. Its ids and
  loss mask must equal llama3's (checked before timing, on a run of each: the text and mask
  .bin/.idx files are compared; a difference ends the script with status 1);
* own, Llama-3.1: `--template own` with Llama-3.1-8B-Instruct's template (a dated system header in
  every chat: more tokens);
* llama3 and own, Llama-3.1 again with `--workers 2` (`--workers` sets the count; 1 leaves these
  rows out): two encoding processes, each loading the tokenizer, against one. Their files must
  equal those of one process (checked before timing, as above); the peak RSS is then that of the
  largest of the processes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path

from bench_cli import BenchParser, positive

from vikhr.assets import RU_SAMPLE
from vikhr.demo import llama3_like_tokenizer
from vikhr.jsonl import read_texts

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "tests" / "data" / "chat_templates"
SHARED = Path(os.environ.get("VIKHR_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_tokenizer(directory: Path, base: Path, template_file: str) -> Path:
    """`base` (the demo's Llama-3-like tokenizer) with an official chat template and its BOS/EOS."""
    official = json.loads((TEMPLATES / template_file).read_text(encoding="utf-8"))
    shutil.copytree(base, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update({key: official[key] for key in ("bos_token", "eos_token", "chat_template")})
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def write_chats(path: Path, n: int) -> int:
    rulm = SHARED / "sft" / "rulm-self-instruct.chat.jsonl"
    source = rulm if rulm.is_file() else REPO / "vikhr" / "assets" / "sft" / "ru-seed-chats.jsonl"
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    path.write_text("".join(lines[i % len(lines)] + "\n" for i in range(n)), encoding="utf-8")
    return len(lines)


# Runs a command and prints its wall seconds, peak RSS (KiB), exit status and the cores the rest of
# the machine kept busy meanwhile (-1 without /proc/stat): on a shared machine that tells a slow
# run from a crowded one. A small process of its own: a child's ru_maxrss starts from its parent's
# peak (vfork/exec), so this script, which has trained a tokenizer, must not be the direct parent of
# what it measures.
RUN_WRAPPER = """
import os, resource, subprocess, sys, time

def busy():  # CPU seconds the machine has spent busy (user to steal; guest time is inside user)
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")

start, t = busy(), time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall, end, used = time.perf_counter() - t, busy(), resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write(r.stderr)
ours = used.ru_utime + used.ru_stime
others = -1.0 if start is None else max(0.0, end - start - ours) / wall
print(wall, used.ru_maxrss, r.returncode, others)
"""


def prepare(
    chats: Path, tokenizer: Path, template: str, prefix: Path, workers: int = 1
) -> tuple[float, float, float]:
    """(seconds, peak RSS MiB, cores busy elsewhere) of one `vikhr sft prepare` run (its encoding
    processes included; the peak is that of its largest process)."""
    argv = [sys.executable, "-m", "vikhr", "sft", "prepare", "--input", str(chats)]
    argv += ["--tokenizer", str(tokenizer), "--template", template]
    argv += ["--output-prefix", str(prefix), "--no-progress", "--workers", str(workers)]
    proc = subprocess.run(
        [sys.executable, "-c", RUN_WRAPPER, *argv], capture_output=True, text=True, cwd=REPO
    )
    seconds, kib, status, others = proc.stdout.split()[-4:] if proc.stdout.strip() else ("0", "0", "1", "0")
    if proc.returncode != 0 or status != "0":
        sys.exit(f"sft prepare failed ({template}): {proc.stderr.strip()}")
    return float(seconds), int(kib) / 1024, float(others)  # KiB on Linux


def different_file(a: Path, b: Path) -> str | None:
    """The first of the text and mask .bin/.idx files that differ between prefixes `a` and `b`."""
    for dataset in ("text", "mask"):
        for suffix in (".bin", ".idx"):
            name = f"_{dataset}_document{suffix}"
            if Path(f"{a}{name}").read_bytes() != Path(f"{b}{name}").read_bytes():
                return f"{a.name}{name}"
    return None


def check_same_output(chats: Path, llama3: Path, llama31: Path, workers: int, work: Path) -> None:
    """Before timing: `own` and `llama3` on the same template write the same token ids and the same
    loss mask, byte for byte (both .bin/.idx pairs), and so do `workers` processes and one, on each
    tokenizer (with `workers` above 1); otherwise the script ends with status 1."""
    runs = {"llama3": (llama3, "llama3", 1), "own": (llama3, "own", 1), "own31": (llama31, "own", 1)}
    pairs = [("llama3", "own", "own and llama3 wrote different {} on Meta-Llama-3-8B-Instruct's template")]
    if workers > 1:
        runs |= {"llama3-workers": (llama3, "llama3", workers), "own31-workers": (llama31, "own", workers)}
        differ = f"with --workers {workers} and 1 wrote different {{}}"
        pairs += [
            ("llama3", "llama3-workers", f"llama3 {differ}"),
            ("own31", "own31-workers", f"own (Llama-3.1) {differ}"),
        ]
    for name, (tokenizer, template, count) in runs.items():
        prepare(chats, tokenizer, template, work / name / "c", count)
    for a, b, said in pairs:
        differing = different_file(work / a / "c", work / b / "c")
        if differing is not None:
            sys.exit(said.format(differing))


def table_cases(llama3: Path, llama31: Path, workers: int) -> list[tuple[str, Path, str, int]]:
    """The table's rows: (name, tokenizer, template, workers). The rows with `workers` processes come
    only when it is above 1: at 1 they repeated the one-process rows, and the ratios of those were
    taken against the repeats."""
    cases = [
        ("llama3", llama3, "llama3", 1),
        ("own, same template", llama3, "own", 1),
        ("own, Llama-3.1", llama31, "own", 1),
    ]
    if workers > 1:
        cases += [("llama3", llama3, "llama3", workers), ("own, Llama-3.1", llama31, "own", workers)]
    return cases


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=positive(int), default=2000)
    parser.add_argument("--runs", type=positive(int), default=3)
    parser.add_argument(
        "--workers",
        type=positive(int),
        default=2,
        help="encoding processes of the last rows (1: no such rows)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chats = work / "chats.jsonl"
        distinct = write_chats(chats, args.chats)
        base = llama3_like_tokenizer(islice(read_texts(RU_SAMPLE), 2000), work / "base", 8000)
        llama3 = write_tokenizer(work / "llama3", base, "meta-llama-3-8b-instruct.json")
        llama31 = write_tokenizer(work / "llama31", base, "meta-llama-3.1-8b-instruct.json")
        check_same_output(chats, llama3, llama31, args.workers, work / "check")
        rows = []
        for name, tokenizer, template, workers in table_cases(llama3, llama31, args.workers):
            runs = [
                prepare(
                    chats,
                    tokenizer,
                    template,
                    work / f"{template}-{tokenizer.name}-{workers}-{run}" / "c",
                    workers,
                )
                for run in range(args.runs)
            ]
            seconds, peak, others = (statistics.median(values) for values in zip(*runs, strict=True))
            rows.append((name, workers, seconds, peak, others))
        one_worker = {name: seconds for name, workers, seconds, *_ in rows if workers == 1}
        base = one_worker["llama3"]
        print(f"{args.chats:,} chats (cycling through {distinct}), median of {args.runs} whole prepare runs")
        print(
            "| template | workers | s | chats/s | vs llama3 | vs 1 worker | peak RSS MiB | busy elsewhere |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, workers, seconds, peak, others in rows:
            rate, speedup = args.chats / seconds, one_worker[name] / seconds
            elsewhere = "n/a" if others < 0 else f"{others:.2f}"
            print(
                f"| {name} | {workers} | {seconds:.2f} | {rate:,.0f} | {base / seconds:.2f}× "
                f"| {speedup:.2f}× | {peak:.0f} | {elsewhere} |"
            )
        workers_checked = f" and --workers {args.workers} against 1" if args.workers > 1 else ""
        print(
            f"ids and loss masks identical, own and llama3 on the same template{workers_checked}: yes "
            "(checked before timing)"
        )


if __name__ == "__main__":
    main()
