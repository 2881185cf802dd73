r"""Benchmark: time and peak RSS of `vikhr convert` as a user runs it, against transformers' own path.

Synthetic checkpoint slices (tools/bench_adapt.py's: bf16, 2 shards; `--shape mistral-7b`, the
default: Mistral-7B's real 32000 x 4096 embedding and LM head plus N full-size decoder layers). Each
command is a fresh process, start-up included, its peak RSS from getrusage through a small wrapper
process; medians of --runs:

    vikhr convert hf-to-megatron HF MEG_T --tp T        for each T of --tp (default 1 2)
    vikhr convert megatron-to-hf MEG_T HF2              from the checkpoint of the largest T

Baseline in the same run, what a user would otherwise do: transformers'
`AutoModelForCausalLM.from_pretrained(HF, dtype=torch.bfloat16)` then `save_pretrained` (the whole
model in memory). Before timing, one run of each: the round trip HF -> megatron (every T) -> HF must
give byte-identical tensors, and so must the baseline's output; else the script ends with status 1
and times nothing. A failure (a command's or a round trip's) keeps the work directory and names it.

    .venv/bin/python tools/bench_convert.py --layers 1 4 --runs 3 --work /tmp/bench-convert
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_adapt
from bench_adapt import make_checkpoint, measure
from bench_cli import BenchParser, check_output_dir, positive

# bench_adapt's shapes, and a tiny one for the test that keeps this script working.
SHAPES = {**bench_adapt.SHAPES, "tiny": (64, 128, 4, 2, 16, 256, 2)}

BASELINE = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
model.save_pretrained(sys.argv[2])
"""


def hf_tensors(model_dir: Path) -> Iterator[tuple[str, Path]]:
    """(tensor name, its file) of every tensor of an HF safetensors directory."""
    from safetensors import safe_open

    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            yield from ((name, path) for name in f.keys())  # noqa: SIM118 - safe_open is not a mapping


def differing_tensors(got_dir: Path, want_dir: Path) -> list[str]:
    """The tensors of `want_dir` that `got_dir` lacks or holds with other bytes (dtype, shape or
    data), and those only `got_dir` has; read one pair at a time."""
    import torch
    from safetensors import safe_open

    got, want = dict(hf_tensors(got_dir)), dict(hf_tensors(want_dir))
    bad = sorted(set(got) ^ set(want))
    for name in sorted(set(got) & set(want)):
        with safe_open(str(got[name]), "pt") as g, safe_open(str(want[name]), "pt") as w:
            a, b = g.get_tensor(name), w.get_tensor(name)
        same = a.dtype == b.dtype and a.shape == b.shape
        if not (same and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))):
            bad.append(name)
    return bad


def commands(vikhr: str, src: Path, work: Path, tps: list[int]) -> dict[str, tuple[list[str], Path]]:
    """Each measured command line by its table name, with the directory it writes."""
    runs: dict[str, tuple[list[str], Path]] = {}
    for tp in tps:
        meg = work / f"meg-tp{tp}"
        runs[f"hf-to-megatron --tp {tp}"] = (
            [vikhr, "convert", "hf-to-megatron", str(src), str(meg), "--tp", str(tp), "--no-progress"],
            meg,
        )
    back = work / "hf2"
    meg = work / f"meg-tp{max(tps)}"
    runs[f"megatron-to-hf (tp {max(tps)})"] = (
        [vikhr, "convert", "megatron-to-hf", str(meg), str(back), "--no-progress"],
        back,
    )
    base = work / "transformers"
    runs["transformers load/save"] = ([sys.executable, "-c", BASELINE, str(src), str(base)], base)
    return runs


def run_once(cmd: list[str], out: Path) -> tuple[float, float]:
    """measure(cmd) into a fresh `out` (each command refuses or replaces an existing one)."""
    shutil.rmtree(out, ignore_errors=True)
    return measure(cmd)


@contextlib.contextmanager
def kept_on_failure(work: Path) -> Iterator[None]:
    """A failure inside (a command's, or a round trip's) ends the script naming `work`, left as it
    was: the source and the outputs are what a user debugging it wants to look at."""
    try:
        yield
    except SystemExit as stop:
        if stop.code in (None, 0):
            raise
        said = str(stop.code).rstrip()
        # A failed command's message ends with its stderr: the note goes on a line of its own.
        sep = "\n" if "\n" in said else " "
        note = f"(the source and the outputs are kept in {work} for a look)"
        raise SystemExit(f"{said}{sep}{note}") from None


def checked_outputs(vikhr: str, src: Path, work: Path, tps: list[int], layers: int) -> None:
    """Before timing: one untimed run of each command; every round trip HF -> megatron (each TP) ->
    HF and the baseline's output must hold the source's tensors byte for byte, else status 1."""
    with kept_on_failure(work):
        _check_round_trips(vikhr, src, work, tps)
    print(
        f"{layers} layer(s): round trips at --tp {', '.join(map(str, tps))} and the baseline byte-identical"
    )


def _check_round_trips(vikhr: str, src: Path, work: Path, tps: list[int]) -> None:
    for what, (cmd, out) in commands(vikhr, src, work, tps).items():
        if not what.startswith("megatron-to-hf"):  # run below from every TP's checkpoint
            run_once(cmd, out)
    outputs = {"transformers load/save": work / "transformers"}
    for tp in tps:
        back = work / f"hf2-tp{tp}"
        run_once(
            [vikhr, "convert", "megatron-to-hf", str(work / f"meg-tp{tp}"), str(back), "--no-progress"], back
        )
        outputs[f"HF -> megatron --tp {tp} -> HF"] = back
    for what, out in outputs.items():
        bad = differing_tensors(out, src)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            sys.exit(f"{what}: tensor {bad[0]}{more} differs from the source's: nothing timed")
        if out.name.startswith("hf2-"):
            shutil.rmtree(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = BenchParser(description=__doc__)
    ap.add_argument("--layers", type=positive(int), nargs="+", default=[1, 4])
    ap.add_argument("--runs", type=positive(int), default=3)
    ap.add_argument("--tp", type=positive(int), nargs="+", default=[1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-convert"))
    ap.add_argument("--shape", choices=sorted(SHAPES), default="mistral-7b")
    args = ap.parse_args(argv)
    check_output_dir(ap, "--work", args.work)
    heads, kv = SHAPES[args.shape][2:4]
    for tp in args.tp:
        if heads % tp or kv % tp:
            ap.error(f"argument --tp: {tp} does not divide the {args.shape} shape's {heads}/{kv} heads")
    return args


# The printed table's columns (docs/benchmarks.md shows the same header; a test compares them).
TABLE_COLUMNS = (
    "layers",
    "checkpoint GiB",
    "process",
    "s",
    "peak RSS GiB",
    "s vs transformers",
    "RSS vs transformers",
)


def print_table(rows: list[tuple[int, int, dict[str, list[tuple[float, float]]]]]) -> None:
    print("| " + " | ".join(TABLE_COLUMNS) + " |")
    print("|---:|---:|---|" + "---:|" * (len(TABLE_COLUMNS) - 3))

    def median(runs: list[tuple[float, float]], k: int) -> float:
        return statistics.median(r[k] for r in runs)

    for layers, size, measured in rows:
        base = measured["transformers load/save"]
        bt, br = median(base, 0), median(base, 1)
        for what, runs in measured.items():
            t, r = median(runs, 0), median(runs, 1)
            ratios = f"{t / bt:.2f}x | {r / br:.2f}x"
            print(f"| {layers} | {size / 2**30:.2f} | `{what}` | {t:.1f} | {r:.2f} | {ratios} |")


def print_scaling(rows: list[tuple[int, int, dict[str, list[tuple[float, float]]]]], shape: str) -> None:
    """Per extra layer, each process's time and peak RSS, and both extrapolated to the full model."""
    (l0, s0, first), (l1, s1, last) = rows[0], rows[-1]
    if l1 <= l0:
        return
    full = SHAPES[shape][-1]
    layer_gib = (s1 - s0) / (l1 - l0) / 2**30
    print(f"\nPer extra layer ({layer_gib:.2f} GiB of weights), extrapolated to {full} layers ({shape}):")
    for what in first:
        t0, t1 = (statistics.median(r[0] for r in m[what]) for m in (first, last))
        r0, r1 = (statistics.median(r[1] for r in m[what]) for m in (first, last))
        dt, dr = (t1 - t0) / (l1 - l0), (r1 - r0) / (l1 - l0)
        print(
            f"  {what}: {dt:+.2f} s and {dr * 1024:+.0f} MiB peak RSS per layer -> "
            f"{t0 + dt * (full - l0):.0f} s, {r0 + dr * (full - l0):.2f} GiB"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench_adapt.HIDDEN, bench_adapt.MLP, bench_adapt.HEADS, bench_adapt.KV = SHAPES[args.shape][:4]
    bench_adapt.HEAD_DIM, bench_adapt.VOCAB, bench_adapt.FULL_LAYERS = SHAPES[args.shape][4:]
    vikhr = str(Path(sys.executable).parent / "vikhr")
    rows = []
    for layers in args.layers:
        work = args.work / f"layers-{layers}"
        shutil.rmtree(work, ignore_errors=True)
        src = work / "hf"
        size = make_checkpoint(src, layers)
        checked_outputs(vikhr, src, work, args.tp, layers)
        runs = commands(vikhr, src, work, args.tp)
        measured: dict[str, list[tuple[float, float]]] = {what: [] for what in runs}
        with kept_on_failure(work):
            for _ in range(args.runs):
                # In order: megatron-to-hf reads what this round's hf-to-megatron at the largest TP wrote.
                for what, (cmd, out) in runs.items():
                    measured[what].append(run_once(cmd, out))
        shutil.rmtree(work)
        rows.append((layers, size, measured))
    print_table(rows)
    print_scaling(rows, args.shape)


if __name__ == "__main__":
    main()
