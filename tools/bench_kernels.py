r"""Micro-benchmark of the fused cross-entropy + KL op (vikhr.ops.cross_entropy_kl).

For each vocabulary size it times forward+backward (median of --runs runs) and measures the peak
extra memory (beyond the inputs) of:
  vikhr fused      the csrc/ kernel, gradient written over the logits (inplace_backward=True)
  vikhr persistent the same on CUDA with the persistent grid (VIKHR_CEKL_SCHEDULE=persistent)
  vikhr smem       the same on CUDA with the row kept in shared memory (VIKHR_CEKL_SCHEDULE=smem;
                   rows too long for it run as `vikhr fused`)
  vikhr fused/buf  the csrc/ kernel with a separate gradient buffer
  eager            the plain PyTorch autograd composition (log_softmax, nll, KL sum) in fp32:
                   vikhr.ops.reference.cross_entropy_kl_reference, which the tests check against
  compile          torch.compile of the eager code (skipped with --no-compile or if it fails)
  liger            Liger-Kernel's fused CE + KL-div losses (forward KL: Liger's KLDiv differentiates
                   its input only), when liger_kernel is installed (CUDA)
and reports each one's ratio to eager and to the memory-bandwidth roofline: 3 passes over the
N×V logits in their dtype (read z, read r, write the gradient; the bytes per call are in the
table) at --bandwidth (default: 4.8 TB/s, an H200's HBM3e, on CUDA; the measured copy rate on
the CPU).

Before timing, each implementation's loss and gradient at the benchmark size are checked against
a reference (float64 on the CPU, float32 on the device; the peer Liger-Kernel against its own loss
written in PyTorch); a wrong result or a worker that fails makes the script exit with status 1.
A third-party baseline (Liger-Kernel) that cannot run (an import error inside it, a crash, a wrong
result) does not: its row says `FAILED` with the reason, vikhr's own rows are measured and written
all the same, a `baseline failed:` line on stderr names it, and the exit status is 3 (vikhr's rows
passed, a baseline is missing); a baseline that failed at one vocabulary size is not run at the next.
Times: end to end (host clock around a synchronised fwd+bwd, median of --runs) and, on CUDA, the
device time of the same step between CUDA events, and for vikhr the fused kernel alone (one
cekl_forward call, what the roofline compares against).

Gradients are taken with torch.autograd.grad (as the output layer's backward would consume them),
not accumulated into a leaf's .grad, which would copy an in-place gradient.
Every (implementation, size) runs in its own subprocess so that peak memory is its own: CUDA's
max_memory_allocated on a GPU, the peak resident set size (VmHWM, reset first) on the CPU.

    python tools/bench_kernels.py --device cpu         # CPU: N=512, V in {40000, 131072}
    python tools/bench_kernels.py --device cuda        # GPU: N=8192, V in {40000, 131072}
    python tools/bench_kernels.py --json out.json      # also write the rows as JSON

`--sweep-schedules` times the fused forward kernel alone (one process, CUDA events) under every
CUDA schedule and the persistent grid at 1-4 blocks per SM (VIKHR_CEKL_SCHEDULE=persistent:K),
each with 1 and 2 packs per step (VIKHR_CEKL_PACKS), after checking each one's result bit for bit
against the row schedule's with 1 pack. The schedules are CUDA-only: on the CPU (tools/device_check.sh
--dry-run) every row times the one CPU kernel with a variant's settings passed, which it ignores,
and the table and the JSON rows (`schedule_applied`: false) say so.
`--profile-schedules` runs the fused forward kernel once per CUDA schedule and packs per step
(after one warm-up launch each) for a profiler around the process, and prints the order of the
launches (on the CPU, the one CPU kernel with each variant's settings passed, ignored, and it says
so: nothing there profiles a schedule); e.g. the
DRAM bytes each schedule moves (what decides whether the second read of a row hits L2):

    ncu --kernel-name regex:forward_kernel --launch-skip 6 --launch-count 6 \
        --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum \
        python tools/bench_kernels.py --profile-schedules --device cuda --vocab 40000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench_cli import BenchParser, check_cuda, check_output_file, positive

REPO = Path(__file__).resolve().parent.parent
IMPLS = ("vikhr fused", "vikhr persistent", "vikhr smem", "vikhr fused/buf", "eager", "compile", "liger")
# Third-party implementations timed for comparison: their failure is reported, not vikhr's.
BASELINES = ("liger",)
BASELINE_FAILED_EXIT = 3  # vikhr's rows passed, a baseline could not run
# The CUDA forward's schedule of each vikhr implementation (vikhr.ops.cross_entropy_kl: CUDA_SCHEDULES).
SCHEDULES = {"vikhr persistent": "persistent", "vikhr smem": "smem"}
KL_WEIGHT, TEMPERATURE, IGNORE = 0.5, 1.0, -100
H200_BANDWIDTH_GBS = 4800.0  # HBM3e peak, GB/s
# Allowed error against the reference: loss relative; gradient relative to its largest entry
# (bf16/fp16 gradients are rounded to 8/11 mantissa bits when stored).
LOSS_RTOL = 2e-3
GRAD_RTOL = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 4e-3}


def _eager_loss(z, r, labels):
    """CE + λ·T²·KL(P‖R) written the obvious way with PyTorch autograd (fp32 upcast)."""
    import torch

    from vikhr.ops.reference import cross_entropy_kl_reference

    out = cross_entropy_kl_reference(
        z,
        r,
        labels,
        kl_weight=KL_WEIGHT,
        temperature=TEMPERATURE,
        ignore_index=IGNORE,
        compute_dtype=torch.float32,
    )
    return out.loss


def _make_step(impl: str, device: str):
    """A function (z, r, labels) -> (loss, d loss / d z) running forward + backward; None when
    unavailable here."""
    import torch

    if impl.startswith("vikhr"):
        from vikhr.ops import cross_entropy_kl

        inplace = impl != "vikhr fused/buf"

        def step(z, r, labels):
            logits = z.detach().requires_grad_()
            out = cross_entropy_kl(
                logits, r, labels, kl_weight=KL_WEIGHT, temperature=TEMPERATURE, inplace_backward=inplace
            )
            return out.loss, torch.autograd.grad(out.loss, logits)[0]

        return step
    if impl in ("eager", "compile"):
        fn = _eager_loss if impl == "eager" else torch.compile(_eager_loss, dynamic=False)

        def step(z, r, labels):
            logits = z.detach().requires_grad_()
            loss = fn(logits, r, labels)
            return loss, torch.autograd.grad(loss, logits)[0]

        return step
    if impl == "liger":
        # Not installed is a skip; installed but failing to import (e.g. its triton does not suit
        # this torch) is the baseline's failure, reported with its error.
        if device != "cuda" or importlib.util.find_spec("liger_kernel") is None:
            return None
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss

        return _liger_step(LigerCrossEntropyLoss(ignore_index=IGNORE), LigerKLDIVLoss(**LIGER_KL))
    raise ValueError(impl)


# Liger's KLDiv differentiates its input only, so it computes the forward KL(R‖Q) (input log Q,
# target log R), averaged over all rows (batchmean); its CE writes the gradient into the logits.
LIGER_KL = {"reduction": "batchmean", "log_target": True}


def _liger_step(ce_loss, kl_loss):
    import torch

    def step(z, r, labels):
        logits = z.detach().requires_grad_()
        logq = torch.log_softmax(logits.float(), dim=-1)
        logr = torch.log_softmax(r.float(), dim=-1)
        loss = KL_WEIGHT * kl_loss(logq, logr) + ce_loss(logits, labels)
        return loss, torch.autograd.grad(loss, logits)[0]

    return step


def _expected(impl: str, z, r, labels, device: str):
    """The reference loss and gradient of `impl`'s loss on the same inputs (float64 on the CPU,
    float32 on the device, where float64 would be slow and large)."""
    import torch
    import torch.nn.functional as F

    from vikhr.ops.reference import cross_entropy_kl_reference

    dtype = torch.float64 if device == "cpu" else torch.float32
    logits = z.to(dtype, copy=True).requires_grad_()  # never the caller's tensor (float32 on the device)
    if impl == "liger":
        logq, logr = torch.log_softmax(logits, -1), torch.log_softmax(r.to(dtype), -1)
        kl = F.kl_div(logq, logr, **LIGER_KL)
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE) + KL_WEIGHT * kl
    else:
        loss = cross_entropy_kl_reference(
            logits,
            r.to(dtype),
            labels,
            kl_weight=KL_WEIGHT,
            temperature=TEMPERATURE,
            ignore_index=IGNORE,
            compute_dtype=dtype,
        ).loss
    return loss.detach(), torch.autograd.grad(loss, logits)[0]


def _check_result(impl: str, got, z, r, labels, device: str, dtype_name: str) -> None:
    """Raises when `impl`'s (loss, gradient) at this size is not the reference's."""
    want_loss, want_grad = _expected(impl, z, r, labels, device)
    loss, grad = float(got[0].detach()), got[1].to(want_grad.dtype)
    if abs(loss - float(want_loss)) > LOSS_RTOL * max(1.0, abs(float(want_loss))):
        raise AssertionError(f"{impl}: loss {loss} != reference {float(want_loss)}")
    err, top = float((grad - want_grad).abs().max()), float(want_grad.abs().max())
    if not err <= GRAD_RTOL[dtype_name] * top:
        raise AssertionError(
            f"{impl}: gradient error {err:.3g} > {GRAD_RTOL[dtype_name]} × max |grad| {top:.3g}"
        )


def _inputs(n: int, v: int, dtype_name: str, device: str):
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator(device=device).manual_seed(0)
    z = (torch.randn(n, v, generator=g, device=device) * 3).to(dtype)
    r = (z.float() + torch.randn(n, v, generator=g, device=device)).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g, device=device)
    labels[::17] = IGNORE
    return z, r, labels


def _rss_bytes(field: str) -> int:
    """VmRSS (current) or VmHWM (peak since the last reset) of this process, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    Path("/proc/self/clear_refs").write_text("5")


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _worker(impl: str, n: int, v: int, dtype_name: str, device: str, runs: int, threads: int) -> dict:
    """Runs in a subprocess: the result checked against the reference, peak extra memory of one
    step, then the median times of `runs` steps."""
    import torch

    torch.set_num_threads(threads)
    step = _make_step(impl, device)
    if step is None:
        return {"skipped": "not installed / not for this device"}
    z, r, labels = _inputs(n, v, dtype_name, device)
    # The first call also compiles (torch.compile) or loads csrc ops; its result is checked.
    _check_result(impl, step(z.clone(), r, labels), z, r, labels, device, dtype_name)
    _sync(device)
    # Fresh logits per run (the in-place variant overwrites them), made outside the timed region.
    fresh = z.clone()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        base = _rss_bytes("VmRSS")
    step(fresh, r, labels)
    _sync(device)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _rss_bytes("VmHWM")) - base
    del fresh
    result = {"median_ms": _median_ms(lambda x: step(x, r, labels), z, runs, device, events=False)}
    result["peak_extra_mib"] = max(peak, 0) / 2**20
    if device == "cuda":
        result["device_ms"] = _median_ms(lambda x: step(x, r, labels), z, runs, device, events=True)
        if impl.startswith("vikhr"):
            result["kernel_ms"] = _median_ms(_fused_kernel_call(r, labels, v), z, runs, device, events=True)
    return result


def _fused_kernel_call(r, labels, v: int):
    """The csrc/ forward kernel alone (statistics + gradient written over the logits)."""
    import torch

    from vikhr.ops.cross_entropy_kl import cuda_schedule

    # The targets and row scales the op gives the kernel (one rank, no loss scale).
    target, _, row_scale, _ = torch.ops.vikhr.cekl_prepare(labels, IGNORE, 0, v, v, 1.0)
    mode_reverse = 1
    schedule = cuda_schedule()

    def call(z):
        return torch.ops.vikhr.cekl_forward(
            z, r, target, row_scale, 1.0 / TEMPERATURE, KL_WEIGHT * TEMPERATURE, mode_reverse, v, z, *schedule
        )

    return call


def _profile_schedules(args: argparse.Namespace) -> int:
    """Launches the fused forward (in place, at the first --vocab) once per schedule and packs per
    step (1, 2), twice over: the first round warms up, the second is the one to profile (launches
    7-12 of the kernel)."""
    from vikhr.ops.build import load_ops
    from vikhr.ops.cross_entropy_kl import CUDA_SCHEDULES

    load_ops()
    v = args.vocab[0]
    z, r, labels = _inputs(args.n, v, args.dtype, args.device)
    if args.device != "cuda":
        print(CPU_PROFILE_NOTE)
    for round_name in ("warm-up", "profiled"):
        for schedule, packs in _schedule_variants(CUDA_SCHEDULES):
            fresh = z.clone()
            _sync(args.device)
            _fused_kernel_call(r, labels, v)(fresh)
            _sync(args.device)
            if args.device == "cuda":
                launched = f"forward kernel, schedule {schedule}, {packs} packs"
            else:
                launched = f"CPU kernel, settings passed, ignored: {_settings(schedule, packs)}"
            print(f"{round_name}: {launched}, N={args.n}, V={v}")
    return 0


# What --profile-schedules says on the CPU, before its launches: no schedule ran, so none was profiled.
CPU_PROFILE_NOTE = (
    "# CPU: the schedules are CUDA-only; the CPU kernel ignores VIKHR_CEKL_SCHEDULE and VIKHR_CEKL_PACKS.\n"
    "# Each launch runs that one CPU kernel with a variant's settings passed: no schedule is profiled\n"
    "# here. Profile the schedules with --device cuda."
)


def _settings(schedule: str, packs: int) -> str:
    """A variant's settings as the CPU rows name them (passed to a kernel that ignores them)."""
    return f"{schedule}, {packs} pack{'s' if packs > 1 else ''}"


def _schedule_variants(schedules):
    """(schedule, packs per step) for each of `schedules` with 1, then 2 packs per step, each set in
    the environment (VIKHR_CEKL_SCHEDULE, VIKHR_CEKL_PACKS) before it is yielded."""
    from vikhr.ops.cross_entropy_kl import PACKS_ENV, SCHEDULE_ENV

    for packs in (1, 2):
        for schedule in schedules:
            os.environ[SCHEDULE_ENV], os.environ[PACKS_ENV] = schedule, str(packs)
            yield schedule, packs


# The variants --sweep-schedules times: each schedule, and the persistent grid at 1-4 blocks per SM,
# each with one and with two 16-byte packs loaded per thread per step (VIKHR_CEKL_PACKS).
SWEEP = ("row", "persistent", "persistent:1", "persistent:2", "persistent:3", "persistent:4", "smem")


# What the sweep says on the CPU, above its table: the CPU kernel has one schedule, so its rows are
# a dry run of the GPU sweep's steps, not a comparison of schedules.
CPU_SWEEP_NOTE = (
    "# CPU: the schedules are CUDA-only; the CPU kernel ignores VIKHR_CEKL_SCHEDULE and VIKHR_CEKL_PACKS.\n"
    "# Each row times that one CPU kernel with a variant's settings passed (its result checked bit for\n"
    "# bit, as on a GPU): the rows differ by noise alone. Compare the schedules with --device cuda."
)


def _sweep_table(device: str) -> tuple[str, Callable[[str, int, float, float], str]]:
    """The sweep table's header and row format: a row per schedule on CUDA; on the CPU every row
    names the kernel it timed, the CPU one, and the settings it passed that the kernel ignores."""
    if device == "cuda":
        header = f"{'schedule':<14} {'packs':>5} {'ms':>9} {'GB/s':>8}"
        return header, lambda variant, packs, ms, gbs: f"{variant:<14} {packs:>5} {ms:>9.3f} {gbs:>8.0f}"
    header = f"{CPU_SWEEP_NOTE}\n{'timed':<10} {'settings passed, ignored':<26} {'ms':>9} {'GB/s':>8}"

    def row(variant: str, packs: int, ms: float, gbs: float) -> str:
        return f"{'CPU kernel':<10} {_settings(variant, packs):<26} {ms:>9.3f} {gbs:>8.0f}"

    return header, row


def _sweep_schedules(args: argparse.Namespace) -> int:
    """The fused forward kernel alone (in place) under every variant of SWEEP, in one process: each
    one's rows and gradient checked bit for bit against the row schedule's, then its median time
    (CUDA events on the GPU) and effective bandwidth; a table, and --json rows. On the CPU, whose
    kernel ignores the settings, the table and rows say so (`schedule_applied`: false)."""
    import torch

    from vikhr.ops.build import load_ops

    torch.set_num_threads(args.threads)
    load_ops()
    v = args.vocab[0]
    z, r, labels = _inputs(args.n, v, args.dtype, args.device)
    call_bytes = 3 * z.numel() * z.element_size()
    events = args.device == "cuda"
    header, table_row = _sweep_table(args.device)
    print(f"# fused forward kernel alone, N={args.n}, V={v}, {args.dtype}, median of {args.runs} runs")
    print(header)
    rows, want, differ = [], None, []
    for variant, packs in _schedule_variants(SWEEP):
        call = _fused_kernel_call(r, labels, v)
        got = z.clone()
        stats = call(got)
        _sync(args.device)
        if want is None:
            want = (stats, got)
        equal = bool(torch.equal(stats, want[0]) and torch.equal(got, want[1]))
        if not equal:
            # Timed all the same (and the run fails at the end): a wrong variant's speed still says
            # what its design is worth, and the variants after it are not lost.
            differ.append(f"{variant}, {packs} packs")
            print(f"MISMATCH: schedule {variant}, {packs} packs differs from row, 1 pack", file=sys.stderr)
        ms = _median_ms(call, z, args.runs, args.device, events=events)
        rows.append(
            {
                "schedule": variant,
                "packs": packs,
                "schedule_applied": args.device == "cuda",
                "n": args.n,
                "vocab": v,
                "dtype": args.dtype,
                "kernel_ms": ms,
                "bitwise_equal": equal,
            }
        )
        print(table_row(variant, packs, ms, call_bytes / ms / 1e6))
        _write_json(args.json, rows)  # after each variant: a run stopped at its limit keeps the rest
    if differ:
        print(f"FAILED: not bit for bit equal to row, 1 pack: {'; '.join(differ)}", file=sys.stderr)
        return 1
    return 0


# GPU cycles of spin enqueued before a start event (about 1 ms at the H200's 1.98 GHz): the device
# is busy while the host launches the timed work, so the events bracket device time alone and not
# the host's launch latency (tens of µs, and not the same for every schedule).
SPIN_CYCLES = 2_000_000


def _median_ms(call, z, runs: int, device: str, events: bool) -> float:
    """Median of `runs` calls on fresh copies of z: host clock around a synchronised call, or the
    device time between CUDA events recorded around it (behind a spin that hides the launch)."""
    import torch

    times = []
    for _ in range(runs):
        fresh = z.clone()
        _sync(device)
        if events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(SPIN_CYCLES)
            start.record()
            call(fresh)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            call(fresh)
            _sync(device)
            times.append(1e3 * (time.perf_counter() - t0))
        del fresh
    return statistics.median(times)


def _copy_rate(n: int, v: int, dtype_name: str, device: str, threads: int) -> float:
    """Measured device-to-device copy rate in bytes/s (read + write) on an N×V buffer."""
    import torch

    torch.set_num_threads(threads)
    src = torch.ones(n, v, dtype=getattr(torch, dtype_name), device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(7):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / statistics.median(times[2:])


def _run_worker(args: argparse.Namespace, impl: str, v: int) -> dict:
    if impl == "liger" and args.device != "cuda":
        return {"skipped": "Liger-Kernel runs on CUDA only"}
    if impl in SCHEDULES and args.device != "cuda":
        return {"skipped": "a CUDA schedule; the CPU kernel has one"}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--device",
        args.device,
        "--n",
        str(args.n),
        "--vocab",
        str(v),
        "--dtype",
        args.dtype,
        "--runs",
        str(args.runs),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if impl.startswith("vikhr"):
        from vikhr.ops.cross_entropy_kl import SCHEDULE_ENV

        env[SCHEDULE_ENV] = SCHEDULES.get(impl, "row")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {args.timeout:.0f} s"}
    if proc.returncode != 0:
        sys.stderr.write(f"--- {impl} V={v} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}\n")
        last = (proc.stderr.strip().splitlines() or [f"worker exited with status {proc.returncode}"])[-1]
        return {"failed": last[:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parse_args() -> argparse.Namespace:
    parser = BenchParser(description=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument(
        "--n", type=positive(int), default=None, help="tokens (rows); default 512 on CPU, 8192 on CUDA"
    )
    parser.add_argument("--vocab", type=positive(int), nargs="+", default=[40000, 131072])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--runs", type=positive(int), default=5, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=positive(int), default=os.cpu_count() or 1, help="CPU threads")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--bandwidth",
        type=positive(float),
        default=None,
        help="GB/s of the roofline; default 4800 on CUDA, measured on CPU",
    )
    parser.add_argument("--timeout", type=positive(float), default=300, help="seconds per measurement")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the results here (after each row)"
    )
    parser.add_argument(
        "--profile-schedules",
        action="store_true",
        help="run the fused forward once per CUDA schedule (after a warm-up of each) for a profiler; on "
        "the CPU, which ignores the schedules, the same launches of its one kernel",
    )
    parser.add_argument(
        "--sweep-schedules",
        action="store_true",
        help="time the fused forward kernel alone under every CUDA schedule (and persistent:1-4); on the "
        "CPU, which ignores the schedules, the same steps on its one kernel",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_cuda(parser, args.device)
    if args.json is not None:
        # written after the first row: a missing directory failed there, after the timing
        check_output_file(parser, "--json", args.json)
    return args


# The table's columns (docs/benchmarks.md shows the same header; a test compares them), and the
# alignment and width of each in the printed table.
TABLE_COLUMNS = ("impl", "V", "ms", "device ms", "kernel ms", "vs eager", "x roofline", "peak extra MiB")
COLUMN_WIDTHS = (("<", 16), (">", 7), (">", 10), (">", 10), (">", 10), (">", 9), (">", 11), (">", 15))


def _print_row(impl: str, v: int, res: dict, eager_ms: float | None, roofline_ms: float) -> None:
    if "skipped" in res or "failed" in res:
        what = f"skipped: {res['skipped']}" if "skipped" in res else f"FAILED: {res['failed']}"
        print(f"{impl:<16} {v:>7} {'-':>10}   ({what})")
        return
    ratio = f"{eager_ms / res['median_ms']:.2f}x" if eager_ms else "-"
    device_ms = f"{res['device_ms']:.3f}" if "device_ms" in res else "-"
    kernel_ms = res.get("kernel_ms")
    kernel = f"{kernel_ms:.3f}" if kernel_ms is not None else "-"
    roof = f"{(kernel_ms or res['median_ms']) / roofline_ms:.2f}x"
    print(
        f"{impl:<16} {v:>7} {res['median_ms']:>10.3f} {device_ms:>10} {kernel:>10} {ratio:>9} "
        f"{roof:>11} {res['peak_extra_mib']:>15.1f}"
    )


def _write_json(path: Path | None, rows: list[dict]) -> None:
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2))
    tmp.replace(path)


def main() -> int:
    args = _parse_args()
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.n is None:
        args.n = 8192 if args.device == "cuda" else 512
    if args.profile_schedules:
        return _profile_schedules(args)
    if args.sweep_schedules:
        return _sweep_schedules(args)
    if args.worker is not None:
        res = _worker(args.worker, args.n, args.vocab[0], args.dtype, args.device, args.runs, args.threads)
        print(json.dumps(res))
        return 0

    impls = [i for i in args.impls if not (i == "compile" and args.no_compile)]
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"# cross_entropy_kl fwd+bwd on {machine}: N={args.n}, {args.dtype}, λ={KL_WEIGHT}, reverse KL, "
        f"median of {args.runs} runs; torch {torch.__version__}\n"
        "# ms: end to end (host clock); device ms: CUDA events around the step; kernel ms: the fused "
        "csrc kernel alone; x roofline: kernel ms (else ms) / (bytes per call / bandwidth)"
    )
    rows = []
    widths = zip(TABLE_COLUMNS, COLUMN_WIDTHS, strict=True)
    header = " ".join(f"{name:{align}{width}}" for name, (align, width) in widths)
    elem = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    for v in args.vocab:
        if args.bandwidth is not None or args.device == "cuda":
            rate, source = 1e9 * (args.bandwidth or H200_BANDWIDTH_GBS), "given"
        else:
            rate, source = _copy_rate(args.n, v, args.dtype, args.device, args.threads), "measured copy rate"
        call_bytes = 3 * args.n * v * elem  # read z, read r, write the gradient
        roofline_ms = 1e3 * call_bytes / rate
        print(
            f"\nV={v}: {call_bytes / 1e6:.1f} MB per call (3 passes over N×V) at {rate / 1e9:.0f} GB/s "
            f"({source}) -> roofline {roofline_ms:.3f} ms"
        )
        print(header)
        results = {}
        for impl in impls:
            results[impl] = _baseline_failed_before(rows, impl) or _run_worker(args, impl, v)
            rows.append(
                {
                    "impl": impl,
                    "n": args.n,
                    "vocab": v,
                    "dtype": args.dtype,
                    "device": machine,
                    "bytes_per_call": call_bytes,
                    "bandwidth_gbs": rate / 1e9,
                    "roofline_ms": roofline_ms,
                    **results[impl],
                }
            )
            _write_json(args.json, rows)  # after each row: a run stopped at its limit keeps what it measured
        eager_ms = results.get("eager", {}).get("median_ms")
        for impl, res in results.items():
            _print_row(impl, v, res, eager_ms, roofline_ms)
    return _exit_status(rows)


def _baseline_failed_before(rows: list[dict], impl: str) -> dict | None:
    """A failed row for a baseline that failed at an earlier vocabulary size (not run again: an
    import error or a hang would only repeat, at the cost of the step's time); else None."""
    earlier = [r for r in rows if r["impl"] == impl and impl in BASELINES and "failed" in r]
    if not earlier:
        return None
    return {"failed": f"not run, failed at V={earlier[0]['vocab']}: {earlier[0]['failed']}"[:200]}


def _exit_status(rows: list[dict]) -> int:
    """1 when one of vikhr's own rows (its kernels, eager, compile) failed; BASELINE_FAILED_EXIT
    when only a third-party baseline did, each named on a `baseline failed:` line; else 0."""
    own = [f"{r['impl']} V={r['vocab']}" for r in rows if "failed" in r and r["impl"] not in BASELINES]
    baselines = [r for r in rows if "failed" in r and r["impl"] in BASELINES]
    for r in baselines:
        print(f"baseline failed: {r['impl']} V={r['vocab']}: {r['failed']}", file=sys.stderr)
    if own:
        print(f"\nFAILED: {', '.join(own)}", file=sys.stderr)
        return 1
    return BASELINE_FAILED_EXIT if baselines else 0


if __name__ == "__main__":
    sys.exit(main())
