"""Plain-PyTorch versions of the csrc/ ops: what the tests check the kernels against (in float64)
and what `tools/bench_kernels.py` times them against (its "eager" row, in float32). Not used by
the package itself; single rank, full vocabulary, N×V temporaries. A −inf logit gives NaN here
(0·(−inf) in the KL term) where the kernels give the finite value: compare masked columns as absent
ones (`test_minus_inf_logits_inside_the_vocabulary`), so that the timed baseline stays plain.
"""

from __future__ import annotations

import torch

from vikhr.ops.cross_entropy_kl import CEKLOutput, check_inputs


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
    compute_dtype: torch.dtype = torch.float64,
) -> CEKLOutput:
    """`vikhr.ops.cross_entropy_kl` by autograd in `compute_dtype` (single rank, no host sync)."""
    check_inputs(logits, ref_logits, labels, kl_weight, kl_direction, temperature)
    # Padded columns have zero probability: drop them (their gradient is then exactly zero).
    vv = logits.shape[1] if valid_vocab_size is None else valid_vocab_size
    z = logits.to(compute_dtype)[:, :vv]
    valid = labels != ignore_index
    denom = valid.sum().clamp(min=1)
    logp = torch.log_softmax(z, dim=1)
    safe = torch.where(valid, labels.long(), torch.zeros_like(labels.long()))
    ce_rows = -logp.gather(1, safe.unsqueeze(1)).squeeze(1) * valid
    ce = ce_rows.sum() / denom
    kl = torch.zeros((), dtype=compute_dtype, device=logits.device)
    if kl_weight > 0:
        logq = torch.log_softmax(z / temperature, dim=1)
        logr = torch.log_softmax(ref_logits.to(compute_dtype)[:, :vv] / temperature, dim=1)
        if kl_direction == "reverse":
            terms = logq.exp() * (logq - logr)
        else:
            terms = logr.exp() * (logr - logq)
        kl = (terms.sum(dim=1) * valid).sum() / denom
    loss = ce + kl_weight * temperature**2 * kl
    return CEKLOutput(loss, ce.detach(), kl.detach())


def logsumexp_rows_reference(x: torch.Tensor) -> torch.Tensor:
    """`vikhr.ops.logsumexp_rows` in float64, returned as fp32."""
    return torch.logsumexp(x.double(), dim=-1).float()
