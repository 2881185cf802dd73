"""SwiGLU of megatron's fused gate/up projection that keeps only its input for backward.

megatron-core's unfused gated MLP (`bias_activation_fusion=False`) computes
`silu(gate) * (up + 0)` on the chunks of the fc1 output: autograd keeps the whole fc1 output
(silu's input is a view of it), silu's output and a copy of the up half — one [tokens, FFN]
tensor more than Hugging Face's separate gate/up projections keep. Its fused path saves only
the fc1 output but is wrapped in `torch.compile`. `swiglu` saves the fc1 output alone and
recomputes silu in backward (an elementwise pass, cheap next to the projections), so the MLP
keeps 3 [tokens, FFN] tensors for backward instead of megatron's 5 and HF's 4.

Forward and backward use the same ATen ops as eager autograd on `F.silu(gate) * up`, so results
are bit-identical to it (and to HF's MLP) in every dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fc1_out: torch.Tensor) -> torch.Tensor:
        gate, up = torch.chunk(fc1_out, 2, dim=-1)
        ctx.save_for_backward(fc1_out)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (fc1_out,) = ctx.saved_tensors
        gate, up = torch.chunk(fc1_out, 2, dim=-1)
        grad_in = torch.empty_like(fc1_out)
        half = gate.shape[-1]
        # What autograd computes for silu(gate) * up: mul's backward, then silu's.
        torch.ops.aten.silu_backward(grad * up, gate, grad_input=grad_in[..., :half])
        torch.mul(grad, F.silu(gate), out=grad_in[..., half:])
        return grad_in


def swiglu(fc1_out: torch.Tensor) -> torch.Tensor:
    """[..., 2·F] (gate half, then up half) -> silu(gate) * up, [..., F]."""
    if fc1_out.shape[-1] % 2:
        raise ValueError(f"swiglu needs an even last dimension (gate and up halves), got {fc1_out.shape[-1]}")
    return _SwiGLU.apply(fc1_out)


class SwiGLU(torch.nn.Module):
    """`swiglu` as the activation module of megatron's MLP spec (`submodules.activation_func`,
    which megatron applies to the whole fc1 output when `use_te_activation_func` is set)."""

    def __init__(self, config: object = None) -> None:
        super().__init__()

    def forward(self, fc1_out: torch.Tensor) -> torch.Tensor:
        return swiglu(fc1_out)
