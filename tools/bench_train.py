#!/usr/bin/env python
"""Training-step throughput: vikhr's megatron-core GPTModel vs transformers' MistralForCausalLM (SDPA).

One forward + backward of a Mistral-shaped slice with the loss each stack trains with (vikhr:
cross_entropy_kl over the vocab-parallel logits; HF: its own `labels=` loss), same shape, same
dtype, in the same process. Prints the median of several timed steps: tokens/s, TFLOP/s and
peak memory, and each stack's ratio to HF.

    python tools/bench_train.py              # GPU: 4 Mistral-7B layers, 40k vocab, 2 × 4096 tokens, bf16
    python tools/bench_train.py --cpu-small  # CPU: a small shape in fp32 (the same code path)
    python tools/bench_train.py --specs sdpa local --repeats 5

Attention: HF runs with attn_implementation="sdpa" and use_cache off; vikhr's "sdpa" spec calls
the same torch SDPA. On GPU both are pinned to the flash / memory-efficient SDPA kernels (no silent
fall-back to the math kernel), and the table names the backend each row ran with.

Memory: on GPU the peak of torch.cuda.max_memory_allocated during a step (weights, gradients,
activations, temporaries); on CPU the activations autograd saves for backward in one step.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class PeakMemory:
    """GPU: peak of the CUDA allocator above the level at start. CPU: the bytes autograd saves for
    backward in one step (unique storages, parameters excluded), which is what differs between
    the stacks and, unlike process RSS, does not depend on what the allocator kept from before."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.peak = 0
        self.saved: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if not (t.is_leaf and t.requires_grad):
            storage = t.untyped_storage()
            self.saved[storage.data_ptr()] = storage.nbytes()
        return t

    def step_done(self) -> None:
        self.peak = max(self.peak, sum(self.saved.values()))
        self.saved.clear()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
            self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.hooks.__exit__(*exc)


def timed(step: Callable[[], None], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def step_flops(cfg, tokens: int, seq_len: int) -> float:
    """Forward+backward matmul FLOPs (3 × forward) of the slice, causal attention counted at half."""
    h, f, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads, cfg.num_kv_heads
    per_token_layer = 2 * (h * (q + 2 * kv) * d + q * d * h + 3 * h * f) + 2 * q * d * seq_len
    return 3.0 * tokens * (cfg.num_layers * per_token_layer + 2 * h * cfg.vocab_size)


def vikhr_step(cfg, spec: str, batch: int, seq: int, dtype, env) -> Callable[[], None]:
    """One fwd+bwd of vikhr's GPTModel with the trainer's loss (gradients freed after each step)."""
    from megatron.core import parallel_state

    from vikhr.model import build_gpt_model
    from vikhr.train.data import Batch
    from vikhr.train.trainer import CrossEntropyKL, forward_loss

    device = env.device
    model = build_gpt_model(cfg, params_dtype=dtype, attention=spec, on_gpu=env.on_gpu).to(device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen).to(device)
    micro_batch = Batch(tokens[:, :-1], tokens[:, 1:], None)
    loss_fn = CrossEntropyKL(cfg.vocab_size, parallel_state.get_tensor_model_parallel_group())

    def step() -> None:
        forward_loss(model, micro_batch, loss_fn).loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def hf_step(cfg, batch: int, seq: int, dtype, device) -> Callable[[], None]:
    """One fwd+bwd of transformers' MistralForCausalLM (SDPA) with its own loss."""
    from transformers import MistralConfig, MistralForCausalLM

    from vikhr.convert.mistral import model_config_to_hf_config

    hf_cfg = MistralConfig.from_dict(model_config_to_hf_config(cfg), attn_implementation="sdpa")
    hf_cfg.use_cache = False  # training: no KV cache built in the forward
    torch.manual_seed(0)
    model = MistralForCausalLM(hf_cfg).to(device=device, dtype=dtype)
    model.train()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen).to(device)

    def step() -> None:
        model(input_ids=tokens, labels=tokens, use_cache=False).loss.backward()
        model.zero_grad(set_to_none=True)

    return step


# The SDPA kernels both stacks may use on GPU: torch raises rather than falling back to math.
SDPA_GPU_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def pinned(step: Callable[[], None], backends: list[SDPBackend] | None) -> Callable[[], None]:
    """`step` run with torch SDPA restricted to `backends` (None: torch's own choice)."""
    if backends is None:
        return step

    def run() -> None:
        with sdpa_kernel(backends):
            step()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-small", action="store_true", help="small fp32 shape on the CPU")
    ap.add_argument(
        "--specs", nargs="+", default=["auto", "local"], help="vikhr layer specs: auto te sdpa local"
    )
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from vikhr.model import preset
    from vikhr.runtime.distributed import distributed_env

    cuda = torch.cuda.is_available() and not args.cpu_small
    if args.cpu_small:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        cfg = preset("small", num_layers=args.layers or 2, vocab_size=8000, max_seq_len=1024)
        batch, seq, dtype = args.batch or 2, args.seq or 256, torch.float32
    else:
        if not cuda:
            sys.exit("no CUDA device: run with --cpu-small for the CPU shape")
        cfg = preset("mistral-7b-v0.2", num_layers=args.layers or 4, vocab_size=40000)
        batch, seq, dtype = args.batch or 2, args.seq or 4096, torch.bfloat16
    with distributed_env(tp_size=1, seed=1234, device="cuda" if cuda else "cpu") as env:
        compare(cfg, args, batch, seq, dtype, env)


def compare(cfg, args: argparse.Namespace, batch: int, seq: int, dtype: torch.dtype, env) -> None:
    """Time HF and each vikhr spec on the same shape and print the table."""
    cuda, device = env.on_gpu, env.device
    tokens = batch * seq
    flops = step_flops(cfg, tokens, seq)
    where = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores), fp32"
    print(
        f"{where}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, FFN {cfg.ffn_hidden_size}, "
        f"heads {cfg.num_attention_heads}/{cfg.num_kv_heads}, vocab {cfg.vocab_size}, "
        f"micro-batch {batch} × {seq}; median of {args.repeats} fwd+bwd steps"
    )

    from vikhr.model.gpt import resolve_attention

    sdpa = SDPA_GPU_BACKENDS if cuda else None
    sdpa_name = "flash/efficient" if cuda else "torch default"
    print(f"torch SDPA kernels: {sdpa_name} (HF sdpa and vikhr's sdpa spec)")
    stacks: list[tuple[str, Callable[[], None]]] = [
        (f"HF Mistral (sdpa: {sdpa_name})", pinned(hf_step(cfg, batch, seq, dtype, device), sdpa))
    ]
    for spec in args.specs:
        name = resolve_attention(spec, cuda)
        backend = f"sdpa: {sdpa_name}" if name == "sdpa" else name
        step = pinned(vikhr_step(cfg, name, batch, seq, dtype, env), sdpa)
        stacks.append((f"vikhr GPTModel ({backend})", step))
    # Peak memory of each stack alone (its warm-up steps), then timing rounds that interleave the
    # stacks, so a change in machine load hits them all alike.
    # Each figure is printed as soon as it is measured: a run stopped at its limit keeps them.
    peaks = []
    for name, step in stacks:
        gc.collect()
        with PeakMemory(cuda) as mem:
            for _ in range(args.warmup):
                step()
                mem.step_done()
        peaks.append(mem.peak)
        print(f"warm-up {name}: peak {mem.peak / 2**20:,.1f} MiB")
    times: list[list[float]] = [[] for _ in stacks]
    for round_index in range(args.repeats):
        for i, (_, step) in enumerate(stacks):
            times[i].append(timed(step, cuda))
        print(f"round {round_index + 1}: " + ", ".join(f"{t[-1] * 1e3:.1f} ms" for t in times))
    results = [(name, t, peak) for (name, _), t, peak in zip(stacks, times, peaks, strict=True)]

    hf_tps = tokens / statistics.median(results[0][1])
    hf_mem = results[0][2]
    mem_name = "GPU peak" if cuda else "saved act."
    unit, unit_name = (2**30, "Gi") if cuda else (2**20, "Mi")
    print(f"{'stack':<40} {'tokens/s':>10} {'TFLOP/s':>8} {mem_name:>10} {'× HF tok/s':>10} {'× HF mem':>9}")
    for name, times, peak in results:
        med = statistics.median(times)
        tps = tokens / med
        print(
            f"{name:<40} {tps:>10,.0f} {flops / med / 1e12:>8.2f} {peak / unit:>8.2f}{unit_name} "
            f"{tps / hf_tps:>10.2f} {peak / max(hf_mem, 1):>9.2f}"
        )


if __name__ == "__main__":
    main()
