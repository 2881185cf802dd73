"""Rebuild the bundled sample corpora in vikhr/assets/corpus from ../shared/data.

Only public-domain (RusLit, English novels before 1927) and CC0 (RusDraCor) texts are used.
Works are cut into ~4,000-character documents on paragraph boundaries; selection is
deterministic (every k-th chunk), so the output is reproducible byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()
    out = ROOT / "vikhr" / "assets" / "corpus"
    ru = sample([args.shared / "corpus/ru/ruslit.jsonl.gz"], 2_400_000, 7) + sample(
        [args.shared / "corpus/ru/rusdracor.jsonl.gz"], 600_000, 11
    )
    write(out / "ru-sample.jsonl.gz", ru)
    write(
        out / "en-sample.jsonl.gz", sample([args.shared / "corpus/en/english-novels.jsonl.gz"], 800_000, 29)
    )


if __name__ == "__main__":
    main()
