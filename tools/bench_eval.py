"""Benchmark: `vikhr eval` per task — seconds per document and model tokens per second at each batch
size, against batch size 1 in the same run — and the whole suite's time estimated from those rates.

Each task is run on its first --limit documents (`vikhr eval --limit`), --repeats times at each batch
size, after one warm-up run before the first; the table has the medians. "Model tokens" are the
positions run through the model, padding included, so tokens/s is the model's real rate on that
task's prompts. The estimate for a task is its median seconds per document at the fastest batch size
times its full document count (every document of the files in --data-dir), plus that batch size's
search for it (`auto` on a GPU: lm-eval searches once per task whatever its size, so the search is not
counted per document and the rates leave it out); the first documents of a task may be shorter or
longer than its average, so read it as the right order of magnitude, not a promise.

--timed-after FILE times nothing before FILE exists: the model is made and the first warm-up run
done meanwhile (tools/device_check.sh creates it when its ops build, which keeps the CPUs busy, has
ended), and the report says when timing began and how long it waited.

Model: --model DIR (an HF directory: also timed as a user runs it, `vikhr eval` in a fresh process,
start-up, model load and peak RSS included) or --random SHAPE (a random Mistral of that shape with
the bundled Mistral-7B tokenizer, built in memory on --device: no file written; --layers N keeps the
first N decoder layers, so a 7B-wide model fits a small machine and the rate scales by 32/N).

    .venv/bin/python tools/bench_eval.py --random tiny --tasks terra,rucola,mmlu_en,bpc --limit 20
    python tools/bench_eval.py --random mistral-7b --device cuda --dtype bfloat16 --batch-sizes 1 auto
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from bench_adapt import measure  # noqa: E402
from bench_cli import BenchParser, check_cuda, check_output_file, positive, vikhr_error_as_usage  # noqa: E402

from vikhr import atomic  # noqa: E402
from vikhr.assets import MISTRAL_TOKENIZER, RU_SAMPLE  # noqa: E402
from vikhr.errors import VikhrError  # noqa: E402
from vikhr.eval import EvalSettings, parse_task_list, run_eval  # noqa: E402
from vikhr.eval.cli import batch_size_arg  # noqa: E402
from vikhr.eval.runner import check_model_dir, make_lm, task_documents  # noqa: E402
from vikhr.tokenizer import load  # noqa: E402

# The shared data, as the other benchmarks find it: $VIKHR_SHARED_DATA, or ../shared/data beside the
# repository (not the current directory, so the script runs from anywhere).
SHARED = Path(os.environ.get("VIKHR_SHARED_DATA", REPO.parent / "shared" / "data"))

# (hidden, intermediate, heads, kv heads, layers): Mistral-7B v0.1/v0.2 and a test-sized one.
SHAPES = {"tiny": (64, 192, 4, 2, 2), "mistral-7b": (4096, 14336, 32, 8, 32)}


def random_model(shape: str, layers: int | None, device: str, dtype: str) -> Any:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    hidden, intermediate, heads, kv_heads, full_layers = SHAPES[shape]
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=layers or full_layers,
        max_position_embeddings=32768,
        sliding_window=None,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    torch_dtype = torch.float32 if dtype in ("auto", "float32") else getattr(torch, dtype)
    with torch.device(device):  # initialised where it runs: a 7B on the CPU first would take minutes
        model = MistralForCausalLM(config).to(torch_dtype)
    return model.eval()


def timed_runs(
    settings: EvalSettings, lm: Any, repeats: int, warm_up: bool, before_timing: Callable[[], None]
) -> dict[str, dict[str, float]]:
    """Per task: median seconds per document and model tokens per second over `repeats` runs, after
    one untimed run if `warm_up` (the first batch size: kernels, caches; the later ones find them
    warm, and the batch-size search, which every run repeats, is timed apart) and `before_timing`."""
    if warm_up:
        run_eval(settings, lm=lm)
    before_timing()
    runs = [run_eval(settings, lm=lm)["tasks"] for _ in range(repeats)]
    out = {}
    for name in settings.tasks:
        seconds = statistics.median(r[name]["seconds"] for r in runs)
        probe = statistics.median(r[name]["probe_seconds"] for r in runs)
        working = max(seconds - probe, 1e-9)  # the task's own work, the batch-size search left out
        docs = runs[0][name]["n"]
        tokens = runs[0][name]["model_tokens"]
        out[name] = {
            "documents": docs,
            "seconds": seconds,
            "probe_seconds": probe,
            "s_per_doc": working / docs,
            "tokens_per_s": tokens / working if tokens is not None else float("nan"),
        }
    return out


def whole_command(args: argparse.Namespace, model_dir: Path, batch_size: str) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of `vikhr eval` as a user runs it, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "vikhr", "eval", "--model", str(model_dir), "--tasks", args.tasks]
        cmd += ["--data-dir", str(args.data_dir), "--limit", str(args.limit), "--batch-size", batch_size]
        cmd += ["--dtype", args.dtype, "--bootstrap-iters", "0", "--output", f"{tmp}/r.json"]
        if args.device:
            cmd += ["--device", args.device]
        return measure(cmd)


class QuietWait:
    """Called before the first timed run: waits until `marker` exists (None: at once) and notes in
    `report` when timing began (Unix time) and how long it waited, so the report shows that nothing
    it timed overlapped what the marker waited out."""

    POLL_S = 0.2

    def __init__(self, marker: Path | None, report: dict[str, Any]) -> None:
        self.marker, self.report = marker, report

    def __call__(self) -> None:
        if "timing_started_unix" in self.report:
            return
        started = time.monotonic()
        if self.marker is not None and not self.marker.exists():
            print(f"warmed up; timing nothing before {self.marker} exists", file=sys.stderr, flush=True)
            while not self.marker.exists():
                time.sleep(self.POLL_S)
        self.report["timed_after"] = str(self.marker) if self.marker is not None else None
        self.report["waited_s"] = round(time.monotonic() - started, 3)
        self.report["timing_started_unix"] = time.time()


def fmt_time(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def suite_estimate(
    rates: dict[str, dict[str, dict[str, float]]], full: dict[str, int]
) -> tuple[dict[str, dict[str, float]], float]:
    """Per task: full documents and estimated seconds (the fastest batch size measured so far: its
    seconds per document times the documents, plus its batch-size search, once); the suite's
    seconds."""
    rows = {}
    for task, documents in full.items():
        estimates = [r[task]["s_per_doc"] * documents + r[task]["probe_seconds"] for r in rates.values()]
        rows[task] = {"full_documents": documents, "estimate_s": min(estimates)}
    return rows, sum(r["estimate_s"] for r in rows.values())


def table_columns(batch_sizes: list[str]) -> list[str]:
    """The printed table's columns (docs/benchmarks.md shows the same header; a test compares them):
    per batch size its seconds per document and model tokens/s, then each later batch size's speed-up
    over the first (the first's seconds per document / this one's)."""
    first = batch_sizes[0]
    columns = ["Task", "Docs"] + [f"b={b} {unit}" for b in batch_sizes for unit in ("s/doc", "tok/s")]
    return columns + [f"b={b} vs b={first}" for b in batch_sizes[1:]] + ["Full docs", "Full est."]


def print_table(
    tasks: list[str],
    batch_sizes: list[str],
    rates: dict[str, dict[str, dict[str, float]]],
    rows: dict[str, dict[str, float]],
) -> None:
    """Print the Markdown table."""
    first = batch_sizes[0]
    columns = table_columns(batch_sizes)
    print("| " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * (len(columns) - 1))
    for task in tasks:
        cells = [task, str(rates[first][task]["documents"])]
        for b in batch_sizes:
            r = rates[b][task]
            cells += [f"{r['s_per_doc']:.3f}", f"{r['tokens_per_s']:,.0f}"]
        # Ratios of the rates (the batch-size search left out, as in the s/doc columns).
        base = rates[first][task]["s_per_doc"]
        cells += [f"{base / rates[b][task]['s_per_doc']:.2f}x" for b in batch_sizes[1:]]
        cells += [str(rows[task]["full_documents"]), fmt_time(rows[task]["estimate_s"])]
        print("| " + " | ".join(cells) + " |")


def write_report(path: Path, header: dict[str, Any], rates: dict, full: dict[str, int], **extra: Any) -> None:
    """The JSON report of the batch sizes measured so far, written after each one (atomically), so
    that a run stopped at its time limit still reports what it measured."""
    rows, total = suite_estimate(rates, full)
    report = {**header, "rates": rates, "tasks": rows, "suite_estimate_s": total, **extra}
    atomic.write_text(path, json.dumps(report, indent=2) + "\n")


def batch_size_text(value: str) -> str:
    """An argparse type: `vikhr eval --batch-size`'s values (a positive integer or 'auto'), kept as
    given (they name the table's columns)."""
    batch_size_arg(value)
    return value


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = BenchParser(description=__doc__)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="HF model directory")
    source.add_argument("--random", choices=sorted(SHAPES), help="a random Mistral of this shape")
    ap.add_argument(
        "--layers", type=positive(int), help="with --random: decoder layers (default: the shape's)"
    )
    ap.add_argument("--tasks", default="mmlu_en,terra,rucola,chegeka,xquad_ru,bpc")
    ap.add_argument(
        "--data-dir",
        type=Path,
        help=f"evaluation data directory (default {SHARED / 'eval'}: $VIKHR_SHARED_DATA/eval when set, "
        "else ../shared/data/eval beside the repository)",
    )
    ap.add_argument("--bpc-data", type=Path, default=RU_SAMPLE)
    ap.add_argument("--limit", type=positive(int), default=20, help="documents per task per run (default 20)")
    ap.add_argument(
        "--batch-sizes", nargs="+", type=batch_size_text, default=["1", "8"], help="the first is the baseline"
    )
    ap.add_argument("--repeats", type=positive(int), default=3)
    ap.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    ap.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--timed-after",
        type=Path,
        metavar="FILE",
        help="time nothing before FILE exists (the model is made and the first warm-up run done "
        "meanwhile): what else keeps the machine busy (an ops build) has ended",
    )
    args = ap.parse_args()
    if args.layers and args.model:
        ap.error("argument --layers: only with --random (a --model directory is run whole)")
    if len(set(args.batch_sizes)) < len(args.batch_sizes):
        ap.error(f"argument --batch-sizes: a batch size given twice: {' '.join(args.batch_sizes)}")
    if args.model:
        # a missing directory was "tokenizer not found", an empty one failed in its tokenizer load
        try:
            check_model_dir(args.model)
        except VikhrError as e:
            ap.error(f"--model: {e}")
    check_cuda(ap, args.device)
    if args.json:
        check_output_file(ap, "--json", args.json)
    if args.data_dir is None:
        args.data_dir = default_data_dir(ap, args.tasks)
    return ap, args


def default_data_dir(ap: argparse.ArgumentParser, tasks: str) -> Path:
    """SHARED/eval; refused in one line naming VIKHR_SHARED_DATA where it is missing and a task reads
    it (bpc alone reads only --bpc-data; an unknown task is refused with the task list later)."""
    data_dir = SHARED / "eval"
    try:
        reads_data_dir = parse_task_list(tasks) != ["bpc"]
    except VikhrError:
        return data_dir
    if reads_data_dir and not data_dir.is_dir():
        ap.error(
            f"no evaluation data in {data_dir} (the default --data-dir): set VIKHR_SHARED_DATA to the "
            "shared data directory, or give --data-dir"
        )
    return data_dir


def main() -> None:
    ap, args = parse_args()
    vikhr_error_as_usage(ap, lambda: benchmark(args))


def benchmark(args: argparse.Namespace) -> None:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tasks = parse_task_list(args.tasks)
    base = dict(data_dir=args.data_dir, bpc_data=args.bpc_data, device=device, dtype=args.dtype)
    full = task_documents(EvalSettings(model_dir=Path("."), tasks=tasks, **base))
    model_dir = args.model or Path(".")
    tokenizer = load(args.model if args.model else MISTRAL_TOKENIZER)
    model = None
    started = time.perf_counter()
    if args.random:
        model = random_model(args.random, args.layers, device, args.dtype)
    print(f"model ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    what = args.model or f"random {args.random}" + (f", {args.layers} layers" if args.layers else "")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    header = {"model": str(what), "device": name, "dtype": args.dtype, "limit": args.limit}
    wait = QuietWait(args.timed_after, header)
    rates: dict[str, dict[str, dict[str, float]]] = {}
    for bs in args.batch_sizes:
        batch: int | str = int(bs) if bs.isdigit() else bs
        settings = EvalSettings(
            model_dir=model_dir, tasks=tasks, limit=args.limit, batch_size=batch, bootstrap_iters=0, **base
        )
        lm = make_lm(settings, tokenizer, model=model)
        warm_up = bs == args.batch_sizes[0]
        rates[bs] = timed_runs(settings, lm, args.repeats, warm_up=warm_up, before_timing=wait)
        del lm
        done = ", ".join(f"{t} {r['s_per_doc']:.3f}" for t, r in rates[bs].items())
        print(f"batch {bs}: s/doc {done}", file=sys.stderr, flush=True)
        if args.json:
            write_report(args.json, header, rates, full, finished=False, command=None)

    first = args.batch_sizes[0]
    print(
        f"\n`vikhr eval` per task: {what}, {args.dtype}, {name}; first {args.limit} documents, median "
        f"of {args.repeats} runs; b=N vs b={first} = batch {first}'s seconds per document / batch N's\n"
    )
    rows, total = suite_estimate(rates, full)
    print_table(tasks, args.batch_sizes, rates, rows)
    print(f"\nWhole suite ({len(tasks)} tasks, {sum(full.values())} documents): about {fmt_time(total)}")

    command = None
    if args.model:
        best_bs = min(args.batch_sizes, key=lambda b: sum(r["seconds"] for r in rates[b].values()))
        secs, gib = whole_command(args, args.model, best_bs)
        command = {"batch_size": best_bs, "seconds": secs, "peak_rss_gib": gib}
        print(
            f"`vikhr eval` as a user runs it (batch {best_bs}, fresh process): "
            f"{secs:.1f} s, peak RSS {gib:.2f} GiB"
        )
    if args.json:
        write_report(args.json, header, rates, full, finished=True, command=command)


if __name__ == "__main__":
    main()
