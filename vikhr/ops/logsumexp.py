"""Row-wise logsumexp: the first csrc/ op (`torch.ops.vikhr.logsumexp_rows`), proving the C++/CUDA
build path; its float64 reference is `vikhr.ops.reference.logsumexp_rows_reference`."""

from __future__ import annotations

import torch

from vikhr.ops.build import require_kernels


def logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(x), dim=-1)) for a 2-D tensor, computed in fp32 by the compiled kernel;
    differentiable (the gradient, softmax(x) in x's dtype: vikhr.ops.autograd_formulas)."""
    if x.dim() != 2:
        raise ValueError(f"logsumexp_rows expects a 2-D tensor, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"logsumexp_rows expects a floating tensor, got {x.dtype}")
    require_kernels("logsumexp_rows", x.device)
    return torch.ops.vikhr.logsumexp_rows(x)
