"""A few optimizer steps of a tiny Mistral-shaped GPTModel; run directly or under torchrun.

Writes JSON with the per-step global losses and a checksum of every parameter (gathered to full
tensors across TP ranks) so tests can compare TP=1, TP=2 and DP=2 runs.
Usage: train_steps.py OUT.json --tp N [--steps S]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from vikhr.model import build_gpt_model, preset
from vikhr.runtime import init_distributed, shutdown


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)

    env = init_distributed(tp_size=args.tp, seed=1234, device="cpu")
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    cfg = preset("tiny")
    model = build_gpt_model(cfg, tp_size=args.tp, vocab_multiple=256 // args.tp)
    model = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
        model,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)

    # Same global data on every rank; each DP rank takes its slice of the batch.
    gen = torch.Generator().manual_seed(42)
    per_rank = args.global_batch // env.dp_size
    losses = []
    for _ in range(args.steps):
        tokens = torch.randint(0, cfg.vocab_size, (args.global_batch, args.seq_len + 1), generator=gen)
        local = tokens[env.dp_rank * per_rank : (env.dp_rank + 1) * per_rank]
        inputs, labels = local[:, :-1], local[:, 1:]
        pos = torch.arange(args.seq_len).unsqueeze(0).expand(inputs.shape[0], -1)
        model.zero_grad_buffer()
        opt.zero_grad(set_to_none=True)
        per_token = model(inputs, pos, attention_mask=None, labels=labels)
        loss = per_token.float().mean()
        loss.backward()
        model.finish_grad_sync()
        for p in model.parameters():
            p.grad = p.main_grad.to(p.dtype)
        opt.step()
        reported = loss.detach().clone()
        dist.all_reduce(reported, group=parallel_state.get_data_parallel_group())
        losses.append(reported.item() / env.dp_size)

    # Sum of every full parameter: TP-sharded ones are summed over the TP group.
    sums = {}
    for name, p in model.module.named_parameters():
        total = p.detach().double().sum()
        if getattr(p, "tensor_model_parallel", False) and env.tp_size > 1:
            dist.all_reduce(total, group=parallel_state.get_tensor_model_parallel_group())
        sums[name] = float(total)
    with open(f"{args.out}.rank{env.rank}", "w") as f:
        json.dump({"losses": losses, "param_sums": sums, "dp": env.dp_size, "tp": env.tp_size}, f)
    shutdown()


if __name__ == "__main__":
    main()
