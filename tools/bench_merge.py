"""Benchmark: time and peak RSS of `vikhr merge` (SLERP, t = 0.5) against a load-everything merge.

Two synthetic Mistral-7B-shaped checkpoints from different seeds (tools/bench_adapt.py's: bf16, the
real 32000 x 4096 embedding and LM head plus N full-size decoder layers, 2 shards): 0.96 GB each
with one layer. Baseline in the same run: load every
tensor of both models with safetensors.torch.load_file, SLERP each pair on whole float32 copies
(normalised copies for the angle, as mergekit does), hold the results, then save_file per shard of A.
Each run is a fresh child process (peak RSS from getrusage); medians of --runs. At the end the two
outputs are compared tensor by tensor (share of bf16 values that differ, largest difference).

    .venv/bin/python tools/bench_merge.py --layers 1 2 --runs 3 --work /tmp/bench-merge
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adapt import make_checkpoint, measure

BASELINE = """
import math, sys, torch
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import load_file, save_file
a_dir, b_dir, out, t = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
out.mkdir(exist_ok=True)
load = lambda d: {k: v for f in sorted(d.glob('*.safetensors')) for k, v in load_file(str(f)).items()}
a, b = load(a_dir), load(b_dir)
def slerp(x, y):
    x32, y32 = x.float(), y.float()
    dot = float(((x32 / x32.norm()) * (y32 / y32.norm())).sum())
    if abs(dot) > 0.9995:
        return ((1 - t) * x32 + t * y32).to(x.dtype)
    th = math.acos(dot)
    return (math.sin((1 - t) * th) / math.sin(th) * x32 + math.sin(t * th) / math.sin(th) * y32).to(x.dtype)
merged = {k: slerp(a[k], b[k]) for k in a}
for f in sorted(a_dir.glob('*.safetensors')):
    with safe_open(str(f), 'pt') as st:
        names = list(st.keys())
    save_file({k: merged[k] for k in names}, str(out / f.name), metadata={'format': 'pt'})
"""


def compare_outputs(out: Path, reference: Path) -> tuple[float, float]:
    """(share of elements not bit-identical, largest |difference| / the tensor's RMS) over all tensors."""
    import torch
    from safetensors import safe_open

    differing = total = 0
    worst = 0.0
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as x, safe_open(str(reference / f.name), "pt") as y:
            for name in x.keys():  # noqa: SIM118 - safe_open is not a mapping
                got, ref = x.get_tensor(name), y.get_tensor(name)
                differing += int((got.view(torch.int16) != ref.view(torch.int16)).sum())
                total += ref.numel()
                ref32 = ref.float()
                rms = float(ref32.square().mean().sqrt())
                worst = max(worst, float((got.float() - ref32).abs().max()) / rms)
    return differing / total, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[1])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--t", type=float, default=0.5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-merge"))
    args = ap.parse_args()
    vikhr = str(Path(sys.executable).parent / "vikhr")
    rows = []
    for layers in args.layers:
        a, b = args.work / f"a-{layers}", args.work / f"b-{layers}"
        out, base_out = args.work / f"out-{layers}", args.work / f"baseline-{layers}"
        size = make_checkpoint(a, layers, seed=0)
        make_checkpoint(b, layers, seed=1)
        stream, base = [], []
        for _ in range(args.runs):
            cmd = [vikhr, "merge", str(a), str(b), "--out", str(out), "--t", str(args.t), "--overwrite"]
            stream.append(measure(cmd))
            shutil.rmtree(base_out, ignore_errors=True)
            base.append(measure([sys.executable, "-c", BASELINE, str(a), str(b), str(base_out), str(args.t)]))
        agreement = compare_outputs(out, base_out)
        for d in (a, b, out, base_out):
            shutil.rmtree(d)
        rows.append((layers, size, stream, base, agreement))
    print(
        "| layers | each checkpoint GiB | vikhr merge s | vikhr merge peak RSS GiB | load-everything s "
        "| load-everything peak RSS GiB | RSS ratio | elements differing | max abs diff / RMS |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for layers, size, stream, base, (share, worst) in rows:
        st, sr = statistics.median(s for s, _ in stream), statistics.median(r for _, r in stream)
        bt, br = statistics.median(s for s, _ in base), statistics.median(r for _, r in base)
        print(
            f"| {layers} | {size / 2**30:.2f} | {st:.1f} | {sr:.2f} | {bt:.1f} | {br:.2f} | {br / sr:.1f}x "
            f"| {share:.2%} | {worst:.1e} |"
        )


if __name__ == "__main__":
    main()
