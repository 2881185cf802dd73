"""Micro-benchmark of the fused cross-entropy + KL op (vikhr.ops.cross_entropy_kl).

For each vocabulary size it times forward+backward (median of --runs runs) and measures the peak
extra memory (beyond the inputs) of:
  vikhr fused      the csrc/ kernel, gradient written over the logits (inplace_backward=True)
  vikhr fused/buf  the csrc/ kernel with a separate gradient buffer
  eager            the plain PyTorch autograd composition (log_softmax, nll, KL sum)
  compile          torch.compile of the eager code (skipped with --no-compile or if it fails)
  liger            Liger-Kernel's fused CE + KL-div losses (forward KL: Liger's KLDiv differentiates
                   its input only), when liger_kernel is installed (CUDA)
and reports each one's ratio to eager and to the memory-bandwidth roofline: 3 passes over the
N×V logits in their dtype (read z, read r, write the gradient) at the measured copy rate.

Gradients are taken with torch.autograd.grad (as the output layer's backward would consume them),
not accumulated into a leaf's .grad, which would copy an in-place gradient.
Every (implementation, size) runs in its own subprocess so that peak memory is its own: CUDA's
max_memory_allocated on a GPU, the peak resident set size (VmHWM, reset first) on the CPU.

    python tools/bench_kernels.py                      # CPU: N=512, V in {32000, 40000, 131072}
    python tools/bench_kernels.py --device cuda        # GPU: N=8192 (the issue's sizes)
    python tools/bench_kernels.py --json out.json      # also write the rows as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMPLS = ("vikhr fused", "vikhr fused/buf", "eager", "compile", "liger")
KL_WEIGHT, TEMPERATURE, IGNORE = 0.5, 1.0, -100


def _eager_loss(z, r, labels, kl_weight: float = KL_WEIGHT, temperature: float = TEMPERATURE):
    """CE + λ·T²·KL(P‖R) written the obvious way with PyTorch autograd (fp32 upcast)."""
    import torch.nn.functional as F

    zf = z.float()
    ce = F.cross_entropy(zf, labels, ignore_index=IGNORE)
    logq = F.log_softmax(zf / temperature, dim=-1)
    logr = F.log_softmax(r.float() / temperature, dim=-1)
    valid = labels != IGNORE
    kl_rows = (logq.exp() * (logq - logr)).sum(-1)
    kl = (kl_rows * valid).sum() / valid.sum().clamp(min=1)
    return ce + kl_weight * temperature**2 * kl


def _make_step(impl: str, device: str):
    """A function (z, r, labels) -> None running forward + backward; None when unavailable."""
    import torch

    if impl.startswith("vikhr"):
        from vikhr.ops import cross_entropy_kl

        inplace = impl == "vikhr fused"

        def step(z, r, labels):
            logits = z.detach().requires_grad_()
            out = cross_entropy_kl(
                logits, r, labels, kl_weight=KL_WEIGHT, temperature=TEMPERATURE, inplace_backward=inplace
            )
            torch.autograd.grad(out.loss, logits)

        return step
    if impl in ("eager", "compile"):
        fn = _eager_loss if impl == "eager" else torch.compile(_eager_loss, dynamic=False)

        def step(z, r, labels):
            logits = z.detach().requires_grad_()
            torch.autograd.grad(fn(logits, r, labels), logits)

        return step
    if impl == "liger":
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss
        except ImportError:
            return None
        if device != "cuda":
            return None
        ce_loss = LigerCrossEntropyLoss(ignore_index=IGNORE)
        kl_loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)

        def step(z, r, labels):
            logits = z.detach().requires_grad_()
            logq = torch.log_softmax(logits.float(), dim=-1)
            logr = torch.log_softmax(r.float(), dim=-1)
            # Liger's KLDiv differentiates its input only, so it computes the forward KL(R‖Q)
            # here (input log Q, target log R); its CE writes the gradient into the logits.
            loss = KL_WEIGHT * kl_loss(logq, logr) + ce_loss(logits, labels)
            torch.autograd.grad(loss, logits)

        return step
    raise ValueError(impl)


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
    """Runs in a subprocess: peak extra memory of one step, then the median time of `runs` steps."""
    import torch

    torch.set_num_threads(threads)
    step = _make_step(impl, device)
    if step is None:
        return {"skipped": "not installed / not for this device"}
    z, r, labels = _inputs(n, v, dtype_name, device)
    # Fresh logits per run (the in-place variant overwrites them), made outside the timed region.
    copies = [z.clone() for _ in range(2)]
    step(copies[0], r, labels)  # the first call also compiles (torch.compile) or loads csrc ops
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        base = _rss_bytes("VmRSS")
    step(copies[1], r, labels)
    _sync(device)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_bytes("VmHWM") - base
    del copies
    times = []
    for _ in range(runs):
        fresh = z.clone()
        _sync(device)
        t0 = time.perf_counter()
        step(fresh, r, labels)
        _sync(device)
        times.append(time.perf_counter() - t0)
        del fresh
    return {"median_ms": 1e3 * statistics.median(times), "peak_extra_mib": max(peak, 0) / 2**20}


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
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        return {"skipped": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--n", type=int, default=None, help="tokens (rows); default 512 on CPU, 8192 on CUDA")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 40000, 131072])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.n is None:
        args.n = 8192 if args.device == "cuda" else 512
    if args.worker is not None:
        print(
            json.dumps(
                _worker(args.worker, args.n, args.vocab[0], args.dtype, args.device, args.runs, args.threads)
            )
        )
        return 0

    impls = [i for i in args.impls if not (i == "compile" and args.no_compile)]
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"# cross_entropy_kl fwd+bwd on {machine}: N={args.n}, {args.dtype}, λ={KL_WEIGHT}, reverse KL, "
        f"median of {args.runs} runs; torch {torch.__version__}"
    )
    rows = []
    header = f"{'impl':<16} {'V':>7} {'ms':>10} {'vs eager':>9} {'x roofline':>11} {'peak extra MiB':>15}"
    for v in args.vocab:
        rate = _copy_rate(args.n, v, args.dtype, args.device, args.threads)
        elem = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
        roofline_ms = 1e3 * 3 * args.n * v * elem / rate
        print(
            f"\nV={v}: copy rate {rate / 1e9:.1f} GB/s -> roofline (3 passes over N×V) {roofline_ms:.3f} ms"
        )
        print(header)
        results = {impl: _run_worker(args, impl, v) for impl in impls}
        eager_ms = results.get("eager", {}).get("median_ms")
        for impl, res in results.items():
            row = {
                "impl": impl,
                "n": args.n,
                "vocab": v,
                "dtype": args.dtype,
                "device": machine,
                "roofline_ms": roofline_ms,
                **res,
            }
            rows.append(row)
            if "skipped" in res:
                print(f"{impl:<16} {v:>7} {'-':>10}   ({res['skipped']})")
                continue
            ratio = f"{eager_ms / res['median_ms']:.2f}x" if eager_ms else "-"
            print(
                f"{impl:<16} {v:>7} {res['median_ms']:>10.3f} {ratio:>9} "
                f"{res['median_ms'] / roofline_ms:>10.2f}x {res['peak_extra_mib']:>15.1f}"
            )
    if args.json is not None:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
