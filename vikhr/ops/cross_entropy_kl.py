"""Cross-entropy + λ·KL against a frozen reference, over a (possibly vocab-parallel) vocabulary.

    loss = mean over non-ignored tokens of [ CE(z, y) + λ · T² · KL ]
    reverse KL (default, the paper's):  KL(P‖R) = Σ_v p_v (log p_v − log r_v)
    forward KL:                          KL(R‖P) = Σ_v r_v (log r_v − log p_v)
with P = softmax(z / T), R = softmax(r / T) for the KL term and CE on softmax(z).

Vocab parallel: `logits` and `ref_logits` hold this rank's columns
[rank·V_local, (rank+1)·V_local) of the vocabulary of `process_group` (Megatron's TP group);
labels are global ids. Columns at or beyond `valid_vocab_size` (vocabulary padding) get zero
probability in both distributions.

`cross_entropy_kl` runs the fused kernel of csrc/ (cross_entropy_kl.cpp, cross_entropy_kl_cuda.cu,
math in cekl_math.h): one pass over each row with online max/sum-exp in fp32 and no N×V
temporaries. On one rank the forward also writes the gradient while the row is in cache
(optionally over the logits: `inplace_backward=True`); with a vocab-parallel group the kernel
returns per-row statistics, this module does exactly two collectives (a MAX of the maxima, one
SUM of the rescaled sums, target logit and KL terms), and the gradient needs none. On a CUDA
device for which the kernel was not compiled (no nvcc) it falls back to `_CrossEntropyKLTorch`,
the same algorithm in PyTorch (N×V fp32 temporaries). `cross_entropy_kl_reference` is the plain
float64 autograd reference used by tests.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.distributed as dist

from vikhr.ops.build import load_ops

KL_DIRECTIONS = ("reverse", "forward")
LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# KL modes understood by the kernel (csrc/cekl_math.h: KlMode).
_MODE_NONE, _MODE_REVERSE, _MODE_FORWARD = 0, 1, 2


class CEKLOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable w.r.t. logits
    ce: torch.Tensor  # scalar, detached: mean CE over valid tokens
    kl: torch.Tensor  # scalar, detached: mean KL over valid tokens (before λ and T²)


def _check(
    logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    kl_weight: float,
    kl_direction: str,
    temperature: float,
) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
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
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
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


def _check_labels(labels: torch.Tensor, ignore_index: int, vocab: int) -> torch.Tensor:
    """The mask of counted rows; raises on a label outside [0, vocab) (one host sync)."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"labels must be in [0, {vocab}) or ignore_index={ignore_index}; "
            f"labels[{first}] = {int(labels[first])}"
        )
    return valid


def _log_softmax_parallel(x: torch.Tensor, group: dist.ProcessGroup | None, world: int) -> torch.Tensor:
    """log softmax over the full (sharded) vocabulary, fp32; x already has -inf in padded columns."""
    m = x.max(dim=1, keepdim=True).values
    if world > 1:
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = (x - m).exp().sum(dim=1, keepdim=True)
    if world > 1:
        dist.all_reduce(s, group=group)
    return x - m - s.log()


class _CrossEntropyKLTorch(torch.autograd.Function):
    """The fused op's algorithm written with PyTorch tensors (materialises [N, V] fp32 temporaries)."""

    @staticmethod
    def forward(
        ctx, logits, ref_logits, labels, kl_weight, reverse, temperature, ignore_index, valid_vocab, group
    ):  # type: ignore[override]
        start, world = _shard(logits, group)
        n, v_local = logits.shape
        cols = torch.arange(start, start + v_local, device=logits.device)
        pad = (cols >= valid_vocab).unsqueeze(0) if valid_vocab is not None else None
        z = logits.float()
        if pad is not None:
            z = z.masked_fill(pad, float("-inf"))
        valid = labels != ignore_index
        # Every rank of the vocab-parallel group holds the same labels, so n_valid agrees.
        n_valid = int(valid.sum())
        logp = _log_softmax_parallel(z, group, world)
        local_label = labels.long() - start
        in_shard = valid & (local_label >= 0) & (local_label < v_local)
        tgt = torch.zeros(n, device=logits.device)
        rows = in_shard.nonzero(as_tuple=True)[0]
        tgt[rows] = logp[rows, local_label[rows]]
        if world > 1:
            dist.all_reduce(tgt, group=group)
        ce_rows = torch.where(valid, -tgt, torch.zeros_like(tgt))

        kl_rows = torch.zeros(n, device=logits.device)
        grad_kl = None
        if kl_weight > 0:
            zt = z / temperature
            r = ref_logits.float() / temperature
            if pad is not None:
                r = r.masked_fill(pad, float("-inf"))
            logq = _log_softmax_parallel(zt, group, world)
            logr = _log_softmax_parallel(r, group, world)
            q = logq.exp()
            rr = logr.exp()
            if reverse:
                diff = torch.where(q > 0, logq - logr, torch.zeros_like(q))
                term = q * diff
            else:
                diff = torch.where(rr > 0, logr - logq, torch.zeros_like(rr))
                term = rr * diff
            kl_rows = term.sum(dim=1)
            if world > 1:
                dist.all_reduce(kl_rows, group=group)
            kl_rows = torch.where(valid, kl_rows, torch.zeros_like(kl_rows))
            # d(T²·KL)/dz = T · dKL/d(z/T)
            if reverse:
                grad_kl = temperature * q * (diff - kl_rows.unsqueeze(1))
            else:
                grad_kl = temperature * (q - rr)

        denom = max(n_valid, 1)
        ce = ce_rows.sum() / denom
        kl = kl_rows.sum() / denom
        loss = ce + kl_weight * temperature**2 * kl

        p = logp.exp()
        grad = p
        if rows.numel():
            grad[rows, local_label[rows]] -= 1.0
        if grad_kl is not None:
            grad = grad + kl_weight * grad_kl
        grad = torch.where(valid.unsqueeze(1), grad, torch.zeros_like(grad)) / denom
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return loss, ce.detach(), kl.detach()

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).to(ctx.logits_dtype), None, None, None, None, None, None, None, None


class _CrossEntropyKLFunction(torch.autograd.Function):
    """The csrc/ kernel: forward computes loss and (if needed) the gradient; backward scales it."""

    @staticmethod
    def forward(
        ctx, logits, ref_logits, labels, kl_weight, mode, temperature, ignore_index, vocab, group, inplace
    ):  # type: ignore[override]
        ops = load_ops()
        dev = logits.device.type
        start, world = _shard(logits, group)
        v_local = logits.shape[1]
        valid = labels != ignore_index  # labels were range-checked by the caller
        local = labels.long() - start
        target = torch.where(valid & (local >= 0) & (local < v_local), local, torch.full_like(local, -1))
        # Every rank of the vocab-parallel group holds the same labels, so n_valid agrees.
        n_valid = valid.sum()
        denom = n_valid.clamp(min=1).to(torch.float64)
        row_scale = (valid.to(torch.float64) / denom).float()
        valid_cols = max(0, min(v_local, vocab - start))
        inv_t, kl_coef = 1.0 / temperature, kl_weight * temperature

        z = logits.contiguous()
        r = ref_logits.contiguous() if ref_logits is not None else None
        grad = None
        if ctx.needs_input_grad[0]:
            grad = z if inplace else torch.empty_like(z)
        if world == 1:
            rows = getattr(ops, f"cekl_forward_{dev}")(
                z, r, target, row_scale, inv_t, kl_coef, mode, valid_cols, grad
            )
        else:
            stats = getattr(ops, f"cekl_stats_{dev}")(z, r, target, row_scale, inv_t, mode, valid_cols)
            maxima = stats[:, :3].contiguous()
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
            sums = getattr(ops, f"cekl_rescale_{dev}")(stats, maxima)
            dist.all_reduce(sums, group=group)
            rows = getattr(ops, f"cekl_finish_{dev}")(maxima, sums, row_scale, mode)
            if grad is not None:
                getattr(ops, f"cekl_backward_{dev}")(
                    z, r, target, row_scale, rows, inv_t, kl_coef, mode, valid_cols, grad
                )
        if grad is not None and grad.data_ptr() == logits.data_ptr():
            # The logits now hold the gradient: make autograd reject any other saved use of them.
            torch.autograd.graph.increment_version(logits)
        ctx.grad = grad
        ce = (rows[:, 0].double().sum() / denom).float()
        kl = (rows[:, 1].double().sum() / denom).float()
        loss = ce + kl_weight * temperature**2 * kl
        ctx.mark_non_differentiable(ce, kl)
        return loss, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):  # type: ignore[override]
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("cross_entropy_kl: backward called twice (its gradient buffer is consumed)")
        ctx.grad = None
        # One host sync; saves a full read+write of the N×V gradient in the usual grad_loss == 1 case.
        if bool(grad_loss != 1):
            grad.mul_(grad_loss)
        return grad, None, None, None, None, None, None, None, None, None


_warned_fallback: set[str] = set()


def _kernel_available(device: torch.device) -> bool:
    ops = load_ops()
    if hasattr(ops, f"cekl_forward_{device.type}"):
        return True
    if device.type not in _warned_fallback:
        _warned_fallback.add(device.type)
        warnings.warn(
            f"cross_entropy_kl: the csrc kernel is not compiled for {device.type} (no nvcc?); "
            "using the PyTorch implementation, which materialises N×V fp32 temporaries",
            stacklevel=3,
        )
    return False


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
) -> CEKLOutput:
    """Mean CE + λ·T²·KL over non-ignored tokens; gradient flows to `logits` only.

    `inplace_backward=True` writes the gradient over `logits` during the forward (saves an
    N×V buffer); `logits` must not be used afterwards (autograd errors if something saved it).
    Labels outside [0, vocabulary) raise ValueError (this costs one host sync).
    """
    _check(logits, ref_logits, labels, kl_weight, kl_direction, temperature)
    _check_kernel_dtypes(logits, ref_logits if kl_weight > 0 else None)
    _, world = _shard(logits, process_group)
    vocab = _vocab_size(logits, world, valid_vocab_size)
    _check_labels(labels, ignore_index, vocab)
    ref = ref_logits if kl_weight > 0 else None
    if not _kernel_available(logits.device):
        return _cross_entropy_kl_torch(
            logits, ref, labels, kl_weight, kl_direction, temperature, ignore_index, vocab, process_group
        )
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
    )
    return CEKLOutput(loss, ce, kl)


def _cross_entropy_kl_torch(
    logits, ref, labels, kl_weight, kl_direction, temperature, ignore_index, vocab, process_group
) -> CEKLOutput:
    """The PyTorch fallback (also tested directly against the reference)."""
    loss, ce, kl = _CrossEntropyKLTorch.apply(
        logits,
        ref,
        labels,
        float(kl_weight),
        kl_direction == "reverse",
        float(temperature),
        ignore_index,
        vocab,
        process_group,
    )
    return CEKLOutput(loss, ce, kl)


def cross_entropy_kl_reference(
    logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    kl_weight: float = 0.0,
    kl_direction: str = "reverse",
    temperature: float = 1.0,
    ignore_index: int = -100,
    valid_vocab_size: int | None = None,
) -> CEKLOutput:
    """Float64 autograd reference on the full vocabulary (single rank)."""
    _check(logits, ref_logits, labels, kl_weight, kl_direction, temperature)
    # Padded columns have zero probability: drop them (their gradient is then exactly zero).
    vv = logits.shape[1] if valid_vocab_size is None else valid_vocab_size
    z = logits.double()[:, :vv]
    valid = labels != ignore_index
    denom = max(int(valid.sum()), 1)
    logp = torch.log_softmax(z, dim=1)
    safe = torch.where(valid, labels.long(), torch.zeros_like(labels.long()))
    ce_rows = -logp.gather(1, safe.unsqueeze(1)).squeeze(1) * valid
    ce = ce_rows.sum() / denom
    kl = torch.zeros((), dtype=torch.float64, device=logits.device)
    if kl_weight > 0:
        logq = torch.log_softmax(z / temperature, dim=1)
        logr = torch.log_softmax(ref_logits.double()[:, :vv] / temperature, dim=1)
        if kl_direction == "reverse":
            terms = logq.exp() * (logq - logr)
        else:
            terms = logr.exp() * (logr - logq)
        kl = (terms.sum(dim=1) * valid).sum() / denom
    loss = ce + kl_weight * temperature**2 * kl
    return CEKLOutput(loss, ce.detach(), kl.detach())
