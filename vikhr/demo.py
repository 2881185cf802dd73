"""`vikhr demo`: the main job on the bundled default data, on CPU, with no downloads.

This is the most complete pipeline that exists in this version: it tokenizes the bundled
Russian sample with the bundled Mistral tokenizer and trains a tiny Mistral-shaped
megatron-core model on it, reporting held-out loss before and after. Stages join it as they
land (tokenizer training, vocabulary adaptation, Rust pre-tokenization, CE+KL training).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
import zlib
from pathlib import Path

from vikhr.errors import VikhrError, require_file


def _read_texts(path: Path) -> list[tuple[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                out.append((str(rec.get("id", lineno)), rec["text"]))
            except (json.JSONDecodeError, KeyError) as e:
                raise VikhrError(f"{path}:{lineno}: not a JSON object with a 'text' field ({e})") from e
    return out


def _is_heldout(doc_id: str, percent: int = 5) -> bool:
    """Deterministic held-out split by a hash of the document id."""
    return zlib.crc32(doc_id.encode()) % 100 < percent


def run(args: argparse.Namespace) -> int:
    corpus = require_file(args.corpus, "corpus")
    tokenizer = require_file(args.tokenizer, "tokenizer model")
    workdir = Path(args.workdir)
    if workdir.exists() and any(workdir.iterdir()) and not args.overwrite:
        raise VikhrError(f"work directory {workdir} is not empty; pass --overwrite or choose another")

    import sentencepiece as spm
    import torch

    from vikhr.model import build_gpt_model, preset
    from vikhr.runtime import init_distributed, shutdown

    t0 = time.time()
    docs = _read_texts(corpus)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    train_ids: list[int] = []
    valid_ids: list[int] = []
    for doc_id, text in docs:
        ids = [*sp.encode(text), sp.eos_id()]
        (valid_ids if _is_heldout(doc_id) else train_ids).extend(ids)
    chars = sum(len(t) for _, t in docs)
    print(
        f"[1/2] tokenized {len(docs)} documents ({chars:,} chars) with {tokenizer.name}: "
        f"{len(train_ids):,} train / {len(valid_ids):,} held-out tokens, "
        f"{chars / (len(train_ids) + len(valid_ids)):.2f} chars/token"
    )

    env = init_distributed(tp_size=1, seed=args.seed, device="cpu")
    try:
        cfg = preset("tiny", vocab_size=sp.vocab_size(), max_seq_len=args.seq_len)
        model = build_gpt_model(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        train = torch.tensor(train_ids)
        valid = torch.tensor(valid_ids)
        gen = torch.Generator().manual_seed(args.seed)
        pos = torch.arange(args.seq_len).expand(args.batch_size, -1)

        def batch(src: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rows = torch.stack([src[s : s + args.seq_len + 1] for s in starts.tolist()])
            return rows[:, :-1], rows[:, 1:]

        valid_starts = torch.arange(0, len(valid) - args.seq_len - 1, args.seq_len)[: args.batch_size * 8]

        @torch.no_grad()
        def heldout_loss() -> float:
            model.eval()
            losses = []
            for chunk in valid_starts.split(args.batch_size):
                x, y = batch(valid, chunk)
                losses.append(model(x, pos[: len(chunk)], attention_mask=None, labels=y).float().mean())
            model.train()
            return float(torch.stack(losses).mean())

        before = heldout_loss()
        for step in range(1, args.steps + 1):
            starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch_size,), generator=gen)
            x, y = batch(train, starts)
            loss = model(x, pos, attention_mask=None, labels=y).float().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % max(1, args.steps // 10) == 0 or step == 1:
                print(f"      step {step:4d}  loss {loss.item():.3f}")
        after = heldout_loss()
        print(
            f"[2/2] trained a tiny Mistral-shaped model ({sum(p.numel() for p in model.parameters()):,} "
            f"params) for {args.steps} steps on {env.device}: held-out loss {before:.3f} -> {after:.3f} "
            f"(perplexity {math.exp(before):.0f} -> {math.exp(after):.0f})"
        )
    finally:
        shutdown()
    workdir.mkdir(parents=True, exist_ok=True)
    summary = {"heldout_loss_before": before, "heldout_loss_after": after, "steps": args.steps}
    tmp = workdir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(workdir / "summary.json")
    print(f"done in {time.time() - t0:.0f}s; summary in {workdir / 'summary.json'}")
    if after >= before:
        print("warning: held-out loss did not improve")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from vikhr import assets

    p = sub.add_parser(
        "demo",
        help="run the pipeline end to end on the bundled sample (CPU, no downloads)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--corpus", default=str(assets.RU_SAMPLE), help="JSONL(.gz) with a 'text' field")
    p.add_argument("--tokenizer", default=str(assets.MISTRAL_TOKENIZER), help="SentencePiece .model")
    p.add_argument("--workdir", default="runs/demo", help="where outputs go (default: runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty work directory")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1234)
    p.set_defaults(func=run)
