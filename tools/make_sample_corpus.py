"""Rebuild the bundled samples in vikhr/assets from ../shared/data (or $VIKHR_SHARED_DATA).

Corpora (vikhr/assets/corpus): only public-domain (RusLit, English novels before 1927) and CC0
(RusDraCor) texts. Works are cut into ~4,000-character documents on paragraph boundaries;
selection is deterministic (every k-th chunk), so the output is reproducible byte for byte.

Chats (vikhr/assets/sft): the human-written Russian self-instruct seed tasks of rulm (Apache-2.0)
as single-turn chats, without the two toxicity-detection tasks (they quote profanity on purpose).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

from bench_cli import BenchParser, check_input

ROOT = Path(__file__).resolve().parent.parent
# where the other benchmark scripts and the tests find the shared data
SHARED = Path(os.environ.get("VIKHR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def chunks(text: str, size: int = 4000) -> list[str]:
    out, cur = [], []
    n = 0
    for para in text.split("\n"):
        cur.append(para)
        n += len(para) + 1
        if n >= size:
            out.append("\n".join(cur).strip())
            cur, n = [], 0
    if cur and n > size // 4:
        out.append("\n".join(cur).strip())
    return [c for c in out if c]


def sample(sources: list[Path], budget_chars: int, stride: int) -> list[dict]:
    docs: list[dict] = []
    total = 0
    for src in sources:
        with gzip.open(src, "rt", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                for i, c in enumerate(chunks(rec["text"])):
                    if i % stride == 0:
                        docs.append({"id": f"{rec['id']}#{i}", "text": c})
                        total += len(c)
                        if total >= budget_chars:
                            return docs
    return docs


def write(path: Path, docs: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        for d in docs:
            f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    tmp.replace(path)
    print(f"{path}: {len(docs)} documents, {sum(len(d['text']) for d in docs):,} characters")


TOXIC_SEED_TASKS = {"finding_toxic_words", "toxic_sentence_detection"}


def seed_chats(shared: Path) -> list[dict]:
    """The seed-task chats of the rulm chat file (human answers), in file order."""
    names = {}
    with (shared / "sft" / "ru_alpaca_seed_tasks.jsonl").open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            names[rec["id"]] = rec.get("name", "")
    chats = []
    with (shared / "sft" / "rulm-self-instruct.chat.jsonl").open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            parts = rec["id"].split("/")
            if parts[1] == "ru_alpaca_seed_tasks" and names[parts[2]] not in TOXIC_SEED_TASKS:
                chats.append({"id": rec["id"], "messages": rec["messages"]})
    return chats


# What main reads under --shared: all checked first, so that a missing one leaves the bundled
# samples as they were instead of some of them rebuilt.
SOURCES = (
    "corpus/ru/ruslit.jsonl.gz",
    "corpus/ru/rusdracor.jsonl.gz",
    "corpus/en/english-novels.jsonl.gz",
    "sft/ru_alpaca_seed_tasks.jsonl",
    "sft/rulm-self-instruct.chat.jsonl",
)


def parse_args() -> argparse.Namespace:
    ap = BenchParser(description=__doc__)
    ap.add_argument(
        "--shared",
        type=Path,
        default=SHARED,
        help=f"shared data directory (default {SHARED}: $VIKHR_SHARED_DATA when set, else ../shared/data "
        "beside the repository)",
    )
    args = ap.parse_args()
    if not args.shared.is_dir():
        ap.error(f"--shared {args.shared}: no such directory (give the shared data directory)")
    for source in SOURCES:
        check_input(ap, "--shared", args.shared / source)
    return args


def main() -> None:
    args = parse_args()
    out = ROOT / "vikhr" / "assets" / "corpus"
    ru = sample([args.shared / "corpus/ru/ruslit.jsonl.gz"], 2_400_000, 7) + sample(
        [args.shared / "corpus/ru/rusdracor.jsonl.gz"], 600_000, 11
    )
    write(out / "ru-sample.jsonl.gz", ru)
    write(
        out / "en-sample.jsonl.gz", sample([args.shared / "corpus/en/english-novels.jsonl.gz"], 800_000, 29)
    )
    chats = seed_chats(args.shared)
    sft = ROOT / "vikhr" / "assets" / "sft"
    sft.mkdir(exist_ok=True)
    tmp = sft / "ru-seed-chats.jsonl.tmp"
    tmp.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
    tmp.replace(sft / "ru-seed-chats.jsonl")
    print(f"{sft / 'ru-seed-chats.jsonl'}: {len(chats)} chats")


if __name__ == "__main__":
    main()
