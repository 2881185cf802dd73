"""Micro-benchmark of the MLP activation (vikhr.model.swiglu) against the eager compositions.

For each [tokens, 2·FFN] fc1 output it times forward + backward (median of --runs) and counts the
bytes autograd keeps for backward (distinct storages, the fc1 output included) of:
  eager            `F.silu(gate) * up` on the chunks of the fc1 output (HF's computation)
  megatron         megatron-core's unfused gated MLP: `F.silu(gate) * (up + 0.0)` (its glu_linear_offset)
  vikhr swiglu     vikhr.model.swiglu: keeps the fc1 output only, silu recomputed in backward
and each one's ratio to eager. Before timing, every implementation's output and gradient must equal
eager's bit for bit (the script exits with status 1 otherwise).

    python tools/bench_swiglu.py                         # CPU, fp32
    python tools/bench_swiglu.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_cli import BenchParser, check_cuda, positive

from vikhr.model.swiglu import swiglu


def eager(fc1_out: torch.Tensor) -> torch.Tensor:
    gate, up = fc1_out.chunk(2, dim=-1)
    return F.silu(gate) * up


def megatron_unfused(fc1_out: torch.Tensor) -> torch.Tensor:
    gate, up = fc1_out.chunk(2, dim=-1)
    return F.silu(gate) * (up + 0.0)


IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "eager": eager,
    "megatron": megatron_unfused,
    "vikhr swiglu": swiglu,
}


def kept_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of `fn(x)`."""
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(kept.values())


def step_seconds(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> float:
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    torch.autograd.grad(fn(x), x, grad)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def check_exact(x: torch.Tensor, grad: torch.Tensor) -> None:
    """Exit with status 1 unless every implementation gives eager's output and gradient exactly."""
    want_y = eager(x)
    (want_g,) = torch.autograd.grad(want_y, x, grad)
    for name, fn in IMPLEMENTATIONS.items():
        y = fn(x)
        (g,) = torch.autograd.grad(y, x, grad)
        if not (torch.equal(y, want_y) and torch.equal(g, want_g)):
            sys.exit(f"{name}: output or gradient differs from eager's at {tuple(x.shape)}")


def shape_arg(value: str) -> tuple[int, int]:
    """An argparse type: TOKENSxFFN, both positive (0 divided by zero, text was a ValueError)."""
    parts = value.lower().split("x")
    sizes = [int(p) if p.isdigit() else 0 for p in parts]
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected TOKENSxFFN of two positive integers, e.g. 2048x704, got {value!r}"
        )
    return sizes[0], sizes[1]


def main() -> None:
    ap = BenchParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--runs", type=positive(int), default=15)
    ap.add_argument(
        "--shapes",
        nargs="+",
        type=shape_arg,
        default=[(2048, 704), (4096, 2816), (8192, 14336)],
        help="TOKENSxFFN (Mistral-7B's FFN is 14336)",
    )
    args = ap.parse_args()
    check_cuda(ap, args.device)
    dtype = getattr(torch, args.dtype)
    print(f"device {args.device}, {args.dtype}, median of {args.runs} fwd+bwd; kept: saved for backward")
    print(f"{'shape':>14}  {'implementation':<14} {'ms':>9} {'x eager':>8} {'kept MiB':>9} {'x eager':>8}")
    for tokens, ffn in args.shapes:
        shape = f"{tokens}x{ffn}"
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(tokens, 2 * ffn, generator=gen).to(args.device, dtype).requires_grad_()
        grad = torch.randn(tokens, ffn, generator=gen).to(args.device, dtype)
        check_exact(x, grad)
        rows = {}
        for name, fn in IMPLEMENTATIONS.items():
            step_seconds(fn, x, grad)  # warm-up
            seconds = statistics.median(step_seconds(fn, x, grad) for _ in range(args.runs))
            rows[name] = (seconds, kept_bytes(fn, x))
        base_s, base_b = rows["eager"]
        for name, (seconds, kept) in rows.items():
            print(
                f"{shape:>14}  {name:<14} {seconds * 1e3:9.2f} {seconds / base_s:7.2f}x "
                f"{kept / 2**20:9.1f} {kept / base_b:7.2f}x"
            )


if __name__ == "__main__":
    main()
