#!/usr/bin/env python
"""Training-step throughput: vikhr's megatron-core GPTModel vs transformers' MistralForCausalLM (SDPA).

One forward + backward of a Mistral-shaped slice with the loss each stack trains with (vikhr:
cross_entropy_kl over the vocab-parallel logits; HF: its own `labels=` loss), same shape, same
dtype, same weights (HF's, copied into each vikhr model through the HF → megatron conversion),
same tokens and labels, in the same process. Before anything is timed, each vikhr model's first
loss must equal HF's within a tolerance (fp32: 1e-4, bf16: 2e-2 relative); a mismatch ends the
script with status 1. Prints the median of several timed steps: tokens/s, TFLOP/s and peak
memory, and each stack's ratio to HF.

    python tools/bench_train.py              # GPU: 4 Mistral-7B layers, 40k vocab, 2 × 4096 tokens, bf16
    python tools/bench_train.py --cpu-small  # CPU: a small shape in fp32 (the same code path)
    python tools/bench_train.py --specs sdpa local --repeats 5

Attention: HF runs with attn_implementation="sdpa" and use_cache off; vikhr's "sdpa" spec calls
the same torch SDPA. On GPU both are pinned to the flash / memory-efficient SDPA kernels (no silent
fall-back to the math kernel), and the table names the backend each row ran with.

Memory: on GPU the peak of torch.cuda.max_memory_allocated during a step (weights, gradients,
activations, temporaries); on CPU everything one step keeps for its backward at the end of the
forward: the tensors autograd saves, and the tensors the graph's custom autograd functions hold
as attributes of their context (vikhr's loss keeps its [tokens × vocab] gradient that way).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_cli import BenchParser, positive


class PeakMemory:
    """GPU: peak of the CUDA allocator above the level at start. CPU: the bytes one step keeps for
    backward at the end of its forward (unique storages; the model's parameters and buffers, and
    views of them such as a transposed weight, excluded) — what autograd saves (saved_tensors_hooks)
    and what custom autograd functions hold on their context (found by walking the graph from the
    loss), so that a loss keeping its gradient as a context attribute is counted like one saving
    its log-softmax output. Unlike process RSS, this does not depend on what the allocator kept
    from before."""

    def __init__(self, cuda: bool, model: torch.nn.Module) -> None:
        self.cuda = cuda
        self.peak = 0
        self.saved: dict[int, int] = {}
        weights = [*model.parameters(), *model.buffers()]
        self.weights = {t.untyped_storage().data_ptr() for t in weights}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.weights:
            self.saved[storage.data_ptr()] = storage.nbytes()
        return t

    def forward_done(self, loss: torch.Tensor) -> None:
        """Count the tensors the graph behind `loss` holds outside autograd's saved tensors."""
        if self.cuda:
            return
        todo, seen = [loss.grad_fn], set()
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            for value in getattr(node, "__dict__", {}).values():
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(t, torch.Tensor):
                        self._pack(t)
            todo.extend(fn for fn, _ in node.next_functions)

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


class Stack(NamedTuple):
    """One row of the table: a model and the loss of its micro-batch (a new graph per call)."""

    name: str
    model: torch.nn.Module
    loss: Callable[[], torch.Tensor]


def train_step(stack: Stack, mem: PeakMemory | None = None) -> None:
    """One fwd+bwd (gradients freed after it); `mem` counts what the forward keeps for backward."""
    loss = stack.loss()
    if mem is not None:
        mem.forward_done(loss)
    loss.backward()
    stack.model.zero_grad(set_to_none=True)
    if mem is not None:
        mem.step_done()


def micro_batch(cfg, batch: int, seq: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens and the labels both losses train on: the next token, none after the last."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
    labels = torch.cat([tokens[:, 1:], torch.full((batch, 1), -100)], dim=1)  # -100: ignored by both
    return tokens.to(device), labels.to(device)


def hf_model(cfg, dtype, device) -> torch.nn.Module:
    """transformers' MistralForCausalLM (SDPA, no KV cache) of shape `cfg`, random weights (seed 0)."""
    from transformers import MistralConfig, MistralForCausalLM

    from vikhr.convert.mistral import model_config_to_hf_config

    hf_cfg = MistralConfig.from_dict(model_config_to_hf_config(cfg), attn_implementation="sdpa")
    hf_cfg.use_cache = False  # training: no KV cache built in the forward
    torch.manual_seed(0)
    model = MistralForCausalLM(hf_cfg).to(device=device, dtype=dtype)
    model.train()
    return model


def hf_stack(name: str, model: torch.nn.Module, tokens: torch.Tensor) -> Stack:
    """HF with its own `labels=` loss (it shifts the labels: position t predicts token t + 1)."""
    return Stack(name, model, lambda: model(input_ids=tokens, labels=tokens, use_cache=False).loss)


def copy_hf_weights(model: torch.nn.Module, hf: torch.nn.Module) -> None:
    """Give vikhr's model HF's weights, through the converter itself: HF's checkpoint as
    `save_pretrained` writes it, read back by the HF → megatron conversion's own reader (every
    tensor accounted for against the config, a tied LM head checked, fused QKV and gate/up, padded
    vocabulary rows); a missing, extra or misshapen tensor raises."""
    import tempfile

    from vikhr.convert import load_hf_weights

    with tempfile.TemporaryDirectory(prefix="bench-train-hf-") as saved:
        hf.save_pretrained(saved, safe_serialization=True)
        load_hf_weights(model, saved)


def vikhr_stack(name: str, cfg, spec: str, dtype, env, hf: torch.nn.Module, data) -> Stack:
    """vikhr's GPTModel with HF's weights and the trainer's loss on the same tokens and labels."""
    from megatron.core import parallel_state

    from vikhr.model import build_gpt_model
    from vikhr.train.data import Batch
    from vikhr.train.trainer import CrossEntropyKL, forward_loss

    model = build_gpt_model(cfg, params_dtype=dtype, attention=spec, on_gpu=env.on_gpu).to(env.device)
    copy_hf_weights(model, hf)
    tokens, labels = data
    batch = Batch(tokens, labels, None)
    loss_fn = CrossEntropyKL(cfg.vocab_size, parallel_state.get_tensor_model_parallel_group())
    return Stack(name, model, lambda: forward_loss(model, batch, loss_fn).loss)


def check_losses(stacks: list[Stack], dtype: torch.dtype) -> None:
    """Each stack's first training loss (the timed code path, backward included) equals HF's (the
    first stack's) within the dtype's tolerance; otherwise the script ends with status 1."""
    rtol = 1e-4 if dtype == torch.float32 else 2e-2
    losses = []
    for stack in stacks:
        loss = stack.loss()
        losses.append(float(loss.detach()))
        loss.backward()
        stack.model.zero_grad(set_to_none=True)
    pairs = list(zip((s.name for s in stacks), losses, strict=True))
    print("first loss (same weights, tokens and labels): " + ", ".join(f"{n} {x:.6f}" for n, x in pairs))
    bad = [f"{n} {x:.6f}" for n, x in pairs if not abs(x - losses[0]) <= rtol * abs(losses[0])]
    if bad:
        sys.exit(
            f"loss mismatch before timing: {', '.join(bad)} against HF's {losses[0]:.6f} (rtol {rtol:g})"
        )


# The SDPA kernels both stacks may use on GPU: torch raises rather than falling back to math.
SDPA_GPU_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def parse_args() -> argparse.Namespace:
    from vikhr.errors import VikhrError
    from vikhr.model.gpt import ATTENTION_BACKENDS, resolve_attention

    ap = BenchParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-small", action="store_true", help="small fp32 shape on the CPU")
    ap.add_argument(
        "--specs", nargs="+", default=["auto", "local"], choices=ATTENTION_BACKENDS, help="vikhr layer specs"
    )
    # 0 was taken as "the default" (`args.layers or 2`): the table then showed another shape.
    ap.add_argument("--layers", type=positive(int), default=None)
    ap.add_argument("--batch", type=positive(int), default=None)
    ap.add_argument("--seq", type=positive(int), default=None)
    # The memory column is the warm-up steps' peak: with none it read 0 for every stack.
    ap.add_argument("--warmup", type=positive(int), default=2, help="untimed steps, the memory measured")
    ap.add_argument("--repeats", type=positive(int), default=5)
    args = ap.parse_args()
    if args.seq == 1:
        ap.error("argument --seq: 1 token leaves no next token to predict (give 2 or more)")
    if not args.cpu_small and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu-small for the CPU shape")
    # A spec that cannot be built here was a traceback after the table's first lines.
    if args.cpu_small and "te" in args.specs:
        ap.error(
            "argument --specs: te needs a GPU (Transformer Engine's kernels), and --cpu-small runs on the CPU"
        )
    for spec in args.specs:
        try:
            resolve_attention(spec, on_gpu=not args.cpu_small)
        except VikhrError as e:
            ap.error(f"argument --specs: {spec}: {e}")
    return args


def main() -> None:
    args = parse_args()

    from vikhr.model import preset
    from vikhr.runtime.distributed import distributed_env

    cuda = torch.cuda.is_available() and not args.cpu_small
    if args.cpu_small:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        cfg = preset("small", num_layers=args.layers or 2, vocab_size=8000, max_seq_len=1024)
        batch, seq, dtype = args.batch or 2, args.seq or 256, torch.float32
    else:
        cfg = preset("mistral-7b-v0.2", num_layers=args.layers or 4, vocab_size=40000)
        batch, seq, dtype = args.batch or 2, args.seq or 4096, torch.bfloat16
    with distributed_env(tp_size=1, seed=1234, device="cuda" if cuda else "cpu") as env:
        compare(cfg, args, batch, seq, dtype, env)


def compare(cfg, args: argparse.Namespace, batch: int, seq: int, dtype: torch.dtype, env) -> None:
    """Check that the stacks agree, time HF and each vikhr spec on the same shape, print the table."""
    cuda = env.on_gpu
    tokens = batch * seq
    where = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores), fp32"
    print(
        f"{where}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, FFN {cfg.ffn_hidden_size}, "
        f"heads {cfg.num_attention_heads}/{cfg.num_kv_heads}, vocab {cfg.vocab_size}, "
        f"micro-batch {batch} × {seq}; median of {args.repeats} fwd+bwd steps"
    )

    from vikhr.model.gpt import resolve_attention

    sdpa_name = "flash/efficient" if cuda else "torch default"
    print(f"torch SDPA kernels: {sdpa_name} (HF sdpa and vikhr's sdpa spec)")
    data = micro_batch(cfg, batch, seq, env.device)
    hf = hf_model(cfg, dtype, env.device)
    stacks = [hf_stack(f"HF Mistral (sdpa: {sdpa_name})", hf, data[0])]
    for spec in args.specs:
        name = resolve_attention(spec, cuda)
        backend = f"sdpa: {sdpa_name}" if name == "sdpa" else name
        stacks.append(vikhr_stack(f"vikhr GPTModel ({backend})", cfg, name, dtype, env, hf, data))
    # On GPU both SDPA users are pinned to the flash / memory-efficient kernels (torch raises
    # rather than falling back to math); megatron's local spec and TE do not call torch SDPA.
    with sdpa_kernel(SDPA_GPU_BACKENDS) if cuda else contextlib.nullcontext():
        check_losses(stacks, dtype)
        peaks, times = measure(stacks, args, cuda)
    print_table(stacks, peaks, times, step_flops(cfg, tokens, seq), tokens, cuda)


def measure(stacks: list[Stack], args: argparse.Namespace, cuda: bool) -> tuple[list[int], list[list[float]]]:
    """Peak memory of each stack alone (its warm-up steps), then timing rounds that interleave the
    stacks, so a change in machine load hits them all alike. Each figure is printed as soon as it
    is measured: a run stopped at its limit keeps them."""
    peaks = []
    for stack in stacks:
        gc.collect()
        with PeakMemory(cuda, stack.model) as mem:
            for _ in range(args.warmup):
                train_step(stack, mem)
        peaks.append(mem.peak)
        print(f"warm-up {stack.name}: peak {mem.peak / 2**20:,.1f} MiB")
    times: list[list[float]] = [[] for _ in stacks]
    for round_index in range(args.repeats):
        for i, stack in enumerate(stacks):
            times[i].append(timed(lambda s=stack: train_step(s), cuda))
        print(f"round {round_index + 1}: " + ", ".join(f"{t[-1] * 1e3:.1f} ms" for t in times))
    return peaks, times


def table_columns(cuda: bool) -> list[str]:
    """The printed table's columns (docs/benchmarks.md shows the same header; a test compares them).
    The memory column: on GPU the allocator's peak during a step, on CPU the bytes a step keeps for
    backward (`PeakMemory`)."""
    memory = "GPU peak GiB" if cuda else "kept for backward MiB"
    return ["stack", "tokens/s", "TFLOP/s", memory, "× HF tok/s", "× HF mem"]


def print_table(
    stacks: list[Stack], peaks: list[int], times: list[list[float]], flops: float, tokens: int, cuda: bool
) -> None:
    """The Markdown table: each stack's median step as tokens/s and matmul TFLOP/s, its memory, and
    both against HF's (the first stack)."""
    hf_tps = tokens / statistics.median(times[0])
    hf_mem = peaks[0]
    unit = 2**30 if cuda else 2**20
    columns = table_columns(cuda)
    print("| " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * (len(columns) - 1))
    for stack, t, peak in zip(stacks, times, peaks, strict=True):
        med = statistics.median(t)
        tps = tokens / med
        print(
            f"| {stack.name} | {tps:,.0f} | {flops / med / 1e12:.2f} | {peak / unit:.2f} "
            f"| {tps / hf_tps:.2f} | {peak / max(hf_mem, 1):.2f} |"
        )


if __name__ == "__main__":
    main()
