"""Cross-entropy + λ·KL against a frozen reference, over a (possibly vocab-parallel) vocabulary.

    loss = mean over non-ignored tokens of [ CE(z, y) + λ · T² · KL ]
    reverse KL (default, the paper's):  KL(P‖R) = Σ_v p_v (log p_v − log r_v)
    forward KL:                          KL(R‖P) = Σ_v r_v (log r_v − log p_v)
with P = softmax(z / T), R = softmax(r / T) for the KL term and CE on softmax(z).

Vocab parallel: `logits` and `ref_logits` hold this rank's columns
[rank·V_local, (rank+1)·V_local) of the vocabulary of `process_group` (Megatron's TP group);
labels are global ids. Columns at or beyond `valid_vocab_size` (vocabulary padding) get zero
probability in both distributions.

`cross_entropy_kl` runs the fused kernel of csrc/ (`torch.ops.vikhr.cekl_*`: cross_entropy_kl.cpp
and cross_entropy_kl_cuda.cu, math in cekl_math.h; the dispatcher picks the device): one pass over
each row with online max/sum-exp in fp32 and no N×V temporaries. On one rank the forward also
writes the gradient while the row is in cache (optionally over the logits: `inplace_backward=True`);
with a vocab-parallel group (or without a gradient) the kernel returns per-row statistics, this
module does exactly two collectives (a MAX of the maxima, one SUM of the rescaled sums, target
logit and KL terms), and the gradient needs none.

On a CUDA device for which the kernels were not compiled (no nvcc) the op raises one line saying
to install the CUDA toolkit. It does not fall back: the only plain-PyTorch version of the loss,
`vikhr.ops.reference.cross_entropy_kl_reference` (what the tests and `tools/bench_kernels.py`
compare against), is single-rank and materialises N×V temporaries, so it could not serve the
vocab-parallel trainer, and a second production implementation would be one more to keep equal.

`torch.compile(fullgraph=True)` traces the op (single rank) through its fake kernels
(`vikhr.ops.fake`).

On CUDA the single-rank forward reads each row twice; the environment variable
VIKHR_CEKL_SCHEDULE chooses where the second read comes from (csrc/cross_entropy_kl_cuda.cu):
`row` (default: one block per row, the second read from L2 while it holds the row), `persistent`
(a grid sized so that the rows in flight fit in half of the L2; `persistent:K` for K blocks per
SM) or `smem` (the row kept in shared memory; rows too long for it fall back to `row`), and
VIKHR_CEKL_PACKS (1 or 2) how many 16-byte loads a thread issues per loop step. All give the same
result; the CPU kernel ignores the settings.
"""

from __future__ import annotations

import math
import os
import re
from typing import NamedTuple

import torch
import torch.distributed as dist

from vikhr.ops.build import require_kernels
from vikhr.ops.fake import MAX_COLS

KL_DIRECTIONS = ("reverse", "forward")
# The CUDA forward's schedules, in the order of csrc/cekl_math.h: ScheduleKind.
CUDA_SCHEDULES = ("row", "persistent", "smem")
SCHEDULE_ENV = "VIKHR_CEKL_SCHEDULE"
PACKS_ENV = "VIKHR_CEKL_PACKS"
LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# KL modes understood by the kernel (csrc/cekl_math.h: KlMode).
_MODE_NONE, _MODE_REVERSE, _MODE_FORWARD = 0, 1, 2


class CEKLOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable w.r.t. logits
    ce: torch.Tensor  # scalar, detached: mean CE over valid tokens
    # scalar, detached: mean KL over valid tokens (before λ and T²); 0 at kl_weight=0, where
    # ref_logits are not read (measuring it would cost the pass over them the weight saves)
    kl: torch.Tensor


def check_inputs(
    logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    kl_weight: float,
    kl_direction: str,
    temperature: float,
) -> None:
    """Shapes, dtypes, devices and options of a `cross_entropy_kl` call (also the reference's)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError(f"logits must have a vocabulary (V >= 1), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [N] = [{logits.shape[0]}], got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be int64 or int32, got {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(f"labels on {labels.device} but logits on {logits.device}")
    if kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {kl_direction!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if not (math.isfinite(kl_weight) and kl_weight >= 0):
        raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight}")
    if kl_weight > 0:
        if ref_logits is None:
            raise ValueError("kl_weight > 0 needs ref_logits")
        if ref_logits.shape != logits.shape:
            raise ValueError(
                f"ref_logits shape {tuple(ref_logits.shape)} != logits shape {tuple(logits.shape)}"
            )
        if ref_logits.device != logits.device:
            raise ValueError(f"ref_logits on {ref_logits.device} but logits on {logits.device}")


def _check_kernel_dtypes(logits: torch.Tensor, ref_logits: torch.Tensor | None) -> None:
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"logits must be float32, bfloat16 or float16, got {logits.dtype}")
    if ref_logits is not None and ref_logits.dtype != logits.dtype:
        raise TypeError(
            f"ref_logits dtype {ref_logits.dtype} != logits dtype {logits.dtype}; cast one of them"
        )


def _shard(logits: torch.Tensor, group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(first global column of this shard, world size of the vocab-parallel group)."""
    if group is None or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return 0, 1
    return dist.get_rank(group) * logits.shape[1], dist.get_world_size(group)


def _vocab_size(logits: torch.Tensor, world: int, valid_vocab_size: int | None) -> int:
    full = logits.shape[1] * world
    if valid_vocab_size is None:
        return full
    if not 0 < valid_vocab_size <= full:
        raise ValueError(f"valid_vocab_size must be in [1, {full}] (V_local·TP), got {valid_vocab_size}")
    return valid_vocab_size


def _check_labels(labels: torch.Tensor, counts: torch.Tensor, ignore_index: int, vocab: int) -> None:
    """Rejects a label outside [0, vocab) that is not ignore_index (`counts[1]`, from cekl_prepare,
    is the first one's index or -1).

    On the CPU it raises ValueError naming the first bad label. On an accelerator, and when traced
    by torch.compile, the check is an assertion on the device: no host sync in the hot path (a bad
    label fails the next synchronising call with the same message; until then its row has no
    target column, so no kernel reads out of bounds)."""
    message = f"labels must be in [0, {vocab}) or ignore_index={ignore_index}"
    if torch.compiler.is_compiling() or labels.device.type != "cpu":
        torch._assert_async(counts[1] < 0, message)
        return
    first = int(counts[1])
    if first >= 0:
        raise ValueError(f"{message}; labels[{first}] = {int(labels[first])}")


def cuda_schedule() -> tuple[int, int, int]:
    """The CUDA forward's (schedule, blocks per SM, packs per step), the last three arguments of
    cekl_forward. VIKHR_CEKL_SCHEDULE: `row` (also when unset or empty), `persistent` (blocks per
    SM chosen for the L2: 0), `persistent:K` or `smem`; VIKHR_CEKL_PACKS: 1 (default) or 2."""
    value = os.environ.get(SCHEDULE_ENV) or CUDA_SCHEDULES[0]
    match = re.fullmatch(r"(\w+)(?::([1-9][0-9]{0,3}))?", value, flags=re.ASCII)
    if match and match[1] in CUDA_SCHEDULES and (match[2] is None or match[1] == "persistent"):
        kind, per_sm = CUDA_SCHEDULES.index(match[1]), int(match[2] or 0)
    else:
        raise ValueError(
            f"{SCHEDULE_ENV}={value!r} is not a schedule of the cross_entropy_kl kernel; "
            f"set it to one of {', '.join(CUDA_SCHEDULES)} or persistent:K (K blocks per SM) or unset it"
        )
    packs = os.environ.get(PACKS_ENV) or "1"
    if packs not in ("1", "2"):
        raise ValueError(
            f"{PACKS_ENV}={packs!r}: set it to 1 or 2 (16-byte loads per thread per step) or unset it"
        )
    return kind, per_sm, int(packs)


def _check_grad_scale(grad_scale: float, rows: int) -> None:
    """The kernel takes grad_scale / rows as a float32 row scale: it must be a normal float32
    (one that underflowed to 0 made every row look ignored, and the loss 0)."""
    if not (math.isfinite(grad_scale) and grad_scale > 0):
        raise ValueError(f"grad_scale must be a positive finite number, got {grad_scale}")
    f32 = torch.finfo(torch.float32)
    if not f32.tiny <= grad_scale / max(rows, 1) <= f32.max:
        raise ValueError(
            f"grad_scale {grad_scale} over {rows} rows is outside float32's normal range "
            f"[{f32.tiny:.3g}, {f32.max:.3g}] (scale the loss within it)"
        )


class _CrossEntropyKLFunction(torch.autograd.Function):
    """The csrc/ kernel: forward computes loss and (if needed) the gradient × grad_scale; backward
    rescales it by grad_loss / grad_scale (on the device; nothing to do when they are equal)."""

    @staticmethod
    def forward(
        ctx,
        logits,
        ref_logits,
        labels,
        kl_weight,
        mode,
        temperature,
        ignore_index,
        vocab,
        group,
        inplace,
        grad_scale,
        schedule,
    ):  # type: ignore[override]
        start, world = _shard(logits, group)
        v_local = logits.shape[1]
        ops = torch.ops.vikhr
        # Targets (local columns), the row scales 1/N_counted (the gradient's carries the caller's
        # loss scale) and the counts, in one launch. Every rank of the vocab-parallel group holds
        # the same labels, so N_counted agrees.
        target, row_scale, grad_row_scale, counts = ops.cekl_prepare(
            labels, ignore_index, start, v_local, vocab, grad_scale
        )
        _check_labels(labels, counts, ignore_index, vocab)
        valid_cols = max(0, min(v_local, vocab - start))
        inv_t, kl_coef = 1.0 / temperature, kl_weight * temperature

        z = logits.contiguous()
        r = ref_logits.contiguous() if ref_logits is not None else None
        grad = None
        if ctx.needs_input_grad[0]:
            grad = z if inplace else torch.empty_like(z)
        if world == 1 and grad is not None:
            # One read of each row for its statistics, a second for the gradient while in cache.
            rows = ops.cekl_forward(
                z, r, target, grad_row_scale, inv_t, kl_coef, mode, valid_cols, grad, *schedule
            )
        else:
            # Vocab parallel (the gradient needs no further collective), or no gradient wanted.
            stats = ops.cekl_stats(z, r, target, row_scale, inv_t, mode, valid_cols)
            maxima = stats[:, :MAX_COLS].contiguous()  # maxima first (csrc/cekl_math.h)
            if world > 1:
                dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
            sums = ops.cekl_rescale(stats, maxima)
            if world > 1:
                dist.all_reduce(sums, group=group)
            rows = ops.cekl_finish(maxima, sums, row_scale, mode)
            if grad is not None:
                ops.cekl_backward(z, r, target, grad_row_scale, rows, inv_t, kl_coef, mode, valid_cols, grad)
        if grad is not None and grad is logits:
            # The logits now hold the gradient: make autograd reject any other saved use of them.
            torch.autograd.graph.increment_version(logits)
        ctx.grad, ctx.grad_scale = grad, grad_scale
        loss, ce, kl = ops.cekl_total(rows, counts, kl_weight * temperature**2)
        ctx.mark_non_differentiable(ce, kl)
        return loss, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):  # type: ignore[override]
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("cross_entropy_kl: backward called twice (its gradient buffer is consumed)")
        ctx.grad = None
        factor = grad_loss.float() / ctx.grad_scale  # exactly 1 when the caller scaled as announced
        if torch.compiler.is_compiling():
            grad = grad * factor  # traced: the compiler fuses the scaling
        else:
            # On the device, without a host sync; free (no pass over the N×V gradient) when factor == 1.
            torch.ops.vikhr.cekl_scale_grad(grad, factor.reshape(1).contiguous())
        return grad, None, None, None, None, None, None, None, None, None, None, None


def cross_entropy_kl(
    logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kl_weight: float = 0.0,
    kl_direction: str = "reverse",
    temperature: float = 1.0,
    ignore_index: int = -100,
    valid_vocab_size: int | None = None,
    process_group: dist.ProcessGroup | None = None,
    inplace_backward: bool = False,
    grad_scale: float = 1.0,
) -> CEKLOutput:
    """Mean CE + λ·T²·KL over non-ignored tokens; gradient flows to `logits` only.

    `inplace_backward=True` writes the gradient over `logits` during the forward (saves an
    N×V buffer); `logits` must not be used afterwards (autograd errors if something saved it; a
    leaf tensor of the caller's is lent on purpose, as the kernel benchmark does, and holds the
    gradient after the call).
    Labels outside [0, vocabulary) raise ValueError on the CPU; on CUDA a device-side assertion
    (no host sync) reports them at the next synchronising call.

    `grad_scale` is the factor the caller will multiply `loss` by before backward (the trainer's
    micro-batch weight): the kernel folds it into the gradient it writes, so backward makes no
    extra pass over the N×V gradient. The returned values are not scaled, and any other incoming
    gradient still gives the exact gradient (at the cost of that pass).
    """
    check_inputs(logits, ref_logits, labels, kl_weight, kl_direction, temperature)
    _check_kernel_dtypes(logits, ref_logits if kl_weight > 0 else None)
    _, world = _shard(logits, process_group)
    vocab = _vocab_size(logits, world, valid_vocab_size)
    _check_grad_scale(grad_scale, logits.shape[0])
    if (
        isinstance(ignore_index, bool)
        or not isinstance(ignore_index, int)
        or not -(2**63) <= ignore_index < 2**63
    ):
        raise ValueError(f"ignore_index must be an int64 value (labels are int64), got {ignore_index!r}")
    schedule = cuda_schedule()
    require_kernels("cross_entropy_kl", logits.device)
    ref = ref_logits if kl_weight > 0 else None
    mode = _MODE_NONE if ref is None else (_MODE_REVERSE if kl_direction == "reverse" else _MODE_FORWARD)
    loss, ce, kl = _CrossEntropyKLFunction.apply(
        logits,
        ref,
        labels,
        float(kl_weight),
        mode,
        float(temperature),
        ignore_index,
        vocab,
        process_group,
        inplace_backward,
        float(grad_scale),
        schedule,
    )
    return CEKLOutput(loss, ce, kl)
