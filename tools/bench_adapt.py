r"""Benchmark: peak RSS and time of `vikhr adapt-vocab` on a synthetic checkpoint slice.

`--shape mistral-7b` (default): Mistral-7B's real embedding and LM head (32000 x 4096, bf16) and N
full-size decoder layers (hidden 4096, MLP 14336, 32 heads / 8 KV heads), written as 2 shards; the
new vocabulary is the shipped vikhr-ru-40k tokenizer. `--shape mistral-nemo-12b`: Mistral-NeMo's
byte-level case, 131072 x 5120 matrices and 128-wide heads, with `--old-tokenizer` the imported
tekken and `--new-tokenizer` its Russian extension (tools/bench_tokenizer.py --byte-bpe writes both).
Peak RSS comes from getrusage of a fresh child process per run. Baseline in the same run: load every
shard with safetensors.torch.load_file, replace the two matrices by ones with as many rows as the
adapted checkpoint's (the new vocabulary padded to a multiple of 128), save_file (what a script
holding whole shards in memory does).

    .venv/bin/python tools/bench_adapt.py --layers 1 4 --runs 3 --work /tmp/bench-adapt
    .venv/bin/python tools/bench_adapt.py --shape mistral-nemo-12b --layers 1 2 --runs 2 \
        --old-tokenizer /tmp/bench-byte-bpe/tokenizers/tekken-nemo \
        --new-tokenizer /tmp/bench-byte-bpe/tokenizers/tekken-plus-16k-ru
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench_cli import BenchParser, check_input, check_output_dir, positive

ROOT = Path(__file__).resolve().parent.parent
MISTRAL = ROOT / "vikhr" / "assets" / "tokenizers" / "mistral-7b-v0.1.model"
NEW = ROOT / "vikhr" / "assets" / "tokenizers" / "vikhr-ru-40k.model"
# The printed table's columns (docs/benchmarks.md shows the same header; a test compares them).
TABLE_COLUMNS = (
    "layers",
    "checkpoint GiB",
    "adapt-vocab s",
    "adapt-vocab peak RSS GiB",
    "load/save baseline s",
    "baseline peak RSS GiB",
    "RSS baseline / adapt-vocab",
)

# name: (hidden, MLP, heads, KV heads, head dim, vocabulary, layers of the full model)
SHAPES = {
    "mistral-7b": (4096, 14336, 32, 8, 128, 32000, 32),
    "mistral-nemo-12b": (5120, 14336, 32, 8, 128, 131072, 40),
}
HIDDEN, MLP, HEADS, KV, HEAD_DIM, VOCAB, FULL_LAYERS = SHAPES["mistral-7b"]


def layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    head_dim = HEAD_DIM
    return {
        p + "self_attn.q_proj.weight": (HEADS * head_dim, HIDDEN),
        p + "self_attn.k_proj.weight": (KV * head_dim, HIDDEN),
        p + "self_attn.v_proj.weight": (KV * head_dim, HIDDEN),
        p + "self_attn.o_proj.weight": (HIDDEN, HEADS * head_dim),
        p + "mlp.gate_proj.weight": (MLP, HIDDEN),
        p + "mlp.up_proj.weight": (MLP, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, MLP),
        p + "input_layernorm.weight": (HIDDEN,),
        p + "post_attention_layernorm.weight": (HIDDEN,),
    }


def make_checkpoint(path: Path, layers: int, seed: int = 0) -> int:
    """Write the synthetic slice (2 shards + index + config); returns its size in bytes."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shards: list[dict[str, tuple[int, ...]]] = [
        {"model.embed_tokens.weight": (VOCAB, HIDDEN)},
        {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)},
    ]
    for i in range(layers):
        shards[0 if i < (layers + 1) // 2 else 1].update(layer_shapes(i))
    weight_map, total = {}, 0
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        tensors = {n: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for n, s in names.items()}
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update(dict.fromkeys(names, fname))
        del tensors
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    cfg = {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": MLP,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "head_dim": HEAD_DIM,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (path / "config.json").write_text(json.dumps(cfg))
    return total


RSS_WRAPPER = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:]); "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)"
)

BASELINE = """
import sys, json, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
src, out, rows = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
out.mkdir(exist_ok=True)
for shard in sorted(src.glob('*.safetensors')):
    t = load_file(str(shard))
    for n in ('model.embed_tokens.weight', 'lm_head.weight'):
        if n in t:
            t[n] = torch.cat([t[n], t[n][:rows]])
    save_file(t, str(out / shard.name), metadata={'format': 'pt'})
    del t
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GiB) of `cmd` run as a fresh child process."""
    res = subprocess.run(
        [sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True, check=True
    )
    secs, kib, rc = res.stdout.split()[-3:]
    if rc != "0":
        raise SystemExit(f"{cmd} failed:\n{res.stderr[-2000:]}")
    return float(secs), int(kib) / 2**20


def added_rows(ap: argparse.ArgumentParser, args: argparse.Namespace, multiple: int = 128) -> int:
    """Rows the adaptation adds to each matrix: the new vocabulary padded as `--pad-to-multiple`
    pads it, less the old VOCAB rows (the baseline appends as many). Both tokenizers are loaded
    here, before the checkpoint is written: a bad one, or one of another --shape's vocabulary,
    failed only in the first `adapt-vocab` run."""
    from vikhr.errors import VikhrError
    from vikhr.tokenizer.load import load

    sizes = {}
    for option, path in (("--old-tokenizer", args.old_tokenizer), ("--new-tokenizer", args.new_tokenizer)):
        check_input(ap, option, path, directory_ok=True)
        try:
            sizes[option] = load(path).vocab_size
        except VikhrError as e:
            ap.error(f"{option} {path}: {e}")
    if sizes["--old-tokenizer"] != VOCAB:
        ap.error(
            f"--old-tokenizer {args.old_tokenizer}: {sizes['--old-tokenizer']:,} pieces, but --shape "
            f"{args.shape}'s embedding has {VOCAB:,} rows (give that model's tokenizer)"
        )
    rows = -(-sizes["--new-tokenizer"] // multiple) * multiple - VOCAB
    if not 0 <= rows <= VOCAB:
        ap.error(
            f"--new-tokenizer {args.new_tokenizer}: {sizes['--new-tokenizer']:,} pieces, {rows:,} rows "
            f"added to --shape {args.shape}'s {VOCAB:,}; the benchmark takes 0 to {VOCAB:,}"
        )
    return rows


def main() -> None:
    ap = BenchParser(description=__doc__)
    ap.add_argument("--layers", type=positive(int), nargs="+", default=[1, 4])
    ap.add_argument("--runs", type=positive(int), default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-adapt"))
    ap.add_argument("--shape", choices=sorted(SHAPES), default="mistral-7b")
    ap.add_argument("--old-tokenizer", type=Path, default=MISTRAL)
    ap.add_argument("--new-tokenizer", type=Path, default=NEW)
    args = ap.parse_args()
    check_output_dir(ap, "--work", args.work)
    global HIDDEN, MLP, HEADS, KV, HEAD_DIM, VOCAB, FULL_LAYERS
    HIDDEN, MLP, HEADS, KV, HEAD_DIM, VOCAB, FULL_LAYERS = SHAPES[args.shape]
    vikhr = str(Path(sys.executable).parent / "vikhr")
    new_rows = added_rows(ap, args)
    print(f"new vocabulary: {VOCAB:,} + {new_rows:,} rows per matrix (padded to a multiple of 128)")
    rows = []
    for layers in args.layers:
        src, out = args.work / f"src-{layers}", args.work / f"out-{layers}"
        size = make_checkpoint(src, layers)
        stream, base = [], []
        for _ in range(args.runs):
            cmd = [vikhr, "adapt-vocab", "--model", str(src), "--old-tokenizer", str(args.old_tokenizer)]
            cmd += ["--new-tokenizer", str(args.new_tokenizer), "--out", str(out), "--overwrite"]
            cmd += ["--pad-to-multiple", "128"]
            stream.append(measure(cmd))
            shutil.rmtree(out)
            base.append(measure([sys.executable, "-c", BASELINE, str(src), str(out), str(new_rows)]))
            shutil.rmtree(out)
        shutil.rmtree(src)
        rows.append((layers, size, stream, base))
    print("| " + " | ".join(TABLE_COLUMNS) + " |")
    print("|" + "---:|" * len(TABLE_COLUMNS))
    for layers, size, stream, base in rows:
        st = statistics.median(s for s, _ in stream)
        sr = statistics.median(r for _, r in stream)
        bt = statistics.median(s for s, _ in base)
        br = statistics.median(r for _, r in base)
        print(
            f"| {layers} | {size / 2**30:.2f} | {st:.1f} | {sr:.2f} | {bt:.1f} | {br:.2f} | {br / sr:.1f}x |"
        )
    (l0, _, st0, _), (l1, _, st1, _) = rows[0], rows[-1]
    if l1 > l0:
        t0, t1 = statistics.median(s for s, _ in st0), statistics.median(s for s, _ in st1)
        per_layer = (t1 - t0) / (l1 - l0)
        if per_layer > 0:
            print(
                f"\nTime per extra layer: {per_layer:.2f} s; extrapolated to {FULL_LAYERS} layers "
                f"({args.shape}): {t0 + per_layer * (FULL_LAYERS - l0):.0f} s."
            )
        else:
            print("\nPer-layer copy time is below the run-to-run noise; the fixed cost dominates.")
    print("Peak RSS does not depend on the number of layers (only the two vocabulary matrices are held).")


if __name__ == "__main__":
    main()
