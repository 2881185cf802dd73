"""Benchmark: time and peak RSS of `vikhr merge` (SLERP, t = 0.5) against a load-everything merge.

Two synthetic Mistral-7B-shaped checkpoints from different seeds (tools/bench_adapt.py's: bf16, the
real 32000 x 4096 embedding and LM head plus N full-size decoder layers, 2 shards): 0.96 GB each
with one layer. Baseline in the same run: load every
tensor of both models with safetensors.torch.load_file, SLERP each pair on whole float32 copies
(normalised copies for the angle, as mergekit does), hold the results, then save_file per shard of A.
Each run is a fresh child process (peak RSS from getrusage); medians of --runs. Before timing, one
run of each merge and their outputs compared tensor by tensor (share of bf16 values that differ,
largest difference): every value must agree within rounding (2^-7 of the larger value plus 1e-5 of
the tensor's RMS), else the script ends with status 1 and times nothing.

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
from bench_cli import BenchParser, check_output_dir, positive

from vikhr.merge.cli import t_arg

# The printed table's columns (docs/benchmarks.md shows the same header; a test compares them).
TABLE_COLUMNS = (
    "layers",
    "each checkpoint GiB",
    "vikhr merge s",
    "vikhr merge peak RSS GiB",
    "load-everything s",
    "load-everything peak RSS GiB",
    "RSS load-everything / vikhr merge",
    "bf16 values differing",
    "max abs diff / RMS",
)

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


# The outputs may differ by rounding only (the angle from float64 sums in vikhr, float32 in the
# baseline): each element within one bf16 step (2^-7 of the larger value), plus float32 noise.
REL_TOLERANCE, RMS_TOLERANCE = 2**-7, 1e-5


def compare_outputs(out: Path, reference: Path) -> tuple[float, float, int]:
    """(share of elements not bit-identical, largest |difference| / the tensor's RMS, elements
    outside the tolerance) over all tensors; a tensor missing from either side raises."""
    import torch
    from safetensors import safe_open

    differing = total = outside = 0
    worst = 0.0
    files = sorted(f.name for f in out.glob("*.safetensors"))
    if not files or files != sorted(f.name for f in reference.glob("*.safetensors")):
        raise SystemExit(f"{out} and {reference} hold different shard files")
    for name_of_file in files:
        with (
            safe_open(str(out / name_of_file), "pt") as x,
            safe_open(str(reference / name_of_file), "pt") as y,
        ):
            if set(x.keys()) != set(y.keys()):
                raise SystemExit(f"{name_of_file}: the merges wrote different tensors")
            for name in x.keys():  # noqa: SIM118 - safe_open is not a mapping
                got, ref = x.get_tensor(name), y.get_tensor(name)
                if got.shape != ref.shape or got.dtype != ref.dtype:
                    raise SystemExit(
                        f"{name}: {got.dtype} {list(got.shape)} against {ref.dtype} {list(ref.shape)}"
                    )
                differing += int((got.view(torch.int16) != ref.view(torch.int16)).sum())
                total += ref.numel()
                got32, ref32 = got.float(), ref.float()
                rms = float(ref32.square().mean().sqrt())
                diff = (got32 - ref32).abs()
                worst = max(worst, float(diff.max()) / rms)
                allowed = torch.maximum(got32.abs(), ref32.abs()) * REL_TOLERANCE + RMS_TOLERANCE * rms
                outside += int((diff > allowed).sum())
    return differing / total, worst, outside


def checked_merges(a: Path, b: Path, out: Path, base_out: Path, vikhr: str, t: float) -> tuple[float, float]:
    """Before timing: one untimed run of each merge; their outputs must agree within the rounding
    tolerance, else the script ends with status 1. Returns (share differing, worst diff / RMS)."""
    merge = [vikhr, "merge", str(a), str(b), "--out", str(out), "--t", str(t), "--overwrite"]
    measure(merge)
    shutil.rmtree(base_out, ignore_errors=True)
    measure([sys.executable, "-c", BASELINE, str(a), str(b), str(base_out), str(t)])
    share, worst, outside = compare_outputs(out, base_out)
    print(f"outputs before timing: {share:.2%} of bf16 values differ, at most {worst:.1e} of the RMS")
    if outside:
        sys.exit(
            f"vikhr merge and the load-everything merge disagree on {outside:,} values by more than "
            f"rounding ({REL_TOLERANCE:g} relative + {RMS_TOLERANCE:g} of the RMS): nothing timed "
            f"(both checkpoints and both outputs are kept in {out.parent} for a look)"
        )
    return share, worst


def interpolation(value: str) -> float:
    """An argparse type: `vikhr merge --t`'s value by the verb's own type, one t (the load-everything
    baseline merges every tensor at it; out of [0, 1], the first merge failed after both checkpoints
    were written)."""
    t, *rest = t_arg(value)
    if rest:
        raise argparse.ArgumentTypeError(
            f"one t for the whole model (the load-everything baseline takes no gradient), got {value!r}"
        )
    return t


def main() -> None:
    ap = BenchParser(description=__doc__)
    ap.add_argument("--layers", type=positive(int), nargs="+", default=[1])
    ap.add_argument("--runs", type=positive(int), default=3)
    ap.add_argument("--t", type=interpolation, default=0.5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-merge"))
    args = ap.parse_args()
    check_output_dir(ap, "--work", args.work)
    vikhr = str(Path(sys.executable).parent / "vikhr")
    rows = []
    for layers in args.layers:
        a, b = args.work / f"a-{layers}", args.work / f"b-{layers}"
        out, base_out = args.work / f"out-{layers}", args.work / f"baseline-{layers}"
        size = make_checkpoint(a, layers, seed=0)
        make_checkpoint(b, layers, seed=1)
        agreement = checked_merges(a, b, out, base_out, vikhr, args.t)
        stream, base = [], []
        for _ in range(args.runs):
            cmd = [vikhr, "merge", str(a), str(b), "--out", str(out), "--t", str(args.t), "--overwrite"]
            stream.append(measure(cmd))
            shutil.rmtree(base_out, ignore_errors=True)
            base.append(measure([sys.executable, "-c", BASELINE, str(a), str(b), str(base_out), str(args.t)]))
        for d in (a, b, out, base_out):
            shutil.rmtree(d)
        rows.append((layers, size, stream, base, agreement))
    print("| " + " | ".join(TABLE_COLUMNS) + " |")
    print("|" + "---:|" * len(TABLE_COLUMNS))
    for layers, size, stream, base, (share, worst) in rows:
        st, sr = statistics.median(s for s, _ in stream), statistics.median(r for _, r in stream)
        bt, br = statistics.median(s for s, _ in base), statistics.median(r for _, r in base)
        print(
            f"| {layers} | {size / 2**30:.2f} | {st:.1f} | {sr:.2f} | {bt:.1f} | {br:.2f} | {br / sr:.1f}x "
            f"| {share:.2%} | {worst:.1e} |"
        )


if __name__ == "__main__":
    main()
