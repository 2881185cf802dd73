"""`vikhr sft prepare` with vikhr's `llama3` template against `own` (the tokenizer's Jinja template).

    python tools/bench_sft_templates.py              # 2,000 chats, 3 runs each
    python tools/bench_sft_templates.py --chats 500 --runs 1

The chats: the rulm chats of ../shared/data/sft (or $VIKHR_SHARED_DATA/sft; the bundled seed chats
where absent), repeated to
`--chats`. The tokenizer: the demo's 8,000-token Llama-3-like byte-level BPE
(`vikhr.demo.llama3_like_tokenizer`, trained here on the bundled Russian sample, Llama-3's control
tokens), its tokenizer_config.json holding an official chat template (tests/data/chat_templates).
Each run is a whole `vikhr sft prepare` process (start-up, tokenizer load, writing the indexed
dataset); peak RSS is that process's, taken by a small wrapper process (a direct child's
ru_maxrss would start from this script's own peak).

* llama3: `--template llama3` (vikhr's segments, encoded run by run) with Meta-Llama-3-8B-Instruct's
  template beside it;
* own, same template: `--template own` on the same files: transformers renders each chat (3k+1
  renders for k answers, to tell answers from prompts) and the text is encoded once. Its ids and
  loss mask must equal llama3's (checked before timing, on a run of each: the text and mask
  .bin/.idx files are compared; a difference ends the script with status 1);
* own, Llama-3.1: `--template own` with Llama-3.1-8B-Instruct's template (a dated system header in
  every chat: more tokens).
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


# Runs a command and prints its wall seconds and peak RSS (KiB). A small process of its own: a
# child's ru_maxrss starts from its parent's peak (vfork/exec), so this script, which has trained a
# tokenizer, must not be the direct parent of what it measures.
RSS_WRAPPER = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
    "sys.stderr.write(r.stderr); "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)"
)


def prepare(chats: Path, tokenizer: Path, template: str, prefix: Path) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one `vikhr sft prepare` process."""
    argv = [sys.executable, "-m", "vikhr", "sft", "prepare", "--input", str(chats)]
    argv += ["--tokenizer", str(tokenizer), "--template", template]
    argv += ["--output-prefix", str(prefix), "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, *argv], capture_output=True, text=True, cwd=REPO
    )
    seconds, kib, status = proc.stdout.split()[-3:] if proc.stdout.strip() else ("0", "0", "1")
    if proc.returncode != 0 or status != "0":
        sys.exit(f"sft prepare failed ({template}): {proc.stderr.strip()}")
    return float(seconds), int(kib) / 1024  # KiB on Linux


def check_same_output(chats: Path, tokenizer: Path, work: Path) -> None:
    """Before timing: `own` and `llama3` on the same template write the same token ids and the same
    loss mask, byte for byte (both .bin/.idx pairs); otherwise the script ends with status 1."""
    prefixes = {t: work / t / "c" for t in ("llama3", "own")}
    for template, prefix in prefixes.items():
        prepare(chats, tokenizer, template, prefix)
    for dataset in ("text", "mask"):
        for suffix in (".bin", ".idx"):
            name = f"c_{dataset}_document{suffix}"
            files = [prefix.with_name(name).read_bytes() for prefix in prefixes.values()]
            if files[0] != files[1]:
                sys.exit(f"own and llama3 wrote different {name} on Meta-Llama-3-8B-Instruct's template")


def main() -> None:
    parser = BenchParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=positive(int), default=2000)
    parser.add_argument("--runs", type=positive(int), default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chats = work / "chats.jsonl"
        distinct = write_chats(chats, args.chats)
        base = llama3_like_tokenizer(islice(read_texts(RU_SAMPLE), 2000), work / "base", 8000)
        llama3 = write_tokenizer(work / "llama3", base, "meta-llama-3-8b-instruct.json")
        llama31 = write_tokenizer(work / "llama31", base, "meta-llama-3.1-8b-instruct.json")
        check_same_output(chats, llama3, work / "check")
        cases = [
            ("llama3", llama3, "llama3"),
            ("own, same template", llama3, "own"),
            ("own, Llama-3.1", llama31, "own"),
        ]
        rows = []
        for name, tokenizer, template in cases:
            runs = [
                prepare(chats, tokenizer, template, work / f"{template}-{tokenizer.name}-{run}" / "c")
                for run in range(args.runs)
            ]
            seconds, peak = (statistics.median(values) for values in zip(*runs, strict=True))
            rows.append((name, seconds, peak))
        base = rows[0][1]
        print(f"{args.chats:,} chats (cycling through {distinct}), median of {args.runs} whole prepare runs")
        print("| template | s | chats/s | vs llama3 | peak RSS MiB |")
        print("|---|---:|---:|---:|---:|")
        for name, seconds, peak in rows:
            rate = args.chats / seconds
            print(f"| {name} | {seconds:.2f} | {rate:,.0f} | {base / seconds:.2f}× | {peak:.0f} |")
        print("own and llama3 ids and loss masks identical on the same template: yes (checked before timing)")


if __name__ == "__main__":
    main()
