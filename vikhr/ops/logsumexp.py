"""Row-wise logsumexp: the first csrc/ op, proving the C++/CUDA build path."""

from __future__ import annotations

import torch

from vikhr.ops.build import load_ops


def logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(x), dim=-1)) for a 2-D tensor, computed in fp32 by the compiled kernel."""
    if x.dim() != 2:
        raise ValueError(f"logsumexp_rows expects a 2-D tensor, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"logsumexp_rows expects a floating tensor, got {x.dtype}")
    ops = load_ops()
    if x.is_cuda:
        if not hasattr(ops, "logsumexp_rows_cuda"):
            raise RuntimeError("the CUDA kernel was not compiled (no nvcc found); see 'vikhr doctor'")
        return ops.logsumexp_rows_cuda(x)
    return ops.logsumexp_rows_cpu(x)


def logsumexp_rows_reference(x: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch reference: float64 logsumexp, returned as fp32."""
    return torch.logsumexp(x.double(), dim=-1).float()
