"""Backward formulas of the `torch.ops.vikhr` ops that are differentiable on their own.

Without one, autograd passes a custom op's output on with a grad_fn whose backward gives its
input no gradient (torch only warns): `logsumexp_rows(x).sum().backward()` left `x.grad` None.
`vikhr.ops.build.load_ops` registers these right after loading the library, with the fake
kernels. The CE+KL ops need none: `vikhr.ops.cross_entropy_kl` wraps them in an autograd
function that holds the gradient its forward wrote.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


def _logsumexp_rows_setup(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0], output)


def _logsumexp_rows_backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
    """d logsumexp(x) / dx = softmax(x) = exp(x - logsumexp(x)), in float32 as the forward."""
    x, out = ctx.saved_tensors
    return (grad.unsqueeze(-1) * torch.exp(x.float() - out.unsqueeze(-1))).to(x.dtype)


@functools.cache
def register_backward_formulas() -> None:
    """Registers the backward formulas (once; the ops must already be defined by the loaded library)."""
    torch.library.register_autograd(
        "vikhr::logsumexp_rows", _logsumexp_rows_backward, setup_context=_logsumexp_rows_setup
    )
