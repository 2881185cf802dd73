"""`--dry-run`: per-GPU memory of a run for TP in {1, 2, 4, 8}, without allocating anything.

What the trainer keeps per process, with B the bytes of one value: 2 on a GPU (bf16 weights with
fp32 master copies), 4 on the CPU (fp32 weights, which are their own master copies); no activation
recomputation:
  parameters   B B/param of this TP shard; + B B/param for the frozen KL reference
  gradients    4 B/param (megatron DDP's fp32 main_grad buffer)
  optimizer    Adam's two fp32 moments, + the fp32 master weights with bf16: 12 B/param on a GPU,
               8 on the CPU; divided by DP with `optim.distributed` (megatron's distributed
               optimizer shards them over DP)
  activations  saved for backward, per micro-batch: per layer and token, the residual stream
               and norm outputs (4 × B·H bytes, replicated across TP, or split over it with
               sequence parallelism) plus this rank's share of
               Q/K/V, the attention output (SDPA/flash keeps no s×s matrix), and the SwiGLU
               gate/up/product (≈ B·((q+2kv)·d + q·d + 3F)/TP bytes); the LM-head logits (B) and
               the CE+KL op's fp32 temporaries (16 B) per token per vocabulary column / TP, B + 8
               more with the reference's logits when λ > 0. With `train.recompute: full` each
               layer keeps only its input (B·H bytes per token) and one layer's working set is
               rebuilt at a time in backward.
Estimates, not measurements: allocator fragmentation and NCCL buffers come on top (the
"fits" column keeps 10 % headroom for them). A CPU run's memory check counts, besides, what its
processes hold before they train (python, torch, megatron-core: `process_allowance`); a GPU run's
process lives on the host, beside the GPU's memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vikhr.model.config import ModelConfig, padded_vocab_size

if TYPE_CHECKING:
    from vikhr.train.config import TrainConfig

GIB = 1024**3
# The share of a device's memory a run may plan to fill: allocator fragmentation, NCCL's buffers and
# the runtime itself take the rest.
USABLE_SHARE = 0.9
# What a trainer process holds before it trains, private and in libraries (python, torch,
# megatron-core; CPU torch 2.x, measured after importing vikhr.train.trainer: 0.44 GiB anonymous,
# 0.30 GiB file-backed). Fixed, not measured at the check: the demo and ablate train stage after
# stage in one process, whose resident memory then holds freed heap the next stage reuses, and a
# refusal should not depend on what ran before it.
TRAINER_PRIVATE = 0.45 * GIB
TRAINER_SHARED = 0.3 * GIB


def parameter_counts(cfg: ModelConfig, tp: int = 1, vocab_multiple: int = 128) -> tuple[int, int]:
    """(parameters of the whole model, parameters held by one TP rank); vocabulary padded for TP."""
    v = padded_vocab_size(cfg.vocab_size, tp, vocab_multiple)
    h, f, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads, cfg.num_kv_heads
    qkv_bias = (q + 2 * kv) * d if cfg.qkv_bias else 0  # split across TP ranks like the weights
    sharded_per_layer = h * (q + 2 * kv) * d + qkv_bias + q * d * h + 3 * h * f
    replicated_per_layer = 2 * h + (2 * d if cfg.qk_norm else 0)  # the norms (Qwen3: per-head q/k too)
    embeddings = (1 if cfg.tie_embeddings else 2) * v * h  # a tied LM head is the embedding itself
    sharded = embeddings + cfg.num_layers * sharded_per_layer
    replicated = cfg.num_layers * replicated_per_layer + h
    return sharded + replicated, sharded // tp + replicated


@dataclass(frozen=True)
class MemoryEstimate:
    tp: int
    dp: int
    params_per_gpu: int
    parameters: float  # bytes
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations


def estimate(
    cfg: ModelConfig,
    tp: int,
    gpus: int,
    micro_batch: int,
    seq_len: int,
    kl_weight: float = 0.0,
    vocab_multiple: int = 128,
    distributed_optimizer: bool = False,
    recompute: bool = False,
    sequence_parallel: bool = False,
    value_bytes: int = 2,
) -> MemoryEstimate:
    """`value_bytes`: of a weight or an activation, 2 (bf16, on a GPU) or 4 (fp32, on the CPU)."""
    _, local = parameter_counts(cfg, tp, vocab_multiple)
    v_local = padded_vocab_size(cfg.vocab_size, tp, vocab_multiple) // tp
    h, f, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads, cfg.num_kv_heads
    tokens = micro_batch * seq_len
    b = value_bytes
    replicated = 4 * b * h / (tp if sequence_parallel else 1)
    per_layer_token = replicated + b * ((q + 2 * kv) * d + q * d + 3 * f) / tp
    logits = tokens * v_local * (16 + b + (8 + b if kl_weight > 0 else 0))
    if recompute:
        layers = cfg.num_layers * tokens * b * h + tokens * per_layer_token
    else:
        layers = cfg.num_layers * tokens * per_layer_token
    activations = layers + tokens * b * h + logits
    params = float(b) * local * (2 if kl_weight > 0 else 1)
    # Adam's moments are fp32; bf16 weights add fp32 master copies, fp32 weights are their own.
    optimizer = (8.0 + (4 if b < 4 else 0)) * local
    dp = gpus // tp
    return MemoryEstimate(
        tp=tp,
        dp=dp,
        params_per_gpu=local,
        parameters=params,
        gradients=4.0 * local,
        optimizer=optimizer / (dp if distributed_optimizer else 1),
        activations=float(activations),
    )


def dry_run_table(cfg, gpus: int = 8, gpu_memory_gb: float = 80.0) -> str:
    """The `--dry-run` report for a validated TrainConfig."""
    mcfg, described = cfg.described_model_shape()
    total, _ = parameter_counts(mcfg, 1, cfg.model.vocab_multiple)
    lines = [
        f"model {described}: {total / 1e9:.3f}B parameters (vocab {mcfg.vocab_size}), "
        f"micro-batch {cfg.train.micro_batch} × {cfg.data.seq_len} tokens, KL λ={cfg.kl.weight}, "
        f"{'distributed' if cfg.optim.distributed else 'replicated'} optimizer, "
        f"recompute {cfg.train.recompute}, {'sequence parallel at TP > 1, ' if cfg.parallel.sequence else ''}"
        f"{gpus} GPUs of {gpu_memory_gb:g} GiB",
        f"{'TP':>3} {'DP':>3} {'params/GPU':>11} {'weights':>9} {'grads':>9} {'optim':>9} "
        f"{'activ.':>9} {'total':>9}  fits",
    ]
    from vikhr.errors import VikhrError
    from vikhr.train.config import validate

    for tp in (1, 2, 4, 8):
        if tp > gpus or gpus % tp:
            continue
        try:
            mcfg.validate(tp)
        except Exception as e:  # a TP size the shape cannot take
            lines.append(f"{tp:>3} {'-':>3}  not possible: {e}")
            continue
        # What the trainer would refuse at this layout (a global batch DP does not divide, ...).
        parallel = cfg.parallel.model_copy(
            update={"tensor": tp, "sequence": cfg.parallel.sequence and tp > 1}
        )
        try:
            validate(cfg.model_copy(update={"parallel": parallel}), world_size=gpus, check_files=False)
        except VikhrError as e:
            lines.append(f"{tp:>3} {gpus // tp:>3}  not possible: {str(e).removeprefix('config key ')}")
            continue
        e = estimate(
            mcfg,
            tp,
            gpus,
            cfg.train.micro_batch,
            cfg.data.seq_len,
            cfg.kl.weight,
            cfg.model.vocab_multiple,
            distributed_optimizer=cfg.optim.distributed,
            recompute=cfg.train.recompute == "full",
            sequence_parallel=cfg.parallel.sequence and tp > 1,
        )
        # An "80 GB" card holds 80 GiB (nvidia-smi: 81,559 MiB of 81,920): the size is in GiB.
        fits = e.total <= USABLE_SHARE * gpu_memory_gb * GIB
        lines.append(
            f"{tp:>3} {e.dp:>3} {e.params_per_gpu / 1e9:>10.3f}B "
            + " ".join(
                f"{x / GIB:>7.1f}Gi" for x in (e.parameters, e.gradients, e.optimizer, e.activations, e.total)
            )
            + f"  {'yes' if fits else 'no'}"
        )
    return "\n".join(lines)


def run_estimate(
    cfg: TrainConfig, world_size: int, seq_len: int | None = None, *, on_cuda: bool
) -> MemoryEstimate:
    """The estimate of one process of a run of the TrainConfig `cfg` in `world_size` processes, at its
    data.seq_len or at `seq_len`, on a GPU (bf16) or, `on_cuda` false, on the CPU (fp32)."""
    tp = cfg.parallel.tensor
    return estimate(
        cfg.model_shape(),
        tp,
        max(world_size, tp),
        cfg.train.micro_batch,
        seq_len or cfg.data.seq_len,
        cfg.kl.weight,
        cfg.model.vocab_multiple,
        distributed_optimizer=cfg.optim.distributed,
        recompute=cfg.train.recompute == "full",
        sequence_parallel=cfg.parallel.sequence and tp > 1,
        value_bytes=2 if on_cuda else 4,  # the trainer's parameter dtype there
    )


def longest_fitting_seq_len(cfg: TrainConfig, world_size: int, capacity: float, *, on_cuda: bool) -> int:
    """The longest data.seq_len whose estimate (on a GPU or the CPU) fits `capacity` bytes (0: not even
    one token's); the estimate grows linearly with the window."""
    one = run_estimate(cfg, world_size, 1, on_cuda=on_cuda).total
    two = run_estimate(cfg, world_size, 2, on_cuda=on_cuda).total
    return max(int((capacity - one) // (two - one)) + 1, 0)


def process_allowance(ranks: int) -> float:
    """Bytes the `ranks` processes of a CPU run on this machine hold besides what the estimate counts:
    each its private memory (each torchrun rank is a process of its own), their libraries once."""
    return ranks * TRAINER_PRIVATE + TRAINER_SHARED


def memory_here(on_cuda: bool) -> tuple[float, str]:
    """(bytes one process of a run on this machine may use, what they are): the GPU's memory, or the
    RAM shared by the job's processes on this machine, less what they hold before they train
    (`process_allowance`: a run just under the RAM was killed by the kernel in its setup)."""
    import os

    if on_cuda:
        import torch

        from vikhr.runtime.distributed import local_gpu

        gpu = torch.cuda.get_device_properties(local_gpu())
        return float(gpu.total_memory), f"{gpu.total_memory / GIB:,.1f} GiB of the GPU ({gpu.name})"
    ram = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    allowance = process_allowance(ranks)
    free = max(ram - allowance, 0.0)
    held = "this process holds" if ranks == 1 else f"its {ranks} processes hold"
    shared = f", shared by {ranks} processes" if ranks > 1 else ""
    return free / ranks, (
        f"{free / GIB:,.1f} GiB of RAM here ({ram / GIB:,.1f} GiB, less {allowance / GIB:,.1f} GiB {held} "
        f"before training: python, torch, megatron-core){shared}"
    )


def check_fits(cfg: TrainConfig, world_size: int, capacity: float, memory: str, *, on_cuda: bool) -> None:
    """VikhrError naming data.seq_len (with the longest that fits with headroom) or the model when a
    run's estimate (on a GPU, or `on_cuda` false on the CPU in fp32) exceeds `capacity` bytes (`memory`
    says what they are): such a run ends in an out-of-memory error at its first step, after its setup.
    Only a run that cannot fit is refused: one within the headroom may still (the estimate is no
    measurement)."""
    from vikhr.errors import VikhrError

    need = run_estimate(cfg, world_size, on_cuda=on_cuda)
    if need.total <= capacity:
        return
    longest = longest_fitting_seq_len(cfg, world_size, USABLE_SHARE * capacity, on_cuda=on_cuda)
    if longest < 1:
        fixed = need.parameters + need.gradients + need.optimizer
        raise VikhrError(
            f"config key model.preset = {cfg.model.preset}: its weights, gradients and optimizer state need "
            f"about {fixed / GIB:,.1f} GiB per process by the memory estimate, more than the {memory}: "
            "train a smaller model, or split it over more GPUs (--dry-run compares the layouts)"
        )
    raise VikhrError(
        f"config key data.seq_len = {cfg.data.seq_len} does not fit in memory: train.micro_batch × "
        f"data.seq_len = {cfg.train.micro_batch} × {cfg.data.seq_len} tokens need about "
        f"{need.total / GIB:,.1f} GiB per process by the memory estimate, more than the {memory}: lower "
        f"data.seq_len to {longest} or less (or train.micro_batch)"
    )
