"""`vikhr sft prepare` with vikhr's `llama3` template against `own` (the tokenizer's Jinja template).

    python tools/bench_sft_templates.py              # 2,000 chats, 3 runs each
    python tools/bench_sft_templates.py --chats 500 --runs 1

The chats: the rulm chats of ../shared/data/sft (the bundled seed chats where absent), repeated to
`--chats`. The tokenizer: the demo's 8,000-token Llama-3-like byte-level BPE
(`vikhr.demo.llama3_like_tokenizer`, trained here on the bundled Russian sample, Llama-3's control
tokens), its tokenizer_config.json holding an official chat template (tests/data/chat_templates).
Each run is a whole `vikhr sft prepare` process (start-up, tokenizer load, writing the indexed
dataset); peak RSS is that process's.

* llama3: `--template llama3` (vikhr's segments, encoded run by run) with Meta-Llama-3-8B-Instruct's
  template beside it;
* own, same template: `--template own` on the same files: transformers renders each chat (3k+1
  renders for k answers, to tell answers from prompts) and the text is encoded once. Its ids must
  equal llama3's (checked: the .bin files are compared);
* own, Llama-3.1: `--template own` with Llama-3.1-8B-Instruct's template (a dated system header in
  every chat: more tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from vikhr.assets import RU_SAMPLE
from vikhr.demo import llama3_like_tokenizer
from vikhr.jsonl import read_texts

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "tests" / "data" / "chat_templates"


def write_tokenizer(directory: Path, base: Path, template_file: str) -> Path:
    """`base` (the demo's Llama-3-like tokenizer) with an official chat template and its BOS/EOS."""
    official = json.loads((TEMPLATES / template_file).read_text(encoding="utf-8"))
    shutil.copytree(base, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update({key: official[key] for key in ("bos_token", "eos_token", "chat_template")})
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def write_chats(path: Path, n: int) -> int:
    rulm = REPO.parent / "shared" / "data" / "sft" / "rulm-self-instruct.chat.jsonl"
    source = rulm if rulm.is_file() else REPO / "vikhr" / "assets" / "sft" / "ru-seed-chats.jsonl"
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    path.write_text("".join(lines[i % len(lines)] + "\n" for i in range(n)), encoding="utf-8")
    return len(lines)


def prepare(chats: Path, tokenizer: Path, template: str, prefix: Path) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one `vikhr sft prepare` process."""
    argv = [
        sys.executable,
        "-m",
        "vikhr",
        "sft",
        "prepare",
        "--input",
        str(chats),
        "--tokenizer",
        str(tokenizer),
    ]
    argv += ["--template", template, "--output-prefix", str(prefix), "--no-progress"]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak RSS
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"sft prepare failed ({template}): {err.read().decode().strip()}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chats = work / "chats.jsonl"
        distinct = write_chats(chats, args.chats)
        base = llama3_like_tokenizer(islice(read_texts(RU_SAMPLE), 2000), work / "base", 8000)
        llama3 = write_tokenizer(work / "llama3", base, "meta-llama-3-8b-instruct.json")
        llama31 = write_tokenizer(work / "llama31", base, "meta-llama-3.1-8b-instruct.json")
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
            rows.append((name, seconds, peak, work / f"{template}-{tokenizer.name}-0" / "c"))
        same = (rows[0][3].with_name("c_text_document.bin").read_bytes() ==
                rows[1][3].with_name("c_text_document.bin").read_bytes())  # fmt: skip
        if not same:
            sys.exit("own and llama3 gave different ids on Meta-Llama-3-8B-Instruct's template")
        base = rows[0][1]
        print(f"{args.chats:,} chats (cycling through {distinct}), median of {args.runs} whole prepare runs")
        print("| template | s | chats/s | vs llama3 | peak RSS MiB |")
        print("|---|---:|---:|---:|---:|")
        for name, seconds, peak, _ in rows:
            rate = args.chats / seconds
            print(f"| {name} | {seconds:.2f} | {rate:,.0f} | {base / seconds:.2f}× | {peak:.0f} |")
        print("own and llama3 ids identical on the same template: yes")


if __name__ == "__main__":
    main()
